//! Convolution and pooling against their plain f64 references, on odd sizes,
//! both paddings, strides 1 and 2, and every instruction set of this machine.

use kerno_tensor::conv::{
    backward_scratch_len, conv2d_backward_with, conv2d_forward_with, conv2d_pool_forward_with,
    ConvGradients, OutputGradient, Padding, Pooling, Windows,
};
use kerno_tensor::pool::{
    max_pool2d_backward, max_pool2d_backward_with, max_pool2d_forward, max_pool2d_forward_with,
};
use kerno_tensor::{reference, Epilogue, Isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{random, rel_err, same_bits};

/// (input [h, w, c], window, strides, filters): odd sizes, windows that do not
/// tile the input, a single channel (3×3 ones with an odd output height or
/// width, which the single-channel kernels take), and the convnet's own layers.
type ConvCase = ([usize; 3], [usize; 2], [usize; 2], usize);
const CONV_CASES: [ConvCase; 10] = [
    ([7, 9, 3], [3, 3], [1, 1], 5),
    ([8, 7, 2], [3, 2], [2, 2], 4),
    ([5, 5, 1], [5, 5], [1, 1], 1),
    ([6, 11, 17], [1, 3], [2, 1], 33),
    ([9, 9, 4], [2, 2], [2, 2], 16),
    ([28, 28, 1], [3, 3], [1, 1], 32),
    ([12, 9, 1], [3, 3], [1, 1], 16),
    ([9, 12, 1], [3, 3], [1, 1], 8),
    ([13, 13, 32], [3, 3], [1, 1], 64),
    ([5, 5, 64], [3, 3], [1, 1], 64),
];

/// A convolution's two passes as a layer runs them: forward (bias and relu
/// in the epilogue), and backward (kernel gradient with the bias gradient as
/// its last row, and the input gradient unless it is the first layer).
struct Conv<'a> {
    isa: Isa,
    w: &'a Windows,
    images: usize,
    kernel: &'a [f32],
}

impl Conv<'_> {
    fn filters(&self) -> usize {
        self.kernel.len() / self.w.patch_len()
    }

    fn forward(&self, x: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.images * self.w.positions() * self.filters()];
        let epilogue = Epilogue::BiasRelu(bias);
        conv2d_forward_with(
            self.isa,
            self.w,
            self.images,
            x,
            self.kernel,
            epilogue,
            &mut out,
        );
        out
    }

    /// The kernel and bias gradient, and the input's when `with_dx`.
    fn backward(&self, x: &[f32], dz: &[f32], with_dx: bool) -> (Vec<f32>, Option<Vec<f32>>) {
        self.backward_from(x, OutputGradient::Given(dz), with_dx)
    }

    /// [`Conv::backward`] from the output gradient as `dz` says.
    fn backward_from(
        &self,
        x: &[f32],
        dz: OutputGradient<'_>,
        with_dx: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let mut dk = vec![f32::NAN; self.kernel.len()];
        let mut db = vec![f32::NAN; self.filters()];
        let mut dx = with_dx.then(|| vec![f32::NAN; x.len()]);
        let mut scratch = vec![f32::NAN; backward_scratch_len(self.w, self.filters(), self.images)];
        let grads = ConvGradients {
            kernel: &mut dk,
            bias: Some(&mut db),
            input: dx.as_deref_mut(),
        };
        let (w, images) = (self.w, self.images);
        conv2d_backward_with(self.isa, w, images, x, self.kernel, dz, grads, &mut scratch);
        dk.extend(db);
        (dk, dx)
    }
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn conv2d_forward_and_gradients_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (input, window, strides, filters) in CONV_CASES {
        for padding in [Padding::Valid, Padding::Same] {
            let w = Windows::new(input, window, strides, padding).expect("the window fits");
            // Several tasks of images, each of several chunks, for some.
            let images = match input {
                [7, 9, 3] | [5, 5, 64] => 37,
                [13, 13, 32] => 9,
                _ => 3,
            };
            let x = random(&mut rng, images * w.input_len());
            let kernel = random(&mut rng, w.patch_len() * filters);
            let bias = random(&mut rng, filters);
            let rows = images * w.positions();
            let dz = random(&mut rng, rows * filters);
            let case = format!("{input:?} window {window:?} strides {strides:?} {padding}");

            let mut exact = reference::conv2d(&w, images, &to_f64(&x), &to_f64(&kernel), filters);
            for (v, b) in exact.iter_mut().zip(bias.iter().cycle()) {
                *v = (*v + *b as f64).max(0.0);
            }
            let exact_dk =
                reference::conv2d_kernel_gradient(&w, images, &to_f64(&x), &to_f64(&dz), filters);
            let exact_dx = reference::conv2d_input_gradient(
                &w,
                images,
                &to_f64(&kernel),
                &to_f64(&dz),
                filters,
            );
            let mut exact_dk_db = exact_dk;
            exact_dk_db.extend(
                dz.chunks(filters)
                    .fold(vec![0.0; filters], |mut sums, row| {
                        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
                        sums
                    }),
            );
            for isa in Isa::available() {
                let conv = Conv {
                    isa,
                    w: &w,
                    images,
                    kernel: &kernel,
                };
                let out = conv.forward(&x, &bias);
                let err = rel_err(&out, &exact);
                assert!(err < 1e-5, "{isa:?} {case} forward: rel err {err}");

                let (dk, dx) = conv.backward(&x, &dz, true);
                let err = rel_err(&dk, &exact_dk_db);
                assert!(
                    err < 1e-5,
                    "{isa:?} {case} kernel and bias gradient: rel err {err}"
                );
                let err = rel_err(&dx.expect("asked for"), &exact_dx);
                assert!(err < 1e-5, "{isa:?} {case} input gradient: rel err {err}");

                // The first layer's pass, without the input gradient.
                let (first_layer_dk, _) = conv.backward(&x, &dz, false);
                assert!(same_bits(&first_layer_dk, &dk), "{isa:?} {case}");
            }
        }
    }
}

