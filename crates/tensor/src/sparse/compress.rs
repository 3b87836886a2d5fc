//! Sparse rows: a row of floats, or of bytes scaled to floats, compressed to its
//! nonzeros, their positions and their bits, with AVX-512's compress or AVX2's
//! permutations; and the set bits of words compressed to their positions.

use crate::simd::{on_instruction_set, Isa};

/// Floats past the end of a compression's output that [`keep_nonzeros`] may
/// write (a whole vector stored from its last nonzero).
pub(crate) const KEEP_SLACK: usize = 16;

/// Where a compression writes a row's nonzeros: their values, their positions
/// in the row, and the row's bits (bit `j % 8` of byte `j / 8` set when the value
/// at `j` is kept, the others cleared).
pub(crate) struct Kept<'a> {
    pub positions: &'a mut [u32],
    pub values: &'a mut [f32],
    pub bits: &'a mut [u8],
}

impl Kept<'_> {
    /// Panics unless the outputs have room for a row of `len` and its positions
    /// fit in a `u32`: `len + KEEP_SLACK` slots (past the kept ones overwritten
    /// with anything) and a bit for each value.
    fn assert_room(&self, len: usize) {
        let room = len + KEEP_SLACK;
        assert!(
            self.positions.len() >= room && self.values.len() >= room,
            "no room for the nonzeros"
        );
        assert!(self.bits.len() >= len.div_ceil(8), "no room for the bits");
        assert!(u32::try_from(len).is_ok(), "positions fit in u32");
    }
}

/// Writes the nonzeros of `values`, their positions and bits to `kept`; returns
/// how many. A NaN is kept, `-0.0` is not.
///
/// # Panics
/// When the outputs have no room for them ([`Kept::assert_room`]).
pub(crate) fn keep_nonzeros(isa: Isa, values: &[f32], kept: Kept<'_>) -> usize {
    kept.assert_room(values.len());
    // The outputs' room is asserted above.
    on_instruction_set!(isa;
        avx512 => keep_nonzeros_avx512(values, kept);
        avx2 => keep_nonzeros_avx2(values, kept);
        _ => keep_nonzeros_scalar(values.iter().copied(), 0, kept, 0)
    )
}

/// [`keep_nonzeros`] of `values`, the first at position `first` (a multiple of
/// 8), after `count` already kept: every value written, kept only when nonzero
/// (no branch to mispredict).
fn keep_nonzeros_scalar(
    values: impl Iterator<Item = f32>,
    first: usize,
    kept: Kept<'_>,
    mut count: usize,
) -> usize {
    debug_assert!(first.is_multiple_of(8), "the values start a byte of bits");
    for (j, v) in values.enumerate() {
        let at = first + j;
        kept.positions[count] = at as u32;
        kept.values[count] = v;
        let nonzero = v != 0.0;
        if at.is_multiple_of(8) {
            kept.bits[at / 8] = 0;
        }
        kept.bits[at / 8] |= u8::from(nonzero) << (at % 8);
        count += usize::from(nonzero);
    }
    count
}

/// Stores the lanes of `v` set in `nonzero` at `kept.values[count..]`, their
/// positions (`j` plus the lane) at `kept.positions[count..]`, with AVX-512's
/// compress in registers (to memory it is microcoded on Zen 4); returns the new
/// `count`.
///
/// # Safety
/// The CPU has AVX-512F; both outputs hold 16 slots from `count`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_kept_avx512(
    v: std::arch::x86_64::__m512,
    nonzero: std::arch::x86_64::__mmask16,
    j: usize,
    kept: &mut Kept<'_>,
    count: usize,
) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        _mm512_storeu_ps(
            kept.values.as_mut_ptr().add(count),
            _mm512_maskz_compress_ps(nonzero, v),
        );
        let at = _mm512_add_epi32(lanes, _mm512_set1_epi32(j as i32));
        let at = _mm512_maskz_compress_epi32(nonzero, at);
        _mm512_storeu_si512(kept.positions.as_mut_ptr().add(count).cast(), at);
    }
    count + nonzero.count_ones() as usize
}

/// [`keep_nonzeros`] with AVX-512's compress ([`store_kept_avx512`]).
///
/// # Safety
/// The CPU has AVX-512F; the outputs hold `values.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn keep_nonzeros_avx512(values: &[f32], mut kept: Kept<'_>) -> usize {
    use std::arch::x86_64::*;
    let (mut count, whole) = (0, values.len() - values.len() % 16);
    for j in (0..whole).step_by(16) {
        // SAFETY: `j + 16 <= values.len()`; `count <= j`, so the 16 slots stored from
        // `count` lie inside the outputs' `values.len() + KEEP_SLACK`.
        unsafe {
            let v = _mm512_loadu_ps(values.as_ptr().add(j));
            let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, _mm512_setzero_ps());
            kept.bits[j / 8..j / 8 + 2].copy_from_slice(&nonzero.to_le_bytes());
            if nonzero != 0 {
                count = store_kept_avx512(v, nonzero, j, &mut kept, count);
            }
        }
    }
    let rest = values[whole..].iter().copied();
    keep_nonzeros_scalar(rest, whole, kept, count)
}

