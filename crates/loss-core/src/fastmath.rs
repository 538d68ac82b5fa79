//! Branch-free elementary functions for the fused kernels of the loss crates, in f32 and f64:
//! plain arithmetic, bit tricks and selects, so that a loop calling them vectorises (libm's
//! scalar calls do not). Shared by `loss-multilabel` and `loss-dbnet`.
//!
//! Each is accurate to a few units in the last place of its type, far inside the tolerances the
//! kernels are held to (relative 1e-9 in f64, 1e-5 in f32). They cover only the ranges the
//! kernels use: `exp` of non-positive arguments ([`exp_nonpositive`]), `ln(1 + e)` for `e` in
//! `[0, 1]` ([`softplus_parts`]), the sigmoid ([`sigmoid`]), and `ln` of non-negative f32
//! ([`ln_f32`]).
//!
//! Whether `a · b + c` rounds once or twice is a type parameter ([`MulAdd`]: [`Fused`] only in
//! code compiled with the `fma` target feature, [`Separate`] elsewhere), so one kernel body
//! serves the baseline and the FMA build.
//!
//! ```
//! use loss_core::fastmath::{exp_nonpositive, ln_f32, sigmoid, Separate};
//!
//! assert!((exp_nonpositive::<f64, Separate>(-1.5) - (-1.5f64).exp()).abs() < 1e-15);
//! assert!((sigmoid::<f32, Separate>(2.0) - 0.880_797).abs() < 1e-6);
//! assert_eq!(ln_f32(1.0), 0.0);
//! ```

use std::ops::{Add, Div, Mul, Neg, Sub};

/// How `a · b + c` is evaluated: with one rounding where the target has fused multiply-add,
/// with two where it has not (a software `fma` call would be far slower than either).
pub trait MulAdd: Copy {
    /// `a · b + c`.
    fn mul_add<L: Lane>(a: L, b: L, c: L) -> L;
}

/// `a · b + c` with two roundings, for targets without FMA.
#[derive(Debug, Clone, Copy)]
pub struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add<L: Lane>(a: L, b: L, c: L) -> L {
        a * b + c
    }
}

/// `a · b + c` with one rounding; only for code compiled with the `fma` target feature.
#[derive(Debug, Clone, Copy)]
pub struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add<L: Lane>(a: L, b: L, c: L) -> L {
        L::fused_mul_add(a, b, c)
    }
}

/// The element type a kernel computes in: f32 for f32 data, f64 for f64 data.
pub trait Lane:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Send
    + Sync
    + std::fmt::Debug
{
    /// The largest finite value.
    const MAX: Self;
    /// A constant of this type (rounded; folded at compile time).
    fn c(v: f64) -> Self;
    /// The value as f64 (exact).
    fn to_f64(self) -> f64;
    /// `|x|`.
    fn abs(self) -> Self;
    /// `a · b + c` with one rounding.
    fn fused_mul_add(a: Self, b: Self, c: Self) -> Self;
    /// `e^t` for `t ≤ 0` (see [`exp_nonpositive`]).
    fn exp_nonpositive<M: MulAdd>(t: Self) -> Self;
    /// `2 · atanh(s) / s` as a polynomial in `s² ≤ 0.0295`, to this type's precision.
    fn atanh_ratio<M: MulAdd>(s2: Self) -> Self;

    /// `max(x, 0)`, one instruction (NaN gives 0; the kernels' NaN flows through another term).
    #[inline(always)]
    fn positive_part(self) -> Self {
        if self > Self::c(0.0) {
            self
        } else {
            Self::c(0.0)
        }
    }
}

const LOG2_E: f64 = std::f64::consts::LOG2_E;

impl Lane for f64 {
    const MAX: Self = f64::MAX;

