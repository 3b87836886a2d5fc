//! What the fuzzers feed: each target takes one input, runs a reader (or the
//! argument parser) on it, and checks the promises kerno makes about bad input:
//! no panic (the caller catches those), and an error that names the file it is
//! about, on one line. Each comes with valid seed inputs to mutate.

use crate::campaign::{Outcome, Verdict};
use crate::files;
use kerno_model::{
    Activation, Checkpoint, Conv2D, Dense, Dropout, FitOptions, Flatten, Input, Loss, MaxPooling2D,
    Metric, Optimizer, Padding, RunSettings, Sequential, TrainingProgress, Verbosity,
};
use kerno_tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::io::Cursor;
use std::path::Path;

/// Checks a reader's error: it names `file` and fits on one line.
fn names_file(error: impl std::fmt::Display, file: &str) -> Verdict {
    let text = error.to_string();
    if !text.contains(file) {
        return Err(format!("the error does not name {file}: {text}"));
    }
    if text.contains('\n') {
        return Err(format!("the error spans several lines: {text:?}"));
    }
    Ok(Outcome::Refused)
}

/// IDX files of labels and of images, raw and gzip.
pub fn idx_seeds() -> Vec<Vec<u8>> {
    let raw = [
        files::idx(&[6], &[0, 1, 2, 3, 4, 9]),
        files::idx(&[3, 2, 2], &[7; 12]),
        files::idx(&[2, 28, 28], &[0x80; 2 * 784]),
    ];
    raw.iter()
        .map(|r| files::gzip(r))
        .chain(raw.clone())
        .collect()
}

/// An IDX file, raw or gzip, as `kerno_data::idx::read_file` reads it.
pub fn idx(input: &[u8]) -> Verdict {
    match kerno_data::idx::read_any(input, Path::new("fuzz.idx")) {
        Ok(array) => {
            let declared: usize = array.dims.iter().product();
            if declared != array.data.len() {
                return Err(format!(
                    "dims {:?} but {} bytes",
                    array.dims,
                    array.data.len()
                ));
            }
            Ok(Outcome::Accepted)
        }
        Err(e) => names_file(e, "fuzz.idx"),
    }
}

/// An IDX file mutated before it is compressed, so mutations reach past the gzip checksum.
pub fn idx_through_gzip(input: &[u8]) -> Verdict {
    idx(&files::gzip(input))
}

/// The raw IDX seeds, for [`idx_through_gzip`].
pub fn raw_idx_seeds() -> Vec<Vec<u8>> {
    idx_seeds().into_iter().filter(|s| s[0] == 0).collect()
}

pub fn npy_seeds() -> Vec<Vec<u8>> {
    vec![
        files::npy("(3,)", &[1, 2, 3]),
        files::npy("(2, 2, 2)", &[5; 8]),
    ]
}

/// One numpy array, as a member of `mnist.npz` is read.
pub fn npy(input: &[u8]) -> Verdict {
    match kerno_data::npz::read_npy(input, Path::new("fuzz.npy")) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) => names_file(e, "fuzz.npy"),
    }
}

pub fn npz_seeds() -> Vec<Vec<u8>> {
    vec![files::mnist_npz(3), files::mnist_npz(1)]
}

/// Keras' `mnist.npz`: the archive and its four arrays, then the checks across
/// them (counts, label range), as `kerno --data mnist.npz` reads it.
pub struct NpzDataset {
    dir: tempfile::TempDir,
}

impl NpzDataset {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    pub fn run(&self, input: &[u8]) -> Verdict {
        let path = self.dir.path().join("fuzz.npz");
        std::fs::write(&path, input).map_err(|e| format!("cannot write the input: {e}"))?;
        match kerno_data::load_npz(&path, "fuzz", 10) {
            Ok(_) => Ok(Outcome::Accepted),
            Err(e) => names_file(e, "fuzz.npz"),
        }
    }
}

impl Default for NpzDataset {
    fn default() -> Self {
        Self::new()
    }
}

/// A folder of the four IDX files in which one (chosen by the input's first byte)
/// is replaced by the rest of the input; read with the checks across files.
pub struct IdxFolder {
    dir: tempfile::TempDir,
}

const SET_FILES: [&str; 4] = kerno_data::IDX_FILES;

impl IdxFolder {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    fn valid_files() -> [Vec<u8>; 4] {
        let images: Vec<u8> = (0..4 * 9).map(|i| (i * 29 % 256) as u8).collect();
        let labels = [3, 1, 4, 1];
        [
            files::idx(&[4, 3, 3], &images),
            files::idx(&[4], &labels),
            files::idx(&[4, 3, 3], &images),
            files::idx(&[4], &labels),
        ]
    }

