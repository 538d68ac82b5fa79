//! The fused kernel of [`ResampleLoss`]: value and gradient of a `sum` or `mean` in one pass over
//! contiguous host memory, for every part of the family.
//!
//! In terms of the signed logit `u` (so that the element loss is a softplus of it), every part
//! composes into one formula per element:
//!
//! ```text
//! x' = z + ν                          (NTR; ν = 0 without it)
//! u  = −x'       where y = 1,   s = −1
//! u  = λ · x'    where y = 0,   s = λ (λ = 1 without NTR)
//! F  = W · m(u) · sp(u)                                      element loss
//! ∂F/∂z = W · m(u) · (σ(u) + γ_t · σ(−u) · sp(u)) · s         its derivative
//!
//! W    = row weight · class weight · α_t · (pw_c where y = 1) · (1/λ where y = 0 and NTR
//!        divides) · user weight
//! m(u) = σ(u)^γ_t = exp(−γ_t · sp(−u))                       focal (γ_t = γ) or ASL with
//!                                                            clip 0 (γ_t = γ+ or γ−); m = 1
//!                                                            without focusing
//! ```
//!
//! Soft targets (plain BCE only) use `F = y · pw_c · sp(−z) + (1 − y) · sp(z)` instead, and ASL
//! with a clip keeps its own negative branch (see [`Focus::Clipped`]).
//!
//! Elements are evaluated in the precision of the data (f32 or f64, as the generic path does,
//! with the vectorisable functions of [`loss_core::fastmath`]); sums are accumulated in f64
//! whatever the type. Rows are processed in fixed blocks of whole rows; blocks run on rayon's pool and their
//! sums are added in block order, so the result does not depend on the number of threads.
//! Within a row, losses are buffered per tile of 64 elements and added into eight f64 lanes, so
//! the element loop itself has no reduction and vectorises.

use loss_core::config::{CbMode, NegativeWeight, ReweightKind, WeightNorm};
use loss_core::validate;
use loss_core::{Backend, HostData, HostDataMut, LossError, MultiLabelParams, Reduction, Result};
use rayon::prelude::*;

use crate::resample::{MultiLabelInput, ResampleLoss};
use loss_core::fastmath::{self, Lane, MulAdd, Separate, Simd};

/// Rows per block are chosen so that a block holds about this many elements: large enough to
/// amortise a task, small enough that moderate batches still spread over the threads. Fixed,
/// so that the order of the partial sums does not depend on the thread count.
const BLOCK_ELEMENTS: usize = 8192;
/// Below this many elements (about 0.1–0.2 ms of work) the blocks run on the calling thread,
/// in the same order: handing them to the pool costs more than it saves.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;
/// Elements whose losses are buffered before they are added to the lane accumulators.
const TILE: usize = 64;
/// Independent accumulators per row.
const LANES: usize = 8;

/// The message of the error the kernel returns when an input fails a check; the caller then
/// runs the generic checks, which name the first offending element.
const FLAGGED: &str = "the fused kernel found an invalid input value";

/// Value and gradient of `loss` on `input` through the fused kernel, or `None` when the fused
/// path does not apply (reduction `none`, an empty batch, an invalid `avg_factor`, or a backend
/// that cannot lend host memory): the caller then uses the generic formulas.
pub(crate) fn forward<B: Backend>(
    loss: &ResampleLoss,
    input: &MultiLabelInput<'_, B>,
) -> Result<Option<B>> {
    let params = loss.params();
    if params.reduction == Reduction::None {
        return Ok(None);
    }
    let (z, classes) = loss.check_layout(input)?;
    let count = z.numel();
    let denominator = match (params.reduction, input.avg_factor) {
        (Reduction::Mean, Some(f)) if f > 0.0 && f.is_finite() => f,
        // The generic path reports an invalid avg_factor after the value checks.
        (Reduction::Mean, Some(_)) => return Ok(None),
        (Reduction::Mean, None) => count as f64,
        _ => 1.0,
    };
    if count == 0 || z.host_data().is_none() {
        return Ok(None);
    }
    // The kernel's gradient is for the logits alone: targets or weights that need one take the
    // generic path.
    if input.targets.requires_grad() || input.weight.is_some_and(|w| w.requires_grad()) {
        return Ok(None);
    }

    // Converted copies hold converted values, so the checks run on the caller's tensors first:
    // the error then names the original value, as on the generic path.
    let converts =
        input.targets.dtype() != z.dtype() || input.weight.is_some_and(|w| w.dtype() != z.dtype());
    if converts {
        loss.check_values(input)?;
    }
    let y = validate::to_type_of(input.targets, &z)?;
    let weight = input.weight.map(|w| validate::to_type_of(w, &z)).transpose()?;
    let Some(y_host) = y.host_data() else { return Ok(None) };
    let weight_host = match &weight {
        Some(w) => match w.host_data() {
            Some(h) => Some(h),
            None => return Ok(None),
        },
        None => None,
    };

    let mut plan = Plan::new(params, loss.ntr_bias(), classes, params.loss_weight / denominator);
    let simd = Simd::detect();
    let mut flagged = false;
    let mut kernel = |values: HostData<'_>, grad: HostDataMut<'_>| -> Result<f64> {
        let sum = match (values, grad, y_host, weight_host) {
            (HostData::F32(z), HostDataMut::F32(g), HostData::F32(y), w) => {
                let w = match w {
                    Some(HostData::F32(w)) => Some(w),
                    None => None,
                    Some(HostData::F64(_)) => return Err(mixed_types()),
                };
                plan.prepare(y);
                run(simd, &plan, z, y, w, g)
            }
            (HostData::F64(z), HostDataMut::F64(g), HostData::F64(y), w) => {
                let w = match w {
                    Some(HostData::F64(w)) => Some(w),
                    None => None,
                    Some(HostData::F32(_)) => return Err(mixed_types()),
                };
                plan.prepare(y);
                run(simd, &plan, z, y, w, g)
            }
            _ => return Err(mixed_types()),
        };
        match sum {
            Some(sum) => Ok(sum * plan.scale),
            None => {
                flagged = true;
                Err(LossError::Backend(FLAGGED.into()))
            }
        }
    };
    match z.fused_scalar(&mut kernel) {
        Err(_) if flagged => {
            // Same checks, same order, same error as the generic path. When the caller's
            // tensors pass them, the flag came from a conversion to the logits' type (an f64
            // weight past f32's range): the generic path computes with those values as well.
            loss.check_values(input)?;
            Ok(None)
        }
        other => other,
    }
}

