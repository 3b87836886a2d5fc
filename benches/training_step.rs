//! One whole training step of the notebook's model (batch 128: gather, forward,
//! fused loss, backward, RMSprop), on MNIST-shaped data, with all threads; and the
//! same step with `kerno profile`'s per-kernel timing switched on, for its overhead.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kerno::prelude::*;
use kerno::tensor::profile;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn training_step(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batch = 128;
    let x: Vec<f32> = (0..batch * 784)
        .map(|_| rng.gen_range(0u8..=255) as f32 / 255.0)
        .collect();
    let y: Vec<u8> = (0..batch).map(|_| rng.gen_range(0..10)).collect();
    let x = Tensor::from_vec(&[batch, 784], x).unwrap();
    let y = to_categorical(&y, 10);
    let mut model = Sequential::new(784)
        .add(Dense::new(512, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    model
        .compile(
            Optimizer::rmsprop(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
    let mut group = c.benchmark_group("training_step");
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function("784-512-10 batch 128", |b| {
        b.iter(|| model.train_on_batch(&x, &y).unwrap())
    });
    profile::enable();
    group.bench_function("784-512-10 batch 128, profiling on", |b| {
        // Emptying the logs happens outside the timed steps.
        b.iter_batched(
            profile::take,
            |_| model.train_on_batch(&x, &y).unwrap(),
            BatchSize::SmallInput,
        )
    });
    profile::disable();
    group.finish();
}

criterion_group!(benches, training_step);
criterion_main!(benches);
