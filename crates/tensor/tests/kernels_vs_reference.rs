//! Every fast kernel against its plain f64 reference, on random and odd shapes.

use kerno_tensor::activation::column_sums;
use kerno_tensor::loss::{self, LogitsGradient, Targets};
use kerno_tensor::{
    gemm_column_sums_with, gemm_with, reference, Activation, Epilogue, Isa, MatMut, MatRef,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{random, rel_err, same_bits};

const ODD: [usize; 7] = [1, 2, 7, 10, 17, 33, 129];

/// A view of `rows × cols` over `storage`, stored transposed when `transposed`.
fn view(storage: &[f32], rows: usize, cols: usize, transposed: bool) -> MatRef<'_> {
    if transposed {
        MatRef::row_major(storage, cols, rows).t()
    } else {
        MatRef::row_major(storage, rows, cols)
    }
}

/// `A·B` on every instruction set of this machine, against the f64 reference.
fn assert_gemm_matches_reference(a: MatRef<'_>, b: MatRef<'_>, case: &str) {
    let (m, n) = (a.rows(), b.cols());
    let exact = reference::matmul(a, b);
    for isa in Isa::available() {
        let mut c = vec![f32::NAN; m * n];
        gemm_with(
            isa,
            a,
            b,
            MatMut::row_major(&mut c, m, n),
            false,
            Epilogue::None,
        );
        let err = rel_err(&c, &exact);
        assert!(err < 1e-5, "{isa:?} {case}: rel err {err}");
    }
}

#[test]
fn gemm_matches_reference_on_odd_and_transposed_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut cases = vec![
        (128, 784, 512),
        (784, 128, 512),
        (128, 10, 512),
        (512, 128, 10),
        // Thin outputs (n ≤ 12 takes the dot-product path), around its 16 lanes.
        (127, 513, 10),
        (3, 1, 12),
        (65, 16, 4),
        (33, 31, 1),
    ];
    // Every thin width, rows in pairs and a last one alone, a depth off the
    // vectors' lanes.
    cases.extend((1..=12).map(|n| (7, 37, n)));
    for _ in 0..30 {
        let pick = |rng: &mut ChaCha8Rng| ODD[rng.gen_range(0..ODD.len())];
        cases.push((pick(&mut rng), pick(&mut rng), pick(&mut rng)));
    }
    for (m, k, n) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(&mut rng, m * k);
            let b = random(&mut rng, k * n);
            let (a, b) = (view(&a, m, k, ta), view(&b, k, n, tb));
            assert_gemm_matches_reference(a, b, &format!("{m}x{k}x{n} ta={ta} tb={tb}"));
        }
    }
}

/// Every height up to 12 rows, where each instruction set picks tiles of its own
/// height (AVX-512: exactly m; AVX2: the tallest up to 6 that divides m), and the
/// thin outputs a transposed A computes as Cᵀ with those tiles.
#[test]
fn gemm_of_few_rows_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for m in 1..=12 {
        for (k, n) in [(37, 64), (129, 40), (5, 512)] {
            for ta in [false, true] {
                let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
                let (a, b) = (view(&a, m, k, ta), view(&b, k, n, false));
                assert_gemm_matches_reference(a, b, &format!("{m}x{k}x{n} ta={ta}"));
            }
        }
        // m as the width of a thin output, with A transposed: computed as Cᵀ.
        let (a, b) = (random(&mut rng, 200 * 33), random(&mut rng, 33 * m));
        let (a, b) = (view(&a, 200, 33, true), view(&b, 33, m, false));
        assert_gemm_matches_reference(a, b, &format!("200x33x{m} ta=true"));
    }
}

