//! GEMM microkernels, one per instruction set: AVX-512F and AVX2+FMA (the tiles of
//! `tiles`, compiled for each, in every height a GEMM asks for), and a portable one
//! on `wide`'s vectors for every other target.

#[cfg(target_arch = "x86_64")]
use super::tiles;
use crate::matrix::MatRef;
use crate::simd::{on_instruction_set, Isa, TileMut};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256, __m512};

pub const MAX_MR: usize = 12;
pub const MAX_NR: usize = 32;
/// The widest cache block of B of any kernel (`Microkernel::block_cols`).
pub const MAX_NC: usize = 512;

/// A's element (`i`, `p`) of a panel: `a[i·lda + p]` when `ROWS` (a row-major A
/// read in place), else `a[p·lda + i]` (a packed panel, or a transposed A).
///
/// # Safety
/// The element lies inside the allocation `a` points into (`assert_panels_fit`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn a_at<const ROWS: bool>(a: *const f32, lda: usize, i: usize, p: usize) -> f32 {
    // SAFETY: the caller's contract.
    unsafe { *a.add(if ROWS { i * lda + p } else { p * lda + i }) }
}

/// The `4 × 16` product on `wide`'s 8-lane vectors (NEON pairs on aarch64, SSE
/// pairs on baseline x86-64), in eight accumulators.
fn portable_4x16<const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    acc: &mut [f32],
) {
    use wide::f32x8;
    const MR: usize = 4;
    const NR: usize = 16;
    let lanes = |s: &[f32]| f32x8::from(<[f32; 8]>::try_from(s).expect("8 floats"));
    let mut lo = [f32x8::ZERO; MR];
    let mut hi = [f32x8::ZERO; MR];
    for p in 0..kc {
        let b_row = &b[p * ldb..p * ldb + NR];
        let (b0, b1) = (lanes(&b_row[..8]), lanes(&b_row[8..]));
        for i in 0..MR {
            let av = f32x8::splat(a[if ROWS { i * lda + p } else { p * lda + i }]);
            lo[i] = av.mul_add(b0, lo[i]);
            hi[i] = av.mul_add(b1, hi[i]);
        }
    }
    for (row, (l, h)) in acc[..MR * NR].chunks_exact_mut(NR).zip(lo.iter().zip(&hi)) {
        row[..8].copy_from_slice(&l.to_array());
        row[8..].copy_from_slice(&h.to_array());
    }
}

/// Checks that a panel of `mr × kc` floats of A (`mr` rows of `kc`, `lda` apart,
/// when `ROWS`, else `kc` columns of `mr`) and `kc` rows of `nr` floats of B,
/// `ldb` apart, lie inside `a` and `b`: the bounds the unsafe loads of the
/// kernels rely on.
#[cfg(target_arch = "x86_64")]
pub(super) fn assert_panels_fit<const ROWS: bool>(
    kc: usize,
    a: &[f32],
    lda: usize,
    mr: usize,
    b: &[f32],
    ldb: usize,
    nr: usize,
) {
    // `lines` lines of `width` floats, `ld` apart, from the start of `len` floats.
    let fits = |len: usize, lines: usize, ld: usize, width: usize| {
        (lines - 1)
            .checked_mul(ld)
            .and_then(|last| last.checked_add(width))
            .is_some_and(|end| end <= len)
    };
    let a_fits = match ROWS {
        true => fits(a.len(), mr, lda, kc),
        false => fits(a.len(), kc, lda, mr),
    };
    assert!(
        kc == 0 || (a_fits && fits(b.len(), kc, ldb, nr)),
        "panel of A or B too short"
    );
}

