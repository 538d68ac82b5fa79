//! The DBNet loss: probability, binary and threshold terms on `[N, 3, H, W]` predictions.

use loss_core::error::unravel_index;
use loss_core::validate::{same_device, to_compute_type, to_type_of};
use loss_core::{
    Backend, DbNetConfig, DbNetParams, Loss, LossError, LossOutput, Result, ValueCheck,
};

use crate::fused::{self, Settings};
use crate::targets::rescale_to;
use crate::{
    check_range, BalancedBce, BalancedBceConfig, Dice, DiceConfig, MaskedL1, MaskedL1Config,
};
use crate::{ProbInput, ProbLoss};

/// The tensors of one call of [`DbLoss`].
#[derive(Debug)]
pub struct DbInput<'a, B> {
    /// `[N, 3, H, W]`: channel 0 the probability map P (probabilities, or logits with
    /// `prob_input = "logits"`), 1 the threshold map T, 2 the approximate binary map B.
    pub preds: &'a B,
    /// `[N, H, W]` shrunk text regions, binarised as `> 0`.
    pub gt_shrink: &'a B,
    /// `[N, H, W]` weights of `gt_shrink` (0 on ignored text; soft values allowed).
    pub gt_shrink_mask: &'a B,
    /// `[N, H, W]` target threshold map.
    pub gt_thr: &'a B,
    /// `[N, H, W]` weights of `gt_thr` (the dilated text borders).
    pub gt_thr_mask: &'a B,
}

// By hand: a derive would ask `B: Clone`, which libtorch tensors are not.
impl<B> Clone for DbInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for DbInput<'_, B> {}

