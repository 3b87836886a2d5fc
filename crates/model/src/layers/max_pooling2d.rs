//! `MaxPooling2D(pool_size, strides, padding)` over NHWC images.
//!
//! Forward: `y[p, c] = max` of `x[·, c]` over window `p`.
//! Backward: each `dy[p, c]` goes to the first input of window `p` equal to the
//! maximum (TensorFlow's choice among ties); every other input's gradient is 0.

use super::{image_windows, Below, BelowDone, Pass, Plan, Shapes};
use kerno_tensor::conv::{Padding, Windows};
use kerno_tensor::pool::{max_pool2d_backward, max_pool2d_forward};
use kerno_tensor::profile::{self, Work};
use kerno_tensor::Activation;

/// `layers.MaxPooling2D(pool_size=2)` as in Keras: strides equal to the pool
/// size, `"valid"` padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaxPooling2D {
    pub(crate) pool_size: [usize; 2],
    pub(crate) strides: [usize; 2],
    pub(crate) padding: Padding,
    pub(crate) name: Option<String>,
}

impl Default for MaxPooling2D {
    fn default() -> Self {
        Self::new(2)
    }
}

impl MaxPooling2D {
    /// `MaxPooling2D(pool_size)`: a square window, moved by its own size.
    ///
    /// ```
    /// use kerno_model::{Input, MaxPooling2D, Sequential};
    /// let model = Sequential::new(Input::shape([26, 26, 32])).add(MaxPooling2D::new(2));
    /// assert_eq!(model.layers()[0].output_shape(), &[13, 13, 32]);
    /// ```
    pub fn new(pool_size: usize) -> Self {
        Self {
            pool_size: [pool_size; 2],
            strides: [pool_size; 2],
            padding: Padding::Valid,
            name: None,
        }
    }

    /// A `height × width` window (the strides follow unless set apart).
    pub fn pool_size(mut self, height: usize, width: usize) -> Self {
        if self.strides == self.pool_size {
            self.strides = [height, width];
        }
        self.pool_size = [height, width];
        self
    }

    /// The same stride down and across.
    pub fn strides(mut self, stride: usize) -> Self {
        self.strides = [stride; 2];
        self
    }

    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// A name of the user's choosing (else `max_pooling2d`, ... as Keras).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn windows(&self, input: &[usize]) -> Result<Windows, String> {
        let window = (self.pool_size, "pool_size");
        image_windows("MaxPooling2D", input, window, self.strides, self.padding)
    }

    pub(crate) fn plan(&self, input: &[usize]) -> Result<Plan, String> {
        let w = self.windows(input)?;
        Ok(Plan {
            output_shape: vec![w.out_height, w.out_width, w.channels],
            params: Vec::new(),
            // Each output's window position of its maximum, for the backward pass.
            scratch_per_sample: w.positions() * w.channels,
        })
    }

    pub(crate) fn build(self, name: String, shapes: Shapes) -> MaxPooling2DLayer {
        let windows = self
            .windows(&shapes.input)
            .expect("planned before it is built");
        MaxPooling2DLayer {
            name,
            config: self,
            windows,
            shapes,
        }
    }
}

/// A built max pooling: its windows over the input.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxPooling2DLayer {
    pub(crate) name: String,
    pub(crate) config: MaxPooling2D,
    pub(crate) windows: Windows,
    pub(crate) shapes: Shapes,
}

impl MaxPooling2DLayer {
    fn work(&self, name: &'static str, pass: &Pass) -> Work {
        let values = pass.rows
            * (self.windows.input_len() + self.windows.positions() * self.windows.channels);
        Work::kernel(name)
            .layer(pass.layer)
            .bytes(4 * values as u64)
    }

    /// `out = max over each window of x`; when training, each maximum's window
    /// position into `scratch` for the backward pass.
    pub(crate) fn forward(&self, pass: &Pass, x: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        let _span = profile::span(|| self.work("max pooling", pass));
        let which = pass.training.then_some(scratch);
        max_pool2d_forward(&self.windows, pass.rows, x, out, which);
    }

    /// `dx`: each `dy` to the input its window's maximum came from (`scratch`,
    /// from the training forward pass).
    pub(crate) fn backward(
        &self,
        pass: &Pass,
        y: &[f32],
        dy: &[f32],
        scratch: &[f32],
        below: Option<Below<'_>>,
    ) -> BelowDone {
        let Some(below) = below else {
            return BelowDone::default();
        };
        // A relu below is taken through here: no pass of its own over the gradient.
        let relu = below.activation == Activation::Relu;
        let name = if relu {
            "max pooling gradient + relu mask"
        } else {
            "max pooling gradient"
        };
        let _span = profile::span(|| self.work(name, pass));
        max_pool2d_backward(&self.windows, pass.rows, scratch, y, dy, below.d_out, relu);
        BelowDone {
            activation: relu || below.activation == Activation::Linear,
            bias: false,
        }
    }
}
