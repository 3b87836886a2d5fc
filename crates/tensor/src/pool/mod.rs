//! 2-D max pooling over NHWC images. An image's channels are contiguous, so
//! every step below is an element-wise operation over a pixel's channels,
//! written as loops over slices that the compiler turns into vector max,
//! compare and blend instructions.
//!
//! The loops are compiled for each instruction set (`per_instruction_set!`):
//! built for baseline x86-64 alone they ran on 4-float SSE vectors.
//!
//! The batch splits into fixed chunks of images, each image done by one
//! thread: the same bits on any thread count.

use crate::conv::Windows;
use crate::parallel::for_each_chunk;
use crate::simd::Isa;

/// Images per parallel task (a pooled image is a few microseconds of work).
const IMAGES_PER_TASK: usize = 8;
/// What [`max_pool2d_forward`] records for an output whose maximum is NaN:
/// no input equals it, so none takes its gradient.
pub(crate) const NO_WINDOW: f32 = -1.0;

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
    let isa = Isa::detected();
    max_pool2d_forward_with(isa, windows, images, input, out, window_of_max)
}

/// [`max_pool2d_forward`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// As [`max_pool2d_forward`], and when `isa` is not supported by this CPU.
pub fn max_pool2d_forward_with(
    isa: Isa,
    windows: &Windows,
    images: usize,
    input: &[f32],
    out: &mut [f32],
    window_of_max: Option<&mut [f32]>,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let input = &input[..images * in_len];
    let out = &mut out[..images * out_len];
    let task_input = |task: usize, out: &[f32]| {
        &input[task * IMAGES_PER_TASK * in_len..][..out.len() / out_len.max(1) * in_len]
    };
    match window_of_max {
        Some(which) => for_each_chunk(
            (out, &mut which[..images * out_len]),
            IMAGES_PER_TASK * out_len,
            &|task, (out, which): (&mut [f32], &mut [f32])| {
                pool_images(isa, windows, task_input(task, out), out, Some(which))
            },
        ),
        None => for_each_chunk(out, IMAGES_PER_TASK * out_len, &|task, out: &mut [f32]| {
            pool_images(isa, windows, task_input(task, out), out, None)
        }),
    }
}

#[inline(always)]
fn pool_images_body(
    windows: &Windows,
    input: &[f32],
    out: &mut [f32],
    window_of_max: Option<&mut [f32]>,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let images = input
        .chunks_exact(in_len)
        .zip(out.chunks_exact_mut(out_len));
    match window_of_max {
        Some(which) => {
            for ((image, out), which) in images.zip(which.chunks_exact_mut(out_len)) {
                pool_image::<true>(windows, image, out, which);
            }
        }
        None => {
            for (image, out) in images {
                pool_image::<false>(windows, image, out, &mut []);
            }
        }
    }
}

/// The loops' entry points for each instruction set (the dispatch calls the
/// `target_feature` builds, which takes `unsafe`).
#[allow(unsafe_code)]
mod per_isa {
    use super::{pool_images_body, unpool_images_body, Windows};
    use crate::simd::{per_instruction_set, Isa};

    per_instruction_set! {
        /// [`max_pool2d_forward`] of the images in `input` on the calling thread,
        /// with the loops built for `isa`: for a kernel that has split the batch
        /// among the threads already (a convolution whose output is pooled as it
        /// is made).
        pool_images(
            windows: &Windows,
            input: &[f32],
            out: &mut [f32],
            window_of_max: Option<&mut [f32]>
        ) => pool_images_body
    }

    per_instruction_set! {
        /// [`max_pool2d_backward`] of the images in `d_input` on the calling
        /// thread, with the loops built for `isa` (see [`pool_images`]).
        unpool_images(
            windows: &Windows,
            window_of_max: &[f32],
            out: &[f32],
            d_out: &[f32],
            d_input: &mut [f32],
            input_is_relu: bool
        ) => unpool_images_body
    }
}
pub(crate) use per_isa::{pool_images, unpool_images};

