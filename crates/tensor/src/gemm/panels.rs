//! Where the microkernels read B from: in place, packed once for every task, or
//! packed by each task a cache block at a time.

use super::pack::pack_b;
use super::Microkernel;
use super::{depth_block, with_buffer};
use crate::matrix::MatRef;
use crate::parallel::for_each_chunk;
use crate::AlignedBuf;
use std::cell::RefCell;

/// Floats of a B that every task reads below which a kernel that reads B in place
/// does so (it stays in cache).
pub(super) const SMALL_SHARED_B: usize = 256 * 1024;
/// Floats of a B that every task reads from which the threads pack it together,
/// each a group of its strips: dH (64 Ki floats) packed on the calling thread kept
/// the other waiting before dW1.
const PARALLEL_PACKING: usize = 32 * 1024;

thread_local! {
    /// All of B packed as strips, by the calling thread, read by every task
    /// (grown on a thread's first GEMM of a size, then reused).
    static PACKED_B: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// Runs `f` with B's strips for tasks each reading `task_cols` of its columns:
/// B itself when its rows are whole strips and each task's columns stay in L2 (or
/// B is small), else B packed into this thread's buffer, a depth block at a time,
/// by all the threads when `shared` tasks will all read it and it is large. Weights
/// that several threads read in place would be shared between their caches, and
/// the optimizer's writes to them then cost twice what the copy saves (measured
/// with `kerno profile`): `shared` B is read in place only when small. Packing
/// here, on the calling thread, keeps the buffer on one thread from call to call.
pub(super) fn with_b_panels<R>(
    b: MatRef<'_>,
    kernel: Microkernel,
    shared: bool,
    task_cols: usize,
    f: impl FnOnce(BPanels<'_>) -> R,
) -> R {
    let (k, n, nr) = (b.rows(), b.cols(), kernel.nr);
    if kernel.reads_b_in_place(b)
        && (k * n < SMALL_SHARED_B || (!shared && task_cols <= kernel.block_cols(depth_block(k))))
    {
        return f(BPanels::InPlace(b));
    }
    if !shared {
        return f(BPanels::PerTask(b));
    }
    let run = |packed: &mut AlignedBuf| {
        let packed = packed.grow(packed_len(k, n, nr));
        // Each thread a group of strips of each depth block (two groups a thread).
        let group = match packed.len() >= PARALLEL_PACKING {
            true => n.div_ceil(nr).div_ceil(2 * rayon::current_num_threads()),
            false => n.div_ceil(nr),
        };
        pack_whole(b, nr, group, packed);
        f(BPanels::Packed {
            data: packed,
            width: n.next_multiple_of(nr),
            first_col: 0,
        })
    };
    with_buffer(&PACKED_B, run)
}

/// Floats of a `k × n` B packed whole as strips of `nr` columns.
pub(super) fn packed_len(k: usize, n: usize, nr: usize) -> usize {
    k * n.next_multiple_of(nr)
}

/// Packs all of B into `packed` ([`packed_len`] floats) as [`BPanels::Packed`]
/// reads it: depth blocks one after another, each its strips of `nr` columns,
/// `group` strips of each block a task over the pool's threads.
pub(super) fn pack_whole(b: MatRef<'_>, nr: usize, group: usize, packed: &mut [f32]) {
    let (k, n) = (b.rows(), b.cols());
    let depth = depth_block(k);
    let block_len = depth * n.next_multiple_of(nr);
    for (i, block) in packed.chunks_mut(block_len.max(1)).enumerate() {
        let (pc, cols) = (i * depth, group * nr);
        let kc = depth.min(k - pc);
        for_each_chunk(block, group * kc * nr, &|g, strips| {
            let first = g * cols;
            pack_b(b.cols_range(first, cols.min(n - first)), pc, kc, nr, strips)
        });
    }
}

/// Where the microkernels read B from.
#[derive(Clone, Copy)]
pub(super) enum BPanels<'a> {
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
    pub(super) fn for_task(self, col: usize, cols: usize) -> Self {
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
    pub(super) fn strip(self, pc: usize, kc: usize, col: usize, nr: usize) -> (&'a [f32], usize) {
        let (strip, ldb, _) = self.strips(pc, kc, col, nr, 1);
        (strip, ldb)
    }

    /// Rows `pc..pc + kc` of `count` strips of `nr` columns from `col`: the floats
    /// holding them, their row stride, and how far each strip starts after the last.
    pub(super) fn strips(
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
