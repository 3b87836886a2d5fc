//! Sparse rows: a row of floats, or of bytes scaled to floats, compressed to its
//! nonzeros and their positions, with AVX-512's compress or AVX2's permutations.

use super::Isa;

/// Floats past the end of a compression's output that [`keep_nonzeros`] may
/// write (a whole vector stored from its last nonzero).
pub(crate) const KEEP_SLACK: usize = 16;

/// Writes the nonzeros of `values` to the front of `out`, and their positions in
/// `values` to the front of `positions`; returns how many. A NaN is kept, `-0.0`
/// is not. Both outputs hold at least `values.len() + KEEP_SLACK` slots, past
/// the kept ones overwritten with anything.
///
/// # Panics
/// When an output is shorter, or a position would not fit in a `u32`.
pub(crate) fn keep_nonzeros(
    isa: Isa,
    values: &[f32],
    positions: &mut [u32],
    out: &mut [f32],
) -> usize {
    let room = values.len() + KEEP_SLACK;
    assert!(
        positions.len() >= room && out.len() >= room,
        "no room for the nonzeros"
    );
    assert!(u32::try_from(values.len()).is_ok(), "positions fit in u32");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(isa.is_supported(), "AVX-512F is not supported on this CPU");
            // SAFETY: the CPU has AVX-512F (asserted); the outputs' room is asserted above.
            unsafe { keep_nonzeros_avx512(values, positions, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(isa.is_supported(), "AVX2 is not supported on this CPU");
            // SAFETY: as above, for AVX2.
            unsafe { keep_nonzeros_avx2(values, positions, out) }
        }
        _ => keep_nonzeros_scalar(values.iter().copied(), 0, positions, out, 0),
    }
}

/// [`keep_nonzeros`] of `values`, the first at position `first`, after `kept`
/// already kept: every value written, kept only when nonzero (no branch to
/// mispredict).
fn keep_nonzeros_scalar(
    values: impl Iterator<Item = f32>,
    first: usize,
    positions: &mut [u32],
    out: &mut [f32],
    mut kept: usize,
) -> usize {
    for (j, v) in values.enumerate() {
        positions[kept] = (first + j) as u32;
        out[kept] = v;
        kept += usize::from(v != 0.0);
    }
    kept
}

/// Stores the lanes of `v` set in `nonzero` at `out[kept..]`, their positions
/// (`j` plus the lane) at `positions[kept..]`, with AVX-512's compress in
/// registers (to memory it is microcoded on Zen 4); returns the new `kept`.
///
/// # Safety
/// The CPU has AVX-512F; both outputs hold 16 slots from `kept`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_kept_avx512(
    v: std::arch::x86_64::__m512,
    nonzero: std::arch::x86_64::__mmask16,
    j: usize,
    positions: &mut [u32],
    out: &mut [f32],
    kept: usize,
) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        _mm512_storeu_ps(
            out.as_mut_ptr().add(kept),
            _mm512_maskz_compress_ps(nonzero, v),
        );
        let at = _mm512_add_epi32(lanes, _mm512_set1_epi32(j as i32));
        let at = _mm512_maskz_compress_epi32(nonzero, at);
        _mm512_storeu_si512(positions.as_mut_ptr().add(kept).cast(), at);
    }
    kept + nonzero.count_ones() as usize
}

/// [`keep_nonzeros`] with AVX-512's compress ([`store_kept_avx512`]).
///
/// # Safety
/// The CPU has AVX-512F; the outputs hold `values.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn keep_nonzeros_avx512(values: &[f32], positions: &mut [u32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let (mut kept, whole) = (0, values.len() - values.len() % 16);
    for j in (0..whole).step_by(16) {
        // SAFETY: `j + 16 <= values.len()`; `kept <= j`, so the 16 slots stored from
        // `kept` lie inside the outputs' `values.len() + KEEP_SLACK`.
        unsafe {
            let v = _mm512_loadu_ps(values.as_ptr().add(j));
            let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v, _mm512_setzero_ps());
            if nonzero != 0 {
                kept = store_kept_avx512(v, nonzero, j, positions, out, kept);
            }
        }
    }
    let rest = values[whole..].iter().copied();
    keep_nonzeros_scalar(rest, whole, positions, out, kept)
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

/// Stores the lanes of `v` set in `mask` (one bit a lane) at `out[kept..]`,
/// their positions (`j` plus the lane) at `positions[kept..]`, packed to the
/// front by a permutation from [`PACK_LANES`], whose lanes are also the
/// positions; returns the new `kept`.
///
/// # Safety
/// The CPU has AVX2; both outputs hold 8 slots from `kept`; `mask < 256`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_kept_avx2(
    v: std::arch::x86_64::__m256,
    mask: usize,
    j: usize,
    positions: &mut [u32],
    out: &mut [f32],
    kept: usize,
) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; each table row holds 8 lanes.
    unsafe {
        let lanes = _mm256_loadu_si256(PACK_LANES[mask].as_ptr().cast());
        _mm256_storeu_ps(
            out.as_mut_ptr().add(kept),
            _mm256_permutevar8x32_ps(v, lanes),
        );
        let at = _mm256_add_epi32(lanes, _mm256_set1_epi32(j as i32));
        _mm256_storeu_si256(positions.as_mut_ptr().add(kept).cast(), at);
    }
    kept + mask.count_ones() as usize
}

