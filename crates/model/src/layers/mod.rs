//! Layers, one kind to a file: its configuration with Keras' names and
//! defaults, its parameters, its output shape, and its `forward` and
//! `backward` side by side. The network loop (`step.rs`) reaches them only
//! through [`Layer`]; adding a kind is a file here, its arm in each `match`
//! below, and its entry in the model file's format (`weights.rs`).
//!
//! The contract of a pass, for a layer `l` of a batch of `rows` samples:
//! - `forward` reads its input (the batch for the first layer, else layer
//!   `l - 1`'s output) and writes its output, after its activation unless told
//!   not to (the last layer's softmax is fused into the loss).
//! - `backward` reads `dz`, the gradient with respect to its output before its
//!   activation, and writes its parameters' gradients and, for a layer above
//!   the first, the gradient with respect to the layer below's output. It may
//!   also turn that into the gradient before the layer below's activation (a
//!   relu mask fused into a GEMM) and sum the layer below's bias gradient; it
//!   says which it did, and the loop does the rest.

mod conv2d;
mod dense;
mod dropout;
mod flatten;
mod input;
mod max_pooling2d;

pub use conv2d::{Conv2D, Conv2DLayer};
pub(crate) use dense::build_input_columns;
pub use dense::{Dense, DenseLayer};
pub use dropout::{Dropout, DropoutLayer};
pub use flatten::{Flatten, FlattenLayer};
pub use input::Input;
pub use max_pooling2d::{MaxPooling2D, MaxPooling2DLayer};

use crate::workspace::InputBatch;
use kerno_tensor::conv::{OutputGradient, Padding, Windows};
use kerno_tensor::{Activation, AlignedBuf};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A layer as it is added to a model, before it is built on its input's shape.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerConfig {
    Dense(Dense),
    Conv2D(Conv2D),
    MaxPooling2D(MaxPooling2D),
    Flatten(Flatten),
    Dropout(Dropout),
}

/// A built layer: its configuration, shapes and parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Dense(DenseLayer),
    Conv2D(Conv2DLayer),
    MaxPooling2D(MaxPooling2DLayer),
    Flatten(FlattenLayer),
    Dropout(DropoutLayer),
}

/// What a layer kind needs to know of its input to be built: the shape of its
/// output and of each of its parameter tensors (`kernel`, `bias`), sizes
/// computed with checked arithmetic.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub output_shape: Vec<usize>,
    pub params: Vec<(&'static str, Vec<usize>)>,
    /// Floats of scratch a sample takes beyond the output (a convolution's
    /// patches), computed without overflow.
    pub scratch_per_sample: usize,
}

impl Plan {
    /// Parameters in all, or `None` on overflow.
    pub fn param_count(&self) -> Option<usize> {
        self.params
            .iter()
            .try_fold(0usize, |sum, (_, shape)| sum.checked_add(shape_len(shape)?))
    }
}

/// Values in a tensor of `shape`, or `None` on overflow.
pub(crate) fn shape_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// `(None, 26, 26, 32)`: a shape as Keras prints it, the batch first.
pub(crate) fn keras_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("(None, {})", dims.join(", "))
}

/// The windows of a `kind` layer (`Conv2D`, `MaxPooling2D`) over images of
/// shape `input`, its `window` named as Keras names it; the error says what
/// does not fit.
pub(crate) fn image_windows(
    kind: &str,
    input: &[usize],
    (window, window_name): ([usize; 2], &str),
    strides: [usize; 2],
    padding: Padding,
) -> Result<Windows, String> {
    let &[height, width, channels] = input else {
        return Err(format!(
            "{kind} takes images (height, width, channels), not {}",
            keras_shape(input)
        ));
    };
    if window.contains(&0) || strides.contains(&0) {
        return Err(format!(
            "{kind}'s {window_name} {window:?} and strides {strides:?} must be at least 1"
        ));
    }
    Windows::new([height, width, channels], window, strides, padding).ok_or_else(|| {
        format!(
            "{kind}'s {}×{} window with strides {strides:?} and padding \"{padding}\" does not \
             fit its input {}",
            window[0],
            window[1],
            keras_shape(input)
        )
    })
}

