//! Binary cross-entropy balanced by online hard-negative mining, on probabilities or logits.

use loss_core::validate::values;
use loss_core::{Backend, Loss, LossOutput, Result, ValueCheck};

use crate::{check_range, prepare, MaskedInput, ProbInput};

/// Smallest value `ln` is taken of: `ln(1e-44) ≈ −101.3` lies below the −100 clamp, so the clamp
/// decides the value exactly as in PyTorch, while a probability of exactly 0 or 1 never reaches
/// `ln(0)` (whose gradient, even when masked away, would be `0 / 0`). 1e-44 is still a (subnormal)
/// f32 value.
const LN_FLOOR: f64 = 1e-44;

/// Element-wise BCE of probabilities `p` against targets `y`, as PyTorch's
/// `binary_cross_entropy`: each logarithm is clamped at −100, so the loss stays finite (at most
/// 100) for `p` of exactly 0 or 1.
///
/// ```text
/// ℓ = −[ y · max(ln p, −100) + (1 − y) · max(ln(1 − p), −100) ]
/// ```
///
/// The gradient is that of the clamped logarithms: `(p − y) / (p (1 − p))` inside, 0 where a
/// logarithm is clamped (PyTorch instead floors the denominator at 1e-12 there).
///
/// # Shapes
/// `p` and `y` broadcast; the result has their common shape.
///
/// # Errors
/// Backend failures only: the range of `p` is not checked here ([`BalancedBce`] checks it).
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend};
///
/// let p = NdTensor::from_f64(vec![0.9, 0.0], &[2])?;
/// let y = NdTensor::from_f64(vec![1.0, 1.0], &[2])?;
/// let l = loss_dbnet::bce_with_probabilities(&p, &y)?.to_vec_f64()?;
/// // torch.nn.functional.binary_cross_entropy(torch.tensor([0.9, 0.0]), torch.ones(2),
/// //     reduction="none") -> tensor([0.1054, 100.0000])
/// assert!((l[0] - 0.1053605156578263).abs() < 1e-15);
/// assert_eq!(l[1], 100.0);
/// # Ok::<(), loss_core::LossError>(())
/// ```
pub fn bce_with_probabilities<B: Backend>(p: &B, y: &B) -> Result<B> {
    let clamped_ln =
        |x: &B| -> Result<B> { x.clamp(Some(LN_FLOOR), None)?.ln()?.clamp(Some(-100.0), None) };
    let ln_p = clamped_ln(p)?;
    let ln_q = clamped_ln(&p.neg()?.add_scalar(1.0)?)?;
    let not_y = y.neg()?.add_scalar(1.0)?;
    y.mul(&ln_p)?.add(&not_y.mul(&ln_q)?)?.neg()
}

/// Element-wise BCE of logits `z` against targets `y`, as PyTorch's
/// `binary_cross_entropy_with_logits`, in the overflow-free form
///
/// ```text
/// ℓ = y · sp(−z) + (1 − y) · sp(z),    sp(x) = ln(1 + eˣ) = max(x, 0) + ln(1 + e^{−|x|})
/// ```
///
/// Both terms are non-negative, so nothing cancels and the loss is finite for every finite `z`
/// (a logit of 12 with target 0 gives 12.000006 even from half-precision inputs, where
/// `σ(12)` rounds to 1 and the probability path saturates at 100). The gradient is `σ(z) − y`.
///
/// # Shapes
/// `z` and `y` broadcast; the result has their common shape.
///
/// # Errors
/// Backend failures only.
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend};
///
/// let z = NdTensor::from_f64(vec![12.0, -800.0], &[2])?;
/// let y = NdTensor::from_f64(vec![0.0, 1.0], &[2])?;
/// let l = loss_dbnet::bce_with_logits(&z, &y)?.to_vec_f64()?;
/// // torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([12.0, -800.0],
/// //     dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), reduction="none")
/// // -> tensor([12.000006144193, 800.0])
/// assert!((l[0] - 12.000006144193478).abs() < 1e-12);
/// assert_eq!(l[1], 800.0);
/// # Ok::<(), loss_core::LossError>(())
/// ```
pub fn bce_with_logits<B: Backend>(z: &B, y: &B) -> Result<B> {
    let not_y = y.neg()?.add_scalar(1.0)?;
    y.mul(&z.neg()?.softplus()?)?.add(&not_y.mul(&z.softplus()?)?)
}

/// Settings of [`BalancedBce`]; [`BalancedBceConfig::init`] validates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancedBceConfig {
    /// At most this many negatives per positive are kept (default 3).
    pub negative_ratio: f64,
    /// Negatives kept when the pool holds no positive (default 0: such a batch gives 0).
    pub fallback_negative_num: usize,
    /// Added to the denominator (default 1e-6).
    pub eps: f64,
    /// Whether predictions are probabilities (default) or logits.
    pub prob_input: ProbInput,
}

