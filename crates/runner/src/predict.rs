//! `kerno predict`: a saved model's classes for the dataset's test images or for
//! the user's own pictures, prepared as MNIST's digits were.

use crate::cli::PredictArgs;
use crate::commands::{load_model_and_data, PIXEL_SCALE};
use crate::output::Output;
use anyhow::{Context, Result};
use kerno_data::DIGIT_SIDE;
use kerno_model::Sequential;
use kerno_tensor::{ScaledBytes, Tensor};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub fn run(args: PredictArgs, quiet: bool) -> Result<()> {
    let out = Output::new(args.json, quiet);
    if args.image.is_empty() {
        test_images(&args, out)
    } else {
        own_images(&args, out)
    }
}

/// The `k` most likely classes of row `row`, most likely first.
fn top_classes(probabilities: &Tensor, row: usize, k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> =
        probabilities.row(row).iter().copied().enumerate().collect();
    // NaN ranks last, as it never wins an arg-max.
    ranked.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.total_cmp(&a.1),
        (nan_a, nan_b) => nan_a.cmp(&nan_b),
    });
    ranked.truncate(k);
    ranked
}

/// `7 (p=0.9912)`, and the next classes after a comma.
fn ranked_text(ranked: &[(usize, f32)]) -> String {
    let each: Vec<String> = ranked
        .iter()
        .map(|(class, p)| format!("{class} (p={p:.4})"))
        .collect();
    each.join(", ")
}

fn ranked_json(ranked: &[(usize, f32)]) -> serde_json::Value {
    ranked
        .iter()
        .map(|(class, p)| json!({"class": class, "probability": p}))
        .collect()
}

fn test_images(args: &PredictArgs, out: Output) -> Result<()> {
    let (mut model, data) = load_model_and_data(&args.model, &args.data, out)?;
    let images = &data.test.images;
    let end = args
        .start
        .checked_add(args.count)
        .filter(|&e| e <= images.len());
    let Some(end) = end else {
        anyhow::bail!(
            "--start {} --count {} goes past the {} test images",
            args.start,
            args.count,
            images.len()
        );
    };
    let pixels = &images.pixels()[args.start * images.features()..end * images.features()];
    let batch = ScaledBytes::new(pixels, images.features(), PIXEL_SCALE);
    let probabilities = model.predict(&batch, 128)?;
    for offset in 0..end - args.start {
        let index = args.start + offset;
        let label = data.test.labels[index];
        let ranked = top_classes(&probabilities, offset, args.top);
        if out.json {
            let line = json!({
                "dataset": data.name,
                "image": index,
                "label": label,
                "class": ranked[0].0,
                "probability": ranked[0].1,
                "top": ranked_json(&ranked),
            });
            println!("{line}");
        } else {
            println!("image {index}: {}, label {label}", ranked_text(&ranked));
        }
    }
    Ok(())
}

/// The user's pictures: each prepared (or a one-line error naming it) before any
/// is predicted.
fn own_images(args: &PredictArgs, out: Output) -> Result<()> {
    let mut model = Sequential::load(&args.model)?;
    let inputs = DIGIT_SIDE * DIGIT_SIDE;
    anyhow::ensure!(
        model.input_dim() == inputs,
        "{}: the model takes {} inputs, and --image gives {DIGIT_SIDE}×{DIGIT_SIDE} = {inputs}",
        args.model.display(),
        model.input_dim()
    );
    let mut pixels = Vec::with_capacity(args.image.len() * inputs);
    for path in &args.image {
        pixels.extend(kerno_data::read_digit(path)?);
    }
    let saved = match &args.save_preprocessed {
        Some(dir) => save_preprocessed(dir, &args.image, &pixels)?,
        None => Vec::new(),
    };
    let batch = ScaledBytes::new(&pixels, inputs, PIXEL_SCALE);
    let probabilities = model.predict(&batch, 128)?;
    for (row, path) in args.image.iter().enumerate() {
        let ranked = top_classes(&probabilities, row, args.top);
        if out.json {
            let line = json!({
                "file": path.display().to_string(),
                "class": ranked[0].0,
                "probability": ranked[0].1,
                "top": ranked_json(&ranked),
                "preprocessed": saved.get(row).map(|p| p.display().to_string()),
            });
            println!("{line}");
        } else {
            println!("{}: {}", path.display(), ranked_text(&ranked));
        }
    }
    Ok(())
}

/// Writes each prepared 28×28 image to `dir` as `<name of the picture>.png`
/// (`-2`, `-3`… added when two pictures share a name), returning the paths.
fn save_preprocessed(dir: &Path, images: &[PathBuf], pixels: &[u8]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--save-preprocessed {} cannot be made", dir.display()))?;
    let side = DIGIT_SIDE as u32;
    let mut taken = HashSet::new();
    let mut written = Vec::with_capacity(images.len());
    for (path, digit) in images
        .iter()
        .zip(pixels.chunks_exact(DIGIT_SIDE * DIGIT_SIDE))
    {
        let stem = path
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
        let mut name = format!("{stem}.png");
        let mut n = 1;
        while !taken.insert(name.clone()) {
            n += 1;
            name = format!("{stem}-{n}.png");
        }
        let target = dir.join(name);
        let mut png = Vec::new();
        image::GrayImage::from_raw(side, side, digit.to_vec())
            .expect("a prepared digit is 28×28")
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("encoding a PNG")?;
        kerno_data::write_atomically(&target, &png)
            .with_context(|| format!("--save-preprocessed {}", target.display()))?;
        written.push(target);
    }
    Ok(written)
}
