//! `Flatten()`: an NHWC image as one row of `height·width·channels` values, in
//! that order (Keras' channels-last flattening). Forward and backward are copies.

use super::{Below, BelowDone, Plan, Shapes};

/// `layers.Flatten()`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Flatten {
    pub(crate) name: Option<String>,
}

impl Flatten {
    pub fn new() -> Self {
        Self::default()
    }

    /// A name of the user's choosing (else `flatten`, `flatten_1`, ... as Keras).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

pub(crate) fn plan(input: &[usize]) -> Result<Plan, String> {
    let len = super::shape_len(input).ok_or("Flatten's input is too large")?;
    Ok(Plan {
        output_shape: vec![len],
        params: Vec::new(),
        scratch_per_sample: 0,
    })
}

/// A built `Flatten`.
#[derive(Clone, Debug, PartialEq)]
pub struct FlattenLayer {
    pub(crate) name: String,
    pub(crate) shapes: Shapes,
}

impl FlattenLayer {
    /// `y = x`, rows of the batch unchanged (NHWC is already row-major by sample).
    pub(crate) fn forward(&self, x: &[f32], out: &mut [f32]) {
        out.copy_from_slice(&x[..out.len()]);
    }

    /// `dx = dy`.
    pub(crate) fn backward(&self, dy: &[f32], below: Option<Below<'_>>) -> BelowDone {
        if let Some(below) = below {
            below.d_out[..dy.len()].copy_from_slice(dy);
        }
        BelowDone::default()
    }
}
