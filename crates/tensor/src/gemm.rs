//! GEMM in the BLIS structure: B walked in cache blocks of depth `KC` and the
//! kernel's L2 budget of columns, packed into strips of `NR` columns (once per
//! call when every task reads all of it, else by each task, a block at a time,
//! its own columns only) unless the kernel reads B in place and its rows are
//! whole strips that stay in L2; A read in place by whole panels of `MR` rows (a
//! row-major A row by row, a transposed one column by column: either way each
//! line of the panel is contiguous) and only its last, partial panel packed; a
//! register-blocked microkernel per tile, and the epilogue applied as each
//! finished tile is stored.
//! Buffers are per thread and reused: no allocation per call.

use crate::activation::relu;
use crate::matrix::{MatMut, MatRef};
use crate::parallel::{for_each_chunk, for_each_chunk_in_order, ByCols, ByRows};
use crate::profile::{self, Level, Work};
use crate::simd::{
    elementwise, flush_subnormals, has_thin_loop, prefetch_lines, thin_dots, BlockMut, Isa,
    Microkernel, PanelLayout, TileEpilogue, MAX_MR, MAX_NC, MAX_NR, MAX_THIN_N, THIN_STEP,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

/// Greatest depth of a block: its panel of A (`KC × MR` floats, 12.5 KiB) stays in
/// L1 while B's strips stream from L2, and each tile of C is loaded and stored once
/// per block. 784 = 2 · 392 made the forward GEMM 3-4% faster than 4 · 196
/// (`kerno profile`, 1 and 2 threads).
const KC: usize = 400;
/// Operations from which a GEMM is worth spreading over the threads: the 1.3 MFLOP
/// GEMMs of the output layer take half the time on two (`kerno profile`), now
/// that the pool's threads spin through `fit` instead of being woken.
const PARALLEL_FLOPS: usize = 1_000_000;
/// Floats of a B that every task reads below which a kernel that reads B in place
/// does so (it stays in cache).
const SMALL_SHARED_B: usize = 256 * 1024;
/// Floats of a B that every task reads from which the threads pack it together,
/// each a group of its strips: dH (64 Ki floats) packed on the calling thread kept
/// the other waiting before dW1 (`kerno profile --trace`, dW1's tenth percentile in
/// quiet runs: 668-706 µs packed by one thread, 657-685 µs by both).
const PARALLEL_PACKING: usize = 32 * 1024;
/// Columns of C from which each thread takes a block of columns rather than rows.
const MIN_TASK_COLS: usize = 128;
/// How many rows ahead packing a row-major B asks for B's lines: the weights come
/// from L3, rows 2 KiB apart, which the hardware prefetcher did not fetch in time
/// (fwd1 on Zen 3, fastest of 21: 1436 -> 1319 µs on 1 thread, 892 -> 842 on 2).
const PACK_PREFETCH_ROWS: usize = 4;
/// Rows of a row-major B packed together, strip by strip: one row at a time wrote
/// a line to every strip, and strips 8 KiB apart (depth 128) all fall in one L1
/// set (dW1 on 2 threads, fastest of 21: 784 -> 722 µs).
const PACK_GROUP_ROWS: usize = 16;
/// Rows of C per parallel task of the thin path of a transposed A (columns of
/// `Cᵀ`, a whole number of any kernel's strips).
const THIN_T_ROWS: usize = 128;
const _: () = assert!(
    THIN_T_ROWS.is_multiple_of(MAX_NR),
    "a task's columns of Cᵀ are whole strips"
);
/// Rows of B transposed at a time for the thin path's Bᵀ.
const THIN_TRANSPOSE_ROWS: usize = 8;
/// Rows of C per parallel task of the thin path. (Any partition of C's rows gives
/// the same bits: each output's sum depends only on the depth blocks, fixed by `k`.)
const BLOCK_ROWS: usize = 32;

thread_local! {
    /// The panel of A a task packs, on each worker thread.
    static A_PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A task's block of B (`KC × nc`), packed by the task before it reads it.
    static B_BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// All of B packed as strips, by the calling thread, read by every task
    /// (grown on a thread's first GEMM of a size, then reused).
    static PACKED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Bᵀ of a thin GEMM, on each thread that computes rows of it, and the number
    /// of the GEMM it was built for (see [`THIN_GEMMS`]).
    static THIN_BT: RefCell<(u64, Vec<f32>)> = const { RefCell::new((0, Vec::new())) };
}

/// Numbers the thin GEMMs, so that a thread computing several blocks of one
/// builds its Bᵀ once.
static THIN_GEMMS: AtomicU64 = AtomicU64::new(0);

/// Runs `f` with this thread's buffer `key`, or with a new one when the buffer is
/// held further up this thread's stack (a GEMM run here while another waits).
fn with_buffer<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut T::default()),
    })
}

