//! TF-IDF features over word unigrams and bigrams, fitted on training texts.
//!
//! - Tokens: maximal runs of alphanumeric characters (`char::is_alphanumeric`), lowercased, at
//!   least [`TfidfConfig::min_token_chars`] characters long (default 2, like scikit-learn's
//!   default `token_pattern`). Bigrams join two consecutive tokens of a document with one space.
//! - Term frequency: sublinear, `1 + ln(tf)` (raw counts with `sublinear_tf = false`).
//! - Inverse document frequency, smoothed: `idf = ln((1 + n) / (1 + df)) + 1`, `n` the number of
//!   training documents.
//! - Vocabulary: terms with `df >= min_df`; with a cap, the `max_features` terms of highest `df`
//!   (ties broken by term, byte order). Columns are in term order.
//! - Rows are L2-normalised (a document with no known term is a zero row).
//!
//! With these settings the weights equal scikit-learn's
//! `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=..., max_features=...)`
//! up to the tokenizer (`\w` there also counts `_` as a word character) and to tie-breaking
//! among terms of equal frequency at the cap.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use ndarray::Array2;
use rayon::prelude::*;

use crate::error::{LabError, Result};

/// Settings of a [`Tfidf`] vectorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TfidfConfig {
    /// Also use bigrams of consecutive tokens (unigrams are always used).
    pub bigrams: bool,
    /// Minimum document frequency (in training documents) of a term; at least 1.
    pub min_df: usize,
    /// Keep at most this many terms, the most frequent by document frequency.
    pub max_features: Option<usize>,
    /// Use `1 + ln(tf)` instead of the raw count.
    pub sublinear_tf: bool,
    /// Shortest token kept, in characters; at least 1.
    pub min_token_chars: usize,
}

impl Default for TfidfConfig {
    /// Unigrams and bigrams, `min_df = 2`, at most 20000 terms, sublinear tf, tokens of 2+ chars.
    fn default() -> Self {
        TfidfConfig {
            bigrams: true,
            min_df: 2,
            max_features: Some(20_000),
            sublinear_tf: true,
            min_token_chars: 2,
        }
    }
}

/// Splits text into lowercase alphanumeric tokens of at least `min_chars` characters.
pub fn tokenize(text: &str, min_chars: usize) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty() && (min_chars <= 1 || t.chars().count() >= min_chars))
        .map(str::to_lowercase)
        .collect()
}

/// Multiplicative hasher for the `u64` term keys (they are already well spread ids).
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 32;
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// Term key: `(first id + 1) << 32 | (second id + 1)`, second part 0 for a unigram.
fn unigram_key(a: u32) -> u64 {
    (u64::from(a) + 1) << 32
}

fn bigram_key(a: u32, b: u32) -> u64 {
    ((u64::from(a) + 1) << 32) | (u64::from(b) + 1)
}

/// Marks a token unknown to the fitted unigram table.
const UNKNOWN: u32 = u32::MAX;

/// A fitted TF-IDF vectorizer (see the module documentation for the exact weighting).
#[derive(Debug, Clone)]
pub struct Tfidf {
    config: TfidfConfig,
    /// Token -> id, for every token of the training texts.
    token_ids: HashMap<String, u32>,
    /// Term key -> column.
    columns: KeyMap<u32>,
    /// Column -> term.
    terms: Vec<String>,
    /// Column -> idf.
    idf: Vec<f32>,
    /// Column -> document frequency in training.
    df: Vec<u32>,
    n_train: usize,
}

/// A sparse row-major matrix (compressed sparse rows), as [`Tfidf::transform`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrMatrix {
    /// Number of rows.
    pub n_rows: usize,
    /// Number of columns.
    pub n_cols: usize,
    /// Row `i` is `indices[indptr[i]..indptr[i + 1]]` / `values[...]`; length `n_rows + 1`.
    pub indptr: Vec<usize>,
    /// Column of each stored value, ascending within a row.
    pub indices: Vec<u32>,
    /// The stored values.
    pub values: Vec<f32>,
}

