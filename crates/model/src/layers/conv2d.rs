//! `Conv2D(filters, kernel_size, strides, padding, activation, use_bias)` over
//! NHWC images, the kernel stored `[kh, kw, in, filters]` as Keras stores it.
//!
//! Forward: `P = patches(x)` (im2col: `[N·positions × kh·kw·in]`),
//! `z = P·W + b`, `y = act(z)`: a GEMM whose rows are the NHWC output, bias
//! and relu in its epilogue (a few images at a time, see `kerno_tensor::conv`).
//! Backward: `[dW; db] = [P 1]ᵀ·dz` (the patch rows end with a 1, so the bias
//! gradient is one more row of the product), `dx = patches⁻¹(dz·Wᵀ)` (each
//! patch row added back onto the pixels it came from); the patches are made
//! again from `x`.
//!
//! Followed by a `MaxPooling2D`, it pools its output as it makes it, and makes
//! its output gradient from the pooling's as it needs it (`forward_pooled`,
//! `backward` from `OutputGradient::Pooled`): the step runs the two layers as
//! one pass each way, same bits, without writing out the output between them.

use super::{
    image_windows, Below, BelowDone, MaxPooling2DLayer, ParamGrads, Pass, Plan, Shapes, Weights,
};
use kerno_tensor::conv::{
    backward_scratch_len, chunk_output_len, conv2d_backward, conv2d_forward, conv2d_pool_forward,
    kernel_gradient_is_direct, patch_buffer_len, pooled_forward_is_direct, ConvGradients,
    OutputGradient, Padding, Pooling, Windows,
};
use kerno_tensor::profile::{self, Work};
use kerno_tensor::{Activation, AlignedBuf, Epilogue};

/// `layers.Conv2D(filters, kernel_size, ...)` as in Keras: strides 1, `"valid"`
/// padding, no activation and a bias unless told otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2D {
    pub(crate) filters: usize,
    pub(crate) kernel_size: [usize; 2],
    pub(crate) strides: [usize; 2],
    pub(crate) padding: Padding,
    pub(crate) activation: Activation,
    pub(crate) use_bias: bool,
    pub(crate) name: Option<String>,
}

impl Conv2D {
    /// `Conv2D(filters, kernel_size)`, a square `kernel_size × kernel_size` window.
    ///
    /// ```
    /// use kerno_model::{Activation, Conv2D, Input, Sequential};
    /// let model = Sequential::new(Input::shape([28, 28, 1]))
    ///     .add(Conv2D::new(32, 3).activation(Activation::Relu));
    /// assert_eq!(model.layers()[0].output_shape(), &[26, 26, 32]);
    /// assert_eq!(model.param_count(), 3 * 3 * 32 + 32);
    /// ```
    pub fn new(filters: usize, kernel_size: usize) -> Self {
        Self {
            filters,
            kernel_size: [kernel_size; 2],
            strides: [1, 1],
            padding: Padding::Valid,
            activation: Activation::Linear,
            use_bias: true,
            name: None,
        }
    }

    /// A `height × width` window.
    pub fn kernel_size(mut self, height: usize, width: usize) -> Self {
        self.kernel_size = [height, width];
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

    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }

    /// A name of the user's choosing (else `conv2d`, `conv2d_1`, ... as Keras).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn windows(&self, input: &[usize]) -> Result<Windows, String> {
        if self.filters == 0 {
            return Err("Conv2D with 0 filters".into());
        }
        if self.activation == Activation::Softmax {
            return Err("Conv2D with a softmax activation is not supported".into());
        }
        let window = (self.kernel_size, "kernel_size");
        image_windows("Conv2D", input, window, self.strides, self.padding)
    }

    pub(crate) fn plan(&self, input: &[usize]) -> Result<Plan, String> {
        let w = self.windows(input)?;
        let [kh, kw] = self.kernel_size;
        let mut params = vec![("kernel", vec![kh, kw, w.channels, self.filters])];
        if self.use_bias {
            params.push(("bias", vec![self.filters]));
        }
        // A thread's patches of one image (`Windows::new` checked that product),
        // the kernel gradient's partial sum and the kernel transposed.
        let scratch_per_sample = (w.patch_row_len() + w.patch_len())
            .checked_mul(self.filters)
            .and_then(|sums| sums.checked_add(w.positions() * w.patch_row_len()))
            .ok_or("Conv2D's working space is too large")?;
        Ok(Plan {
            output_shape: vec![w.out_height, w.out_width, self.filters],
            params,
            scratch_per_sample,
        })
    }

    pub(crate) fn build(
        self,
        name: String,
        shapes: Shapes,
        params: &mut impl Iterator<Item = AlignedBuf>,
    ) -> Conv2DLayer {
        let windows = self
            .windows(&shapes.input)
            .expect("planned before it is built");
        let kernel = params.next().expect("a Conv2D layer has a kernel");
        let bias = self.use_bias.then(|| params.next().expect("and a bias"));
        Conv2DLayer {
            name,
            config: self,
            windows,
            kernel,
            bias,
            shapes,
        }
    }
}

