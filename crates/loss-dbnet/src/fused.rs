//! The fused DBNet kernel: the value of [`crate::DbLoss`] and its gradient with respect to
//! `preds`, computed together over contiguous host memory.
//!
//! The generic path builds each term from backend operations (dozens of full-size temporaries
//! and a top-k); this kernel reads the maps in two passes, keeps the sums in f64, and hands the
//! gradient to the backend through [`Backend::fused_scalar`]. The generic path stays the oracle:
//! the tests hold the two to the same value and gradient (`tests/fused.rs`,
//! `loss-tch/tests/dbnet_fused.rs`).
//!
//! # Passes
//! 1. **Read** (parallel over blocks of pixels, reading the seven maps and writing nothing): the
//!    sums of the three terms (`Σ g·m`, `Σ (1 − g)·m`, `Σ ℓ·g·m`, the Dice sums of P and B, the
//!    L1 sums), the probability check, and a histogram of the mined losses `v = ℓ·(1 − g)·m`
//!    of the negatives over the top bits of an order-preserving key (65 536 buckets for large
//!    inputs, fewer for small ones).
//! 2. **Select**: the histogram names the bucket of the k-th largest `v` and how many lie above.
//! 3. **Write** (parallel, reading six maps): every gradient element from the global sums,
//!    recomputing `ℓ` and `ℓ'`; the negatives in the k-th bucket are set aside.
//! 4. **Settle** the k-th bucket exactly: a selection (`select_nth_unstable`) among its
//!    candidates gives the k-th largest value, and with it the mined sum and the gradient of the
//!    mined negatives in that bucket.
//!
//! Nothing full-size is allocated besides the gradient itself: each thread holds a histogram (at
//! most 256 KiB), and the candidates of the k-th bucket are a small buffer of negative losses
//! (all the negatives only when they share one value). The loops work on 64 pixels at a time in
//! branch-free code that the compiler vectorises (compiled for AVX2 and AVX-512 as well, chosen
//! at run time, with the same bits from each); f32 logarithms and exponentials are the
//! vectorisable polynomials of [`loss_core::fastmath`] ([`ln_f32`] within 1 ulp,
//! [`exp_nonpositive`] within a few), f64 uses the standard library's.
//!
//! # Ties
//! The sum of the k largest is exact: `Σ(v > kth) + (k − count_greater)·kth`. The gradient goes
//! to the negatives with `v > kth` and to the **first `k − count_greater` negatives (in row-major
//! order of `[N, H, W]`) with `v = kth`**. Elements outside the negative pool (positives, mask 0)
//! have `v = 0` and no mined gradient, so when `kth = 0` they fill the remaining places without
//! changing the value or the gradient.
//!
//! # Determinism
//! Blocks have a fixed size ([`BLOCK`] pixels, never straddling two images), each block's sums
//! are added in a fixed order, and the blocks' sums in block order, so the value and the
//! gradient do not depend on the thread count (nor on AVX2: no fused multiply-add is used).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;

use loss_core::error::unravel_index;
use loss_core::fastmath::{self, exp_nonpositive, ln_f32, Separate, Simd};
use loss_core::{Backend, HostData, HostDataMut, LossError, LossOutput, Result};

use crate::{BalancedBce, ProbInput, ProbLoss};

/// Pixels per block: the unit of work of a thread and of the reduction order.
pub(crate) const BLOCK: usize = 8192;
/// The automatic thread count gives each thread at least this many pixels.
const MIN_PIXELS_PER_THREAD: usize = 32 * 1024;
/// Most bits of the selection histogram: buckets are the top bits of a 32-bit order-preserving
/// key, 2¹⁶ of them for large inputs (a 256 KiB histogram per thread).
const MAX_BUCKET_BITS: u32 = 16;
/// Fewest bits, for the smallest inputs.
const MIN_BUCKET_BITS: u32 = 8;
/// A k-th key that no key reaches or equals: nothing is mined.
const NO_KEY: u32 = u32::MAX;
/// PyTorch's clamp of each logarithm in `binary_cross_entropy`.
const LOG_CLAMP: f64 = 100.0;
/// Pixels handled together: the loops over a lane array are what the compiler vectorises.
const L: usize = 64;

/// A few pixels' values of one map.
type Lane<T> = [T; L];

