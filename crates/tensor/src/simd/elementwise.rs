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

#[inline(always)]
fn add_rows_body(sums: &mut [f32], rows: &[&[f32]]) {
    // 64 columns at a time kept in registers down all the rows (four vectors, four
    // independent chains of adds): a loop over the rows that added each into
    // memory waited on the store before each add.
    const LANES: usize = 64;
    let whole = sums.len() - sums.len() % LANES;
    for (at, chunk) in sums[..whole].chunks_exact_mut(LANES).enumerate() {
        let mut acc: [f32; LANES] = chunk.try_into().expect("a whole chunk");
        for row in rows {
            let values = &row[at * LANES..(at + 1) * LANES];
            acc.iter_mut().zip(values).for_each(|(s, &v)| *s += v);
        }
        chunk.copy_from_slice(&acc);
    }
    for row in rows {
        let values = &row[whole..sums.len()];
        sums[whole..]
            .iter_mut()
            .zip(values)
            .for_each(|(s, &v)| *s += v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn add_rows_avx512(sums: &mut [f32], rows: &[&[f32]]) {
    add_rows_body(sums, rows)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn add_rows_avx2(sums: &mut [f32], rows: &[&[f32]]) {
    add_rows_body(sums, rows)
}

/// `sums[j] += row[j]` for each of `rows` in order (column sums: the same bits on
/// every instruction set), with the loop built for `isa`.
///
/// # Panics
/// When `isa` is not supported by this CPU, or a row is shorter than `sums`.
pub(crate) fn add_rows(isa: Isa, sums: &mut [f32], rows: &[&[f32]]) {
    assert!(isa.is_supported(), "{} is not supported here", isa.name());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F, checked just above.
        Isa::Avx512 => unsafe { add_rows_avx512(sums, rows) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        Isa::Avx2Fma => unsafe { add_rows_avx2(sums, rows) },
        _ => add_rows_body(sums, rows),
    }
}

#[inline(always)]
fn scale_bytes_body(src: &[u8], dst: &mut [f32], divisor: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as f32 / divisor;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn scale_bytes_avx512(src: &[u8], dst: &mut [f32], divisor: f32) {
    scale_bytes_body(src, dst, divisor)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scale_bytes_avx2(src: &[u8], dst: &mut [f32], divisor: f32) {
    scale_bytes_body(src, dst, divisor)
}

/// `dst[i] = src[i] as f32 / divisor`, with the loop built for `isa`. Division is
/// correctly rounded in every lane, so this is numpy's `x.astype("float32") / d`.
///
/// # Panics
/// When `isa` is not supported by this CPU.
pub(crate) fn scale_bytes(isa: Isa, src: &[u8], dst: &mut [f32], divisor: f32) {
    assert!(isa.is_supported(), "{} is not supported here", isa.name());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX-512F, checked just above.
        Isa::Avx512 => unsafe { scale_bytes_avx512(src, dst, divisor) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        Isa::Avx2Fma => unsafe { scale_bytes_avx2(src, dst, divisor) },
        _ => scale_bytes_body(src, dst, divisor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_bytes_are_exact_divisions_on_every_instruction_set() {
        for len in [1, 15, 16, 17, 784, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 97 % 256) as u8).collect();
            for divisor in [255.0, 3.0, 0.1] {
                let exact: Vec<u32> = src
                    .iter()
                    .map(|&b| (b as f32 / divisor).to_bits())
                    .collect();
                for isa in Isa::available() {
                    let mut dst = vec![f32::NAN; len];
                    scale_bytes(isa, &src, &mut dst, divisor);
                    let got: Vec<u32> = dst.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, exact, "{isa:?}, {len} bytes / {divisor}");
                }
            }
        }
    }
}
