//! The asymmetric loss (ASL) of Ridnik et al. (2021), an alternative to the focal term.

use loss_core::config::Asymmetric;
use loss_core::{Backend, Result};

use crate::bce::one_minus;

/// Smallest base raised to `gamma_neg` in the clipped branch. It only keeps the gradient of the
/// branch that `select_where` discards finite; the kept branch never goes below it.
const TINY_BASE: f64 = 1e-30;

/// Elementwise asymmetric loss: focusing of different strength on positives and negatives, and
/// a probability margin (`clip`) that discards easy negatives.
///
/// ```text
/// p   = σ(x),   p_m = max(p − clip, 0)
/// ℓ   = y · (1 − p)^{γ+} · (−ln p) · pw_c  +  (1 − y) · p_m^{γ−} · (−ln(1 − p_m))
///
/// stable forms:  (1 − p)^{γ+} = exp(−γ+ · sp(x)),   −ln p = sp(−x),
///                1 − p_m = min(σ(−x) + clip, 1)   (clip > 0),
///                p_m^{γ−} = exp(−γ− · sp(−x)),  −ln(1 − p_m) = sp(x)   (clip = 0)
/// ```
///
/// With `γ+ = γ− = 0` and `clip = 0` this is [`crate::bce_elements`]. Defaults (as the spec
/// gives them): `γ+ = 0`, `γ− = 4`, `clip = 0.05`.
///
/// Paper: Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021,
/// <https://arxiv.org/abs/2009.14119>.
///
/// # Shapes
/// `x`, `y`: `[N, C]` with `y` exactly 0 or 1; `pos_weight`: `[1, C]`. Returns `[N, C]`.
///
/// # Errors
/// Only what the backend reports.
pub fn asymmetric_elements<B: Backend>(
    x: &B,
    y: &B,
    asl: &Asymmetric,
    pos_weight: Option<&B>,
) -> Result<B> {
    let sp_x = x.softplus()?;
    let sp_minus_x = x.neg()?.softplus()?;

    let mut positive = sp_x.mul_scalar(-asl.gamma_pos)?.exp()?.mul(&sp_minus_x)?;
    if let Some(pw) = pos_weight {
        positive = positive.mul(pw)?;
    }

    let negative = if asl.clip > 0.0 {
        let shifted = x.sigmoid()?.add_scalar(-asl.clip)?.clamp(Some(0.0), None)?;
        // 1 − p_m = min(σ(−x) + clip, 1) ≥ clip: the logarithm never sees 0.
        let neg_log =
            x.neg()?.sigmoid()?.add_scalar(asl.clip)?.clamp(None, Some(1.0))?.ln()?.neg()?;
        if asl.gamma_neg == 0.0 {
            neg_log
        } else {
            let focus = shifted.clamp(Some(TINY_BASE), None)?.pow_scalar(asl.gamma_neg)?;
            let focus = shifted.gt_scalar(0.0)?.select_where(&focus, &x.scalar_like(0.0)?)?;
            focus.mul(&neg_log)?
        }
    } else {
        let focus = sp_minus_x.mul_scalar(-asl.gamma_neg)?.exp()?;
        focus.mul(&sp_x)?
    };

    y.mul(&positive)?.add(&one_minus(y)?.mul(&negative)?)
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;

    use super::*;
    use crate::bce_elements;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    #[test]
    fn without_focusing_or_clip_it_is_bce() {
        let x = t(&[0.7, -2.0, 3.5, -0.1], &[2, 2]);
        let y = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
        let asl = Asymmetric { gamma_pos: 0.0, gamma_neg: 0.0, clip: 0.0 };

        let got = asymmetric_elements(&x, &y, &asl, None).unwrap().to_vec_f64().unwrap();
        let want = bce_elements(&x, &y, None).unwrap().to_vec_f64().unwrap();

        assert_eq!(got, want);
    }

    #[test]
    fn easy_negatives_below_the_clip_cost_nothing() {
        // σ(−4) = 0.018 < clip 0.05.
        let x = t(&[-4.0], &[1, 1]);
        let y = t(&[0.0], &[1, 1]);
        let asl = Asymmetric { gamma_pos: 0.0, gamma_neg: 4.0, clip: 0.05 };

        let got = asymmetric_elements(&x, &y, &asl, None).unwrap().to_f64().unwrap();

        assert_eq!(got, 0.0);
    }

    #[test]
    fn matches_the_direct_formula() {
        let x = t(&[1.5], &[1, 1]);
        let y = t(&[0.0], &[1, 1]);
        let asl = Asymmetric { gamma_pos: 0.0, gamma_neg: 4.0, clip: 0.05 };

        let got = asymmetric_elements(&x, &y, &asl, None).unwrap().to_f64().unwrap();

        let p = 1.0 / (1.0 + (-1.5_f64).exp());
        let pm = p - 0.05;
        let want = -pm.powi(4) * (1.0 - pm).ln();
        assert!((got - want).abs() <= 1e-14 * want, "{got} vs {want}");
    }
}
