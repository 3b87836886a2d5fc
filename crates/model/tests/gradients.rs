//! Back-propagation against central finite differences of an f64 reference
//! forward pass, for every activation and loss.

use kerno_model::{Activation, Dense, Loss, Optimizer, Sequential};
use kerno_tensor::{reference, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUTS: usize = 5;
const HIDDEN: usize = 4;
const OUTPUTS: usize = 3;
const BATCH: usize = 6;

/// The mean loss of the two-layer model with parameters `w`, in f64, as Keras defines it.
fn reference_loss(w: &[Vec<f64>], acts: [Activation; 2], loss: Loss, x: &[f64], y: &[f64]) -> f64 {
    let mut h = reference::matmul_f64(x, &w[0], BATCH, INPUTS, HIDDEN);
    h.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += w[1][i % HIDDEN]);
    reference::activation(acts[0], &mut h, HIDDEN);
    let mut z = reference::matmul_f64(&h, &w[2], BATCH, HIDDEN, OUTPUTS);
    z.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += w[3][i % OUTPUTS]);
    let one_hot = |y: &[f64]| -> Vec<f64> {
        if loss == Loss::SparseCategoricalCrossentropy {
            y.iter()
                .flat_map(|&c| (0..OUTPUTS).map(move |j| (j == c as usize) as u8 as f64))
                .collect()
        } else {
            y.to_vec()
        }
    };
    let total = match (acts[1], loss) {
        (
            Activation::Softmax,
            Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy,
        ) => reference::softmax_xent(&z, &one_hot(y), OUTPUTS).0,
        (_, Loss::MeanSquaredError) => {
            reference::activation(acts[1], &mut z, OUTPUTS);
            reference::mean_squared_error(&z, y, OUTPUTS)
        }
        _ => {
            reference::activation(acts[1], &mut z, OUTPUTS);
            reference::categorical_xent_probs(&z, &one_hot(y), OUTPUTS)
        }
    };
    total / BATCH as f64
}

fn check(hidden: Activation, output: Activation, loss: Loss, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..BATCH * INPUTS)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let y: Vec<f32> = match loss {
        Loss::SparseCategoricalCrossentropy => (0..BATCH).map(|i| (i % OUTPUTS) as f32).collect(),
        Loss::CategoricalCrossentropy => (0..BATCH * OUTPUTS)
            .map(|i| (i % OUTPUTS == i / OUTPUTS % OUTPUTS) as u8 as f32)
            .collect(),
        Loss::MeanSquaredError => (0..BATCH * OUTPUTS)
            .map(|_| rng.gen_range(0.0..1.0))
            .collect(),
    };
    let y_shape: &[usize] = if loss == Loss::SparseCategoricalCrossentropy {
        &[BATCH]
    } else {
        &[BATCH, OUTPUTS]
    };
    let mut model = Sequential::new(INPUTS)
        .with_seed(seed)
        .add(Dense::new(HIDDEN, hidden))
        .add(Dense::new(OUTPUTS, output));
    model.compile(Optimizer::sgd(), loss, &[]).unwrap();
    // Non-zero biases, so that every bias path is exercised.
    let mut weights = model.weights();
    weights[1]
        .data_mut()
        .iter_mut()
        .for_each(|b| *b = rng.gen_range(-0.5..0.5));
    weights[3]
        .data_mut()
        .iter_mut()
        .for_each(|b| *b = rng.gen_range(-0.5..0.5));
    model.set_weights(&weights).unwrap();

    let xt = Tensor::from_vec(&[BATCH, INPUTS], x.clone()).unwrap();
    let yt = Tensor::from_vec(y_shape, y.clone()).unwrap();
    let analytic = model.gradients(&xt, &yt).unwrap();

    let w64: Vec<Vec<f64>> = weights
        .iter()
        .map(|t| t.data().iter().map(|&v| v as f64).collect())
        .collect();
    let (x64, y64): (Vec<f64>, Vec<f64>) = (
        x.iter().map(|&v| v as f64).collect(),
        y.iter().map(|&v| v as f64).collect(),
    );
    let h = 1e-6;
    for (p, grad) in analytic.iter().enumerate() {
        for i in 0..grad.len() {
            let (mut plus, mut minus) = (w64.clone(), w64.clone());
            plus[p][i] += h;
            minus[p][i] -= h;
            let numeric = (reference_loss(&plus, [hidden, output], loss, &x64, &y64)
                - reference_loss(&minus, [hidden, output], loss, &x64, &y64))
                / (2.0 * h);
            let got = grad.data()[i] as f64;
            assert!(
                (got - numeric).abs() <= 1e-4 * numeric.abs().max(0.05),
                "{hidden}/{output}/{loss}: param {p}[{i}] analytic {got} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn every_hidden_activation_with_fused_softmax_crossentropy() {
    for (seed, act) in Activation::ALL.into_iter().enumerate() {
        check(
            act,
            Activation::Softmax,
            Loss::CategoricalCrossentropy,
            seed as u64,
        );
    }
}

#[test]
fn sparse_categorical_crossentropy() {
    check(
        Activation::Relu,
        Activation::Softmax,
        Loss::SparseCategoricalCrossentropy,
        11,
    );
}

#[test]
fn crossentropy_on_probabilities_that_are_not_softmax() {
    check(
        Activation::Tanh,
        Activation::Sigmoid,
        Loss::CategoricalCrossentropy,
        12,
    );
}

#[test]
fn mean_squared_error_through_every_output_activation() {
    for (seed, act) in Activation::ALL.into_iter().enumerate() {
        check(
            Activation::Sigmoid,
            act,
            Loss::MeanSquaredError,
            20 + seed as u64,
        );
    }
}
