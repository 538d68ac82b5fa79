//! [`ResampleLoss`]: the whole multi-label family, its parts composed in the reference's order.

use loss_core::config::{NegativeWeight, ReweightKind};
use loss_core::validate;
use loss_core::{
    Backend, DType, Loss, LossError, LossOutput, MultiLabelConfig, MultiLabelParams, Result,
    ValueCheck,
};

use crate::{
    asymmetric_elements, bce_elements, focal_factor, ntr_bias, regularise_logits, reweight_matrix,
};

/// Finite and `≥ 0` (NaN fails it too).
const FINITE_NON_NEGATIVE: ValueCheck = ValueCheck::OutsideRange { lo: 0.0, hi: f64::MAX };

/// The tensors of one [`ResampleLoss`] call.
#[derive(Debug)]
pub struct MultiLabelInput<'a, B> {
    /// Logits `z`, `[N, C]`, any floating type (f64 computes in f64, f32/f16/bf16 in f32).
    pub logits: &'a B,
    /// Targets `y`, `[N, C]`, in `{0, 1}` (soft values in `[0, 1]` only for plain BCE); any
    /// element type, integers included.
    pub targets: &'a B,
    /// Optional element weights, `[N, C]`, finite and `≥ 0`, multiplied into `W`.
    pub weight: Option<&'a B>,
    /// Replaces `N · C` as the divisor of the `mean` reduction (ignored by `none` and `sum`).
    pub avg_factor: Option<f64>,
}

// By hand rather than derived: a bundle of references is `Copy` whatever `B` is.
impl<B> Clone for MultiLabelInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for MultiLabelInput<'_, B> {}

impl<'a, B> MultiLabelInput<'a, B> {
    /// Logits and targets, without element weights or `avg_factor`.
    pub fn new(logits: &'a B, targets: &'a B) -> Self {
        Self { logits, targets, weight: None, avg_factor: None }
    }