/// The element types the kernel runs in: the shared arithmetic of [`fastmath::Lane`] (constants
/// `T::c`, `to_f64`, `abs`) and what the DBNet kernel adds.
pub(crate) trait Real: fastmath::Lane + Default + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn is_nan(self) -> bool;
    fn total_cmp(&self, other: &Self) -> Ordering;
    /// A 32-bit key, non-decreasing in the value in the order of `total_cmp`; the histogram
    /// bucket is its top bits.
    fn key(self) -> u32;
    /// `ln x` of each lane, `x ≥ 0` (0 gives −∞).
    fn ln_lanes(x: &Lane<Self>) -> Lane<Self>;
    /// `ln(1 + x)` of each lane, `0 ≤ x ≤ 1`.
    fn ln_1p_lanes(x: &Lane<Self>) -> Lane<Self>;
    /// `eˣ` of each lane, `x ≤ 0`.
    fn exp_lanes(x: &Lane<Self>) -> Lane<Self>;
    /// The slice, when the host data is of this type.
    fn host(data: HostData<'_>) -> Option<&[Self]>;
    /// The writable slice, when the buffer is of this type.
    fn host_mut(data: HostDataMut<'_>) -> Option<&mut [Self]>;
}

/// The lane array `[f(0), …, f(L − 1)]`, as a plain loop the compiler vectorises (the
/// standard `array::map` and `array::from_fn` go through iterator adapters that it does not).
#[inline(always)]
fn lanes<U: Copy + Default>(f: impl Fn(usize) -> U) -> [U; L] {
    let mut out = [U::default(); L];
    for (j, o) in out.iter_mut().enumerate() {
        *o = f(j);
    }
    out
}

/// f32 bits mapped to a key whose unsigned order is `f32::total_cmp`'s.
#[inline(always)]
fn order_key(bits: u32) -> u32 {
    // Negative values: all bits flipped; others: the sign bit set. Branch-free, for the
    // vectoriser.
    let negative = ((bits as i32) >> 31) as u32;
    bits ^ (negative | 0x8000_0000)
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn total_cmp(&self, other: &Self) -> Ordering {
        f32::total_cmp(self, other)
    }
    #[inline(always)]
    fn key(self) -> u32 {
        order_key(self.to_bits())
    }
    #[inline(always)]
    fn ln_lanes(x: &Lane<Self>) -> Lane<Self> {
        lanes(|j| ln_f32(x[j]))
    }
    // ln(u) · x / (u − 1) with u = 1 + x: the rounding of u cancels (Goldberg, "What every
    // computer scientist should know about floating-point arithmetic", theorem 4).
    #[inline(always)]
    fn ln_1p_lanes(x: &Lane<Self>) -> Lane<Self> {
        let u = lanes(|j| 1.0 + x[j]);
        let lu = Self::ln_lanes(&u);
        lanes(|j| if u[j] == 1.0 { x[j] } else { lu[j] * x[j] / (u[j] - 1.0) })
    }
    #[inline(always)]
    fn exp_lanes(x: &Lane<Self>) -> Lane<Self> {
        lanes(|j| exp_nonpositive::<f32, Separate>(x[j]))
    }
    fn host(data: HostData<'_>) -> Option<&[Self]> {
        match data {
            HostData::F32(v) => Some(v),
            HostData::F64(_) => None,
        }
    }
    fn host_mut(data: HostDataMut<'_>) -> Option<&mut [Self]> {
        match data {
            HostDataMut::F32(v) => Some(v),
            HostDataMut::F64(_) => None,
        }
    }
}

// f64 is the precision path (tests against PyTorch at rel 1e-9): the standard library's
// correctly rounded functions, not vectorised.
impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn total_cmp(&self, other: &Self) -> Ordering {
        f64::total_cmp(self, other)
    }
    // Rounding to f32 is monotone, so the f32 key of the rounded value keeps the order; values
    // that share a bucket are told apart exactly when the bucket is settled.
    #[inline(always)]
    fn key(self) -> u32 {
        (self as f32).key()
    }
    fn ln_lanes(x: &Lane<Self>) -> Lane<Self> {
        lanes(|j| x[j].ln())
    }
    fn ln_1p_lanes(x: &Lane<Self>) -> Lane<Self> {
        lanes(|j| x[j].ln_1p())
    }
    fn exp_lanes(x: &Lane<Self>) -> Lane<Self> {
        lanes(|j| x[j].exp())
    }
    fn host(data: HostData<'_>) -> Option<&[Self]> {
        match data {
            HostData::F64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }
    fn host_mut(data: HostDataMut<'_>) -> Option<&mut [Self]> {
        match data {
            HostDataMut::F64(v) => Some(v),
            HostDataMut::F32(_) => None,
        }
    }
}

/// What the probability channel computes; a const parameter of the per-block loops.
const BCE_PROBABILITY: u8 = 0;
const BCE_LOGITS: u8 = 1;
const DICE_PROBABILITY: u8 = 2;
const DICE_LOGITS: u8 = 3;

/// The validated parameters the kernel needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) prob_loss: ProbLoss,
    pub(crate) prob_input: ProbInput,
    pub(crate) alpha: f64,
    pub(crate) beta: f64,
    pub(crate) eps: f64,
    pub(crate) bce: BalancedBce,
    /// Most worker threads; 0 for the machine's available parallelism.
    pub(crate) threads: usize,
}

impl Settings {
    fn mode(&self) -> u8 {
        match (self.prob_loss, self.prob_input) {
            (ProbLoss::BalancedBce, ProbInput::Probability) => BCE_PROBABILITY,
            (ProbLoss::BalancedBce, ProbInput::Logits) => BCE_LOGITS,
            (ProbLoss::Dice, ProbInput::Probability) => DICE_PROBABILITY,
            (ProbLoss::Dice, ProbInput::Logits) => DICE_LOGITS,
        }
    }

    /// At most the configured count (0: the machine's available parallelism), with at least
    /// [`MIN_PIXELS_PER_THREAD`] pixels and one block per thread.
    fn threads(&self, pixels: usize, blocks: usize) -> usize {
        let most = if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        most.min(pixels / MIN_PIXELS_PER_THREAD).min(blocks).max(1)
    }
}

/// The three terms and their sum, as the kernel computed them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Values {
    pub(crate) loss_prob: f64,
    pub(crate) loss_db: f64,
    pub(crate) loss_thr: f64,
    pub(crate) loss: f64,
}

/// The five maps, contiguous and in one element type: `preds` `[N, 3, H, W]`, targets `[N, H, W]`.
struct Maps<'a, T> {
    preds: &'a [T],
    gt_shrink: &'a [T],
    gt_shrink_mask: &'a [T],
    gt_thr: &'a [T],
    gt_thr_mask: &'a [T],
    /// `H · W`.
    hw: usize,
}

/// A run of pixels of one image and its part of the gradient in the three channels.
struct Block<'g, T> {
    /// Flat index of the first pixel in the `[N, H, W]` maps.
    pixel: usize,
    /// Flat index of its channel-0 element in `preds` (channel c is `c · H · W` further).
    elem: usize,
    grad: [&'g mut [T]; 3],
}

/// The parts of the maps one block reads, each of the block's length.
struct Views<'a, T> {
    p: &'a [T],
    t: &'a [T],
    b: &'a [T],
    gs: &'a [T],
    ms: &'a [T],
    gt: &'a [T],
    mt: &'a [T],
}

impl<'a, T: Real> Maps<'a, T> {
    fn views(&self, pixel: usize, elem: usize, n: usize) -> Result<Views<'a, T>> {
        let cut = |map: &'a [T], at: usize| {
            map.get(at..at + n).ok_or_else(|| {
                LossError::Backend("fused DBNet kernel: a block outside the maps".into())
            })
        };
        Ok(Views {
            p: cut(self.preds, elem)?,
            t: cut(self.preds, elem + self.hw)?,
            b: cut(self.preds, elem + 2 * self.hw)?,
            gs: cut(self.gt_shrink, pixel)?,
            ms: cut(self.gt_shrink_mask, pixel)?,
            gt: cut(self.gt_thr, pixel)?,
            mt: cut(self.gt_thr_mask, pixel)?,
        })
    }
}