fn mixed_types() -> LossError {
    LossError::Backend("fused kernel: logits, targets and weight differ in element type".into())
}

// ------------------------------------------------------------------------------------------
// The plan: every parameter resolved into per-class arrays and a few scalars, once per call.

/// The focusing term.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Focus {
    /// `m = 1`: no focal term, or focal with `γ = 0`.
    Off,
    /// `m = σ(u)²`: focal with `γ = 2` (the presets), without a second exponential.
    Square,
    /// `m = exp(−γ_t · sp(−u))`: focal with any other `γ`, or ASL without clip.
    Power { gamma_pos: f64, gamma_neg: f64 },
    /// ASL with a probability margin: positives as [`Focus::Power`] with `γ+`; negatives
    /// `p_m^{γ−} · (−ln(1 − p_m))`, `p_m = max(σ(x) − clip, 0)`.
    Clipped { gamma_pos: f64, gamma_neg: f64, clip: f64 },
}

/// The part of `W` that varies per row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowWeight {
    /// None: `W` is a class factor (folded into the per-class factors) or 1.
    Flat,
    /// Class-balanced over the row's positive labels (one weight per row).
    ClassBalanced { beta: f64, mode: CbMode },
    /// Distribution-Balanced rebalancing: `alpha + σ(beta · (r_ic − mu))`.
    Rebalance { alpha: f64, beta: f64, mu: f64 },
}

#[derive(Debug)]
struct Plan {
    classes: usize,
    /// Plain BCE: targets anywhere in `[0, 1]`.
    soft: bool,
    check_finite: bool,
    /// NTR's scale on negatives (1 without NTR).
    lambda: f64,
    /// NTR's bias `ν_c` (0 without NTR).
    bias: Vec<f64>,
    /// Everything of `W` on positive entries that depends only on the class:
    /// `α · pw_c · class weight_c`.
    pos_factor: Vec<f64>,
    /// The same on negative entries: `(1 − α) · (1/λ where NTR divides) · class weight_c`.
    neg_factor: Vec<f64>,
    focus: Focus,
    row_weight: RowWeight,
    /// The norm of a per-row weight (class weights have theirs folded in).
    norm: WeightNorm,
    /// What a row sums over its positive labels: `1/n_c` (rebalance), `n_c` (`average_n`,
    /// `min_n`), `CB(n_c)` (`average_w`).
    row_values: Vec<f64>,
    /// `beta / n_c` (rebalance): `beta · (r_ic − mu) = slope_c / Σ_pos (1/n_k) − beta · mu`.
    slope: Vec<f64>,
    /// The largest and smallest `1/n_c` (rebalance), where a row's largest weight is.
    inverse_range: (f64, f64),
    /// The largest row weight of the batch, for `norm = by_batch`.
    batch_max: f64,
    /// `loss_weight / denominator`.
    scale: f64,
}

/// `(1 − β) / (1 − βⁿ)`, as [`crate::reweight_matrix`] evaluates it per class (`expm1` form).
fn class_balanced(beta: f64, n: f64) -> f64 {
    (1.0 - beta) / -(n * beta.ln()).exp_m1()
}

/// The same of a per-row count, as [`crate::reweight_matrix`] evaluates it there (`+∞` gives
/// `1 − β`).
fn class_balanced_of(beta: f64, n: f64) -> f64 {
    (1.0 - beta) / (1.0 - (n * beta.ln()).exp())
}

fn std_sigmoid(t: f64) -> f64 {
    fastmath::sigmoid::<f64, Separate>(t)
}

