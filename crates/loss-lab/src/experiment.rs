//! Experiment files (`[data]`, `[features]`, `[model]`, `[train]`, `[eval]`, `[loss]`) and the
//! pipeline that runs one: data, TF-IDF, training with a loss of the multi-label family,
//! threshold tuning on validation, test scores overall and per frequency group.

use std::path::{Path, PathBuf};
use std::time::Instant;

use loss_core::{Loss, LossConfig, MultiLabelConfig};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use loss_tch::TchTensor;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::{self, Dataset, DatasetOptions, Holdout, LabelStats};
use crate::error::{LabError, Result};
use crate::features::{CsrMatrix, Tfidf, TfidfConfig};
use crate::metrics::{self, FreqGroup, GroupThresholds};
use crate::model::{tch_err, to_i64, Model, ModelConfig, SparseRows};

/// `[data]`: where documents come from and how validation is held out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `reuters` (the original SGML files, ModApte split) or `jsonl`.
    #[serde(default)]
    pub format: DataFormat,
    /// Reuters: the directory of `reut2-*.sgm`. Relative paths are relative to the experiment
    /// file.
    pub path: Option<PathBuf>,
    /// JSON Lines: the training file.
    pub train: Option<PathBuf>,
    /// JSON Lines: the test file.
    pub test: Option<PathBuf>,
    /// Training documents held out for validation (threshold tuning).
    #[serde(default = "default_val_size")]
    pub val_size: usize,
    /// Seed of the hold-out.
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
}

fn default_val_size() -> usize {
    1000
}

fn default_split_seed() -> u64 {
    123
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    #[default]
    Reuters,
    Jsonl,
}

/// `[features]`: TF-IDF settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    pub bigrams: bool,
    pub min_df: usize,
    pub max_features: usize,
    pub sublinear_tf: bool,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        let d = TfidfConfig::default();
        Self {
            bigrams: d.bigrams,
            min_df: d.min_df,
            max_features: d.max_features.unwrap_or(20_000),
            sublinear_tf: d.sublinear_tf,
        }
    }
}

/// `[train]`: optimisation budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: loss_core::DeviceSpec,
    /// libtorch's intra-op threads; libtorch's default (one per core) when absent.
    pub threads: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 1,
            device: loss_core::DeviceSpec::Cpu,
            threads: None,
        }
    }
}

/// `[eval]`: the threshold grid and the frequency groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub threshold_min: f32,
    pub threshold_max: f32,
    pub threshold_step: f32,
    pub head_min: f64,
    pub tail_max: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            threshold_min: 0.40,
            threshold_max: 0.60,
            threshold_step: 0.01,
            head_min: 35.0,
            tail_max: 8.0,
        }
    }
}

impl EvalConfig {
    /// The threshold grid, inclusive of both ends.
    pub fn thresholds(&self) -> Result<Vec<f32>> {
        let (lo, hi, step) = (self.threshold_min, self.threshold_max, self.threshold_step);
        if !(lo.is_finite() && hi.is_finite() && step > 0.0 && lo <= hi) {
            return Err(LabError::InvalidConfig {
                what: "eval.threshold_*",
                reason: format!("need min <= max and step > 0, got {lo}, {hi}, {step}"),
            });
        }
        let n = ((hi - lo) / step + 1e-4).floor() as usize;
        Ok((0..=n).map(|i| ((lo + i as f32 * step) * 1e4).round() / 1e4).collect())
    }
}

