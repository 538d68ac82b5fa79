//! Losses for imbalanced labels, done exactly: one dependency for the whole workspace.
//!
//! Pick what you need with features: `multilabel` (the balancing-loss family of the EMNLP 2021
//! paper), `dbnet` (the DBNet text-detection losses), `ndarray` (a pure-Rust forward backend),
//! `tch` (the libtorch backend with autograd, CPU and CUDA).

pub use loss_core as core;
pub use loss_core::{Backend, Loss, LossError, LossOutput, Reduction};

#[cfg(feature = "dbnet")]
pub use loss_dbnet as dbnet;
#[cfg(feature = "multilabel")]
pub use loss_multilabel as multilabel;
#[cfg(feature = "tch")]
pub use loss_tch as tch_backend;
