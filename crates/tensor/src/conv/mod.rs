//! 2-D convolution over NHWC images on kerno's GEMM (im2col), a few images at a
//! time: each output position's window is copied into a row of a patch matrix,
//! so that the convolution is a GEMM of `patches [positions × kh·kw·in]` by the
//! kernel `[kh·kw·in × filters]` (Keras' `[kh, kw, in, filters]`, read flat),
//! whose output rows are the NHWC output, with bias and relu fused in its
//! epilogue. The kernel's gradient is `patchesᵀ·dz` (each patch row ends with a
//! 1, so the bias gradient is one more row of it), and the input's `dz·kernelᵀ`
//! scattered back from patch rows to pixels (col2im).
//!
//! The patches of a chunk of images are written into the thread's own buffer
//! and read by the GEMM while they are still in L2, never for the whole batch:
//! the patch matrix of the convnet's second layer is 8.9 MB a batch, and
//! writing it out and reading it back from memory cost more than the products
//! on it. The backward pass makes the patches again rather than keep them.
//!
//! A max pooling of the output can be taken chunk by chunk as the output is
//! made ([`conv2d_pool_forward`]), and the backward pass can make its output
//! gradient chunk by chunk from the pooling's ([`OutputGradient::Pooled`]):
//! the convolution's output and its gradient (5.5 MB each a batch, for the
//! convnet's first layer) are then never written out and read back.
//!
//! Tasks take fixed groups of images, each summing its images' kernel
//! gradient in order into its own partial sum, and the partial sums are added
//! in group order: the same bits on any number of threads.

mod geometry;
mod patches;
mod single_channel;

pub use geometry::{Padding, Windows};

use crate::elementwise;
use crate::gemm::{
    gemm_one_task, gemm_one_task_packed, pack_b_once, with_buffer, Epilogue, PackedB,
};
use crate::matrix::{MatMut, MatRef};
use crate::parallel::{for_each_chunk, Units};
use crate::pool::{pool_images, unpool_images};
use crate::simd::Isa;
use crate::AlignedBuf;
use patches::{add_image_patches, image_patches_of};
use std::cell::RefCell;

/// Output positions a parallel task takes at least, in whole images, from 4 to
/// 16 of them: the split depends on the layer and the batch alone, never on the
/// thread count, and a task is large enough to pay for its hand-over and the
/// partial sum of the kernel gradient it writes.
const TASK_POSITIONS: usize = 128;

/// Images per parallel task.
fn images_per_task(w: &Windows) -> usize {
    TASK_POSITIONS
        .div_ceil(w.positions().max(1))
        .next_power_of_two()
        .clamp(4, 16)
}

/// Floats of patches made at once (384 KiB): they stay in L2 (512 KiB a core on
/// Zen 3) until the GEMM has read them. Two images of the convnet's second
/// layer (280 KiB) at a time made its forward pass faster than one.
const CHUNK_FLOATS: usize = 96 * 1024;