    /// Each valid file, behind the byte that selects it.
    pub fn seeds() -> Vec<Vec<u8>> {
        Self::valid_files()
            .into_iter()
            .enumerate()
            .map(|(i, f)| [vec![i as u8], f].concat())
            .collect()
    }

    pub fn run(&self, input: &[u8]) -> Verdict {
        let Some((&which, content)) = input.split_first() else {
            return Ok(Outcome::Refused);
        };
        let which = which as usize % SET_FILES.len();
        for (i, (name, valid)) in SET_FILES.iter().zip(Self::valid_files()).enumerate() {
            let bytes = if i == which { content } else { &valid[..] };
            std::fs::write(self.dir.path().join(name), bytes)
                .map_err(|e| format!("cannot write the input: {e}"))?;
        }
        match kerno_data::load_dir(self.dir.path(), "fuzz", 10) {
            Ok(set) if set.train.images.len() != set.train.labels.len() => {
                Err("images and labels differ in number".into())
            }
            Ok(_) => Ok(Outcome::Accepted),
            Err(e) => {
                let text = e.to_string();
                match SET_FILES.iter().any(|f| text.contains(f)) {
                    true if !text.contains('\n') => Ok(Outcome::Refused),
                    _ => Err(format!("the error names no file on one line: {text}")),
                }
            }
        }
    }
}

impl Default for IdxFolder {
    fn default() -> Self {
        Self::new()
    }
}

fn small_model(optimizer: Optimizer) -> Sequential {
    let mut model = Sequential::new(4)
        .with_seed(2)
        .add(Dense::new(3, Activation::Relu))
        .add(Dense::new(2, Activation::Softmax));
    model
        .compile(
            optimizer,
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .expect("a valid model");
    model
}

fn saved(write: impl FnOnce(&Path)) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("seed.safetensors");
    write(&path);
    std::fs::read(&path).expect("the seed was written")
}

