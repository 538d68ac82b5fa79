//! The reference cases of `fixtures/cases.json`, written by `fixtures/generate.py` (PyTorch),
//! with their inputs rebuilt bit for bit from the generator's seeded formula.
//!
//! Shared by the ndarray tests of this crate and by `loss-tch/tests/dbnet_reference.rs`
//! (through `#[path]`), so it depends on nothing but `serde_json` and `loss-core`.
#![allow(dead_code)]

use std::path::PathBuf;

use loss_core::DbNetConfig;
use serde_json::Value;

/// `crates/loss-dbnet/tests/fixtures`, from either crate's manifest directory.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../loss-dbnet/tests/fixtures")
}

/// The element type a case was computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

/// The three terms and their sum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terms {
    pub loss: f64,
    pub loss_prob: f64,
    pub loss_db: f64,
    pub loss_thr: f64,
}

impl Terms {
    fn from_json(v: &Value) -> Terms {
        let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("missing term {k}"));
        Terms {
            loss: get("loss"),
            loss_prob: get("loss_prob"),
            loss_db: get("loss_db"),
            loss_thr: get("loss_thr"),
        }
    }

    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("loss", self.loss),
            ("loss_prob", self.loss_prob),
            ("loss_db", self.loss_db),
            ("loss_thr", self.loss_thr),
        ]
    }
}

/// The five inputs of a case, row-major, already rounded to the case's dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub preds: Vec<f64>,
    pub gt_shrink: Vec<f64>,
    pub gt_shrink_mask: Vec<f64>,
    pub gt_thr: Vec<f64>,
    pub gt_thr_mask: Vec<f64>,
}

impl Inputs {
    pub fn named(&self) -> [(&'static str, &Vec<f64>); 5] {
        [
            ("preds", &self.preds),
            ("gt_shrink", &self.gt_shrink),
            ("gt_shrink_mask", &self.gt_shrink_mask),
            ("gt_thr", &self.gt_thr),
            ("gt_thr_mask", &self.gt_thr_mask),
        ]
    }
}

/// One reference case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dtype: Dtype,
    pub seed: u64,
    pub preds_shape: Vec<usize>,
    pub target_shape: Vec<usize>,
    /// The `[loss]` keys, as the TOML table would give them.
    pub config: DbNetConfig,
    json: Value,
    /// Terms computed by PyTorch in the case's dtype.
    pub expected: Terms,
    /// Terms computed by PyTorch in f64 from the same (rounded) inputs.
    pub expected_f64: Terms,
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array().expect("shape").iter().map(|d| d.as_u64().expect("dimension") as usize).collect()
}

/// Every case of `cases.json`.
pub fn load() -> Vec<Case> {
    let path = fixtures_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let root: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    root["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            dtype: match c["dtype"].as_str() {
                Some("f32") => Dtype::F32,
                Some("f64") => Dtype::F64,
                other => panic!("dtype {other:?}"),
            },
            seed: c["seed"].as_u64().expect("seed"),
            preds_shape: shape(&c["preds_shape"]),
            target_shape: shape(&c["target_shape"]),
            config: serde_json::from_value(c["config"].clone()).expect("a DbNetConfig"),
            expected: Terms::from_json(&c["expected"]),
            expected_f64: Terms::from_json(&c["expected_f64"]),
            json: c.clone(),
        })
        .collect()
}

/// `n` doubles in `[0, 1)`: splitmix64 outputs for the states `seed + i·γ`, `i = 1..=n`, top 53
/// bits (the generator's `uniform`).
pub fn uniform(seed: u64, n: usize) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

/// One map from its recipe (the generator's `recipe`).
pub fn recipe(kind: &str, u: &[f64]) -> Vec<f64> {
    let (name, arg) = kind.split_once(':').unwrap_or((kind, ""));
    let frac: f64 = if arg.is_empty() { 0.0 } else { arg.parse().expect("fraction") };
    let f: Box<dyn Fn(f64) -> f64> = match name {
        "prob" => Box::new(|u| 0.01 + 0.98 * u),
        "logits" => Box::new(|u| 16.0 * u - 8.0),
        "ties" => Box::new(|u| ((4.0 * u).floor() + 1.0) / 5.0),
        "thr" => Box::new(|u| 0.2 + 0.6 * u),
        "uniform" => Box::new(|u| u),
        "gt_thr" => Box::new(|u| 0.3 + 0.4 * u),
        "binary" => Box::new(move |u| if u < frac { 1.0 } else { 0.0 }),
        "levels" => Box::new(move |u| {
            if u < frac {
                [0.5, 1.0, 2.0][((u / frac * 3.0).floor().min(2.0)) as usize]
            } else {
                0.0
            }
        }),
        "ones" => Box::new(|_| 1.0),
        "zeros" => Box::new(|_| 0.0),
        other => panic!("unknown recipe {other}"),
    };
    u.iter().map(|&u| f(u)).collect()
}