impl Default for BalancedBceConfig {
    fn default() -> Self {
        Self {
            negative_ratio: 3.0,
            fallback_negative_num: 0,
            eps: 1e-6,
            prob_input: ProbInput::Probability,
        }
    }
}

impl BalancedBceConfig {
    /// The defaults: ratio 3, no fallback negatives, eps 1e-6, probabilities.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `negative_ratio`.
    pub fn with_negative_ratio(mut self, negative_ratio: f64) -> Self {
        self.negative_ratio = negative_ratio;
        self
    }

    /// Sets `fallback_negative_num`.
    pub fn with_fallback_negative_num(mut self, fallback_negative_num: usize) -> Self {
        self.fallback_negative_num = fallback_negative_num;
        self
    }

    /// Sets `eps`.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets `prob_input`.
    pub fn with_prob_input(mut self, prob_input: ProbInput) -> Self {
        self.prob_input = prob_input;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// [`loss_core::LossError::InvalidConfig`] naming `negative_ratio` (negative or not finite)
    /// or `eps` (not finite and > 0).
    pub fn init(&self) -> Result<BalancedBce> {
        check_range("negative_ratio", self.negative_ratio, 0.0, false)?;
        check_range("eps", self.eps, 0.0, true)?;
        Ok(BalancedBce { config: *self })
    }
}

/// Binary cross-entropy with online hard-negative mining (DBNet's probability-map loss).
///
/// The whole batch is one pool: all positives count, and of the negatives only the `k` with the
/// largest loss.
///
/// ```text
/// pos = g · m,  neg = (1 − g) · m,  n⁺ = ⌊Σ pos⌋
/// k   = min(⌊Σ neg⌋, ⌊n⁺ · negative_ratio⌋)       if n⁺ > 0
///     = min(⌊Σ neg⌋, fallback_negative_num)        if n⁺ = 0
/// L   = (Σ ℓ · pos + sum of the k largest ℓ · neg) / (n⁺ + k + eps)
/// ```
///
/// with `ℓ` = [`bce_with_probabilities`] or, for logits, [`bce_with_logits`]. When nothing is
/// selected (`n⁺ + k = 0`, e.g. a batch without text and no fallback) the loss is 0 with zero
/// gradient. Only the sum of the `k` largest is needed, so the mining is a selection
/// ([`Backend::topk_sum`]), not a sort. Ties are exact in value: any choice among equal losses
/// gives the same sum.
///
/// Paper: Liao et al., AAAI 2020, <https://arxiv.org/abs/1911.08947> (section 3.5); the mining
/// follows MMOCR's `MaskedBalancedBCE(WithLogits)Loss`.
///
/// # Shapes
/// `pred`, `target`, `mask`: one shape, any; the loss is a 0-d tensor.
///
/// # Errors
/// - [`loss_core::LossError::ShapeMismatch`] / [`loss_core::LossError::DeviceMismatch`] when
///   `target` or `mask` differ from `pred` in shape or device;
/// - [`loss_core::LossError::UnsupportedDtype`] for integer predictions;
/// - [`loss_core::LossError::InvalidValue`] naming the first index of a probability (with
///   [`ProbInput::Probability`]) or a target outside `[0, 1]`.
///
/// ```
/// use loss_core::{ndarray_backend::NdTensor, Backend, Loss};
/// use loss_dbnet::{BalancedBceConfig, MaskedInput};
///
/// let pred = NdTensor::from_f64(vec![0.9, 0.6, 0.2, 0.1, 0.8], &[5])?;
/// let target = NdTensor::from_f64(vec![1.0, 0.0, 0.0, 0.0, 0.0], &[5])?;
/// let mask = NdTensor::from_f64(vec![1.0; 5], &[5])?;
///
/// let bce = BalancedBceConfig::new().with_negative_ratio(3.0).init()?;
/// let out = bce.forward(MaskedInput { pred: &pred, target: &target, mask: &mask })?;
/// // One positive, so the three hardest of the four negatives: see the edge-case tests.
/// assert!((out.loss.to_f64()? - 0.7135580).abs() < 1e-7);
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancedBce {
    config: BalancedBceConfig,
}

impl BalancedBce {
    /// The validated settings.
    pub fn config(&self) -> &BalancedBceConfig {
        &self.config
    }

    /// The number of negatives mined from a pool with positive mass `pos_sum` and negative mass
    /// `neg_sum`, out of `numel` elements; also returns `n⁺`.
    pub fn counts(&self, pos_sum: f64, neg_sum: f64, numel: usize) -> (usize, usize) {
        let n_pos = floor_count(pos_sum);
        let available = floor_count(neg_sum);
        let wanted = if n_pos == 0 {
            self.config.fallback_negative_num
        } else {
            floor_count(n_pos as f64 * self.config.negative_ratio)
        };
        // A mask above 1 could ask for more than the pool holds (PyTorch's topk would fail).
        (n_pos, available.min(wanted).min(numel))
    }

