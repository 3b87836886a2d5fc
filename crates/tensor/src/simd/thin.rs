//! The inner loop of GEMMs whose output is only a few columns wide (the logits of
//! a classifier, n = 10), for AVX-512 and AVX2: each output is the dot product of
//! a row of A with a row of the packed Bᵀ, summed in 16 (or 8) lanes and then
//! across them. The portable kernel takes the general tiled path for these shapes.

use super::Isa;

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
    assert!(
        has_thin_loop(isa) && isa.is_supported(),
        "no thin loop for {} here",
        isa.name()
    );
    #[cfg(target_arch = "x86_64")]
    return match isa {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        Isa::Avx512 => unsafe { dots_avx512(a, bt, k) },
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        _ => a.map(|row| unsafe { dot_row_avx2(row, bt, k) }),
    };
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("only x86-64 has a thin loop ({a:?}, {bt:?}, {k})")
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