/// Runs `f` with this thread's Bᵀ for thin GEMM number `gemm`, first built by
/// `build` unless this thread has built it already (a new buffer, numbered 0,
/// never has).
fn with_thin_bt<R>(gemm: u64, build: impl FnOnce(&mut Vec<f32>), f: impl FnOnce(&[f32]) -> R) -> R {
    with_buffer(&THIN_BT, |(built_for, bt)| {
        if *built_for != gemm {
            build(bt);
            *built_for = gemm;
        }
        f(bt)
    })
}

/// Gives every thread of the current rayon pool its A panel and block of B at
/// their largest sizes now, so that no later GEMM allocates on a worker thread.
pub fn reserve_packing_buffers() {
    rayon::broadcast(|_| {
        A_PANEL.with(|panel| {
            grow(&mut panel.borrow_mut(), KC * MAX_MR);
        });
        B_BLOCK.with(|block| {
            grow(&mut block.borrow_mut(), KC * MAX_NC);
        })
    });
}

/// What happens to each tile of C once its products are summed.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// `C` as computed.
    None,
    /// `C[r, c] += bias[c]`.
    Bias(&'a [f32]),
    /// `C[r, c] = max(C[r, c] + bias[c], 0)`.
    BiasRelu(&'a [f32]),
    /// `C[r, c] = 0` wherever `mask[r, c] <= 0` (the backward pass of relu,
    /// with `mask` the relu's output).
    ReluMask(MatRef<'a>),
}

/// `C = A·B` (or `C += A·B` with `accumulate`), then the epilogue, with the best
/// instruction set of this machine.
///
/// # Panics
/// When the shapes do not agree (`A: m×k`, `B: k×n`, `C: m×n`, bias of `n`,
/// mask of `m×n`).
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool, epilogue: Epilogue<'_>) {
    gemm_with(Isa::detected(), a, b, c, accumulate, epilogue)
}

/// [`gemm`] with a chosen instruction set (tests and benches force each one).
///
/// # Panics
/// As [`gemm`], and when `isa` is not supported by this CPU.
pub fn gemm_with(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
) {
    gemm_summing(isa, a, b, c, accumulate, epilogue, None)
}

/// [`gemm`] that also writes the column sums of the finished C into `sums`
/// (`sums[j] = Σ_r C[r, j]`, the rows added in order, bit for bit as
/// [`column_sums`](crate::activation::column_sums)): the bias gradient of the
/// layer whose output gradient C is. Where each task computes whole columns of C
/// (one task, or a split by columns) each panel of rows is added as soon as it is
/// stored, from L1, instead of in a pass over C afterwards.
///
/// # Panics
/// As [`gemm`], and when `sums` does not have one element per column of C.
pub fn gemm_column_sums(
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    sums: &mut [f32],
) {
    gemm_column_sums_with(Isa::detected(), a, b, c, accumulate, epilogue, sums)
}

/// [`gemm_column_sums`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// As [`gemm_column_sums`], and when `isa` is not supported by this CPU.
pub fn gemm_column_sums_with(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    sums: &mut [f32],
) {
    let n = b.cols();
    assert_eq!(sums.len(), n, "gemm: column sums must have {n} elements");
    gemm_summing(isa, a, b, c, accumulate, epilogue, Some(sums))
}

/// [`gemm_with`], and the column sums of C into `sums` when there are any.
fn gemm_summing(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    mut c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    mut sums: Option<&mut [f32]>,
) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(
        b.rows(),
        k,
        "gemm: A is {m}x{k} but B has {} rows",
        b.rows()
    );
    assert_eq!(
        (c.rows(), c.cols()),
        (m, n),
        "gemm: C must be {m}x{n}, got {}x{}",
        c.rows(),
        c.cols()
    );
    match epilogue {
        Epilogue::Bias(bias) | Epilogue::BiasRelu(bias) => {
            assert_eq!(bias.len(), n, "gemm: bias must have {n} elements")
        }
        Epilogue::ReluMask(mask) => {
            assert_eq!(
                (mask.rows(), mask.cols()),
                (m, n),
                "gemm: relu mask must be {m}x{n}"
            )
        }
        Epilogue::None => {}
    }
    if let Some(sums) = sums.as_deref_mut() {
        // Zero first: an empty C sums to zero, and tiles add to what is there.
        sums.fill(0.0);
    }
    if m == 0 || n == 0 {
        return;
    }
    // A transposed A's thin product is computed as Cᵀ, which pays only with tiles
    // that divide n (6-row tiles for n = 10 made dW2 1.5x slower on AVX2), and only
    // while the tiled path would leave most of its tile's columns empty: with n at
    // least half of AVX2's 16 columns that path was faster (512x128x10, fastest of
    // 21: 51.9 -> 42.4 µs on 1 thread, 27.6 -> 23.3 on 2; n = 8 and 12 likewise).
    let thin_transposed = || {
        a.row_stride() == 1
            && m > MAX_THIN_N
            && n.is_multiple_of(isa.kernel_for(n).mr)
            && 2 * n < isa.kernel_for(m).nr
    };
    if n <= MAX_THIN_N && has_thin_loop(isa) && (a.col_stride() == 1 || thin_transposed()) {
        if a.col_stride() == 1 {
            gemm_thin_n(isa, a, b, c.reborrow(), accumulate, epilogue);
        } else {
            gemm_thin_n_transposed(isa, a, b, c.reborrow(), accumulate, epilogue);
        }
        if let Some(sums) = sums {
            sum_columns(isa, c.as_ref(), sums);
        }
        return;
    }
    let kernel = isa.kernel_for(m);
    let threads = rayon::current_num_threads();
    let parallel = is_parallel(2 * m * k * n);
    // (split, whether every task reads all of B, the columns of B a task reads)
    let (split, shared, task_cols) = if !parallel && sums.is_some() {
        // One task: it adds each finished panel of rows to the sums, rows in order.
        (Split::Rows(m), false, n)
    } else if parallel
        && n > m
        && n >= threads * MIN_TASK_COLS
        && (k * n >= SMALL_SHARED_B || sums.is_some())
    {
        // B is the larger operand: blocks of columns, so that each task reads only its
        // columns of B (the weights, in a forward GEMM), not all of B shared between
        // the caches, and packs none of it when its columns stay in L2. Two blocks per
        // thread: a thread slowed by a busy neighbour on its core leaves the other
        // thread one to take (`kerno profile`: 1.24 -> 1.21 ms median step on 2 threads).
        // A B small enough to share (dH's 10x512) gains nothing from it, and blocks of
        // rows were faster (128x10x512 on Zen 3, 2 threads, interleaved medians: 20.0
        // -> 18.3 µs), unless the tasks add up column sums, which a split by rows
        // leaves to a pass over C afterwards (that made dH's step kernel 1.4x slower).
        let width = n.div_ceil(2 * threads).next_multiple_of(kernel.nr);
        (Split::Cols(width), false, width)
    } else {
        // One block of rows per thread: each task then reads B from L3 once per depth
        // block and reuses it from L2.
        let block_rows = m.div_ceil(threads).next_multiple_of(kernel.mr);
        (Split::Rows(block_rows), parallel, n)
    };
    // Tasks of whole columns (one task, or a split by columns) add each panel of
    // rows to the sums once it is stored; after a split by rows, C is summed in a pass.
    let (fused_sums, sums_after) = match !parallel || matches!(split, Split::Cols(_)) {
        true => (
            sums.map(|s| BlockMut::new(MatMut::row_major(s, 1, n))),
            None,
        ),
        false => (None, sums),
    };
    with_b_panels(b, kernel, shared, task_cols, |panels| {
        let c = BlockMut::new(c.reborrow());
        for_each_block(c, fused_sums, k, split, |origin, block, sums| {
            let a = a.rows_range(origin.row, block.rows());
            let cols = block.cols();
            let output = Output {
                c: block,
                sums,
                accumulate,
                epilogue,
                origin,
            };
            gemm_block(isa, kernel, a, panels.for_task(origin.col, cols), output)
        })
    });
    if let Some(sums) = sums_after {
        sum_columns(isa, c.as_ref(), sums);
    }
}

