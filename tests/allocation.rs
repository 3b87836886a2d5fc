//! The notebook's real input path allocates nothing in steady-state steps: MNIST's
//! bytes, each batch compressed from them into its nonzeros (its own test binary,
//! for the counting allocator).

mod common;

use kerno::model::{EpochLogs, ModelError};
use kerno::prelude::*;
use kerno_testkit::alloc::{allocations, count_this_thread, TrackingAllocator};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator;

/// Reads the allocation counter after steps 5 and 105 of the first epoch.
struct Snapshot(Vec<usize>);

impl Callback for Snapshot {
    fn on_batch_end(&mut self, epoch: usize, step: usize, _: f32) -> Result<Control, ModelError> {
        if epoch == 0 && (step == 5 || step == 105) {
            self.0.push(allocations());
        }
        Ok(Control::Continue)
    }

    fn on_epoch_end(&mut self, _: &EpochLogs, _: &mut Sequential) -> Result<Control, ModelError> {
        Ok(Control::Stop)
    }
}

#[test]
fn fit_on_mnist_bytes_allocates_nothing_between_steps() {
    let mnist = common::mnist();
    let x = mnist.train.images.scaled(255.0);
    let y = to_categorical(&mnist.train.labels, 10);
    // The model runs on this pool alone: its threads are the ones counted.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| count_this_thread())
        .build()
        .unwrap();
    pool.install(|| {
        let mut model = common::notebook_model(1);
        let mut snapshot = Snapshot(Vec::with_capacity(2));
        let options = FitOptions::new()
            .epochs(1)
            .batch_size(128)
            .verbosity(Verbosity::Silent);
        model
            .fit_with_callbacks(&x, &y, &options, &mut [&mut snapshot])
            .unwrap();
        let [at_5, at_105] = snapshot.0[..] else {
            panic!("the callback saw steps 5 and 105: {:?}", snapshot.0);
        };
        assert!(
            at_5 > 0,
            "the pool's allocations are counted (the workspace)"
        );
        assert_eq!(at_105 - at_5, 0, "100 steps on MNIST's bytes allocated");
    });
}