/// Defines `$name::<MR>()`, the kernel `MR` rows tall of one x86 instruction set:
/// the tiles of `tiles` compiled for its vector type under its target features,
/// with its cache block of B and whether it reads B in place.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_kernel {
    ($name:ident, $vector:ty, $features:literal, $b_block_floats:expr, $b_in_place_stride:expr) => {
        fn $name<const MR: usize>() -> Microkernel {
            #[target_feature(enable = $features)]
            fn run<const MR: usize, const ROWS: bool>(
                kc: usize,
                a: &[f32],
                lda: usize,
                b: &[f32],
                ldb: usize,
                acc: &mut [f32],
            ) {
                // SAFETY: this function is compiled for, and runs only on, `$features`.
                unsafe { tiles::run::<$vector, MR, ROWS>(kc, a, lda, b, ldb, acc) }
            }

            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            fn into<const MR: usize, const ROWS: bool>(
                kc: usize,
                a: &[f32],
                lda: usize,
                b: &[f32],
                ldb: usize,
                strip_stride: usize,
                c: TileMut<'_>,
                epilogue: TileEpilogue<'_>,
            ) {
                // SAFETY: as in `run`.
                unsafe {
                    tiles::into::<$vector, MR, ROWS>(kc, a, lda, b, ldb, strip_stride, c, epilogue)
                }
            }

            fn kernels<const MR: usize, const ROWS: bool>() -> Kernels {
                Kernels {
                    // SAFETY: these kernels are reached only through `Isa::kernel_for`,
                    // which asserts that the CPU supports `$features`.
                    run: |kc, a, lda, b, ldb, acc| unsafe {
                        run::<MR, ROWS>(kc, a, lda, b, ldb, acc)
                    },
                    // SAFETY: as above.
                    into: Some(|kc, a, lda, b, ldb, strip_stride, c, epilogue| unsafe {
                        into::<MR, ROWS>(kc, a, lda, b, ldb, strip_stride, c, epilogue)
                    }),
                }
            }

            Microkernel {
                mr: MR,
                nr: 2 * <$vector as tiles::Vector>::LANES,
                b_block_floats: $b_block_floats,
                b_in_place_stride: $b_in_place_stride,
                columns: kernels::<MR, false>(),
                rows: kernels::<MR, true>(),
            }
        }
    };
}

// Zen 4's 1 MiB of L2 holds a block of 400 × 512, and strips read in place.
#[cfg(target_arch = "x86_64")]
tile_kernel!(
    avx512_kernel,
    __m512,
    "avx512f,fma",
    400 * MAX_NC,
    usize::MAX
);
// A quarter of Zen 3's 512 KiB of L2. Strips read in place at the weights' 2 KiB
// row stride left L2 (and L1) thrashing there (0.6x the speed), but a narrow B
// (a convolution's 32 or 64 filters' gradient, rows of 256 B at most) read in
// place made the convnet's backward passes 11-35% faster than packing it per chunk.
#[cfg(target_arch = "x86_64")]
tile_kernel!(avx2_kernel, __m256, "avx2,fma", 64 * 1024, 64);

/// The microkernel of `isa` for a GEMM of `m` rows. A GEMM of at most 12 rows (a
/// thin output computed transposed, a handful of samples) gets tiles that divide
/// `m` rather than 8 or 6 rows partly padding: exactly `m` rows tall on AVX-512;
/// on AVX2, whose 16 registers hold at most 6 rows of accumulators, the tallest
/// that divides `m` (5 for 10), where one does. The portable kernel has one height.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn for_rows(isa: Isa, m: usize) -> Microkernel {
    let exact = on_instruction_set!(isa;
        avx512 => match m {
            1 => Some(avx512_kernel::<1>()),
            2 => Some(avx512_kernel::<2>()),
            3 => Some(avx512_kernel::<3>()),
            4 => Some(avx512_kernel::<4>()),
            5 => Some(avx512_kernel::<5>()),
            6 => Some(avx512_kernel::<6>()),
            7 => Some(avx512_kernel::<7>()),
            9 => Some(avx512_kernel::<9>()),
            10 => Some(avx512_kernel::<10>()),
            11 => Some(avx512_kernel::<11>()),
            12 => Some(avx512_kernel::<12>()),
            _ => None,
        };
        avx2 => match m {
            1 => Some(avx2_kernel::<1>()),
            2 => Some(avx2_kernel::<2>()),
            3 | 9 => Some(avx2_kernel::<3>()),
            4 | 8 => Some(avx2_kernel::<4>()),
            5 | 10 => Some(avx2_kernel::<5>()),
            _ => None,
        };
        _ => None
    );
    exact.unwrap_or_else(|| table(isa))
}

