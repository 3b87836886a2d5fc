//! The schedule of a training step: which kernels overlap. The network loop
//! itself (`step.rs`) runs the layers in order; here its pieces are arranged
//! so that the two threads stay busy:
//! - with a sparse first batch, the nonzeros by columns (read only by the first
//!   layer's weight gradient) are built while the layers above run forward and back;
//! - the next batch and its targets are loaded while the optimizer updates the weights;
//! - the next batch's rows are prefetched by whichever thread is idle first.

use crate::layers::build_input_columns;
use crate::layers::Layer;
use crate::sequential::Sequential;
use crate::step::{self, StepRun};
use crate::targets::TargetTable;
use crate::workspace::Workspace;
use kerno_tensor::dropout::splitmix64;
use kerno_tensor::loss::LossStats;
use kerno_tensor::profile::{self, Level, Work};
use kerno_tensor::{join_awake, Samples};
use std::sync::atomic::{AtomicBool, Ordering};

/// A stream of the model's seed apart from initialisation and shuffling.
const DROPOUT_SEED_SALT: u64 = 0x4452_4f50_4f55_5421;

/// The seed of the random draws of optimizer step `iteration` (1 for the
/// first): a function of the model's seed and the step alone, so that a
/// resumed run draws the same masks.
fn dropout_seed(seed: u64, iteration: u64) -> u64 {
    splitmix64(seed ^ DROPOUT_SEED_SALT) ^ splitmix64(iteration)
}

impl Sequential {
    /// The mask the next training step's forward pass draws for the `Dropout`
    /// layer `layer` on a batch of `rows` samples (`rows × its values`, each
    /// `1 / (1 - rate)` or 0); `None` when that layer is not a `Dropout`.
    pub fn next_dropout_mask(&self, layer: usize, rows: usize) -> Option<Vec<f32>> {
        let Some(Layer::Dropout(dropout)) = self.layers.get(layer) else {
            return None;
        };
        let pass = self.step_run(rows, true).pass(layer, true);
        let mut mask = vec![0.0; rows * self.layers[layer].output_len()];
        kerno_tensor::dropout::dropout_mask(dropout.rate(), pass.seed, &mut mask);
        Some(mask)
    }

    /// How a step on `rows` samples runs; when training, with the random draws
    /// of the next optimizer step.
    pub(crate) fn step_run(&self, rows: usize, training: bool) -> StepRun {
        let iterations = self.compiled.as_ref().map_or(0, |c| c.state.iterations);
        StepRun {
            rows,
            training,
            seed: dropout_seed(self.seed, iterations + 1),
        }
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
        let step = self.step_run(indices.len(), true);
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
            step::gather_targets(targets, indices, &mut ws.y, &mut ws.classes);
        }
        let (layers, loss) = (&self.layers[..], compiled.loss);
        let all = 0..layers.len();
        let fused = step::fused_softmax_xent(layers, loss);
        let stats = if ws.input.is_sparse {
            // A sparse batch's entries by columns are built while the layers above
            // the first run forward and back: those are thin products that leave
            // the other thread mostly idle, and only the first layer's weight
            // gradient reads the columns.
            let (first, above) = (0..1, 1..layers.len());
            step::forward(layers, ws, step, !fused, first.clone());
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
                    let stats = step::forward_and_loss(layers, loss, ws, targets, step, run);
                    step::backward(layers, ws, step, above);
                    prefetch_if_first();
                    stats
                },
                || {
                    build_input_columns(&mut sparse);
                    prefetch_if_first();
                },
            );
            ws.input.sparse = sparse;
            step::backward(layers, ws, step, first);
            stats
        } else {
            let run = all.clone();
            let stats = step::forward_and_loss(layers, loss, ws, targets, step, run);
            step::backward(layers, ws, step, all);
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
                step::gather_targets(targets, next, &mut y, &mut classes);
            },
        );
        (ws.input, ws.y, ws.classes) = (input, y, classes);
        ws.first_layer_finite &= finite;
        ws.input.loaded_ahead.extend_from_slice(next);
        stats
    }
}
