//! Keras' `mixed_bfloat16` policy against an f64 reference that rounds where
//! the policy does: the batch, the weights, each layer's output and each
//! layer's output gradient to bf16, the products summed exactly, the softmax
//! and the loss in full precision.

use kerno_model::{Activation, Dense, Loss, Metric, Optimizer, Policy, Sequential};
use kerno_tensor::bf16::{is_bf16, round};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUTS: usize = 20;
const HIDDEN: usize = 24;
const CLASSES: usize = 5;
const ROWS: usize = 9;

fn batch() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f32> = (0..ROWS * INPUTS)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let mut y = vec![0.0; ROWS * CLASSES];
    for r in 0..ROWS {
        y[r * CLASSES + r % CLASSES] = 1.0;
    }
    (
        Tensor::from_vec(&[ROWS, INPUTS], x).unwrap(),
        Tensor::from_vec(&[ROWS, CLASSES], y).unwrap(),
    )
}

/// `inputs → Dense(24, relu) → Dense(5, last)`, with biases made nonzero.
fn model(policy: Policy, last: Activation) -> Sequential {
    let mut m = Sequential::new(INPUTS)
        .with_seed(8)
        .with_dtype_policy(policy)
        .add(Dense::new(HIDDEN, Activation::Relu))
        .add(Dense::new(CLASSES, last));
    m.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let weights: Vec<Tensor> = m
        .weights()
        .into_iter()
        .map(|t| match t.shape().len() {
            1 => {
                let values = (0..t.len()).map(|_| rng.gen_range(-0.3..0.3)).collect();
                Tensor::from_vec(t.shape(), values).unwrap()
            }
            _ => t,
        })
        .collect();
    m.set_weights(&weights).unwrap();
    m
}

/// f32 `values` rounded to bf16, in f64.
fn rounded(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| round(v) as f64).collect()
}

/// An f64 value rounded as the policy rounds a layer's f32 result.
fn round64(v: f64) -> f64 {
    round(v as f32) as f64
}

/// `a (m×k) · b (k×n)`, exactly enough.
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols * rows)
        .map(|i| a[(i % rows) * cols + i / rows])
        .collect()
}

/// The reference's forward pass: the hidden layer's output and the logits,
/// each rounded to bf16.
fn reference_forward(m: &Sequential, x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let w = m.weights();
    let (w1, b1, w2, b2) = (
        rounded(w[0].data()),
        rounded(w[1].data()),
        rounded(w[2].data()),
        rounded(w[3].data()),
    );
    let mut hidden = matmul(&rounded(x.data()), &w1, ROWS, INPUTS, HIDDEN);
    for (i, h) in hidden.iter_mut().enumerate() {
        *h = round64((*h + b1[i % HIDDEN]).max(0.0));
    }
    let mut logits = matmul(&hidden, &w2, ROWS, HIDDEN, CLASSES);
    for (i, z) in logits.iter_mut().enumerate() {
        *z = round64(*z + b2[i % CLASSES]);
    }
    (hidden, logits)
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    logits
        .chunks(CLASSES)
        .flat_map(|row| {
            let top = row.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = row.iter().map(|z| (z - top).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |e| e / sum)
        })
        .collect()
}

/// The largest difference over the largest magnitude of `want`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let diff = (got.iter().zip(want)).fold(0.0f64, |m, (&g, w)| m.max((g as f64 - w).abs()));
    diff / scale
}

#[test]
fn the_layers_outputs_are_bf16_values_of_the_reference() {
    let (x, _) = batch();
    let mut linear = model(Policy::MixedBfloat16, Activation::Linear);
    let (_, logits) = reference_forward(&linear, &x);
    let out = linear.predict(&x, ROWS).unwrap();
    assert!(out.data().iter().all(|&v| is_bf16(v)), "{:?}", out.data());
    // The f32 sums may round to the neighbouring bf16 value where the exact
    // sum is close to halfway: one step of 2⁻⁸ at most.
    let err = rel_err(out.data(), &logits);
    assert!(err < 1.0 / 128.0, "logits: rel err {err}");
    let under_f32 = {
        let mut m = model(Policy::Float32, Activation::Linear);
        m.predict(&x, ROWS).unwrap()
    };
    assert_ne!(under_f32, out, "the policy rounds nothing");
    // A last softmax is computed in f32 from the bf16 logits.
    let mut softmaxed = model(Policy::MixedBfloat16, Activation::Softmax);
    let probabilities = softmaxed.predict(&x, ROWS).unwrap();
    let err = rel_err(probabilities.data(), &softmax(&logits));
    assert!(err < 1.0 / 64.0, "softmax: rel err {err}");
    assert!(!probabilities.data().iter().all(|&v| is_bf16(v)));
}

