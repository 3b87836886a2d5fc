//! Keras-style progress: a bar on a terminal, else one line per epoch.

use crate::history::EpochLogs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// How much `fit` prints, as Keras' `verbose`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing (`verbose=0`).
    Silent,
    /// A progress bar per epoch (`verbose=1`).
    ProgressBar,
    /// One line per epoch (`verbose=2`).
    EpochLines,
    /// A bar when standard output is a terminal, else one line per epoch.
    #[default]
    Auto,
}

pub(crate) struct Progress {
    mode: Verbosity,
    epochs: usize,
    steps: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(verbosity: Verbosity, epochs: usize, steps: usize) -> Self {
        let mode = match verbosity {
            Verbosity::Auto if std::io::stdout().is_terminal() => Verbosity::ProgressBar,
            Verbosity::Auto => Verbosity::EpochLines,
            other => other,
        };
        Self {
            mode,
            epochs,
            steps,
            bar: None,
        }
    }

    pub fn epoch_begin(&mut self, epoch: usize) {
        if self.mode == Verbosity::Silent {
            return;
        }
        println!("Epoch {}/{}", epoch + 1, self.epochs);
        if self.mode == Verbosity::ProgressBar {
            let bar = ProgressBar::with_draw_target(
                Some(self.steps as u64),
                ProgressDrawTarget::stdout(),
            );
            bar.set_style(
                ProgressStyle::with_template("{pos}/{len} {bar:20} {elapsed} - {msg}")
                    .expect("the template is valid")
                    .progress_chars("━━ "),
            );
            self.bar = Some(bar);
        }
    }

    /// After each step, with the epoch's running averages.
    pub fn batch_end(&mut self, step: usize, loss: f64, accuracy: Option<f64>) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            // Formatting allocates: refresh the numbers a few times per second at most.
            if step.is_multiple_of(25) || step == self.steps {
                bar.set_message(metrics_text(loss, accuracy, None, None));
            }
        }
    }

    /// The run stopped in the middle of an epoch: the bar goes, no epoch line.
    pub fn interrupted(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    pub fn epoch_end(&mut self, logs: &EpochLogs) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.mode != Verbosity::Silent {
            println!("{}", epoch_line(logs));
        }
    }
}

/// `469/469 - 2s - 4ms/step - accuracy: 0.9250 - loss: 0.2596`, as Keras' `verbose=2`.
pub(crate) fn epoch_line(logs: &EpochLogs) -> String {
    let per_step = logs.train_seconds / logs.steps.max(1) as f64;
    let per_step = if per_step >= 1.0 {
        format!("{per_step:.0}s/step")
    } else if per_step >= 1e-3 {
        format!("{:.0}ms/step", per_step * 1e3)
    } else {
        format!("{:.0}us/step", per_step * 1e6)
    };
    format!(
        "{steps}/{steps} - {secs:.0}s - {per_step} - {metrics}",
        steps = logs.steps,
        // Rounded, as Keras formats the seconds (0.6 s is "1s").
        secs = logs.train_seconds,
        metrics = metrics_text(logs.loss, logs.accuracy, logs.val_loss, logs.val_accuracy)
    )
}

fn metrics_text(
    loss: f64,
    accuracy: Option<f64>,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
) -> String {
    let mut parts = Vec::with_capacity(4);
    if let Some(a) = accuracy {
        parts.push(format!("accuracy: {}", format_value(a)));
    }
    parts.push(format!("loss: {}", format_value(loss)));
    if let Some(a) = val_accuracy {
        parts.push(format!("val_accuracy: {}", format_value(a)));
    }
    if let Some(l) = val_loss {
        parts.push(format!("val_loss: {}", format_value(l)));
    }
    parts.join(" - ")
}

/// Keras' number format: four decimals, scientific below 1e-3.
pub(crate) fn format_value(v: f64) -> String {
    if v.abs() > 1e-3 || v == 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.4e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_line_reads_like_keras() {
        let logs = EpochLogs {
            epoch: 0,
            steps: 469,
            samples: 60000,
            loss: 0.25964,
            accuracy: Some(0.92501),
            val_loss: None,
            val_accuracy: None,
            train_seconds: 2.3,
        };
        assert_eq!(
            epoch_line(&logs),
            "469/469 - 2s - 5ms/step - accuracy: 0.9250 - loss: 0.2596"
        );
        let quick = EpochLogs {
            train_seconds: 0.6,
            ..logs
        };
        assert_eq!(
            epoch_line(&quick),
            "469/469 - 1s - 1ms/step - accuracy: 0.9250 - loss: 0.2596"
        );
    }
}
