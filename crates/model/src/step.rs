//! The forward pass, the loss, and the backward pass of one batch.

use crate::layer::DenseLayer;
use crate::loss::Loss;
use crate::workspace::{InputBatch, Workspace};
use kerno_tensor::activation::column_sums;
use kerno_tensor::loss::{self, LogitsGradient, LossStats, Targets};
use kerno_tensor::profile::{self, Work};
use kerno_tensor::sparse::SPARSE_DENSITY_LIMIT;
use kerno_tensor::{
    all_finite, gemm, gemm_column_sums, sparse_gemm, sparse_t_gemm, Activation, Epilogue, MatMut,
    MatRef, Samples, SparseRows,
};
use std::ops::Range;

/// A GEMM of `m×k` by `k×n` as profiled work: `2mkn` operations.
fn gemm_work(name: &'static str, m: usize, k: usize, n: usize) -> Work {
    Work::kernel(name).flops(2 * (m * k * n) as u64)
}

/// A product with a sparse input as profiled work: the operations its kernel
/// runs, `2·multiply_adds` (the zeros inside its groups included), not the
/// dense GEMM's.
fn sparse_work(name: &'static str, multiply_adds: usize) -> Work {
    Work::kernel(name).flops(2 * multiply_adds as u64)
}

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
    let mut compressed = None;
    if skip_zeros && rows > 0 {
        let _span = compression(x.bytes_per_value());
        compressed = x.compress_rows_if_sparse(indices, &mut input.sparse, limit);
    }
    input.is_sparse = compressed == Some(true);
    if input.is_sparse {
        // The values themselves are never read.
        return;
    }
    let values = &mut input.x[..rows * features];
    let span = profile::span(|| {
        let bytes = (values.len() * (x.bytes_per_value() + 4)) as u64;
        Work::kernel("batch gather (scale to f32)").bytes(bytes)
    });
    x.gather(indices, values);
    drop(span);
    if skip_zeros && rows > 0 && compressed.is_none() {
        let _span = compression(std::mem::size_of::<f32>());
        let values = MatRef::row_major(values, rows, features);
        input.is_sparse = input.sparse.compress_rows_if_sparse(values, limit);
    }
}

/// Builds a sparse batch's nonzeros by columns, which its weight gradient reads.
pub(crate) fn build_input_columns(sparse: &mut SparseRows) {
    if !sparse.has_columns() {
        let _span = profile::span(|| {
            Work::kernel("input compression (by columns)").bytes(8 * sparse.nonzeros() as u64)
        });
        sparse.build_columns();
    }
}

/// Whether the last layer's softmax and the loss run as one kernel on the logits.
pub(crate) fn fused_softmax_xent(layers: &[DenseLayer], loss: Loss) -> bool {
    layers
        .last()
        .is_some_and(|l| l.activation == Activation::Softmax)
        && matches!(
            loss,
            Loss::CategoricalCrossentropy | Loss::SparseCategoricalCrossentropy
        )
}

/// Runs the layers `run` (all of them, or those after the ones already run) on
/// the batch [`load_input`] put in `ws.input`, `rows` samples. With
/// `last_activation` false the last layer's output stays as logits.
pub(crate) fn forward(
    layers: &[DenseLayer],
    input_dim: usize,
    ws: &mut Workspace,
    rows: usize,
    last_activation: bool,
    run: Range<usize>,
) {
    for (l, layer) in layers.iter().enumerate().take(run.end).skip(run.start) {
        let (before, rest) = ws.outputs.split_at_mut(l);
        let input = if l == 0 {
            &ws.input.x[..]
        } else {
            &before[l - 1][..]
        };
        let inputs = if l == 0 {
            input_dim
        } else {
            layers[l - 1].units
        };
        let out = &mut rest[0][..rows * layer.units];
        let apply = last_activation || l + 1 < layers.len();
        let relu = apply && layer.activation == Activation::Relu;
        let epilogue = if relu {
            Epilogue::BiasRelu(&layer.bias)
        } else {
            Epilogue::Bias(&layer.bias)
        };
        let sparse = l == 0 && ws.input.is_sparse;
        let name = match (sparse, relu) {
            (false, true) => "forward GEMM + bias + relu",
            (false, false) => "forward GEMM + bias",
            (true, true) => "sparse forward GEMM + bias + relu",
            (true, false) => "sparse forward GEMM + bias",
        };
        let kernel = MatRef::row_major(&layer.kernel, inputs, layer.units);
        let out_mat = MatMut::row_major(out, rows, layer.units);
        if sparse {
            let _span = profile::span(|| {
                let multiply_adds = ws.input.sparse.product_multiply_adds(layer.units);
                sparse_work(name, multiply_adds).layer(l)
            });
            sparse_gemm(&ws.input.sparse, kernel, out_mat, epilogue);
        } else {
            let _span = profile::span(|| {
                gemm_work(name, rows, inputs, layer.units)
                    .layer(l)
                    .bytes(4 * (rows * inputs + inputs * layer.units + rows * layer.units) as u64)
            });
            let input = MatRef::row_major(&input[..rows * inputs], rows, inputs);
            gemm(input, kernel, out_mat, false, epilogue);
        }
        if apply && !relu {
            let _span = profile::span(|| {
                Work::kernel("activation")
                    .layer(l)
                    .bytes(8 * out.len() as u64)
            });
            layer.activation.forward_inplace(out, layer.units);
        }
    }
}

