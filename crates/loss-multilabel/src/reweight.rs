//! Reweighting matrices: inverse frequency, class-balanced and Distribution-Balanced rebalancing.

use loss_core::config::{CbMode, Reweight, ReweightKind, WeightNorm};
use loss_core::{Backend, ClassStats, DType, LossError, Result};

/// The reweighting matrix `W` of a batch, in f64 and without gradient.
///
/// ```text
/// inverse          W_c  = N_train / n_c
/// sqrt_inverse     W_c  = sqrt(N_train / n_c)
/// class_balanced   CB(n) = (1 − β) / (1 − βⁿ)
///   by_class       W_ic = CB(n_c)
///   average_n      W_ic = CB(mean of n_k over the row's positive labels k)
///   average_w      W_ic = mean of CB(n_k) over the row's positive labels k
///   min_n          W_ic = CB(min of n_k over the row's positive labels k)
///                  (a row without positive labels: CB(∞) = 1 − β)
/// rebalance        r_ic = (1 / n_c) / Σ_{k: y_ik = 1} (1 / n_k)
///                  W_ic = alpha + σ(beta · (r_ic − mu))
///                  (a row without positive labels: r = ∞, so W = alpha + 1 for beta > 0)
/// norm             by_instance: W_i· / max_c W_ic;   by_batch: W / max W
/// ```
///
/// Class statistics and the matrix are held in f64 whatever the logits' type; callers cast the
/// result. The class-level factors are computed on the host, the per-row ones with backend
/// operations on `targets`' device.
///
/// Paper: Huang et al., "Balancing Methods for Multi-label Text Classification with Long-Tailed
/// Class Distribution", EMNLP 2021, <https://aclanthology.org/2021.emnlp-main.643/>;
/// class-balanced weights from Cui et al. (CVPR 2019), rebalancing from Wu et al. (ECCV 2020).
///
/// # Shapes
/// `targets`: `[N, C]`, exactly 0 or 1 (not checked here: [`crate::ResampleLoss`] checks it).
/// Returns `[N, C]` in f64.
///
/// # Errors
/// - [`LossError::InvalidShape`] when `targets` is not 2-D;
/// - [`LossError::ClassCountMismatch`] when `stats` has not `C` classes;
/// - [`LossError::InvalidClassFreq`] naming the first class with `n_c ≤ 0`.
pub fn reweight_matrix<B: Backend>(
    reweight: &Reweight,
    stats: &ClassStats,
    targets: &B,
) -> Result<B> {
    let shape = targets.shape();
    let [_, classes] = shape[..] else {
        return Err(LossError::InvalidShape {
            what: "targets".into(),
            got: shape,
            reason: "expected [N, C]".into(),
        });
    };
    stats.check_usable(classes, false)?;
    let y = targets.to_dtype(DType::F64)?;
    let ones = y.full_like(1.0)?;
    let total = stats.train_num;

    let w = match reweight.kind {
        ReweightKind::Inverse => ones.mul(&class_row(&y, stats, |n| total / n)?)?,
        ReweightKind::SqrtInverse => ones.mul(&class_row(&y, stats, |n| (total / n).sqrt())?)?,
        ReweightKind::ClassBalanced { beta, mode } => {
            ones.mul(&class_balanced_column(&y, stats, beta, mode)?)?
        }
        ReweightKind::Rebalance { alpha, beta, mu } => rebalance(&y, stats, alpha, beta, mu)?,
    };

    match reweight.norm {
        WeightNorm::None => Ok(w),
        // A floor on the divisor keeps an all-zero row (possible with alpha = 0 and a very
        // negative beta) at zero instead of 0/0.
        WeightNorm::ByInstance => w.div(&w.max_dim(1, true)?.clamp(Some(f64::MIN_POSITIVE), None)?),
        WeightNorm::ByBatch => w.div(&w.max_all()?.clamp(Some(f64::MIN_POSITIVE), None)?),
    }
}

