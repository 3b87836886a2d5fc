//! Kernel benches: GEMM on the training step's shapes (kerno on each instruction
//! set, `matrixmultiply`, the `gemm` crate, and the f64 reference), the first
//! layer's products of a sparse batch against the dense GEMM, the fused softmax +
//! cross-entropy, the RMSprop update, and the convnet's convolutions and
//! pooling. Throughput is reported in FLOP
//! (2 per multiply-add). Every GEMM runs on `RAYON_NUM_THREADS` threads (default:
//! all cores), named in the group: kerno and `gemm` called from a thread of rayon's
//! pool whose other threads spin, ready (as `fit` runs them), `matrixmultiply` on
//! its own threads, given the same count.

use criterion::{black_box, criterion_group, Bencher, BenchmarkId, Criterion, Throughput};
use kerno::tensor::conv::{
    backward_scratch_len, chunk_output_len, conv2d_backward, conv2d_forward, conv2d_pool_forward,
    patch_buffer_len, reserve_patch_buffers, ConvGradients, OutputGradient, Padding, Pooling,
    Windows,
};
use kerno::tensor::loss::{softmax_xent_fwd_bwd, LogitsGradient, Targets};
use kerno::tensor::optim::RmsProp;
use kerno::tensor::pool::{max_pool2d_backward, max_pool2d_forward};
use kerno::tensor::sparse::{sparse_gemm_with, sparse_t_gemm_with, SparseRows};
use kerno::tensor::{
    gemm_with, optim, reference, with_workers_awake, AlignedBuf, Epilogue, Isa, MatMut, MatRef,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// (name, m, k, n, A transposed, B transposed): the five GEMMs of the notebook's
/// batch-128 step, and 1024³.
const SHAPES: [(&str, usize, usize, usize, bool, bool); 6] = [
    ("fwd1 X·W1 128x784x512", 128, 784, 512, false, false),
    ("fwd2 H·W2 128x512x10", 128, 512, 10, false, false),
    ("dW2 Ht·dZ 512x128x10", 512, 128, 10, true, false),
    ("dH dZ·W2t 128x10x512", 128, 10, 512, false, true),
    ("dW1 Xt·dH 784x128x512", 784, 128, 512, true, false),
    ("square 1024x1024x1024", 1024, 1024, 1024, false, false),
];

/// Values in [-1, 1), starting a cache line as the training workspace's buffers do.
fn random(n: usize, rng: &mut ChaCha8Rng) -> AlignedBuf {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// A `rows × cols` view, stored transposed when `t`.
fn view(data: &[f32], rows: usize, cols: usize, t: bool) -> MatRef<'_> {
    if t {
        MatRef::row_major(data, cols, rows).t()
    } else {
        MatRef::row_major(data, rows, cols)
    }
}

/// `C = A·B` with the `gemm` crate (faer's) on `threads` threads.
fn faer_gemm(a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32], threads: usize) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let parallelism = match threads {
        1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    // SAFETY: the views were built over slices of exactly these shapes and strides,
    // and `out` holds m×n floats, row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data().as_ptr(),
            a.col_stride() as isize,
            a.row_stride() as isize,
            b.data().as_ptr(),
            b.col_stride() as isize,
            b.row_stride() as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Times `f` on a thread of rayon's global pool while its other threads spin,
/// ready for each parallel call, as they do through `fit`. The `gemm` crate's
/// rayon jobs get the spinning threads too, a fair start; they are foreign work to
/// `with_workers_awake`, whose doc tells the rare race that could then hang a run.
fn iter_in_pool(bench: &mut Bencher<'_>, mut f: impl FnMut() + Send) {
    let f = &mut f;
    bench.iter_custom(|iters| {
        // `join` called from outside the pool runs both closures on its threads.
        let timed = || {
            with_workers_awake(|| {
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                start.elapsed()
            })
        };
        rayon::join(timed, || ()).0
    })
}

fn gemm_shapes(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    // matrixmultiply reads its thread count once, from its own variable.
    std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (name, m, k, n, ta, tb) in SHAPES {
        let mut group = c.benchmark_group(format!("gemm {threads}t/{name}"));
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.sample_size(20);
        let (a, b) = (random(m * k, &mut rng), random(k * n, &mut rng));
        let (av, bv) = (view(&a, m, k, ta), view(&b, k, n, tb));
        // Aligned: a row of C split between threads then never shares a cache line.
        let mut out = AlignedBuf::zeros(m * n);
        for isa in Isa::available() {
            group.bench_function(BenchmarkId::new("kerno", isa.name()), |bench| {
                iter_in_pool(bench, || {
                    let c = MatMut::row_major(&mut out, m, n);
                    gemm_with(isa, av, bv, c, false, Epilogue::None)
                })
            });
        }
        group.bench_function("matrixmultiply", |bench| {
            bench.iter(|| {
                // SAFETY: the views were built over slices of exactly these shapes and strides.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        av.data().as_ptr(),
                        av.row_stride() as isize,
                        av.col_stride() as isize,
                        bv.data().as_ptr(),
                        bv.row_stride() as isize,
                        bv.col_stride() as isize,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            })
        });
        group.bench_function("gemm", |bench| {
            iter_in_pool(bench, || faer_gemm(av, bv, &mut out, threads))
        });
        if m * k * n <= 128 * 784 * 512 {
            group.sample_size(10);
            group.bench_function("reference-f64", |bench| {
                bench.iter(|| black_box(reference::matmul(av, bv)))
            });
        }
        group.finish();
    }
}

/// A batch of 128 MNIST-like images: each a disc of lit pixels about the centre,
/// of random radius, a fifth of the pixels on average as in MNIST.
fn sparse_batch(rng: &mut ChaCha8Rng) -> AlignedBuf {
    (0..128 * 784)
        .map(|t| (t / 784, t % 784))
        .scan(0.0f32, |radius, (i, p)| {
            if p == 0 {
                *radius = rng.gen_range(5.0..8.0) + (i % 3) as f32;
            }
            let (x, y) = ((p % 28) as f32 - 13.5, (p / 28) as f32 - 13.5);
            let lit = x * x + y * y < *radius * *radius && rng.gen_bool(0.8);
            Some(if lit { rng.gen_range(0.01..1.0) } else { 0.0 })
        })
        .collect()
}

/// The first layer's two GEMMs on a sparse batch, by its nonzeros and dense, and
/// the compression that the sparse products need (throughput: the dense GEMM's
/// operations, so the figures compare as times).
fn sparse_products(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n) = (128, 784, 512);
    let x = sparse_batch(&mut rng);
    let (w, dh, bias) = (
        random(k * n, &mut rng),
        random(m * n, &mut rng),
        random(n, &mut rng),
    );
    let (x_mat, w_mat, dh_mat) = (
        MatRef::row_major(&x, m, k),
        MatRef::row_major(&w, k, n),
        MatRef::row_major(&dh, m, n),
    );
    let mut sparse = SparseRows::with_capacity(m, k);
    sparse.compress(x_mat);
    let density = sparse.density();
    // The batch as a dataset's bytes, compressed without its f32 values.
    let bytes: Vec<u8> = x.iter().map(|&v| (v * 255.0).round() as u8).collect();
    let mut from_bytes = SparseRows::with_capacity(m, k);
    let (mut out, mut dw) = (AlignedBuf::zeros(m * n), AlignedBuf::zeros(k * n));
    for isa in Isa::available() {
        let mut group = c.benchmark_group(format!("sparse {threads}t/{}", isa.name()));
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.sample_size(20);
        group.bench_function(format!("compress 128x784 density {density:.2}"), |bench| {
            iter_in_pool(bench, || sparse.compress_with(isa, x_mat))
        });
        group.bench_function("compress 128x784 from bytes", |bench| {
            let row = |i: usize| &bytes[i * k..(i + 1) * k];
            iter_in_pool(bench, || {
                let compressed =
                    from_bytes.compress_scaled_bytes_if_sparse(isa, (m, k), row, 255.0, 1.0);
                assert_eq!(compressed, Some(true));
                from_bytes.build_columns();
            })
        });
        let epilogue = Epilogue::BiasRelu(&bias);
        group.bench_function("fwd1 X·W1 + bias + relu, nonzeros", |bench| {
            iter_in_pool(bench, || {
                let c = MatMut::row_major(&mut out, m, n);
                sparse_gemm_with(isa, &sparse, w_mat, c, epilogue)
            })
        });
        group.bench_function("fwd1 X·W1 + bias + relu, dense", |bench| {
            iter_in_pool(bench, || {
                let c = MatMut::row_major(&mut out, m, n);
                gemm_with(isa, x_mat, w_mat, c, false, epilogue)
            })
        });
        group.bench_function("dW1 Xt·dH, nonzeros", |bench| {
            iter_in_pool(bench, || {
                sparse_t_gemm_with(isa, &sparse, dh_mat, MatMut::row_major(&mut dw, k, n))
            })
        });
        group.bench_function("dW1 Xt·dH, dense", |bench| {
            iter_in_pool(bench, || {
                let c = MatMut::row_major(&mut dw, k, n);
                gemm_with(isa, x_mat.t(), dh_mat, c, false, Epilogue::None)
            })
        });
        group.finish();
    }
}