#[test]
fn gemm_accumulates_and_handles_padded_rows_of_c() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (m, k, n, stride) = (37, 19, 11, 16);
    let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
    let start = random(&mut rng, m * stride);
    let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    let product = reference::matmul(a, b);
    for isa in Isa::available() {
        let mut c = start.clone();
        gemm_with(
            isa,
            a,
            b,
            MatMut::new(&mut c, m, n, stride),
            true,
            Epilogue::None,
        );
        for i in 0..m {
            for j in 0..stride {
                let got = c[i * stride + j] as f64;
                let want = if j < n {
                    start[i * stride + j] as f64 + product[i * n + j]
                } else {
                    start[i * stride + j] as f64 // padding is never written
                };
                assert!(
                    (got - want).abs() < 1e-5,
                    "{isa:?} ({i},{j}): {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn gemm_epilogues_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for isa in Isa::available() {
        for &(m, k, n) in &[
            (1, 7, 17),
            (33, 10, 129),
            (128, 784, 10),
            (31, 17, 5),
            (64, 40, 12),
            (5, 0, 3),
            (300, 600, 600),
        ] {
            let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
            let bias = random(&mut rng, n);
            let mask = random(&mut rng, m * n);
            let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let product = reference::matmul(a, b);
            let mut c = vec![0.0; m * n];

            gemm_with(
                isa,
                a,
                b,
                MatMut::row_major(&mut c, m, n),
                false,
                Epilogue::Bias(&bias),
            );
            let want: Vec<f64> = (0..m * n)
                .map(|i| product[i] + bias[i % n] as f64)
                .collect();
            assert!(rel_err(&c, &want) < 1e-5);

            gemm_with(
                isa,
                a,
                b,
                MatMut::row_major(&mut c, m, n),
                false,
                Epilogue::BiasRelu(&bias),
            );
            let want: Vec<f64> = want.iter().map(|v| v.max(0.0)).collect();
            assert!(rel_err(&c, &want) < 1e-5);

            let mask_view = MatRef::row_major(&mask, m, n);
            gemm_with(
                isa,
                a,
                b,
                MatMut::row_major(&mut c, m, n),
                false,
                Epilogue::ReluMask(mask_view),
            );
            let want: Vec<f64> = (0..m * n)
                .map(|i| if mask[i] > 0.0 { product[i] } else { 0.0 })
                .collect();
            assert!(rel_err(&c, &want) < 1e-5);
        }
    }
}

#[test]
fn activations_match_reference_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for act in Activation::ALL {
        for &cols in &[1, 7, 10, 129] {
            let rows = 5;
            let x = random(&mut rng, rows * cols);
            let mut fast = x.clone();
            act.forward_inplace(&mut fast, cols);
            let mut exact: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            reference::activation(act, &mut exact, cols);
            assert!(rel_err(&fast, &exact) < 1e-6, "{act} forward, cols {cols}");

            // Backward against central differences of Σ u·act(x) in f64.
            let upstream = random(&mut rng, rows * cols);
            let mut grad = upstream.clone();
            act.backward_inplace(&mut grad, &fast, cols);
            let objective = |x: &[f64]| {
                let mut y = x.to_vec();
                reference::activation(act, &mut y, cols);
                y.iter()
                    .zip(&upstream)
                    .map(|(y, &u)| y * u as f64)
                    .sum::<f64>()
            };
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let h = 1e-6;
            let numeric: Vec<f64> = (0..x.len())
                .map(|i| {
                    let (mut plus, mut minus) = (x64.clone(), x64.clone());
                    plus[i] += h;
                    minus[i] -= h;
                    (objective(&plus) - objective(&minus)) / (2.0 * h)
                })
                .collect();
            assert!(
                rel_err(&grad, &numeric) < 1e-4,
                "{act} backward, cols {cols}"
            );
        }
    }
}

#[test]
fn fused_softmax_xent_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for &(rows, classes) in &[(1, 1), (7, 2), (128, 10), (96, 17)] {
        let logits: Vec<f32> = random(&mut rng, rows * classes)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        let labels: Vec<u32> = (0..rows)
            .map(|_| rng.gen_range(0..classes as u32))
            .collect();
        let mut one_hot = vec![0.0f32; rows * classes];
        labels
            .iter()
            .enumerate()
            .for_each(|(r, &c)| one_hot[r * classes + c as usize] = 1.0);

        let l64: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let y64: Vec<f64> = one_hot.iter().map(|&v| v as f64).collect();
        let (loss, grad) = reference::softmax_xent(&l64, &y64, classes);
        let scale = 1.0 / rows as f32;
        let want_grad: Vec<f64> = grad.iter().map(|g| g * scale as f64).collect();
        let want_correct = (0..rows)
            .filter(|&r| {
                let z = &logits[r * classes..(r + 1) * classes];
                kerno_tensor::Tensor::from_vec(&[1, classes], z.to_vec())
                    .unwrap()
                    .argmax_rows()[0]
                    == labels[r] as usize
            })
            .count();

        for targets in [Targets::Dense(&one_hot), Targets::Classes(&labels)] {
            // One output is judged by binary accuracy, as Keras does: the softmax
            // is 1, right for the one-hot target 1, wrong for the class index 0.
            let want_correct = match (classes, targets) {
                (1, Targets::Dense(_)) => rows,
                (1, Targets::Classes(_)) => 0,
                _ => want_correct,
            };
            let (mut g, mut sums) = (vec![0.0; rows * classes], vec![f32::NAN; classes]);
            let grad = LogitsGradient {
                values: &mut g,
                scale,
                column_sums: Some(&mut sums),
            };
            let stats = loss::softmax_xent_fwd_bwd(&logits, targets, classes, Some(grad));
            assert!((stats.loss_sum - loss).abs() < 1e-4 * loss.abs().max(1.0));
            assert_eq!(stats.correct, want_correct);
            assert!(rel_err(&g, &want_grad) < 1e-6);
            // The bias gradient summed on the way, bit for bit a pass over the gradient.
            let mut expected = vec![0.0; classes];
            column_sums(&g, &mut expected);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&sums), bits(&expected));
            let no_grad = loss::softmax_xent_fwd_bwd(&logits, targets, classes, None);
            assert_eq!(no_grad, stats);
        }
    }
}