impl Plan {
    fn new(p: &MultiLabelParams, bias: Option<&[f64]>, classes: usize, scale: f64) -> Self {
        let soft =
            p.reweight.is_none() && p.ntr.is_none() && p.focal.is_none() && p.asymmetric.is_none();
        let freq: Vec<f64> = match &p.stats {
            Some(stats) => stats.class_freq.clone(),
            None => vec![1.0; classes],
        };
        let total = p.stats.as_ref().map_or(1.0, |s| s.train_num);

        let lambda = p.ntr.map_or(1.0, |n| n.lambda);
        let divide = p.ntr.is_some_and(|n| match n.negative_weight {
            NegativeWeight::Auto => p.reweight.is_some(),
            NegativeWeight::Always => true,
            NegativeWeight::Never => false,
        });
        let negative_weight = if divide { 1.0 / lambda } else { 1.0 };
        let (alpha_pos, alpha_neg) = p.focal.map_or((1.0, 1.0), |f| (f.alpha, 1.0 - f.alpha));

        // Class weights, their norm folded in: every row holds the same values, so the row
        // maximum and the batch maximum are both the largest class weight.
        let mut class_weight = vec![1.0; classes];
        let mut row_weight = RowWeight::Flat;
        let mut norm = WeightNorm::None;
        let mut row_values = Vec::new();
        let mut slope = Vec::new();
        let mut inverse_range = (0.0, 0.0);
        if let Some(rw) = &p.reweight {
            let by_class: Option<Vec<f64>> = match rw.kind {
                ReweightKind::Inverse => Some(freq.iter().map(|n| total / n).collect()),
                ReweightKind::SqrtInverse => {
                    Some(freq.iter().map(|n| (total / n).sqrt()).collect())
                }
                ReweightKind::ClassBalanced { beta, mode: CbMode::ByClass } => {
                    Some(freq.iter().map(|&n| class_balanced(beta, n)).collect())
                }
                ReweightKind::ClassBalanced { beta, mode } => {
                    row_weight = RowWeight::ClassBalanced { beta, mode };
                    row_values = match mode {
                        CbMode::AverageW => freq.iter().map(|&n| class_balanced(beta, n)).collect(),
                        _ => freq.clone(),
                    };
                    None
                }
                ReweightKind::Rebalance { alpha, beta, mu } => {
                    row_weight = RowWeight::Rebalance { alpha, beta, mu };
                    row_values = freq.iter().map(|n| 1.0 / n).collect();
                    slope = row_values.iter().map(|inv| beta * inv).collect();
                    inverse_range = row_values
                        .iter()
                        .fold((f64::NEG_INFINITY, f64::INFINITY), |(hi, lo), &v| {
                            (hi.max(v), lo.min(v))
                        });
                    None
                }
            };
            match by_class {
                Some(weights) => {
                    let divisor = match rw.norm {
                        WeightNorm::None => 1.0,
                        WeightNorm::ByInstance | WeightNorm::ByBatch => {
                            weights.iter().fold(f64::MIN_POSITIVE, |m, &w| m.max(w))
                        }
                    };
                    class_weight = weights.iter().map(|w| w / divisor).collect();
                }
                None => norm = rw.norm,
            }
        }

        let pos_weight = p.pos_weight.clone().unwrap_or_else(|| vec![1.0; classes]);
        let pos_factor =
            class_weight.iter().zip(&pos_weight).map(|(cw, pw)| alpha_pos * pw * cw).collect();
        let neg_factor = class_weight.iter().map(|cw| alpha_neg * negative_weight * cw).collect();

        let focus = match (&p.focal, &p.asymmetric) {
            (Some(f), _) if f.gamma == 0.0 => Focus::Off,
            (Some(f), _) if f.gamma == 2.0 => Focus::Square,
            (Some(f), _) => Focus::Power { gamma_pos: f.gamma, gamma_neg: f.gamma },
            (None, Some(a)) if a.clip > 0.0 => {
                Focus::Clipped { gamma_pos: a.gamma_pos, gamma_neg: a.gamma_neg, clip: a.clip }
            }
            (None, Some(a)) => Focus::Power { gamma_pos: a.gamma_pos, gamma_neg: a.gamma_neg },
            (None, None) => Focus::Off,
        };

        Self {
            classes,
            soft,
            check_finite: p.check_finite,
            lambda,
            bias: bias.map_or_else(|| vec![0.0; classes], <[f64]>::to_vec),
            pos_factor,
            neg_factor,
            focus,
            row_weight,
            norm,
            row_values,
            slope,
            inverse_range,
            batch_max: 1.0,
            scale,
        }
    }

    /// A row's weights before the norm: one weight for the whole row (class-balanced, or
    /// rebalanced without positives), or rebalancing with `1 / Σ_pos 1/n_k`; and the row's
    /// largest weight. Inlined into the block, so it is compiled for the block's instructions.
    #[inline(always)]
    fn row_weight<L: Lane>(&self, y: &[L]) -> RowSetup {
        match self.row_weight {
            RowWeight::Flat => RowSetup::Flat { weight: 1.0, max: 1.0 },
            RowWeight::ClassBalanced { beta, mode } => {
                let (count, sum) = positive_sum(y, &self.row_values);
                let weight = match mode {
                    CbMode::AverageN if count > 0.0 => class_balanced_of(beta, sum / count),
                    CbMode::AverageW if count > 0.0 => sum / count,
                    CbMode::MinN => class_balanced_of(beta, positive_min(y, &self.row_values)),
                    _ => 1.0 - beta,
                };
                RowSetup::Flat { weight, max: weight }
            }
            RowWeight::Rebalance { alpha, beta, mu } => {
                let inverse_sum = weighted_sum(y, &self.row_values);
                if inverse_sum > 0.0 {
                    let inverse = 1.0 / inverse_sum;
                    let extreme =
                        if beta >= 0.0 { self.inverse_range.0 } else { self.inverse_range.1 };
                    let max = alpha + std_sigmoid(beta * (extreme * inverse - mu));
                    RowSetup::Rebalance { inverse, max }
                } else {
                    // r = +∞: the limit of σ(beta · (r − mu)).
                    let limit = match beta.partial_cmp(&0.0) {
                        Some(std::cmp::Ordering::Greater) => 1.0,
                        Some(std::cmp::Ordering::Less) => 0.0,
                        _ => 0.5,
                    };
                    RowSetup::Flat { weight: alpha + limit, max: alpha + limit }
                }
            }
        }
    }

