//! The steady-state training step allocates nothing: counted with a global allocator.

use kerno_model::{
    Activation, Callback, Control, Conv2D, Dense, Dropout, FitOptions, Flatten, Input, Loss,
    MaxPooling2D, Metric, ModelError, Optimizer, Policy, Sequential, Verbosity,
};
use kerno_tensor::{gemm, reserve_packing_buffers, Epilogue, Isa, MatMut, MatRef, Tensor};
use kerno_testkit::alloc::{allocations, count_this_thread, peak_during, TrackingAllocator};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator;

/// The counter is shared by every counted thread: the tests that read it run one at a time.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn notebook_model() -> Sequential {
    let mut m = Sequential::new(784)
        .add(Dense::new(512, Activation::Relu))
        .add(Dense::new(10, Activation::Softmax));
    m.compile(
        Optimizer::rmsprop(),
        Loss::CategoricalCrossentropy,
        &[Metric::Accuracy],
    )
    .unwrap();
    m
}

/// Inputs with few zeros, or (`sparse`) four fifths zeros, as MNIST's pixels: the
/// first layer's dense GEMMs, or its products of the nonzeros.
fn data(rows: usize, sparse: bool) -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..rows * 784)
        .map(|i| match sparse && i % 5 != 0 {
            true => 0.0,
            false => (i % 255) as f32 / 255.0,
        })
        .collect();
    let y: Vec<f32> = (0..rows * 10)
        .map(|i| (i % 10 == i / 10 % 10) as u8 as f32)
        .collect();
    (
        Tensor::from_vec(&[rows, 784], x).unwrap(),
        Tensor::from_vec(&[rows, 10], y).unwrap(),
    )
}

/// Reads the allocation counter at two steps of the first epoch.
struct Snapshot {
    at: [usize; 2],
    counts: Vec<usize>,
}

impl Callback for Snapshot {
    fn on_batch_end(
        &mut self,
        epoch: usize,
        step: usize,
        _loss: f32,
    ) -> Result<Control, ModelError> {
        if epoch == 0 && self.at.contains(&step) {
            self.counts.push(allocations());
        }
        Ok(Control::Continue)
    }
}

/// The allocations one epoch of `fit` made between the ends of steps `at[0]` and `at[1]`.
fn fit_allocations(
    m: &mut Sequential,
    x: &Tensor,
    y: &Tensor,
    batch: usize,
    at: [usize; 2],
) -> usize {
    let mut snap = Snapshot {
        at,
        counts: Vec::with_capacity(2),
    };
    let options = FitOptions::new()
        .epochs(1)
        .batch_size(batch)
        .verbosity(Verbosity::Silent);
    m.fit_with_callbacks(x, y, &options, &mut [&mut snap])
        .unwrap();
    assert_eq!(snap.counts.len(), 2, "the epoch reached both steps");
    snap.counts[1] - snap.counts[0]
}

#[test]
fn training_steps_allocate_nothing() {
    let _alone = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    // The model runs on this pool alone: its threads are the ones counted.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| count_this_thread())
        .build()
        .unwrap();
    pool.install(|| {
        let before = allocations();
        drop(std::hint::black_box(vec![0u8; 64]));
        // (More than one when the other thread, starting, allocates meanwhile.)
        assert!(allocations() > before, "the pool's allocations are counted");

        // train_on_batch, after the first call has built the workspace.
        let (x, y) = data(128, true);
        let mut m = notebook_model();
        for _ in 0..3 {
            m.train_on_batch(&x, &y).unwrap();
        }
        let before = allocations();
        for _ in 0..20 {
            m.train_on_batch(&x, &y).unwrap();
        }
        let during = allocations() - before;
        assert_eq!(
            during, 0,
            "20 steps of train_on_batch allocated {during} times"
        );

        // The fit loop itself, between its 5th and 45th steps, on dense inputs
        // and on sparse ones, under both dtype policies.
        for policy in [Policy::Float32, Policy::MixedBfloat16] {
            for sparse in [false, true] {
                let (x, y) = data(128 * 50, sparse);
                let mut m = notebook_model().with_dtype_policy(policy);
                let during = fit_allocations(&mut m, &x, &y, 128, [5, 45]);
                assert_eq!(
                    during, 0,
                    "40 steps of fit allocated (sparse inputs: {sparse}, {policy})"
                );
            }
        }
    });
}

/// The book's convnet (batch 64): its convolutions, pooling and flattening
/// allocate nothing in steady state either.
#[test]
fn convnet_training_steps_allocate_nothing() {
    let _alone = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| count_this_thread())
        .build()
        .unwrap();
    pool.install(|| {
        let (x, y) = data(64 * 20, true);
        let mut m = Sequential::new(Input::shape([28, 28, 1]))
            .add(Conv2D::new(32, 3).activation(Activation::Relu))
            .add(MaxPooling2D::new(2))
            .add(Conv2D::new(64, 3).activation(Activation::Relu))
            .add(MaxPooling2D::new(2))
            .add(Conv2D::new(64, 3).activation(Activation::Relu))
            .add(Flatten::new())
            .add(Dropout::new(0.5))
            .add(Dense::new(64, Activation::Relu))
            .add(Dense::new(10, Activation::Softmax));
        m.compile(
            Optimizer::rmsprop(),
            Loss::CategoricalCrossentropy,
            &[Metric::Accuracy],
        )
        .unwrap();
        let during = fit_allocations(&mut m, &x, &y, 64, [5, 15]);
        assert_eq!(during, 0, "10 convnet steps allocated");
        m.set_dtype_policy(Policy::MixedBfloat16);
        let during = fit_allocations(&mut m, &x, &y, 64, [5, 15]);
        assert_eq!(during, 0, "10 convnet steps allocated under mixed_bfloat16");
    });
}

/// A thread whose packing buffers were reserved for the model's depth allocates
/// nothing in the first GEMM of each of the notebook's step it computes: so a
/// thread that rayon first gives blocks of one mid-training (the thin output
/// layer's, say) allocates nothing either.
#[test]
fn reserved_packing_buffers_cover_every_gemm_of_a_step() {
    // One thread, so that this thread computes every block.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        // The process's one-time choice of instruction set lists the candidates.
        Isa::detected();
        reserve_packing_buffers(784);
        // (name, m, k, n, A transposed)
        let gemms = [
            ("forward 1", 128, 784, 512, false),
            ("forward 2", 128, 512, 10, false),
            ("weight gradient 2", 512, 128, 10, true),
            ("gradient below 2", 128, 10, 512, false),
            ("weight gradient 1", 784, 128, 512, true),
        ];
        for (name, m, k, n, transposed) in gemms {
            let a_values = vec![0.5f32; m * k];
            let b_values = vec![0.25f32; k * n];
            let mut c_values = vec![0.0f32; m * n];
            let a = match transposed {
                true => MatRef::row_major(&a_values, k, m).t(),
                false => MatRef::row_major(&a_values, m, k),
            };
            let b = MatRef::row_major(&b_values, k, n);
            let c = MatMut::row_major(&mut c_values, m, n);
            let ((), peak) = peak_during(|| gemm(a, b, c, false, Epilogue::None));
            assert_eq!(peak, Some(0), "{name} ({m}x{k}x{n}) allocated");
            assert!(c_values.iter().all(|&v| v == 0.125 * k as f32), "{name}");
        }
    });
}
