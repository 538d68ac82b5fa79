//! Shared foundations of the losslab crates: the [`Backend`] tensor trait every loss is
//! written against, the [`Loss`] trait, one [`Reduction`], one error type [`LossError`], class
//! statistics, device names and the TOML configuration of `[loss]` tables.
//!
//! With the `ndarray` feature, [`ndarray_backend::NdTensor`] runs every loss forward in pure
//! Rust, without libtorch.
//!
//! ```
//! use loss_core::{config::LossFile, LossConfig};
//!
//! let file = LossFile::from_toml(
//!     r#"
//!     [loss]
//!     type = "multilabel"
//!     preset = "db"
//!     class_freq = [10, 50, 90]
//!     train_num = 100
//!     "#,
//! )?;
//! let LossConfig::Multilabel(config) = file.loss else { unreachable!() };
//! let params = config.resolve()?;
//! assert_eq!(params.focal.map(|f| f.gamma), Some(2.0));
//! # Ok::<(), loss_core::LossError>(())
//! ```

pub mod backend;
pub mod config;
pub mod device;
pub mod error;
pub mod fastmath;
pub mod loss;
#[cfg(feature = "ndarray")]
pub mod ndarray_backend;
pub mod sample;
pub mod stats;
pub mod validate;

pub use backend::{Backend, DType, FusedKernel, HostData, HostDataMut, ValueCheck};
pub use config::{DbNetConfig, DbNetParams, LossConfig, MultiLabelConfig, MultiLabelParams};
pub use device::DeviceSpec;
pub use error::{LossError, Result};
pub use loss::{Loss, LossOutput, Reduction};
pub use stats::ClassStats;
