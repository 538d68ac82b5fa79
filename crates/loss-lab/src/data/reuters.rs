//! Reader for the original Reuters-21578 distribution (`reut2-000.sgm` … `reut2-021.sgm`) and the
//! ModApte ("ApteMod") split.
//!
//! The files are SGML in Latin-1 with control characters written as numeric entities. Each
//! `<REUTERS ...>` element carries the attributes `TOPICS` and `LEWISSPLIT` and `NEWID`; the labels
//! are the `<D>` entries of its `<TOPICS>`, the text is in `<TEXT>` as `<TITLE>` and `<BODY>`.
//!
//! ModApte, as [`load_modapte`] builds it: documents with `TOPICS="YES"`, `LEWISSPLIT="TRAIN"`
//! for train and `"TEST"` for test; the topics that occur in at least one train and one test
//! document are the labels (90 of them); documents left without any are dropped. That gives 7770
//! train and 3019 test documents.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Dataset, DatasetOptions, LabelFilter, RawDoc};
use crate::error::{LabError, Result};

/// Where the Reuters data comes from; part of the error when the directory is missing.
pub const DATA_HINT: &str = "expected the original Reuters-21578 distribution 1.0 \
    (reut2-000.sgm ... reut2-021.sgm); the project reads it from shared/data/reuters21578 beside \
    the repository (see shared/data/README.md) and never keeps a copy in the repository. The \
    collection is free for research use and is published by David D. Lewis and the UCI KDD archive";

/// Number of `.sgm` files in the distribution.
pub const N_FILES: usize = 22;

/// One `<REUTERS>` element, with the fields the ModApte split and the text need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// The `NEWID` attribute.
    pub new_id: String,
    /// The `TOPICS` attribute: `YES`, `NO` or `BYPASS`.
    pub topics_attr: String,
    /// The `LEWISSPLIT` attribute: `TRAIN`, `TEST` or `NOT-USED`.
    pub lewis_split: String,
    /// The `<D>` entries of `<TOPICS>`, in order.
    pub topics: Vec<String>,
    /// `<TITLE>`, decoded (empty if absent).
    pub title: String,
    /// `<BODY>`, decoded (empty if absent).
    pub body: String,
    /// The whole `<TEXT>` content with tags removed, decoded and trimmed — kept only when the
    /// article has neither title nor body (`TYPE="UNPROC"` items), else empty.
    pub unstructured: String,
}

impl Article {
    /// The document text: title and body joined by a newline; for an article with neither, the
    /// tag-stripped `<TEXT>` content.
    pub fn text(&self) -> String {
        match (self.title.is_empty(), self.body.is_empty()) {
            (false, false) => format!("{}\n{}", self.title, self.body),
            (false, true) => self.title.clone(),
            (true, false) => self.body.clone(),
            (true, true) => self.unstructured.clone(),
        }
    }
}

/// The paths of the 22 `.sgm` files in `dir`; a clear [`LabError::DataMissing`] if the directory
/// or any file is missing.
pub fn sgm_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(LabError::DataMissing { path: dir.to_path_buf(), hint: DATA_HINT.to_string() });
    }
    let files: Vec<PathBuf> = (0..N_FILES).map(|i| dir.join(format!("reut2-{i:03}.sgm"))).collect();
    if let Some(missing) = files.iter().find(|p| !p.is_file()) {
        return Err(LabError::DataMissing { path: missing.clone(), hint: DATA_HINT.to_string() });
    }
    Ok(files)
}

/// Reads every article of the distribution in `dir`, in file and document order.
pub fn read_articles(dir: &Path) -> Result<Vec<Article>> {
    let files = sgm_files(dir)?;
    let per_file: Vec<Vec<Article>> =
        files.par_iter().map(|p| read_sgm_file(p)).collect::<Result<_>>()?;
    Ok(per_file.into_iter().flatten().collect())
}

/// Reads the articles of one `.sgm` file.
pub fn read_sgm_file(path: &Path) -> Result<Vec<Article>> {
    let bytes = std::fs::read(path).map_err(|e| LabError::io(path, e))?;
    parse_sgm(&bytes, path)
}