/// The `L` values of `src` from `at`: borrowed when they are all there, else the rest copied
/// into `buf` and padded with `pad`.
#[inline(always)]
fn chunk<'a, T: Real>(src: &'a [T], at: usize, pad: T, buf: &'a mut Lane<T>) -> &'a Lane<T> {
    if let Some(full) = src.get(at..at + L).and_then(|s| <&Lane<T>>::try_from(s).ok()) {
        return full;
    }
    *buf = [pad; L];
    if let Some(rest) = src.get(at..) {
        let n = rest.len().min(L);
        buf[..n].copy_from_slice(&rest[..n]);
    }
    buf
}

/// Writes `f(j)` at `at + j` for the lanes that fall inside `dst`.
#[inline(always)]
fn fill<T: Real>(dst: &mut [T], at: usize, f: impl Fn(usize) -> T) {
    let out = match dst.get_mut(at..at + L) {
        Some(out) => out,
        None => dst.get_mut(at..).unwrap_or_default(),
    };
    for (j, o) in out.iter_mut().enumerate() {
        *o = f(j);
    }
}

/// Padding of a last, short chunk of a block.
#[derive(Clone, Copy)]
struct Pad<T> {
    p: Lane<T>,
    t: Lane<T>,
    b: Lane<T>,
    gs: Lane<T>,
    ms: Lane<T>,
    gt: Lane<T>,
    mt: Lane<T>,
}

/// `L` pixels of the five maps. A short last chunk is padded with pixels that add nothing
/// (masks 0, a valid probability).
struct Pixels<'a, T> {
    p: &'a Lane<T>,
    t: &'a Lane<T>,
    b: &'a Lane<T>,
    gs: &'a Lane<T>,
    m: &'a Lane<T>,
    gt: &'a Lane<T>,
    mt: &'a Lane<T>,
}

impl<'a, T: Real> Pixels<'a, T> {
    #[inline(always)]
    fn get(v: &Views<'a, T>, at: usize, pad: &'a mut Pad<T>) -> Self {
        let zero = T::ZERO;
        Pixels {
            p: chunk(v.p, at, T::c(0.5), &mut pad.p),
            t: chunk(v.t, at, zero, &mut pad.t),
            b: chunk(v.b, at, zero, &mut pad.b),
            gs: chunk(v.gs, at, zero, &mut pad.gs),
            m: chunk(v.ms, at, zero, &mut pad.ms),
            gt: chunk(v.gt, at, zero, &mut pad.gt),
            mt: chunk(v.mt, at, zero, &mut pad.mt),
        }
    }
}

/// The probability channel's element term and its derivative with respect to the channel:
/// `(ℓ, ℓ')` of the BCE for the BCE modes, `(p, ∂p/∂x)` (the probability, and 1 or `σ'`) for
/// the Dice modes. `gf` is the binarised `gt_shrink`, 1 on text and 0 elsewhere.
///
/// Every choice below is a select between values computed on both sides, so that the
/// compiler turns it into vector blends rather than branches.
#[inline(always)]
fn prob_lanes<T: Real, const MODE: u8>(x: &Lane<T>, gf: &Lane<T>) -> (Lane<T>, Lane<T>) {
    let (zero, one) = (T::ZERO, T::ONE);
    match MODE {
        BCE_PROBABILITY => {
            // ℓ = −max(ln q, −100) with q the probability of the target class; the gradient
            // vanishes where the logarithm is clamped (q = 0 included), as in the generic path.
            let clamp = T::c(LOG_CLAMP);
            let q: Lane<T> = lanes(|j| {
                let (on, off) = (x[j], one - x[j]);
                if gf[j] != zero {
                    on
                } else {
                    off
                }
            });
            let lq = T::ln_lanes(&q);
            let l = lanes(|j| {
                let v = -lq[j];
                if lq[j] >= -clamp {
                    v
                } else {
                    clamp
                }
            });
            let dl = lanes(|j| {
                let inv = one / q[j];
                let d = if gf[j] != zero { -inv } else { inv };
                if lq[j] >= -clamp {
                    d
                } else {
                    zero
                }
            });
            (l, dl)
        }
        _ => {
            // e^{−|z|} gives σ(z), σ(−z) and sp(±z) = max(±z, 0) + ln(1 + e^{−|z|}) without
            // overflow, and without the cancellation of 1 − σ.
            let e = T::exp_lanes(&lanes(|j| -x[j].abs()));
            let r: Lane<T> = lanes(|j| one / (one + e[j]));
            let er: Lane<T> = lanes(|j| e[j] * r[j]);
            let sig: Lane<T> = lanes(|j| if x[j] >= zero { r[j] } else { er[j] });
            if MODE == BCE_LOGITS {
                let lp = T::ln_1p_lanes(&e);
                let l = lanes(|j| {
                    let (on, off) = (-x[j], x[j]);
                    let z = if gf[j] != zero { on } else { off };
                    let (big, small) = (z + lp[j], lp[j]);
                    if z > zero {
                        big
                    } else {
                        small
                    }
                });
                let dl = lanes(|j| {
                    // σ(−z) = e·r for z ≥ 0, r below.
                    let sig_neg = if x[j] >= zero { er[j] } else { r[j] };
                    if gf[j] != zero {
                        -sig_neg
                    } else {
                        sig[j]
                    }
                });
                (l, dl)
            } else if MODE == DICE_LOGITS {
                // σ'(z) = σ(z)·σ(−z) = e / (1 + e)² on either side.
                (sig, lanes(|j| er[j] * r[j]))
            } else {
                (*x, [one; L])
            }
        }
    }
}

/// `sign(x)`, 0 at 0 (the gradient of `|x|`, as PyTorch's).
#[inline(always)]
fn sign<T: Real>(x: T) -> T {
    let up = if x > T::ZERO { T::ONE } else { T::ZERO };
    let down = if x < T::ZERO { T::ONE } else { T::ZERO };
    up - down
}

/// 1 where `gt_shrink > 0` (text), else 0.
#[inline(always)]
fn text<T: Real>(gs: &Lane<T>) -> Lane<T> {
    lanes(|j| if gs[j] > T::ZERO { T::ONE } else { T::ZERO })
}

