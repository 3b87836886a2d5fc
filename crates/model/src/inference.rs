//! `evaluate` and `predict`.

use crate::error::ModelError;
use crate::history::Evaluation;
use crate::loss::Metric;
use crate::sequential::Sequential;
use crate::step;
use crate::targets::TargetTable;
use crate::workspace::Workspace;
use kerno_tensor::loss::LossStats;
use kerno_tensor::{Samples, Tensor};

impl Sequential {
    /// The mean loss (and accuracy, when compiled with it) over `x` and `y`, in
    /// batches of `batch_size` (Keras' default is 32; the result does not depend on it).
    ///
    /// ```
    /// # use kerno_model::*;
    /// # use kerno_tensor::Tensor;
    /// // 64 samples of 16 features; the label is which quarter of them is lit.
    /// let (n, classes) = (64, 4);
    /// let x: Vec<f32> = (0..n * 16).map(|i| ((i % 16) / 4 == (i / 16) % 4) as u8 as f32).collect();
    /// let y: Vec<f32> = (0..n * classes).map(|i| ((i % 4) == (i / 4) % 4) as u8 as f32).collect();
    /// let (x, y) = (Tensor::from_vec(&[n, 16], x)?, Tensor::from_vec(&[n, classes], y)?);
    /// let mut model = Sequential::new(16)
    ///     .add(Dense::new(32, Activation::Relu))
    ///     .add(Dense::new(classes, Activation::Softmax));
    /// model.compile(Optimizer::rmsprop(), Loss::CategoricalCrossentropy, &[Metric::Accuracy])?;
    /// model.fit(&x, &y, &FitOptions::new().epochs(30).verbosity(Verbosity::Silent))?;
    /// let result = model.evaluate(&x, &y, 32)?;
    /// assert!(result.accuracy.unwrap() > 0.9, "{result:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            let stats = step::run_batch(self, compiled.loss, ws, x, targets, batch, false);
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
    ///
    /// ```
    /// use kerno_model::{Activation, Dense, Sequential};
    /// use kerno_tensor::Tensor;
    /// let mut model = Sequential::new(3)
    ///     .add(Dense::new(8, Activation::Relu))
    ///     .add(Dense::new(2, Activation::Softmax));
    /// let x = Tensor::from_vec(&[2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])?;
    /// let probabilities = model.predict(&x, 32)?;
    /// assert_eq!(probabilities.shape(), &[2, 2]);
    /// assert!((probabilities.row(0).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    /// let classes = probabilities.argmax_rows();
    /// assert!(classes.iter().all(|&c| c < 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            let run = self.step_run(rows, false);
            step::forward(&self.layers, &mut ws, run, last_activation, all);
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