macro_rules! each_layer {
    ($value:expr, $layer:ident => $body:expr) => {
        match $value {
            Layer::Dense($layer) => $body,
            Layer::Conv2D($layer) => $body,
            Layer::MaxPooling2D($layer) => $body,
            Layer::Flatten($layer) => $body,
            Layer::Dropout($layer) => $body,
        }
    };
}

impl LayerConfig {
    /// The prefix of Keras' default names (`dense`, `dense_1`, ...).
    pub(crate) fn default_name(&self) -> &'static str {
        match self {
            LayerConfig::Dense(_) => "dense",
            LayerConfig::Conv2D(_) => "conv2d",
            LayerConfig::MaxPooling2D(_) => "max_pooling2d",
            LayerConfig::Flatten(_) => "flatten",
            LayerConfig::Dropout(_) => "dropout",
        }
    }

    /// The name the user chose, if any.
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            LayerConfig::Dense(c) => c.name.as_deref(),
            LayerConfig::Conv2D(c) => c.name.as_deref(),
            LayerConfig::MaxPooling2D(c) => c.name.as_deref(),
            LayerConfig::Flatten(c) => c.name.as_deref(),
            LayerConfig::Dropout(c) => c.name.as_deref(),
        }
    }

    /// Checks the configuration against an input of `input` (no batch axis) and
    /// gives the shapes it leads to; the error says what does not fit.
    pub(crate) fn plan(&self, input: &[usize]) -> Result<Plan, String> {
        match self {
            LayerConfig::Dense(c) => c.plan(input),
            LayerConfig::Conv2D(c) => c.plan(input),
            LayerConfig::MaxPooling2D(c) => c.plan(input),
            LayerConfig::Flatten(_) => flatten::plan(input),
            LayerConfig::Dropout(c) => c.plan(input),
        }
    }

    /// The layer built on `input` from `params`, in the order of `plan.params`.
    ///
    /// # Panics
    /// When `params` do not have the plan's shapes.
    pub(crate) fn build(
        self,
        name: String,
        input: Vec<usize>,
        plan: Plan,
        params: Vec<AlignedBuf>,
    ) -> Layer {
        for ((_, shape), values) in plan.params.iter().zip(&params) {
            assert_eq!(shape_len(shape), Some(values.len()), "parameter shape");
        }
        let mut params = params.into_iter();
        let shapes = Shapes {
            input,
            output: plan.output_shape,
        };
        match self {
            LayerConfig::Dense(c) => Layer::Dense(c.build(name, shapes, &mut params)),
            LayerConfig::Conv2D(c) => Layer::Conv2D(c.build(name, shapes, &mut params)),
            LayerConfig::MaxPooling2D(c) => Layer::MaxPooling2D(c.build(name, shapes)),
            LayerConfig::Flatten(_) => Layer::Flatten(FlattenLayer { name, shapes }),
            LayerConfig::Dropout(c) => Layer::Dropout(c.build(name, shapes)),
        }
    }

    /// The layer built on `input` with Keras' initial values: Glorot-uniform
    /// kernels, zero biases, drawn from `rng`.
    pub(crate) fn initialize(
        self,
        name: String,
        input: Vec<usize>,
        plan: Plan,
        rng: &mut ChaCha8Rng,
    ) -> Layer {
        let params = plan
            .params
            .iter()
            .map(|(param, shape)| match *param {
                "kernel" => glorot_uniform(shape, rng),
                _ => AlignedBuf::zeros(shape.iter().product()),
            })
            .collect();
        self.build(name, input, plan, params)
    }
}

