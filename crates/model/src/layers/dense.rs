//! `Dense(units, activation)`: `activation(x·kernel + bias)`.
//!
//! Forward: `z = x·W + b`, `y = act(z)`: one GEMM, bias (and relu) in its epilogue.
//! Backward: `dW = xᵀ·dz`, `db = Σ_rows dz`, `dx = dz·Wᵀ`: two GEMMs, the layer
//! below's relu mask and bias sums fused into the second's epilogue.
//!
//! As the first layer, it reads a sparse batch (MNIST's pixels are four fifths
//! zeros) by its nonzeros: the forward product and the weight gradient then
//! skip the zeros, with the same bits (see `kerno_tensor::sparse`).

use super::{Below, BelowDone, LayerInput, ParamGrads, Pass, Plan, Shapes, Weights};
use kerno_tensor::activation::column_sums;
use kerno_tensor::profile::{self, Work};
use kerno_tensor::{
    all_finite, gemm, gemm_column_sums, sparse_gemm, sparse_t_gemm, Activation, AlignedBuf,
    Epilogue, MatMut, MatRef, SparseRows,
};

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

    pub(crate) fn plan(&self, input: &[usize]) -> Result<Plan, String> {
        let &[inputs] = input else {
            return Err(format!(
                "Dense takes a flat input, not {}: add a Flatten layer before it",
                super::keras_shape(input)
            ));
        };
        if self.units == 0 {
            return Err("Dense with 0 units".into());
        }
        Ok(Plan {
            output_shape: vec![self.units],
            params: vec![
                ("kernel", vec![inputs, self.units]),
                ("bias", vec![self.units]),
            ],
            scratch_per_sample: 0,
        })
    }

    pub(crate) fn build(
        self,
        name: String,
        shapes: Shapes,
        params: &mut impl Iterator<Item = AlignedBuf>,
    ) -> DenseLayer {
        DenseLayer {
            name,
            inputs: shapes.input[0],
            units: self.units,
            activation: self.activation,
            kernel: params.next().expect("a Dense layer has a kernel"),
            bias: params.next().expect("a Dense layer has a bias"),
            shapes,
        }
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
    pub(crate) shapes: Shapes,
}

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

/// Builds a sparse batch's nonzeros by columns, which its weight gradient reads.
pub(crate) fn build_input_columns(sparse: &mut SparseRows) {
    if !sparse.has_columns() {
        let _span = profile::span(|| {
            Work::kernel("input compression (by columns)").bytes(8 * sparse.nonzeros() as u64)
        });
        sparse.build_columns();
    }
}

impl DenseLayer {
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

    pub(crate) fn config(&self) -> Dense {
        Dense::new(self.units, self.activation).named(&self.name)
    }

    /// `out = act(x·W + b)`: bias and relu in the GEMM's epilogue, other
    /// activations in a pass of their own.
    pub(crate) fn forward(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        input: LayerInput<'_>,
        out: &mut [f32],
    ) {
        let (rows, inputs, units) = (pass.rows, self.inputs, self.units);
        let relu = pass.activate && self.activation == Activation::Relu;
        let bias = weights.bias.expect("a Dense layer has a bias");
        let epilogue = if relu {
            Epilogue::BiasRelu(bias)
        } else {
            Epilogue::Bias(bias)
        };
        let kernel = MatRef::row_major(weights.kernel, inputs, units);
        let out_mat = MatMut::row_major(out, rows, units);
        match input {
            LayerInput::Batch(batch) if batch.is_sparse => {
                let name = if relu {
                    "sparse forward GEMM + bias + relu"
                } else {
                    "sparse forward GEMM + bias"
                };
                let _span = profile::span(|| {
                    let multiply_adds = batch.sparse.product_multiply_adds(units);
                    sparse_work(name, multiply_adds).layer(pass.layer)
                });
                sparse_gemm(&batch.sparse, kernel, out_mat, epilogue);
            }
            input => {
                let name = if relu {
                    "forward GEMM + bias + relu"
                } else {
                    "forward GEMM + bias"
                };
                let _span = profile::span(|| {
                    gemm_work(name, rows, inputs, units)
                        .layer(pass.layer)
                        .bytes(4 * (rows * inputs + inputs * units + rows * units) as u64)
                });
                let x = MatRef::row_major(&input.values()[..rows * inputs], rows, inputs);
                gemm(x, kernel, out_mat, false, epilogue);
            }
        }
        if pass.activate && !relu {
            let _span = profile::span(|| {
                Work::kernel("activation")
                    .layer(pass.layer)
                    .bytes(8 * out.len() as u64)
            });
            self.activation.forward_inplace(out, units);
        }
    }

