//! Multi-label scores: micro-/macro-F1, per-label F1, threshold tuning and scores per label group
//! (head / medium / tail by training frequency), as the EMNLP 2021 balancing-loss paper reports them.
//!
//! Conventions:
//! - A document has a label predicted when its score is `>= threshold` (a NaN score never is),
//!   and has it in truth when its target is `>= 0.5`.
//! - `F1 = 2·TP / (2·TP + FP + FN)`, and `F1 = 0` when `2·TP + FP + FN = 0`, i.e. when a label has
//!   neither predictions nor true occurrences. This is scikit-learn's `zero_division=0`.
//! - Micro-F1 pools TP/FP/FN over the labels concerned; macro-F1 is the unweighted mean of their
//!   per-label F1 (labels with zero F1 by the rule above included); over no labels at all, both
//!   are 0.

use ndarray::ArrayView2;
use serde::Serialize;

use crate::error::{LabError, Result};

/// `2·tp / (2·tp + fp + fn)`, 0 when the denominator is 0.
pub fn f1(tp: u64, fp: u64, fn_: u64) -> f64 {
    let den = 2 * tp + fp + fn_;
    if den == 0 {
        0.0
    } else {
        (2 * tp) as f64 / den as f64
    }
}

/// True positives, false positives and false negatives per label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCounts {
    /// True positives per label.
    pub tp: Vec<u64>,
    /// False positives per label.
    pub fp: Vec<u64>,
    /// False negatives per label.
    pub fn_: Vec<u64>,
}

fn check_same_shape(scores: &[usize], targets: &[usize]) -> Result<()> {
    if scores != targets {
        return Err(LabError::ShapeMismatch {
            what: "targets (must match the scores)",
            expected: scores.to_vec(),
            found: targets.to_vec(),
        });
    }
    Ok(())
}

impl LabelCounts {
    /// Counts from scores `[docs, labels]` (predicted when `>= threshold`) and 0/1 targets of the
    /// same shape (positive when `>= 0.5`).
    pub fn from_scores(
        scores: ArrayView2<'_, f32>,
        targets: ArrayView2<'_, f32>,
        threshold: f32,
    ) -> Result<LabelCounts> {
        check_same_shape(scores.shape(), targets.shape())?;
        let n_labels = scores.ncols();
        let mut c = LabelCounts::zeros(n_labels);
        for (srow, trow) in scores.outer_iter().zip(targets.outer_iter()) {
            for (l, (&s, &t)) in srow.iter().zip(trow.iter()).enumerate() {
                c.add(l, s >= threshold, t >= 0.5);
            }
        }
        Ok(c)
    }

    /// Counts from boolean predictions and truth of the same shape `[docs, labels]`.
    pub fn from_predictions(
        predicted: ArrayView2<'_, bool>,
        truth: ArrayView2<'_, bool>,
    ) -> Result<LabelCounts> {
        check_same_shape(predicted.shape(), truth.shape())?;
        let mut c = LabelCounts::zeros(predicted.ncols());
        for (prow, trow) in predicted.outer_iter().zip(truth.outer_iter()) {
            for (l, (&p, &t)) in prow.iter().zip(trow.iter()).enumerate() {
                c.add(l, p, t);
            }
        }
        Ok(c)
    }

    fn zeros(n_labels: usize) -> LabelCounts {
        LabelCounts { tp: vec![0; n_labels], fp: vec![0; n_labels], fn_: vec![0; n_labels] }
    }

    fn add(&mut self, label: usize, predicted: bool, truth: bool) {
        let slot = match (predicted, truth) {
            (true, true) => self.tp.get_mut(label),
            (true, false) => self.fp.get_mut(label),
            (false, true) => self.fn_.get_mut(label),
            (false, false) => None,
        };
        if let Some(v) = slot {
            *v += 1;
        }
    }

    /// Number of labels.
    pub fn n_labels(&self) -> usize {
        self.tp.len()
    }

    /// F1 of each label.
    pub fn per_label_f1(&self) -> Vec<f64> {
        (0..self.n_labels()).map(|l| self.label_f1(l)).collect()
    }

    fn label_f1(&self, l: usize) -> f64 {
        let get = |v: &Vec<u64>| v.get(l).copied().unwrap_or(0);
        f1(get(&self.tp), get(&self.fp), get(&self.fn_))
    }

    /// Micro-F1 over all labels.
    pub fn micro_f1(&self) -> f64 {
        f1(self.tp.iter().sum(), self.fp.iter().sum(), self.fn_.iter().sum())
    }