/// A built convolution: its windows over the input, kernel and bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2DLayer {
    pub(crate) name: String,
    pub(crate) config: Conv2D,
    pub(crate) windows: Windows,
    pub(crate) kernel: AlignedBuf,
    pub(crate) bias: Option<AlignedBuf>,
    pub(crate) shapes: Shapes,
}

impl Conv2DLayer {
    pub fn filters(&self) -> usize {
        self.config.filters
    }

    /// `[kh, kw, in, filters]`.
    pub fn kernel_shape(&self) -> [usize; 4] {
        let [kh, kw] = self.config.kernel_size;
        [kh, kw, self.windows.channels, self.config.filters]
    }

    pub(crate) fn multiply_adds_per_sample(&self) -> u64 {
        (self.windows.positions() * self.windows.patch_len() * self.config.filters) as u64
    }

    /// The work of `products` GEMMs the size of the forward one.
    fn work(&self, name: &'static str, pass: &Pass, products: u64) -> Work {
        Work::kernel(name)
            .layer(pass.layer)
            .flops(2 * products * pass.rows as u64 * self.multiply_adds_per_sample())
    }

    /// Floats of scratch a pass over `rows` samples needs: the kernel gradient
    /// with its bias row, and what the backward pass sums it in.
    pub(crate) fn scratch_len(&self, rows: usize) -> usize {
        let filters = self.config.filters;
        self.windows.patch_row_len() * filters + backward_scratch_len(&self.windows, filters, rows)
    }

    /// Floats of the patches a thread makes at once.
    pub(crate) fn patch_buffer_len(&self) -> usize {
        patch_buffer_len(&self.windows)
    }

    /// Floats of a chunk's output a thread keeps where it is pooled as made.
    pub(crate) fn chunk_output_len(&self) -> usize {
        chunk_output_len(&self.windows, self.config.filters)
    }

