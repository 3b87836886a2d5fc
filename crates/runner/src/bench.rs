//! `kerno bench`: the machine's FMA peak, and how close steady-state training gets to it.

use crate::cli::{BenchArgs, TimedTraining};
use crate::commands::{check_writable, load_data, PIXEL_SCALE};
use crate::output::{dataset_json, Output};
use crate::records;
use anyhow::Result;
use kerno_data::to_categorical;
use kerno_data::Dataset;
use kerno_model::{FitOptions, Optimizer, Policy, Sequential, Verbosity};
use kerno_tensor::sparse::SPARSE_DENSITY_LIMIT;
use kerno_tensor::{bf16, fma_peak_gflops, Isa};

/// Seconds each thread spends measuring the FMA peak, in this many rounds.
const PEAK_SECONDS: f64 = 0.5;
const PEAK_ROUNDS: u32 = 5;

/// The f32 FMA peak in GFLOP/s, from register-only loops.
pub(crate) struct Peak {
    pub one_core: f64,
    /// Every worker thread at once, as training runs them.
    pub all_threads: f64,
}

/// The best of several short rounds, so that another process taking the core for
/// a moment (on a shared machine) does not lower the peak, and raise the fraction
/// of it that training reaches.
fn measure_peak(isa: Isa) -> Peak {
    let best = || {
        (0..PEAK_ROUNDS)
            .map(|_| fma_peak_gflops(isa, PEAK_SECONDS / PEAK_ROUNDS as f64))
            .fold(0.0, f64::max)
    };
    Peak {
        one_core: best(),
        all_threads: rayon::broadcast(|_| best()).iter().sum(),
    }
}

/// Runs `work` between two measurements of the peak and keeps the higher of each:
/// a neighbour busy on a core through one measurement (seen on the shared
/// machines) then does not inflate the fraction of the peak that `work` reached.
pub(crate) fn peak_around<R>(isa: Isa, work: impl FnOnce() -> R) -> (Peak, R) {
    let before = measure_peak(isa);
    let result = work();
    let after = measure_peak(isa);
    let peak = Peak {
        one_core: before.one_core.max(after.one_core),
        all_threads: before.all_threads.max(after.all_threads),
    };
    (peak, result)
}

/// The model `bench` and `profile` time, compiled as `train` compiles it, with
/// the dtype policy and input path asked for.
pub(crate) fn timed_model(training: &TimedTraining, data: &Dataset) -> Result<Sequential> {
    let mut model = training.model.compiled(data, 1, Optimizer::rmsprop())?;
    model.skip_input_zeros(!training.dense_input);
    model.set_dtype_policy(training.precision.unwrap_or_default());
    Ok(model)
}

/// How the products of `policy` ran: under `mixed_bfloat16`, which path its
/// bf16 products took and whether this CPU has bf16 units.
pub(crate) fn precision_json(policy: Policy) -> serde_json::Value {
    let bf16 = policy == Policy::MixedBfloat16;
    serde_json::json!({
        "precision": policy.name(),
        "bf16_path": bf16.then_some("conversion"),
        "cpu_has_bf16_units": bf16::cpu_has_bf16_units(),
    })
}

/// [`precision_json`] as a line of text.
pub(crate) fn precision_line(policy: Policy) -> String {
    if policy == Policy::Float32 {
        return "precision float32".into();
    }
    let units = match bf16::cpu_has_bf16_units() {
        true => "this CPU's bf16 units are not used by kerno's kernels yet",
        false => "this CPU has no bf16 units",
    };
    format!(
        "precision mixed_bfloat16: bf16 products by the conversion path (operands and \
         results rounded to bf16, products on the f32 units, counted against the f32 \
         peak; {units})"
    )
}