/// A small convnet with every layer kind, compiled.
fn small_convnet(optimizer: Optimizer) -> Sequential {
    let mut model = Sequential::new(Input::shape([6, 5, 2]))
        .with_seed(3)
        .add(
            Conv2D::new(3, 3)
                .padding(Padding::Same)
                .activation(Activation::Relu),
        )
        .add(MaxPooling2D::new(2))
        .add(Conv2D::new(2, 2).strides(2).activation(Activation::Tanh))
        .add(Flatten::new())
        .add(Dropout::new(0.25))
        .add(Dense::new(2, Activation::Softmax));
    model
        .compile(
            optimizer,
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .expect("a valid model");
    model
}

/// A model file of version 1 (dense layers over a flat input), as kerno wrote
/// them before layers of other kinds: `4 → Dense(2, relu)`, kernel
/// `[[0, 0.25], [0.5, 0.75], [1, 1.25], [1.5, 1.75]]`, bias `[0.5, -0.5]`.
pub fn version_1_model_file() -> Vec<u8> {
    let arch = r#"{"format":"kerno.sequential","version":1,"input_dim":4,"seed":0,"layers":[{"name":"dense","units":2,"activation":"relu"}]}"#;
    let kernel: Vec<u8> = (0..8)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let bias: Vec<u8> = [0.5f32, -0.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let views = [
        (
            "dense/kernel",
            TensorView::new(Dtype::F32, vec![4, 2], &kernel),
        ),
        ("dense/bias", TensorView::new(Dtype::F32, vec![2], &bias)),
    ]
    .map(|(name, view)| (name, view.expect("shape matches data")));
    let metadata = Some(std::collections::HashMap::from([(
        "kerno".to_string(),
        arch.to_string(),
    )]));
    safetensors::serialize(views, &metadata).expect("serialises")
}

/// Model files of three architectures, and one of the first version of the format.
pub fn model_file_seeds() -> Vec<Vec<u8>> {
    let mut wide = Sequential::new(6)
        .with_seed(1)
        .add(Dense::new(5, Activation::Tanh))
        .add(Dense::new(4, Activation::Sigmoid))
        .add(Dense::new(3, Activation::Linear));
    wide.compile(Optimizer::sgd(), Loss::MeanSquaredError, &[])
        .expect("a valid model");
    vec![
        saved(|p| small_model(Optimizer::rmsprop()).save(p).expect("saved")),
        saved(|p| wide.save(p).expect("saved")),
        saved(|p| small_convnet(Optimizer::rmsprop()).save(p).expect("saved")),
        version_1_model_file(),
    ]
}

/// A model file (`kerno evaluate --model`); a model that loads must predict.
pub fn model_file(input: &[u8]) -> Verdict {
    match Sequential::from_safetensors(input, Path::new("fuzz.safetensors")) {
        Ok(mut model) => {
            let zeros = Tensor::zeros(&[1, model.input_dim()]);
            model
                .predict(&zeros, 1)
                .map(|_| Outcome::Accepted)
                .map_err(|e| format!("a loaded model cannot predict: {e}"))
        }
        Err(e) => names_file(e, "fuzz.safetensors"),
    }
}

/// Checkpoints of runs stopped after an epoch and in the middle of one.
pub fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let settings = RunSettings {
        epochs: 3,
        batch_size: 2,
        shuffle: true,
        validation_split: 0.0,
    };
    let mut middle = TrainingProgress::start_of(1);
    middle.step = 1;
    middle.samples = 2;
    middle.loss_sum = 1.25;
    let models: [fn(Optimizer) -> Sequential; 3] = [small_model, small_model, small_convnet];
    [
        (Optimizer::rmsprop(), TrainingProgress::start_of(1)),
        (Optimizer::adam(), middle),
        (Optimizer::rmsprop(), middle),
    ]
    .into_iter()
    .zip(models)
    .map(|((optimizer, progress), model)| {
        saved(|p| {
            model(optimizer)
                .save_checkpoint(p, &progress, &settings)
                .expect("saved")
        })
    })
    .collect()
}

/// A checkpoint (`kerno train --resume`); one that loads must resume (for at
/// most one epoch) on a small dataset of its shape, or refuse with an error.
pub fn checkpoint(input: &[u8]) -> Verdict {
    let mut ckpt = match Checkpoint::from_safetensors(input, Path::new("fuzz.ckpt")) {
        Ok(ckpt) => ckpt,
        Err(e) => return names_file(e, "fuzz.ckpt"),
    };
    let (inputs, outputs) = (ckpt.model.input_dim(), ckpt.model.output_dim());
    let x = Tensor::zeros(&[5, inputs]);
    let one_hot = (0..5 * outputs).map(|i| (i % outputs == (i / outputs) % outputs) as u8 as f32);
    let y = Tensor::from_vec(&[5, outputs], one_hot.collect())
        .map_err(|e| format!("targets for a loaded checkpoint: {e}"))?;
    let options: FitOptions<'_> = ckpt
        .resume_options()
        .epochs(ckpt.progress.epoch.saturating_add(1))
        .verbosity(Verbosity::Silent);
    // Refusing a resume point that does not fit this data is fine; a panic is not.
    let _ = ckpt.model.fit(&x, &y, &options);
    Ok(Outcome::Accepted)
}

/// Command lines of every command, one argument per line.
pub fn cli_seeds() -> Vec<Vec<u8>> {
    [
        "train\n--epochs\n3\n--batch-size\n64\n--lr\n0.01\n--seed\n7\n--threads\n2\n--validation-split\n0.1\n--optimizer\nadam\n--no-shuffle",
        "train\n--resume\nrun.ckpt\n--epochs\n9\n--data\n/tmp/mnist\n--dataset\nfashion-mnist",
        "train\n--checkpoint\nrun.ckpt\n--save\nm.safetensors\n--no-terminate-on-nan\n--init-weights\nw.safetensors",
        "evaluate\n--model\nm.safetensors\n--batch-size\n10\n--threads\n1",
        "predict\n--model\nm.safetensors\n--start\n5\n--count\n3",
        "bench\n--epochs\n2\n--json\n--threads\n1\n--batch-size\n256",
        "summary",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// A command line, one argument per line (bytes need not be UTF-8): it parses,
/// or its error is one non-empty line.
pub fn cli_args(input: &[u8]) -> Verdict {
    use clap::Parser;
    let args = input.split(|&b| b == b'\n').map(os_string);
    let parsed =
        kerno_runner::cli::Cli::try_parse_from(std::iter::once("kerno".into()).chain(args));
    match parsed {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            Ok(Outcome::Accepted)
        }
        Err(e) => {
            let line = kerno_runner::cli::one_line(&e);
            if line.is_empty() || line.contains('\n') {
                Err(format!("not one line: {line:?}"))
            } else {
                Ok(Outcome::Refused)
            }
        }
    }
}

#[cfg(unix)]
fn os_string(bytes: &[u8]) -> std::ffi::OsString {
    std::os::unix::ffi::OsStringExt::from_vec(bytes.to_vec())
}

#[cfg(not(unix))]
fn os_string(bytes: &[u8]) -> std::ffi::OsString {
    String::from_utf8_lossy(bytes).into_owned().into()
}

/// The npz archive in memory: the zip container and its four arrays, without the
/// checks across them.
pub fn npz_archive(input: &[u8]) -> Verdict {
    let names = ["x_train", "y_train", "x_test", "y_test"];
    match kerno_data::npz::read_archive(Cursor::new(input), Path::new("fuzz.npz"), &names) {
        Ok(_) => Ok(Outcome::Accepted),
        Err(e) => names_file(e, "fuzz.npz"),
    }
}
