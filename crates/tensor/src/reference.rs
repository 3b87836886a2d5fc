//! Plain implementations in f64 of every kernel, written for clarity, not speed.
//! The tests hold the fast kernels to these.

use crate::activation::Activation;
use crate::conv::Windows;
use crate::matrix::MatRef;

/// `A·B` as a row-major `m×n` matrix, accumulated in f64.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
    assert_eq!(a.cols(), b.rows());
    let mut c = vec![0.0; a.rows() * b.cols()];
    for i in 0..a.rows() {
        for j in 0..b.cols() {
            c[i * b.cols() + j] = (0..a.cols())
                .map(|p| a.get(i, p) as f64 * b.get(p, j) as f64)
                .sum();
        }
    }
    c
}

/// `A·B` for row-major f64 matrices (`a: m×k`, `b: k×n`).
pub fn matmul_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + p] * b[p * n + j];
            }
        }
    }
    c
}

/// The activation applied to a row-major matrix of `cols` columns.
pub fn activation(act: Activation, x: &mut [f64], cols: usize) {
    match act {
        Activation::Linear => {}
        Activation::Relu => x
            .iter_mut()
            .for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }),
        Activation::Sigmoid => x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
        Activation::Softmax => {
            for row in x.chunks_mut(cols) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
            }
        }
    }
}

/// Summed softmax cross-entropy of `logits` against dense `targets`, and the
/// unscaled gradient `softmax(z) - y`.
pub fn softmax_xent(logits: &[f64], targets: &[f64], classes: usize) -> (f64, Vec<f64>) {
    let mut probs = logits.to_vec();
    activation(Activation::Softmax, &mut probs, classes);
    let loss = probs
        .iter()
        .zip(targets)
        .map(|(p, y)| -y * p.ln())
        .sum::<f64>();
    let grad = probs.iter().zip(targets).map(|(p, y)| p - y).collect();
    (loss, grad)
}

/// Summed Keras categorical cross-entropy on probabilities (normalise, clip, log).
pub fn categorical_xent_probs(outputs: &[f64], targets: &[f64], classes: usize) -> f64 {
    const EPS: f64 = 1e-7;
    let mut loss = 0.0;
    for (o, y) in outputs.chunks(classes).zip(targets.chunks(classes)) {
        let total: f64 = o.iter().sum();
        for (v, y) in o.iter().zip(y) {
            loss -= y * (v / total).clamp(EPS, 1.0 - EPS).ln();
        }
    }
    loss
}

/// Summed per-row mean squared error.
pub fn mean_squared_error(outputs: &[f64], targets: &[f64], cols: usize) -> f64 {
    outputs
        .chunks(cols)
        .zip(targets.chunks(cols))
        .map(|(o, t)| o.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / cols as f64)
        .sum()
}

/// One RMSprop step in f64.
pub fn rmsprop_step(w: &mut [f64], g: &[f64], v: &mut [f64], lr: f64, rho: f64, eps: f64) {
    for i in 0..w.len() {
        v[i] = rho * v[i] + (1.0 - rho) * g[i] * g[i];
        w[i] -= lr * g[i] / (v[i] + eps).sqrt();
    }
}

/// One Adam step in f64 (`step` is 1-based).
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    w: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    beta_1: f64,
    beta_2: f64,
    eps: f64,
    step: i32,
) {
    let alpha = lr * (1.0 - beta_2.powi(step)).sqrt() / (1.0 - beta_1.powi(step));
    for i in 0..w.len() {
        m[i] = beta_1 * m[i] + (1.0 - beta_1) * g[i];
        v[i] = beta_2 * v[i] + (1.0 - beta_2) * g[i] * g[i];
        w[i] -= alpha * m[i] / (v[i].sqrt() + eps);
    }
}

/// One SGD step in f64, with optional (Nesterov) momentum.
pub fn sgd_step(w: &mut [f64], g: &[f64], m: &mut [f64], lr: f64, momentum: f64, nesterov: bool) {
    for i in 0..w.len() {
        if momentum == 0.0 {
            w[i] -= lr * g[i];
            continue;
        }
        m[i] = momentum * m[i] - lr * g[i];
        w[i] += if nesterov {
            momentum * m[i] - lr * g[i]
        } else {
            m[i]
        };
    }
}