/// `sums[j] = Σ_r C[r, j]`, the rows added in order.
fn sum_columns(isa: Isa, c: MatRef<'_>, sums: &mut [f32]) {
    sums.fill(0.0);
    add_rows_in_order(isa, sums, 0..c.rows(), |r| {
        &c.data()[r * c.row_stride()..][..c.cols()]
    });
}

/// Adds `row(r)` for each `r` of `rows`, in order, to `sums`.
fn add_rows_in_order<'r>(
    isa: Isa,
    sums: &mut [f32],
    rows: std::ops::Range<usize>,
    row: impl Fn(usize) -> &'r [f32],
) {
    for first in rows.clone().step_by(MAX_MR) {
        let count = MAX_MR.min(rows.end - first);
        let group: [&[f32]; MAX_MR] =
            std::array::from_fn(|i| if i < count { row(first + i) } else { &[] });
        elementwise::add_rows(isa, sums, &group[..count]);
    }
}

/// What a task writes: its block of C (at `origin` in the whole C), and the
/// column sums of its block's columns when it adds its panels to them.
struct Output<'c, 'e> {
    c: BlockMut<'c>,
    sums: Option<BlockMut<'c>>,
    accumulate: bool,
    epilogue: Epilogue<'e>,
    origin: Origin,
}

