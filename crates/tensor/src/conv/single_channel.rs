//! A convolution of one-channel images by a 3×3 kernel (stride 1, every window
//! inside the image), straight from the image: a grey-image convnet's first
//! layer. Forward, its output max-pooled 2×2 as it is made; backward, its
//! kernel's gradient.
//!
//! With one channel, im2col copies nine pixels per output position for a GEMM
//! of depth 9 (or, for the kernel's gradient, nine rows), whose tiles are
//! mostly loads and stores: the convnet's first layer took several times its
//! products' time that way (`docs/internals.md`). Here a filter group's nine
//! weights (or nine gradient sums) stay in registers and each pixel is
//! broadcast from the image.
//!
//! Forward, the products are summed in the GEMM's order (taps in window order,
//! from zero, each a fused multiply-add), then the epilogue and the pooling as
//! the GEMM and `pool_images` apply them: the bits of `conv2d_pool_forward`'s
//! general path. Backward, each task sums its images' positions in 2×2 blocks
//! (see [`kernel_gradient`]), the same way whether the output gradient is given
//! or made from a pooling's. Both run only where the instruction set has FMA.

use super::{OutputGradient, Windows};
use crate::gemm::{Epilogue, MAX_THIN_N};
use crate::simd::Isa;

/// Filters per group: one 8-float vector of each accumulator.
const LANES: usize = 8;
/// The kernel's window, 3×3.
const SIDE: usize = 3;
const TAPS: usize = SIDE * SIDE;

/// Whether the convolution over `w` is one these kernels compute on `isa`,
/// into `filters`.
fn convolution_applies(isa: Isa, w: &Windows, filters: usize) -> bool {
    let all_inside = w.pad_before == [0, 0]
        && w.out_height + SIDE - 1 <= w.height
        && w.out_width + SIDE - 1 <= w.width;
    let fma = matches!(isa, Isa::Avx512 | Isa::Avx2Fma);
    let conv = w.channels == 1 && w.window == [SIDE, SIDE] && w.strides == [1, 1] && all_inside;
    cfg!(target_arch = "x86_64") && fma && conv && filters.is_multiple_of(LANES)
}

/// Whether a pooling by `pool` is one these kernels take: 2×2, stride 2.
fn pooling_applies(pool: &Windows) -> bool {
    pool.window == [2, 2] && pool.strides == [2, 2] && pool.pad_before == [0, 0]
}

/// Whether [`kernel_gradient`] computes the kernel's gradient of the
/// convolution over `w` into `filters` from `dz` on `isa`.
pub(super) fn gradient_applies(
    isa: Isa,
    w: &Windows,
    filters: usize,
    dz: &OutputGradient<'_>,
) -> bool {
    let dz = match dz {
        OutputGradient::Given(_) => true,
        OutputGradient::Pooled { windows, .. } => pooling_applies(windows),
    };
    convolution_applies(isa, w, filters) && dz
}

/// Whether the convolution over `w` into `filters`, pooled by `pool`, with
/// `epilogue`, is one this kernel computes on `isa`.
pub(super) fn applies(
    isa: Isa,
    w: &Windows,
    pool: &Windows,
    filters: usize,
    epilogue: &Epilogue<'_>,
) -> bool {
    let epilogue = matches!(
        epilogue,
        Epilogue::None | Epilogue::Bias(_) | Epilogue::BiasRelu(_)
    );
    // Up to `MAX_THIN_N` filters, the GEMM sums each output as a dot product
    // in another order: those take the general path, for its bits.
    let wide = filters > MAX_THIN_N;
    convolution_applies(isa, w, filters) && pooling_applies(pool) && epilogue && wide
}

/// What is applied to each output before it is pooled. (Only the x86 kernel
/// reads it.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(super) struct OutputEpilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub round_to_bf16: bool,
}

impl<'a> OutputEpilogue<'a> {
    pub(super) fn new(epilogue: Epilogue<'a>, round_to_bf16: bool) -> Self {
        let (bias, relu) = match epilogue {
            Epilogue::Bias(bias) => (Some(bias), false),
            Epilogue::BiasRelu(bias) => (Some(bias), true),
            _ => (None, false),
        };
        OutputEpilogue {
            bias,
            relu,
            round_to_bf16,
        }
    }
}

