//! `cargo fuzz run model_file`: kerno_testkit::targets::model_file under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::model_file(input) {
        panic!("{problem}");
    }
});
