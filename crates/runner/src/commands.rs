//! What each command does.

use crate::cli::{Cli, Command, DataArgs, EvaluateArgs, TrainArgs};
use crate::interrupt::{self, Interrupted};
use crate::models::ModelKind;
use crate::output::{dataset_json, Output};
use anyhow::{Context, Result};
use kerno_data::{to_categorical, Dataset, DatasetKind};
use kerno_model::{
    Callback, CsvLogger, Evaluation, History, Loss, Metric, Optimizer, RunSettings, Sequential,
    TerminateOnNaN, TrainingCheckpoint, TrainingProgress,
};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The notebook's `model.fit(..., epochs=5)`.
const DEFAULT_EPOCHS: usize = 5;

/// Pixels are bytes; the notebook divides them by 255.
pub(crate) const PIXEL_SCALE: f32 = 255.0;

/// Runs a parsed command line. A run stopped by Ctrl-C ends in an [`Interrupted`] error.
pub fn run(cli: Cli) -> Result<()> {
    let threads = match &cli.command {
        None => TrainArgs::default().threads,
        Some(Command::Train(args)) => args.threads,
        Some(Command::Evaluate(args)) => args.threads,
        Some(Command::Bench(args)) => args.training.threads,
        Some(Command::Profile(args)) => args.training.threads,
        Some(Command::Predict(_) | Command::Summary(_) | Command::Plot(_)) => None,
    };
    let quiet = cli.quiet;
    worker_pool(threads)?.install(|| match cli.command {
        None => train(TrainArgs::default(), quiet),
        Some(Command::Train(args)) => train(args, quiet),
        Some(Command::Evaluate(args)) => evaluate(args, quiet),
        Some(Command::Predict(args)) => crate::predict::run(args, quiet),
        Some(Command::Bench(args)) => crate::bench::run(args, quiet),
        Some(Command::Profile(args)) => crate::profile::run(args, quiet),
        Some(Command::Plot(args)) => crate::plot::history(&args.log, &args.output, quiet),
        Some(Command::Summary(args)) => {
            let model = match args.model.as_deref().map(str::parse::<ModelKind>) {
                None => ModelKind::Mlp.build(28, 28, 10, 1),
                Some(Ok(kind)) => kind.build(28, 28, 10, 1),
                Some(Err(_)) => Sequential::load(args.model.as_deref().unwrap_or_default())?,
            };
            print!("{}", model.summary());
            Ok(())
        }
    })
}

/// The worker threads: `threads` of them, or one per core, named so that profiles
/// and traces tell them apart. Commands run on one of them, so the thread that
/// drives training takes part in every parallel kernel (rather than waking the
/// others and waiting), and no third thread competes for the cores.
fn worker_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .thread_name(|i| format!("kerno-worker-{i}"))
        .build()
        .context("could not start the worker threads")
}

/// Checks, before any long work, that the file given with `flag` can be written.
pub(crate) fn check_writable(flag: &str, path: Option<&Path>) -> Result<()> {
    match path {
        Some(path) => kerno_data::check_writable(path)
            .with_context(|| format!("{flag} {} cannot be written", path.display())),
        None => Ok(()),
    }
}

/// The dataset `args` name, said on stderr (see [`Output::dataset`]).
pub(crate) fn load_data(args: &DataArgs, out: Output) -> Result<Dataset> {
    let data = kerno_data::load(args.dataset, args.data.as_deref())?;
    out.dataset(&data);
    Ok(data)
}

