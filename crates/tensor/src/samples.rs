//! Where a batch's input rows come from: f32 tensors, or bytes scaled on the fly.

use crate::elementwise;
use crate::parallel::for_each_chunk;
use crate::simd::{prefetch_lines, Isa};
use crate::sparse::SparseRows;
use crate::tensor::Tensor;
use std::sync::OnceLock;

/// Rows per parallel task of a batch gather.
const GATHER_ROWS: usize = 16;

/// A table of samples, one row each, that can copy any rows into an f32 batch.
pub trait Samples: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Values per sample.
    fn features(&self) -> usize;
    /// Copies the rows `indices` into `out` (`indices.len() × features()`, row-major).
    fn gather(&self, indices: &[usize], out: &mut [f32]);

    /// Asks the CPU to start loading the rows `indices`, soon to be gathered. A
    /// hint only: the default does nothing.
    fn prefetch(&self, _indices: &[usize]) {}

    /// Compresses the rows `indices` into `sparse` as
    /// [`SparseRows::compress_rows_if_sparse`] of their gathered values would, bit
    /// for bit, and says whether they were sparse enough; without gathering them
    /// where the table can, `None` where it cannot (the default).
    fn compress_rows_if_sparse(
        &self,
        _indices: &[usize],
        _sparse: &mut SparseRows,
        _limit: f64,
    ) -> Option<bool> {
        None
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The share of the table's values that are not zero, where the table keeps
    /// or can count it once (`None`, the default, where it cannot): a table
    /// known to be denser than the sparse products pay for is never offered to
    /// them batch by batch.
    fn density(&self) -> Option<f64> {
        None
    }

    /// Bytes each stored value takes (for the memory traffic `kerno profile` reports).
    fn bytes_per_value(&self) -> usize {
        std::mem::size_of::<f32>()
    }
}

impl Samples for Tensor {
    fn len(&self) -> usize {
        self.rows()
    }

    fn features(&self) -> usize {
        self.row_len()
    }

    fn gather(&self, indices: &[usize], out: &mut [f32]) {
        // Every row asked for first, as in `ScaledBytes::gather`.
        self.prefetch(indices);
        for (dst, &i) in out.chunks_exact_mut(self.row_len()).zip(indices) {
            dst.copy_from_slice(self.row(i));
        }
    }

    fn prefetch(&self, indices: &[usize]) {
        for &i in indices {
            prefetch_lines(self.row(i));
        }
    }
}

/// Rows of bytes read as `byte as f32 / divisor`, so a u8 dataset never needs an
/// f32 copy. Values are bit-identical to numpy's `x.astype("float32") / divisor`.
#[derive(Clone, Debug)]
pub struct ScaledBytes<'a> {
    bytes: &'a [u8],
    features: usize,
    divisor: f32,
    /// The share of nonzero bytes, counted at the first call of `density`.
    density: OnceLock<f64>,
}

impl<'a> ScaledBytes<'a> {
    /// # Panics
    /// When `bytes.len()` is not a multiple of `features`.
    pub fn new(bytes: &'a [u8], features: usize, divisor: f32) -> Self {
        assert!(
            features > 0 && bytes.len().is_multiple_of(features),
            "{} bytes do not split into rows of {features}",
            bytes.len()
        );
        Self {
            bytes,
            features,
            divisor,
            density: OnceLock::new(),
        }
    }

    /// The bytes of sample `i`.
    fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.features..(i + 1) * self.features]
    }

    /// The scaled rows as an owned tensor `[len, features]`.
    pub fn to_tensor(&self) -> Tensor {
        let mut data = vec![0.0; self.bytes.len()];
        elementwise::scale_bytes(Isa::detected(), self.bytes, &mut data, self.divisor);
        Tensor::from_vec(&[self.len(), self.features], data)
            .expect("length is a multiple of features")
    }
}