/// `if pick { a } else { b }` as bit operations: written as a branch, a select
/// of a value already stored (`*x = if c { v } else { *x }`) was compiled into
/// a conditional store per lane, ten times slower than the vector and/or.
#[inline(always)]
fn select(pick: bool, a: f32, b: f32) -> f32 {
    let mask = (pick as u32).wrapping_neg();
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// One step of a window's maximum: the input `v` from window position `k`
/// against the maximum `m` so far, from `from`: `>`, so that a later input
/// equal to the maximum does not take it, nor does a NaN.
#[inline(always)]
fn take_greater(m: f32, from: f32, v: f32, k: f32) -> (f32, f32) {
    let greater = v > m;
    (select(greater, v, m), select(greater, k, from))
}

/// The window position recorded for a maximum `m` taken from `from`: none for
/// a NaN maximum (the first input's), which equals no input.
#[inline(always)]
fn recorded_window(m: f32, from: f32) -> f32 {
    select(m.is_nan(), NO_WINDOW, from)
}

/// Pixels of the largest window pooled by [`pool_lanes`] (a 4×4 window).
const MAX_WINDOW: usize = 16;

/// One image's pooling; with `TRACK`, each output's window of its maximum too.
#[inline(always)]
fn pool_image<const TRACK: bool>(w: &Windows, image: &[f32], out: &mut [f32], which: &mut [f32]) {
    let c = w.channels;
    let window_len = w.window[0] * w.window[1];
    for (position, max) in out.chunks_exact_mut(c).enumerate() {
        let (oy, ox) = (position / w.out_width, position % w.out_width);
        // The window's pixels inside the image, in window order, with their
        // window positions.
        let mut pixels = [(0, 0.0); MAX_WINDOW];
        let mut count = 0;
        for ky in 0..w.window[0] {
            for kx in 0..w.window[1] {
                if let Some((y, x)) = w.source(oy, ox, ky, kx).filter(|_| count < MAX_WINDOW) {
                    pixels[count] = ((y * w.width + x) * c, (ky * w.window[1] + kx) as f32);
                    count += 1;
                }
            }
        }
        let which = match TRACK {
            true => &mut which[position * c..][..c],
            false => &mut [][..],
        };
        if count == 4 && window_len == 4 {
            // A whole 2×2 window, the common case, in vectors.
            pool_lanes::<TRACK, 4>(image, &pixels[..4], max, which);
        } else if window_len <= MAX_WINDOW {
            pool_lanes::<TRACK, 0>(image, &pixels[..count], max, which);
        } else {
            pool_window::<TRACK>(w, image, oy, ox, max, which);
        }
    }
}

/// The maximum over `pixels` (offsets in `image` and window positions, at
/// least one) of each channel into `max`, and with `TRACK` the window position
/// it came from into `which`; `N` is their count where it is known, else 0.
/// Each output is computed in registers and stored once: selects into the
/// output itself (`*m = if v > *m { v } else { *m }`, pixel by pixel) were
/// compiled for AVX2 into masked stores, slower than the SSE build.
#[inline(always)]
fn pool_lanes<const TRACK: bool, const N: usize>(
    image: &[f32],
    pixels: &[(usize, f32)],
    max: &mut [f32],
    which: &mut [f32],
) {
    let c = max.len();
    if N > 0 {
        // Slices of the channels' length: the loop runs in vectors, without
        // bounds checks.
        let sources: [(&[f32], f32); N] =
            std::array::from_fn(|j| (&image[pixels[j].0..][..c], pixels[j].1));
        let which = &mut which[..if TRACK { c } else { 0 }];
        for i in 0..c {
            let (mut m, mut from) = (sources[0].0[i], sources[0].1);
            for &(pixel, k) in &sources[1..] {
                (m, from) = take_greater(m, from, pixel[i], k);
            }
            max[i] = m;
            if TRACK {
                which[i] = recorded_window(m, from);
            }
        }
        return;
    }
    let (first, k0) = pixels[0];
    let first = &image[first..][..c];
    for i in 0..c {
        let (mut m, mut from) = (first[i], k0);
        for &(at, k) in &pixels[1..] {
            (m, from) = take_greater(m, from, image[at + i], k);
        }
        max[i] = m;
        if TRACK {
            which[i] = recorded_window(m, from);
        }
    }
}

/// One output's pooling over a window larger than [`MAX_WINDOW`], pixel by
/// pixel.
fn pool_window<const TRACK: bool>(
    w: &Windows,
    image: &[f32],
    oy: usize,
    ox: usize,
    max: &mut [f32],
    which: &mut [f32],
) {
    let c = w.channels;
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
                continue;
            }
            for (i, &v) in pixel.iter().enumerate() {
                let from = if TRACK { which[i] } else { k };
                let (m, from) = take_greater(max[i], from, v, k);
                max[i] = m;
                if TRACK {
                    which[i] = from;
                }
            }
        }
    }
    if TRACK {
        for (i, &m) in which.iter_mut().zip(max.iter()) {
            *i = recorded_window(m, *i);
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
    let isa = Isa::detected();
    let relu = input_is_relu;
    max_pool2d_backward_with(
        isa,
        windows,
        images,
        window_of_max,
        out,
        d_out,
        d_input,
        relu,
    )
}

/// [`max_pool2d_backward`] with a chosen instruction set (tests force each
/// one).
///
/// # Panics
/// As [`max_pool2d_backward`], and when `isa` is not supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward_with(
    isa: Isa,
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
        &|task, d_input: &mut [f32]| {
            let at = task * IMAGES_PER_TASK * out_len;
            let len = d_input.len() / in_len.max(1) * out_len;
            let (which, out, d_out) = (&which[at..][..len], &out[at..][..len], &d_out[at..][..len]);
            unpool_images(isa, windows, which, out, d_out, d_input, input_is_relu);
        },
    );
}

