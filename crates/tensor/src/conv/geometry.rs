//! Where a 2-D convolution's (or pooling's) windows fall: Keras' output sizes and
//! padding for `padding="valid"` and `padding="same"`.

use std::fmt;
use std::str::FromStr;

/// Keras' `padding` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding: only windows that fit inside the input.
    #[default]
    Valid,
    /// Zeros around the input so that the output has `ceil(input / stride)`
    /// positions per side; the odd one goes after (bottom, right), as TensorFlow.
    Same,
}

impl Padding {
    pub fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Padding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(format!(
                "unknown padding '{other}' (expected valid or same)"
            )),
        }
    }
}

/// The windows of a 2-D convolution or pooling over NHWC images: input
/// `height × width × channels`, windows `window[0] × window[1]` moved by
/// `strides`, the output `out_height × out_width` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub window: [usize; 2],
    pub strides: [usize; 2],
    /// Rows and columns of zeros before the input (top, left).
    pub pad_before: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

impl Windows {
    /// The windows over an input of `[height, width, channels]`; `None` when a
    /// size or stride is 0 or, with `Valid`, the window does not fit the input.
    pub fn new(
        input: [usize; 3],
        window: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Option<Self> {
        let [height, width, channels] = input;
        if input.contains(&0) || window.contains(&0) || strides.contains(&0) {
            return None;
        }
        let side = |size: usize, window: usize, stride: usize| match padding {
            Padding::Valid if window > size => None,
            Padding::Valid => Some(((size - window) / stride + 1, 0)),
            Padding::Same => {
                let out = size.div_ceil(stride);
                let covered = (out - 1).checked_mul(stride)?.checked_add(window)?;
                Some((out, covered.saturating_sub(size) / 2))
            }
        };
        let (out_height, pad_top) = side(height, window[0], strides[0])?;
        let (out_width, pad_left) = side(width, window[1], strides[1])?;
        // Every size the kernels compute from these must fit a usize: the
        // input, the output positions, and the patch matrix of one image.
        let product = |values: &[usize]| values.iter().try_fold(1usize, |n, &v| n.checked_mul(v));
        product(&input)?;
        product(&[out_height, out_width, channels])?;
        let patch = product(&[window[0], window[1], channels])?.checked_add(1)?;
        product(&[out_height, out_width, patch])?;
        Some(Self {
            height,
            width,
            channels,
            window,
            strides,
            pad_before: [pad_top, pad_left],
            out_height,
            out_width,
        })
    }

    /// Values of one input image.
    pub fn input_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Output positions of one image.
    pub fn positions(&self) -> usize {
        self.out_height * self.out_width
    }

    /// Values of one window over every channel: the depth of a convolution's GEMM.
    pub fn patch_len(&self) -> usize {
        self.window[0] * self.window[1] * self.channels
    }

    /// Floats of a row of the patch matrix: the patch, then the 1 of the bias
    /// column (see `conv::patches`).
    pub fn patch_row_len(&self) -> usize {
        self.patch_len() + 1
    }

    /// The input pixel `(y, x)` under window offset `(ky, kx)` of output position
    /// `(oy, ox)`, or `None` where it falls in the padding.
    #[inline]
    pub fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let y = (oy * self.strides[0] + ky).checked_sub(self.pad_before[0])?;
        let x = (ox * self.strides[1] + kx).checked_sub(self.pad_before[1])?;
        (y < self.height && x < self.width).then_some((y, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_keras() {
        let valid = Windows::new([28, 28, 1], [3, 3], [1, 1], Padding::Valid).unwrap();
        assert_eq!((valid.out_height, valid.out_width), (26, 26));
        let pool = Windows::new([11, 11, 64], [2, 2], [2, 2], Padding::Valid).unwrap();
        assert_eq!((pool.out_height, pool.out_width), (5, 5));
        let same = Windows::new([7, 8, 3], [3, 3], [2, 2], Padding::Same).unwrap();
        assert_eq!((same.out_height, same.out_width), (4, 4));
        // 7 rows, 4 outputs of stride 2 and window 3 need 9: one above, one below.
        assert_eq!(same.pad_before, [1, 0]);
        assert!(Windows::new([2, 2, 1], [3, 3], [1, 1], Padding::Valid).is_none());
        assert!(Windows::new([2, 2, 1], [3, 3], [1, 1], Padding::Same).is_some());
        assert!(Windows::new([2, 2, 1], [1, 1], [0, 1], Padding::Same).is_none());
    }
}
