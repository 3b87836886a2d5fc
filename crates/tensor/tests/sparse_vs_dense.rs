//! The products of a sparse matrix's nonzeros against the dense GEMM, which they
//! must equal bit for bit (zeros skipped, same order of sums), and the f64 reference.

use kerno_tensor::sparse::{sparse_gemm_with, sparse_t_gemm_with, SparseRows};
use kerno_tensor::{gemm_with, reference, Epilogue, Isa, MatMut, MatRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{random, rel_err, same_bits};

/// `n` values of which a share `density` (about) are nonzero, in runs of zeros
/// as an image's background.
fn sparse_values(rng: &mut ChaCha8Rng, n: usize, density: f64) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.gen_bool(density) {
            true => rng.gen_range(-1.0..1.0),
            false => 0.0,
        })
        .collect()
}

/// Shapes `m × k` (the sparse matrix) by `k × n`: the training step's, odd ones,
/// depths of several blocks (k over 400), thin outputs.
const SHAPES: [(usize, usize, usize); 9] = [
    (128, 784, 512),
    (1, 1, 1),
    (7, 17, 10),
    (33, 1000, 129),
    (129, 33, 17),
    (450, 20, 33),
    (12, 401, 64),
    (65, 2, 300),
    (5, 9, 16),
];

#[test]
fn compress_keeps_each_nonzero_in_order_from_any_view() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (m, k) in [(128, 784), (1, 1), (7, 17), (33, 100), (3, 1000)] {
        let mut values = sparse_values(&mut rng, m * k, 0.2);
        // -0.0 is a zero; a NaN is kept.
        values[0] = -0.0;
        values[m * k / 2] = f32::NAN;
        // The same matrix row-major, transposed in storage, and in padded rows.
        let transposed: Vec<f32> = (0..k * m).map(|t| values[(t % m) * k + t / m]).collect();
        let padded: Vec<f32> = (0..m * (k + 3))
            .map(|t| match t % (k + 3) < k {
                true => values[(t / (k + 3)) * k + t % (k + 3)],
                false => 7.0,
            })
            .collect();
        let views = [
            MatRef::row_major(&values, m, k),
            MatRef::row_major(&transposed, k, m).t(),
            MatRef::new(&padded, m, k, k + 3, 1),
        ];
        for isa in Isa::available() {
            for view in views {
                let mut sparse = SparseRows::default();
                sparse.compress_with(isa, view);
                let nonzero = |v: f32| v != 0.0;
                assert_eq!(
                    sparse.nonzeros(),
                    values.iter().filter(|&&v| nonzero(v)).count()
                );
                for i in 0..m {
                    let row = &values[i * k..(i + 1) * k];
                    let (cols, vals) = sparse.row(i);
                    let expected: Vec<u32> = (0..k as u32)
                        .filter(|&j| nonzero(row[j as usize]))
                        .collect();
                    assert_eq!(cols, &expected[..], "{isa:?} {m}x{k} row {i}");
                    assert!(cols
                        .iter()
                        .zip(vals)
                        .all(|(&j, v)| v.to_bits() == row[j as usize].to_bits()));
                }
                for j in 0..k {
                    let (rows, vals): (Vec<u32>, Vec<f32>) = sparse.col(j).unzip();
                    let expected: Vec<u32> = (0..m as u32)
                        .filter(|&i| nonzero(values[i as usize * k + j]))
                        .collect();
                    assert_eq!(rows, expected, "{isa:?} {m}x{k} column {j}");
                    assert!(rows
                        .iter()
                        .zip(vals)
                        .all(|(&i, v)| v.to_bits() == values[i as usize * k + j].to_bits()));
                }
                let empty: Vec<bool> = (0..k).map(|j| sparse.col(j).next().is_none()).collect();
                assert_eq!(sparse.empty_columns().collect::<Vec<_>>(), empty);
            }
        }
    }
}

