//! No hidden global state: models move between threads, and two models trained at
//! the same time (sharing the thread pool) end as they do trained one after the other.

use kerno_model::{Activation, Dense, FitOptions, Loss, Metric, Optimizer, Sequential, Verbosity};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SAMPLES: usize = 600;
/// Wide enough that every GEMM splits into several tasks on the shared pool.
const FEATURES: usize = 300;
const CLASSES: usize = 10;

fn data(seed: u64) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x: Vec<f32> = (0..SAMPLES * FEATURES)
        .map(|_| rng.gen_range(0.0..1.0))
        .collect();
    let mut y = vec![0.0; SAMPLES * CLASSES];
    for i in 0..SAMPLES {
        y[i * CLASSES + rng.gen_range(0..CLASSES)] = 1.0;
    }
    (
        Tensor::from_vec(&[SAMPLES, FEATURES], x).unwrap(),
        Tensor::from_vec(&[SAMPLES, CLASSES], y).unwrap(),
    )
}

fn train(seed: u64) -> Vec<u32> {
    let (x, y) = data(seed);
    let mut model = Sequential::new(FEATURES)
        .with_seed(seed)
        .add(Dense::new(256, Activation::Relu))
        .add(Dense::new(CLASSES, Activation::Softmax));
    model
        .compile(
            Optimizer::rmsprop(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
    let options = FitOptions::new()
        .epochs(3)
        .batch_size(128)
        .verbosity(Verbosity::Silent);
    model.fit(&x, &y, &options).unwrap();
    model
        .weights()
        .iter()
        .flat_map(|t| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_model_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Sequential>();
}

#[test]
fn two_models_trained_at_once_match_the_same_models_trained_in_turn() {
    let in_turn = [train(1), train(2)];
    for round in 0..3 {
        let at_once = std::thread::scope(|s| {
            let a = s.spawn(|| train(1));
            let b = s.spawn(|| train(2));
            [a.join().unwrap(), b.join().unwrap()]
        });
        assert!(
            at_once == in_turn,
            "round {round}: concurrent training changed the weights"
        );
    }
}

#[test]
fn a_trained_model_moves_to_another_thread_and_keeps_predicting_the_same() {
    let (x, y) = data(3);
    let mut model = Sequential::new(FEATURES)
        .with_seed(3)
        .add(Dense::new(64, Activation::Relu))
        .add(Dense::new(CLASSES, Activation::Softmax));
    model
        .compile(
            Optimizer::adam(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
    model
        .fit(&x, &y, &FitOptions::new().verbosity(Verbosity::Silent))
        .unwrap();
    let here = model.predict(&x, 100).unwrap();
    let there = std::thread::spawn(move || model.predict(&x, 100).unwrap())
        .join()
        .unwrap();
    assert_eq!(here.data(), there.data());
}
