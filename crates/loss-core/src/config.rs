//! The `[loss]` table of `../shared/spec/interfaces.md`, parsed strictly and resolved into
//! validated, typed parameters.
//!
//! Parsing and resolving are two steps: the `*Config` types mirror the TOML (every key
//! optional, unknown keys rejected); `resolve` applies the preset, lets explicit keys override
//! it, checks every range and returns `*Params` in which every mode is an enum.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{LossError, Result};
use crate::loss::Reduction;
use crate::stats::ClassStats;

/// A file or table holding a `[loss]` table (as given to `losslab loss`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LossFile {
    pub loss: LossConfig,
}

impl LossFile {
    /// Parses a TOML document holding exactly one `[loss]` table.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| LossError::Parse(describe_toml_error(text, &e)))
    }
}

/// A TOML error as one line: the parser's message and the line it points at.
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else { return message };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count();
    let line = text.lines().nth(line_no).unwrap_or("").trim();
    format!("{message} (line {}: `{line}`)", line_no + 1)
}

/// One `[loss]` table, tagged by `type`.
///
/// Deserialised in two steps (the `type`, then the table as the chosen family's config) so
/// that an error names the key it is about rather than the `[loss]` header.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LossConfig {
    Multilabel(MultiLabelConfig),
    Dbnet(DbNetConfig),
}

impl<'de> Deserialize<'de> for LossConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "loss `type` must be \"multilabel\" or \"dbnet\", got {other}"
                )))
            }
            None => return Err(D::Error::custom("missing loss key `type` (multilabel or dbnet)")),
        };
        let text = toml::to_string(&table).map_err(D::Error::custom)?;
        match kind.as_str() {
            "multilabel" => family(&text).map(LossConfig::Multilabel),
            "dbnet" => family(&text).map(LossConfig::Dbnet),
            other => Err(format!("unknown loss type `{other}` (expected multilabel or dbnet)")),
        }
        .map_err(D::Error::custom)
    }
}

/// A family's config from the text of its `[loss]` table (without `type`); the error names the
/// offending key and its sub-table.
fn family<T: DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        let Some(span) = e.span() else { return format!("in [loss]: {message}") };
        let before = &text[..span.start.min(text.len())];
        let line_no = before.matches('\n').count();
        let line = text.lines().nth(line_no).unwrap_or("").trim();
        let table = before
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix('[').and_then(|h| h.strip_suffix(']')))
            .map_or("[loss]".to_string(), |t| format!("[loss.{t}]"));
        if line.starts_with('[') {
            format!("in {table}: {message}")
        } else {
            format!("in {table}: {message} (at `{line}`)")
        }
    })
}

// ------------------------------------------------------------------------------------------
// Multi-label family

/// The paper's eight losses, with the values used on Reuters-21578; the `-pubmed` names carry
/// the PubMed differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum MultiLabelPreset {
    #[serde(rename = "bce")]
    Bce,
    #[serde(rename = "focal")]
    Focal,
    #[serde(rename = "cb")]
    Cb,
    #[serde(rename = "r-focal")]
    RFocal,
    #[serde(rename = "ntr-focal")]
    NtrFocal,
    #[serde(rename = "db-nofocal")]
    DbNoFocal,
    #[serde(rename = "cb-ntr")]
    CbNtr,
    #[serde(rename = "db")]
    Db,
    #[serde(rename = "cb-pubmed")]
    CbPubmed,
    #[serde(rename = "r-focal-pubmed")]
    RFocalPubmed,
    #[serde(rename = "ntr-focal-pubmed")]
    NtrFocalPubmed,
    #[serde(rename = "db-nofocal-pubmed")]
    DbNoFocalPubmed,
    #[serde(rename = "db-pubmed")]
    DbPubmed,
}

/// `[loss.reweight] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReweightMode {
    Inverse,
    SqrtInverse,
    ClassBalanced,
    Rebalance,
}

/// Class-balanced weighting per class, or per row over the row's positive labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CbMode {
    #[default]
    ByClass,
    AverageN,
    AverageW,
    MinN,
}

/// Normalisation of the reweighting matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightNorm {
    #[default]
    None,
    ByInstance,
    ByBatch,
}

