//! Blocks of a row-major matrix that parallel tasks write at once: a block of
//! columns spans every row, so it is no contiguous slice, and two of them cannot
//! be two `&mut [f32]`. A block holds a pointer, and hands out the slices and
//! tiles inside its own rows and columns only.

use crate::matrix::MatMut;
use std::marker::PhantomData;

/// Rows `rows` × columns `cols` of a row-major matrix, written by one task only.
#[derive(Debug)]
pub(crate) struct BlockMut<'a> {
    /// The block's element (0, 0).
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    row_stride: usize,
    _matrix: PhantomData<&'a mut [f32]>,
}

// SAFETY: a block is the only access to its elements, as a `&mut [f32]` is, and
// blocks made by splitting never share an element.
unsafe impl Send for BlockMut<'_> {}

impl<'a> BlockMut<'a> {
    /// The whole matrix as one block.
    pub fn new(m: MatMut<'a>) -> Self {
        let (rows, cols, row_stride) = (m.rows(), m.cols(), m.row_stride());
        Self {
            ptr: m.into_data().as_mut_ptr(),
            rows,
            cols,
            row_stride,
            _matrix: PhantomData,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns `..at` and `at..`, as two blocks.
    pub fn split_at_col(self, at: usize) -> (Self, Self) {
        assert!(at <= self.cols, "column {at} is outside the block");
        // SAFETY: `at <= cols`, so the right block's first element is inside (or one
        // past) the left block's first row, which lies inside the matrix.
        let right = unsafe { self.ptr.add(at) };
        (
            Self { cols: at, ..self },
            Self {
                ptr: right,
                cols: self.cols - at,
                ..self
            },
        )
    }

    /// Rows `..at` and `at..`, as two blocks.
    pub fn split_at_row(self, at: usize) -> (Self, Self) {
        assert!(at <= self.rows, "row {at} is outside the block");
        // The pointer of an empty block is never read from: keep it at the start.
        let offset = if at < self.rows {
            at * self.row_stride
        } else {
            0
        };
        // SAFETY: row `at` (when it exists) starts inside the matrix.
        let below = unsafe { self.ptr.add(offset) };
        (
            Self { rows: at, ..self },
            Self {
                ptr: below,
                rows: self.rows - at,
                ..self
            },
        )
    }

    /// Row `r` of the block: its `cols` elements.
    pub fn row(&self, r: usize) -> &[f32] {
        assert!(r < self.rows, "row {r} is outside the block");
        // SAFETY: row r's `cols` elements lie inside the matrix and belong to this
        // block alone; `&self` keeps them from being written meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.add(r * self.row_stride), self.cols) }
    }

    /// Row `r` of the block: its `cols` elements.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} is outside the block");
        // SAFETY: row r's `cols` elements lie inside the matrix and belong to this
        // block alone; `&mut self` keeps them from being handed out twice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.row_stride), self.cols) }
    }

    /// The `rows × cols` tile whose first element is (`r`, `c`) of the block.
    pub fn tile_mut(&mut self, r: usize, c: usize, rows: usize, cols: usize) -> TileMut<'_> {
        assert!(
            r + rows <= self.rows && c + cols <= self.cols,
            "tile outside the block"
        );
        TileMut {
            // SAFETY: (r, c) is inside the block, as just asserted.
            ptr: unsafe { self.ptr.add(r * self.row_stride + c) },
            rows,
            cols,
            row_stride: self.row_stride,
            accumulate: false,
            _block: PhantomData,
        }
    }
}

/// A tile of C that a microkernel stores into: `rows × cols` elements from `ptr`,
/// rows `row_stride` apart, all inside one task's block. Only the x86 kernels store
/// tiles themselves, hence read it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TileMut<'a> {
    ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    row_stride: usize,
    /// Add to C's values instead of overwriting them.
    pub accumulate: bool,
    _block: PhantomData<&'a mut f32>,
}

impl TileMut<'_> {
    /// The tile with `accumulate` set.
    pub fn accumulating(self, accumulate: bool) -> Self {
        Self { accumulate, ..self }
    }

    /// Row `i` of the tile: its `cols` elements.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} is outside the tile");
        // SAFETY: the tile lies inside its block (checked by `BlockMut::tile_mut`),
        // and `&mut self` keeps the row from being handed out twice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.row_stride), self.cols) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_blocks_write_their_own_elements() {
        let mut data: Vec<f32> = vec![0.0; 5 * 7];
        let block = BlockMut::new(MatMut::row_major(&mut data, 5, 7));
        let (left, right) = block.split_at_col(3);
        let (mut top_right, mut bottom_right) = right.split_at_row(2);
        let mut left = left;
        for r in 0..5 {
            left.row_mut(r).fill(1.0);
        }
        top_right.row_mut(1).fill(2.0);
        bottom_right.tile_mut(1, 1, 2, 3).row_mut(1).fill(3.0);
        let expected: Vec<f32> = (0..35)
            .map(|i| match (i / 7, i % 7) {
                (_, c) if c < 3 => 1.0,
                (1, _) => 2.0,
                (4, c) if c >= 4 => 3.0,
                _ => 0.0,
            })
            .collect();
        assert_eq!(data, expected);
    }

    #[test]
    #[should_panic(expected = "tile outside the block")]
    fn a_tile_past_the_block_is_refused() {
        let mut data = vec![0.0f32; 16];
        let (mut left, _) = BlockMut::new(MatMut::row_major(&mut data, 4, 4)).split_at_col(2);
        left.tile_mut(0, 1, 2, 2);
    }
}