/// The pooled outputs (and with `which`, where each maximum came from) of the
/// images in `input` on the calling thread.
///
/// # Panics
/// Unless [`applies`] holds for `isa`, or when a buffer is shorter than the
/// images need.
#[allow(clippy::too_many_arguments)]
#[allow(unsafe_code)] // The dispatch calls the `target_feature` build.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn pool_images(
    isa: Isa,
    w: &Windows,
    pool: &Windows,
    input: &[f32],
    kernel: &[f32],
    epilogue: OutputEpilogue<'_>,
    out: &mut [f32],
    which: Option<&mut [f32]>,
) {
    let filters = kernel.len() / TAPS;
    let pooled_len = pool.positions() * filters;
    let images = input.len() / w.input_len();
    assert!(filters.is_multiple_of(LANES) && out.len() >= images * pooled_len);
    assert!(which
        .as_ref()
        .is_none_or(|which| which.len() >= images * pooled_len));
    if let Some(bias) = epilogue.bias {
        assert!(bias.len() >= filters);
    }
    #[cfg(target_arch = "x86_64")]
    crate::simd::on_instruction_set!(isa;
        avx512 => avx2::pool_images(w, pool, input, kernel, epilogue, out, which);
        avx2 => avx2::pool_images(w, pool, input, kernel, epilogue, out, which);
        _ => panic!("the single-channel convolution needs FMA")
    );
    #[cfg(not(target_arch = "x86_64"))]
    panic!("the single-channel convolution needs FMA ({isa:?})");
}

/// A task's partial sum of the kernel's gradient and the bias's (`partial`,
/// `[taps + 1 × filters]`: the kernel's rows, then the bias's) over the images
/// in `input`, the first of them the batch's image `first`: `Σ pixel·dz` for
/// each tap and `Σ dz` for the bias over their output positions, `dz` the
/// output gradient of the whole batch.
///
/// The positions are summed in 2×2 blocks from the top left, in window order,
/// then those of an odd last row or column in row order: the order of a 2×2
/// pooling's windows, so that a gradient made from the pooling's is made as it
/// is used, in registers, and gives the bits of the same gradient given.
///
/// # Panics
/// Unless [`gradient_applies`] holds for `isa`, or when a buffer is shorter
/// than the images need.
#[allow(unsafe_code)] // The dispatch calls the `target_feature` build.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn kernel_gradient(
    isa: Isa,
    w: &Windows,
    input: &[f32],
    first: usize,
    dz: OutputGradient<'_>,
    partial: &mut [f32],
) {
    let filters = partial.len() / (TAPS + 1);
    assert!(filters.is_multiple_of(LANES));
    #[cfg(target_arch = "x86_64")]
    crate::simd::on_instruction_set!(isa;
        avx512 => avx2::kernel_gradient(w, input, first, dz, partial);
        avx2 => avx2::kernel_gradient(w, input, first, dz, partial);
        _ => panic!("the single-channel convolution needs FMA")
    );
    #[cfg(not(target_arch = "x86_64"))]
    panic!("the single-channel convolution needs FMA ({isa:?})");
}

