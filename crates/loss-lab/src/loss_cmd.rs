//! `losslab loss`: one loss on arrays from `.npy` files, with its gradient.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loss_core::config::LossFile;
use loss_core::{Backend, DeviceSpec, Loss, LossConfig, LossOutput, Reduction};
use loss_dbnet::{DbInput, DbLoss};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use loss_tch::{resolve_device, TchTensor};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::error::{LabError, Result};
use crate::model::tch_err;
use crate::npy::{self, NpyData};

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct LossReport {
    pub loss: f64,
    pub terms: BTreeMap<String, f64>,
}

const MULTILABEL_INPUTS: [&str; 3] = ["logits", "targets", "weight"];
const DBNET_INPUTS: [&str; 5] = ["preds", "gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask"];

/// Parses `NAME=FILE.npy`.
pub fn parse_input(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, path) =
        s.split_once('=').ok_or_else(|| format!("expected NAME=FILE.npy, got `{s}`"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("expected NAME=FILE.npy, got `{s}`"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

fn load(path: &Path, device: Device) -> Result<Tensor> {
    let arr = npy::read_npy(path)?;
    let shape: Vec<i64> = arr.shape.iter().map(|&d| d as i64).collect();
    let t = match &arr.data {
        NpyData::F32(v) => Tensor::f_from_slice(v),
        NpyData::F64(v) => Tensor::f_from_slice(v),
    };
    t.and_then(|t| t.f_reshape(shape.as_slice()))
        .and_then(|t| t.f_to_device(device))
        .map_err(tch_err)
}

/// Runs the loss of `config` on the named inputs and writes the gradient to `grad_out`.
pub fn run(
    config: &Path,
    inputs: &[(String, PathBuf)],
    device: DeviceSpec,
    grad_out: Option<&Path>,
) -> Result<LossReport> {
    let text = std::fs::read_to_string(config).map_err(|e| LabError::io(config, e))?;
    let file = LossFile::from_toml(&text)
        .map_err(|e| LabError::Toml { path: config.to_path_buf(), reason: e.to_string() })?;
    let device = resolve_device(device)?;
    if let Some(dir) = grad_out {
        crate::report::prepare_out_dir(dir)?;
    }

    let allowed: &[&str] = match file.loss {
        LossConfig::Multilabel(_) => &MULTILABEL_INPUTS,
        LossConfig::Dbnet(_) => &DBNET_INPUTS,
    };
    let mut named: BTreeMap<&str, Tensor> = BTreeMap::new();
    for (name, path) in inputs {
        let Some(&known) = allowed.iter().find(|&&a| a == name) else {
            return Err(LabError::InvalidConfig {
                what: "--input",
                reason: format!("unknown input `{name}` (expected one of {})", allowed.join(", ")),
            });
        };
        if named.insert(known, load(path, device)?).is_some() {
            return Err(LabError::InvalidConfig {
                what: "--input",
                reason: format!("input `{name}` given twice"),
            });
        }
    }
    let mut take = |name: &str| -> Result<TchTensor> {
        named.remove(name).map(TchTensor::from).ok_or_else(|| LabError::InvalidConfig {
            what: "--input",
            reason: format!("missing input `{name}` (give --input {name}=FILE.npy)"),
        })
    };

    let (leaf_name, leaf, out): (&str, Tensor, LossOutput<TchTensor>) = match &file.loss {
        LossConfig::Multilabel(cfg) => {
            let loss = ResampleLoss::from_config(cfg)?;
            let logits = take("logits")?;
            let targets = take("targets")?;
            let weight = named.remove("weight").map(TchTensor::from);
            let leaf = requires_grad(&logits)?;
            let logits = TchTensor::from(leaf.shallow_clone());
            let mut input = MultiLabelInput::new(&logits, &targets);
            input.weight = weight.as_ref();
            let mut out = loss.forward(input)?;
            if loss.params().reduction == Reduction::None {
                // The scalar of the report is the sum of the elementwise loss.
                out.loss = out.loss.sum_all()?;
            }
            ("logits", leaf, out)
        }
        LossConfig::Dbnet(cfg) => {
            let loss = DbLoss::from_config(cfg)?;
            let preds = take("preds")?;
            let leaf = requires_grad(&preds)?;
            let preds = TchTensor::from(leaf.shallow_clone());
            let (gs, gsm, gt, gtm) = (
                take("gt_shrink")?,
                take("gt_shrink_mask")?,
                take("gt_thr")?,
                take("gt_thr_mask")?,
            );
            let input = DbInput {
                preds: &preds,
                gt_shrink: &gs,
                gt_shrink_mask: &gsm,
                gt_thr: &gt,
                gt_thr_mask: &gtm,
            };
            ("preds", leaf, loss.forward(input)?)
        }
    };

    let value = out.loss.to_f64()?;
    if !value.is_finite() {
        return Err(LabError::InvalidConfig {
            what: "inputs",
            reason: format!(
                "the loss is {value}: a non-finite input reached it (NaN or ±inf in {leaf_name} \
                 or a target map, or check_finite = false)"
            ),
        });
    }
    let terms = out
        .terms
        .iter()
        .map(|(name, t)| Ok((name.to_string(), t.to_f64()?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    if let Some(dir) = grad_out {
        out.loss.f_backward().map_err(tch_err)?;
        let grad = leaf.grad();
        let grad = if grad.defined() { grad } else { leaf.f_zeros_like().map_err(tch_err)? };
        write_like(&dir.join(format!("{leaf_name}.npy")), &grad, leaf.kind())?;
    }
    Ok(LossReport { loss: value, terms })
}

fn requires_grad(t: &TchTensor) -> Result<Tensor> {
    match t.kind() {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            t.f_detach().and_then(|t| t.f_set_requires_grad(true)).map_err(tch_err)
        }
        other => Err(LabError::Loss(loss_core::LossError::UnsupportedDtype {
            what: "input".into(),
            dtype: format!("{other:?}"),
        })),
    }
}

fn write_like(path: &Path, grad: &Tensor, kind: Kind) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    }
    let shape: Vec<usize> = grad.size().iter().map(|&d| d as usize).collect();
    let host = grad.f_to_device(Device::Cpu).and_then(|g| g.f_contiguous()).map_err(tch_err)?;
    let flat = |k: Kind| host.f_to_kind(k).and_then(|g| g.f_reshape([-1])).map_err(tch_err);
    if kind == Kind::Double {
        let v = Vec::<f64>::try_from(&flat(Kind::Double)?).map_err(tch_err)?;
        npy::write_npy(path, &shape, &v)
    } else {
        let v = Vec::<f32>::try_from(&flat(Kind::Float)?).map_err(tch_err)?;
        npy::write_npy(path, &shape, &v)
    }
}