fn table(isa: Isa) -> Microkernel {
    on_instruction_set!(isa;
        avx512 => avx512_kernel::<8>();
        avx2 => avx2_kernel::<6>();
        _ => Microkernel {
            mr: 4,
            nr: 16,
            b_block_floats: 64 * 1024,
            b_in_place_stride: 0,
            columns: Kernels {
                run: portable_4x16::<false>,
                into: None,
            },
            rows: Kernels {
                run: portable_4x16::<true>,
                into: None,
            },
        }
    )
}

impl Isa {
    /// The microkernel of this instruction set for a GEMM of `m` rows.
    pub(crate) fn kernel_for(self, m: usize) -> Microkernel {
        assert!(
            self.is_supported(),
            "{} is not supported on this CPU",
            self.name()
        );
        for_rows(self, m)
    }
}

/// A register-blocked `MR × NR` microkernel, in one version for each layout of A's panel.
#[derive(Clone, Copy)]
pub(crate) struct Microkernel {
    pub mr: usize,
    pub nr: usize,
    /// Floats of a cache block of B (depth × columns) that stay in L2 beside A.
    pub b_block_floats: usize,
    /// The largest row stride (in floats) of a row-major B that is read in
    /// place, where its block stays in L2, rather than packed.
    pub b_in_place_stride: usize,
    columns: Kernels,
    rows: Kernels,
}

impl Microkernel {
    /// Whether it reads `b` in place (where its block stays in L2): row-major,
    /// whole strips, rows close enough.
    pub fn reads_b_in_place(&self, b: MatRef<'_>) -> bool {
        b.col_stride() == 1
            && b.cols().is_multiple_of(self.nr)
            && b.row_stride() <= self.b_in_place_stride
    }

    /// Columns of B per cache block of depth `kc`: whole strips, at most
    /// [`MAX_NC`], in `b_block_floats`.
    pub fn block_cols(&self, kc: usize) -> usize {
        (self.b_block_floats / kc.max(1) / self.nr * self.nr).clamp(self.nr, MAX_NC)
    }

    /// The kernels that read A's panel laid out as `layout`.
    pub fn for_layout(&self, layout: PanelLayout) -> Kernels {
        match layout {
            PanelLayout::Columns => self.columns,
            PanelLayout::Rows => self.rows,
        }
    }
}

/// How a panel of `MR` rows and `kc` columns of A lies in memory, `lda` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanelLayout {
    /// Column by column, element (i, p) at `a[p·lda + i]`: a packed panel
    /// (`lda = MR`), or a transposed A read in place.
    Columns,
    /// Row by row, element (i, p) at `a[i·lda + p]`: a row-major A read in place.
    Rows,
}

/// A microkernel for one layout of A:
/// `acc[i·NR + j] = Σ_p A(i, p) · b[p·ldb + j]` over `kc` steps, with A's panel
/// laid out as the kernel's [`PanelLayout`] says and `kc` rows of `NR` floats of
/// B, `ldb` apart (`NR` when B is packed).
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub run: RunKernel,
    /// The products with a row of strips of B, `strip_stride` floats apart,
    /// written into a row of full `MR × NR` tiles of C with the epilogue applied in
    /// registers, where the instruction set has it.
    pub into: Option<IntoTiles>,
}

/// A microkernel that writes its product into an `MR × NR` array.
pub(crate) type RunKernel =
    fn(kc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, acc: &mut [f32]);

/// A microkernel that writes its products with `c.cols / NR` strips of B into a
/// row of full tiles of C, epilogue applied.
pub(crate) type IntoTiles = fn(
    kc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    strip_stride: usize,
    c: TileMut<'_>,
    epilogue: TileEpilogue<'_>,
);

/// The epilogue as a row of tiles sees it: slices start at its first column (and row).
/// Only the x86 kernels store tiles themselves, hence read it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(crate) enum TileEpilogue<'a> {
    None,
    Bias(&'a [f32]),
    BiasRelu(&'a [f32]),
    ReluMask { mask: &'a [f32], row_stride: usize },
}
