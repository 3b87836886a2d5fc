//! `evaluate` and `predict`.

use crate::error::ModelError;
use crate::history::Evaluation;
use crate::loss::Metric;
use crate::sequential::{run_batch, Sequential};
use crate::step;
use crate::targets::TargetTable;
use crate::workspace::Workspace;
use kerno_tensor::loss::LossStats;
use kerno_tensor::{Samples, Tensor};

impl Sequential {
    /// The mean loss (and accuracy, when compiled with it) over `x` and `y`, in
    /// batches of `batch_size` (Keras' default is 32; the result does not depend on it).
    pub fn evaluate(
        &mut self,
        x: &dyn Samples,
        y: &Tensor,
        batch_size: usize,
    ) -> Result<Evaluation, ModelError> {
        check_batch_size(batch_size)?;
        self.check_inputs(x)?;
        if x.is_empty() {
            // As Keras: a mean over no samples is no result.
            return Err(ModelError::invalid(
                "data",
                "it holds no samples to evaluate",
            ));
        }
        let loss = self.compiled()?.loss;
        let targets = TargetTable::new(loss, y, x.len(), self.output_dim())?;
        let indices: Vec<usize> = (0..x.len()).collect();
        let mut ws = self.take_workspace(batch_size.min(x.len()));
        let eval = self.evaluate_indices(&mut ws, x, &targets, &indices, batch_size);
        self.workspace = Some(ws);
        Ok(eval)
    }

    pub(crate) fn evaluate_indices(
        &self,
        ws: &mut Workspace,
        x: &dyn Samples,
        targets: &TargetTable<'_>,
        indices: &[usize],
        batch_size: usize,
    ) -> Evaluation {
        let compiled = self
            .compiled
            .as_ref()
            .expect("callers check that the model is compiled");
        let mut total = LossStats::default();
        for batch in indices.chunks(batch_size.min(ws.capacity)) {
            let stats = run_batch(
                &self.layers,
                self.input_dim,
                compiled.loss,
                ws,
                x,
                targets,
                batch,
                false,
            );
            total.loss_sum += stats.loss_sum;
            total.correct += stats.correct;
        }
        let n = indices.len().max(1) as f64;
        Evaluation {
            loss: total.loss_sum / n,
            accuracy: compiled
                .metrics
                .contains(&Metric::Accuracy)
                .then(|| total.correct as f64 / n),
        }
    }

    /// The model's outputs for every sample of `x` (probabilities after a softmax),
    /// computed in batches of `batch_size`. Needs no `compile`.
    pub fn predict(&mut self, x: &dyn Samples, batch_size: usize) -> Result<Tensor, ModelError> {
        check_batch_size(batch_size)?;
        self.check_inputs(x)?;
        if self.layers.is_empty() {
            return Err(ModelError::invalid("model", "it has no layers"));
        }
        let outputs = self.output_dim();
        let mut result = Vec::with_capacity(x.len() * outputs);
        let indices: Vec<usize> = (0..x.len()).collect();
        let mut ws = self.take_workspace(batch_size.min(x.len()));
        for batch in indices.chunks(batch_size.min(ws.capacity)) {
            let rows = batch.len();
            let sparse_allowed = ws.sparse_input_allowed();
            step::load_input(x, batch, &mut ws.input, sparse_allowed);
            let (last_activation, all) = (true, 0..self.layers.len());
            step::forward(
                &self.layers,
                self.input_dim,
                &mut ws,
                rows,
                last_activation,
                all,
            );
            let last = ws.outputs.len() - 1;
            result.extend_from_slice(&ws.outputs[last][..rows * outputs]);
        }
        self.workspace = Some(ws);
        Ok(Tensor::from_vec(&[x.len(), outputs], result).expect("one row of outputs per sample"))
    }
}

fn check_batch_size(batch_size: usize) -> Result<(), ModelError> {
    if batch_size == 0 {
        return Err(ModelError::invalid("batch size", "0 (must be at least 1)"));
    }
    Ok(())
}
