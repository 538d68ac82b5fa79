//! Reproducible pseudo-random inputs for tests, examples and benchmarks, without a
//! random-number crate.

/// `n` uniforms in `[0, 1)`: splitmix64's output function over the counter `seed · 2³² + i`,
/// `i = 1..=n`, keeping 53 random bits each. The same stream as `uniform` in
/// `benches/compare/reference.py`, so both sides of `make bench-compare` build the same inputs.
///
/// ```
/// let u = loss_core::sample::uniforms(7, 3);
/// assert_eq!(u, loss_core::sample::uniforms(7, 3));
/// assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
/// ```
pub fn uniforms(seed: u64, n: usize) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let mut x = (seed << 32).wrapping_add(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}