fn softmax_xent(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let logits = random(128 * 10, &mut rng);
    let classes: Vec<u32> = (0..128).map(|i| i % 10).collect();
    let (mut grad, mut bias_grad) = (vec![0.0f32; 128 * 10], vec![0.0f32; 10]);
    // With the bias gradient summed in the same pass, as in training.
    c.bench_function("softmax_xent_fwd_bwd 128x10", |b| {
        b.iter(|| {
            let grad = LogitsGradient {
                values: &mut grad,
                scale: 1.0 / 128.0,
                column_sums: Some(&mut bias_grad),
            };
            softmax_xent_fwd_bwd(
                black_box(&logits),
                Targets::Classes(&classes),
                10,
                Some(grad),
            )
        })
    });
}

/// RMSprop on the first layer's kernel: every row updated, and with the rows of
/// a sparse batch's empty pixel columns known to be zeros (their velocities'
/// decay alone), as the training step runs it.
fn rmsprop(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (k, n) = (784, 512);
    let mut sparse = SparseRows::with_capacity(128, k);
    sparse.compress(MatRef::row_major(&sparse_batch(&mut rng), 128, k));
    let is_zero: Vec<bool> = sparse.empty_columns().collect();
    let zero_rows = is_zero.iter().filter(|&&z| z).count();
    let (mut w, mut g, mut v) = (
        random(k * n, &mut rng),
        random(k * n, &mut rng),
        vec![0.0f32; k * n],
    );
    g.chunks_mut(n)
        .enumerate()
        .filter(|&(r, _)| is_zero[r])
        .for_each(|(_, row)| row.fill(0.0));
    let p = RmsProp {
        lr: 0.001,
        rho: 0.9,
        epsilon: 1e-7,
    };
    let mut group = c.benchmark_group("rmsprop_step");
    group.throughput(Throughput::Bytes((k * n * 4 * 4) as u64));
    // The full update; the rows of zeros skipped, as on MNIST's batches; and
    // mixed_bfloat16's, which also refreshes the bf16 copy the layers compute with.
    let mut copy = vec![0.0; w.len()];
    for (name, skip, refresh) in [
        ("784x512".to_string(), false, false),
        (
            format!("784x512, {zero_rows} rows of zeros skipped"),
            true,
            false,
        ),
        (
            format!("784x512, {zero_rows} rows of zeros skipped, bf16 copy refreshed"),
            true,
            true,
        ),
    ] {
        group.bench_function(name, |b| {
            iter_in_pool(b, || {
                let zero_rows = skip.then_some(&is_zero[..]);
                let copy = refresh.then_some(&mut copy[..]);
                black_box(optim::rmsprop_step_with(
                    Isa::detected(),
                    &mut w,
                    &g,
                    &mut v,
                    zero_rows,
                    copy,
                    p,
                ));
            })
        });
    }
    group.finish();
}