    /// Adds element weights.
    pub fn with_weight(mut self, weight: &'a B) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets the divisor of the `mean` reduction.
    pub fn with_avg_factor(mut self, avg_factor: f64) -> Self {
        self.avg_factor = Some(avg_factor);
        self
    }
}

/// The multi-label balancing loss of Huang et al. (EMNLP 2021): binary cross-entropy with
/// optional reweighting, negative-tolerant regularisation, focal or asymmetric focusing.
///
/// ```text
/// 1. W   = reweight(y) [then norm]                      (inverse, sqrt_inverse,
///                                                        class_balanced, rebalance; else 1)
/// 2. x'  = z + ν,  ν_c = −kappa · ln(N_train / n_c − 1)  (NTR; else x = z)
///    x   = x' where y = 1,  lambda · x' where y = 0
///    W   = W / lambda where y = 0                       (negative_weight: auto = only with a
///                                                        reweight, always, never)
///    W   = W · weight                                   (user element weights)
/// 3. ℓ   = y · sp(−x) · pw_c + (1 − y) · sp(x)
/// 4. L   = α_t · exp(−γ · sp(±x)) · W · ℓ               (focal: α_t = α on positives, 1 − α
///                                                        on negatives; else L = W · ℓ)
/// 5. or  L = W · ASL(x)                                 (asymmetric, instead of focal)
/// 6. out = reduce(loss_weight · L)                      (none, sum, mean or Σ / avg_factor)
/// ```
///
/// Each part is one function of this crate ([`reweight_matrix`], [`ntr_bias`],
/// [`regularise_logits`], [`bce_elements`], [`focal_factor`], [`asymmetric_elements`]); the
/// order of the steps is that of the Distribution-Balanced code the paper used
/// (Roche/BalancedLossNLP `util_loss.py`), the details those of `shared/spec/losses.md`
/// section 1. The paper's eight losses are presets of [`MultiLabelConfig`] (see
/// `docs/multilabel.md`).
///
/// Paper: Huang, Giledereli, Köksal, Özgür, Ozkirimli, "Balancing Methods for Multi-label Text
/// Classification with Long-Tailed Class Distribution", EMNLP 2021,
/// <https://aclanthology.org/2021.emnlp-main.643/>.
///
/// # Performance
/// Under `sum` and `mean`, on a backend that lends host memory (CPU, contiguous f32 or f64
/// logits; half precision after its conversion to f32), the whole loss runs as one fused,
/// multi-threaded pass over the data that computes the value and the gradient together, in the
/// data's precision with sums in f64; backward then only hands the saved gradient on. The
/// generic formulas above are the oracle it is tested against (relative 1e-9 in f64, 1e-5 in
/// f32) and run otherwise (`none`, CUDA, strided tensors), or always with
/// [`ResampleLoss::with_fused`]`(false)`. See `docs/performance.md`.
///
/// # Shapes
/// - `logits`, `targets`, `weight`: `[N, C]`, exactly the same shape (no broadcasting);
/// - `class_freq`, `pos_weight`: `C` entries;
/// - output: `[]` for `sum` and `mean`, `[N, C]` for `none`, in the compute type of the logits.
///
/// # Errors
/// [`ResampleLoss::new`]: see there. [`Loss::forward`]:
/// - [`LossError::InvalidShape`]: logits not 2-D, or `pos_weight` not of length `C`;
/// - [`LossError::ShapeMismatch`]: targets or weight of another shape than the logits;
/// - [`LossError::DeviceMismatch`]: targets or weight on another device;
/// - [`LossError::UnsupportedDtype`]: integer logits;
/// - [`LossError::ClassCountMismatch`]: `class_freq` not of length `C`;
/// - [`LossError::InvalidValue`], naming index and value: a target outside `{0, 1}` (outside
///   `[0, 1]` for plain BCE), a non-finite logit (with `check_finite`), a negative or
///   non-finite weight;
/// - [`LossError::EmptyMean`]: `mean` over an empty batch without `avg_factor` (`sum` gives 0);
/// - [`LossError::InvalidConfig`]: an `avg_factor` that is not finite and `> 0`.
///
/// # Examples
/// ```
/// use loss_core::ndarray_backend::NdTensor;
/// use loss_core::{config::LossFile, Backend, Loss, LossConfig};
/// use loss_multilabel::{MultiLabelInput, ResampleLoss};
///
/// let file = LossFile::from_toml(
///     r#"
///     [loss]
///     type = "multilabel"
///     preset = "db"
///     class_freq = [10, 50, 90]
///     train_num = 100
///     "#,
/// )?;
/// let LossConfig::Multilabel(config) = file.loss else { unreachable!() };
/// let loss = ResampleLoss::from_config(&config)?;
///
/// let logits = NdTensor::from_f64(vec![2.0, -1.0, 0.5, -3.0, 0.0, 1.5], &[2, 3])?;
/// let targets = NdTensor::from_f64(vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0], &[2, 3])?;
/// let out = loss.forward(MultiLabelInput::new(&logits, &targets))?;
///
/// let value = out.loss.to_f64()?;
/// assert!(value > 0.0 && value.is_finite());
/// # Ok::<(), loss_core::LossError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ResampleLoss {
    params: MultiLabelParams,
    bias: Option<Vec<f64>>,
    fused: bool,
}

impl ResampleLoss {
    /// A loss from validated-once parameters.
    ///
    /// # Errors
    /// - [`LossError::InvalidConfig`] naming the key: a parameter out of range (`gamma < 0`,
    ///   `alpha` outside `[0, 1]`, class-balanced `beta` outside `[0, 1)`, `lambda ≤ 0`, a
    ///   negative `loss_weight` or `pos_weight`, anything non-finite), focal and asymmetric
    ///   together, or `class_freq` missing where a reweight or NTR needs it;
    /// - [`LossError::InvalidClassFreq`] naming the class: `n_c ≤ 0` where a reweight or NTR
    ///   needs the counts, `n_c ≥ N_train` with NTR.
    pub fn new(params: MultiLabelParams) -> Result<Self> {
        check_params(&params)?;
        let bias = match (&params.ntr, &params.stats) {
            (Some(ntr), Some(stats)) => Some(ntr_bias(stats, ntr)?),
            _ => None,
        };
        Ok(Self { params, bias, fused: true })
    }