    #[inline(always)]
    fn c(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn fused_mul_add(a: Self, b: Self, c: Self) -> Self {
        a.mul_add(b, c)
    }

    /// Up to `s^20`: the first omitted term is below 1.4e-17 relative.
    #[inline(always)]
    fn atanh_ratio<M: MulAdd>(s2: Self) -> Self {
        const C: [f64; 11] = [
            2.0,
            2.0 / 3.0,
            2.0 / 5.0,
            2.0 / 7.0,
            2.0 / 9.0,
            2.0 / 11.0,
            2.0 / 13.0,
            2.0 / 15.0,
            2.0 / 17.0,
            2.0 / 19.0,
            2.0 / 21.0,
        ];
        horner::<f64, M, 11>(s2, &C)
    }

    /// `t = n · ln 2 + r`, `|r| ≤ ln 2 / 2`; `e^r` from its Taylor polynomial of degree 13
    /// (first omitted term below 4.3e-18); `2^n` assembled from its bits in two factors,
    /// `2^(n + 64) · 2^-64`, so that subnormal results are rounded once.
    #[inline(always)]
    fn exp_nonpositive<M: MulAdd>(t: Self) -> Self {
        // ln 2 split so that `n · LN2_HI` is exact (32 significant bits, |n| < 2^11):
        // LN2_HI = 0.693147180369123816…, LN2_LO = 1.90821492927058770e-10.
        const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
        const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
        // 1.5 · 2^52: adding it rounds any |v| < 2^51 to an integer held in the low bits.
        const SHIFTER: f64 = 6_755_399_441_055_744.0;
        const TWO_POW_M64: f64 = f64::from_bits((1023 - 64) << 52);
        const COEFFS: [f64; 14] = [
            1.0,
            1.0,
            0.5,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
            1.0 / 5_040.0,
            1.0 / 40_320.0,
            1.0 / 362_880.0,
            1.0 / 3_628_800.0,
            1.0 / 39_916_800.0,
            1.0 / 479_001_600.0,
            1.0 / 6_227_020_800.0,
        ];
        // A comparison rather than `max`, so that NaN stays NaN.
        let t = if t < -746.0 { -746.0 } else { t };
        let shifted = M::mul_add(t, LOG2_E, SHIFTER);
        let n = shifted - SHIFTER;
        let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, t));
        let p = horner::<f64, M, 14>(r, &COEFFS);
        // n sits in the low mantissa bits of `shifted` (same binade as SHIFTER), so the
        // difference of the bit patterns is n itself, in [−1077, 0].
        let n_int = (shifted.to_bits() as i64).wrapping_sub(SHIFTER.to_bits() as i64);
        let scale = f64::from_bits(((n_int + 1023 + 64) as u64) << 52);
        p * scale * TWO_POW_M64
    }
}

impl Lane for f32 {
    const MAX: Self = f32::MAX;

    #[inline(always)]
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn fused_mul_add(a: Self, b: Self, c: Self) -> Self {
        a.mul_add(b, c)
    }

    /// Up to `s^8`: the first omitted term is below 2.1e-9 relative, a thirtieth of f32's ulp.
    #[inline(always)]
    fn atanh_ratio<M: MulAdd>(s2: Self) -> Self {
        const C: [f32; 5] = [2.0, 2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0];
        horner::<f32, M, 5>(s2, &C)
    }

    /// As for f64, with a Taylor polynomial of degree 7 (first omitted term below 5.3e-9, a
    /// tenth of f32's ulp) and `2^n = 2^(n + 32) · 2^-32`.
    #[inline(always)]
    fn exp_nonpositive<M: MulAdd>(t: Self) -> Self {
        // ln 2 split so that `n · LN2_HI` is exact (15 significant bits, |n| < 2^8):
        // LN2_HI = 0.693145751953125, LN2_LO = 1.42860677e-6.
        const LN2_HI: f32 = f32::from_bits(0x3F31_7200);
        const LN2_LO: f32 = f32::from_bits(0x35BF_BE8E);
        // 1.5 · 2^23.
        const SHIFTER: f32 = 12_582_912.0;
        const TWO_POW_M32: f32 = f32::from_bits((127 - 32) << 23);
        const COEFFS: [f32; 8] =
            [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5_040.0];
        let t = if t < -104.0 { -104.0 } else { t };
        let shifted = M::mul_add(t, LOG2_E as f32, SHIFTER);
        let n = shifted - SHIFTER;
        let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, t));
        let p = horner::<f32, M, 8>(r, &COEFFS);
        // n in [−151, 0].
        let n_int = (shifted.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
        let scale = f32::from_bits(((n_int + 127 + 32) as u32) << 23);
        p * scale * TWO_POW_M32
    }
}