/// `A·B` with each epilogue and `Aᵀ·B'`, sparse against dense on each instruction
/// set: the same bits where the dense GEMM takes its tiles (outputs wider than its
/// thin path's 12 columns), and the reference's values on every shape.
#[test]
fn sparse_products_are_the_dense_gemms_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (m, k, n) in SHAPES {
        for density in [0.05, 0.2, 0.7] {
            let a = sparse_values(&mut rng, m * k, density);
            let (b, bt, bias) = (
                random(&mut rng, k * n),
                random(&mut rng, m * n),
                random(&mut rng, n),
            );
            let a_mat = MatRef::row_major(&a, m, k);
            let (b_mat, bt_mat) = (MatRef::row_major(&b, k, n), MatRef::row_major(&bt, m, n));
            let case = format!("{m}x{k}x{n} density {density}");
            let (exact, exact_t) = (
                reference::matmul(a_mat, b_mat),
                reference::matmul(a_mat.t(), bt_mat),
            );
            for isa in Isa::available() {
                let mut sparse = SparseRows::default();
                sparse.compress_with(isa, a_mat);
                for epilogue in [
                    Epilogue::None,
                    Epilogue::Bias(&bias),
                    Epilogue::BiasRelu(&bias),
                ] {
                    let (mut dense, mut fast) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    gemm_with(
                        isa,
                        a_mat,
                        b_mat,
                        MatMut::row_major(&mut dense, m, n),
                        false,
                        epilogue,
                    );
                    sparse_gemm_with(
                        isa,
                        &sparse,
                        b_mat,
                        MatMut::row_major(&mut fast, m, n),
                        epilogue,
                    );
                    if n > 12 {
                        assert!(same_bits(&dense, &fast), "{isa:?} {case} {epilogue:?}");
                    }
                    if let Epilogue::None = epilogue {
                        let err = rel_err(&fast, &exact);
                        assert!(err < 1e-5, "{isa:?} {case}: rel err {err}");
                    }
                }
                let (mut dense, mut fast) = (vec![f32::NAN; k * n], vec![f32::NAN; k * n]);
                gemm_with(
                    isa,
                    a_mat.t(),
                    bt_mat,
                    MatMut::row_major(&mut dense, k, n),
                    false,
                    Epilogue::None,
                );
                sparse_t_gemm_with(isa, &sparse, bt_mat, MatMut::row_major(&mut fast, k, n));
                if n > 12 {
                    assert!(same_bits(&dense, &fast), "{isa:?} transposed {case}");
                }
                let err = rel_err(&fast, &exact_t);
                assert!(err < 1e-5, "{isa:?} transposed {case}: rel err {err}");
            }
        }
    }
}

#[test]
fn sparse_products_read_b_and_write_c_in_padded_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (m, k, n, pad) = (9, 40, 70, 5);
    let a = sparse_values(&mut rng, m * k, 0.3);
    let b = random(&mut rng, k * (n + pad));
    let b_mat = MatRef::new(&b, k, n, n + pad, 1);
    let mut sparse = SparseRows::default();
    sparse.compress(MatRef::row_major(&a, m, k));
    let mut c = vec![-3.0f32; m * (n + pad)];
    kerno_tensor::sparse_gemm(
        &sparse,
        b_mat,
        MatMut::new(&mut c, m, n, n + pad),
        Epilogue::None,
    );
    let exact = reference::matmul(MatRef::row_major(&a, m, k), b_mat);
    for i in 0..m {
        let row = &c[i * (n + pad)..(i + 1) * (n + pad)];
        assert!(rel_err(&row[..n], &exact[i * n..(i + 1) * n]) < 1e-5);
        assert!(row[n..].iter().all(|&v| v == -3.0), "padding written");
    }
}

#[test]
fn sparse_products_are_bit_identical_for_any_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (m, k, n) = (130, 784, 512);
    let (a, b, bt) = (
        sparse_values(&mut rng, m * k, 0.2),
        random(&mut rng, k * n),
        random(&mut rng, m * n),
    );
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (mut c, mut ct) = (vec![0.0; m * n], vec![0.0; k * n]);
        pool.install(|| {
            let mut sparse = SparseRows::default();
            sparse.compress(MatRef::row_major(&a, m, k));
            let (b, bt) = (MatRef::row_major(&b, k, n), MatRef::row_major(&bt, m, n));
            kerno_tensor::sparse_gemm(&sparse, b, MatMut::row_major(&mut c, m, n), Epilogue::None);
            kerno_tensor::sparse_t_gemm(&sparse, bt, MatMut::row_major(&mut ct, k, n));
        });
        (c, ct)
    };
    let one = run(1);
    // More threads than the forward product's 4 blocks of columns: 5 and 16 share
    // out each block's rows too.
    for threads in [2, 5, 16] {
        let other = run(threads);
        assert!(
            same_bits(&one.0, &other.0) && same_bits(&one.1, &other.1),
            "{threads} threads"
        );
    }
}

