//! Inverted dropout's mask, drawn from a counter-based stream: value `i` of the
//! mask depends on the seed and `i` alone, so a mask is the same whichever
//! thread draws it and can be drawn again for any step of a resumed run.

/// Writes the mask of inverted dropout at `rate`: each value is `1 / (1 - rate)`
/// with probability `1 - rate` (the input kept, scaled so that its expectation
/// stays), else 0. `rate` is in `[0, 1)`.
pub fn dropout_mask(rate: f32, seed: u64, mask: &mut [f32]) {
    let scale = 1.0 / (1.0 - rate);
    for (i, m) in mask.iter_mut().enumerate() {
        // The top 24 bits: a uniform in [0, 1) that f32 holds exactly.
        let uniform =
            (splitmix64(seed ^ (i as u64).wrapping_mul(GOLDEN)) >> 40) as f32 / (1u32 << 24) as f32;
        *m = if uniform >= rate { scale } else { 0.0 };
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijection of u64 that mixes every bit.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_one_minus_rate_scaled_and_depends_on_the_seed() {
        let mut mask = vec![0.0; 100_000];
        dropout_mask(0.25, 7, &mut mask);
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "{kept}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        let mut other = vec![0.0; 100_000];
        dropout_mask(0.25, 8, &mut other);
        assert_ne!(mask, other);
        let mut again = vec![0.0; 100_000];
        dropout_mask(0.25, 7, &mut again);
        assert_eq!(mask, again);
        dropout_mask(0.0, 7, &mut again);
        assert!(again.iter().all(|&m| m == 1.0));
    }
}
