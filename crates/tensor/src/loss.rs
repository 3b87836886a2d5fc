//! Losses and the accuracy count, each with its gradient in the same pass.

use crate::elementwise::exp_in_place;
use crate::simd::Isa;
use crate::tensor::argmax;

/// What a loss compares the model's output with.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One row per sample, as wide as the output (one-hot for classification).
    Dense(&'a [f32]),
    /// One class index per sample (sparse labels).
    Classes(&'a [u32]),
}

impl Targets<'_> {
    fn class(&self, row: usize, width: usize) -> usize {
        match self {
            Targets::Dense(t) => argmax(&t[row * width..(row + 1) * width]),
            Targets::Classes(c) => c[row] as usize,
        }
    }

    /// `target[row, j]`.
    fn value(&self, row: usize, j: usize, width: usize) -> f32 {
        match self {
            Targets::Dense(t) => t[row * width + j],
            Targets::Classes(c) => (c[row] as usize == j) as u8 as f32,
        }
    }
}

/// Whether the output row `row` is right, as Keras' `accuracy` chooses its
/// metric: for one output, binary accuracy (the target equals whether the
/// output is above 0.5); for more, the output's arg-max is the target class.
fn is_right(output: &[f32], targets: Targets<'_>, row: usize) -> bool {
    match output {
        [probability] => {
            let predicted = (*probability > 0.5) as u8 as f32;
            match targets {
                Targets::Dense(t) => t[row] == predicted,
                Targets::Classes(c) => c[row] as f32 == predicted,
            }
        }
        _ => argmax(output) == targets.class(row, output.len()),
    }
}

/// Sums over a batch: the loss of every sample and how many were classified right.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossStats {
    pub loss_sum: f64,
    pub correct: usize,
}

/// Where [`softmax_xent_fwd_bwd`] writes the gradient with respect to the logits.
#[derive(Debug)]
pub struct LogitsGradient<'a> {
    /// `(softmax(z) - y) * scale`, as the logits.
    pub values: &'a mut [f32],
    /// The factor of the gradient: `1 / batch` for the mean loss.
    pub scale: f32,
    /// When given, the column sums of `values` (rows added in order, bit for bit
    /// as [`column_sums`](crate::activation::column_sums)): the bias gradient of
    /// the layer that made the logits, without a pass of its own.
    pub column_sums: Option<&'a mut [f32]>,
}

/// Softmax + categorical cross-entropy from the logits, in one pass per row:
/// the loss, whether the arg-max is right, and (when `grad` is given) the logits'
/// gradient, and its column sums when asked. As Keras on TensorFlow, no clipping.
///
/// # Panics
/// When the column sums are not `classes` long.
pub fn softmax_xent_fwd_bwd(
    logits: &[f32],
    targets: Targets<'_>,
    classes: usize,
    grad: Option<LogitsGradient<'_>>,
) -> LossStats {
    let mut grad = grad.map(|g| (g.values, g.scale, g.column_sums));
    if let Some((_, _, Some(sums))) = grad.as_mut() {
        assert_eq!(sums.len(), classes, "one column sum per class");
        sums.fill(0.0);
    }
    let mut stats = LossStats::default();
    // Each row shifted by its largest logit, then every exponential of the batch
    // in one vectorised pass: into the gradient when there is one.
    if let Some((g, _, _)) = grad.as_mut() {
        let g = &mut g[..logits.len()];
        for (z, g) in logits
            .chunks_exact(classes)
            .zip(g.chunks_exact_mut(classes))
        {
            let max = row_max(z);
            g.iter_mut().zip(z).for_each(|(g, &v)| *g = v - max);
        }
        exp_in_place(Isa::detected(), g);
    }
    for (row, z) in logits.chunks_exact(classes).enumerate() {
        let max = row_max(z);
        let sum: f32 = match grad.as_mut() {
            Some((g, _, _)) => add_in_order(0.0, &g[row * classes..(row + 1) * classes]),
            None => sum_of_exps(z, max),
        };
        let log_sum = sum.ln();
        let loss = match targets {
            Targets::Classes(c) => log_sum - (z[c[row] as usize] - max),
            Targets::Dense(_) => (0..classes)
                .map(|j| targets.value(row, j, classes) * (log_sum - (z[j] - max)))
                .sum(),
        };
        stats.loss_sum += loss as f64;
        // A softmax over one output is 1 whatever its logit.
        let output = if classes == 1 { &[1.0][..] } else { z };
        stats.correct += is_right(output, targets, row) as usize;
        if let Some((g, scale, sums)) = grad.as_mut() {
            let g = &mut g[row * classes..(row + 1) * classes];
            // A loop per kind of target, which the compiler vectorises (the target
            // looked up per element kept every division scalar).
            let gradient = |e: f32, y: f32| flush_subnormal((e / sum - y) * *scale);
            match targets {
                Targets::Classes(c) => {
                    let class = c[row] as usize;
                    for (j, g) in g.iter_mut().enumerate() {
                        *g = gradient(*g, (j == class) as u8 as f32);
                    }
                }
                Targets::Dense(y) => {
                    let y = &y[row * classes..(row + 1) * classes];
                    g.iter_mut().zip(y).for_each(|(g, &y)| *g = gradient(*g, y));
                }
            }
            if let Some(sums) = sums {
                sums.iter_mut().zip(&*g).for_each(|(s, &v)| *s += v);
            }
        }
    }
    stats
}