/// The DBNet loss (Liao et al., "Real-time Scene Text Detection with Differentiable
/// Binarization", AAAI 2020, <https://arxiv.org/abs/1911.08947>), as MMOCR computes it.
///
/// ```text
/// g        = [gt_shrink > 0]
/// loss_prob = alpha · BalancedBce(P, g, gt_shrink_mask)      prob_loss = "balanced_bce"
///           = alpha · Dice(P, g, gt_shrink_mask)             prob_loss = "dice" (default)
/// loss_db   = Dice(B, g, gt_shrink_mask)
/// loss_thr  = beta · MaskedL1(T, gt_thr, gt_thr_mask)
/// loss      = loss_prob + loss_db + loss_thr
/// ```
///
/// With `prob_input = "logits"`, channel 0 holds logits: the balanced BCE takes them directly
/// (MMOCR 1.x) and Dice takes `σ(P)`. Defaults are MMOCR 0.x's (`alpha = 1`, `beta = 1`, Dice);
/// the preset `dbnet` is the paper's training setting (`alpha = 5`, `beta = 10`, balanced BCE).
/// With `downsample_ratio`, target maps given at image size are rescaled and padded or cropped
/// to `H × W` (see [`crate::targets`]); without it they must be `[N, H, W]` already.
///
/// # Fused and generic paths
/// When the backend lends the predictions' memory ([`Backend::fused_scalar`]: contiguous and on
/// the CPU, in f32 or f64 after the conversion to the compute type), the loss and its gradient
/// come from one fused kernel: two passes over the maps, hard-negative mining by a linear-time
/// selection, threads for large inputs, results independent of the thread count (see
/// `docs/dbnet.md`). Its gradient flows through [`LossOutput::loss`], the total; the three
/// `terms` are then **detached** values (0-d constants), so backward from a single term needs
/// the generic formulas, [`DbLoss::with_fused`]`(false)`. Elsewhere (CUDA, strided predictions,
/// target maps that require a gradient of their own) the generic formulas run, with every term attached to the graph. Both paths give the same
/// values and the same gradient of the total; where the mining cuts through equal losses, the
/// fused path gives the gradient to the first tied negatives in row-major order of `[N, H, W]`.
///
/// # Shapes
/// `preds` `[N, 3, H, W]`; each target `[N, H, W]`, or `[N, h, w]` at image size with
/// `downsample_ratio`. Every term and the loss are 0-d tensors. Half-precision predictions are
/// computed in f32, f64 in f64.
///
/// # Errors
/// - [`LossError::InvalidShape`]: `preds` not 4-D or without exactly 3 channels, a target not
///   3-D;
/// - [`LossError::ShapeMismatch`]: a target of another size than `[N, H, W]` without
///   `downsample_ratio` (naming both shapes), or of another batch size;
/// - [`LossError::DeviceMismatch`]: a target on another device than `preds`;
/// - [`LossError::UnsupportedDtype`]: integer predictions;
/// - [`LossError::InvalidValue`]: with balanced BCE on probabilities, the first element of
///   channel 0 outside `[0, 1]`, by its index in `preds`;
/// - [`LossError::InvalidConfig`] from [`DbLoss::new`]: a parameter out of range (a negative
///   `negative_ratio`, ...).
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend, Loss};
/// use loss_dbnet::{DbInput, DbLoss, DbNetConfig, DbNetPreset};
///
/// // Targets at image size 4 × 4, predictions at 2 × 2: downsample_ratio 0.5.
/// let loss = DbLoss::from_config(&DbNetConfig {
///     preset: Some(DbNetPreset::Dbnet),
///     downsample_ratio: Some(0.5),
///     ..DbNetConfig::default()
/// })?;
/// let preds = NdTensor::from_f64(
///     vec![0.8, 0.3, 0.6, 0.1, 0.5, 0.4, 0.5, 0.6, 0.9, 0.2, 0.7, 0.05],
///     &[1, 3, 2, 2],
/// )?;
/// let image = |v: [f64; 4]| -> Result<NdTensor, loss_core::LossError> {
///     let rows: Vec<f64> = v.iter().flat_map(|&x| [x, x]).collect();
///     let rows = [&rows[..4], &rows[..4], &rows[4..], &rows[4..]].concat();
///     NdTensor::from_f64(rows, &[1, 4, 4])
/// };
/// let out = loss.forward(DbInput {
///     preds: &preds,
///     gt_shrink: &image([1.0, 0.0, 1.0, 0.0])?,
///     gt_shrink_mask: &image([1.0; 4])?,
///     gt_thr: &image([0.3, 0.7, 0.3, 0.7])?,
///     gt_thr_mask: &image([1.0; 4])?,
/// })?;
/// assert!(out.term("loss_prob").is_some() && out.loss.to_f64()?.is_finite());
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbLoss {
    params: DbNetParams,
    bce: BalancedBce,
    dice: Dice,
    l1: MaskedL1,
    /// Whether the fused kernel is tried first.
    fused: bool,
    /// Most threads of the fused kernel; 0 for the machine's available parallelism.
    threads: usize,
}

impl DbLoss {
    /// The loss with validated parameters.
    ///
    /// # Errors
    /// [`LossError::InvalidConfig`] naming the key: `alpha`, `beta` or `negative_ratio` negative
    /// or not finite, `eps` not finite and > 0, `downsample_ratio` not finite and > 0.
    pub fn new(params: DbNetParams) -> Result<Self> {
        check_range("alpha", params.alpha, 0.0, false)?;
        check_range("beta", params.beta, 0.0, false)?;
        if let Some(r) = params.downsample_ratio {
            check_range("downsample_ratio", r, 0.0, true)?;
        }
        let bce = BalancedBceConfig {
            negative_ratio: params.negative_ratio,
            fallback_negative_num: params.fallback_negative_num,
            eps: params.eps,
            prob_input: params.prob_input,
        }
        .init()?;
        let dice = DiceConfig { eps: params.eps }.init()?;
        let l1 = MaskedL1Config { eps: params.eps }.init()?;
        Ok(Self { params, bce, dice, l1, fused: true, threads: 0 })
    }