/// `f(n_c)` for every class, as a `[1, C]` tensor made like `y`.
fn class_row<B: Backend>(y: &B, stats: &ClassStats, f: impl Fn(f64) -> f64) -> Result<B> {
    let values: Vec<f64> = stats.class_freq.iter().map(|&n| f(n)).collect();
    y.from_values_like(&values, &[1, values.len()])
}

/// The class-balanced weights: `[1, C]` for `by_class`, `[N, 1]` for the per-row modes.
fn class_balanced_column<B: Backend>(
    y: &B,
    stats: &ClassStats,
    beta: f64,
    mode: CbMode,
) -> Result<B> {
    let by_class = || class_row(y, stats, |n| class_balanced(beta, n));
    let has_positive = || y.sum_dim(1, true)?.gt_scalar(0.0);
    let infinity = y.scalar_like(f64::INFINITY)?;
    match mode {
        CbMode::ByClass => by_class(),
        CbMode::AverageN => {
            let mean_n = row_mean(y, &class_row(y, stats, |n| n)?)?;
            class_balanced_of(&has_positive()?.select_where(&mean_n, &infinity)?, beta)
        }
        CbMode::AverageW => {
            let mean_w = row_mean(y, &by_class()?)?;
            has_positive()?.select_where(&mean_w, &y.scalar_like(1.0 - beta)?)
        }
        CbMode::MinN => {
            let carried = y.select_where(&class_row(y, stats, |n| n)?, &infinity)?;
            class_balanced_of(&carried.min_dim(1, true)?, beta)
        }
    }
}

/// Distribution-Balanced rebalancing weights, `[N, C]`.
fn rebalance<B: Backend>(y: &B, stats: &ClassStats, alpha: f64, beta: f64, mu: f64) -> Result<B> {
    let inverse = class_row(y, stats, |n| 1.0 / n)?;
    let repeat_rate = y.mul(&inverse)?.sum_dim(1, true)?;
    let has_positive = repeat_rate.gt_scalar(0.0)?;
    let safe_rate = has_positive.select_where(&repeat_rate, &y.scalar_like(1.0)?)?;
    let r = inverse.div(&safe_rate)?;
    let w = r.add_scalar(-mu)?.mul_scalar(beta)?.sigmoid()?.add_scalar(alpha)?;

    // The limit of σ(beta · (r − mu)) as r → ∞, for rows without a positive label.
    let limit = match beta.partial_cmp(&0.0) {
        Some(std::cmp::Ordering::Greater) => 1.0,
        Some(std::cmp::Ordering::Less) => 0.0,
        _ => 0.5,
    };
    has_positive.select_where(&w, &y.scalar_like(alpha + limit)?)
}

/// `(1 − β) / (1 − βⁿ)`, with `1 − βⁿ` as `−expm1(n ln β)` so that it keeps its digits for `β`
/// close to 1.
fn class_balanced(beta: f64, n: f64) -> f64 {
    (1.0 - beta) / -(n * beta.ln()).exp_m1()
}

/// [`class_balanced`] of a tensor of counts (`+∞` gives `1 − β`).
fn class_balanced_of<B: Backend>(n: &B, beta: f64) -> Result<B> {
    let denom = n.mul_scalar(beta.ln())?.exp()?.neg()?.add_scalar(1.0)?;
    n.full_like(1.0 - beta)?.div(&denom)
}