    /// Macro-F1 over all labels.
    pub fn macro_f1(&self) -> f64 {
        mean((0..self.n_labels()).map(|l| self.label_f1(l)))
    }

    /// Micro-F1 over the given labels only (indices out of range are ignored).
    pub fn micro_f1_of(&self, labels: &[usize]) -> f64 {
        let sum = |v: &Vec<u64>| labels.iter().filter_map(|&l| v.get(l)).sum::<u64>();
        f1(sum(&self.tp), sum(&self.fp), sum(&self.fn_))
    }

    /// Macro-F1 over the given labels only (indices out of range are ignored).
    pub fn macro_f1_of(&self, labels: &[usize]) -> f64 {
        mean(labels.iter().filter(|&&l| l < self.n_labels()).map(|&l| self.label_f1(l)))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The paper's threshold grid: 0.40, 0.41, …, 0.60 (21 values, each `i / 100` for `i` in 40..=60).
pub fn default_thresholds() -> Vec<f32> {
    (40..=60).map(|i| i as f32 / 100.0).collect()
}

/// The threshold picked by [`tune_threshold`] and the micro-F1 it gives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdChoice {
    /// The threshold.
    pub threshold: f32,
    /// Micro-F1 at that threshold.
    pub micro_f1: f64,
}

/// Picks the threshold of `thresholds` with the best micro-F1 (ties: the lowest threshold).
///
/// Fails on an empty grid, a non-finite threshold or mismatched shapes.
pub fn tune_threshold(
    scores: ArrayView2<'_, f32>,
    targets: ArrayView2<'_, f32>,
    thresholds: &[f32],
) -> Result<ThresholdChoice> {
    if thresholds.is_empty() {
        return Err(LabError::InvalidConfig {
            what: "thresholds",
            reason: "the grid is empty".into(),
        });
    }
    if let Some(bad) = thresholds.iter().find(|t| !t.is_finite()) {
        return Err(LabError::InvalidConfig {
            what: "thresholds",
            reason: format!("{bad} is not a finite number"),
        });
    }
    check_same_shape(scores.shape(), targets.shape())?;
    let mut grid = thresholds.to_vec();
    grid.sort_by(f32::total_cmp);
    let mut best: Option<ThresholdChoice> = None;
    for &t in &grid {
        let micro = LabelCounts::from_scores(scores, targets, t)?.micro_f1();
        if best.is_none_or(|b| micro > b.micro_f1) {
            best = Some(ThresholdChoice { threshold: t, micro_f1: micro });
        }
    }
    best.ok_or(LabError::InvalidConfig { what: "thresholds", reason: "the grid is empty".into() })
}

/// A label group by training frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FreqGroup {
    /// Frequent labels (`freq >= head_min`).
    Head,
    /// In between.
    Medium,
    /// Rare labels (`freq <= tail_max`).
    Tail,
}

impl FreqGroup {
    /// The three groups in report order.
    pub const ALL: [FreqGroup; 3] = [FreqGroup::Head, FreqGroup::Medium, FreqGroup::Tail];

    /// Lowercase name: `head`, `medium`, `tail`.
    pub fn name(self) -> &'static str {
        match self {
            FreqGroup::Head => "head",
            FreqGroup::Medium => "medium",
            FreqGroup::Tail => "tail",
        }
    }
}

/// Where the groups start and end, in numbers of training documents per label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GroupThresholds {
    /// A label with at least this many training documents is in the head.
    pub head_min: f64,
    /// A label with at most this many training documents is in the tail.
    pub tail_max: f64,
}

impl Default for GroupThresholds {
    /// The paper's Reuters groups: head >= 35, medium 9–34, tail <= 8.
    fn default() -> Self {
        GroupThresholds { head_min: 35.0, tail_max: 8.0 }
    }
}

impl GroupThresholds {
    /// The group of a label with training frequency `freq`.
    pub fn group_of(&self, freq: f64) -> FreqGroup {
        if freq >= self.head_min {
            FreqGroup::Head
        } else if freq <= self.tail_max {
            FreqGroup::Tail
        } else {
            FreqGroup::Medium
        }
    }

    /// The group of each label, from the labels' training frequencies (`class_freq`).
    /// Fails unless `tail_max < head_min`.
    pub fn assign(&self, class_freq: &[f64]) -> Result<Vec<FreqGroup>> {
        if self.tail_max.is_nan() || self.head_min.is_nan() || self.tail_max >= self.head_min {
            return Err(LabError::InvalidConfig {
                what: "group thresholds",
                reason: format!(
                    "tail_max ({}) must be below head_min ({})",
                    self.tail_max, self.head_min
                ),
            });
        }
        Ok(class_freq.iter().map(|&f| self.group_of(f)).collect())
    }
}