#[test]
fn max_pool2d_matches_the_reference_ties_included() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // The 2×2 windows of the convnet, other windows, a window of more pixels
    // than the vector path takes (5×4), and odd channel counts.
    let cases = [
        ([26, 26, 32], [2, 2], [2, 2]),
        ([11, 11, 64], [2, 2], [2, 2]),
        ([7, 5, 3], [3, 3], [2, 2]),
        ([6, 6, 130], [2, 3], [1, 2]),
        ([1, 1, 5], [1, 1], [1, 1]),
        ([9, 9, 3], [5, 4], [2, 3]),
        ([5, 7, 13], [2, 2], [2, 2]),
    ];
    for ((input, window, strides), isa) in cases
        .into_iter()
        .flat_map(|case| Isa::available().into_iter().map(move |isa| (case, isa)))
    {
        for padding in [Padding::Valid, Padding::Same] {
            let w = Windows::new(input, window, strides, padding).expect("the window fits");
            let images = 5;
            // Values from a few levels, so that windows hold ties.
            let x: Vec<f32> = (0..images * w.input_len())
                .map(|_| rng.gen_range(-3..3) as f32 * 0.5)
                .collect();
            let out_len = images * w.positions() * w.channels;
            let d_out = random(&mut rng, out_len);
            let (exact, exact_dx) = reference::max_pool2d(&w, images, &to_f64(&x), &to_f64(&d_out));
            let (mut out, mut which) = (vec![f32::NAN; out_len], vec![f32::NAN; out_len]);
            max_pool2d_forward_with(isa, &w, images, &x, &mut out, Some(&mut which));
            let case = format!("{isa:?} {input:?} window {window:?} strides {strides:?} {padding}");
            assert_eq!(to_f64(&out), exact, "{case} forward");
            // Inference's pass, which records no window, pools alike.
            let mut untracked = vec![f32::NAN; out_len];
            max_pool2d_forward_with(isa, &w, images, &x, &mut untracked, None);
            assert!(
                same_bits(&untracked, &out),
                "{case} forward without windows"
            );
            let mut dx = vec![f32::NAN; x.len()];
            max_pool2d_backward_with(
                isa,
                &w,
                images,
                &which,
                &out,
                &d_out[..],
                &mut dx[..],
                false,
            );
            let err = rel_err(&dx, &exact_dx);
            assert!(err < 1e-6, "{case} backward: rel err {err}");
            // Through a relu below: its output's gradient masked where it is 0.
            let relu_x: Vec<f32> = x.iter().map(|&v| v.max(0.0)).collect();
            let (_, mut exact_relu_dx) =
                reference::max_pool2d(&w, images, &to_f64(&relu_x), &to_f64(&d_out));
            for (d, &v) in exact_relu_dx.iter_mut().zip(&relu_x) {
                if v <= 0.0 {
                    *d = 0.0;
                }
            }
            let mut relu_out = vec![f32::NAN; out_len];
            max_pool2d_forward_with(isa, &w, images, &relu_x, &mut relu_out, Some(&mut which));
            max_pool2d_backward_with(
                isa,
                &w,
                images,
                &which,
                &relu_out,
                &d_out[..],
                &mut dx[..],
                true,
            );
            let err = rel_err(&dx, &exact_relu_dx);
            assert!(err < 1e-6, "{case} backward through a relu: rel err {err}");
        }
    }
}

