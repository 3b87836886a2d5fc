//! fit / evaluate / predict behaviour on small generated problems.

use kerno_model::{
    Activation, Control, Dense, EarlyStopping, FitOptions, Loss, Metric, ModelCheckpoint,
    ModelError, Optimizer, Policy, Sequential, TerminateOnNaN, Verbosity,
};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Three separable blobs in 8 dimensions, one-hot labelled.
fn blobs(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(n * 8);
    let mut y = vec![0.0; n * 3];
    for i in 0..n {
        let class = i % 3;
        y[i * 3 + class] = 1.0;
        for d in 0..8 {
            let centre = if d % 3 == class { 2.0 } else { 0.0 };
            x.push(centre + rng.gen_range(-0.5..0.5));
        }
    }
    (
        Tensor::from_vec(&[n, 8], x).unwrap(),
        Tensor::from_vec(&[n, 3], y).unwrap(),
    )
}

fn model(seed: u64) -> Sequential {
    model_of(8, 16, seed)
}

/// `inputs → Dense(hidden, relu) → Dense(3, softmax)`, compiled with RMSprop.
fn model_of(inputs: usize, hidden: usize, seed: u64) -> Sequential {
    let mut m = Sequential::new(inputs)
        .with_seed(seed)
        .add(Dense::new(hidden, Activation::Relu))
        .add(Dense::new(3, Activation::Softmax));
    m.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    m
}

fn quiet(epochs: usize) -> FitOptions<'static> {
    FitOptions::new()
        .epochs(epochs)
        .batch_size(16)
        .verbosity(Verbosity::Silent)
}

