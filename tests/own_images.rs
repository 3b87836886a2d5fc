//! A person's pictures of digits: MNIST test digits made to differ as photos do
//! (upscaled, dark ink on light paper, off-centre on a larger page, thicker or
//! thinner strokes, JPEG-compressed), read back through `read_digit` and predicted
//! by the notebook's model trained 5 epochs.

mod common;

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{GrayImage, Luma};
use kerno::prelude::*;
use kerno::tensor::ScaledBytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// How many test digits become pictures.
const PICTURES: usize = 1000;
/// Every `STRIDE`-th test digit, so the pictures span the whole test split.
const STRIDE: usize = 10;

/// Grows (`radius` > 0) or thins (< 0) light strokes on a dark page: each pixel
/// becomes the brightest (or darkest) within a square of `radius` around it, in
/// two one-dimensional passes.
fn stroke_width(image: &GrayImage, radius: i32) -> GrayImage {
    let pass = |image: &GrayImage, horizontal: bool| {
        let (w, h) = image.dimensions();
        let r = radius.unsigned_abs();
        GrayImage::from_fn(w, h, |x, y| {
            let (at, len) = if horizontal { (x, w) } else { (y, h) };
            let window = at.saturating_sub(r)..(at + r + 1).min(len);
            let values = window.map(|i| {
                let (px, py) = if horizontal { (i, y) } else { (x, i) };
                image.get_pixel(px, py)[0]
            });
            Luma([if radius > 0 {
                values.max()
            } else {
                values.min()
            }
            .unwrap()])
        })
    };
    pass(&pass(image, true), false)
}

/// One MNIST digit as a photo: scaled up 6–14×, strokes changed, inverted to dark
/// on light, pasted somewhere on a larger page, saved as a JPEG.
fn photograph(digit: &[u8], rng: &mut ChaCha8Rng, path: &Path) {
    let small = GrayImage::from_raw(28, 28, digit.to_vec()).unwrap();
    let side = rng.gen_range(150..320);
    let big = imageops::resize(&small, side, side, FilterType::CatmullRom);
    let radius = rng.gen_range(-(side as i32) / 80..=(side as i32) / 50);
    let mut ink = stroke_width(&big, radius);
    imageops::invert(&mut ink);
    let (page_w, page_h) = (side + rng.gen_range(0..240), side + rng.gen_range(0..240));
    let paper = rng.gen_range(200..=255u8);
    let mut page = GrayImage::from_pixel(page_w, page_h, Luma([paper]));
    let (x, y) = (
        rng.gen_range(0..=page_w - side),
        rng.gen_range(0..=page_h - side),
    );
    for (px, py, p) in ink.enumerate_pixels() {
        // Ink darkens the paper; no ink leaves it as it is.
        let shade = p[0].min(paper);
        page.put_pixel(x + px, y + py, Luma([shade]));
    }
    let file = std::fs::File::create(path).unwrap();
    let quality = rng.gen_range(60..=90);
    page.write_with_encoder(JpegEncoder::new_with_quality(file, quality))
        .unwrap();
}

#[test]
fn photos_of_test_digits_are_predicted_as_their_labels() {
    let mnist = common::mnist();
    let (mut model, _) = common::trained_notebook_model(&mnist, Verbosity::Silent);

    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut prepared = Vec::with_capacity(PICTURES * 784);
    let features = mnist.test.images.features();
    for i in 0..PICTURES {
        let index = i * STRIDE;
        let digit = &mnist.test.images.pixels()[index * features..(index + 1) * features];
        let path = dir.path().join(format!("digit-{i}.jpg"));
        photograph(digit, &mut rng, &path);
        prepared.extend(kerno::data::read_digit(&path).unwrap());
    }
    let batch = ScaledBytes::new(&prepared, 784, 255.0);
    let predicted = model.predict(&batch, 128).unwrap().argmax_rows();
    let right = (0..PICTURES)
        .filter(|&i| predicted[i] == mnist.test.labels[i * STRIDE] as usize)
        .count();
    let accuracy = right as f64 / PICTURES as f64;
    println!("{right} of {PICTURES} photographed digits predicted as their label ({accuracy:.4})");
    assert!(
        accuracy >= 0.97,
        "only {right} of {PICTURES} photographed digits predicted right"
    );
}
