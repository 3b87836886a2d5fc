//! The network loop: load a batch, each layer forward, the loss (fused with
//! the softmax), each layer backward in reverse. The layers' math is in `layers/`.

use crate::layers::{pooled_conv, Below, Layer, LayerInput, ParamGrads, Pass};
use crate::loss::Loss;
use crate::sequential::Sequential;
use crate::targets::TargetTable;
use crate::workspace::{InputBatch, Workspace};
use kerno_tensor::conv::OutputGradient;
use kerno_tensor::loss::{self, LogitsGradient, LossStats, Targets};
use kerno_tensor::profile::{self, Work};
use kerno_tensor::sparse::SPARSE_DENSITY_LIMIT;
use kerno_tensor::{bf16, Activation, MatRef, Samples};
use std::ops::Range;

/// Loads the samples `indices` of `x` into `input`: when `skip_zeros` and they
/// are sparse enough for the first layer's products to take their nonzeros alone,
/// those nonzeros by rows (the weight gradient builds them by columns), else their
/// values.
///
/// # Panics
/// When `input` holds fewer than `indices.len()` samples.
pub(crate) fn load_input(
    x: &dyn Samples,
    indices: &[usize],
    input: &mut InputBatch,
    skip_zeros: bool,
) {
    input.loaded_ahead.clear();
    let (rows, features) = (indices.len(), x.features());
    let compression = |bytes_per_value: usize| {
        let bytes = (rows * features * bytes_per_value) as u64;
        profile::span(move || Work::kernel("input compression (nonzeros)").bytes(bytes))
    };
    let limit = SPARSE_DENSITY_LIMIT;
    // A table known to be denser than the limit is not tried batch by batch: the
    // attempt read most of each batch before it gave up (3% of a Fashion-MNIST step).
    let skip_zeros = skip_zeros && !x.density().is_some_and(|density| density > limit);
    let mut compressed = None;
    if skip_zeros && rows > 0 {
        let _span = compression(x.bytes_per_value());
        compressed = x.compress_rows_if_sparse(indices, &mut input.sparse, limit);
    }
    input.is_sparse = compressed == Some(true);
    if input.is_sparse {
        // The values themselves are never read.
        if input.round_to_bf16 {
            let _span = rounding_span(None, input.sparse.nonzeros());
            input.sparse.round_values_to_bf16();
        }
        return;
    }
    let values = &mut input.x[..rows * features];
    let span = profile::span(|| {
        let bytes = (values.len() * (x.bytes_per_value() + 4)) as u64;
        Work::kernel("batch gather (scale to f32)").bytes(bytes)
    });
    x.gather(indices, values);
    drop(span);
    if input.round_to_bf16 {
        let _span = rounding_span(None, values.len());
        bf16::round_in_place(values);
    }
    if skip_zeros && rows > 0 && compressed.is_none() {
        let _span = compression(std::mem::size_of::<f32>());
        let values = MatRef::row_major(values, rows, features);
        input.is_sparse = input.sparse.compress_rows_if_sparse(values, limit);
    }
}

/// The profile's span of rounding `values` values to bf16 (`mixed_bfloat16`),
/// of layer `layer`'s output or gradient, or of the batch.
fn rounding_span(layer: Option<usize>, values: usize) -> profile::Span {
    profile::span(|| {
        let work = Work::kernel("bf16 rounding").bytes(8 * values as u64);
        match layer {
            Some(l) => work.layer(l),
            None => work,
        }
    })
}

/// Whether the last layer's softmax and the loss run as one kernel on the logits
/// (which also sums the last `Dense`'s bias gradient).
pub(crate) fn fused_softmax_xent(layers: &[Layer], loss: Loss) -> bool {
    layers
        .last()
        .is_some_and(|l| l.as_dense().is_some() && l.activation() == Activation::Softmax)
        && matches!(
            loss,
            Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy
        )
}

/// How a step runs the layers: on `rows` samples, training or not, with the
/// seed of its random draws.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepRun {
    pub rows: usize,
    pub training: bool,
    pub seed: u64,
}