    /// The divisor of a row's weights under the norm, from the row's largest weight.
    fn norm_divisor(&self, row_max: f64) -> f64 {
        match self.norm {
            WeightNorm::None => 1.0,
            WeightNorm::ByInstance => row_max.max(f64::MIN_POSITIVE),
            WeightNorm::ByBatch => self.batch_max.max(f64::MIN_POSITIVE),
        }
    }

    /// For `norm = by_batch` of a per-row weight: the largest weight of the batch, from one
    /// read of the targets ahead of the main pass.
    fn prepare<L: Lane>(&mut self, y: &[L]) {
        if self.norm != WeightNorm::ByBatch || self.row_weight == RowWeight::Flat {
            return;
        }
        let max = y
            .chunks_exact(self.classes)
            .map(|row| match self.row_weight(row) {
                RowSetup::Flat { max, .. } | RowSetup::Rebalance { max, .. } => max,
            })
            .fold(f64::NEG_INFINITY, f64::max);
        self.batch_max = max;
    }
}

/// One row's weights, before the per-element work.
#[derive(Debug, Clone, Copy)]
enum RowSetup {
    /// Every entry of the row has weight `weight` (times its class factors).
    Flat { weight: f64, max: f64 },
    /// Rebalancing with `Σ_pos 1/n_k = 1 / inverse`.
    Rebalance { inverse: f64, max: f64 },
}

/// `(Σ y, Σ y · values)` over a row, in lanes (targets are 0 or 1 here; a row with other values
/// is rejected by the main pass).
#[inline(always)]
fn positive_sum<L: Lane>(y: &[L], values: &[f64]) -> (f64, f64) {
    let mut count = [0.0; LANES];
    let mut sum = [0.0; LANES];
    let split = y.len() - y.len() % LANES;
    for (yc, vc) in y[..split].chunks_exact(LANES).zip(values[..split].chunks_exact(LANES)) {
        for l in 0..LANES {
            let yv = yc[l].to_f64();
            count[l] += yv;
            sum[l] += yv * vc[l];
        }
    }
    for (j, (yv, v)) in y[split..].iter().zip(&values[split..]).enumerate() {
        count[j] += yv.to_f64();
        sum[j] += yv.to_f64() * v;
    }
    (combine(&count), combine(&sum))
}

/// `Σ y · values` over a row, in lanes.
#[inline(always)]
fn weighted_sum<L: Lane>(y: &[L], values: &[f64]) -> f64 {
    let mut sum = [0.0; LANES];
    let split = y.len() - y.len() % LANES;
    for (yc, vc) in y[..split].chunks_exact(LANES).zip(values[..split].chunks_exact(LANES)) {
        for l in 0..LANES {
            sum[l] += yc[l].to_f64() * vc[l];
        }
    }
    for (j, (yv, v)) in y[split..].iter().zip(&values[split..]).enumerate() {
        sum[j] += yv.to_f64() * v;
    }
    combine(&sum)
}

/// The smallest value over the row's positive labels (`+∞` without any).
fn positive_min<L: Lane>(y: &[L], values: &[f64]) -> f64 {
    y.iter()
        .zip(values)
        .filter(|(yv, _)| yv.to_f64() == 1.0)
        .fold(f64::INFINITY, |m, (_, &v)| m.min(v))
}

