//! Keras' `CSVLogger`: each epoch's logs as a row of a CSV file.

use crate::callbacks::{Callback, Control};
use crate::error::ModelError;
use crate::history::EpochLogs;
use crate::sequential::Sequential;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// The columns after `epoch`, in Keras' order (its log keys sorted by name).
const COLUMNS: [&str; 4] = ["accuracy", "loss", "val_accuracy", "val_loss"];

/// Writes `epoch,accuracy,loss[,val_accuracy,val_loss]` and one row per epoch
/// (epochs counted from 0), flushed at once so the file can be watched while
/// training runs. Like Keras, the file is replaced unless `append` is set, and an
/// appended file gets no second header.
///
/// ```
/// use kerno_model::*;
/// use kerno_tensor::Tensor;
/// let x = Tensor::from_vec(&[4, 2], vec![0., 0., 0., 1., 1., 0., 1., 1.])?;
/// let y = Tensor::from_vec(&[4, 2], vec![1., 0., 0., 1., 0., 1., 1., 0.])?;
/// let mut model = Sequential::new(2)
///     .add(Dense::new(8, Activation::Relu))
///     .add(Dense::new(2, Activation::Softmax));
/// model.compile(Optimizer::adam(), Loss::CategoricalCrossentropy, &[Metric::Accuracy])?;
/// let path = std::env::temp_dir().join(format!("kerno-doc-{}.csv", std::process::id()));
/// let mut log = CsvLogger::new(&path);
/// let options = FitOptions::new().epochs(3).verbosity(Verbosity::Silent);
/// model.fit_with_callbacks(&x, &y, &options, &mut [&mut log])?;
/// let csv = std::fs::read_to_string(&path)?;
/// assert_eq!(csv.lines().next(), Some("epoch,accuracy,loss"));
/// assert_eq!(csv.lines().count(), 4);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CsvLogger {
    pub path: PathBuf,
    pub separator: char,
    pub append: bool,
    file: Option<BufWriter<File>>,
    /// The columns of the header, fixed by the first epoch's logs.
    columns: Vec<&'static str>,
}

impl CsvLogger {
    /// Keras' defaults: separator `,`, `append=False`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            separator: ',',
            append: false,
            file: None,
            columns: Vec::new(),
        }
    }

    pub fn separator(mut self, separator: char) -> Self {
        self.separator = separator;
        self
    }

    pub fn append(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    fn io_error(&self, error: std::io::Error) -> ModelError {
        ModelError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// Opens the file at the first epoch and writes the header unless appending
    /// to a file that has one.
    fn open(&mut self, logs: &EpochLogs) -> Result<(), ModelError> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&self.path)
                .map_err(|e| self.io_error(e))?;
            let has_rows = self.append && file.metadata().map_err(|e| self.io_error(e))?.len() > 0;
            self.columns = COLUMNS
                .into_iter()
                .filter(|c| logs.get(c).is_some())
                .collect();
            let mut writer = BufWriter::new(file);
            if !has_rows {
                let sep = self.separator.to_string();
                let header = std::iter::once("epoch").chain(self.columns.iter().copied());
                writeln!(writer, "{}", header.collect::<Vec<_>>().join(&sep))
                    .map_err(|e| self.io_error(e))?;
            }
            self.file = Some(writer);
        }
        Ok(())
    }
}

impl Callback for CsvLogger {
    fn on_epoch_end(
        &mut self,
        logs: &EpochLogs,
        _model: &mut Sequential,
    ) -> Result<Control, ModelError> {
        self.open(logs)?;
        // Python's repr of a float, which Rust's shortest round-trip form matches;
        // a value missing from this epoch is Keras' "NA".
        let mut row = logs.epoch.to_string();
        for column in &self.columns {
            row.push(self.separator);
            match logs.get(column) {
                Some(value) => row.push_str(&value.to_string()),
                None => row.push_str("NA"),
            }
        }
        let written = {
            let file = self.file.as_mut().expect("opened above");
            writeln!(file, "{row}").and_then(|()| file.flush())
        };
        written.map_err(|e| self.io_error(e))?;
        Ok(Control::Continue)
    }

    fn on_train_end(&mut self, _model: &mut Sequential) -> Result<(), ModelError> {
        // Closed, as Keras closes it, so a second fit opens it anew.
        self.file = None;
        Ok(())
    }
}