/// When NTR divides the reweighting matrix by `lambda` on negative entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeWeight {
    /// Only when a reweight is present, as the reference code does.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReweightConfig {
    pub mode: Option<ReweightMode>,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    pub mu: Option<f64>,
    pub cb_mode: Option<CbMode>,
    pub norm: Option<WeightNorm>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FocalConfig {
    pub gamma: Option<f64>,
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NtrConfig {
    pub kappa: Option<f64>,
    pub lambda: Option<f64>,
    pub negative_weight: Option<NegativeWeight>,
    pub bias_over_lambda: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AsymmetricConfig {
    pub gamma_pos: Option<f64>,
    pub gamma_neg: Option<f64>,
    pub clip: Option<f64>,
}

/// The multi-label `[loss]` table as written; see [`MultiLabelConfig::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MultiLabelConfig {
    pub preset: Option<MultiLabelPreset>,
    pub reduction: Option<Reduction>,
    pub loss_weight: Option<f64>,
    pub class_freq: Option<Vec<f64>>,
    pub train_num: Option<f64>,
    pub pos_weight: Option<Vec<f64>>,
    pub check_finite: Option<bool>,
    pub reweight: Option<ReweightConfig>,
    pub focal: Option<FocalConfig>,
    pub ntr: Option<NtrConfig>,
    pub asymmetric: Option<AsymmetricConfig>,
}

/// The reweighting formula, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReweightKind {
    /// `W_c = N_train / n_c`.
    Inverse,
    /// `W_c = sqrt(N_train / n_c)`.
    SqrtInverse,
    /// Class-balanced weights `(1 − β) / (1 − β^n)`.
    ClassBalanced { beta: f64, mode: CbMode },
    /// Distribution-Balanced rebalancing `alpha + σ(beta · (r − mu))`.
    Rebalance { alpha: f64, beta: f64, mu: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reweight {
    pub kind: ReweightKind,
    pub norm: WeightNorm,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Focal {
    pub gamma: f64,
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ntr {
    pub kappa: f64,
    pub lambda: f64,
    pub negative_weight: NegativeWeight,
    pub bias_over_lambda: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Asymmetric {
    pub gamma_pos: f64,
    pub gamma_neg: f64,
    pub clip: f64,
}

/// Validated parameters of the multi-label loss.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabelParams {
    pub reduction: Reduction,
    pub loss_weight: f64,
    /// Present when a reweight or NTR needs it (and kept when given anyway).
    pub stats: Option<ClassStats>,
    pub pos_weight: Option<Vec<f64>>,
    pub check_finite: bool,
    pub reweight: Option<Reweight>,
    pub focal: Option<Focal>,
    pub ntr: Option<Ntr>,
    pub asymmetric: Option<Asymmetric>,
}

impl Default for MultiLabelParams {
    /// Plain binary cross-entropy with mean reduction.
    fn default() -> Self {
        Self {
            reduction: Reduction::Mean,
            loss_weight: 1.0,
            stats: None,
            pos_weight: None,
            check_finite: true,
            reweight: None,
            focal: None,
            ntr: None,
            asymmetric: None,
        }
    }
}

impl MultiLabelPreset {
    /// The preset as a config table, before user keys are laid over it.
    pub fn config(self) -> MultiLabelConfig {
        use MultiLabelPreset as P;
        let focal = || Some(FocalConfig { gamma: Some(2.0), alpha: Some(0.5) });
        let rebalance = |mu: f64| {
            Some(ReweightConfig {
                mode: Some(ReweightMode::Rebalance),
                alpha: Some(0.1),
                beta: Some(10.0),
                mu: Some(mu),
                cb_mode: None,
                norm: None,
            })
        };
        let cb = || {
            Some(ReweightConfig {
                mode: Some(ReweightMode::ClassBalanced),
                beta: Some(0.9),
                cb_mode: Some(CbMode::ByClass),
                ..ReweightConfig::default()
            })
        };
        let ntr =
            || Some(NtrConfig { kappa: Some(0.05), lambda: Some(2.0), ..NtrConfig::default() });
        let base = MultiLabelConfig::default();
        match self {
            P::Bce => base,
            P::Focal => MultiLabelConfig { focal: focal(), ..base },
            P::Cb | P::CbPubmed => MultiLabelConfig {
                reweight: cb(),
                focal: focal(),
                loss_weight: Some(if self == P::Cb { 10.0 } else { 5.0 }),
                ..base
            },
            P::RFocal => MultiLabelConfig { reweight: rebalance(0.9), focal: focal(), ..base },
            P::RFocalPubmed => {
                MultiLabelConfig { reweight: rebalance(0.05), focal: focal(), ..base }
            }
            P::NtrFocal => MultiLabelConfig { ntr: ntr(), focal: focal(), ..base },
            P::NtrFocalPubmed => {
                MultiLabelConfig { ntr: ntr(), focal: focal(), loss_weight: Some(0.5), ..base }
            }
            P::DbNoFocal | P::DbNoFocalPubmed => MultiLabelConfig {
                reweight: rebalance(if self == P::DbNoFocal { 0.9 } else { 0.05 }),
                ntr: ntr(),
                loss_weight: Some(0.5),
                ..base
            },
            P::CbNtr => MultiLabelConfig {
                reweight: cb(),
                ntr: ntr(),
                focal: focal(),
                loss_weight: Some(10.0),
                ..base
            },
            P::Db | P::DbPubmed => MultiLabelConfig {
                reweight: rebalance(if self == P::Db { 0.9 } else { 0.05 }),
                ntr: ntr(),
                focal: focal(),
                ..base
            },
        }
    }
}

fn overlay<T: Clone>(user: &Option<T>, preset: &Option<T>) -> Option<T> {
    user.clone().or_else(|| preset.clone())
}

fn key_err(key: &str, reason: impl Into<String>) -> LossError {
    LossError::InvalidConfig { key: key.into(), reason: reason.into() }
}

fn finite(key: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(key_err(key, format!("must be finite, got {v}")))
    }
}

fn at_least(key: &str, v: f64, lo: f64) -> Result<f64> {
    if finite(key, v)? < lo {
        return Err(key_err(key, format!("must be >= {lo}, got {v}")));
    }
    Ok(v)
}

fn positive(key: &str, v: f64) -> Result<f64> {
    if finite(key, v)? <= 0.0 {
        return Err(key_err(key, format!("must be > 0, got {v}")));
    }
    Ok(v)
}

fn in_closed(key: &str, v: f64, lo: f64, hi: f64) -> Result<f64> {
    if !(lo..=hi).contains(&v) {
        return Err(key_err(key, format!("must be in [{lo}, {hi}], got {v}")));
    }
    Ok(v)
}

fn required(key: &str, v: Option<f64>) -> Result<f64> {
    v.ok_or_else(|| key_err(key, "is required by the chosen mode"))
}

impl ReweightConfig {
    /// Fields of `self` override `preset`'s, unless `self` switches to another mode, in which
    /// case nothing of the preset's table is inherited.
    fn over(&self, preset: &ReweightConfig) -> ReweightConfig {
        if self.mode.is_some() && self.mode != preset.mode {
            return self.clone();
        }
        ReweightConfig {
            mode: self.mode.or(preset.mode),
            alpha: self.alpha.or(preset.alpha),
            beta: self.beta.or(preset.beta),
            mu: self.mu.or(preset.mu),
            cb_mode: self.cb_mode.or(preset.cb_mode),
            norm: self.norm.or(preset.norm),
        }
    }

    /// Keys of other modes are ignored, so one table can list every key (as the interfaces
    /// file's example does) and switch modes by `mode` alone.
    fn resolve(&self) -> Result<Reweight> {
        let mode = self.mode.ok_or_else(|| key_err("reweight.mode", "is required"))?;
        let kind = match mode {
            ReweightMode::Inverse => ReweightKind::Inverse,
            ReweightMode::SqrtInverse => ReweightKind::SqrtInverse,
            ReweightMode::ClassBalanced => {
                let beta = finite("reweight.beta", required("reweight.beta", self.beta)?)?;
                if !(0.0..1.0).contains(&beta) {
                    return Err(key_err("reweight.beta", format!("must be in [0, 1), got {beta}")));
                }
                ReweightKind::ClassBalanced { beta, mode: self.cb_mode.unwrap_or_default() }
            }
            ReweightMode::Rebalance => ReweightKind::Rebalance {
                alpha: at_least("reweight.alpha", self.alpha.unwrap_or(0.1), 0.0)?,
                beta: finite("reweight.beta", self.beta.unwrap_or(10.0))?,
                mu: finite("reweight.mu", self.mu.unwrap_or(0.9))?,
            },
        };
        Ok(Reweight { kind, norm: self.norm.unwrap_or_default() })
    }
}

impl MultiLabelConfig {
    /// Applies the preset (if any), lays explicit keys over it and validates everything.
    pub fn resolve(&self) -> Result<MultiLabelParams> {
        let preset = self.preset.map(MultiLabelPreset::config).unwrap_or_default();

        let reweight = match (&self.reweight, &preset.reweight) {
            (Some(u), Some(p)) => Some(u.over(p)),
            (u, p) => overlay(u, p),
        };
        let focal = match (&self.focal, &preset.focal) {
            (Some(u), Some(p)) => {
                Some(FocalConfig { gamma: u.gamma.or(p.gamma), alpha: u.alpha.or(p.alpha) })
            }
            (u, p) => overlay(u, p),
        };
        let ntr = match (&self.ntr, &preset.ntr) {
            (Some(u), Some(p)) => Some(NtrConfig {
                kappa: u.kappa.or(p.kappa),
                lambda: u.lambda.or(p.lambda),
                negative_weight: u.negative_weight.or(p.negative_weight),
                bias_over_lambda: u.bias_over_lambda.or(p.bias_over_lambda),
            }),
            (u, p) => overlay(u, p),
        };
        // Asymmetric focusing is the alternative to focal: when given, it replaces focal,
        // a preset's or an explicit [loss.focal] alike.
        let asymmetric = self.asymmetric.clone();
        let focal = if asymmetric.is_some() { None } else { focal };

        let reweight = reweight.as_ref().map(ReweightConfig::resolve).transpose()?;
        let focal = focal
            .map(|f| -> Result<Focal> {
                Ok(Focal {
                    gamma: at_least("focal.gamma", f.gamma.unwrap_or(2.0), 0.0)?,
                    alpha: in_closed("focal.alpha", f.alpha.unwrap_or(0.5), 0.0, 1.0)?,
                })
            })
            .transpose()?;
        let ntr = ntr
            .map(|n| -> Result<Ntr> {
                Ok(Ntr {
                    kappa: finite("ntr.kappa", n.kappa.unwrap_or(0.05))?,
                    lambda: positive("ntr.lambda", n.lambda.unwrap_or(2.0))?,
                    negative_weight: n.negative_weight.unwrap_or_default(),
                    bias_over_lambda: n.bias_over_lambda.unwrap_or(false),
                })
            })
            .transpose()?;
        let asymmetric = asymmetric
            .map(|a| -> Result<Asymmetric> {
                Ok(Asymmetric {
                    gamma_pos: at_least("asymmetric.gamma_pos", a.gamma_pos.unwrap_or(0.0), 0.0)?,
                    gamma_neg: at_least("asymmetric.gamma_neg", a.gamma_neg.unwrap_or(4.0), 0.0)?,
                    clip: in_closed("asymmetric.clip", a.clip.unwrap_or(0.05), 0.0, 1.0)?,
                })
            })
            .transpose()?;

        let class_freq = overlay(&self.class_freq, &preset.class_freq);
        let train_num = self.train_num.or(preset.train_num);
        let stats = match (class_freq, train_num) {
            (Some(freq), Some(total)) => Some(ClassStats::new(freq, total)?),
            (None, None) => None,
            (Some(_), None) => return Err(key_err("train_num", "is required with class_freq")),
            (None, Some(_)) => return Err(key_err("class_freq", "is required with train_num")),
        };
        if stats.is_none() && (reweight.is_some() || ntr.is_some()) {
            let part = if reweight.is_some() { "reweight" } else { "ntr" };
            return Err(key_err("class_freq", format!("is required by [loss.{part}]")));
        }

        let pos_weight = overlay(&self.pos_weight, &preset.pos_weight);
        if let Some(pw) = &pos_weight {
            for (i, &w) in pw.iter().enumerate() {
                if !(w.is_finite() && w >= 0.0) {
                    return Err(key_err(
                        &format!("pos_weight[{i}]"),
                        format!("must be finite and >= 0, got {w}"),
                    ));
                }
            }
        }

        Ok(MultiLabelParams {
            reduction: self.reduction.or(preset.reduction).unwrap_or_default(),
            loss_weight: at_least(
                "loss_weight",
                self.loss_weight.or(preset.loss_weight).unwrap_or(1.0),
                0.0,
            )?,
            stats,
            pos_weight,
            check_finite: self.check_finite.or(preset.check_finite).unwrap_or(true),
            reweight,
            focal,
            ntr,
            asymmetric,
        })
    }
}

// ------------------------------------------------------------------------------------------
// DBNet family

/// DBNet presets: `dbnet` is the paper's training setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbNetPreset {
    Dbnet,
}

/// The loss applied to the probability map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbLoss {
    #[default]
    Dice,
    BalancedBce,
}

/// Whether channel 0 of the predictions holds probabilities or logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbInput {
    #[default]
    Probability,
    Logits,
}

