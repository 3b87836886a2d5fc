//! 2-D convolution over NHWC images on kerno's GEMM (im2col): each output
//! position's window is copied into a row of a patch matrix, so that the
//! convolution is one GEMM of `patches [N·positions × kh·kw·in]` by the kernel
//! `[kh·kw·in × filters]` (Keras' `[kh, kw, in, filters]`, read flat), whose
//! output rows are the NHWC output, with bias and relu fused in its epilogue.
//! The gradients are two more GEMMs on the same patches, and the input's is
//! scattered back from patch rows to pixels (col2im).
//!
//! The patch copies split the batch into fixed chunks of images, each image
//! copied by one thread in a fixed order: the same bits on any thread count.

mod geometry;
mod patches;

pub use geometry::{Padding, Windows};
pub use patches::{add_patches_into_images, images_to_patches};

use crate::gemm::{gemm_with, Epilogue};
use crate::matrix::{MatMut, MatRef};
use crate::simd::Isa;

/// `out = patches(input)·kernel`, then the epilogue (bias, bias + relu): a
/// convolution of `images` NHWC images, `patches` holding their windows
/// afterwards for the weight gradient.
///
/// # Panics
/// When a buffer's length does not match `windows`, `images` and `filters`.
pub fn conv2d_forward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    patches: &mut [f32],
    out: &mut [f32],
    epilogue: Epilogue<'_>,
) {
    conv2d_forward_with(
        Isa::detected(),
        windows,
        images,
        input,
        kernel,
        patches,
        out,
        epilogue,
    )
}

/// [`conv2d_forward`] with a chosen instruction set (tests force each one).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    patches: &mut [f32],
    out: &mut [f32],
    epilogue: Epilogue<'_>,
) {
    let (rows, depth) = (images * windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    assert_eq!(kernel.len(), depth * filters, "conv2d: kernel size");
    images_to_patches(windows, images, input, &mut patches[..rows * depth]);
    let a = MatRef::row_major(&patches[..rows * depth], rows, depth);
    let b = MatRef::row_major(kernel, depth, filters);
    gemm_with(
        isa,
        a,
        b,
        MatMut::row_major(&mut out[..rows * filters], rows, filters),
        false,
        epilogue,
    );
}

/// The kernel's gradient `dkernel = patchesᵀ·dz` (see [`conv2d_kernel_gradient_with`]).
pub fn conv2d_kernel_gradient(
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    dkernel: &mut [f32],
) {
    conv2d_kernel_gradient_with(Isa::detected(), windows, images, patches, dz, dkernel)
}

/// The input's gradient (see [`conv2d_input_gradient_with`]).
pub fn conv2d_input_gradient(
    windows: &Windows,
    images: usize,
    kernel: &[f32],
    dz: &[f32],
    patches: &mut [f32],
    d_input: &mut [f32],
) {
    conv2d_input_gradient_with(
        Isa::detected(),
        windows,
        images,
        kernel,
        dz,
        patches,
        d_input,
    )
}

/// The kernel's gradient `dkernel = patchesᵀ·dz` from the patches the forward
/// pass left and `dz`, the gradient with respect to the convolution's output
/// (before its activation), `[N·positions × filters]`.
pub fn conv2d_kernel_gradient_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    patches: &[f32],
    dz: &[f32],
    dkernel: &mut [f32],
) {
    let (rows, depth) = (images * windows.positions(), windows.patch_len());
    let filters = dkernel.len() / depth.max(1);
    let a = MatRef::row_major(&patches[..rows * depth], rows, depth).t();
    let b = MatRef::row_major(&dz[..rows * filters], rows, filters);
    let c = MatMut::row_major(dkernel, depth, filters);
    gemm_with(isa, a, b, c, false, Epilogue::None);
}

/// The input's gradient: `dz·kernelᵀ` into `patches` (overwriting them), then
/// each patch row added back onto the pixels it was copied from, into `d_input`.
pub fn conv2d_input_gradient_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    kernel: &[f32],
    dz: &[f32],
    patches: &mut [f32],
    d_input: &mut [f32],
) {
    let (rows, depth) = (images * windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    let a = MatRef::row_major(&dz[..rows * filters], rows, filters);
    let b = MatRef::row_major(kernel, depth, filters).t();
    let c = MatMut::row_major(&mut patches[..rows * depth], rows, depth);
    gemm_with(isa, a, b, c, false, Epilogue::None);
    add_patches_into_images(
        windows,
        images,
        &patches[..rows * depth],
        &mut d_input[..images * windows.input_len()],
    );
}
