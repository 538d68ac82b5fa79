//! Sweep files: one experiment, several `[loss]` variants, several seeds.

use std::path::{Path, PathBuf};

use loss_core::LossConfig;
use serde::Deserialize;

use crate::error::{LabError, Result};
use crate::experiment::Experiment;

/// One row of a sweep.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// The row's name in the table.
    pub name: String,
    /// The `[loss]` table of this variant.
    pub loss: LossConfig,
}

/// A sweep file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The experiment file whose data, features, model and budget every variant shares
    /// (relative to the sweep file).
    pub experiment: PathBuf,
    /// Training seeds; each variant's scores are the mean over them.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The variants, one table row each.
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_seeds() -> Vec<u64> {
    vec![1, 2, 3]
}

impl Sweep {
    /// Reads a sweep file and checks that it has variants and seeds.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        let mut sweep: Sweep = toml::from_str(&text).map_err(|e| LabError::Toml {
            path: path.to_path_buf(),
            reason: loss_core::config::describe_toml_error(&text, &e),
        })?;
        sweep.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if sweep.variants.is_empty() || sweep.seeds.is_empty() {
            return Err(LabError::InvalidConfig {
                what: "sweep",
                reason: "needs at least one [[variant]] and one seed".into(),
            });
        }
        for (i, v) in sweep.variants.iter().enumerate() {
            if sweep.variants[..i].iter().any(|w| w.name == v.name) {
                return Err(LabError::InvalidConfig {
                    what: "variant.name",
                    reason: format!(
                        "`{}` names two variants: each table row needs its own",
                        v.name
                    ),
                });
            }
        }
        Ok(sweep)
    }

    /// The shared experiment.
    pub fn experiment(&self) -> Result<Experiment> {
        let p = if self.experiment.is_absolute() {
            self.experiment.clone()
        } else {
            self.base_dir.join(&self.experiment)
        };
        Experiment::from_file(&p)
    }
}