    /// A loss from a `[loss]` table: the preset applied, explicit keys laid over it, then
    /// [`ResampleLoss::new`].
    ///
    /// # Errors
    /// Those of [`MultiLabelConfig::resolve`] and [`ResampleLoss::new`].
    pub fn from_config(config: &MultiLabelConfig) -> Result<Self> {
        Self::new(config.resolve()?)
    }

    /// Whether [`Loss::forward`] may take the fused path (on by default).
    ///
    /// With `sum` or `mean` reduction, on a backend that lends host memory for the logits
    /// ([`Backend::fused_scalar`]: contiguous f32 or f64 on the CPU), the loss and its gradient
    /// are computed together in one multi-threaded pass over the data, and backward hands the
    /// saved gradient on. Otherwise (also when the targets or weights require a gradient: the
    /// kernel gives one to the logits alone), or with `false`, the generic formulas run,
    /// operation by operation. Both give the same value and gradient to within rounding (relative 1e-9 in
    /// f64); the fused path evaluates softplus exactly where libtorch's returns `x` above 20,
    /// a difference of at most 2.1e-9. Turn it off for comparisons and benchmarks, and to
    /// differentiate the gradient itself (the fused gradient has no second derivative with
    /// respect to the logits; on libtorch, asking for one is an error).
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// Whether the fused path is enabled (see [`ResampleLoss::with_fused`]).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// The parameters this loss was built from.
    pub fn params(&self) -> &MultiLabelParams {
        &self.params
    }

    /// The NTR logit bias `ν` (f64, one entry per class), when NTR is on.
    pub fn ntr_bias(&self) -> Option<&[f64]> {
        self.bias.as_deref()
    }

    /// Whether some part needs targets that are exactly 0 or 1.
    fn needs_binary_targets(&self) -> bool {
        let p = &self.params;
        p.reweight.is_some() || p.ntr.is_some() || p.focal.is_some() || p.asymmetric.is_some()
    }

    /// Checks one call's tensors and converts them to the compute type.
    fn checked<B: Backend>(&self, input: &MultiLabelInput<'_, B>) -> Result<(B, B, Option<B>)> {
        let (z, _) = self.check_layout(input)?;
        self.check_values(input)?;
        let y = validate::to_type_of(input.targets, &z)?;
        let weight = input.weight.map(|w| validate::to_type_of(w, &z)).transpose()?;
        Ok((z, y, weight))
    }

    /// The checks that do not read values (shapes, devices, element types, class counts);
    /// returns the logits in the compute type and the number of classes.
    pub(crate) fn check_layout<B: Backend>(
        &self,
        input: &MultiLabelInput<'_, B>,
    ) -> Result<(B, usize)> {
        let (logits, targets) = (input.logits, input.targets);
        let shape = logits.shape();
        let [_, classes] = shape[..] else {
            return Err(LossError::InvalidShape {
                what: "logits".into(),
                got: shape,
                reason: "expected [N, C], one row of class logits per sample".into(),
            });
        };
        validate::same_shape("targets (against logits)", logits, targets)?;
        validate::same_device("targets", logits, targets)?;
        if let Some(weight) = input.weight {
            validate::same_shape("weight (against logits)", logits, weight)?;
            validate::same_device("weight", logits, weight)?;
        }
        let z = validate::to_compute_type("logits", logits)?;

        if let Some(stats) = &self.params.stats {
            if stats.num_classes() != classes {
                return Err(LossError::ClassCountMismatch {
                    expected: classes,
                    got: stats.num_classes(),
                });
            }
        }
        if let Some(pw) = &self.params.pos_weight {
            if pw.len() != classes {
                return Err(LossError::InvalidShape {
                    what: "pos_weight".into(),
                    got: vec![pw.len()],
                    reason: format!("expected {classes} entries, one per class of the logits"),
                });
            }
        }
        Ok((z, classes))
    }

