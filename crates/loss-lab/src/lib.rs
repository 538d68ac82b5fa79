//! Building blocks of the `losslab` experiment command, free of libtorch:
//!
//! - [`data`]: multi-label text datasets — the Reuters-21578 ModApte reader ([`data::reuters`]),
//!   a JSON Lines reader ([`data::jsonl`]), a reproducible validation hold-out, label matrices and
//!   label frequencies;
//! - [`features`]: TF-IDF over word unigrams and bigrams;
//! - [`metrics`]: micro/macro-F1, threshold tuning, head/medium/tail group scores;
//! - [`npy`]: NumPy `.npy` reading and writing (little-endian `f32`/`f64`, C order).
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
