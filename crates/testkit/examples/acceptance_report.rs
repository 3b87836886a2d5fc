//! Prints the hand-tuned-kernels issue's acceptance figures, measured by
//! `.ci/acceptance` into one folder, against their bars, as Markdown tables:
//! `cargo run --release -p kerno-testkit --example acceptance_report -- DIR`.
//! Exits with 1 when a bar is missed, 2 when a measurement is missing.
//!
//! DIR holds `bench.json` (`kerno bench --json`), `default-*.txt` (the output of
//! plain `kerno` runs), `seed-*.txt` (`kerno train --seed S` runs) and
//! `criterion-*/` (rounds of the GEMM groups of `benches/kernels.rs`; each
//! benchmark's fastest round counts).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The training step's GEMMs, by the name their criterion group starts with, and
/// whether the issue also sets a fraction of the FMA peak for them.
const SHAPES: [(&str, bool); 5] = [
    ("fwd1", true),
    ("fwd2", false),
    ("dW2", false),
    ("dH", false),
    ("dW1", true),
];
/// The bars: `kerno bench`'s fraction of the all-core peak, the default run's
/// training seconds, the large shapes' fraction of the peak on one and on two
/// threads, and the notebook issue's accuracy (mean of seeds 1-5, and each seed).
const BENCH_FRACTION: f64 = 0.75;
const DEFAULT_RUN_S: f64 = 3.0;
const GEMM_FRACTION: [(usize, f64); 2] = [(1, 0.88), (2, 0.85)];
const MEAN_ACCURACY: f64 = 0.978;
const SEED_ACCURACY: f64 = 0.975;

/// One criterion benchmark's median.
struct Measured {
    group: String,
    function: String,
    value: Option<String>,
    median_ns: f64,
    flops: f64,
}

/// One finished `kerno` run: its training seconds and test accuracy.
struct Run {
    train_s: f64,
    test_acc: f64,
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: acceptance_report DIR (the folder .ci/acceptance wrote)");
        return ExitCode::from(2);
    };
    match report(&dir) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("acceptance_report: {message}");
            ExitCode::from(2)
        }
    }
}

/// Prints the tables; whether every bar is met.
fn report(dir: &Path) -> Result<bool, String> {
    let bench = read_json(&dir.join("bench.json"))?;
    let machine = &bench["machine"];
    println!(
        "machine: {}, {} cores, {}; kerno's instruction set {}, commit {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["arch"].as_str().unwrap_or("?"),
        bench["isa"].as_str().unwrap_or("?"),
        bench["commit"].as_str().unwrap_or("?"),
    );
    println!("(the bars are set for the 2-core Zen 4 with AVX-512 of the issue)\n");
    let training = training_table(dir, &bench)?;
    let gemms = gemm_table(dir, &bench)?;
    Ok(training && gemms)
}

/// `bench.json`'s number `key`.
fn number(bench: &Value, key: &str) -> Result<f64, String> {
    bench[key]
        .as_f64()
        .ok_or_else(|| format!("bench.json: no number `{key}`"))
}

/// The verdict on one row, noted in `met`.
fn verdict(ok: bool, met: &mut bool) -> &'static str {
    *met &= ok;
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The table of `kerno bench`, the default run and the accuracy; whether its
/// bars are met.
fn training_table(dir: &Path, bench: &Value) -> Result<bool, String> {
    let mut met = true;
    println!("| acceptance item | measured | bar | |\n|---|---|---|---|");
    let fraction = number(bench, "fraction_of_peak")?;
    println!(
        "| `kerno bench`, {} threads | fraction_of_peak {fraction:.2} (epoch {:.3} s, peak {:.1} GFLOP/s) | ≥ {BENCH_FRACTION} | {} |",
        bench["threads"],
        number(bench, "epoch_s")?,
        number(bench, "peak_gflops")?,
        verdict(fraction >= BENCH_FRACTION, &mut met),
    );
    let defaults = runs(dir, "default-")?;
    let times: Vec<f64> = defaults.iter().map(|r| r.train_s).collect();
    let time = median(&times);
    println!(
        "| default run, training time | median {time:.2} s of {} ({}) | < {DEFAULT_RUN_S} s | {} |",
        times.len(),
        list(&times, 2),
        verdict(time < DEFAULT_RUN_S, &mut met),
    );
    // Seed 1 is the default run's.
    let mut accuracies = vec![defaults[0].test_acc];
    accuracies.extend(runs(dir, "seed-")?.iter().map(|r| r.test_acc));
    let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    let lowest = accuracies.iter().copied().fold(f64::INFINITY, f64::min);
    let accurate = accuracies.len() == 5 && mean >= MEAN_ACCURACY && lowest >= SEED_ACCURACY;
    println!(
        "| test accuracy, seeds 1-{} | mean {mean:.4}, lowest {lowest:.4} ({}) | mean ≥ {MEAN_ACCURACY}, each ≥ {SEED_ACCURACY} | {} |",
        accuracies.len(),
        list(&accuracies, 4),
        verdict(accurate, &mut met),
    );
    Ok(met)
}