    /// The checks of every value, in a fixed order: targets, logits, weights; the error names
    /// the first offending element.
    pub(crate) fn check_values<B: Backend>(&self, input: &MultiLabelInput<'_, B>) -> Result<()> {
        let (logits, targets) = (input.logits, input.targets);
        if self.needs_binary_targets() {
            let reason = "targets must be exactly 0 or 1 with a reweight, NTR, focal or asymmetric";
            validate::values("targets", targets, ValueCheck::NotBinary, reason)?;
        } else {
            let range = ValueCheck::OutsideRange { lo: 0.0, hi: 1.0 };
            validate::values("targets", targets, range, "targets must lie in [0, 1]")?;
        }
        if self.params.check_finite {
            let reason = "logits must be finite (check_finite = true)";
            validate::values("logits", logits, ValueCheck::NonFinite, reason)?;
        }
        if let Some(weight) = input.weight {
            let reason = "element weights must be finite and >= 0";
            validate::values("weight", weight, FINITE_NON_NEGATIVE, reason)?;
        }
        Ok(())
    }

    /// `W` of steps 1 and 2 in f64, cast to `dtype`; `None` when every weight is 1.
    fn weight_matrix<B: Backend>(&self, y: &B, dtype: DType) -> Result<Option<B>> {
        let p = &self.params;
        let mut w = match (&p.reweight, &p.stats) {
            (Some(reweight), Some(stats)) => Some(reweight_matrix(reweight, stats, y)?),
            _ => None,
        };
        if let Some(ntr) = &p.ntr {
            let divide = match ntr.negative_weight {
                NegativeWeight::Auto => p.reweight.is_some(),
                NegativeWeight::Always => true,
                NegativeWeight::Never => false,
            };
            if divide {
                let y64 = y.to_dtype(DType::F64)?;
                let base = match w {
                    Some(w) => w,
                    None => y64.full_like(1.0)?,
                };
                let one = y64.scalar_like(1.0)?;
                w = Some(base.div(&y64.select_where(&one, &y64.scalar_like(ntr.lambda)?)?)?);
            }
        }
        w.map(|w| w.to_dtype(dtype)).transpose()
    }

    /// The weighted element loss `loss_weight · L`, `[N, C]`, for a non-empty batch.
    fn elements<B: Backend>(&self, z: &B, y: &B, user_weight: Option<&B>) -> Result<B> {
        let p = &self.params;
        let classes = z.shape()[1];
        let row = |values: &[f64]| z.from_values_like(values, &[1, classes]);

        let weight = self.weight_matrix(y, z.dtype())?;
        let weight = match (weight, user_weight) {
            (Some(w), Some(u)) => Some(w.mul(u)?),
            (None, Some(u)) => Some(u.shallow_clone()),
            (w, None) => w,
        };

        let x = match (&p.ntr, &self.bias) {
            (Some(ntr), Some(bias)) => regularise_logits(z, y, &row(bias)?, ntr.lambda)?,
            _ => z.shallow_clone(),
        };

        let pos_weight = p.pos_weight.as_deref().map(row).transpose()?;
        let mut elements = match &p.asymmetric {
            Some(asl) => asymmetric_elements(&x, y, asl, pos_weight.as_ref())?,
            None => bce_elements(&x, y, pos_weight.as_ref())?,
        };
        if let Some(focal) = &p.focal {
            elements = elements.mul(&focal_factor(&x, y, focal)?)?;
        }

        if let Some(w) = weight {
            elements = elements.mul(&w)?;
        }
        if p.loss_weight != 1.0 {
            elements = elements.mul_scalar(p.loss_weight)?;
        }
        Ok(elements)
    }
}