/// A window whose maximum is NaN (its first input) passes its gradient to no
/// input, as no input equals NaN; a NaN after a number is passed over.
#[test]
fn a_nan_maximum_takes_no_gradient() {
    for isa in Isa::available() {
        let w = Windows::new([2, 2, 2], [2, 2], [2, 2], Padding::Valid).expect("fits");
        // Channel 0: NaN first; channel 1: 1, NaN, 3, 2.
        let x = [f32::NAN, 1.0, 0.0, f32::NAN, 0.0, 3.0, 0.0, 2.0];
        let (mut out, mut which) = ([0.0; 2], [0.0; 2]);
        max_pool2d_forward_with(isa, &w, 1, &x, &mut out, Some(&mut which));
        assert!(out[0].is_nan(), "{isa:?}");
        assert_eq!(out[1], 3.0, "{isa:?}");
        let mut dx = [f32::NAN; 8];
        max_pool2d_backward_with(isa, &w, 1, &which, &out, &[5.0, 7.0], &mut dx, false);
        assert_eq!(dx, [0.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0, 0.0], "{isa:?}");
    }
}

/// A NaN pixel under a one-channel convolution pooled as it is made gives
/// the bits of the two kernels: NaN maxima recorded as no window, and a NaN
/// after a number passed over.
#[test]
fn a_nan_pixel_pools_as_the_two_kernels_pool_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (images, filters) = (5, 16);
    let w = Windows::new([10, 11, 1], [3, 3], [1, 1], Padding::Valid).expect("fits");
    let pool = Windows::new([8, 9, filters], [2, 2], [2, 2], Padding::Valid).expect("fits");
    let mut x = random(&mut rng, images * w.input_len());
    x[3 * 11 + 4] = f32::NAN;
    x[w.input_len() + 7 * 11 + 9] = f32::NAN;
    let kernel = random(&mut rng, w.patch_len() * filters);
    let bias = random(&mut rng, filters);
    let pooled_len = images * pool.positions() * filters;
    for isa in Isa::available() {
        let mut out = vec![0.0; images * w.positions() * filters];
        let epilogue = Epilogue::BiasRelu(&bias);
        conv2d_forward_with(isa, &w, images, &x, &kernel, epilogue, &mut out);
        let (mut pooled, mut which) = (vec![0.0; pooled_len], vec![0.0; pooled_len]);
        max_pool2d_forward_with(isa, &pool, images, &out, &mut pooled, Some(&mut which));
        assert!(pooled.iter().any(|v| v.is_nan()), "{isa:?} a NaN is pooled");
        let (mut fused, mut fused_which) = (vec![0.0; pooled_len], vec![0.0; pooled_len]);
        let pooling = Pooling {
            windows: &pool,
            out: &mut fused,
            window_of_max: Some(&mut fused_which),
            round_to_bf16: false,
        };
        conv2d_pool_forward_with(isa, &w, images, &x, &kernel, epilogue, pooling);
        assert!(same_bits(&fused, &pooled), "{isa:?} forward");
        assert!(same_bits(&fused_which, &which), "{isa:?} windows");
    }
}

