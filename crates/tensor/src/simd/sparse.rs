//! The product of a sparse row (B's row indices and values) with B, each output
//! a chain of FMAs over the entries in their order, as the dense kernels chain
//! over every step of k, so that a row of zeros skipped gives the dense kernel's
//! bits.

#[cfg(target_arch = "x86_64")]
use super::tiles::Vector;
use super::Isa;
use crate::activation::relu;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

/// Vectors summed per pass over the entries: eight FMA chains in flight hide the
/// FMA latency, and B's rows are read once per eight vectors of output.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 8;

/// What becomes of a row's sums before they are stored.
#[derive(Clone, Copy)]
pub(crate) struct RowFinish<'a> {
    /// Added to the values already in the output (a later block of depth).
    pub accumulate: bool,
    /// Added after the sums (one per output).
    pub bias: Option<&'a [f32]>,
    /// `max(0, x)` after the bias.
    pub relu: bool,
}

/// `out[j] = Σ_e value[e] · b[index[e]·ldb + j]` for each `j` of `out`, the sum a
/// chain of FMAs from zero in the order of the entries, then finished as `finish`
/// says (the dense tiles' order of operations).
///
/// # Panics
/// When the entries differ in number, or an entry's row of B (its `out.len()`
/// floats from `index·ldb`) is not inside `b`, or the bias is shorter than `out`.
pub(crate) fn sparse_row_product(
    isa: Isa,
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    assert_eq!(index.len(), value.len(), "one value per index");
    if let Some(bias) = finish.bias {
        assert!(bias.len() >= out.len(), "a bias for every output");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(isa.is_supported(), "AVX-512F is not supported on this CPU");
            // SAFETY: the CPU has AVX-512F and FMA (asserted).
            unsafe { sparse_row_product_avx512(index, value, b, ldb, out, finish) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(
                isa.is_supported(),
                "AVX2 and FMA are not supported on this CPU"
            );
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { sparse_row_product_avx2(index, value, b, ldb, out, finish) }
        }
        _ => sparse_row_product_portable(index, value, b, ldb, out, finish),
    }
}

/// Panics unless every entry's row of B (`width` floats from `index·ldb`) lies
/// inside B's `len` floats. Inlined into each instruction set's kernel, whose
/// vectors then find the greatest index (an MNIST row's 150 in a few dozen cycles).
#[inline(always)]
fn assert_rows_inside(index: &[u32], ldb: usize, width: usize, len: usize) {
    let last_row = index.iter().copied().fold(0, u32::max) as usize;
    let end = last_row
        .checked_mul(ldb)
        .and_then(|at| at.checked_add(width));
    assert!(
        index.is_empty() || end.is_some_and(|end| end <= len),
        "an entry's row of B lies outside B"
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn sparse_row_product_avx512(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    f: RowFinish,
) {
    assert_rows_inside(index, ldb, out.len(), b.len());
    // SAFETY: compiled for AVX-512F, run only where the caller has checked it; the bounds are checked above.
    unsafe { row_product::<__m512>(index, value, b, ldb, out, f) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sparse_row_product_avx2(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    f: RowFinish,
) {
    assert_rows_inside(index, ldb, out.len(), b.len());
    // SAFETY: compiled for AVX2 and FMA, run only where the caller has checked them; the bounds are checked above.
    unsafe { row_product::<__m256>(index, value, b, ldb, out, f) }
}

/// [`sparse_row_product`] on `V`'s vectors: passes of [`CHAINS`] vectors, then
/// one vector at a time, then the last columns one float at a time (`mul_add`
/// rounds once, as the vector FMA does in each lane).
///
/// # Safety
/// The CPU supports `V`'s instruction set; every entry's row of B holds
/// `out.len()` floats from `index·ldb` inside `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_product<V: Vector>(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    let (lanes, n) = (V::LANES, out.len());
    let (mut col, whole) = (0, n - n % V::LANES);
    // SAFETY (every vector operation and access): the caller's contract; each
    // pass reads and writes columns `col..col + width` with `col + width <= n`.
    unsafe {
        while col + CHAINS * lanes <= whole {
            let sums = chains::<V, CHAINS>(index, value, b.as_ptr().add(col), ldb);
            finish_vectors(&sums, &mut out[col..col + CHAINS * lanes], col, finish);
            col += CHAINS * lanes;
        }
        while col < whole {
            let sums = chains::<V, 1>(index, value, b.as_ptr().add(col), ldb);
            finish_vectors(&sums, &mut out[col..col + lanes], col, finish);
            col += lanes;
        }
    }
    for j in whole..n {
        let mut sum = 0.0f32;
        for (&i, &v) in index.iter().zip(value) {
            sum = v.mul_add(b[i as usize * ldb + j], sum);
        }
        out[j] = finish_scalar(sum, out[j], j, finish);
    }
}

/// `W` vectors of sums, the entries' rows of B from `b` (`ldb` apart).
///
/// # Safety
/// As [`row_product`], for the `W · LANES` floats of each row from `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn chains<V: Vector, const W: usize>(
    index: &[u32],
    value: &[f32],
    b: *const f32,
    ldb: usize,
) -> [V; W] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut sums = [V::zero(); W];
        for (&i, &v) in index.iter().zip(value) {
            let (a, row) = (V::splat(v), b.add(i as usize * ldb));
            for (w, sum) in sums.iter_mut().enumerate() {
                *sum = V::mul_add(a, V::load(row.add(w * V::LANES)), *sum);
            }
        }
        sums
    }
}