thread_local! {
    /// The patches of the chunk of images a task works on.
    static PATCHES: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// The kernel (or its transpose) packed once for a pass by the thread that
    /// runs it, read by every chunk's GEMM on every thread.
    static KERNEL_PANELS: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// A chunk's output, or its gradient, where a pooling takes it as it is made.
    static CHUNK_OUTPUT: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// Images whose patches are made and multiplied at once: as many as fit in
/// [`CHUNK_FLOATS`] (at least one), at most a task's.
fn images_per_chunk(w: &Windows) -> usize {
    let image_patches = w.positions() * w.patch_row_len();
    (CHUNK_FLOATS / image_patches.max(1)).clamp(1, images_per_task(w))
}

/// Floats of the patch buffer each thread needs for convolutions over `windows`.
pub fn patch_buffer_len(windows: &Windows) -> usize {
    images_per_chunk(windows) * windows.positions() * windows.patch_row_len()
}

/// Floats of a chunk's output (or its gradient) that each thread keeps for a
/// convolution over `windows` into `filters` whose output is pooled as it is
/// made ([`conv2d_pool_forward`], [`OutputGradient::Pooled`]).
pub fn chunk_output_len(windows: &Windows, filters: usize) -> usize {
    images_per_chunk(windows) * windows.positions() * filters
}

/// Gives every thread of the current rayon pool its patch buffer at `patches`
/// floats (the largest [`patch_buffer_len`] of a model's convolutions) and its
/// chunk output buffer at `chunk_outputs` (the largest [`chunk_output_len`] of
/// its pooled ones): a thread that rayon first gives part of a convolution
/// then allocates nothing.
pub fn reserve_patch_buffers(patches: usize, chunk_outputs: usize) {
    rayon::broadcast(|_| {
        PATCHES.with(|buffer| {
            buffer.borrow_mut().grow(patches);
        });
        CHUNK_OUTPUT.with(|buffer| {
            buffer.borrow_mut().grow(chunk_outputs);
        });
    });
}

/// Runs `chunk(first_image, images, patches)` over the task's images, a chunk
/// at a time and in order, with the chunk's patches made in the thread's buffer.
fn for_each_chunk_of_patches(
    w: &Windows,
    input: &[f32],
    first: usize,
    images: usize,
    mut chunk: impl FnMut(usize, usize, &mut [f32]),
) {
    let (image_len, image_patches) = (w.input_len(), w.positions() * w.patch_row_len());
    let per_chunk = images_per_chunk(w);
    with_buffer(&PATCHES, |buffer: &mut AlignedBuf| {
        for start in (first..first + images).step_by(per_chunk) {
            let count = per_chunk.min(first + images - start);
            let patches = &mut buffer.grow(per_chunk * image_patches)[..count * image_patches];
            for (i, rows) in patches.chunks_exact_mut(image_patches).enumerate() {
                image_patches_of(w, &input[(start + i) * image_len..][..image_len], rows);
            }
            chunk(start, count, patches);
        }
    })
}

/// `out = patches(input)·kernel`, then the epilogue (bias, relu) on each tile:
/// the convolution of `images` NHWC images into their NHWC outputs
/// (`[images · positions × filters]`).
///
/// # Panics
/// When a buffer is shorter than `images` need.
pub fn conv2d_forward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    conv2d_forward_with(
        Isa::detected(),
        windows,
        images,
        input,
        kernel,
        epilogue,
        out,
    )
}

/// [`conv2d_forward`] with a chosen instruction set (tests force each one).
pub fn conv2d_forward_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    let (positions, depth) = (windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    let image_out = positions * filters;
    let input = &input[..images * windows.input_len()];
    let kernel = MatRef::row_major(kernel, depth, filters);
    let per_task = images_per_task(windows);
    with_buffer(&KERNEL_PANELS, |panels| {
        let packed = pack_b_once(isa, kernel, panels);
        for_each_chunk(
            &mut out[..images * image_out],
            per_task * image_out,
            &|task, out: &mut [f32]| {
                let first = task * per_task;
                let count = out.len() / image_out.max(1);
                for_each_chunk_of_patches(windows, input, first, count, |start, n, patches| {
                    let out = &mut out[(start - first) * image_out..][..n * image_out];
                    multiply_chunk(isa, windows, patches, kernel, packed, epilogue, out);
                });
            },
        );
    })
}

/// The products of a chunk's patches (of `out.len()` / filters output
/// positions) with the kernel into their outputs, the epilogue applied.
fn multiply_chunk(
    isa: Isa,
    windows: &Windows,
    patches: &[f32],
    kernel: MatRef<'_>,
    packed: Option<PackedB<'_>>,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    let (depth, filters) = (windows.patch_len(), kernel.cols());
    let rows = out.len() / filters.max(1);
    let a = MatRef::new(patches, rows, depth, depth + 1, 1);
    let c = MatMut::row_major(out, rows, filters);
    gemm_one_task_packed(isa, a, kernel, packed, c, false, epilogue);
}

/// Whether [`conv2d_pool_forward`] computes the convolution over `windows`
/// into `filters`, pooled by `pool`, with `epilogue`, straight from the images
/// (one channel, 3×3) rather than by im2col and GEMM, on this CPU.
pub fn pooled_forward_is_direct(
    windows: &Windows,
    pool: &Windows,
    filters: usize,
    epilogue: &Epilogue<'_>,
) -> bool {
    single_channel::applies(Isa::detected(), windows, pool, filters, epilogue)
}

/// Whether [`conv2d_backward`] computes the kernel's gradient of the
/// convolution over `windows` into `filters` from `dz` straight from the
/// images (one channel, 3×3) rather than by im2col and GEMM, on this CPU.
pub fn kernel_gradient_is_direct(
    windows: &Windows,
    filters: usize,
    dz: &OutputGradient<'_>,
) -> bool {
    single_channel::gradient_applies(Isa::detected(), windows, filters, dz)
}

/// Panics unless `pool`'s windows are over the output of the convolution over
/// `windows` into `filters`.
fn assert_pools_output(pool: &Windows, windows: &Windows, filters: usize) {
    assert_eq!(
        (pool.input_len(), pool.channels),
        (windows.positions() * filters, filters),
        "conv2d: the pooling's input must be the convolution's output"
    );
}