/// Loads the ModApte split from the directory holding `reut2-*.sgm`.
pub fn load_modapte(dir: &Path) -> Result<Dataset> {
    let articles = read_articles(dir)?;
    Ok(modapte_from_articles(articles))
}

/// Builds the ModApte [`Dataset`] from articles (see the module documentation).
pub fn modapte_from_articles(articles: Vec<Article>) -> Dataset {
    let mut train = Vec::new();
    let mut test = Vec::new();
    for a in articles {
        if a.topics_attr != "YES" {
            continue;
        }
        let target = match a.lewis_split.as_str() {
            "TRAIN" => &mut train,
            "TEST" => &mut test,
            _ => continue,
        };
        let text = a.text();
        target.push(RawDoc { id: a.new_id, text, labels: a.topics });
    }
    let options =
        DatasetOptions { label_filter: LabelFilter::InTrainAndTest, drop_unlabeled: true };
    Dataset::from_raw(train, test, &options)
}

/// Parses the `<REUTERS>` elements of one file's bytes (Latin-1). `path` only names the source
/// in errors.
pub fn parse_sgm(bytes: &[u8], path: &Path) -> Result<Vec<Article>> {
    const OPEN: &[u8] = b"<REUTERS";
    const CLOSE: &[u8] = b"</REUTERS>";
    let err = |offset: usize, reason: &str| LabError::Sgml {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    let mut articles = Vec::new();
    let mut pos = 0;
    while let Some(start) = find(bytes, OPEN, pos) {
        let tag_end =
            find(bytes, b">", start).ok_or_else(|| err(start, "unterminated <REUTERS"))?;
        let attrs = parse_attributes(&bytes[start + OPEN.len()..tag_end]);
        let end = find(bytes, CLOSE, tag_end)
            .ok_or_else(|| err(start, "<REUTERS> without </REUTERS>"))?;
        let inner = &bytes[tag_end + 1..end];
        let attr = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let new_id = attr("NEWID").ok_or_else(|| err(start, "<REUTERS> without NEWID"))?;
        let topics_attr = attr("TOPICS").unwrap_or_default();
        let lewis_split = attr("LEWISSPLIT").unwrap_or_default();

        let topics = match element(inner, b"TOPICS") {
            Some(t) => d_entries(t),
            None => Vec::new(),
        };
        let (title, body, unstructured) = match element(inner, b"TEXT") {
            Some(text) => {
                let title = element(text, b"TITLE").map(decode_text).unwrap_or_default();
                let body = element(text, b"BODY").map(decode_text).unwrap_or_default();
                let unstructured = if title.is_empty() && body.is_empty() {
                    decode_text(&strip_tags(text)).trim().to_string()
                } else {
                    String::new()
                };
                (title, body, unstructured)
            }
            None => (String::new(), String::new(), String::new()),
        };
        articles.push(Article {
            new_id,
            topics_attr,
            lewis_split,
            topics,
            title,
            body,
            unstructured,
        });
        pos = end + CLOSE.len();
    }
    Ok(articles)
}

/// Position of `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay.get(i..)?.iter().position(|&b| b == first)?;
        i += off;
        if hay.get(i..i + needle.len())? == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Content of the first `<NAME ...>...</NAME>` element in `hay` (attributes on the open tag are
/// allowed). The open tag must be exactly `<NAME>` or `<NAME` followed by whitespace.
fn element<'a>(hay: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut open = Vec::with_capacity(name.len() + 1);
    open.push(b'<');
    open.extend_from_slice(name);
    let mut close = Vec::with_capacity(name.len() + 3);
    close.extend_from_slice(b"</");
    close.extend_from_slice(name);
    close.push(b'>');
    let mut pos = 0;
    loop {
        let start = find(hay, &open, pos)?;
        let after = start + open.len();
        match hay.get(after) {
            Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\n') | Some(b'\r') => {
                let content_start = find(hay, b">", after)? + 1;
                let end = find(hay, &close, content_start)?;
                return hay.get(content_start..end);
            }
            _ => pos = after,
        }
    }
}