/// The lanes added in a fixed tree order.
#[inline(always)]
fn combine(lanes: &[f64; LANES]) -> f64 {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

// ------------------------------------------------------------------------------------------
// Element kernels.

/// The per-class arrays of the plan in the kernel's lane type.
struct ClassArrays<L> {
    bias: Vec<L>,
    pos_factor: Vec<L>,
    neg_factor: Vec<L>,
    slope: Vec<L>,
}

impl<L: Lane> ClassArrays<L> {
    fn new(plan: &Plan) -> Self {
        let cast = |v: &[f64]| v.iter().map(|&x| L::c(x)).collect();
        Self {
            bias: cast(&plan.bias),
            pos_factor: cast(&plan.pos_factor),
            neg_factor: cast(&plan.neg_factor),
            slope: cast(&plan.slope),
        }
    }
}

/// The focusing term as code: `(f, ∂f/∂u)` of the unweighted element `f = m(u) · sp(u)` for
/// binary targets.
trait Modulate<L: Lane>: Copy {
    fn eval<M: MulAdd>(self, u: L, positive: bool) -> (L, L);
}

/// `m = 1`.
#[derive(Clone, Copy)]
struct Off;

impl<L: Lane> Modulate<L> for Off {
    #[inline(always)]
    fn eval<M: MulAdd>(self, u: L, _: bool) -> (L, L) {
        let (e, l, q) = fastmath::softplus_parts::<L, M>(u.abs());
        let sp = u.positive_part() + l;
        let sig = if u >= L::c(0.0) { q } else { e * q };
        (sp, sig)
    }
}

/// `m = σ(u)²`, `∂m/∂u = 2 · σ(−u) · m`.
#[derive(Clone, Copy)]
struct Square;

impl<L: Lane> Modulate<L> for Square {
    #[inline(always)]
    fn eval<M: MulAdd>(self, u: L, _: bool) -> (L, L) {
        let (e, l, q) = fastmath::softplus_parts::<L, M>(u.abs());
        let sp = u.positive_part() + l;
        let (sig, sig_neg) = if u >= L::c(0.0) { (q, e * q) } else { (e * q, q) };
        let m = sig * sig;
        (m * sp, m * M::mul_add(L::c(2.0) * sig_neg, sp, sig))
    }
}

/// `m = exp(−γ_t · sp(−u))`, `∂m/∂u = γ_t · σ(−u) · m`.
#[derive(Clone, Copy)]
struct Power<L> {
    gamma_pos: L,
    gamma_neg: L,
}

impl<L: Lane> Modulate<L> for Power<L> {
    #[inline(always)]
    fn eval<M: MulAdd>(self, u: L, positive: bool) -> (L, L) {
        let gamma = if positive { self.gamma_pos } else { self.gamma_neg };
        let (e, l, q) = fastmath::softplus_parts::<L, M>(u.abs());
        let sp = u.positive_part() + l;
        let sp_neg = (-u).positive_part() + l;
        let (sig, sig_neg) = if u >= L::c(0.0) { (q, e * q) } else { (e * q, q) };
        let m = fastmath::exp_nonpositive::<L, M>(-gamma * sp_neg);
        (m * sp, m * M::mul_add(gamma * sig_neg, sp, sig))
    }
}

/// Smallest base raised to `γ−` on the clipped branch, as in [`crate::asymmetric_elements`].
const TINY_BASE: f64 = 1e-30;

/// ASL with a clip: [`Power`] on positives, the margin on negatives.
///
/// The negative branch is evaluated in f64 whatever the lane type, with libm's `exp`, `ln` and
/// `powf` (it is rare enough not to need vectorising): `p − clip` cancels where `p` is near the
/// clip, and the derivative of `p_m^{γ−}` for `γ− < 1` amplifies that, so f32 would lose up to
/// 1e-4 there.
#[derive(Clone, Copy)]
struct Clipped<L> {
    gamma_pos: L,
    gamma_neg: f64,
    clip: f64,
}

impl<L: Lane> Modulate<L> for Clipped<L> {
    #[inline(always)]
    fn eval<M: MulAdd>(self, u: L, positive: bool) -> (L, L) {
        if positive {
            return Power { gamma_pos: self.gamma_pos, gamma_neg: L::c(0.0) }.eval::<M>(u, true);
        }
        let (f, df) = clipped_negative(u.to_f64(), self.gamma_neg, self.clip);
        (L::c(f), L::c(df))
    }
}

/// `p_m^{γ−} · (−ln(1 − p_m))` and its derivative, `x` the (regularised) logit of a negative:
/// `p = σ(x)`, `p_m = max(p − clip, 0)`, `1 − p_m = min(σ(−x) + clip, 1) ≥ clip`. Gradients as
/// the generic path's: none through a clamp that holds, `p_m` floored at [`TINY_BASE`] inside
/// the power.
#[inline(never)]
fn clipped_negative(x: f64, gamma_neg: f64, clip: f64) -> (f64, f64) {
    let e = (-x.abs()).exp();
    let q = 1.0 / (1.0 + e);
    let (p, p_neg) = if x >= 0.0 { (q, e * q) } else { (e * q, q) };
    let dp = p * p_neg;
    let kept = p_neg + clip;
    let (neg_log, d_neg_log) = if kept <= 1.0 { (-kept.ln(), dp / kept) } else { (0.0, 0.0) };
    if gamma_neg == 0.0 {
        return (neg_log, d_neg_log);
    }
    let shifted = p - clip;
    if shifted <= 0.0 {
        return (0.0, 0.0);
    }
    let base = shifted.max(TINY_BASE);
    let focus = base.powf(gamma_neg);
    let d_focus =
        if shifted >= TINY_BASE { gamma_neg * base.powf(gamma_neg - 1.0) * dp } else { 0.0 };
    (focus * neg_log, d_focus * neg_log + focus * d_neg_log)
}

/// Input checks accumulated over a block.
#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    targets: bool,
    logits: bool,
    weight: bool,
}

impl Flags {
    fn any(self) -> bool {
        self.targets || self.logits || self.weight
    }
}

/// One row of the block.
struct Row<'a, L> {
    z: &'a [L],
    y: &'a [L],
    weight: &'a [L],
    grad: &'a mut [L],
}