/// A prediction's probabilities (the softmax activation) are the softmax the fused
/// loss computed: its gradient with a scale of 1 is `p` off the target class.
#[test]
fn softmax_activation_is_the_fused_losss_softmax() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (rows, classes) = (33, 10);
    let logits: Vec<f32> = random(&mut rng, rows * classes)
        .iter()
        .map(|v| v * 20.0)
        .collect();
    let labels: Vec<u32> = (0..rows).map(|r| (r % classes) as u32).collect();
    let mut g = vec![0.0; rows * classes];
    let grad = LogitsGradient {
        values: &mut g,
        scale: 1.0,
        column_sums: None,
    };
    loss::softmax_xent_fwd_bwd(&logits, Targets::Classes(&labels), classes, Some(grad));
    let mut p = logits.clone();
    Activation::Softmax.forward_inplace(&mut p, classes);
    for (i, (&g, &p)) in g.iter().zip(&p).enumerate() {
        if i % classes != labels[i / classes] as usize {
            assert_eq!(
                g.to_bits(),
                p.to_bits(),
                "row {} class {}",
                i / classes,
                i % classes
            );
        }
    }
}

#[test]
fn probability_losses_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (rows, cols) = (9, 5);
    let outputs: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(0.01..1.0)).collect();
    let targets: Vec<f32> = (0..rows * cols)
        .map(|i| (i % cols == i / cols % cols) as u8 as f32)
        .collect();
    let o64: Vec<f64> = outputs.iter().map(|&v| v as f64).collect();
    let t64: Vec<f64> = targets.iter().map(|&v| v as f64).collect();

    let got = loss::categorical_xent_probs(&outputs, Targets::Dense(&targets), cols, None);
    let want = reference::categorical_xent_probs(&o64, &t64, cols);
    assert!((got - want).abs() < 1e-5 * want.abs());

    let got = loss::mean_squared_error(&outputs, &targets, cols, None);
    let want = reference::mean_squared_error(&o64, &t64, cols);
    assert!((got - want).abs() < 1e-6 * want.abs());
}

