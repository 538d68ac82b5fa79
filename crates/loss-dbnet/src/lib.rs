//! The losses of DBNet (Liao et al., "Real-time Scene Text Detection with Differentiable
//! Binarization", AAAI 2020, <https://arxiv.org/abs/1911.08947>), written once against
//! [`loss_core::Backend`] so that they run on every backend: libtorch with autograd through
//! `loss-tch`, or the pure-Rust `NdTensor` of `loss-core` (feature `ndarray`).
//!
//! | loss | file | what |
//! |---|---|---|
//! | [`BalancedBce`] | `balanced_bce.rs` | BCE with online hard-negative mining |
//! | [`Dice`] | `dice.rs` | batch-global masked Dice |
//! | [`MaskedL1`] | `l1.rs` | masked L1 on the threshold map |
//! | [`DbLoss`] | `db_loss.rs` | the three terms on `[N, 3, H, W]` predictions, and their sum |
//!
//! [`ApproxBinary`] computes the approximate binary map `σ(k · (P − T))`, and [`targets`]
//! rescales target maps given at image size to the prediction's size.
//!
//! The formulas and edge cases are those of section 2 of `shared/spec/losses.md`; they follow
//! MMOCR 0.x `DBLoss` for probability maps and MMOCR 1.x for the logits variant. Reference
//! values come from `tests/fixtures/generate.py` (PyTorch).
//!
//! ```
//! use loss_core::{ndarray_backend::NdTensor, Backend, Loss};
//! use loss_dbnet::{DbInput, DbLoss, DbNetParams};
//!
//! // One 2 × 2 image: channel 0 the probabilities, 1 the thresholds, 2 the binary map.
//! let preds = NdTensor::from_f64(
//!     vec![0.9, 0.2, 0.7, 0.1, 0.5, 0.5, 0.5, 0.5, 0.95, 0.05, 0.6, 0.02],
//!     &[1, 3, 2, 2],
//! )?;
//! let gt_shrink = NdTensor::from_f64(vec![1.0, 0.0, 1.0, 0.0], &[1, 2, 2])?;
//! let ones = NdTensor::from_f64(vec![1.0; 4], &[1, 2, 2])?;
//! let gt_thr = NdTensor::from_f64(vec![0.3, 0.7, 0.3, 0.7], &[1, 2, 2])?;
//!
//! let loss = DbLoss::new(DbNetParams::default())?;
//! let out = loss.forward(DbInput {
//!     preds: &preds,
//!     gt_shrink: &gt_shrink,
//!     gt_shrink_mask: &ones,
//!     gt_thr: &gt_thr,
//!     gt_thr_mask: &ones,
//! })?;
//! let names: Vec<&str> = out.terms.iter().map(|(name, _)| *name).collect();
//! assert_eq!(names, ["loss_prob", "loss_db", "loss_thr"]);
//! let sum: f64 = out.terms.iter().map(|(_, t)| t.to_f64()).sum::<Result<_, _>>()?;
//! assert!((out.loss.to_f64()? - sum).abs() < 1e-12);
//! # Ok::<(), loss_core::LossError>(())
//! ```

mod approx_binary;
mod balanced_bce;
mod db_loss;
mod dice;
mod fused;
mod l1;
pub mod targets;

pub use approx_binary::{approx_binary_map, ApproxBinary};
pub use balanced_bce::{bce_with_logits, bce_with_probabilities, BalancedBce, BalancedBceConfig};
pub use db_loss::{DbInput, DbLoss};
pub use dice::{Dice, DiceConfig};
pub use l1::{MaskedL1, MaskedL1Config};
pub use loss_core::config::{DbNetConfig, DbNetParams, DbNetPreset, ProbInput, ProbLoss};

use loss_core::validate::{same_device, same_shape, to_compute_type, to_type_of};
use loss_core::{Backend, LossError, Result};

/// The tensors of one call of a masked map loss ([`BalancedBce`], [`Dice`], [`MaskedL1`]):
/// three tensors of one shape, any shape. Pass a tensor of ones as `mask` to use every element.
#[derive(Debug)]
pub struct MaskedInput<'a, B> {
    /// Predictions: probabilities, logits or threshold values, as the loss expects.
    pub pred: &'a B,
    /// The target of each element.
    pub target: &'a B,
    /// Weight of each element, usually 0 or 1 (soft values are allowed).
    pub mask: &'a B,
}

// By hand: a derive would ask `B: Clone`, which libtorch tensors are not.
impl<B> Clone for MaskedInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for MaskedInput<'_, B> {}

/// Inputs converted to the compute type: f64 stays f64, f32 and half types become f32.
pub(crate) struct Prepared<B> {
    pub(crate) pred: B,
    pub(crate) target: B,
    pub(crate) mask: B,
}

/// Checks shapes and devices of a [`MaskedInput`] and converts it to the compute type of `pred`
/// (integer predictions are [`LossError::UnsupportedDtype`]; integer targets and masks are
/// converted).
pub(crate) fn prepare<B: Backend>(input: &MaskedInput<'_, B>) -> Result<Prepared<B>> {
    same_shape("target", input.pred, input.target)?;
    same_shape("mask", input.pred, input.mask)?;
    same_device("target", input.pred, input.target)?;
    same_device("mask", input.pred, input.mask)?;
    let pred = to_compute_type("pred", input.pred)?;
    let target = to_type_of(input.target, &pred)?;
    let mask = to_type_of(input.mask, &pred)?;
    Ok(Prepared { pred, target, mask })
}

/// A configuration value outside its range, named by its key.
pub(crate) fn config_error(key: &str, reason: String) -> LossError {
    LossError::InvalidConfig { key: key.into(), reason }
}

/// `value` must be finite and at least `lo` (or above it, when `strict`).
pub(crate) fn check_range(key: &str, value: f64, lo: f64, strict: bool) -> Result<f64> {
    let ok = value.is_finite() && if strict { value > lo } else { value >= lo };
    if !ok {
        let rule = if strict { ">" } else { ">=" };
        return Err(config_error(key, format!("must be finite and {rule} {lo}, got {value}")));
    }
    Ok(value)
}