    /// Whether to use the fused kernel when the backend supports it (the default), or always
    /// the generic formulas, which keep every term attached to the autograd graph and can be
    /// differentiated twice (the fused gradient has no second derivative with respect to
    /// `preds`; on libtorch, asking for one is an error).
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// The most worker threads the fused kernel uses: 0 (the default) for the machine's
    /// available parallelism. Smaller inputs use fewer, with at least 32 768 pixels per thread.
    /// Results do not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Whether the fused kernel is enabled (see [`DbLoss::with_fused`]).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// The thread setting of the fused kernel (see [`DbLoss::with_threads`]).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The loss of a `[loss]` table with `type = "dbnet"`: preset, explicit keys, validation.
    ///
    /// # Errors
    /// As [`DbNetConfig::resolve`] and [`DbLoss::new`].
    pub fn from_config(config: &DbNetConfig) -> Result<Self> {
        Self::new(config.resolve()?)
    }

    /// The validated parameters.
    pub fn params(&self) -> &DbNetParams {
        &self.params
    }

    /// One target map in `like`'s element type at the prediction's `[N, H, W]` (`expected`).
    fn target<B: Backend>(&self, what: &str, map: &B, like: &B, expected: &[usize]) -> Result<B> {
        let expected = expected.to_vec();
        let shape = map.shape();
        same_device(what, like, map)?;
        match self.params.downsample_ratio {
            None if shape != expected => Err(LossError::ShapeMismatch {
                what: format!(
                    "{what} (without downsample_ratio, targets must be [N, H, W] of preds)"
                ),
                expected,
                got: shape,
            }),
            None => to_type_of(map, like),
            Some(_) if shape.len() != 3 => Err(LossError::InvalidShape {
                what: what.into(),
                got: shape,
                reason: "expected a target map [N, h, w]".into(),
            }),
            Some(_) if shape[0] != expected[0] => Err(LossError::ShapeMismatch {
                what: format!("{what} (batch size)"),
                expected: vec![expected[0]],
                got: vec![shape[0]],
            }),
            Some(r) => rescale_to(&to_type_of(map, like)?, r, (expected[1], expected[2])),
        }
    }
}

/// The first probability outside `[0, 1]` in `prob` (`[N, H, W]`), by its index in `preds`.
fn check_probabilities<B: Backend>(prob: &B) -> Result<()> {
    let Some((flat, value)) =
        prob.first_violation(ValueCheck::OutsideRange { lo: 0.0, hi: 1.0 })?
    else {
        return Ok(());
    };
    let mut index = unravel_index(flat, &prob.shape());
    index.insert(1, 0);
    Err(LossError::InvalidValue {
        what: "preds".into(),
        index,
        value,
        reason: "channel 0 holds probabilities, which must lie in [0, 1] (use prob_input = \
                 \"logits\" for logits)"
            .into(),
    })
}

impl<B: Backend> Loss<B> for DbLoss {
    type Input<'a>
        = DbInput<'a, B>
    where
        B: 'a;

