//! Checkpoints: a run stopped after any epoch, or after any step, and resumed from
//! its checkpoint ends with exactly the weights of a run that never stopped.

use kerno_model::{
    Activation, Callback, Control, Dense, FitOptions, History, Loss, Metric, ModelError, Optimizer,
    RunSettings, Sequential, TrainingCheckpoint, Verbosity,
};
use kerno_tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{bits, InterruptAt};

const SAMPLES: usize = 150;
const EPOCHS: usize = 3;
/// 150 samples in batches of 32: four full steps and a last one of 22.
const BATCH: usize = 32;

fn data() -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..SAMPLES * 6).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut y = vec![0.0; SAMPLES * 3];
    for i in 0..SAMPLES {
        y[i * 3 + (i * 7) % 3] = 1.0;
    }
    (
        Tensor::from_vec(&[SAMPLES, 6], x).unwrap(),
        Tensor::from_vec(&[SAMPLES, 3], y).unwrap(),
    )
}

fn model(optimizer: Optimizer) -> Sequential {
    let mut m = Sequential::new(6)
        .with_seed(3)
        .add(Dense::new(9, Activation::Relu))
        .add(Dense::new(3, Activation::Softmax));
    m.compile(
        optimizer,
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    m
}

fn options() -> FitOptions<'static> {
    FitOptions::new()
        .epochs(EPOCHS)
        .batch_size(BATCH)
        .validation_split(0.1)
        .verbosity(Verbosity::Silent)
}

fn optimizers() -> [Optimizer; 3] {
    [
        Optimizer::rmsprop(),
        Optimizer::adam(),
        Optimizer::Sgd {
            learning_rate: 0.05,
            momentum: 0.9,
            nesterov: true,
        },
    ]
}

/// Stops the run at the end of epoch `epoch` (0-based).
struct StopAfterEpoch(usize);

impl Callback for StopAfterEpoch {
    fn on_epoch_end(
        &mut self,
        logs: &kerno_model::EpochLogs,
        _: &mut Sequential,
    ) -> Result<Control, ModelError> {
        Ok(if logs.epoch == self.0 {
            Control::Stop
        } else {
            Control::Continue
        })
    }
}

fn uninterrupted(optimizer: Optimizer) -> (Vec<u32>, History) {
    let (x, y) = data();
    let mut m = model(optimizer);
    let history = m.fit(&x, &y, &options()).unwrap();
    (bits(&m), history)
}

#[test]
fn resuming_after_any_step_gives_the_uninterrupted_weights() {
    let (x, y) = data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let steps = (SAMPLES * 9 / 10).div_ceil(BATCH);
    for optimizer in optimizers() {
        let (expected, full) = uninterrupted(optimizer);
        for epoch in 0..EPOCHS {
            for step in 0..steps {
                let mut m = model(optimizer);
                let history = m
                    .fit_with_callbacks(&x, &y, &options(), &mut [&mut InterruptAt { epoch, step }])
                    .unwrap();
                let at = history
                    .interrupted
                    .expect("the callback interrupts the run");
                assert_eq!((at.epoch, at.step), (epoch, step + 1));
                m.save_checkpoint(&path, &at, &RunSettings::of(&options()))
                    .unwrap();
                drop(m);

                let mut ckpt = Sequential::load_checkpoint(&path).unwrap();
                let resumed_options = ckpt.resume_options().verbosity(Verbosity::Silent);
                let rest = ckpt.model.fit(&x, &y, &resumed_options).unwrap();
                assert_eq!(
                    bits(&ckpt.model),
                    expected,
                    "{optimizer}: stopped after epoch {epoch} step {step}"
                );
                // The epoch that was cut in two reports what the whole epoch would have.
                let first = &rest.epochs[0];
                assert_eq!(first.epoch, epoch);
                assert_eq!(first.loss.to_bits(), full.epochs[epoch].loss.to_bits());
                assert_eq!(first.accuracy, full.epochs[epoch].accuracy);
                assert_eq!(first.val_loss, full.epochs[epoch].val_loss);
            }
        }
    }
}

#[test]
fn resuming_after_any_epoch_gives_the_uninterrupted_weights() {
    let (x, y) = data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("epoch.ckpt");
    for optimizer in optimizers() {
        let (expected, _) = uninterrupted(optimizer);
        for stop_after in 0..EPOCHS {
            let mut m = model(optimizer);
            let mut saver = TrainingCheckpoint::new(&path, RunSettings::of(&options()));
            m.fit_with_callbacks(
                &x,
                &y,
                &options(),
                &mut [&mut saver, &mut StopAfterEpoch(stop_after)],
            )
            .unwrap();
            let mut ckpt = Sequential::load_checkpoint(&path).unwrap();
            assert_eq!(ckpt.progress.epoch, stop_after + 1);
            assert_eq!(ckpt.progress.step, 0);
            let options = ckpt.resume_options().verbosity(Verbosity::Silent);
            let rest = ckpt.model.fit(&x, &y, &options).unwrap();
            assert_eq!(rest.epochs.len(), EPOCHS - stop_after - 1);
            assert_eq!(
                bits(&ckpt.model),
                expected,
                "{optimizer}, after {stop_after}"
            );
        }
    }
}

#[test]
fn a_checkpoint_is_also_a_model_file_but_not_the_other_way_round() {
    let (x, y) = data();
    let dir = tempfile::tempdir().unwrap();
    let ckpt_path = dir.path().join("c.safetensors");
    let model_path = dir.path().join("m.safetensors");
    let mut m = model(Optimizer::adam());
    m.fit(&x, &y, &options()).unwrap();
    let progress = kerno_model::TrainingProgress::start_of(EPOCHS);
    m.save_checkpoint(&ckpt_path, &progress, &RunSettings::of(&options()))
        .unwrap();
    m.save(&model_path).unwrap();

    let as_model = Sequential::load(&ckpt_path).unwrap();
    assert_eq!(bits(&as_model), bits(&m));
    let ckpt = Sequential::load_checkpoint(&ckpt_path).unwrap();
    assert_eq!(ckpt.model.optimizer(), Some(Optimizer::adam()));
    assert_eq!(ckpt.progress, progress);

    let err = Sequential::load_checkpoint(&model_path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("m.safetensors") && text.contains("not a checkpoint"),
        "{text}"
    );
}

#[test]
fn a_resume_point_past_the_end_of_the_epoch_is_refused() {
    let (x, y) = data();
    let mut m = model(Optimizer::rmsprop());
    let mut at = kerno_model::TrainingProgress::start_of(1);
    at.step = 99;
    let err = m.fit(&x, &y, &options().resume_from(at)).unwrap_err();
    assert!(err.to_string().contains("resume point"), "{err}");
}
