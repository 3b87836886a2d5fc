//! The inner loop of GEMMs whose output is only a few columns wide (the logits of
//! a classifier, n = 10), for AVX-512 and AVX2: each output is the dot product of
//! a row of A with a row of the packed Bᵀ, summed in 16 (or 8) lanes and then
//! across them. The portable kernel takes the general tiled path for these shapes.

use crate::simd::{on_instruction_set, Isa};

/// The widest output the thin loop takes (rounded up to [`THIN_STEP`] columns).
pub(crate) const MAX_THIN_N: usize = 12;
/// Output widths come in steps of 2 columns, the extra one zero in Bᵀ.
pub(crate) const THIN_STEP: usize = 2;

/// Whether GEMMs with thin outputs take this loop on `isa`.
pub(crate) fn has_thin_loop(isa: Isa) -> bool {
    matches!(isa, Isa::Avx512 | Isa::Avx2Fma)
}

/// `out[r][j] = Σ_p a[r][p] · bt[j·k + p]` for the `R` rows in `a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_avx512<const R: usize, const N: usize>(
    a: [&[f32]; R],
    bt: &[f32],
    k: usize,
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    assert!(a.iter().all(|row| row.len() >= k) && bt.len() >= N * k);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let full = k - k % 16;
    for p in (0..full).step_by(16) {
        for r in 0..R {
            // SAFETY: p + 16 <= k <= a[r].len(), asserted above.
            let av = unsafe { _mm512_loadu_ps(a[r].as_ptr().add(p)) };
            for (j, acc) in acc[r].iter_mut().enumerate() {
                // SAFETY: j·k + p + 16 <= N·k <= bt.len(), asserted above.
                let bv = unsafe { _mm512_loadu_ps(bt.as_ptr().add(j * k + p)) };
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
    }
    let mut out = [[0.0f32; N]; R];
    for r in 0..R {
        for j in 0..N {
            let mut sum = _mm512_reduce_add_ps(acc[r][j]);
            for p in full..k {
                sum = a[r][p].mul_add(bt[j * k + p], sum);
            }
            out[r][j] = sum;
        }
    }
    out
}

/// [`dots_avx512`] for one row on AVX2, in 8 lanes: `N` accumulators (up to 12
/// of the 16 ymm registers) where two rows would spill.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_row_avx2<const N: usize>(a: &[f32], bt: &[f32], k: usize) -> [f32; N] {
    use std::arch::x86_64::*;
    assert!(a.len() >= k && bt.len() >= N * k);
    let mut acc = [_mm256_setzero_ps(); N];
    let full = k - k % 8;
    for p in (0..full).step_by(8) {
        // SAFETY: p + 8 <= k <= a.len(), asserted above.
        let av = unsafe { _mm256_loadu_ps(a.as_ptr().add(p)) };
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: j·k + p + 8 <= N·k <= bt.len(), asserted above.
            let bv = unsafe { _mm256_loadu_ps(bt.as_ptr().add(j * k + p)) };
            *acc = _mm256_fmadd_ps(av, bv, *acc);
        }
    }
    let mut out = [0.0f32; N];
    for (j, (out, acc)) in out.iter_mut().zip(acc).enumerate() {
        // Lanes added pairwise in a fixed order: the same bits on every call.
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
        for p in full..k {
            sum = a[p].mul_add(bt[j * k + p], sum);
        }
        *out = sum;
    }
    out
}

fn dots<const R: usize, const N: usize>(
    isa: Isa,
    a: [&[f32]; R],
    bt: &[f32],
    k: usize,
) -> [[f32; N]; R] {
    on_instruction_set!(isa;
        avx512 => dots_avx512(a, bt, k);
        avx2 => a.map(|row| dot_row_avx2(row, bt, k));
        _ => unreachable!("{} has no thin loop ({a:?}, {bt:?}, {k})", isa.name())
    )
}

/// The products of one or two rows of A (`k` values each) with the `width` rows of
/// the packed `bt` (`width × k`; `width` a multiple of [`THIN_STEP`] up to
/// [`MAX_THIN_N`]), in the first `width` values of each output row.
///
/// # Panics
/// When `isa` has no thin loop ([`has_thin_loop`]) or is not supported here.
pub(crate) fn thin_dots(
    isa: Isa,
    a: &[&[f32]],
    bt: &[f32],
    k: usize,
    width: usize,
) -> [[f32; MAX_THIN_N]; 2] {
    fn widen<const N: usize, const R: usize>(rows: [[f32; N]; R]) -> [[f32; MAX_THIN_N]; 2] {
        let mut out = [[0.0; MAX_THIN_N]; 2];
        for (dst, src) in out.iter_mut().zip(rows) {
            dst[..N].copy_from_slice(&src);
        }
        out
    }
    match (a, width) {
        ([a0, a1], 2) => widen(dots::<2, 2>(isa, [a0, a1], bt, k)),
        ([a0, a1], 4) => widen(dots::<2, 4>(isa, [a0, a1], bt, k)),
        ([a0, a1], 6) => widen(dots::<2, 6>(isa, [a0, a1], bt, k)),
        ([a0, a1], 8) => widen(dots::<2, 8>(isa, [a0, a1], bt, k)),
        ([a0, a1], 10) => widen(dots::<2, 10>(isa, [a0, a1], bt, k)),
        ([a0, a1], 12) => widen(dots::<2, 12>(isa, [a0, a1], bt, k)),
        ([a0], 2) => widen(dots::<1, 2>(isa, [a0], bt, k)),
        ([a0], 4) => widen(dots::<1, 4>(isa, [a0], bt, k)),
        ([a0], 6) => widen(dots::<1, 6>(isa, [a0], bt, k)),
        ([a0], 8) => widen(dots::<1, 8>(isa, [a0], bt, k)),
        ([a0], 10) => widen(dots::<1, 10>(isa, [a0], bt, k)),
        ([a0], 12) => widen(dots::<1, 12>(isa, [a0], bt, k)),
        _ => panic!("thin_dots takes 1 or 2 rows and an even width up to 12"),
    }
}

