//! kerno: the Keras MNIST workflow in pure Rust, fast on a CPU.
//!
//! The README's quick start, compiled by `cargo test`:
//!
//! ```no_run
//! use kerno::prelude::*;
//!
//! let mnist = kerno::data::load(DatasetKind::Mnist, None)?;
//! let x_train = mnist.train.images.scaled(255.0); // x / 255, read from the bytes on the fly
//! let y_train = to_categorical(&mnist.train.labels, 10);
//!
//! let mut model = Sequential::new(28 * 28)
//!     .add(Dense::new(512, Activation::Relu))
//!     .add(Dense::new(10, Activation::Softmax));
//! model.compile(Optimizer::rmsprop(), Loss::CategoricalCrossentropy, &[Metric::Accuracy])?;
//! let mut log = CsvLogger::new("run.csv");
//! let options = FitOptions::new().epochs(5).batch_size(128).validation_split(0.1);
//! let history = model.fit_with_callbacks(&x_train, &y_train, &options, &mut [&mut log])?;
//! println!("{:?}", history.metric("val_accuracy"));
//!
//! let x_test = mnist.test.images.scaled(255.0);
//! let result = model.evaluate(&x_test, &to_categorical(&mnist.test.labels, 10), 128)?;
//! let classes = model.predict(&x_test, 128)?.argmax_rows();
//! model.save("mnist.safetensors")?;
//! let again = Sequential::load("mnist.safetensors")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub use kerno_data as data;
pub use kerno_model as model;
pub use kerno_tensor as tensor;

/// The names a training script needs.
pub mod prelude {
    pub use kerno_data::{to_categorical, Dataset, DatasetKind};
    pub use kerno_model::{
        Activation, Callback, Control, Conv2D, CsvLogger, Dense, Dropout, EarlyStopping,
        FitOptions, Flatten, History, Input, Loss, MaxPooling2D, Metric, ModelCheckpoint,
        Optimizer, Padding, Policy, RunSettings, Sequential, TerminateOnNaN, TrainingCheckpoint,
        Verbosity,
    };
    pub use kerno_tensor::{Samples, Tensor};
}
