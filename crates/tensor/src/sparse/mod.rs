//! Products with a matrix that is mostly zeros, most of its zeros skipped: four fifths
//! of MNIST's pixels are 0, so the first layer's two GEMMs (`X·W₁` and `Xᵀ·dH`)
//! need a fifth of their multiply-adds. The products take the sparse matrix's
//! lines (rows for `X·W₁`, columns for `Xᵀ·dH`) in groups of four, each group
//! by the union of its lines' nonzeros, so that a row of B loaded feeds the group's
//! lines at once: on MNIST that is twice the multiply-adds of the nonzeros alone
//! but half to a third of the loads of B, which bound them.
//! Each output is summed in the order of the dense GEMM's tiles (the same blocks of
//! depth, each a chain of FMAs from zero), so the results are its bits wherever it
//! takes its tiles (outputs over 12 wide; its dot-product path for thinner ones
//! sums otherwise), zeros being skipped where the tiles add `0·b`: only the sign of
//! a zero sum, or a zero times an infinite `b`, can differ.

use crate::gemm::{depth_block, is_parallel, Epilogue};
use crate::matrix::{MatMut, MatRef};
use crate::parallel::{for_each_chunk, for_each_chunk_in_order, ByCols, ByRows};
use crate::simd::{BlockMut, Isa};
use compress::{
    for_each_set_bit, is_exact_divisor, keep_nonzero_bytes, keep_nonzeros, set_bit_positions, Kept,
    KEEP_SLACK,
};
use group_product::{sparse_group_product, GroupEntries, RowFinish, GROUP};

// The family's instruction-set variants: the compression of a batch to its
// nonzeros, and the products of a group of rows.
#[allow(unsafe_code)]
mod compress;
#[allow(unsafe_code)]
mod group_product;

/// Density (nonzeros over all entries) up to which the sparse products, their
/// compression included, beat the dense GEMMs, as measured on the slowest of the
/// machines tried (docs/internals.md, "Measurements behind the code").
pub const SPARSE_DENSITY_LIMIT: f64 = 0.3;
/// Columns of C per task of [`sparse_gemm`]: B's block of them stays in L2 while
/// every row of A reads it (its rows shared out too when threads outnumber blocks).
const TASK_COLS: usize = 128;
/// Rows of C per task of [`sparse_t_gemm`]: whole groups.
const TASK_ROWS: usize = 4 * GROUP;

/// A matrix's nonzeros, by rows, and by groups of rows and of columns as the
/// products read them: built from a dense matrix by [`compress`](Self::compress),
/// its buffers reused from call to call.
#[derive(Clone, Debug, Default)]
pub struct SparseRows {
    rows: usize,
    cols: usize,
    /// Row `i`'s entries are `row_starts[i·B]..row_starts[(i + 1)·B]` of `row_cols`
    /// and `row_values`, `B` its blocks of depth (those of a product with it, by
    /// [`depth_blocks`] of `cols`): its block `b` starts at `row_starts[i·B + b]`,
    /// found once here rather than by every task that reads the row.
    row_starts: Vec<usize>,
    row_cols: Vec<u32>,
    row_values: Vec<f32>,
    /// The rows in groups of [`GROUP`], by blocks of depth of `cols`: what
    /// [`sparse_gemm`] reads.
    row_groups: Groups,
    /// The columns in groups of [`GROUP`], by blocks of depth of `rows`: what
    /// [`sparse_t_gemm`] reads, built by [`build_columns`](Self::build_columns).
    col_groups: Groups,
    /// The columns with a nonzero, as bits (bit `j % 64` of word `j / 64`),
    /// found with the column groups.
    col_nonempty: Vec<u64>,
    /// Where the next entry of each column group's block goes, while building.
    col_ends: Vec<usize>,
    /// Each row's groups of columns (those where it has a nonzero) as bits, while
    /// building the column groups.
    row_group_bits: Vec<u64>,
    /// Each row's nonzeros as bits (bit `j % 8` of byte `j / 8` for column `j`),
    /// [`bit_words`] of `cols` a row, as bytes: what the compression found, from
    /// which both kinds of groups are built.
    row_bits: Vec<u8>,
    /// The columns where a group of rows has a nonzero, as bits, while building
    /// the row groups.
    group_bits: Vec<u64>,
    /// Each of those columns' entry in its group, while building the row groups.
    entry_of: Vec<u32>,
    /// A row of a matrix whose rows are not contiguous, while compressing.
    strided_row: Vec<f32>,
}