/// The sums of pass 1 over one block.
#[derive(Debug, Default, Clone, Copy)]
struct Partial {
    /// `Σ g'`, `g' = g·m`: the positive mass of the BCE and a Dice sum of both maps.
    g_sum: f64,
    /// `Σ (1 − g)·m` and `Σ ℓ·g·m` (balanced BCE).
    neg: f64,
    pos_loss: f64,
    /// Dice sums of the probability map (Dice modes): `Σ p'·g'`, `Σ p'`.
    p_inter: f64,
    p_sum: f64,
    /// Dice sums of the binary map.
    b_inter: f64,
    b_sum: f64,
    /// `Σ |T − g_t|·m_t` and `Σ m_t`.
    l1: f64,
    thr_mask: f64,
    /// Negatives in the pool (`neg ≠ 0`), each counted in the histogram.
    counted: u64,
    /// The first probability outside `[0, 1]`: offset in the block and value.
    bad: Option<(usize, f64)>,
}

impl Partial {
    fn add(&mut self, o: &Partial) {
        self.g_sum += o.g_sum;
        self.neg += o.neg;
        self.pos_loss += o.pos_loss;
        self.p_inter += o.p_inter;
        self.p_sum += o.p_sum;
        self.b_inter += o.b_inter;
        self.b_sum += o.b_sum;
        self.l1 += o.l1;
        self.thr_mask += o.thr_mask;
        self.counted += o.counted;
    }
}

/// Accumulator lanes of a sum: each chunk's `L` values are folded pairwise into `W` partial
/// sums (in the element type: a few roundings of f32 at most), which are added here in f64.
const W: usize = 8;
const _: () = assert!(L == 8 * W, "fold halves L three times");

/// Per-lane f64 accumulators, added up in lane order at the end of a block.
#[derive(Default)]
struct Sums {
    g_sum: [f64; W],
    neg: [f64; W],
    pos_loss: [f64; W],
    p_inter: [f64; W],
    p_sum: [f64; W],
    b_inter: [f64; W],
    b_sum: [f64; W],
    l1: [f64; W],
    thr_mask: [f64; W],
}

/// Adds the `L` values of `x` to `acc`: pairwise in `T` down to `W` values, then in f64.
#[inline(always)]
fn add<T: Real>(acc: &mut [f64; W], x: &Lane<T>) {
    let mut a = [T::ZERO; 4 * W];
    for (j, v) in a.iter_mut().enumerate() {
        *v = x[j] + x[j + 4 * W];
    }
    let mut b = [T::ZERO; 2 * W];
    for (j, v) in b.iter_mut().enumerate() {
        *v = a[j] + a[j + 2 * W];
    }
    for (j, v) in acc.iter_mut().enumerate() {
        *v += (b[j] + b[j + W]).to_f64();
    }
}

fn total(lanes: &[f64; W]) -> f64 {
    lanes.iter().sum()
}

/// One thread's histogram of mined losses: `counts[key >> shift]`.
struct Histogram {
    counts: Vec<u32>,
    shift: u32,
}

/// Pass 1 over one block: the sums, the probability check and the histogram of mined losses.
/// Reads the maps only.
#[inline(always)]
fn read_block_impl<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &Block<'_, T>,
    hist: &mut Histogram,
) -> Result<Partial> {
    let n = block.grad[0].len();
    let v = maps.views(block.pixel, block.elem, n)?;
    let mining = matches!(MODE, BCE_PROBABILITY | BCE_LOGITS);
    let (zero, one) = (T::ZERO, T::ONE);

    let mut s = Sums::default();
    let mut counted = 0u64;
    let mut bad = false;
    let mut pad = Pad {
        p: [zero; L],
        t: [zero; L],
        b: [zero; L],
        gs: [zero; L],
        ms: [zero; L],
        gt: [zero; L],
        mt: [zero; L],
    };
    for at in (0..n).step_by(L) {
        let px = Pixels::get(&v, at, &mut pad);
        let m = px.m;
        // g' = g·m with g ∈ {0, 1}, as the generic path multiplies.
        let gf = text(px.gs);
        let gm: Lane<T> = lanes(|j| gf[j] * m[j]);
        add(&mut s.g_sum, &gm);

        // Dice of the binary map: p' = b·m.
        let bm: Lane<T> = lanes(|j| px.b[j] * m[j]);
        add(&mut s.b_sum, &bm);
        add(&mut s.b_inter, &lanes(|j| bm[j] * gm[j]));

        // Masked L1 of the threshold map.
        add(&mut s.l1, &lanes(|j| (px.t[j] - px.gt[j]).abs() * px.mt[j]));
        add(&mut s.thr_mask, px.mt);

        let (x, _) = prob_lanes::<T, MODE>(px.p, &gf);
        if mining {
            if MODE == BCE_PROBABILITY {
                let mut out = 0u32;
                for &p in px.p {
                    out |= u32::from(p < zero) | u32::from(p > one) | u32::from(p.is_nan());
                }
                bad |= out != 0;
            }
            let lm: Lane<T> = lanes(|j| x[j] * m[j]);
            add(&mut s.neg, &lanes(|j| m[j] - gm[j]));
            add(&mut s.pos_loss, &lanes(|j| lm[j] * gf[j]));
            // The mined loss v = ℓ·(1 − g)·m, counted for the negatives of the pool
            // (g = 0, m ≠ 0). Every pixel adds to some bucket (0 outside the pool), which keeps
            // the loop free of branches; `+ 0` turns −0 into +0, so that equal losses compare
            // equal under total_cmp.
            let pooled: [u32; L] = lanes(|j| u32::from(gf[j] == zero) & u32::from(m[j] != zero));
            let shift = hist.shift;
            let slot: [u32; L] = lanes(|j| (lm[j] + zero).key() >> shift);
            for j in 0..L {
                if let Some(h) = hist.counts.get_mut(slot[j] as usize) {
                    *h += pooled[j];
                }
            }
            counted += pooled.iter().map(|&c| u64::from(c)).sum::<u64>();
        } else {
            let pm: Lane<T> = lanes(|j| x[j] * m[j]);
            add(&mut s.p_sum, &pm);
            add(&mut s.p_inter, &lanes(|j| pm[j] * gm[j]));
        }
    }

    // The first probability outside [0, 1], found again only when there is one.
    let first_bad = if bad {
        v.p.iter().position(|&p| p < zero || p > one || p.is_nan()).map(|i| (i, v.p[i].to_f64()))
    } else {
        None
    };
    Ok(Partial {
        g_sum: total(&s.g_sum),
        neg: total(&s.neg),
        pos_loss: total(&s.pos_loss),
        p_inter: total(&s.p_inter),
        p_sum: total(&s.p_sum),
        b_inter: total(&s.b_inter),
        b_sum: total(&s.b_sum),
        l1: total(&s.l1),
        thr_mask: total(&s.thr_mask),
        counted,
        bad: first_bad,
    })
}

