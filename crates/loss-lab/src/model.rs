//! The classifiers of the experiments, in libtorch: a linear layer and a one-hidden-layer MLP
//! with dropout, trained with AdamW on mini-batches.
//!
//! Inputs are sparse TF-IDF rows: the first layer is an `embedding_bag` sum over a row's terms
//! weighted by their TF-IDF values, which equals `x W` for the dense row `x` but touches only
//! its non-zero entries (about 1% of a Reuters row).

use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::error::{LabError, Result};
use crate::features::CsrMatrix;

/// Rows of a sparse matrix in the layout `embedding_bag` takes.
pub struct SparseRows {
    indices: Tensor,
    offsets: Tensor,
    weights: Tensor,
    rows: i64,
}

impl SparseRows {
    /// The given rows of `m`, in that order, on `device`.
    pub fn from_csr(m: &CsrMatrix, rows: &[usize], device: Device) -> Result<Self> {
        let mut indices = Vec::new();
        let mut weights = Vec::new();
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        offsets.push(0i64);
        for &r in rows {
            let (cols, vals) = m.row(r);
            indices.extend(cols.iter().map(|&c| i64::from(c)));
            weights.extend_from_slice(vals);
            offsets.push(to_i64(indices.len())?);
        }
        let t = |r: std::result::Result<Tensor, tch::TchError>| {
            r.and_then(|t| t.f_to_device(device)).map_err(tch_err)
        };
        Ok(Self {
            indices: t(Tensor::f_from_slice(&indices))?,
            offsets: t(Tensor::f_from_slice(&offsets))?,
            weights: t(Tensor::f_from_slice(&weights))?,
            rows: to_i64(rows.len())?,
        })
    }

    /// All rows of `m`.
    pub fn all(m: &CsrMatrix, device: Device) -> Result<Self> {
        let rows: Vec<usize> = (0..m.n_rows).collect();
        Self::from_csr(m, &rows, device)
    }

    /// Number of rows.
    pub fn len(&self) -> i64 {
        self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// `x W` for the dense rows `x`: `[rows, W.cols]`.
    fn matmul(&self, w: &Tensor) -> Result<Tensor> {
        let (out, _, _, _) = Tensor::f_embedding_bag(
            w,
            &self.indices,
            &self.offsets,
            false,
            0, // sum
            false,
            Some(&self.weights),
            true, // offsets has n + 1 entries
        )
        .map_err(tch_err)?;
        Ok(out)
    }
}

/// `[model]` of an experiment file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `linear` or `mlp`.
    #[serde(default)]
    pub kind: ModelKind,
    /// Width of the MLP's hidden layer (default 512).
    pub hidden: Option<usize>,
    /// Dropout after the MLP's hidden layer, in `[0, 1)` (default 0.5).
    pub dropout: Option<f64>,
}

/// The classifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// `logits = x W + b`.
    #[default]
    Linear,
    /// `logits = dropout(relu(x W₁ + b₁)) W₂ + b₂`.
    Mlp,
}

impl ModelConfig {
    /// Checks the keys against the kind and their ranges; returns (hidden width, dropout),
    /// `None` for a linear model.
    pub fn validate(&self) -> Result<Option<(usize, f64)>> {
        let bad = |what, reason: String| Err(LabError::InvalidConfig { what, reason });
        match self.kind {
            ModelKind::Linear => {
                if self.hidden.is_some() || self.dropout.is_some() {
                    return bad(
                        "model.hidden / model.dropout",
                        "apply only to kind = \"mlp\"".into(),
                    );
                }
                Ok(None)
            }
            ModelKind::Mlp => {
                let hidden = self.hidden.unwrap_or(512);
                let dropout = self.dropout.unwrap_or(0.5);
                if hidden == 0 {
                    return bad("model.hidden", "must be > 0, got 0".into());
                }
                if !(0.0..1.0).contains(&dropout) {
                    return bad("model.dropout", format!("must be in [0, 1), got {dropout}"));
                }
                Ok(Some((hidden, dropout)))
            }
        }
    }
}

/// A libtorch error as one line: its first line, without the C++ backtrace that follows.
pub(crate) fn tch_err(e: tch::TchError) -> LabError {
    let text = e.to_string();
    LabError::Torch(text.lines().next().unwrap_or("").trim().to_string())
}

/// A trained or training classifier; its parameters live in `vs`.
pub struct Model {
    pub vs: nn::VarStore,
    layers: Vec<(Tensor, Tensor)>,
    dropout: f64,
}

impl Model {
    /// A fresh model for `inputs` features and `outputs` labels on `device`, initialised from
    /// libtorch's generator (seed it with `tch::manual_seed` first).
    pub fn new(
        config: &ModelConfig,
        inputs: usize,
        outputs: usize,
        device: Device,
    ) -> Result<Self> {
        let shape = config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let dims: Vec<usize> = match shape {
            None => vec![inputs, outputs],
            Some((hidden, _)) => vec![inputs, hidden, outputs],
        };
        let mut layers = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let (fan_in, fan_out) = (to_i64(pair[0])?, to_i64(pair[1])?);
            // PyTorch's nn.Linear initialisation: U(−1/√fan_in, 1/√fan_in) for both.
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            let init = nn::Init::Uniform { lo: -bound, up: bound };
            let w = root.f_var(&format!("w{i}"), &[fan_in, fan_out], init).map_err(tch_err)?;
            let b = root.f_var(&format!("b{i}"), &[fan_out], init).map_err(tch_err)?;
            layers.push((w, b));
        }
        let dropout = shape.map_or(0.0, |(_, d)| d);
        Ok(Self { vs, layers, dropout })
    }

    /// Logits `[n, outputs]` for the sparse rows `x`; dropout only when `train`.
    pub fn forward(&self, x: &SparseRows, train: bool) -> Result<Tensor> {
        let mut h: Option<Tensor> = None;
        let last = self.layers.len().saturating_sub(1);
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let z = match &h {
                None => x.matmul(w)?,
                Some(h) => h.f_matmul(w).map_err(tch_err)?,
            };
            let mut z = z.f_add(b).map_err(tch_err)?;
            if i < last {
                z = z.f_relu().and_then(|t| t.f_dropout(self.dropout, train)).map_err(tch_err)?;
            }
            h = Some(z);
        }
        h.ok_or_else(|| LabError::Torch("model without layers".into()))
    }

    /// Sigmoid scores `[rows, outputs]` for `x`, without gradient, as host f32, row-major.
    pub fn predict(&self, x: &SparseRows) -> Result<Vec<f32>> {
        let _guard = tch::no_grad_guard();
        let scores = self
            .forward(x, false)?
            .f_sigmoid()
            .and_then(|t| t.f_to_kind(Kind::Float))
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_reshape([-1]))
            .map_err(tch_err)?;
        Vec::<f32>::try_from(&scores).map_err(tch_err)
    }

    /// An AdamW optimiser over the model's parameters.
    pub fn optimizer(&self, lr: f64, weight_decay: f64) -> Result<nn::Optimizer> {
        nn::AdamW { wd: weight_decay, ..nn::AdamW::default() }.build(&self.vs, lr).map_err(tch_err)
    }
}

pub(crate) fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| LabError::Torch(format!("size {v} does not fit in i64")))
}
