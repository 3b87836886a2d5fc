//! One task's block of C: the loops over B's cache blocks and A's panels around
//! the microkernel, and the stores of its tiles with their epilogue.

use super::pack::{pack_a, pack_b};
use super::panels::BPanels;
use super::{add_rows_in_order, with_buffer, Epilogue, Origin, Output};
use super::{Microkernel, PanelLayout, TileEpilogue, MAX_MR, MAX_NC, MAX_NR};
use crate::activation::relu;
use crate::matrix::MatRef;
use crate::simd::{BlockMut, Isa};
use crate::AlignedBuf;
use std::cell::RefCell;

/// Greatest depth of a block: its panel of A (`KC × MR` floats, 12.5 KiB) stays in
/// L1 while B's strips stream from L2, and each tile of C is loaded and stored once
/// per block. MNIST's depth 784 then splits into two blocks of 392, faster than
/// four of 196.
const KC: usize = 400;

thread_local! {
    /// The panel of A a task packs, on each worker thread.
    static A_PANEL: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// A task's block of B (`KC × nc`), packed by the task before it reads it.
    static B_BLOCK: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// Gives this thread its A panel and block of B at their largest sizes.
pub(super) fn reserve_block_buffers() {
    A_PANEL.with(|panel| {
        panel.borrow_mut().grow(KC * MAX_MR);
    });
    B_BLOCK.with(|block| {
        block.borrow_mut().grow(KC * MAX_NC);
    });
}

/// The depth of B's blocks: equal depths of at most `KC` (1000 as 3 · 334, not
/// 400 + 400 + 200), because a shallow last block spends more on loading and
/// storing C than on products.
pub(crate) fn depth_block(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// One task's block of C (at `origin`), computed sequentially from the rows of A
/// and the strips of B's columns that make it.
pub(super) fn gemm_block(
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
                            let data = b_block.grow(kc * strips * nr);
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
                            let a_packed = a_panel.grow(kc * mr);
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

/// Where a microkernel's tile lands in C.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub(super) row: usize,
    pub(super) col: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// Row stride of the accumulator.
    pub(super) nr: usize,
}

/// Stores a tile computed into `acc` at its place in the block of C at `origin`,
/// epilogue applied.
pub(super) fn store_tile(
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