/// A max pooling of a convolution's output, taken as each chunk of the output
/// is made ([`conv2d_pool_forward`]).
#[derive(Debug)]
pub struct Pooling<'a> {
    /// The pooling's windows over the convolution's output.
    pub windows: &'a Windows,
    /// The pooled output, `[images · pooled positions × filters]`.
    pub out: &'a mut [f32],
    /// Where each maximum came from, for the backward pass (as
    /// [`max_pool2d_forward`](crate::pool::max_pool2d_forward) records it).
    pub window_of_max: Option<&'a mut [f32]>,
    /// Whether the convolution's output is rounded to bf16 before it is pooled
    /// (`mixed_bfloat16`, where each layer's output is).
    pub round_to_bf16: bool,
}

/// [`conv2d_forward`] whose output is max-pooled as it is made: `pooling.out`
/// is `max_pool2d(conv2d(input))`, bit for bit as the two kernels give it,
/// and the convolution's output is never written out.
///
/// # Panics
/// When a buffer is shorter than `images` need, or the pooling's input is not
/// the convolution's output.
pub fn conv2d_pool_forward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    epilogue: Epilogue<'_>,
    pooling: Pooling<'_>,
) {
    let isa = Isa::detected();
    conv2d_pool_forward_with(isa, windows, images, input, kernel, epilogue, pooling)
}

/// [`conv2d_pool_forward`] with a chosen instruction set (tests force each one).
pub fn conv2d_pool_forward_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    epilogue: Epilogue<'_>,
    pooling: Pooling<'_>,
) {
    let Pooling {
        windows: pool,
        out,
        window_of_max,
        round_to_bf16,
    } = pooling;
    let (positions, depth) = (windows.positions(), windows.patch_len());
    let filters = kernel.len() / depth.max(1);
    assert_pools_output(pool, windows, filters);
    let (image_out, pooled_len) = (positions * filters, pool.positions() * filters);
    let input = &input[..images * windows.input_len()];
    let kernel = MatRef::row_major(kernel, depth, filters);
    let per_task = images_per_task(windows);
    let task_len = per_task * pooled_len;
    // A task's pooled outputs, and where their maxima came from.
    type Pooled<'a> = (Units<&'a mut [f32]>, Option<Units<&'a mut [f32]>>);
    let outputs: Pooled<'_> = (
        Units(&mut out[..images * pooled_len], task_len),
        window_of_max.map(|which| Units(&mut which[..images * pooled_len], task_len)),
    );
    if single_channel::applies(isa, windows, pool, filters, &epilogue) {
        let epilogue = single_channel::OutputEpilogue::new(epilogue, round_to_bf16);
        let image_len = windows.input_len();
        for_each_chunk(outputs, 1, &|task, (Units(out, _), which): Pooled<'_>| {
            let first = task * per_task;
            let count = out.len() / pooled_len.max(1);
            let input = &input[first * image_len..][..count * image_len];
            let which = which.map(|Units(which, _)| which);
            let kernel = &kernel.data()[..depth * filters];
            single_channel::pool_images(isa, windows, pool, input, kernel, epilogue, out, which);
        });
        return;
    }
    let chunk_len = chunk_output_len(windows, filters);
    with_buffer(&KERNEL_PANELS, |panels| {
        let packed = pack_b_once(isa, kernel, panels);
        for_each_chunk(outputs, 1, &|task, (Units(out, _), which): Pooled<'_>| {
            let first = task * per_task;
            let count = out.len() / pooled_len.max(1);
            let mut which = which.map(|Units(which, _)| which);
            with_buffer(&CHUNK_OUTPUT, |conv_out: &mut AlignedBuf| {
                let conv_out = conv_out.grow(chunk_len);
                for_each_chunk_of_patches(windows, input, first, count, |start, n, patches| {
                    let conv_out = &mut conv_out[..n * image_out];
                    multiply_chunk(isa, windows, patches, kernel, packed, epilogue, conv_out);
                    if round_to_bf16 {
                        elementwise::round_to_bf16(isa, conv_out);
                    }
                    let at = (start - first) * pooled_len;
                    let out = &mut out[at..][..n * pooled_len];
                    let which = which.as_deref_mut().map(|w| &mut w[at..][..n * pooled_len]);
                    pool_images(isa, pool, conv_out, out, which);
                });
            })
        });
    })
}

