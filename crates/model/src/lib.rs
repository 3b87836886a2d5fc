//! kerno-model: Keras' `Sequential` of layers (`Dense`, `Conv2D`, `MaxPooling2D`,
//! `Flatten`, `Dropout`), its optimizers, losses and
//! metrics, the `float32` and `mixed_bfloat16` dtype policies, `fit` / `evaluate` / `predict`, callbacks, and weights in safetensors.
//!
//! Names and defaults follow Keras 3: Glorot-uniform kernels, zero biases,
//! `RMSprop(learning_rate=0.001, rho=0.9, epsilon=1e-7)`, and softmax followed by
//! categorical cross-entropy computed from the logits in one fused kernel.

#![forbid(unsafe_code)]

mod callbacks;
mod checkpoint;
mod csv_logger;
mod error;
mod fit;
mod history;
mod inference;
mod layers;
mod loss;
mod optimizer;
mod policy;
mod progress;
mod schedule;
mod sequential;
mod step;
mod summary;
mod targets;
mod weights;
mod workspace;

pub use callbacks::{Callback, Control, EarlyStopping, ModelCheckpoint, TerminateOnNaN};
pub use checkpoint::{Checkpoint, RunSettings, TrainingCheckpoint, TrainingProgress};
pub use csv_logger::CsvLogger;
pub use error::ModelError;
pub use fit::FitOptions;
pub use history::{EpochLogs, Evaluation, History};
pub use kerno_tensor::conv::Padding;
pub use kerno_tensor::Activation;
pub use layers::{
    Conv2D, Conv2DLayer, Dense, DenseLayer, Dropout, DropoutLayer, Flatten, FlattenLayer, Input,
    Layer, LayerConfig, MaxPooling2D, MaxPooling2DLayer,
};
pub use loss::{Loss, Metric};
pub use optimizer::Optimizer;
pub use policy::Policy;
pub use progress::Verbosity;
pub use sequential::Sequential;