/// Runs `$body` over tiles of the row, with `$start` the tile's first index and `$out` its loss
/// buffer, and adds the losses the body leaves in the buffer into f64 lane accumulators;
/// evaluates to the row's sum.
///
/// A macro, not a function taking a closure: such a closure is one function shared by every
/// instruction-set build of the kernel, and where LLVM declines to inline it (as it did once
/// the AVX-512 build became its second caller) its body is compiled without the caller's
/// target features, so each fused multiply-add becomes a call to a software `fmaf`, about 20×
/// slower. Expanded in place, the body is always compiled for the set of the build it is in.
macro_rules! tiled {
    ($L:ty, $len:expr, |$start:ident, $out:ident| $body:block) => {{
        let len: usize = $len;
        let mut lanes = [0.0; LANES];
        let mut buffer = [<$L as Lane>::c(0.0); TILE];
        let mut tile_start = 0;
        while tile_start < len {
            let n = TILE.min(len - tile_start);
            {
                let $start = tile_start;
                let $out = &mut buffer[..n];
                $body
            }
            if n == TILE {
                for chunk in buffer.chunks_exact(LANES) {
                    for l in 0..LANES {
                        lanes[l] += chunk[l].to_f64();
                    }
                }
            } else {
                for (j, v) in buffer[..n].iter().enumerate() {
                    lanes[j % LANES] += v.to_f64();
                }
            }
            tile_start += n;
        }
        combine(&lanes)
    }};
}

/// A row with binary targets: returns `Σ F`, writes `scale · ∂F/∂z`.
#[inline(always)]
fn binary_row<L: Lane, M: MulAdd, F: Modulate<L>, const REBALANCE: bool, const WEIGHTED: bool>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    focus: F,
    setup: RowSetup,
    row: Row<'_, L>,
    flags: &mut Flags,
) -> f64 {
    let (row_scale, inverse, offset, alpha) = match (setup, plan.row_weight) {
        (RowSetup::Rebalance { inverse, max }, RowWeight::Rebalance { alpha, beta, mu }) => {
            (1.0 / plan.norm_divisor(max), inverse, beta * mu, alpha)
        }
        (RowSetup::Flat { weight, max }, _) => (weight / plan.norm_divisor(max), 0.0, 0.0, 0.0),
        (RowSetup::Rebalance { .. }, _) => (1.0, 0.0, 0.0, 0.0),
    };
    let (row_scale, inverse, offset, alpha) =
        (L::c(row_scale), L::c(inverse), L::c(offset), L::c(alpha));
    let (lambda, scale) = (L::c(plan.lambda), L::c(plan.scale));
    let (zero, one, max) = (L::c(0.0), L::c(1.0), L::MAX);
    let (mut ok_y, mut ok_z, mut ok_w) = (true, true, true);
    let Row { z, y, weight, grad } = row;

    let sum = tiled!(L, z.len(), |start, out| {
        let n = out.len();
        let z = &z[start..start + n];
        let y = &y[start..start + n];
        let grad = &mut grad[start..start + n];
        let bias = &arrays.bias[start..start + n];
        let pos_factor = &arrays.pos_factor[start..start + n];
        let neg_factor = &arrays.neg_factor[start..start + n];
        let slope = if REBALANCE { &arrays.slope[start..start + n] } else { &[][..] };
        let weight = if WEIGHTED { &weight[start..start + n] } else { &[][..] };
        for j in 0..n {
            let (zv, yv) = (z[j], y[j]);
            ok_y &= yv == zero || yv == one;
            ok_z &= zv.abs() <= max;
            let positive = yv == one;
            let sign = if positive { -one } else { lambda };
            let u = sign * (zv + bias[j]);

            // `y · pos + (1 − y) · neg`, exact for y in {0, 1}: written as a select, LLVM turns
            // it into a load from a selected address, which does not vectorise.
            let factor = M::mul_add(yv, pos_factor[j], (one - yv) * neg_factor[j]);
            let mut w = row_scale * factor;
            if REBALANCE {
                let t = M::mul_add(slope[j], inverse, -offset);
                w = w * (alpha + fastmath::sigmoid::<L, M>(t));
            }
            if WEIGHTED {
                let wv = weight[j];
                ok_w &= zero <= wv && wv <= max;
                w = w * wv;
            }

            let (f, df) = focus.eval::<M>(u, positive);
            out[j] = w * f;
            grad[j] = scale * w * df * sign;
        }
    });

    flags.targets |= !ok_y;
    flags.logits |= !ok_z && plan.check_finite;
    flags.weight |= !ok_w;
    sum
}

