//! `kerno profile` through the real binary: its figures add up, and its Chrome
//! trace has properly nested spans on every thread that cover each step.

mod common;

use common::{kerno, stderr, stdout, write_dataset, write_sparse_dataset};
use serde_json::Value;

/// A complete event of the trace, in nanoseconds.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    category: String,
    thread: u64,
    start: i64,
    end: i64,
}

fn spans(trace: &Value) -> Vec<Span> {
    let ns = |v: &Value| (v.as_f64().unwrap() * 1e3).round() as i64;
    trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| Span {
            name: e["name"].as_str().unwrap().to_string(),
            category: e["cat"].as_str().unwrap().to_string(),
            thread: e["tid"].as_u64().unwrap(),
            start: ns(&e["ts"]),
            end: ns(&e["ts"]) + ns(&e["dur"]),
        })
        .collect()
}

#[test]
fn the_trace_nests_per_thread_and_covers_every_step() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 512);
    let trace_path = data.path().join("trace.json");
    let out = kerno(
        &[
            "profile",
            "--data",
            data.path().to_str().unwrap(),
            // Enough steps that a worker thread takes part in some GEMM even
            // when the other tests' processes keep it off its core for a while.
            "--steps",
            "30",
            "--warmup",
            "2",
            "--threads",
            "2",
            "--json",
            "--trace",
            trace_path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["steps"], 30);
    let coverage = summary["coverage"].as_f64().unwrap();
    assert!(
        (0.95..=1.0).contains(&coverage),
        "kernels cover {coverage} of the steps"
    );
    let total: f64 = summary["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["total_ms"].as_f64().unwrap())
        .sum();
    // The rows count each kernel whole; `kernels_ms` the time any ran, once.
    let kernels_ms = summary["kernels_ms"].as_f64().unwrap();
    let overlap_ms = summary["overlap_ms"].as_f64().unwrap();
    assert!((total - kernels_ms - overlap_ms).abs() < 1e-6 * total.max(1.0));
    assert!(overlap_ms >= 0.0 && overlap_ms < total);

    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(&trace_path).unwrap()).unwrap();
    let spans = spans(&trace);
    let thread_names = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .count();
    let threads: std::collections::BTreeSet<u64> = spans.iter().map(|s| s.thread).collect();
    assert!(
        threads.len() >= 2,
        "GEMM blocks run on the workers: {threads:?}"
    );
    assert_eq!(thread_names, threads.len(), "every thread is named");

    // On each thread, two spans are either disjoint or one holds the other.
    for &t in &threads {
        let mine: Vec<&Span> = spans.iter().filter(|s| s.thread == t).collect();
        for (i, a) in mine.iter().enumerate() {
            for b in &mine[i + 1..] {
                let disjoint = a.end <= b.start || b.end <= a.start;
                let nested = (a.start <= b.start && b.end <= a.end)
                    || (b.start <= a.start && a.end <= b.end);
                assert!(disjoint || nested, "{a:?} and {b:?} overlap on thread {t}");
            }
        }
    }

    // Each step holds its kernels (some run alongside on another thread), and
    // they fill nearly all of it: in the median step, as a thread descheduled
    // between two kernels leaves a gap in its step that no instrumentation could
    // fill.
    let steps: Vec<&Span> = spans.iter().filter(|s| s.category == "step").collect();
    assert_eq!(steps.len(), 30);
    let mut filled: Vec<f64> = steps
        .iter()
        .map(|step| {
            let mut inside: Vec<(i64, i64)> = spans
                .iter()
                .filter(|s| s.category == "kernel")
                .filter(|s| step.start <= s.start && s.end <= step.end)
                .map(|s| (s.start, s.end))
                .collect();
            inside.sort_unstable();
            // The time some kernel ran, overlaps counted once.
            let (mut covered, mut reached) = (0, step.start);
            for (start, end) in inside {
                covered += (end - start.max(reached)).max(0);
                reached = reached.max(end);
            }
            covered as f64 / (step.end - step.start) as f64
        })
        .collect();
    filled.sort_by(f64::total_cmp);
    let median = filled[filled.len() / 2];
    assert!(median >= 0.9, "kernels fill {median:.3} of the median step");
    // Every GEMM block runs inside a GEMM kernel span of the step's thread.
    let gemms: Vec<&Span> = spans
        .iter()
        .filter(|s| s.category == "kernel" && s.name.contains("GEMM"))
        .collect();
    for block in spans.iter().filter(|s| s.category == "task") {
        assert!(
            gemms
                .iter()
                .any(|g| g.start <= block.start && block.end <= g.end),
            "{block:?} runs outside every GEMM"
        );
    }
}

#[test]
fn the_profile_table_names_the_kernels_and_the_peak() {
    let data = tempfile::tempdir().unwrap();
    write_dataset(data.path(), 256);
    let out = kerno(
        &[
            "profile",
            "--data",
            data.path().to_str().unwrap(),
            "--steps",
            "3",
            "--warmup",
            "0",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "forward GEMM + bias + relu, layer 1",
        "weight-gradient GEMM, layer 1",
        "input-gradient GEMM + relu mask + bias gradient, layer 2",
        "softmax + cross-entropy (fused), layer 2",
        "optimizer update, layer 1",
        "batch gather",
        "(between kernels)",
        "FMA peak",
        "GFLOP/s of the model's operations",
    ] {
        assert!(text.contains(expected), "no '{expected}' in\n{text}");
    }
    // The figures line up under the header, however long a kernel's name.
    let header = text.lines().find(|l| l.starts_with("kernel")).unwrap();
    let calls_end = header.find("calls").unwrap() + "calls".len();
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("kernel"))
        .skip(1)
        .take_while(|l| !l.starts_with("(between kernels)"));
    for row in rows {
        let calls = row.char_indices().nth(calls_end - 1).map(|(_, c)| c);
        assert!(
            calls.is_some_and(|c| c.is_ascii_digit()),
            "the calls column is not under its header in\n{text}"
        );
    }
    // A dense input: the kernels execute the model's operations, none skipped.
    assert!(!text.contains("executed:"), "{text}");
    // Every bias gradient is summed by the kernel that makes its layer's gradient.
    assert!(
        !text.contains("column sums"),
        "a bias-gradient pass in\n{text}"
    );
}

/// On inputs mostly zero (MNIST's black background) the first layer's products
/// take the nonzeros alone, and the table says so.
#[test]
fn a_sparse_input_takes_the_sparse_products() {
    let data = tempfile::tempdir().unwrap();
    write_sparse_dataset(data.path(), 256);
    let args = ["profile", "--steps", "3", "--warmup", "0", "--data"];
    let out = kerno(&[&args[..], &[data.path().to_str().unwrap()]].concat(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "input compression (nonzeros)",
        "sparse forward GEMM + bias + relu, layer 1",
        "sparse weight-gradient GEMM, layer 1",
        "forward GEMM + bias, layer 2",
        "GFLOP/s of the model's operations",
        "the input's zeros skipped",
    ] {
        assert!(text.contains(expected), "no '{expected}' in\n{text}");
    }
}