impl CsrMatrix {
    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Columns and values of row `i` (empty for `i` out of range).
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (Some(&start), Some(&end)) = (self.indptr.get(i), self.indptr.get(i + 1)) else {
            return (&[], &[]);
        };
        (self.indices.get(start..end).unwrap_or(&[]), self.values.get(start..end).unwrap_or(&[]))
    }

    /// Dense row-major copy `[n_rows, n_cols]` (`as_slice()` gives the row-major buffer).
    pub fn to_dense(&self) -> Array2<f32> {
        let mut dense = Array2::<f32>::zeros((self.n_rows, self.n_cols));
        for (i, mut row) in dense.outer_iter_mut().enumerate() {
            let (cols, vals) = self.row(i);
            for (&c, &v) in cols.iter().zip(vals) {
                if let Some(x) = row.get_mut(c as usize) {
                    *x = v;
                }
            }
        }
        dense
    }

    /// The rows at `rows`, in that order, as a new matrix (e.g. a validation subset).
    pub fn select_rows(&self, rows: &[usize]) -> CsrMatrix {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0);
        let mut indices = Vec::new();
        let mut values = Vec::new();
        for &r in rows {
            let (c, v) = self.row(r);
            indices.extend_from_slice(c);
            values.extend_from_slice(v);
            indptr.push(values.len());
        }
        CsrMatrix { n_rows: rows.len(), n_cols: self.n_cols, indptr, indices, values }
    }
}

impl Tfidf {
    /// Fits the vocabulary and idf on training texts.
    pub fn fit<S: AsRef<str> + Sync>(texts: &[S], config: &TfidfConfig) -> Result<Tfidf> {
        if config.min_df == 0 {
            return Err(LabError::InvalidConfig {
                what: "min_df",
                reason: "must be at least 1".into(),
            });
        }
        if config.max_features == Some(0) {
            return Err(LabError::InvalidConfig {
                what: "max_features",
                reason: "must be at least 1 (or None for no cap)".into(),
            });
        }
        let tokens: Vec<Vec<String>> =
            texts.par_iter().map(|t| tokenize(t.as_ref(), config.min_token_chars)).collect();

        // Intern tokens (sequential: ids must not depend on thread scheduling).
        let mut token_ids: HashMap<String, u32> = HashMap::new();
        let mut id_tokens: Vec<&str> = Vec::new();
        let mut id_docs: Vec<Vec<u32>> = Vec::with_capacity(tokens.len());
        for doc in &tokens {
            let mut ids = Vec::with_capacity(doc.len());
            for tok in doc {
                let next = id_tokens.len() as u32;
                let id = *token_ids.entry(tok.clone()).or_insert(next);
                if id == next {
                    id_tokens.push(tok);
                }
                ids.push(id);
            }
            id_docs.push(ids);
        }

        // Document frequencies of all terms.
        let bigrams = config.bigrams;
        let df: KeyMap<u32> = id_docs
            .par_iter()
            .fold(KeyMap::<u32>::default, |mut acc, ids| {
                for key in doc_keys(ids, bigrams) {
                    *acc.entry(key).or_insert(0) += 1;
                }
                acc
            })
            .reduce(KeyMap::<u32>::default, |a, b| {
                let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                for (k, v) in small {
                    *big.entry(k).or_insert(0) += v;
                }
                big
            });

        // Candidates: df >= min_df, with their text.
        let term_text = |key: u64| -> String {
            let a = ((key >> 32) as usize).saturating_sub(1);
            let b = (key & 0xFFFF_FFFF) as usize;
            let first = id_tokens.get(a).copied().unwrap_or("");
            if b == 0 {
                first.to_string()
            } else {
                let second = id_tokens.get(b - 1).copied().unwrap_or("");
                format!("{first} {second}")
            }
        };
        let min_df = config.min_df as u32;
        let mut candidates: Vec<(u64, u32, String)> =
            df.iter().filter(|&(_, &d)| d >= min_df).map(|(&k, &d)| (k, d, term_text(k))).collect();
        if candidates.is_empty() {
            return Err(LabError::EmptyVocabulary { n_docs: texts.len(), min_df: config.min_df });
        }
        if let Some(cap) = config.max_features {
            if candidates.len() > cap {
                candidates.par_sort_unstable_by(|x, y| y.1.cmp(&x.1).then_with(|| x.2.cmp(&y.2)));
                candidates.truncate(cap);
            }
        }
        candidates.par_sort_unstable_by(|x, y| x.2.cmp(&y.2));

        let n = texts.len() as f64;
        let mut columns = KeyMap::<u32>::default();
        columns.reserve(candidates.len());
        let mut terms = Vec::with_capacity(candidates.len());
        let mut idf = Vec::with_capacity(candidates.len());
        let mut dfs = Vec::with_capacity(candidates.len());
        for (col, (key, d, text)) in candidates.into_iter().enumerate() {
            columns.insert(key, col as u32);
            terms.push(text);
            idf.push((((1.0 + n) / (1.0 + f64::from(d))).ln() + 1.0) as f32);
            dfs.push(d);
        }
        drop(id_tokens);
        Ok(Tfidf {
            config: config.clone(),
            token_ids,
            columns,
            terms,
            idf,
            df: dfs,
            n_train: texts.len(),
        })
    }

