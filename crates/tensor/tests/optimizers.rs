//! Optimizer steps against values worked by hand from Keras 3's formulas, and
//! against the f64 reference over many steps.

use kerno_tensor::optim::RmsProp;
use kerno_tensor::{bf16, optim, reference, Isa};

const KERAS_RMSPROP: RmsProp = RmsProp {
    lr: 0.001,
    rho: 0.9,
    epsilon: 1e-7,
};

fn close(a: f32, b: f64, tol: f64) -> bool {
    (a as f64 - b).abs() <= tol * b.abs().max(1e-12)
}

#[test]
fn rmsprop_first_step_by_hand() {
    // Keras 3 defaults: lr 0.001, rho 0.9, epsilon 1e-7.
    // v = 0.1·g²; w -= 0.001·g/√(v + 1e-7).
    // g = 0.5: v = 0.025, step = 0.0005/√0.0250001 = 0.0031622713...
    let first = 0.0005 / (0.025f64 + 1e-7).sqrt();
    let (mut w, mut v) = ([1.0f32], [0.0f32]);
    optim::rmsprop_step(&mut w, &[0.5], &mut v, 0.001, 0.9, 1e-7);
    assert!(close(v[0], 0.025, 1e-6));
    assert!(close(w[0], 1.0 - first, 1e-7), "{}", w[0]);
    // A second step with g = -0.2: v = 0.0225 + 0.004 = 0.0265.
    optim::rmsprop_step(&mut w, &[-0.2], &mut v, 0.001, 0.9, 1e-7);
    assert!(close(v[0], 0.0265, 1e-6));
    let want = 1.0 - first + 0.0002 / (0.0265f64 + 1e-7).sqrt();
    assert!(close(w[0], want, 1e-7), "{} vs {want}", w[0]);
}

#[test]
fn adam_first_step_by_hand() {
    // t = 1: alpha = lr·√(1−β₂)/(1−β₁) = 0.001·√0.001/0.1; m = 0.1g; v = 0.001g²;
    // w -= alpha·m/(√v + ε) ≈ lr·sign(g) for |g| ≫ ε.
    let alpha = optim::adam_step_size(0.001, 0.9, 0.999, 1);
    // In f32 (as Keras computes it) 1 − 0.999 keeps only about 4 significant digits.
    assert!(close(alpha, 0.001 * 0.001f64.sqrt() / 0.1, 1e-4));
    let (mut w, mut m, mut v) = ([0.0f32], [0.0f32], [0.0f32]);
    optim::adam_step(&mut w, &[2.0], &mut m, &mut v, alpha, 0.9, 0.999, 1e-7);
    assert!(close(m[0], 0.2, 1e-6) && close(v[0], 0.004, 1e-4));
    let want = -(0.001 * 0.001f64.sqrt() / 0.1) * 0.2 / (0.004f64.sqrt() + 1e-7);
    assert!(close(w[0], want, 1e-4), "{} vs {want}", w[0]);
}

#[test]
fn sgd_plain_momentum_and_nesterov_by_hand() {
    let mut w = [1.0f32];
    optim::sgd_step(&mut w, &[0.5], None, 0.01, 0.0, false);
    assert!(close(w[0], 0.995, 1e-7));

    // momentum 0.9: m = -0.005, w = 0.995; then g = 0.5 again: m = -0.0095, w = 0.9855.
    let (mut w, mut m) = ([1.0f32], [0.0f32]);
    optim::sgd_step(&mut w, &[0.5], Some(&mut m), 0.01, 0.9, false);
    optim::sgd_step(&mut w, &[0.5], Some(&mut m), 0.01, 0.9, false);
    assert!(close(m[0], -0.0095, 1e-6) && close(w[0], 0.9855, 1e-7));

    // Nesterov: m = -0.005, w += 0.9·(-0.005) - 0.005 = -0.0095.
    let (mut w, mut m) = ([1.0f32], [0.0f32]);
    optim::sgd_step(&mut w, &[0.5], Some(&mut m), 0.01, 0.9, true);
    assert!(close(w[0], 0.9905, 1e-7));
}