    /// The epilogue of the forward GEMM; whether it applies the activation.
    fn epilogue<'a>(&self, pass: &Pass, weights: Weights<'a>) -> (Epilogue<'a>, bool) {
        let relu = pass.activate && self.config.activation == Activation::Relu;
        match (weights.bias, relu) {
            (Some(bias), true) => (Epilogue::BiasRelu(bias), true),
            (Some(bias), false) => (Epilogue::Bias(bias), !pass.activate || !self.activates()),
            (None, _) => (Epilogue::None, !pass.activate || !self.activates()),
        }
    }

    /// Whether it has an activation other than the identity.
    fn activates(&self) -> bool {
        self.config.activation != Activation::Linear
    }

    /// Whether the pooling above can take its output as it is made: the
    /// activation, if any, is a relu applied in the GEMM's epilogue (the
    /// pooling's backward pass then takes the gradient through it).
    pub(crate) fn pools_as_made(&self) -> bool {
        !self.activates() || (self.config.activation == Activation::Relu && self.bias.is_some())
    }

    /// `out = act(patches(x)·W + b)`.
    pub(crate) fn forward(&self, pass: &Pass, weights: Weights<'_>, x: &[f32], out: &mut [f32]) {
        let filters = self.config.filters;
        let (epilogue, activated) = self.epilogue(pass, weights);
        {
            let name = if matches!(epilogue, Epilogue::BiasRelu(_)) {
                "conv forward: im2col, GEMM + bias + relu"
            } else {
                "conv forward: im2col, GEMM + bias"
            };
            let _span = profile::span(|| self.work(name, pass, 1));
            conv2d_forward(&self.windows, pass.rows, x, weights.kernel, epilogue, out);
        }
        // Without a bias there is no epilogue to fuse the relu into.
        if !activated {
            let _span = profile::span(|| {
                Work::kernel("activation")
                    .layer(pass.layer)
                    .bytes(8 * out.len() as u64)
            });
            self.config.activation.forward_inplace(out, filters);
        }
    }

    /// `pooled = pool(act(patches(x)·W + b))` for the `MaxPooling2D` above
    /// (where [`pools_as_made`](Self::pools_as_made)), and when training where
    /// each maximum came from into `which`; under `mixed_bfloat16` the output
    /// is rounded before it is pooled, as the layer-by-layer step rounds it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_pooled(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        x: &[f32],
        pool: &MaxPooling2DLayer,
        pooled: &mut [f32],
        which: Option<&mut [f32]>,
        round_to_bf16: bool,
    ) {
        let (epilogue, activated) = self.epilogue(pass, weights);
        assert!(activated, "a pooled convolution activates in its epilogue");
        let relu = matches!(epilogue, Epilogue::BiasRelu(_));
        let filters = self.config.filters;
        let name = match (
            pooled_forward_is_direct(&self.windows, &pool.windows, filters, &epilogue),
            relu,
        ) {
            (true, true) => {
                "conv forward + max pooling: one-channel direct kernel + bias + relu, pooling"
            }
            (true, false) => {
                "conv forward + max pooling: one-channel direct kernel + bias, pooling"
            }
            (false, true) => "conv forward + max pooling: im2col, GEMM + bias + relu, pooling",
            (false, false) => "conv forward + max pooling: im2col, GEMM + bias, pooling",
        };
        let _span = profile::span(|| self.work(name, pass, 1));
        let pooling = Pooling {
            windows: &pool.windows,
            out: pooled,
            window_of_max: which,
            round_to_bf16,
        };
        conv2d_pool_forward(
            &self.windows,
            pass.rows,
            x,
            weights.kernel,
            epilogue,
            pooling,
        );
    }

    /// `[dW; db] = [P 1]ᵀ·dz`, and below the first layer `dx = patches⁻¹(dz·Wᵀ)`
    /// (overwriting the patches).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        x: &[f32],
        dz: OutputGradient<'_>,
        params: ParamGrads<'_>,
        scratch: &mut [f32],
        below: Option<Below<'_>>,
    ) -> BelowDone {
        let rows = pass.rows;
        let pooled = matches!(dz, OutputGradient::Pooled { .. });
        let direct = kernel_gradient_is_direct(&self.windows, self.config.filters, &dz);
        let (name, products) = match (below.is_some(), pooled) {
            (false, false) if direct => ("conv backward: one-channel direct weight gradient", 1),
            (false, true) if direct => (
                "conv backward + max pooling gradient: one-channel direct weight gradient",
                1,
            ),
            (true, false) => (
                "conv backward: im2col, weight- and input-gradient GEMMs, col2im",
                2,
            ),
            (false, false) => ("conv backward: im2col, weight-gradient GEMM", 1),
            (true, true) => (
                "conv backward + max pooling gradient: unpooling, im2col, weight- and input-gradient GEMMs, col2im",
                2,
            ),
            (false, true) => (
                "conv backward + max pooling gradient: unpooling, im2col, weight-gradient GEMM",
                1,
            ),
        };
        let _span = profile::span(|| self.work(name, pass, products));
        let (kernel, bias) = match params.grads {
            [dkernel, dbias] => (dkernel, (!params.bias_done).then_some(dbias)),
            [dkernel] => (dkernel, None),
            _ => unreachable!("a Conv2D layer has a kernel and maybe a bias"),
        };
        let grads = ConvGradients {
            kernel,
            bias: bias.map(|b| &mut b[..]),
            input: below.map(|below| below.d_out),
        };
        conv2d_backward(&self.windows, rows, x, weights.kernel, dz, grads, scratch);
        BelowDone::default()
    }
}
