//! GEMM microkernels, one per instruction set: AVX-512F and AVX2+FMA with
//! `std::arch`, and a portable one on `wide`'s vectors for every other target.

use super::{Isa, Kernels, Microkernel, TileEpilogue, TileMut};

pub const MAX_MR: usize = 12;
pub const MAX_NR: usize = 32;
/// The widest cache block of B of any kernel (`Microkernel::nc`).
pub const MAX_NC: usize = 512;

/// A's element (`i`, `p`) of a panel: `a[i·lda + p]` when `ROWS` (a row-major A
/// read in place), else `a[p·lda + i]` (a packed panel, or a transposed A).
///
/// # Safety
/// The element lies inside the allocation `a` points into (`assert_panels_fit`).
#[inline(always)]
unsafe fn a_at<const ROWS: bool>(a: *const f32, lda: usize, i: usize, p: usize) -> f32 {
    // SAFETY: the caller's contract.
    unsafe { *a.add(if ROWS { i * lda + p } else { p * lda + i }) }
}

/// The `MR × 32` AVX-512 product of a panel of `MR × kc` floats of A (laid out as
/// `ROWS` says, see [`a_at`]) and `kc` rows of 32 floats of B (`ldb` apart), in
/// `2·MR` zmm accumulators: two loads of B and `MR` broadcasts of A per step of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
fn avx512_product<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> (
    [std::arch::x86_64::__m512; MR],
    [std::arch::x86_64::__m512; MR],
) {
    use std::arch::x86_64::*;
    const NR: usize = 32;
    assert_panels_fit::<ROWS>(kc, a, lda, MR, b, ldb, NR);
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    for p in 0..kc {
        // SAFETY: row p of B starts at p·ldb, and `assert_panels_fit` keeps its
        // NR = 32 floats inside `b`.
        let (b0, b1) = unsafe {
            let b_row = b.as_ptr().add(p * ldb);
            (_mm512_loadu_ps(b_row), _mm512_loadu_ps(b_row.add(16)))
        };
        for i in 0..MR {
            // SAFETY: `assert_panels_fit` keeps the panel's MR × kc floats inside `a`.
            let av = _mm512_set1_ps(unsafe { a_at::<ROWS>(a.as_ptr(), lda, i, p) });
            lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
        }
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512_run<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (lo, hi) = avx512_product::<MR, ROWS>(kc, a, lda, b, ldb);
    let acc = &mut acc[..MR * 32];
    for i in 0..MR {
        // SAFETY: `acc` holds MR × 32 floats; row i's 32 floats start at i·32.
        unsafe {
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * 32), lo[i]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * 32 + 16), hi[i]);
        }
    }
}

/// The `MR × 32` products of A's panel with each of `c.cols / 32` strips of B
/// (each `strip_stride` floats after the one before), each stored straight into
/// its tile of C with the epilogue applied in registers: one call for a row of
/// tiles, where a call per tile cost small-depth GEMMs a fifth of their time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
fn avx512_into<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    strip_stride: usize,
    mut c: TileMut<'_>,
    epilogue: TileEpilogue<'_>,
) {
    use std::arch::x86_64::*;
    assert!(
        c.rows == MR && c.cols.is_multiple_of(32),
        "the tiles are not {MR}x32"
    );
    let zero = _mm512_setzero_ps();
    for s in 0..c.cols / 32 {
        let col = s * 32;
        let (lo, hi) = avx512_product::<MR, ROWS>(kc, a, lda, &b[s * strip_stride..], ldb);
        // One loop per epilogue, each small enough to unroll with the accumulators
        // kept in registers (one loop matching the epilogue on each row spilled them).
        match epilogue {
            TileEpilogue::None => store_rows(&mut c, col, lo, hi, |_, x0, x1| (x0, x1)),
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let bias = &bias[col..col + 32];
                // SAFETY: `bias` is cut to exactly 32 floats.
                let (b0, b1) = unsafe {
                    (
                        _mm512_loadu_ps(bias.as_ptr()),
                        _mm512_loadu_ps(bias.as_ptr().add(16)),
                    )
                };
                if matches!(epilogue, TileEpilogue::BiasRelu(_)) {
                    // max(0, x) returns x when x is NaN, as the scalar relu.
                    store_rows(&mut c, col, lo, hi, |_, x0, x1| {
                        let x0 = _mm512_max_ps(zero, _mm512_add_ps(x0, b0));
                        (x0, _mm512_max_ps(zero, _mm512_add_ps(x1, b1)))
                    })
                } else {
                    store_rows(&mut c, col, lo, hi, |_, x0, x1| {
                        (_mm512_add_ps(x0, b0), _mm512_add_ps(x1, b1))
                    })
                }
            }
            TileEpilogue::ReluMask { mask, row_stride } => {
                store_rows(&mut c, col, lo, hi, |i, x0, x1| {
                    let m = &mask[i * row_stride + col..i * row_stride + col + 32];
                    // SAFETY: `m` is cut to exactly 32 floats.
                    let (m0, m1) = unsafe {
                        (
                            _mm512_loadu_ps(m.as_ptr()),
                            _mm512_loadu_ps(m.as_ptr().add(16)),
                        )
                    };
                    let k0 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m0, zero);
                    let k1 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m1, zero);
                    (_mm512_maskz_mov_ps(k0, x0), _mm512_maskz_mov_ps(k1, x1))
                })
            }
        }
    }
}

