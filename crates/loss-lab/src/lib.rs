//! The `losslab` command's library: experiments with the balancing losses and array-level
//! checks.
//!
//! Free of libtorch:
//! - [`data`]: multi-label text datasets — the Reuters-21578 ModApte reader ([`data::reuters`]),
//!   a JSON Lines reader ([`data::jsonl`]), a reproducible validation hold-out, label matrices and
//!   label frequencies;
//! - [`features`]: TF-IDF over word unigrams and bigrams;
//! - [`metrics`]: micro/macro-F1, threshold tuning, head/medium/tail group scores;
//! - [`npy`]: NumPy `.npy` reading and writing (little-endian `f32`/`f64`, C order).
//!
//! On libtorch (through `loss-tch`):
//! - [`model`]: the linear and MLP classifiers on sparse TF-IDF rows, trained with AdamW;
//! - [`experiment`]: experiment files and the train / tune / evaluate pipeline;
//! - [`sweep`], [`report`]: several losses over one experiment, tables, `metrics.json`, plots;
//! - [`loss_cmd`]: `losslab loss`, one loss on `.npy` arrays with its gradient.
//!
//! Every fallible function returns [`LabError`].

pub mod data;
pub mod error;
pub mod experiment;
pub mod features;
pub mod loss_cmd;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod report;
pub mod sweep;

pub use error::{LabError, NpyProblem, Result};