/// The `<D>...</D>` entries of a `<TOPICS>` (or similar) element, decoded and trimmed.
fn d_entries(hay: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = find(hay, b"<D>", pos) {
        let content = start + 3;
        let Some(end) = find(hay, b"</D>", content) else {
            break;
        };
        let value = decode_text(&hay[content..end]);
        let value = value.trim();
        if !value.is_empty() {
            out.push(value.to_string());
        }
        pos = end + 4;
    }
    out
}

/// `NAME="VALUE"` pairs of an open tag (after the element name).
fn parse_attributes(tag: &[u8]) -> Vec<(String, String)> {
    let s = decode_latin1(tag);
    let mut out = Vec::new();
    let mut rest = s.as_str();
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let Some(value_and_more) = after.strip_prefix('"') else {
            break;
        };
        let Some(close) = value_and_more.find('"') else {
            break;
        };
        out.push((name, value_and_more[..close].to_string()));
        rest = &value_and_more[close + 1..];
    }
    out
}

/// Removes `<...>` tags, keeping the text between them.
fn strip_tags(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_tag = false;
    for &b in bytes {
        match (in_tag, b) {
            (false, b'<') => in_tag = true,
            (true, b'>') => in_tag = false,
            (false, _) => out.push(b),
            (true, _) => {}
        }
    }
    out
}

/// Latin-1 bytes to a `String` (every byte is the code point of the same value).
pub fn decode_latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Latin-1 bytes of SGML character data to clean text: Latin-1 decoded, entities decoded
/// ([`decode_entities`]), then control characters other than `\n` and `\t` dropped.
pub fn decode_text(bytes: &[u8]) -> String {
    decode_entities(&decode_latin1(bytes))
        .chars()
        .filter(|&c| !c.is_control() || c == '\n' || c == '\t')
        .collect()
}

