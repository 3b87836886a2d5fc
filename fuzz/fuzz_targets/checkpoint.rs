//! `cargo fuzz run checkpoint`: kerno_testkit::targets::checkpoint under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::checkpoint(input) {
        panic!("{problem}");
    }
});