/// Stores row `i` of the `MR × 32` tile at column `col` of `c`, `(lo[i], hi[i])`
/// added to C's values when the tile accumulates, as `epilogue(i, ·, ·)` returns it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn store_rows<const MR: usize>(
    c: &mut TileMut<'_>,
    col: usize,
    lo: [std::arch::x86_64::__m512; MR],
    hi: [std::arch::x86_64::__m512; MR],
    epilogue: impl Fn(
        usize,
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
    ) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512),
) {
    use std::arch::x86_64::*;
    let accumulate = c.accumulate;
    for i in 0..MR {
        let row = &mut c.row_mut(i)[col..col + 32];
        let (mut x0, mut x1) = (lo[i], hi[i]);
        // SAFETY (every load and store): `row` is cut to exactly 32 floats, so the
        // accesses at offsets 0 and 16 stay inside it.
        unsafe {
            if accumulate {
                x0 = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr()), x0);
                x1 = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(16)), x1);
            }
            let (y0, y1) = epilogue(i, x0, x1);
            _mm512_storeu_ps(row.as_mut_ptr(), y0);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), y1);
        }
    }
}

/// The `MR × 16` AVX2 product of a panel of `MR × kc` floats of A (laid out as
/// `ROWS` says, see [`a_at`]) and `kc` rows of 16 floats of B (`ldb` apart), in
/// `2·MR` ymm accumulators: two loads of B and `MR` broadcasts of A per step of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn avx2_product<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> (
    [std::arch::x86_64::__m256; MR],
    [std::arch::x86_64::__m256; MR],
) {
    use std::arch::x86_64::*;
    const NR: usize = 16;
    assert_panels_fit::<ROWS>(kc, a, lda, MR, b, ldb, NR);
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    for p in 0..kc {
        // SAFETY: row p of B starts at p·ldb, and `assert_panels_fit` keeps its
        // NR = 16 floats inside `b`.
        let (b0, b1) = unsafe {
            let b_row = b.as_ptr().add(p * ldb);
            (_mm256_loadu_ps(b_row), _mm256_loadu_ps(b_row.add(8)))
        };
        for i in 0..MR {
            // SAFETY: `assert_panels_fit` keeps the panel's MR × kc floats inside `a`.
            let av = _mm256_set1_ps(unsafe { a_at::<ROWS>(a.as_ptr(), lda, i, p) });
            lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
        }
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_run<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (lo, hi) = avx2_product::<MR, ROWS>(kc, a, lda, b, ldb);
    for (row, (l, h)) in acc[..MR * 16].chunks_exact_mut(16).zip(lo.iter().zip(&hi)) {
        // SAFETY: each `row` holds exactly 16 floats: stores at 0 and 8 fit.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), *l);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), *h);
        }
    }
}