impl Case {
    fn map_recipe(&self, name: &str) -> &str {
        self.json["maps"][name].as_str().expect("map recipe")
    }

    /// The inputs, rebuilt from the seeded formula and rounded to the case's dtype.
    pub fn inputs(&self) -> Inputs {
        let (n, h, w) = (self.preds_shape[0], self.preds_shape[2], self.preds_shape[3]);
        let channels: Vec<Vec<f64>> = ["p", "t", "b"]
            .iter()
            .enumerate()
            .map(|(j, ch)| {
                recipe(self.map_recipe(ch), &uniform(self.seed * 16 + j as u64, n * h * w))
            })
            .collect();
        let mut preds = Vec::with_capacity(3 * n * h * w);
        for b in 0..n {
            for ch in &channels {
                preds.extend_from_slice(&ch[b * h * w..(b + 1) * h * w]);
            }
        }
        let numel: usize = self.target_shape.iter().product();
        let target = |j: u64, name: &str| {
            recipe(self.map_recipe(name), &uniform(self.seed * 16 + 3 + j, numel))
        };
        let mut inputs = Inputs {
            preds,
            gt_shrink: target(0, "gt_shrink"),
            gt_shrink_mask: target(1, "gt_shrink_mask"),
            gt_thr: target(2, "gt_thr"),
            gt_thr_mask: target(3, "gt_thr_mask"),
        };
        if self.dtype == Dtype::F32 {
            for v in [
                &mut inputs.preds,
                &mut inputs.gt_shrink,
                &mut inputs.gt_shrink_mask,
                &mut inputs.gt_thr,
                &mut inputs.gt_thr_mask,
            ] {
                v.iter_mut().for_each(|x| *x = f64::from(*x as f32));
            }
        }
        inputs
    }

    /// The inputs the generator stored (small cases only).
    pub fn stored_inputs(&self) -> Option<Inputs> {
        let inputs = self.json.get("inputs")?;
        let get = |k: &str| -> Vec<f64> {
            inputs[k]
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_f64().expect("number"))
                .collect()
        };
        Some(Inputs {
            preds: get("preds"),
            gt_shrink: get("gt_shrink"),
            gt_shrink_mask: get("gt_shrink_mask"),
            gt_thr: get("gt_thr"),
            gt_thr_mask: get("gt_thr_mask"),
        })
    }

    /// The sum of each input, as the generator computed it.
    pub fn checksum(&self, name: &str) -> f64 {
        self.json["checksums"][name].as_f64().expect("checksum")
    }

    /// d loss / d preds from PyTorch, in the case's dtype, as f64.
    pub fn grad(&self) -> Vec<f64> {
        read_grad(&self.json["grad_file"], self.dtype)
    }

    /// d loss / d preds from PyTorch computed in f64 on the same (rounded) inputs.
    pub fn grad_f64(&self) -> Vec<f64> {
        read_grad(&self.json["grad_f64_file"], Dtype::F64)
    }

    /// Whether mining cuts through tied losses (the gradient may then pick other, equal
    /// elements).
    pub fn has_ties(&self) -> bool {
        self.map_recipe("p") == "ties"
    }
}

/// A raw little-endian gradient file of the fixtures.
fn read_grad(file: &Value, dtype: Dtype) -> Vec<f64> {
    let file = file.as_str().expect("gradient file name");
    let bytes = std::fs::read(fixtures_dir().join(file)).expect("gradient file");
    match dtype {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
    }
}

/// `|got − want| ≤ rel · max(|want|, floor)`.
pub fn close(got: f64, want: f64, rel: f64, floor: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(floor)
}
