//! Keras 3's semantics where they are easy to get wrong: the accuracy of a
//! one-unit output, empty data, a validation split with an empty side, and NaN
//! in an arg-max.

use kerno_model::{
    Activation, Dense, FitOptions, Loss, Metric, ModelError, Optimizer, Sequential, Verbosity,
};
use kerno_tensor::Tensor;

fn tensor(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::from_vec(shape, values.to_vec()).unwrap()
}

/// `Dense(units, activation)` on `inputs`, with the given weights, compiled with
/// `loss` and accuracy.
fn model(
    inputs: usize,
    units: usize,
    activation: Activation,
    loss: Loss,
    kernel: &[f32],
) -> Sequential {
    let mut m = Sequential::new(inputs).add(Dense::new(units, activation));
    m.set_weights(&[tensor(&[inputs, units], kernel), Tensor::zeros(&[units])])
        .unwrap();
    m.compile(Optimizer::rmsprop(), loss, &[Metric::Accuracy])
        .unwrap();
    m
}

/// Keras 3 picks `binary_accuracy` (threshold 0.5) for `"accuracy"` when the
/// model has one output: the target must equal whether the output is above 0.5.
/// An arg-max over one output would call every sample right.
#[test]
fn accuracy_of_one_output_is_binary_accuracy_at_one_half() {
    // Identity weights: the output is the input itself.
    let m = &mut model(1, 1, Activation::Linear, Loss::MeanSquaredError, &[1.0]);
    let x = tensor(&[5, 1], &[0.9, 0.2, 0.7, 0.5, 0.1]);
    let y = tensor(&[5, 1], &[1.0, 1.0, 0.0, 0.0, 0.0]);
    // Right: 0.9 -> 1, 0.5 -> 0 (not above 0.5), 0.1 -> 0; wrong: 0.2 -> 0, 0.7 -> 1.
    let eval = m.evaluate(&x, &y, 2).unwrap();
    assert_eq!(eval.accuracy, Some(3.0 / 5.0));
}

/// The accuracy `fit` logs for a one-unit model is the binary one too.
#[test]
fn fit_logs_binary_accuracy_for_one_output() {
    let m = &mut model(1, 1, Activation::Linear, Loss::MeanSquaredError, &[1.0]);
    let x = tensor(&[4, 1], &[0.9, 0.2, 0.7, 0.1]);
    let y = tensor(&[4, 1], &[1.0, 1.0, 0.0, 0.0]);
    let options = FitOptions::new()
        .epochs(1)
        .batch_size(4)
        .shuffle(false)
        .verbosity(Verbosity::Silent);
    let history = m.fit(&x, &y, &options).unwrap();
    // Measured on the batch before its update, as Keras does.
    assert_eq!(history.metric("accuracy"), vec![0.5]);
}

#[test]
fn evaluate_on_no_samples_is_an_error() {
    let m = &mut model(
        2,
        2,
        Activation::Softmax,
        Loss::CategoricalCrossentropy,
        &[0.0; 4],
    );
    let empty = Tensor::zeros(&[0, 2]);
    let error = m.evaluate(&empty, &Tensor::zeros(&[0, 2]), 32).unwrap_err();
    assert!(
        matches!(error, ModelError::InvalidArgument { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("no samples"), "{error}");
}

/// Keras splits at `floor(n · (1 − split))` and refuses a split that leaves either
/// side empty, rather than training without the validation asked for.
#[test]
fn a_validation_split_with_an_empty_side_is_an_error() {
    let m = &mut model(
        2,
        2,
        Activation::Softmax,
        Loss::CategoricalCrossentropy,
        &[0.0; 4],
    );
    let (x, y) = (
        Tensor::zeros(&[5, 2]),
        tensor(&[5, 2], &[1.0, 0.0].repeat(5)),
    );
    let quiet = |split: f64| {
        FitOptions::new()
            .epochs(1)
            .validation_split(split)
            .verbosity(Verbosity::Silent)
    };
    // floor(5 · 0.9) = 4 train, 1 validates.
    let history = m.fit(&x, &y, &quiet(0.1)).unwrap();
    assert_eq!(history.epochs[0].samples, 4);
    assert!(history.epochs[0].val_loss.is_some());
    // One sample: floor(1 · (1 − split)) = 0 train for any split.
    let one = (Tensor::zeros(&[1, 2]), tensor(&[1, 2], &[1.0, 0.0]));
    for split in [0.1, 0.5, 0.9] {
        let error = m.fit(&one.0, &one.1, &quiet(split)).unwrap_err();
        assert!(error.to_string().contains("too few"), "{split}: {error}");
    }
    // Ten samples: 0.01 gives floor(9.9) = 9 train and 1 to validate; 1e-17 gives
    // floor(10 · (1 − 1e-17)) = 10 train (1 − 1e-17 is 1.0 in f64), none to validate.
    let ten = (
        Tensor::zeros(&[10, 2]),
        tensor(&[10, 2], &[1.0, 0.0].repeat(10)),
    );
    assert!(m.fit(&ten.0, &ten.1, &quiet(0.01)).is_ok());
    let error = m.fit(&ten.0, &ten.1, &quiet(1e-17)).unwrap_err();
    assert!(error.to_string().contains("0 validate"), "{error}");
}

/// A NaN output never counts as the model's choice, wherever it stands.
#[test]
fn nan_outputs_never_win_the_accuracy_arg_max() {
    // Linear outputs [NaN, x, -x] for input x: the NaN in column 0 comes from a
    // NaN weight; the choice is among the other two.
    let nan = f32::NAN;
    let m = &mut model(
        1,
        3,
        Activation::Linear,
        Loss::MeanSquaredError,
        &[nan, 1.0, -1.0],
    );
    let x = tensor(&[2, 1], &[1.0, -1.0]);
    // Sample 0's class is 1 (x > −x), sample 1's is 2; with NaN first, a
    // comparison-based arg-max would keep index 0 for both.
    let y = tensor(&[2, 3], &[0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(m.evaluate(&x, &y, 2).unwrap().accuracy, Some(1.0));
    let predictions = m.predict(&x, 2).unwrap();
    assert_eq!(predictions.argmax_rows(), vec![1, 2]);
}