    /// `db = Σ_rows dz` (unless summed already), `dW = xᵀ·dz`, and for a layer
    /// above the first `dx = dz·Wᵀ`, the layer below's relu mask and bias
    /// gradient fused in.
    pub(crate) fn backward(
        &self,
        pass: &Pass,
        weights: Weights<'_>,
        input: LayerInput<'_>,
        dz: &[f32],
        params: ParamGrads<'_>,
        below: Option<Below<'_>>,
    ) -> BelowDone {
        let (rows, inputs, units) = (pass.rows, self.inputs, self.units);
        let [dkernel, dbias] = params.grads else {
            unreachable!("a Dense layer has a kernel and a bias")
        };
        if !params.bias_done {
            let _span = profile::span(|| {
                Work::kernel("bias gradient (column sums)")
                    .layer(pass.layer)
                    .flops(dz.len() as u64)
                    .bytes(4 * (dz.len() + units) as u64)
            });
            column_sums(dz, dbias);
        }
        let dz_mat = MatRef::row_major(dz, rows, units);
        let dkernel = MatMut::row_major(dkernel, inputs, units);
        match input {
            LayerInput::Batch(batch) if batch.is_sparse && all_finite(dbias) => {
                build_input_columns(&mut batch.sparse);
                let _span = profile::span(|| {
                    let multiply_adds = batch.sparse.t_product_multiply_adds(units);
                    sparse_work("sparse weight-gradient GEMM", multiply_adds).layer(pass.layer)
                });
                sparse_t_gemm(&batch.sparse, dz_mat, dkernel);
            }
            input => {
                // A NaN or infinity in `dz` reaches every row of the dense product's
                // weight gradient (`0 · NaN` is NaN) but only the nonzeros' rows of the
                // sparse one; `dz`'s column sums, the bias gradient, show it. Such a
                // batch takes the dense product, so that both paths agree.
                let x = match input {
                    LayerInput::Batch(batch) => {
                        if batch.is_sparse {
                            batch.sparse.write_dense(&mut batch.x);
                            batch.is_sparse = false;
                        }
                        &batch.x[..]
                    }
                    LayerInput::Values(values) => values,
                };
                let _span = profile::span(|| {
                    gemm_work("weight-gradient GEMM", inputs, rows, units)
                        .layer(pass.layer)
                        .bytes(4 * (rows * inputs + rows * units + inputs * units) as u64)
                });
                let x_t = MatRef::row_major(&x[..rows * inputs], rows, inputs).t();
                gemm(x_t, dz_mat, dkernel, false, Epilogue::None);
            }
        }
        let Some(below) = below else {
            return BelowDone::default();
        };
        let relu = below.activation == Activation::Relu;
        let epilogue = if relu {
            Epilogue::ReluMask(MatRef::row_major(
                &below.output[..rows * inputs],
                rows,
                inputs,
            ))
        } else {
            Epilogue::None
        };
        // With relu (or no activation) below, the product is its `dz`, final as
        // stored, whose columns are summed there rather than in a pass of their own.
        let sums = below
            .bias_sums
            .filter(|_| matches!(below.activation, Activation::Relu | Activation::Linear));
        let name = match (relu, sums.is_some()) {
            (true, true) => "input-gradient GEMM + relu mask + bias gradient",
            (true, false) => "input-gradient GEMM + relu mask",
            (false, true) => "input-gradient GEMM + bias gradient",
            (false, false) => "input-gradient GEMM",
        };
        let _span = profile::span(|| {
            gemm_work(name, rows, units, inputs)
                .layer(pass.layer)
                .bytes(4 * (rows * units + inputs * units + 2 * rows * inputs) as u64)
        });
        let kernel_t = MatRef::row_major(weights.kernel, inputs, units).t();
        let d_below = MatMut::row_major(&mut below.d_out[..rows * inputs], rows, inputs);
        let bias = sums.is_some();
        match sums {
            Some(sums) => gemm_column_sums(dz_mat, kernel_t, d_below, false, epilogue, sums),
            None => gemm(dz_mat, kernel_t, d_below, false, epilogue),
        }
        BelowDone {
            activation: relu || below.activation == Activation::Linear,
            bias,
        }
    }
}
