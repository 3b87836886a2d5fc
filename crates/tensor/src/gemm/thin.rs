//! The thin GEMMs: outputs at most `MAX_THIN_N` columns wide (the output layer's
//! 10 classes), as dot products with Bᵀ, or, for a transposed A, as the wide `Cᵀ`.

use super::block::{gemm_block, store_tile, Tile};
use super::panels::with_b_panels;
use super::thin_dots::{thin_dots, transpose_thin, MAX_THIN_N, THIN_STEP};
use super::{for_each_block, with_buffer, Epilogue, Origin, Output, Split};
use super::{MAX_MR, MAX_NR};
use crate::matrix::{MatMut, MatRef};
use crate::simd::{BlockMut, Isa};
use crate::AlignedBuf;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Rows of C per parallel task of the thin path of a transposed A (columns of
/// `Cᵀ`, a whole number of any kernel's strips).
const THIN_T_ROWS: usize = 128;
const _: () = assert!(
    THIN_T_ROWS.is_multiple_of(MAX_NR),
    "a task's columns of Cᵀ are whole strips"
);
/// Rows of C per parallel task of the thin path. (Any partition of C's rows gives
/// the same bits: each output's sum depends only on the depth blocks, fixed by `k`.)
const BLOCK_ROWS: usize = 32;

thread_local! {
    /// Bᵀ of a thin GEMM, on each thread that computes rows of it, and the number
    /// of the GEMM it was built for (see [`THIN_GEMMS`]).
    static THIN_BT: RefCell<(u64, AlignedBuf)> = const { RefCell::new((0, AlignedBuf::new())) };
}

/// Numbers the thin GEMMs, so that a thread computing several blocks of one
/// builds its Bᵀ once.
static THIN_GEMMS: AtomicU64 = AtomicU64::new(0);

/// Gives this thread a Bᵀ large enough for any thin GEMM of depth at most `depth`,
/// built for none: this may run between two blocks of a GEMM of another model on
/// the same pool, and a grown buffer holds zeros.
pub(super) fn reserve_thin_buffer(depth: usize) {
    THIN_BT.with(|cell| {
        let (built_for, bt) = &mut *cell.borrow_mut();
        bt.grow(bt_len(MAX_THIN_N, depth));
        *built_for = 0;
    });
}

/// Floats of Bᵀ for `n` columns of B of depth `k` (padded to whole steps).
fn bt_len(n: usize, k: usize) -> usize {
    n.next_multiple_of(THIN_STEP) * k
}

/// Runs `f` with this thread's Bᵀ for thin GEMM number `gemm`, first built by
/// `build` unless this thread has built it already (a new buffer, numbered 0,
/// never has).
fn with_thin_bt<R>(
    gemm: u64,
    build: impl FnOnce(&mut AlignedBuf),
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    with_buffer(&THIN_BT, |(built_for, bt)| {
        if *built_for != gemm {
            build(bt);
            *built_for = gemm;
        }
        f(bt)
    })
}

/// `C = A·B` for outputs at most [`MAX_THIN_N`] columns wide and a row-major A:
/// each output is a dot product of a row of A with a row of Bᵀ, which each thread
/// that takes part builds once.
/// Tiles of `MR × NR` would be mostly padding, and packing A would cost more than
/// the products.
pub(super) fn gemm_thin_n(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    let (k, n) = (a.cols(), b.cols());
    let (width, len) = (n.next_multiple_of(THIN_STEP), bt_len(n, k));
    let build = |bt: &mut AlignedBuf| {
        let bt = bt.grow(len);
        // Each column of B to its row of Bᵀ; the padding rows are zero.
        let (columns, padding) = bt.split_at_mut(n * k);
        padding.fill(0.0);
        if b.col_stride() == 1 {
            transpose_thin(isa, b.data(), b.row_stride(), k, n, columns);
        } else {
            for (j, bt_row) in columns.chunks_exact_mut(k.max(1)).enumerate() {
                let column = &b.data()[j * b.col_stride()..];
                for (p, v) in bt_row.iter_mut().enumerate() {
                    *v = column[p * b.row_stride()];
                }
            }
        }
    };
    // Every thread that computes blocks builds Bᵀ for itself: read from the
    // caller's cache, it made the other thread's blocks take twice as long.
    let gemm = THIN_GEMMS.fetch_add(1, Ordering::Relaxed) + 1;
    let split = Split::Rows(BLOCK_ROWS);
    for_each_block(
        BlockMut::new(c),
        None,
        k,
        split,
        parallel,
        |origin, mut c_block, _| {
            with_thin_bt(gemm, build, |bt| {
                let bt = &bt[..len];
                let row_of_a = |r: usize| {
                    let start = (origin.row + r) * a.row_stride();
                    &a.data()[start..start + k]
                };
                let rows = c_block.rows();
                for i in (0..rows).step_by(2) {
                    let pair = 2.min(rows - i);
                    let sums = if pair == 2 {
                        thin_dots(isa, &[row_of_a(i), row_of_a(i + 1)], bt, k, width)
                    } else {
                        thin_dots(isa, &[row_of_a(i)], bt, k, width)
                    };
                    let tile = Tile {
                        row: i,
                        col: 0,
                        rows: pair,
                        cols: n,
                        nr: MAX_THIN_N,
                    };
                    let sums = sums.as_flattened();
                    store_tile(&mut c_block, sums, tile, !accumulate, epilogue, origin);
                }
            })
        },
    );
}

/// `C = A·B` for a thin output and a transposed A (a weight gradient `Hᵀ·dZ`):
/// computes `Cᵀ = Bᵀ·Aᵀ`, whose operands are both row-major and whose output is
/// wide, with the tiled kernels, a block of [`THIN_T_ROWS`] columns of `Cᵀ` per
/// task, each stored transposed into its rows of C by the task that computed it.
pub(super) fn gemm_thin_n_transposed(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    let (k, n) = (a.cols(), b.cols());
    let kernel = isa.kernel_for(n);
    let (bt, at) = (b.t(), a.t());
    with_b_panels(at, kernel, false, THIN_T_ROWS, |panels| {
        let split = Split::Rows(THIN_T_ROWS);
        for_each_block(
            BlockMut::new(c),
            None,
            k,
            split,
            parallel,
            |origin, mut c_block, _| {
                let rows = c_block.rows();
                // This block of Cᵀ: at most 6 KiB, on the stack.
                let mut ct = [0.0f32; MAX_THIN_N * THIN_T_ROWS];
                let ct = &mut ct[..n * rows];
                let ct_block = BlockMut::new(MatMut::row_major(&mut *ct, n, rows));
                let output = Output {
                    c: ct_block,
                    sums: None,
                    accumulate: false,
                    epilogue: Epilogue::None,
                    origin: Origin::default(),
                };
                gemm_block(isa, kernel, bt, panels.for_task(origin.row, rows), output);
                // Transposed into C, `MAX_MR` rows at a time.
                let mut tile = [0.0f32; MAX_MR * MAX_THIN_N];
                for first in (0..rows).step_by(MAX_MR) {
                    let count = MAX_MR.min(rows - first);
                    for (i, row) in tile.chunks_exact_mut(MAX_THIN_N).take(count).enumerate() {
                        for (j, v) in row[..n].iter_mut().enumerate() {
                            *v = ct[j * rows + first + i];
                        }
                    }
                    let tile_at = Tile {
                        row: first,
                        col: 0,
                        rows: count,
                        cols: n,
                        nr: MAX_THIN_N,
                    };
                    let overwrite = !accumulate;
                    store_tile(&mut c_block, &tile, tile_at, overwrite, epilogue, origin);
                }
            },
        );
    });
}