#[test]
fn column_sums_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &(rows, cols) in &[(1, 1), (128, 10), (17, 513)] {
        let m = random(&mut rng, rows * cols);
        let mut out = vec![f32::NAN; cols];
        kerno_tensor::activation::column_sums(&m, &mut out);
        let ones = vec![1.0f32; rows];
        let want = reference::matmul(
            MatRef::row_major(&ones, 1, rows),
            MatRef::row_major(&m, rows, cols),
        );
        assert!(rel_err(&out, &want) < 1e-6);
    }
}

#[test]
fn gemm_is_bit_identical_for_any_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // B packed, B read in place (whole strips), B split in blocks of columns (read
    // in place, and packed by each task when its columns are not whole strips), a
    // wide C whose small B is shared (blocks of rows).
    for (m, k, n) in [
        (200, 300, 70),
        (200, 300, 64),
        (130, 784, 512),
        (100, 400, 700),
        (128, 10, 512),
    ] {
        bit_identical_for_any_thread_count(&mut rng, m, k, n);
    }
}

fn bit_identical_for_any_thread_count(rng: &mut ChaCha8Rng, m: usize, k: usize, n: usize) {
    let (a, b) = (random(rng, m * k), random(rng, k * n));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = vec![0.0; m * n];
        pool.install(|| {
            let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            kerno_tensor::gemm(a, b, MatMut::row_major(&mut c, m, n), false, Epilogue::None)
        });
        c
    };
    let one = run(1);
    assert!(same_bits(&one, &run(2)));
    assert!(same_bits(&one, &run(5)));
}

/// The column sums a GEMM adds up as it stores C are, bit for bit, those of a
/// separate pass over the C it wrote, on every path (one task, blocks of columns,
/// blocks of rows summed after, thin outputs), instruction set and thread count;
/// and C is the one `gemm` writes.
#[test]
fn gemm_column_sums_match_a_pass_over_c() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // (m, k, n, A transposed, B transposed)
    let cases = [
        (128, 10, 512, false, true),
        (130, 37, 700, false, false),
        (600, 50, 64, false, false),
        (33, 900, 40, false, false),
        (129, 17, 10, false, false),
        (200, 33, 7, true, false),
        (5, 0, 40, false, false),
    ];
    for (m, k, n, ta, tb) in cases {
        let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
        let (a, b) = (view(&a, m, k, ta), view(&b, k, n, tb));
        let mask = random(&mut rng, m * n);
        let start = random(&mut rng, m * n);
        let epilogues = [
            (Epilogue::ReluMask(MatRef::row_major(&mask, m, n)), false),
            (Epilogue::None, true),
        ];
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for isa in Isa::available() {
                for (epilogue, accumulate) in epilogues {
                    let kind = if accumulate { "C +=" } else { "relu mask" };
                    let case = format!("{m}x{k}x{n} {isa:?} {threads} threads, {kind}");
                    let (mut plain, mut summed) = (start.clone(), start.clone());
                    let mut sums = vec![f32::NAN; n];
                    pool.install(|| {
                        let c = MatMut::row_major(&mut plain, m, n);
                        gemm_with(isa, a, b, c, accumulate, epilogue);
                        let c = MatMut::row_major(&mut summed, m, n);
                        gemm_column_sums_with(isa, a, b, c, accumulate, epilogue, &mut sums);
                    });
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&summed), bits(&plain), "C of {case}");
                    let mut expected = vec![0.0; n];
                    column_sums(&plain, &mut expected);
                    assert_eq!(bits(&sums), bits(&expected), "sums of {case}");
                }
            }
        }
    }
}

