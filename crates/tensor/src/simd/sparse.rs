//! Sparse rows: a row of floats compressed to its nonzeros and their positions,
//! and the product of such a row (B's row indices and values) with B, each output
//! a chain of FMAs over the entries in their order, as the dense kernels chain
//! over every step of k, so that a row of zeros skipped gives the dense kernel's
//! bits.

#[cfg(target_arch = "x86_64")]
use super::tiles::Vector;
use super::Isa;
use crate::activation::relu;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

/// Vectors summed per pass over the entries: eight FMA chains in flight hide the
/// FMA latency, and B's rows are read once per eight vectors of output.
const CHAINS: usize = 8;

/// What becomes of a row's sums before they are stored.
#[derive(Clone, Copy)]
pub(crate) struct RowFinish<'a> {
    /// Added to the values already in the output (a later block of depth).
    pub accumulate: bool,
    /// Added after the sums (one per output).
    pub bias: Option<&'a [f32]>,
    /// `max(0, x)` after the bias.
    pub relu: bool,
}

/// `out[j] = Σ_e value[e] · b[index[e]·ldb + j]` for each `j` of `out`, the sum a
/// chain of FMAs from zero in the order of the entries, then finished as `finish`
/// says (the dense tiles' order of operations).
///
/// # Panics
/// When the entries differ in number, or an entry's row of B (its `out.len()`
/// floats from `index·ldb`) is not inside `b`, or the bias is shorter than `out`.
pub(crate) fn sparse_row_product(
    isa: Isa,
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    assert_eq!(index.len(), value.len(), "one value per index");
    if let Some(bias) = finish.bias {
        assert!(bias.len() >= out.len(), "a bias for every output");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(isa.is_supported(), "AVX-512F is not supported on this CPU");
            // SAFETY: the CPU has AVX-512F and FMA (asserted).
            unsafe { sparse_row_product_avx512(index, value, b, ldb, out, finish) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(
                isa.is_supported(),
                "AVX2 and FMA are not supported on this CPU"
            );
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { sparse_row_product_avx2(index, value, b, ldb, out, finish) }
        }
        _ => sparse_row_product_portable(index, value, b, ldb, out, finish),
    }
}

/// Panics unless every entry's row of B (`width` floats from `index·ldb`) lies
/// inside B's `len` floats. Inlined into each instruction set's kernel, whose
/// vectors then find the greatest index (an MNIST row's 150 in a few dozen cycles).
#[inline(always)]
fn assert_rows_inside(index: &[u32], ldb: usize, width: usize, len: usize) {
    let last_row = index.iter().copied().fold(0, u32::max) as usize;
    let end = last_row
        .checked_mul(ldb)
        .and_then(|at| at.checked_add(width));
    assert!(
        index.is_empty() || end.is_some_and(|end| end <= len),
        "an entry's row of B lies outside B"
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn sparse_row_product_avx512(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    f: RowFinish,
) {
    assert_rows_inside(index, ldb, out.len(), b.len());
    // SAFETY: compiled for AVX-512F, run only where the caller has checked it; the bounds are checked above.
    unsafe { row_product::<__m512>(index, value, b, ldb, out, f) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sparse_row_product_avx2(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    f: RowFinish,
) {
    assert_rows_inside(index, ldb, out.len(), b.len());
    // SAFETY: compiled for AVX2 and FMA, run only where the caller has checked them; the bounds are checked above.
    unsafe { row_product::<__m256>(index, value, b, ldb, out, f) }
}

/// [`sparse_row_product`] on `V`'s vectors: passes of [`CHAINS`] vectors, then
/// one vector at a time, then the last columns one float at a time (`mul_add`
/// rounds once, as the vector FMA does in each lane).
///
/// # Safety
/// The CPU supports `V`'s instruction set; every entry's row of B holds
/// `out.len()` floats from `index·ldb` inside `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_product<V: Vector>(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    let (lanes, n) = (V::LANES, out.len());
    let (mut col, whole) = (0, n - n % V::LANES);
    // SAFETY (every vector operation and access): the caller's contract; each
    // pass reads and writes columns `col..col + width` with `col + width <= n`.
    unsafe {
        while col + CHAINS * lanes <= whole {
            let sums = chains::<V, CHAINS>(index, value, b.as_ptr().add(col), ldb);
            finish_vectors(&sums, &mut out[col..col + CHAINS * lanes], col, finish);
            col += CHAINS * lanes;
        }
        while col < whole {
            let sums = chains::<V, 1>(index, value, b.as_ptr().add(col), ldb);
            finish_vectors(&sums, &mut out[col..col + lanes], col, finish);
            col += lanes;
        }
    }
    for j in whole..n {
        let mut sum = 0.0f32;
        for (&i, &v) in index.iter().zip(value) {
            sum = v.mul_add(b[i as usize * ldb + j], sum);
        }
        out[j] = finish_scalar(sum, out[j], j, finish);
    }
}

/// `W` vectors of sums, the entries' rows of B from `b` (`ldb` apart).
///
/// # Safety
/// As [`row_product`], for the `W · LANES` floats of each row from `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn chains<V: Vector, const W: usize>(
    index: &[u32],
    value: &[f32],
    b: *const f32,
    ldb: usize,
) -> [V; W] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut sums = [V::zero(); W];
        for (&i, &v) in index.iter().zip(value) {
            let (a, row) = (V::splat(v), b.add(i as usize * ldb));
            for (w, sum) in sums.iter_mut().enumerate() {
                *sum = V::mul_add(a, V::load(row.add(w * V::LANES)), *sum);
            }
        }
        sums
    }
}

