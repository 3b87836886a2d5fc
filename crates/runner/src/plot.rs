//! Pictures, PNG or SVG by the output's extension: `kerno plot` draws a training
//! log's loss and accuracy per epoch (the book's two figures), and
//! `kerno evaluate --confusion` the confusion matrix. The font is bundled, so the
//! text renders on a machine without system fonts.

use crate::confusion::Confusion;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (its licence beside it in `assets/`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// The book's colours: training as dots, validation as a line.
const TRAINING: RGBColor = RGBColor(31, 119, 180);
const VALIDATION: RGBColor = RGBColor(214, 39, 40);

/// PNG or SVG, from the extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
}

/// Checks, before any long work, that `path` ends in `.png` or `.svg` and can be written.
pub fn check_output(path: &Path, flag: &str) -> Result<()> {
    format_of(path).with_context(|| format!("{flag} {}", path.display()))?;
    crate::commands::check_writable(flag, Some(path))
}

fn format_of(path: &Path) -> Result<Format> {
    let extension = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    match extension.as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => bail!("the picture's name must end in .png or .svg"),
    }
}

/// Something drawn on any plotters backend.
trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// plotters' drawing errors carry the backend's error type; they are reported as text.
fn drawing<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("drawing failed: {error:?}")
}

/// Makes the bundled font plotters' sans-serif, once per process. plotters draws
/// text only with registered fonts (its `ab_glyph` feature, which cargo turns on
/// for every user of plotters in the workspace, criterion's HTML reports too:
/// benches call this before criterion draws).
pub fn register_plot_font() {
    static FONT_REGISTERED: Once = Once::new();
    FONT_REGISTERED.call_once(|| {
        // The font is compiled in; a test draws with it, so it cannot be invalid here.
        let _ = register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// Draws `picture` and writes it to `path` atomically.
fn write_picture(picture: &impl Picture, path: &Path) -> Result<()> {
    register_plot_font();
    let (width, height) = picture.size();
    let bytes = match format_of(path)? {
        Format::Png => {
            let mut rgb = vec![0u8; width as usize * height as usize * 3];
            {
                let area =
                    BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
                picture.draw(&area)?;
                area.present().map_err(drawing)?;
            }
            let image = image::RgbImage::from_raw(width, height, rgb).expect("sized above");
            let mut png = Vec::new();
            image
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .context("encoding the PNG")?;
            png
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let area = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
                picture.draw(&area)?;
                area.present().map_err(drawing)?;
            }
            svg.into_bytes()
        }
    };
    kerno_data::write_atomically(path, &bytes).with_context(|| format!("{}", path.display()))
}

/// A training log as Keras' `CSVLogger` writes it: an `epoch` column and one
/// column per log, `NA` where an epoch has no value.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingLog {
    pub epochs: Vec<f64>,
    /// Name and one value per epoch (NaN where missing).
    pub columns: Vec<(String, Vec<f64>)>,
}

impl TrainingLog {
    /// Reads a CSV log; every line is checked, and a bad one is an error naming
    /// the file and the line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            bail!("{}: empty, not a training log", path.display());
        };
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let Some(epoch_column) = names.iter().position(|&n| n == "epoch") else {
            bail!(
                "{}: the header has no 'epoch' column (kerno train --log writes it)",
                path.display()
            );
        };
        let mut log = TrainingLog {
            epochs: Vec::new(),
            columns: names
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != epoch_column)
                .map(|(_, n)| (n.to_string(), Vec::new()))
                .collect(),
        };
        for (index, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != names.len() {
                bail!(
                    "{}: line {} has {} fields, the header {}",
                    path.display(),
                    index + 1,
                    fields.len(),
                    names.len()
                );
            }
            let mut values = Vec::with_capacity(fields.len());
            for field in &fields {
                let value = match *field {
                    "NA" | "" => f64::NAN,
                    number => number.parse::<f64>().map_err(|_| {
                        anyhow!(
                            "{}: line {}: '{}' is not a number",
                            path.display(),
                            index + 1,
                            number.escape_debug()
                        )
                    })?,
                };
                values.push(value);
            }
            log.epochs.push(values.remove(epoch_column));
            for ((_, column), value) in log.columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        if log.epochs.is_empty() {
            bail!("{}: a header but no epochs", path.display());
        }
        Ok(log)
    }

    fn column(&self, name: &str) -> Option<&[f64]> {
        self.columns
            .iter()
            .find(|(n, values)| n == name && values.iter().any(|v| v.is_finite()))
            .map(|(_, values)| values.as_slice())
    }
}

/// `kerno plot LOG --output OUT`: loss and accuracy per epoch, side by side.
pub fn history(log: &Path, output: &Path, quiet: bool) -> Result<()> {
    check_output(output, "--output")?;
    let log = TrainingLog::read(log)?;
    anyhow::ensure!(
        log.column("loss").is_some() || log.column("accuracy").is_some(),
        "the log has neither a 'loss' nor an 'accuracy' column to draw"
    );
    write_picture(&log, output)?;
    crate::output::Output::new(false, quiet).note(format_args!("drew {}", output.display()));
    Ok(())
}

