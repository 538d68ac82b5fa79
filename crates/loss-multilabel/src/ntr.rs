//! Negative-tolerant regularisation (NTR) of the Distribution-Balanced loss.

use loss_core::config::Ntr;
use loss_core::{Backend, ClassStats, Result};

/// The per-class logit bias `ν` of negative-tolerant regularisation, in f64.
///
/// ```text
/// ν_c = −kappa · ln(N_train / n_c − 1)          (÷ lambda with bias_over_lambda)
/// ```
///
/// `ν_c` is the logit at which a classifier with no information predicts the class prior, so a
/// rare class starts out strongly negative. The original Distribution-Balanced code divided `ν`
/// by `lambda` as well, which its author later called a bug; `bias_over_lambda` reproduces it.
///
/// Paper: Huang et al., EMNLP 2021, <https://aclanthology.org/2021.emnlp-main.643/>; NTR from
/// Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed
/// Datasets", ECCV 2020.
///
/// # Errors
/// [`loss_core::LossError::InvalidClassFreq`] naming the first class with `n_c ≤ 0` or
/// `n_c ≥ N_train` (where the logarithm is undefined).
pub fn ntr_bias(stats: &ClassStats, ntr: &Ntr) -> Result<Vec<f64>> {
    stats.check_usable(stats.num_classes(), true)?;
    let divisor = if ntr.bias_over_lambda { ntr.lambda } else { 1.0 };
    let bias = |n: &f64| -ntr.kappa * (stats.train_num / n - 1.0).ln() / divisor;
    Ok(stats.class_freq.iter().map(bias).collect())
}

/// The regularised logits: the bias added, then negatives scaled by `lambda`.
///
/// ```text
/// x' = z + ν,    x = x' where y = 1,   x = lambda · x' where y = 0
/// ```
///
/// A new tensor: the caller's logits are never changed (the reference adds `ν` in place, which
/// fails on leaf tensors that require grad).
///
/// # Shapes
/// `logits`, `targets`: `[N, C]` with targets exactly 0 or 1; `bias`: `[1, C]`. Returns `[N, C]`.
///
/// # Errors
/// Only what the backend reports.
pub fn regularise_logits<B: Backend>(logits: &B, targets: &B, bias: &B, lambda: f64) -> Result<B> {
    let scale = targets.select_where(&targets.scalar_like(1.0)?, &targets.scalar_like(lambda)?)?;
    logits.add(bias)?.mul(&scale)
}

#[cfg(test)]
mod tests {
    use loss_core::config::NegativeWeight;
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::LossError;

    use super::*;

    fn ntr(bias_over_lambda: bool) -> Ntr {
        Ntr { kappa: 0.05, lambda: 2.0, negative_weight: NegativeWeight::Auto, bias_over_lambda }
    }

    #[test]
    fn bias_of_the_issue_example() {
        let stats = ClassStats::new(vec![10.0, 50.0, 90.0], 100.0).unwrap();

        let nu = ntr_bias(&stats, &ntr(false)).unwrap();
        let halved = ntr_bias(&stats, &ntr(true)).unwrap();

        // -0.05 * torch.log(100 / torch.tensor([10., 50., 90.], dtype=torch.float64) - 1)
        // = [-0.10986122886681099, -0.0, 0.10986122886681096]
        let want = [-0.10986122886681099, 0.0, 0.10986122886681096];
        for i in 0..3 {
            assert!((nu[i] - want[i]).abs() <= 1e-16, "{nu:?}");
            assert!((halved[i] - want[i] / 2.0).abs() <= 1e-16, "{halved:?}");
        }
    }

    #[test]
    fn counts_that_leave_the_log_undefined_are_errors() {
        let at_total = ClassStats::new(vec![10.0, 100.0], 100.0).unwrap();
        let zero = ClassStats::new(vec![0.0, 10.0], 100.0).unwrap();

        let err = ntr_bias(&at_total, &ntr(false)).unwrap_err();
        assert!(matches!(err, LossError::InvalidClassFreq { class: 1, .. }), "{err}");
        let err = ntr_bias(&zero, &ntr(false)).unwrap_err();
        assert!(matches!(err, LossError::InvalidClassFreq { class: 0, .. }), "{err}");
    }

    #[test]
    fn negatives_are_scaled_after_the_bias() {
        let z = NdTensor::from_f64(vec![1.0, 1.0], &[1, 2]).unwrap();
        let y = NdTensor::from_f64(vec![1.0, 0.0], &[1, 2]).unwrap();
        let bias = NdTensor::from_f64(vec![0.5, 0.5], &[1, 2]).unwrap();

        let x = regularise_logits(&z, &y, &bias, 2.0).unwrap();

        assert_eq!(x.to_vec_f64().unwrap(), vec![1.5, 3.0]);
        assert_eq!(z.to_vec_f64().unwrap(), vec![1.0, 1.0]);
    }
}
