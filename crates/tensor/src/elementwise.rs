//! Element-wise loops compiled once per instruction set: the same scalar code,
//! vectorised by the compiler with each set's registers. Each element's result is
//! the same whatever the set (IEEE sqrt and division are exact, and nothing is
//! contracted into an FMA), so the choice never changes a trained model.

use crate::optim::RmsProp;
use crate::simd::{per_instruction_set, Isa};

/// Whether `x` is neither NaN nor infinite, as a comparison the compiler keeps in
/// vector lanes (`|x| < ∞` is false for NaN).
#[inline(always)]
fn finite(x: f32) -> bool {
    x.abs() < f32::INFINITY
}

#[inline(always)]
fn rmsprop_body(w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) -> bool {
    // Or-ed as 0/1 rather than and-ed as bools, so that the loop stays one
    // vector loop. A NaN velocity makes its weight NaN in the same update, and
    // an infinite one leaves it as it was (`g/√∞` is 0), so the weights tell.
    let mut not_finite = 0u32;
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = p.rho * *v + (1.0 - p.rho) * (g * g);
        *w -= (p.lr * g) / (*v + p.epsilon).sqrt();
        not_finite |= !finite(*w) as u32;
    }
    not_finite == 0
}

per_instruction_set! {
    /// One RMSprop update of `w` with the loop built for `isa`; whether every
    /// weight it wrote is finite.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    rmsprop(w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) -> bool => rmsprop_body
}

#[inline(always)]
fn all_finite_body(values: &[f32]) -> bool {
    values.iter().fold(0u32, |acc, &x| acc | !finite(x) as u32) == 0
}

per_instruction_set! {
    /// Whether no value is NaN or infinite, with the loop built for `isa`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    all_finite(values: &[f32]) -> bool => all_finite_body
}

#[inline(always)]
fn scale_body(x: &mut [f32], factor: f32) {
    x.iter_mut().for_each(|x| *x *= factor);
}

per_instruction_set! {
    /// `x[i] *= factor`, with the loop built for `isa`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    scale(x: &mut [f32], factor: f32) => scale_body
}

#[inline(always)]
fn add_rows_body(sums: &mut [f32], rows: &[&[f32]]) {
    // 64 columns at a time kept in registers down all the rows (four vectors, four
    // independent chains of adds): a loop over the rows that added each into
    // memory waited on the store before each add.
    const LANES: usize = 64;
    let whole = sums.len() - sums.len() % LANES;
    for (at, chunk) in sums[..whole].chunks_exact_mut(LANES).enumerate() {
        let mut acc: [f32; LANES] = chunk.try_into().expect("a whole chunk");
        for row in rows {
            let values = &row[at * LANES..(at + 1) * LANES];
            acc.iter_mut().zip(values).for_each(|(s, &v)| *s += v);
        }
        chunk.copy_from_slice(&acc);
    }
    for row in rows {
        let values = &row[whole..sums.len()];
        sums[whole..]
            .iter_mut()
            .zip(values)
            .for_each(|(s, &v)| *s += v);
    }
}

per_instruction_set! {
    /// `sums[j] += row[j]` for each of `rows` in order (column sums: the same bits on
    /// every instruction set), with the loop built for `isa`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU, or a row is shorter than `sums`.
    add_rows(sums: &mut [f32], rows: &[&[f32]]) => add_rows_body
}

#[inline(always)]
fn scale_bytes_body(src: &[u8], dst: &mut [f32], divisor: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f32 / divisor;
    }
}

per_instruction_set! {
    /// `dst[i] = src[i] as f32 / divisor`, with the loop built for `isa`. Division is
    /// correctly rounded in every lane, so this is numpy's `x.astype("float32") / d`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    scale_bytes(src: &[u8], dst: &mut [f32], divisor: f32) => scale_bytes_body
}

#[inline(always)]
fn round_to_bf16_body(values: &mut [f32]) {
    values.iter_mut().for_each(|x| *x = crate::bf16::round(*x));
}

per_instruction_set! {
    /// Each value rounded to bf16 in place ([`crate::bf16::round`]), with the
    /// loop built for `isa`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    round_to_bf16(values: &mut [f32]) => round_to_bf16_body
}

#[inline(always)]
fn round_to_bf16_into_body(src: &[f32], dst: &mut [f32]) -> bool {
    // Or-ed as 0/1, as in `rmsprop_body`, so that the loop stays one vector loop.
    let mut not_finite = 0u32;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = crate::bf16::round(s);
        not_finite |= !finite(*d) as u32;
    }
    not_finite == 0
}

