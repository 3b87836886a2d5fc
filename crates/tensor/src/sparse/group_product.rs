//! The product of a group of sparse rows with B: the rows share one list of
//! entries (the union of their nonzeros' indices, in order) and each has its value
//! at every entry, 0 where it has no nonzero, so that each entry's row of B is
//! loaded once for the whole group. Each output is a chain of FMAs over the
//! entries in their order, as the dense kernels chain over every step of k, so
//! that the zeros skipped give the dense kernel's bits.

use crate::activation::relu;
#[cfg(target_arch = "x86_64")]
use crate::gemm::tiles::Vector;
use crate::simd::{on_instruction_set, Isa, TileMut};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

/// Rows of a group: each entry's row of B feeds this many rows of FMAs.
pub(crate) const GROUP: usize = 4;

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

/// A group's entries in one block of depth: the rows of B they name (in order)
/// and each of the [`GROUP`] rows' values at them, row `r`'s value at entry `e`
/// being `values[GROUP·e + r]` (an entry's values side by side).
#[derive(Clone, Copy)]
pub(crate) struct GroupEntries<'a> {
    pub index: &'a [u32],
    pub values: &'a [f32],
}

impl<'a> GroupEntries<'a> {
    /// Row `r`'s values, one per entry.
    pub(crate) fn row(&self, r: usize) -> impl Iterator<Item = f32> + 'a {
        self.values[..GROUP * self.index.len()]
            .chunks_exact(GROUP)
            .map(move |entry| entry[r])
    }
}

/// `tile[r][j] = Σ_e values[GROUP·e + r] · b[index[e]·ldb + j]` for the tile's
/// rows (at most [`GROUP`]) and columns, each sum a chain of FMAs from zero in
/// the order of the entries, then finished as `finish` says (the dense tiles'
/// order of operations).
///
/// # Panics
/// When an entry's values do not lie inside `values`, an entry's row of B (the
/// tile's width of floats from `index·ldb`) is not inside `b`, the bias is
/// shorter than the tile, or the tile has more than [`GROUP`] rows.
pub(crate) fn sparse_group_product(
    isa: Isa,
    entries: GroupEntries<'_>,
    b: &[f32],
    ldb: usize,
    tile: &mut TileMut<'_>,
    finish: RowFinish<'_>,
) {
    assert!(tile.rows <= GROUP, "a group has at most {GROUP} rows");
    assert!(
        GROUP * entries.index.len() <= entries.values.len(),
        "an entry's values lie outside the group's"
    );
    if let Some(bias) = finish.bias {
        assert!(bias.len() >= tile.cols, "a bias for every output");
    }
    on_instruction_set!(isa;
        avx512 => group_product_avx512(entries, b, ldb, tile, finish);
        avx2 => group_product_avx2(entries, b, ldb, tile, finish);
        _ => group_product_portable(entries, b, ldb, tile, finish)
    )
}

/// Panics unless every entry's row of B (`width` floats from `index·ldb`) lies
/// inside B's `len` floats. Inlined into each instruction set's kernel, whose
/// vectors then find the greatest index (a group's 300 in a few dozen cycles).
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
fn group_product_avx512(
    entries: GroupEntries<'_>,
    b: &[f32],
    ldb: usize,
    tile: &mut TileMut<'_>,
    finish: RowFinish<'_>,
) {
    assert_rows_inside(entries.index, ldb, tile.cols, b.len());
    // SAFETY: compiled for AVX-512F, run only where the caller has checked it;
    // the bounds are checked above and by `sparse_group_product`.
    unsafe { group_product::<__m512, 4>(entries, b, ldb, tile, finish) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn group_product_avx2(
    entries: GroupEntries<'_>,
    b: &[f32],
    ldb: usize,
    tile: &mut TileMut<'_>,
    finish: RowFinish<'_>,
) {
    assert_rows_inside(entries.index, ldb, tile.cols, b.len());
    // SAFETY: compiled for AVX2 and FMA, run only where the caller has checked
    // them; the bounds are checked above and by `sparse_group_product`.
    // Two vectors a row: the group's eight sums, B's two and the value in 11 of
    // the 16 registers.
    unsafe { group_product::<__m256, 2>(entries, b, ldb, tile, finish) }
}

/// [`sparse_group_product`] on `V`'s vectors: passes of `W` vectors a row, then
/// one vector a row, then the last columns one float at a time (`mul_add`
/// rounds once, as the vector FMA does in each lane).
///
/// # Safety
/// The CPU supports `V`'s instruction set; every entry's row of B holds the
/// tile's width of floats from `index·ldb` inside `b`; each entry's values lie
/// inside `entries.values`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn group_product<V: Vector, const W: usize>(
    entries: GroupEntries<'_>,
    b: &[f32],
    ldb: usize,
    tile: &mut TileMut<'_>,
    finish: RowFinish<'_>,
) {
    let (lanes, n) = (V::LANES, tile.cols);
    let (mut col, whole) = (0, n - n % V::LANES);
    // SAFETY: (every vector operation and access) the caller's contract; each
    // pass reads and writes columns `col..col + width` with `col + width <= n`.
    unsafe {
        while col + W * lanes <= whole {
            let sums = group_chains::<V, W>(entries, b.as_ptr().add(col), ldb);
            finish_group(&sums, tile, col, finish);
            col += W * lanes;
        }
        while col < whole {
            let sums = group_chains::<V, 1>(entries, b.as_ptr().add(col), ldb);
            finish_group(&sums, tile, col, finish);
            col += lanes;
        }
    }
    for r in 0..tile.rows {
        let out = tile.row_mut(r);
        for j in whole..n {
            let mut sum = 0.0f32;
            for (&i, v) in entries.index.iter().zip(entries.row(r)) {
                sum = v.mul_add(b[i as usize * ldb + j], sum);
            }
            out[j] = finish_scalar(sum, out[j], j, finish);
        }
    }
}

/// `W` vectors of sums for each row of the group, the entries' rows of B from
/// `b` (`ldb` apart).
///
/// # Safety
/// As [`group_product`], for the `W · LANES` floats of each row from `b`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn group_chains<V: Vector, const W: usize>(
    entries: GroupEntries<'_>,
    b: *const f32,
    ldb: usize,
) -> [[V; W]; GROUP] {
    let GroupEntries { index, values } = entries;
    // SAFETY: the caller's contract.
    unsafe {
        let mut sums = [[V::zero(); W]; GROUP];
        let values = values.as_ptr();
        for (e, &i) in index.iter().enumerate() {
            let row = b.add(i as usize * ldb);
            let mut b_row = [V::zero(); W];
            for (w, v) in b_row.iter_mut().enumerate() {
                *v = V::load(row.add(w * V::LANES));
            }
            for (r, row_sums) in sums.iter_mut().enumerate() {
                let a = V::splat(*values.add(GROUP * e + r));
                for (sum, &b) in row_sums.iter_mut().zip(&b_row) {
                    *sum = V::mul_add(a, b, *sum);
                }
            }
        }
        sums
    }
}