/// Keras' `GlorotUniform`: `±√(6 / (fan_in + fan_out))`, the fans of a kernel
/// `[..., in, out]` being `in` and `out` times the product of its leading (window) axes.
fn glorot_uniform(shape: &[usize], rng: &mut ChaCha8Rng) -> AlignedBuf {
    let (window, io) = shape.split_at(shape.len().saturating_sub(2));
    let receptive: usize = window.iter().product();
    let (fan_in, fan_out) = match io {
        [fan_in, fan_out] => (fan_in * receptive, fan_out * receptive),
        _ => (receptive, receptive),
    };
    let limit = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() as f32;
    (0..shape.iter().product::<usize>())
        .map(|_| rng.gen_range(-limit..=limit))
        .collect()
}

/// A layer's input and output shapes, without the batch axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shapes {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
}

/// What a layer reads in a pass: the loaded batch (the first layer; a `Dense`
/// reads it sparse when it is), or the layer below's output.
pub(crate) enum LayerInput<'a> {
    Batch(&'a mut InputBatch),
    Values(&'a [f32]),
}

impl LayerInput<'_> {
    /// The input's values, `rows × inputs`; a sparse batch is for a `Dense` only,
    /// and never loaded for a model that starts with another layer.
    pub fn values(&self) -> &[f32] {
        match self {
            LayerInput::Batch(batch) => {
                debug_assert!(!batch.is_sparse, "only a Dense layer reads a sparse batch");
                &batch.x
            }
            LayerInput::Values(values) => values,
        }
    }
}

/// The `Conv2D` at `l` and the `MaxPooling2D` right above it, where the step
/// runs the two as one pass each way: the convolution's output pooled as it is
/// made, its gradient made from the pooling's as the backward pass needs it,
/// neither written out (5.5 MB each a batch below the convnet's first pooling).
pub(crate) fn pooled_conv(
    layers: &[Layer],
    l: usize,
) -> Option<(&Conv2DLayer, &MaxPooling2DLayer)> {
    match (layers.get(l)?, layers.get(l + 1)?) {
        (Layer::Conv2D(conv), Layer::MaxPooling2D(pool)) if conv.pools_as_made() => {
            Some((conv, pool))
        }
        _ => None,
    }
}

/// How a pass runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass {
    /// The layer's index (profiles name it).
    pub layer: usize,
    pub rows: usize,
    /// Whether the forward pass applies the activation (not for a last layer
    /// whose softmax the loss kernel computes).
    pub activate: bool,
    /// Training (dropout drops) or inference (it passes everything).
    pub training: bool,
    /// The seed of this step's random draws (dropout's masks).
    pub seed: u64,
}

/// The parameter values a pass computes with (see [`Layer::weights`]): a
/// kernel (empty for a layer without parameters) and maybe a bias.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Weights<'a> {
    pub kernel: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// The layer below, for the backward pass of a layer above the first.
pub(crate) struct Below<'a> {
    /// Written with the gradient with respect to its output.
    pub d_out: &'a mut [f32],
    pub output: &'a [f32],
    pub activation: Activation,
    /// Its bias gradient, when it is `dz`'s column sums (a `Dense` below).
    pub bias_sums: Option<&'a mut [f32]>,
}

/// What a backward pass did to the layer below's gradient beyond writing it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BelowDone {
    /// The gradient is already the one before the layer below's activation.
    pub activation: bool,
    /// The layer below's bias gradient is summed.
    pub bias: bool,
}

/// Gradients of one layer's parameters, in the order of its `params`, and
/// whether its bias gradient was summed already (by the loss kernel or the
/// layer above).
pub(crate) struct ParamGrads<'a> {
    pub grads: &'a mut [AlignedBuf],
    pub bias_done: bool,
}

impl Layer {
    pub fn name(&self) -> &str {
        each_layer!(self, l => &l.name)
    }

