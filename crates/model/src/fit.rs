//! `fit` and `train_on_batch`: the training loop.

use crate::callbacks::{Callback, Control};
use crate::checkpoint::TrainingProgress;
use crate::error::ModelError;
use crate::history::{EpochLogs, History};
use crate::layers::Layer;
use crate::loss::Metric;
use crate::progress::{Progress, Verbosity};
use crate::sequential::Sequential;
use crate::step;
use crate::targets::TargetTable;
use crate::workspace::Workspace;
use kerno_data::EpochOrder;
use kerno_tensor::{with_workers_awake, Samples, Tensor};
use std::time::Instant;

/// A different stream of the model's seed for shuffling than for initialisation.
const SHUFFLE_SEED_SALT: u64 = 0x0053_4855_4646_4c45;

/// `fit`'s options, with Keras' defaults (`epochs=1`, `batch_size=32`, `shuffle=True`).
#[derive(Clone, Copy)]
pub struct FitOptions<'a> {
    pub epochs: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    /// The last fraction of the samples, before shuffling, held out for validation.
    pub validation_split: f64,
    pub validation_data: Option<(&'a dyn Samples, &'a Tensor)>,
    pub verbosity: Verbosity,
    /// Where to start: the beginning of epoch 0, or a point an earlier run reached.
    pub start: TrainingProgress,
}

impl Default for FitOptions<'_> {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            shuffle: true,
            validation_split: 0.0,
            validation_data: None,
            verbosity: Verbosity::Auto,
            start: TrainingProgress::default(),
        }
    }
}

impl<'a> FitOptions<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }

    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    pub fn shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    pub fn validation_split(mut self, split: f64) -> Self {
        self.validation_split = split;
        self
    }

    pub fn validation_data(mut self, x: &'a dyn Samples, y: &'a Tensor) -> Self {
        self.validation_data = Some((x, y));
        self
    }

    pub fn verbosity(mut self, verbosity: Verbosity) -> Self {
        self.verbosity = verbosity;
        self
    }

    /// Starts at the beginning of `epoch` (0-based), as Keras' `initial_epoch`.
    pub fn initial_epoch(mut self, epoch: usize) -> Self {
        self.start = TrainingProgress::start_of(epoch);
        self
    }

    /// Continues from a point an earlier run with the same settings reached, even in
    /// the middle of an epoch; with the weights and optimizer state of that point
    /// (a [`crate::Checkpoint`]), the run ends as if it had never stopped.
    pub fn resume_from(mut self, progress: TrainingProgress) -> Self {
        self.start = progress;
        self
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.batch_size == 0 {
            return Err(ModelError::invalid("batch size", "0 (must be at least 1)"));
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return Err(ModelError::invalid(
                "validation split",
                format!("{} (must be in [0, 1))", self.validation_split),
            ));
        }
        if self.validation_split > 0.0 && self.validation_data.is_some() {
            return Err(ModelError::invalid(
                "validation",
                "give validation_split or validation_data, not both",
            ));
        }
        Ok(())
    }
}

/// Validation samples: a held-out tail of the training set, or separate data.
struct Validation<'a> {
    x: &'a dyn Samples,
    targets: TargetTable<'a>,
    indices: Vec<usize>,
}

