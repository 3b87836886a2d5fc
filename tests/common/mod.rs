//! MNIST and the notebook's model, for the tests that train on the real data.

use kerno::prelude::*;

/// MNIST from `KERNO_DATA` (or the other usual places); the test fails without it.
pub fn mnist() -> Dataset {
    kerno::data::load(DatasetKind::Mnist, None).unwrap_or_else(|e| {
        panic!("MNIST is required for this test (set KERNO_DATA to its folder): {e}")
    })
}

/// The notebook's `model.fit(x_train, y_train, epochs=5, batch_size=128)` on
/// `mnist`, from seed 1.
#[allow(dead_code)] // Each test file compiles this module; not all of them use this.
pub fn trained_notebook_model(mnist: &Dataset, verbosity: Verbosity) -> (Sequential, History) {
    let mut model = notebook_model(1);
    let x_train = mnist.train.images.scaled(255.0);
    let y_train = to_categorical(&mnist.train.labels, 10);
    let options = FitOptions::new()
        .epochs(5)
        .batch_size(128)
        .verbosity(verbosity);
    let history = model.fit(&x_train, &y_train, &options).unwrap();
    (model, history)
}

/// `Dense(512, relu) → Dense(10, softmax)`, compiled with RMSprop, categorical
/// cross-entropy and accuracy.
pub fn notebook_model(seed: u64) -> Sequential {
    let mut model = Sequential::new(784)
        .with_seed(seed)
        .add(Dense::new(512, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    model
        .compile(
            Optimizer::rmsprop(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
    model
}
