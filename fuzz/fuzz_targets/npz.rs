//! `cargo fuzz run npz`: kerno_testkit::targets::npz_archive under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::npz_archive(input) {
        panic!("{problem}");
    }
});