/// `Σ c_i · x^i` (coefficients lowest first) by Horner's rule. (Estrin's scheme, with its
/// shorter dependency chains, measured no faster here: the element loops are bound by
/// throughput, not latency.)
#[inline(always)]
///
/// The coefficients are of the lane type: converting f64 constants here is not always folded
/// and cost a third of the plain-BCE kernel's time.
fn horner<L: Lane, M: MulAdd, const N: usize>(x: L, c: &[L; N]) -> L {
    let mut p = c[N - 1];
    for &k in c[..N - 1].iter().rev() {
        p = M::mul_add(p, x, k);
    }
    p
}

/// `e^t` for `t ≤ 0`: 0 far below the smallest subnormal, NaN for NaN.
#[inline(always)]
pub fn exp_nonpositive<L: Lane, M: MulAdd>(t: L) -> L {
    L::exp_nonpositive::<M>(t)
}

/// The softplus parts of `a = |x|` shared by every kernel: `(e, l, q)` with `e = e^{−a}`,
/// `l = ln(1 + e)` and `q = 1 / (1 + e)`. Then, for either sign of `x`,
///
/// ```text
/// sp(x) = max(x, 0) + l,          sp(−x) = max(−x, 0) + l,
/// σ(x)  = q if x ≥ 0 else e · q,  σ(−x)  = e · q if x ≥ 0 else q,
/// ```
///
/// which is the overflow-free softplus `max(x, 0) + log1p(e^{−|x|})`, exact up to rounding
/// everywhere (libtorch's returns `x` itself above 20), and the sigmoid from the same
/// exponential.
///
/// `ln(1 + e)` for `e` in `[0, 1]`: with `k = [e > √2 − 1]`, `1 + e = 2^k · v`,
/// `v ∈ [1/√2, √2]`, and `ln v = 2 · atanh(s)`, `s = (v − 1)/(v + 1) = (e − k)/(2 + e + k)`, so
/// `|s| ≤ 0.1716` and the odd series converges fast; for small `e` this is `≈ e` to full
/// relative precision (no `1 + e` is ever formed and rounded). One division serves `s` and `q`.
#[inline(always)]
pub fn softplus_parts<L: Lane, M: MulAdd>(a: L) -> (L, L, L) {
    let one = L::c(1.0);
    let e = exp_nonpositive::<L, M>(-a);
    let k = if e > L::c(std::f64::consts::SQRT_2 - 1.0) { one } else { L::c(0.0) };
    let one_plus = one + e;
    let den = L::c(2.0) + e + k;
    let inv = one / (one_plus * den);
    let q = den * inv;
    let s = (e - k) * one_plus * inv;

    let p = L::atanh_ratio::<M>(s * s);
    let l = M::mul_add(s, p, k * L::c(std::f64::consts::LN_2));
    (e, l, q)
}

/// `σ(t) = 1 / (1 + e^{−t})` for any `t`, without overflow.
#[inline(always)]
pub fn sigmoid<L: Lane, M: MulAdd>(t: L) -> L {
    let e = exp_nonpositive::<L, M>(-t.abs());
    let inv = L::c(1.0) / (L::c(1.0) + e);
    if t >= L::c(0.0) {
        inv
    } else {
        e * inv
    }
}