/// The DBNet `[loss]` table as written; see [`DbNetConfig::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbNetConfig {
    pub preset: Option<DbNetPreset>,
    pub prob_loss: Option<ProbLoss>,
    pub prob_input: Option<ProbInput>,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    pub negative_ratio: Option<f64>,
    pub fallback_negative_num: Option<u64>,
    pub eps: Option<f64>,
    pub downsample_ratio: Option<f64>,
}

/// Validated parameters of the DBNet loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbNetParams {
    pub prob_loss: ProbLoss,
    pub prob_input: ProbInput,
    pub alpha: f64,
    pub beta: f64,
    pub negative_ratio: f64,
    pub fallback_negative_num: usize,
    pub eps: f64,
    /// Targets given at image size are rescaled by this ratio and padded or cropped.
    pub downsample_ratio: Option<f64>,
}

impl Default for DbNetParams {
    /// The MMOCR 0.x `DBLoss` defaults.
    fn default() -> Self {
        Self {
            prob_loss: ProbLoss::Dice,
            prob_input: ProbInput::Probability,
            alpha: 1.0,
            beta: 1.0,
            negative_ratio: 3.0,
            fallback_negative_num: 0,
            eps: 1e-6,
            downsample_ratio: None,
        }
    }
}

impl DbNetPreset {
    /// The preset as a config table, before user keys are laid over it.
    pub fn config(self) -> DbNetConfig {
        match self {
            DbNetPreset::Dbnet => DbNetConfig {
                prob_loss: Some(ProbLoss::BalancedBce),
                alpha: Some(5.0),
                beta: Some(10.0),
                ..DbNetConfig::default()
            },
        }
    }
}

