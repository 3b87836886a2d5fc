//! GEMM microkernels. One generic body, compiled once per instruction set inside a
//! `#[target_feature]` function, so the compiler vectorises it for that set.

use super::{Isa, Microkernel, TileEpilogue, TileMut};

pub const MAX_MR: usize = 8;
pub const MAX_NR: usize = 32;

/// The kernel body: `MR × NR` accumulators live in registers across the `kc` loop.
/// `FUSED` uses fused multiply-add (exact on every ISA that has it).
#[inline(always)]
fn body<const MR: usize, const NR: usize, const FUSED: bool>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    acc: &mut [f32],
) {
    let a = &a[..kc * MR];
    let b = &b[..kc * NR];
    let mut tile = [[0.0f32; NR]; MR];
    for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for i in 0..MR {
            let av = a_col[i];
            for j in 0..NR {
                tile[i][j] = if FUSED {
                    av.mul_add(b_row[j], tile[i][j])
                } else {
                    tile[i][j] + av * b_row[j]
                };
            }
        }
    }
    for (dst, row) in acc.chunks_exact_mut(NR).zip(&tile) {
        dst.copy_from_slice(row);
    }
}

/// The `8 × 32` AVX-512 product of packed panels, in sixteen zmm accumulators:
/// two loads of B and eight broadcasts of A per step of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
fn avx512_8x32_product(
    kc: usize,
    a: &[f32],
    b: &[f32],
) -> (
    [std::arch::x86_64::__m512; 8],
    [std::arch::x86_64::__m512; 8],
) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    const NR: usize = 32;
    let (a, b) = (&a[..kc * MR], &b[..kc * NR]);
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    for (a_col, b_row) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        // SAFETY: `b_row` holds exactly NR = 32 floats, so both 16-float loads are in bounds.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(b_row.as_ptr()),
                _mm512_loadu_ps(b_row.as_ptr().add(16)),
            )
        };
        for i in 0..MR {
            let av = _mm512_set1_ps(a_col[i]);
            lo[i] = _mm512_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(av, b1, hi[i]);
        }
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512_8x32(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    use std::arch::x86_64::*;
    let (lo, hi) = avx512_8x32_product(kc, a, b);
    let acc = &mut acc[..8 * 32];
    for i in 0..8 {
        // SAFETY: `acc` holds 8 × 32 floats; row i's 32 floats start at i·32.
        unsafe {
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * 32), lo[i]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * 32 + 16), hi[i]);
        }
    }
}

/// The `8 × 32` product stored straight into a full tile of C, with the epilogue
/// applied in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512_8x32_into(kc: usize, a: &[f32], b: &[f32], c: TileMut<'_>, epilogue: TileEpilogue<'_>) {
    use std::arch::x86_64::*;
    let (lo, hi) = avx512_8x32_product(kc, a, b);
    let zero = _mm512_setzero_ps();
    for i in 0..8 {
        let row = &mut c.data[i * c.row_stride..i * c.row_stride + 32];
        let (mut x0, mut x1) = (lo[i], hi[i]);
        // SAFETY (every load and store below): each slice is cut to exactly 32 floats
        // first, so the loads at offsets 0 and 16 stay inside it.
        unsafe {
            if c.accumulate {
                x0 = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr()), x0);
                x1 = _mm512_add_ps(_mm512_loadu_ps(row.as_ptr().add(16)), x1);
            }
            match epilogue {
                TileEpilogue::None => {}
                TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                    let bias = &bias[..32];
                    x0 = _mm512_add_ps(x0, _mm512_loadu_ps(bias.as_ptr()));
                    x1 = _mm512_add_ps(x1, _mm512_loadu_ps(bias.as_ptr().add(16)));
                    if matches!(epilogue, TileEpilogue::BiasRelu(_)) {
                        // max(0, x) returns x when x is NaN, as the scalar relu.
                        x0 = _mm512_max_ps(zero, x0);
                        x1 = _mm512_max_ps(zero, x1);
                    }
                }
                TileEpilogue::ReluMask { mask, row_stride } => {
                    let m = &mask[i * row_stride..i * row_stride + 32];
                    let k0 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_loadu_ps(m.as_ptr()), zero);
                    let k1 =
                        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_loadu_ps(m.as_ptr().add(16)), zero);
                    x0 = _mm512_maskz_mov_ps(k0, x0);
                    x1 = _mm512_maskz_mov_ps(k1, x1);
                }
            }
            _mm512_storeu_ps(row.as_mut_ptr(), x0);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), x1);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2_6x16(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    body::<6, 16, true>(kc, a, b, acc)
}

fn portable_4x8(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    body::<4, 8, false>(kc, a, b, acc)
}

pub(super) fn table(isa: Isa) -> Microkernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Microkernel {
            mr: 8,
            nr: 32,
            // SAFETY: `table` is reached only through `Isa::kernel`, which asserts
            // that the CPU supports AVX-512F and FMA.
            run: |kc, a, b, acc| unsafe { avx512_8x32(kc, a, b, acc) },
            // SAFETY: as above.
            into: Some(|kc, a, b, c, epilogue| unsafe { avx512_8x32_into(kc, a, b, c, epilogue) }),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => Microkernel {
            mr: 6,
            nr: 16,
            // SAFETY: reached only after `Isa::kernel` checked AVX2 and FMA support.
            run: |kc, a, b, acc| unsafe { avx2_6x16(kc, a, b, acc) },
            into: None,
        },
        _ => Microkernel {
            mr: 4,
            nr: 8,
            run: portable_4x8,
            into: None,
        },
    }
}