    fn forward(&self, input: DbInput<'_, B>) -> Result<LossOutput<B>> {
        let shape = input.preds.shape();
        if shape.len() != 4 || shape[1] != 3 {
            return Err(LossError::InvalidShape {
                what: "preds".into(),
                got: shape,
                reason: "expected [N, 3, H, W]: probability, threshold and binary maps".into(),
            });
        }
        let preds = to_compute_type("preds", input.preds)?;
        let expected = [shape[0], shape[2], shape[3]];
        let target = |what: &str, map: &B| self.target(what, map, &preds, &expected);
        let gt_shrink = target("gt_shrink", input.gt_shrink)?;
        let gt_shrink_mask = target("gt_shrink_mask", input.gt_shrink_mask)?;
        let gt_thr = target("gt_thr", input.gt_thr)?;
        let gt_thr_mask = target("gt_thr_mask", input.gt_thr_mask)?;

        if self.fused {
            let settings = Settings {
                prob_loss: self.params.prob_loss,
                prob_input: self.params.prob_input,
                alpha: self.params.alpha,
                beta: self.params.beta,
                eps: self.params.eps,
                bce: self.bce,
                threads: self.threads,
            };
            let targets = [&gt_shrink, &gt_shrink_mask, &gt_thr, &gt_thr_mask];
            if let Some(out) = fused::forward(&settings, &preds, targets)? {
                return Ok(out);
            }
        }

        let (prob, thr, binary) = (preds.select(1, 0)?, preds.select(1, 1)?, preds.select(1, 2)?);
        let gt_shrink = gt_shrink.gt_scalar(0.0)?;

        let prob_loss = match (self.params.prob_loss, self.params.prob_input) {
            (ProbLoss::BalancedBce, input_kind) => {
                if input_kind == ProbInput::Probability {
                    check_probabilities(&prob)?;
                }
                self.bce.compute(&prob, &gt_shrink, &gt_shrink_mask)?
            }
            (ProbLoss::Dice, ProbInput::Probability) => {
                self.dice.compute(&prob, &gt_shrink, &gt_shrink_mask)?
            }
            (ProbLoss::Dice, ProbInput::Logits) => {
                self.dice.compute(&prob.sigmoid()?, &gt_shrink, &gt_shrink_mask)?
            }
        };
        let loss_prob = prob_loss.mul_scalar(self.params.alpha)?;
        let loss_db = self.dice.compute(&binary, &gt_shrink, &gt_shrink_mask)?;
        let loss_thr =
            self.l1.compute(&thr, &gt_thr, &gt_thr_mask)?.mul_scalar(self.params.beta)?;

        // Summed in MMOCR's order: prob, db, thr.
        let loss = loss_prob.add(&loss_db)?.add(&loss_thr)?;
        Ok(LossOutput {
            loss,
            terms: vec![("loss_prob", loss_prob), ("loss_db", loss_db), ("loss_thr", loss_thr)],
        })
    }
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::DType;

    use super::*;

    fn full(v: f64, shape: &[usize]) -> NdTensor {
        NdTensor::from_f64(vec![v; shape.iter().product()], shape).unwrap()
    }

    fn run(loss: &DbLoss, preds: &NdTensor, target: &NdTensor) -> Result<LossOutput<NdTensor>> {
        loss.forward(DbInput {
            preds,
            gt_shrink: target,
            gt_shrink_mask: target,
            gt_thr: target,
            gt_thr_mask: target,
        })
    }

    #[test]
    fn half_precision_computes_in_f32() {
        let preds = NdTensor::new(vec![0.5; 12], &[1, 3, 2, 2], DType::F16).unwrap();
        let loss = DbLoss::new(DbNetParams::default()).unwrap();

        let out = run(&loss, &preds, &full(1.0, &[1, 2, 2])).unwrap();

        assert_eq!(out.loss.dtype(), DType::F32);
    }

    #[test]
    fn integer_preds_are_rejected() {
        let preds = NdTensor::new(vec![0.0; 12], &[1, 3, 2, 2], DType::Integer).unwrap();
        let loss = DbLoss::new(DbNetParams::default()).unwrap();

        let err = run(&loss, &preds, &full(1.0, &[1, 2, 2])).unwrap_err();

        assert!(matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "preds"));
    }

    #[test]
    fn a_target_of_another_batch_size_is_named() {
        let params = DbNetParams { downsample_ratio: Some(0.5), ..DbNetParams::default() };
        let loss = DbLoss::new(params).unwrap();

        let err = run(&loss, &full(0.5, &[2, 3, 2, 2]), &full(1.0, &[1, 4, 4])).unwrap_err();

        assert!(
            matches!(err, LossError::ShapeMismatch { ref what, .. } if what.contains("gt_shrink"))
        );
    }

    #[test]
    fn parameters_are_validated() {
        for (key, params) in [
            ("alpha", DbNetParams { alpha: -1.0, ..DbNetParams::default() }),
            ("beta", DbNetParams { beta: f64::INFINITY, ..DbNetParams::default() }),
            ("eps", DbNetParams { eps: 0.0, ..DbNetParams::default() }),
            (
                "downsample_ratio",
                DbNetParams { downsample_ratio: Some(0.0), ..DbNetParams::default() },
            ),
        ] {
            let err = DbLoss::new(params).unwrap_err();
            assert!(
                matches!(err, LossError::InvalidConfig { key: ref k, .. } if k == key),
                "{err}"
            );
        }
    }
}
