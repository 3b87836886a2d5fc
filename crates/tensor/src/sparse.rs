//! Products with a matrix that is mostly zeros, by its nonzeros alone: four fifths
//! of MNIST's pixels are 0, so the first layer's two GEMMs (`X·W₁` and `Xᵀ·dH`)
//! need a fifth of their multiply-adds. Each output is summed in the order of the
//! dense GEMM's tiles (the same blocks of depth, each a chain of FMAs from zero),
//! so the results are its bits wherever it takes its tiles (outputs over 12 wide;
//! its dot-product path for thinner ones sums otherwise), zeros being skipped where
//! the tiles add `0·b`: only the sign of a zero sum, or a zero times an infinite
//! `b`, can differ.

use crate::gemm::{depth_block, is_parallel, Epilogue};
use crate::matrix::{MatMut, MatRef};
use crate::parallel::{for_each_chunk, for_each_chunk_in_order, ByCols, ByRows};
use crate::simd::{
    flush_subnormals, is_exact_divisor, keep_nonzero_bytes, keep_nonzeros, sparse_row_product,
    BlockMut, Isa, RowFinish, KEEP_SLACK,
};

/// Density (nonzeros over all entries) up to which the sparse products, their
/// compression included, beat the dense GEMMs: on MNIST-like batches of 128 they
/// broke even near 0.31 on one thread and 0.36 on two on Zen 3 (AVX2), near 0.30
/// on two threads and between 0.31 and 0.40 on one on an AVX-512 Xeon.
pub const SPARSE_DENSITY_LIMIT: f64 = 0.3;
/// Columns of C per task of [`sparse_gemm`]: B's block of them stays in L2 while
/// every row of A reads it (its rows shared out too when threads outnumber blocks).
const TASK_COLS: usize = 128;
/// Rows of C per task of [`sparse_t_gemm`].
const TASK_ROWS: usize = 16;

