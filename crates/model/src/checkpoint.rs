//! Checkpoints: a model file that also holds the optimizer's state and where the
//! run stands, so that a run stopped after any step continues bit for bit.
//!
//! The shuffling needs no saved generator state: each epoch's order is a pure
//! function of the model's seed and the epoch number (see `kerno_data::EpochOrder`),
//! and the seed is in the file.

use crate::callbacks::{Callback, Control};
use crate::error::ModelError;
use crate::fit::FitOptions;
use crate::history::EpochLogs;
use crate::loss::{Loss, Metric};
use crate::optimizer::Optimizer;
use crate::policy::Policy;
use crate::sequential::Sequential;
use crate::weights;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a training run stands: the epoch under way, the steps of it already
/// taken, and that epoch's running sums (so its logged averages come out as in
/// an unbroken run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingProgress {
    /// 0-based; equal to the run's epoch count once the run is done.
    pub epoch: usize,
    pub step: usize,
    #[serde(with = "exact_f64")]
    pub loss_sum: f64,
    pub correct: usize,
    pub samples: usize,
}

impl TrainingProgress {
    /// The start of `epoch`, nothing of it done.
    pub fn start_of(epoch: usize) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }
}

/// The options of a run that its continuation must share.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub validation_split: f64,
}

impl RunSettings {
    /// The settings of `options` (validation data given apart is not part of them).
    pub fn of(options: &FitOptions<'_>) -> Self {
        Self {
            epochs: options.epochs,
            batch_size: options.batch_size,
            shuffle: options.shuffle,
            validation_split: options.validation_split,
        }
    }

    /// Fit options with these settings that continue from `progress`.
    pub fn resume_options<'a>(&self, progress: TrainingProgress) -> FitOptions<'a> {
        FitOptions::new()
            .epochs(self.epochs)
            .batch_size(self.batch_size)
            .shuffle(self.shuffle)
            .validation_split(self.validation_split)
            .resume_from(progress)
    }
}

/// What a checkpoint holds besides the weights.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub(crate) struct TrainingState {
    optimizer: Optimizer,
    loss: String,
    metrics: Vec<String>,
    iterations: u64,
    progress: TrainingProgress,
    settings: RunSettings,
    /// The dtype policy the run computes with (`float32` in files from before it was kept).
    #[serde(default)]
    policy: Policy,
}

/// A model read back from a checkpoint: compiled, with its optimizer's state.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: Sequential,
    pub progress: TrainingProgress,
    pub settings: RunSettings,
}

impl Checkpoint {
    /// [`Sequential::load_checkpoint`] from the bytes of a checkpoint file; `path`
    /// names it in errors.
    pub fn from_safetensors(bytes: &[u8], path: &Path) -> Result<Checkpoint, ModelError> {
        let (mut model, state, tensors) = weights::parse_model(path, bytes)?;
        let bad = |problem: String| ModelError::BadModelFile {
            path: path.to_path_buf(),
            problem,
        };
        let state = state.ok_or_else(|| {
            bad("a model file, not a checkpoint: it holds no training state".into())
        })?;
        let loss: Loss = state.loss.parse().map_err(bad)?;
        let metrics = state
            .metrics
            .iter()
            .map(|m| m.parse::<Metric>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let settings = state.settings;
        if settings.batch_size == 0 || !(0.0..1.0).contains(&settings.validation_split) {
            return Err(bad(format!("impossible run settings {settings:?}")));
        }
        // Keras counts iterations in an int64.
        if state.iterations > i64::MAX as u64 {
            return Err(bad(format!("{} iterations", state.iterations)));
        }
        if state.progress.epoch > settings.epochs {
            return Err(bad(format!(
                "it is at epoch {} of a {}-epoch run",
                state.progress.epoch, settings.epochs
            )));
        }
        model
            .compile(state.optimizer, loss, &metrics)
            .map_err(|e| bad(e.to_string()))?;
        let names = model.optimizer_slot_names(state.optimizer);
        let compiled = model
            .compiled
            .as_mut()
            .expect("compiled just above, without error");
        for (name, slot) in names.iter().zip(compiled.state.slots.iter_mut()) {
            let values = weights::tensor(path, &tensors, name, &[slot.len()])?;
            slot.copy_from_slice(&values);
        }
        compiled.state.iterations = state.iterations;
        model.set_dtype_policy(state.policy);
        Ok(Checkpoint {
            model,
            progress: state.progress,
            settings,
        })
    }

    /// The options that continue the run where the checkpoint left it.
    pub fn resume_options<'a>(&self) -> FitOptions<'a> {
        self.settings.resume_options(self.progress)
    }
}

impl Sequential {
    /// Writes a checkpoint: the model file of [`Sequential::save`] plus the
    /// optimizer's buffers and step count, the loss and metrics, the dtype
    /// policy, `progress` and `settings`. Written atomically; the model must be compiled.
    pub fn save_checkpoint(
        &self,
        path: impl AsRef<Path>,
        progress: &TrainingProgress,
        settings: &RunSettings,
    ) -> Result<(), ModelError> {
        let compiled = self.compiled()?;
        let state = TrainingState {
            optimizer: compiled.optimizer,
            loss: compiled.loss.name().to_string(),
            metrics: compiled
                .metrics
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            iterations: compiled.state.iterations,
            progress: *progress,
            settings: *settings,
            policy: self.policy,
        };
        let slots = self.optimizer_slot_names(compiled.optimizer);
        let extra = slots
            .into_iter()
            .zip(&compiled.state.slots)
            .map(|(name, values)| (name, &values[..]))
            .collect();
        self.write_model_file(path.as_ref(), Some(state), extra)
    }

    /// Reads a checkpoint written by [`Sequential::save_checkpoint`].
    pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint, ModelError> {
        let path = path.as_ref();
        Checkpoint::from_safetensors(&weights::read_file(path)?, path)
    }

    /// The names of the optimizer's buffers in the file, in the order of its state:
    /// `optimizer/<layer>/<kernel|bias>/<slot>`, with Keras' slot names.
    fn optimizer_slot_names(&self, optimizer: Optimizer) -> Vec<String> {
        let slot_names = optimizer.slot_names();
        self.layers
            .iter()
            .flat_map(|l| {
                l.params()
                    .into_iter()
                    .map(|(param, _, _)| (l.name(), param))
            })
            .flat_map(|(layer, param)| {
                let slots = slot_names.iter();
                slots.map(move |slot| format!("optimizer/{layer}/{param}/{slot}"))
            })
            .collect()
    }
}

/// Writes a checkpoint at the end of every epoch, so that an interrupted run can
/// continue from the last one finished (with [`Sequential::load_checkpoint`]).
#[derive(Clone, Debug)]
pub struct TrainingCheckpoint {
    pub path: PathBuf,
    pub settings: RunSettings,
}

impl TrainingCheckpoint {
    pub fn new(path: impl Into<PathBuf>, settings: RunSettings) -> Self {
        Self {
            path: path.into(),
            settings,
        }
    }
}

impl Callback for TrainingCheckpoint {
    fn on_epoch_end(
        &mut self,
        logs: &EpochLogs,
        model: &mut Sequential,
    ) -> Result<Control, ModelError> {
        let next = TrainingProgress::start_of(logs.epoch + 1);
        model.save_checkpoint(&self.path, &next, &self.settings)?;
        Ok(Control::Continue)
    }
}

/// An f64 as the text Rust prints for it, which reads back to the same bits
/// (JSON numbers cannot hold NaN or the infinities a diverged run may sum to).
mod exact_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("'{text}' is not a number")))
    }
}