#[test]
fn many_steps_track_the_f64_reference() {
    let n = 37;
    let grads: Vec<Vec<f32>> = (0..50)
        .map(|s| {
            (0..n)
                .map(|i| ((s * 31 + i * 7) % 23) as f32 / 11.0 - 1.0)
                .collect()
        })
        .collect();
    let g64 = |g: &[f32]| g.iter().map(|&v| v as f64).collect::<Vec<_>>();

    let (mut w, mut v) = (vec![0.5f32; n], vec![0.0f32; n]);
    let (mut w64, mut v64) = (vec![0.5f64; n], vec![0.0f64; n]);
    let (mut wa, mut ma, mut va) = (vec![0.5f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let (mut wa64, mut ma64, mut va64) = (vec![0.5f64; n], vec![0.0f64; n], vec![0.0f64; n]);
    let (mut ws, mut ms) = (vec![0.5f32; n], vec![0.0f32; n]);
    let (mut ws64, mut ms64) = (vec![0.5f64; n], vec![0.0f64; n]);
    for (step, g) in grads.iter().enumerate() {
        optim::rmsprop_step(&mut w, g, &mut v, 0.001, 0.9, 1e-7);
        reference::rmsprop_step(&mut w64, &g64(g), &mut v64, 0.001, 0.9, 1e-7);
        let alpha = optim::adam_step_size(0.001, 0.9, 0.999, step as u64 + 1);
        optim::adam_step(&mut wa, g, &mut ma, &mut va, alpha, 0.9, 0.999, 1e-7);
        reference::adam_step(
            &mut wa64,
            &g64(g),
            &mut ma64,
            &mut va64,
            0.001,
            0.9,
            0.999,
            1e-7,
            step as i32 + 1,
        );
        optim::sgd_step(&mut ws, g, Some(&mut ms), 0.01, 0.9, true);
        reference::sgd_step(&mut ws64, &g64(g), &mut ms64, 0.01, 0.9, true);
    }
    for i in 0..n {
        assert!(
            close(w[i], w64[i], 1e-5),
            "rmsprop {i}: {} vs {}",
            w[i],
            w64[i]
        );
        assert!(
            close(wa[i], wa64[i], 1e-5),
            "adam {i}: {} vs {}",
            wa[i],
            wa64[i]
        );
        assert!(
            close(ws[i], ws64[i], 1e-5),
            "sgd {i}: {} vs {}",
            ws[i],
            ws64[i]
        );
    }
}

/// The vectorised, parallel RMSprop on every instruction set, on sizes around the
/// vector widths and the parallel chunk: the same bits as the plain loop, and close
/// to the f64 reference.
#[test]
fn rmsprop_on_every_instruction_set_matches_the_plain_loop_bit_for_bit() {
    for n in [1, 7, 17, 33, 16 * 1024 + 5, 100_003] {
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w0: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let v0: Vec<f32> = (0..n).map(|i| (i % 5) as f32 / 10.0).collect();
        let (mut w_plain, mut v_plain) = (w0.clone(), v0.clone());
        for ((w, &g), v) in w_plain.iter_mut().zip(&g).zip(v_plain.iter_mut()) {
            *v = 0.9 * *v + (1.0 - 0.9) * (g * g);
            *w -= (0.001 * g) / (*v + 1e-7).sqrt();
        }
        let (mut w64, mut v64): (Vec<f64>, Vec<f64>) = (
            w0.iter().map(|&x| x as f64).collect(),
            v0.iter().map(|&x| x as f64).collect(),
        );
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        reference::rmsprop_step(&mut w64, &g64, &mut v64, 0.001, 0.9, 1e-7);
        for isa in Isa::available() {
            let (mut w, mut v) = (w0.clone(), v0.clone());
            optim::rmsprop_step_with(isa, &mut w, &g, &mut v, None, None, KERAS_RMSPROP);
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&w), bits(&w_plain), "{isa:?}, n = {n}: weights");
            assert_eq!(bits(&v), bits(&v_plain), "{isa:?}, n = {n}: velocities");
            for i in 0..n {
                assert!(
                    close(w[i], w64[i], 1e-5),
                    "{isa:?} {i}: {} vs {}",
                    w[i],
                    w64[i]
                );
            }
        }
    }
}