/// `ln x` for f32 in straight-line code the compiler vectorises: Cephes' `logf` (range
/// reduction to `[√½, √2)`, a degree-9 polynomial, `ln 2` split in two parts), with subnormals
/// rescaled by 2²³; 0 gives −∞, negative values NaN, +∞ and NaN themselves. Checked against f64
/// `ln` over every third f32 in (0, 1] (3.5·10⁸ values): within 0.68 ulp.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    let f = if big { m * 0.5 } else { m } - 1.0;
    let e = ((bits >> 23) as i32 - 127 + i32::from(big)) as f32 - if sub { 23.0 } else { 0.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2_f32;
    y = y * f - 1.151_461_1e-1;
    y = y * f + 1.167_699_9e-1;
    y = y * f - 1.242_014_1e-1;
    y = y * f + 1.424_932_3e-1;
    y = y * f - 1.666_805_8e-1;
    y = y * f + 2.000_071_4e-1;
    y = y * f - 2.499_999_4e-1;
    y = y * f + 3.333_333e-1;
    y = y * f * z - 2.121_944_4e-4 * e - 0.5 * z;
    let r = f + y + 0.693_359_4 * e;
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x < 0.0 {
        f32::NAN
    } else if x < f32::INFINITY {
        r
    } else {
        x
    }
}

/// The instruction sets the fused kernels' element loops are compiled for; each kernel wraps
/// its loop body in one `#[target_feature]` function per set and picks one per call.
///
/// Within a kernel, every set computes the same operations in the same order, so the results
/// depend on the set only through [`MulAdd`]: a kernel that uses [`Fused`] under
/// [`Simd::Avx2`] and [`Simd::Avx512`] gets the same bits from both, and [`Separate`]'s under
/// [`Simd::Baseline`] (the kernels' tests hold them to that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 with fused multiply-add (x86-64).
    Avx2,
    /// AVX-512 (F, VL, DQ, BW) with AVX2 and fused multiply-add (x86-64): 16 f32 lanes and 32
    /// vector registers.
    Avx512,
}

impl Simd {
    /// The widest set the running CPU supports.
    pub fn detect() -> Self {
        Self::available().pop().unwrap_or(Simd::Baseline)
    }

    /// Every set the running CPU supports, plainest first ([`Simd::Baseline`] always).
    pub fn available() -> Vec<Self> {
        let mut sets = vec![Simd::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                sets.push(Simd::Avx2);
                if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") {
                    sets.push(Simd::Avx512);
                }
            }
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `|got − want|` in units of the last place of `want` rounded to f32.
    fn ulps(got: f32, want: f64) -> f64 {
        let ulp = f64::from((want as f32).abs() * f32::EPSILON).max(f64::from(f32::MIN_POSITIVE));
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn ln_f32_is_within_one_ulp() {
        // Every 97th f32 in (0, 1] and in (1, 2^20], subnormals included.
        let mut worst = 0.0f64;
        for bits in (1..=0x4980_0000u32).step_by(97) {
            let x = f32::from_bits(bits);
            worst = worst.max(ulps(ln_f32(x), f64::from(x).ln()));
        }
        assert!(worst < 1.0, "{worst} ulp");
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(f32::NAN).is_nan() && ln_f32(-0.5).is_nan());
        // The smallest subnormal: ln(2^-149) = −103.28, past PyTorch's clamp at −100.
        assert!((ln_f32(f32::from_bits(1)) - (-103.278_93)).abs() < 1e-4);
    }

