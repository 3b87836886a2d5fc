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
    let number = |key: &str| {
        bench[key]
            .as_f64()
            .ok_or_else(|| format!("bench.json: no number `{key}`"))
    };
    let isa = bench["isa"].as_str().ok_or("bench.json: no `isa`")?;
    let machine = &bench["machine"];
    println!(
        "machine: {}, {} cores, {}; kerno's instruction set {isa}, commit {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["arch"].as_str().unwrap_or("?"),
        bench["commit"].as_str().unwrap_or("?"),
    );
    println!("(the bars are set for the 2-core Zen 4 with AVX-512 of the issue)\n");

    let mut met = true;
    let mut verdict = |ok: bool| {
        met &= ok;
        if ok {
            "met"
        } else {
            "**missed**"
        }
    };
    println!("| acceptance item | measured | bar | |\n|---|---|---|---|");
    let fraction = number("fraction_of_peak")?;
    println!(
        "| `kerno bench`, {} threads | fraction_of_peak {fraction:.2} (epoch {:.3} s, peak {:.1} GFLOP/s) | ≥ {BENCH_FRACTION} | {} |",
        bench["threads"],
        number("epoch_s")?,
        number("peak_gflops")?,
        verdict(fraction >= BENCH_FRACTION),
    );
    let defaults = runs(dir, "default-")?;
    let times: Vec<f64> = defaults.iter().map(|r| r.train_s).collect();
    let time = median(&times);
    println!(
        "| default run, training time | median {time:.2} s of {} ({}) | < {DEFAULT_RUN_S} s | {} |",
        times.len(),
        list(&times, 2),
        verdict(time < DEFAULT_RUN_S),
    );
    // Seed 1 is the default run's.
    let mut accuracies = vec![defaults[0].test_acc];
    accuracies.extend(runs(dir, "seed-")?.iter().map(|r| r.test_acc));
    let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    let lowest = accuracies.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "| test accuracy, seeds 1-{} | mean {mean:.4}, lowest {lowest:.4} ({}) | mean ≥ {MEAN_ACCURACY}, each ≥ {SEED_ACCURACY} | {} |",
        accuracies.len(),
        list(&accuracies, 4),
        verdict(accuracies.len() == 5 && mean >= MEAN_ACCURACY && lowest >= SEED_ACCURACY),
    );

    let (rounds, measured) = fastest_rounds(dir)?;
    let peaks = [
        (1, number("peak_gflops_one_core")?),
        (2, number("peak_gflops")?),
    ];
    println!(
        "\nGEMM, criterion medians in µs (GFLOP/s), the fastest of {rounds} round(s); kerno on {isa}:\n"
    );
    println!("| threads | shape | kerno | matrixmultiply | gemm | faster crate / kerno | kerno's fraction of peak | |");
    println!("|---|---|---|---|---|---|---|---|");
    for (threads, fraction_bar) in GEMM_FRACTION {
        let peak = peaks.iter().find(|(t, _)| *t == threads).map(|p| p.1);
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
            let kerno_gflops = kerno.flops / kerno.median_ns;
            let (of_peak, ok) = match (large, peak) {
                (true, Some(peak)) => {
                    let f = kerno_gflops / peak;
                    (format!("{f:.2} (bar ≥ {fraction_bar})"), f >= fraction_bar)
                }
                _ => ("-".to_string(), true),
            };
            println!(
                "| {threads} | {} | {} | {} | {} | {speedup:.2} (bar ≥ 1) | {of_peak} | {} |",
                kerno.group.split_once('/').map_or("", |(_, name)| name),
                cell(kerno),
                cell(mm),
                cell(faer),
                verdict(speedup >= 1.0 && ok),
            );
        }
    }
    Ok(met)
}

/// A measurement as `µs (GFLOP/s)`.
fn cell(m: &Measured) -> String {
    format!("{:.1} ({:.1})", m.median_ns / 1e3, m.flops / m.median_ns)
}

fn list(values: &[f64], decimals: usize) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
    shown.join(", ")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

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
                    flops: ids["throughput"]["Elements"].as_f64().unwrap_or(f64::NAN),
                };
                found.insert(path, measured);
            }
        }
    }
    Ok(found.into_values().collect())
}