/// Scores restricted to the labels of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScore {
    /// The group.
    pub group: FreqGroup,
    /// How many labels it has.
    pub n_labels: usize,
    /// Micro-F1 over its labels (0 if it has none).
    pub micro_f1: f64,
    /// Macro-F1 over its labels (0 if it has none).
    pub macro_f1: f64,
}

/// Micro- and macro-F1 of each group (head, medium, tail, in that order), `groups[l]` being the
/// group of label `l`.
pub fn group_scores(counts: &LabelCounts, groups: &[FreqGroup]) -> Result<Vec<GroupScore>> {
    if groups.len() != counts.n_labels() {
        return Err(LabError::ShapeMismatch {
            what: "label groups (one per label)",
            expected: vec![counts.n_labels()],
            found: vec![groups.len()],
        });
    }
    Ok(FreqGroup::ALL
        .iter()
        .map(|&g| {
            let labels: Vec<usize> =
                groups.iter().enumerate().filter(|(_, &x)| x == g).map(|(l, _)| l).collect();
            GroupScore {
                group: g,
                n_labels: labels.len(),
                micro_f1: counts.micro_f1_of(&labels),
                macro_f1: counts.macro_f1_of(&labels),
            }
        })
        .collect())
}

/// Everything reported for one set of scores at one threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// The decision threshold used.
    pub threshold: f32,
    /// Micro-F1 over all labels.
    pub micro_f1: f64,
    /// Macro-F1 over all labels.
    pub macro_f1: f64,
    /// F1 of each label.
    pub per_label_f1: Vec<f64>,
    /// Head / medium / tail scores.
    pub groups: Vec<GroupScore>,
}