#[test]
fn compress_if_sparse_takes_only_matrices_up_to_the_limit() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (m, k) = (40, 100);
    let sparse_rows = sparse_values(&mut rng, m * k, 0.2);
    let dense_rows = sparse_values(&mut rng, m * k, 0.6);
    let (a, dense) = (
        MatRef::row_major(&sparse_rows, m, k),
        MatRef::row_major(&dense_rows, m, k),
    );
    let mut whole = SparseRows::default();
    whole.compress(a);
    let mut bounded = SparseRows::default();
    assert!(bounded.compress_if_sparse(a, 0.3));
    assert_eq!(bounded.nonzeros(), whole.nonzeros());
    assert!((0..m).all(|i| bounded.row(i) == whole.row(i)));
    assert!((0..k).all(|j| bounded.col(j).eq(whole.col(j))));
    // Over the limit: nothing of it is left to be read as the matrix.
    assert!(!bounded.compress_if_sparse(dense, 0.3));
    assert_eq!(
        (bounded.rows(), bounded.cols(), bounded.nonzeros()),
        (0, 0, 0)
    );
    // And the buffers serve the next sparse one.
    assert!(bounded.compress_if_sparse(a, 0.3));
    assert!((0..m).all(|i| bounded.row(i) == whole.row(i)));
    // By rows alone (a forward pass with no backward pass): the same rows, and
    // the columns of the matrix before are not taken for this one's.
    assert!(bounded.compress_rows_if_sparse(a, 0.3));
    assert!((0..m).all(|i| bounded.row(i) == whole.row(i)));
    let b = vec![1.0f32; m * 16];
    let mut c = vec![0.0f32; k * 16];
    let no_columns = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (b, c) = (
            MatRef::row_major(&b, m, 16),
            MatMut::row_major(&mut c, k, 16),
        );
        sparse_t_gemm_with(Isa::detected(), &bounded, b, c)
    }));
    let message = no_columns.expect_err("Aᵀ·B read columns that were not built");
    let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
    assert_eq!(text, "the columns of A were not built");
}

/// The same entries, bit for bit: rows and, when built, columns.
fn assert_same_entries(a: &SparseRows, b: &SparseRows, columns: bool, what: &str) {
    let bits = |(index, values): (&[u32], &[f32])| {
        let values: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        (index.to_vec(), values)
    };
    assert_eq!((a.rows(), a.cols()), (b.rows(), b.cols()), "{what}");
    assert_eq!(a.nonzeros(), b.nonzeros(), "{what}");
    assert!(
        (0..a.rows()).all(|i| bits(a.row(i)) == bits(b.row(i))),
        "{what}"
    );
    if columns {
        let bits = |s: &SparseRows, j| s.col(j).map(|(i, v)| (i, v.to_bits())).collect::<Vec<_>>();
        assert!((0..a.cols()).all(|j| bits(a, j) == bits(b, j)), "{what}");
    }
}

/// Bytes compressed as scaled values, from rows scattered in a table, equal the
/// gathered and scaled matrix compressed, on every instruction set, for odd widths
/// (vectors of 8 and 16 bytes and a tail), runs of zero bytes and every byte value.
#[test]
fn scaled_bytes_compress_to_the_entries_of_their_scaled_values() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (rows, cols) in [(128, 784), (1, 1), (3, 7), (17, 33), (5, 1000), (450, 20)] {
        let table: Vec<u8> = (0..(rows + 5) * cols)
            .map(|t| match (t / 8) % 3 == 0 || rng.gen_bool(0.8) {
                true => 0,
                false => rng.gen_range(1..=255),
            })
            .collect();
        let picked: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..rows + 5)).collect();
        let row = |i: usize| &table[picked[i] * cols..(picked[i] + 1) * cols];
        for divisor in [255.0f32, -3.0, 1e-30, 7e29] {
            let scaled: Vec<f32> = (0..rows)
                .flat_map(|i| row(i).iter().map(move |&b| b as f32 / divisor))
                .collect();
            let mut expected = SparseRows::default();
            expected.compress(MatRef::row_major(&scaled, rows, cols));
            for isa in Isa::available() {
                for columns in [false, true] {
                    let mut sparse = SparseRows::default();
                    let shape = (rows, cols);
                    let kept =
                        sparse.compress_scaled_bytes_if_sparse(isa, shape, row, divisor, 1.0);
                    assert_eq!(kept, Some(true));
                    if columns {
                        sparse.build_columns();
                    }
                    let what = format!("{isa:?} {rows}x{cols} over {divisor}");
                    assert_same_entries(&sparse, &expected, columns, &what);
                    if columns {
                        let empty: Vec<bool> = (0..cols)
                            .map(|j| (0..rows).all(|i| scaled[i * cols + j] == 0.0))
                            .collect();
                        let found: Vec<bool> = sparse.empty_columns().collect();
                        assert_eq!(found, empty, "{what}");
                    }
                }
            }
        }
    }
}

