//! The training steps users run, each called as `fit` calls it: from a thread of
//! the worker pool, the pool's other threads kept awake. The notebook's model
//! (784-512-10, RMSprop, batch 128) on real MNIST batches, once through the sparse
//! first layer (the default) and once with every batch through the dense GEMMs
//! (`--dense-input`); the sparse step with `kerno profile`'s timers on, for
//! their cost; and the next chapter's convnet (batch 64). Needs MNIST:
//! `KERNO_DATA=../shared/data/mnist cargo bench --bench training_step`.

use criterion::{BatchSize, Criterion, Throughput};
use kerno::prelude::*;
use kerno::tensor::{profile, with_workers_awake, ScaledBytes};
use kerno_runner::models::ModelKind;

/// Batches cycled through, so that the steps see MNIST's variety of digits.
const BATCHES: usize = 64;

/// A model `kerno train --model` builds, compiled as the book does.
fn compiled(kind: ModelKind, mnist: &Dataset) -> Sequential {
    kind.compiled(mnist, 1, Optimizer::rmsprop())
        .expect("the book's models compile")
}

/// `BATCHES` consecutive batches of `size` MNIST training images (scaled from
/// their bytes as `fit` reads them) and their one-hot labels.
fn batches(mnist: &Dataset, size: usize) -> Vec<(ScaledBytes<'_>, Tensor)> {
    let features = mnist.train.images.features();
    let pixels = mnist.train.images.pixels();
    (0..BATCHES)
        .map(|i| {
            let rows = i * size..(i + 1) * size;
            let x = ScaledBytes::new(
                &pixels[rows.start * features..rows.end * features],
                features,
                255.0,
            );
            (x, to_categorical(&mnist.train.labels[rows], 10))
        })
        .collect()
}

fn training_steps(c: &mut Criterion, mnist: &Dataset) {
    const BATCH: usize = 128;
    let batches_128 = batches(mnist, BATCH);
    let notebook_model = || compiled(ModelKind::Mlp, mnist);
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
                    let (x, y) = &batches_128[next % BATCHES];
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
                    let (x, y) = &batches_128[next % BATCHES];
                    next += 1;
                    model.train_on_batch(x, y).expect("a step on MNIST")
                },
                BatchSize::SmallInput,
            )
        })
    });
    profile::disable();

    let convnet_batch = ModelKind::Convnet.default_batch_size();
    let batches_64 = batches(mnist, convnet_batch);
    group.throughput(Throughput::Elements(convnet_batch as u64));
    group.sample_size(30);
    let mut model = compiled(ModelKind::Convnet, mnist);
    let mut next = 0;
    group.bench_function("mnist convnet batch 64", |b| {
        with_workers_awake(|| {
            b.iter(|| {
                let (x, y) = &batches_64[next % BATCHES];
                next += 1;
                model.train_on_batch(x, y).expect("a step on MNIST")
            })
        })
    });
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