impl SparseRows {
    /// Buffers for matrices of up to `rows × cols`, so that no later
    /// [`compress`](Self::compress) of one allocates.
    pub fn with_capacity(rows: usize, cols: usize) -> Self {
        let mut sparse = Self::default();
        sparse.reserve(rows, cols, rows * cols);
        sparse
    }

    /// Room for matrices of up to `rows × cols` with up to `entries` nonzeros.
    fn reserve(&mut self, rows: usize, cols: usize, entries: usize) {
        // Slack for the whole vectors that compression stores past its last nonzero.
        let slots = entries + KEEP_SLACK;
        self.row_cols.resize(slots.max(self.row_cols.len()), 0);
        self.row_values
            .resize(slots.max(self.row_values.len()), 0.0);
        let (row_blocks, col_blocks) = (depth_blocks(cols), depth_blocks(rows));
        self.row_starts.reserve(rows * row_blocks + 1);
        // A group's entries are at most its lines' nonzeros. (The column groups
        // are sized when first built: a batch only run forward needs none.)
        self.row_groups
            .reserve(rows.div_ceil(GROUP) * row_blocks, entries);
        self.col_ends.reserve(cols.div_ceil(GROUP) * col_blocks);
        self.col_nonempty.reserve(bit_words(cols));
        self.row_group_bits
            .reserve(rows * cols.div_ceil(GROUP).div_ceil(64));
        self.row_bits.reserve(rows * 8 * bit_words(cols));
        self.group_bits.reserve(bit_words(cols));
        self.entry_of.reserve(64 * bit_words(cols));
        self.strided_row.reserve(cols);
    }

    /// Makes this the nonzeros of `a` (any strides), with the best instruction
    /// set of this machine. A NaN counts as a nonzero; `-0.0` as a zero.
    ///
    /// # Panics
    /// When `a` has more than `u32::MAX` rows or columns.
    pub fn compress(&mut self, a: MatRef<'_>) {
        self.compress_with(Isa::detected(), a)
    }

    /// [`compress`](Self::compress) with a chosen instruction set (tests force each one).
    ///
    /// # Panics
    /// As [`compress`](Self::compress), and when `isa` is not supported by this CPU.
    pub fn compress_with(&mut self, isa: Isa, a: MatRef<'_>) {
        let (rows, cols) = (a.rows(), a.cols());
        self.reserve(rows, cols, rows * cols);
        self.compress_matrix_rows(isa, a, rows * cols);
        self.build_columns();
    }

    /// [`compress`](Self::compress) when `a`'s density is at most `limit`, which
    /// it says; else stops as soon as `a` has more nonzeros, leaves this matrix
    /// empty, and returns false. Its buffers hold only `limit`'s share of `a` (and
    /// a row): a batch of 10,000 MNIST images takes 38 MB at 0.3, not 125 MB.
    ///
    /// # Panics
    /// As [`compress`](Self::compress).
    pub fn compress_if_sparse(&mut self, a: MatRef<'_>, limit: f64) -> bool {
        let sparse = self.compress_rows_if_sparse(a, limit);
        if sparse {
            self.build_columns();
        }
        sparse
    }

    /// [`compress_if_sparse`](Self::compress_if_sparse) without the entries by
    /// columns, which only [`sparse_t_gemm`] reads: enough for [`sparse_gemm`]
    /// (a forward pass with no backward pass after it).
    ///
    /// # Panics
    /// As [`compress`](Self::compress).
    pub fn compress_rows_if_sparse(&mut self, a: MatRef<'_>, limit: f64) -> bool {
        self.rows_if_sparse((a.rows(), a.cols()), limit, |sparse, most| {
            sparse.compress_matrix_rows(Isa::detected(), a, most)
        })
    }

