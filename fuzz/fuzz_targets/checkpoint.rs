//! `cargo fuzz run checkpoint`: kerno_testkit::targets::checkpoint under libFuzzer.
#![no_main]

// Every other mutation edits the architecture in the metadata and rewrites the
// header length, so that it reaches the checks past the safetensors header.
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let edited = (seed % 2 == 0)
        .then(|| kerno_testkit::architecture::mutate_file_seeded(&data[..size], seed.into()))
        .flatten()
        .filter(|file| file.len() <= max_size);
    match edited {
        Some(file) => {
            data[..file.len()].copy_from_slice(&file);
            file.len()
        }
        None => libfuzzer_sys::fuzzer_mutate(data, size, max_size),
    }
});

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if let Err(problem) = kerno_testkit::targets::checkpoint(input) {
        panic!("{problem}");
    }
});
