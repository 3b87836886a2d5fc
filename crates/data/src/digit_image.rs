//! A person's picture of a digit turned into what MNIST's digits are: 28×28 grey
//! bytes, white ink on black, the digit fitted in 20×20 and its centre of mass at
//! the centre (LeCun et al., the preparation of NIST's digits for MNIST).

use crate::error::DataError;
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Limits, Luma};
use std::io::{Cursor, Read};
use std::path::Path;

/// A greyscale picture of `f32` shades.
type Grey = ImageBuffer<Luma<f32>, Vec<f32>>;

/// The side of an MNIST image.
pub const DIGIT_SIDE: usize = 28;
/// The side of the box the digit's longer side is scaled to.
const BOX_SIDE: f32 = 20.0;

/// The largest image file read (a phone's photo is a few megabytes).
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// The largest width or height decoded, and the most memory a decoder may take:
/// together they stop a small file that claims a huge picture (a decompression bomb).
pub const MAX_IMAGE_SIDE: u32 = 12_000;
const MAX_DECODE_BYTES: u64 = 512 << 20;
/// The longest side a picture is worked on at: far more than the 20 px the digit
/// becomes, even when it fills a tenth of the picture.
const WORKING_SIDE: u32 = 1024;

/// Below this fraction of the ink's full strength a pixel is paper: noise, texture
/// and JPEG ringing, which would otherwise widen the digit's bounding box.
const INK_FLOOR: f32 = 0.25;
/// From this fraction up a pixel is full ink. Between the two, strength ramps up:
/// a photo's soft stroke edges made nearly as sharp as the scans of binary ink
/// that MNIST's digits were scaled from.
const INK_CEILING: f32 = 0.75;
/// Less contrast than this (of 255) between paper and ink is a blank page.
const MIN_CONTRAST: f32 = 40.0;

/// Reads an image file (PNG, JPEG, BMP or GIF) and prepares it as an MNIST digit:
/// [`DIGIT_SIDE`]² bytes, row by row.
///
/// ```
/// // A photo-like picture: a dark bar on light paper, off-centre.
/// let mut page = image::GrayImage::from_pixel(300, 200, image::Luma([230]));
/// for y in 40..160 {
///     for x in 200..215 {
///         page.put_pixel(x, y, image::Luma([20]));
///     }
/// }
/// let path = std::env::temp_dir().join(format!("kerno-doc-{}.png", std::process::id()));
/// page.save(&path)?;
/// let pixels = kerno_data::read_digit(&path)?;
/// assert_eq!(pixels.len(), 28 * 28);
/// // Light ink on black, the bar 20 pixels tall in the middle, as MNIST's ones.
/// assert_eq!(pixels[0], 0);
/// assert_eq!(pixels[14 * 28 + 14], 255);
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_digit(path: &Path) -> Result<Vec<u8>, DataError> {
    let bad = |problem: String| DataError::Image {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(bad(format!(
            "larger than {MAX_IMAGE_FILE_BYTES} bytes, more than kerno reads as an image"
        )));
    }
    let image = decode(&bytes).map_err(bad)?;
    prepare_digit(&image).map_err(bad)
}

/// Decodes PNG, JPEG, BMP or GIF (the first frame) within the limits above.
fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Gif) => {}
        _ => return Err("not a PNG, JPEG, BMP or GIF image".into()),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!(
            "the image is larger than {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels or \
             {MAX_DECODE_BYTES} bytes decoded, more than kerno decodes"
        ),
        other => format!("cannot be decoded: {other}"),
    })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(format!(
            "the image is {}×{} pixels: nothing to read",
            image.width(),
            image.height()
        ));
    }
    Ok(image)
}