impl DbNetConfig {
    /// Applies the preset (if any), lays explicit keys over it and validates everything.
    pub fn resolve(&self) -> Result<DbNetParams> {
        let p = self.preset.map(DbNetPreset::config).unwrap_or_default();
        let d = DbNetParams::default();
        let downsample_ratio = self.downsample_ratio.or(p.downsample_ratio);
        if let Some(r) = downsample_ratio {
            positive("downsample_ratio", r)?;
        }
        let fallback = self.fallback_negative_num.or(p.fallback_negative_num).unwrap_or(0);
        Ok(DbNetParams {
            prob_loss: self.prob_loss.or(p.prob_loss).unwrap_or(d.prob_loss),
            prob_input: self.prob_input.or(p.prob_input).unwrap_or(d.prob_input),
            alpha: at_least("alpha", self.alpha.or(p.alpha).unwrap_or(d.alpha), 0.0)?,
            beta: at_least("beta", self.beta.or(p.beta).unwrap_or(d.beta), 0.0)?,
            negative_ratio: at_least(
                "negative_ratio",
                self.negative_ratio.or(p.negative_ratio).unwrap_or(d.negative_ratio),
                0.0,
            )?,
            fallback_negative_num: usize::try_from(fallback)
                .map_err(|_| key_err("fallback_negative_num", "does not fit in usize"))?,
            eps: positive("eps", self.eps.or(p.eps).unwrap_or(d.eps))?,
            downsample_ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LossConfig> {
        LossFile::from_toml(text).map(|f| f.loss)
    }

    #[test]
    fn explicit_keys_override_the_preset() {
        let cfg = parse(
            "[loss]\ntype = \"multilabel\"\npreset = \"db\"\nclass_freq = [10, 50, 90]\n\
             train_num = 100\n[loss.focal]\ngamma = 1.0\n",
        )
        .unwrap();
        let LossConfig::Multilabel(ml) = cfg else { panic!("expected multilabel") };
        let p = ml.resolve().unwrap();
        assert_eq!(p.focal, Some(Focal { gamma: 1.0, alpha: 0.5 }));
        assert_eq!(
            p.reweight.unwrap().kind,
            ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 }
        );
        assert_eq!(p.ntr.unwrap().lambda, 2.0);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("[loss]\ntype = \"multilabel\"\ngama = 2.0\n").unwrap_err();
        assert!(err.to_string().contains("gama"), "{err}");
        let err = parse("[loss]\ntype = \"dbnet\"\n[loss.focal]\ngamma = 2.0\n").unwrap_err();
        assert!(err.to_string().contains("focal"), "{err}");
    }

    #[test]
    fn ranges_are_checked_and_named() {
        let ml = |t: &str| match parse(t).unwrap() {
            LossConfig::Multilabel(m) => m.resolve(),
            LossConfig::Dbnet(_) => panic!("expected multilabel"),
        };
        let err = ml("[loss]\ntype=\"multilabel\"\n[loss.focal]\ngamma=-1.0\n").unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "focal.gamma"));
        let err = ml("[loss]\ntype=\"multilabel\"\nclass_freq=[1,2]\ntrain_num=10\n\
                      [loss.reweight]\nmode=\"class_balanced\"\nbeta=1.0\n")
        .unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "reweight.beta"));
        let err = ml("[loss]\ntype=\"multilabel\"\n[loss.ntr]\nlambda=0.0\n").unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "ntr.lambda"));
        let err = ml("[loss]\ntype=\"multilabel\"\npreset=\"db\"\n").unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "class_freq"));
    }

    /// The multi-label example of `../shared/spec/interfaces.md`, verbatim.
    const SPEC_EXAMPLE: &str = r#"
