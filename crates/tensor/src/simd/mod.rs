//! The one place where kerno-tensor uses `unsafe`: calls into raw-pointer kernels.

use crate::matrix::{MatMut, MatRef};

/// `C = A·B + beta·C` for views whose shapes the caller has checked
/// (`A: m×k`, `B: k×n`, `C: m×n`).
pub(crate) fn sgemm_views(a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: &mut MatMut<'_>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    debug_assert!(b.rows() == k && c.rows() == m && c.cols() == n);
    if m == 0 || n == 0 {
        return;
    }
    let row_stride_c = c.row_stride() as isize;
    // SAFETY: MatRef::new and MatMut::new checked that every element (r, c) of each
    // view, at its strides, lies inside its slice; `c` is borrowed mutably, so it
    // cannot alias `a` or `b`; matrixmultiply reads and writes only those elements.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data().as_ptr(),
            a.row_stride() as isize,
            a.col_stride() as isize,
            b.data().as_ptr(),
            b.row_stride() as isize,
            b.col_stride() as isize,
            beta,
            c.data_mut().as_mut_ptr(),
            row_stride_c,
            1,
        );
    }
}
