//! The book's next chapter: a small convnet on MNIST, in kerno.
//! Run with `KERNO_DATA=path/to/mnist cargo run --release --example convnet`.

use kerno::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // (train_images, train_labels), (test_images, test_labels) = mnist.load_data()
    let mnist = kerno::data::load(DatasetKind::Mnist, None)?;

    // model = models.Sequential()
    // model.add(layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)))
    // model.add(layers.MaxPooling2D((2, 2)))
    // model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    // model.add(layers.MaxPooling2D((2, 2)))
    // model.add(layers.Conv2D(64, (3, 3), activation="relu"))
    // model.add(layers.Flatten())
    // model.add(layers.Dense(64, activation="relu"))
    // model.add(layers.Dense(10, activation="softmax"))
    let mut model = Sequential::new(Input::shape([28, 28, 1]))
        .add(Conv2D::new(32, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new(2))
        .add(Conv2D::new(64, 3).activation(Activation::Relu))
        .add(MaxPooling2D::new(2))
        .add(Conv2D::new(64, 3).activation(Activation::Relu))
        .add(Flatten::new())
        .add(Dense::new(64, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    // model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )?;
    print!("{}", model.summary());

    // train_images = train_images.reshape((60000, 28, 28, 1)).astype("float32") / 255
    // (an image's 784 bytes are already its 28×28×1 values, row by row: NHWC)
    let train_images = mnist.train.images.scaled(255.0);
    let test_images = mnist.test.images.scaled(255.0);
    let train_labels = to_categorical(&mnist.train.labels, 10);
    let test_labels = to_categorical(&mnist.test.labels, 10);

    // model.fit(train_images, train_labels, epochs=5, batch_size=64)
    model.fit(
        &train_images,
        &train_labels,
        &FitOptions::new().epochs(5).batch_size(64),
    )?;

    // test_loss, test_acc = model.evaluate(test_images, test_labels)
    let result = model.evaluate(&test_images, &test_labels, 32)?;
    println!(
        "test_loss: {:.4} test_acc: {:.4}",
        result.loss,
        result.accuracy.unwrap_or(f64::NAN)
    );
    Ok(())
}
