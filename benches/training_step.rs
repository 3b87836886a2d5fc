//! The training steps users run, each called as `fit` calls it: from a thread of
//! the worker pool, the pool's other threads kept awake. The notebook's model
//! (784-512-10, RMSprop, batch 128) on real MNIST batches, once through the sparse
//! first layer (the default) and once with every batch through the dense GEMMs
//! (`--dense-input`); and the sparse step with `kerno profile`'s timers on, for
//! their cost. Needs MNIST: `KERNO_DATA=../shared/data/mnist cargo bench --bench
//! training_step`.

use criterion::{BatchSize, Criterion, Throughput};
use kerno::prelude::*;
use kerno::tensor::{profile, with_workers_awake, ScaledBytes};

const BATCH: usize = 128;
/// Batches cycled through, so that the steps see MNIST's variety of digits.
const BATCHES: usize = 64;

/// The notebook's model, compiled as the notebook does.
fn notebook_model() -> Sequential {
    let mut model = Sequential::new(784)
        .with_seed(1)
        .add(Dense::new(512, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    model
        .compile(
            Optimizer::rmsprop(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .expect("the notebook's model compiles");
    model
}

fn training_steps(c: &mut Criterion, mnist: &Dataset) {
    let features = mnist.train.images.features();
    let pixels = mnist.train.images.pixels();
    let batches: Vec<(ScaledBytes<'_>, Tensor)> = (0..BATCHES)
        .map(|i| {
            let rows = i * BATCH..(i + 1) * BATCH;
            let x = ScaledBytes::new(
                &pixels[rows.start * features..rows.end * features],
                features,
                255.0,
            );
            (x, to_categorical(&mnist.train.labels[rows], 10))
        })
        .collect();

    let mut group = c.benchmark_group("training_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, sparse) in [
        ("mnist 784-512-10 batch 128", true),
        ("mnist 784-512-10 batch 128, dense input", false),
    ] {
        let mut model = notebook_model();
        model.skip_input_zeros(sparse);
        let mut next = 0;
        group.bench_function(name, |b| {
            with_workers_awake(|| {
                b.iter(|| {
                    let (x, y) = &batches[next % BATCHES];
                    next += 1;
                    model.train_on_batch(x, y).expect("a step on MNIST")
                })
            })
        });
    }

    let mut model = notebook_model();
    let mut next = 0;
    profile::enable();
    group.bench_function("mnist 784-512-10 batch 128, profiling on", |b| {
        with_workers_awake(|| {
            // Emptying the logs happens outside the timed steps.
            b.iter_batched(
                profile::take,
                |_| {
                    let (x, y) = &batches[next % BATCHES];
                    next += 1;
                    model.train_on_batch(x, y).expect("a step on MNIST")
                },
                BatchSize::SmallInput,
            )
        })
    });
    profile::disable();
    group.finish();
}

fn main() {
    let mnist = kerno::data::load(DatasetKind::Mnist, None).unwrap_or_else(|e| {
        eprintln!("error: this bench trains on MNIST (set KERNO_DATA to its folder): {e}");
        std::process::exit(1)
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("kerno-worker-{i}"))
        .build()
        .expect("the worker threads start");
    // Every step runs on a worker of the pool, as in `kerno train`, so the thread
    // that drives it takes part in each parallel kernel.
    kerno_runner::register_plot_font();
    pool.install(|| {
        let mut criterion = Criterion::default().configure_from_args();
        training_steps(&mut criterion, &mnist);
        criterion.final_summary();
    });
}