/// A one-channel convolution without a relu (a bias alone, or nothing) pooled
/// as it is made, and its kernel gradient made from the pooling's, give the
/// bits of the two kernels, on every instruction set.
#[test]
fn a_linear_one_channel_convolution_pools_as_the_two_kernels() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (images, filters) = (6, 24);
    let w = Windows::new([9, 12, 1], [3, 3], [1, 1], Padding::Valid).expect("fits");
    let pool_input = [w.out_height, w.out_width, filters];
    let pool = Windows::new(pool_input, [2, 2], [2, 2], Padding::Valid).expect("fits");
    let x = random(&mut rng, images * w.input_len());
    let kernel = random(&mut rng, w.patch_len() * filters);
    let bias = random(&mut rng, filters);
    let pooled_len = images * pool.positions() * filters;
    let d_pooled = random(&mut rng, pooled_len);
    for isa in Isa::available() {
        for epilogue in [Epilogue::Bias(&bias), Epilogue::None] {
            let case = format!("{isa:?} bias {}", matches!(epilogue, Epilogue::Bias(_)));
            let mut out = vec![f32::NAN; images * w.positions() * filters];
            conv2d_forward_with(isa, &w, images, &x, &kernel, epilogue, &mut out);
            let (mut pooled, mut which) = (vec![0.0; pooled_len], vec![0.0; pooled_len]);
            max_pool2d_forward_with(isa, &pool, images, &out, &mut pooled, Some(&mut which));
            let (mut fused, mut fused_which) = (vec![0.0; pooled_len], vec![0.0; pooled_len]);
            let pooling = Pooling {
                windows: &pool,
                out: &mut fused,
                window_of_max: Some(&mut fused_which),
                round_to_bf16: false,
            };
            conv2d_pool_forward_with(isa, &w, images, &x, &kernel, epilogue, pooling);
            assert!(same_bits(&fused, &pooled), "{case} forward");
            assert!(same_bits(&fused_which, &which), "{case} windows");

            let mut dz = vec![f32::NAN; out.len()];
            let (pool_out, d_out) = (&pooled[..], &d_pooled[..]);
            max_pool2d_backward_with(isa, &pool, images, &which, pool_out, d_out, &mut dz, false);
            let from_pooling = OutputGradient::Pooled {
                windows: &pool,
                window_of_max: &which,
                out: &pooled,
                d_out: &d_pooled,
                relu: false,
            };
            let conv = Conv {
                isa,
                w: &w,
                images,
                kernel: &kernel,
            };
            let (given, _) = conv.backward(&x, &dz, false);
            let (made, _) = conv.backward_from(&x, from_pooling, false);
            assert!(same_bits(&made, &given), "{case} kernel gradient");
        }
    }
}

#[test]
fn conv2d_and_pooling_give_the_same_bits_on_one_and_two_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let conv = Windows::new([13, 13, 32], [3, 3], [1, 1], Padding::Valid).expect("fits");
    let pool = Windows::new([11, 11, 64], [2, 2], [2, 2], Padding::Valid).expect("fits");
    let images = 37;
    let x = random(&mut rng, images * conv.input_len());
    let kernel = random(&mut rng, conv.patch_len() * 64);
    let bias = random(&mut rng, 64);
    let run = |threads: usize| {
        let pool_threads = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool_threads.install(|| {
            let conv = Conv {
                isa: Isa::detected(),
                w: &conv,
                images,
                kernel: &kernel,
            };
            let out = conv.forward(&x, &bias);
            let (dk, dx) = conv.backward(&x, &out, true);
            let dx = dx.expect("asked for");
            let mut pooled = vec![0.0; images * pool.positions() * 64];
            let mut which = vec![0.0; pooled.len()];
            max_pool2d_forward(&pool, images, &out, &mut pooled, Some(&mut which));
            let mut d_pool = vec![0.0; out.len()];
            max_pool2d_backward(&pool, images, &which, &pooled, &pooled, &mut d_pool, true);
            [out, dk, dx, pooled, d_pool]
        })
    };
    let (one, two) = (run(1), run(2));
    for (a, b) in one.iter().zip(&two) {
        assert!(same_bits(a, b));
    }
}

/// (conv input, conv window, filters, padding, pool window, pool strides)
type PooledConvCase = (
    [usize; 3],
    [usize; 2],
    usize,
    Padding,
    [usize; 2],
    [usize; 2],
);

