//! bfloat16 rounding: the conversion behind Keras' `mixed_bfloat16` policy.
//!
//! A bf16 value is kept here as the f32 whose low 16 bits are zero (bf16 is
//! f32's upper half: the same exponent range, 8 significant bits). The f32
//! kernels, given operands rounded here, multiply them exactly (two 8-bit
//! significands make a 16-bit product) and accumulate in f32, which is the
//! policy's arithmetic; rounding their results again makes them bf16 values.

use crate::elementwise;
use crate::parallel::for_each_chunk;
use crate::simd::Isa;
use std::sync::atomic::{AtomicBool, Ordering};

/// Values per parallel task: each is rounded on its own, so the split never
/// changes a result.
const CHUNK: usize = 16 * 1024;

/// `x` rounded to the nearest bf16, ties to even (as `vcvtneps2bf16` and
/// PyTorch's and XLA's casts); a NaN stays a (quiet) NaN, and a value past bf16's
/// largest finite one by half a step or more becomes infinity.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    let bits = x.to_bits();
    // Adding just under half the dropped part's weight, plus the last kept bit,
    // carries into the kept bits exactly when round-to-nearest-even rounds up.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    // A NaN's payload could carry into the exponent: it is quieted instead.
    let nan = (bits | 0x0040_0000) & 0xffff_0000;
    f32::from_bits(if x.is_nan() { nan } else { rounded })
}

/// Whether `x` is a bf16 value (its low 16 bits are zero).
pub fn is_bf16(x: f32) -> bool {
    x.to_bits() & 0xffff == 0
}

/// Each value rounded to bf16 ([`round`]) in place, over the pool's threads.
pub fn round_in_place(values: &mut [f32]) {
    round_in_place_with(Isa::detected(), values);
}

/// [`round_in_place`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// When `isa` is not supported by this CPU.
pub fn round_in_place_with(isa: Isa, values: &mut [f32]) {
    if values.len() <= CHUNK {
        return elementwise::round_to_bf16(isa, values);
    }
    for_each_chunk(values, CHUNK, &|_, chunk: &mut [f32]| {
        elementwise::round_to_bf16(isa, chunk)
    });
}

/// `dst[i] = round(src[i])` ([`round`]), over the pool's threads; whether every
/// value it wrote is finite (a finite value past bf16's largest, 3.39·10³⁸,
/// rounds to infinity).
///
/// # Panics
/// When the slices differ in length.
pub fn round_into(src: &[f32], dst: &mut [f32]) -> bool {
    assert_eq!(src.len(), dst.len(), "bf16 rounding: lengths differ");
    let isa = Isa::detected();
    if src.len() <= CHUNK {
        return elementwise::round_to_bf16_into(isa, src, dst);
    }
    let finite = AtomicBool::new(true);
    for_each_chunk((src, dst), CHUNK, &|_, (src, dst): (&[f32], &mut [f32])| {
        if !elementwise::round_to_bf16_into(isa, src, dst) {
            finite.store(false, Ordering::Relaxed);
        }
    });
    finite.into_inner()
}

/// Whether this CPU has bf16 dot-product units (x86's AVX512_BF16, Arm's
/// BF16). kerno's products do not use them yet: under `mixed_bfloat16` they run
/// on the f32 units, on operands rounded here, on every CPU.
pub fn cpu_has_bf16_units() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("bf16");
    #[allow(unreachable_code)]
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    /// Bit patterns of every kind: around zero, subnormals, ties, the largest
    /// finite values, infinities and NaNs, and a sweep of random ones.
    fn hostile_floats() -> Vec<f32> {
        let mut bits: Vec<u32> = vec![
            0x0000_0000,
            0x8000_0000,
            0x0000_0001,
            0x0000_8000,
            0x0000_7fff,
            0x0001_8000,
            0x0000_ffff,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x3f80_7fff,
            0x7f7f_7fff,
            0x7f7f_8000,
            0x7f7f_ffff,
            0xff7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0xffff_ffff,
            0x7fff_ffff,
            0xff80_8000,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        bits.extend((0..100_000).map(|_| {
            state = crate::dropout::splitmix64(state);
            state as u32
        }));
        bits.into_iter().map(f32::from_bits).collect()
    }

    #[test]
    fn rounding_matches_the_f64_reference_on_every_kind_of_value() {
        for x in hostile_floats() {
            let (got, want) = (round(x), reference::round_to_bf16(x));
            assert!(is_bf16(got), "{x:e} ({:#010x})", x.to_bits());
            if want.is_nan() {
                assert!(got.is_nan(), "{:#010x} gave {got}", x.to_bits());
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{x:e} ({:#010x})",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn every_instruction_set_and_split_rounds_alike() {
        let values = hostile_floats();
        let scalar: Vec<u32> = values.iter().map(|&x| round(x).to_bits()).collect();
        for isa in Isa::available() {
            for len in [0, 1, 17, CHUNK + 3, values.len()] {
                let mut got = values[..len].to_vec();
                round_in_place_with(isa, &mut got);
                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, scalar[..len], "{isa:?}, {len} values");
            }
        }
        let mut into = vec![0.0; values.len()];
        assert!(
            !round_into(&values, &mut into),
            "infinities and NaNs among them"
        );
        assert!(into.iter().zip(&scalar).all(|(x, &s)| x.to_bits() == s));
        assert!(round_into(&[1.0, -3.0e38, 0.0], &mut into[..3]));
        // Finite in f32, past bf16's largest: infinite once rounded.
        assert!(!round_into(&[1.0, f32::MAX, 0.0], &mut into[..3]));
    }
}
