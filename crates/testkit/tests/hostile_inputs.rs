//! Every reader and the argument parser against mutated and random inputs, for a
//! fixed number of reproducible cases (`KERNO_FUZZ_CASES` and `KERNO_FUZZ_SEED`
//! change them). The inputs in `fuzz/regressions/<target>/` run first.

use kerno_testkit::alloc::TrackingAllocator;
use kerno_testkit::campaign::{Campaign, Verdict};
use kerno_testkit::{architecture, targets};
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

fn fuzz(name: &str, cases: usize, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> Verdict) {
    run(campaign(name, cases), seeds, target);
}

fn campaign(name: &str, cases: usize) -> Campaign {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Campaign::new(
        name,
        cases,
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures"),
    )
    .regressions(root.join("fuzz/regressions").join(name))
}

fn run(campaign: Campaign, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> Verdict) {
    let report = campaign.run(seeds, target);
    println!("{report}");
    assert!(report.failures.is_empty(), "{report}");
}

#[test]
fn idx_files() {
    fuzz("idx", 200_000, &targets::idx_seeds(), targets::idx);
}

#[test]
fn idx_files_mutated_inside_gzip() {
    fuzz(
        "idx_through_gzip",
        30_000,
        &targets::raw_idx_seeds(),
        targets::idx_through_gzip,
    );
}

#[test]
fn idx_dataset_folders() {
    let folder = targets::IdxFolder::new();
    fuzz("idx_folder", 10_000, &targets::IdxFolder::seeds(), |i| {
        folder.run(i)
    });
}

#[test]
fn npy_arrays() {
    fuzz("npy", 200_000, &targets::npy_seeds(), targets::npy);
}

#[test]
fn npz_archives() {
    fuzz(
        "npz_archive",
        100_000,
        &targets::npz_seeds(),
        targets::npz_archive,
    );
}

#[test]
fn npz_datasets() {
    let dataset = targets::NpzDataset::new();
    fuzz("npz_dataset", 20_000, &targets::npz_seeds(), |i| {
        dataset.run(i)
    });
}

/// Half the cases edit the architecture in the metadata (see
/// `kerno_testkit::architecture`), so that they reach the checks past the header.
#[test]
fn model_files() {
    run(
        campaign("model_file", 100_000).structured(architecture::mutate_file),
        &targets::model_file_seeds(),
        targets::model_file,
    );
}

#[test]
fn checkpoints() {
    run(
        campaign("checkpoint", 100_000).structured(architecture::mutate_file),
        &targets::checkpoint_seeds(),
        targets::checkpoint,
    );
}

#[test]
fn command_lines() {
    fuzz(
        "cli_args",
        100_000,
        &targets::cli_seeds(),
        targets::cli_args,
    );
}