/// A row of plain BCE (targets anywhere in `[0, 1]`):
/// `F = y · pw_c · sp(−z) + (1 − y) · sp(z)`, `∂F/∂z = (1 − y) · σ(z) − y · pw_c · σ(−z)`.
#[inline(always)]
fn soft_row<L: Lane, M: MulAdd, const WEIGHTED: bool>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    row: Row<'_, L>,
    flags: &mut Flags,
) -> f64 {
    let scale = L::c(plan.scale);
    let (zero, one, max) = (L::c(0.0), L::c(1.0), L::MAX);
    let (mut ok_y, mut ok_z, mut ok_w) = (true, true, true);
    let Row { z, y, weight, grad } = row;

    let sum = tiled!(L, z.len(), |start, out| {
        let n = out.len();
        let z = &z[start..start + n];
        let y = &y[start..start + n];
        let grad = &mut grad[start..start + n];
        let pos_weight = &arrays.pos_factor[start..start + n];
        let weight = if WEIGHTED { &weight[start..start + n] } else { &[][..] };
        for j in 0..n {
            let (zv, yv) = (z[j], y[j]);
            ok_y &= zero <= yv && yv <= one;
            ok_z &= zv.abs() <= max;
            let w = if WEIGHTED {
                let wv = weight[j];
                ok_w &= zero <= wv && wv <= max;
                wv
            } else {
                one
            };

            let (e, l, q) = fastmath::softplus_parts::<L, M>(zv.abs());
            let (sig, sig_neg) = if zv >= zero { (q, e * q) } else { (e * q, q) };
            let sp = zv.positive_part() + l;
            let sp_neg = (-zv).positive_part() + l;
            let on_pos = yv * pos_weight[j];
            let on_neg = one - yv;
            out[j] = w * M::mul_add(on_pos, sp_neg, on_neg * sp);
            grad[j] = scale * w * M::mul_add(on_neg, sig, -(on_pos * sig_neg));
        }
    });

    flags.targets |= !ok_y;
    flags.logits |= !ok_z && plan.check_finite;
    flags.weight |= !ok_w;
    sum
}

/// A block of whole rows.
struct Block<'a, L> {
    z: &'a [L],
    y: &'a [L],
    weight: Option<&'a [L]>,
    grad: &'a mut [L],
}

/// The sum of a block, and whether any of its inputs failed a check.
#[derive(Debug, Clone, Copy)]
struct BlockSum {
    sum: f64,
    flagged: bool,
}

#[inline(always)]
fn binary_dispatch<L: Lane, M: MulAdd, F: Modulate<L>>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    focus: F,
    setup: RowSetup,
    row: Row<'_, L>,
    weighted: bool,
    flags: &mut Flags,
) -> f64 {
    match (setup, weighted) {
        (RowSetup::Flat { .. }, false) => {
            binary_row::<L, M, F, false, false>(plan, arrays, focus, setup, row, flags)
        }
        (RowSetup::Flat { .. }, true) => {
            binary_row::<L, M, F, false, true>(plan, arrays, focus, setup, row, flags)
        }
        (RowSetup::Rebalance { .. }, false) => {
            binary_row::<L, M, F, true, false>(plan, arrays, focus, setup, row, flags)
        }
        (RowSetup::Rebalance { .. }, true) => {
            binary_row::<L, M, F, true, true>(plan, arrays, focus, setup, row, flags)
        }
    }
}

#[inline(always)]
fn block_impl<L: Lane, M: MulAdd>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    block: Block<'_, L>,
) -> BlockSum {
    let c = plan.classes;
    let mut flags = Flags::default();
    let mut sum = 0.0;
    let weighted = block.weight.is_some();
    let weight = block.weight.unwrap_or(&[]);
    for (r, grad) in block.grad.chunks_exact_mut(c).enumerate() {
        let range = r * c..(r + 1) * c;
        let y = &block.y[range.clone()];
        let row = Row {
            z: &block.z[range.clone()],
            y,
            weight: if weighted { &weight[range] } else { &[] },
            grad,
        };
        let f = &mut flags;
        sum += if plan.soft {
            if weighted {
                soft_row::<L, M, true>(plan, arrays, row, f)
            } else {
                soft_row::<L, M, false>(plan, arrays, row, f)
            }
        } else {
            let setup = plan.row_weight(y);
            match plan.focus {
                Focus::Off => {
                    binary_dispatch::<L, M, _>(plan, arrays, Off, setup, row, weighted, f)
                }
                Focus::Square => {
                    binary_dispatch::<L, M, _>(plan, arrays, Square, setup, row, weighted, f)
                }
                Focus::Power { gamma_pos, gamma_neg } => {
                    let focus = Power { gamma_pos: L::c(gamma_pos), gamma_neg: L::c(gamma_neg) };
                    binary_dispatch::<L, M, _>(plan, arrays, focus, setup, row, weighted, f)
                }
                Focus::Clipped { gamma_pos, gamma_neg, clip } => {
                    let focus = Clipped { gamma_pos: L::c(gamma_pos), gamma_neg, clip };
                    binary_dispatch::<L, M, _>(plan, arrays, focus, setup, row, weighted, f)
                }
            }
        };
        if flags.any() {
            return BlockSum { sum, flagged: true };
        }
    }
    BlockSum { sum, flagged: false }
}

/// One block through the element loops compiled for `simd` (the same code, inlined into a
/// `#[target_feature]` function per set; see [`fastmath::Simd`]).
fn block<L: Lane>(
    simd: Simd,
    plan: &Plan,
    arrays: &ClassArrays<L>,
    block: Block<'_, L>,
) -> BlockSum {
    match simd {
        // SAFETY (both arms): `simd` comes from `Simd::available`/`Simd::detect`, which found
        // the set's features on this CPU, the only requirement of the target-feature function.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { block_avx512(plan, arrays, block) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { block_avx2_fma(plan, arrays, block) },
        _ => block_impl::<L, Separate>(plan, arrays, block),
    }
}

/// [`block_impl`] compiled for AVX2 and FMA (everything below it is inlined).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_fma<L: Lane>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    block: Block<'_, L>,
) -> BlockSum {
    block_impl::<L, fastmath::Fused>(plan, arrays, block)
}