/// [`avx512_into`] for AVX2: the `MR × 16` products with each of `c.cols / 16`
/// strips of B, each stored straight into its tile of C with the epilogue applied
/// in registers (the scalar store of each tile cost the AVX2 GEMMs a tenth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn avx2_into<const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    strip_stride: usize,
    mut c: TileMut<'_>,
    epilogue: TileEpilogue<'_>,
) {
    use std::arch::x86_64::*;
    assert!(
        c.rows == MR && c.cols.is_multiple_of(16),
        "the tiles are not {MR}x16"
    );
    let zero = _mm256_setzero_ps();
    for s in 0..c.cols / 16 {
        let col = s * 16;
        let (lo, hi) = avx2_product::<MR, ROWS>(kc, a, lda, &b[s * strip_stride..], ldb);
        // SAFETY (each call of `store_rows_avx2`): this function runs only where
        // AVX2 is supported, as its `target_feature` says.
        match epilogue {
            TileEpilogue::None => unsafe {
                store_rows_avx2(&mut c, col, lo, hi, |_, x0, x1| (x0, x1))
            },
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let bias = &bias[col..col + 16];
                // SAFETY: `bias` is cut to exactly 16 floats.
                let (b0, b1) = unsafe {
                    (
                        _mm256_loadu_ps(bias.as_ptr()),
                        _mm256_loadu_ps(bias.as_ptr().add(8)),
                    )
                };
                if matches!(epilogue, TileEpilogue::BiasRelu(_)) {
                    // max(0, x) returns x when x is NaN, as the scalar relu.
                    let bias_relu = |_, x0, x1| {
                        let x0 = _mm256_max_ps(zero, _mm256_add_ps(x0, b0));
                        (x0, _mm256_max_ps(zero, _mm256_add_ps(x1, b1)))
                    };
                    unsafe { store_rows_avx2(&mut c, col, lo, hi, bias_relu) }
                } else {
                    let bias = |_, x0, x1| (_mm256_add_ps(x0, b0), _mm256_add_ps(x1, b1));
                    unsafe { store_rows_avx2(&mut c, col, lo, hi, bias) }
                }
            }
            TileEpilogue::ReluMask { mask, row_stride } => {
                let relu_mask = |i: usize, x0, x1| {
                    let m = &mask[i * row_stride + col..i * row_stride + col + 16];
                    // SAFETY: `m` is cut to exactly 16 floats.
                    let (m0, m1) = unsafe {
                        (
                            _mm256_loadu_ps(m.as_ptr()),
                            _mm256_loadu_ps(m.as_ptr().add(8)),
                        )
                    };
                    let k0 = _mm256_cmp_ps::<_CMP_GT_OQ>(m0, zero);
                    let k1 = _mm256_cmp_ps::<_CMP_GT_OQ>(m1, zero);
                    (_mm256_and_ps(k0, x0), _mm256_and_ps(k1, x1))
                };
                unsafe { store_rows_avx2(&mut c, col, lo, hi, relu_mask) }
            }
        }
    }
}

/// [`store_rows`] for AVX2: row `i` of the `MR × 16` tile at column `col` of `c`.
/// Always inlined (and so without a `target_feature` of its own, which forbids
/// that): as a call, its twelve accumulators went through memory, a fifth of dH's time.
///
/// # Safety
/// The CPU supports AVX2 (it is called only from [`avx2_into`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_rows_avx2<const MR: usize>(
    c: &mut TileMut<'_>,
    col: usize,
    lo: [std::arch::x86_64::__m256; MR],
    hi: [std::arch::x86_64::__m256; MR],
    epilogue: impl Fn(
        usize,
        std::arch::x86_64::__m256,
        std::arch::x86_64::__m256,
    ) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256),
) {
    use std::arch::x86_64::*;
    let accumulate = c.accumulate;
    for i in 0..MR {
        let row = &mut c.row_mut(i)[col..col + 16];
        let (mut x0, mut x1) = (lo[i], hi[i]);
        // SAFETY (every load and store): `row` is cut to exactly 16 floats, so the
        // accesses at offsets 0 and 8 stay inside it; the CPU has AVX2 (the contract).
        unsafe {
            if accumulate {
                x0 = _mm256_add_ps(_mm256_loadu_ps(row.as_ptr()), x0);
                x1 = _mm256_add_ps(_mm256_loadu_ps(row.as_ptr().add(8)), x1);
            }
            let (y0, y1) = epilogue(i, x0, x1);
            _mm256_storeu_ps(row.as_mut_ptr(), y0);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), y1);
        }
    }
}

/// The `4 × 16` product on `wide`'s 8-lane vectors (NEON pairs on aarch64, SSE
/// pairs on baseline x86-64), in eight accumulators.
fn portable_4x16<const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    acc: &mut [f32],
) {
    use wide::f32x8;
    const MR: usize = 4;
    const NR: usize = 16;
    let lanes = |s: &[f32]| f32x8::from(<[f32; 8]>::try_from(s).expect("8 floats"));
    let mut lo = [f32x8::ZERO; MR];
    let mut hi = [f32x8::ZERO; MR];
    for p in 0..kc {
        let b_row = &b[p * ldb..p * ldb + NR];
        let (b0, b1) = (lanes(&b_row[..8]), lanes(&b_row[8..]));
        for i in 0..MR {
            let av = f32x8::splat(a[if ROWS { i * lda + p } else { p * lda + i }]);
            lo[i] = av.mul_add(b0, lo[i]);
            hi[i] = av.mul_add(b1, hi[i]);
        }
    }
    for (row, (l, h)) in acc[..MR * NR].chunks_exact_mut(NR).zip(lo.iter().zip(&hi)) {
        row[..8].copy_from_slice(&l.to_array());
        row[8..].copy_from_slice(&h.to_array());
    }
}

