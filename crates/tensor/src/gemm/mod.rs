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
//!
//! This module chooses the path and splits C among the threads; `block.rs` runs
//! one task's block, `panels.rs` decides where B is read from, `pack.rs` packs,
//! and `thin.rs` computes the outputs too narrow for tiles.

mod block;
// The GEMM's instruction-set variants: the register-blocked microkernels, their
// tiles, and the dot products of thin outputs.
#[allow(unsafe_code)]
mod microkernel;
mod pack;
mod panels;
mod thin;
#[allow(unsafe_code)]
mod thin_dots;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod tiles;

pub(crate) use microkernel::{Microkernel, PanelLayout, TileEpilogue};
pub use microkernel::{MAX_MR, MAX_NC, MAX_NR};
use thin_dots::has_thin_loop;
pub(crate) use thin_dots::MAX_THIN_N;

use crate::elementwise;
use crate::matrix::{MatMut, MatRef};
use crate::parallel::{for_each_chunk, for_each_chunk_in_order, ByCols, ByRows};
use crate::profile::{self, Level, Work};
use crate::simd::{BlockMut, Isa};
use crate::AlignedBuf;
pub(crate) use block::depth_block;
use block::gemm_block;
use panels::{pack_whole, packed_len, with_b_panels, BPanels, SMALL_SHARED_B};
use std::cell::RefCell;
use std::thread::LocalKey;
use thin::{gemm_thin_n, gemm_thin_n_transposed};

/// Operations from which a GEMM is worth spreading over the threads: the 1.3 MFLOP
/// GEMMs of the output layer take half the time on two (`kerno profile`), now
/// that the pool's threads spin through `fit` instead of being woken.
const PARALLEL_FLOPS: usize = 1_000_000;
/// Columns of C from which each thread takes a block of columns rather than rows.
const MIN_TASK_COLS: usize = 128;

/// Gives every thread of the current rayon pool its packing buffers at their
/// largest sizes for GEMMs of depth (`A`'s columns) at most `max_depth`: a thread
/// that rayon first gives blocks of such a GEMM later then allocates nothing. (B
/// packed once for all tasks grows on the calling thread, at its first GEMM of a
/// size.)
pub fn reserve_packing_buffers(max_depth: usize) {
    rayon::broadcast(|_| {
        block::reserve_block_buffers();
        thin::reserve_thin_buffer(max_depth);
    });
}

/// Runs `f` with this thread's buffer `key`, or with a new one when the buffer is
/// held further up this thread's stack (a GEMM run here while another waits).
pub(crate) fn with_buffer<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut T::default()),
    })
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
    gemm_summing(
        isa,
        a,
        b,
        c,
        accumulate,
        epilogue,
        None,
        Threads::Pool,
        None,
    )
}

/// [`gemm_with`] as one task on the calling thread: for kernels that already
/// split their work among the threads (a convolution, a chunk of images each).
pub(crate) fn gemm_one_task(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
) {
    gemm_summing(isa, a, b, c, accumulate, epilogue, None, Threads::One, None)
}

/// A B packed once for many one-task GEMMs with it ([`gemm_one_task_packed`]):
/// a convolution's kernel, which every chunk of images multiplies. Packing it
/// for each chunk cost the convnet's step 8% (`perf`, Zen 3).
#[derive(Clone, Copy)]
pub(crate) struct PackedB<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    nr: usize,
}

/// `b` packed into `buffer` as the tiled GEMMs of `isa` read it, or `None`
/// where they read it in place (it is not copied then).
pub(crate) fn pack_b_once<'a>(
    isa: Isa,
    b: MatRef<'_>,
    buffer: &'a mut AlignedBuf,
) -> Option<PackedB<'a>> {
    // The kernel of a tall A: the one every chunk of patches takes.
    let kernel = isa.kernel_for(usize::MAX);
    let (k, n, nr) = (b.rows(), b.cols(), kernel.nr);
    if kernel.reads_b_in_place(b) || k * n >= SMALL_SHARED_B {
        return None;
    }
    let data = buffer.grow(packed_len(k, n, nr));
    pack_whole(b, nr, n.div_ceil(nr), data);
    Some(PackedB {
        data,
        rows: k,
        cols: n,
        nr,
    })
}

/// [`gemm_one_task`] reading B from `packed` (of this B, by [`pack_b_once`])
/// where its tiles would have packed it.
pub(crate) fn gemm_one_task_packed(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    packed: Option<PackedB<'_>>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
) {
    if let Some(p) = packed {
        assert_eq!(
            (p.rows, p.cols),
            (b.rows(), b.cols()),
            "gemm: packed B's shape"
        );
    }
    gemm_summing(
        isa,
        a,
        b,
        c,
        accumulate,
        epilogue,
        None,
        Threads::One,
        packed,
    )
}

