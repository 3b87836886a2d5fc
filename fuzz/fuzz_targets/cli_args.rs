//! `cargo fuzz run cli_args`: kerno_testkit::targets::cli_args under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::cli_args(input) {
        panic!("{problem}");
    }
});
