//! im2col and its adjoint: windows of NHWC images copied to rows of a patch
//! matrix, and patch rows added back onto the pixels they came from.
//!
//! A patch row holds, for each window row `ky`, the `kw·channels` values under
//! it (one contiguous run of the image where the window is inside it), then a
//! 1: the column of ones that makes the bias gradient a row of the kernel
//! gradient's product.

use super::Windows;

/// For output position `(oy, ox)` and window row `ky`: where the run of
/// `kw·channels` patch values starts in the image, or how it straddles the edge.
enum Run {
    /// Inside the image: the run's first value.
    Inside(usize),
    /// Wholly in the padding (a row above or below the image).
    Padding,
    /// Partly outside (left or right edge): taken pixel by pixel.
    Edge,
}

fn run(w: &Windows, oy: usize, ox: usize, ky: usize) -> Run {
    let Some(y) = (oy * w.strides[0] + ky)
        .checked_sub(w.pad_before[0])
        .filter(|&y| y < w.height)
    else {
        return Run::Padding;
    };
    let left = ox * w.strides[1];
    match left.checked_sub(w.pad_before[1]) {
        Some(x) if x + w.window[1] <= w.width => Run::Inside((y * w.width + x) * w.channels),
        _ => Run::Edge,
    }
}

/// Where the window of output position `(oy, ox)` starts in the image when it
/// lies wholly inside it.
fn window_inside(w: &Windows, oy: usize, ox: usize) -> Option<usize> {
    let y = (oy * w.strides[0]).checked_sub(w.pad_before[0])?;
    let x = (ox * w.strides[1]).checked_sub(w.pad_before[1])?;
    let inside = y + w.window[0] <= w.height && x + w.window[1] <= w.width;
    inside.then_some((y * w.width + x) * w.channels)
}

/// Writes the patch rows of one image: row `oy·out_width + ox` (of
/// `w.patch_row_len()` floats) holds the window of output position `(oy, ox)`,
/// for each `(ky, kx)` in order the `channels` values of the pixel under it,
/// zeros in the padding, then a 1.
pub(super) fn image_patches_of(w: &Windows, image: &[f32], rows: &mut [f32]) {
    let (c, run_len) = (w.channels, w.window[1] * w.channels);
    let mut rows = rows.chunks_exact_mut(w.patch_row_len());
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let row = rows.next().expect("one row per output position");
            let (values, one) = row.split_at_mut(w.patch_len());
            one[0] = 1.0;
            if let Some(at) = window_inside(w, oy, ox) {
                copy_window(values, image, at, w.width * c, run_len);
                continue;
            }
            for (ky, piece) in values.chunks_exact_mut(run_len).enumerate() {
                match run(w, oy, ox, ky) {
                    Run::Inside(at) => copy_run(piece, &image[at..][..run_len]),
                    Run::Padding => piece.fill(0.0),
                    Run::Edge => {
                        for (kx, pixel) in piece.chunks_exact_mut(c).enumerate() {
                            match w.source(oy, ox, ky, kx) {
                                Some((y, x)) => {
                                    pixel.copy_from_slice(&image[(y * w.width + x) * c..][..c])
                                }
                                None => pixel.fill(0.0),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A window wholly inside the image, starting at `at`: its rows are runs of
/// `run_len` values, `row_step` apart. A 3×3 window over one channel (the
/// first layer of a convnet on greyscale images) as copies of known length:
/// with a loop of three-float runs per window the copies took as long as that
/// layer's GEMM.
#[inline]
fn copy_window(values: &mut [f32], image: &[f32], at: usize, row_step: usize, run_len: usize) {
    fn fixed<const ROWS: usize, const RUN: usize>(
        values: &mut [f32],
        image: &[f32],
        at: usize,
        row_step: usize,
    ) {
        for (ky, piece) in values[..ROWS * RUN].chunks_exact_mut(RUN).enumerate() {
            piece.copy_from_slice(&image[at + ky * row_step..][..RUN]);
        }
    }
    match (values.len(), run_len) {
        (9, 3) => fixed::<3, 3>(values, image, at, row_step),
        _ => {
            for (ky, piece) in values.chunks_exact_mut(run_len).enumerate() {
                copy_run(piece, &image[at + ky * row_step..][..run_len]);
            }
        }
    }
}

/// `dst = src`; a short run (a window row over one channel: 3 floats) as a
/// copy of known length, compiled to moves, where a call to `memcpy` per run
/// cost more than the copy.
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        dst[..N].copy_from_slice(&src[..N]);
    }
    match dst.len() {
        1 => fixed::<1>(dst, src),
        2 => fixed::<2>(dst, src),
        3 => fixed::<3>(dst, src),
        4 => fixed::<4>(dst, src),
        5 => fixed::<5>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// The adjoint of [`image_patches_of`]: `image = Σ` of its patch values onto
/// the pixels they were copied from (padding and the ones' column dropped),
/// summed in patch-row order.
pub(super) fn add_image_patches(w: &Windows, rows: &[f32], image: &mut [f32]) {
    let (c, run_len) = (w.channels, w.window[1] * w.channels);
    image.fill(0.0);
    let mut rows = rows.chunks_exact(w.patch_row_len());
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let row = rows.next().expect("one row per output position");
            for (ky, piece) in row[..w.patch_len()].chunks_exact(run_len).enumerate() {
                match run(w, oy, ox, ky) {
                    Run::Inside(at) => {
                        let pixels = &mut image[at..][..run_len];
                        pixels.iter_mut().zip(piece).for_each(|(p, v)| *p += v);
                    }
                    Run::Padding => {}
                    Run::Edge => {
                        for (kx, values) in piece.chunks_exact(c).enumerate() {
                            if let Some((y, x)) = w.source(oy, ox, ky, kx) {
                                let pixel = &mut image[(y * w.width + x) * c..][..c];
                                pixel.iter_mut().zip(values).for_each(|(p, v)| *p += v);
                            }
                        }
                    }
                }
            }
        }
    }
}