/// Floats of scratch [`conv2d_backward`] needs for `images` images: a partial
/// kernel gradient per task, and the kernel transposed.
pub fn backward_scratch_len(windows: &Windows, filters: usize, images: usize) -> usize {
    let tasks = images.div_ceil(images_per_task(windows));
    (tasks * windows.patch_row_len() + windows.patch_len()) * filters
}

/// The gradients of a convolution: `[kernel_grad; bias_grad] = [P 1]ᵀ·dz` (the
/// kernel's gradient, `[kh·kw·in × filters]`, and when `bias_grad` is given the
/// bias gradient `Σ_rows dz`), and when `dx` is given the input's,
/// `dx = col2im(dz·kernelᵀ)`.
/// `dz` is the gradient with respect to the convolution's output before its
/// activation, `[images · positions × filters]`, or the pooling's it is made
/// from; `scratch` holds [`backward_scratch_len`] floats.
///
/// # Panics
/// When a buffer is shorter than `images` need.
pub fn conv2d_backward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    dz: OutputGradient<'_>,
    grads: ConvGradients<'_>,
    scratch: &mut [f32],
) {
    let isa = Isa::detected();
    conv2d_backward_with(isa, windows, images, input, kernel, dz, grads, scratch)
}

/// The gradient with respect to a convolution's output before its activation,
/// as [`conv2d_backward`] reads it.
#[derive(Clone, Copy, Debug)]
pub enum OutputGradient<'a> {
    /// The gradient itself, `[images · positions × filters]`.
    Given(&'a [f32]),
    /// The gradient of a max pooling of the output, from which the output's is
    /// made chunk by chunk (bit for bit as
    /// [`max_pool2d_backward`](crate::pool::max_pool2d_backward) makes it) and
    /// never written out: the pooling's windows, where each maximum came from,
    /// the pooled output, its gradient, and whether a relu lies between.
    Pooled {
        windows: &'a Windows,
        window_of_max: &'a [f32],
        out: &'a [f32],
        d_out: &'a [f32],
        relu: bool,
    },
}

/// Where [`conv2d_backward`] writes: the kernel's gradient, and the bias's and
/// the input's where they are wanted.
pub struct ConvGradients<'a> {
    pub kernel: &'a mut [f32],
    pub bias: Option<&'a mut [f32]>,
    pub input: Option<&'a mut [f32]>,
}