/// The table of the GEMM shapes on 1 and 2 threads; whether its bars are met.
fn gemm_table(dir: &Path, bench: &Value) -> Result<bool, String> {
    let mut met = true;
    let isa = bench["isa"].as_str().ok_or("bench.json: no `isa`")?;
    let (rounds, measured) = fastest_rounds(dir)?;
    println!(
        "\nGEMM, criterion medians in µs (GFLOP/s), the fastest of {rounds} round(s); kerno on {isa}:\n"
    );
    println!("| threads | shape | kerno | matrixmultiply | gemm | faster crate / kerno | kerno's fraction of peak | |");
    println!("|---|---|---|---|---|---|---|---|");
    for (threads, fraction_bar) in GEMM_FRACTION {
        let peak = match threads {
            1 => number(bench, "peak_gflops_one_core")?,
            _ => number(bench, "peak_gflops")?,
        };
        for (shape, large) in SHAPES {
            let group = format!("gemm {threads}t/{shape} ");
            let find = |function: &str, value: Option<&str>| {
                measured
                    .iter()
                    .find(|m| {
                        m.group.starts_with(&group)
                            && m.function == function
                            && m.value.as_deref() == value
                    })
                    .ok_or_else(|| format!("criterion: no `{group}…/{function}` measurement"))
            };
            let kerno = find("kerno", Some(isa))?;
            let (mm, faer) = (find("matrixmultiply", None)?, find("gemm", None)?);
            let speedup = mm.median_ns.min(faer.median_ns) / kerno.median_ns;
            let fraction = kerno.flops / kerno.median_ns / peak;
            let (of_peak, near_peak) = match large {
                true => (
                    format!("{fraction:.2} (bar ≥ {fraction_bar})"),
                    fraction >= fraction_bar,
                ),
                false => ("-".to_string(), true),
            };
            println!(
                "| {threads} | {} | {} | {} | {} | {speedup:.2} (bar ≥ 1) | {of_peak} | {} |",
                kerno.group.split_once('/').map_or("", |(_, name)| name),
                cell(kerno),
                cell(mm),
                cell(faer),
                verdict(speedup >= 1.0 && near_peak, &mut met),
            );
        }
    }
    Ok(met)
}

/// A measurement as `µs (GFLOP/s)`.
fn cell(m: &Measured) -> String {
    format!("{:.1} ({:.1})", m.median_ns / 1e3, m.flops / m.median_ns)
}

/// The values, comma-separated, each with `decimals` decimals.
fn list(values: &[f64], decimals: usize) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    shown.join(", ")
}

/// The middle value (the upper one of an even count); `values` is not empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A JSON file, or an error naming it.
fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The runs whose output files in `dir` start with `prefix`, in name order.
fn runs(dir: &Path, prefix: &str) -> Result<Vec<Run>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix) && name.ends_with(".txt")
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("{}: no {prefix}*.txt runs", dir.display()));
    }
    paths.iter().map(|p| parse_run(p)).collect()
}

/// The training time and accuracy that a `kerno` run printed:
/// `trained 5 epochs in 2.79 s (…)` and `test_loss: … test_acc: 0.9786`.
fn parse_run(path: &Path) -> Result<Run, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let missing = |what: &str| format!("{}: no {what} line", path.display());
    let train_s = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("trained ")?
                .split(" in ")
                .nth(1)?
                .split(' ')
                .next()
        })
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| missing("`trained … in S s`"))?;
    let test_acc = text
        .lines()
        .find_map(|l| l.split("test_acc: ").nth(1)?.trim().parse().ok())
        .ok_or_else(|| missing("`test_acc:`"))?;
    Ok(Run { train_s, test_acc })
}

/// How many rounds of criterion `dir` holds (its `criterion-*` folders), and each
/// benchmark's fastest median among them.
fn fastest_rounds(dir: &Path) -> Result<(usize, Vec<Measured>), String> {
    let mut rounds = 0;
    let mut fastest: BTreeMap<(String, String, Option<String>), Measured> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let is_round = path.is_dir()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("criterion-"));
        if !is_round {
            continue;
        }
        rounds += 1;
        for m in criterion_medians(&path)? {
            let key = (m.group.clone(), m.function.clone(), m.value.clone());
            match fastest.get(&key) {
                Some(best) if best.median_ns <= m.median_ns => {}
                _ => {
                    fastest.insert(key, m);
                }
            }
        }
    }
    if rounds == 0 {
        return Err(format!("{}: no criterion-* rounds", dir.display()));
    }
    Ok((rounds, fastest.into_values().collect()))
}