/// For each mask of 8 lanes, the lanes it sets, first to last, then zeros: the
/// permutation that packs a vector's kept lanes to its front.
#[cfg(target_arch = "x86_64")]
static PACK_LANES: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut lane, mut kept) = (0, 0);
        while lane < 8 {
            if mask & (1 << lane) != 0 {
                table[mask][kept] = lane as u32;
                kept += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
};

/// Stores the lanes of `v` set in `mask` (one bit a lane) at
/// `kept.values[count..]`, their positions (`j` plus the lane) at
/// `kept.positions[count..]`, packed to the front by a permutation from
/// [`PACK_LANES`], whose lanes are also the positions; returns the new `count`.
///
/// # Safety
/// The CPU has AVX2; both outputs hold 8 slots from `count`; `mask < 256`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_kept_avx2(
    v: std::arch::x86_64::__m256,
    mask: usize,
    j: usize,
    kept: &mut Kept<'_>,
    count: usize,
) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; each table row holds 8 lanes.
    unsafe {
        let lanes = _mm256_loadu_si256(PACK_LANES[mask].as_ptr().cast());
        _mm256_storeu_ps(
            kept.values.as_mut_ptr().add(count),
            _mm256_permutevar8x32_ps(v, lanes),
        );
        let at = _mm256_add_epi32(lanes, _mm256_set1_epi32(j as i32));
        _mm256_storeu_si256(kept.positions.as_mut_ptr().add(count).cast(), at);
    }
    count + mask.count_ones() as usize
}

/// [`keep_nonzeros`] on AVX2 ([`store_kept_avx2`]).
///
/// # Safety
/// The CPU has AVX2; the outputs hold `values.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_nonzeros_avx2(values: &[f32], mut kept: Kept<'_>) -> usize {
    use std::arch::x86_64::*;
    let (mut count, whole) = (0, values.len() - values.len() % 8);
    for j in (0..whole).step_by(8) {
        // SAFETY: `j + 8 <= values.len()`; `count <= j`, so the 8 slots stored from
        // `count` lie inside the outputs; a movemask of 8 lanes is under 256.
        unsafe {
            let v = _mm256_loadu_ps(values.as_ptr().add(j));
            let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(v, _mm256_setzero_ps());
            let mask = _mm256_movemask_ps(nonzero) as usize;
            kept.bits[j / 8] = mask as u8;
            if mask != 0 {
                count = store_kept_avx2(v, mask, j, &mut kept, count);
            }
        }
    }
    let rest = values[whole..].iter().copied();
    keep_nonzeros_scalar(rest, whole, kept, count)
}

/// Writes the nonzero bytes of `bytes`, each as `byte as f32 / divisor`, their
/// positions and bits to `kept`; returns how many: [`keep_nonzeros`] of the
/// scaled bytes, bit for bit, for a `divisor` under which a byte is 0 exactly
/// when its value is (see [`is_exact_divisor`]).
///
/// # Panics
/// When the outputs have no room for them ([`Kept::assert_room`]), or the
/// divisor is not exact.
pub(crate) fn keep_nonzero_bytes(isa: Isa, bytes: &[u8], divisor: f32, kept: Kept<'_>) -> usize {
    kept.assert_room(bytes.len());
    assert!(is_exact_divisor(divisor), "a byte over {divisor} may be 0");
    // The outputs' room is asserted above.
    on_instruction_set!(isa;
        avx512 => keep_nonzero_bytes_avx512(bytes, divisor, kept);
        avx2 => keep_nonzero_bytes_avx2(bytes, divisor, kept);
        _ => keep_nonzeros_scalar(scaled(bytes, divisor), 0, kept, 0)
    )
}

/// Whether `byte as f32 / divisor` is 0 for the byte 0 alone, and never a NaN or
/// a subnormal: a finite divisor between 1e-30 and 1e30 in magnitude.
pub(crate) fn is_exact_divisor(divisor: f32) -> bool {
    (1e-30..=1e30).contains(&divisor.abs())
}

/// The bytes' values, each `byte as f32 / divisor`.
fn scaled(bytes: &[u8], divisor: f32) -> impl Iterator<Item = f32> + '_ {
    bytes.iter().map(move |&b| b as f32 / divisor)
}

