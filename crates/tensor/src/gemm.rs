//! Matrix multiplication with a fused epilogue, split over rayon in a fixed partition.

use crate::matrix::{MatMut, MatRef};
use crate::simd;
use rayon::prelude::*;

/// Rows of C per parallel task. The partition depends only on the shape, never on
/// the thread count, so results are bit-identical for any number of threads.
const BLOCK_ROWS: usize = 32;

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

/// `C = A·B` (or `C += A·B` with `accumulate`), then the epilogue.
///
/// # Panics
/// When the shapes do not agree (`A: m×k`, `B: k×n`, `C: m×n`, bias of `n`,
/// mask of `m×n`).
pub fn gemm(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool, epilogue: Epilogue<'_>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(b.rows(), k, "gemm: A is {m}x{k} but B has {} rows", b.rows());
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
        Epilogue::ReluMask(mask) => assert_eq!(
            (mask.rows(), mask.cols()),
            (m, n),
            "gemm: relu mask must be {m}x{n}"
        ),
        Epilogue::None => {}
    }
    let beta = if accumulate { 1.0 } else { 0.0 };
    c.into_row_blocks(BLOCK_ROWS)
        .into_par_iter()
        .enumerate()
        .for_each(|(block, mut c_block)| {
            let start = block * BLOCK_ROWS;
            let rows = c_block.rows();
            simd::sgemm_views(a.rows_range(start, rows), b, beta, &mut c_block);
            apply_epilogue(&mut c_block, epilogue, start);
        });
}

fn apply_epilogue(c: &mut MatMut<'_>, epilogue: Epilogue<'_>, first_row: usize) {
    for r in 0..c.rows() {
        let row = c.row_mut(r);
        match epilogue {
            Epilogue::None => {}
            Epilogue::Bias(bias) => row.iter_mut().zip(bias).for_each(|(v, b)| *v += b),
            Epilogue::BiasRelu(bias) => row
                .iter_mut()
                .zip(bias)
                .for_each(|(v, b)| *v = (*v + b).max(0.0)),
            Epilogue::ReluMask(mask) => {
                for (j, v) in row.iter_mut().enumerate() {
                    if mask.get(first_row + r, j) <= 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}