impl StepRun {
    pub(crate) fn pass(&self, layer: usize, activate: bool) -> Pass {
        Pass {
            layer,
            rows: self.rows,
            activate,
            training: self.training,
            seed: self.seed ^ kerno_tensor::dropout::splitmix64(layer as u64),
        }
    }
}

/// Runs the layers `run` (all of them, or those after the ones already run) on
/// the batch [`load_input`] put in `ws.input`. With `last_activation` false the
/// last layer's output stays as logits.
pub(crate) fn forward(
    layers: &[Layer],
    ws: &mut Workspace,
    step: StepRun,
    last_activation: bool,
    run: Range<usize>,
) {
    let Workspace {
        input,
        outputs,
        scratch,
        policy,
        compute_params,
        ..
    } = ws;
    let bf16 = policy.is_bf16();
    let mut ls = run.clone();
    while let Some(l) = ls.next() {
        let layer = &layers[l];
        let (before, rest) = outputs.split_at_mut(l);
        let input = match l {
            0 => LayerInput::Batch(input),
            _ => LayerInput::Values(&before[l - 1][..step.rows * layers[l - 1].output_len()]),
        };
        if let Some((conv, pool)) = pooled_conv(layers, l).filter(|_| run.contains(&(l + 1))) {
            // The pooling's output is the maximum of bf16 values, a bf16 value.
            let pooled = &mut rest[1][..step.rows * layers[l + 1].output_len()];
            let which = step.training.then(|| &mut scratch[l + 1][..pooled.len()]);
            let weights = layer.weights(compute_params.get(l).map(|c| &c[..]));
            let values = input.values();
            let pass = step.pass(l, true);
            conv.forward_pooled(&pass, weights, values, pool, pooled, which, bf16);
            ls.next();
            continue;
        }
        let out = &mut rest[0][..step.rows * layer.output_len()];
        let activate = last_activation || l + 1 < layers.len();
        // Under mixed_bfloat16 the last layer's softmax is computed in f32 from
        // its bf16 logits, as Keras advises (and as the fused loss does).
        let f32_softmax =
            bf16 && activate && l + 1 == layers.len() && layer.activation() == Activation::Softmax;
        let pass = step.pass(l, activate && !f32_softmax);
        let weights = layer.weights(compute_params.get(l).map(|c| &c[..]));
        layer.forward(&pass, weights, input, out, &mut scratch[l]);
        if bf16 {
            let _span = rounding_span(Some(l), out.len());
            bf16::round_in_place(out);
        }
        if f32_softmax {
            let _span = profile::span(|| {
                Work::kernel("activation")
                    .layer(l)
                    .bytes(8 * out.len() as u64)
            });
            let units = layer.output_len();
            Activation::Softmax.forward_inplace(out, units);
        }
    }
}

