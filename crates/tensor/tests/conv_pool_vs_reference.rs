//! Convolution and pooling against their plain f64 references, on odd sizes,
//! both paddings, strides 1 and 2, and every instruction set of this machine.

use kerno_tensor::conv::{
    conv2d_forward_with, conv2d_input_gradient_with, conv2d_kernel_gradient_with, Padding, Windows,
};
use kerno_tensor::pool::{max_pool2d_backward, max_pool2d_forward};
use kerno_tensor::{reference, Epilogue, Isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{random, rel_err, same_bits};

/// (input [h, w, c], window, strides, filters): odd sizes, windows that do not
/// tile the input, a single channel, and the convnet's own layers.
type ConvCase = ([usize; 3], [usize; 2], [usize; 2], usize);
const CONV_CASES: [ConvCase; 8] = [
    ([7, 9, 3], [3, 3], [1, 1], 5),
    ([8, 7, 2], [3, 2], [2, 2], 4),
    ([5, 5, 1], [5, 5], [1, 1], 1),
    ([6, 11, 17], [1, 3], [2, 1], 33),
    ([9, 9, 4], [2, 2], [2, 2], 16),
    ([28, 28, 1], [3, 3], [1, 1], 32),
    ([13, 13, 32], [3, 3], [1, 1], 64),
    ([5, 5, 64], [3, 3], [1, 1], 64),
];

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn conv2d_forward_and_gradients_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (input, window, strides, filters) in CONV_CASES {
        for padding in [Padding::Valid, Padding::Same] {
            let w = Windows::new(input, window, strides, padding).expect("the window fits");
            let images = 3;
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
            for isa in Isa::available() {
                let mut patches = vec![f32::NAN; rows * w.patch_len()];
                let mut out = vec![f32::NAN; rows * filters];
                let epilogue = Epilogue::BiasRelu(&bias);
                conv2d_forward_with(
                    isa,
                    &w,
                    images,
                    &x,
                    &kernel,
                    &mut patches,
                    &mut out,
                    epilogue,
                );
                let err = rel_err(&out, &exact);
                assert!(err < 1e-5, "{isa:?} {case} forward: rel err {err}");

                let mut dk = vec![f32::NAN; kernel.len()];
                conv2d_kernel_gradient_with(isa, &w, images, &patches, &dz, &mut dk);
                let err = rel_err(&dk, &exact_dk);
                assert!(err < 1e-5, "{isa:?} {case} kernel gradient: rel err {err}");

                let mut dx = vec![f32::NAN; x.len()];
                conv2d_input_gradient_with(isa, &w, images, &kernel, &dz, &mut patches, &mut dx);
                let err = rel_err(&dx, &exact_dx);
                assert!(err < 1e-5, "{isa:?} {case} input gradient: rel err {err}");
            }
        }
    }
}

#[test]
fn max_pool2d_matches_the_reference_ties_included() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let cases = [
        ([26, 26, 32], [2, 2], [2, 2]),
        ([11, 11, 64], [2, 2], [2, 2]),
        ([7, 5, 3], [3, 3], [2, 2]),
        ([6, 6, 130], [2, 3], [1, 2]),
        ([1, 1, 5], [1, 1], [1, 1]),
    ];
    for (input, window, strides) in cases {
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
            let mut out = vec![f32::NAN; out_len];
            max_pool2d_forward(&w, images, &x, &mut out);
            let case = format!("{input:?} window {window:?} strides {strides:?} {padding}");
            assert_eq!(to_f64(&out), exact, "{case} forward");
            let mut dx = vec![f32::NAN; x.len()];
            max_pool2d_backward(&w, images, &x, &out, &d_out, &mut dx);
            let err = rel_err(&dx, &exact_dx);
            assert!(err < 1e-6, "{case} backward: rel err {err}");
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
            let rows = images * conv.positions();
            let mut patches = vec![0.0; rows * conv.patch_len()];
            let mut out = vec![0.0; rows * 64];
            let epilogue = Epilogue::BiasRelu(&bias);
            conv2d_forward_with(
                Isa::detected(),
                &conv,
                images,
                &x,
                &kernel,
                &mut patches,
                &mut out,
                epilogue,
            );
            let mut dk = vec![0.0; kernel.len()];
            conv2d_kernel_gradient_with(Isa::detected(), &conv, images, &patches, &out, &mut dk);
            let mut dx = vec![0.0; x.len()];
            conv2d_input_gradient_with(
                Isa::detected(),
                &conv,
                images,
                &kernel,
                &out,
                &mut patches,
                &mut dx,
            );
            let mut pooled = vec![0.0; images * pool.positions() * 64];
            max_pool2d_forward(&pool, images, &out, &mut pooled);
            let mut d_pool = vec![0.0; out.len()];
            max_pool2d_backward(&pool, images, &out, &pooled, &pooled, &mut d_pool);
            [out, dk, dx, pooled, d_pool]
        })
    };
    let (one, two) = (run(1), run(2));
    for (a, b) in one.iter().zip(&two) {
        assert!(same_bits(a, b));
    }
}
