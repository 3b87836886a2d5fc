//! Benchmark records: `kerno bench --record FILE` appends one JSON line per run
//! (when, which commit, which machine, the figures); `--compare FILE` sets a run
//! against the last line.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

/// The figures compared, and whether larger is better.
const COMPARED: [(&str, bool); 5] = [
    ("epoch_s", false),
    ("samples_per_s", true),
    ("gflops", true),
    ("fraction_of_peak", true),
    ("peak_gflops", true),
];

/// `figures` with the time, the commit and the machine added.
pub fn record(figures: &Value) -> Value {
    let mut record = Map::new();
    record.insert(
        "timestamp".into(),
        humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .into(),
    );
    record.insert("commit".into(), env!("KERNO_GIT_COMMIT").into());
    record.insert("machine".into(), machine());
    if let Value::Object(figures) = figures {
        record.extend(figures.clone());
    }
    Value::Object(record)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// Appends `record` to the JSON-lines file at `path` as one line.
pub fn append(path: &Path, record: &Value) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("--record {}", path.display()))?;
    // One write of the whole line, so concurrent runs never interleave within one.
    file.write_all(format!("{record}\n").as_bytes())
        .with_context(|| format!("--record {}", path.display()))
}

/// The last record of the JSON-lines file at `path`.
pub fn last(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--compare {}", path.display()))?;
    let Some((index, line)) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
    else {
        bail!("--compare {}: the file holds no records", path.display());
    };
    let record: Value = serde_json::from_str(line).with_context(|| {
        format!(
            "--compare {}: line {} is not JSON",
            path.display(),
            index + 1
        )
    })?;
    if COMPARED.iter().any(|(key, _)| !record[key].is_number()) {
        bail!(
            "--compare {}: line {} is not a kerno bench record",
            path.display(),
            index + 1
        );
    }
    Ok(record)
}

/// Each compared figure before and after, with the relative change.
pub fn changes(before: &Value, after: &Value) -> Value {
    let mut out = Map::new();
    for (key, _) in COMPARED {
        if let (Some(b), Some(a)) = (before[key].as_f64(), after[key].as_f64()) {
            out.insert(
                key.into(),
                json!({"before": b, "after": a, "change": a / b - 1.0}),
            );
        }
    }
    Value::Object(out)
}

/// The comparison as text, one figure a line, saying which way is better.
pub fn describe(before: &Value, after: &Value) -> String {
    let mut text = format!(
        "against the record of {} (commit {}, {} threads, {}):\n",
        before["timestamp"].as_str().unwrap_or("?"),
        before["commit"].as_str().unwrap_or("?"),
        before["threads"],
        before["machine"]["cpu"].as_str().unwrap_or("?"),
    );
    for (key, higher_is_better) in COMPARED {
        let (Some(b), Some(a)) = (before[key].as_f64(), after[key].as_f64()) else {
            continue;
        };
        let change = a / b - 1.0;
        let verdict = match (change.abs() < 0.005, (change > 0.0) == higher_is_better) {
            (true, _) => "same",
            (false, true) => "better",
            (false, false) => "worse",
        };
        text += &format!(
            "  {key:<17} {b:>12.4} -> {a:>12.4}  {:>+7.1}%  {verdict}\n",
            100.0 * change
        );
    }
    if before["threads"] != after["threads"] || before["machine"] != after["machine"] {
        text += "  note: the record was taken with other threads or on another machine\n";
    }
    text
}
