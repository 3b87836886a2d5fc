//! The tiled GEMM kernels of the x86 instruction sets, written once over their
//! vector registers (`__m512` for AVX-512F, `__m256` for AVX2): an `MR × NR` tile,
//! `NR` two vectors wide, in `2·MR` accumulators. Each instruction set's kernels
//! (in `microkernel`) are these functions compiled for it, into which they are
//! always inlined.

use super::microkernel::{a_at, assert_panels_fit, TileEpilogue};
use crate::simd::TileMut;
use std::arch::x86_64::*;

/// Steps of k per pass of a tile's inner loop.
const UNROLL: usize = 4;

/// A vector register of floats and the operations the tiles need.
pub(crate) trait Vector: Copy {
    const LANES: usize;
    /// # Safety (every method)
    /// The CPU supports the vector's instruction set.
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// `LANES` floats from `p`, which must point to that many.
    unsafe fn load(p: *const f32) -> Self;
    /// To `LANES` floats at `p`, which must point to that many.
    unsafe fn store(self, p: *mut f32);
    /// `a·b + c` with one rounding.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    /// `max(0, x)`, which is x when x is NaN, as the scalar relu.
    unsafe fn relu(self) -> Self;
    /// x where `mask > 0`, else 0 (the backward pass of relu).
    unsafe fn keep_where_positive(self, mask: Self) -> Self;
}

impl Vector for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the CPU has AVX-512F (the caller's contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: `p` points to 16 floats, and the CPU has AVX-512F (the contract).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as in `load`.
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm512_add_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm512_max_ps(_mm512_setzero_ps(), self) }
    }
    #[inline(always)]
    unsafe fn keep_where_positive(self, mask: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe {
            let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(mask, _mm512_setzero_ps());
            _mm512_maskz_mov_ps(positive, self)
        }
    }
}

impl Vector for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the CPU has AVX2 and FMA (the caller's contract).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: `p` points to 8 floats, and the CPU has AVX2 (the contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: as in `load`.
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm256_add_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        // SAFETY: as in `zero`.
        unsafe { _mm256_max_ps(_mm256_setzero_ps(), self) }
    }
    #[inline(always)]
    unsafe fn keep_where_positive(self, mask: Self) -> Self {
        // SAFETY: as in `zero`.
        unsafe {
            let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(mask, _mm256_setzero_ps());
            _mm256_and_ps(positive, self)
        }
    }
}

/// The `MR × 2·LANES` product of a panel of `MR × kc` floats of A (laid out as
/// `ROWS` says, see [`a_at`]) and `kc` rows of `2·LANES` floats of B (`ldb`
/// apart): two loads of B and `MR` broadcasts of A per step of `k`.
///
/// # Safety
/// The CPU supports `V`'s instruction set.
#[inline(always)]
unsafe fn product<V: Vector, const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) -> ([V; MR], [V; MR]) {
    let lanes = V::LANES;
    assert_panels_fit::<ROWS>(kc, a, lda, MR, b, ldb, 2 * lanes);
    // SAFETY: (every load and vector operation) `assert_panels_fit` keeps row p of
    // B (2·LANES floats from p·ldb) and the panel's MR × kc floats inside `b` and
    // `a`; the CPU has V's instruction set (the caller's contract).
    unsafe {
        let mut lo = [V::zero(); MR];
        let mut hi = [V::zero(); MR];
        // Steps of k in fours: the loads of B for the next steps issue early, which
        // hides L2's latency.
        let whole = kc - kc % UNROLL;
        for p in (0..whole).step_by(UNROLL) {
            for u in 0..UNROLL {
                step::<V, MR, ROWS>(p + u, a, lda, b, ldb, &mut lo, &mut hi);
            }
        }
        for p in whole..kc {
            step::<V, MR, ROWS>(p, a, lda, b, ldb, &mut lo, &mut hi);
        }
        (lo, hi)
    }
}

/// Step `p` of k of [`product`]: row p of B times column p of A's panel, added
/// to the accumulators.
///
/// # Safety
/// As [`product`], whose assertion keeps every access inside `a` and `b`.
#[inline(always)]
unsafe fn step<V: Vector, const MR: usize, const ROWS: bool>(
    p: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    lo: &mut [V; MR],
    hi: &mut [V; MR],
) {
    // SAFETY: the caller's contract.
    unsafe {
        let b_row = b.as_ptr().add(p * ldb);
        let (b0, b1) = (V::load(b_row), V::load(b_row.add(V::LANES)));
        for i in 0..MR {
            let av = V::splat(a_at::<ROWS>(a.as_ptr(), lda, i, p));
            lo[i] = V::mul_add(av, b0, lo[i]);
            hi[i] = V::mul_add(av, b1, hi[i]);
        }
    }
}

/// The `MR × 2·LANES` product into `acc` (row-major, `2·LANES` floats a row).
///
/// # Safety
/// The CPU supports `V`'s instruction set.
#[inline(always)]
pub(super) unsafe fn run<V: Vector, const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    acc: &mut [f32],
) {
    let (lanes, nr) = (V::LANES, 2 * V::LANES);
    // SAFETY: the caller's contract.
    let (lo, hi) = unsafe { product::<V, MR, ROWS>(kc, a, lda, b, ldb) };
    for (row, (l, h)) in acc[..MR * nr].chunks_exact_mut(nr).zip(lo.iter().zip(&hi)) {
        // SAFETY: each `row` holds exactly 2·LANES floats, so stores at 0 and LANES
        // fit; the CPU has V's instruction set (the caller's contract).
        unsafe {
            l.store(row.as_mut_ptr());
            h.store(row.as_mut_ptr().add(lanes));
        }
    }
}

