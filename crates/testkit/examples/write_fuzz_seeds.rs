//! Writes the valid seed inputs of each `cargo fuzz` target into `fuzz/corpus/<target>/`,
//! so that libFuzzer starts from real files rather than from nothing:
//! `cargo run -p kerno-testkit --example write_fuzz_seeds`.

use kerno_testkit::targets;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let sets = [
        ("idx", targets::idx_seeds()),
        ("npz", targets::npz_seeds()),
        ("model_file", targets::model_file_seeds()),
        ("checkpoint", targets::checkpoint_seeds()),
        ("cli_args", targets::cli_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
