//! Per-class label statistics: how many training documents carry each label.

use serde::{Deserialize, Serialize};

use crate::error::{LossError, Result};

/// `class_freq[c]` = training documents carrying label `c`, and `train_num` = training documents.
///
/// Held in f64, as the reweighting formulas need them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub class_freq: Vec<f64>,
    pub train_num: f64,
}

impl ClassStats {
    /// Validated statistics: `train_num` finite and > 0, every count finite and in
    /// `[0, train_num]`.
    pub fn new(class_freq: Vec<f64>, train_num: f64) -> Result<Self> {
        if !(train_num.is_finite() && train_num > 0.0) {
            return Err(LossError::InvalidConfig {
                key: "train_num".into(),
                reason: format!("must be finite and > 0, got {train_num}"),
            });
        }
        for (class, &n) in class_freq.iter().enumerate() {
            if !n.is_finite() || n < 0.0 {
                return Err(LossError::InvalidClassFreq {
                    class,
                    value: n,
                    reason: "must be a finite count >= 0".into(),
                });
            }
            if n > train_num {
                return Err(LossError::InvalidClassFreq {
                    class,
                    value: n,
                    reason: format!("exceeds train_num = {train_num}"),
                });
            }
        }
        Ok(Self { class_freq, train_num })
    }

    /// Counts labels in a row-major 0/1 matrix of `rows × classes`; any other value is an
    /// error naming its position.
    pub fn from_label_matrix(labels: &[f32], classes: usize) -> Result<Self> {
        if classes == 0 || !labels.len().is_multiple_of(classes) {
            return Err(LossError::InvalidShape {
                what: "label matrix".into(),
                got: vec![labels.len()],
                reason: format!("length is not a multiple of {classes} classes"),
            });
        }
        let rows = labels.len() / classes;
        let mut freq = vec![0.0; classes];
        for (i, &v) in labels.iter().enumerate() {
            match v {
                1.0 => freq[i % classes] += 1.0,
                0.0 => {}
                _ => {
                    return Err(LossError::InvalidValue {
                        what: "label matrix".into(),
                        index: vec![i / classes, i % classes],
                        value: f64::from(v),
                        reason: "labels must be 0 or 1".into(),
                    })
                }
            }
        }
        Self::new(freq, rows as f64)
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_freq.len()
    }

    /// Checks the length against `classes` and that every count is > 0 (reweights need it)
    /// and, with `strictly_below_total`, < `train_num` (NTR's `ln(N/n − 1)` needs it).
    pub fn check_usable(&self, classes: usize, strictly_below_total: bool) -> Result<()> {
        if self.class_freq.len() != classes {
            return Err(LossError::ClassCountMismatch {
                expected: classes,
                got: self.class_freq.len(),
            });
        }
        for (class, &n) in self.class_freq.iter().enumerate() {
            if n <= 0.0 {
                return Err(LossError::InvalidClassFreq {
                    class,
                    value: n,
                    reason: "must be > 0: a class without training examples has no weight".into(),
                });
            }
            if strictly_below_total && n >= self.train_num {
                return Err(LossError::InvalidClassFreq {
                    class,
                    value: n,
                    reason: format!(
                        "must be < train_num = {} for negative-tolerant regularisation",
                        self.train_num
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_label_matrix() {
        let stats = ClassStats::from_label_matrix(&[1.0, 0.0, 1.0, 1.0, 0.0, 0.0], 3).unwrap();
        assert_eq!(stats.class_freq, vec![2.0, 0.0, 1.0]);
        assert_eq!(stats.train_num, 2.0);
    }

    #[test]
    fn rejects_a_non_binary_label_by_position() {
        let err = ClassStats::from_label_matrix(&[1.0, 0.0, 0.5, 1.0], 2).unwrap_err();
        assert!(matches!(err, LossError::InvalidValue { ref index, .. } if *index == vec![1, 0]));
    }

    #[test]
    fn usable_names_the_bad_class() {
        let stats = ClassStats::new(vec![310.0, 2489.0, 114.0, 17.0, 0.0, 725.0], 7770.0).unwrap();
        let err = stats.check_usable(6, false).unwrap_err();
        assert!(matches!(err, LossError::InvalidClassFreq { class: 4, .. }));
        let err = ClassStats::new(vec![10.0, 100.0], 100.0).unwrap().check_usable(2, true);
        assert!(matches!(err, Err(LossError::InvalidClassFreq { class: 1, .. })));
        let err = ClassStats::new(vec![10.0], 100.0).unwrap().check_usable(3, false);
        assert!(matches!(err, Err(LossError::ClassCountMismatch { expected: 3, got: 1 })));
    }
}