per_instruction_set! {
    /// `dst[i]` = `src[i]` rounded to bf16, with the loop built for `isa`;
    /// whether every value it wrote is finite (a finite value past bf16's
    /// largest rounds to infinity).
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    round_to_bf16_into(src: &[f32], dst: &mut [f32]) -> bool => round_to_bf16_into_body
}

/// `eˣ` from additions, multiplications and the bits of a float alone (Cephes'
/// `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a polynomial in `r`, then
/// `2ⁿ`), so that each set's compiler vectorises it and every set, the scalar
/// tail included, gives the same bits. Within 2 ulp of the exact value; below
/// f32's smallest normal (x < -87.34) it is 0, never a subnormal;
/// above f32's largest (x > 88.72) infinity; NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // ln 2 in two parts (Cody and Waite): `n·LN2_HI` is exact for every n used.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    // The normal range of the result: ln of f32's smallest normal and largest float.
    const LOWEST: f32 = -87.336_55;
    const HIGHEST: f32 = 88.722_83;
    let n = (x * std::f32::consts::LOG2_E)
        .round_ties_even()
        .clamp(-126.0, 128.0);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = P[1..].iter().fold(P[0], |p, &c| p * r + c);
    let e_r = (p * (r * r) + r) + 1.0;
    // n as an integer, from the low bits of n + 1.5·2²³ (Rust's saturating `as`
    // took a conversion per lane, unvectorised); garbage for NaN, whose y is NaN.
    const SHIFTER: f32 = 12_582_912.0;
    let n = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    // 2ⁿ as two powers of two, each a normal float (2¹²⁸ and 2⁻¹²⁶ are not both
    // one); multiplying by them is exact.
    let half = n >> 1;
    let power = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = e_r * power(half) * power(n - half);
    match x {
        _ if x > HIGHEST => f32::INFINITY,
        _ if x < LOWEST => 0.0,
        _ => y,
    }
}

#[inline(always)]
fn exp_body(values: &mut [f32]) {
    values.iter_mut().for_each(|x| *x = exp(*x));
}

per_instruction_set! {
    /// Each value `x` replaced by `eˣ` (see [`exp`]), with the loop built for `isa`.
    ///
    /// # Panics
    /// When `isa` is not supported by this CPU.
    exp_in_place(values: &mut [f32]) => exp_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_bytes_are_exact_divisions_on_every_instruction_set() {
        for len in [1, 15, 16, 17, 784, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 97 % 256) as u8).collect();
            for divisor in [255.0, 3.0, 0.1] {
                let exact: Vec<u32> = src
                    .iter()
                    .map(|&b| (b as f32 / divisor).to_bits())
                    .collect();
                for isa in Isa::available() {
                    let mut dst = vec![f32::NAN; len];
                    scale_bytes(isa, &src, &mut dst, divisor);
                    let got: Vec<u32> = dst.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, exact, "{isa:?}, {len} bytes / {divisor}");
                }
            }
        }
    }

    /// The exponential against f64's on a sweep over its whole domain and its edges,
    /// on every instruction set, each with the same bits.
    #[test]
    fn exp_is_within_two_ulp_and_the_same_on_every_instruction_set() {
        let mut xs: Vec<f32> = (-110_000..=100_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            -87.336_55,
            -87.336_54,
            88.722_83,
            88.722_84,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let mut first: Option<Vec<u32>> = None;
        for isa in Isa::available() {
            let mut ys = xs.clone();
            exp_in_place(isa, &mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let exact = (x as f64).exp();
                if x.is_nan() {
                    assert!(y.is_nan(), "{isa:?} exp(NaN) = {y}");
                } else if exact > f32::MAX as f64 {
                    assert_eq!(y, f32::INFINITY, "{isa:?} exp({x})");
                } else if exact < f32::MIN_POSITIVE as f64 {
                    // 0, or the smallest normals rounded up at the threshold.
                    let off = (y as f64 - exact).abs() / 2f64.powi(-126 - 23);
                    assert!(y == 0.0 || off <= 2.0, "{isa:?} exp({x}) = {y}");
                } else {
                    // An ulp of the result, from its exponent.
                    let ulp = 2f64.powi((exact.log2().floor() as i32) - 23);
                    let error = (y as f64 - exact).abs() / ulp;
                    assert!(error <= 2.0, "{isa:?} exp({x}) = {y}, {error:.2} ulp off");
                }
            }
            let bits: Vec<u32> = ys.iter().map(|y| y.to_bits()).collect();
            match &first {
                Some(first) => assert!(bits == *first, "{isa:?} differs"),
                None => first = Some(bits),
            }
        }
    }
}