/// Scores `[docs, labels]` against 0/1 targets at `threshold`, overall, per label and per group.
pub fn evaluate(
    scores: ArrayView2<'_, f32>,
    targets: ArrayView2<'_, f32>,
    threshold: f32,
    groups: &[FreqGroup],
) -> Result<Evaluation> {
    let counts = LabelCounts::from_scores(scores, targets, threshold)?;
    Ok(Evaluation {
        threshold,
        micro_f1: counts.micro_f1(),
        macro_f1: counts.macro_f1(),
        per_label_f1: counts.per_label_f1(),
        groups: group_scores(&counts, groups)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// 4 documents, 3 labels.
    fn example() -> (Array2<f32>, Array2<f32>) {
        let targets = array![[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let scores = array![[0.9, 0.2, 0.45], [0.6, 0.7, 0.1], [0.3, 0.55, 0.0], [0.1, 0.1, 0.8]];
        (scores, targets)
    }

    #[test]
    fn f1_definition() {
        assert!(close(f1(1, 1, 1), 0.5));
        assert!(close(f1(0, 0, 0), 0.0));
        assert!(close(f1(0, 3, 0), 0.0));
        assert!(close(f1(2, 0, 0), 1.0));
    }

    #[test]
    fn counts_at_half() {
        // Predictions at 0.5: [1,0,0] [1,1,0] [0,1,0] [0,0,1].
        // label 0: tp 1 fp 1 fn 1 -> 1/2; label 1: tp 2 -> 1; label 2: tp 1 fn 1 -> 2/3.
        let (s, t) = example();
        let c = LabelCounts::from_scores(s.view(), t.view(), 0.5).expect("shapes match");
        assert_eq!(c.tp, vec![1, 2, 1]);
        assert_eq!(c.fp, vec![1, 0, 0]);
        assert_eq!(c.fn_, vec![1, 0, 1]);
        let per = c.per_label_f1();
        assert!(close(per[0], 0.5) && close(per[1], 1.0) && close(per[2], 2.0 / 3.0));
        // micro: tp 4, fp 1, fn 2 -> 8 / 11.
        assert!(close(c.micro_f1(), 8.0 / 11.0));
        assert!(close(c.macro_f1(), (0.5 + 1.0 + 2.0 / 3.0) / 3.0));
        // Over labels 0 and 2: tp 2, fp 1, fn 2 -> 4/7; macro (1/2 + 2/3) / 2 = 7/12.
        assert!(close(c.micro_f1_of(&[0, 2]), 4.0 / 7.0));
        assert!(close(c.macro_f1_of(&[0, 2]), 7.0 / 12.0));
        assert!(close(c.micro_f1_of(&[]), 0.0));
        assert!(close(c.macro_f1_of(&[]), 0.0));
    }

    #[test]
    fn from_predictions_matches() {
        let (s, t) = example();
        let p = s.mapv(|v| v >= 0.5);
        let tb = t.mapv(|v| v >= 0.5);
        let a = LabelCounts::from_predictions(p.view(), tb.view()).expect("shapes match");
        let b = LabelCounts::from_scores(s.view(), t.view(), 0.5).expect("shapes match");
        assert_eq!(a, b);
    }

    #[test]
    fn label_without_predictions_or_truth_counts_as_zero_in_macro() {
        let targets = array![[1.0, 0.0], [0.0, 0.0]];
        let scores = array![[0.9, 0.1], [0.2, 0.3]];
        let c = LabelCounts::from_scores(scores.view(), targets.view(), 0.5).expect("shapes");
        assert_eq!(c.per_label_f1(), vec![1.0, 0.0]);
        assert!(close(c.micro_f1(), 1.0));
        assert!(close(c.macro_f1(), 0.5));
    }

    #[test]
    fn nan_scores_are_never_predicted() {
        let targets = array![[1.0f32]];
        let scores = array![[f32::NAN]];
        let c = LabelCounts::from_scores(scores.view(), targets.view(), 0.0).expect("shapes");
        assert_eq!((c.tp[0], c.fp[0], c.fn_[0]), (0, 0, 1));
    }

    #[test]
    fn tuning_picks_best_and_lowest_on_ties() {
        let grid = default_thresholds();
        assert_eq!(grid.len(), 21);
        assert_eq!(grid[0], 0.40);
        assert_eq!(grid[5], 0.45);
        assert_eq!(grid[20], 0.60);
        // At t <= 0.45 the 0.45 score counts too: tp 5, fp 1, fn 1 -> 5/6, the best; 0.40 to 0.45
        // tie, so 0.40 wins.
        let (s, t) = example();
        let choice = tune_threshold(s.view(), t.view(), &grid).expect("valid grid");
        assert_eq!(choice.threshold, 0.40);
        assert!(close(choice.micro_f1, 5.0 / 6.0));
        // Unsorted grid: same answer.
        let choice = tune_threshold(s.view(), t.view(), &[0.5, 0.45, 0.43]).expect("valid");
        assert_eq!(choice.threshold, 0.43);
        // Above 0.55 the 0.55 score is lost: tp 3, fp 1, fn 3 -> 6/10.
        let choice = tune_threshold(s.view(), t.view(), &[0.58]).expect("valid");
        assert!(close(choice.micro_f1, 0.6));
    }

    #[test]
    fn tuning_rejects_bad_input() {
        let (s, t) = example();
        assert!(tune_threshold(s.view(), t.view(), &[]).is_err());
        assert!(tune_threshold(s.view(), t.view(), &[0.5, f32::NAN]).is_err());
        let t2 = Array2::<f32>::zeros((4, 2));
        assert!(matches!(
            tune_threshold(s.view(), t2.view(), &[0.5]),
            Err(LabError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn groups_by_frequency() {
        let th = GroupThresholds::default();
        let freq = [35.0, 34.0, 9.0, 8.0, 0.0, 3964.0];
        let groups = th.assign(&freq).expect("valid thresholds");
        use FreqGroup::*;
        assert_eq!(groups, vec![Head, Medium, Medium, Tail, Tail, Head]);
        let bad = GroupThresholds { head_min: 5.0, tail_max: 5.0 };
        assert!(bad.assign(&freq).is_err());
        assert_eq!(Medium.name(), "medium");
    }

    #[test]
    fn group_scores_and_evaluate() {
        let (s, t) = example();
        let groups = [FreqGroup::Head, FreqGroup::Tail, FreqGroup::Head];
        let e = evaluate(s.view(), t.view(), 0.5, &groups).expect("consistent");
        assert!(close(e.micro_f1, 8.0 / 11.0));
        assert_eq!(e.groups.len(), 3);
        let head = &e.groups[0];
        assert_eq!((head.group, head.n_labels), (FreqGroup::Head, 2));
        assert!(close(head.micro_f1, 4.0 / 7.0));
        assert!(close(head.macro_f1, 7.0 / 12.0));
        let medium = &e.groups[1];
        assert_eq!(medium.n_labels, 0);
        assert!(close(medium.micro_f1, 0.0) && close(medium.macro_f1, 0.0));
        let tail = &e.groups[2];
        assert_eq!(tail.n_labels, 1);
        assert!(close(tail.micro_f1, 1.0) && close(tail.macro_f1, 1.0));
        assert!(evaluate(s.view(), t.view(), 0.5, &groups[..2]).is_err());
        let json = serde_json::to_string(&e).expect("serializable");
        assert!(json.contains("\"group\":\"head\""), "{json}");
    }
}