    /// [`compress_rows_if_sparse`](Self::compress_rows_if_sparse) of the
    /// `rows × cols` matrix whose row `i` is `row(i)`'s bytes, each read as
    /// `byte as f32 / divisor`, with `isa`: the same entries, bit for bit, without
    /// that matrix ever written (a batch of MNIST's images compressed from the
    /// dataset's bytes); [`build_columns`](Self::build_columns) adds the columns.
    /// `None`, having done nothing, for a divisor under which a byte other than 0
    /// could give 0 or a subnormal, or the byte 0 a NaN: a finite one between
    /// 1e-30 and 1e30 in magnitude works.
    ///
    /// # Panics
    /// As [`compress_with`](Self::compress_with), and when a row is not `cols` bytes.
    pub fn compress_scaled_bytes_if_sparse<'a>(
        &mut self,
        isa: Isa,
        (rows, cols): (usize, usize),
        row: impl Fn(usize) -> &'a [u8],
        divisor: f32,
        limit: f64,
    ) -> Option<bool> {
        if !is_exact_divisor(divisor) {
            return None;
        }
        Some(self.rows_if_sparse((rows, cols), limit, |sparse, most| {
            sparse.compress_rows(isa, (rows, cols), most, |i, kept| {
                let bytes = row(i);
                assert_eq!(bytes.len(), cols, "row {i} is not {cols} bytes");
                keep_nonzero_bytes(isa, bytes, divisor, kept)
            })
        }))
    }

    /// The entries by rows of a `rows × cols` matrix, by `compress(self, most)`,
    /// which says whether there are at most `most`, `limit`'s share; this matrix
    /// left empty when there are more.
    fn rows_if_sparse(
        &mut self,
        (rows, cols): (usize, usize),
        limit: f64,
        compress: impl FnOnce(&mut Self, usize) -> bool,
    ) -> bool {
        let most = ((limit.clamp(0.0, 1.0) * (rows * cols) as f64) as usize).min(rows * cols);
        self.reserve(rows, cols, most + cols);
        let sparse = compress(self, most);
        if !sparse {
            // Nothing may read a part of the matrix as the whole.
            (self.rows, self.cols) = (0, 0);
            self.row_starts.clear();
        }
        sparse
    }

    /// [`compress_rows`](Self::compress_rows) of the matrix `a`, any strides.
    fn compress_matrix_rows(&mut self, isa: Isa, a: MatRef<'_>, most: usize) -> bool {
        let mut strided_row = std::mem::take(&mut self.strided_row);
        let shape = (a.rows(), a.cols());
        let sparse = self.compress_rows(isa, shape, most, |i, kept| {
            let values = match a.col_stride() {
                1 => &a.data()[i * a.row_stride()..][..a.cols()],
                _ => {
                    strided_row.clear();
                    strided_row.extend((0..a.cols()).map(|j| a.get(i, j)));
                    &strided_row[..]
                }
            };
            keep_nonzeros(isa, values, kept)
        });
        self.strided_row = strided_row;
        sparse
    }

    /// The entries by rows, `keep_row(i, kept)` writing row `i`'s and saying how
    /// many; false, with only the first rows done, as soon as they number more
    /// than `most` (the buffers hold `most` and a row). The columns of the matrix
    /// before are dropped: they are not this one's.
    fn compress_rows(
        &mut self,
        isa: Isa,
        (rows, cols): (usize, usize),
        most: usize,
        mut keep_row: impl FnMut(usize, Kept<'_>) -> usize,
    ) -> bool {
        assert!(
            u32::try_from(rows.max(cols)).is_ok(),
            "a sparse matrix has at most u32::MAX rows and columns"
        );
        (self.rows, self.cols) = (rows, cols);
        self.col_groups.starts.clear();
        let depth = depth_block(cols);
        self.row_starts.clear();
        self.row_starts.push(0);
        let bit_row = 8 * bit_words(cols);
        self.row_bits.resize(rows * bit_row, 0);
        let mut end = 0;
        for (i, bits) in self.row_bits.chunks_exact_mut(bit_row).enumerate() {
            // The compression writes the row's bits; the rest of its words are 0.
            let (bits, padding) = bits.split_at_mut(cols.div_ceil(8));
            padding.fill(0);
            let (positions, values) = (&mut self.row_cols[end..], &mut self.row_values[end..]);
            let kept = keep_row(
                i,
                Kept {
                    positions,
                    values,
                    bits,
                },
            );
            let positions = &self.row_cols[end..];
            for pc in (depth..cols).step_by(depth) {
                let before = positions[..kept].partition_point(|&j| (j as usize) < pc);
                self.row_starts.push(end + before);
            }
            end += kept;
            self.row_starts.push(end);
            if end > most {
                return false;
            }
        }
        self.build_row_groups(isa);
        true
    }

    /// The row groups, from the rows: the columns where a group's rows have
    /// nonzeros (the union of their bits) are its entries, in order, each column
    /// given its entry's number; then each row's values are stored at their
    /// columns' entries, the others 0. The bits come with the compression's
    /// masks, and the entries from AVX-512's compress 16 columns at a time, faster
    /// than flags set per nonzero and found one by one.
    fn build_row_groups(&mut self, isa: Isa) {
        let (rows, cols, entries) = (self.rows, self.cols, self.nonzeros());
        let (blocks, depth) = (depth_blocks(cols), depth_block(cols));
        let words = bit_words(cols);
        let groups = &mut self.row_groups;
        groups.make_room(entries);
        groups.starts.clear();
        groups.starts.push(0);
        self.group_bits.resize(words, 0);
        self.entry_of.resize(64 * words, 0);
        let (group_bits, entry_of) = (&mut self.group_bits[..], &mut self.entry_of[..]);
        let (row_cols, row_values) = (&self.row_cols[..], &self.row_values[..]);
        let row = |i: usize| self.row_starts[i * blocks]..self.row_starts[(i + 1) * blocks];
        let mut row_bits = self.row_bits.chunks_exact(8 * words);
        let mut end = 0;
        for first_row in (0..rows).step_by(GROUP) {
            let group_rows = first_row..rows.min(first_row + GROUP);
            group_bits.fill(0);
            for bits in row_bits.by_ref().take(group_rows.len()) {
                for (union, word) in group_bits.iter_mut().zip(as_words(bits)) {
                    *union |= word;
                }
            }
            let first = end;
            end += set_bit_positions(isa, group_bits, &mut groups.index[first..], entry_of);
            let values = &mut groups.values[GROUP * first..GROUP * end];
            values.fill(0.0);
            for (r, i) in group_rows.enumerate() {
                for (&j, &v) in row_cols[row(i)].iter().zip(&row_values[row(i)]) {
                    values[GROUP * entry_of[j as usize] as usize + r] = v;
                }
            }
            let index = &groups.index[first..end];
            for pc in (depth..cols).step_by(depth) {
                let before = index.partition_point(|&j| (j as usize) < pc);
                groups.starts.push(first + before);
            }
            groups.starts.push(end);
        }
    }

    /// The column groups, from the rows (what
    /// [`compress_if_sparse`](Self::compress_if_sparse) adds to
    /// [`compress_rows_if_sparse`](Self::compress_rows_if_sparse)), unless they
    /// are built: a counting sort of the rows by group of columns and block of
    /// depth, which keeps each group's rows in order. Each row's groups are found
    /// as bits first, from its bits, so that the counts and slots are touched once
    /// per group of a row, not per nonzero: per nonzero, a count bumped or not (a
    /// chain through memory) or a branch on whether a group starts (a coin toss)
    /// took twice the time on MNIST.
    pub fn build_columns(&mut self) {
        if self.has_columns() {
            return;
        }
        let (rows, cols) = (self.rows, self.cols);
        let (row_blocks, blocks, depth) =
            (depth_blocks(cols), depth_blocks(rows), depth_block(rows));
        let col_groups = cols.div_ceil(GROUP);
        // (A word at least, as the rows' bits have.)
        let (buckets, words) = (col_groups * blocks, col_groups.div_ceil(64).max(1));
        // Plain slices (the Vecs resliced below too): through `self` each store
        // would make the compiler reload every buffer's address and length.
        let Self {
            row_starts,
            col_groups: groups,
            col_nonempty,
            col_ends,
            row_group_bits,
            ..
        } = self;
        let row = |i: usize| row_starts[i * row_blocks]..row_starts[(i + 1) * row_blocks];
        let (row_cols, row_values) = (&self.row_cols[..], &self.row_values[..]);
        row_group_bits.clear();
        row_group_bits.resize(rows * words, 0);
        col_nonempty.clear();
        col_nonempty.resize(bit_words(cols), 0);
        let (bits, nonempty) = (&mut row_group_bits[..], &mut col_nonempty[..]);
        let row_bits = self.row_bits.chunks_exact(8 * bit_words(cols));
        for (group_bits, row_bits) in bits.chunks_exact_mut(words).zip(row_bits) {
            for (w, word) in as_words(row_bits).enumerate() {
                nonempty[w] |= word;
                // A word's 64 columns are 16 groups, a quarter of a word of groups.
                group_bits[w / 4] |= any_of_each_four(word) << (16 * (w % 4));
            }
        }
        // Entries of each bucket, at `bucket + 1`.
        groups.starts.clear();
        groups.starts.resize(buckets + 1, 0);
        let starts = &mut groups.starts[..];
        for (i, bits) in bits.chunks_exact(words).enumerate() {
            let block = i / depth;
            for_each_set_bit(bits, |g| starts[g * blocks + block + 1] += 1);
        }
        for at in 0..buckets {
            starts[at + 1] += starts[at];
        }
        let entries = starts[buckets];
        // Room for as many entries as the rows have room for, so that no later
        // matrix of the same reservation grows them.
        groups.make_room(entries.max(self.row_cols.len()));
        let index = &mut groups.index[..];
        let values = &mut groups.values[..GROUP * entries];
        values.fill(0.0);
        col_ends.clear();
        col_ends.extend_from_slice(&groups.starts[..buckets]);
        // The slots are taken per group; then each group's slot (of this row)
        // is found at the group's place in `ends`, as the slot after it.
        let ends = &mut col_ends[..];
        for (i, bits) in bits.chunks_exact(words).enumerate() {
            let block = i / depth;
            for_each_set_bit(bits, |g| {
                let at = g * blocks + block;
                index[ends[at]] = i as u32;
                ends[at] += 1;
            });
            for (&j, &v) in row_cols[row(i)].iter().zip(&row_values[row(i)]) {
                let slot = ends[j as usize / GROUP * blocks + block] - 1;
                values[GROUP * slot + j as usize % GROUP] = v;
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Entries that are not zero.
    pub fn nonzeros(&self) -> usize {
        self.row_starts.last().copied().unwrap_or(0)
    }

    /// The multiply-adds of [`sparse_gemm`] with a B of `n` columns: each row
    /// group's entries times its rows, the zeros inside the group's union of
    /// columns included (about twice the nonzeros on MNIST).
    pub fn product_multiply_adds(&self, n: usize) -> usize {
        GROUP * self.row_groups.starts.last().copied().unwrap_or(0) * n
    }

    /// The multiply-adds of [`sparse_t_gemm`] with a B of `n` columns, as
    /// [`product_multiply_adds`](Self::product_multiply_adds) counts them.
    ///
    /// # Panics
    /// As [`col`](Self::col).
    pub fn t_product_multiply_adds(&self, n: usize) -> usize {
        self.assert_has_columns();
        GROUP * self.col_groups.starts.last().copied().unwrap_or(0) * n
    }

    /// Nonzeros over all entries (0 for an empty matrix).
    pub fn density(&self) -> f64 {
        self.nonzeros() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Writes the matrix's values into `out`, `rows × cols` row-major, zeros
    /// included: the dense batch again, for the dense products.
    ///
    /// # Panics
    /// When `out` holds fewer than `rows × cols` values.
    pub fn write_dense(&self, out: &mut [f32]) {
        let out = &mut out[..self.rows * self.cols];
        out.fill(0.0);
        for (i, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            let (cols, values) = self.row(i);
            for (&j, &v) in cols.iter().zip(values) {
                row[j as usize] = v;
            }
        }
    }

    /// Rounds every nonzero to bf16 ([`crate::bf16::round`]), for a product
    /// computed under Keras' `mixed_bfloat16` policy; the columns, if built,
    /// are built again from the rounded rows when next asked for.
    pub fn round_values_to_bf16(&mut self) {
        let (nonzeros, entries) = (self.nonzeros(), self.row_groups.starts.last());
        let entries = entries.copied().unwrap_or(0);
        crate::bf16::round_in_place(&mut self.row_values[..nonzeros]);
        crate::bf16::round_in_place(&mut self.row_groups.values[..GROUP * entries]);
        self.col_groups.starts.clear();
    }

    /// Row `i`'s nonzeros: their column indices, in order, and values.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let blocks = depth_blocks(self.cols);
        let range = self.row_starts[i * blocks]..self.row_starts[(i + 1) * blocks];
        (&self.row_cols[range.clone()], &self.row_values[range])
    }

    /// Column `j`'s nonzeros: their row indices, in order, and values.
    ///
    /// # Panics
    /// When the columns were not built ([`compress_rows_if_sparse`](Self::compress_rows_if_sparse)).
    pub fn col(&self, j: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.assert_has_columns();
        let entries = self.col_groups.whole(j / GROUP, depth_blocks(self.rows));
        let rows = entries.index.iter().copied().zip(entries.row(j % GROUP));
        // A group's entry holds 0 for its columns without a nonzero there.
        rows.filter(|&(_, v)| v != 0.0)
    }

    /// Whether each column has no nonzero, in order of the columns.
    ///
    /// # Panics
    /// As [`col`](Self::col).
    pub fn empty_columns(&self) -> impl Iterator<Item = bool> + '_ {
        self.assert_has_columns();
        let nonempty = &self.col_nonempty;
        (0..self.cols).map(|j| nonempty[j / 64] >> (j % 64) & 1 == 0)
    }

    /// Whether the entries by columns are this matrix's.
    pub fn has_columns(&self) -> bool {
        self.col_groups.starts.len() == self.cols.div_ceil(GROUP) * depth_blocks(self.rows) + 1
    }

    /// Panics, naming the cause, unless the columns were built.
    fn assert_has_columns(&self) {
        assert!(
            self.has_columns(),
            "the columns of this matrix were not built"
        );
    }
}

/// Bit `k` (of 16) set when any of the bits `4k..4k + 4` of `word` is: the
/// groups of four columns (a [`GROUP`]) that a word of columns has nonzeros in.
fn any_of_each_four(word: u64) -> u64 {
    const _: () = assert!(GROUP == 4, "groups of four columns");
    let any = word | word >> 1 | word >> 2 | word >> 3;
    // Bits 4k gathered, halving the gaps between them at each step.
    let x = any & 0x1111_1111_1111_1111;
    let x = (x | x >> 3) & 0x0303_0303_0303_0303;
    let x = (x | x >> 6) & 0x000f_000f_000f_000f;
    let x = (x | x >> 12) & 0x0000_00ff_0000_00ff;
    (x | x >> 24) & 0xffff
}

/// Words of a row's bits in [`SparseRows`]: a bit a column (one word at least,
/// so that a row without columns still has its place).
fn bit_words(cols: usize) -> usize {
    cols.div_ceil(64).max(1)
}

/// The words of bits stored as `bytes` (little-endian, whole words).
fn as_words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().expect("whole words")))
}