/// A matrix's nonzeros, by rows and by columns, each list in order: built from a
/// dense matrix by [`compress`](Self::compress), its buffers reused from call to call.
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
    /// Column `j`'s entries, as the rows' (its blocks of depth by [`depth_blocks`] of `rows`).
    col_starts: Vec<usize>,
    col_rows: Vec<u32>,
    col_values: Vec<f32>,
    /// Where the next entry of each column's block goes, while building.
    col_ends: Vec<usize>,
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
        let grow = |v: &mut Vec<u32>| v.resize(slots.max(v.len()), 0);
        grow(&mut self.row_cols);
        grow(&mut self.col_rows);
        self.row_values
            .resize(slots.max(self.row_values.len()), 0.0);
        self.col_values
            .resize(slots.max(self.col_values.len()), 0.0);
        let (row_blocks, col_blocks) = (depth_blocks(cols), depth_blocks(rows));
        self.row_starts.reserve(rows * row_blocks + 1);
        self.col_starts.reserve(cols * col_blocks + 1);
        self.col_ends.reserve(cols * col_blocks);
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
            sparse.compress_rows((rows, cols), most, |i, positions, out| {
                let bytes = row(i);
                assert_eq!(bytes.len(), cols, "row {i} is not {cols} bytes");
                keep_nonzero_bytes(isa, bytes, divisor, positions, out)
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
        let sparse = self.compress_rows(shape, most, |i, positions, out| {
            let values = match a.col_stride() {
                1 => &a.data()[i * a.row_stride()..][..a.cols()],
                _ => {
                    strided_row.clear();
                    strided_row.extend((0..a.cols()).map(|j| a.get(i, j)));
                    &strided_row[..]
                }
            };
            keep_nonzeros(isa, values, positions, out)
        });
        self.strided_row = strided_row;
        sparse
    }

    /// The entries by rows, `keep_row(i, positions, values)` writing row `i`'s and
    /// saying how many; false, with only the first rows done, as soon as they
    /// number more than `most` (the buffers hold `most` and a row). The columns
    /// of the matrix before are dropped: they are not this one's.
    fn compress_rows(
        &mut self,
        (rows, cols): (usize, usize),
        most: usize,
        mut keep_row: impl FnMut(usize, &mut [u32], &mut [f32]) -> usize,
    ) -> bool {
        assert!(
            u32::try_from(rows.max(cols)).is_ok(),
            "a sparse matrix has at most u32::MAX rows and columns"
        );
        (self.rows, self.cols) = (rows, cols);
        self.col_starts.clear();
        let depth = depth_block(cols);
        self.row_starts.clear();
        self.row_starts.push(0);
        let mut end = 0;
        for i in 0..rows {
            let (positions, out) = (&mut self.row_cols[end..], &mut self.row_values[end..]);
            let kept = keep_row(i, positions, out);
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
        true
    }

    /// The entries by columns, from those by rows (what
    /// [`compress_if_sparse`](Self::compress_if_sparse) adds to
    /// [`compress_rows_if_sparse`](Self::compress_rows_if_sparse)), unless they
    /// are built: a counting sort by column and block of depth, which keeps each
    /// column's rows in order.
    pub fn build_columns(&mut self) {
        if self.has_columns() {
            return;
        }
        match depth_blocks(self.rows) {
            // One block (batches up to 400 rows): the bucket is the column alone.
            1 => self.sort_into_columns(1, |j, _| j as usize),
            blocks => self.sort_into_columns(blocks, |j, block| j as usize * blocks + block),
        }
    }

    /// [`build_columns`](Self::build_columns) with `bucket(column, block of the row)`
    /// for each column's `blocks` blocks of depth.
    fn sort_into_columns(&mut self, blocks: usize, bucket: impl Fn(u32, usize) -> usize) {
        let (entries, row_blocks) = (self.nonzeros(), depth_blocks(self.cols));
        let (depth, buckets) = (depth_block(self.rows), self.cols * blocks);
        // Plain slices (the Vecs resliced below too): through `self` each store
        // would make the compiler reload every buffer's address and length.
        let Self {
            rows,
            row_starts,
            col_starts,
            col_ends,
            ..
        } = self;
        let (row_cols, row_values) = (&self.row_cols[..entries], &self.row_values[..entries]);
        let (col_rows, col_values) = (
            &mut self.col_rows[..entries],
            &mut self.col_values[..entries],
        );
        let row = |i: usize| row_starts[i * row_blocks]..row_starts[(i + 1) * row_blocks];
        col_starts.clear();
        col_starts.resize(buckets + 1, 0);
        let col_starts = &mut col_starts[..];
        for i in 0..*rows {
            let block = i / depth;
            for &j in &row_cols[row(i)] {
                col_starts[bucket(j, block) + 1] += 1;
            }
        }
        for at in 0..buckets {
            col_starts[at + 1] += col_starts[at];
        }
        col_ends.clear();
        col_ends.extend_from_slice(&col_starts[..buckets]);
        let col_ends = &mut col_ends[..];
        for i in 0..*rows {
            let block = i / depth;
            for (&j, &v) in row_cols[row(i)].iter().zip(&row_values[row(i)]) {
                // The count bumped before the stores: bumped after them, it was
                // reloaded from memory (compressing an MNIST batch: 125 -> 73 µs).
                let slot = col_ends[bucket(j, block)];
                col_ends[bucket(j, block)] = slot + 1;
                col_rows[slot] = i as u32;
                col_values[slot] = v;
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

    /// Nonzeros over all entries (0 for an empty matrix).
    pub fn density(&self) -> f64 {
        self.nonzeros() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Row `i`'s nonzeros: their column indices, in order, and values.
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        self.row_blocks(i).whole()
    }

    /// Column `j`'s nonzeros: their row indices, in order, and values.
    ///
    /// # Panics
    /// When the columns were not built ([`compress_rows_if_sparse`](Self::compress_rows_if_sparse)).
    pub fn col(&self, j: usize) -> (&[u32], &[f32]) {
        self.assert_has_columns();
        self.col_blocks(j).whole()
    }

    /// Whether each column has no nonzero, in order of the columns.
    ///
    /// # Panics
    /// As [`col`](Self::col).
    pub fn empty_columns(&self) -> impl Iterator<Item = bool> + '_ {
        self.assert_has_columns();
        let blocks = depth_blocks(self.rows);
        let starts = &self.col_starts;
        (0..self.cols).map(move |j| starts[j * blocks] == starts[(j + 1) * blocks])
    }

    /// Whether the entries by columns are this matrix's.
    pub fn has_columns(&self) -> bool {
        self.col_starts.len() == self.cols * depth_blocks(self.rows) + 1
    }

    /// Panics, naming the cause, unless the columns were built.
    fn assert_has_columns(&self) {
        assert!(
            self.has_columns(),
            "the columns of this matrix were not built"
        );
    }

    /// Row `i`'s nonzeros by blocks of depth.
    fn row_blocks(&self, i: usize) -> Blocks<'_> {
        let entries = (&self.row_cols[..], &self.row_values[..]);
        Blocks::nth(&self.row_starts, i, depth_blocks(self.cols), entries)
    }

    /// Column `j`'s nonzeros by blocks of depth.
    fn col_blocks(&self, j: usize) -> Blocks<'_> {
        let entries = (&self.col_rows[..], &self.col_values[..]);
        Blocks::nth(&self.col_starts, j, depth_blocks(self.rows), entries)
    }
}

/// Blocks of depth of a product with a sparse operand whose inner dimension is
/// `k`: the dense GEMM's, so that the sums match its bits.
fn depth_blocks(k: usize) -> usize {
    k.div_ceil(depth_block(k)).max(1)
}

/// One row's (or column's) nonzeros, split by blocks of depth.
#[derive(Clone, Copy)]
struct Blocks<'a> {
    /// Where each block starts in `index` and `value`, then where the last ends.
    starts: &'a [usize],
    index: &'a [u32],
    value: &'a [f32],
}