/// Over the limit, bytes leave the matrix empty as values do; a divisor under
/// which a byte's value could be 0, a subnormal or a NaN is refused untouched.
#[test]
fn scaled_bytes_over_the_limit_or_with_an_inexact_divisor_are_refused() {
    let (rows, cols) = (4, 10);
    let bytes: Vec<u8> = (0..rows * cols).map(|t| (t % 2) as u8).collect();
    let row = |i: usize| &bytes[i * cols..(i + 1) * cols];
    let mut sparse = SparseRows::default();
    let isa = Isa::detected();
    assert_eq!(
        sparse.compress_scaled_bytes_if_sparse(isa, (rows, cols), row, 2.0, 0.4),
        Some(false)
    );
    assert_eq!((sparse.rows(), sparse.cols(), sparse.nonzeros()), (0, 0, 0));
    assert_eq!(
        sparse.compress_scaled_bytes_if_sparse(isa, (rows, cols), row, 2.0, 0.5),
        Some(true)
    );
    for divisor in [0.0, f32::INFINITY, f32::NAN, 1e31, 1e-31, -1e-31] {
        let refused = sparse.compress_scaled_bytes_if_sparse(isa, (rows, cols), row, divisor, 1.0);
        assert_eq!(refused, None, "divisor {divisor}");
        assert_eq!(sparse.nonzeros(), rows * cols / 2, "left as it was");
    }
}

/// A column is empty only when no block of its rows holds a nonzero (450 rows
/// are two blocks of depth).
#[test]
fn empty_columns_look_at_every_block_of_rows() {
    let (rows, cols) = (450, 4);
    let mut values = vec![0.0f32; rows * cols];
    values[449 * cols + 1] = 1.0; // column 1: the last row, in the second block
    values[2] = -2.0; // column 2: the first row
    values[300 * cols + 3] = f32::NAN; // column 3: a NaN counts
    let mut sparse = SparseRows::default();
    for isa in Isa::available() {
        sparse.compress_with(isa, MatRef::row_major(&values, rows, cols));
        let empty: Vec<bool> = sparse.empty_columns().collect();
        assert_eq!(empty, [true, false, false, false], "{isa:?}");
    }
}

/// The products' multiply-adds, as `kerno profile` counts them: four rows (or
/// columns) a group, over the union of the group's nonzeros.
#[test]
fn multiply_adds_count_each_group_s_union_for_its_four_lines() {
    #[rustfmt::skip]
    let a = [
        1.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 2.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 3.0, 0.0, 0.0, 0.0,
        4.0, 0.0, 0.0, 0.0, 5.0,
    ];
    let mut sparse = SparseRows::default();
    sparse.compress(MatRef::row_major(&a, 5, 5));
    // Rows 0-3: columns 0 and 1; row 4: columns 0 and 4.
    assert_eq!(sparse.product_multiply_adds(7), 4 * (2 + 2) * 7);
    // Columns 0-3: rows 0, 1, 3 and 4; column 4: row 4.
    assert_eq!(sparse.t_product_multiply_adds(7), 4 * (4 + 1) * 7);
}

/// Nonzeros rounded to bf16 after compression are the entries, and give the
/// products, of the matrix rounded before it (the `mixed_bfloat16` input path),
/// columns built before the rounding included.
#[test]
fn nonzeros_rounded_to_bf16_are_those_of_the_rounded_matrix() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for (m, k, n) in SHAPES {
        let a = sparse_values(&mut rng, m * k, 0.2);
        let mut rounded = a.clone();
        kerno_tensor::bf16::round_in_place(&mut rounded);
        let (a_mat, rounded_mat) = (
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&rounded, m, k),
        );
        let (b, bt) = (random(&mut rng, k * n), random(&mut rng, m * n));
        let (b_mat, bt_mat) = (MatRef::row_major(&b, k, n), MatRef::row_major(&bt, m, n));
        let mut want = SparseRows::default();
        want.compress(rounded_mat);
        want.build_columns();
        let mut got = SparseRows::default();
        got.compress(a_mat);
        got.build_columns();
        got.round_values_to_bf16();
        assert!(!got.has_columns(), "{m}x{k}: stale columns kept");
        got.build_columns();
        assert_same_entries(&got, &want, true, &format!("{m}x{k}"));
        let isa = Isa::detected();
        let (mut c_got, mut c_want) = (vec![0.0; m * n], vec![0.0; m * n]);
        sparse_gemm_with(
            isa,
            &got,
            b_mat,
            MatMut::row_major(&mut c_got, m, n),
            Epilogue::None,
        );
        sparse_gemm_with(
            isa,
            &want,
            b_mat,
            MatMut::row_major(&mut c_want, m, n),
            Epilogue::None,
        );
        assert!(same_bits(&c_got, &c_want), "{m}x{k}x{n}");
        let (mut t_got, mut t_want) = (vec![0.0; k * n], vec![0.0; k * n]);
        sparse_t_gemm_with(isa, &got, bt_mat, MatMut::row_major(&mut t_got, k, n));
        sparse_t_gemm_with(isa, &want, bt_mat, MatMut::row_major(&mut t_want, k, n));
        assert!(same_bits(&t_got, &t_want), "transposed {m}x{k}x{n}");
    }
}