    /// Keras' class name: `Dense`, `Conv2D`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "Dense",
            Layer::Conv2D(_) => "Conv2D",
            Layer::MaxPooling2D(_) => "MaxPooling2D",
            Layer::Flatten(_) => "Flatten",
            Layer::Dropout(_) => "Dropout",
        }
    }

    /// The configuration it was built from, its name set.
    pub fn config(&self) -> LayerConfig {
        match self {
            Layer::Dense(l) => LayerConfig::Dense(l.config()),
            Layer::Conv2D(l) => LayerConfig::Conv2D(l.config.clone()),
            Layer::MaxPooling2D(l) => LayerConfig::MaxPooling2D(l.config.clone()),
            Layer::Flatten(l) => LayerConfig::Flatten(Flatten::new().named(&l.name)),
            Layer::Dropout(l) => LayerConfig::Dropout(l.config.clone()),
        }
    }

    /// Its input's shape, without the batch axis.
    pub fn input_shape(&self) -> &[usize] {
        each_layer!(self, l => &l.shapes.input)
    }

    /// Its output's shape, without the batch axis (`[26, 26, 32]`).
    pub fn output_shape(&self) -> &[usize] {
        each_layer!(self, l => &l.shapes.output)
    }

    /// Values of one sample's output.
    pub fn output_len(&self) -> usize {
        self.output_shape().iter().product()
    }

    /// The activation after the layer (linear for layers without one).
    pub fn activation(&self) -> Activation {
        match self {
            Layer::Dense(l) => l.activation,
            Layer::Conv2D(l) => l.config.activation,
            _ => Activation::Linear,
        }
    }

    pub fn as_dense(&self) -> Option<&DenseLayer> {
        match self {
            Layer::Dense(l) => Some(l),
            _ => None,
        }
    }

    /// Its parameter tensors, in order, with their names (`kernel`, `bias`) and shapes.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        self.param_slots()
            .into_iter()
            .flatten()
            .map(|(name, shape, values)| (name, shape, &values[..]))
            .collect()
    }

    fn param_slots(&self) -> [Option<(&'static str, Vec<usize>, &AlignedBuf)>; 2] {
        match self {
            Layer::Dense(l) => [
                Some(("kernel", vec![l.inputs, l.units], &l.kernel)),
                Some(("bias", vec![l.units], &l.bias)),
            ],
            Layer::Conv2D(l) => [
                Some(("kernel", l.kernel_shape().to_vec(), &l.kernel)),
                l.bias.as_ref().map(|b| ("bias", vec![b.len()], b)),
            ],
            _ => [None, None],
        }
    }

    /// Its parameters' values, in the order of [`Layer::params`], without allocating.
    pub(crate) fn param_values(&self) -> [Option<&AlignedBuf>; 2] {
        match self {
            Layer::Dense(l) => [Some(&l.kernel), Some(&l.bias)],
            Layer::Conv2D(l) => [Some(&l.kernel), l.bias.as_ref()],
            _ => [None, None],
        }
    }

    /// The values its passes compute with: its parameters, or under
    /// `mixed_bfloat16` their bf16 copies (`copies`, in the same order).
    pub(crate) fn weights<'a>(&'a self, copies: Option<&'a [AlignedBuf]>) -> Weights<'a> {
        let [kernel, bias] = match copies {
            Some(copies) => [copies.first(), copies.get(1)],
            None => self.param_values(),
        };
        Weights {
            kernel: kernel.map_or(&[][..], |k| &k[..]),
            bias: bias.map(|b| &b[..]),
        }
    }

    /// Its parameters' values, in the order of [`Layer::params`] (the optimizer's walk).
    pub(crate) fn params_mut(&mut self) -> [Option<&mut AlignedBuf>; 2] {
        match self {
            Layer::Dense(l) => [Some(&mut l.kernel), Some(&mut l.bias)],
            Layer::Conv2D(l) => [Some(&mut l.kernel), l.bias.as_mut()],
            _ => [None, None],
        }
    }

    pub fn param_count(&self) -> usize {
        self.param_slots()
            .iter()
            .flatten()
            .map(|(_, _, v)| v.len())
            .sum()
    }

    /// Floating-point operations per sample of a training step (2 per
    /// multiply-add): forward, weight gradient, and input gradient unless `first`.
    pub(crate) fn train_flops_per_sample(&self, first: bool) -> u64 {
        let products = match self {
            Layer::Dense(l) => (l.inputs * l.units) as u64,
            Layer::Conv2D(l) => l.multiply_adds_per_sample(),
            _ => 0,
        };
        let passes = if first { 2 } else { 3 };
        2 * passes * products
    }

    /// Floats of scratch a pass over `rows` samples needs (the partial sums
    /// of a convolution's kernel gradient, a dropout's mask, where each max
    /// pooling's maxima came from).
    pub(crate) fn scratch_len(&self, rows: usize) -> usize {
        match self {
            Layer::Conv2D(l) => l.scratch_len(rows),
            Layer::Dropout(l) => rows * l.shapes.output.iter().product::<usize>(),
            Layer::MaxPooling2D(l) => rows * l.shapes.output.iter().product::<usize>(),
            _ => 0,
        }
    }

    /// Floats of the patches a thread makes at once (a convolution's; else 0).
    pub(crate) fn patch_buffer_len(&self) -> usize {
        match self {
            Layer::Conv2D(l) => l.patch_buffer_len(),
            _ => 0,
        }
    }

    /// The deepest GEMM a pass over `rows` samples runs (the per-thread packing
    /// buffers are reserved for it).
    pub(crate) fn deepest_product(&self, rows: usize) -> usize {
        match self {
            Layer::Dense(l) => l.inputs.max(l.units).max(rows),
            Layer::Conv2D(l) => {
                let chunk_rows = l.patch_buffer_len() / l.windows.patch_row_len();
                chunk_rows.max(l.windows.patch_row_len())
            }
            _ => 0,
        }
    }

    /// The forward pass: `out` (`rows × output_len`) from `input`.
    pub(crate) fn forward(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        input: LayerInput<'_>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        match self {
            Layer::Dense(l) => l.forward(pass, weights, input, out),
            Layer::Conv2D(l) => l.forward(pass, weights, input.values(), out),
            Layer::MaxPooling2D(l) => l.forward(pass, input.values(), out, scratch),
            Layer::Flatten(l) => l.forward(input.values(), out),
            Layer::Dropout(l) => l.forward(pass, input.values(), out, scratch),
        }
    }

    /// The backward pass (see the module's contract).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        input: LayerInput<'_>,
        output: &[f32],
        dz: &[f32],
        params: ParamGrads<'_>,
        scratch: &mut [f32],
        below: Option<Below<'_>>,
    ) -> BelowDone {
        match self {
            Layer::Dense(l) => l.backward(pass, weights, input, dz, params, below),
            Layer::Conv2D(l) => {
                let dz = OutputGradient::Given(dz);
                l.backward(pass, weights, input.values(), dz, params, scratch, below)
            }
            Layer::MaxPooling2D(l) => l.backward(pass, output, dz, scratch, below),
            Layer::Flatten(l) => l.backward(dz, below),
            Layer::Dropout(l) => l.backward(dz, scratch, below),
        }
    }
}

impl From<Dense> for LayerConfig {
    fn from(layer: Dense) -> Self {
        LayerConfig::Dense(layer)
    }
}

impl From<Conv2D> for LayerConfig {
    fn from(layer: Conv2D) -> Self {
        LayerConfig::Conv2D(layer)
    }
}

impl From<MaxPooling2D> for LayerConfig {
    fn from(layer: MaxPooling2D) -> Self {
        LayerConfig::MaxPooling2D(layer)
    }
}

impl From<Flatten> for LayerConfig {
    fn from(layer: Flatten) -> Self {
        LayerConfig::Flatten(layer)
    }
}

impl From<Dropout> for LayerConfig {
    fn from(layer: Dropout) -> Self {
        LayerConfig::Dropout(layer)
    }
}