#[inline(always)]
fn unpool_images_body(
    windows: &Windows,
    window_of_max: &[f32],
    out: &[f32],
    d_out: &[f32],
    d_input: &mut [f32],
    input_is_relu: bool,
) {
    let (in_len, out_len) = (windows.input_len(), windows.positions() * windows.channels);
    let outputs = window_of_max
        .chunks_exact(out_len)
        .zip(out.chunks_exact(out_len))
        .zip(d_out.chunks_exact(out_len));
    for (((which, max), d_max), d_image) in outputs.zip(d_input.chunks_exact_mut(in_len)) {
        unpool_image(windows, which, max, d_max, d_image, input_is_relu);
    }
}

/// Whether the windows tile the input from its top-left corner: every pixel
/// in at most one window, those of the last rows and columns that no window
/// reaches (an odd size pooled by 2 without padding) in none.
fn tiles(w: &Windows) -> bool {
    w.strides == w.window && w.pad_before == [0, 0]
}

/// Zeros the gradients of the pixels no window reaches, below and right of
/// the windows' tiling.
fn zero_untiled(w: &Windows, d_image: &mut [f32]) {
    // ("same" padding's last windows reach past the input.)
    let (c, tiled_rows, tiled_cols) = (
        w.channels,
        (w.out_height * w.window[0]).min(w.height),
        (w.out_width * w.window[1]).min(w.width),
    );
    for (y, row) in d_image.chunks_exact_mut(w.width * c).enumerate() {
        let from = if y < tiled_rows { tiled_cols * c } else { 0 };
        row[from..].fill(0.0);
    }
}

#[inline(always)]
fn unpool_image(
    w: &Windows,
    which: &[f32],
    max: &[f32],
    d_max: &[f32],
    d_image: &mut [f32],
    input_is_relu: bool,
) {
    let c = w.channels;
    // Where the windows tile the input, each gradient is written once (and
    // those no window reaches are zeroed); elsewhere they are summed into
    // zeros.
    let exact = tiles(w);
    if exact {
        zero_untiled(w, d_image);
    } else {
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
#[inline(always)]
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