/// The global factors of pass 3.
#[derive(Debug, Clone, Copy)]
struct Scales {
    /// `alpha / (n⁺ + k + eps)`, or 0 when nothing is selected.
    bce: f64,
    /// The bucket of the k-th largest mined loss, plus 1; [`NO_KEY`] when nothing is mined.
    kth: u32,
    /// Keys are shifted right by this many bits to give the bucket.
    shift: u32,
    /// Dice gradients `m · (a − c·m·g)` of the probability map (times alpha) and the binary map.
    p_dice: (f64, f64),
    b_dice: (f64, f64),
    /// `beta / (Σ m_t + eps)`.
    thr: f64,
}

/// A negative in the k-th bucket: offset in its block, mined loss, gradient weight `ℓ'·m`.
type Candidate<T> = (u32, T, T);

/// Pass 3 over one block: the gradient, from the maps and the global factors. Returns the sum
/// of the mined losses above the k-th bucket and the negatives inside it (their gradient is
/// left at 0 until the bucket is settled).
#[inline(always)]
fn write_block_impl<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &mut Block<'_, T>,
    s: &Scales,
) -> Result<(f64, Vec<Candidate<T>>)> {
    let n = block.grad[0].len();
    let v = maps.views(block.pixel, block.elem, n)?;
    let [g0, g1, g2] = &mut block.grad;
    let zero = T::ZERO;
    let (c, thr) = (T::c(s.bce), T::c(s.thr));
    let (pa, pc) = (T::c(s.p_dice.0), T::c(s.p_dice.1));
    let (ba, bc) = (T::c(s.b_dice.0), T::c(s.b_dice.1));
    // Keys are bucket + 1, and 0 outside the pool, which is thus never taken.
    let (kth, shift) = (s.kth, s.shift);

    let mut above = [0.0; W];
    let mut candidates = Vec::new();
    let mut pad = Pad {
        p: [zero; L],
        t: [zero; L],
        b: [zero; L],
        gs: [zero; L],
        ms: [zero; L],
        gt: [zero; L],
        mt: [zero; L],
    };
    for at in (0..n).step_by(L) {
        let px = Pixels::get(&v, at, &mut pad);
        let m = px.m;
        let gf = text(px.gs);
        let (x, dx) = prob_lanes::<T, MODE>(px.p, &gf);

        if matches!(MODE, BCE_PROBABILITY | BCE_LOGITS) {
            let w: Lane<T> = lanes(|j| dx[j] * m[j]);
            let mined: Lane<T> = lanes(|j| x[j] * m[j] + zero);
            let pooled: [u32; L] = lanes(|j| u32::from(gf[j] == zero) & u32::from(m[j] != zero));
            let key: [u32; L] = lanes(|j| pooled[j] * ((mined[j].key() >> shift) + 1));
            add(&mut above, &lanes(|j| if key[j] > kth { mined[j] } else { zero }));
            let mut hits = 0u32;
            for &k in &key {
                hits |= u32::from(k == kth);
            }
            if hits != 0 {
                for j in 0..L {
                    if key[j] == kth && at + j < n {
                        // Blocks hold at most BLOCK pixels, so the offset fits.
                        candidates.push(((at + j) as u32, mined[j], w[j]));
                    }
                }
            }
            fill(g0, at, |j| {
                let (on, off) = (c * w[j], zero);
                if (gf[j] != zero) | (key[j] > kth) {
                    on
                } else {
                    off
                }
            });
        } else {
            fill(g0, at, |j| m[j] * (pa - pc * gf[j] * m[j]) * dx[j]);
        }
        fill(g1, at, |j| sign(px.t[j] - px.gt[j]) * px.mt[j] * thr);
        fill(g2, at, |j| m[j] * (ba - bc * gf[j] * m[j]));
    }
    Ok((total(&above), candidates))
}

/// Pass 1 over one block ([`read_block_impl`]), compiled for `simd`. Every set gives the same
/// bits: the loops use no fused multiply-add, so each operation rounds as in the baseline build;
/// wider sets only process more pixels per instruction.
fn read_block<T: Real, const MODE: u8>(
    simd: Simd,
    maps: &Maps<'_, T>,
    block: &Block<'_, T>,
    hist: &mut Histogram,
) -> Result<Partial> {
    match simd {
        // SAFETY (both arms): `simd` comes from `Simd::available`/`Simd::detect`, which found
        // the set's features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { read_block_avx512::<T, MODE>(maps, block, hist) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { read_block_avx2::<T, MODE>(maps, block, hist) },
        _ => read_block_impl::<T, MODE>(maps, block, hist),
    }
}

/// [`read_block_impl`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_block_avx2<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &Block<'_, T>,
    hist: &mut Histogram,
) -> Result<Partial> {
    read_block_impl::<T, MODE>(maps, block, hist)
}

/// [`read_block_impl`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, VL, DQ and BW, and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2")]
unsafe fn read_block_avx512<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &Block<'_, T>,
    hist: &mut Histogram,
) -> Result<Partial> {
    read_block_impl::<T, MODE>(maps, block, hist)
}

/// Pass 3 over one block ([`write_block_impl`]), compiled for `simd` (same bits for every set).
fn write_block<T: Real, const MODE: u8>(
    simd: Simd,
    maps: &Maps<'_, T>,
    block: &mut Block<'_, T>,
    s: &Scales,
) -> Result<(f64, Vec<Candidate<T>>)> {
    match simd {
        // SAFETY (both arms): as in `read_block`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { write_block_avx512::<T, MODE>(maps, block, s) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { write_block_avx2::<T, MODE>(maps, block, s) },
        _ => write_block_impl::<T, MODE>(maps, block, s),
    }
}

/// [`write_block_impl`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn write_block_avx2<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &mut Block<'_, T>,
    s: &Scales,
) -> Result<(f64, Vec<Candidate<T>>)> {
    write_block_impl::<T, MODE>(maps, block, s)
}

