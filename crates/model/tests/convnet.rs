//! The convnet's promises beyond its gradients: the same bits on one and two
//! threads, a run interrupted and resumed from its checkpoint ending with the
//! weights of one that never stopped (dropout's masks included), and model
//! files that keep every layer (and version-1 files that still load).

use kerno_model::{
    Activation, Conv2D, Dense, Dropout, FitOptions, Flatten, Input, Loss, MaxPooling2D, Metric,
    Optimizer, Padding, Policy, RunSettings, Sequential, Verbosity,
};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 150 images in batches of 32: four full steps and a last one of 22.
mod common;
use common::{bits, InterruptAt};

const SAMPLES: usize = 150;
const BATCH: usize = 32;
const SIDE: usize = 12;

/// Images whose brightest quarter is the label (of 4), on noise.
fn data() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut x = vec![0.0f32; SAMPLES * SIDE * SIDE];
    let mut y = vec![0.0f32; SAMPLES * 4];
    for i in 0..SAMPLES {
        let label = i % 4;
        y[i * 4 + label] = 1.0;
        for p in 0..SIDE * SIDE {
            let quarter = (p / SIDE / (SIDE / 2)) * 2 + (p % SIDE) / (SIDE / 2);
            let lit = if quarter == label { 0.8 } else { 0.0 };
            x[i * SIDE * SIDE + p] = lit + rng.gen_range(0.0..0.3);
        }
    }
    (
        Tensor::from_vec(&[SAMPLES, SIDE * SIDE], x).unwrap(),
        Tensor::from_vec(&[SAMPLES, 4], y).unwrap(),
    )
}

/// The book's convnet in small, with a dropout and a padded, strided convolution.
fn model() -> Sequential {
    model_under(Policy::Float32)
}

/// [`model`] computing under `policy`.
fn model_under(policy: Policy) -> Sequential {
    let mut m = Sequential::new(Input::shape([SIDE, SIDE, 1]))
        .with_seed(4)
        .with_dtype_policy(policy)
        .add(Conv2D::new(8, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new(2))
        .add(
            Conv2D::new(8, 3)
                .padding(Padding::Same)
                .strides(2)
                .activation(Activation::Relu),
        )
        .add(Flatten::new())
        .add(Dropout::new(0.3))
        .add(Dense::new(16, Activation::Relu))
        .add(Dense::new(4, Activation::Softmax));
    m.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    m
}

fn options() -> FitOptions<'static> {
    FitOptions::new()
        .epochs(3)
        .batch_size(BATCH)
        .verbosity(Verbosity::Silent)
}

fn trained_on(threads: usize, policy: Policy) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let (x, y) = data();
        let mut m = model_under(policy);
        let history = m.fit(&x, &y, &options()).unwrap();
        let loss = history.metric("loss");
        assert!(loss[2] < loss[0], "the convnet learns: {loss:?}");
        bits(&m)
    })
}

/// Under both dtype policies, which train to different weights.
#[test]
fn the_convnet_trains_to_the_same_bits_on_one_and_two_threads() {
    let f32_trained = trained_on(1, Policy::Float32);
    assert_eq!(f32_trained, trained_on(2, Policy::Float32));
    let bf16_trained = trained_on(1, Policy::MixedBfloat16);
    assert_eq!(bf16_trained, trained_on(2, Policy::MixedBfloat16));
    assert_ne!(f32_trained, bf16_trained);
}

