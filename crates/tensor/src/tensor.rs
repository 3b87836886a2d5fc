//! An owned, row-major f32 tensor.

use crate::elementwise;
use crate::matrix::{MatMut, MatRef};
use crate::simd::Isa;
use std::ops::Range;

/// A shape that does not fit the data or the operation asked of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("shape {shape:?} holds {expected} elements but {got} were given")]
    DataLength {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("cannot reshape {from:?} ({from_len} elements) to {to:?} ({to_len} elements)")]
    Reshape {
        from: Vec<usize>,
        from_len: usize,
        to: Vec<usize>,
        to_len: usize,
    },
    #[error("expected a 2-D tensor, got shape {0:?}")]
    NotMatrix(Vec<usize>),
    #[error("rows {start}..{end} are out of range for a tensor of {rows} rows")]
    RowRange {
        start: usize,
        end: usize,
        rows: usize,
    },
}

/// A dense, row-major tensor of f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Wraps `data` (row-major) in the given shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self, ShapeError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ShapeError::DataLength {
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// The same elements in a new shape, as numpy's `reshape`.
    pub fn reshape(self, shape: &[usize]) -> Result<Self, ShapeError> {
        let to_len: usize = shape.iter().product();
        if to_len != self.data.len() {
            return Err(ShapeError::Reshape {
                from: self.shape,
                from_len: self.data.len(),
                to: shape.to_vec(),
                to_len,
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            data: self.data,
        })
    }

    /// Size of the first axis (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row: the product of every axis after the first.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Row `i`, flattened.
    pub fn row(&self, i: usize) -> &[f32] {
        let n = self.row_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// A copy of the rows in `range`.
    pub fn slice_rows(&self, range: Range<usize>) -> Result<Tensor, ShapeError> {
        if range.start > range.end || range.end > self.rows() {
            return Err(ShapeError::RowRange {
                start: range.start,
                end: range.end,
                rows: self.rows(),
            });
        }
        let n = self.row_len();
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        Ok(Tensor {
            shape,
            data: self.data[range.start * n..range.end * n].to_vec(),
        })
    }

    /// The tensor as a row-major matrix view; it must be 2-D.
    pub fn matrix(&self) -> Result<MatRef<'_>, ShapeError> {
        match self.shape[..] {
            [rows, cols] => Ok(MatRef::row_major(&self.data, rows, cols)),
            _ => Err(ShapeError::NotMatrix(self.shape.clone())),
        }
    }

    /// The tensor as a mutable row-major matrix view; it must be 2-D.
    pub fn matrix_mut(&mut self) -> Result<MatMut<'_>, ShapeError> {
        match self.shape[..] {
            [rows, cols] => Ok(MatMut::row_major(&mut self.data, rows, cols)),
            _ => Err(ShapeError::NotMatrix(self.shape.clone())),
        }
    }

    /// Index of the largest element of each row (the first one on ties, as numpy).
    pub fn argmax_rows(&self) -> Vec<usize> {
        let n = self.row_len().max(1);
        self.data.chunks(n).map(argmax).collect()
    }
}

/// Whether no value is NaN or infinite (vectorised for this machine).
pub fn all_finite(values: &[f32]) -> bool {
    all_finite_with(Isa::detected(), values)
}

/// [`all_finite`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// When `isa` is not supported by this CPU.
pub fn all_finite_with(isa: Isa, values: &[f32]) -> bool {
    elementwise::all_finite(isa, values)
}

/// Index of the largest value: the first on ties; NaN never wins, wherever it
/// stands (0 when every value is NaN, or there are none).
pub fn argmax(values: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor::from_vec(&[2, 3], vec![0.0; 5]).is_err());
        let t = Tensor::from_vec(&[2, 3], (0..6).map(|v| v as f32).collect()).unwrap();
        assert_eq!(t.row(1), &[3.0, 4.0, 5.0]);
    }

    #[test]
    fn reshape_keeps_elements_and_rejects_wrong_sizes() {
        let t = Tensor::zeros(&[4, 7, 7]);
        let flat = t.clone().reshape(&[4, 49]).unwrap();
        assert_eq!(flat.shape(), &[4, 49]);
        assert!(t.reshape(&[4, 50]).is_err());
    }

    #[test]
    fn all_finite_finds_nan_and_infinity_anywhere_on_every_isa() {
        for isa in Isa::available() {
            for len in [0, 1, 7, 16, 33, 100] {
                let mut values: Vec<f32> = (0..len).map(|i| i as f32 - 50.0).collect();
                values.iter_mut().for_each(|v| *v *= f32::MAX / 64.0);
                assert!(all_finite_with(isa, &values), "{isa:?} {len}");
                for at in 0..len {
                    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                        let kept = std::mem::replace(&mut values[at], bad);
                        assert!(
                            !all_finite_with(isa, &values),
                            "{isa:?} {len}: {bad} at {at}"
                        );
                        values[at] = kept;
                    }
                }
            }
        }
    }

    #[test]
    fn nan_never_wins_an_argmax() {
        let nan = f32::NAN;
        assert_eq!(argmax(&[nan, 1.0, 2.0]), 2);
        assert_eq!(argmax(&[nan, -5.0, -7.0]), 1);
        assert_eq!(argmax(&[3.0, nan, 2.0]), 0);
        assert_eq!(argmax(&[1.0, 2.0, nan]), 1);
        assert_eq!(argmax(&[nan, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[nan, nan]), 0);
        let t = Tensor::from_vec(&[2, 3], vec![nan, 0.0, 1.0, 4.0, nan, nan]).unwrap();
        assert_eq!(t.argmax_rows(), vec![2, 0]);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        let t = Tensor::from_vec(&[2, 2], vec![0.0, 1.0, 5.0, 2.0]).unwrap();
        assert_eq!(t.argmax_rows(), vec![1, 0]);
    }

    #[test]
    fn slice_rows_bounds() {
        let t = Tensor::zeros(&[3, 2]);
        assert_eq!(t.slice_rows(1..3).unwrap().shape(), &[2, 2]);
        assert!(t.slice_rows(2..4).is_err());
    }
}