/// [`write_block_impl`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, VL, DQ and BW, and AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2")]
unsafe fn write_block_avx512<T: Real, const MODE: u8>(
    maps: &Maps<'_, T>,
    block: &mut Block<'_, T>,
    s: &Scales,
) -> Result<(f64, Vec<Candidate<T>>)> {
    write_block_impl::<T, MODE>(maps, block, s)
}

/// Runs `work` on every block on `threads` threads, each with its own `state`, and returns the
/// results in block order and the states. Threads take the next unclaimed block as they go
/// (a shared counter), so a thread that the system holds back does not hold up the others;
/// which thread ran a block changes nothing but the state it counted into.
fn run_blocks<T, S, R, F>(
    blocks: &mut [Block<'_, T>],
    threads: usize,
    state: impl Fn() -> S + Sync,
    work: F,
) -> Result<(Vec<R>, Vec<S>)>
where
    T: Real,
    S: Send,
    R: Send,
    F: Fn(&mut S, &mut Block<'_, T>) -> R + Sync,
{
    if threads <= 1 || blocks.len() <= 1 {
        let mut s = state();
        let results = blocks.iter_mut().map(|b| work(&mut s, b)).collect();
        return Ok((results, vec![s]));
    }

    let count = blocks.len();
    let cells: Vec<Mutex<&mut Block<'_, T>>> = blocks.iter_mut().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let worker = || -> Result<(Vec<(usize, R)>, S)> {
        let mut s = state();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, AtomicOrdering::Relaxed);
            let Some(cell) = cells.get(i) else { break };
            let mut block = cell.lock().map_err(|_| poisoned())?;
            done.push((i, work(&mut s, &mut block)));
        }
        Ok((done, s))
    };
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads).map(|_| scope.spawn(worker)).collect();
        let mut parts = vec![worker()];
        for handle in handles {
            parts.push(handle.join().map_err(|_| poisoned()).and_then(|part| part));
        }
        parts
    });

    let mut slots: Vec<Option<R>> = std::iter::repeat_with(|| None).take(count).collect();
    let mut states = Vec::with_capacity(threads);
    for part in parts {
        let (done, s) = part?;
        for (i, r) in done {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(r);
            }
        }
        states.push(s);
    }
    let results = slots.into_iter().collect::<Option<Vec<R>>>().ok_or_else(poisoned)?;
    Ok((results, states))
}

/// The error of a worker thread that panicked (a bug: nothing in the kernel panics by design).
fn poisoned() -> LossError {
    LossError::Backend("fused DBNet kernel: a worker thread panicked".into())
}

/// The value and gradient of the DBNet loss. `preds` `[n, 3, h, w]`, targets `[n, h, w]`,
/// `grad` like `preds` (fully overwritten).
fn compute<T: Real>(
    simd: Simd,
    settings: &Settings,
    maps: &Maps<'_, T>,
    (n, h, w): (usize, usize, usize),
    grad: &mut [T],
) -> Result<Values> {
    let hw = maps.hw;
    let pixels = n * hw;
    let lengths = [maps.gt_shrink, maps.gt_shrink_mask, maps.gt_thr, maps.gt_thr_mask];
    if maps.preds.len() != 3 * pixels
        || grad.len() != 3 * pixels
        || lengths.iter().any(|t| t.len() != pixels)
    {
        return Err(LossError::Backend("fused DBNet kernel: inconsistent map lengths".into()));
    }

    let mut blocks: Vec<Block<'_, T>> = Vec::with_capacity(n * hw.div_ceil(BLOCK));
    if hw > 0 {
        for (image, chans) in grad.chunks_exact_mut(3 * hw).enumerate() {
            let (c0, rest) = chans.split_at_mut(hw);
            let (c1, c2) = rest.split_at_mut(hw);
            let runs = c0.chunks_mut(BLOCK).zip(c1.chunks_mut(BLOCK)).zip(c2.chunks_mut(BLOCK));
            for (j, ((a, b), c)) in runs.enumerate() {
                let offset = j * BLOCK;
                blocks.push(Block {
                    pixel: image * hw + offset,
                    elem: image * 3 * hw + offset,
                    grad: [a, b, c],
                });
            }
        }
    }
    let threads = settings.threads(pixels, blocks.len());
    let mode = settings.mode();
    let mining = matches!(mode, BCE_PROBABILITY | BCE_LOGITS);

    // Pass 1.
    // Buckets: about one per 16 pixels, between 2⁸ and 2¹⁶.
    let bits = (usize::BITS - pixels.leading_zeros()).saturating_sub(4);
    let bits = bits.clamp(MIN_BUCKET_BITS, MAX_BUCKET_BITS);
    let shift = 32 - bits;
    let buckets = 1usize << bits;
    let (partials, hists) = run_blocks(
        &mut blocks,
        threads,
        || Histogram { counts: vec![0; if mining { buckets } else { 0 }], shift },
        |hist, block| match mode {
            BCE_PROBABILITY => read_block::<T, BCE_PROBABILITY>(simd, maps, block, hist),
            BCE_LOGITS => read_block::<T, BCE_LOGITS>(simd, maps, block, hist),
            DICE_PROBABILITY => read_block::<T, DICE_PROBABILITY>(simd, maps, block, hist),
            _ => read_block::<T, DICE_LOGITS>(simd, maps, block, hist),
        },
    )?;
    let mut sum = Partial::default();
    for (block, part) in blocks.iter().zip(partials) {
        let part = part?;
        if let Some((offset, value)) = part.bad {
            return Err(bad_probability(block.pixel + offset, value, (n, h, w)));
        }
        sum.add(&part);
    }

    // Pass 2: the bucket of the k-th largest mined loss.
    let (n_pos, k) = settings.bce.counts(sum.g_sum, sum.neg, pixels);
    let selecting = mining && n_pos + k > 0;
    let mut kth = None;
    if selecting && k > 0 {
        let mut merged = vec![0u64; buckets];
        for hist in &hists {
            for (m, &h) in merged.iter_mut().zip(&hist.counts) {
                *m += u64::from(h);
            }
        }
        // Elements outside the pool have mined loss 0.
        if let Some(zero) = merged.get_mut((0f32.key() >> shift) as usize) {
            *zero += (pixels as u64).saturating_sub(sum.counted);
        }
        let mut above = 0u64;
        for (bucket, &count) in merged.iter().enumerate().rev() {
            if above + count >= k as u64 {
                kth = Some((bucket as u32, above));
                break;
            }
            above += count;
        }
    }

    // Pass 3.
    let dice = |inter: f64, p_sum: f64, scale: f64| {
        let denom = p_sum + sum.g_sum + settings.eps;
        let value = 1.0 - 2.0 * inter / denom;
        // ∂/∂p of 1 − 2 Σ p'g' / (Σ p' + Σ g' + eps), with p' = p·m: m · (2I/D² − 2 m g / D).
        (value, (scale * 2.0 * inter / (denom * denom), scale * 2.0 / denom))
    };
    let (b_value, b_dice) = dice(sum.b_inter, sum.b_sum, 1.0);
    let (p_value, p_dice) = dice(sum.p_inter, sum.p_sum, settings.alpha);
    let denom = n_pos as f64 + k as f64 + settings.eps;
    let scales = Scales {
        bce: if selecting { settings.alpha / denom } else { 0.0 },
        kth: kth.map_or(NO_KEY, |(bucket, _)| bucket + 1),
        shift,
        p_dice,
        b_dice,
        thr: settings.beta / (sum.thr_mask + settings.eps),
    };
    let (written, _) = run_blocks(
        &mut blocks,
        threads,
        || (),
        |_, block| match mode {
            BCE_PROBABILITY => write_block::<T, BCE_PROBABILITY>(simd, maps, block, &scales),
            BCE_LOGITS => write_block::<T, BCE_LOGITS>(simd, maps, block, &scales),
            DICE_PROBABILITY => write_block::<T, DICE_PROBABILITY>(simd, maps, block, &scales),
            _ => write_block::<T, DICE_LOGITS>(simd, maps, block, &scales),
        },
    )?;
    let written = written.into_iter().collect::<Result<Vec<_>>>()?;

    // Pass 4: settle the k-th bucket.
    let mut mined = 0.0;
    if selecting && k > 0 && kth.is_none() {
        return Err(LossError::Backend("fused DBNet kernel: the histogram lost elements".into()));
    }
    if let Some((_, above)) = kth {
        mined = written.iter().map(|(a, _)| a).sum::<f64>();
        mined += settle(&mut blocks, &written, k as u64 - above, scales.bce)?;
    }

    let prob = match mode {
        BCE_PROBABILITY | BCE_LOGITS if selecting => (sum.pos_loss + mined) / denom,
        BCE_PROBABILITY | BCE_LOGITS => 0.0,
        _ => p_value,
    };
    let loss_prob = prob * settings.alpha;
    let loss_thr = sum.l1 / (sum.thr_mask + settings.eps) * settings.beta;
    Ok(Values { loss_prob, loss_db: b_value, loss_thr, loss: loss_prob + b_value + loss_thr })
}