/// The loss summed over the batch and the number of right answers, from the last
/// layer's output (logits when fused) and the batch's targets gathered in `ws`. When training, also the gradient of the
/// mean loss with respect to the last layer's pre-activation into its `grads`,
/// and when fused its bias gradient too. Expects `forward` to have run with
/// `last_activation = !fused_softmax_xent(..)`.
pub(crate) fn loss_and_grad(
    layers: &[Layer],
    loss: Loss,
    ws: &mut Workspace,
    rows: usize,
    train: bool,
    targets: &TargetTable<'_>,
) -> LossStats {
    let Workspace {
        outputs,
        grads,
        dparams,
        bias_grad_done,
        y,
        classes,
        ..
    } = ws;
    let targets = targets.batch(y, classes, rows);
    let last_index = layers.len() - 1;
    let last = &layers[last_index];
    let units = last.output_len();
    let scale = 1.0 / rows.max(1) as f32;
    let fused = fused_softmax_xent(layers, loss);
    let out = &outputs[last_index][..rows * units];
    let _span = profile::span(|| {
        let name = if fused {
            "softmax + cross-entropy (fused)"
        } else {
            "loss"
        };
        Work::kernel(name)
            .layer(last_index)
            .bytes(4 * 3 * out.len() as u64)
    });
    bias_grad_done[last_index] = train && fused;
    let grad = train.then(|| &mut grads[last_index][..rows * units]);
    if fused {
        let bias_grad = &mut dparams[last_index][1][..];
        let grad = grad.map(|values| LogitsGradient {
            values,
            scale,
            column_sums: Some(bias_grad),
        });
        return loss::softmax_xent_fwd_bwd(out, targets, units, grad);
    }
    let mut grad = grad;
    let grad_arg = grad.as_deref_mut().map(|g| (g, scale));
    let loss_sum = match (loss, targets) {
        (Loss::MeanSquaredError, Targets::Dense(y)) => {
            loss::mean_squared_error(out, y, units, grad_arg)
        }
        (Loss::MeanSquaredError, Targets::Classes(_)) => unreachable!("mse takes dense targets"),
        _ => loss::categorical_xent_probs(out, targets, units, grad_arg),
    };
    if let Some(g) = grad {
        last.activation().backward_inplace(g, out, units);
    }
    LossStats {
        loss_sum,
        correct: loss::count_correct(out, targets, units),
    }
}

/// Back-propagates through the layers `run`, from the top one's `ws.grads`
/// (already the gradient before its activation) into every parameter gradient.
/// The first layer's input gradient is never needed.
pub(crate) fn backward(layers: &[Layer], ws: &mut Workspace, step: StepRun, run: Range<usize>) {
    let Workspace {
        input,
        outputs,
        grads,
        dparams,
        bias_grad_done,
        scratch,
        policy,
        compute_params,
        ..
    } = ws;
    let rows = step.rows;
    for l in run.clone().rev() {
        let layer = &layers[l];
        // A convolution whose output the pooling above takes as it is made
        // makes its output gradient from the pooling's; the pooling takes no
        // pass of its own (and the gradient it hands down is through the relu).
        let pooled_above = pooled_conv(layers, l).filter(|_| run.contains(&(l + 1)));
        let pooling_of_below = l > run.start && pooled_conv(layers, l - 1).is_some();
        let (lower_grads, upper_grads) = grads.split_at_mut(l);
        let (lower_dparams, upper_dparams) = dparams.split_at_mut(l);
        let (dz, grads_above) = upper_grads.split_first_mut().expect("a gradient a layer");
        let dz = &mut dz[..rows * layer.output_len()];
        if policy.is_bf16() && pooled_above.is_none() {
            let _span = rounding_span(Some(l), dz.len());
            bf16::round_in_place(dz);
        }
        if pooling_of_below {
            bias_grad_done[l - 1] = false;
            continue;
        }
        let dz = &*dz;
        let weights = layer.weights(compute_params.get(l).map(|c| &c[..]));
        let params = ParamGrads {
            grads: &mut upper_dparams[0],
            bias_done: bias_grad_done[l],
        };
        let output = &outputs[l][..rows * layer.output_len()];
        let pass = step.pass(l, true);
        // The layer below and its output; the first layer's input gradient is
        // never needed.
        let below_layer = l.checked_sub(1).map(|b| {
            let output = &outputs[b][..rows * layers[b].output_len()];
            (&layers[b], output)
        });
        let (input, below) = match below_layer {
            Some((below_layer, below_out)) => {
                let below = Below {
                    d_out: &mut lower_grads[l - 1][..below_out.len()],
                    output: below_out,
                    activation: below_layer.activation(),
                    bias_sums: match below_layer {
                        Layer::Dense(_) => Some(&mut lower_dparams[l - 1][1][..]),
                        _ => None,
                    },
                };
                (LayerInput::Values(below_out), Some(below))
            }
            None => (LayerInput::Batch(&mut *input), None),
        };
        let (scratch, scratch_above) = scratch[l..].split_first_mut().expect("scratch a layer");
        let done = match pooled_above {
            Some((conv, pool)) => {
                let pooled_len = rows * layers[l + 1].output_len();
                let dz = OutputGradient::Pooled {
                    windows: &pool.windows,
                    window_of_max: &scratch_above[0][..pooled_len],
                    out: &outputs[l + 1][..pooled_len],
                    d_out: &grads_above[0][..pooled_len],
                    relu: conv.config.activation == Activation::Relu,
                };
                conv.backward(&pass, weights, input.values(), dz, params, scratch, below)
            }
            None => layer.backward(&pass, weights, input, output, dz, params, scratch, below),
        };
        let Some((below_layer, below_out)) = below_layer else {
            break;
        };
        let below_len = below_out.len();
        bias_grad_done[l - 1] = done.bias;
        if !done.activation {
            let _span = profile::span(|| {
                Work::kernel("activation gradient")
                    .layer(l - 1)
                    .bytes(12 * below_len as u64)
            });
            let d_below = &mut lower_grads[l - 1][..below_len];
            let cols = below_layer.output_shape().last().copied().unwrap_or(1);
            below_layer
                .activation()
                .backward_inplace(d_below, below_out, cols);
        }
    }
}

