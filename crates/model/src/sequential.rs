//! `Sequential`: a stack of dense layers, built, compiled and stepped.

use crate::error::ModelError;
use crate::layer::{Dense, DenseLayer};
use crate::loss::{Loss, Metric};
use crate::optimizer::{Optimizer, OptimizerState};
use crate::step;
use crate::targets::TargetTable;
use crate::workspace::Workspace;
use kerno_tensor::loss::LossStats;
use kerno_tensor::profile::{self, Level, Work};
use kerno_tensor::{all_finite, join_awake, Samples, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

/// A linear stack of dense layers, as `keras.Sequential`.
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
    pub(crate) input_dim: usize,
    pub(crate) seed: u64,
    pub(crate) layers: Vec<DenseLayer>,
    pub(crate) compiled: Option<Compiled>,
    pub(crate) workspace: Option<Workspace>,
    /// Whether the first layer's products skip the zeros of a sparse batch.
    pub(crate) skip_input_zeros: bool,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequential")
            .field("input_dim", &self.input_dim)
            .field("seed", &self.seed)
            .field(
                "layers",
                &self
                    .layers
                    .iter()
                    .map(|l| (&l.name, l.units, l.activation))
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
    /// An empty model taking `input_dim` values per sample, with seed 0.
    pub fn new(input_dim: usize) -> Self {
        Self {
            input_dim,
            seed: 0,
            layers: Vec::new(),
            compiled: None,
            workspace: None,
            skip_input_zeros: true,
        }
    }

    /// A model of layers already built (read from a file), with `seed` for its shuffling.
    pub(crate) fn from_layers(input_dim: usize, seed: u64, layers: Vec<DenseLayer>) -> Self {
        Self {
            layers,
            seed,
            ..Self::new(input_dim)
        }
    }

    /// Whether the first layer's products take only the nonzeros of a batch that
    /// is mostly zeros (MNIST's pixels: four fifths are 0), in a fraction of the
    /// time and with the same bits for a first layer of more than 12 units (see
    /// `kerno_tensor::sparse`); on by default. Off, every batch takes the dense
    /// GEMMs (to measure them).
    pub fn skip_input_zeros(&mut self, on: bool) {
        self.skip_input_zeros = on;
    }

    /// Sets the seed of the weight initialisation and of the shuffling, and draws
    /// the weights of the layers added so far again. The same seed gives the same
    /// weights and the same training run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        for (index, layer) in self.layers.iter_mut().enumerate() {
            let mut rng = layer_rng(seed, index);
            *layer = DenseLayer::glorot(
                layer.name.clone(),
                layer.inputs,
                layer.units,
                layer.activation,
                &mut rng,
            );
        }
        self
    }

    /// Adds a layer on top (builder style).
    #[allow(clippy::should_implement_trait)] // Keras' name: `model.add(layer)`.
    pub fn add(mut self, layer: Dense) -> Self {
        self.push(layer);
        self
    }

    /// Adds a layer on top. Its weights are drawn at once (Glorot-uniform, zero bias).
    pub fn push(&mut self, layer: Dense) {
        let index = self.layers.len();
        let name = layer.name.unwrap_or_else(|| match index {
            0 => "dense".to_string(),
            i => format!("dense_{i}"),
        });
        let mut rng = layer_rng(self.seed, index);
        let built = DenseLayer::glorot(
            name,
            self.output_dim(),
            layer.units,
            layer.activation,
            &mut rng,
        );
        self.layers.push(built);
        self.compiled = None;
        self.workspace = None;
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// Values per sample the model outputs (its input width when it has no layers).
    pub fn output_dim(&self) -> usize {
        self.layers.last().map_or(self.input_dim, |l| l.units)
    }

    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    pub fn param_count(&self) -> usize {
        self.layers.iter().map(DenseLayer::param_count).sum()
    }

    /// Floating-point operations of one training step per sample (2 per multiply-add):
    /// the forward GEMMs, the weight-gradient GEMMs, and the input-gradient GEMMs of
    /// every layer but the first. About 1.64 M for 784-512-10.
    pub fn train_flops_per_sample(&self) -> u64 {
        let products = |l: &DenseLayer| (l.inputs * l.units) as u64;
        let all: u64 = self.layers.iter().map(products).sum();
        let first = self.layers.first().map_or(0, products);
        2 * (3 * all - first)
    }

    /// Sets the optimizer, loss and metrics, and resets the optimizer's state.
    pub fn compile(
        &mut self,
        optimizer: Optimizer,
        loss: Loss,
        metrics: &[Metric],
    ) -> Result<(), ModelError> {
        if self.input_dim == 0 {
            return Err(ModelError::invalid("input size", "0 (must be at least 1)"));
        }
        if self.layers.is_empty() {
            return Err(ModelError::invalid("model", "it has no layers"));
        }
        if let Some(layer) = self.layers.iter().find(|l| l.units == 0) {
            return Err(ModelError::invalid(
                "units",
                format!("layer '{}' has 0 units", layer.name),
            ));
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

    /// Every parameter tensor, in order: each layer's kernel `[inputs, units]`, then its bias.
    pub fn weights(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    Tensor::from_vec(&[l.inputs, l.units], l.kernel.to_vec()),
                    Tensor::from_vec(&[l.units], l.bias.to_vec()),
                ]
            })
            .map(|t| t.expect("layer shapes match their parameters"))
            .collect()
    }

    /// Replaces every parameter tensor, in the order of [`Sequential::weights`].
    pub fn set_weights(&mut self, weights: &[Tensor]) -> Result<(), ModelError> {
        let expected: Vec<Vec<usize>> = self
            .layers
            .iter()
            .flat_map(|l| [vec![l.inputs, l.units], vec![l.units]])
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
        for (layer, pair) in self.layers.iter_mut().zip(weights.chunks_exact(2)) {
            layer.kernel.copy_from_slice(pair[0].data());
            layer.bias.copy_from_slice(pair[1].data());
        }
        Ok(())
    }

    /// Drops the workspace, whose record of whether the first layer is finite
    /// (kept up to date by the updates) no longer holds once weights or optimizer
    /// state are replaced from outside; the next workspace checks them afresh.
    pub(crate) fn weights_replaced(&mut self) {
        self.workspace = None;
    }

    /// Checks that `x` has the model's input width.
    pub(crate) fn check_inputs(&self, x: &dyn Samples) -> Result<(), ModelError> {
        if x.features() != self.input_dim {
            return Err(ModelError::Shape {
                what: "inputs",
                expected: format!("{} values per sample", self.input_dim),
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
        // A kept workspace knows whether the first layer is finite: the updates
        // keep that up to date, and every other change of the weights or the
        // optimizer's state drops the workspace (`weights_replaced`). A new one
        // looks, in a pass over them.
        let mut ws = match self.workspace.take() {
            Some(ws) if ws.fits(&self.layers, self.input_dim, rows) => ws,
            _ => {
                let mut ws = Workspace::new(&self.layers, self.input_dim, rows.max(1));
                ws.first_layer_finite = self.first_layer_finite();
                ws
            }
        };
        ws.skip_input_zeros = self.skip_input_zeros;
        // A batch loaded ahead belongs to the run that loaded it (its samples'
        // indices may name others in another dataset).
        ws.input.loaded_ahead.clear();
        ws
    }

    /// Whether the first layer's kernel and its optimizer state (when compiled)
    /// hold only finite values: a pass over them.
    fn first_layer_finite(&self) -> bool {
        let Some(first) = self.layers.first() else {
            return true;
        };
        let slots = self
            .compiled
            .as_ref()
            .map_or(&[][..], |c| c.optimizer.first_kernel_slots(&c.state));
        all_finite(&first.kernel) && slots.iter().all(|s| all_finite(s))
    }

    /// One optimizer step on the samples `indices` (loaded by the step before when
    /// it was given them as `next`), the samples of the `next` step loaded during
    /// the update. Allocates nothing once a step has loaded a next batch.
    pub(crate) fn train_step(
        &mut self,
        ws: &mut Workspace,
        x: &dyn Samples,
        targets: &TargetTable<'_>,
        indices: &[usize],
        next: Option<&[usize]>,
    ) -> LossStats {
        // A step counts the model's operations, as if the batch were dense: the
        // kernels within count what they executed.
        let _span = profile::span(|| {
            let model_flops = self.train_flops_per_sample() * indices.len() as u64;
            Work::new("train step", Level::Step).flops(model_flops)
        });
        let compiled = self
            .compiled
            .as_mut()
            .expect("fit checks that the model is compiled");
        // A batch loaded ahead comes with its targets; loaded as its nonzeros
        // before the update made the first layer non-finite, it is loaded again.
        let stale = ws.input.is_sparse && !ws.first_layer_finite;
        if ws.input.loaded_ahead != indices || stale {
            let sparse_allowed = ws.sparse_input_allowed();
            step::load_input(x, indices, &mut ws.input, sparse_allowed);
            gather_targets(targets, indices, &mut ws.y, &mut ws.classes);
        }
        let (layers, input_dim, loss) = (&self.layers[..], self.input_dim, compiled.loss);
        let (rows, all) = (indices.len(), 0..layers.len());
        let fused = step::fused_softmax_xent(layers, loss);
        let stats = if ws.input.is_sparse {
            // A sparse batch's entries by columns are built while the layers above
            // the first run forward and back: those are thin products that leave
            // the other thread mostly idle, and only the first layer's weight
            // gradient reads the columns.
            let (first, above) = (0..1, 1..layers.len());
            step::forward(layers, input_dim, ws, rows, !fused, first.clone());
            let mut sparse = std::mem::take(&mut ws.input.sparse);
            // The next batch's rows, random rows of the dataset in DRAM, are asked
            // for by whichever half ends first, while the other still runs: the
            // load of the next batch then finds them in cache (measured in
            // docs/internals.md, "Measurements behind the code").
            // (On one thread the halves run in turn, and the update's prefetch below
            // does it.)
            let one_done = AtomicBool::new(rayon::current_num_threads() == 1);
            let prefetch_if_first = || {
                if !one_done.swap(true, Ordering::AcqRel) {
                    if let Some(next) = next {
                        x.prefetch(next);
                    }
                }
            };
            let (stats, ()) = join_awake(
                || {
                    let run = above.clone();
                    let stats =
                        forward_and_loss(layers, input_dim, loss, ws, targets, rows, true, run);
                    step::backward(layers, loss, input_dim, ws, rows, above);
                    prefetch_if_first();
                    stats
                },
                || {
                    step::build_input_columns(&mut sparse);
                    prefetch_if_first();
                },
            );
            ws.input.sparse = sparse;
            step::backward(layers, loss, input_dim, ws, rows, first);
            stats
        } else {
            let run = all.clone();
            let stats = forward_and_loss(layers, input_dim, loss, ws, targets, rows, true, run);
            step::backward(layers, loss, input_dim, ws, rows, all);
            stats
        };
        // The update reads which inputs were 0 throughout the batch, not the batch.
        ws.zero_inputs.clear();
        if ws.input.is_sparse {
            ws.zero_inputs.extend(ws.input.sparse.empty_columns());
        }
        let Some(next) = next else {
            ws.first_layer_finite &=
                compiled
                    .optimizer
                    .apply(&mut compiled.state, &mut self.layers, ws);
            return stats;
        };
        // The next batch and its targets are loaded into the buffers of this one
        // while the weights are updated: the load runs on one thread, the update
        // in chunks that the other takes as it can: the load takes about as long
        // as the update, so neither thread waits long.
        if rayon::current_num_threads() == 1 {
            // The load will follow the update on this thread: its random rows in
            // DRAM, asked for now, arrive during the update's square roots and
            // divisions.
            x.prefetch(next);
            targets.prefetch(next);
        }
        let mut input = std::mem::take(&mut ws.input);
        let (mut y, mut classes) = (std::mem::take(&mut ws.y), std::mem::take(&mut ws.classes));
        let skip_zeros = ws.sparse_input_allowed();
        let (finite, ()) = join_awake(
            || {
                compiled
                    .optimizer
                    .apply(&mut compiled.state, &mut self.layers, ws)
            },
            || {
                step::load_input(x, next, &mut input, skip_zeros);
                gather_targets(targets, next, &mut y, &mut classes);
            },
        );
        (ws.input, ws.y, ws.classes) = (input, y, classes);
        ws.first_layer_finite &= finite;
        ws.input.loaded_ahead.extend_from_slice(next);
        stats
    }
}

/// Gathers a batch, runs the forward pass and the loss (with its gradient when `train`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_batch(
    layers: &[DenseLayer],
    input_dim: usize,
    loss: Loss,
    ws: &mut Workspace,
    x: &dyn Samples,
    targets: &TargetTable<'_>,
    indices: &[usize],
    train: bool,
) -> LossStats {
    let sparse_allowed = ws.sparse_input_allowed();
    step::load_input(x, indices, &mut ws.input, sparse_allowed);
    gather_targets(targets, indices, &mut ws.y, &mut ws.classes);
    let all = 0..layers.len();
    forward_and_loss(
        layers,
        input_dim,
        loss,
        ws,
        targets,
        indices.len(),
        train,
        all,
    )
}

/// Gathers the targets of the samples `indices` into `y` (dense targets) or
/// `classes`, the workspace's.
fn gather_targets(
    targets: &TargetTable<'_>,
    indices: &[usize],
    y: &mut [f32],
    classes: &mut [u32],
) {
    let _span = profile::span(|| Work::kernel("targets gather"));
    targets.gather(indices, y, classes);
}

/// Runs the layers `run` forward on the batch in `ws.input` (`rows` samples,
/// whose targets are gathered), those before having run, then the loss (with its
/// gradient when `train`).
#[allow(clippy::too_many_arguments)]
fn forward_and_loss(
    layers: &[DenseLayer],
    input_dim: usize,
    loss: Loss,
    ws: &mut Workspace,
    targets: &TargetTable<'_>,
    rows: usize,
    train: bool,
    run: Range<usize>,
) -> LossStats {
    let fused = step::fused_softmax_xent(layers, loss);
    step::forward(layers, input_dim, ws, rows, !fused, run);
    let last = layers.len() - 1;
    let len = rows * layers[last].units;
    let Workspace {
        outputs,
        grads,
        dbiases,
        y,
        classes,
        ..
    } = ws;
    let grad = train.then(|| (&mut grads[last][..len], &mut dbiases[last][..]));
    let batch_targets = targets.batch(y, classes, rows);
    step::loss_and_grad(layers, loss, &outputs[last][..len], grad, batch_targets)
}

/// The generator of layer `index`'s initial weights: one ChaCha stream per layer,
/// so adding a layer never changes the weights of the others.
fn layer_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}
