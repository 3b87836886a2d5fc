//! im2col and its adjoint: windows of NHWC images copied to rows of a patch
//! matrix, and patch rows added back onto the pixels they came from.
//!
//! A patch row holds, for each window row `ky`, the `kw·channels` values under
//! it (one contiguous run of the image where the window is inside it), then a
//! 1: the column of ones that makes the bias gradient a row of the kernel
//! gradient's product.

use super::Windows;
use crate::parallel::for_each_chunk;

/// Images per parallel task: the split depends on the batch alone, never on
/// the thread count, and a task is large enough to pay for its hand-over.
const IMAGES_PER_TASK: usize = 4;

/// Writes row `image·positions + oy·out_width + ox` of `patches` (rows of
/// `windows.patch_row_len()`) with the window of output position `(oy, ox)`:
/// for each `(ky, kx)` in order the `channels` values of the pixel under it,
/// zeros in the padding, then a 1.
///
/// # Panics
/// When `input` or `patches` is shorter than `images` need.
pub fn images_to_patches(windows: &Windows, images: usize, input: &[f32], patches: &mut [f32]) {
    let image_len = windows.input_len();
    let image_patches = windows.positions() * windows.patch_row_len();
    let input = &input[..images * image_len];
    for_each_chunk(
        &mut patches[..images * image_patches],
        IMAGES_PER_TASK * image_patches,
        &|task, chunk: &mut [f32]| {
            let first = task * IMAGES_PER_TASK;
            for (i, image_rows) in chunk.chunks_exact_mut(image_patches).enumerate() {
                let image = &input[(first + i) * image_len..][..image_len];
                image_patches_of(windows, image, image_rows);
            }
        },
    );
}

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

fn image_patches_of(w: &Windows, image: &[f32], rows: &mut [f32]) {
    let (c, run_len) = (w.channels, w.window[1] * w.channels);
    let mut rows = rows.chunks_exact_mut(w.patch_row_len());
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let row = rows.next().expect("one row per output position");
            let (values, one) = row.split_at_mut(w.patch_len());
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
            one[0] = 1.0;
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

/// The adjoint of [`images_to_patches`]: each image `= Σ` of its patch values
/// onto the pixels they were copied from (padding and the ones' column
/// dropped), summed in patch-row order.
///
/// # Panics
/// When `patches` or `images_out` is shorter than `images` need.
pub fn add_patches_into_images(
    windows: &Windows,
    images: usize,
    patches: &[f32],
    images_out: &mut [f32],
) {
    let image_len = windows.input_len();
    let image_patches = windows.positions() * windows.patch_row_len();
    let patches = &patches[..images * image_patches];
    for_each_chunk(
        &mut images_out[..images * image_len],
        IMAGES_PER_TASK * image_len,
        &|task, chunk: &mut [f32]| {
            let first = task * IMAGES_PER_TASK;
            for (i, image) in chunk.chunks_exact_mut(image_len).enumerate() {
                let rows = &patches[(first + i) * image_patches..][..image_patches];
                add_image_patches(windows, rows, image);
            }
        },
    );
}

fn add_image_patches(w: &Windows, rows: &[f32], image: &mut [f32]) {
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
