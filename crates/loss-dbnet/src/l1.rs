//! Masked L1 loss, DBNet's threshold-map loss.

use loss_core::{Backend, Loss, LossOutput, Result};

use crate::{check_range, prepare, MaskedInput};

/// Settings of [`MaskedL1`]; [`MaskedL1Config::init`] validates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskedL1Config {
    /// Added to the denominator (default 1e-6).
    pub eps: f64,
}

impl Default for MaskedL1Config {
    fn default() -> Self {
        Self { eps: 1e-6 }
    }
}

impl MaskedL1Config {
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
    pub fn init(&self) -> Result<MaskedL1> {
        check_range("eps", self.eps, 0.0, true)?;
        Ok(MaskedL1 { eps: self.eps })
    }
}

/// Mean absolute error over the masked elements.
///
/// ```text
/// L = Σ |T − g| · m / (Σ m + eps)
/// ```
///
/// An empty mask gives 0 with zero gradient. DBNet applies it to the threshold map, with the
/// mask covering the dilated text border (Liao et al., AAAI 2020, section 3.5).
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
/// use loss_dbnet::{MaskedInput, MaskedL1Config};
///
/// let pred = NdTensor::from_f64(vec![0.5, 0.2, 0.9], &[3])?;
/// let target = NdTensor::from_f64(vec![0.3, 0.7, 0.1], &[3])?;
/// let mask = NdTensor::from_f64(vec![1.0, 1.0, 0.0], &[3])?;
///
/// let l1 = MaskedL1Config::new().init()?;
/// let out = l1.forward(MaskedInput { pred: &pred, target: &target, mask: &mask })?;
/// // (0.2 + 0.5) / (2 + 1e-6)
/// assert!((out.loss.to_f64()? - 0.7 / (2.0 + 1e-6)).abs() < 1e-12);
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskedL1 {
    eps: f64,
}

impl MaskedL1 {
    /// The validated eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The loss on inputs already in the compute type.
    pub(crate) fn compute<B: Backend>(&self, pred: &B, target: &B, mask: &B) -> Result<B> {
        let total = pred.sub(target)?.abs()?.mul(mask)?.sum_all()?;
        total.div(&mask.sum_all()?.add_scalar(self.eps)?)
    }
}

impl<B: Backend> Loss<B> for MaskedL1 {
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
    use loss_core::{DType, LossError};

    use super::*;

    #[test]
    fn an_empty_mask_gives_zero() {
        let pred = NdTensor::from_f64(vec![0.5, 0.2], &[2]).unwrap();
        let target = NdTensor::from_f64(vec![0.3, 0.7], &[2]).unwrap();
        let mask = NdTensor::from_f64(vec![0.0, 0.0], &[2]).unwrap();
        let l1 = MaskedL1Config::new().init().unwrap();

        let out = l1.forward(MaskedInput { pred: &pred, target: &target, mask: &mask }).unwrap();

        assert_eq!(out.loss.to_f64().unwrap(), 0.0);
    }

    #[test]
    fn integer_predictions_are_rejected() {
        let pred = NdTensor::new(vec![1.0, 0.0], &[2], DType::Integer).unwrap();
        let l1 = MaskedL1Config::new().init().unwrap();

        let err = l1.forward(MaskedInput { pred: &pred, target: &pred, mask: &pred }).unwrap_err();

        assert!(matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "pred"));
    }
}
