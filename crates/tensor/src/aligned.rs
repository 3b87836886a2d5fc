//! A buffer of floats whose first element starts a cache line.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// Bytes in a cache line (x86-64, and most aarch64 cores).
const LINE: usize = 64;
const FLOATS_PER_LINE: usize = LINE / size_of::<f32>();

/// Floats like a `Vec<f32>`, but whose first element starts a 64-byte cache line
/// (the allocator only promises 16 bytes). A matrix whose rows are whole lines
/// then splits between threads on line boundaries: no line is written by two
/// cores (false sharing), and full-width SIMD loads never straddle two lines.
#[derive(Default)]
pub struct AlignedBuf {
    storage: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer, allocating nothing (for `const` thread-local buffers).
    pub const fn new() -> Self {
        Self {
            storage: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let storage = vec![0.0; len + FLOATS_PER_LINE - 1];
        // The floats skipped to reach the next line boundary (the address is a
        // multiple of 4, so a whole number of floats).
        let start = storage.as_ptr().align_offset(LINE);
        assert!(start < FLOATS_PER_LINE, "floats are 4-byte aligned");
        Self {
            storage,
            start,
            len,
        }
    }

    /// The first `len` floats, in a new buffer of `len` zeros when this one is
    /// shorter (a thread's packing buffer, reused from call to call).
    pub(crate) fn grow(&mut self, len: usize) -> &mut [f32] {
        if self.len < len {
            *self = Self::zeros(len);
        }
        &mut self[..len]
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut buf = Self::zeros(values.len());
        buf.copy_from_slice(values);
        buf
    }
}

impl Clone for AlignedBuf {
    /// A copy in a buffer of its own, aligned anew.
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// The values copied into a buffer that starts a cache line.
impl From<Vec<f32>> for AlignedBuf {
    fn from(values: Vec<f32>) -> Self {
        Self::from_slice(&values)
    }
}

/// Collected, then copied into a buffer that starts a cache line (weights at
/// initialisation, not a training step).
impl FromIterator<f32> for AlignedBuf {
    fn from_iter<I: IntoIterator<Item = f32>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<f32>>().into()
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_a_cache_line_and_holds_its_values() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let values: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let buf = AlignedBuf::from_slice(&values);
            assert_eq!(buf.as_ptr() as usize % LINE, 0, "{len} floats");
            assert_eq!(&*buf, &values[..]);
            let copy = buf.clone();
            assert_eq!(copy.as_ptr() as usize % LINE, 0, "a clone of {len} floats");
            assert_eq!(copy, buf);
        }
    }

    #[test]
    fn grows_into_a_new_line_aligned_buffer_and_then_reuses_it() {
        let mut buf = AlignedBuf::new();
        assert!(buf.grow(0).is_empty());
        let first = buf.grow(1000);
        assert_eq!((first.len(), first.as_ptr() as usize % LINE), (1000, 0));
        first[999] = 1.0;
        let reused = buf.grow(17).as_ptr();
        assert_eq!(reused, buf.as_ptr(), "a shorter request reuses the buffer");
        assert_eq!(buf.grow(1000)[999], 1.0, "and keeps its values");
        let grown = buf.grow(5000);
        assert_eq!((grown.len(), grown.as_ptr() as usize % LINE), (5000, 0));
    }
}
