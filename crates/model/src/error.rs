//! Everything that can go wrong building, training, saving or loading a model.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model is not compiled: call compile() before fit, evaluate or train_on_batch")]
    NotCompiled,
    #[error("invalid {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: String,
        got: String,
    },
    #[error("loss became {value} at epoch {epoch}, step {step}; training stopped")]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        value: f32,
    },
    /// The I/O error is part of the message, not a `source()`: printed as a
    /// chain, it would otherwise appear twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}: {problem}", path.display())]
    BadModelFile { path: PathBuf, problem: String },
}

impl ModelError {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ModelError::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }
}
