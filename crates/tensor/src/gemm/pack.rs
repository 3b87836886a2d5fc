//! Packing of B's strips and of A's partial panels into the layouts the
//! microkernels read.

use crate::matrix::MatRef;
use crate::simd::prefetch_lines;

/// How many rows ahead packing a row-major B asks for B's lines: the weights come
/// from L3, rows 2 KiB apart, which the hardware prefetcher did not fetch in time.
const PACK_PREFETCH_ROWS: usize = 4;
/// Rows of a row-major B packed together, strip by strip: one row at a time wrote
/// a line to every strip, and strips 8 KiB apart (depth 128) all fall in one L1
/// set.
const PACK_GROUP_ROWS: usize = 16;

/// Packs `B[pc..pc+kc, ..]` as strips of `nr` columns one after another, each
/// `kc × nr` row-major and zero-padded on the right.
pub(super) fn pack_b(b: MatRef<'_>, pc: usize, kc: usize, nr: usize, out: &mut [f32]) {
    if b.row_stride() == 1 && b.col_stride() != 1 {
        return match nr {
            32 => pack_b_columns::<32>(b, pc, kc, out),
            16 => pack_b_columns::<16>(b, pc, kc, out),
            _ => unreachable!("no microkernel is {nr} wide"),
        };
    }
    if b.col_stride() != 1 {
        let n = b.cols();
        for (s, strip) in out.chunks_exact_mut(kc * nr).enumerate() {
            for (p, dst) in strip.chunks_exact_mut(nr).enumerate() {
                for (j, d) in dst.iter_mut().enumerate() {
                    let col = s * nr + j;
                    *d = if col < n { b.get(pc + p, col) } else { 0.0 };
                }
            }
        }
        return;
    }
    match nr {
        32 => pack_b_rows::<32>(b, pc, kc, out),
        16 => pack_b_rows::<16>(b, pc, kc, out),
        8 => pack_b_rows::<8>(b, pc, kc, out),
        _ => unreachable!("no microkernel is {nr} wide"),
    }
}

/// [`pack_b`] for a transposed B (`Wᵀ` in an input gradient): each column's `kc`
/// values are contiguous in place, and each goes down one lane of its strip.
fn pack_b_columns<const NR: usize>(b: MatRef<'_>, pc: usize, kc: usize, out: &mut [f32]) {
    let n = b.cols();
    for (s, strip) in out.chunks_exact_mut(kc * NR).enumerate() {
        let lanes = NR.min(n - s * NR);
        // Lanes past B's last column read that column, then are zeroed.
        let columns: [&[f32]; NR] = std::array::from_fn(|lane| {
            let start = (s * NR + lane.min(lanes - 1)) * b.col_stride() + pc;
            &b.data()[start..start + kc]
        });
        for (p, row) in strip.chunks_exact_mut(NR).enumerate() {
            for (v, column) in row.iter_mut().zip(&columns) {
                *v = column[p];
            }
            row[lanes..].fill(0.0);
        }
    }
}

/// [`pack_b`] for a row-major B, reading it [`PACK_GROUP_ROWS`] rows at a time:
/// each group of rows feeds every strip, in copies of a fixed width (inlined, where
/// a call to `memcpy` per `NR` floats costs more than the copy).
fn pack_b_rows<const NR: usize>(b: MatRef<'_>, pc: usize, kc: usize, out: &mut [f32]) {
    let n = b.cols();
    let (whole, rest) = (n / NR, n % NR);
    for first in (0..kc).step_by(PACK_GROUP_ROWS) {
        let rows = first..(first + PACK_GROUP_ROWS).min(kc);
        for p in rows.clone() {
            if p + PACK_PREFETCH_ROWS < kc {
                let next = (pc + p + PACK_PREFETCH_ROWS) * b.row_stride();
                prefetch_lines(&b.data()[next..next + n]);
            }
        }
        let row = |p: usize| &b.data()[(pc + p) * b.row_stride()..][..n];
        for s in 0..whole {
            for p in rows.clone() {
                let at = (s * kc + p) * NR;
                out[at..at + NR].copy_from_slice(&row(p)[s * NR..][..NR]);
            }
        }
        if rest > 0 {
            for p in rows.clone() {
                let at = (whole * kc + p) * NR;
                let dst = &mut out[at..at + NR];
                dst[..rest].copy_from_slice(&row(p)[whole * NR..]);
                dst[rest..].fill(0.0);
            }
        }
    }
}

/// Packs `A[ir..ir+rows, pc..pc+kc]` column by column (`kc × mr`), zero-padded
/// below: a last, partial panel (whole ones are read in place), or any panel of an
/// A with neither stride 1.
pub(super) fn pack_a(
    a: MatRef<'_>,
    ir: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    mr: usize,
    out: &mut [f32],
) {
    if a.row_stride() == 1 {
        // A transposed: each column of the panel is contiguous.
        for (p, dst) in out.chunks_exact_mut(mr).enumerate() {
            let start = (pc + p) * a.col_stride() + ir;
            dst[..rows].copy_from_slice(&a.data()[start..start + rows]);
            dst[rows..].fill(0.0);
        }
        return;
    }
    if rows < mr {
        out.fill(0.0);
    }
    for i in 0..rows {
        for p in 0..kc {
            out[p * mr + i] = a.get(ir + i, pc + p);
        }
    }
}