/// Stores `sums` into `out` (their `W · LANES` floats, column `col` of the row)
/// as `finish` says.
///
/// # Safety
/// The CPU supports `V`'s instruction set; `out` holds exactly `W · LANES` floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish_vectors<V: Vector, const W: usize>(
    sums: &[V; W],
    out: &mut [f32],
    col: usize,
    finish: RowFinish<'_>,
) {
    for (w, &sum) in sums.iter().enumerate() {
        let offset = w * V::LANES;
        // SAFETY: `out` and the bias (at least `col + out.len()` floats, asserted
        // by `sparse_row_product`) hold the LANES floats at `offset`; the caller's contract.
        unsafe {
            let at = out.as_mut_ptr().add(offset);
            let mut x = if finish.accumulate {
                V::load(at).add(sum)
            } else {
                sum
            };
            if let Some(bias) = finish.bias {
                x = x.add(V::load(bias.as_ptr().add(col + offset)));
            }
            if finish.relu {
                x = x.relu();
            }
            x.store(at);
        }
    }
}

/// One output finished as `finish` says: `sum` (added to `old` when accumulating),
/// the bias of column `col`, relu.
fn finish_scalar(sum: f32, old: f32, col: usize, finish: RowFinish<'_>) -> f32 {
    let mut x = if finish.accumulate { old + sum } else { sum };
    if let Some(bias) = finish.bias {
        x += bias[col];
    }
    match finish.relu {
        true => relu(x),
        false => x,
    }
}

/// [`sparse_row_product`] on `wide`'s 8-lane vectors, the multiply-add the
/// portable GEMM kernel uses; the last columns in a zero-padded vector.
fn sparse_row_product_portable(
    index: &[u32],
    value: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    finish: RowFinish<'_>,
) {
    use wide::f32x8;
    const LANES: usize = 8;
    assert_rows_inside(index, ldb, out.len(), b.len());
    for col in (0..out.len()).step_by(LANES) {
        let width = LANES.min(out.len() - col);
        let mut sum = f32x8::ZERO;
        for (&i, &v) in index.iter().zip(value) {
            let start = i as usize * ldb + col;
            let mut lanes = [0.0f32; LANES];
            lanes[..width].copy_from_slice(&b[start..start + width]);
            sum = f32x8::splat(v).mul_add(f32x8::from(lanes), sum);
        }
        for (j, s) in sum.to_array()[..width].iter().enumerate() {
            out[col + j] = finish_scalar(*s, out[col + j], col + j, finish);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: RowFinish<'static> = RowFinish {
        accumulate: false,
        bias: None,
        relu: false,
    };

    /// Each instruction set's kernel refuses an entry whose row of B would run
    /// past B's end, before it reads anything.
    #[test]
    fn an_entry_past_b_is_refused_on_every_instruction_set() {
        let b = vec![1.0f32; 4 * 16];
        for isa in Isa::available() {
            let refused = std::panic::catch_unwind(|| {
                let mut out = vec![0.0f32; 16];
                sparse_row_product(isa, &[1, 4], &[1.0, 1.0], &b, 16, &mut out, PLAIN);
            });
            let message = refused.expect_err("row 4 of a 4-row B was read");
            let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
            assert_eq!(text, "an entry's row of B lies outside B", "{isa:?}");
            let mut out = vec![0.0f32; 16];
            sparse_row_product(isa, &[0, 3], &[1.0, 2.0], &b, 16, &mut out, PLAIN);
            assert!(out.iter().all(|&x| x == 3.0), "{isa:?}");
        }
    }
}
