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
/// What [`max_pool2d_forward`] records for an output whose maximum is NaN:
/// no input equals it, so none takes its gradient.
const NO_WINDOW: f32 = -1.0;

/// `out[y, x, c] = max` of `input[c]` over the window of output position `(y, x)`
/// (positions in the padding take no part). With `window_of_max` (`out`'s
/// size, for the backward pass), each output's window position (`ky·kw + kx`)
/// of the first input equal to its maximum, in window order: the backward pass
/// then reads these instead of the input, a fifth of its bytes for 2×2 windows.
///
/// # Panics
/// When `input`, `out` or `window_of_max` is shorter than `images` need.
pub fn max_pool2d_forward(
    windows: &Windows,
    images: usize,
    input: &[f32],
    out: &mut [f32],
    window_of_max: Option<&mut [f32]>,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let input = &input[..images * in_len];
    let out = &mut out[..images * out_len];
    let image = |n: usize| &input[n * in_len..][..in_len];
    match window_of_max {
        Some(which) => for_each_chunk(
            (out, &mut which[..images * out_len]),
            IMAGES_PER_TASK * out_len,
            &|task, (out, which): (&mut [f32], &mut [f32])| {
                let images = out
                    .chunks_exact_mut(out_len)
                    .zip(which.chunks_exact_mut(out_len));
                for (i, (out, which)) in images.enumerate() {
                    pool_image::<true>(windows, image(task * IMAGES_PER_TASK + i), out, which);
                }
            },
        ),
        None => for_each_chunk(out, IMAGES_PER_TASK * out_len, &|task, out: &mut [f32]| {
            for (i, out) in out.chunks_exact_mut(out_len).enumerate() {
                pool_image::<false>(windows, image(task * IMAGES_PER_TASK + i), out, &mut []);
            }
        }),
    }
}

/// `if pick { a } else { b }` as bit operations: written as a branch, a select
/// of a value already stored (`*x = if c { v } else { *x }`) was compiled into
/// a conditional store per lane, ten times slower than the vector and/or.
#[inline(always)]
fn select(pick: bool, a: f32, b: f32) -> f32 {
    let mask = (pick as u32).wrapping_neg();
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// One image's pooling; with `TRACK`, each output's window of its maximum too.
fn pool_image<const TRACK: bool>(w: &Windows, image: &[f32], out: &mut [f32], which: &mut [f32]) {
    let c = w.channels;
    for (position, max) in out.chunks_exact_mut(c).enumerate() {
        let (oy, ox) = (position / w.out_width, position % w.out_width);
        let which = match TRACK {
            true => &mut which[position * c..][..c],
            false => &mut [][..],
        };
        let mut first = true;
        for ky in 0..w.window[0] {
            for kx in 0..w.window[1] {
                let Some((y, x)) = w.source(oy, ox, ky, kx) else {
                    continue;
                };
                let pixel = &image[(y * w.width + x) * c..][..c];
                let k = (ky * w.window[1] + kx) as f32;
                if first {
                    max.copy_from_slice(pixel);
                    if TRACK {
                        which.fill(k);
                    }
                    first = false;
                } else if TRACK {
                    for ((m, i), &v) in max.iter_mut().zip(which.iter_mut()).zip(pixel) {
                        // `>`: a later input equal to the maximum does not take it.
                        let greater = v > *m;
                        *m = select(greater, v, *m);
                        *i = select(greater, k, *i);
                    }
                } else {
                    // `>` rather than `f32::max`: one vector compare and blend.
                    for (m, &v) in max.iter_mut().zip(pixel) {
                        *m = if v > *m { v } else { *m };
                    }
                }
            }
        }
        if TRACK {
            // A NaN maximum (the first input's) equals no input.
            for (i, &m) in which.iter_mut().zip(max.iter()) {
                *i = select(m.is_nan(), NO_WINDOW, *i);
            }
        }
    }
}

/// The input's gradient: each output's gradient `d_out` goes to the first input
/// of its window (in window order) equal to the maximum `out`, as TensorFlow's
/// max-pool gradient, found by the forward pass (`window_of_max`); every other
/// input's gradient is 0 (summed where windows overlap). With `input_is_relu`
/// (the input is a relu's output, `≥ 0`), the gradient is also taken through
/// that relu: a window whose maximum is 0 passes none, as the relu's gradient
/// is 0 there.
///
/// # Panics
/// When a buffer is shorter than `images` need.
pub fn max_pool2d_backward(
    windows: &Windows,
    images: usize,
    window_of_max: &[f32],
    out: &[f32],
    d_out: &[f32],
    d_input: &mut [f32],
    input_is_relu: bool,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let (which, out, d_out) = (
        &window_of_max[..images * out_len],
        &out[..images * out_len],
        &d_out[..images * out_len],
    );
    for_each_chunk(
        &mut d_input[..images * in_len],
        IMAGES_PER_TASK * in_len,
        &|task, chunk: &mut [f32]| {
            for (i, d_image) in chunk.chunks_exact_mut(in_len).enumerate() {
                let at = (task * IMAGES_PER_TASK + i) * out_len;
                let (which, max, d_max) = (
                    &which[at..][..out_len],
                    &out[at..][..out_len],
                    &d_out[at..][..out_len],
                );
                unpool_image(windows, which, max, d_max, d_image, input_is_relu);
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
    which: &[f32],
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
            let (which, max, d_max) = (&which[at..][..c], &max[at..][..c], &d_max[at..][..c]);
            for ky in 0..w.window[0] {
                for kx in 0..w.window[1] {
                    let Some((y, x)) = w.source(oy, ox, ky, kx) else {
                        continue;
                    };
                    let k = (ky * w.window[1] + kx) as f32;
                    let grads = &mut d_image[(y * w.width + x) * c..][..c];
                    hand_over(grads, which, max, d_max, k, input_is_relu, exact);
                }
            }
        }
    }
}

/// Each gradient `d_max[i]` whose maximum came from window position `k` (and
/// passes the relu below, if any) to `grads[i]`, written (or added unless
/// `exact`); 0 to the others.
#[inline]
fn hand_over(
    grads: &mut [f32],
    which: &[f32],
    max: &[f32],
    d_max: &[f32],
    k: f32,
    input_is_relu: bool,
    exact: bool,
) {
    let n = grads.len();
    // Slices of one length: the loops below run without bounds checks, in vectors.
    let (which, max, d_max) = (&which[..n], &max[..n], &d_max[..n]);
    // `&` and `|`, not `&&`: no branch in the vector loop.
    let take = |i: usize| (which[i] == k) & (!input_is_relu | (max[i] > 0.0));
    if exact {
        for i in 0..n {
            grads[i] = select(take(i), d_max[i], 0.0);
        }
    } else {
        for i in 0..n {
            grads[i] += select(take(i), d_max[i], 0.0);
        }
    }
}