    /// Fits on `texts` and transforms them.
    pub fn fit_transform<S: AsRef<str> + Sync>(
        texts: &[S],
        config: &TfidfConfig,
    ) -> Result<(Tfidf, CsrMatrix)> {
        let model = Tfidf::fit(texts, config)?;
        let x = model.transform(texts);
        Ok((model, x))
    }

    /// TF-IDF rows of `texts` (training, validation or test), L2-normalised.
    pub fn transform<S: AsRef<str> + Sync>(&self, texts: &[S]) -> CsrMatrix {
        let rows: Vec<(Vec<u32>, Vec<f32>)> =
            texts.par_iter().map(|t| self.transform_one(t.as_ref())).collect();
        let nnz = rows.iter().map(|r| r.0.len()).sum();
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0);
        let mut indices = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        for (c, v) in rows {
            indices.extend_from_slice(&c);
            values.extend_from_slice(&v);
            indptr.push(indices.len());
        }
        CsrMatrix { n_rows: texts.len(), n_cols: self.terms.len(), indptr, indices, values }
    }

    /// Dense `[texts, n_features]` TF-IDF matrix.
    pub fn transform_dense<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Array2<f32> {
        self.transform(texts).to_dense()
    }

    fn transform_one(&self, text: &str) -> (Vec<u32>, Vec<f32>) {
        let ids: Vec<u32> = tokenize(text, self.config.min_token_chars)
            .iter()
            .map(|t| self.token_ids.get(t).copied().unwrap_or(UNKNOWN))
            .collect();
        let mut cols: Vec<u32> = Vec::with_capacity(ids.len() * 2);
        let mut push = |key: u64| {
            if let Some(&c) = self.columns.get(&key) {
                cols.push(c);
            }
        };
        for (i, &a) in ids.iter().enumerate() {
            if a == UNKNOWN {
                continue;
            }
            push(unigram_key(a));
            if self.config.bigrams {
                if let Some(&b) = ids.get(i + 1) {
                    if b != UNKNOWN {
                        push(bigram_key(a, b));
                    }
                }
            }
        }
        cols.sort_unstable();
        let mut out_cols = Vec::new();
        let mut out_vals = Vec::new();
        for run in cols.chunk_by(|a, b| a == b) {
            let c = run[0];
            let tf = run.len() as f32;
            let tf = if self.config.sublinear_tf { 1.0 + tf.ln() } else { tf };
            out_cols.push(c);
            out_vals.push(tf * self.idf.get(c as usize).copied().unwrap_or(0.0));
        }
        let norm = out_vals.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
        if norm > 0.0 {
            for v in &mut out_vals {
                *v = (f64::from(*v) / norm) as f32;
            }
        }
        (out_cols, out_vals)
    }

    /// Number of features (columns).
    pub fn n_features(&self) -> usize {
        self.terms.len()
    }

    /// The terms, by column (a bigram is `"first second"`).
    pub fn vocabulary(&self) -> &[String] {
        &self.terms
    }

    /// Column of a term, if it is in the vocabulary.
    pub fn column_of(&self, term: &str) -> Option<usize> {
        self.terms.binary_search_by(|t| t.as_str().cmp(term)).ok()
    }

    /// The idf of each column.
    pub fn idf(&self) -> &[f32] {
        &self.idf
    }

    /// The training document frequency of each column.
    pub fn document_frequency(&self) -> &[u32] {
        &self.df
    }

    /// Number of training documents the vectorizer was fitted on.
    pub fn n_train_docs(&self) -> usize {
        self.n_train
    }

    /// The settings it was fitted with.
    pub fn config(&self) -> &TfidfConfig {
        &self.config
    }
}