/// [`keep_nonzero_bytes`] 16 bytes at a time: those all 0 skipped before any
/// arithmetic (a third of an MNIST image), the others widened, divided and
/// stored by [`store_kept_avx512`].
///
/// # Safety
/// The CPU has AVX-512F; the outputs hold `bytes.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn keep_nonzero_bytes_avx512(bytes: &[u8], divisor: f32, mut kept: Kept<'_>) -> usize {
    use std::arch::x86_64::*;
    let (mut count, whole) = (0, bytes.len() - bytes.len() % 16);
    let divisors = _mm512_set1_ps(divisor);
    for (j, chunk) in bytes[..whole].chunks_exact(16).enumerate() {
        let chunk: [u8; 16] = chunk.try_into().expect("chunks of 16");
        if u128::from_ne_bytes(chunk) == 0 {
            kept.bits[2 * j..2 * j + 2].fill(0);
            continue;
        }
        // SAFETY: `chunk` is 16 bytes; `count <= 16·j`, so the 16 slots stored from
        // `count` lie inside the outputs' `bytes.len() + KEEP_SLACK`.
        unsafe {
            let wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(chunk.as_ptr().cast()));
            let nonzero = _mm512_test_epi32_mask(wide, wide);
            kept.bits[2 * j..2 * j + 2].copy_from_slice(&nonzero.to_le_bytes());
            let v = _mm512_div_ps(_mm512_cvtepi32_ps(wide), divisors);
            count = store_kept_avx512(v, nonzero, 16 * j, &mut kept, count);
        }
    }
    let rest = scaled(&bytes[whole..], divisor);
    keep_nonzeros_scalar(rest, whole, kept, count)
}

/// [`keep_nonzero_bytes`] 8 bytes at a time: those all 0 skipped before any
/// arithmetic, the others widened, divided and stored by [`store_kept_avx2`].
///
/// # Safety
/// The CPU has AVX2; the outputs hold `bytes.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_nonzero_bytes_avx2(bytes: &[u8], divisor: f32, mut kept: Kept<'_>) -> usize {
    use std::arch::x86_64::*;
    let (mut count, whole) = (0, bytes.len() - bytes.len() % 8);
    let divisors = _mm256_set1_ps(divisor);
    for (j, chunk) in bytes[..whole].chunks_exact(8).enumerate() {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        if word == 0 {
            kept.bits[j] = 0;
            continue;
        }
        // SAFETY: `count <= 8·j`, so the 8 slots stored from `count` lie inside the
        // outputs; a movemask of 8 lanes is under 256.
        unsafe {
            let wide = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(word as i64));
            let zero = _mm256_cmpeq_epi32(wide, _mm256_setzero_si256());
            let mask = !_mm256_movemask_ps(_mm256_castsi256_ps(zero)) as usize & 0xff;
            kept.bits[j] = mask as u8;
            let v = _mm256_div_ps(_mm256_cvtepi32_ps(wide), divisors);
            count = store_kept_avx2(v, mask, 8 * j, &mut kept, count);
        }
    }
    let rest = scaled(&bytes[whole..], divisor);
    keep_nonzeros_scalar(rest, whole, kept, count)
}

/// `f(n)` for each bit `n` set in `words` (bit `n % 64` of word `n / 64`), in order.
#[inline(always)]
pub(crate) fn for_each_set_bit(words: &[u64], mut f: impl FnMut(usize)) {
    for (w, &word) in words.iter().enumerate() {
        let mut left = word;
        while left != 0 {
            f(64 * w + left.trailing_zeros() as usize);
            left &= left - 1;
        }
    }
}

/// Writes the position of each bit set in `words` (bit `n % 64` of word `n / 64`)
/// to the front of `positions`, in order, and its rank among them (0 for the
/// first) to `ranks[n]`; returns how many. The other slots keep their values.
///
/// # Panics
/// When `positions` has fewer slots than there are bits set, `ranks` fewer than
/// `64 · words.len()`, or a position would not fit in a `u32`.
pub(crate) fn set_bit_positions(
    isa: Isa,
    words: &[u64],
    positions: &mut [u32],
    ranks: &mut [u32],
) -> usize {
    let set: usize = words.iter().map(|word| word.count_ones() as usize).sum();
    assert!(positions.len() >= set, "no room for the positions");
    assert!(ranks.len() >= 64 * words.len(), "no room for the ranks");
    assert!(
        u32::try_from(64 * words.len()).is_ok(),
        "positions fit in u32"
    );
    // The room is asserted above.
    on_instruction_set!(isa;
        avx512 => set_bit_positions_avx512(words, positions, ranks);
        _ => {
            let mut rank = 0;
            for_each_set_bit(words, |n| {
                positions[rank] = n as u32;
                ranks[n] = rank as u32;
                rank += 1;
            });
            rank
        }
    )
}

