//! im2col and its adjoint: windows of NHWC images copied to rows of a patch
//! matrix, and patch rows added back onto the pixels they came from.

use super::Windows;
use crate::parallel::for_each_chunk;

/// Images per parallel task: the split depends on the batch alone, never on
/// the thread count, and a task is large enough to pay for its hand-over.
const IMAGES_PER_TASK: usize = 4;

/// Writes row `image·positions + oy·out_width + ox` of `patches` with the window
/// of output position `(oy, ox)`: for each `(ky, kx)` in order, the `channels`
/// values of the pixel under it, or zeros in the padding.
///
/// # Panics
/// When `input` or `patches` is shorter than `images` need.
pub fn images_to_patches(windows: &Windows, images: usize, input: &[f32], patches: &mut [f32]) {
    let (image_len, patch_len) = (windows.input_len(), windows.patch_len());
    let image_patches = windows.positions() * patch_len;
    let input = &input[..images * image_len];
    let patches = &mut patches[..images * image_patches];
    for_each_chunk(
        patches,
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

fn image_patches_of(w: &Windows, image: &[f32], rows: &mut [f32]) {
    let c = w.channels;
    let mut rows = rows.chunks_exact_mut(w.patch_len());
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let row = rows.next().expect("one row per output position");
            let mut pieces = row.chunks_exact_mut(c);
            for ky in 0..w.window[0] {
                for kx in 0..w.window[1] {
                    let piece = pieces.next().expect("one piece per window offset");
                    match w.source(oy, ox, ky, kx) {
                        Some((y, x)) => piece.copy_from_slice(&image[(y * w.width + x) * c..][..c]),
                        None => piece.fill(0.0),
                    }
                }
            }
        }
    }
}

/// The adjoint of [`images_to_patches`]: `images = Σ` of each patch value onto the
/// pixel it was copied from (padding dropped), summed in patch-row order.
///
/// # Panics
/// When `patches` or `images_out` is shorter than `images` need.
pub fn add_patches_into_images(
    windows: &Windows,
    images: usize,
    patches: &[f32],
    images_out: &mut [f32],
) {
    let (image_len, patch_len) = (windows.input_len(), windows.patch_len());
    let image_patches = windows.positions() * patch_len;
    let patches = &patches[..images * image_patches];
    let images_out = &mut images_out[..images * image_len];
    for_each_chunk(
        images_out,
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
    let c = w.channels;
    image.fill(0.0);
    let mut rows = rows.chunks_exact(w.patch_len());
    for oy in 0..w.out_height {
        for ox in 0..w.out_width {
            let row = rows.next().expect("one row per output position");
            let mut pieces = row.chunks_exact(c);
            for ky in 0..w.window[0] {
                for kx in 0..w.window[1] {
                    let piece = pieces.next().expect("one piece per window offset");
                    if let Some((y, x)) = w.source(oy, ox, ky, kx) {
                        let pixel = &mut image[(y * w.width + x) * c..][..c];
                        pixel.iter_mut().zip(piece).for_each(|(p, v)| *p += v);
                    }
                }
            }
        }
    }
}