[loss]
type = "multilabel"            # multilabel | dbnet
preset = "db"                  # optional; explicit keys below override the preset's values
reduction = "mean"             # none | mean | sum
loss_weight = 1.0
class_freq = [10, 50, 90]      # needed by reweights and NTR
train_num = 100
pos_weight = [1.0, 1.0, 1.0]   # optional
check_finite = true

[loss.reweight]                # optional
mode = "rebalance"             # inverse | sqrt_inverse | class_balanced | rebalance
alpha = 0.1                    # rebalance
beta = 10.0                    # rebalance: slope; class_balanced: the CB beta, e.g. 0.9
mu = 0.9                       # rebalance
cb_mode = "by_class"           # class_balanced: by_class | average_n | average_w | min_n
norm = "none"                  # none | by_instance | by_batch

[loss.focal]                   # optional
gamma = 2.0
alpha = 0.5

[loss.ntr]                     # optional
kappa = 0.05
lambda = 2.0
negative_weight = "auto"       # auto | always | never
bias_over_lambda = false

[loss.asymmetric]              # optional, instead of focal
gamma_pos = 0.0
gamma_neg = 4.0
clip = 0.05
"#;

    #[test]
    fn the_interfaces_example_parses_and_asymmetric_replaces_focal() {
        let LossConfig::Multilabel(ml) = parse(SPEC_EXAMPLE).unwrap() else {
            panic!("expected multilabel")
        };
        let p = ml.resolve().unwrap();
        assert_eq!(p.focal, None);
        assert_eq!(p.asymmetric, Some(Asymmetric { gamma_pos: 0.0, gamma_neg: 4.0, clip: 0.05 }));
        assert_eq!(
            p.reweight.unwrap().kind,
            ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 }
        );
    }

    #[test]
    fn type_errors_name_the_key_and_its_table() {
        let err = parse("[loss]\ntype = \"dbnet\"\nfallback_negative_num = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("fallback_negative_num = 0.5"), "{err}");
        let err =
            parse("[loss]\ntype = \"multilabel\"\n[loss.focal]\ngamma = \"two\"\n").unwrap_err();
        assert!(err.to_string().contains("[loss.focal]"), "{err}");
        assert!(err.to_string().contains("gamma = \"two\""), "{err}");
        let err = parse("[loss]\ntype = \"resnet\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown loss type `resnet`"), "{err}");
        let err = parse("[loss]\npreset = \"db\"\n").unwrap_err();
        assert!(err.to_string().contains("`type`"), "{err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }

    #[test]
    fn dbnet_preset_and_defaults() {
        let LossConfig::Dbnet(d) = parse("[loss]\ntype=\"dbnet\"\npreset=\"dbnet\"\n").unwrap()
        else {
            panic!("expected dbnet")
        };
        let p = d.resolve().unwrap();
        assert_eq!((p.alpha, p.beta, p.prob_loss), (5.0, 10.0, ProbLoss::BalancedBce));
        let LossConfig::Dbnet(d) =
            parse("[loss]\ntype=\"dbnet\"\ndownsample_ratio=-0.5\n").unwrap()
        else {
            panic!("expected dbnet")
        };
        assert!(
            matches!(d.resolve(), Err(LossError::InvalidConfig { ref key, .. }) if key == "downsample_ratio")
        );
    }
}
