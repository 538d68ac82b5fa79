//! The multi-label balancing losses of Huang et al., "Balancing Methods for Multi-label Text
//! Classification with Long-Tailed Class Distribution", EMNLP 2021
//! (<https://aclanthology.org/2021.emnlp-main.643/>), written once against
//! [`loss_core::Backend`] so they run on the pure-Rust ndarray backend and on libtorch (CPU and
//! CUDA, with autograd).
//!
//! [`ResampleLoss`] composes the parts in the order of the Distribution-Balanced reference code:
//!
//! ```text
//! reweight W  →  NTR (x = z + ν, negatives × λ; W ÷ λ on negatives)  →  ℓ = BCE(x, y; pw)
//!   →  focal α_t · exp(−γ · sp(±x))  or  asymmetric  →  × W × loss_weight  →  none/sum/mean
//! ```
//!
//! Each part is also a function of its own: [`reweight_matrix`], [`ntr_bias`] and
//! [`regularise_logits`], [`bce_elements`], [`focal_factor`], [`asymmetric_elements`].
//! The paper's eight losses are presets of the `[loss]` table
//! ([`loss_core::config::MultiLabelPreset`]; `docs/multilabel.md` maps them to the paper).
//!
//! With `sum` or `mean` reduction on CPU data, [`ResampleLoss`] computes value and gradient in
//! one fused pass (threads over row blocks, results independent of the thread count); the
//! functions above are the generic formulas it is checked against.
//!
//! ```
//! use loss_core::ndarray_backend::NdTensor;
//! use loss_core::{Backend, Loss, MultiLabelConfig};
//! use loss_core::config::MultiLabelPreset;
//! use loss_multilabel::{MultiLabelInput, ResampleLoss};
//!
//! let config = MultiLabelConfig {
//!     preset: Some(MultiLabelPreset::Db),
//!     class_freq: Some(vec![10.0, 50.0, 90.0]),
//!     train_num: Some(100.0),
//!     ..MultiLabelConfig::default()
//! };
//! let loss = ResampleLoss::from_config(&config)?;
//!
//! let logits = NdTensor::from_f64(vec![1.0, -2.0, 0.5], &[1, 3])?;
//! let targets = NdTensor::from_f64(vec![1.0, 0.0, 0.0], &[1, 3])?;
//! let out = loss.forward(MultiLabelInput::new(&logits, &targets))?;
//! assert!(out.loss.to_f64()? > 0.0);
//! # Ok::<(), loss_core::LossError>(())
//! ```

#![warn(missing_docs)]

mod asymmetric;
mod bce;
mod focal;
mod fused;
mod ntr;
mod resample;
mod reweight;

pub use asymmetric::asymmetric_elements;
pub use bce::bce_elements;
pub use focal::focal_factor;
pub use ntr::{ntr_bias, regularise_logits};
pub use resample::{MultiLabelInput, ResampleLoss};
pub use reweight::reweight_matrix;