    /// The loss on inputs already in the compute type, with probabilities and targets checked.
    pub(crate) fn compute<B: Backend>(&self, pred: &B, target: &B, mask: &B) -> Result<B> {
        let pos = target.mul(mask)?;
        let neg = target.neg()?.add_scalar(1.0)?.mul(mask)?;
        let (n_pos, k) =
            self.counts(pos.sum_all()?.to_f64()?, neg.sum_all()?.to_f64()?, pred.numel());

        let elem = match self.config.prob_input {
            ProbInput::Probability => bce_with_probabilities(pred, target)?,
            ProbInput::Logits => bce_with_logits(pred, target)?,
        };
        let pos_loss = elem.mul(&pos)?.sum_all()?;
        if n_pos + k == 0 {
            // Nothing selected: 0, still attached to the graph so that backward gives zeros.
            return pos_loss.mul_scalar(0.0);
        }

        let neg_loss = elem.mul(&neg)?.topk_sum(k)?;
        let denom = n_pos as f64 + k as f64 + self.config.eps;
        pos_loss.add(&neg_loss)?.div(&pos_loss.scalar_like(denom)?)
    }
}

/// `⌊x⌋` as a count; negative, NaN or infinite masses count as 0.
fn floor_count(x: f64) -> usize {
    if x.is_finite() && x >= 1.0 {
        x.floor() as usize
    } else {
        0
    }
}

impl<B: Backend> Loss<B> for BalancedBce {
    type Input<'a>
        = MaskedInput<'a, B>
    where
        B: 'a;

    fn forward(&self, input: MaskedInput<'_, B>) -> Result<LossOutput<B>> {
        let p = prepare(&input)?;
        let unit = ValueCheck::OutsideRange { lo: 0.0, hi: 1.0 };
        if self.config.prob_input == ProbInput::Probability {
            values("pred", &p.pred, unit, "probabilities must lie in [0, 1]")?;
        }
        values("target", &p.target, unit, "targets must lie in [0, 1]")?;

        self.compute(&p.pred, &p.target, &p.mask).map(LossOutput::single)
    }
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::LossError;

    use super::*;

    fn t(v: &[f64]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), &[v.len()]).unwrap()
    }

    fn run(bce: &BalancedBce, p: &[f64], g: &[f64], m: &[f64]) -> Result<f64> {
        let (p, g, m) = (t(p), t(g), t(m));
        bce.forward(MaskedInput { pred: &p, target: &g, mask: &m })?.loss.to_f64()
    }

    #[test]
    fn counts_follow_the_spec() {
        let bce = BalancedBceConfig::new().with_fallback_negative_num(4).init().unwrap();

        assert_eq!(bce.counts(2.0, 10.0, 12), (2, 6));
        assert_eq!(bce.counts(2.0, 5.9, 12), (2, 5));
        assert_eq!(bce.counts(0.0, 10.0, 10), (0, 4));
        assert_eq!(bce.counts(0.7, 2.5, 10), (0, 2));
        assert_eq!(bce.counts(3.0, 40.0, 20), (3, 9));
        assert_eq!(bce.counts(f64::NAN, 3.0, 3), (0, 3));

        let ratio = BalancedBceConfig::new().with_negative_ratio(1.5).init().unwrap();
        assert_eq!(ratio.counts(3.0, 100.0, 200), (3, 4));
    }

    #[test]
    fn positives_without_negatives_give_the_mean_positive_loss() {
        let bce = BalancedBceConfig::new().init().unwrap();

        let got = run(&bce, &[0.5, 0.25], &[1.0, 1.0], &[1.0, 1.0]).unwrap();

        // (ln 2 + ln 4) / (2 + 1e-6)
        let want = (2f64.ln() + 4f64.ln()) / (2.0 + 1e-6);
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }

    #[test]
    fn targets_outside_the_unit_interval_are_named() {
        let bce = BalancedBceConfig::new().init().unwrap();

        let err = run(&bce, &[0.5, 0.5], &[1.0, 1.5], &[1.0, 1.0]).unwrap_err();

        assert!(matches!(err, LossError::InvalidValue { ref what, ref index, value, .. }
            if what == "target" && index == &[1] && value == 1.5));
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let err = BalancedBceConfig::new().with_negative_ratio(-1.0).init().unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "negative_ratio"));
        let err = BalancedBceConfig::new().with_eps(0.0).init().unwrap_err();
        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "eps"));
    }
}