/// Stores `sums` into `out` (their `W · LANES` floats, column `col` of the row)
/// as `finish` says.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `out` holds exactly `W · LANES` floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish_vectors<V: Vector, const W: usize>(
    sums: &[V; W],
    out: &mut [f32],
    col: usize,
    finish: RowFinish<'_>,
) {
    for (w, &sum) in sums.iter().enumerate() {
        let offset = w * V::LANES;
        // SAFETY: `out` and the bias (at least `col + out.len()` floats, asserted
        // by `sparse_row_product`) hold the LANES floats at `offset`; the caller's contract.
        unsafe {
            let at = out.as_mut_ptr().add(offset);
            let mut x = if finish.accumulate {
                V::load(at).add(sum)
            } else {
                sum
            };
            if let Some(bias) = finish.bias {
                x = x.add(V::load(bias.as_ptr().add(col + offset)));
            }
            if finish.relu {
                x = x.relu();
            }
            x.store(at);
        }
    }
}

/// One output finished as `finish` says: `sum` (added to `old` when accumulating),
/// the bias of column `col`, relu.
fn finish_scalar(sum: f32, old: f32, col: usize, finish: RowFinish<'_>) -> f32 {
    let mut x = if finish.accumulate { old + sum } else { sum };
    if let Some(bias) = finish.bias {
        x += bias[col];
    }
    match finish.relu {
        true => relu(x),
        false => x,
    }
}

/// [`sparse_row_product`] on `wide`'s 8-lane vectors, the multiply-add the
/// portable GEMM kernel uses; the last columns in a zero-padded vector.
fn sparse_row_product_portable(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    use wide::f32x8;
    const LANES: usize = 8;
    assert_rows_inside(index, ldb, out.len(), b.len());
    for col in (0..out.len()).step_by(LANES) {
        let width = LANES.min(out.len() - col);
        let mut sum = f32x8::ZERO;
        for (&i, &v) in index.iter().zip(value) {
            let start = i as usize * ldb + col;
            let mut lanes = [0.0f32; LANES];
            lanes[..width].copy_from_slice(&b[start..start + width]);
            sum = f32x8::splat(v).mul_add(f32x8::from(lanes), sum);
        }
        for (j, s) in sum.to_array()[..width].iter().enumerate() {
            out[col + j] = finish_scalar(*s, out[col + j], col + j, finish);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: RowFinish<'static> = RowFinish {
        accumulate: false,
        bias: None,
        relu: false,
    };

    /// Each instruction set's kernel refuses an entry whose row of B would run
    /// past B's end, before it reads anything.
    #[test]
    fn an_entry_past_b_is_refused_on_every_instruction_set() {
        let b = vec![1.0f32; 4 * 16];
        for isa in Isa::available() {
            let refused = std::panic::catch_unwind(|| {
                let mut out = vec![0.0f32; 16];
                sparse_row_product(isa, &[1, 4], &[1.0, 1.0], &b, 16, &mut out, PLAIN);
            });
            let message = refused.expect_err("row 4 of a 4-row B was read");
            let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
            assert_eq!(text, "an entry's row of B lies outside B", "{isa:?}");
            let mut out = vec![0.0f32; 16];
            sparse_row_product(isa, &[0, 3], &[1.0, 2.0], &b, 16, &mut out, PLAIN);
            assert!(out.iter().all(|&x| x == 3.0), "{isa:?}");
        }
    }
}
