//! The instruction-set layer the kernel families share: run-time CPU
//! detection (`Isa`), the one macro that compiles a loop written as safe code
//! for each instruction set (`per_instruction_set!`), the blocks of C the
//! kernels write, prefetching and the FMA peak. Each family's own intrinsics
//! live in its folder (`gemm/microkernel.rs`, `gemm/tiles.rs`,
//! `gemm/thin_dots.rs`, `sparse/compress.rs`, `sparse/group_product.rs`).

use std::sync::OnceLock;

mod block;
mod peak;

pub(crate) use block::{BlockMut, TileMut};
pub use peak::fma_peak_gflops;

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