    /// Relative error, with a floor for results near the bottom of the range.
    fn rel(got: f64, want: f64) -> f64 {
        (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
    }

    fn grid(lo: f64) -> impl Iterator<Item = f64> {
        (0..=200_000).map(move |i| lo * (i as f64 / 200_000.0).powi(3))
    }

    #[test]
    fn f64_exp_matches_libm_to_a_few_ulp() {
        for t in grid(-750.0).chain([-0.0, -1e-300, -0.5 * std::f64::consts::LN_2, -708.4, -745.1])
        {
            for got in [exp_nonpositive::<f64, Separate>(t), exp_nonpositive::<f64, Fused>(t)] {
                let want = t.exp();
                if want >= f64::MIN_POSITIVE {
                    assert!(rel(got, want) <= 4.0 * f64::EPSILON, "exp({t}) = {got:e} vs {want:e}");
                } else {
                    // Subnormal results: within one unit of the smallest subnormal.
                    assert!((got - want).abs() <= 5e-324, "exp({t}) = {got:e} vs {want:e}");
                }
            }
        }
        assert_eq!(exp_nonpositive::<f64, Separate>(-1e4), 0.0);
        assert_eq!(exp_nonpositive::<f64, Separate>(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive::<f64, Separate>(0.0), 1.0);
        assert!(exp_nonpositive::<f64, Separate>(f64::NAN).is_nan());
    }

    #[test]
    fn f32_exp_matches_libm_to_a_few_ulp() {
        for t in grid(-110.0).map(|t| t as f32).chain([-0.0, -1e-30, -87.5, -103.0]) {
            for got in [exp_nonpositive::<f32, Separate>(t), exp_nonpositive::<f32, Fused>(t)] {
                let want = f64::from(t).exp();
                if want >= f64::from(f32::MIN_POSITIVE) {
                    let tol = 4.0 * f64::from(f32::EPSILON);
                    assert!(rel(f64::from(got), want) <= tol, "exp({t}) = {got:e} vs {want:e}");
                } else {
                    assert!((f64::from(got) - want).abs() <= 1.5e-45, "exp({t}) = {got:e}");
                }
            }
        }
        assert_eq!(exp_nonpositive::<f32, Separate>(-1e4), 0.0);
        assert!(exp_nonpositive::<f32, Separate>(f32::NAN).is_nan());
    }

    #[test]
    fn softplus_parts_match_libm_in_both_precisions() {
        for a in grid(800.0).chain([0.0, 1e-12, 0.881_373_587_019_543, 36.0]) {
            let want_e = (-a).exp();
            let want_l = want_e.ln_1p();
            let want_q = 1.0 / (1.0 + want_e);
            for (e, l, q) in [softplus_parts::<f64, Separate>(a), softplus_parts::<f64, Fused>(a)] {
                if want_e >= f64::MIN_POSITIVE {
                    assert!(rel(e, want_e) <= 4.0 * f64::EPSILON, "e({a})");
                    assert!(rel(l, want_l) <= 6.0 * f64::EPSILON, "l({a}) = {l:e} vs {want_l:e}");
                }
                assert!(rel(q, want_q) <= 4.0 * f64::EPSILON, "q({a})");
            }
            let a32 = a as f32;
            let want_e = (-f64::from(a32)).exp();
            let want_l = want_e.ln_1p();
            for (e, l, q) in
                [softplus_parts::<f32, Separate>(a32), softplus_parts::<f32, Fused>(a32)]
            {
                let eps = f64::from(f32::EPSILON);
                if want_e >= f64::from(f32::MIN_POSITIVE) {
                    assert!(rel(f64::from(e), want_e) <= 4.0 * eps, "e({a32})");
                    assert!(rel(f64::from(l), want_l) <= 6.0 * eps, "l({a32}) = {l:e}");
                }
                assert!(rel(f64::from(q), 1.0 / (1.0 + want_e)) <= 4.0 * eps, "q({a32})");
            }
        }
    }

    #[test]
    fn simd_sets_are_ordered_and_the_widest_is_detected() {
        let sets = Simd::available();
        assert_eq!(sets[0], Simd::Baseline);
        assert!(sets.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Simd::detect(), *sets.last().unwrap());
    }

    #[test]
    fn sigmoid_on_both_sides() {
        for t in [-800.0_f64, -40.0, -20.5, -1.0, 0.0, 1e-9, 3.0, 20.5, 40.0, 800.0] {
            let want = if t >= 0.0 { 1.0 / (1.0 + (-t).exp()) } else { t.exp() / (1.0 + t.exp()) };
            assert!(rel(sigmoid::<f64, Separate>(t), want) <= 4.0 * f64::EPSILON, "σ({t})");
            let got = f64::from(sigmoid::<f32, Separate>(t as f32));
            if want >= f64::from(f32::MIN_POSITIVE) {
                assert!(rel(got, want) <= 4.0 * f64::from(f32::EPSILON), "σ32({t})");
            }
        }
    }
}
