//! The approximate binary map of differentiable binarization.

use loss_core::validate::{same_device, same_shape, to_compute_type, to_type_of};
use loss_core::{Backend, Result};

use crate::check_range;

/// Differentiable binarization: the approximate binary map from a probability map and a
/// threshold map, for heads that want it.
///
/// ```text
/// B = σ(k · (P − T)),    k = 50 by default
/// ```
///
/// Computed as a sigmoid (overflow-free), not as `1 / (1 + exp(−k (P − T)))`, whose `exp`
/// overflows to ∞ in half precision for `P − T` below about −0.22 (with k = 50).
///
/// Liao et al., AAAI 2020, <https://arxiv.org/abs/1911.08947>, equation (2).
///
/// # Shapes
/// `prob` and `thr`: one shape, any (no broadcasting); the map has that shape, in the compute
/// type (f64 stays f64; f32 and half types give f32).
///
/// # Errors
/// [`loss_core::LossError::ShapeMismatch`] / [`loss_core::LossError::DeviceMismatch`] when
/// `thr` differs from `prob`; [`loss_core::LossError::UnsupportedDtype`] for an integer `prob`.
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend};
/// use loss_dbnet::ApproxBinary;
///
/// let p = NdTensor::from_f64(vec![0.9, 0.3, 0.5], &[3])?;
/// let t = NdTensor::from_f64(vec![0.5, 0.5, 0.5], &[3])?;
/// let b = ApproxBinary::default().map(&p, &t)?.to_vec_f64()?;
/// // torch.sigmoid(50 * (torch.tensor([0.9, 0.3, 0.5]) - 0.5)) -> [1.0000, 4.5398e-05, 0.5000]
/// assert!((b[0] - 1.0).abs() < 1e-8 && (b[1] - 4.5397868702434395e-05).abs() < 1e-15);
/// assert_eq!(b[2], 0.5);
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApproxBinary {
    k: f64,
}

impl Default for ApproxBinary {
    /// The paper's amplification factor, k = 50.
    fn default() -> Self {
        Self { k: 50.0 }
    }
}

impl ApproxBinary {
    /// A binarization with amplification factor `k`.
    ///
    /// # Errors
    /// [`loss_core::LossError::InvalidConfig`] naming `k` when it is not finite and > 0.
    pub fn new(k: f64) -> Result<Self> {
        Ok(Self { k: check_range("k", k, 0.0, true)? })
    }

    /// The amplification factor.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// `σ(k · (prob − thr))`.
    pub fn map<B: Backend>(&self, prob: &B, thr: &B) -> Result<B> {
        same_shape("thr", prob, thr)?;
        same_device("thr", prob, thr)?;
        let prob = to_compute_type("prob", prob)?;
        let thr = to_type_of(thr, &prob)?;
        prob.sub(&thr)?.mul_scalar(self.k)?.sigmoid()
    }
}

/// `σ(k · (prob − thr))`: [`ApproxBinary::map`] with a given `k`.
///
/// # Errors
/// As [`ApproxBinary::new`] and [`ApproxBinary::map`].
pub fn approx_binary_map<B: Backend>(prob: &B, thr: &B, k: f64) -> Result<B> {
    ApproxBinary::new(k)?.map(prob, thr)
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::LossError;

    use super::*;

    #[test]
    fn saturates_without_overflow() {
        let p = NdTensor::from_f64(vec![0.0, 1.0], &[2]).unwrap();
        let t = NdTensor::from_f64(vec![1.0, 0.0], &[2]).unwrap();

        let b = approx_binary_map(&p, &t, 1000.0).unwrap().to_vec_f64().unwrap();

        assert_eq!(b, vec![0.0, 1.0]);
    }

    #[test]
    fn k_must_be_positive() {
        assert!(matches!(ApproxBinary::new(0.0),
            Err(LossError::InvalidConfig { ref key, .. }) if key == "k"));
        assert_eq!(ApproxBinary::default().k(), 50.0);
    }
}