/// Every criterion benchmark under `root`: its ids from `new/benchmark.json`, its
/// median from `new/estimates.json`.
fn criterion_medians(root: &Path) -> Result<Vec<Measured>, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
            if path.is_dir() {
                pending.push(path);
            } else if path.ends_with("new/benchmark.json") {
                let ids = read_json(&path)?;
                let estimates = read_json(&path.with_file_name("estimates.json"))?;
                let text = |key: &str| ids[key].as_str().map(str::to_string);
                let measured = Measured {
                    group: text("group_id")
                        .ok_or_else(|| format!("{}: no group_id", path.display()))?,
                    function: text("function_id").unwrap_or_default(),
                    value: text("value_str"),
                    median_ns: estimates["median"]["point_estimate"]
                        .as_f64()
                        .ok_or_else(|| format!("{}: no median", path.display()))?,
                    flops: ids["throughput"]["Elements"]
                        .as_f64()
                        .ok_or_else(|| format!("{}: no throughput", path.display()))?,
                };
                found.insert(path, measured);
            }
        }
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A results folder: `kerno bench` at `fraction` of the peak, default runs of
    /// `train_s` seconds, seeds 2-5, and criterion rounds where kerno takes
    /// `kerno_ns` (one round each) and both crates 1000 ns on every shape.
    fn results(fraction: f64, train_s: f64, kerno_ns: &[f64]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bench = json!({
            "isa": "avx512f", "threads": 2, "commit": "abc", "epoch_s": 0.5,
            "fraction_of_peak": fraction, "peak_gflops": 200.0, "peak_gflops_one_core": 100.0,
            "machine": {"cpu": "test", "cores": 2, "arch": "x86_64"},
        });
        std::fs::write(dir.path().join("bench.json"), bench.to_string()).unwrap();
        let run = |s: f64, acc: f64| {
            format!("Epoch 5/5\ntrained 5 epochs in {s} s (1 samples/s)\ntest_loss: 0.07 test_acc: {acc}\n")
        };
        for i in 1..=3 {
            std::fs::write(
                dir.path().join(format!("default-{i}.txt")),
                run(train_s, 0.979),
            )
            .unwrap();
        }
        for seed in 2..=5 {
            std::fs::write(dir.path().join(format!("seed-{seed}.txt")), run(3.5, 0.98)).unwrap();
        }
        for (round, &ns) in kerno_ns.iter().enumerate() {
            for threads in [1, 2] {
                for (shape, _) in SHAPES {
                    let group = format!("gemm {threads}t/{shape} 1x1x1");
                    for (function, value, median) in [
                        ("kerno", Some("avx512f"), ns),
                        ("kerno", Some("portable"), 1.0),
                        ("matrixmultiply", None, 1000.0),
                        ("gemm", None, 1000.0),
                    ] {
                        let new = dir.path().join(format!(
                            "criterion-{round}/{threads}{shape}{function}{value:?}/new"
                        ));
                        std::fs::create_dir_all(&new).unwrap();
                        let ids = json!({"group_id": group, "function_id": function,
                            "value_str": value, "throughput": {"Elements": 2000}});
                        std::fs::write(new.join("benchmark.json"), ids.to_string()).unwrap();
                        let estimates = json!({"median": {"point_estimate": median}});
                        std::fs::write(new.join("estimates.json"), estimates.to_string()).unwrap();
                    }
                }
            }
        }
        dir
    }

    #[test]
    fn a_run_gives_its_training_time_and_accuracy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.txt");
        let text = "Epoch 1/5\n469/469 - 1s - 1ms/step - accuracy: 0.9245 - loss: 0.2613\n\
                    trained 5 epochs in 2.79 s (107608 samples/s)\n\
                    test_loss: 0.0737 test_acc: 0.9786\n";
        std::fs::write(&path, text).unwrap();
        let run = parse_run(&path).unwrap();
        assert_eq!((run.train_s, run.test_acc), (2.79, 0.9786));
        std::fs::write(&path, "Epoch 1/5\n").unwrap();
        let error = parse_run(&path).err().unwrap();
        assert!(
            error.contains("run.txt") && error.contains("trained"),
            "{error}"
        );
    }

    #[test]
    fn every_bar_met_passes_and_one_missed_fails() {
        // kerno at 10 ns: 200 GFLOP/s, the whole two-core peak.
        assert_eq!(report(results(0.8, 2.9, &[10.0]).path()), Ok(true));
        assert_eq!(report(results(0.7, 2.9, &[10.0]).path()), Ok(false));
        assert_eq!(report(results(0.8, 3.1, &[10.0]).path()), Ok(false));
        // Slower than the crates in one round, faster in the other: the fastest counts.
        assert_eq!(report(results(0.8, 2.9, &[2000.0, 10.0]).path()), Ok(true));
        assert_eq!(report(results(0.8, 2.9, &[2000.0]).path()), Ok(false));
        // Faster than the crates, short of the large shapes' fraction of the peak.
        assert_eq!(report(results(0.8, 2.9, &[100.0]).path()), Ok(false));
    }

    #[test]
    fn a_missing_measurement_is_an_error_naming_it() {
        let error = report(results(0.8, 2.9, &[]).path()).unwrap_err();
        assert!(error.contains("no criterion-* rounds"), "{error}");
        let dir = results(0.8, 2.9, &[10.0]);
        std::fs::remove_file(dir.path().join("bench.json")).unwrap();
        let error = report(dir.path()).unwrap_err();
        assert!(error.contains("bench.json"), "{error}");
    }
}
