//! Back-propagation through convolutions, pooling, flattening and dropout
//! against central finite differences of an f64 reference forward pass:
//! `Conv2D → Conv2D → MaxPooling2D → Flatten → Dropout → Dense(softmax)`, the
//! second convolution with each padding, strides 1 and 2 and odd windows (its
//! input gradient reaches the first), dropout with the mask the step draws.

use kerno_model::{
    Activation, Conv2D, Dense, Dropout, Flatten, Input, Layer, Loss, MaxPooling2D, Optimizer,
    Padding, Sequential,
};
use kerno_tensor::conv::Windows;
use kerno_tensor::{reference, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const INPUT: [usize; 3] = [9, 8, 2];
const BATCH: usize = 3;
const CLASSES: usize = 3;

/// The second convolution: window, stride, padding, activation.
struct Case {
    window: [usize; 2],
    stride: usize,
    padding: Padding,
    activation: Activation,
}

fn windows_of(layer: &Layer, window: [usize; 2], stride: usize, padding: Padding) -> Windows {
    let [h, w, c]: [usize; 3] = layer.input_shape().try_into().expect("an image");
    Windows::new([h, w, c], window, [stride; 2], padding).expect("the window fits")
}

/// A convolution in f64: the reference product, the bias, the activation.
fn conv(w: &Windows, x: &[f64], kernel: &[f64], bias: &[f64], act: Activation) -> Vec<f64> {
    let mut out = reference::conv2d(w, BATCH, x, kernel, bias.len());
    for (v, b) in out.iter_mut().zip(bias.iter().cycle()) {
        *v += b;
    }
    reference::activation(act, &mut out, bias.len());
    out
}

/// The mean loss of the model with parameters `p` (conv1 kernel and bias,
/// conv2 kernel and bias, dense kernel and bias), in f64.
fn reference_loss(
    model: &Sequential,
    case: &Case,
    p: &[Vec<f64>],
    x: &[f64],
    y: &[f64],
    mask: &[f64],
) -> f64 {
    let layers = model.layers();
    let first = windows_of(&layers[0], [3, 3], 1, Padding::Same);
    let h = conv(&first, x, &p[0], &p[1], Activation::Tanh);
    let second = windows_of(&layers[1], case.window, case.stride, case.padding);
    let h = conv(&second, &h, &p[2], &p[3], case.activation);
    let pool = windows_of(&layers[2], [2, 2], 2, Padding::Valid);
    let (mut h, _) = reference::max_pool2d(&pool, BATCH, &h, &vec![0.0; h.len()]);
    // Flatten is the identity on NHWC rows; dropout multiplies by its mask.
    h.iter_mut().zip(mask).for_each(|(v, m)| *v *= m);
    let features = h.len() / BATCH;
    let mut z = reference::matmul_f64(&h, &p[4], BATCH, features, CLASSES);
    z.iter_mut()
        .zip(p[5].iter().cycle())
        .for_each(|(v, b)| *v += b);
    reference::softmax_xent(&z, y, CLASSES).0 / BATCH as f64
}

fn check(case: Case, seed: u64) {
    let mut model = Sequential::new(Input::shape(INPUT))
        .with_seed(seed)
        .add(
            Conv2D::new(3, 3)
                .padding(Padding::Same)
                .activation(Activation::Tanh),
        )
        .add(
            Conv2D::new(4, 1)
                .kernel_size(case.window[0], case.window[1])
                .strides(case.stride)
                .padding(case.padding)
                .activation(case.activation),
        )
        .add(MaxPooling2D::new(2))
        .add(Flatten::new())
        .add(Dropout::new(0.3))
        .add(Dense::new(CLASSES, Activation::Softmax));
    model
        .compile(Optimizer::sgd(), Loss::CategoricalCrossentropy, &[])
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Non-zero biases, so that every bias path is exercised.
    let mut weights = model.weights();
    for bias in [1, 3, 5] {
        weights[bias]
            .data_mut()
            .iter_mut()
            .for_each(|b| *b = rng.gen_range(-0.3..0.3));
    }
    model.set_weights(&weights).unwrap();
    let values: usize = INPUT.iter().product();
    let x: Vec<f32> = (0..BATCH * values)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let y: Vec<f32> = (0..BATCH * CLASSES)
        .map(|i| (i % CLASSES == i / CLASSES % CLASSES) as u8 as f32)
        .collect();
    let mask = model
        .next_dropout_mask(4, BATCH)
        .expect("layer 4 is the dropout");
    assert!(mask.contains(&0.0), "the mask drops something");
    let analytic = model
        .gradients(
            &Tensor::from_vec(&[BATCH, values], x.clone()).unwrap(),
            &Tensor::from_vec(&[BATCH, CLASSES], y.clone()).unwrap(),
        )
        .unwrap();

    let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let p: Vec<Vec<f64>> = weights.iter().map(|t| f64s(t.data())).collect();
    let (x, y, mask) = (f64s(&x), f64s(&y), f64s(&mask));
    let name = format!(
        "window {:?} stride {} {} {}",
        case.window, case.stride, case.padding, case.activation
    );
    let h = 1e-6;
    for (t, grad) in analytic.iter().enumerate() {
        for i in 0..grad.len() {
            let (mut plus, mut minus) = (p.clone(), p.clone());
            plus[t][i] += h;
            minus[t][i] -= h;
            let numeric = (reference_loss(&model, &case, &plus, &x, &y, &mask)
                - reference_loss(&model, &case, &minus, &x, &y, &mask))
                / (2.0 * h);
            let got = grad.data()[i] as f64;
            assert!(
                (got - numeric).abs() <= 1e-3 * numeric.abs().max(0.01),
                "{name}: parameter {t}[{i}] analytic {got} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn conv2d_valid_stride_1() {
    let (window, stride) = ([3, 3], 1);
    let (padding, activation) = (Padding::Valid, Activation::Relu);
    check(
        Case {
            window,
            stride,
            padding,
            activation,
        },
        1,
    );
}

#[test]
fn conv2d_same_stride_2_odd_window() {
    let (window, stride) = ([3, 2], 2);
    let (padding, activation) = (Padding::Same, Activation::Tanh);
    check(
        Case {
            window,
            stride,
            padding,
            activation,
        },
        2,
    );
}

#[test]
fn conv2d_valid_stride_2_odd_window() {
    let (window, stride) = ([2, 3], 2);
    let (padding, activation) = (Padding::Valid, Activation::Linear);
    check(
        Case {
            window,
            stride,
            padding,
            activation,
        },
        3,
    );
}

#[test]
fn conv2d_same_stride_1() {
    let (window, stride) = ([3, 3], 1);
    let (padding, activation) = (Padding::Same, Activation::Relu);
    check(
        Case {
            window,
            stride,
            padding,
            activation,
        },
        4,
    );
}