/// A convolution whose output is pooled as it is made, and whose output
/// gradient is made from the pooling's, gives the bits of the two kernels run
/// one after the other: the convnet's two pairs (one tiling its input exactly,
/// one not), a 3×3×3 window whose pooling leaves a column out, a window that overlaps,
/// "same" padding, several tasks and chunks of images; training (windows recorded) and inference, with and without
/// rounding to bf16 before the pooling; on every instruction set.
#[test]
fn a_pooled_convolution_gives_the_bits_of_the_two_kernels() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let cases: [PooledConvCase; 7] = [
        ([28, 28, 1], [3, 3], 32, Padding::Valid, [2, 2], [2, 2]),
        ([12, 9, 1], [3, 3], 8, Padding::Valid, [2, 2], [2, 2]),
        ([11, 14, 1], [3, 3], 16, Padding::Valid, [2, 2], [2, 2]),
        ([12, 11, 3], [3, 3], 16, Padding::Valid, [2, 2], [2, 2]),
        ([13, 13, 32], [3, 3], 64, Padding::Valid, [2, 2], [2, 2]),
        ([9, 7, 3], [3, 2], 5, Padding::Same, [3, 3], [2, 1]),
        ([6, 6, 4], [2, 2], 17, Padding::Valid, [2, 2], [1, 1]),
    ];
    for (input, window, filters, padding, pool_window, pool_strides) in cases {
        let w = Windows::new(input, window, [1, 1], padding).expect("fits");
        let pool_input = [w.out_height, w.out_width, filters];
        let pool =
            Windows::new(pool_input, pool_window, pool_strides, Padding::Valid).expect("fits");
        let images = 19;
        let x = random(&mut rng, images * w.input_len());
        let kernel = random(&mut rng, w.patch_len() * filters);
        let bias = random(&mut rng, filters);
        let pooled_len = images * pool.positions() * filters;
        let d_pooled = random(&mut rng, pooled_len);
        for (isa, round_to_bf16) in Isa::available()
            .into_iter()
            .flat_map(|isa| [(isa, false), (isa, true)])
        {
            let case = format!("{isa:?} {input:?} pool {pool_window:?} bf16 {round_to_bf16}");
            let conv = Conv {
                isa,
                w: &w,
                images,
                kernel: &kernel,
            };
            // The two kernels in turn.
            let mut out = conv.forward(&x, &bias);
            if round_to_bf16 {
                kerno_tensor::bf16::round_in_place_with(isa, &mut out);
            }
            let (mut pooled, mut which) = (vec![f32::NAN; pooled_len], vec![f32::NAN; pooled_len]);
            max_pool2d_forward_with(isa, &pool, images, &out, &mut pooled, Some(&mut which));
            let mut dz = vec![f32::NAN; out.len()];
            max_pool2d_backward_with(
                isa,
                &pool,
                images,
                &which,
                &pooled,
                &d_pooled[..],
                &mut dz[..],
                true,
            );
            let (dk, dx) = conv.backward(&x, &dz, true);

            // As one.
            let run = |which: Option<&mut [f32]>| {
                let mut fused = vec![f32::NAN; pooled_len];
                let pooling = Pooling {
                    windows: &pool,
                    out: &mut fused,
                    window_of_max: which,
                    round_to_bf16,
                };
                let epilogue = Epilogue::BiasRelu(&bias);
                conv2d_pool_forward_with(isa, &w, images, &x, &kernel, epilogue, pooling);
                fused
            };
            let mut fused_which = vec![f32::NAN; pooled_len];
            let fused = run(Some(&mut fused_which));
            assert!(same_bits(&fused, &pooled), "{case} forward");
            assert!(same_bits(&fused_which, &which), "{case} windows");
            assert!(same_bits(&run(None), &pooled), "{case} inference");
            let from_pooling = OutputGradient::Pooled {
                windows: &pool,
                window_of_max: &which,
                out: &pooled,
                d_out: &d_pooled,
                relu: true,
            };
            let (fused_dk, fused_dx) = conv.backward_from(&x, from_pooling, true);
            assert!(same_bits(&fused_dk, &dk), "{case} kernel gradient");
            let (fused_dx, dx) = (fused_dx.expect("asked for"), dx.expect("asked for"));
            assert!(same_bits(&fused_dx, &dx), "{case} input gradient");
        }
    }
}