#[test]
fn learns_separable_blobs_and_reports_like_keras() {
    let (x, y) = blobs(300, 1);
    let mut m = model(1);
    let history = m.fit(&x, &y, &quiet(10).validation_split(0.2)).unwrap();
    assert_eq!(history.epochs.len(), 10);
    assert_eq!(history.epochs[0].samples, 240);
    assert_eq!(history.epochs[0].steps, 15);
    let losses = history.metric("loss");
    assert!(losses[9] < losses[0] / 2.0, "{losses:?}");
    assert_eq!(history.metric("val_loss").len(), 10);
    let eval = m.evaluate(&x, &y, 32).unwrap();
    assert!(eval.accuracy.unwrap() > 0.95, "{eval:?}");
    // Evaluation does not depend on its batch size.
    let eval_7 = m.evaluate(&x, &y, 7).unwrap();
    assert!((eval.loss - eval_7.loss).abs() < 1e-9);
    let probs = m.predict(&x, 64).unwrap();
    assert_eq!(probs.shape(), &[300, 3]);
    assert!(probs
        .data()
        .chunks(3)
        .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let (x, y) = blobs(100, 2);
    let train = |seed| {
        let mut m = model(seed);
        m.fit(&x, &y, &quiet(3)).unwrap();
        m.weights()
    };
    assert_eq!(train(5), train(5));
    assert_ne!(train(5), train(6));
}

#[test]
fn glorot_uniform_init_and_zero_bias() {
    let m = Sequential::new(784).add(Dense::new(512, Activation::Relu));
    let w = m.weights();
    let limit = (6.0f32 / (784.0 + 512.0)).sqrt();
    assert!(w[0].data().iter().all(|v| v.abs() <= limit));
    let mean_abs = w[0].data().iter().map(|v| v.abs()).sum::<f32>() / w[0].len() as f32;
    assert!(
        (mean_abs - limit / 2.0).abs() < 0.01 * limit,
        "uniform on ±limit has mean |w| = limit/2"
    );
    assert!(w[1].data().iter().all(|&b| b == 0.0));
}

#[test]
fn save_load_round_trip_and_mismatch_errors() {
    let (x, y) = blobs(60, 3);
    let mut m = model(3);
    m.fit(&x, &y, &quiet(2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    m.save(&path).unwrap();
    m.save(&path).unwrap(); // over an existing file
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary files may remain: {names:?}");

    let mut loaded = Sequential::load(&path).unwrap();
    assert_eq!(loaded.weights(), m.weights());
    assert_eq!(loaded.predict(&x, 32).unwrap(), m.predict(&x, 32).unwrap());

    let mut other = model(9);
    other.load_weights(&path).unwrap();
    assert_eq!(other.weights(), m.weights());

    let mut wider = Sequential::new(8)
        .add(Dense::new(17, Activation::Relu))
        .add(Dense::new(3, Activation::Softmax));
    let err = wider.load_weights(&path).unwrap_err();
    assert!(
        matches!(err, ModelError::BadModelFile { .. })
            && err.to_string().contains("model.safetensors"),
        "{err}"
    );

    std::fs::write(&path, b"definitely not safetensors").unwrap();
    let err = Sequential::load(&path).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn early_stopping_with_restored_best_weights_and_checkpoints() {
    let (x, y) = blobs(90, 4);
    let mut m = model(4);
    let dir = tempfile::tempdir().unwrap();
    let mut checkpoint = ModelCheckpoint::new(dir.path().join("epoch-{epoch}.safetensors"));
    // Only the first epoch counts as an improvement: stop after two more.
    let mut stop = EarlyStopping::new("loss", 2)
        .min_delta(1e9)
        .restore_best_weights(true);
    let history = m
        .fit_with_callbacks(&x, &y, &quiet(20), &mut [&mut checkpoint, &mut stop])
        .unwrap();
    assert_eq!(history.epochs.len(), 3);
    assert_eq!(stop.stopped_epoch, Some(2));
    let first = Sequential::load(dir.path().join("epoch-01.safetensors")).unwrap();
    assert!(dir.path().join("epoch-03.safetensors").exists());
    assert_eq!(
        m.weights(),
        first.weights(),
        "best (first-epoch) weights are restored"
    );
}

#[test]
fn early_stopping_on_validation_loss_needs_validation_data() {
    let (x, y) = blobs(30, 5);
    let mut m = model(5);
    let err = m
        .fit_with_callbacks(&x, &y, &quiet(2), &mut [&mut EarlyStopping::default()])
        .unwrap_err();
    assert!(err.to_string().contains("val_loss"), "{err}");
}

#[test]
fn a_nan_loss_stops_training_naming_epoch_and_step() {
    let (x, y) = blobs(64, 6);
    let mut bad = x.clone();
    bad.data_mut()[20 * 8] = f32::NAN; // sample 20, in the second batch of 16 without shuffling
    let mut m = model(6);
    let err = m
        .fit_with_callbacks(
            &bad,
            &y,
            &quiet(3).shuffle(false),
            &mut [&mut TerminateOnNaN],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::NonFiniteLoss {
                epoch: 1,
                step: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let (x, y) = blobs(30, 7);
    let mut uncompiled = Sequential::new(8).add(Dense::new(3, Activation::Softmax));
    assert!(matches!(
        uncompiled.fit(&x, &y, &quiet(1)),
        Err(ModelError::NotCompiled)
    ));
    let mut m = model(7);
    assert!(m.fit(&x, &y, &quiet(1).batch_size(0)).is_err());
    assert!(m.fit(&x, &y, &quiet(1).validation_split(1.0)).is_err());
    let narrow = Tensor::zeros(&[30, 7]);
    assert!(matches!(
        m.fit(&narrow, &y, &quiet(1)),
        Err(ModelError::Shape { .. })
    ));
    let short = Tensor::zeros(&[29, 3]);
    assert!(matches!(
        m.fit(&x, &short, &quiet(1)),
        Err(ModelError::Shape { .. })
    ));
    let mut lr = Sequential::new(8).add(Dense::new(3, Activation::Softmax));
    assert!(lr
        .compile(
            Optimizer::sgd().with_learning_rate(f32::NAN),
            Loss::MeanSquaredError,
            &[]
        )
        .is_err());
    assert!(lr
        .compile(
            Optimizer::adam().with_learning_rate(-1.0),
            Loss::MeanSquaredError,
            &[]
        )
        .is_err());
    let mut sparse = Sequential::new(8).add(Dense::new(3, Activation::Softmax));
    sparse
        .compile(
            Optimizer::adam(),
            Loss::SparseCategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
    let out_of_range = Tensor::from_vec(&[30], vec![3.0; 30]).unwrap();
    assert!(sparse.fit(&x, &out_of_range, &quiet(1)).is_err());
    let labels = Tensor::from_vec(&[30], (0..30).map(|i| (i % 3) as f32).collect()).unwrap();
    sparse.fit(&x, &labels, &quiet(1)).unwrap();
}

#[test]
fn a_batch_size_beyond_the_data_means_one_batch_and_allocates_only_for_the_data() {
    let (x, y) = blobs(50, 4);
    let mut m = model(4);
    let huge = usize::MAX / 2;
    let history = m.fit(&x, &y, &quiet(1).batch_size(huge)).unwrap();
    assert_eq!(history.epochs[0].steps, 1);
    assert!(m.evaluate(&x, &y, huge).is_ok());
    assert_eq!(m.predict(&x, huge).unwrap().shape(), &[50, 3]);
}

/// Blobs on a background of zeros, a tenth of the inputs lit (as MNIST's pixels):
/// batches sparse enough for the first layer to skip their zeros.
fn sparse_blobs(n: usize, seed: u64) -> (Tensor, Tensor) {
    let (x, y) = blobs(n, seed);
    let lit: Vec<f32> = x
        .data()
        .chunks(8)
        .flat_map(|row| (0..80).map(move |d| if d % 10 == 0 { row[d / 10] } else { 0.0 }))
        .collect();
    (Tensor::from_vec(&[n, 80], lit).unwrap(), y)
}

/// Under either dtype policy (`mixed_bfloat16` rounds the nonzeros, or the
/// gathered values, to bf16).
#[test]
fn skipping_the_zeros_of_sparse_inputs_changes_no_bit() {
    let (x, y) = sparse_blobs(300, 5);
    for policy in [Policy::Float32, Policy::MixedBfloat16] {
        let train = |skip: bool| {
            let mut m = model_of(80, 40, 5).with_dtype_policy(policy);
            m.skip_input_zeros(skip);
            let history = m.fit(&x, &y, &quiet(3)).unwrap();
            let accuracy = history.metric("accuracy");
            let predictions = m.predict(&x, 64).unwrap();
            (m.weights(), accuracy, predictions)
        };
        let (sparse, dense) = (train(true), train(false));
        assert!(sparse.1.last().unwrap() > &0.9, "{policy}: {:?}", sparse.1);
        assert_eq!(sparse.1, dense.1, "{policy}");
        let bits = |ts: &[Tensor]| -> Vec<u32> {
            ts.iter()
                .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
                .collect()
        };
        assert_eq!(bits(&sparse.0), bits(&dense.0), "{policy}");
        assert_eq!(bits(&[sparse.2]), bits(&[dense.2]), "{policy}");
    }
}

fn weight_bits(m: &Sequential) -> Vec<u32> {
    m.weights()
        .iter()
        .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
        .collect()
}

/// The rows `range` of `t`.
fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Tensor {
    t.slice_rows(range).unwrap()
}

/// `fit` loads each batch while the step before it updates the weights; a batch
/// given whole to `train_on_batch` is loaded by its own step. Both must train on
/// the same samples, dense batches and sparse ones alike.
#[test]
fn fit_trains_on_the_batches_train_on_batch_is_given() {
    for (x, y) in [blobs(100, 7), sparse_blobs(100, 7)] {
        let inputs = x.shape()[1];
        let mut fitted = model_of(inputs, 40, 7);
        let options = quiet(2).shuffle(false);
        fitted.fit(&x, &y, &options).unwrap();
        let mut stepped = model_of(inputs, 40, 7);
        for _ in 0..2 {
            for first in (0..100).step_by(16) {
                let batch = first..(first + 16).min(100);
                stepped
                    .train_on_batch(&rows(&x, batch.clone()), &rows(&y, batch))
                    .unwrap();
            }
        }
        assert_eq!(weight_bits(&fitted), weight_bits(&stepped));
    }
}

/// Interrupts `fit` after its first step.
struct InterruptAfterOneStep;

impl kerno_model::Callback for InterruptAfterOneStep {
    fn on_batch_end(&mut self, _: usize, _: usize, _: f32) -> Result<Control, ModelError> {
        Ok(Control::Interrupt)
    }
}

/// A `fit` that stops after a step has loaded the next batch leaves that batch
/// behind: a later `fit` that starts with the same samples' indices, but of other
/// data, must not train on it.
#[test]
fn a_batch_loaded_ahead_is_not_used_by_a_later_fit_on_other_data() {
    let (first_x, first_y) = sparse_blobs(64, 1);
    let (other_x, other_y) = sparse_blobs(64, 2);
    let mut interrupted = model_of(80, 40, 3);
    let history = interrupted
        .fit_with_callbacks(
            &first_x,
            &first_y,
            &quiet(1).shuffle(false),
            &mut [&mut InterruptAfterOneStep],
        )
        .unwrap();
    // Resumed at the second step: the samples of the batch loaded ahead.
    let after_one_step = history.interrupted.unwrap();
    assert_eq!(after_one_step.step, 1);
    let resumed = quiet(1).shuffle(false).resume_from(after_one_step);
    interrupted.fit(&other_x, &other_y, &resumed).unwrap();

    let mut stepped = model_of(80, 40, 3);
    stepped
        .train_on_batch(&rows(&first_x, 0..16), &rows(&first_y, 0..16))
        .unwrap();
    stepped.fit(&other_x, &other_y, &resumed).unwrap();
    assert_eq!(weight_bits(&interrupted), weight_bits(&stepped));
}

/// A sparse batch of bytes compresses straight from them, one of f32 values after
/// its gather: the same entries, so the same training and predictions, bit for bit.
#[test]
fn sparse_bytes_train_as_their_scaled_values() {
    let (x, y) = sparse_blobs(200, 11);
    let bytes: Vec<u8> = x.data().iter().map(|&v| (v.abs() * 60.0) as u8).collect();
    let from_bytes = kerno_tensor::ScaledBytes::new(&bytes, 80, 255.0);
    let from_values = from_bytes.to_tensor();
    for policy in [Policy::Float32, Policy::MixedBfloat16] {
        let train = |x: &dyn kerno_tensor::Samples| {
            let mut m = model_of(80, 40, 11).with_dtype_policy(policy);
            m.fit(x, &y, &quiet(2)).unwrap();
            (weight_bits(&m), m.predict(x, 64).unwrap())
        };
        let (bytes_trained, values_trained) = (train(&from_bytes), train(&from_values));
        assert_eq!(bytes_trained.0, values_trained.0, "{policy}");
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&bytes_trained.1), bits(&values_trained.1), "{policy}");
    }
}

/// A sparse batch's first layer runs apart from the layers above it (its columns
/// are built meanwhile), so the bias gradient of each layer must still be summed
/// exactly once: deeper models, with and without relu under the second layer,
/// train to the dense path's bits.
#[test]
fn deeper_models_on_sparse_inputs_train_to_the_dense_bits() {
    let (x, y) = sparse_blobs(120, 13);
    for first in [Activation::Relu, Activation::Tanh] {
        let train = |skip: bool| {
            let mut m = Sequential::new(80)
                .with_seed(13)
                .add(Dense::new(24, first))
                .add(Dense::new(12, Activation::Tanh))
                .add(Dense::new(3, Activation::Softmax));
            m.compile(
                Optimizer::rmsprop(),
                Loss::CategoricalCrossentropy,
                &[Metric::Accuracy],
            )
            .unwrap();
            m.skip_input_zeros(skip);
            m.fit(&x, &y, &quiet(2)).unwrap();
            weight_bits(&m)
        };
        assert_eq!(train(true), train(false), "first layer {first:?}");
    }
}
