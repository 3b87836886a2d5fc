//! NaN and infinity in the weights or the gradients: the sparse-input path (the
//! first layer's products over a batch's nonzeros) and the dense path must give
//! the same weights, losses and predictions, NaN for NaN, bit for bit elsewhere.

use kerno_model::{
    Activation, Dense, FitOptions, Loss, Metric, Optimizer, Policy, Sequential, Verbosity,
};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUTS: usize = 80;

/// Three classes on a background of zeros: only every tenth input is ever lit,
/// so the first kernel's other rows always meet zeros (and the batches are
/// sparse enough for the sparse products).
fn sparse_data(n: usize) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut x = vec![0.0; n * INPUTS];
    let mut y = vec![0.0; n * 3];
    for i in 0..n {
        let class = i % 3;
        y[i * 3 + class] = 1.0;
        for d in (0..INPUTS).step_by(10) {
            let centre = if d / 10 % 3 == class { 2.0 } else { 0.5 };
            x[i * INPUTS + d] = centre + rng.gen_range(-0.4..0.4);
        }
    }
    (
        Tensor::from_vec(&[n, INPUTS], x).unwrap(),
        Tensor::from_vec(&[n, 3], y).unwrap(),
    )
}

/// `80 → Dense(40, relu) → Dense(3, softmax)` with `optimizer`, its weights
/// edited by `inject`.
fn model(optimizer: Optimizer, skip_zeros: bool, inject: &dyn Fn(&mut [Tensor])) -> Sequential {
    let mut m = Sequential::new(INPUTS)
        .with_seed(9)
        .with_dtype_policy(POLICY.get())
        .add(Dense::new(40, Activation::Relu))
        .add(Dense::new(3, Activation::Softmax));
    let mut weights = m.weights();
    inject(&mut weights);
    m.set_weights(&weights).unwrap();
    m.compile(
        optimizer,
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    m.skip_input_zeros(skip_zeros);
    m
}

thread_local! {
    /// The dtype policy the models of this thread's test compute with.
    static POLICY: std::cell::Cell<Policy> = const { std::cell::Cell::new(Policy::Float32) };
}

/// The same value: equal bits, or both NaN (whose payloads may differ).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    if let Some(i) = (0..a.len()).find(|&i| !same(a[i], b[i])) {
        panic!("{what}: sparse {} but dense {} at {i}", a[i], b[i]);
    }
}

/// What a run leaves: every weight, the logged losses, the predictions.
struct Run {
    weights: Vec<f32>,
    losses: Vec<f32>,
    predictions: Vec<f32>,
}

fn train(optimizer: Optimizer, skip_zeros: bool, inject: &dyn Fn(&mut [Tensor])) -> Run {
    let (x, y) = sparse_data(96);
    let mut m = model(optimizer, skip_zeros, inject);
    let options = FitOptions::new()
        .epochs(2)
        .batch_size(16)
        .verbosity(Verbosity::Silent);
    let history = m.fit(&x, &y, &options).unwrap();
    Run {
        weights: m.weights().iter().flat_map(|t| t.data().to_vec()).collect(),
        losses: history.metric("loss").iter().map(|&l| l as f32).collect(),
        predictions: m.predict(&x, 32).unwrap().data().to_vec(),
    }
}

/// A first-kernel row that only ever meets zeros, and a unit.
const ZERO_ROW: usize = 1;

/// An edit of the model's weights, in the order of `Sequential::weights`.
type Injection = Box<dyn Fn(&mut [Tensor])>;

fn injections() -> Vec<(&'static str, Injection)> {
    let at = |tensor: usize, index: usize, value: f32| -> Injection {
        Box::new(move |w: &mut [Tensor]| w[tensor].data_mut()[index] = value)
    };
    vec![
        ("nothing", Box::new(|_: &mut [Tensor]| {})),
        (
            "NaN in W1 on a row of zeros",
            at(0, ZERO_ROW * 40 + 3, f32::NAN),
        ),
        (
            "+inf in W1 on a row of zeros",
            at(0, ZERO_ROW * 40 + 3, f32::INFINITY),
        ),
        ("-inf in W1 on a lit row", at(0, 7, f32::NEG_INFINITY)),
        ("NaN in W2 (NaN gradients below)", at(2, 5, f32::NAN)),
        (
            "+inf in W2 (infinite gradients below)",
            at(2, 5, f32::INFINITY),
        ),
        (
            "huge W2 (logits overflow)",
            Box::new(|w: &mut [Tensor]| w[2].data_mut().fill(1e38)),
        ),
        (
            "f32::MAX in W1 on a row of zeros (infinite in bf16)",
            at(0, ZERO_ROW * 40 + 3, f32::MAX),
        ),
    ]
}

/// Under both dtype policies: under `mixed_bfloat16` the layers compute with
/// bf16 copies of the weights, where a finite f32 may be infinite.
#[test]
fn sparse_and_dense_paths_agree_on_nan_and_infinity() {
    for (policy, optimizer) in [Policy::Float32, Policy::MixedBfloat16]
        .into_iter()
        .flat_map(|p| [Optimizer::rmsprop(), Optimizer::adam(), Optimizer::sgd()].map(|o| (p, o)))
    {
        POLICY.set(policy);
        for (what, inject) in injections() {
            let at = format!("{policy}, {optimizer}, {what}");
            let (sparse, dense) = (
                train(optimizer, true, &inject),
                train(optimizer, false, &inject),
            );
            assert_same(&sparse.weights, &dense.weights, &format!("{at}: weights"));
            assert_same(&sparse.losses, &dense.losses, &format!("{at}: losses"));
            assert_same(
                &sparse.predictions,
                &dense.predictions,
                &format!("{at}: predictions"),
            );
            let finite_in_f32 = what.contains("infinite in bf16");
            if what != "nothing" && !(finite_in_f32 && policy == Policy::Float32) {
                let reached = dense.weights.iter().any(|w| !w.is_finite())
                    || dense.predictions.iter().any(|p| p.is_nan());
                assert!(reached, "{at}: the injection reached nothing");
            }
        }
    }
}

/// `evaluate` and `predict` of a model whose first kernel holds NaN on a row
/// that only meets zeros: the dense product's NaN (`0 · NaN`) in both paths.
#[test]
fn evaluate_and_predict_agree_with_nan_on_a_row_of_zeros() {
    let (x, y) = sparse_data(40);
    let nan = |w: &mut [Tensor]| w[0].data_mut()[ZERO_ROW * 40] = f32::NAN;
    let outputs = |skip: bool| {
        let mut m = model(Optimizer::rmsprop(), skip, &nan);
        let eval = m.evaluate(&x, &y, 16).unwrap();
        let predictions = m.predict(&x, 16).unwrap();
        (eval.loss as f32, predictions.data().to_vec())
    };
    let (sparse, dense) = (outputs(true), outputs(false));
    assert!(dense.0.is_nan(), "0 · NaN spreads to the loss");
    assert_same(&[sparse.0], &[dense.0], "loss");
    assert_same(&sparse.1, &dense.1, "predictions");
}