/// The convnet's kernels on a batch of 64: its three convolutions forward
/// (im2col, GEMM, bias and relu) and backward (im2col again, the kernel's
/// gradient, and below the first layer the input's: GEMM and col2im), the
/// first two also with the max pooling above them taken as the output is made
/// (forward) and their output gradient made from the pooling's (backward), as
/// training runs them; and both max poolings alone, forward and backward.
fn convnet_kernels(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let images = 64;
    let mut group = c.benchmark_group("convnet convolutions, batch 64");
    group.sample_size(30);
    for (name, input, filters, pooled_above) in [
        ("conv1 28x28x1", [28, 28, 1], 32, true),
        ("conv2 13x13x32", [13, 13, 32], 64, true),
        ("conv3 5x5x64", [5, 5, 64], 64, false),
    ] {
        let w = Windows::new(input, [3, 3], [1, 1], Padding::Valid).expect("fits");
        reserve_patch_buffers(patch_buffer_len(&w), chunk_output_len(&w, filters));
        let x = random(images * w.input_len(), &mut rng);
        let kernel = random(w.patch_len() * filters, &mut rng);
        let bias = random(filters, &mut rng);
        let mut out = AlignedBuf::zeros(images * w.positions() * filters);
        let products = (images * w.positions() * w.patch_len() * filters) as u64;
        group.throughput(Throughput::Elements(2 * products));
        group.bench_function(format!("conv forward {name}"), |b| {
            iter_in_pool(b, || {
                conv2d_forward(&w, images, &x, &kernel, Epilogue::BiasRelu(&bias), &mut out)
            })
        });
        let pool_windows = [w.out_height, w.out_width, filters];
        let pool = Windows::new(pool_windows, [2, 2], [2, 2], Padding::Valid).expect("fits");
        let pooled_len = images * pool.positions() * filters;
        let (mut pooled, mut which) =
            (AlignedBuf::zeros(pooled_len), AlignedBuf::zeros(pooled_len));
        if pooled_above {
            group.bench_function(format!("conv + max pooling forward {name}"), |b| {
                iter_in_pool(b, || {
                    let pooling = Pooling {
                        windows: &pool,
                        out: &mut pooled,
                        window_of_max: Some(&mut which),
                        round_to_bf16: false,
                    };
                    let epilogue = Epilogue::BiasRelu(&bias);
                    conv2d_pool_forward(&w, images, &x, &kernel, epilogue, pooling)
                })
            });
        }
        let first = input[2] == 1;
        group.throughput(Throughput::Elements(if first { 2 } else { 4 } * products));
        let dz = random(out.len(), &mut rng);
        let d_pooled = random(pooled_len, &mut rng);
        let (mut dk, mut db) = (AlignedBuf::zeros(kernel.len()), AlignedBuf::zeros(filters));
        let mut scratch = AlignedBuf::zeros(backward_scratch_len(&w, filters, images));
        let mut dx = AlignedBuf::zeros(x.len());
        let mut backward = |b: &mut Bencher<'_>, dz: OutputGradient<'_>| {
            iter_in_pool(b, || {
                let grads = ConvGradients {
                    kernel: &mut dk,
                    bias: Some(&mut db),
                    input: (!first).then_some(&mut dx[..]),
                };
                conv2d_backward(&w, images, &x, &kernel, dz, grads, &mut scratch)
            })
        };
        group.bench_function(format!("conv backward {name}"), |b| {
            backward(b, OutputGradient::Given(&dz))
        });
        if pooled_above {
            let from_pooling = OutputGradient::Pooled {
                windows: &pool,
                window_of_max: &which,
                out: &pooled,
                d_out: &d_pooled,
                relu: true,
            };
            group.bench_function(format!("conv + max pooling backward {name}"), |b| {
                backward(b, from_pooling)
            });
        }
    }
    group.finish();
    let mut group = c.benchmark_group("convnet pooling, batch 64");
    group.sample_size(30);
    for (name, input) in [
        ("pool1 26x26x32", [26, 26, 32]),
        ("pool2 11x11x64", [11, 11, 64]),
    ] {
        let w = Windows::new(input, [2, 2], [2, 2], Padding::Valid).expect("fits");
        // A relu's output: a third of the values 0.
        let x: AlignedBuf = (0..images * w.input_len())
            .map(|_| rng.gen_range(-0.5f32..1.0).max(0.0))
            .collect();
        let mut out = AlignedBuf::zeros(images * w.positions() * w.channels);
        // As training runs it: each maximum's window recorded for the backward pass.
        let mut which = AlignedBuf::zeros(out.len());
        group.bench_function(format!("max pooling {name}"), |b| {
            iter_in_pool(b, || {
                max_pool2d_forward(&w, images, &x, &mut out, Some(&mut which))
            })
        });
        let d_out = random(out.len(), &mut rng);
        let mut dx = AlignedBuf::zeros(x.len());
        group.bench_function(format!("max pooling gradient + relu {name}"), |b| {
            iter_in_pool(b, || {
                max_pool2d_backward(&w, images, &which, &out, &d_out, &mut dx, true)
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    gemm_shapes,
    sparse_products,
    softmax_xent,
    rmsprop,
    convnet_kernels
);

fn main() {
    // Criterion's reports draw their text with the font kerno bundles for its plots.
    kerno_runner::register_plot_font();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
