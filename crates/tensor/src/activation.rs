//! Element-wise activations, forward and backward, applied in place row by row.

use crate::elementwise::exp_in_place;
use crate::loss::{add_in_order, row_max};
use crate::simd::Isa;
use std::fmt;
use std::str::FromStr;

/// The activation applied to a dense layer's output, with Keras' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Linear,
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
}

impl Activation {
    pub const ALL: [Activation; 5] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Softmax,
    ];

    /// Keras' name for it (`"relu"`, `"softmax"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }

    /// Applies the activation to `values`, a row-major matrix of `cols` columns.
    pub fn forward_inplace(self, values: &mut [f32], cols: usize) {
        match self {
            Activation::Linear => {}
            Activation::Relu => values.iter_mut().for_each(|v| *v = relu(*v)),
            Activation::Sigmoid => values.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Activation::Tanh => values.iter_mut().for_each(|v| *v = v.tanh()),
            Activation::Softmax => values.chunks_mut(cols).for_each(softmax_row),
        }
    }

    /// Turns `grad`, the gradient with respect to the activation's output `out`,
    /// into the gradient with respect to its input. Every activation here can be
    /// differentiated from its output alone, so the input need not be kept.
    pub fn backward_inplace(self, grad: &mut [f32], out: &[f32], cols: usize) {
        debug_assert_eq!(grad.len(), out.len());
        match self {
            Activation::Linear => {}
            Activation::Relu => relu_backward_inplace(grad, out),
            Activation::Sigmoid => grad
                .iter_mut()
                .zip(out)
                .for_each(|(g, &s)| *g *= s * (1.0 - s)),
            Activation::Tanh => grad
                .iter_mut()
                .zip(out)
                .for_each(|(g, &t)| *g *= 1.0 - t * t),
            Activation::Softmax => {
                for (g, s) in grad.chunks_mut(cols).zip(out.chunks(cols)) {
                    let dot: f32 = g.iter().zip(s).map(|(a, b)| a * b).sum();
                    g.iter_mut().zip(s).for_each(|(g, &s)| *g = s * (*g - dot));
                }
            }
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An activation name that kerno does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown activation '{0}' (expected linear, relu, sigmoid, tanh or softmax)")]
pub struct UnknownActivation(pub String);

impl FromStr for Activation {
    type Err = UnknownActivation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownActivation(s.to_string()))
    }
}

/// `grad[i] = 0` wherever `out[i] <= 0`.
pub fn relu_backward_inplace(grad: &mut [f32], out: &[f32]) {
    // Every gradient stored, as a select: written as a store where `h <= 0`,
    // it was compiled to a branch per value, mispredicted on a relu's output
    // (the convnet's last convolution: 129 µs a step for 36,864 values).
    grad.iter_mut()
        .zip(out)
        .for_each(|(g, &h)| *g = if h <= 0.0 { 0.0 } else { *g });
}

/// `max(x, 0)` that keeps NaN, as TensorFlow's relu (`f32::max` would turn NaN into 0
/// and hide a diverged run).
#[inline]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The exponentials of the fused softmax + cross-entropy, so that a prediction's
/// probabilities are, bit for bit, the softmax the loss was computed from.
fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    row.iter_mut().for_each(|v| *v -= max);
    exp_in_place(Isa::detected(), row);
    let sum = add_in_order(0.0, row);
    row.iter_mut().for_each(|v| *v /= sum);
}

/// `out[c] = Σ_r m[r, c]` for a row-major `m` of `out.len()` columns (bias gradients).
pub fn column_sums(m: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks(out.len()) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}
