//! Running the `kerno` binary on generated datasets, shared by the CLI tests.

use kerno_testkit::files::idx;
use std::path::Path;
use std::process::{Command, Output};

/// `kerno args…`, without the settings of the environment the tests run in.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kerno"));
    cmd.args(args)
        .env_remove("KERNO_THREADS")
        .env_remove("KERNO_DATA");
    cmd
}

pub fn kerno(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = command(args);
    cmd.envs(envs.iter().copied());
    cmd.output().expect("kerno runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stderr without the line that names the dataset a command loaded.
#[allow(dead_code)] // Each test file compiles this module; not all of them use this.
pub fn errors(out: &Output) -> String {
    stderr(out)
        .lines()
        .filter(|l| !l.starts_with("dataset: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A dataset of `n` train and test images, 28×28, whose label is set by which
/// quarter of the image is bright, so a model can learn it in an epoch.
pub fn write_dataset(dir: &Path, n: u32) {
    write_dataset_on(dir, n, |p| (p * 7 % 50) as u8)
}

/// [`write_dataset`] with a black background, as MNIST's: a quarter of the pixels
/// lit, a batch sparse enough for the first layer to skip its zeros.
#[allow(dead_code)] // Each test file compiles this module; not all of them use this.
pub fn write_sparse_dataset(dir: &Path, n: u32) {
    write_dataset_on(dir, n, |_| 0)
}

/// Images whose lit quarter is the label, on `background(pixel)` elsewhere.
fn write_dataset_on(dir: &Path, n: u32, background: impl Fn(usize) -> u8) {
    let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
    let mut images = vec![0u8; (n * 784) as usize];
    for (i, &label) in labels.iter().enumerate() {
        for p in 0..784 {
            let quarter = (p / 28 / 14) * 2 + (p % 28) / 14;
            images[i * 784 + p] = if quarter == label as usize {
                200
            } else {
                background(p)
            };
        }
    }
    for (name, bytes) in [
        ("train-images-idx3-ubyte", idx(&[n, 28, 28], &images)),
        ("train-labels-idx1-ubyte", idx(&[n], &labels)),
        ("t10k-images-idx3-ubyte", idx(&[n, 28, 28], &images)),
        ("t10k-labels-idx1-ubyte", idx(&[n], &labels)),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
