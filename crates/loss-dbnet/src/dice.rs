//! Batch-global masked Dice loss.

use loss_core::{Backend, Loss, LossOutput, Result};

use crate::{check_range, prepare, MaskedInput};

/// Settings of [`Dice`]; [`DiceConfig::init`] validates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiceConfig {
    /// Added to the denominator (default 1e-6).
    pub eps: f64,
}

impl Default for DiceConfig {
    fn default() -> Self {
        Self { eps: 1e-6 }
    }
}

impl DiceConfig {
    /// The default: eps 1e-6.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `eps`.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`loss_core::LossError::InvalidConfig`] naming `eps` when it is not finite and > 0.
    pub fn init(&self) -> Result<Dice> {
        check_range("eps", self.eps, 0.0, true)?;
        Ok(Dice { eps: self.eps })
    }
}

/// Dice loss over the whole batch at once (one pool, not a mean of per-image losses).
///
/// ```text
/// p' = p · m,  g' = g · m
/// L  = 1 − 2 Σ p'·g' / (Σ p' + Σ g' + eps)
/// ```
///
/// A soft mask thus enters the numerator squared, as in MMOCR's `DiceLoss`. An empty target
/// with an empty prediction gives 1 with zero gradient (so does any empty target: the gradient
/// of the ratio vanishes where `g' = 0`).
///
/// Milletari et al., "V-Net", 3DV 2016, <https://arxiv.org/abs/1606.04797>; DBNet applies it to
/// the approximate binary map (and, in MMOCR 0.x's default, to the probability map).
///
/// # Shapes
/// `pred`, `target`, `mask`: one shape, any; the loss is a 0-d tensor.
///
/// # Errors
/// [`loss_core::LossError::ShapeMismatch`] / [`loss_core::LossError::DeviceMismatch`] when
/// `target` or `mask` differ from `pred`; [`loss_core::LossError::UnsupportedDtype`] for integer
/// predictions.
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend, Loss};
/// use loss_dbnet::{DiceConfig, MaskedInput};
///
/// let pred = NdTensor::from_f64(vec![0.8, 0.3, 0.1, 0.9], &[2, 2])?;
/// let target = NdTensor::from_f64(vec![1.0, 0.0, 0.0, 1.0], &[2, 2])?;
/// let mask = NdTensor::from_f64(vec![1.0, 1.0, 1.0, 0.0], &[2, 2])?;
///
/// let dice = DiceConfig::new().init()?;
/// let out = dice.forward(MaskedInput { pred: &pred, target: &target, mask: &mask })?;
/// // 1 − 2 · 0.8 / (1.2 + 1 + 1e-6)
/// assert!((out.loss.to_f64()? - (1.0 - 1.6 / (2.2 + 1e-6))).abs() < 1e-12);
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dice {
    eps: f64,
}

impl Dice {
    /// The validated eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The loss on inputs already in the compute type.
    pub(crate) fn compute<B: Backend>(&self, pred: &B, target: &B, mask: &B) -> Result<B> {
        let p = pred.mul(mask)?;
        let g = target.mul(mask)?;
        let inter = p.mul(&g)?.sum_all()?;
        let denom = p.sum_all()?.add(&g.sum_all()?)?.add_scalar(self.eps)?;

        // Same operation order as the reference: 1 − (2a) / (b + c + eps).
        inter.mul_scalar(2.0)?.div(&denom)?.neg()?.add_scalar(1.0)
    }
}

impl<B: Backend> Loss<B> for Dice {
    type Input<'a>
        = MaskedInput<'a, B>
    where
        B: 'a;

    fn forward(&self, input: MaskedInput<'_, B>) -> Result<LossOutput<B>> {
        let p = prepare(&input)?;
        self.compute(&p.pred, &p.target, &p.mask).map(LossOutput::single)
    }
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::LossError;

    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    #[test]
    fn empty_target_and_prediction_give_one() {
        let zeros = t(&[0.0; 6], &[2, 3]);
        let ones = t(&[1.0; 6], &[2, 3]);
        let dice = DiceConfig::new().init().unwrap();

        let out = dice.forward(MaskedInput { pred: &zeros, target: &zeros, mask: &ones }).unwrap();

        assert_eq!(out.loss.to_f64().unwrap(), 1.0);
    }

    #[test]
    fn perfect_prediction_is_close_to_zero() {
        let g = t(&[1.0, 0.0, 1.0, 1.0], &[4]);
        let ones = t(&[1.0; 4], &[4]);
        let dice = DiceConfig::new().init().unwrap();

        let out = dice.forward(MaskedInput { pred: &g, target: &g, mask: &ones }).unwrap();

        // 1 − 6 / (6 + 1e-6)
        let want = 1.0 - 6.0 / (6.0 + 1e-6);
        assert!((out.loss.to_f64().unwrap() - want).abs() < 1e-15);
    }

    #[test]
    fn shapes_must_match() {
        let a = t(&[0.5; 4], &[4]);
        let b = t(&[0.5; 4], &[2, 2]);
        let dice = DiceConfig::new().init().unwrap();

        let err = dice.forward(MaskedInput { pred: &a, target: &b, mask: &a }).unwrap_err();

        assert!(matches!(err, LossError::ShapeMismatch { ref what, .. } if what == "target"));
        assert!(DiceConfig::new().with_eps(f64::NAN).init().is_err());
    }
}
