//! The Keras MNIST notebook, step by step, in kerno.
//! Run with `KERNO_DATA=path/to/mnist cargo run --release --example mnist`.

use kerno::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (train_images, train_labels), (test_images, test_labels) = mnist.load_data()
    let mnist = kerno::data::load(DatasetKind::Mnist, None)?;

    // model = keras.Sequential([layers.Dense(512, activation="relu"), layers.Dense(10, activation="softmax")])
    let mut model = Sequential::new(28 * 28)
        .add(Dense::new(512, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    // model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )?;
    print!("{}", model.summary());

    // train_images = train_images.reshape((60000, 28 * 28)).astype("float32") / 255
    let train_images = mnist.train.images.to_tensor().reshape(&[60_000, 28 * 28])?;
    let train_images = Tensor::from_vec(
        train_images.shape(),
        train_images.data().iter().map(|p| p / 255.0).collect(),
    )?;
    let test_images = mnist.test.images.scaled(255.0); // the same values, read from the bytes on the fly
                                                       // train_labels = to_categorical(train_labels)
    let train_labels = to_categorical(&mnist.train.labels, 10);
    let test_labels = to_categorical(&mnist.test.labels, 10);

    // model.fit(train_images, train_labels, epochs=5, batch_size=128)
    model.fit(
        &train_images,
        &train_labels,
        &FitOptions::new().epochs(5).batch_size(128),
    )?;

    // test_loss, test_acc = model.evaluate(test_images, test_labels)
    let result = model.evaluate(&test_images, &test_labels, 32)?;
    println!("test_acc: {:.4}", result.accuracy.unwrap_or(f64::NAN));

    // predictions = model.predict(test_images[0:10])
    let first = mnist
        .test
        .images
        .to_tensor()
        .slice_rows(0..10)?
        .reshape(&[10, 28 * 28])?;
    let first = Tensor::from_vec(
        first.shape(),
        first.data().iter().map(|p| p / 255.0).collect(),
    )?;
    let predictions = model.predict(&first, 32)?;
    println!(
        "predicted {:?}, true {:?}",
        predictions.argmax_rows(),
        &mnist.test.labels[..10]
    );
    Ok(())
}
