//! Multi-label text datasets: the shared [`Dataset`] type, the two readers ([`reuters`] for the
//! original Reuters-21578 SGML, [`jsonl`] for JSON Lines), a reproducible validation hold-out and
//! the label matrix / label frequencies that the losses need.

pub mod jsonl;
pub mod reuters;

use std::collections::{BTreeMap, BTreeSet};

use ndarray::Array2;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{LabError, Result};

/// A document as read from a source, labels still as names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDoc {
    /// Identifier from the source (Reuters `NEWID`, a JSON `id`, or the line number).
    pub id: String,
    /// The text.
    pub text: String,
    /// Label names, in source order (duplicates allowed; they are merged).
    pub labels: Vec<String>,
}

/// A document of a [`Dataset`]: labels are indices into [`Dataset::label_names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// Identifier from the source.
    pub id: String,
    /// The text.
    pub text: String,
    /// Label indices, ascending and without duplicates.
    pub labels: Vec<usize>,
}

/// Which label names a [`Dataset`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelFilter {
    /// Labels occurring in at least one training and one test document (the ModApte convention).
    #[default]
    InTrainAndTest,
    /// Labels occurring in at least one training document.
    InTrain,
    /// Every label seen anywhere.
    Any,
}

/// How raw documents become a [`Dataset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetOptions {
    /// Which labels to keep.
    pub label_filter: LabelFilter,
    /// Drop documents that are left without any kept label.
    pub drop_unlabeled: bool,
}

impl Default for DatasetOptions {
    /// ModApte-style: labels in train and test, unlabeled documents dropped.
    fn default() -> Self {
        DatasetOptions { label_filter: LabelFilter::InTrainAndTest, drop_unlabeled: true }
    }
}

/// A multi-label dataset with a fixed train/test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Training documents, in source order.
    pub train: Vec<Doc>,
    /// Test documents, in source order.
    pub test: Vec<Doc>,
    /// Label names, sorted by byte order; a [`Doc`]'s labels index into this.
    pub label_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset from raw documents: picks the label set by `options.label_filter`
    /// (sorted by name), maps names to indices, drops labels outside the set and, with
    /// `options.drop_unlabeled`, documents left without any label.
    pub fn from_raw(train: Vec<RawDoc>, test: Vec<RawDoc>, options: &DatasetOptions) -> Dataset {
        let names_in = |docs: &[RawDoc]| -> BTreeSet<String> {
            docs.iter().flat_map(|d| d.labels.iter().cloned()).collect()
        };
        let in_train = names_in(&train);
        let in_test = names_in(&test);
        let kept: BTreeSet<String> = match options.label_filter {
            LabelFilter::InTrainAndTest => in_train.intersection(&in_test).cloned().collect(),
            LabelFilter::InTrain => in_train,
            LabelFilter::Any => in_train.union(&in_test).cloned().collect(),
        };
        let label_names: Vec<String> = kept.into_iter().collect();
        let index: BTreeMap<&str, usize> =
            label_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let convert = |docs: Vec<RawDoc>| -> Vec<Doc> {
            docs.into_iter()
                .filter_map(|raw| {
                    let mut labels: Vec<usize> =
                        raw.labels.iter().filter_map(|n| index.get(n.as_str()).copied()).collect();
                    labels.sort_unstable();
                    labels.dedup();
                    if labels.is_empty() && options.drop_unlabeled {
                        None
                    } else {
                        Some(Doc { id: raw.id, text: raw.text, labels })
                    }
                })
                .collect()
        };
        let train = convert(train);
        let test = convert(test);
        Dataset { train, test, label_names }
    }

    /// Number of labels.
    pub fn n_labels(&self) -> usize {
        self.label_names.len()
    }

    /// Index of a label by name.
    pub fn label_index(&self, name: &str) -> Option<usize> {
        self.label_names.iter().position(|n| n == name)
    }

    /// Number of training documents carrying each label.
    pub fn train_label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.n_labels()];
        for doc in &self.train {
            for &l in &doc.labels {
                if let Some(c) = counts.get_mut(l) {
                    *c += 1;
                }
            }
        }
        counts
    }

    /// Mean number of labels per document over train and test.
    pub fn mean_labels_per_doc(&self) -> f64 {
        let n = self.train.len() + self.test.len();
        if n == 0 {
            return 0.0;
        }
        let total: usize = self.train.iter().chain(&self.test).map(|d| d.labels.len()).sum();
        total as f64 / n as f64
    }
}