/// Blocks of depth of a product with a sparse operand whose inner dimension is
/// `k`: the dense GEMM's, so that the sums match its bits.
fn depth_blocks(k: usize) -> usize {
    k.div_ceil(depth_block(k)).max(1)
}

/// A sparse matrix's lines (rows or columns) in groups of [`GROUP`]: each group's
/// entries, the union of its lines' nonzeros' positions in order, split by blocks
/// of depth, and each line's value at every entry.
#[derive(Clone, Debug, Default)]
struct Groups {
    /// Group `g`'s entries in block `b` of `B` are `starts[g·B + b]..starts[g·B + b + 1]`.
    starts: Vec<usize>,
    /// The entries' positions in the lines.
    index: Vec<u32>,
    /// Entry `e`'s values, one for each line of its group: line `r`'s at `GROUP·e + r`.
    values: Vec<f32>,
}

impl Groups {
    /// Room for `starts` of `buckets` blocks of groups and for `entries` entries.
    fn reserve(&mut self, buckets: usize, entries: usize) {
        self.starts.reserve(buckets + 1);
        self.make_room(entries);
    }

    /// Buffers that hold `entries` entries (they only grow).
    fn make_room(&mut self, entries: usize) {
        self.index.resize(entries.max(self.index.len()), 0);
        let values = (GROUP * entries).max(self.values.len());
        self.values.resize(values, 0.0);
    }

