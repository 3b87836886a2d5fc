//! How a command speaks: text for people or JSON for programs on stdout, and notes
//! on what it is doing on stderr unless `--quiet`.

use kerno_data::Dataset;
use kerno_model::Verbosity;
use serde_json::{json, Value};
use std::fmt::Display;

#[derive(Clone, Copy, Debug, Default)]
pub struct Output {
    /// Results as JSON on stdout instead of text.
    pub json: bool,
    /// No progress and no notes.
    pub quiet: bool,
}

impl Output {
    pub fn new(json: bool, quiet: bool) -> Self {
        Self { json, quiet }
    }

    /// A line on stderr about what the command is doing.
    pub fn note(&self, text: impl Display) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// `fit`'s progress: Keras' bar or epoch lines on stdout, unless stdout is for
    /// JSON or the user asked for quiet.
    pub fn verbosity(&self) -> Verbosity {
        if self.json || self.quiet {
            Verbosity::Silent
        } else {
            Verbosity::Auto
        }
    }

    /// The one line every command that reads a dataset says about it.
    pub fn dataset(&self, data: &Dataset) {
        self.note(format_args!(
            "dataset: {} from {} ({} training and {} test images of {}×{}, {} classes)",
            data.name,
            data.source.display(),
            data.train.images.len(),
            data.test.images.len(),
            data.train.images.height(),
            data.train.images.width(),
            data.classes
        ));
    }
}

/// What the dataset line says, for `--json`.
pub fn dataset_json(data: &Dataset) -> Value {
    json!({
        "name": data.name,
        "source": data.source.display().to_string(),
        "train_images": data.train.images.len(),
        "test_images": data.test.images.len(),
        "height": data.train.images.height(),
        "width": data.train.images.width(),
        "classes": data.classes,
    })
}
