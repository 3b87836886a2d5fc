//! What `fit` and `evaluate` report.

use crate::checkpoint::TrainingProgress;

/// The averages of one epoch, as Keras' `History.history` holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochLogs {
    /// 0-based.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Samples trained on.
    pub samples: usize,
    pub loss: f64,
    pub accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Wall-clock time of the epoch's training steps (validation excluded).
    pub train_seconds: f64,
}

impl EpochLogs {
    /// A value by its Keras name: `loss`, `accuracy`, `val_loss`, `val_accuracy`.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "loss" => Some(self.loss),
            "accuracy" | "acc" => self.accuracy,
            "val_loss" => self.val_loss,
            "val_accuracy" | "val_acc" => self.val_accuracy,
            _ => None,
        }
    }
}

/// Every epoch's logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub epochs: Vec<EpochLogs>,
    /// Where the run stood when a callback interrupted it in the middle of an
    /// epoch ([`crate::Control::Interrupt`]); `None` when every epoch it began finished.
    pub interrupted: Option<TrainingProgress>,
}

impl History {
    /// One value per epoch, as `history.history["loss"]` (epochs without it are skipped).
    pub fn metric(&self, name: &str) -> Vec<f64> {
        self.epochs.iter().filter_map(|e| e.get(name)).collect()
    }

    /// Training time summed over epochs.
    pub fn train_seconds(&self) -> f64 {
        self.epochs.iter().map(|e| e.train_seconds).sum()
    }

    /// Samples trained on, summed over epochs.
    pub fn samples(&self) -> usize {
        self.epochs.iter().map(|e| e.samples).sum()
    }
}

/// The result of `evaluate`: the mean loss, and accuracy when it is a metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: Option<f64>,
}