/// The loss summed over the batch and the number of right answers, from the last
/// layer's output `out` (logits when fused). With `grad` (the gradient, and the
/// last layer's bias gradient), also the gradient of the mean loss with respect to
/// the last layer's pre-activation, and when fused its bias gradient too (see
/// [`backward`]). Expects `forward` to have run with
/// `last_activation = !fused_softmax_xent(..)`.
pub(crate) fn loss_and_grad(
    layers: &[DenseLayer],
    loss: Loss,
    out: &[f32],
    grad: Option<(&mut [f32], &mut [f32])>,
    targets: Targets<'_>,
) -> LossStats {
    let last = &layers[layers.len() - 1];
    let units = last.units;
    let scale = 1.0 / (out.len() / units).max(1) as f32;
    let _span = profile::span(|| {
        let name = if fused_softmax_xent(layers, loss) {
            "softmax + cross-entropy (fused)"
        } else {
            "loss"
        };
        Work::kernel(name)
            .layer(layers.len() - 1)
            .bytes(4 * 3 * out.len() as u64)
    });
    if fused_softmax_xent(layers, loss) {
        let grad = grad.map(|(values, bias_grad)| LogitsGradient {
            values,
            scale,
            column_sums: Some(bias_grad),
        });
        return loss::softmax_xent_fwd_bwd(out, targets, units, grad);
    }
    let mut grad = grad.map(|(values, _)| values);
    let grad_arg = grad.as_deref_mut().map(|g| (g, scale));
    let loss_sum = match (loss, targets) {
        (Loss::MeanSquaredError, Targets::Dense(y)) => {
            loss::mean_squared_error(out, y, units, grad_arg)
        }
        (Loss::MeanSquaredError, Targets::Classes(_)) => unreachable!("mse takes dense targets"),
        _ => loss::categorical_xent_probs(out, targets, units, grad_arg),
    };
    if let Some(g) = grad {
        last.activation.backward_inplace(g, out, units);
    }
    LossStats {
        loss_sum,
        correct: loss::count_correct(out, targets, units),
    }
}

/// Whether the input-gradient GEMM into `layer` also sums `layer`'s bias
/// gradient: with relu (or no activation) its output is the layer's `dz`, final
/// as stored, whose columns are summed there rather than in a pass of their own.
fn input_gradient_sums_bias(layer: &DenseLayer) -> bool {
    matches!(layer.activation, Activation::Relu | Activation::Linear)
}