/// Gathers a batch, runs the forward pass and the loss (with its gradient when `train`).
pub(crate) fn run_batch(
    model: &Sequential,
    loss: Loss,
    ws: &mut Workspace,
    x: &dyn Samples,
    targets: &TargetTable<'_>,
    indices: &[usize],
    train: bool,
) -> LossStats {
    let sparse_allowed = ws.sparse_input_allowed();
    load_input(x, indices, &mut ws.input, sparse_allowed);
    gather_targets(targets, indices, &mut ws.y, &mut ws.classes);
    let step = model.step_run(indices.len(), train);
    let all = 0..model.layers.len();
    forward_and_loss(&model.layers, loss, ws, targets, step, all)
}

/// Gathers the targets of the samples `indices` into `y` (dense targets) or
/// `classes`, the workspace's.
pub(crate) fn gather_targets(
    targets: &TargetTable<'_>,
    indices: &[usize],
    y: &mut [f32],
    classes: &mut [u32],
) {
    let _span = profile::span(|| Work::kernel("targets gather"));
    targets.gather(indices, y, classes);
}

/// Runs the layers `run` forward on the batch in `ws.input` (whose targets are
/// gathered), those before having run, then the loss (with its gradient when
/// `step.training`).
pub(crate) fn forward_and_loss(
    layers: &[Layer],
    loss: Loss,
    ws: &mut Workspace,
    targets: &TargetTable<'_>,
    step: StepRun,
    run: Range<usize>,
) -> LossStats {
    let fused = fused_softmax_xent(layers, loss);
    forward(layers, ws, step, !fused, run);
    loss_and_grad(layers, loss, ws, step.rows, step.training, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kerno_tensor::ScaledBytes;

    /// Row 0 holds one nonzero of 8 bytes; the other rows are as `fill` says.
    fn table(fill: u8) -> Vec<u8> {
        let mut bytes = vec![fill; 4 * 8];
        bytes[..8].copy_from_slice(&[0, 0, 9, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn a_table_known_to_be_dense_is_not_tried_for_its_nonzeros() {
        let mut ws = Workspace::new(&[], 8, 1);
        // A sparse batch of a sparse table: its nonzeros.
        let sparse_table = table(0);
        let x = ScaledBytes::new(&sparse_table, 8, 255.0);
        load_input(&x, &[0], &mut ws.input, true);
        assert!(ws.input.is_sparse);
        // The same batch of a table whose density is above the limit: dense.
        let dense_table = table(200);
        let x = ScaledBytes::new(&dense_table, 8, 255.0);
        assert!(x.density().is_some_and(|d| d > SPARSE_DENSITY_LIMIT));
        load_input(&x, &[0], &mut ws.input, true);
        assert!(!ws.input.is_sparse);
        assert_eq!(
            &ws.input.x[..8],
            &[0.0, 0.0, 9.0 / 255.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
