//! Strided matrix views: a transpose is a view, not a copy.

/// A read-only matrix view with a stride per axis.
///
/// Element `(r, c)` is `data[r * row_stride + c * col_stride]`; the constructor
/// checks that every element of the view lies inside `data`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A view with explicit strides.
    ///
    /// # Panics
    /// When the last element of the view lies outside `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        assert!(
            fits(data.len(), rows, cols, row_stride, col_stride),
            "a {rows}x{cols} view with strides ({row_stride}, {col_stride}) overruns {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A contiguous row-major view.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The slice the view indexes into.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.row_stride + c * self.col_stride]
    }

    /// The rows `start..start + count`, as a view.
    pub fn rows_range(&self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.rows, "row range out of bounds");
        let offset = if count == 0 {
            0
        } else {
            start * self.row_stride
        };
        Self::new(
            &self.data[offset.min(self.data.len())..],
            count,
            self.cols,
            self.row_stride,
            self.col_stride,
        )
    }

    /// The columns `start..start + count`, as a view.
    pub fn cols_range(&self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.cols, "column range out of bounds");
        let offset = if count == 0 {
            0
        } else {
            start * self.col_stride
        };
        Self::new(
            &self.data[offset.min(self.data.len())..],
            self.rows,
            count,
            self.row_stride,
            self.col_stride,
        )
    }
}

/// A mutable row-major matrix view whose rows may be padded (`row_stride >= cols`).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// # Panics
    /// When rows overlap (`row_stride < cols`) or the view overruns `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            row_stride >= cols || rows <= 1,
            "rows of a mutable view may not overlap"
        );
        assert!(
            fits(data.len(), rows, cols, row_stride, 1),
            "a {rows}x{cols} view with row stride {row_stride} overruns {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }

    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    pub fn data(&self) -> &[f32] {
        self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }

    /// The slice the view writes into, for the view's whole lifetime.
    pub fn into_data(self) -> &'a mut [f32] {
        self.data
    }

    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef::new(self.data, self.rows, self.cols, self.row_stride, 1)
    }

    /// The same view, borrowed for a shorter time.
    pub fn reborrow(&mut self) -> MatMut<'_> {
        MatMut::new(self.data, self.rows, self.cols, self.row_stride)
    }

    /// Row `r` (its `cols` elements, without padding).
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        let start = r * self.row_stride;
        &mut self.data[start..start + self.cols]
    }
}

/// Whether a `rows x cols` view with these strides stays inside `len` elements.
fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1).checked_mul(row_stride).and_then(|a| {
        (cols - 1)
            .checked_mul(col_stride)
            .and_then(|b| a.checked_add(b))
    });
    matches!(last, Some(last) if last < len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_a_view() {
        let data: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let m = MatRef::row_major(&data, 2, 3);
        let t = m.t();
        assert_eq!((t.rows(), t.cols()), (3, 2));
        assert_eq!(t.get(2, 1), m.get(1, 2));
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn overrunning_view_is_rejected() {
        let data = [0.0f32; 5];
        let _ = MatRef::row_major(&data, 2, 3);
    }
}