/// A split of `0..n_docs` into a training part and a held-out validation part (indices, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdout {
    /// Indices that stay for training.
    pub train: Vec<usize>,
    /// Indices held out for validation.
    pub val: Vec<usize>,
}

impl Holdout {
    /// Holds out `n_val` of `n_docs` documents, chosen uniformly at random from `seed`.
    ///
    /// The algorithm is fixed so the split is the same on every platform and crate version:
    /// a [`ChaCha8Rng`] seeded by `SeedableRng::seed_from_u64(seed)` drives a partial
    /// Fisher–Yates shuffle of `0..n_docs` (for `i` in `0..n_val`, swap position `i` with
    /// `i + u`, `u` uniform in `0..n_docs - i` by rejection sampling on `next_u64`); the first
    /// `n_val` positions are the validation set. Both parts are returned sorted.
    ///
    /// The paper's setting is `n_val = 1000`, `seed = 123`. Fails if `n_val >= n_docs`, which would
    /// leave nothing to train on (`n_val = 0` is allowed).
    pub fn new(n_docs: usize, n_val: usize, seed: u64) -> Result<Holdout> {
        if n_val >= n_docs && n_val > 0 {
            return Err(LabError::SplitTooLarge { requested: n_val, available: n_docs });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut perm: Vec<usize> = (0..n_docs).collect();
        for i in 0..n_val {
            let j = i + uniform_below(&mut rng, (n_docs - i) as u64) as usize;
            perm.swap(i, j);
        }
        let mut val = perm[..n_val].to_vec();
        let mut train = perm[n_val..].to_vec();
        val.sort_unstable();
        train.sort_unstable();
        Ok(Holdout { train, val })
    }

    /// The held-out part of `items` (e.g. `&dataset.train`).
    pub fn val_of<'a, T>(&self, items: &'a [T]) -> Vec<&'a T> {
        self.val.iter().filter_map(|&i| items.get(i)).collect()
    }

    /// The remaining training part of `items`.
    pub fn train_of<'a, T>(&self, items: &'a [T]) -> Vec<&'a T> {
        self.train.iter().filter_map(|&i| items.get(i)).collect()
    }
}

/// Uniform integer in `0..bound` (`bound > 0`) by rejection sampling: no modulo bias.
fn uniform_below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    if bound <= 1 {
        return 0;
    }
    // Largest multiple of `bound` that fits; values at or above it are rejected.
    let zone = u64::MAX - (u64::MAX % bound + 1) % bound;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return x % bound;
        }
    }
}

/// Dense 0/1 label matrix `[docs, n_labels]`, row-major (`as_slice()` is available).
pub fn label_matrix<'a, I>(docs: I, n_labels: usize) -> Result<Array2<f32>>
where
    I: IntoIterator<Item = &'a Doc>,
{
    let docs: Vec<&Doc> = docs.into_iter().collect();
    let mut y = Array2::<f32>::zeros((docs.len(), n_labels));
    for (row, doc) in docs.iter().enumerate() {
        for &label in &doc.labels {
            match y.get_mut((row, label)) {
                Some(v) => *v = 1.0,
                None => return Err(LabError::LabelOutOfRange { doc: row, label, n_labels }),
            }
        }
    }
    Ok(y)
}

/// Label frequencies of a training set, as the re-balancing losses take them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStats {
    /// Number of documents carrying each label.
    pub class_freq: Vec<f64>,
    /// Number of documents.
    pub train_num: usize,
}

impl LabelStats {
    /// Counts label occurrences over `docs`.
    pub fn from_docs<'a, I>(docs: I, n_labels: usize) -> Result<LabelStats>
    where
        I: IntoIterator<Item = &'a Doc>,
    {
        let mut class_freq = vec![0.0f64; n_labels];
        let mut train_num = 0usize;
        for (row, doc) in docs.into_iter().enumerate() {
            for &label in &doc.labels {
                match class_freq.get_mut(label) {
                    Some(c) => *c += 1.0,
                    None => return Err(LabError::LabelOutOfRange { doc: row, label, n_labels }),
                }
            }
            train_num += 1;
        }
        Ok(LabelStats { class_freq, train_num })
    }