impl Samples for ScaledBytes<'_> {
    fn len(&self) -> usize {
        self.bytes.len() / self.features
    }

    fn bytes_per_value(&self) -> usize {
        1
    }

    /// Nonzero bytes over all bytes, counted once: milliseconds for a whole
    /// dataset. (A guide to which products to try; either gives the same bits.)
    fn density(&self) -> Option<f64> {
        let count = || {
            let nonzeros = self.bytes.iter().filter(|&&b| b != 0).count();
            nonzeros as f64 / self.bytes.len().max(1) as f64
        };
        Some(*self.density.get_or_init(count))
    }

    fn features(&self) -> usize {
        self.features
    }

    fn gather(&self, indices: &[usize], out: &mut [f32]) {
        let (isa, features) = (Isa::detected(), self.features);
        // Each row is converted on its own: the split over threads changes nothing.
        let out = &mut out[..indices.len() * features];
        for_each_chunk(out, GATHER_ROWS * features, &|chunk, out| {
            let first = chunk * GATHER_ROWS;
            let rows = &indices[first..(first + GATHER_ROWS).min(indices.len())];
            // Every row asked for at once: random rows of a dataset in DRAM, read
            // one after another, each waited for its own misses.
            self.prefetch(rows);
            for (dst, &i) in out.chunks_exact_mut(features).zip(rows) {
                elementwise::scale_bytes(isa, self.row(i), dst, self.divisor);
            }
        });
    }

    fn prefetch(&self, indices: &[usize]) {
        for &i in indices {
            prefetch_lines(self.row(i));
        }
    }

    /// Straight from the bytes: no f32 row is written, which halves the time.
    fn compress_rows_if_sparse(
        &self,
        indices: &[usize],
        sparse: &mut SparseRows,
        limit: f64,
    ) -> Option<bool> {
        // Every row asked for at once, as in `gather`.
        self.prefetch(indices);
        let shape = (indices.len(), self.features);
        let row = |i: usize| self.row(indices[i]);
        sparse.compress_scaled_bytes_if_sparse(Isa::detected(), shape, row, self.divisor, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_bytes_match_division() {
        let bytes: Vec<u8> = (0..=255).collect();
        let s = ScaledBytes::new(&bytes, 16, 255.0);
        let mut out = vec![0.0; 32];
        s.gather(&[15, 0], &mut out);
        assert_eq!(out[0], 240.0f32 / 255.0);
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 15.0f32 / 255.0);
    }

    #[test]
    fn scaled_bytes_know_their_density() {
        let bytes = [0, 3, 0, 0, 255, 0, 0, 0];
        assert_eq!(ScaledBytes::new(&bytes, 4, 255.0).density(), Some(0.25));
        assert_eq!(ScaledBytes::new(&[], 4, 255.0).density(), Some(0.0));
        let tensor = ScaledBytes::new(&bytes, 4, 255.0).to_tensor();
        assert_eq!(tensor.density(), None);
    }

    #[test]
    fn scaled_bytes_compress_as_their_gathered_values_and_a_tensor_cannot() {
        let bytes: Vec<u8> = (0..60u32).map(|t| (t * 37 % 5 * 40) as u8).collect();
        let samples = ScaledBytes::new(&bytes, 6, 255.0);
        let indices = [9, 0, 4, 4];
        let mut values = vec![0.0; indices.len() * 6];
        samples.gather(&indices, &mut values);
        let mut expected = SparseRows::default();
        expected.compress(crate::MatRef::row_major(&values, indices.len(), 6));
        let mut sparse = SparseRows::default();
        assert_eq!(
            samples.compress_rows_if_sparse(&indices, &mut sparse, 1.0),
            Some(true)
        );
        sparse.build_columns();
        assert_eq!(sparse.nonzeros(), expected.nonzeros());
        assert!((0..indices.len()).all(|i| sparse.row(i) == expected.row(i)));
        assert!((0..6).all(|j| sparse.col(j).eq(expected.col(j))));

        let tensor = samples.to_tensor();
        assert_eq!(
            tensor.compress_rows_if_sparse(&indices, &mut sparse, 1.0),
            None
        );
    }

    #[test]
    fn tensor_gather_copies_rows() {
        let t = Tensor::from_vec(&[3, 2], vec![0., 1., 2., 3., 4., 5.]).unwrap();
        let mut out = vec![0.0; 4];
        t.gather(&[2, 0], &mut out);
        assert_eq!(out, vec![4., 5., 0., 1.]);
    }
}
