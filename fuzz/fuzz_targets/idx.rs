//! `cargo fuzz run idx`: kerno_testkit::targets::idx under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::idx(input) {
        panic!("{problem}");
    }
});
