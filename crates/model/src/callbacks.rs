//! Callbacks run by `fit`: early stopping, checkpoints, stopping on a NaN loss.

use crate::error::ModelError;
use crate::history::EpochLogs;
use crate::sequential::Sequential;
use kerno_tensor::Tensor;
use std::path::PathBuf;

/// Whether training goes on after a callback. When callbacks disagree, the later
/// variant wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Control {
    Continue,
    /// Finish this epoch (its validation and epoch-end callbacks run), then stop,
    /// as Keras' `model.stop_training = True`.
    Stop,
    /// Stop right after this step, in the middle of the epoch: no validation and no
    /// epoch-end or train-end callbacks. [`crate::History::interrupted`] says where
    /// to continue from, for a checkpoint.
    Interrupt,
}

/// Hooks into `fit`. An error stops training and is returned by `fit`.
pub trait Callback {
    /// After each optimizer step, with the batch's mean loss.
    fn on_batch_end(
        &mut self,
        _epoch: usize,
        _step: usize,
        _loss: f32,
    ) -> Result<Control, ModelError> {
        Ok(Control::Continue)
    }

    /// After each epoch (and its validation).
    fn on_epoch_end(
        &mut self,
        _logs: &EpochLogs,
        _model: &mut Sequential,
    ) -> Result<Control, ModelError> {
        Ok(Control::Continue)
    }

    /// Once training ends, stopped early or not.
    fn on_train_end(&mut self, _model: &mut Sequential) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Whether larger values of a monitored quantity are better (`accuracy`) or smaller (`loss`).
fn higher_is_better(monitor: &str) -> bool {
    monitor.contains("acc")
}

fn monitored(logs: &EpochLogs, monitor: &str) -> Result<f64, ModelError> {
    logs.get(monitor).ok_or_else(|| {
        ModelError::invalid(
            "monitor",
            format!("'{monitor}' is not among this run's logs (val_* needs validation data)"),
        )
    })
}

fn improves(current: f64, best: Option<f64>, min_delta: f64, higher: bool) -> bool {
    match best {
        None => true,
        Some(best) if higher => current - min_delta.abs() > best,
        Some(best) => current + min_delta.abs() < best,
    }
}

/// Stops training when a monitored quantity stops improving (Keras' `EarlyStopping`).
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    pub monitor: String,
    pub min_delta: f64,
    pub patience: usize,
    pub restore_best_weights: bool,
    best: Option<f64>,
    wait: usize,
    best_weights: Option<Vec<Tensor>>,
    /// The epoch (0-based) at which training was stopped, if it was.
    pub stopped_epoch: Option<usize>,
}

impl Default for EarlyStopping {
    /// Keras' defaults: monitor `val_loss`, `min_delta` 0, patience 0.
    fn default() -> Self {
        Self::new("val_loss", 0)
    }
}

impl EarlyStopping {
    pub fn new(monitor: impl Into<String>, patience: usize) -> Self {
        Self {
            monitor: monitor.into(),
            min_delta: 0.0,
            patience,
            restore_best_weights: false,
            best: None,
            wait: 0,
            best_weights: None,
            stopped_epoch: None,
        }
    }

    pub fn min_delta(mut self, min_delta: f64) -> Self {
        self.min_delta = min_delta;
        self
    }

    pub fn restore_best_weights(mut self, restore: bool) -> Self {
        self.restore_best_weights = restore;
        self
    }
}

impl Callback for EarlyStopping {
    fn on_epoch_end(
        &mut self,
        logs: &EpochLogs,
        model: &mut Sequential,
    ) -> Result<Control, ModelError> {
        let current = monitored(logs, &self.monitor)?;
        self.wait += 1;
        if improves(
            current,
            self.best,
            self.min_delta,
            higher_is_better(&self.monitor),
        ) {
            self.best = Some(current);
            self.wait = 0;
            if self.restore_best_weights {
                self.best_weights = Some(model.weights());
            }
            return Ok(Control::Continue);
        }
        if self.wait >= self.patience && logs.epoch > 0 {
            self.stopped_epoch = Some(logs.epoch);
            if let Some(best) = &self.best_weights {
                model.set_weights(best)?;
            }
            return Ok(Control::Stop);
        }
        Ok(Control::Continue)
    }
}

/// Saves the model after each epoch, or only when a monitored quantity improves
/// (Keras' `ModelCheckpoint`). `{epoch}` in the path becomes the 1-based epoch, two digits.
#[derive(Clone, Debug)]
pub struct ModelCheckpoint {
    pub path: PathBuf,
    pub monitor: String,
    pub save_best_only: bool,
    best: Option<f64>,
}

impl ModelCheckpoint {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            monitor: "val_loss".to_string(),
            save_best_only: false,
            best: None,
        }
    }

    pub fn monitor(mut self, monitor: impl Into<String>) -> Self {
        self.monitor = monitor.into();
        self
    }

    pub fn save_best_only(mut self, best_only: bool) -> Self {
        self.save_best_only = best_only;
        self
    }

    fn path_for(&self, epoch: usize) -> PathBuf {
        let text = self.path.to_string_lossy();
        if text.contains("{epoch}") {
            PathBuf::from(text.replace("{epoch}", &format!("{:02}", epoch + 1)))
        } else {
            self.path.clone()
        }
    }
}

impl Callback for ModelCheckpoint {
    fn on_epoch_end(
        &mut self,
        logs: &EpochLogs,
        model: &mut Sequential,
    ) -> Result<Control, ModelError> {
        if self.save_best_only {
            let current = monitored(logs, &self.monitor)?;
            if !improves(current, self.best, 0.0, higher_is_better(&self.monitor)) {
                return Ok(Control::Continue);
            }
            self.best = Some(current);
        }
        model.save(self.path_for(logs.epoch))?;
        Ok(Control::Continue)
    }
}

/// Stops training with [`ModelError::NonFiniteLoss`] when a batch's loss is NaN or
/// infinite (Keras' `TerminateOnNaN`, which names where it happened).
#[derive(Clone, Copy, Debug, Default)]
pub struct TerminateOnNaN;

impl Callback for TerminateOnNaN {
    fn on_batch_end(
        &mut self,
        epoch: usize,
        step: usize,
        loss: f32,
    ) -> Result<Control, ModelError> {
        if loss.is_finite() {
            Ok(Control::Continue)
        } else {
            Err(ModelError::NonFiniteLoss {
                epoch: epoch + 1,
                step: step + 1,
                value: loss,
            })
        }
    }
}
