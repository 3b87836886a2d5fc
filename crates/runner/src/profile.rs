//! `kerno profile`: where the time of a training step goes, kernel by kernel, as a
//! table (or JSON), and as a Chrome trace with one span per kernel call per thread.

use crate::bench::{peak_around, precision_json, precision_line, timed_model, Peak};
use crate::cli::ProfileArgs;
use crate::commands::{check_writable, load_data, PIXEL_SCALE};
use crate::output::{dataset_json, Output};
use anyhow::{Context, Result};
use kerno_data::to_categorical;
use kerno_model::{Callback, Control, FitOptions, ModelError, Sequential, Verbosity};
use kerno_tensor::profile::{self, Event, Level, Recording};
use kerno_tensor::Isa;
use serde_json::json;
use std::collections::{HashMap, HashSet};

pub fn run(args: ProfileArgs, quiet: bool) -> Result<()> {
    check_writable("--trace", args.trace.as_deref())?;
    let isa = Isa::detected();
    let threads = rayon::current_num_threads();
    let data = load_data(&args.training.data, Output::new(args.training.json, quiet))?;
    let mut model = timed_model(&args.training, &data)?;
    let x = data.train.images.scaled(PIXEL_SCALE);
    let y = to_categorical(&data.train.labels, data.classes);

    // Unprofiled steps first: buffers built, caches and branch predictors warm.
    train_steps(&mut model, &x, &y, args.training.batch_size(), args.warmup)?;
    let (peak, trained) = peak_around(isa, || {
        profile::enable();
        let trained = train_steps(&mut model, &x, &y, args.training.batch_size(), args.steps);
        profile::disable();
        trained
    });
    trained?;
    let recording = profile::take();

    let summary = Summary::of(&recording, &peak);
    if let Some(path) = &args.trace {
        let trace = chrome_trace(&recording);
        kerno_data::write_atomically(path, trace.to_string().as_bytes())
            .with_context(|| format!("--trace {}", path.display()))?;
    }
    if args.training.json {
        let mut result = summary.json(isa, threads, args.training.batch_size());
        result["dataset"] = dataset_json(&data);
        result["model"] = args.training.model.name().into();
        let precision = precision_json(model.dtype_policy());
        for (key, value) in precision.as_object().expect("an object") {
            result[key] = value.clone();
        }
        println!("{result}");
    } else {
        print!(
            "{}",
            summary.table(isa, threads, args.training.batch_size())
        );
        println!("{}", precision_line(model.dtype_policy()));
        if let Some(path) = &args.trace {
            println!(
                "trace written to {} (open it in ui.perfetto.dev or chrome://tracing)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Stops `fit` after a given number of steps, whatever the epoch.
struct StopAfter {
    steps: usize,
    done: usize,
}

impl Callback for StopAfter {
    fn on_batch_end(&mut self, _: usize, _: usize, _: f32) -> Result<Control, ModelError> {
        self.done += 1;
        Ok(if self.done >= self.steps {
            Control::Interrupt
        } else {
            Control::Continue
        })
    }
}

/// Runs `steps` training steps of shuffled batches (as many epochs as that takes).
fn train_steps(
    model: &mut Sequential,
    x: &dyn kerno_tensor::Samples,
    y: &kerno_tensor::Tensor,
    batch_size: usize,
    steps: usize,
) -> Result<()> {
    if steps == 0 {
        return Ok(());
    }
    let per_epoch = x.len().div_ceil(batch_size);
    let options = FitOptions::new()
        .epochs(steps.div_ceil(per_epoch))
        .batch_size(batch_size)
        .verbosity(Verbosity::Silent);
    let mut stop = StopAfter { steps, done: 0 };
    model.fit_with_callbacks(x, y, &options, &mut [&mut stop])?;
    Ok(())
}

/// One row of the table: every call of one kernel of one layer.
struct KernelRow {
    name: String,
    layer: Option<u16>,
    calls: usize,
    nanos: u64,
    flops: u64,
    bytes: u64,
}

struct Summary {
    rows: Vec<KernelRow>,
    steps: usize,
    step_nanos: u64,
    /// Time when at least one kernel ran.
    kernel_nanos: u64,
    /// Time counted in two rows or more: kernels run alongside each other.
    overlap_nanos: u64,
    model_flops: f64,
    executed_flops: f64,
    peak: f64,
}

impl Summary {
    fn of(recording: &Recording, peak: &Peak) -> Self {
        let steps: Vec<&Event> = recording
            .events
            .iter()
            .filter(|e| e.work.level == Level::Step)
            .collect();
        let step_nanos = steps.iter().map(|e| e.nanos()).sum();
        let mut rows: HashMap<(&str, Option<u16>), KernelRow> = HashMap::new();
        // Kernels called directly by a step: on the step's thread, those inside its
        // span alone; on another (run alongside), those inside no span. Nothing
        // is counted twice.
        let step_threads: HashSet<usize> = steps.iter().map(|e| e.thread).collect();
        let top_level = |e: &&Event| {
            let enclosing = step_threads.contains(&e.thread) as u16;
            e.work.level == Level::Kernel && e.depth == enclosing
        };
        let kernels: Vec<&Event> = recording.events.iter().filter(top_level).collect();
        for e in &kernels {
            let row = rows
                .entry((e.work.name, e.work.layer))
                .or_insert_with(|| KernelRow {
                    name: e.work.name.to_string(),
                    layer: e.work.layer,
                    calls: 0,
                    nanos: 0,
                    flops: 0,
                    bytes: 0,
                });
            row.calls += 1;
            row.nanos += e.nanos();
            row.flops += e.work.flops;
            row.bytes += e.work.bytes;
        }
        let mut rows: Vec<KernelRow> = rows.into_values().collect();
        rows.sort_by(|a, b| b.nanos.cmp(&a.nanos).then(a.name.cmp(&b.name)));
        let kernel_nanos = covered_nanos(&kernels);
        let overlap_nanos = rows.iter().map(|r| r.nanos).sum::<u64>() - kernel_nanos;
        // The model's operations (as `kerno bench` counts them), and those the
        // kernels did: a sparse input's products count only its nonzeros.
        let model_flops = steps.iter().map(|e| e.work.flops as f64).sum();
        let executed_flops = rows.iter().map(|r| r.flops as f64).sum();
        Self {
            rows,
            steps: steps.len(),
            step_nanos,
            kernel_nanos,
            overlap_nanos,
            model_flops,
            executed_flops,
            peak: peak.all_threads,
        }
    }

    fn step_ms(&self) -> f64 {
        self.step_nanos as f64 / self.steps.max(1) as f64 / 1e6
    }

    /// The model's operations over the steps' time.
    fn gflops(&self) -> f64 {
        self.model_flops / self.step_nanos.max(1) as f64
    }

    fn executed_gflops(&self) -> f64 {
        self.executed_flops / self.step_nanos.max(1) as f64
    }

    fn share(&self, nanos: u64) -> f64 {
        nanos as f64 / self.step_nanos.max(1) as f64
    }

    fn table(&self, isa: Isa, threads: usize, batch_size: usize) -> String {
        let mut out = format!(
            "{} training steps, batch {batch_size}, {threads} threads, isa {}\n\n",
            self.steps,
            isa.name()
        );
        let names: Vec<String> = self
            .rows
            .iter()
            .map(|row| match row.layer {
                Some(layer) => format!("{}, layer {layer}", row.name),
                None => row.name.clone(),
            })
            .collect();
        // The name column fits the longest name, so that the figures line up.
        let width = names
            .iter()
            .map(|name| name.chars().count())
            .fold(44, usize::max);
        out += &format!(
            "{:<width$} {:>6} {:>10} {:>10} {:>9} {:>8} {:>7}\n",
            "kernel", "calls", "total ms", "mean µs", "GFLOP/s", "GB/s", "share"
        );
        let per_second = |amount: u64, nanos: u64| -> String {
            if amount == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", amount as f64 / nanos.max(1) as f64)
            }
        };
        for (row, name) in self.rows.iter().zip(&names) {
            out += &format!(
                "{:<width$} {:>6} {:>10.2} {:>10.1} {:>9} {:>8} {:>6.1}%\n",
                name,
                row.calls,
                row.nanos as f64 / 1e6,
                row.nanos as f64 / row.calls as f64 / 1e3,
                per_second(row.flops, row.nanos),
                per_second(row.bytes, row.nanos),
                100.0 * self.share(row.nanos)
            );
        }
        let between = self.step_nanos.saturating_sub(self.kernel_nanos);
        out += &format!(
            "{:<width$} {:>6} {:>10.2} {:>10} {:>9} {:>8} {:>6.1}%\n\n",
            "(between kernels)",
            "",
            between as f64 / 1e6,
            "",
            "",
            "",
            100.0 * self.share(between)
        );
        out += &format!(
            "step: {:.3} ms mean over {} steps; the kernels above account for {:.1}% of it\n",
            self.step_ms(),
            self.steps,
            100.0 * self.share(self.kernel_nanos)
        );
        if self.overlap_nanos > 0 {
            out += &format!(
                "kernels ran alongside each other for {:.1}% of it, counted in each of their rows\n",
                100.0 * self.share(self.overlap_nanos)
            );
        }
        out += &format!(
            "achieved: {:.1} GFLOP/s of the model's operations, {:.2} of the {:.1} GFLOP/s FMA peak of {threads} threads\n",
            self.gflops(),
            self.gflops() / self.peak,
            self.peak
        );
        if self.executed_flops < self.model_flops {
            out += &format!(
                "executed: {:.1} GFLOP/s ({:.2} of the peak), the input's zeros skipped\n",
                self.executed_gflops(),
                self.executed_gflops() / self.peak
            );
        }
        out
    }

    fn json(&self, isa: Isa, threads: usize, batch_size: usize) -> serde_json::Value {
        let kernels: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "kernel": r.name,
                    "layer": r.layer,
                    "calls": r.calls,
                    "total_ms": r.nanos as f64 / 1e6,
                    "mean_us": r.nanos as f64 / r.calls as f64 / 1e3,
                    "gflops": (r.flops > 0).then(|| r.flops as f64 / r.nanos.max(1) as f64),
                    "gbps": (r.bytes > 0).then(|| r.bytes as f64 / r.nanos.max(1) as f64),
                    "share": self.share(r.nanos),
                })
            })
            .collect();
        json!({
            "steps": self.steps,
            "batch_size": batch_size,
            "threads": threads,
            "isa": isa.name(),
            "step_ms": self.step_ms(),
            "kernels_ms": self.kernel_nanos as f64 / 1e6,
            "steps_ms": self.step_nanos as f64 / 1e6,
            "overlap_ms": self.overlap_nanos as f64 / 1e6,
            "coverage": self.share(self.kernel_nanos),
            "gflops": self.gflops(),
            "peak_gflops": self.peak,
            "fraction_of_peak": self.gflops() / self.peak,
            "executed_gflops": self.executed_gflops(),
            "executed_fraction_of_peak": self.executed_gflops() / self.peak,
            "kernels": kernels,
        })
    }
}

