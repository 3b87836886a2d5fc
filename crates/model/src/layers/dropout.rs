//! `Dropout(rate)`: inverted dropout.
//!
//! Forward (training): `y = x·m`, `m = 1/(1 - rate)` with probability
//! `1 - rate`, else 0; in `evaluate` and `predict`, `y = x`.
//! Backward: `dx = dy·m`, the same mask.
//!
//! Masks come from a counter-based stream keyed by the model's seed, the
//! optimizer step and the layer: the same on any thread count, and drawn again
//! identically by a run resumed from a checkpoint.

use super::{Below, BelowDone, Pass, Plan, Shapes};
use kerno_tensor::dropout::dropout_mask;
use kerno_tensor::profile::{self, Work};

/// `layers.Dropout(rate)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    pub(crate) rate: f32,
    pub(crate) name: Option<String>,
}

impl Dropout {
    /// Drops each value with probability `rate` (in `[0, 1)`) while training.
    pub fn new(rate: f32) -> Self {
        Self { rate, name: None }
    }

    /// A name of the user's choosing (else `dropout`, `dropout_1`, ... as Keras).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn plan(&self, input: &[usize]) -> Result<Plan, String> {
        if !(0.0..1.0).contains(&self.rate) {
            return Err(format!("Dropout rate {} (must be in [0, 1))", self.rate));
        }
        Ok(Plan {
            output_shape: input.to_vec(),
            params: Vec::new(),
            // The mask.
            scratch_per_sample: super::shape_len(input).ok_or("Dropout's input is too large")?,
        })
    }

    pub(crate) fn build(self, name: String, shapes: Shapes) -> DropoutLayer {
        DropoutLayer {
            name,
            config: self,
            shapes,
        }
    }
}

/// A built `Dropout`.
#[derive(Clone, Debug, PartialEq)]
pub struct DropoutLayer {
    pub(crate) name: String,
    pub(crate) config: Dropout,
    pub(crate) shapes: Shapes,
}

impl DropoutLayer {
    pub fn rate(&self) -> f32 {
        self.config.rate
    }

    /// Training: `y = x·m`, the mask drawn into `mask`; else `y = x`.
    pub(crate) fn forward(&self, pass: &Pass, x: &[f32], out: &mut [f32], mask: &mut [f32]) {
        let x = &x[..out.len()];
        if !pass.training {
            out.copy_from_slice(x);
            return;
        }
        let _span = profile::span(|| {
            Work::kernel("dropout")
                .layer(pass.layer)
                .bytes(12 * out.len() as u64)
        });
        let mask = &mut mask[..out.len()];
        dropout_mask(self.config.rate, pass.seed, mask);
        for ((y, &x), &m) in out.iter_mut().zip(x).zip(mask.iter()) {
            *y = x * m;
        }
    }

    /// `dx = dy·m`, with the forward pass's mask.
    pub(crate) fn backward(&self, dy: &[f32], mask: &[f32], below: Option<Below<'_>>) -> BelowDone {
        if let Some(below) = below {
            for ((d, &g), &m) in below.d_out.iter_mut().zip(dy).zip(mask) {
                *d = g * m;
            }
        }
        BelowDone::default()
    }
}