/// Mean of `values` (`[1, C]`) over each row's positive labels, as `[N, 1]` (0 for a row
/// without any; callers replace those rows).
fn row_mean<B: Backend>(y: &B, values: &B) -> Result<B> {
    let count = y.sum_dim(1, true)?.clamp(Some(1.0), None)?;
    y.mul(values)?.sum_dim(1, true)?.div(&count)
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;

    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    fn weights(kind: ReweightKind, norm: WeightNorm, freq: &[f64], y: &NdTensor) -> Vec<f64> {
        let stats = ClassStats::new(freq.to_vec(), 100.0).unwrap();
        reweight_matrix(&Reweight { kind, norm }, &stats, y).unwrap().to_vec_f64().unwrap()
    }

    fn close(got: &[f64], want: &[f64]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-14 * w.abs(), "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn inverse_and_sqrt_inverse() {
        let y = t(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[2, 3]);

        let inv = weights(ReweightKind::Inverse, WeightNorm::None, &[10.0, 50.0, 4.0], &y);
        let sqrt = weights(ReweightKind::SqrtInverse, WeightNorm::ByBatch, &[10.0, 50.0, 4.0], &y);

        close(&inv, &[10.0, 2.0, 25.0, 10.0, 2.0, 25.0]);
        close(
            &sqrt,
            &[
                10f64.sqrt() / 5.0,
                2f64.sqrt() / 5.0,
                1.0,
                10f64.sqrt() / 5.0,
                2f64.sqrt() / 5.0,
                1.0,
            ],
        );
    }

    #[test]
    fn class_balanced_per_row_modes() {
        // Row 0 carries classes 0 and 2, row 1 nothing.
        let y = t(&[1.0, 0.0, 1.0, 0.0, 0.0, 0.0], &[2, 3]);
        let freq = [1.0, 5.0, 3.0];
        let cb = |n: f64| 0.1 / (1.0 - 0.9_f64.powf(n));
        let kind = |mode| ReweightKind::ClassBalanced { beta: 0.9, mode };

        let by_class = weights(kind(CbMode::ByClass), WeightNorm::None, &freq, &y);
        let average_n = weights(kind(CbMode::AverageN), WeightNorm::None, &freq, &y);
        let average_w = weights(kind(CbMode::AverageW), WeightNorm::None, &freq, &y);
        let min_n = weights(kind(CbMode::MinN), WeightNorm::None, &freq, &y);

        close(&by_class[..3], &[cb(1.0), cb(5.0), cb(3.0)]);
        close(&average_n, &[cb(2.0), cb(2.0), cb(2.0), 0.1, 0.1, 0.1]);
        let w = (cb(1.0) + cb(3.0)) / 2.0;
        close(&average_w, &[w, w, w, 0.1, 0.1, 0.1]);
        close(&min_n, &[cb(1.0), cb(1.0), cb(1.0), 0.1, 0.1, 0.1]);
    }

    #[test]
    fn rebalance_treats_rows_without_labels_as_infinitely_repeated() {
        let y = t(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], &[2, 3]);
        let kind = ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 };

        let w = weights(kind, WeightNorm::None, &[10.0, 40.0, 20.0], &y);

        // r = (1/n_c) / (1/10 + 1/40) = [0.8, 0.2, 0.4] on row 0.
        let f = |r: f64| 0.1 + 1.0 / (1.0 + (-10.0 * (r - 0.9)).exp());
        close(&w, &[f(0.8), f(0.2), f(0.4), 1.1, 1.1, 1.1]);
    }

    #[test]
    fn norms_divide_by_row_or_batch_maximum() {
        let y = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        let kind = ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 };

        let by_instance = weights(kind, WeightNorm::ByInstance, &[10.0, 40.0], &y);
        let by_batch = weights(kind, WeightNorm::ByBatch, &[10.0, 40.0], &y);

        assert_eq!(by_instance[0].max(by_instance[1]), 1.0);
        assert_eq!(by_instance[2].max(by_instance[3]), 1.0);
        assert_eq!(by_batch.iter().copied().fold(0.0, f64::max), 1.0);
    }

    #[test]
    fn a_class_without_examples_is_an_error_naming_it() {
        let y = t(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[1, 6]);
        let stats = ClassStats::new(vec![310.0, 2489.0, 114.0, 17.0, 0.0, 725.0], 7770.0).unwrap();
        let cb = Reweight {
            kind: ReweightKind::ClassBalanced { beta: 0.9, mode: CbMode::ByClass },
            norm: WeightNorm::None,
        };

        let err = reweight_matrix(&cb, &stats, &y).unwrap_err();

        assert!(matches!(err, LossError::InvalidClassFreq { class: 4, .. }), "{err}");
    }
}