impl Sequential {
    /// Trains the model, as Keras' `fit`.
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
    /// let options = FitOptions::new().epochs(20).batch_size(16).verbosity(Verbosity::Silent);
    /// let history = model.fit(&x, &y, &options)?;
    /// let loss = history.metric("loss");
    /// assert!(loss[19] < loss[0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fit(
        &mut self,
        x: &dyn Samples,
        y: &Tensor,
        options: &FitOptions<'_>,
    ) -> Result<History, ModelError> {
        self.fit_with_callbacks(x, y, options, &mut [])
    }

    /// [`Sequential::fit`] with callbacks, called after each step and epoch.
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
    /// // Stops once the training loss has not improved for 2 epochs.
    /// let mut stop = EarlyStopping::new("loss", 2);
    /// let options = FitOptions::new().epochs(500).batch_size(64).verbosity(Verbosity::Silent);
    /// let history = model.fit_with_callbacks(&x, &y, &options, &mut [&mut stop])?;
    /// assert_eq!(history.epochs.len() < 500, stop.stopped_epoch.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fit_with_callbacks(
        &mut self,
        x: &dyn Samples,
        y: &Tensor,
        options: &FitOptions<'_>,
        callbacks: &mut [&mut dyn Callback],
    ) -> Result<History, ModelError> {
        options.validate()?;
        self.check_inputs(x)?;
        let compiled = self.compiled()?;
        let (loss, outputs) = (compiled.loss, self.output_dim());
        let n = x.len();
        let train_rows = (n as f64 * (1.0 - options.validation_split)).floor() as usize;
        if n == 0 {
            return Err(ModelError::invalid("training data", "it holds no samples"));
        }
        // Keras' split: an empty side is an error, not a run without validation.
        let split = options.validation_split;
        if train_rows == 0 || (split > 0.0 && train_rows == n) {
            return Err(ModelError::invalid(
                "validation split",
                format!(
                    "{n} samples are too few to split into training and validation sets \
                     with validation_split={split}: {train_rows} would train, {} validate",
                    n - train_rows
                ),
            ));
        }
        let targets = TargetTable::new(loss, y, n, outputs)?;
        let validation = match options.validation_data {
            Some((vx, vy)) => {
                self.check_inputs(vx)?;
                Some(Validation {
                    x: vx,
                    targets: TargetTable::new(loss, vy, vx.len(), outputs)?,
                    indices: (0..vx.len()).collect(),
                })
            }
            None if train_rows < n => Some(Validation {
                x,
                targets: TargetTable::new(loss, y, n, outputs)?,
                indices: (train_rows..n).collect(),
            }),
            None => None,
        };
        // A batch size above the sample count means one batch of them all.
        let mut ws = self.take_workspace(options.batch_size.min(train_rows));
        let result = self.fit_loop(
            &mut ws,
            x,
            &targets,
            train_rows,
            validation.as_ref(),
            options,
            callbacks,
        );
        self.workspace = Some(ws);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn fit_loop(
        &mut self,
        ws: &mut Workspace,
        x: &dyn Samples,
        targets: &TargetTable<'_>,
        train_rows: usize,
        validation: Option<&Validation<'_>>,
        options: &FitOptions<'_>,
        callbacks: &mut [&mut dyn Callback],
    ) -> Result<History, ModelError> {
        let with_accuracy = self.compiled()?.metrics.contains(&Metric::Accuracy);
        let steps = train_rows.div_ceil(options.batch_size);
        let mut order = EpochOrder::new(train_rows, self.seed ^ SHUFFLE_SEED_SALT);
        // Unshuffled batches keep the order they were given in.
        let classes = options.shuffle.then(|| targets.classes(train_rows));
        let mut progress = Progress::new(options.verbosity, options.epochs, steps);
        let mut history = History::default();
        let start = &options.start;
        if start.step > steps || start.samples > train_rows || start.correct > start.samples {
            return Err(ModelError::invalid(
                "resume point",
                format!(
                    "step {} ({} samples, {} right) of an epoch of {steps} steps",
                    start.step, start.samples, start.correct
                ),
            ));
        }
        let mut control = Control::Continue;
        for epoch in options.start.epoch..options.epochs {
            order.arrange(epoch as u64, options.shuffle);
            // A shuffled batch's samples by class: the batch, its mean loss and
            // gradient are the same, and digits of a class share their strokes, so
            // that the sparse first layer's groups of four samples have 10% fewer
            // nonzeros between them on MNIST, and its forward product as much less
            // work.
            if let Some(classes) = &classes {
                order.group_batches_by(options.batch_size, classes);
            }
            progress.epoch_begin(epoch);
            let mut done = if epoch == options.start.epoch {
                options.start
            } else {
                TrainingProgress::start_of(epoch)
            };
            let start = Instant::now();
            let mut batches = order
                .batches(options.batch_size)
                .enumerate()
                .skip(done.step)
                .peekable();
            with_workers_awake(|| {
                while let Some((step, batch)) = batches.next() {
                    let next = batches.peek().map(|&(_, next)| next);
                    let stats = self.train_step(ws, x, targets, batch, next);
                    done.loss_sum += stats.loss_sum;
                    done.correct += stats.correct;
                    done.samples += batch.len();
                    done.step = step + 1;
                    let batch_loss = (stats.loss_sum / batch.len() as f64) as f32;
                    for cb in callbacks.iter_mut() {
                        control = control.max(cb.on_batch_end(epoch, step, batch_loss)?);
                    }
                    let accuracy = with_accuracy.then(|| done.correct as f64 / done.samples as f64);
                    progress.batch_end(done.step, done.loss_sum / done.samples as f64, accuracy);
                    if control != Control::Continue {
                        break;
                    }
                }
                Ok::<(), ModelError>(())
            })?;
            if control == Control::Interrupt {
                progress.interrupted();
                history.interrupted = Some(done);
                return Ok(history);
            }
            let seen = done.samples.max(1) as f64;
            let mut logs = EpochLogs {
                epoch,
                steps: done.step,
                samples: done.samples,
                loss: done.loss_sum / seen,
                accuracy: with_accuracy.then(|| done.correct as f64 / seen),
                val_loss: None,
                val_accuracy: None,
                train_seconds: start.elapsed().as_secs_f64(),
            };
            if let Some(v) = validation {
                let eval =
                    self.evaluate_indices(ws, v.x, &v.targets, &v.indices, options.batch_size);
                logs.val_loss = Some(eval.loss);
                logs.val_accuracy = eval.accuracy;
            }
            progress.epoch_end(&logs);
            history.epochs.push(logs.clone());
            for cb in callbacks.iter_mut() {
                control = control.max(cb.on_epoch_end(&logs, self)?);
            }
            if control != Control::Continue {
                break;
            }
        }
        for cb in callbacks.iter_mut() {
            cb.on_train_end(self)?;
        }
        Ok(history)
    }

    /// One optimizer step on a whole batch (`x` and `y` hold exactly its samples);
    /// returns the batch's mean loss and accuracy. After the first call with a given
    /// batch size, it allocates nothing.
    pub fn train_on_batch(
        &mut self,
        x: &dyn Samples,
        y: &Tensor,
    ) -> Result<(f64, f64), ModelError> {
        let targets = self.whole_batch_targets(x, y)?;
        let rows = x.len();
        let stats = self.on_whole_batch(rows, |model, ws, indices| {
            model.train_step(ws, x, &targets, indices, None)
        });
        Ok((
            stats.loss_sum / rows as f64,
            stats.correct as f64 / rows as f64,
        ))
    }

    /// The gradient of the mean loss over `x` and `y` with respect to every
    /// parameter, in the order of [`Sequential::weights`]. Changes no weight.
    pub fn gradients(&mut self, x: &dyn Samples, y: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let targets = self.whole_batch_targets(x, y)?;
        let loss = self.compiled()?.loss;
        let grads = self.on_whole_batch(x.len(), |model, ws, indices| {
            step::run_batch(model, loss, ws, x, &targets, indices, true);
            let run = model.step_run(indices.len(), true);
            step::backward(&model.layers, ws, run, 0..model.layers.len());
            let shapes = model.layers.iter().flat_map(Layer::params);
            let grads = ws.dparams.iter().flatten();
            shapes
                .zip(grads)
                .map(|((_, shape, _), grad)| {
                    Tensor::from_vec(&shape, grad.to_vec())
                        .expect("gradient shapes match the layers")
                })
                .collect()
        });
        Ok(grads)
    }

    /// Checks a batch given whole (`x` and `y` hold exactly its samples) and its targets.
    fn whole_batch_targets<'y>(
        &self,
        x: &dyn Samples,
        y: &'y Tensor,
    ) -> Result<TargetTable<'y>, ModelError> {
        self.check_inputs(x)?;
        let loss = self.compiled()?.loss;
        if x.is_empty() {
            return Err(ModelError::invalid("batch", "it holds no samples"));
        }
        TargetTable::new(loss, y, x.len(), self.output_dim())
    }

    /// Runs `f` with the workspace and the indices `0..rows` of a batch given whole.
    fn on_whole_batch<R>(
        &mut self,
        rows: usize,
        f: impl FnOnce(&mut Self, &mut Workspace, &[usize]) -> R,
    ) -> R {
        let mut ws = self.take_workspace(rows);
        // Moved out and back so that `f` can borrow the workspace mutably.
        let sequence = std::mem::take(&mut ws.sequence);
        let result = f(self, &mut ws, &sequence[..rows]);
        ws.sequence = sequence;
        self.workspace = Some(ws);
        result
    }
}