/// One experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub data: DataConfig,
    #[serde(default)]
    pub features: FeaturesConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    pub loss: LossConfig,
    /// Directory relative data paths resolve against (the experiment file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Experiment {
    /// Reads and checks an experiment file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        let mut exp: Experiment = toml::from_str(&text).map_err(|e| LabError::Toml {
            path: path.to_path_buf(),
            reason: loss_core::config::describe_toml_error(&text, &e),
        })?;
        exp.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        exp.validate()?;
        Ok(exp)
    }

    /// Checks every setting that can be checked without the data, so that a bad value fails
    /// before minutes of loading and training.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(LabError::InvalidConfig { what, reason });
        let t = &self.train;
        if t.epochs == 0 {
            return bad("train.epochs", "must be > 0, got 0".into());
        }
        if t.batch_size == 0 {
            return bad("train.batch_size", "must be > 0, got 0".into());
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad("train.lr", format!("must be finite and > 0, got {}", t.lr));
        }
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return bad(
                "train.weight_decay",
                format!("must be finite and >= 0, got {}", t.weight_decay),
            );
        }
        if t.threads == Some(0) {
            return bad("train.threads", "must be > 0, got 0".into());
        }
        self.model.validate()?;
        self.eval.thresholds()?;
        GroupThresholds { head_min: self.eval.head_min, tail_max: self.eval.tail_max }
            .assign(&[])?;
        if self.data.val_size == 0 {
            return bad(
                "data.val_size",
                "must be > 0: the threshold is tuned on validation".into(),
            );
        }
        let loss = self.multilabel_loss()?;
        // Class statistics come from the data; everything else of the loss is checked now.
        loss_with_stats(loss, &LabelStats { class_freq: vec![], train_num: 1 })
            .resolve()
            .map(|_| ())
            .or_else(|e| match e {
                loss_core::LossError::InvalidConfig { ref key, .. } if key == "class_freq" => {
                    Ok(())
                }
                other => Err(LabError::Loss(other)),
            })
    }

    /// The `[loss]` table, which must be of type `multilabel` for text experiments.
    pub fn multilabel_loss(&self) -> Result<&MultiLabelConfig> {
        match &self.loss {
            LossConfig::Multilabel(m) => Ok(m),
            LossConfig::Dbnet(_) => Err(LabError::InvalidConfig {
                what: "loss.type",
                reason: "text experiments need type = \"multilabel\"".into(),
            }),
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Loads the dataset named by `[data]` (`data_override` replaces `path`, or for JSON Lines
    /// the directory holding `train.jsonl` and `test.jsonl`).
    pub fn load_dataset(&self, data_override: Option<&Path>) -> Result<Dataset> {
        let d = &self.data;
        match d.format {
            DataFormat::Reuters => {
                let dir = match (data_override, &d.path) {
                    (Some(p), _) => p.to_path_buf(),
                    (None, Some(p)) => self.resolve(p),
                    (None, None) => {
                        return Err(LabError::InvalidConfig {
                            what: "data.path",
                            reason: "the Reuters format needs the directory of reut2-*.sgm".into(),
                        })
                    }
                };
                data::reuters::load_modapte(&dir)
            }
            DataFormat::Jsonl => {
                let (train, test) = match (data_override, &d.train, &d.test) {
                    (Some(dir), _, _) => (dir.join("train.jsonl"), dir.join("test.jsonl")),
                    (None, Some(tr), Some(te)) => (self.resolve(tr), self.resolve(te)),
                    _ => {
                        return Err(LabError::InvalidConfig {
                            what: "data.train / data.test",
                            reason: "the jsonl format needs both files".into(),
                        })
                    }
                };
                data::jsonl::load_jsonl_dataset(&train, &test, &DatasetOptions::default())
            }
        }
    }
}

/// Everything the runs of one experiment share: documents, features, labels, statistics.
pub struct Prepared {
    pub label_names: Vec<String>,
    pub train_x: CsrMatrix,
    pub train_y: Array2<f32>,
    pub val_x: CsrMatrix,
    pub val_y: Array2<f32>,
    pub test_x: CsrMatrix,
    pub test_y: Array2<f32>,
    /// Label frequencies over the whole training split (validation documents included), the
    /// statistics the losses and the frequency groups use.
    pub stats: LabelStats,
    pub n_features: usize,
    pub seconds: f64,
}

impl Prepared {
    /// Reads the data, holds out validation and fits TF-IDF on the remaining training part.
    pub fn new(exp: &Experiment, data_override: Option<&Path>) -> Result<Self> {
        let start = Instant::now();
        let ds = exp.load_dataset(data_override)?;
        let n_labels = ds.n_labels();
        tracing::info!(
            train = ds.train.len(),
            test = ds.test.len(),
            labels = n_labels,
            "dataset loaded"
        );
        let stats = LabelStats::from_docs(&ds.train, n_labels)?;
        let holdout = Holdout::new(ds.train.len(), exp.data.val_size, exp.data.split_seed)
            .map_err(|_| LabError::InvalidConfig {
                what: "data.val_size",
                reason: format!(
                    "holds out {} of {} training documents, leaving none to train on",
                    exp.data.val_size,
                    ds.train.len()
                ),
            })?;
        let train_docs = holdout.train_of(&ds.train);
        let val_docs = holdout.val_of(&ds.train);

        let f = &exp.features;
        let config = TfidfConfig {
            bigrams: f.bigrams,
            min_df: f.min_df,
            max_features: Some(f.max_features),
            sublinear_tf: f.sublinear_tf,
            ..TfidfConfig::default()
        };
        let texts = |docs: &[&data::Doc]| docs.iter().map(|d| d.text.clone()).collect::<Vec<_>>();
        let train_texts = texts(&train_docs);
        let (tfidf, train_x) = Tfidf::fit_transform(&train_texts, &config)?;
        let val_x = tfidf.transform(&texts(&val_docs));
        let test_refs: Vec<&data::Doc> = ds.test.iter().collect();
        let test_x = tfidf.transform(&texts(&test_refs));
        tracing::info!(features = tfidf.n_features(), "tf-idf fitted");

        Ok(Self {
            train_y: data::label_matrix(train_docs.iter().copied(), n_labels)?,
            val_y: data::label_matrix(val_docs.iter().copied(), n_labels)?,
            test_y: data::label_matrix(&ds.test, n_labels)?,
            label_names: ds.label_names,
            train_x,
            val_x,
            test_x,
            stats,
            n_features: tfidf.n_features(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Frequency groups of the labels.
    pub fn groups(&self, eval: &EvalConfig) -> Result<Vec<FreqGroup>> {
        GroupThresholds { head_min: eval.head_min, tail_max: eval.tail_max }
            .assign(&self.stats.class_freq)
    }
}

/// Scores of one split at one threshold, as `metrics.json` holds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitScores {
    pub micro_f1: f64,
    pub macro_f1: f64,
    pub groups: std::collections::BTreeMap<String, GroupScores>,
}

/// Scores of one frequency group; `null` (`None`) for a group without labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScores {
    pub micro_f1: Option<f64>,
    pub macro_f1: Option<f64>,
    pub n_labels: usize,
}

/// The result of one training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    pub test: SplitScores,
    pub val: SplitScores,
    pub threshold: f32,
    pub seconds: f64,
    /// Test F1 of each label, in label order.
    #[serde(skip)]
    pub per_label_test_f1: Vec<f64>,
    /// Mean training loss of each epoch.
    pub epoch_losses: Vec<f64>,
}

fn split_scores(
    scores: ArrayView2<'_, f32>,
    targets: ArrayView2<'_, f32>,
    threshold: f32,
    groups: &[FreqGroup],
) -> Result<(SplitScores, Vec<f64>)> {
    let e = metrics::evaluate(scores, targets, threshold, groups)?;
    let groups = e
        .groups
        .iter()
        .map(|g| {
            let some = |v: f64| (g.n_labels > 0).then_some(v);
            let s = GroupScores {
                micro_f1: some(g.micro_f1),
                macro_f1: some(g.macro_f1),
                n_labels: g.n_labels,
            };
            (g.group.name().to_string(), s)
        })
        .collect();
    Ok((SplitScores { micro_f1: e.micro_f1, macro_f1: e.macro_f1, groups }, e.per_label_f1))
}

/// Called after every epoch with (epoch index, mean training loss).
pub type EpochHook<'a> = &'a mut dyn FnMut(usize, f64);

/// Fills `class_freq` / `train_num` from the data when the `[loss]` table does not give them.
pub fn loss_with_stats(config: &MultiLabelConfig, stats: &LabelStats) -> MultiLabelConfig {
    let mut c = config.clone();
    if c.class_freq.is_none() && c.train_num.is_none() {
        c.class_freq = Some(stats.class_freq.clone());
        c.train_num = Some(stats.train_num as f64);
    }
    c
}

/// Trains one model with `loss` and scores it.
pub fn run(
    prepared: &Prepared,
    exp: &Experiment,
    loss: &MultiLabelConfig,
    device: Device,
    on_epoch: EpochHook<'_>,
) -> Result<RunResult> {
    let start = Instant::now();
    let t = &exp.train;
    exp.validate()?;
    let loss_fn = ResampleLoss::from_config(&loss_with_stats(loss, &prepared.stats))?;
    let n_labels = prepared.label_names.len();

    if let Some(threads) = t.threads {
        tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
    }
    tch::manual_seed(i64::try_from(t.seed).unwrap_or(i64::MAX));
    let model = Model::new(&exp.model, prepared.n_features, n_labels, device)?;
    let mut opt = model.optimizer(t.lr, t.weight_decay)?;

    let n = prepared.train_x.n_rows;
    let y_shape = [to_i64(n)?, to_i64(n_labels)?];
    let y_all = Tensor::f_from_slice(prepared.train_y.as_slice().unwrap_or(&[]))
        .and_then(|y| y.f_reshape(y_shape))
        .and_then(|y| y.f_to_device(device))
        .map_err(tch_err)?;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(t.seed);
    let mut epoch_losses = Vec::with_capacity(t.epochs);
    for epoch in 0..t.epochs {
        rng.shuffle(&mut order);
        let mut total = 0.0;
        let mut batches = 0usize;
        for chunk in order.chunks(t.batch_size) {
            let x = SparseRows::from_csr(&prepared.train_x, chunk, device)?;
            let idx: Vec<i64> = chunk.iter().map(|&i| to_i64(i)).collect::<Result<_>>()?;
            let idx =
                Tensor::f_from_slice(&idx).and_then(|i| i.f_to_device(device)).map_err(tch_err)?;
            let y = y_all.f_index_select(0, &idx).map_err(tch_err)?;
            let logits = TchTensor::from(model.forward(&x, true)?);
            let targets = TchTensor::from(y);
            let out = loss_fn.forward(MultiLabelInput::new(&logits, &targets))?;
            let value = out.loss.into_inner();
            opt.zero_grad();
            value.f_backward().map_err(tch_err)?;
            opt.step();
            total += value.f_double_value(&[]).map_err(tch_err)?;
            batches += 1;
        }
        let mean = total / batches.max(1) as f64;
        epoch_losses.push(mean);
        on_epoch(epoch, mean);
    }

    let groups = prepared.groups(&exp.eval)?;
    let val_scores = scores_of(&model, &prepared.val_x, n_labels, device)?;
    let choice =
        metrics::tune_threshold(val_scores.view(), prepared.val_y.view(), &exp.eval.thresholds()?)?;
    let (val, _) =
        split_scores(val_scores.view(), prepared.val_y.view(), choice.threshold, &groups)?;
    let test_scores = scores_of(&model, &prepared.test_x, n_labels, device)?;
    let (test, per_label_test_f1) =
        split_scores(test_scores.view(), prepared.test_y.view(), choice.threshold, &groups)?;
    Ok(RunResult {
        test,
        val,
        threshold: choice.threshold,
        seconds: start.elapsed().as_secs_f64(),
        per_label_test_f1,
        epoch_losses,
    })
}

fn scores_of(model: &Model, x: &CsrMatrix, n_labels: usize, device: Device) -> Result<Array2<f32>> {
    let rows = SparseRows::all(x, device)?;
    let flat = model.predict(&rows)?;
    Array2::from_shape_vec((x.n_rows, n_labels), flat).map_err(|e| LabError::Torch(e.to_string()))
}

/// A small seeded generator for the batch order (SplitMix64), fixed so runs repeat exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