/// `bt[j·k + p] = b[p·stride + j]` for `p < k` and `j < n`: the first `n` columns
/// of the row-major `b` (`k` rows, `stride` apart) as the rows of `bt`, the
/// packed Bᵀ of [`thin_dots`]. Copies each value unchanged, on any `isa`.
///
/// # Panics
/// When `n` exceeds [`MAX_THIN_N`] or a slice is too short.
pub(crate) fn transpose_thin(
    isa: Isa,
    b: &[f32],
    stride: usize,
    k: usize,
    n: usize,
    bt: &mut [f32],
) {
    assert!(n <= MAX_THIN_N && bt.len() >= n * k);
    assert!(
        k == 0 || b.len() >= (k - 1) * stride + n,
        "b has k rows of n values"
    );
    on_instruction_set!(isa;
        avx512 => transpose_thin_avx2(b, stride, k, n, bt);
        avx2 => transpose_thin_avx2(b, stride, k, n, bt);
        // A value at a time: no GEMM takes the thin path without a thin loop.
        _ => transpose_thin_columns(b, stride, 0..n, 0..k, k, bt)
    )
}

/// [`transpose_thin`] of `columns` and `rows` only, a value at a time.
fn transpose_thin_columns(
    b: &[f32],
    stride: usize,
    columns: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
    k: usize,
    bt: &mut [f32],
) {
    for j in columns {
        for p in rows.clone() {
            bt[j * k + p] = b[p * stride + j];
        }
    }
}

/// [`transpose_thin`] on AVX2: eight rows at a time, their first eight columns
/// transposed in registers and stored as eight runs of Bᵀ's rows; the columns
/// past eight and the last rows a value at a time: a value at a time to rows of
/// Bᵀ 2 KiB apart took a large share of fwd2's time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transpose_thin_avx2(b: &[f32], stride: usize, k: usize, n: usize, bt: &mut [f32]) {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let full_rows = k - k % LANES;
    if n >= LANES {
        assert!(full_rows == 0 || b.len() >= (full_rows - 1) * stride + LANES);
        assert!(bt.len() >= (LANES - 1) * k + full_rows);
        for p in (0..full_rows).step_by(LANES) {
            // SAFETY: row p + q < full_rows starts at (p + q)·stride, and its first
            // LANES values lie within b, asserted above.
            let r: [__m256; LANES] = std::array::from_fn(|q| unsafe {
                _mm256_loadu_ps(b.as_ptr().add((p + q) * stride))
            });
            // The 8 × 8 transpose: pairs of rows interleaved, then pairs of pairs,
            // then the 128-bit halves.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let s = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            let columns = [
                _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
                _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
                _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
                _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
                _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
                _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
                _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
                _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
            ];
            for (j, column) in columns.into_iter().enumerate() {
                // SAFETY: j·k + p + LANES <= (LANES - 1)·k + full_rows <= bt.len(),
                // asserted above.
                unsafe { _mm256_storeu_ps(bt.as_mut_ptr().add(j * k + p), column) };
            }
        }
    }
    let vector_columns = if n >= LANES { LANES } else { 0 };
    transpose_thin_columns(b, stride, vector_columns..n, 0..full_rows, k, bt);
    transpose_thin_columns(b, stride, 0..n, full_rows..k, k, bt);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn transpose_thin_matches_the_reference_on_every_isa() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for isa in Isa::available() {
            for k in [0, 1, 7, 8, 9, 16, 61, 512, 515] {
                for n in 1..=MAX_THIN_N {
                    let stride = n + rng.gen_range(0..3);
                    let b: Vec<f32> = (0..k * stride).map(|_| rng.gen()).collect();
                    let mut fast = vec![f32::NAN; n * k];
                    let mut reference = fast.clone();
                    transpose_thin(isa, &b, stride, k, n, &mut fast);
                    for j in 0..n {
                        for p in 0..k {
                            reference[j * k + p] = b[p * stride + j];
                        }
                    }
                    let same = fast
                        .iter()
                        .zip(&reference)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{} k={k} n={n} stride={stride}", isa.name());
                }
            }
        }
    }
}