#[test]
fn gradients_are_those_of_the_reference_that_rounds_as_the_policy() {
    let (x, y) = batch();
    let mut m = model(Policy::MixedBfloat16, Activation::Softmax);
    let (hidden, logits) = reference_forward(&m, &x);
    let w = m.weights();
    let w2 = rounded(w[2].data());
    // The mean loss's gradient with respect to the logits, in full precision
    // (the bias's), then rounded (the kernel's and the layer below's).
    let p = softmax(&logits);
    let dlogits: Vec<f64> = (p.iter().zip(y.data()))
        .map(|(p, &y)| (p - y as f64) / ROWS as f64)
        .collect();
    let dlogits_bf16: Vec<f64> = dlogits.iter().map(|&d| round64(d)).collect();
    let dw2 = matmul(
        &transpose(&hidden, ROWS, HIDDEN),
        &dlogits_bf16,
        HIDDEN,
        ROWS,
        CLASSES,
    );
    let db2: Vec<f64> = (0..CLASSES)
        .map(|j| (0..ROWS).map(|r| dlogits[r * CLASSES + j]).sum())
        .collect();
    let mut dhidden = matmul(
        &dlogits_bf16,
        &transpose(&w2, HIDDEN, CLASSES),
        ROWS,
        CLASSES,
        HIDDEN,
    );
    for (d, h) in dhidden.iter_mut().zip(&hidden) {
        *d = if *h > 0.0 { *d } else { 0.0 };
    }
    let db1: Vec<f64> = (0..HIDDEN)
        .map(|j| (0..ROWS).map(|r| dhidden[r * HIDDEN + j]).sum())
        .collect();
    let dhidden_bf16: Vec<f64> = dhidden.iter().map(|&d| round64(d)).collect();
    let x_t = transpose(&rounded(x.data()), ROWS, INPUTS);
    let dw1 = matmul(&x_t, &dhidden_bf16, INPUTS, ROWS, HIDDEN);
    let want = [dw1, db1, dw2, db2];

    let grads = m.gradients(&x, &y).unwrap();
    let under_f32 = model(Policy::Float32, Activation::Softmax)
        .gradients(&x, &y)
        .unwrap();
    for (i, want) in want.iter().enumerate() {
        let err = rel_err(grads[i].data(), want);
        let err_f32 = rel_err(under_f32[i].data(), want);
        // Where the f32 sums round a value to the other neighbour, it moves by
        // a step of 2⁻⁸; the float32 policy, rounding nothing, is further off.
        assert!(err < 1e-3, "gradient {i}: rel err {err}");
        assert!(
            err_f32 > err,
            "gradient {i}: {err_f32} under float32, {err} under bf16"
        );
    }
    // The variables' gradients are f32 sums, not rounded.
    assert!(!grads[0].data().iter().all(|&v| is_bf16(v)));
}

/// The weights stay f32 (the updates are not rounded away), a model trained
/// under either policy saves and loads as the other, and the bf16 copies the
/// layers compute with follow weights set from outside.
#[test]
fn weights_stay_f32_and_files_load_under_either_policy() {
    let (x, y) = batch();
    let mut trained = model(Policy::MixedBfloat16, Activation::Softmax);
    let before = trained.predict(&x, ROWS).unwrap();
    for _ in 0..5 {
        trained.train_on_batch(&x, &y).unwrap();
    }
    assert!(!trained.weights()[0].data().iter().all(|&v| is_bf16(v)));
    assert_ne!(trained.predict(&x, ROWS).unwrap(), before);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bf16.safetensors");
    trained.save(&path).unwrap();
    let mut loaded = Sequential::load(&path).unwrap();
    assert_eq!(loaded.dtype_policy(), Policy::Float32);
    assert_eq!(loaded.weights(), trained.weights());
    loaded.set_dtype_policy(Policy::MixedBfloat16);
    assert_eq!(
        loaded.predict(&x, ROWS).unwrap(),
        trained.predict(&x, ROWS).unwrap()
    );
    // New weights from outside: the next pass computes with their bf16 copies.
    let mut other = model(Policy::MixedBfloat16, Activation::Softmax);
    other.predict(&x, ROWS).unwrap();
    other.set_weights(&trained.weights()).unwrap();
    assert_eq!(
        other.predict(&x, ROWS).unwrap(),
        trained.predict(&x, ROWS).unwrap()
    );
}