/// [`conv2d_backward`] with a chosen instruction set (tests force each one).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    input: &[f32],
    kernel: &[f32],
    dz: OutputGradient<'_>,
    grads: ConvGradients<'_>,
    scratch: &mut [f32],
) {
    let ConvGradients {
        kernel: kernel_grad,
        bias: bias_grad,
        input: dx,
    } = grads;
    let (positions, depth, row_len) = (
        windows.positions(),
        windows.patch_len(),
        windows.patch_row_len(),
    );
    let filters = kernel.len() / depth.max(1);
    let (image_len, image_dz) = (windows.input_len(), positions * filters);
    let input = &input[..images * image_len];
    if let OutputGradient::Pooled { windows: pool, .. } = dz {
        assert_pools_output(pool, windows, filters);
    }
    let chunk_len = chunk_output_len(windows, filters);
    let grad_len = row_len * filters;
    let per_task = images_per_task(windows);
    let tasks = images.div_ceil(per_task);
    let (partials, kernel_t) = scratch.split_at_mut(tasks * grad_len);
    let kernel_t = &mut kernel_t[..depth * filters];
    // `kernelᵀ` row-major, which the input gradient's GEMM reads in place where
    // its microkernels read B in place, and is packed once from otherwise.
    if dx.is_some() {
        for (t, row) in kernel.chunks_exact(filters.max(1)).enumerate() {
            for (f, &value) in row.iter().enumerate() {
                kernel_t[f * depth + t] = value;
            }
        }
    }
    let kernel_t = MatRef::row_major(kernel_t, filters, depth);
    // One-channel images' kernel gradient straight from them and the output
    // gradient (made from a pooling's as it is used); the loop below then runs
    // for the input's gradient alone, where it is wanted (a one-channel layer
    // that is not the first, rare: its patches are still made, their buffer
    // holding the input gradient's patch rows).
    let direct = single_channel::gradient_applies(isa, windows, filters, &dz);
    if direct {
        for_each_chunk(&mut *partials, grad_len, &|task, partial: &mut [f32]| {
            let first = task * per_task;
            let count = per_task.min(images - first);
            let input = &input[first * image_len..][..count * image_len];
            single_channel::kernel_gradient(isa, windows, input, first, dz, partial);
        });
    }
    let dx = dx.map(|dx| Units(&mut dx[..images * image_len], per_task * image_len));
    // A task's partial sum of the kernel gradient, and its images' input gradient.
    type TaskOutputs<'a> = (Units<&'a mut [f32]>, Option<Units<&'a mut [f32]>>);
    let outputs: TaskOutputs<'_> = (Units(&mut *partials, grad_len), dx);
    with_buffer(&KERNEL_PANELS, |panels| {
        if direct && outputs.1.is_none() {
            return;
        }
        let packed = match outputs.1.is_some() {
            true => pack_b_once(isa, kernel_t, panels),
            false => None,
        };
        for_each_chunk(
            outputs,
            1,
            &|task, (Units(partial, _), dx): TaskOutputs<'_>| {
                let first = task * per_task;
                let count = per_task.min(images - first);
                let mut dx = dx.map(|Units(dx, _)| dx);
                with_buffer(&CHUNK_OUTPUT, |made: &mut AlignedBuf| {
                    // Only a pooled output's gradient is made here.
                    let made = match dz {
                        OutputGradient::Pooled { .. } => made.grow(chunk_len),
                        OutputGradient::Given(_) => &mut [],
                    };
                    for_each_chunk_of_patches(windows, input, first, count, |start, n, patches| {
                        let rows = n * positions;
                        let dz = chunk_gradient(isa, dz, start, n, image_dz, made);
                        let dz = MatRef::row_major(dz, rows, filters);
                        if !direct {
                            let p = MatRef::row_major(patches, rows, row_len);
                            let c = MatMut::row_major(&mut *partial, row_len, filters);
                            gemm_one_task(isa, p.t(), dz, c, start > first, Epilogue::None);
                        }
                        if let Some(dx) = dx.as_deref_mut() {
                            let dp = MatMut::new(patches, rows, depth, row_len);
                            let none = Epilogue::None;
                            gemm_one_task_packed(isa, dz, kernel_t, packed, dp, false, none);
                            let dx = &mut dx[(start - first) * image_len..][..n * image_len];
                            for (rows, image) in patches
                                .chunks_exact(row_len * positions)
                                .zip(dx.chunks_exact_mut(image_len))
                            {
                                add_image_patches(windows, rows, image);
                            }
                        }
                    });
                });
            },
        );
    });
    // The tasks' partial sums added in task order: the kernel's rows, then the
    // bias row.
    let (partials, kernel_len) = (&*partials, depth * filters);
    for_each_chunk(
        &mut kernel_grad[..kernel_len],
        SUM_CHUNK,
        &|i, out: &mut [f32]| add_partials(partials, grad_len, i * SUM_CHUNK, out),
    );
    if let Some(bias_grad) = bias_grad {
        add_partials(partials, grad_len, kernel_len, &mut bias_grad[..filters]);
    }
}

/// The output gradient of the `n` images from `start`: a slice of it where it
/// is given, else made from the pooling's in `made`.
fn chunk_gradient<'a>(
    isa: Isa,
    dz: OutputGradient<'a>,
    start: usize,
    n: usize,
    image_dz: usize,
    made: &'a mut [f32],
) -> &'a [f32] {
    match dz {
        OutputGradient::Given(dz) => &dz[start * image_dz..][..n * image_dz],
        OutputGradient::Pooled {
            windows,
            window_of_max,
            out,
            d_out,
            relu,
        } => {
            let (at, len) = (start * windows.positions(), n * windows.positions());
            let c = windows.channels;
            let (which, out, d_out) = (
                &window_of_max[at * c..][..len * c],
                &out[at * c..][..len * c],
                &d_out[at * c..][..len * c],
            );
            let made = &mut made[..n * image_dz];
            unpool_images(isa, windows, which, out, d_out, made, relu);
            made
        }
    }
}

/// `out = Σ` over the partial sums (each `len` floats) of their floats from
/// `at`, the partial sums in order.
fn add_partials(partials: &[f32], len: usize, at: usize, out: &mut [f32]) {
    let mut partials = partials.chunks_exact(len.max(1));
    match partials.next() {
        Some(first) => out.copy_from_slice(&first[at..][..out.len()]),
        None => out.fill(0.0),
    }
    for partial in partials {
        let partial = &partial[at..][..out.len()];
        out.iter_mut().zip(partial).for_each(|(o, p)| *o += p);
    }
}

/// Floats of the kernel gradient each task of the final sum adds up.
const SUM_CHUNK: usize = 4096;
