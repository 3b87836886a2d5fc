//! The notebook on the real MNIST: fails when MNIST cannot be found (set KERNO_DATA).

mod common;

use kerno::prelude::*;

#[test]
fn notebook_reaches_keras_accuracy_on_real_mnist() {
    let mnist = common::mnist();
    assert_eq!(
        (mnist.train.images.len(), mnist.test.images.len()),
        (60_000, 10_000)
    );
    assert_eq!(mnist.train.images.features(), 784);

    let (mut model, history) = common::trained_notebook_model(&mnist, Verbosity::EpochLines);
    let losses = history.metric("loss");
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "training loss must fall every epoch: {losses:?}"
    );

    let x_test = mnist.test.images.scaled(255.0);
    let y_test = to_categorical(&mnist.test.labels, 10);
    let result = model.evaluate(&x_test, &y_test, 32).unwrap();
    let accuracy = result.accuracy.unwrap();
    println!("test_loss: {:.4} test_acc: {accuracy:.4}", result.loss);
    assert!(accuracy >= 0.975, "test accuracy {accuracy} is below 0.975");

    let predictions = model.predict(&x_test, 128).unwrap().argmax_rows();
    let right = predictions
        .iter()
        .zip(&mnist.test.labels)
        .filter(|(p, l)| **p == **l as usize)
        .count();
    assert_eq!(
        right as f64 / 10_000.0,
        accuracy,
        "predict agrees with evaluate"
    );
}
