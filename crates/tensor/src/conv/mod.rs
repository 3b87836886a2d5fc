//! 2-D convolution over NHWC images on kerno's GEMM (im2col): each output
//! position's window is copied into a row of a patch matrix, so that the
//! convolution is one GEMM of `patches [N·positions × kh·kw·in]` by the kernel
//! `[kh·kw·in × filters]` (Keras' `[kh, kw, in, filters]`, read flat), whose
//! output rows are the NHWC output, with bias and relu fused in its epilogue.
//! The kernel's gradient is `patchesᵀ·dz` (its row of ones giving the bias
//! gradient too), and the input's `dz·kernelᵀ` scattered back from patch rows
//! to pixels (col2im).
//!
//! Every split is fixed by the batch: chunks of images for the copies, of
//! images again for the partial sums of the kernel gradient, added in order.
//! The same bits on any thread count.

mod geometry;
mod patches;

pub use geometry::{Padding, Windows};
pub use patches::{add_patches_into_images, images_to_patches};

use crate::gemm::{gemm_with, Epilogue};
use crate::matrix::{MatMut, MatRef};
use crate::parallel::for_each_chunk;
use crate::simd::Isa;

/// Images whose share of the kernel gradient one task sums, when that
/// gradient is too small for the GEMM to split among the threads: the depth
/// of that product is the batch's output positions, so it is split by depth
/// into partial sums instead.
const IMAGES_PER_PARTIAL: usize = 16;
/// Values of a kernel gradient below which it is summed in partial sums
/// (a first layer's 3×3 window over one channel: 10 rows of the product).
const SPLIT_DEPTH_BELOW: usize = 4096;

/// How many partial sums the kernel gradient of `images` images takes (1: none).
fn partial_sums(windows: &Windows, images: usize, filters: usize) -> usize {
    if windows.patch_row_len() * filters < SPLIT_DEPTH_BELOW {
        images.div_ceil(IMAGES_PER_PARTIAL)
    } else {
        1
    }
}

/// Floats of scratch [`conv2d_kernel_gradient`] needs for `images` images.
pub fn kernel_gradient_scratch_len(windows: &Windows, images: usize, filters: usize) -> usize {
    match partial_sums(windows, images, filters) {
        0 | 1 => 0,
        partials => partials * windows.patch_row_len() * filters,
    }
}

/// `out = patchesᵀ·dz`: the kernel's gradient, `[kh·kw·in × filters]`, then
/// the bias gradient (`Σ_rows dz`) as its last row; `patches` as
/// [`images_to_patches`] wrote them, `dz` the gradient with respect to the
/// convolution's output before its activation, `[N·positions × filters]`.
///
/// # Panics
/// When a buffer is shorter than `images` need, or `scratch` shorter than
/// [`kernel_gradient_scratch_len`].
pub fn conv2d_kernel_gradient(
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    conv2d_kernel_gradient_with(Isa::detected(), windows, images, patches, dz, scratch, out)
}

/// [`conv2d_kernel_gradient`] with a chosen instruction set (tests force each one).
pub fn conv2d_kernel_gradient_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let row_len = windows.patch_row_len();
    let filters = out.len() / row_len;
    let rows = images * windows.positions();
    let rows_per_partial = IMAGES_PER_PARTIAL * windows.positions();
    let product = |first: usize, count: usize, c: &mut [f32]| {
        let a = MatRef::row_major(
            &patches[first * row_len..][..count * row_len],
            count,
            row_len,
        );
        let b = MatRef::row_major(&dz[first * filters..][..count * filters], count, filters);
        let c = MatMut::row_major(c, row_len, filters);
        gemm_with(isa, a.t(), b, c, false, Epilogue::None);
    };
    let partials = partial_sums(windows, images, filters);
    if partials <= 1 {
        product(0, rows, out);
        return;
    }
    let size = row_len * filters;
    let scratch = &mut scratch[..partials * size];
    for_each_chunk(&mut *scratch, size, &|i, partial: &mut [f32]| {
        let first = i * rows_per_partial;
        product(first, rows_per_partial.min(rows - first), partial);
    });
    out.copy_from_slice(&scratch[..size]);
    for partial in scratch.chunks_exact(size).skip(1) {
        out.iter_mut().zip(partial).for_each(|(o, p)| *o += p);
    }
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
