//! The order in which an epoch visits the samples: seeded, and a pure function of
//! (seed, epoch), so a run resumed at any epoch sees the same batches.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Sample indices for one epoch, split into batches.
#[derive(Clone, Debug)]
pub struct EpochOrder {
    indices: Vec<usize>,
    seed: u64,
}

impl EpochOrder {
    /// An order over samples `0..len`.
    pub fn new(len: usize, seed: u64) -> Self {
        Self {
            indices: (0..len).collect(),
            seed,
        }
    }

    /// Puts the indices in the order of `epoch`: shuffled with the seed's stream
    /// `epoch`, or in sequence. Allocates nothing.
    pub fn arrange(&mut self, epoch: u64, shuffle: bool) {
        for (i, v) in self.indices.iter_mut().enumerate() {
            *v = i;
        }
        if shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch);
            self.indices.shuffle(&mut rng);
        }
    }

    /// Orders each batch of `batch_size` (as [`batches`](Self::batches) splits
    /// them) by the samples' `keys`, then by index: every batch keeps its samples,
    /// and those of one key come together. Allocates nothing.
    ///
    /// # Panics
    /// When an index has no key.
    pub fn group_batches_by(&mut self, batch_size: usize, keys: &[u32]) {
        for batch in self.indices.chunks_mut(batch_size.max(1)) {
            batch.sort_unstable_by_key(|&i| (keys[i], i));
        }
    }

    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The indices in batches of `batch_size` (the last may be smaller).
    pub fn batches(&self, batch_size: usize) -> std::slice::Chunks<'_, usize> {
        self.indices.chunks(batch_size.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_depends_on_seed_and_epoch() {
        let mut a = EpochOrder::new(100, 7);
        a.arrange(0, true);
        let first = a.indices().to_vec();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        a.arrange(1, true);
        assert_ne!(a.indices(), &first[..]);
        a.arrange(0, true);
        assert_eq!(a.indices(), &first[..]);
        let mut b = EpochOrder::new(100, 8);
        b.arrange(0, true);
        assert_ne!(b.indices(), &first[..]);
        b.arrange(0, false);
        assert_eq!(b.indices(), &sorted[..]);
        assert_eq!(
            b.batches(32).map(|c| c.len()).collect::<Vec<_>>(),
            vec![32, 32, 32, 4]
        );
    }

    #[test]
    fn grouped_batches_keep_their_samples_in_order_of_key() {
        let keys: Vec<u32> = (0..100).map(|i| (i * 7 % 3) as u32).collect();
        let mut order = EpochOrder::new(100, 7);
        order.arrange(2, true);
        let shuffled = order.indices().to_vec();
        order.group_batches_by(32, &keys);
        for (grouped, before) in order.batches(32).zip(shuffled.chunks(32)) {
            let mut same = before.to_vec();
            same.sort_unstable();
            let mut samples = grouped.to_vec();
            samples.sort_unstable();
            assert_eq!(samples, same, "a batch keeps its samples");
            let sort_keys: Vec<_> = grouped.iter().map(|&i| (keys[i], i)).collect();
            assert!(sort_keys.windows(2).all(|w| w[0] < w[1]), "{sort_keys:?}");
        }
    }
}
