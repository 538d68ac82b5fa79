//! JSON Lines reader: one document per line, `{"text": "...", "labels": ["a", "b"]}`.
//!
//! An optional `"id"` (string or number) names the document; without it the id is the 1-based
//! line number. Other keys are ignored. Blank lines (only whitespace) are skipped. Any other line
//! that is not such an object is an error naming the file and the line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::{Dataset, DatasetOptions, RawDoc};
use crate::error::{LabError, Result};

#[derive(Deserialize)]
struct Line {
    text: String,
    labels: Vec<String>,
    #[serde(default)]
    id: Option<Id>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

/// Reads a JSON Lines file of documents.
pub fn read_jsonl(path: &Path) -> Result<Vec<RawDoc>> {
    if !path.is_file() {
        return Err(LabError::DataMissing {
            path: path.to_path_buf(),
            hint: "expected a JSON Lines file with one {\"text\": ..., \"labels\": [...]} object \
                   per line"
                .to_string(),
        });
    }
    let file = File::open(path).map_err(|e| LabError::io(path, e))?;
    parse_jsonl(BufReader::new(file), path)
}

/// Parses JSON Lines from a reader; `path` only names the source in errors.
pub fn parse_jsonl<R: BufRead>(mut reader: R, path: &Path) -> Result<Vec<RawDoc>> {
    let mut docs = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let err =
        |line: usize, reason: String| LabError::Jsonl { path: path.to_path_buf(), line, reason };
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| LabError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line =
            std::str::from_utf8(&buf).map_err(|e| err(line_no, format!("not valid UTF-8: {e}")))?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(line).map_err(|e| err(line_no, e.to_string()))?;
        let id = match parsed.id {
            Some(Id::Text(s)) => s,
            Some(Id::Number(n)) => n.to_string(),
            None => line_no.to_string(),
        };
        docs.push(RawDoc { id, text: parsed.text, labels: parsed.labels });
    }
    Ok(docs)
}

/// Loads a dataset from a training and a test JSON Lines file.
pub fn load_jsonl_dataset(train: &Path, test: &Path, options: &DatasetOptions) -> Result<Dataset> {
    let train = read_jsonl(train)?;
    let test = read_jsonl(test)?;
    Ok(Dataset::from_raw(train, test, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(s: &str) -> Result<Vec<RawDoc>> {
        parse_jsonl(s.as_bytes(), Path::new("mem.jsonl"))
    }

    #[test]
    fn reads_lines() {
        let docs = parse(
            "{\"text\": \"hello\", \"labels\": [\"a\", \"b\"]}\n\
             \n\
             {\"labels\": [], \"text\": \"x\\ny\", \"id\": \"doc-7\", \"extra\": 1}\r\n\
             {\"text\": \"z\", \"labels\": [\"a\"], \"id\": 42}",
        )
        .expect("valid input");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].id, "1");
        assert_eq!(docs[0].labels, vec!["a", "b"]);
        assert_eq!(docs[1].id, "doc-7");
        assert_eq!(docs[1].text, "x\ny");
        assert!(docs[1].labels.is_empty());
        assert_eq!(docs[2].id, "42");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("{\"text\": \"a\", \"labels\": []}\n{\"text\": 3, \"labels\": []}\n")
            .expect_err("text must be a string");
        match e {
            LabError::Jsonl { path, line, reason } => {
                assert_eq!(path, PathBuf::from("mem.jsonl"));
                assert_eq!(line, 2);
                assert!(reason.contains("string"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = parse("\n\n{\"text\": \"a\"}\n").expect_err("labels missing");
        assert!(e.to_string().starts_with("mem.jsonl:3: "), "{e}");
        assert!(e.to_string().contains("labels"), "{e}");
        let e = parse("not json\n").expect_err("not json");
        assert!(matches!(e, LabError::Jsonl { line: 1, .. }));
        let e = parse_jsonl(&b"{\"text\": \"\xff\", \"labels\": []}\n"[..], Path::new("b.jsonl"))
            .expect_err("bad utf-8");
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn missing_file_is_data_missing() {
        let e = read_jsonl(Path::new("/nonexistent/train.jsonl")).expect_err("missing");
        assert!(matches!(e, LabError::DataMissing { .. }));
        assert!(e.to_string().contains("/nonexistent/train.jsonl"));
    }

    #[test]
    fn loads_a_dataset_from_files() {
        let dir = std::env::temp_dir().join(format!("loss-lab-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let train = dir.join("train.jsonl");
        let test = dir.join("test.jsonl");
        std::fs::write(
            &train,
            "{\"text\": \"t1\", \"labels\": [\"x\", \"y\"]}\n{\"text\": \"t2\", \"labels\": [\"q\"]}\n",
        )
        .expect("write train");
        std::fs::write(&test, "{\"text\": \"t3\", \"labels\": [\"y\"]}\n").expect("write test");
        let ds = load_jsonl_dataset(&train, &test, &DatasetOptions::default());
        std::fs::remove_dir_all(&dir).ok();
        let ds = ds.expect("valid files");
        assert_eq!(ds.label_names, vec!["y"]);
        assert_eq!(ds.train.len(), 1);
        assert_eq!(ds.train[0].text, "t1");
        assert_eq!(ds.test.len(), 1);
    }
}
