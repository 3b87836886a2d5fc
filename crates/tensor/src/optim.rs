//! Optimizer updates, one pass over each parameter tensor, as Keras 3 writes them.

use crate::elementwise;
use crate::parallel::for_each_chunk;
use crate::simd::Isa;
use std::sync::atomic::{AtomicBool, Ordering};

/// Parameters per parallel task of an update. Every element is updated on its own,
/// so the split never changes a result.
const CHUNK: usize = 16 * 1024;

/// RMSprop's hyper-parameters (Keras 3's names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    pub lr: f32,
    pub rho: f32,
    pub epsilon: f32,
}

/// RMSprop: `v ← ρv + (1−ρ)g²; w ← w − lr·g/√(v+ε)` (Keras 3, ε inside the root),
/// vectorised for this machine and spread over the threads. Returns whether every
/// weight it wrote is finite.
pub fn rmsprop_step(
    w: &mut [f32],
    g: &[f32],
    v: &mut [f32],
    lr: f32,
    rho: f32,
    epsilon: f32,
) -> bool {
    let p = RmsProp { lr, rho, epsilon };
    rmsprop_step_with(Isa::detected(), w, g, v, None, None, p)
}

/// [`rmsprop_step`] with a chosen instruction set (tests force each one), and,
/// if given, whether each row of `g` is known to be all zeros (the first layer's
/// gradient, for the pixels that are 0 in every image of a batch; the tensors
/// split into as many rows as there are flags): there the update is `v ← ρv`
/// alone, the full update's bits (`ρv + 0`, and `w − 0/√(v+ε)` is `w`), without
/// its square root and division, which bound its speed. If `bf16_copy` is
/// given (`mixed_bfloat16`'s copy of the weights, which the layers compute
/// with), each weight it updates is also written there rounded to bf16, while
/// in cache; the rows of zeros, unchanged, are not.
///
/// Returns whether every weight it wrote, and every value of the copy, is finite. (A NaN velocity makes its
/// weight NaN; an infinite one leaves it unchanged, as a decayed one does.)
///
/// # Panics
/// When `isa` is not supported by this CPU, the slices differ in length, or they
/// do not split into `zero_rows.len()` rows.
pub fn rmsprop_step_with(
    isa: Isa,
    w: &mut [f32],
    g: &[f32],
    v: &mut [f32],
    zero_rows: Option<&[bool]>,
    bf16_copy: Option<&mut [f32]>,
    p: RmsProp,
) -> bool {
    assert!(
        w.len() == g.len() && w.len() == v.len(),
        "rmsprop: {} weights, {} gradients, {} velocities",
        w.len(),
        g.len(),
        v.len()
    );
    if let Some(copy) = &bf16_copy {
        assert_eq!(copy.len(), w.len(), "rmsprop: the bf16 copy's length");
    }
    let finite = AtomicBool::new(true);
    let update = |w: &mut [f32], g: &[f32], v: &mut [f32], copy: Option<&mut [f32]>| {
        if !elementwise::rmsprop(isa, w, g, v, p) {
            finite.store(false, Ordering::Relaxed);
        }
        if let Some(copy) = copy {
            if !elementwise::round_to_bf16_into(isa, w, copy) {
                finite.store(false, Ordering::Relaxed);
            }
        }
    };
    let Some(zero_rows) = zero_rows else {
        let data = (w, (g, (v, bf16_copy)));
        if data.0.len() <= CHUNK {
            let (w, (g, (v, copy))) = data;
            update(w, g, v, copy);
        } else {
            for_each_chunk(data, CHUNK, &|_, (w, (g, (v, copy)))| update(w, g, v, copy));
        }
        return finite.into_inner();
    };
    let width = w.len() / zero_rows.len().max(1);
    assert!(
        width * zero_rows.len() == w.len() && width > 0,
        "rmsprop: {} values are not {} rows",
        w.len(),
        zero_rows.len()
    );
    let rows_per_task = (CHUNK / width).max(1);
    type Task<'a> = (
        &'a mut [f32],
        (&'a [f32], (&'a mut [f32], Option<&'a mut [f32]>)),
    );
    let task = |t: usize, (w, (g, (v, mut copy))): Task<'_>| {
        let first = t * rows_per_task;
        let rows = w.len() / width;
        let mut r = 0;
        // Runs of rows alike, each one loop.
        while r < rows {
            let zero = zero_rows[first + r];
            let end = (r + 1..rows)
                .find(|&s| zero_rows[first + s] != zero)
                .unwrap_or(rows);
            let run = r * width..end * width;
            match zero {
                true => elementwise::scale(isa, &mut v[run], p.rho),
                false => {
                    let copy = copy.as_deref_mut().map(|c| &mut c[run.clone()]);
                    update(&mut w[run.clone()], &g[run.clone()], &mut v[run], copy)
                }
            }
            r = end;
        }
    };
    for_each_chunk((w, (g, (v, bf16_copy))), rows_per_task * width, &task);
    finite.into_inner()
}

/// SGD. Without momentum `w ← w − lr·g`; with it `m ← μm − lr·g`, then
/// `w ← w + m` or, Nesterov, `w ← w + μm − lr·g`. Returns whether every value
/// it wrote is finite.
pub fn sgd_step(
    w: &mut [f32],
    g: &[f32],
    momentum_buf: Option<&mut [f32]>,
    lr: f32,
    momentum: f32,
    nesterov: bool,
) -> bool {
    let mut finite = true;
    match momentum_buf {
        None => w.iter_mut().zip(g).for_each(|(w, &g)| {
            *w -= lr * g;
            finite &= w.is_finite();
        }),
        Some(m) => {
            for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                *m = -g * lr + *m * momentum;
                *w += if nesterov {
                    -g * lr + *m * momentum
                } else {
                    *m
                };
                finite &= w.is_finite() && m.is_finite();
            }
        }
    }
    finite
}

/// The step size of Adam's update number `step` (1-based):
/// `lr·√(1−β₂ᵗ)/(1−β₁ᵗ)`.
pub fn adam_step_size(lr: f32, beta_1: f32, beta_2: f32, step: u64) -> f32 {
    // βᵗ is 0 in f32 long before t leaves i32's range.
    let t = step.min(i32::MAX as u64) as i32;
    lr * (1.0 - beta_2.powi(t)).sqrt() / (1.0 - beta_1.powi(t))
}

/// Adam: `m ← m + (g−m)(1−β₁); v ← v + (g²−v)(1−β₂); w ← w − α·m/(√v+ε)`
/// with `alpha` from [`adam_step_size`]. Returns whether every value it wrote is finite.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    alpha: f32,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
) -> bool {
    let mut finite = true;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += (g - *m) * (1.0 - beta_1);
        *v += (g * g - *v) * (1.0 - beta_2);
        *w -= alpha * *m / (v.sqrt() + epsilon);
        finite &= w.is_finite() && m.is_finite() && v.is_finite();
    }
    finite
}