/// Takes the `r` largest of the k-th bucket's candidates (and, in the bucket of 0, the elements
/// outside the pool), writes their gradient `scale · ℓ'·m`, and returns their sum.
///
/// `r ≥ 1` is the number of places left for the bucket. The sum is
/// `Σ(v > kth) + (r − count_greater)·kth`, and the ties taken are the first in block order.
fn settle<T: Real>(
    blocks: &mut [Block<'_, T>],
    written: &[(f64, Vec<Candidate<T>>)],
    wanted: u64,
    scale: f64,
) -> Result<f64> {
    let mut values: Vec<T> =
        written.iter().flat_map(|(_, c)| c.iter().map(|&(_, v, _)| v)).collect();
    let r = usize::try_from(wanted).map_err(|e| LossError::Backend(e.to_string()))?;
    if r == 0 {
        return Ok(0.0);
    }
    let kth = if r <= values.len() {
        let (_, kth, _) = values.select_nth_unstable_by(r - 1, |a, b| b.total_cmp(a));
        *kth
    } else {
        // Only in the bucket of 0: the remaining places go to elements outside the pool.
        T::ZERO
    };
    drop(values);

    let greater: u64 = written
        .iter()
        .flat_map(|(_, c)| c)
        .filter(|(_, v, _)| v.total_cmp(&kth) == Ordering::Greater)
        .count() as u64;
    let mut ties_left = wanted.saturating_sub(greater);
    let mut sum = ties_left as f64 * kth.to_f64();
    let c = T::c(scale);
    for (block, (_, candidates)) in blocks.iter_mut().zip(written) {
        for &(offset, v, w) in candidates {
            let take = match v.total_cmp(&kth) {
                Ordering::Greater => {
                    sum += v.to_f64();
                    true
                }
                Ordering::Equal if ties_left > 0 => {
                    ties_left -= 1;
                    true
                }
                _ => false,
            };
            if take {
                if let Some(slot) = block.grad[0].get_mut(offset as usize) {
                    *slot = c * w;
                }
            }
        }
    }
    Ok(sum)
}

/// The error of the generic path for a probability outside `[0, 1]`, by its index in `preds`.
fn bad_probability(pixel: usize, value: f64, (n, h, w): (usize, usize, usize)) -> LossError {
    let mut index = unravel_index(pixel, &[n, h, w]);
    index.insert(1, 0);
    LossError::InvalidValue {
        what: "preds".into(),
        index,
        value,
        reason: "channel 0 holds probabilities, which must lie in [0, 1] (use prob_input = \
                 \"logits\" for logits)"
            .into(),
    }
}

/// One target's values as a slice of `T`: borrowed when the backend lends them in that type,
/// else copied.
fn host_map<'a, T: Real, B: Backend>(map: &'a B) -> Result<Cow<'a, [T]>> {
    if let Some(values) = map.host_data().and_then(T::host) {
        return Ok(Cow::Borrowed(values));
    }
    Ok(Cow::Owned(map.to_vec_f64()?.into_iter().map(T::c).collect()))
}

/// The DBNet loss through [`Backend::fused_scalar`]: `Ok(None)` when the backend declines.
///
/// `preds` is `[N, 3, H, W]` in the compute type; the targets are `[N, H, W]`, already rescaled
/// and in `preds`' type (`gt_shrink` not yet binarised). The terms are detached constants; the
/// gradient flows through the total.
pub(crate) fn forward<B: Backend>(
    settings: &Settings,
    preds: &B,
    targets: [&B; 4],
) -> Result<Option<LossOutput<B>>> {
    // The kernel's gradient is for `preds` alone: targets that need one take the generic path.
    if targets.iter().any(|t| t.requires_grad()) {
        return Ok(None);
    }
    match preds.host_data() {
        None => Ok(None),
        Some(HostData::F32(_)) => forward_in::<f32, B>(settings, preds, targets),
        Some(HostData::F64(_)) => forward_in::<f64, B>(settings, preds, targets),
    }
}

