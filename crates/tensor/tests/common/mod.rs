//! What the kernel tests share: random operands, the error against the reference,
//! and bit-for-bit equality.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `n` values in [-1, 1).
pub fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Largest |fast - exact| relative to the largest |exact| (at least 1).
pub fn rel_err(fast: &[f32], exact: &[f64]) -> f64 {
    assert_eq!(fast.len(), exact.len());
    let scale = exact.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    fast.iter()
        .zip(exact)
        .map(|(&f, &e)| (f as f64 - e).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Whether `x` and `y` hold the same floats, bit for bit.
pub fn same_bits(x: &[f32], y: &[f32]) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
}