/// Whether work of `flops` operations is spread over the threads: from
/// [`PARALLEL_FLOPS`] on, and when the pool has more than one.
pub(crate) fn is_parallel(flops: usize) -> bool {
    flops >= PARALLEL_FLOPS && rayon::current_num_threads() > 1
}

/// Runs `f` with B's strips for tasks each reading `task_cols` of its columns:
/// B itself when its rows are whole strips and each task's columns stay in L2 (or
/// B is small), else B packed into this thread's buffer, a depth block at a time,
/// by all the threads when `shared` tasks will all read it and it is large. Weights
/// that several threads read in place would be shared between their caches, and
/// the optimizer's writes to them then cost twice what the copy saves (measured
/// with `kerno profile`): `shared` B is read in place only when small. Packing
/// here, on the calling thread, keeps the buffer on one thread from call to call.
fn with_b_panels<R>(
    b: MatRef<'_>,
    kernel: Microkernel,
    shared: bool,
    task_cols: usize,
    f: impl FnOnce(BPanels<'_>) -> R,
) -> R {
    let (k, n, nr) = (b.rows(), b.cols(), kernel.nr);
    if b.col_stride() == 1
        && n.is_multiple_of(nr)
        && kernel.b_in_place
        && (k * n < SMALL_SHARED_B || (!shared && task_cols <= kernel.block_cols(depth_block(k))))
    {
        return f(BPanels::InPlace(b));
    }
    if !shared {
        return f(BPanels::PerTask(b));
    }
    let run = |packed: &mut Vec<f32>| {
        let depth = depth_block(k);
        let block_len = depth * n.next_multiple_of(nr);
        let packed = grow(packed, k * n.next_multiple_of(nr));
        // Each thread a group of strips of each depth block (two groups a thread).
        let group = match packed.len() >= PARALLEL_PACKING {
            true => n.div_ceil(nr).div_ceil(2 * rayon::current_num_threads()),
            false => n.div_ceil(nr),
        };
        for (i, block) in packed.chunks_mut(block_len.max(1)).enumerate() {
            let (pc, cols) = (i * depth, group * nr);
            let kc = depth.min(k - pc);
            for_each_chunk(block, group * kc * nr, &|g, strips| {
                let first = g * cols;
                pack_b(b.cols_range(first, cols.min(n - first)), pc, kc, nr, strips)
            });
        }
        f(BPanels::Packed {
            data: packed,
            width: n.next_multiple_of(nr),
            first_col: 0,
        })
    };
    with_buffer(&PACKED_B, run)
}

/// Where a task's block starts in C, for the epilogue's bias and mask.
#[derive(Clone, Copy, Default)]
struct Origin {
    row: usize,
    col: usize,
}

/// Runs `task` on a block of C, a product of depth `k`, under a profiling span and
/// with subnormals flushed.
fn run_task<'c>(block: BlockMut<'c>, k: usize, task: impl FnOnce(BlockMut<'c>)) {
    let _span = profile::span(|| {
        let flops = 2 * block.rows() * block.cols() * k;
        Work::new("GEMM block", Level::Task).flops(flops as u64)
    });
    flush_subnormals(|| task(block));
}

/// How C splits into the blocks of its tasks.
#[derive(Clone, Copy)]
enum Split {
    /// Blocks of this many whole rows.
    Rows(usize),
    /// Blocks of this many whole columns.
    Cols(usize),
}

/// Runs `task(origin, block_of_c, its_sums)` on each block of C as `split` cuts
/// it, a product of depth `k`, spread over the pool's threads; for a GEMM of under
/// [`PARALLEL_FLOPS`] operations, or with a one-thread pool, in order on the
/// calling thread, which saves waking the workers for microseconds of work. The
/// blocks, and so the results, are the same either way. `sums` (one row, C's
/// columns) is cut with C's columns; a split by rows takes it only in one block.
fn for_each_block(
    c: BlockMut<'_>,
    sums: Option<BlockMut<'_>>,
    k: usize,
    split: Split,
    task: impl Fn(Origin, BlockMut<'_>, Option<BlockMut<'_>>) + Sync,
) {
    let run = |index: usize, block: BlockMut<'_>, sums: Option<BlockMut<'_>>| {
        let origin = match split {
            Split::Rows(rows) => Origin {
                row: index * rows,
                col: 0,
            },
            Split::Cols(cols) => Origin {
                row: 0,
                col: index * cols,
            },
        };
        run_task(block, k, |block| task(origin, block, sums));
    };
    let parallel = is_parallel(2 * c.rows() * c.cols() * k);
    match split {
        Split::Rows(rows) if sums.is_some() => {
            assert!(rows >= c.rows(), "column sums need every row in one block");
            run(0, c, sums)
        }
        Split::Rows(rows) => {
            let work = |i, ByRows(block)| run(i, block, None);
            match parallel {
                true => for_each_chunk(ByRows(c), rows, &work),
                false => for_each_chunk_in_order(ByRows(c), rows, work),
            }
        }
        Split::Cols(cols) => {
            let work = |i, (ByCols(block), sums): (_, Option<ByCols<'_>>)| {
                run(i, block, sums.map(|ByCols(sums)| sums))
            };
            let blocks = (ByCols(c), sums.map(ByCols));
            match parallel {
                true => for_each_chunk(blocks, cols, &work),
                false => for_each_chunk_in_order(blocks, cols, work),
            }
        }
    }
}

/// `C = A·B` for outputs at most [`MAX_THIN_N`] columns wide and a row-major A:
/// each output is a dot product of a row of A with a row of Bᵀ, which each thread
/// that takes part builds once.
/// Tiles of `MR × NR` would be mostly padding, and packing A would cost more than
/// the products.
fn gemm_thin_n(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
) {
    let (k, n) = (a.cols(), b.cols());
    let width = n.next_multiple_of(THIN_STEP);
    let build = |bt: &mut Vec<f32>| {
        let bt = grow(bt, width * k);
        // Each column of B to its row of Bᵀ; the padding rows are zero.
        let (columns, padding) = bt.split_at_mut(n * k);
        padding.fill(0.0);
        if b.col_stride() == 1 {
            // Rows of B a few at a time, transposed through a tile on the stack, so
            // that each row of Bᵀ takes them in one store: one float at a time to
            // rows 2 KiB apart took a third of fwd2's time on 2 threads (Zen 3).
            let mut tile = [[0.0f32; THIN_TRANSPOSE_ROWS]; MAX_THIN_N];
            for first in (0..k).step_by(THIN_TRANSPOSE_ROWS) {
                let rows = THIN_TRANSPOSE_ROWS.min(k - first);
                for (q, p) in (first..first + rows).enumerate() {
                    let row = &b.data()[p * b.row_stride()..][..n];
                    for (column, &v) in tile.iter_mut().zip(row) {
                        column[q] = v;
                    }
                }
                for (column, bt_row) in tile.iter().zip(columns.chunks_exact_mut(k)) {
                    // A whole tile's row in a copy of constant length, inlined.
                    match rows {
                        THIN_TRANSPOSE_ROWS => bt_row[first..][..rows].copy_from_slice(column),
                        _ => bt_row[first..][..rows].copy_from_slice(&column[..rows]),
                    }
                }
            }
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
    // caller's cache, it made the other thread's blocks take twice as long (fwd2
    // on Zen 3, 2 threads, median call 23.8 -> 13.6 µs).
    let gemm = THIN_GEMMS.fetch_add(1, Ordering::Relaxed) + 1;
    let split = Split::Rows(BLOCK_ROWS);
    for_each_block(
        BlockMut::new(c),
        None,
        k,
        split,
        |origin, mut c_block, _| {
            with_thin_bt(gemm, build, |bt| {
                let bt = &bt[..width * k];
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
fn gemm_thin_n_transposed(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
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

/// Where the microkernels read B from.
#[derive(Clone, Copy)]
enum BPanels<'a> {
    /// Depth blocks one after another, each its strips one after another (see
    /// [`pack_b`]), for a B of `width` columns padded to whole strips; read from
    /// column `first_col` on.
    Packed {
        data: &'a [f32],
        width: usize,
        first_col: usize,
    },
    /// B itself, row-major, `n` a whole number of strips.
    InPlace(MatRef<'a>),
    /// B to be packed by each task, its own columns only, a cache block at a time
    /// just before it reads the block: packing all of B on the calling thread
    /// first kept the other threads waiting.
    PerTask(MatRef<'a>),
    /// The cache block of B the task is reading (its current depth block, columns
    /// from `jc` on), packed by the task as strips of `kc × nr`.
    Block { data: &'a [f32], jc: usize },
}

impl<'a> BPanels<'a> {
    /// The strips of a task whose block of C has columns `col..col + cols`: B's
    /// columns from `col` on, or those columns alone where the task packs them.
    fn for_task(self, col: usize, cols: usize) -> Self {
        match self {
            BPanels::PerTask(b) => BPanels::PerTask(b.cols_range(col, cols)),
            _ => self.starting_at(col),
        }
    }

    /// The strips from column `col` on (a whole number of strips), for a task
    /// whose block of C starts there.
    fn starting_at(self, col: usize) -> Self {
        match self {
            BPanels::Packed {
                data,
                width,
                first_col,
            } => BPanels::Packed {
                data,
                width,
                first_col: first_col + col,
            },
            BPanels::InPlace(b) => BPanels::InPlace(b.cols_range(col, b.cols() - col)),
            BPanels::PerTask(_) | BPanels::Block { .. } => {
                unreachable!("a task's own columns are not split again")
            }
        }
    }

    /// Rows `pc..pc + kc` of the strip of `nr` columns from `col`, with its row stride.
    fn strip(self, pc: usize, kc: usize, col: usize, nr: usize) -> (&'a [f32], usize) {
        let (strip, ldb, _) = self.strips(pc, kc, col, nr, 1);
        (strip, ldb)
    }

    /// Rows `pc..pc + kc` of `count` strips of `nr` columns from `col`: the floats
    /// holding them, their row stride, and how far each strip starts after the last.
    fn strips(
        self,
        pc: usize,
        kc: usize,
        col: usize,
        nr: usize,
        count: usize,
    ) -> (&'a [f32], usize, usize) {
        match self {
            BPanels::Packed {
                data,
                width,
                first_col,
            } => {
                let start = pc * width + (first_col + col) * kc;
                (&data[start..start + count * kc * nr], nr, kc * nr)
            }
            BPanels::InPlace(b) => {
                let start = pc * b.row_stride() + col;
                let len = (kc - 1) * b.row_stride() + count * nr;
                (&b.data()[start..start + len], b.row_stride(), nr)
            }
            BPanels::Block { data, jc } => {
                let start = (col - jc) * kc;
                (&data[start..start + count * kc * nr], nr, kc * nr)
            }
            BPanels::PerTask(_) => unreachable!("a task packs each block before reading it"),
        }
    }
}

/// One task's block of C (at `origin`), computed sequentially from the rows of A
/// and the strips of B's columns that make it.
fn gemm_block(
    isa: Isa,
    kernel: Microkernel,
    a: MatRef<'_>,
    b_panels: BPanels<'_>,
    output: Output<'_, '_>,
) {
    let Output {
        mut c,
        mut sums,
        accumulate,
        epilogue,
        origin,
    } = output;
    let (m, k, n) = (a.rows(), a.cols(), c.cols());
    let (mr, nr) = (kernel.mr, kernel.nr);
    let mut acc = [0.0f32; MAX_MR * MAX_NR];
    if k == 0 {
        for ir in (0..m).step_by(mr) {
            for jc in (0..n).step_by(nr) {
                let tile = Tile {
                    row: ir,
                    col: jc,
                    rows: mr.min(m - ir),
                    cols: nr.min(n - jc),
                    nr,
                };
                store_tile(&mut c, &acc, tile, !accumulate, epilogue, origin);
            }
        }
        if let Some(sums) = &mut sums {
            add_rows_in_order(isa, sums.row_mut(0), 0..m, |r| c.row(r));
        }
        return;
    }
    let depth = depth_block(k);
    let block_cols = kernel.block_cols(depth);
    // The last, partial panel of rows takes a shorter tile of the same width where
    // the instruction set has one, to be read in place and stored from registers
    // as a whole panel.
    let last_kernel = match m % mr {
        0 => kernel,
        rows => Some(isa.kernel_for(rows))
            .filter(|short| short.mr == rows && short.nr == nr)
            .unwrap_or(kernel),
    };
    with_buffer(&A_PANEL, |a_panel| {
        with_buffer(&B_BLOCK, |b_block| {
            for jc in (0..n).step_by(block_cols) {
                let nc = block_cols.min(n - jc);
                let strips = nc.div_ceil(nr);
                for pc in (0..k).step_by(depth) {
                    let kc = depth.min(k - pc);
                    let b_panels = match b_panels {
                        BPanels::PerTask(b) => {
                            let data = grow(b_block, kc * strips * nr);
                            pack_b(b.cols_range(jc, nc), pc, kc, nr, data);
                            BPanels::Block { data, jc }
                        }
                        in_place_or_packed => in_place_or_packed,
                    };
                    let overwrite = pc == 0 && !accumulate;
                    let last = pc + kc == k;
                    let tile_epilogue = if last { epilogue } else { Epilogue::None };
                    for ir in (0..m).step_by(mr) {
                        let rows = mr.min(m - ir);
                        let kernel = if rows < mr { last_kernel } else { kernel };
                        let mr = kernel.mr;
                        let (a_cols, lda, layout) = if a.row_stride() == 1 && rows == mr {
                            // A transposed: its panel's columns are contiguous, read in place.
                            let start = pc * a.col_stride() + ir;
                            (&a.data()[start..], a.col_stride(), PanelLayout::Columns)
                        } else if a.col_stride() == 1 && rows == mr {
                            // A row-major: its panel's rows are contiguous, read in place.
                            // Packing them cost the forward GEMM 5% (`kerno profile`): a
                            // task reuses each panel for only a few strips of B.
                            let start = ir * a.row_stride() + pc;
                            (&a.data()[start..], a.row_stride(), PanelLayout::Rows)
                        } else {
                            let a_packed = grow(a_panel, kc * mr);
                            pack_a(a, ir, rows, pc, kc, mr, a_packed);
                            (&*a_packed, mr, PanelLayout::Columns)
                        };
                        let kernels = kernel.for_layout(layout);
                        // The strips wholly inside this block, in one call where the
                        // kernel stores its tiles (and applies the epilogue) itself.
                        let full_strips = if rows == mr { nc / nr } else { 0 };
                        let in_registers =
                            kernels
                                .into
                                .filter(|_| full_strips > 0)
                                .zip(tile_epilogue_of(
                                    tile_epilogue,
                                    origin.row + ir,
                                    origin.col + jc,
                                ));
                        let mut first = 0;
                        if let Some((into, epilogue)) = in_registers {
                            let (b_strips, ldb, step) =
                                b_panels.strips(pc, kc, jc, nr, full_strips);
                            let width = full_strips * nr;
                            let c_tiles = c.tile_mut(ir, jc, mr, width).accumulating(!overwrite);
                            into(kc, a_cols, lda, b_strips, ldb, step, c_tiles, epilogue);
                            first = full_strips;
                        }
                        for s in first..strips {
                            let col = jc + s * nr;
                            let (b_strip, ldb) = b_panels.strip(pc, kc, col, nr);
                            let tile = Tile {
                                row: ir,
                                col,
                                rows,
                                cols: nr.min(n - col),
                                nr,
                            };
                            let acc = &mut acc[..mr * nr];
                            (kernels.run)(kc, a_cols, lda, b_strip, ldb, acc);
                            store_tile(&mut c, acc, tile, overwrite, tile_epilogue, origin);
                        }
                        if let Some(sums) = sums.as_mut().filter(|_| last) {
                            // The panel's finished rows, just stored, still in L1.
                            let sums = &mut sums.row_mut(0)[jc..jc + nc];
                            let rows = ir..ir + rows;
                            add_rows_in_order(isa, sums, rows, |r| &c.row(r)[jc..jc + nc]);
                        }
                    }
                }
            }
        })
    });
}

/// The epilogue of the tile at (`row`, `col`), for microkernels that apply it in
/// registers; `None` when the mask is not row-major and the tile takes the scalar path.
fn tile_epilogue_of(epilogue: Epilogue<'_>, row: usize, col: usize) -> Option<TileEpilogue<'_>> {
    Some(match epilogue {
        Epilogue::None => TileEpilogue::None,
        Epilogue::Bias(bias) => TileEpilogue::Bias(&bias[col..]),
        Epilogue::BiasRelu(bias) => TileEpilogue::BiasRelu(&bias[col..]),
        Epilogue::ReluMask(mask) if mask.col_stride() == 1 => TileEpilogue::ReluMask {
            mask: &mask.data()[row * mask.row_stride() + col..],
            row_stride: mask.row_stride(),
        },
        Epilogue::ReluMask(_) => return None,
    })
}

/// The first `len` elements of `buf`, growing it when it is shorter.
fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// The depth of B's blocks: equal depths of at most `KC` (1000 as 3 · 334, not
/// 400 + 400 + 200), because a shallow last block spends more on loading and
/// storing C than on products.
pub(crate) fn depth_block(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// Packs `B[pc..pc+kc, ..]` as strips of `nr` columns one after another, each
/// `kc × nr` row-major and zero-padded on the right.
fn pack_b(b: MatRef<'_>, pc: usize, kc: usize, nr: usize, out: &mut [f32]) {
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
fn pack_a(a: MatRef<'_>, ir: usize, rows: usize, pc: usize, kc: usize, mr: usize, out: &mut [f32]) {
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

/// Where a microkernel's tile lands in C.
#[derive(Clone, Copy)]
struct Tile {
    row: usize,
    col: usize,
    rows: usize,
    cols: usize,
    /// Row stride of the accumulator.
    nr: usize,
}

/// Stores a tile computed into `acc` at its place in the block of C at `origin`,
/// epilogue applied.
fn store_tile(
    c: &mut BlockMut<'_>,
    acc: &[f32],
    t: Tile,
    overwrite: bool,
    epilogue: Epilogue<'_>,
    origin: Origin,
) {
    for i in 0..t.rows {
        let dst = &mut c.row_mut(t.row + i)[t.col..t.col + t.cols];
        let src = &acc[i * t.nr..i * t.nr + t.cols];
        let (row, col) = (origin.row + t.row + i, origin.col + t.col);
        for (j, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
            let v = if overwrite { s } else { *d + s };
            *d = match epilogue {
                Epilogue::None => v,
                Epilogue::Bias(bias) => v + bias[col + j],
                Epilogue::BiasRelu(bias) => relu(v + bias[col + j]),
                Epilogue::ReluMask(mask) => {
                    if mask.get(row, col + j) > 0.0 {
                        v
                    } else {
                        0.0
                    }
                }
            };
        }
    }
}
