//! The element loss every part of the family modulates: binary cross-entropy on logits.

use loss_core::{Backend, Result};

/// Elementwise binary cross-entropy on logits, with PyTorch's optional per-class `pos_weight`.
///
/// ```text
/// ℓ = y · sp(−x) · pw_c + (1 − y) · sp(x),    sp(x) = ln(1 + eˣ)
/// ```
///
/// Written with two softplus terms rather than PyTorch's `(1 − y)·x − ln σ(x)`: the sum cancels
/// when the loss is tiny (a very negative logit on a negative entry), each softplus does not, so
/// the value and its gradient `σ(x)` stay accurate to the last bits there too. Targets may be
/// soft (any value in `[0, 1]`).
///
/// # Shapes
/// `x`, `y`: `[N, C]`; `pos_weight`: `[1, C]` (or anything that broadcasts to `[N, C]`).
/// Returns `[N, C]`.
///
/// # Errors
/// Only what the backend reports (a shape that does not broadcast, a device failure).
pub fn bce_elements<B: Backend>(x: &B, y: &B, pos_weight: Option<&B>) -> Result<B> {
    let on_positive = x.neg()?.softplus()?;
    let on_negative = x.softplus()?;
    let on_positive = match pos_weight {
        Some(pw) => on_positive.mul(pw)?,
        None => on_positive,
    };
    y.mul(&on_positive)?.add(&one_minus(y)?.mul(&on_negative)?)
}

/// `1 − y`, exact for targets 0 and 1.
pub(crate) fn one_minus<B: Backend>(y: &B) -> Result<B> {
    y.neg()?.add_scalar(1.0)
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;

    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    #[test]
    fn matches_the_softplus_definition() {
        let x = t(&[0.0, 2.0, -3.0, 40.0], &[1, 4]);
        let y = t(&[1.0, 0.0, 1.0, 0.0], &[1, 4]);

        let got = bce_elements(&x, &y, None).unwrap().to_vec_f64().unwrap();

        // torch.nn.functional.binary_cross_entropy_with_logits(
        //     torch.tensor([0., 2., -3., 40.], dtype=torch.float64),
        //     torch.tensor([1., 0., 1., 0.], dtype=torch.float64), reduction="none")
        // = [0.6931471805599453 (ln 2), 2.1269280110429727, 3.048587351573742, 40.0]
        let want = [std::f64::consts::LN_2, 2.1269280110429727, 3.048587351573742, 40.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-15 * w, "{g} vs {w}");
        }
    }

    #[test]
    fn tiny_losses_keep_their_relative_accuracy() {
        let x = t(&[-30.0], &[1, 1]);
        let y = t(&[0.0], &[1, 1]);

        let got = bce_elements(&x, &y, None).unwrap().to_f64().unwrap();

        // math.log1p(math.exp(-30.0)) in Python.
        assert!((got - 9.357622968839737e-14).abs() <= 1e-28);
    }

    #[test]
    fn pos_weight_scales_positive_entries_only() {
        let x = t(&[0.5, 0.5], &[1, 2]);
        let y = t(&[1.0, 0.0], &[1, 2]);
        let pw = t(&[3.0, 3.0], &[1, 2]);

        let plain = bce_elements(&x, &y, None).unwrap().to_vec_f64().unwrap();
        let weighted = bce_elements(&x, &y, Some(&pw)).unwrap().to_vec_f64().unwrap();

        assert_eq!(weighted[0], 3.0 * plain[0]);
        assert_eq!(weighted[1], plain[1]);
    }
}