impl<B: Backend> Loss<B> for ResampleLoss {
    type Input<'a>
        = MultiLabelInput<'a, B>
    where
        B: 'a;

    fn forward(&self, input: MultiLabelInput<'_, B>) -> Result<LossOutput<B>> {
        if self.fused {
            if let Some(loss) = crate::fused::forward(self, &input)? {
                return Ok(LossOutput::single(loss));
            }
        }

        let (z, y, weight) = self.checked(&input)?;

        // An empty batch has nothing to weight (and no maximum to normalise by): its element
        // loss is the empty tensor, still attached to the logits' graph.
        let elements = if z.numel() == 0 {
            z.mul_scalar(0.0)?
        } else {
            self.elements(&z, &y, weight.as_ref())?
        };

        let loss = self.params.reduction.apply(&elements, input.avg_factor)?;
        Ok(LossOutput::single(loss))
    }
}

fn config_error(key: &str, reason: String) -> LossError {
    LossError::InvalidConfig { key: key.into(), reason }
}

fn finite(key: &str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(config_error(key, format!("must be finite, got {v}")));
    }
    Ok(())
}

fn non_negative(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(config_error(key, format!("must be finite and >= 0, got {v}")));
    }
    Ok(())
}

fn in_unit(key: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(config_error(key, format!("must be in [0, 1], got {v}")));
    }
    Ok(())
}