/// A direct 2-D convolution of NHWC `images` (no bias, no activation): `out[n,
/// oy, ox, f] = Σ_{ky,kx,c} x[n, y, x, c]·kernel[ky, kx, c, f]` over the window's
/// pixels inside the image.
pub fn conv2d(w: &Windows, images: usize, x: &[f64], kernel: &[f64], filters: usize) -> Vec<f64> {
    let mut out = vec![0.0; images * w.positions() * filters];
    for_each_tap(w, images, |n, o, k, i| {
        for f in 0..filters {
            out[(n * w.positions() + o) * filters + f] += x[i] * kernel[k * filters + f];
        }
    });
    out
}

/// The kernel's gradient of [`conv2d`], `dz` being its output's.
pub fn conv2d_kernel_gradient(
    w: &Windows,
    images: usize,
    x: &[f64],
    dz: &[f64],
    filters: usize,
) -> Vec<f64> {
    let mut dk = vec![0.0; w.patch_len() * filters];
    for_each_tap(w, images, |n, o, k, i| {
        for f in 0..filters {
            dk[k * filters + f] += x[i] * dz[(n * w.positions() + o) * filters + f];
        }
    });
    dk
}

/// The input's gradient of [`conv2d`], `dz` being its output's.
pub fn conv2d_input_gradient(
    w: &Windows,
    images: usize,
    kernel: &[f64],
    dz: &[f64],
    filters: usize,
) -> Vec<f64> {
    let mut dx = vec![0.0; images * w.input_len()];
    for_each_tap(w, images, |n, o, k, i| {
        for f in 0..filters {
            dx[i] += kernel[k * filters + f] * dz[(n * w.positions() + o) * filters + f];
        }
    });
    dx
}

/// Calls `tap(image, output position, patch index, input index)` for every
/// input value under every window, padding left out.
fn for_each_tap(w: &Windows, images: usize, mut tap: impl FnMut(usize, usize, usize, usize)) {
    for n in 0..images {
        for oy in 0..w.out_height {
            for ox in 0..w.out_width {
                for ky in 0..w.window[0] {
                    for kx in 0..w.window[1] {
                        let Some((y, x)) = w.source(oy, ox, ky, kx) else {
                            continue;
                        };
                        for c in 0..w.channels {
                            let k = (ky * w.window[1] + kx) * w.channels + c;
                            let i = n * w.input_len() + (y * w.width + x) * w.channels + c;
                            tap(n, oy * w.out_width + ox, k, i);
                        }
                    }
                }
            }
        }
    }
}

/// 2-D max pooling of NHWC `images`, and the input's gradient for the output
/// gradient `d_out`: each window's to its first maximum.
pub fn max_pool2d(w: &Windows, images: usize, x: &[f64], d_out: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let c = w.channels;
    let mut out = vec![f64::NEG_INFINITY; images * w.positions() * c];
    let mut first_max = vec![0; out.len()];
    for_each_tap(w, images, |n, o, _, i| {
        let at = (n * w.positions() + o) * c + i % c;
        if x[i] > out[at] {
            (out[at], first_max[at]) = (x[i], i);
        }
    });
    let mut dx = vec![0.0; x.len()];
    for (at, &i) in first_max.iter().enumerate() {
        dx[i] += d_out[at];
    }
    (out, dx)
}

/// `x` rounded to the nearest bfloat16 (8 significant bits, f32's exponent
/// range, steps of 2⁻¹³³ below 2⁻¹²⁶), ties to even, by arithmetic in f64;
/// NaN for a NaN.
pub fn round_to_bf16(x: f32) -> f32 {
    if x.is_nan() || x.is_infinite() || x == 0.0 {
        return x;
    }
    let v = x as f64;
    // Every f32 is a normal f64, whose exponent field is exact.
    let exponent = (((v.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(-126);
    let step = 2f64.powi(exponent - 7);
    let rounded = (v / step).round_ties_even() * step;
    if rounded.abs() >= 2f64.powi(128) {
        return f32::INFINITY.copysign(x);
    }
    rounded as f32
}