/// The kernels on AVX2 and FMA's 8-float vectors (which every AVX-512 CPU has too).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{OutputEpilogue, OutputGradient, Windows, LANES, SIDE, TAPS};
    use std::arch::x86_64::*;

    /// Window positions of a 2×2 pooling.
    const WINDOW: usize = 4;

    /// See [`super::pool_images`], which checks the buffers' lengths.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn pool_images(
        w: &Windows,
        pool: &Windows,
        input: &[f32],
        kernel: &[f32],
        epilogue: OutputEpilogue<'_>,
        out: &mut [f32],
        mut which: Option<&mut [f32]>,
    ) {
        let filters = kernel.len() / TAPS;
        let pooled_len = pool.positions() * filters;
        for (i, image) in input.chunks_exact(w.input_len()).enumerate() {
            let out = &mut out[i * pooled_len..][..pooled_len];
            match which.as_deref_mut() {
                Some(which) => {
                    let which = &mut which[i * pooled_len..][..pooled_len];
                    pool_image::<true>(w, pool, image, kernel, epilogue, out, which)
                }
                None => pool_image::<false>(w, pool, image, kernel, epilogue, out, &mut []),
            }
        }
    }

    /// One image, a group of filters at a time: pooling windows in pairs (eight
    /// accumulators, enough to hide the FMA's latency), an odd last one alone,
    /// each window's four outputs made and pooled in registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn pool_image<const TRACK: bool>(
        w: &Windows,
        pool: &Windows,
        image: &[f32],
        kernel: &[f32],
        epilogue: OutputEpilogue<'_>,
        out: &mut [f32],
        which: &mut [f32],
    ) {
        let filters = kernel.len() / TAPS;
        let image = &image[..w.height * w.width];
        for group in (0..filters).step_by(LANES) {
            let weights: [__m256; TAPS] =
                std::array::from_fn(|tap| load(&kernel[tap * filters + group..]));
            let bias = epilogue.bias.map(|bias| load(&bias[group..]));
            let outputs = |sums: [__m256; WINDOW]| finish(sums, bias, epilogue);
            for py in 0..pool.out_height {
                let row = py * pool.out_width;
                let mut px = 0;
                while px + 2 <= pool.out_width {
                    let [first, second] =
                        window_sums::<2, 6>(image, w.width, 2 * py, 2 * px, &weights);
                    let at = (row + px) * filters + group;
                    store::<TRACK>(pooled(outputs(first)), at, out, which);
                    store::<TRACK>(pooled(outputs(second)), at + filters, out, which);
                    px += 2;
                }
                if px < pool.out_width {
                    let [only] = window_sums::<1, 4>(image, w.width, 2 * py, 2 * px, &weights);
                    let at = (row + px) * filters + group;
                    store::<TRACK>(pooled(outputs(only)), at, out, which);
                }
            }
        }
    }

    /// The first 8 floats of `values`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load(values: &[f32]) -> __m256 {
        let values = &values[..LANES];
        // SAFETY: `values` holds the 8 floats read.
        unsafe { _mm256_loadu_ps(values.as_ptr()) }
    }

    /// `v` into the first 8 floats of `values`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store_lanes(v: __m256, values: &mut [f32]) {
        let values = &mut values[..LANES];
        // SAFETY: `values` holds the 8 floats written.
        unsafe { _mm256_storeu_ps(values.as_mut_ptr(), v) }
    }

    /// The convolution's sums at the outputs under `P` pooling windows side by
    /// side (`COLS = 2·P + 2` pixels wide), the first at output `(y, x)`: window
    /// by window, its four outputs in window order, each `Σ_tap pixel·weight`
    /// in tap order from zero, as the GEMM sums a patch row. The image's rows
    /// under them are taken as fixed arrays, so that no pixel's read is checked.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn window_sums<const P: usize, const COLS: usize>(
        image: &[f32],
        width: usize,
        y: usize,
        x: usize,
        weights: &[__m256; TAPS],
    ) -> [[__m256; WINDOW]; P] {
        let row = |r: usize| -> &[f32; COLS] {
            let start = (y + r) * width + x;
            image[start..start + COLS].try_into().expect("COLS pixels")
        };
        let rows = [row(0), row(1), row(2), row(3)];
        let mut sums = [[_mm256_setzero_ps(); WINDOW]; P];
        for (tap, &weight) in weights.iter().enumerate() {
            let (ky, kx) = (tap / SIDE, tap % SIDE);
            for (window, outputs) in sums.iter_mut().enumerate() {
                for (position, sum) in outputs.iter_mut().enumerate() {
                    let (dy, dx) = (position / 2, position % 2);
                    let pixel = _mm256_broadcast_ss(&rows[dy + ky][2 * window + dx + kx]);
                    *sum = _mm256_fmadd_ps(pixel, weight, *sum);
                }
            }
        }
        sums
    }

    /// The outputs from their sums: the bias added, the relu (`max(0, x)`,
    /// which keeps a NaN, as the GEMM's epilogue), the rounding to bf16.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn finish(
        mut sums: [__m256; WINDOW],
        bias: Option<__m256>,
        epilogue: OutputEpilogue<'_>,
    ) -> [__m256; WINDOW] {
        for v in sums.iter_mut() {
            if let Some(bias) = bias {
                *v = _mm256_add_ps(*v, bias);
            }
            if epilogue.relu {
                *v = _mm256_max_ps(_mm256_setzero_ps(), *v);
            }
            if epilogue.round_to_bf16 {
                *v = round_to_bf16(*v);
            }
        }
        sums
    }

    /// `crate::bf16::round` on each lane: to nearest, ties to even, a NaN quieted.
    /// Restated in vector operations: the scalar function over a copy of the
    /// lanes was not vectorised here, and made this layer's `mixed_bfloat16`
    /// forward pass 2.9× slower (`kerno profile`, Zen 3); the pooled-bits test
    /// holds the two to the same bits.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn round_to_bf16(v: __m256) -> __m256 {
        let bits = _mm256_castps_si256(v);
        let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let carry = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd);
        let rounded = _mm256_and_si256(_mm256_add_epi32(bits, carry), high);
        let quiet = _mm256_and_si256(_mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000)), high);
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
        let rounded = _mm256_castsi256_ps(rounded);
        _mm256_blendv_ps(rounded, _mm256_castsi256_ps(quiet), nan)
    }

    /// A window's four outputs pooled: the maximum of each filter and the
    /// window position it came from, as `pool::take_greater` takes them (`>`,
    /// ordered: in window order, a later equal output or a NaN never taking it;
    /// a NaN maximum recorded as no window).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn pooled(outputs: [__m256; WINDOW]) -> (__m256, __m256) {
        let (mut max, mut from) = (outputs[0], _mm256_setzero_ps());
        for (k, &v) in outputs.iter().enumerate().skip(1) {
            let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(v, max);
            max = _mm256_blendv_ps(max, v, greater);
            from = _mm256_blendv_ps(from, _mm256_set1_ps(k as f32), greater);
        }
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(max, max);
        let no_window = _mm256_set1_ps(crate::pool::NO_WINDOW);
        (max, _mm256_blendv_ps(from, no_window, nan))
    }

    /// Stores a group's pooled outputs at `at`, and with `TRACK` their windows.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store<const TRACK: bool>(
        pooled: (__m256, __m256),
        at: usize,
        out: &mut [f32],
        which: &mut [f32],
    ) {
        store_lanes(pooled.0, &mut out[at..]);
        if TRACK {
            store_lanes(pooled.1, &mut which[at..]);
        }
    }

    /// See [`super::kernel_gradient`]: the loop built for the way `dz` comes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn kernel_gradient(
        w: &Windows,
        input: &[f32],
        first: usize,
        dz: OutputGradient<'_>,
        partial: &mut [f32],
    ) {
        match dz {
            OutputGradient::Given(dz) => {
                let source = Source::Given { dz };
                sum_gradient::<false, false>(w, input, first, source, partial)
            }
            OutputGradient::Pooled {
                windows,
                window_of_max,
                out,
                d_out,
                relu,
            } => {
                let source = Source::Pooled {
                    which: window_of_max,
                    max: out,
                    d_max: d_out,
                    pooled_width: windows.out_width,
                    pooled_len: windows.positions(),
                };
                match relu {
                    true => sum_gradient::<true, true>(w, input, first, source, partial),
                    false => sum_gradient::<true, false>(w, input, first, source, partial),
                }
            }
        }
    }

    /// The output gradient of the whole batch, as [`OutputGradient`] gives it.
    #[derive(Clone, Copy)]
    enum Source<'a> {
        Given {
            dz: &'a [f32],
        },
        /// A 2×2 pooling's windows of maxima, outputs and gradient, and its
        /// output's width and positions.
        Pooled {
            which: &'a [f32],
            max: &'a [f32],
            d_max: &'a [f32],
            pooled_width: usize,
            pooled_len: usize,
        },
    }

    /// An image and a filter group at a time, the nine sums of its taps and the
    /// bias's in registers over the image's positions; `POOLED` when `source`
    /// is a pooling's, `RELU` when a relu lies between.
    #[target_feature(enable = "avx2,fma")]
    fn sum_gradient<const POOLED: bool, const RELU: bool>(
        w: &Windows,
        input: &[f32],
        first: usize,
        source: Source<'_>,
        partial: &mut [f32],
    ) {
        let filters = partial.len() / (TAPS + 1);
        let (blocks_high, blocks_wide) = (w.out_height / 2, w.out_width / 2);
        partial.fill(0.0);
        // Image by image, so that its gradient, read once per group, stays in
        // cache (group by group over the task's images, it was read from memory
        // each time).
        for (i, image) in input.chunks_exact(w.input_len()).enumerate() {
            let image_index = first + i;
            for group in (0..filters).step_by(LANES) {
                let mut sums = [_mm256_setzero_ps(); TAPS];
                for (tap, sum) in sums.iter_mut().enumerate() {
                    *sum = load(&partial[tap * filters + group..]);
                }
                let mut bias_sum = load(&partial[TAPS * filters + group..]);
                let row = |y: usize| &image[y * w.width..][..w.width];
                for by in 0..blocks_high {
                    let (top, bottom) = (2 * by, 2 * by + 1);
                    let top_rows = [row(top), row(top + 1), row(top + 2)];
                    let bottom_rows = [row(bottom), row(bottom + 1), row(bottom + 2)];
                    for bx in 0..blocks_wide {
                        let d =
                            block::<POOLED, RELU>(source, w, image_index, filters, group, by, bx);
                        let (left, right) = (2 * bx, 2 * bx + 1);
                        add_position(&mut sums, &top_rows, left, d[0]);
                        add_position(&mut sums, &top_rows, right, d[1]);
                        add_position(&mut sums, &bottom_rows, left, d[2]);
                        add_position(&mut sums, &bottom_rows, right, d[3]);
                        let halves = (_mm256_add_ps(bias_sum, d[0]), _mm256_add_ps(d[1], d[2]));
                        bias_sum = _mm256_add_ps(_mm256_add_ps(halves.0, halves.1), d[3]);
                    }
                }
                // An odd size's last row and column, in no block: no pooling
                // window's, so their gradient from a pooling is 0.
                for y in 0..w.out_height {
                    let rows = [row(y), row(y + 1), row(y + 2)];
                    let xs = match y < 2 * blocks_high {
                        true => 2 * blocks_wide..w.out_width,
                        false => 0..w.out_width,
                    };
                    for x in xs {
                        let d = match source {
                            Source::Given { dz } => {
                                let at =
                                    (image_index * w.positions() + y * w.out_width + x) * filters;
                                load(&dz[at + group..])
                            }
                            Source::Pooled { .. } => _mm256_setzero_ps(),
                        };
                        add_position(&mut sums, &rows, x, d);
                        bias_sum = _mm256_add_ps(bias_sum, d);
                    }
                }
                for (tap, &sum) in sums.iter().enumerate() {
                    store_lanes(sum, &mut partial[tap * filters + group..]);
                }
                store_lanes(bias_sum, &mut partial[TAPS * filters + group..]);
            }
        }
    }

    /// The gradients of 2×2 block `(by, bx)` of image `image`'s outputs, in
    /// window order, for filters `group..`: given, or made as `pool::hand_over`
    /// makes them (the pooling's gradient where the output was its window's
    /// maximum, and with `RELU` that maximum is positive; else 0).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block<const POOLED: bool, const RELU: bool>(
        source: Source<'_>,
        w: &Windows,
        image: usize,
        filters: usize,
        group: usize,
        by: usize,
        bx: usize,
    ) -> [__m256; WINDOW] {
        match source {
            Source::Pooled {
                which,
                max,
                d_max,
                pooled_width,
                pooled_len,
            } if POOLED => {
                let at = ((image * pooled_len) + by * pooled_width + bx) * filters + group;
                let (from, mut d) = (load(&which[at..]), load(&d_max[at..]));
                if RELU {
                    let positive =
                        _mm256_cmp_ps::<_CMP_GT_OQ>(load(&max[at..]), _mm256_setzero_ps());
                    d = _mm256_and_ps(positive, d);
                }
                let take =
                    |k: f32| _mm256_and_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(from, _mm256_set1_ps(k)), d);
                [take(0.0), take(1.0), take(2.0), take(3.0)]
            }
            Source::Given { dz } if !POOLED => {
                let at = |k: usize| {
                    let (y, x) = (2 * by + k / 2, 2 * bx + k % 2);
                    (image * w.positions() + y * w.out_width + x) * filters + group
                };
                [
                    load(&dz[at(0)..]),
                    load(&dz[at(1)..]),
                    load(&dz[at(2)..]),
                    load(&dz[at(3)..]),
                ]
            }
            _ => unreachable!("POOLED says which source it is"),
        }
    }

    /// Output position `x`'s products with its gradient `d`, added to the
    /// taps' sums; `rows` are the image's three under its window.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn add_position(sums: &mut [__m256; TAPS], rows: &[&[f32]; SIDE], x: usize, d: __m256) {
        for (ky, row) in rows.iter().enumerate() {
            let pixels: &[f32; SIDE] = row[x..x + SIDE].try_into().expect("SIDE pixels");
            for (kx, pixel) in pixels.iter().enumerate() {
                let sum = &mut sums[ky * SIDE + kx];
                *sum = _mm256_fmadd_ps(_mm256_broadcast_ss(pixel), d, *sum);
            }
        }
    }
}
