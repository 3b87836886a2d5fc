//! Image classification datasets held as bytes, as they are on disk.

use kerno_tensor::{ScaledBytes, Tensor};
use std::path::PathBuf;

/// Greyscale images stored as bytes, one after another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    count: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
}

impl Images {
    /// # Panics
    /// When `pixels` does not hold `count × height × width` bytes.
    pub fn new(count: usize, height: usize, width: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(
            pixels.len(),
            count * height * width,
            "pixel count does not match the shape"
        );
        Self {
            count,
            height,
            width,
            pixels,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.height * self.width
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// Image `i`'s pixels, row by row.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.features()..(i + 1) * self.features()]
    }

    /// The images flattened to rows of `height × width` values `pixel / divisor`,
    /// read on the fly (no f32 copy of the dataset is made).
    pub fn scaled(&self, divisor: f32) -> ScaledBytes<'_> {
        ScaledBytes::new(&self.pixels, self.features(), divisor)
    }

    /// The images as an f32 tensor `[count, height, width]`, as numpy's `x.astype("float32")`.
    pub fn to_tensor(&self) -> Tensor {
        let data = self.pixels.iter().map(|&p| p as f32).collect();
        Tensor::from_vec(&[self.count, self.height, self.width], data)
            .expect("shape matches pixels")
    }
}

/// Images with one label each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub images: Images,
    pub labels: Vec<u8>,
}

/// A dataset's training and test splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `"mnist"`, `"fashion-mnist"`, or the folder name of another IDX set.
    pub name: String,
    pub classes: usize,
    pub train: Split,
    pub test: Split,
    /// The file or folder it was read from.
    pub source: PathBuf,
}

/// One-hot rows for class labels, as Keras' `to_categorical`.
///
/// ```
/// let y = kerno_data::to_categorical(&[2, 0], 3);
/// assert_eq!(y.data(), &[0., 0., 1., 1., 0., 0.]);
/// ```
///
/// # Panics
/// When a label is not below `classes` (datasets from this crate are checked on load).
pub fn to_categorical(labels: &[u8], classes: usize) -> Tensor {
    let mut data = vec![0.0; labels.len() * classes];
    for (row, &label) in labels.iter().enumerate() {
        assert!(
            (label as usize) < classes,
            "label {label} out of range for {classes} classes"
        );
        data[row * classes + label as usize] = 1.0;
    }
    Tensor::from_vec(&[labels.len(), classes], data).expect("shape matches data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_categorical_is_one_hot() {
        let t = to_categorical(&[2, 0], 3);
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.data(), &[0., 0., 1., 1., 0., 0.]);
    }
}
