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

    /// The class of each of the first `rows` samples, as the accuracy reads it:
    /// its class index, or for dense targets the output where its target is
    /// greatest (a one-hot row's class; for other targets only a key that groups
    /// alike samples).
    pub fn classes(&self, rows: usize) -> Vec<u32> {
        match self {
            TargetTable::Classes(c) => c[..rows].to_vec(),
            TargetTable::Dense(t) => t.argmax_rows()[..rows]
                .iter()
                .map(|&class| class as u32)
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample's class is its class index, or its one-hot row's hot output.
    #[test]
    fn classes_of_class_indices_and_of_one_hot_rows() {
        let indices = Tensor::from_vec(&[4], vec![2.0, 0.0, 1.0, 2.0]).unwrap();
        let sparse = TargetTable::new(Loss::SparseCategoricalCrossentropy, &indices, 4, 3);
        assert_eq!(sparse.unwrap().classes(3), vec![2, 0, 1]);
        let one_hot = [0., 0., 1., 1., 0., 0., 0., 1., 0., 0., 0., 1.];
        let one_hot = Tensor::from_vec(&[4, 3], one_hot.to_vec()).unwrap();
        let dense = TargetTable::new(Loss::CategoricalCrossentropy, &one_hot, 4, 3);
        assert_eq!(dense.unwrap().classes(4), vec![2, 0, 1, 2]);
    }
}
