//! Test support shared by kerno's crates (never a dependency of the library itself):
//! builders of dataset files, an allocator that measures what a piece of code
//! allocates, and a structured fuzzer with the targets that it and the
//! coverage-guided fuzzers in `fuzz/` run.

pub mod alloc;
pub mod architecture;
pub mod campaign;
pub mod files;
pub mod mutate;
pub mod targets;
