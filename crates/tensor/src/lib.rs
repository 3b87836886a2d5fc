//! kerno-tensor: tensors, strided matrix views and every numeric kernel kerno runs.
//!
//! The training path of a dense network is a handful of kernels: a GEMM with a
//! fused epilogue ([`gemm()`]), element-wise activations ([`activation`]), the fused
//! softmax + cross-entropy ([`loss::softmax_xent_fwd_bwd`]) and the optimizer
//! updates ([`optim`]). Each has a plain f64 twin in [`reference`](mod@reference)
//! that the tests compare against.

// `unsafe` lives only where the intrinsics do (`simd`, and each family's
// instruction-set variants, allowed module by module), each block with its SAFETY line.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod activation;
mod aligned;
pub mod bf16;
pub mod conv;
pub mod dropout;
// Element-wise loops, each compiled per instruction set (`simd::per_instruction_set`).
#[allow(unsafe_code)]
mod elementwise;
pub mod gemm;
pub mod loss;
mod matrix;
pub mod optim;
mod parallel;
pub mod pool;
pub mod profile;
pub mod reference;
mod samples;
#[allow(unsafe_code)]
mod simd;
pub mod sparse;
mod tensor;

pub use activation::Activation;
pub use aligned::AlignedBuf;
pub use gemm::{
    gemm, gemm_column_sums, gemm_column_sums_with, gemm_with, reserve_packing_buffers, Epilogue,
};
pub use matrix::{MatMut, MatRef};
pub use parallel::{join_awake, with_workers_awake};
pub use samples::{Samples, ScaledBytes};
pub use simd::{fma_peak_gflops, Isa};
pub use sparse::{sparse_gemm, sparse_t_gemm, SparseRows};
pub use tensor::{all_finite, all_finite_with, ShapeError, Tensor};
