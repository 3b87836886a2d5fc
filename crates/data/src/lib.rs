//! kerno-data: dataset readers (IDX raw or gzip, Keras' `mnist.npz`), MNIST
//! discovery and download, the seeded order in which samples are batched, and a
//! person's own digit pictures prepared as MNIST's were.
//!
//! Every malformed file is a [`DataError`] that names the file and what is wrong
//! with it; nothing here panics on input, and no header can make it allocate
//! more than the data that is really there.

#![forbid(unsafe_code)]

mod atomic;
mod batches;
mod dataset;
mod digit_image;
mod discover;
#[cfg(feature = "download")]
pub mod download;
mod error;
pub mod idx;
pub mod npz;

pub use atomic::{check_writable, write_atomically};
pub use batches::EpochOrder;
pub use dataset::{to_categorical, Dataset, Images, Split};
pub use digit_image::{
    prepare_digit, read_digit, DIGIT_SIDE, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE,
};
pub use discover::{cache_dir, load, load_dir, load_npz, DatasetKind, IDX_FILES};
pub use error::{DataError, Malformation};

/// The most bytes a single array may declare (1 GiB); more is refused before reading.
pub const MAX_ARRAY_BYTES: u64 = 1 << 30;
