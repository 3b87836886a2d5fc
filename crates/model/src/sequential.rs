//! `Sequential`: a stack of layers, built over shapes, compiled and stepped.

use crate::error::ModelError;
use crate::layers::{Input, Layer, LayerConfig};
use crate::loss::{Loss, Metric};
use crate::optimizer::{Optimizer, OptimizerState};
use crate::policy::Policy;
use crate::workspace::Workspace;
use kerno_tensor::{all_finite, Samples, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A linear stack of layers, as `keras.Sequential`.
///
/// ```
/// use kerno_model::{Activation, Dense, Loss, Metric, Optimizer, Sequential};
/// let mut model = Sequential::new(784)
///     .with_seed(1)
///     .add(Dense::new(512, Activation::Relu))
///     .add(Dense::new(10, Activation::Softmax));
/// model.compile(Optimizer::rmsprop(), Loss::CategoricalCrossentropy, &[Metric::Accuracy]).unwrap();
/// assert_eq!(model.param_count(), 407_050);
/// ```
pub struct Sequential {
    /// One sample's shape, without the batch axis.
    pub(crate) input_shape: Vec<usize>,
    pub(crate) seed: u64,
    pub(crate) layers: Vec<Layer>,
    /// Why the last layer added could not be built on its input, reported by `compile`.
    pub(crate) build_error: Option<String>,
    pub(crate) compiled: Option<Compiled>,
    pub(crate) workspace: Option<Workspace>,
    /// Whether the first layer's products skip the zeros of a sparse batch.
    pub(crate) skip_input_zeros: bool,
    pub(crate) policy: Policy,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequential")
            .field("input_shape", &self.input_shape)
            .field("seed", &self.seed)
            .field(
                "layers",
                &self
                    .layers
                    .iter()
                    .map(|l| (l.name(), l.kind(), l.output_shape(), l.activation()))
                    .collect::<Vec<_>>(),
            )
            .field("optimizer", &self.optimizer())
            .field("loss", &self.loss())
            .finish()
    }
}

/// What `compile` sets: the optimizer with its state, the loss and the metrics.
pub(crate) struct Compiled {
    pub optimizer: Optimizer,
    pub state: OptimizerState,
    pub loss: Loss,
    pub metrics: Vec<Metric>,
}

impl Sequential {
    /// An empty model taking samples of `input` (a number of values, or
    /// `Input::shape([28, 28, 1])` for NHWC images), with seed 0.
    pub fn new(input: impl Into<Input>) -> Self {
        Self {
            input_shape: input.into().shape,
            seed: 0,
            layers: Vec::new(),
            build_error: None,
            compiled: None,
            workspace: None,
            skip_input_zeros: true,
            policy: Policy::Float32,
        }
    }

    /// A model of layers already built (read from a file), with `seed` for its shuffling.
    pub(crate) fn from_layers(input_shape: Vec<usize>, seed: u64, layers: Vec<Layer>) -> Self {
        Self {
            layers,
            seed,
            ..Self::new(Input::shape(input_shape))
        }
    }

    /// Whether the first layer's products take only the nonzeros of a batch that
    /// is mostly zeros (MNIST's pixels: four fifths are 0), in a fraction of the
    /// time and with the same bits for a first `Dense` layer of more than 12
    /// units (see `kerno_tensor::sparse`); on by default. Off, every batch takes
    /// the dense GEMMs (to measure them).
    pub fn skip_input_zeros(&mut self, on: bool) {
        self.skip_input_zeros = on;
    }