/// Back-propagates from `ws.grads[last]` (already the pre-activation gradient) into
/// every layer's kernel and bias gradients. The first layer's input gradient is
/// never needed. With `loss` fused into the softmax, the kernel that made that
/// gradient has summed the last layer's bias gradient already.
pub(crate) fn backward(
    layers: &[DenseLayer],
    loss: Loss,
    input_dim: usize,
    ws: &mut Workspace,
    rows: usize,
    run: Range<usize>,
) {
    // Whether layer l's bias gradient was summed by the kernel that produced its
    // `dz`: the fused loss kernel for the last layer, the input-gradient GEMM of
    // the layer above for the others.
    let mut bias_grad_done = match layers.get(run.end) {
        None => fused_softmax_xent(layers, loss),
        Some(_) => input_gradient_sums_bias(&layers[run.end - 1]),
    };
    for l in run.rev() {
        let layer = &layers[l];
        let inputs = if l == 0 {
            input_dim
        } else {
            layers[l - 1].units
        };
        let (lower, upper) = ws.grads.split_at_mut(l);
        let dz = &upper[0][..rows * layer.units];
        if !bias_grad_done {
            let _span = profile::span(|| {
                Work::kernel("bias gradient (column sums)")
                    .layer(l)
                    .flops(dz.len() as u64)
                    .bytes(4 * (dz.len() + layer.units) as u64)
            });
            column_sums(dz, &mut ws.dbiases[l]);
        }
        // A NaN or infinity in `dz` reaches every row of the dense product's
        // weight gradient (`0 · NaN` is NaN) but only the nonzeros' rows of the
        // sparse one; `dz`'s column sums, the bias gradient, show it. Such a
        // batch takes the dense product, so that both paths agree.
        if l == 0 && ws.input.is_sparse && !all_finite(&ws.dbiases[0]) {
            ws.input.sparse.write_dense(&mut ws.input.x);
            ws.input.is_sparse = false;
        }
        let input = if l == 0 {
            &ws.input.x[..]
        } else {
            &ws.outputs[l - 1][..]
        };
        let (dz_mat, dkernel) = (
            MatRef::row_major(dz, rows, layer.units),
            MatMut::row_major(&mut ws.dkernels[l], inputs, layer.units),
        );
        if l == 0 && ws.input.is_sparse {
            build_input_columns(&mut ws.input.sparse);
            let _span = profile::span(|| {
                let multiply_adds = ws.input.sparse.t_product_multiply_adds(layer.units);
                sparse_work("sparse weight-gradient GEMM", multiply_adds).layer(l)
            });
            sparse_t_gemm(&ws.input.sparse, dz_mat, dkernel);
        } else {
            let _span = profile::span(|| {
                gemm_work("weight-gradient GEMM", inputs, rows, layer.units)
                    .layer(l)
                    .bytes(4 * (rows * inputs + rows * layer.units + inputs * layer.units) as u64)
            });
            let input = MatRef::row_major(&input[..rows * inputs], rows, inputs).t();
            gemm(input, dz_mat, dkernel, false, Epilogue::None);
        }
        if l == 0 {
            break;
        }
        let below = &layers[l - 1];
        let below_out = &ws.outputs[l - 1][..rows * inputs];
        let epilogue = if below.activation == Activation::Relu {
            Epilogue::ReluMask(MatRef::row_major(below_out, rows, inputs))
        } else {
            Epilogue::None
        };
        let d_below = &mut lower[l - 1][..rows * inputs];
        bias_grad_done = input_gradient_sums_bias(below);
        let name = match (below.activation == Activation::Relu, bias_grad_done) {
            (true, _) => "input-gradient GEMM + relu mask + bias gradient",
            (false, true) => "input-gradient GEMM + bias gradient",
            (false, false) => "input-gradient GEMM",
        };
        let span = profile::span(|| {
            gemm_work(name, rows, layer.units, inputs)
                .layer(l)
                .bytes(4 * (rows * layer.units + inputs * layer.units + 2 * rows * inputs) as u64)
        });
        let (dz, kernel_t) = (
            MatRef::row_major(dz, rows, layer.units),
            MatRef::row_major(&layer.kernel, inputs, layer.units).t(),
        );
        let d_below_mat = MatMut::row_major(d_below, rows, inputs);
        if bias_grad_done {
            let sums = &mut ws.dbiases[l - 1];
            gemm_column_sums(dz, kernel_t, d_below_mat, false, epilogue, sums);
        } else {
            gemm(dz, kernel_t, d_below_mat, false, epilogue);
        }
        drop(span);
        if below.activation != Activation::Relu {
            let _span = profile::span(|| {
                Work::kernel("activation gradient")
                    .layer(l - 1)
                    .bytes(12 * d_below.len() as u64)
            });
            below
                .activation
                .backward_inplace(d_below, below_out, inputs);
        }
    }
}
