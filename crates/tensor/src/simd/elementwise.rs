//! Element-wise loops compiled once per instruction set: the same scalar code,
//! vectorised by the compiler with each set's registers. Each element's result is
//! the same whatever the set (IEEE sqrt and division are exact, and nothing is
//! contracted into an FMA), so the choice never changes a trained model.

use super::Isa;

/// The arguments of one RMSprop update (see `optim::rmsprop_step`).
#[derive(Clone, Copy)]
pub(crate) struct RmsProp {
    pub lr: f32,
    pub rho: f32,
    pub epsilon: f32,
}

#[inline(always)]
fn rmsprop_body(w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) {
    for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
        *v = p.rho * *v + (1.0 - p.rho) * (g * g);
        *w -= (p.lr * g) / (*v + p.epsilon).sqrt();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rmsprop_avx512(w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) {
    rmsprop_body(w, g, v, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rmsprop_avx2(w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) {
    rmsprop_body(w, g, v, p)
}

/// One RMSprop update of `w` with the loop built for `isa`.
///
/// # Panics
/// When `isa` is not supported by this CPU.
pub(crate) fn rmsprop(isa: Isa, w: &mut [f32], g: &[f32], v: &mut [f32], p: RmsProp) {
    assert!(isa.is_supported(), "{} is not supported here", isa.name());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F, checked just above.
        Isa::Avx512 => unsafe { rmsprop_avx512(w, g, v, p) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        Isa::Avx2Fma => unsafe { rmsprop_avx2(w, g, v, p) },
        _ => rmsprop_body(w, g, v, p),
    }
}