/// [`set_bit_positions`] 16 bits at a time, without a branch: the positions
/// compressed from the 16 bits' lanes, the ranks expanded to them (a loop over
/// the bits took twice the time on MNIST's rows).
///
/// # Safety
/// The CPU has AVX-512F; `positions` holds a slot for each bit set, `ranks`
/// `64 · words.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn set_bit_positions_avx512(
    words: &[u64],
    positions: &mut [u32],
    ranks: &mut [u32],
) -> usize {
    use std::arch::x86_64::*;
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut rank = 0;
    for (w, &word) in words.iter().enumerate() {
        for quarter in 0..4 {
            let bits = (word >> (16 * quarter)) as u16;
            let first = 64 * w + 16 * quarter;
            let set = bits.count_ones() as usize;
            let at = _mm512_add_epi32(lanes, _mm512_set1_epi32(first as i32));
            let rank_of = _mm512_add_epi32(lanes, _mm512_set1_epi32(rank as i32));
            // SAFETY: the stores write `set` lanes from `rank` (the bits set
            // before these number `rank`, all of them at most `positions.len()`)
            // and the lanes of the bits set from `first` (under `64 · words.len()`).
            unsafe {
                let first_set = ((1u32 << set) - 1) as u16;
                let packed = _mm512_maskz_compress_epi32(bits, at);
                _mm512_mask_storeu_epi32(
                    positions.as_mut_ptr().add(rank).cast(),
                    first_set,
                    packed,
                );
                let spread = _mm512_maskz_expand_epi32(bits, rank_of);
                _mm512_mask_storeu_epi32(ranks.as_mut_ptr().add(first).cast(), bits, spread);
            }
            rank += set;
        }
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The bits of the positions `kept`, as the compressions write them.
    fn bits_of(len: usize, kept: impl Iterator<Item = usize>) -> Vec<u8> {
        let mut bits = vec![0u8; len.div_ceil(8)];
        kept.for_each(|j| bits[j / 8] |= 1 << (j % 8));
        bits
    }

    /// Each instruction set's compression of floats and of bytes sets the bits of
    /// the values it keeps and clears the others, on every length around its
    /// vectors' (16 and 8 lanes), over bits that were set before.
    #[test]
    fn compressions_write_the_bits_of_the_values_they_keep() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for len in 0..70 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.gen_bool(0.3) {
                    true => rng.gen_range(1..=255),
                    false => 0,
                })
                .collect();
            let mut values: Vec<f32> = bytes.iter().map(|&b| b as f32 - 100.0).collect();
            if len > 3 {
                (values[1], values[2]) = (-0.0, f32::NAN);
            }
            let expected_values = bits_of(len, (0..len).filter(|&j| values[j] != 0.0));
            let expected_bytes = bits_of(len, (0..len).filter(|&j| bytes[j] != 0));
            for isa in Isa::available() {
                let (mut positions, mut out) =
                    (vec![0; len + KEEP_SLACK], vec![0.0; len + KEEP_SLACK]);
                let mut bits = vec![0xff; len.div_ceil(8)];
                let kept = Kept {
                    positions: &mut positions,
                    values: &mut out,
                    bits: &mut bits,
                };
                keep_nonzeros(isa, &values, kept);
                assert_eq!(bits, expected_values, "{isa:?} floats, {len}");
                bits.fill(0xff);
                let kept = Kept {
                    positions: &mut positions,
                    values: &mut out,
                    bits: &mut bits,
                };
                keep_nonzero_bytes(isa, &bytes, 255.0, kept);
                assert_eq!(bits, expected_bytes, "{isa:?} bytes, {len}");
            }
        }
    }

    /// Each instruction set finds every set bit's position and rank, on words
    /// sparse, dense, empty and full, and leaves the other slots as they were.
    #[test]
    fn set_bit_positions_are_in_order_with_their_ranks() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (len, density) in [(0, 0.5), (1, 0.5), (3, 0.05), (13, 0.4), (5, 1.0), (4, 0.0)] {
            let words: Vec<u64> = (0..len)
                .map(|_| (0..64).fold(0, |w, b| w | u64::from(rng.gen_bool(density)) << b))
                .collect();
            let expected: Vec<u32> = (0..64 * len as u32)
                .filter(|&n| words[n as usize / 64] >> (n % 64) & 1 == 1)
                .collect();
            for isa in Isa::available() {
                let mut positions = vec![u32::MAX; expected.len() + 3];
                let mut ranks = vec![u32::MAX; 64 * len];
                let count = set_bit_positions(isa, &words, &mut positions, &mut ranks);
                assert_eq!(
                    &positions[..count],
                    &expected[..],
                    "{isa:?} {len} {density}"
                );
                assert!(positions[count..].iter().all(|&p| p == u32::MAX), "{isa:?}");
                for (n, &rank) in ranks.iter().enumerate() {
                    let want = expected.iter().position(|&p| p as usize == n);
                    assert_eq!(rank, want.map_or(u32::MAX, |r| r as u32), "{isa:?} bit {n}");
                }
            }
        }
    }
}