/// Nanoseconds in which at least one of `events` ran (overlaps counted once).
fn covered_nanos(events: &[&Event]) -> u64 {
    let mut spans: Vec<(u64, u64)> = events.iter().map(|e| (e.start_ns, e.end_ns)).collect();
    spans.sort_unstable();
    let mut covered = 0;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in spans {
        current = match current {
            Some((first, last)) if start <= last => Some((first, last.max(end))),
            done => {
                covered += done.map_or(0, |(first, last)| last - first);
                Some((start, end))
            }
        };
    }
    covered + current.map_or(0, |(first, last)| last - first)
}

/// The recording as Chrome trace events: one complete event (`"ph": "X"`) per span,
/// on the thread that ran it, and each thread's name.
fn chrome_trace(recording: &Recording) -> serde_json::Value {
    let names = recording.threads.iter().enumerate().map(|(tid, name)| {
        json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
    });
    let spans = recording.events.iter().map(|e| {
        let name = match e.work.layer {
            Some(layer) => format!("{} (layer {layer})", e.work.name),
            None => e.work.name.to_string(),
        };
        let category = match e.work.level {
            Level::Step => "step",
            Level::Kernel => "kernel",
            Level::Task => "task",
        };
        json!({
            "name": name,
            "cat": category,
            "ph": "X",
            "pid": 1,
            "tid": e.thread,
            "ts": e.start_ns as f64 / 1e3,
            "dur": e.nanos() as f64 / 1e3,
            "args": {"flops": e.work.flops, "bytes": e.work.bytes},
        })
    });
    json!({
        "traceEvents": names.chain(spans).collect::<Vec<_>>(),
        "displayTimeUnit": "ns",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kerno_tensor::profile::Work;

    #[test]
    fn covered_time_counts_overlapping_kernels_once() {
        let event = |start_ns, end_ns| Event {
            work: Work::kernel("kernel"),
            thread: 0,
            depth: 1,
            start_ns,
            end_ns,
        };
        let events = [event(20, 25), event(0, 10), event(5, 15), event(21, 22)];
        let events: Vec<&Event> = events.iter().collect();
        assert_eq!(covered_nanos(&events), 15 + 5);
        assert_eq!(covered_nanos(&[]), 0);
    }
}