    /// The entries `range`.
    fn entries(&self, range: std::ops::Range<usize>) -> GroupEntries<'_> {
        GroupEntries {
            values: &self.values[GROUP * range.start..GROUP * range.end],
            index: &self.index[range],
        }
    }

    /// Group `g`'s entries in its block of depth `block`, of `blocks`.
    fn block(&self, g: usize, blocks: usize, block: usize) -> GroupEntries<'_> {
        self.entries(self.starts[g * blocks + block]..self.starts[g * blocks + block + 1])
    }

    /// Group `g`'s entries in all its `blocks` blocks of depth.
    fn whole(&self, g: usize, blocks: usize) -> GroupEntries<'_> {
        self.entries(self.starts[g * blocks]..self.starts[(g + 1) * blocks])
    }

    /// Rows `first_row..` (the first of a group) of the product of these groups'
    /// lines with B into `c`, a group at a time, each by its `blocks` blocks of
    /// depth summed as the dense kernels sum them (also one without entries),
    /// then the bias and relu of `epilogue` after the last block.
    fn product_rows(
        &self,
        isa: Isa,
        (first_row, blocks): (usize, usize),
        (b, ldb): (&[f32], usize),
        c: &mut BlockMut<'_>,
        (bias, relu): (Option<&[f32]>, bool),
    ) {
        debug_assert_eq!(first_row % GROUP, 0, "a task starts a group");
        let cols = c.cols();
        for r in (0..c.rows()).step_by(GROUP) {
            let mut tile = c.tile_mut(r, 0, GROUP.min(c.rows() - r), cols);
            let g = (first_row + r) / GROUP;
            for block in 0..blocks {
                let last = block + 1 == blocks;
                let finish = RowFinish {
                    accumulate: block > 0,
                    bias: bias.filter(|_| last),
                    relu: relu && last,
                };
                let entries = self.block(g, blocks, block);
                sparse_group_product(isa, entries, b, ldb, &mut tile, finish);
            }
        }
    }
}