/// Checks that a panel of `mr × kc` floats of A (`mr` rows of `kc`, `lda` apart,
/// when `ROWS`, else `kc` columns of `mr`) and `kc` rows of `nr` floats of B,
/// `ldb` apart, lie inside `a` and `b`: the bounds the unsafe loads of the
/// kernels rely on.
fn assert_panels_fit<const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    mr: usize,
    b: &[f32],
    ldb: usize,
    nr: usize,
) {
    // `lines` lines of `width` floats, `ld` apart, from the start of `len` floats.
    let fits = |len: usize, lines: usize, ld: usize, width: usize| {
        (lines - 1)
            .checked_mul(ld)
            .and_then(|last| last.checked_add(width))
            .is_some_and(|end| end <= len)
    };
    let a_fits = match ROWS {
        true => fits(a.len(), mr, lda, kc),
        false => fits(a.len(), kc, lda, mr),
    };
    assert!(
        kc == 0 || (a_fits && fits(b.len(), kc, ldb, nr)),
        "panel of A or B too short"
    );
}

/// The AVX-512 kernel `MR` rows tall.
#[cfg(target_arch = "x86_64")]
fn avx512_kernel<const MR: usize>() -> Microkernel {
    fn kernels<const MR: usize, const ROWS: bool>() -> Kernels {
        Kernels {
            // SAFETY: AVX-512 kernels are reached only through `Isa::kernel_for`,
            // which asserts that the CPU supports AVX-512F and FMA.
            run: |kc, a, lda, b, ldb, acc| unsafe {
                avx512_run::<MR, ROWS>(kc, a, lda, b, ldb, acc)
            },
            // SAFETY: as above.
            into: Some(|kc, a, lda, b, ldb, strip_stride, c, epilogue| unsafe {
                avx512_into::<MR, ROWS>(kc, a, lda, b, ldb, strip_stride, c, epilogue)
            }),
        }
    }
    Microkernel {
        mr: MR,
        nr: 32,
        // Zen 4's 1 MiB of L2 holds a block of 400 × 512.
        b_block_floats: 400 * MAX_NC,
        b_in_place: true,
        columns: kernels::<MR, false>(),
        rows: kernels::<MR, true>(),
    }
}

/// The AVX2 kernel `MR` rows tall.
#[cfg(target_arch = "x86_64")]
fn avx2_kernel<const MR: usize>() -> Microkernel {
    fn kernels<const MR: usize, const ROWS: bool>() -> Kernels {
        Kernels {
            // SAFETY: AVX2 kernels are reached only through `Isa::kernel_for`, which
            // asserts that the CPU supports AVX2 and FMA.
            run: |kc, a, lda, b, ldb, acc| unsafe { avx2_run::<MR, ROWS>(kc, a, lda, b, ldb, acc) },
            // SAFETY: as above.
            into: Some(|kc, a, lda, b, ldb, strip_stride, c, epilogue| unsafe {
                avx2_into::<MR, ROWS>(kc, a, lda, b, ldb, strip_stride, c, epilogue)
            }),
        }
    }
    Microkernel {
        mr: MR,
        nr: 16,
        // A quarter of Zen 3's 512 KiB of L2; strips read in place at the weights'
        // 2 KiB row stride left L2 (and L1) thrashing there: 0.6x the speed.
        b_block_floats: 64 * 1024,
        b_in_place: false,
        columns: kernels::<MR, false>(),
        rows: kernels::<MR, true>(),
    }
}

/// The microkernel of `isa` for a GEMM of `m` rows. On AVX-512 a GEMM of at most
/// 12 rows (a thin output computed transposed, a handful of samples) gets a kernel
/// exactly `m` rows tall rather than 8-row tiles partly padding.
pub(super) fn for_rows(isa: Isa, m: usize) -> Microkernel {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        match m {
            1 => return avx512_kernel::<1>(),
            2 => return avx512_kernel::<2>(),
            3 => return avx512_kernel::<3>(),
            4 => return avx512_kernel::<4>(),
            5 => return avx512_kernel::<5>(),
            6 => return avx512_kernel::<6>(),
            7 => return avx512_kernel::<7>(),
            9 => return avx512_kernel::<9>(),
            10 => return avx512_kernel::<10>(),
            11 => return avx512_kernel::<11>(),
            12 => return avx512_kernel::<12>(),
            _ => {}
        }
    }
    table(isa)
}

fn table(isa: Isa) -> Microkernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512_kernel::<8>(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => avx2_kernel::<6>(),
        _ => Microkernel {
            mr: 4,
            nr: 16,
            b_block_floats: 64 * 1024,
            b_in_place: false,
            columns: Kernels {
                run: portable_4x16::<false>,
                into: None,
            },
            rows: Kernels {
                run: portable_4x16::<true>,
                into: None,
            },
        },
    }
}