/// Under both dtype policies: the checkpoint keeps the run's.
#[test]
fn an_interrupted_convnet_resumes_to_the_uninterrupted_weights() {
    let (x, y) = data();
    for policy in [Policy::Float32, Policy::MixedBfloat16] {
        let mut whole = model_under(policy);
        whole.fit(&x, &y, &options()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.ckpt");
        let mut first = model_under(policy);
        let mut stop = InterruptAt { epoch: 1, step: 2 };
        let history = first
            .fit_with_callbacks(&x, &y, &options(), &mut [&mut stop])
            .unwrap();
        let progress = history.interrupted.expect("the run was interrupted");
        first
            .save_checkpoint(&path, &progress, &RunSettings::of(&options()))
            .unwrap();
        let mut checkpoint = Sequential::load_checkpoint(&path).unwrap();
        assert_eq!(checkpoint.model.dtype_policy(), policy);
        let resume = checkpoint.resume_options().verbosity(Verbosity::Silent);
        checkpoint.model.fit(&x, &y, &resume).unwrap();
        assert_eq!(bits(&checkpoint.model), bits(&whole), "{policy}");
    }
}

/// A convolution and the max pooling right above it run as one pass each way
/// (its output pooled as it is made, its gradient made from the pooling's);
/// with a `Dropout(0)` between them, an identity that keeps them apart, they
/// run one after the other. Both train to the same bits and predict alike,
/// under both dtype policies (`mixed_bfloat16` rounds the convolution's output
/// before the pooling either way).
#[test]
fn a_convolution_pooled_as_made_trains_as_the_two_layers_apart() {
    let (x, y) = data();
    let model = |apart: bool, policy: Policy| {
        let mut m = Sequential::new(Input::shape([SIDE, SIDE, 1]))
            .with_seed(4)
            .with_dtype_policy(policy)
            .add(Conv2D::new(8, 3).activation(Activation::Relu));
        if apart {
            m = m.add(Dropout::new(0.0));
        }
        let mut m = m
            .add(MaxPooling2D::new(2))
            .add(Conv2D::new(8, 2))
            .add(MaxPooling2D::new(2))
            .add(Flatten::new())
            .add(Dense::new(4, Activation::Softmax));
        m.compile(Optimizer::rmsprop(), Loss::CategoricalCrossentropy, &[])
            .unwrap();
        m
    };
    for policy in [Policy::Float32, Policy::MixedBfloat16] {
        let mut pooled_as_made = model(false, policy);
        let mut apart = model(true, policy);
        apart.set_weights(&pooled_as_made.weights()).unwrap();
        pooled_as_made.fit(&x, &y, &options()).unwrap();
        apart.fit(&x, &y, &options()).unwrap();
        assert_eq!(bits(&pooled_as_made), bits(&apart), "{policy}");
        assert_eq!(
            pooled_as_made.predict(&x, 64).unwrap(),
            apart.predict(&x, 64).unwrap(),
            "{policy}"
        );
    }
}

#[test]
fn a_saved_convnet_loads_with_its_layers_weights_and_predictions() {
    let (x, y) = data();
    let mut trained = model();
    trained.fit(&x, &y, &options().epochs(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convnet.safetensors");
    trained.save(&path).unwrap();
    let mut loaded = Sequential::load(&path).unwrap();
    assert_eq!(loaded.summary(), trained.summary());
    assert_eq!(loaded.weights(), trained.weights());
    assert_eq!(
        loaded.predict(&x, 64).unwrap(),
        trained.predict(&x, 64).unwrap()
    );
    // Into a fresh model of the same layers (another seed): the same weights.
    let mut fresh = model().with_seed(99);
    assert_ne!(fresh.weights(), trained.weights());
    fresh.load_weights(&path).unwrap();
    assert_eq!(fresh.weights(), trained.weights());
    // Into a model of other layers: an error that says both.
    let mut mlp = Sequential::new(SIDE * SIDE)
        .add(Dense::new(16, Activation::Relu))
        .add(Dense::new(4, Activation::Softmax));
    let error = mlp.load_weights(&path).unwrap_err().to_string();
    assert!(
        error.contains("conv2d") && error.contains("but the model is"),
        "{error}"
    );
}

#[test]
fn a_version_1_model_file_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.safetensors");
    std::fs::write(&path, kerno_testkit::targets::version_1_model_file()).unwrap();
    let mut model = Sequential::load(&path).unwrap();
    assert_eq!(model.input_shape(), &[4]);
    assert_eq!(model.layers()[0].name(), "dense");
    let x = Tensor::from_vec(&[1, 4], vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    // relu(x·kernel + bias): rows 0 and 3 of the kernel, plus the bias.
    let out = model.predict(&x, 1).unwrap();
    assert_eq!(
        out.data(),
        &[0.0 + 1.5 + 0.5, (0.25f32 + 1.75 - 0.5).max(0.0)]
    );
    // Saved again, it is a version-2 file that loads to the same model.
    let again = dir.path().join("v2.safetensors");
    model.save(&again).unwrap();
    assert_eq!(Sequential::load(&again).unwrap().weights(), model.weights());
}

#[test]
fn layers_that_do_not_fit_their_input_are_errors_at_compile() {
    let mut dense_on_images =
        Sequential::new(Input::shape([4, 4, 1])).add(Dense::new(3, Activation::Relu));
    let error = dense_on_images
        .compile(Optimizer::rmsprop(), Loss::MeanSquaredError, &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("add a Flatten layer"), "{error}");
    let mut window_too_large = Sequential::new(Input::shape([2, 2, 1])).add(Conv2D::new(3, 3));
    let error = window_too_large
        .compile(Optimizer::rmsprop(), Loss::MeanSquaredError, &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("does not fit its input (None, 2, 2, 1)"),
        "{error}"
    );
    let mut zero_stride =
        Sequential::new(Input::shape([4, 4, 1])).add(MaxPooling2D::new(2).strides(0));
    let error = zero_stride
        .compile(Optimizer::rmsprop(), Loss::MeanSquaredError, &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("strides [0, 0] must be at least 1"),
        "{error}"
    );
    // Nor does a model missing a layer predict with the layers it has.
    let mut missing_a_layer = Sequential::new(Input::shape([4, 4, 1]))
        .add(Conv2D::new(2, 3))
        .add(Dense::new(3, Activation::Softmax));
    let x = Tensor::zeros(&[1, 16]);
    let error = missing_a_layer.predict(&x, 1).unwrap_err().to_string();
    assert!(error.contains("layer 'dense' (1)"), "{error}");
    // Sizes past usize are errors, not overflows.
    let mut too_many_filters =
        Sequential::new(Input::shape([28, 28, 1])).add(Conv2D::new(usize::MAX / 4, 3));
    let error = too_many_filters
        .compile(Optimizer::rmsprop(), Loss::MeanSquaredError, &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("too large"), "{error}");
    let mut bad_rate = Sequential::new(4).add(Dropout::new(1.0));
    assert!(bad_rate
        .compile(Optimizer::rmsprop(), Loss::MeanSquaredError, &[])
        .is_err());
}