/// `x`, or 0 when it is subnormal. The logits' gradient of a confident
/// prediction is full of subnormals, and every product of the backward pass reads
/// it: on CPUs that take a slow path for subnormal operands (most of Intel's),
/// they would cost the GEMMs many times their time. Zeroing them here, where they
/// arise, does what TensorFlow's flush-to-zero mode does for them without
/// changing the floating-point environment, which Rust code must leave as it is.
#[inline(always)]
pub(crate) fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// The largest of a row of logits (NaNs ignored, as `f32::max` does).
pub(crate) fn row_max(z: &[f32]) -> f32 {
    z.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ exp(z - max)` over a row, added in order: the sum the gradient's pass
/// makes, bit for bit, without a buffer for the whole batch.
fn sum_of_exps(z: &[f32], max: f32) -> f32 {
    let mut chunk = [0.0f32; 64];
    z.chunks(chunk.len()).fold(0.0, |sum, part| {
        let chunk = &mut chunk[..part.len()];
        chunk.iter_mut().zip(part).for_each(|(c, &v)| *c = v - max);
        exp_in_place(Isa::detected(), chunk);
        add_in_order(sum, chunk)
    })
}

/// `start` plus `values`, added one after another (the sums' order fixes their bits).
pub(crate) fn add_in_order(start: f32, values: &[f32]) -> f32 {
    values.iter().fold(start, |sum, &v| sum + v)
}

/// Keras' `categorical_crossentropy` on probabilities: each row is normalised to
/// sum to 1, clipped to `[1e-7, 1 - 1e-7]`, and `-Σ y·log(p)` summed. The gradient
/// with respect to the un-normalised output, times `scale`, goes to `grad`.
pub fn categorical_xent_probs(
    outputs: &[f32],
    targets: Targets<'_>,
    classes: usize,
    mut grad: Option<(&mut [f32], f32)>,
) -> f64 {
    const EPS: f32 = 1e-7;
    let mut loss_sum = 0.0;
    for (row, o) in outputs.chunks_exact(classes).enumerate() {
        let total: f32 = o.iter().sum();
        let mut loss = 0.0f32;
        // d loss / d p_j, and Σ_j of it times p_j, for the chain rule through the normalisation.
        let mut weighted = 0.0f32;
        for (j, &v) in o.iter().enumerate() {
            let p = v / total;
            let y = targets.value(row, j, classes);
            loss -= y * p.clamp(EPS, 1.0 - EPS).ln();
            if p > EPS && p < 1.0 - EPS {
                weighted -= y; // (-y / p) * p
            }
        }
        loss_sum += loss as f64;
        if let Some((g, scale)) = grad.as_mut() {
            let g = &mut g[row * classes..(row + 1) * classes];
            for (j, (g, &v)) in g.iter_mut().zip(o).enumerate() {
                let p = v / total;
                let dp = if p > EPS && p < 1.0 - EPS {
                    -targets.value(row, j, classes) / p
                } else {
                    0.0
                };
                *g = (dp - weighted) / total * *scale;
            }
        }
    }
    loss_sum
}

/// Mean squared error over each row (Keras' `mean_squared_error`), summed over
/// rows; the gradient times `scale` goes to `grad`.
pub fn mean_squared_error(
    outputs: &[f32],
    targets: &[f32],
    cols: usize,
    mut grad: Option<(&mut [f32], f32)>,
) -> f64 {
    let mut loss_sum = 0.0;
    for (row, (o, t)) in outputs
        .chunks_exact(cols)
        .zip(targets.chunks_exact(cols))
        .enumerate()
    {
        let sq: f32 = o.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum();
        loss_sum += (sq / cols as f32) as f64;
        if let Some((g, scale)) = grad.as_mut() {
            let g = &mut g[row * cols..(row + 1) * cols];
            for ((g, a), b) in g.iter_mut().zip(o).zip(t) {
                *g = 2.0 * (a - b) / cols as f32 * *scale;
            }
        }
    }
    loss_sum
}

/// How many rows of `outputs` are right, as Keras' `accuracy` counts them: the
/// arg-max at the target class, or for a single output, binary accuracy with
/// the threshold 0.5.
pub fn count_correct(outputs: &[f32], targets: Targets<'_>, classes: usize) -> usize {
    outputs
        .chunks_exact(classes)
        .enumerate()
        .filter(|&(row, o)| is_right(o, targets, row))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confident prediction: `e^-86 / 128` is about 3e-40, a subnormal, which
    /// the gradient holds as 0; normal values, NaN and infinity pass unchanged.
    #[test]
    fn the_logits_gradient_holds_no_subnormal() {
        let (logits, classes) = ([0.0, -86.0, 3.0, 2.5], [0u32, 1]);
        let mut g = [0.0f32; 4];
        let grad = LogitsGradient {
            values: &mut g,
            scale: 1.0 / 128.0,
            column_sums: None,
        };
        softmax_xent_fwd_bwd(&logits, Targets::Classes(&classes), 2, Some(grad));
        let unflushed = (-86.0f32).exp() / (1.0 + (-86.0f32).exp()) / 128.0;
        assert!(unflushed.is_subnormal(), "{unflushed}");
        assert_eq!(g[1], 0.0);
        assert!(g.iter().all(|v| !v.is_subnormal()), "{g:?}");
        assert!(g[2] > 0.0 && g[3] < 0.0, "{g:?}");

        let tiny = f32::MIN_POSITIVE;
        assert_eq!(flush_subnormal(tiny / 2.0), 0.0);
        assert_eq!(flush_subnormal(-tiny / 3.0), 0.0);
        for kept in [tiny, -tiny, 1.0, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(flush_subnormal(kept), kept);
        }
        assert!(flush_subnormal(f32::NAN).is_nan());
    }
}