/// [`block_impl`] compiled for AVX-512 (16 f32 lanes, 32 registers: fewer constant reloads in
/// the longer element formulas), with FMA as under AVX2, so both give the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F, VL, DQ and BW, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
unsafe fn block_avx512<L: Lane>(
    plan: &Plan,
    arrays: &ClassArrays<L>,
    block: Block<'_, L>,
) -> BlockSum {
    block_impl::<L, fastmath::Fused>(plan, arrays, block)
}

/// The kernel over all rows: `Σ F` (before `scale`), the gradient written to `grad`; `None` when
/// an input failed a check.
fn run<L: Lane>(
    simd: Simd,
    plan: &Plan,
    z: &[L],
    y: &[L],
    weight: Option<&[L]>,
    grad: &mut [L],
) -> Option<f64> {
    let c = plan.classes;
    let block_len = (BLOCK_ELEMENTS / c).max(1) * c;
    let arrays = ClassArrays::<L>::new(plan);

    let one = |index: usize, grad: &mut [L]| {
        let range = index * block_len..index * block_len + grad.len();
        let block = Block {
            z: &z[range.clone()],
            y: &y[range.clone()],
            weight: weight.map(|w| &w[range]),
            grad,
        };
        self::block(simd, plan, &arrays, block)
    };
    let sums: Vec<BlockSum> =
        if grad.len() < PARALLEL_MIN_ELEMENTS || rayon::current_num_threads() == 1 {
            grad.chunks_mut(block_len).enumerate().map(|(i, g)| one(i, g)).collect()
        } else {
            grad.par_chunks_mut(block_len).enumerate().map(|(i, g)| one(i, g)).collect()
        };
    if sums.iter().any(|s| s.flagged) {
        return None;
    }
    // In block order, whatever the thread that computed each.
    Some(sums.iter().fold(0.0, |acc, s| acc + s.sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loss_core::config::MultiLabelPreset;
    use loss_core::sample::uniforms;
    use loss_core::MultiLabelConfig;

    /// The kernel's sum and gradient under every instruction set of this CPU, for `L`.
    fn every_set<L: Lane>(
        preset: MultiLabelPreset,
        rows: usize,
        classes: usize,
    ) -> Vec<(Simd, f64, Vec<f64>)> {
        let config = MultiLabelConfig {
            preset: Some(preset),
            class_freq: Some((0..classes).map(|k| (500 / (k + 1)).max(1) as f64).collect()),
            train_num: Some(1000.0),
            ..MultiLabelConfig::default()
        };
        let loss = ResampleLoss::new(config.resolve().unwrap()).unwrap();
        let n = rows * classes;
        let z: Vec<L> = uniforms(1, n).iter().map(|u| L::c(16.0 * u - 8.0)).collect();
        let y: Vec<L> =
            uniforms(2, n).iter().map(|&u| L::c(if u < 0.2 { 1.0 } else { 0.0 })).collect();
        let mut plan = Plan::new(loss.params(), loss.ntr_bias(), classes, 1.0);
        plan.prepare(&y);
        Simd::available()
            .into_iter()
            .map(|simd| {
                let mut grad = vec![L::c(f64::NAN); n];
                let sum = run(simd, &plan, &z, &y, None, &mut grad).expect("finite inputs");
                (simd, sum, grad.iter().map(|g| g.to_f64()).collect())
            })
            .collect()
    }

    /// AVX2 and AVX-512 give the same bits (both use FMA); the baseline (two roundings per
    /// multiply-add) agrees to the precision of the type. Sets this CPU lacks are skipped.
    fn sets_agree<L: Lane>(rel: f64) {
        let presets = [MultiLabelPreset::Bce, MultiLabelPreset::Focal, MultiLabelPreset::Db];
        for preset in presets {
            // Ragged: rows not a multiple of any vector width, blocks of several rows.
            for (rows, classes) in [(3, 7), (37, 90), (5, 1021)] {
                let results = every_set::<L>(preset, rows, classes);
                let (_, base_sum, base_grad) = &results[0];
                for (simd, sum, grad) in &results[1..] {
                    let what = format!("{preset:?} {rows}x{classes} {simd:?}");
                    assert!((sum - base_sum).abs() <= rel * base_sum.abs(), "{what}: sum");
                    let scale = base_grad.iter().fold(0.0f64, |m, g| m.max(g.abs()));
                    for (i, (g, b)) in grad.iter().zip(base_grad).enumerate() {
                        assert!((g - b).abs() <= rel * scale, "{what}: grad[{i}] {g} vs {b}");
                    }
                }
                let fused: Vec<_> = results.iter().filter(|r| r.0 != Simd::Baseline).collect();
                for pair in fused.windows(2) {
                    let what =
                        format!("{preset:?} {rows}x{classes} {:?}/{:?}", pair[0].0, pair[1].0);
                    assert_eq!(pair[0].1.to_bits(), pair[1].1.to_bits(), "{what}: sum");
                    assert!(
                        pair[0].2.iter().zip(&pair[1].2).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: gradient bits"
                    );
                }
            }
        }
    }

    #[test]
    fn instruction_sets_agree_in_f64() {
        sets_agree::<f64>(1e-13);
    }

    #[test]
    fn instruction_sets_agree_in_f32() {
        sets_agree::<f32>(1e-5);
    }
}