/// Panics unless the sparse operand `name` (`m × k`), B and C make a product, and
/// B's rows are contiguous, as the row kernel reads them.
fn assert_product_shapes(name: &str, (m, k): (usize, usize), b: MatRef<'_>, c: &MatMut<'_>) {
    let n = b.cols();
    assert!(
        b.rows() == k && c.rows() == m && c.cols() == n,
        "shapes do not agree: {name} {m}x{k}, B {}x{n}, C {}x{}",
        b.rows(),
        c.rows(),
        c.cols()
    );
    assert_eq!(b.col_stride(), 1, "B's rows must be contiguous");
}

/// `C = A·B`, then the epilogue, with A given by its nonzeros, on the best
/// instruction set of this machine: the dense [`gemm`](crate::gemm()) without the
/// products of A's zeros.
///
/// # Panics
/// When the shapes do not agree, B's rows are not contiguous (column stride 1),
/// or the epilogue is a relu mask.
pub fn sparse_gemm(a: &SparseRows, b: MatRef<'_>, c: MatMut<'_>, epilogue: Epilogue<'_>) {
    sparse_gemm_with(Isa::detected(), a, b, c, epilogue)
}

/// [`sparse_gemm`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// As [`sparse_gemm`], and when `isa` is not supported by this CPU.
pub fn sparse_gemm_with(
    isa: Isa,
    a: &SparseRows,
    b: MatRef<'_>,
    c: MatMut<'_>,
    epilogue: Epilogue<'_>,
) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_product_shapes("A", (m, k), b, &c);
    let (bias, relu) = match epilogue {
        Epilogue::None => (None, false),
        Epilogue::Bias(bias) => (Some(bias), false),
        Epilogue::BiasRelu(bias) => (Some(bias), true),
        Epilogue::ReluMask(_) => panic!("a sparse product has no relu-mask epilogue"),
    };
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "one bias per column of C");
    }
    let ldb = b.row_stride();
    // Rows `first_row..` of C's block of columns from `first_col`.
    let blocks = depth_blocks(k);
    let task = |first_row: usize, first_col: usize, mut block: BlockMut<'_>| {
        let b_cols = (&b.data()[first_col..], ldb);
        let epilogue = (bias.map(|bias| &bias[first_col..]), relu);
        let rows = (first_row, blocks);
        a.row_groups
            .product_rows(isa, rows, b_cols, &mut block, epilogue)
    };
    let c = ByCols(BlockMut::new(c));
    if !is_parallel(2 * a.nonzeros() * n) {
        let work = |t: usize, ByCols(block)| task(0, t * TASK_COLS, block);
        return for_each_chunk_in_order(c, TASK_COLS, work);
    }
    // Fewer blocks of columns than threads (512 outputs on more than 4 cores):
    // each block's rows are shared out too, so that every core has work. (Work in
    // parallel has columns and rows: neither count is 0 here.)
    let shares = rayon::current_num_threads().div_ceil(n.div_ceil(TASK_COLS));
    let share_rows = m.div_ceil(shares).next_multiple_of(GROUP);
    let work = |t: usize, ByCols(block)| match shares {
        1 => task(0, t * TASK_COLS, block),
        _ => {
            let rows = |s: usize, ByRows(rows)| task(s * share_rows, t * TASK_COLS, rows);
            for_each_chunk(ByRows(block), share_rows, &rows)
        }
    };
    for_each_chunk(c, TASK_COLS, &work)
}