/// Prepares a decoded picture as MNIST prepared its digits: greyscale; inverted
/// when the paper is light; cropped to the ink's bounding box; scaled (with
/// antialiasing) so the longer side is 20 px, keeping the aspect ratio; placed in
/// 28×28 with its centre of mass at the centre. Two steps are kerno's own, for
/// photos: soft stroke edges are sharpened (see `INK_CEILING`), and strokes far
/// thinner than MNIST's are grown (see `MIN_STROKE`). An error says why there is
/// no digit.
pub fn prepare_digit(image: &DynamicImage) -> Result<Vec<u8>, String> {
    // A phone's photo is shrunk first (area averaging, in integers): the digit
    // ends 20 px tall, and the float copies below then stay a few megabytes.
    let shrunk;
    let image = if image.width().max(image.height()) > WORKING_SIDE {
        shrunk = image.thumbnail(WORKING_SIDE, WORKING_SIDE);
        &shrunk
    } else {
        image
    };
    let (grey, paper, ink) = light_ink_on_dark(greyscale(image));
    let (width, height) = grey.dimensions();
    if ink - paper < MIN_CONTRAST {
        return Err(format!(
            "no ink found: the picture is nearly one shade ({} to {} of 255)",
            paper.round(),
            ink.round()
        ));
    }
    // Ink strength in [0, 1], paper at 0.
    let strength = ImageBuffer::from_fn(width, height, |x, y| {
        let v = ((grey.get_pixel(x, y)[0] - paper) / (ink - paper)).clamp(0.0, 1.0);
        Luma([((v - INK_FLOOR) / (INK_CEILING - INK_FLOOR)).clamp(0.0, 1.0)])
    });
    let Some((left, top, right, bottom)) = ink_bounds(&strength) else {
        return Err("no ink found on the page".into());
    };
    let crop = imageops::crop_imm(&strength, left, top, right - left, bottom - top).to_image();
    let first_scale = BOX_SIDE / crop.width().max(crop.height()) as f32;
    let crop = thickened(crop, first_scale);
    let scale = BOX_SIDE / crop.width().max(crop.height()) as f32;
    let scaled_w = ((crop.width() as f32 * scale).round() as u32).max(1);
    let scaled_h = ((crop.height() as f32 * scale).round() as u32).max(1);
    let digit = if scale < 1.0 {
        area_average(&crop, scaled_w, scaled_h)
    } else {
        imageops::resize(&crop, scaled_w, scaled_h, FilterType::Triangle)
    };
    Ok(centred_by_mass(&full_strength(digit)))
}

/// Luminance with any transparency resolved: a transparent background takes the
/// shade opposite the visible strokes, so that it reads as paper.
fn greyscale(image: &DynamicImage) -> Grey {
    let rgba = image.to_rgba32f();
    let luma = |p: &image::Rgba<f32>| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let (mut weighted, mut weight) = (0.0f64, 0.0f64);
    for p in rgba.pixels() {
        weighted += f64::from(luma(p) * p[3]);
        weight += f64::from(p[3]);
    }
    let strokes_are_dark = weight == 0.0 || weighted / weight < 0.5;
    let backdrop = if strokes_are_dark { 1.0 } else { 0.0 };
    ImageBuffer::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y);
        let v = luma(p) * p[3] + backdrop * (1.0 - p[3]);
        Luma([v * 255.0])
    })
}

/// The picture as light ink on dark paper, inverted when the paper (the median of
/// its border) is light; with the paper's shade and the ink's (the brightest).
fn light_ink_on_dark(mut grey: Grey) -> (Grey, f32, f32) {
    let (width, height) = grey.dimensions();
    let mut border: Vec<f32> = grey
        .enumerate_pixels()
        .filter(|(x, y, _)| *x == 0 || *y == 0 || *x == width - 1 || *y == height - 1)
        .map(|(_, _, p)| p[0])
        .collect();
    border.sort_by(f32::total_cmp);
    let mut paper = border[border.len() / 2];
    if paper > 127.5 {
        grey.pixels_mut().for_each(|p| p[0] = 255.0 - p[0]);
        paper = 255.0 - paper;
    }
    let ink = grey.pixels().fold(f32::MIN, |hi, p| hi.max(p[0]));
    (grey, paper, ink)
}

/// The smallest box (left, top, right, bottom; right and bottom exclusive) holding
/// every pixel of ink, or `None` for an empty page.
fn ink_bounds(strength: &Grey) -> Option<(u32, u32, u32, u32)> {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in strength.enumerate_pixels() {
        if p[0] > 0.0 {
            bounds = Some(match bounds {
                None => (x, y, x + 1, y + 1),
                Some((l, t, r, b)) => (l.min(x), t.min(y), r.max(x + 1), b.max(y + 1)),
            });
        }
    }
    bounds
}

/// The thinnest stroke, in pixels of the 28×28 image, left as it is: about the
/// 30th percentile of MNIST's own (estimated as below; its median is 2.0).
/// Thinner pen strokes would fade to a few grey pixels when scaled down.
const MIN_STROKE: f32 = 1.8;