    /// Sets the seed of the weight initialisation, the shuffling and dropout's
    /// masks, and draws the weights of the layers added so far again. The same
    /// seed gives the same weights and the same training run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        let configs: Vec<LayerConfig> = self.layers.drain(..).map(|l| l.config()).collect();
        for config in configs {
            self.push(config);
        }
        self
    }

    /// Adds a layer on top (builder style): `Dense`, `Conv2D`, `MaxPooling2D`,
    /// `Flatten` or `Dropout`.
    #[allow(clippy::should_implement_trait)] // Keras' name: `model.add(layer)`.
    pub fn add(mut self, layer: impl Into<LayerConfig>) -> Self {
        self.push(layer);
        self
    }

    /// Adds a layer on top. Its weights are drawn at once (Glorot-uniform
    /// kernels, zero biases). A layer that does not fit its input (a `Dense`
    /// on images, a window larger than the image) is not added; `compile` says why.
    pub fn push(&mut self, layer: impl Into<LayerConfig>) {
        let config = layer.into();
        let index = self.layers.len();
        let name = match config.name() {
            Some(name) => name.to_string(),
            None => {
                // Keras numbers each kind apart: conv2d, conv2d_1, ..., dense, dense_1.
                let prefix = config.default_name();
                let same_kind = self
                    .layers
                    .iter()
                    .filter(|l| l.config().default_name() == prefix)
                    .count();
                match same_kind {
                    0 => prefix.to_string(),
                    n => format!("{prefix}_{n}"),
                }
            }
        };
        self.compiled = None;
        self.workspace = None;
        let input = self.output_shape().to_vec();
        match config.plan(&input) {
            Ok(plan) => {
                let mut rng = layer_rng(self.seed, index);
                let layer = config.initialize(name, input, plan, &mut rng);
                self.layers.push(layer);
            }
            Err(problem) => {
                self.build_error
                    .get_or_insert(format!("layer '{name}' ({index}): {problem}"));
            }
        }
    }

    /// Sets the dtype policy the layers compute with (`float32` by default),
    /// as Keras' `keras.mixed_precision.set_global_policy("mixed_bfloat16")`
    /// before the model is built. The weights stay as they are, in f32.
    ///
    /// ```
    /// use kerno_model::{Activation, Dense, Policy, Sequential};
    /// let model = Sequential::new(784)
    ///     .with_dtype_policy(Policy::MixedBfloat16)
    ///     .add(Dense::new(10, Activation::Softmax));
    /// assert_eq!(model.dtype_policy(), Policy::MixedBfloat16);
    /// ```
    pub fn with_dtype_policy(mut self, policy: Policy) -> Self {
        self.set_dtype_policy(policy);
        self
    }

    /// [`with_dtype_policy`](Self::with_dtype_policy) in place.
    pub fn set_dtype_policy(&mut self, policy: Policy) {
        self.policy = policy;
        // Its record of whether the first layer is finite was of the other policy's kernel.
        self.weights_replaced();
    }

    pub fn dtype_policy(&self) -> Policy {
        self.policy
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One sample's shape, without the batch axis.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Values per sample the model takes.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The shape of the model's output per sample (its input's when it has no layers).
    pub fn output_shape(&self) -> &[usize] {
        self.layers
            .last()
            .map_or(&self.input_shape[..], Layer::output_shape)
    }

    /// Values per sample the model outputs (its input width when it has no layers).
    pub fn output_dim(&self) -> usize {
        self.output_shape().iter().product()
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn param_count(&self) -> usize {
        self.layers.iter().map(Layer::param_count).sum()
    }

    /// Floating-point operations of one training step per sample (2 per multiply-add):
    /// the forward products, the weight gradients, and the input gradients of
    /// every layer but the first. About 1.64 M for 784-512-10, 16.4 M for the
    /// book's convnet.
    pub fn train_flops_per_sample(&self) -> u64 {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| l.train_flops_per_sample(i == 0))
            .sum()
    }

    /// Sets the optimizer, loss and metrics, and resets the optimizer's state.
    pub fn compile(
        &mut self,
        optimizer: Optimizer,
        loss: Loss,
        metrics: &[Metric],
    ) -> Result<(), ModelError> {
        if self.input_shape.is_empty() || self.input_shape.contains(&0) {
            return Err(ModelError::invalid(
                "input shape",
                format!("{:?} (every size must be at least 1)", self.input_shape),
            ));
        }
        if let Some(problem) = &self.build_error {
            return Err(ModelError::invalid("layer", problem.clone()));
        }
        if self.layers.is_empty() {
            return Err(ModelError::invalid("model", "it has no layers"));
        }
        optimizer.validate()?;
        self.weights_replaced();
        self.compiled = Some(Compiled {
            optimizer,
            state: optimizer.new_state(&self.layers),
            loss,
            metrics: metrics.to_vec(),
        });
        Ok(())
    }

    pub fn is_compiled(&self) -> bool {
        self.compiled.is_some()
    }

    pub fn optimizer(&self) -> Option<Optimizer> {
        self.compiled.as_ref().map(|c| c.optimizer)
    }

    pub fn loss(&self) -> Option<Loss> {
        self.compiled.as_ref().map(|c| c.loss)
    }

    /// Every parameter tensor, in order: each layer's kernel (`[inputs, units]`,
    /// `[kh, kw, in, filters]`), then its bias.
    pub fn weights(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(Layer::params)
            .map(|(_, shape, values)| {
                Tensor::from_vec(&shape, values.to_vec())
                    .expect("layer shapes match their parameters")
            })
            .collect()
    }

    /// Replaces every parameter tensor, in the order of [`Sequential::weights`].
    pub fn set_weights(&mut self, weights: &[Tensor]) -> Result<(), ModelError> {
        let expected: Vec<Vec<usize>> = self
            .layers
            .iter()
            .flat_map(Layer::params)
            .map(|(_, shape, _)| shape)
            .collect();
        let got: Vec<Vec<usize>> = weights.iter().map(|t| t.shape().to_vec()).collect();
        if expected != got {
            return Err(ModelError::Shape {
                what: "weights",
                expected: format!("{expected:?}"),
                got: format!("{got:?}"),
            });
        }
        self.weights_replaced();
        let mut weights = weights.iter();
        for layer in &mut self.layers {
            for param in layer.params_mut().into_iter().flatten() {
                let tensor = weights.next().expect("as many tensors as parameters");
                param.copy_from_slice(tensor.data());
            }
        }
        Ok(())
    }

    /// Drops the workspace, whose record of whether the first layer is finite
    /// and bf16 copies of the weights (kept up to date by the updates) no longer
    /// hold once weights or optimizer state are replaced from outside; the next
    /// workspace makes them afresh.
    pub(crate) fn weights_replaced(&mut self) {
        self.workspace = None;
    }

    /// Checks that every layer was built and that `x` has the model's input width.
    pub(crate) fn check_inputs(&self, x: &dyn Samples) -> Result<(), ModelError> {
        if let Some(problem) = &self.build_error {
            return Err(ModelError::invalid("layer", problem.clone()));
        }
        if x.features() != self.input_dim() {
            return Err(ModelError::Shape {
                what: "inputs",
                expected: format!("{} values per sample", self.input_dim()),
                got: format!("{}", x.features()),
            });
        }
        Ok(())
    }

    pub(crate) fn compiled(&self) -> Result<&Compiled, ModelError> {
        self.compiled.as_ref().ok_or(ModelError::NotCompiled)
    }

    /// The workspace for batches of up to `rows`, reused when it fits.
    pub(crate) fn take_workspace(&mut self, rows: usize) -> Workspace {
        // A kept workspace knows whether the first layer is finite and holds the
        // weights' bf16 copies: the updates keep both up to date, and every other
        // change of the weights, the optimizer's state or the policy drops the
        // workspace (`weights_replaced`). A new one looks, in a pass over them.
        let mut ws = match self.workspace.take() {
            Some(ws) if ws.fits(&self.layers, self.input_dim(), rows) => ws,
            _ => {
                let mut ws = Workspace::new(&self.layers, self.input_dim(), rows.max(1));
                ws.first_layer_finite = self.first_layer_finite();
                ws.use_policy(self.policy, &self.layers);
                ws
            }
        };
        // Only a first `Dense` reads a batch by its nonzeros.
        let first_dense = self.layers.first().is_some_and(|l| l.as_dense().is_some());
        ws.skip_input_zeros = self.skip_input_zeros && first_dense;
        // A batch loaded ahead belongs to the run that loaded it (its samples'
        // indices may name others in another dataset).
        ws.input.loaded_ahead.clear();
        ws
    }

    /// Whether the first layer's kernel and its optimizer state (when compiled)
    /// hold only finite values: a pass over them.
    fn first_layer_finite(&self) -> bool {
        let Some(first) = self.layers.first().and_then(Layer::as_dense) else {
            return true;
        };
        let slots = self
            .compiled
            .as_ref()
            .map_or(&[][..], |c| c.optimizer.first_kernel_slots(&c.state));
        all_finite(&first.kernel) && slots.iter().all(|s| all_finite(s))
    }
}

/// The generator of layer `index`'s initial weights: one ChaCha stream per layer,
/// so adding a layer never changes the weights of the others.
fn layer_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}