/// Every range of `shared/spec/losses.md` section 1, checked once (the fields of
/// [`MultiLabelParams`] are public, so they may not have come through
/// [`MultiLabelConfig::resolve`]).
fn check_params(p: &MultiLabelParams) -> Result<()> {
    non_negative("loss_weight", p.loss_weight)?;
    for (i, &w) in p.pos_weight.iter().flatten().enumerate() {
        non_negative(&format!("pos_weight[{i}]"), w)?;
    }
    if let Some(focal) = &p.focal {
        non_negative("focal.gamma", focal.gamma)?;
        in_unit("focal.alpha", focal.alpha)?;
    }
    if let Some(asl) = &p.asymmetric {
        if p.focal.is_some() {
            let reason = "is an alternative to focal: use one of the two".to_string();
            return Err(config_error("asymmetric", reason));
        }
        non_negative("asymmetric.gamma_pos", asl.gamma_pos)?;
        non_negative("asymmetric.gamma_neg", asl.gamma_neg)?;
        in_unit("asymmetric.clip", asl.clip)?;
    }
    if let Some(ntr) = &p.ntr {
        finite("ntr.kappa", ntr.kappa)?;
        if !(ntr.lambda.is_finite() && ntr.lambda > 0.0) {
            return Err(config_error(
                "ntr.lambda",
                format!("must be finite and > 0, got {}", ntr.lambda),
            ));
        }
    }
    if let Some(reweight) = &p.reweight {
        match reweight.kind {
            ReweightKind::ClassBalanced { beta, .. } if !(0.0..1.0).contains(&beta) => {
                return Err(config_error(
                    "reweight.beta",
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
            ReweightKind::Rebalance { alpha, beta, mu } => {
                non_negative("reweight.alpha", alpha)?;
                finite("reweight.beta", beta)?;
                finite("reweight.mu", mu)?;
            }
            _ => {}
        }
    }

    if p.reweight.is_some() || p.ntr.is_some() {
        let part = if p.reweight.is_some() { "reweight" } else { "ntr" };
        let stats = p.stats.as_ref().ok_or_else(|| {
            config_error("class_freq", format!("is required by [loss.{part}] (with train_num)"))
        })?;
        stats.check_usable(stats.num_classes(), p.ntr.is_some())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use loss_core::config::{Asymmetric, Focal, Ntr, Reweight, WeightNorm};
    use loss_core::ndarray_backend::NdTensor;
    use loss_core::{ClassStats, Reduction};

    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    fn ntr() -> Ntr {
        Ntr {
            kappa: 0.05,
            lambda: 2.0,
            negative_weight: NegativeWeight::Auto,
            bias_over_lambda: false,
        }
    }

    #[test]
    fn plain_bce_is_the_mean_of_the_elements() {
        let loss = ResampleLoss::new(MultiLabelParams::default()).unwrap();
        let z = t(&[0.0, 0.0], &[1, 2]);
        let y = t(&[1.0, 0.0], &[1, 2]);

        let out = loss.forward(MultiLabelInput::new(&z, &y)).unwrap();

        assert!((out.loss.to_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-15);
        assert!(out.terms.is_empty());
    }

    #[test]
    fn focal_and_asymmetric_together_are_rejected() {
        let params = MultiLabelParams {
            focal: Some(Focal { gamma: 2.0, alpha: 0.5 }),
            asymmetric: Some(Asymmetric { gamma_pos: 0.0, gamma_neg: 4.0, clip: 0.05 }),
            ..MultiLabelParams::default()
        };

        let err = ResampleLoss::new(params).unwrap_err();

        assert!(matches!(err, LossError::InvalidConfig { ref key, .. } if key == "asymmetric"));
    }

    #[test]
    fn out_of_range_parameters_name_their_key() {
        let with = |p: MultiLabelParams| match ResampleLoss::new(p) {
            Err(LossError::InvalidConfig { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        };
        let base = MultiLabelParams::default;

        let gamma =
            with(MultiLabelParams { focal: Some(Focal { gamma: -1.0, alpha: 0.5 }), ..base() });
        let lambda = with(MultiLabelParams { ntr: Some(Ntr { lambda: 0.0, ..ntr() }), ..base() });
        let pw = with(MultiLabelParams { pos_weight: Some(vec![1.0, -2.0]), ..base() });
        let missing = with(MultiLabelParams { ntr: Some(ntr()), ..base() });
        let cb = with(MultiLabelParams {
            reweight: Some(Reweight {
                kind: ReweightKind::ClassBalanced { beta: 1.0, mode: Default::default() },
                norm: WeightNorm::None,
            }),
            stats: Some(ClassStats::new(vec![1.0], 10.0).unwrap()),
            ..base()
        });

        assert_eq!(
            [gamma, lambda, pw, missing, cb],
            ["focal.gamma", "ntr.lambda", "pos_weight[1]", "class_freq", "reweight.beta"]
        );
    }

    #[test]
    fn half_precision_computes_in_f32() {
        let loss = ResampleLoss::new(MultiLabelParams::default()).unwrap();
        let z = NdTensor::new(vec![0.5, -0.5], &[1, 2], DType::F16).unwrap();
        let y = t(&[1.0, 0.0], &[1, 2]);

        let out = loss.forward(MultiLabelInput::new(&z, &y)).unwrap();

        assert_eq!(out.loss.dtype(), DType::F32);
    }

    #[test]
    fn none_keeps_the_shape_and_sum_adds_it_up() {
        let params = |reduction| MultiLabelParams {
            reduction,
            stats: Some(ClassStats::new(vec![10.0, 50.0, 90.0], 100.0).unwrap()),
            ntr: Some(ntr()),
            ..MultiLabelParams::default()
        };
        let z = t(&[1.0, -2.0, 0.5, 3.0, 0.0, -1.0], &[2, 3]);
        let y = t(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], &[2, 3]);
        let input = || MultiLabelInput::new(&z, &y);

        let none = ResampleLoss::new(params(Reduction::None)).unwrap().forward(input()).unwrap();
        let sum = ResampleLoss::new(params(Reduction::Sum)).unwrap().forward(input()).unwrap();

        assert_eq!(none.loss.shape(), vec![2, 3]);
        let total: f64 = none.loss.to_vec_f64().unwrap().iter().sum();
        assert!((total - sum.loss.to_f64().unwrap()).abs() < 1e-14);
    }
}