/// The strokes of `crop` (to be scaled by `scale`) grown to [`MIN_STROKE`] when
/// thinner. Width is estimated as twice the ink's area over its perimeter, which
/// for a stroke of width w and length L is 2wL / 2L.
fn thickened(crop: Grey, scale: f32) -> Grey {
    let (width, height) = crop.dimensions();
    let inked = |x: u32, y: u32| crop.get_pixel(x, y)[0] >= 0.5;
    let (mut area, mut perimeter) = (0u64, 0u64);
    for y in 0..height {
        for x in 0..width {
            if inked(x, y) {
                area += 1;
                perimeter += u64::from(x == 0 || !inked(x - 1, y))
                    + u64::from(x + 1 == width || !inked(x + 1, y))
                    + u64::from(y == 0 || !inked(x, y - 1))
                    + u64::from(y + 1 == height || !inked(x, y + 1));
            }
        }
    }
    let stroke = 2.0 * area as f32 / perimeter.max(1) as f32 * scale;
    if area == 0 || stroke >= MIN_STROKE {
        return crop;
    }
    let radius = ((MIN_STROKE - stroke) / 2.0 / scale).ceil() as u32;
    // Room for the strokes to grow into, then a square maximum filter.
    let mut padded = ImageBuffer::new(width + 2 * radius, height + 2 * radius);
    imageops::replace(&mut padded, &crop, i64::from(radius), i64::from(radius));
    let grown = max_filter(&max_filter(&padded, radius, true), radius, false);
    // Cropped again to the ink, which now reaches `radius` further.
    let (left, top, right, bottom) = ink_bounds(&grown).expect("the strokes only grew");
    imageops::crop_imm(&grown, left, top, right - left, bottom - top).to_image()
}

/// Each pixel the largest within `radius` along rows (`horizontal`) or columns.
fn max_filter(image: &Grey, radius: u32, horizontal: bool) -> Grey {
    let (width, height) = image.dimensions();
    ImageBuffer::from_fn(width, height, |x, y| {
        let (at, len) = if horizontal { (x, width) } else { (y, height) };
        let window = at.saturating_sub(radius)..(at + radius + 1).min(len);
        let strongest = window
            .map(|i| {
                let (px, py) = if horizontal { (i, y) } else { (x, i) };
                image.get_pixel(px, py)[0]
            })
            .fold(0.0f32, f32::max);
        Luma([strongest])
    })
}

/// Shrinks by averaging, each target pixel the mean of the source area it covers
/// (fractions of pixels weighed by their share): antialiased without the extra
/// blur of a wider filter, which would thin and dim the strokes MNIST keeps sharp.
fn area_average(source: &Grey, width: u32, height: u32) -> Grey {
    let horizontal = ImageBuffer::from_fn(width, source.height(), |x, y| {
        Luma([covered_mean(source.width(), width, x, |i| {
            source.get_pixel(i, y)[0]
        })])
    });
    ImageBuffer::from_fn(width, height, |x, y| {
        Luma([covered_mean(source.height(), height, y, |i| {
            horizontal.get_pixel(x, i)[0]
        })])
    })
}

/// The mean over target pixel `at` (of `target` across `source` pixels) of `value`.
fn covered_mean(source: u32, target: u32, at: u32, value: impl Fn(u32) -> f32) -> f32 {
    let step = source as f64 / target as f64;
    let (start, end) = (
        at as f64 * step,
        ((at + 1) as f64 * step).min(source as f64),
    );
    let mut sum = 0.0;
    let mut i = start.floor() as u32;
    while (i as f64) < end && i < source {
        let overlap = (end.min(i as f64 + 1.0) - start.max(i as f64)).max(0.0);
        sum += overlap * f64::from(value(i));
        i += 1;
    }
    (sum / (end - start)) as f32
}

/// The strokes scaled so the strongest pixel is full ink, as in MNIST, where
/// nearly every digit reaches 255.
fn full_strength(mut digit: Grey) -> Grey {
    let strongest = digit.pixels().fold(0.0f32, |m, p| m.max(p[0]));
    if strongest > 0.0 {
        digit.pixels_mut().for_each(|p| p[0] /= strongest);
    }
    digit
}

/// The digit placed in 28×28 so that its centre of mass falls on the centre (as
/// near as whole pixels allow, and never cut by the edge), as bytes.
fn centred_by_mass(digit: &Grey) -> Vec<u8> {
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in digit.enumerate_pixels() {
        let m = f64::from(p[0]);
        mass += m;
        mx += m * f64::from(x);
        my += m * f64::from(y);
    }
    // MNIST's centres of mass fall at pixel 14 (of 0–27) in each direction.
    let centre = DIGIT_SIDE as f64 / 2.0;
    let offset = |com: f64, size: u32| {
        let room = (DIGIT_SIDE as u32 - size) as f64;
        (centre - com / mass.max(f64::MIN_POSITIVE))
            .round()
            .clamp(0.0, room) as usize
    };
    let (dx, dy) = (offset(mx, digit.width()), offset(my, digit.height()));
    let mut out = vec![0u8; DIGIT_SIDE * DIGIT_SIDE];
    for (x, y, p) in digit.enumerate_pixels() {
        let at = (y as usize + dy) * DIGIT_SIDE + x as usize + dx;
        out[at] = (p[0].clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    out
}