    /// Number of documents *not* carrying each label (`train_num - class_freq`).
    pub fn neg_class_freq(&self) -> Vec<f64> {
        self.class_freq.iter().map(|&c| self.train_num as f64 - c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str, labels: &[&str]) -> RawDoc {
        RawDoc {
            id: id.to_string(),
            text: format!("text {id}"),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn from_raw_keeps_labels_in_train_and_test() {
        let train = vec![raw("1", &["b", "a"]), raw("2", &["c"]), raw("3", &["a", "a"])];
        let test = vec![raw("4", &["a"]), raw("5", &["b", "d"]), raw("6", &["d"])];
        let ds = Dataset::from_raw(train, test, &DatasetOptions::default());
        assert_eq!(ds.label_names, vec!["a", "b"]);
        let ids: Vec<&str> = ds.train.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec!["1", "3"]);
        assert_eq!(ds.train[0].labels, vec![0, 1]);
        assert_eq!(ds.train[1].labels, vec![0]);
        let ids: Vec<&str> = ds.test.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec!["4", "5"]);
        assert_eq!(ds.train_label_counts(), vec![2, 1]);
        assert!((ds.mean_labels_per_doc() - 5.0 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn from_raw_other_filters() {
        let train = vec![raw("1", &["b"]), raw("2", &[])];
        let test = vec![raw("3", &["z"])];
        let opts = DatasetOptions { label_filter: LabelFilter::InTrain, drop_unlabeled: false };
        let ds = Dataset::from_raw(train.clone(), test.clone(), &opts);
        assert_eq!(ds.label_names, vec!["b"]);
        assert_eq!(ds.train.len(), 2);
        assert_eq!(ds.test.len(), 1);
        assert!(ds.test[0].labels.is_empty());
        let opts = DatasetOptions { label_filter: LabelFilter::Any, drop_unlabeled: true };
        let ds = Dataset::from_raw(train, test, &opts);
        assert_eq!(ds.label_names, vec!["b", "z"]);
        assert_eq!(ds.train.len(), 1);
        assert_eq!(ds.test[0].labels, vec![1]);
        assert_eq!(ds.label_index("z"), Some(1));
    }

    #[test]
    fn holdout_is_a_partition_and_reproducible() {
        let h = Holdout::new(100, 30, 123).expect("valid split");
        assert_eq!(h.val.len(), 30);
        assert_eq!(h.train.len(), 70);
        let mut all: Vec<usize> = h.val.iter().chain(&h.train).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(h, Holdout::new(100, 30, 123).expect("valid split"));
        assert_ne!(h, Holdout::new(100, 30, 124).expect("valid split"));
        let items: Vec<u32> = (0..100).map(|i| i * 10).collect();
        assert_eq!(*h.val_of(&items)[0], h.val[0] as u32 * 10);
        assert_eq!(h.train_of(&items).len(), 70);
    }

    #[test]
    fn holdout_is_pinned() {
        // Pins the algorithm (ChaCha8, seed_from_u64, partial Fisher-Yates with rejection
        // sampling): a change here changes every experiment's validation set.
        let h = Holdout::new(20, 5, 123).expect("valid split");
        assert_eq!(h.val, PINNED_VAL_20_5_123);
    }

    const PINNED_VAL_20_5_123: [usize; 5] = [4, 9, 11, 15, 19];

    #[test]
    fn holdout_edge_cases() {
        assert!(matches!(
            Holdout::new(10, 10, 1),
            Err(LabError::SplitTooLarge { requested: 10, available: 10 })
        ));
        let h = Holdout::new(10, 0, 1).expect("empty holdout is fine");
        assert!(h.val.is_empty());
        assert_eq!(h.train.len(), 10);
        let h = Holdout::new(0, 0, 1).expect("empty dataset, empty holdout");
        assert!(h.train.is_empty());
    }

    #[test]
    fn uniform_below_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen = [0usize; 3];
        for _ in 0..3000 {
            let v = uniform_below(&mut rng, 3) as usize;
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 900), "{seen:?}");
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn label_matrix_and_stats() {
        let docs = vec![
            Doc { id: "a".into(), text: String::new(), labels: vec![0, 2] },
            Doc { id: "b".into(), text: String::new(), labels: vec![1] },
            Doc { id: "c".into(), text: String::new(), labels: vec![2] },
        ];
        let y = label_matrix(&docs, 3).expect("in range");
        assert_eq!(y.shape(), &[3, 3]);
        assert_eq!(y.as_slice(), Some(&[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0][..]));
        let s = LabelStats::from_docs(&docs, 3).expect("in range");
        assert_eq!(s.class_freq, vec![1.0, 1.0, 2.0]);
        assert_eq!(s.train_num, 3);
        assert_eq!(s.neg_class_freq(), vec![2.0, 2.0, 1.0]);
        assert!(matches!(
            label_matrix(&docs, 2),
            Err(LabError::LabelOutOfRange { doc: 0, label: 2, n_labels: 2 })
        ));
        assert!(LabelStats::from_docs(&docs, 2).is_err());
    }
}
