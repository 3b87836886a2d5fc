//! The instruction-set layer the kernel families share: run-time CPU
//! detection (`Isa`), the one way a kernel runs the variant of its instruction
//! set (`on_instruction_set!`, which `per_instruction_set!` uses to compile a
//! loop written as safe code for each), the blocks of C the
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
            // With AVX2 too, which every AVX-512 CPU has: the AVX-512 kernels' helpers use it.
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
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

/// Runs the variant of a kernel for `isa`, the one way every kernel picks its
/// instruction set at run time:
/// `on_instruction_set!(isa; avx512 => a(..); avx2 => b(..); _ => portable(..))`.
/// It asserts that this CPU supports `isa`, then evaluates the arm for it
/// inside an `unsafe` block, so an arm may call its instruction set's
/// `#[target_feature]` function: the instruction set is what such a call needs,
/// and any other precondition of it the caller asserts before. An instruction
/// set without an arm of its own takes the `_` arm; on other architectures
/// only `_` is compiled.
macro_rules! on_instruction_set {
    ($isa:expr; $(avx512 => $avx512:expr;)? $(avx2 => $avx2:expr;)? _ => $other:expr $(;)?) => {{
        let isa: $crate::simd::Isa = $isa;
        assert!(isa.is_supported(), "{} is not supported on this CPU", isa.name());
        match isa {
            $(
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx512 => {
                    #[allow(unused_unsafe)]
                    // SAFETY: the CPU supports AVX-512F, AVX2 and FMA, asserted above.
                    let result = unsafe { $avx512 };
                    result
                }
            )?
            $(
                #[cfg(target_arch = "x86_64")]
                $crate::simd::Isa::Avx2Fma => {
                    #[allow(unused_unsafe)]
                    // SAFETY: the CPU supports AVX2 and FMA, asserted above.
                    let result = unsafe { $avx2 };
                    result
                }
            )?
            _ => $other,
        }
    }};
}
pub(crate) use on_instruction_set;

/// `pub(crate) fn $name(isa, args)`: the loop `$body` compiled for AVX-512F, for
/// AVX2 and FMA, and for the build's baseline, run with the one `isa` names
/// (through [`on_instruction_set!`]).
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
            $crate::simd::on_instruction_set!(isa;
                avx512 => avx512($($arg),*);
                avx2 => avx2($($arg),*);
                _ => $body($($arg),*)
            )
        }
    };
}
/// A loop written as safe code, compiled for each instruction set.
pub(crate) use per_instruction_set;
