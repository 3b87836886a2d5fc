//! Every buffer a training step touches, allocated once per (model, batch size),
//! so that the steady-state training loop allocates nothing.

use crate::layers::Layer;
use crate::policy::Policy;
use kerno_tensor::{bf16, AlignedBuf, SparseRows};

/// A batch of inputs: its values and, when it is sparse enough for the first
/// layer's products to skip its zeros, its nonzeros.
#[derive(Default)]
pub(crate) struct InputBatch {
    /// `rows × inputs`, row-major; not written for a sparse batch whose samples
    /// compress without being gathered.
    pub x: AlignedBuf,
    pub sparse: SparseRows,
    pub is_sparse: bool,
    /// Whether its values are rounded to bf16 as they are loaded (`mixed_bfloat16`).
    pub round_to_bf16: bool,
    /// The samples a training step loaded, with their targets, for the step
    /// after it; empty after any other load.
    pub loaded_ahead: Vec<usize>,
}

pub(crate) struct Workspace {
    /// Rows the buffers hold.
    pub capacity: usize,
    /// The batch the step runs on, up to `capacity` rows.
    pub input: InputBatch,
    /// Whether each input (row of the first kernel) is 0 in every sample of the
    /// batch, taken from a sparse batch for the update, which may run while the
    /// next batch is loaded; empty for a dense one.
    pub zero_inputs: Vec<bool>,
    /// Whether a sparse batch may take the sparse products (the model's setting).
    pub skip_input_zeros: bool,
    /// Whether the first layer's kernel (and under `mixed_bfloat16` its bf16
    /// copy) and its optimizer state hold only finite values. The sparse products skip the zeros of a batch, which is exact only
    /// then: `0 · NaN` and `0 · ∞` are NaN, and RMSprop's update of a row of zero
    /// gradients is its velocity's decay alone only when the velocity is finite.
    pub first_layer_finite: bool,
    /// Dense targets of the batch, `capacity × outputs`.
    pub y: AlignedBuf,
    /// Class targets of the batch.
    pub classes: Vec<u32>,
    /// Each layer's output (after its activation; logits for a fused last layer).
    pub outputs: Vec<AlignedBuf>,
    /// Gradient with respect to each layer's output, turned in place into the
    /// gradient with respect to its pre-activation.
    pub grads: Vec<AlignedBuf>,
    /// Each layer's parameter gradients, in the order of its parameters.
    pub dparams: Vec<Vec<AlignedBuf>>,
    /// Whether each layer's bias gradient is summed already this step (by the
    /// loss kernel or the backward pass of the layer above).
    pub bias_grad_done: Vec<bool>,
    /// Each layer's scratch (a convolution's partial sums, a dropout's mask).
    pub scratch: Vec<AlignedBuf>,
    /// `0..capacity`, the sample indices of a batch given whole.
    pub sequence: Vec<usize>,
    /// The policy the layers compute with.
    pub policy: Policy,
    /// Under `mixed_bfloat16`, each layer's parameters rounded to bf16, which
    /// its passes compute with, refreshed by each update; empty under `float32`.
    pub compute_params: Vec<Vec<AlignedBuf>>,
}

impl Workspace {
    pub fn new(layers: &[Layer], input_len: usize, capacity: usize) -> Self {
        let deepest = layers.iter().map(|l| l.deepest_product(capacity)).max();
        kerno_tensor::reserve_packing_buffers(deepest.unwrap_or(0).max(capacity));
        let patches = layers.iter().map(Layer::patch_buffer_len).max();
        if let Some(len) = patches.filter(|&len| len > 0) {
            let chunk_outputs = (0..layers.len())
                .filter_map(|l| crate::layers::pooled_conv(layers, l))
                .map(|(conv, _)| conv.chunk_output_len())
                .max();
            kerno_tensor::conv::reserve_patch_buffers(len, chunk_outputs.unwrap_or(0));
        }
        let outputs_len = layers.last().map_or(input_len, Layer::output_len);
        let per_layer = |len: &dyn Fn(&Layer) -> usize| {
            layers
                .iter()
                .map(|l| AlignedBuf::zeros(len(l)))
                .collect::<Vec<_>>()
        };
        Self {
            capacity,
            input: InputBatch {
                x: AlignedBuf::zeros(capacity * input_len),
                // Its buffers come with the first batch, sized by the density limit.
                sparse: SparseRows::default(),
                is_sparse: false,
                round_to_bf16: false,
                loaded_ahead: Vec::with_capacity(capacity),
            },
            zero_inputs: Vec::with_capacity(input_len),
            skip_input_zeros: true,
            first_layer_finite: true,
            y: AlignedBuf::zeros(capacity * outputs_len),
            classes: vec![0; capacity],
            outputs: per_layer(&|l| capacity * l.output_len()),
            grads: per_layer(&|l| capacity * l.output_len()),
            dparams: layers
                .iter()
                .map(|l| {
                    let params = l.params();
                    params
                        .iter()
                        .map(|(_, _, v)| AlignedBuf::zeros(v.len()))
                        .collect()
                })
                .collect(),
            bias_grad_done: vec![false; layers.len()],
            scratch: per_layer(&|l| l.scratch_len(capacity)),
            sequence: (0..capacity).collect(),
            policy: Policy::Float32,
            compute_params: Vec::new(),
        }
    }

    /// Computes under `policy` (a new workspace's is `float32`): under
    /// `mixed_bfloat16`, with `layers`' parameters as they are now, rounded to bf16.
    pub fn use_policy(&mut self, policy: Policy, layers: &[Layer]) {
        self.policy = policy;
        self.input.round_to_bf16 = policy.is_bf16();
        self.compute_params.clear();
        if !policy.is_bf16() {
            return;
        }
        for (l, layer) in layers.iter().enumerate() {
            let params = layer.param_values().into_iter().flatten();
            let mut copies = Vec::with_capacity(2);
            for (i, values) in params.enumerate() {
                let mut copy = AlignedBuf::zeros(values.len());
                let finite = bf16::round_into(values, &mut copy);
                // The sparse products' shortcut needs the kernel they read finite;
                // a finite weight past bf16's largest is infinite in its copy.
                if (l, i) == (0, 0) {
                    self.first_layer_finite &= finite;
                }
                copies.push(copy);
            }
            self.compute_params.push(copies);
        }
    }

    /// Whether a batch may be loaded as its nonzeros for the sparse products.
    pub fn sparse_input_allowed(&self) -> bool {
        self.skip_input_zeros && self.first_layer_finite
    }

    /// Whether this workspace fits `layers` with batches of `rows`.
    pub fn fits(&self, layers: &[Layer], input_len: usize, rows: usize) -> bool {
        rows <= self.capacity
            && self.input.x.len() == self.capacity * input_len
            && self.outputs.len() == layers.len()
            && self
                .outputs
                .iter()
                .zip(layers)
                .all(|(o, l)| o.len() == self.capacity * l.output_len())
    }
}
