//! Losses and metrics by their Keras names.

use std::fmt;
use std::str::FromStr;

/// A training loss, averaged over the batch as Keras' `sum_over_batch_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// One-hot targets. After a softmax layer it is computed from the logits.
    CategoricalCrossentropy,
    /// Class-index targets. After a softmax layer it is computed from the logits.
    SparseCategoricalCrossentropy,
    MeanSquaredError,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::CategoricalCrossentropy => "categorical_crossentropy",
            Loss::SparseCategoricalCrossentropy => "sparse_categorical_crossentropy",
            Loss::MeanSquaredError => "mean_squared_error",
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Loss {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "categorical_crossentropy" => Ok(Loss::CategoricalCrossentropy),
            "sparse_categorical_crossentropy" => Ok(Loss::SparseCategoricalCrossentropy),
            "mean_squared_error" | "mse" => Ok(Loss::MeanSquaredError),
            other => Err(format!(
                "unknown loss '{other}' (expected categorical_crossentropy, sparse_categorical_crossentropy or mse)"
            )),
        }
    }
}

/// A metric reported besides the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The share of samples whose arg-max output is the target class.
    Accuracy,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
        }
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "accuracy" | "acc" => Ok(Metric::Accuracy),
            other => Err(format!("unknown metric '{other}' (expected accuracy)")),
        }
    }
}
