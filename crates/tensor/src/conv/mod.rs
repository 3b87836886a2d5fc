//! 2-D convolution over NHWC images on kerno's GEMM (im2col): each output
//! position's window is copied into a row of a patch matrix, so that the
//! convolution is one GEMM of `patches [N·positions × kh·kw·in]` by the kernel
//! `[kh·kw·in × filters]` (Keras' `[kh, kw, in, filters]`, read flat), whose
//! output rows are the NHWC output, with bias and relu fused in its epilogue.
//! The kernel's gradient is `patchesᵀ·dz` (its row of ones giving the bias
//! gradient too), and the input's `dz·kernelᵀ` scattered back from patch rows
//! to pixels (col2im).
//!
//! The copies split the batch into fixed chunks of images, and the GEMMs give
//! the same bits on any thread count: so does a convolution.

mod geometry;
mod patches;

pub use geometry::{Padding, Windows};
pub use patches::{add_patches_into_images, images_to_patches};

use crate::gemm::{gemm_with, Epilogue};
use crate::matrix::{MatMut, MatRef};
use crate::simd::Isa;

/// `out = patchesᵀ·dz`: the kernel's gradient, `[kh·kw·in × filters]`, then
/// the bias gradient (`Σ_rows dz`) as its last row; `patches` as
/// [`images_to_patches`] wrote them, `dz` the gradient with respect to the
/// convolution's output before its activation, `[N·positions × filters]`.
///
/// # Panics
/// When a buffer is shorter than `images` need.
pub fn conv2d_kernel_gradient(
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    out: &mut [f32],
) {
    conv2d_kernel_gradient_with(Isa::detected(), windows, images, patches, dz, out)
}

/// [`conv2d_kernel_gradient`] with a chosen instruction set (tests force each one).
pub fn conv2d_kernel_gradient_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    out: &mut [f32],
) {
    let row_len = windows.patch_row_len();
    let filters = out.len() / row_len;
    let rows = images * windows.positions();
    let a = MatRef::row_major(&patches[..rows * row_len], rows, row_len);
    let b = MatRef::row_major(&dz[..rows * filters], rows, filters);
    let c = MatMut::row_major(out, row_len, filters);
    gemm_with(isa, a.t(), b, c, false, Epilogue::None);
}

/// The GEMM views of a convolution's forward pass: the patches without their
/// ones' column (`[N·positions × kh·kw·in]`) and the kernel.
pub fn forward_operands<'a>(
    windows: &Windows,
    images: usize,
    patches: &'a [f32],
    kernel: &'a [f32],
) -> (MatRef<'a>, MatRef<'a>) {
    let (rows, depth) = (images * windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    let a = MatRef::new(&patches[..rows * (depth + 1)], rows, depth, depth + 1, 1);
    (a, MatRef::row_major(kernel, depth, filters))
}

/// The GEMM of the input's gradient: `dz·kernelᵀ` into the patch rows (their
/// ones' column left alone), for [`add_patches_into_images`] to scatter.
pub fn input_gradient_product(
    windows: &Windows,
    images: usize,
    kernel: &[f32],
    dz: &[f32],
    patches: &mut [f32],
) {
    input_gradient_product_with(Isa::detected(), windows, images, kernel, dz, patches)
}

/// [`input_gradient_product`] with a chosen instruction set (tests force each one).
pub fn input_gradient_product_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    kernel: &[f32],
    dz: &[f32],
    patches: &mut [f32],
) {
    let (rows, depth) = (images * windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    let a = MatRef::row_major(&dz[..rows * filters], rows, filters);
    let b = MatRef::row_major(kernel, depth, filters).t();
    let c = MatMut::new(&mut patches[..rows * (depth + 1)], rows, depth, depth + 1);
    gemm_with(isa, a, b, c, false, Epilogue::None);
}
