//! Structured mutations of valid files: the changes that break parsers (lying
//! length fields, cut files, flipped bits, numbers in text headers made huge).

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Values that sit on the edges of 32- and 64-bit length and count fields.
const INTERESTING_U32: [u32; 10] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    60_000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];
const INTERESTING_U64: [u64; 6] = [0, 1, 1 << 32, 1 << 40, i64::MAX as u64, u64::MAX];
/// Replacements for a run of digits in a text header (JSON, numpy's dict).
const NUMBERS: [&str; 8] = [
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999",
    "1e400",
    "NaN",
    "",
];
/// Characters that change the structure of JSON and Python literals.
const STRUCTURE: &[u8] = b"\"'{}[](),:\\ \n\x00";

/// A mutation that knows a format: it edits the structure of a valid input and
/// keeps what frames it (lengths, checksums) consistent; `None` when the input
/// is not of its format.
pub type StructuredMutation = fn(&mut ChaCha8Rng, &[u8]) -> Option<Vec<u8>>;

/// Makes inputs from seeds, reproducibly from its generator.
pub struct Mutator {
    rng: ChaCha8Rng,
    max_len: usize,
    structured: Option<StructuredMutation>,
}

impl Mutator {
    pub fn new(rng: ChaCha8Rng, max_len: usize) -> Self {
        Self {
            rng,
            max_len,
            structured: None,
        }
    }

    /// Makes half of the inputs with `mutation` (a fifth of those with a byte
    /// mutation on top), the other half as [`Mutator::next_input`] says.
    pub fn with_structured(mut self, mutation: StructuredMutation) -> Self {
        self.structured = Some(mutation);
        self
    }

    /// One input: mostly a seed with one to four mutations stacked on it; now and
    /// then random bytes, alone or behind a seed's first bytes (its magic).
    pub fn next_input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let seed = seeds.choose(&mut self.rng).cloned().unwrap_or_default();
        if let Some(mutation) = self.structured.filter(|_| self.rng.gen()) {
            if let Some(mut input) = mutation(&mut self.rng, &seed) {
                if self.rng.gen_range(0..5) == 0 {
                    self.mutate(&mut input);
                }
                input.truncate(self.max_len);
                return input;
            }
        }
        let mut input = match self.rng.gen_range(0..20) {
            0 => self.random_bytes(),
            1 => {
                let keep = seed.len().min(self.rng.gen_range(1..=16));
                let mut v = seed[..keep].to_vec();
                v.extend(self.random_bytes());
                v
            }
            _ => {
                let mut v = seed;
                for _ in 0..self.rng.gen_range(1..=4) {
                    self.mutate(&mut v);
                }
                v
            }
        };
        input.truncate(self.max_len);
        input
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let len = self.rng.gen_range(0..=self.max_len.min(512));
        (0..len).map(|_| self.rng.gen()).collect()
    }

    fn mutate(&mut self, v: &mut Vec<u8>) {
        if v.is_empty() {
            v.extend(self.random_bytes());
            return;
        }
        let len = v.len();
        let at = self.rng.gen_range(0..len);
        match self.rng.gen_range(0..10) {
            0 => v[at] ^= 1 << self.rng.gen_range(0..8),
            1 => v[at] = *[0u8, 1, 0x7f, 0x80, 0xff].choose(&mut self.rng).unwrap(),
            2 => {
                let value = *INTERESTING_U32.choose(&mut self.rng).unwrap();
                let bytes = if self.rng.gen() {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                overwrite(v, at & !3, &bytes);
            }
            3 => {
                let value = *INTERESTING_U64.choose(&mut self.rng).unwrap();
                overwrite(v, at & !7, &value.to_le_bytes());
            }
            4 => v.truncate(at),
            5 => {
                let extra = self.random_bytes();
                v.extend(extra);
            }
            6 => {
                let end = self.rng.gen_range(at..=len);
                v.drain(at..end);
            }
            7 => {
                let end = self.rng.gen_range(at..=len.min(at + 64));
                let copy = v[at..end].to_vec();
                let to = self.rng.gen_range(0..=v.len());
                v.splice(to..to, copy);
            }
            8 => self.replace_number(v),
            _ => v[at] = *STRUCTURE.choose(&mut self.rng).unwrap(),
        }
    }

    /// Replaces a run of ASCII digits (a size, a count, an offset in a text header).
    fn replace_number(&mut self, v: &mut Vec<u8>) {
        let starts: Vec<usize> = (0..v.len())
            .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
            .collect();
        let Some(&start) = starts.choose(&mut self.rng) else {
            return;
        };
        let end = (start..v.len())
            .find(|&i| !v[i].is_ascii_digit())
            .unwrap_or(v.len());
        let number = NUMBERS.choose(&mut self.rng).unwrap().as_bytes().to_vec();
        v.splice(start..end, number);
    }
}

fn overwrite(v: &mut [u8], at: usize, bytes: &[u8]) {
    let end = (at + bytes.len()).min(v.len());
    v[at..end].copy_from_slice(&bytes[..end - at]);
}