fn train(args: TrainArgs, quiet: bool) -> Result<()> {
    let out = Output::new(args.json, quiet);
    let checkpoint = args.checkpoint.as_ref().or(args.resume.as_ref());
    check_writable("--save", args.save.as_deref())?;
    check_writable("--checkpoint", checkpoint.map(PathBuf::as_path))?;
    check_writable("--log", args.log.as_deref())?;
    let data = load_data(&args.data, out)?;
    let (mut model, settings, start) = match &args.resume {
        Some(path) => {
            let ckpt = Sequential::load_checkpoint(path)?;
            check_fits(&ckpt.model, path, &data)?;
            let settings = RunSettings {
                epochs: args.epochs.unwrap_or(ckpt.settings.epochs),
                ..ckpt.settings
            };
            (ckpt.model, settings, ckpt.progress)
        }
        None => (
            new_model(&args, &data)?,
            RunSettings {
                epochs: args.epochs.unwrap_or(DEFAULT_EPOCHS),
                batch_size: args
                    .batch_size
                    .unwrap_or_else(|| args.model.default_batch_size()),
                shuffle: !args.no_shuffle,
                validation_split: args.validation_split,
            },
            TrainingProgress::default(),
        ),
    };

    let x_train = data.train.images.scaled(PIXEL_SCALE);
    let y_train = to_categorical(&data.train.labels, data.classes);
    let options = settings.resume_options(start).verbosity(out.verbosity());
    let mut stop_on_nan = TerminateOnNaN;
    let mut saver = checkpoint.map(|path| TrainingCheckpoint::new(path, settings));
    // A resumed run continues its log.
    let mut logger = (args.log.as_ref()).map(|p| CsvLogger::new(p).append(args.resume.is_some()));
    let mut stop_on_interrupt = interrupt::StopOnInterrupt;
    let mut callbacks: Vec<&mut dyn Callback> = vec![&mut stop_on_interrupt];
    if !args.no_terminate_on_nan {
        callbacks.push(&mut stop_on_nan);
    }
    if let Some(saver) = saver.as_mut() {
        callbacks.push(saver);
    }
    if let Some(logger) = logger.as_mut() {
        callbacks.push(logger);
    }
    interrupt::install()?;
    let history = model.fit_with_callbacks(&x_train, &y_train, &options, &mut callbacks)?;
    if let Some(at) = history.interrupted {
        return Err(interrupted(&model, &args, checkpoint, &at, &settings));
    }
    let seconds = history.train_seconds();
    // A resumed first epoch counts the samples trained before the stop in its logs.
    let trained_now = history.samples().saturating_sub(start.samples);
    let samples_per_s = trained_now as f64 / seconds.max(f64::MIN_POSITIVE);
    if let Some(path) = &args.save {
        model.save(path)?;
    }
    let test = test_results(&mut model, &data, settings.batch_size)?;
    if out.json {
        println!(
            "{}",
            json!({
                "dataset": dataset_json(&data),
                "history": history_json(&history),
                "train_seconds": seconds,
                "samples_per_s": samples_per_s,
                "saved": args.save.as_ref().map(|p| p.display().to_string()),
                "log": args.log.as_ref().map(|p| p.display().to_string()),
                "test_loss": test.loss,
                "test_accuracy": test.accuracy,
                "precision": model.dtype_policy().name(),
            })
        );
        return Ok(());
    }
    let epochs = match history.epochs.len() {
        1 => "1 epoch".to_string(),
        count => format!("{count} epochs"),
    };
    println!("trained {epochs} in {seconds:.2} s ({samples_per_s:.0} samples/s)");
    if let Some(path) = &args.save {
        println!("saved {}", path.display());
    }
    print_test(&test);
    Ok(())
}

/// Keras' `history.history`: each log's values, one per epoch.
fn history_json(history: &History) -> serde_json::Value {
    let mut logs = serde_json::Map::new();
    for name in ["loss", "accuracy", "val_loss", "val_accuracy"] {
        let values = history.metric(name);
        if !values.is_empty() {
            logs.insert(name.to_string(), json!(values));
        }
    }
    logs.into()
}

/// A fresh model of the kind `args` name, compiled.
fn new_model(args: &TrainArgs, data: &Dataset) -> Result<Sequential> {
    let optimizer = match args.lr {
        Some(lr) => args.optimizer.with_learning_rate(lr),
        None => args.optimizer,
    };
    let mut model = args.model.compiled(data, args.seed, optimizer)?;
    model.set_dtype_policy(args.precision.unwrap_or_default());
    if let Some(path) = &args.init_weights {
        model.load_weights(path)?;
    }
    Ok(model)
}

