//! kerno: the Keras MNIST workflow in pure Rust, fast on a CPU.
//!
//! ```no_run
//! use kerno::prelude::*;
//!
//! let mnist = kerno::data::load(DatasetKind::Mnist, None)?;
//! let x_train = mnist.train.images.scaled(255.0);
//! let y_train = to_categorical(&mnist.train.labels, 10);
//! let mut model = Sequential::new(28 * 28)
//!     .add(Dense::new(512, Activation::Relu))
//!     .add(Dense::new(10, Activation::Softmax));
//! model.compile(Optimizer::rmsprop(), Loss::CategoricalCrossentropy, &[Metric::Accuracy])?;
//! model.fit(&x_train, &y_train, &FitOptions::new().epochs(5).batch_size(128))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use kerno_data as data;
pub use kerno_model as model;
pub use kerno_tensor as tensor;

/// The names a training script needs.
pub mod prelude {
    pub use kerno_data::{to_categorical, Dataset, DatasetKind};
    pub use kerno_model::{
        Activation, Callback, Control, Dense, EarlyStopping, FitOptions, History, Loss, Metric,
        ModelCheckpoint, Optimizer, RunSettings, Sequential, TerminateOnNaN, TrainingCheckpoint,
        Verbosity,
    };
    pub use kerno_tensor::{Samples, Tensor};
}
