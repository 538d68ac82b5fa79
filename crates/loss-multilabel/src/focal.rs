//! The focal factor of Lin et al. (2017), in the form that stays finite for every `gamma ≥ 0`.

use loss_core::config::Focal;
use loss_core::{Backend, Result};

/// The factor `α_t · (1 − p_t)^γ` that turns an element loss into a focal loss.
///
/// ```text
/// p_t = exp(−ℓ₀),   ℓ₀ = y · sp(−x) + (1 − y) · sp(x)      (unweighted BCE)
/// 1 − p_t = σ(−x) = exp(−sp(x))   where y = 1
///         = σ(x)  = exp(−sp(−x))  where y = 0
/// factor  = α_t · exp(−γ · sp(±x)),   α_t = α where y = 1, 1 − α where y = 0
/// ```
///
/// The reference code raises `1 − exp(−ℓ₀)` to the power `γ`: for a saturated logit that
/// base rounds to 0, and its gradient `γ · 0^{γ−1}` is infinite for `γ < 1`. The softplus form
/// has the gradient `−γ · σ(±x) · factor`, finite for every finite logit and every `γ ≥ 0`
/// (`shared/spec/losses.md`, section 1, step 4).
///
/// Paper (focal term as used by the balancing family): Huang et al., EMNLP 2021,
/// <https://aclanthology.org/2021.emnlp-main.643/>.
///
/// # Shapes
/// `x`, `y`: `[N, C]` with `y` exactly 0 or 1. Returns `[N, C]`.
///
/// # Errors
/// Only what the backend reports.
pub fn focal_factor<B: Backend>(x: &B, y: &B, focal: &Focal) -> Result<B> {
    let alpha_t =
        y.select_where(&y.scalar_like(focal.alpha)?, &y.scalar_like(1.0 - focal.alpha)?)?;
    if focal.gamma == 0.0 {
        return Ok(alpha_t);
    }
    let signed = y.select_where(x, &x.neg()?)?;
    let modulator = signed.softplus()?.mul_scalar(-focal.gamma)?.exp()?;
    alpha_t.mul(&modulator)
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;

    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    #[test]
    fn equals_the_reference_form_where_that_is_well_conditioned() {
        let x = t(&[0.3, -1.2, 2.0, -0.4], &[2, 2]);
        let y = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        let focal = Focal { gamma: 2.0, alpha: 0.25 };

        let got = focal_factor(&x, &y, &focal).unwrap().to_vec_f64().unwrap();

        let xs = [0.3_f64, -1.2, 2.0, -0.4];
        let ys = [1.0_f64, 0.0, 0.0, 1.0];
        for i in 0..4 {
            let p = 1.0 / (1.0 + (-xs[i]).exp());
            let pt = if ys[i] == 1.0 { p } else { 1.0 - p };
            let alpha_t = if ys[i] == 1.0 { 0.25 } else { 0.75 };
            let want = alpha_t * (1.0 - pt).powi(2);
            assert!((got[i] - want).abs() <= 1e-14 * want, "{} vs {want}", got[i]);
        }
    }

    #[test]
    fn gamma_zero_leaves_only_alpha() {
        let x = t(&[18.0, -3.0], &[1, 2]);
        let y = t(&[1.0, 0.0], &[1, 2]);

        let got = focal_factor(&x, &y, &Focal { gamma: 0.0, alpha: 0.4 }).unwrap();

        assert_eq!(got.to_vec_f64().unwrap(), vec![0.4, 0.6]);
    }

    #[test]
    fn saturated_logits_give_finite_factors() {
        let x = t(&[1e4, -1e4, 1e4, -1e4], &[2, 2]);
        let y = t(&[1.0, 1.0, 0.0, 0.0], &[2, 2]);

        let got = focal_factor(&x, &y, &Focal { gamma: 0.5, alpha: 0.5 }).unwrap();

        assert_eq!(got.to_vec_f64().unwrap(), vec![0.0, 0.5, 0.5, 0.0]);
    }
}
