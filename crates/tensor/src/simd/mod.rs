//! The instruction-set layer: run-time CPU detection and the GEMM microkernels.
//! Every `unsafe` block of kerno-tensor lives in this module.

use std::sync::OnceLock;

mod block;
mod microkernel;
mod peak;
mod thin;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tiles;

pub(crate) use block::{BlockMut, TileMut};
pub use microkernel::{MAX_MR, MAX_NC, MAX_NR};
pub use peak::fma_peak_gflops;
pub(crate) use thin::{has_thin_loop, thin_dots, transpose_thin, MAX_THIN_N, THIN_STEP};

/// Asks the CPU to start loading every cache line of `data` into L1: for copies
/// that read rows far apart (packing the weights, gathering a batch), whose next
/// rows the hardware prefetcher does not fetch in time. A hint only: no effect on
/// any result.
#[inline]
pub(crate) fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: a prefetch reads nothing the program sees and cannot fault;
            // SSE, which it needs, is part of every x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// An instruction set kerno has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 with AVX-512F (and FMA).
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// Any target: `wide`'s portable vectors (NEON on aarch64, SSE2 on x86-64).
    Portable,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Portable => "portable",
        }
    }

    /// Whether this machine can run the instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this machine can run, best first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// The best instruction set of this machine, detected once.
    pub fn detected() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }

    /// The microkernel of this instruction set for a GEMM of `m` rows.
    pub(crate) fn kernel_for(self, m: usize) -> Microkernel {
        assert!(
            self.is_supported(),
            "{} is not supported on this CPU",
            self.name()
        );
        microkernel::for_rows(self, m)
    }
}

/// A register-blocked `MR × NR` microkernel, in one version for each layout of A's panel.
#[derive(Clone, Copy)]
pub(crate) struct Microkernel {
    pub mr: usize,
    pub nr: usize,
    /// Floats of a cache block of B (depth × columns) that stay in L2 beside A.
    pub b_block_floats: usize,
    /// Whether a row-major B whose block stays in L2 is read in place rather
    /// than packed.
    pub b_in_place: bool,
    columns: Kernels,
    rows: Kernels,
}

impl Microkernel {
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

/// `pub(crate) fn $name(isa, args)`: the loop `$body` compiled for AVX-512F, for
/// AVX2 and FMA, and for the build's baseline, run with the one `isa` names.
macro_rules! per_instruction_set {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
        per_instruction_set! { $(#[$doc])* $name($($arg: $ty),*) -> () => $body }
    };
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $body:ident) => {
        $(#[$doc])*
        #[allow(clippy::unused_unit)] // `-> ()` for the loops that return nothing.
        pub(crate) fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            assert!(isa.is_supported(), "{} is not supported here", isa.name());
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU supports AVX-512F, checked just above.
                Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                Isa::Avx2Fma => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
/// The one way a kernel written as safe code picks its instruction set at run
/// time (the GEMM's register tiles and the sparse products, written with
/// intrinsics, match on `isa` in their own modules).
pub(crate) use per_instruction_set;