/// The `MR × 2·LANES` products of A's panel with each of `c.cols / (2·LANES)`
/// strips of B (each `strip_stride` floats after the one before), each stored
/// straight into its tile of C with the epilogue applied in registers: one call for
/// a row of tiles, where a call per tile cost small-depth GEMMs a fifth of their time.
///
/// # Safety
/// The CPU supports `V`'s instruction set.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn into<V: Vector, const MR: usize, const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    strip_stride: usize,
    mut c: TileMut<'_>,
    epilogue: TileEpilogue<'_>,
) {
    let (lanes, nr) = (V::LANES, 2 * V::LANES);
    assert!(
        c.rows == MR && c.cols.is_multiple_of(nr),
        "the tiles are not {MR}x{nr}"
    );
    for s in 0..c.cols / nr {
        let col = s * nr;
        // SAFETY: (here and each `store_rows`) the caller's contract. One store loop
        // per epilogue, each unrolled with the accumulators kept in registers (one
        // loop matching the epilogue on each row spilled them).
        let (lo, hi) = unsafe { product::<V, MR, ROWS>(kc, a, lda, &b[s * strip_stride..], ldb) };
        match epilogue {
            // SAFETY: as above.
            TileEpilogue::None => unsafe { store_rows(&mut c, col, lo, hi, Plain) },
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let bias = &bias[col..col + nr];
                // SAFETY: `bias` is cut to exactly 2·LANES floats; the caller's contract.
                let (b0, b1) =
                    unsafe { (V::load(bias.as_ptr()), V::load(bias.as_ptr().add(lanes))) };
                if matches!(epilogue, TileEpilogue::BiasRelu(_)) {
                    // SAFETY: as above.
                    unsafe { store_rows(&mut c, col, lo, hi, AddBias::<V, true> { b0, b1 }) }
                } else {
                    // SAFETY: as above.
                    unsafe { store_rows(&mut c, col, lo, hi, AddBias::<V, false> { b0, b1 }) }
                }
            }
            TileEpilogue::ReluMask { mask, row_stride } => {
                let mask = ReluMask {
                    mask,
                    row_stride,
                    col,
                };
                // SAFETY: as above.
                unsafe { store_rows(&mut c, col, lo, hi, mask) }
            }
        }
    }
}

/// What row `i` of a finished tile becomes, as its two vectors.
trait RowEpilogue<V> {
    /// # Safety
    /// The CPU supports `V`'s instruction set.
    unsafe fn apply(&self, i: usize, x0: V, x1: V) -> (V, V);
}

/// The products as they are.
struct Plain;

impl<V: Vector> RowEpilogue<V> for Plain {
    #[inline(always)]
    unsafe fn apply(&self, _: usize, x0: V, x1: V) -> (V, V) {
        (x0, x1)
    }
}

/// The bias of the tile's columns added, then relu when `RELU`.
struct AddBias<V, const RELU: bool> {
    b0: V,
    b1: V,
}

impl<V: Vector, const RELU: bool> RowEpilogue<V> for AddBias<V, RELU> {
    #[inline(always)]
    unsafe fn apply(&self, _: usize, x0: V, x1: V) -> (V, V) {
        // SAFETY: the caller's contract.
        unsafe {
            let (y0, y1) = (x0.add(self.b0), x1.add(self.b1));
            match RELU {
                true => (y0.relu(), y1.relu()),
                false => (y0, y1),
            }
        }
    }
}

/// Zero wherever the relu's output `mask` (rows `row_stride` apart, the tile's
/// first column at `col`) is not positive.
struct ReluMask<'m> {
    mask: &'m [f32],
    row_stride: usize,
    col: usize,
}

impl<V: Vector> RowEpilogue<V> for ReluMask<'_> {
    #[inline(always)]
    unsafe fn apply(&self, i: usize, x0: V, x1: V) -> (V, V) {
        let start = i * self.row_stride + self.col;
        let m = &self.mask[start..start + 2 * V::LANES];
        // SAFETY: `m` is cut to exactly 2·LANES floats; the caller's contract.
        unsafe {
            let (m0, m1) = (V::load(m.as_ptr()), V::load(m.as_ptr().add(V::LANES)));
            (x0.keep_where_positive(m0), x1.keep_where_positive(m1))
        }
    }
}

/// Stores row `i` of the `MR × 2·LANES` tile at column `col` of `c`, `(lo[i],
/// hi[i])` added to C's values when the tile accumulates, as `epilogue` makes it.
///
/// # Safety
/// The CPU supports `V`'s instruction set.
#[inline(always)]
unsafe fn store_rows<V: Vector, const MR: usize>(
    c: &mut TileMut<'_>,
    col: usize,
    lo: [V; MR],
    hi: [V; MR],
    epilogue: impl RowEpilogue<V>,
) {
    let (lanes, accumulate) = (V::LANES, c.accumulate);
    for i in 0..MR {
        let row = &mut c.row_mut(i)[col..col + 2 * lanes];
        let (mut x0, mut x1) = (lo[i], hi[i]);
        // SAFETY: (every load and store) `row` is cut to exactly 2·LANES floats, so
        // the accesses at 0 and LANES stay inside it; the caller's contract.
        unsafe {
            if accumulate {
                x0 = V::load(row.as_ptr()).add(x0);
                x1 = V::load(row.as_ptr().add(lanes)).add(x1);
            }
            let (y0, y1) = epilogue.apply(i, x0, x1);
            y0.store(row.as_mut_ptr());
            y1.store(row.as_mut_ptr().add(lanes));
        }
    }
}
