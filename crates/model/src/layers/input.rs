//! `Input(shape)`: what a model takes per sample.

/// The shape of one sample, without the batch axis: `Input::shape([28, 28, 1])`
/// for NHWC images (channels last, as Keras), or a number of values
/// (`Sequential::new(784)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub(crate) shape: Vec<usize>,
}

impl Input {
    /// `keras.Input(shape=...)`.
    pub fn shape(shape: impl Into<Vec<usize>>) -> Self {
        Self {
            shape: shape.into(),
        }
    }
}

impl From<usize> for Input {
    fn from(values: usize) -> Self {
        Self {
            shape: vec![values],
        }
    }
}