/// Whether a GEMM may spread over the pool's threads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Threads {
    Pool,
    One,
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
    gemm_summing(
        isa,
        a,
        b,
        c,
        accumulate,
        epilogue,
        Some(sums),
        Threads::Pool,
        None,
    )
}

/// [`gemm_with`], and the column sums of C into `sums` when there are any.
#[allow(clippy::too_many_arguments)]
fn gemm_summing(
    isa: Isa,
    a: MatRef<'_>,
    b: MatRef<'_>,
    mut c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
    mut sums: Option<&mut [f32]>,
    threads: Threads,
    packed: Option<PackedB<'_>>,
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
    // that divide n (6-row tiles for n = 10 were much slower on AVX2), and only
    // while the tiled path would leave most of its tile's columns empty: with n at
    // least half of AVX2's 16 columns that path was faster.
    let thin_transposed = || {
        a.row_stride() == 1
            && m > MAX_THIN_N
            && n.is_multiple_of(isa.kernel_for(n).mr)
            && 2 * n < isa.kernel_for(m).nr
    };
    if n <= MAX_THIN_N && has_thin_loop(isa) && (a.col_stride() == 1 || thin_transposed()) {
        let parallel = threads == Threads::Pool && is_parallel(2 * m * k * n);
        if a.col_stride() == 1 {
            gemm_thin_n(isa, a, b, c.reborrow(), accumulate, epilogue, parallel);
        } else {
            gemm_thin_n_transposed(isa, a, b, c.reborrow(), accumulate, epilogue, parallel);
        }
        if let Some(sums) = sums {
            sum_columns(isa, c.as_ref(), sums);
        }
        return;
    }
    let kernel = isa.kernel_for(m);
    let parallel = threads == Threads::Pool && is_parallel(2 * m * k * n);
    let threads = rayon::current_num_threads();
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
        // thread one to take. A B small enough to share (dH's 10x512) gains nothing
        // from it, and blocks of rows were faster, unless the tasks add up column
        // sums, which a split by rows leaves to a pass over C afterwards.
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
    let run = |panels: BPanels<'_>| {
        let c = BlockMut::new(c.reborrow());
        for_each_block(c, fused_sums, k, split, parallel, |origin, block, sums| {
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
    };
    match packed.filter(|p| p.nr == kernel.nr) {
        Some(p) => run(BPanels::Packed {
            data: p.data,
            width: n.next_multiple_of(p.nr),
            first_col: 0,
        }),
        None => with_b_panels(b, kernel, shared, task_cols, run),
    }
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

/// Where a task's block starts in C, for the epilogue's bias and mask.
#[derive(Clone, Copy, Default)]
struct Origin {
    row: usize,
    col: usize,
}

/// Runs `task` on a block of C, a product of depth `k`, under a profiling span.
fn run_task<'c>(block: BlockMut<'c>, k: usize, task: impl FnOnce(BlockMut<'c>)) {
    let _span = profile::span(|| {
        let flops = 2 * block.rows() * block.cols() * k;
        Work::new("GEMM block", Level::Task).flops(flops as u64)
    });
    task(block);
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
    parallel: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A B packed once gives each one-task product the bits of packing it in
    /// the product: several depth blocks, columns that are not whole strips, a
    /// transposed B, thin and short A's, each epilogue, on every instruction set.
    #[test]
    fn a_b_packed_once_gives_the_bits_of_a_b_packed_per_product() {
        let value = |i: usize| ((i * 7919 % 211) as f32 - 105.0) / 53.0;
        for (m, k, n, transposed) in [
            (242, 288, 64, false),
            (61, 850, 37, false),
            (13, 64, 288, true),
            (5, 9, 32, false),
            (100, 401, 17, true),
        ] {
            let a: Vec<f32> = (0..m * k).map(value).collect();
            let b: Vec<f32> = (0..k * n).map(|i| value(i + 5)).collect();
            let bias: Vec<f32> = (0..n).map(|i| value(i + 11)).collect();
            let a = MatRef::row_major(&a, m, k);
            let b = match transposed {
                true => MatRef::row_major(&b, n, k).t(),
                false => MatRef::row_major(&b, k, n),
            };
            for isa in Isa::available() {
                let mut buffer = AlignedBuf::new();
                let packed = pack_b_once(isa, b, &mut buffer);
                for epilogue in [Epilogue::None, Epilogue::BiasRelu(&bias)] {
                    let (mut want, mut got) = (vec![0.5; m * n], vec![0.5; m * n]);
                    let c = MatMut::row_major(&mut want, m, n);
                    gemm_one_task(isa, a, b, c, true, epilogue);
                    let c = MatMut::row_major(&mut got, m, n);
                    gemm_one_task_packed(isa, a, b, packed, c, true, epilogue);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{isa:?} {m}x{k}x{n} {epilogue:?}");
                }
            }
        }
    }
}