/// GEMMs wider than tall whose B is too large to share (at least 256 Ki floats)
/// split C in blocks of columns over the threads: each block's epilogue must read
/// the bias and mask at its own columns, and padded rows of C must keep their padding.
#[test]
fn gemm_in_column_blocks_applies_epilogues_at_each_blocks_columns() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for &(m, k, n, stride) in &[(40, 400, 700, 700), (37, 300, 1000, 1003)] {
        let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
        let (bias, mask) = (random(&mut rng, n), random(&mut rng, m * n));
        let start = random(&mut rng, m * stride);
        let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
        let product = reference::matmul(a, b);
        let mask_view = MatRef::row_major(&mask, m, n);
        for isa in Isa::available() {
            for (epilogue, accumulate) in [
                (Epilogue::BiasRelu(&bias), true),
                (Epilogue::ReluMask(mask_view), false),
            ] {
                let mut c = start.clone();
                pool.install(|| {
                    let c = MatMut::new(&mut c, m, n, stride);
                    gemm_with(isa, a, b, c, accumulate, epilogue)
                });
                for i in 0..m {
                    for j in 0..stride {
                        let before = start[i * stride + j] as f64;
                        let sum = if accumulate { before } else { 0.0 };
                        let want = match epilogue {
                            _ if j >= n => before,
                            Epilogue::BiasRelu(_) => {
                                (sum + product[i * n + j] + bias[j] as f64).max(0.0)
                            }
                            _ if mask[i * n + j] > 0.0 => product[i * n + j],
                            _ => 0.0,
                        };
                        let got = c[i * stride + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{isa:?} {m}x{k}x{n} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// B whose rows are whole strips is read in place, also when its rows are padded.
#[test]
fn gemm_reads_b_in_place_from_padded_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    for (m, k, n, stride) in [(37, 19, 64, 80), (9, 300, 32, 33), (70, 5, 96, 96)] {
        let (a, storage) = (random(&mut rng, m * k), random(&mut rng, k * stride));
        let a = MatRef::row_major(&a, m, k);
        let b = MatRef::new(&storage, k, n, stride, 1);
        assert_gemm_matches_reference(a, b, &format!("{m}x{k}x{n}, B stride {stride}"));
    }
}

/// A's whole panels are read in place, row by row (row-major A) or column by
/// column (transposed A), also when its rows are padded; its last, partial panel is packed.
#[test]
fn gemm_reads_a_in_place_from_padded_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (m, k, n, stride) in [(37, 19, 64, 21), (16, 300, 40, 333), (70, 5, 96, 75)] {
        let b = random(&mut rng, k * n);
        let b = MatRef::row_major(&b, k, n);
        let storage = random(&mut rng, m * stride);
        let a = MatRef::new(&storage, m, k, stride, 1);
        assert_gemm_matches_reference(a, b, &format!("{m}x{k}x{n}, A stride {stride}"));
        let storage = random(&mut rng, k * stride.max(m));
        let a = MatRef::new(&storage, k, m, stride.max(m), 1).t();
        assert_gemm_matches_reference(a, b, &format!("{m}x{k}x{n}, Aᵀ stride {stride}"));
    }
}

/// Thin outputs from a transposed A (a weight gradient `Hᵀ·dZ`) take the transposed
/// product; it must accumulate and apply epilogues as the tiled path does.
#[test]
fn thin_gemm_of_a_transposed_a_accumulates_and_applies_epilogues() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for &(m, k, n) in &[(512, 128, 10), (13, 5, 12), (100, 33, 1)] {
        let (a_t, b) = (random(&mut rng, k * m), random(&mut rng, k * n));
        let a = MatRef::row_major(&a_t, k, m).t();
        let b = MatRef::row_major(&b, k, n);
        let product = reference::matmul(a, b);
        let bias = random(&mut rng, n);
        let start = random(&mut rng, m * n);
        for isa in Isa::available() {
            let mut c = start.clone();
            gemm_with(
                isa,
                a,
                b,
                MatMut::row_major(&mut c, m, n),
                true,
                Epilogue::BiasRelu(&bias),
            );
            let want: Vec<f64> = (0..m * n)
                .map(|i| (start[i] as f64 + product[i] + bias[i % n] as f64).max(0.0))
                .collect();
            let err = rel_err(&c, &want);
            assert!(err < 1e-5, "{isa:?} {m}x{k}x{n}: rel err {err}");
        }
    }
}
