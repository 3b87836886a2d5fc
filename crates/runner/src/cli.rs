//! Command-line arguments, each checked as it is parsed.

use crate::models::ModelKind;
use clap::{Args, Parser, Subcommand};
use kerno_data::DatasetKind;
use kerno_model::{Optimizer, Policy};
use std::path::PathBuf;

/// Train, evaluate and predict with the Keras MNIST model, fast on a CPU.
/// With no command, runs the notebook: MNIST, 5 epochs, batch 128, then the test accuracy.
#[derive(Parser, Debug)]
#[command(name = "kerno", version = VERSION)]
pub struct Cli {
    /// Print results only: no progress, no notes on stderr (errors still go there).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `kerno --version`: the crate version and the commit the binary was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KERNO_GIT_COMMIT"),
    ")"
);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train the notebook's model, then report test loss and accuracy.
    Train(TrainArgs),
    /// Report test loss and accuracy of a saved model.
    Evaluate(EvaluateArgs),
    /// Print a saved model's predictions for test images.
    Predict(PredictArgs),
    /// Measure the FMA peak, then time steady-state training epochs against it.
    Bench(BenchArgs),
    /// Time every kernel of the training step: a table, JSON, or a Chrome trace.
    Profile(ProfileArgs),
    /// Print a model's summary table: the notebook's, or a saved model's.
    Summary(SummaryArgs),
    /// Draw loss and accuracy per epoch from a `train --log` CSV file.
    Plot(PlotArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct SummaryArgs {
    /// mlp or convnet (the models `train --model` builds), or a saved model or
    /// checkpoint to describe [default: mlp].
    #[arg(long, value_name = "mlp|convnet|FILE")]
    pub model: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Folder holding the dataset's IDX files (or mnist.npz); never downloads.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// mnist or fashion-mnist.
    #[arg(long, default_value = "mnist", value_parser = parse_dataset)]
    pub dataset: DatasetKind,
}

/// The options a resumed run takes from its checkpoint.
const RUN_SETTINGS: [&str; 9] = [
    "model",
    "batch_size",
    "optimizer",
    "lr",
    "seed",
    "precision",
    "validation_split",
    "no_shuffle",
    "init_weights",
];

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// mlp (the notebook's Dense(512, relu) → Dense(10, softmax)) or convnet
    /// (the next chapter's: three 3×3 convolutions, two max poolings, two Dense).
    #[arg(long, default_value = "mlp", value_parser = parse_model)]
    pub model: ModelKind,
    /// Epochs to train [default: 5, or with --resume the checkpoint's].
    #[arg(long, value_parser = at_least_one)]
    pub epochs: Option<usize>,
    /// Samples per optimizer step [default: 128 for mlp, 64 for convnet].
    #[arg(long, value_parser = at_least_one)]
    pub batch_size: Option<usize>,
    /// rmsprop, sgd or adam (Keras' defaults for each).
    #[arg(long, default_value = "rmsprop", value_parser = parse_optimizer)]
    pub optimizer: Optimizer,
    /// Learning rate (default: the optimizer's Keras default).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_learning_rate)]
    pub lr: Option<f32>,
    /// Seed of the weight initialisation and the shuffling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// f32 (the default) or mixed-bf16: Keras' mixed_bfloat16 policy, layers
    /// computing in bf16, weights and optimizer state in f32 [default: f32, or
    /// with --resume the checkpoint's].
    #[arg(long, value_name = "f32|mixed-bf16", value_parser = parse_policy)]
    pub precision: Option<Policy>,
    /// Worker threads (default: all cores).
    #[arg(long, env = "KERNO_THREADS", value_parser = parse_threads)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Fraction of the training set, taken from its end, held out for validation.
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = parse_split)]
    pub validation_split: f64,
    /// Visit the training samples in order instead of shuffling each epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Start from the weights of a saved model instead of a fresh initialisation.
    #[arg(long, value_name = "PATH")]
    pub init_weights: Option<PathBuf>,
    /// Save the trained model (safetensors, written atomically).
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// Write a checkpoint (weights, optimizer state, where the run stands) after
    /// every epoch and on Ctrl-C, for --resume.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Continue the run of a checkpoint, with its settings; it ends exactly as the
    /// run would have without the stop. Later checkpoints go to the same file
    /// unless --checkpoint says otherwise.
    #[arg(long, value_name = "PATH", conflicts_with_all = RUN_SETTINGS)]
    pub resume: Option<PathBuf>,
    /// Keep training when the loss becomes NaN or infinite (by default training
    /// stops with an error naming the epoch and step).
    #[arg(long)]
    pub no_terminate_on_nan: bool,
    /// Write each epoch's logs to a CSV file as Keras' CSVLogger does (header
    /// `epoch,accuracy,loss[,val_accuracy,val_loss]`, a row flushed per epoch);
    /// with --resume the rows are appended.
    #[arg(long, value_name = "FILE.csv")]
    pub log: Option<PathBuf>,
    /// Print one JSON object (history, test results, dataset) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        Self {
            model: ModelKind::Mlp,
            epochs: None,
            batch_size: None,
            optimizer: Optimizer::rmsprop(),
            lr: None,
            seed: 1,
            precision: None,
            threads: None,
            data: DataArgs {
                data: None,
                dataset: DatasetKind::Mnist,
            },
            validation_split: 0.0,
            no_shuffle: false,
            init_weights: None,
            save: None,
            checkpoint: None,
            resume: None,
            no_terminate_on_nan: false,
            log: None,
            json: false,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct EvaluateArgs {
    /// A model saved by `kerno train --save`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Worker threads (default: all cores).
    #[arg(long, env = "KERNO_THREADS", value_parser = parse_threads)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Also draw the confusion matrix (PNG or SVG, by the extension) and print
    /// per-class accuracy and the most confused pairs.
    #[arg(long, value_name = "OUT.png|OUT.svg")]
    pub confusion: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// A model saved by `kerno train --save`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Your own images (PNG, JPEG, BMP, GIF; any size, colour or grey, dark ink on
    /// light or the reverse), prepared as MNIST's digits were. Without it, the
    /// dataset's test images are predicted.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// Also print the next most likely classes, K in all.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = at_least_one)]
    pub top: usize,
    /// Write the 28×28 image the model saw for each --image to DIR (as PNG).
    #[arg(long, value_name = "DIR", requires = "image")]
    pub save_preprocessed: Option<PathBuf>,
    /// Index of the first test image.
    #[arg(long, default_value_t = 0, conflicts_with = "image")]
    pub start: usize,
    /// How many test images.
    #[arg(long, default_value_t = 10, value_parser = at_least_one, conflicts_with = "image")]
    pub count: usize,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object per image instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A log written by `kerno train --log` (or Keras' CSVLogger).
    #[arg(value_name = "FILE.csv")]
    pub log: PathBuf,
    /// The picture to write: PNG or SVG, by the extension.
    #[arg(long, short, value_name = "OUT.png|OUT.svg")]
    pub output: PathBuf,
}

/// What `bench` and `profile` share: the training they time.
#[derive(Args, Debug, Clone)]
pub struct TimedTraining {
    /// mlp (the notebook's) or convnet (the next chapter's).
    #[arg(long, default_value = "mlp", value_parser = parse_model)]
    pub model: ModelKind,
    /// Samples per optimizer step [default: 128 for mlp, 64 for convnet].
    #[arg(long, value_parser = at_least_one)]
    pub batch_size: Option<usize>,
    /// f32 (the default) or mixed-bf16: Keras' mixed_bfloat16 policy, layers
    /// computing in bf16, weights and optimizer state in f32.
    #[arg(long, value_name = "f32|mixed-bf16", value_parser = parse_policy)]
    pub precision: Option<Policy>,
    /// Worker threads (default: all cores).
    #[arg(long, env = "KERNO_THREADS", value_parser = parse_threads)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Every batch through the dense GEMMs, zeros of the input included (to
    /// measure them): by default a batch mostly zeros skips them.
    #[arg(long)]
    pub dense_input: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Epochs to time, after one warm-up epoch.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub epochs: usize,
    #[command(flatten)]
    pub training: TimedTraining,
    /// Append this run (time, commit, machine, figures) as one JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Print the change of each figure against the last record in FILE.
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,
}

/// clap's error as one line: its first paragraph and its "did you mean" tips,
/// without the usage after them.
pub fn one_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let mut line: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let tips = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"));
    line.extend(tips);
    line.join("; ")
}

#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Training steps to profile.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub steps: usize,
    /// Steps run first without profiling, to reach the steady state.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    #[command(flatten)]
    pub training: TimedTraining,
    /// Also write a Chrome trace (JSON trace events: Perfetto, chrome://tracing).
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("must be a whole number of at least 1".into()),
    }
}

/// More threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {MAX_THREADS}")),
    }
}

fn parse_learning_rate(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("must be a finite number above 0".into()),
    }
}

fn parse_split(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        _ => Err("must be in [0, 1)".into()),
    }
}

fn parse_optimizer(s: &str) -> Result<Optimizer, String> {
    s.parse()
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse()
}

fn parse_model(s: &str) -> Result<ModelKind, String> {
    s.parse()
}

fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    s.parse()
}

impl TimedTraining {
    /// The batch size asked for, or the model's own.
    pub fn batch_size(&self) -> usize {
        self.batch_size
            .unwrap_or_else(|| self.model.default_batch_size())
    }
}