/// Writes the checkpoint of a run stopped by Ctrl-C, and says how to continue it.
fn interrupted(
    model: &Sequential,
    args: &TrainArgs,
    checkpoint: Option<&PathBuf>,
    at: &TrainingProgress,
    settings: &RunSettings,
) -> anyhow::Error {
    let place = format!(
        "interrupted in epoch {}/{} after step {}",
        at.epoch + 1,
        settings.epochs,
        at.step
    );
    let Some(path) = checkpoint else {
        let hint = "nothing saved (with --checkpoint PATH a stopped run can be continued)";
        return Interrupted(format!("{place}; {hint}")).into();
    };
    if let Err(e) = model.save_checkpoint(path, at, settings) {
        return anyhow::Error::new(e).context(format!("{place}, and the checkpoint failed"));
    }
    let mut resume = format!("kerno train --resume {}", path.display());
    if let Some(dir) = &args.data.data {
        resume.push_str(&format!(" --data {}", dir.display()));
    }
    if args.data.dataset != DatasetKind::Mnist {
        resume.push_str(&format!(" --dataset {}", args.data.dataset));
    }
    Interrupted(format!(
        "{place}; checkpoint written to {}; continue with: {resume}",
        path.display()
    ))
    .into()
}
/// Loss and accuracy on the dataset's test split.
fn test_results(model: &mut Sequential, data: &Dataset, batch_size: usize) -> Result<Evaluation> {
    let x_test = data.test.images.scaled(PIXEL_SCALE);
    let y_test = to_categorical(&data.test.labels, data.classes);
    Ok(model.evaluate(&x_test, &y_test, batch_size)?)
}

/// The notebook's last line.
fn print_test(result: &Evaluation) {
    println!(
        "test_loss: {:.4} test_acc: {:.4}",
        result.loss,
        result.accuracy.unwrap_or(f64::NAN)
    );
}

/// The saved model at `path` and the dataset, the model checked to fit its images
/// and classes. The model is read first: a wrong path is then an error at once,
/// not after MNIST is found (or downloaded).
pub(crate) fn load_model_and_data(
    path: &Path,
    data: &DataArgs,
    out: Output,
) -> Result<(Sequential, Dataset)> {
    let model = Sequential::load(path)?;
    let data = load_data(data, out)?;
    check_fits(&model, path, &data)?;
    Ok((model, data))
}

/// Checks that the model read from `path` fits the dataset's images and classes.
fn check_fits(model: &Sequential, path: &Path, data: &Dataset) -> Result<()> {
    anyhow::ensure!(
        model.input_dim() == data.train.images.features() && model.output_dim() == data.classes,
        "{}: the model maps {} inputs to {} outputs, but {} has {} pixels per image and {} classes",
        path.display(),
        model.input_dim(),
        model.output_dim(),
        data.name,
        data.train.images.features(),
        data.classes
    );
    Ok(())
}

fn evaluate(args: EvaluateArgs, quiet: bool) -> Result<()> {
    let out = Output::new(args.json, quiet);
    if let Some(path) = &args.confusion {
        crate::plot::check_output(path, "--confusion")?;
    }
    let (mut model, data) = load_model_and_data(&args.model, &args.data, out)?;
    model.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )?;
    let test = test_results(&mut model, &data, args.batch_size)?;
    let confusion = match &args.confusion {
        Some(path) => {
            let x_test = data.test.images.scaled(PIXEL_SCALE);
            let predicted = model.predict(&x_test, args.batch_size)?.argmax_rows();
            let matrix = crate::confusion::Confusion::new(
                &data.test.labels,
                &predicted,
                args.data.dataset.class_names(),
            );
            crate::plot::confusion(&matrix, path)?;
            Some(matrix)
        }
        None => None,
    };
    if out.json {
        let mut result = json!({
            "dataset": dataset_json(&data),
            "model": args.model.display().to_string(),
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
        });
        if let (Some(matrix), Some(path)) = (&confusion, &args.confusion) {
            result["confusion"] = matrix.to_json(path);
        }
        println!("{result}");
        return Ok(());
    }
    print_test(&test);
    if let (Some(matrix), Some(path)) = (&confusion, &args.confusion) {
        print!("{}", matrix.report());
        println!("confusion matrix drawn to {}", path.display());
    }
    Ok(())
}
