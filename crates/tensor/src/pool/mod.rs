//! 2-D max pooling over NHWC images. An image's channels are contiguous, so
//! every step below is an element-wise operation over a pixel's channels,
//! written as loops over slices that the compiler turns into vector max,
//! compare and blend instructions.
//!
//! The batch splits into fixed chunks of images, each image done by one
//! thread: the same bits on any thread count.

use crate::conv::Windows;
use crate::parallel::for_each_chunk;

/// Images per parallel task (a pooled image is a few microseconds of work).
const IMAGES_PER_TASK: usize = 8;
/// Channels handled at once by the backward pass (its pending gradients live on the stack).
const CHANNEL_BLOCK: usize = 64;

/// `out[y, x, c] = max` of `input[c]` over the window of output position `(y, x)`
/// (positions in the padding take no part).
///
/// # Panics
/// When `input` or `out` is shorter than `images` need.
pub fn max_pool2d_forward(windows: &Windows, images: usize, input: &[f32], out: &mut [f32]) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let input = &input[..images * in_len];
    for_each_chunk(
        &mut out[..images * out_len],
        IMAGES_PER_TASK * out_len,
        &|task, chunk: &mut [f32]| {
            for (i, out) in chunk.chunks_exact_mut(out_len).enumerate() {
                let image = &input[(task * IMAGES_PER_TASK + i) * in_len..][..in_len];
                pool_image(windows, image, out);
            }
        },
    );
}

fn pool_image(w: &Windows, image: &[f32], out: &mut [f32]) {
    let c = w.channels;
    let mut pixels = out.chunks_exact_mut(c);
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let max = pixels.next().expect("one pixel per output position");
            let mut first = true;
            for ky in 0..w.window[0] {
                for kx in 0..w.window[1] {
                    let Some((y, x)) = w.source(oy, ox, ky, kx) else {
                        continue;
                    };
                    let pixel = &image[(y * w.width + x) * c..][..c];
                    if first {
                        max.copy_from_slice(pixel);
                        first = false;
                    } else {
                        // `>` rather than `f32::max`: one vector compare and blend.
                        for (m, &v) in max.iter_mut().zip(pixel) {
                            *m = if v > *m { v } else { *m };
                        }
                    }
                }
            }
        }
    }
}

/// The input's gradient: each output's gradient `d_out` goes to the first input
/// of its window (in window order) equal to the maximum `out`, as TensorFlow's
/// max-pool gradient; every other input's gradient is 0 (summed where windows
/// overlap). With `input_is_relu` (the input is a relu's output, `≥ 0`), the
/// gradient is also taken through that relu: a window whose maximum is 0
/// passes none, as the relu's gradient is 0 there.
///
/// # Panics
/// When a buffer is shorter than `images` need.
pub fn max_pool2d_backward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    out: &[f32],
    d_out: &[f32],
    d_input: &mut [f32],
    input_is_relu: bool,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let (input, out, d_out) = (
        &input[..images * in_len],
        &out[..images * out_len],
        &d_out[..images * out_len],
    );
    for_each_chunk(
        &mut d_input[..images * in_len],
        IMAGES_PER_TASK * in_len,
        &|task, chunk: &mut [f32]| {
            for (i, d_image) in chunk.chunks_exact_mut(in_len).enumerate() {
                let n = task * IMAGES_PER_TASK + i;
                let (image, max, d_max) = (
                    &input[n * in_len..][..in_len],
                    &out[n * out_len..][..out_len],
                    &d_out[n * out_len..][..out_len],
                );
                unpool_image(windows, image, max, d_max, d_image, input_is_relu);
            }
        },
    );
}

/// Whether every input pixel is in exactly one window.
fn tiles_exactly(w: &Windows) -> bool {
    w.strides == w.window
        && w.pad_before == [0, 0]
        && w.out_height * w.window[0] == w.height
        && w.out_width * w.window[1] == w.width
}

fn unpool_image(
    w: &Windows,
    image: &[f32],
    max: &[f32],
    d_max: &[f32],
    d_image: &mut [f32],
    input_is_relu: bool,
) {
    let c = w.channels;
    // Where every input is in exactly one window, each gradient is written
    // once; elsewhere they are summed into zeros.
    let exact = tiles_exactly(w);
    if !exact {
        d_image.fill(0.0);
    }
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let at = (oy * w.out_width + ox) * c;
            for start in (0..c).step_by(CHANNEL_BLOCK) {
                let len = CHANNEL_BLOCK.min(c - start);
                let (max, d_max) = (&max[at + start..][..len], &d_max[at + start..][..len]);
                // The gradients not yet handed to an input of the window.
                let mut pending = [0.0f32; CHANNEL_BLOCK];
                for ((p, &g), &m) in pending.iter_mut().zip(d_max).zip(max) {
                    *p = if input_is_relu && m <= 0.0 { 0.0 } else { g };
                }
                for ky in 0..w.window[0] {
                    for kx in 0..w.window[1] {
                        let Some((y, x)) = w.source(oy, ox, ky, kx) else {
                            continue;
                        };
                        let pixel = (y * w.width + x) * c + start;
                        let values = &image[pixel..][..len];
                        let grads = &mut d_image[pixel..][..len];
                        hand_over(grads, &mut pending[..len], values, max, exact);
                    }
                }
            }
        }
    }
}

/// Where `values[i]` is the window's maximum `max[i]`, hands `pending[i]` to
/// `grads[i]` (written, or added unless `exact`) and clears it, so that only
/// the first maximum takes it.
#[inline]
fn hand_over(grads: &mut [f32], pending: &mut [f32], values: &[f32], max: &[f32], exact: bool) {
    let n = grads.len();
    // Slices of one length: the loops below run without bounds checks, in vectors.
    let (pending, values, max) = (&mut pending[..n], &values[..n], &max[..n]);
    if exact {
        for i in 0..n {
            let (first_max, p) = (values[i] == max[i], pending[i]);
            grads[i] = if first_max { p } else { 0.0 };
            pending[i] = if first_max { 0.0 } else { p };
        }
    } else {
        for i in 0..n {
            let (first_max, p) = (values[i] == max[i], pending[i]);
            grads[i] += if first_max { p } else { 0.0 };
            pending[i] = if first_max { 0.0 } else { p };
        }
    }
}