/// [`keep_nonzeros`] on AVX2 ([`store_kept_avx2`]).
///
/// # Safety
/// The CPU has AVX2; the outputs hold `values.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_nonzeros_avx2(values: &[f32], positions: &mut [u32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let (mut kept, whole) = (0, values.len() - values.len() % 8);
    for j in (0..whole).step_by(8) {
        // SAFETY: `j + 8 <= values.len()`; `kept <= j`, so the 8 slots stored from
        // `kept` lie inside the outputs; a movemask of 8 lanes is under 256.
        unsafe {
            let v = _mm256_loadu_ps(values.as_ptr().add(j));
            let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(v, _mm256_setzero_ps());
            let mask = _mm256_movemask_ps(nonzero) as usize;
            if mask != 0 {
                kept = store_kept_avx2(v, mask, j, positions, out, kept);
            }
        }
    }
    let rest = values[whole..].iter().copied();
    keep_nonzeros_scalar(rest, whole, positions, out, kept)
}

/// Writes the nonzero bytes of `bytes`, each as `byte as f32 / divisor`, to the
/// front of `out`, and their positions to the front of `positions`; returns how
/// many: [`keep_nonzeros`] of the scaled bytes, bit for bit, for a `divisor` under
/// which a byte is 0 exactly when its value is (see [`is_exact_divisor`]). Both
/// outputs hold at least `bytes.len() + KEEP_SLACK` slots.
///
/// # Panics
/// When an output is shorter, a position would not fit in a `u32`, or the divisor
/// is not exact.
pub(crate) fn keep_nonzero_bytes(
    isa: Isa,
    bytes: &[u8],
    divisor: f32,
    positions: &mut [u32],
    out: &mut [f32],
) -> usize {
    let room = bytes.len() + KEEP_SLACK;
    assert!(
        positions.len() >= room && out.len() >= room,
        "no room for the nonzeros"
    );
    assert!(u32::try_from(bytes.len()).is_ok(), "positions fit in u32");
    assert!(is_exact_divisor(divisor), "a byte over {divisor} may be 0");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(isa.is_supported(), "AVX-512F is not supported on this CPU");
            // SAFETY: the CPU has AVX-512F (asserted); the outputs' room is asserted above.
            unsafe { keep_nonzero_bytes_avx512(bytes, divisor, positions, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(isa.is_supported(), "AVX2 is not supported on this CPU");
            // SAFETY: as above, for AVX2.
            unsafe { keep_nonzero_bytes_avx2(bytes, divisor, positions, out) }
        }
        _ => keep_nonzeros_scalar(scaled(bytes, divisor), 0, positions, out, 0),
    }
}

/// Whether `byte as f32 / divisor` is 0 for the byte 0 alone, and never a NaN or
/// a subnormal (which the kernels flush to 0): a finite divisor between 1e-30 and
/// 1e30 in magnitude.
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
unsafe fn keep_nonzero_bytes_avx512(
    bytes: &[u8],
    divisor: f32,
    positions: &mut [u32],
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let (mut kept, whole) = (0, bytes.len() - bytes.len() % 16);
    let divisors = _mm512_set1_ps(divisor);
    for (j, chunk) in bytes[..whole].chunks_exact(16).enumerate() {
        let chunk: [u8; 16] = chunk.try_into().expect("chunks of 16");
        if u128::from_ne_bytes(chunk) == 0 {
            continue;
        }
        // SAFETY: `chunk` is 16 bytes; `kept <= 16·j`, so the 16 slots stored from
        // `kept` lie inside the outputs' `bytes.len() + KEEP_SLACK`.
        unsafe {
            let wide = _mm512_cvtepu8_epi32(_mm_loadu_si128(chunk.as_ptr().cast()));
            let nonzero = _mm512_test_epi32_mask(wide, wide);
            let v = _mm512_div_ps(_mm512_cvtepi32_ps(wide), divisors);
            kept = store_kept_avx512(v, nonzero, 16 * j, positions, out, kept);
        }
    }
    let rest = scaled(&bytes[whole..], divisor);
    keep_nonzeros_scalar(rest, whole, positions, out, kept)
}

/// [`keep_nonzero_bytes`] 8 bytes at a time: those all 0 skipped before any
/// arithmetic, the others widened, divided and stored by [`store_kept_avx2`].
///
/// # Safety
/// The CPU has AVX2; the outputs hold `bytes.len() + KEEP_SLACK` slots.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn keep_nonzero_bytes_avx2(
    bytes: &[u8],
    divisor: f32,
    positions: &mut [u32],
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let (mut kept, whole) = (0, bytes.len() - bytes.len() % 8);
    let divisors = _mm256_set1_ps(divisor);
    for (j, chunk) in bytes[..whole].chunks_exact(8).enumerate() {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunks of 8"));
        if word == 0 {
            continue;
        }
        // SAFETY: `kept <= 8·j`, so the 8 slots stored from `kept` lie inside the
        // outputs; a movemask of 8 lanes is under 256.
        unsafe {
            let wide = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(word as i64));
            let zero = _mm256_cmpeq_epi32(wide, _mm256_setzero_si256());
            let mask = !_mm256_movemask_ps(_mm256_castsi256_ps(zero)) as usize & 0xff;
            let v = _mm256_div_ps(_mm256_cvtepi32_ps(wide), divisors);
            kept = store_kept_avx2(v, mask, 8 * j, positions, out, kept);
        }
    }
    let rest = scaled(&bytes[whole..], divisor);
    keep_nonzeros_scalar(rest, whole, positions, out, kept)
}