/// Rows named as zeros take the shortcut (the velocity's decay alone) and end
/// with the full update's bits, on every instruction set, over several tasks;
/// a bf16 copy of the weights, kept by either, is the updated weights rounded.
#[test]
fn rmsprop_skipping_zero_rows_gives_the_full_updates_bits() {
    for (rows, width) in [(1, 1), (5, 7), (40, 17), (100, 512), (784, 33)] {
        let n = rows * width;
        // Rows 0, 3, 4, 9, 12, ... are zeros: runs of one and of two.
        let is_zero = |r: usize| r.is_multiple_of(3) || r % 5 == 4;
        let g: Vec<f32> = (0..n)
            .map(|i| match is_zero(i / width) {
                true => 0.0,
                false => ((i * 37 % 101) as f32 - 50.0) / 25.0,
            })
            .collect();
        let w0: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        let v0: Vec<f32> = (0..n).map(|i| (i % 5 + 1) as f32 / 10.0).collect();
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let rounded = |x: &[f32]| {
            x.iter()
                .map(|&f| bf16::round(f).to_bits())
                .collect::<Vec<_>>()
        };
        let copy0: Vec<f32> = w0.iter().map(|&x| bf16::round(x)).collect();
        for isa in Isa::available() {
            let (mut w_full, mut v_full) = (w0.clone(), v0.clone());
            let mut copy_full = copy0.clone();
            let copy = Some(&mut copy_full[..]);
            optim::rmsprop_step_with(isa, &mut w_full, &g, &mut v_full, None, copy, KERAS_RMSPROP);
            let (mut w, mut v) = (w0.clone(), v0.clone());
            let mut copy = copy0.clone();
            let zero_rows: Vec<bool> = (0..rows).map(is_zero).collect();
            let zero_rows = Some(&zero_rows[..]);
            let p = KERAS_RMSPROP;
            optim::rmsprop_step_with(isa, &mut w, &g, &mut v, zero_rows, Some(&mut copy), p);
            let at = format!("{isa:?}, {rows}x{width}");
            assert_eq!(bits(&w), bits(&w_full), "{at}: weights");
            assert_eq!(bits(&v), bits(&v_full), "{at}: velocities");
            assert_ne!(bits(&v), bits(&v0), "{at}: the velocities decayed");
            assert_eq!(bits(&copy_full), rounded(&w_full), "{at}: bf16 copy");
            assert_eq!(
                bits(&copy),
                rounded(&w),
                "{at}: bf16 copy, zero rows skipped"
            );
        }
    }
}

#[test]
#[should_panic(expected = "10 values are not 7 rows")]
fn rmsprop_refuses_zero_rows_that_do_not_divide_the_tensor() {
    let (mut w, mut v) = (vec![0.0; 10], vec![0.0; 10]);
    let zero_rows = &[true; 7][..];
    optim::rmsprop_step_with(
        Isa::Portable,
        &mut w,
        &[0.0; 10],
        &mut v,
        Some(zero_rows),
        None,
        KERAS_RMSPROP,
    );
}

/// Keras 3 divides by `√(v + ε)`, ε inside the root. Where `v` is small next to
/// ε (gradients of 1e-4: v = 1e-9 after one step) that step is ten times
/// smaller than `lr·g/(√v + ε)` would make it, so a tolerance of 1e-5 tells the
/// two apart on every instruction set and after several steps.
#[test]
fn rmsprop_keeps_epsilon_inside_the_square_root() {
    let g = [1e-4f32, -3e-4, 2e-5, 1e-4, 5e-5, -1e-4, 7e-5, 1e-4, 3e-4];
    for isa in Isa::available() {
        // Weights from 0, so that f32 holds their moves to full precision.
        let (mut w, mut v) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
        let (mut inside, mut outside) = (vec![0.0f64; g.len()], vec![0.0f64; g.len()]);
        let mut v64 = vec![0.0f64; g.len()];
        for _ in 0..3 {
            optim::rmsprop_step_with(isa, &mut w, &g, &mut v, None, None, KERAS_RMSPROP);
            for i in 0..g.len() {
                let g = g[i] as f64;
                v64[i] = 0.9 * v64[i] + 0.1 * g * g;
                inside[i] -= 0.001 * g / (v64[i] + 1e-7).sqrt();
                outside[i] -= 0.001 * g / (v64[i].sqrt() + 1e-7);
            }
        }
        for i in 0..g.len() {
            let (got, want) = (w[i] as f64, inside[i]);
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{isa:?} {i}: moved {got:e}, Keras moves {want:e}"
            );
            let wrong = outside[i];
            assert!(
                (got - wrong).abs() > 0.5 * wrong.abs(),
                "{isa:?} {i}: ε outside the root would move it {wrong:e}"
            );
        }
    }
}