/// `C = Aᵀ·B` with A given by its nonzeros (the weight gradient `Xᵀ·dH` of a
/// sparse input), on the best instruction set of this machine.
///
/// # Panics
/// When the shapes do not agree, B's rows are not contiguous, or A's columns were
/// not built ([`SparseRows::compress_rows_if_sparse`], or
/// [`SparseRows::compress_if_sparse`] of a dense matrix).
pub fn sparse_t_gemm(a: &SparseRows, b: MatRef<'_>, c: MatMut<'_>) {
    sparse_t_gemm_with(Isa::detected(), a, b, c)
}

/// [`sparse_t_gemm`] with a chosen instruction set (tests force each one).
///
/// # Panics
/// As [`sparse_t_gemm`], and when `isa` is not supported by this CPU.
pub fn sparse_t_gemm_with(isa: Isa, a: &SparseRows, b: MatRef<'_>, c: MatMut<'_>) {
    let (m, k, n) = (a.cols(), a.rows(), b.cols());
    assert_product_shapes("Aᵀ", (m, k), b, &c);
    assert!(a.has_columns(), "the columns of A were not built");
    let ldb = b.row_stride();
    let rows = |first_row: usize| (first_row, depth_blocks(k));
    let task = |first_row: usize, mut block: BlockMut<'_>| {
        let (b, epilogue) = ((b.data(), ldb), (None, false));
        a.col_groups
            .product_rows(isa, rows(first_row), b, &mut block, epilogue)
    };
    let work = |t: usize, ByRows(block)| task(t * TASK_ROWS, block);
    let c = ByRows(BlockMut::new(c));
    match is_parallel(2 * a.nonzeros() * n) {
        true => for_each_chunk(c, TASK_ROWS, &work),
        false => for_each_chunk_in_order(c, TASK_ROWS, work),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Each of a word's 16 groups of four bits gives one bit, set when any of its
    /// four is: on sparse and dense random words, and single bits.
    #[test]
    fn any_of_each_four_finds_the_groups_with_a_bit_set() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let singles = (0..64).map(|b| 1u64 << b);
        let random = (0..200).map(|t| {
            let density = [0.05, 0.3, 0.9][t % 3];
            (0..64).fold(0u64, |w, b| w | u64::from(rng.gen_bool(density)) << b)
        });
        for word in singles.chain(random).chain([0, u64::MAX]) {
            let expected = (0..16).fold(0, |g, k| g | u64::from(word >> (4 * k) & 0xf != 0) << k);
            assert_eq!(any_of_each_four(word), expected, "{word:#x}");
        }
    }
}
