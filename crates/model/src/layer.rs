//! The dense layer: its configuration and its parameters.

use kerno_tensor::{Activation, AlignedBuf};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// `Dense(units, activation)` as in Keras: `activation(x·kernel + bias)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dense {
    pub(crate) units: usize,
    pub(crate) activation: Activation,
    pub(crate) name: Option<String>,
}

impl Dense {
    /// `layers.Dense(units, activation=...)`: Glorot-uniform kernel, zero bias.
    ///
    /// ```
    /// use kerno_model::{Activation, Dense, Sequential};
    /// let model = Sequential::new(784).add(Dense::new(512, Activation::Relu).named("hidden"));
    /// assert_eq!(model.layers()[0].name(), "hidden");
    /// assert_eq!(model.param_count(), 784 * 512 + 512);
    /// ```
    pub fn new(units: usize, activation: Activation) -> Self {
        Self {
            units,
            activation,
            name: None,
        }
    }

    /// A name of the user's choosing (else `dense`, `dense_1`, ... as Keras).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A built dense layer: kernel `[inputs, units]` (row-major, as Keras) and bias `[units]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayer {
    pub(crate) name: String,
    pub(crate) inputs: usize,
    pub(crate) units: usize,
    pub(crate) activation: Activation,
    pub(crate) kernel: AlignedBuf,
    pub(crate) bias: AlignedBuf,
}

impl DenseLayer {
    /// Glorot-uniform kernel (`±√(6/(fan_in+fan_out))`) and zero bias, Keras' defaults.
    pub(crate) fn glorot(
        name: String,
        inputs: usize,
        units: usize,
        activation: Activation,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let limit = (6.0 / (inputs + units).max(1) as f64).sqrt() as f32;
        let kernel = (0..inputs * units)
            .map(|_| rng.gen_range(-limit..=limit))
            .collect();
        Self {
            name,
            inputs,
            units,
            activation,
            kernel,
            bias: AlignedBuf::zeros(units),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn units(&self) -> usize {
        self.units
    }

    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The kernel, `inputs × units` row-major.
    pub fn kernel(&self) -> &[f32] {
        &self.kernel
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    pub fn param_count(&self) -> usize {
        self.kernel.len() + self.bias.len()
    }
}
