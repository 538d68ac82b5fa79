//! The reference fixtures of `fixtures/multilabel.json` (written by `fixtures/generate.py`,
//! which computes them with PyTorch) and the tolerances they are compared at.
//!
//! Shared by this crate's tests and by `loss-tch/tests/multilabel_reference.rs`, which includes
//! this file by path.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod scenario;

use loss_core::config::LossFile;
use loss_core::{LossConfig, MultiLabelConfig};
use serde_json::Value;

// Not every test binary that includes this module draws inputs.
#[allow(unused_imports)]
pub use loss_core::sample::uniforms;

/// The fixture file, compiled in so the tests need no working directory.
const FIXTURES: &str = include_str!("../fixtures/multilabel.json");

/// One generated case: inputs, config, and PyTorch's loss and gradient.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// `"f64"` or `"f32"`: the element type PyTorch computed in.
    pub dtype: String,
    pub shape: [usize; 2],
    /// The `[loss]` table the case was generated from.
    pub toml: String,
    pub config: MultiLabelConfig,
    pub logits: Vec<f64>,
    pub targets: Vec<f64>,
    pub weight: Option<Vec<f64>>,
    pub avg_factor: Option<f64>,
    /// The loss under the config's reduction (`N · C` values for `none`, else one).
    pub loss: Vec<f64>,
    /// Gradient w.r.t. the logits of the loss (of its sum under `none`).
    pub grad: Vec<f64>,
}

impl Case {
    pub fn is_f64(&self) -> bool {
        self.dtype == "f64"
    }

    pub fn tolerance(&self) -> Tolerance {
        if self.is_f64() {
            F64
        } else {
            F32
        }
    }
}

fn numbers(v: &Value, key: &str) -> Vec<f64> {
    match &v[key] {
        Value::Array(items) => items.iter().map(|x| x.as_f64().unwrap()).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("fixture key {key}: unexpected {other}"),
    }
}

fn parse_config(toml: &str) -> MultiLabelConfig {
    match LossFile::from_toml(toml).unwrap().loss {
        LossConfig::Multilabel(config) => config,
        LossConfig::Dbnet(_) => panic!("fixture config is not multilabel:\n{toml}"),
    }
}

/// Every case of the fixture file.
pub fn cases() -> Vec<Case> {
    let root: Value = serde_json::from_str(FIXTURES).unwrap();
    let cases = root["cases"].as_array().unwrap();
    cases
        .iter()
        .map(|c| {
            let shape = numbers(c, "shape");
            let toml = c["config"].as_str().unwrap().to_string();
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                dtype: c["dtype"].as_str().unwrap().to_string(),
                shape: [shape[0] as usize, shape[1] as usize],
                config: parse_config(&toml),
                toml,
                logits: numbers(c, "logits"),
                targets: numbers(c, "targets"),
                weight: (!c["weight"].is_null()).then(|| numbers(c, "weight")),
                avg_factor: c["avg_factor"].as_f64(),
                loss: numbers(c, "loss"),
                grad: numbers(c, "grad"),
            }
        })
        .collect()
}

/// The `checks` object of the fixture file: the edge-case values from PyTorch.
pub fn checks() -> Value {
    let root: Value = serde_json::from_str(FIXTURES).unwrap();
    root["checks"].clone()
}

/// `|got − want| ≤ rel · |want| + floor · max |want|`, the floor taken relative to the largest
/// magnitude of the compared array, so entries many orders below the array's scale (an
/// element loss of 1e-40 next to 1e+1, a gradient that underflows in f32) are compared at the
/// precision of the array rather than their own.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub rel: f64,
    pub floor: f64,
}

/// f64: relative 1e-9, floor 1e-13 of the array's largest magnitude.
pub const F64: Tolerance = Tolerance { rel: 1e-9, floor: 1e-13 };
/// f32: relative 1e-5, floor 1e-7 of the array's largest magnitude.
pub const F32: Tolerance = Tolerance { rel: 1e-5, floor: 1e-7 };

/// Panics with the case, index and both values at the first entry outside `tol`.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: Tolerance) {
    assert_close_with(what, got, want, tol, |_| 0.0);
}

/// libtorch's softplus, with which the fixtures were made, returns `x` itself above 20, so its
/// derivative there is 1 where the exact one is `σ(x) = 1 − e^{−x}`: a relative gap of up to
/// `e^{−20} = 2.06e-9` on a gradient entry whose regularised logit lies just past 20 (beyond
/// 20.72 the gap is below 1e-9). Code with the exact softplus (the fused path) is allowed this
/// much more on those entries only.
pub const SOFTPLUS_THRESHOLD_GAP: f64 = 2.1e-9;

/// The regularised logits `x` of a case (`z + ν`, times `lambda` on negatives; `z` without
/// NTR), where the softplus threshold applies.
pub fn regularised_logits(case: &Case) -> Vec<f64> {
    let loss = loss_multilabel::ResampleLoss::from_config(&case.config).unwrap();
    let lambda = loss.params().ntr.map_or(1.0, |n| n.lambda);
    let classes = case.shape[1];
    let bias = |i: usize| loss.ntr_bias().map_or(0.0, |b| b[i % classes]);
    (0..case.logits.len())
        .map(|i| {
            let scale = if case.targets[i] == 1.0 { 1.0 } else { lambda };
            (case.logits[i] + bias(i)) * scale
        })
        .collect()
}

/// [`assert_close`] for gradients computed with the exact softplus against the fixtures:
/// [`SOFTPLUS_THRESHOLD_GAP`] of room, relative, on entries whose `|x|` exceeds 20.
pub fn assert_grad_close_exact_softplus(
    what: &str,
    got: &[f64],
    want: &[f64],
    tol: Tolerance,
    x: &[f64],
) {
    let past =
        |i: usize| if x[i].abs() > 20.0 { SOFTPLUS_THRESHOLD_GAP * want[i].abs() } else { 0.0 };
    assert_close_with(what, got, want, tol, past);
}

/// [`assert_close`] with `extra(i)` of absolute room on entry `i`.
pub fn assert_close_with(
    what: &str,
    got: &[f64],
    want: &[f64],
    tol: Tolerance,
    extra: impl Fn(usize) -> f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0_f64, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let allowed = tol.rel * w.abs() + tol.floor * scale + extra(i);
        assert!(
            (g - w).abs() <= allowed && g.is_finite(),
            "{what}[{i}]: got {g:e}, want {w:e} (|diff| {:e} > {allowed:e})",
            (g - w).abs()
        );
    }
}