/// The distinct term keys of one document (unigrams, and bigrams if asked).
fn doc_keys(ids: &[u32], bigrams: bool) -> Vec<u64> {
    let mut keys: Vec<u64> = Vec::with_capacity(ids.len() * 2);
    keys.extend(ids.iter().map(|&a| unigram_key(a)));
    if bigrams {
        keys.extend(ids.windows(2).map(|w| bigram_key(w[0], w[1])));
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min_df: usize, max_features: Option<usize>) -> TfidfConfig {
        TfidfConfig { bigrams: true, min_df, max_features, sublinear_tf: true, min_token_chars: 1 }
    }

    #[test]
    fn tokenizer() {
        assert_eq!(
            tokenize("U.S. Wheat-exports ROSE 12.5 pct, Café!", 1),
            vec!["u", "s", "wheat", "exports", "rose", "12", "5", "pct", "café"]
        );
        assert_eq!(tokenize("U.S. wheat a 12.5 x_y", 2), vec!["wheat", "12"]);
        assert!(tokenize("  ,.; ", 1).is_empty());
    }

    #[test]
    fn hand_computed_weights() {
        // Docs: "a b a", "b c". n = 2, min_df = 1, no cap.
        // Terms (df): a(1) "a b"(1) "b a"(1) b(2) "b c"(1) c(1).
        let texts = ["a b a", "b c"];
        let (model, x) = Tfidf::fit_transform(&texts, &cfg(1, None)).expect("fit");
        assert_eq!(model.vocabulary(), &["a", "a b", "b", "b a", "b c", "c"]);
        assert_eq!(model.document_frequency(), &[1, 1, 2, 1, 1, 1]);
        let idf1 = (3.0f64 / 2.0).ln() + 1.0;
        let idf2 = 1.0f64;
        for (got, want) in model.idf().iter().zip([idf1, idf1, idf2, idf1, idf1, idf1]) {
            assert!((f64::from(*got) - want).abs() < 1e-6);
        }
        // Doc 0: a tf 2 -> (1 + ln 2) idf1; "a b", "b a" tf 1 -> idf1; b tf 1 -> 1.
        let raw = [(1.0 + 2f64.ln()) * idf1, idf1, 1.0, idf1];
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (cols, vals) = x.row(0);
        assert_eq!(cols, &[0, 1, 2, 3]);
        for (got, want) in vals.iter().zip(raw) {
            assert!((f64::from(*got) - want / norm).abs() < 1e-6, "{got} vs {}", want / norm);
        }
        let (cols, vals) = x.row(1);
        assert_eq!(cols, &[2, 4, 5]);
        let raw = [1.0, idf1, idf1];
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (got, want) in vals.iter().zip(raw) {
            assert!((f64::from(*got) - want / norm).abs() < 1e-6);
        }
        let dense = x.to_dense();
        assert_eq!(dense.shape(), &[2, 6]);
        assert_eq!(dense[[1, 0]], 0.0);
        assert_eq!(dense[[1, 2]], vals[0]);
    }

    #[test]
    fn raw_tf_and_unigrams_only() {
        let config = TfidfConfig {
            bigrams: false,
            min_df: 1,
            max_features: None,
            sublinear_tf: false,
            min_token_chars: 1,
        };
        let model = Tfidf::fit(&["x x x y", "y"], &config).expect("fit");
        assert_eq!(model.vocabulary(), &["x", "y"]);
        let x = model.transform(&["x x x y"]);
        let idf_x = (3.0f64 / 2.0).ln() + 1.0;
        let raw = [3.0 * idf_x, 1.0];
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        let (_, vals) = x.row(0);
        assert!((f64::from(vals[0]) - raw[0] / norm).abs() < 1e-6);
        assert!((f64::from(vals[1]) - raw[1] / norm).abs() < 1e-6);
    }

    #[test]
    fn min_df_and_cap() {
        let texts = ["apple banana", "apple cherry", "apple banana", "date"];
        let model = Tfidf::fit(&texts, &cfg(2, None)).expect("fit");
        assert_eq!(model.vocabulary(), &["apple", "apple banana", "banana"]);
        // Cap 2: apple (df 3), then the tie "apple banana"/"banana" (df 2) goes to the smaller term.
        let model = Tfidf::fit(&texts, &cfg(1, Some(2))).expect("fit");
        assert_eq!(model.vocabulary(), &["apple", "apple banana"]);
        assert_eq!(model.column_of("apple banana"), Some(1));
        assert_eq!(model.column_of("banana"), None);
        assert_eq!(model.n_train_docs(), 4);
    }

    #[test]
    fn unseen_words_and_empty_rows() {
        let model = Tfidf::fit(&["red apple", "green apple"], &cfg(1, None)).expect("fit");
        let x = model.transform(&["purple apple red", "", "zzz"]);
        assert_eq!(x.n_rows, 3);
        let (cols, vals) = x.row(0);
        let got: Vec<&str> =
            cols.iter().map(|&c| model.vocabulary()[c as usize].as_str()).collect();
        assert_eq!(got, vec!["apple", "red"]);
        let norm: f32 = vals.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        assert_eq!(x.row(1).0.len(), 0);
        assert_eq!(x.row(2).0.len(), 0);
        assert_eq!(x.row(9).0.len(), 0);
        let sub = x.select_rows(&[0, 2]);
        assert_eq!(sub.n_rows, 2);
        assert_eq!(sub.row(0), x.row(0));
        assert_eq!(sub.nnz(), x.row(0).0.len());
    }

    #[test]
    fn bad_configs() {
        assert!(matches!(
            Tfidf::fit(&["a"], &cfg(0, None)),
            Err(LabError::InvalidConfig { what: "min_df", .. })
        ));
        assert!(matches!(
            Tfidf::fit(&["a"], &cfg(1, Some(0))),
            Err(LabError::InvalidConfig { what: "max_features", .. })
        ));
        assert!(matches!(
            Tfidf::fit(&["a", "b"], &cfg(2, None)),
            Err(LabError::EmptyVocabulary { n_docs: 2, min_df: 2 })
        ));
        let empty: [&str; 0] = [];
        assert!(Tfidf::fit(&empty, &cfg(1, None)).is_err());
    }

    #[test]
    fn deterministic_across_runs() {
        let texts: Vec<String> =
            (0..200).map(|i| format!("w{} w{} common w{}", i % 7, i % 11, i % 3)).collect();
        let a = Tfidf::fit(&texts, &cfg(2, Some(15))).expect("fit");
        let b = Tfidf::fit(&texts, &cfg(2, Some(15))).expect("fit");
        assert_eq!(a.vocabulary(), b.vocabulary());
        assert_eq!(a.transform(&texts), b.transform(&texts));
    }
}