/// Stores the tile's rows of `sums` at column `col` (`W · LANES` floats a row)
/// as `finish` says.
///
/// # Safety
/// The CPU supports `V`'s instruction set; the tile holds those columns.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish_group<V: Vector, const W: usize>(
    sums: &[[V; W]; GROUP],
    tile: &mut TileMut<'_>,
    col: usize,
    finish: RowFinish<'_>,
) {
    for (r, row_sums) in sums.iter().enumerate().take(tile.rows) {
        let out = &mut tile.row_mut(r)[col..col + W * V::LANES];
        for (w, &sum) in row_sums.iter().enumerate() {
            let offset = w * V::LANES;
            // SAFETY: `out` and the bias (at least the tile's width, asserted by
            // `sparse_group_product`) hold the LANES floats at `offset`; the
            // caller's contract.
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

/// [`sparse_group_product`] on `wide`'s 8-lane vectors, the multiply-add the
/// portable GEMM kernel uses, one row at a time; the last columns in a
/// zero-padded vector.
fn group_product_portable(
    entries: GroupEntries<'_>,
    b: &[f32],
    ldb: usize,
    tile: &mut TileMut<'_>,
    finish: RowFinish<'_>,
) {
    use wide::f32x8;
    const LANES: usize = 8;
    let index = entries.index;
    assert_rows_inside(index, ldb, tile.cols, b.len());
    for r in 0..tile.rows {
        let out = tile.row_mut(r);
        for col in (0..out.len()).step_by(LANES) {
            let width = LANES.min(out.len() - col);
            let mut sum = f32x8::ZERO;
            for (&i, v) in index.iter().zip(entries.row(r)) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::MatMut;
    use crate::simd::BlockMut;

    const PLAIN: RowFinish<'static> = RowFinish {
        accumulate: false,
        bias: None,
        relu: false,
    };

    /// Each instruction set's kernel refuses an entry whose row of B would run
    /// past B's end, or values short of the group's rows, before it reads anything.
    #[test]
    fn entries_outside_b_or_the_values_are_refused_on_every_instruction_set() {
        let b = vec![1.0f32; 4 * 16];
        // Row 0 has 1 and 2 at the two entries, row 1 has 0 and 3.
        let values = [1.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0];
        for isa in Isa::available() {
            let product = |index: &[u32], values: &[f32], out: &mut [f32]| {
                let mut block = BlockMut::new(MatMut::row_major(out, 2, 16));
                let entries = GroupEntries { index, values };
                let mut tile = block.tile_mut(0, 0, 2, 16);
                sparse_group_product(isa, entries, &b, 16, &mut tile, PLAIN);
            };
            for (index, values, message) in [
                (
                    &[1, 4][..],
                    &values[..],
                    "an entry's row of B lies outside B",
                ),
                (
                    &[0, 3][..],
                    &values[..7],
                    "an entry's values lie outside the group's",
                ),
            ] {
                let refused = std::panic::catch_unwind(|| product(index, values, &mut [0.0; 32]));
                let panic = refused.expect_err(message);
                let text = panic.downcast_ref::<&str>().copied();
                let text = text.or(panic.downcast_ref::<String>().map(|s| s.as_str()));
                assert_eq!(text, Some(message), "{isa:?}");
            }
            let mut out = vec![0.0f32; 32];
            product(&[0, 3], &values, &mut out);
            assert!(out[..16].iter().all(|&x| x == 3.0), "{isa:?}");
            assert!(out[16..].iter().all(|&x| x == 3.0), "{isa:?}");
        }
    }
}