impl Picture for TrainingLog {
    fn size(&self) -> (u32, u32) {
        (1200, 480)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        area.fill(&WHITE).map_err(drawing)?;
        let panels = area.split_evenly((1, 2));
        for (panel, (metric, title)) in panels.iter().zip([
            ("loss", "Training and validation loss"),
            ("accuracy", "Training and validation accuracy"),
        ]) {
            let training = self.column(metric);
            let validation = self.column(&format!("val_{metric}"));
            if training.is_none() && validation.is_none() {
                continue;
            }
            // Epochs from 1, as the book plots them.
            let points = |values: &[f64]| -> Vec<(f64, f64)> {
                self.epochs
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_finite())
                    .map(|(&e, &v)| (e + 1.0, v))
                    .collect()
            };
            let all: Vec<(f64, f64)> = [training, validation]
                .into_iter()
                .flatten()
                .flat_map(points)
                .collect();
            let (x_lo, x_hi) = bounds(all.iter().map(|p| p.0));
            let (y_lo, y_hi) = bounds(all.iter().map(|p| p.1));
            let mut chart = ChartBuilder::on(panel)
                .caption(title, (FAMILY, 22))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(72)
                .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
                .map_err(drawing)?;
            chart
                .configure_mesh()
                .x_desc("Epochs")
                .y_desc(if metric == "loss" { "Loss" } else { "Accuracy" })
                .axis_desc_style((FAMILY, 17))
                .label_style((FAMILY, 14))
                .x_labels(self.epochs.len() + 2)
                // Epochs are whole: ticks between them stay unlabelled.
                .x_label_formatter(&|x| {
                    if (x - x.round()).abs() < 1e-9 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| format!("{y:.3}"))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(drawing)?;
            if let Some(values) = training {
                chart
                    .draw_series(
                        points(values)
                            .into_iter()
                            .map(|p| Circle::new(p, 5, TRAINING.filled())),
                    )
                    .map_err(drawing)?
                    .label(format!("Training {metric}"))
                    .legend(|(x, y)| Circle::new((x + 10, y), 5, TRAINING.filled()));
            }
            if let Some(values) = validation {
                chart
                    .draw_series(LineSeries::new(points(values), VALIDATION.stroke_width(2)))
                    .map_err(drawing)?
                    .label(format!("Validation {metric}"))
                    .legend(|(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], VALIDATION.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FAMILY, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(if metric == "loss" {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .draw()
                .map_err(drawing)?;
        }
        Ok(())
    }
}

/// The range of `values` with a margin of 5 % on each side (and some width when
/// they are all equal), so that no point sits on the frame.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// `kerno evaluate --confusion OUT`.
pub fn confusion(matrix: &Confusion, output: &Path) -> Result<()> {
    write_picture(matrix, output)
}

/// Sizes of the confusion matrix picture, in pixels.
const CELL: i32 = 54;
const TOP: i32 = 80;
const BOTTOM: i32 = 90;
const RIGHT: i32 = 40;

impl Confusion {
    /// A row's label: the class name, with its number when the name is a word.
    fn row_label(&self, class: usize) -> String {
        let name = &self.names[class];
        if *name == class.to_string() {
            name.clone()
        } else {
            format!("{name} ({class})")
        }
    }

    /// Room left of the grid for the axis title and the longest row label
    /// (DejaVu Sans at 15 px is under 10 px a character).
    fn left_margin(&self) -> i32 {
        let longest = (0..self.names.len())
            .map(|c| self.row_label(c).chars().count())
            .max()
            .unwrap_or(0);
        60 + 10 * longest as i32
    }
}

impl Picture for Confusion {
    fn size(&self) -> (u32, u32) {
        let n = self.counts.len() as i32;
        let width = self.left_margin() + n * CELL + RIGHT;
        (width as u32, (TOP + n * CELL + BOTTOM) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        area.fill(&WHITE).map_err(drawing)?;
        let n = self.counts.len() as i32;
        let (width, _) = self.size();
        let left = self.left_margin();
        let centred = |size: u32| {
            TextStyle::from((FAMILY, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
        };
        let title = format!(
            "Confusion matrix: {} test images, accuracy {:.4}",
            self.total(),
            self.accuracy()
        );
        area.draw_text(&title, &centred(20), (width as i32 / 2, TOP / 2 - 8))
            .map_err(drawing)?;
        for (t, row) in self.counts.iter().enumerate() {
            let row_total: usize = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                // Shaded by the share of the true class's images, on a root
                // scale so that a confusion of 2 % still shows.
                let share = (count as f64 / row_total.max(1) as f64).powf(0.4);
                let fill = RGBColor(
                    (255.0 - 247.0 * share) as u8,
                    (255.0 - 207.0 * share) as u8,
                    (255.0 - 148.0 * share) as u8,
                );
                let (x, y) = (left + p as i32 * CELL, TOP + t as i32 * CELL);
                area.draw(&Rectangle::new(
                    [(x, y), (x + CELL, y + CELL)],
                    fill.filled(),
                ))
                .map_err(drawing)?;
                area.draw(&Rectangle::new(
                    [(x, y), (x + CELL, y + CELL)],
                    BLACK.mix(0.15),
                ))
                .map_err(drawing)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                area.draw_text(
                    &count.to_string(),
                    &centred(14).color(&ink),
                    (x + CELL / 2, y + CELL / 2),
                )
                .map_err(drawing)?;
            }
        }
        let right_aligned =
            TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for c in 0..self.names.len() {
            let middle = c as i32 * CELL + CELL / 2;
            area.draw_text(
                &self.row_label(c),
                &right_aligned,
                (left - 10, TOP + middle),
            )
            .map_err(drawing)?;
            area.draw_text(
                &c.to_string(),
                &centred(15),
                (left + middle, TOP + n * CELL + 16),
            )
            .map_err(drawing)?;
        }
        let bottom = TOP + n * CELL;
        area.draw_text(
            "Predicted label",
            &centred(17),
            (left + n * CELL / 2, bottom + 52),
        )
        .map_err(drawing)?;
        area.draw_text(
            "True label",
            &centred(17).transform(FontTransform::Rotate270),
            (22, TOP + n * CELL / 2),
        )
        .map_err(drawing)?;
        Ok(())
    }
}