/// Decodes SGML/HTML character references: `&lt;` `&gt;` `&amp;` `&quot;` `&apos;`, decimal
/// `&#N;` and hexadecimal `&#xH;`. Anything else that starts with `&` is kept as it is.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let decoded = tail
            .get(1..)
            .and_then(|t| {
                // Entity names are short: look for the `;` only in the next few bytes.
                let semi = t.bytes().take(12).position(|b| b == b';')?;
                Some((t.get(..semi)?, semi))
            })
            .and_then(|(name, semi)| entity_char(name).map(|c| (c, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &tail[semi + 2..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity_char(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse::<u32>().ok()?,
            };
            char::from_u32(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"<!DOCTYPE lewis SYSTEM \"lewis.dtd\">\n\
<REUTERS TOPICS=\"YES\" LEWISSPLIT=\"TRAIN\" CGISPLIT=\"TRAINING-SET\" OLDID=\"5544\" NEWID=\"1\">\n\
<DATE>26-FEB-1987 15:01:01.79</DATE>\n\
<TOPICS><D>cocoa</D><D>grain</D></TOPICS>\n\
<PLACES><D>usa</D></PLACES>\n\
<UNKNOWN> \n&#5;&#5;&#5;C T\n</UNKNOWN>\n\
<TEXT>&#2;\n<TITLE>BAHIA COCOA &lt;REVIEW&gt;</TITLE>\n\
<DATELINE>    SALVADOR, Feb 26 - </DATELINE><BODY>Showers A&amp;B caf\xe9\n Reuter\n&#3;</BODY></TEXT>\n\
</REUTERS>\n\
<REUTERS TOPICS=\"NO\" LEWISSPLIT=\"TEST\" CGISPLIT=\"TRAINING-SET\" OLDID=\"1\" NEWID=\"2\">\n\
<TOPICS></TOPICS>\n\
<TEXT TYPE=\"UNPROC\">&#2;\n raw &#127;text\n&#3;</TEXT>\n\
</REUTERS>\n\
<REUTERS TOPICS=\"YES\" LEWISSPLIT=\"TEST\" NEWID=\"3\">\n\
<TOPICS><D>grain</D></TOPICS>\n\
<TEXT TYPE=\"BRIEF\">&#2;\n<TITLE>ONLY A TITLE</TITLE>\n&#3;</TEXT>\n\
</REUTERS>\n\
<REUTERS TOPICS=\"YES\" LEWISSPLIT=\"TEST\" NEWID=\"4\">\n\
<TOPICS><D>cocoa</D></TOPICS>\n<TEXT><BODY>cocoa body</BODY></TEXT>\n\
</REUTERS>\n\
<REUTERS TOPICS=\"YES\" LEWISSPLIT=\"NOT-USED\" NEWID=\"5\">\n\
<TOPICS><D>cocoa</D></TOPICS>\n<TEXT><BODY>unused</BODY></TEXT>\n\
</REUTERS>\n";

    #[test]
    fn parses_articles() {
        let arts = parse_sgm(SAMPLE, Path::new("sample.sgm")).expect("valid sample");
        assert_eq!(arts.len(), 5);
        let a = &arts[0];
        assert_eq!(a.new_id, "1");
        assert_eq!(a.topics_attr, "YES");
        assert_eq!(a.lewis_split, "TRAIN");
        assert_eq!(a.topics, vec!["cocoa", "grain"]);
        assert_eq!(a.title, "BAHIA COCOA <REVIEW>");
        assert_eq!(a.body, "Showers A&B caf\u{e9}\n Reuter\n");
        assert_eq!(a.text(), "BAHIA COCOA <REVIEW>\nShowers A&B caf\u{e9}\n Reuter\n");
        let b = &arts[1];
        assert_eq!(b.topics_attr, "NO");
        assert!(b.topics.is_empty());
        assert_eq!(b.text(), "raw text");
        assert_eq!(arts[2].text(), "ONLY A TITLE");
        assert_eq!(arts[3].text(), "cocoa body");
    }

    #[test]
    fn modapte_filters() {
        let arts = parse_sgm(SAMPLE, Path::new("sample.sgm")).expect("valid sample");
        let ds = modapte_from_articles(arts);
        assert_eq!(ds.label_names, vec!["cocoa", "grain"]);
        let train: Vec<&str> = ds.train.iter().map(|d| d.id.as_str()).collect();
        let test: Vec<&str> = ds.test.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(train, vec!["1"]);
        assert_eq!(test, vec!["3", "4"]);
        assert_eq!(ds.train[0].labels, vec![0, 1]);
    }

    #[test]
    fn malformed_sgml_is_an_error() {
        let bad = b"<REUTERS NEWID=\"1\"><TEXT>no end";
        match parse_sgm(bad, Path::new("bad.sgm")) {
            Err(LabError::Sgml { path, offset, .. }) => {
                assert_eq!(path, PathBuf::from("bad.sgm"));
                assert_eq!(offset, 0);
            }
            other => panic!("expected an SGML error, got {other:?}"),
        }
        let no_id = b"xx<REUTERS TOPICS=\"YES\"></REUTERS>";
        assert!(matches!(
            parse_sgm(no_id, Path::new("x.sgm")),
            Err(LabError::Sgml { offset: 2, .. })
        ));
    }

    #[test]
    fn entities() {
        assert_eq!(decode_entities("a &lt;b&gt; &amp;&amp; c"), "a <b> && c");
        assert_eq!(decode_entities("&#65;&#x42;&#X43;&quot;&apos;"), "ABC\"'");
        assert_eq!(decode_entities("AT&T & co &unknown; &#; &"), "AT&T & co &unknown; &#; &");
        assert_eq!(decode_entities("&#1114112;"), "&#1114112;");
        assert_eq!(decode_text(b"x&#5;y&#30;\tz\r\n&#3;\xfc"), "xy\tz\n\u{fc}");
    }

    #[test]
    fn element_needs_exact_name() {
        let hay = b"<TEXTX>no</TEXTX><TEXT TYPE=\"BRIEF\">yes</TEXT>";
        assert_eq!(element(hay, b"TEXT"), Some(&b"yes"[..]));
        assert_eq!(element(hay, b"BODY"), None);
        assert_eq!(find(b"abcabd", b"abd", 0), Some(3));
        assert_eq!(find(b"ab", b"abc", 0), None);
        assert_eq!(find(b"abc", b"", 0), None);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = Path::new("/nonexistent/reuters21578");
        let e = load_modapte(dir).expect_err("no such directory");
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/reuters21578"), "{msg}");
        assert!(msg.contains("shared/data/reuters21578"), "{msg}");
        assert!(msg.contains("Reuters-21578"), "{msg}");
    }
}