pub fn run(args: BenchArgs, quiet: bool) -> Result<()> {
    // Both files are checked before the minutes of measuring.
    let before = args.compare.as_deref().map(records::last).transpose()?;
    check_writable("--record", args.record.as_deref())?;
    let isa = Isa::detected();
    let threads = rayon::current_num_threads();
    let data = load_data(&args.training.data, Output::new(args.training.json, quiet))?;
    let mut model = timed_model(&args.training, &data)?;
    let x = data.train.images.scaled(PIXEL_SCALE);
    let y = to_categorical(&data.train.labels, data.classes);
    let options = FitOptions::new()
        .epochs(args.epochs + 1)
        .batch_size(args.training.batch_size())
        .verbosity(Verbosity::Silent);
    let (peak, history) = peak_around(isa, || model.fit(&x, &y, &options));
    let history = history?;
    let Peak {
        one_core: peak_one_core,
        all_threads: peak_all,
    } = peak;
    // The first epoch warms caches and builds buffers; the rest are steady state.
    let mut seconds: Vec<f64> = history.epochs[1..]
        .iter()
        .map(|e| e.train_seconds)
        .collect();
    seconds.sort_by(f64::total_cmp);
    let epoch_s = seconds[seconds.len() / 2];
    let samples = history.epochs[0].samples as f64;
    let pixels = data.train.images.pixels();
    let input_density = pixels.iter().filter(|&&p| p != 0).count() as f64 / pixels.len() as f64;
    // Only a first Dense layer reads a batch by its nonzeros.
    let first_dense = model.layers().first().and_then(|l| l.as_dense());
    let skips_zeros = first_dense.is_some()
        && !args.training.dense_input
        && input_density <= SPARSE_DENSITY_LIMIT;
    // The model's operations, as if every input were dense: the work a training
    // epoch stands for (98 GFLOP for MNIST's 784-512-10), which the floor
    // (that work at the FMA peak) and `fraction_of_peak` are defined on, as a
    // model-FLOP utilization is.
    let model_flops = model.train_flops_per_sample() as f64;
    // The work left once the zeros are skipped: the first layer's two products
    // (forward and weight gradient) by the nonzeros alone. Each sample is in one
    // batch an epoch, so this is exact when every batch is under the model's
    // limit, as MNIST's are (0.18-0.20 nonzero); a dataset near the limit, some
    // batches dense, would be counted low. The grouped sparse products multiply
    // some zeros too (those inside a group's union), which `kerno profile` counts.
    let skipped = match (
        skips_zeros,
        model.layers().first().and_then(|l| l.as_dense()),
    ) {
        (true, Some(first)) => {
            4.0 * (first.inputs() * first.units()) as f64 * (1.0 - input_density)
        }
        _ => 0.0,
    };
    let gflops = samples * model_flops / epoch_s / 1e9;
    let fraction = gflops / peak_all;
    let floor_s = samples * model_flops / (peak_all * 1e9);
    let executed = samples * (model_flops - skipped) / epoch_s / 1e9;

    let mut figures = serde_json::json!({
        "peak_gflops": peak_all,
        "peak_gflops_one_core": peak_one_core,
        "epoch_s": epoch_s,
        "floor_epoch_s": floor_s,
        "samples_per_s": samples / epoch_s,
        "gflops": gflops,
        "fraction_of_peak": fraction,
        "executed_gflops": executed,
        "executed_fraction_of_peak": executed / peak_all,
        "input_density": input_density,
        "skips_input_zeros": skips_zeros,
        "threads": threads,
        "isa": isa.name(),
        "model": args.training.model.name(),
        "batch_size": args.training.batch_size(),
        "epochs_timed": seconds.len(),
        "dataset": dataset_json(&data),
    });
    let precision = precision_json(model.dtype_policy());
    for (key, value) in precision.as_object().expect("an object") {
        figures[key] = value.clone();
    }
    let current = records::record(&figures);
    if args.training.json {
        let mut printed = current.clone();
        if let Some(before) = &before {
            printed["compare"] = records::changes(before, &current);
        }
        println!("{printed}");
    } else {
        println!(
            "model {}, isa {}, {threads} threads",
            args.training.model,
            isa.name()
        );
        println!("{}", precision_line(model.dtype_policy()));
        println!("FMA peak: {peak_one_core:.1} GFLOP/s on one core, {peak_all:.1} GFLOP/s on {threads} threads");
        println!(
            "epoch: {epoch_s:.3} s (median of {}), {:.0} samples/s",
            seconds.len(),
            samples / epoch_s
        );
        println!(
            "achieved: {gflops:.1} GFLOP/s of the model's {:.1} GFLOP an epoch, {fraction:.2} of the all-core peak (the floor, that work at the peak, is {floor_s:.3} s)",
            samples * model_flops / 1e9
        );
        if skips_zeros {
            println!(
                "input {:.0}% nonzero, its zeros skipped: the nonzeros' operations ran at {executed:.1} GFLOP/s ({:.2} of the peak)",
                100.0 * input_density,
                executed / peak_all
            );
        }
        if let Some(before) = &before {
            print!("{}", records::describe(before, &current));
        }
    }
    if let Some(path) = &args.record {
        records::append(path, &current)?;
        if !args.training.json {
            println!("recorded in {}", path.display());
        }
    }
    Ok(())
}
