//! The targets of a dataset, checked once against the loss and the model's output.

use crate::error::ModelError;
use crate::loss::Loss;
use kerno_tensor::loss::Targets;
use kerno_tensor::{Samples, Tensor};

pub(crate) enum TargetTable<'a> {
    Dense(&'a Tensor),
    Classes(Vec<u32>),
}

impl<'a> TargetTable<'a> {
    /// Checks `y` against the loss: one-hot (or any dense) rows as wide as the
    /// output, or for sparse categorical cross-entropy one class index per sample.
    pub fn new(
        loss: Loss,
        y: &'a Tensor,
        samples: usize,
        outputs: usize,
    ) -> Result<Self, ModelError> {
        if y.rows() != samples {
            return Err(ModelError::Shape {
                what: "targets",
                expected: format!("{samples} rows, one per input sample"),
                got: format!("{} rows", y.rows()),
            });
        }
        match loss {
            Loss::SparseCategoricalCrossentropy => {
                if y.row_len() != 1 {
                    return Err(ModelError::Shape {
                        what: "sparse targets",
                        expected: format!("shape [{samples}] or [{samples}, 1] of class indices"),
                        got: format!("{:?}", y.shape()),
                    });
                }
                let classes = y
                    .data()
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        if v >= 0.0 && v.fract() == 0.0 && (v as usize) < outputs {
                            Ok(v as u32)
                        } else {
                            Err(ModelError::invalid(
                                "sparse target",
                                format!("{v} at index {i} is not a class index below {outputs}"),
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Ok(TargetTable::Classes(classes))
            }
            Loss::CategoricalCrossentropy | Loss::MeanSquaredError => {
                if y.row_len() != outputs {
                    return Err(ModelError::Shape {
                        what: "targets",
                        expected: format!("{outputs} values per sample (the model's output)"),
                        got: format!("shape {:?}", y.shape()),
                    });
                }
                Ok(TargetTable::Dense(y))
            }
        }
    }

    /// Copies the targets of `indices` into `y` (dense targets) or `classes`.
    pub fn gather(&self, indices: &[usize], y: &mut [f32], classes: &mut [u32]) {
        match self {
            TargetTable::Dense(t) => t.gather(indices, &mut y[..indices.len() * t.row_len()]),
            TargetTable::Classes(c) => {
                for (dst, &i) in classes.iter_mut().zip(indices) {
                    *dst = c[i];
                }
            }
        }
    }

    /// Asks the CPU to start loading the targets of `indices`, soon to be gathered.
    pub fn prefetch(&self, indices: &[usize]) {
        if let TargetTable::Dense(y) = self {
            y.prefetch(indices);
        }
    }

    /// The gathered targets of a batch of `rows`, from the workspace's `y` and `classes`.
    pub fn batch<'w>(&self, y: &'w [f32], classes: &'w [u32], rows: usize) -> Targets<'w> {
        match self {
            TargetTable::Dense(t) => Targets::Dense(&y[..rows * t.row_len()]),
            TargetTable::Classes(_) => Targets::Classes(&classes[..rows]),
        }
    }
}