fn forward_in<T: Real, B: Backend>(
    settings: &Settings,
    preds: &B,
    targets: [&B; 4],
) -> Result<Option<LossOutput<B>>> {
    let shape = preds.shape();
    let [n, _, h, w] = shape[..] else { return Ok(None) };
    let hw = h * w;
    if n.saturating_mul(hw) >= u32::MAX as usize {
        // The per-thread histograms count in u32.
        return Ok(None);
    }
    let [gs, gsm, gt, gtm] = targets;
    let (gs, gsm, gt, gtm) = (host_map(gs)?, host_map(gsm)?, host_map(gt)?, host_map(gtm)?);

    let mut values = None;
    let loss = {
        let mut kernel = |data: HostData<'_>, grad: HostDataMut<'_>| -> Result<f64> {
            let (Some(data), Some(grad)) = (T::host(data), T::host_mut(grad)) else {
                return Err(LossError::Backend(
                    "fused DBNet kernel: the gradient buffer has another element type".into(),
                ));
            };
            let maps = Maps {
                preds: data,
                gt_shrink: &gs,
                gt_shrink_mask: &gsm,
                gt_thr: &gt,
                gt_thr_mask: &gtm,
                hw,
            };
            let v = compute(Simd::detect(), settings, &maps, (n, h, w), grad)?;
            values = Some(v);
            Ok(v.loss)
        };
        preds.fused_scalar(&mut kernel)?
    };
    let (Some(loss), Some(v)) = (loss, values) else { return Ok(None) };
    let terms = vec![
        ("loss_prob", preds.scalar_like(v.loss_prob)?),
        ("loss_db", preds.scalar_like(v.loss_db)?),
        ("loss_thr", preds.scalar_like(v.loss_thr)?),
    ];
    Ok(Some(LossOutput { loss, terms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loss_core::sample::uniforms;

    #[test]
    fn keys_follow_total_order() {
        let values = [
            f32::NEG_INFINITY,
            -3.0,
            -1e-40,
            -0.0,
            0.0,
            1e-45,
            0.5,
            100.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for pair in values.windows(2) {
            assert!(pair[0].key() < pair[1].key(), "{pair:?}");
        }
        // f64 keys go through f32: monotone, not strictly.
        assert!(0.1f64.key() <= (0.1f64 + 1e-17).key());
        assert!((-2.0f64).key() < 2.0f64.key());
    }

    #[test]
    fn threads_are_capped_by_the_work() {
        let settings = |threads| Settings {
            prob_loss: ProbLoss::BalancedBce,
            prob_input: ProbInput::Probability,
            alpha: 1.0,
            beta: 1.0,
            eps: 1e-6,
            bce: crate::BalancedBceConfig::new().init().expect("the defaults are valid"),
            threads,
        };

        assert_eq!(settings(8).threads(1000, 1), 1);
        assert_eq!(settings(8).threads(4 * MIN_PIXELS_PER_THREAD, 64), 4);
        assert_eq!(settings(2).threads(100 * MIN_PIXELS_PER_THREAD, 400), 2);
        assert_eq!(settings(8).threads(100 * MIN_PIXELS_PER_THREAD, 3), 3);
        assert!(settings(0).threads(1 << 30, 1 << 20) >= 1);
    }

    /// Value and gradient bits under every instruction set of this CPU, for `T`, every mode.
    fn sets_give_the_same_bits<T: Real>() {
        let (n, h, w) = (2, 37, 53);
        let p = n * h * w;
        let map = |seed, f: &dyn Fn(f64) -> f64| -> Vec<T> {
            uniforms(seed, p).into_iter().map(|u| T::c(f(u))).collect()
        };
        let (gs, gsm) = (map(2, &|u| f64::from(u8::from(u < 0.15))), map(3, &|u| u.round()));
        let (gt, gtm) = (map(4, &|u| u), map(5, &|u| f64::from(u8::from(u < 0.4))));
        for (prob_loss, prob_input) in [
            (ProbLoss::BalancedBce, ProbInput::Probability),
            (ProbLoss::BalancedBce, ProbInput::Logits),
            (ProbLoss::Dice, ProbInput::Probability),
            (ProbLoss::Dice, ProbInput::Logits),
        ] {
            let preds: Vec<T> = match prob_input {
                ProbInput::Probability => {
                    uniforms(1, 3 * p).into_iter().map(|u| T::c(0.001 + 0.998 * u)).collect()
                }
                ProbInput::Logits => {
                    uniforms(1, 3 * p).into_iter().map(|u| T::c(30.0 * u - 15.0)).collect()
                }
            };
            let maps = Maps {
                preds: &preds,
                gt_shrink: &gs,
                gt_shrink_mask: &gsm,
                gt_thr: &gt,
                gt_thr_mask: &gtm,
                hw: h * w,
            };
            let settings = Settings {
                prob_loss,
                prob_input,
                alpha: 5.0,
                beta: 10.0,
                eps: 1e-6,
                bce: crate::BalancedBceConfig::new().init().expect("the defaults are valid"),
                threads: 1,
            };
            let mut runs = Simd::available().into_iter().map(|simd| {
                let mut grad = vec![T::c(f64::NAN); 3 * p];
                let v = compute(simd, &settings, &maps, (n, h, w), &mut grad).unwrap();
                (simd, v, grad.iter().map(|g| g.to_f64().to_bits()).collect::<Vec<_>>())
            });
            let (_, want, want_grad) = runs.next().expect("the baseline always runs");
            for (simd, v, grad) in runs {
                let what = format!("{prob_loss:?} {prob_input:?} {simd:?}");
                assert_eq!(v.loss.to_bits(), want.loss.to_bits(), "{what}: loss");
                assert_eq!(v.loss_prob.to_bits(), want.loss_prob.to_bits(), "{what}");
                assert!(grad == want_grad, "{what}: gradient bits");
            }
        }
    }

    #[test]
    fn instruction_sets_give_the_same_bits() {
        sets_give_the_same_bits::<f32>();
        sets_give_the_same_bits::<f64>();
    }
}