impl<'a> Blocks<'a> {
    /// Line `i`'s `blocks` blocks, of lines whose blocks start at `starts`.
    fn nth(starts: &'a [usize], i: usize, blocks: usize, entries: (&'a [u32], &'a [f32])) -> Self {
        let starts = &starts[i * blocks..=(i + 1) * blocks];
        let (index, value) = entries;
        Self {
            starts,
            index,
            value,
        }
    }

    fn count(&self) -> usize {
        self.starts.len() - 1
    }

    fn block(&self, b: usize) -> (&'a [u32], &'a [f32]) {
        let range = self.starts[b]..self.starts[b + 1];
        (&self.index[range.clone()], &self.value[range])
    }

    fn whole(&self) -> (&'a [u32], &'a [f32]) {
        let range = self.starts[0]..self.starts[self.count()];
        (&self.index[range.clone()], &self.value[range])
    }
}

/// One row of a product with a sparse matrix: the row's entries (column
/// indices, in order, and values, by blocks of depth) times the rows of B they
/// name, each block summed as the dense kernels sum it (also one without
/// entries), then the bias and relu of `epilogue` after the last block.
fn row_by_depth_blocks(
    isa: Isa,
    entries: Blocks<'_>,
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    (bias, relu): (Option<&[f32]>, bool),
) {
    let blocks = entries.count();
    for block in 0..blocks {
        let last = block + 1 == blocks;
        let finish = RowFinish {
            accumulate: block > 0,
            bias: bias.filter(|_| last),
            relu: relu && last,
        };
        let (index, value) = entries.block(block);
        sparse_row_product(isa, index, value, b, ldb, out, finish);
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
    let task = |first_row: usize, first_col: usize, mut block: BlockMut<'_>| {
        let cols = block.cols();
        let b_cols = &b.data()[first_col..];
        let epilogue = (bias.map(|bias| &bias[first_col..]), relu);
        flush_subnormals(|| {
            for r in 0..block.rows() {
                let (entries, out) = (a.row_blocks(first_row + r), &mut block.row_mut(r)[..cols]);
                row_by_depth_blocks(isa, entries, b_cols, ldb, out, epilogue);
            }
        })
    };
    let c = ByCols(BlockMut::new(c));
    if !is_parallel(2 * a.nonzeros() * n) {
        let work = |t: usize, ByCols(block)| task(0, t * TASK_COLS, block);
        return for_each_chunk_in_order(c, TASK_COLS, work);
    }
    // Fewer blocks of columns than threads (512 outputs on more than 4 cores):
    // each block's rows are shared out too, so that every core has work. (Work in
    // parallel has columns and rows: neither count is 0 here.)
    let groups = rayon::current_num_threads().div_ceil(n.div_ceil(TASK_COLS));
    let group_rows = m.div_ceil(groups);
    let work = |t: usize, ByCols(block)| match groups {
        1 => task(0, t * TASK_COLS, block),
        _ => {
            let rows = |g: usize, ByRows(rows)| task(g * group_rows, t * TASK_COLS, rows);
            for_each_chunk(ByRows(block), group_rows, &rows)
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
    let task = |first_row: usize, mut block: BlockMut<'_>| {
        flush_subnormals(|| {
            for r in 0..block.rows() {
                let (entries, out) = (a.col_blocks(first_row + r), &mut block.row_mut(r)[..n]);
                row_by_depth_blocks(isa, entries, b.data(), ldb, out, (None, false));
            }
        })
    };
    let work = |t: usize, ByRows(block)| task(t * TASK_ROWS, block);
    let c = ByRows(BlockMut::new(c));
    match is_parallel(2 * a.nonzeros() * n) {
        true => for_each_chunk(c, TASK_ROWS, &work),
        false => for_each_chunk_in_order(c, TASK_ROWS, work),
    }
}
