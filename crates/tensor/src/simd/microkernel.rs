//! GEMM microkernels. One generic body, compiled once per instruction set inside a
//! `#[target_feature]` function, so the compiler vectorises it for that set.

use super::{Isa, Microkernel};

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

/// AVX-512 `8 × 32`: sixteen zmm accumulators, two loads of B and eight
/// broadcasts of A per step of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512_8x32(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32]) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    const NR: usize = 32;
    let (a, b, acc) = (&a[..kc * MR], &b[..kc * NR], &mut acc[..MR * NR]);
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
    for i in 0..MR {
        // SAFETY: `acc` holds MR × NR floats; row i's 32 floats start at i·NR.
        unsafe {
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * NR), lo[i]);
            _mm512_storeu_ps(acc.as_mut_ptr().add(i * NR + 16), hi[i]);
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
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => Microkernel {
            mr: 6,
            nr: 16,
            // SAFETY: reached only after `Isa::kernel` checked AVX2 and FMA support.
            run: |kc, a, b, acc| unsafe { avx2_6x16(kc, a, b, acc) },
        },
        _ => Microkernel {
            mr: 4,
            nr: 8,
            run: portable_4x8,
        },
    }
}
