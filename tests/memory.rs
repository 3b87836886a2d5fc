//! Bounded memory on the real MNIST: the dataset stays as bytes, and the resident
//! set does not grow from epoch to epoch (its own test binary, so that no other
//! test's memory is counted).

mod common;

use kerno::model::{EpochLogs, ModelError};
use kerno::prelude::*;

const EPOCHS: usize = 20;
/// Page-sized noise is allowed; a leak of one batch's buffers per epoch is not.
const ALLOWED_GROWTH_KIB: u64 = 1024;

/// This process's resident set and its peak, in KiB, from `/proc/self/status`.
fn resident_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct RecordResident(Vec<u64>);

impl Callback for RecordResident {
    fn on_epoch_end(&mut self, _: &EpochLogs, _: &mut Sequential) -> Result<Control, ModelError> {
        self.0.push(resident_kib().0);
        Ok(Control::Continue)
    }
}

#[test]
#[cfg(target_os = "linux")]
fn resident_memory_stays_flat_over_twenty_epochs() {
    let mnist = common::mnist();
    let pixels = mnist.train.images.pixels().len() + mnist.test.images.pixels().len();
    assert_eq!(
        pixels,
        70_000 * 784,
        "the images are held as one byte per pixel"
    );

    let mut model = common::notebook_model(1);
    let x_train = mnist.train.images.scaled(255.0);
    let y_train = to_categorical(&mnist.train.labels, 10);
    let options = FitOptions::new()
        .epochs(EPOCHS)
        .batch_size(128)
        .verbosity(Verbosity::Silent);
    let mut record = RecordResident(Vec::new());
    model
        .fit_with_callbacks(&x_train, &y_train, &options, &mut [&mut record])
        .unwrap();
    let after_epoch = record.0;
    let (_, peak) = resident_kib();
    println!("resident KiB after each epoch: {after_epoch:?}; peak {peak} KiB");
    let first = after_epoch[0];
    let growth = after_epoch.iter().max().unwrap() - first;
    assert!(
        growth <= ALLOWED_GROWTH_KIB,
        "resident memory grew by {growth} KiB over {EPOCHS} epochs: {after_epoch:?}"
    );
    assert!(peak < 150 * 1024, "peak resident memory {peak} KiB");
}
