//! Optimizers with Keras 3's defaults and update rules, and their per-parameter state.

use crate::error::ModelError;
use crate::layers::Layer;
use crate::workspace::Workspace;
use kerno_tensor::optim::RmsProp;
use kerno_tensor::profile::{self, Work};
use kerno_tensor::{optim, AlignedBuf, Isa};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    RmsProp {
        learning_rate: f32,
        rho: f32,
        epsilon: f32,
    },
    Sgd {
        learning_rate: f32,
        momentum: f32,
        nesterov: bool,
    },
    Adam {
        learning_rate: f32,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
    },
}

impl Optimizer {
    /// `keras.optimizers.RMSprop()`: learning rate 0.001, rho 0.9, epsilon 1e-7.
    pub fn rmsprop() -> Self {
        Optimizer::RmsProp {
            learning_rate: 0.001,
            rho: 0.9,
            epsilon: 1e-7,
        }
    }

    /// `keras.optimizers.SGD()`: learning rate 0.01, no momentum.
    pub fn sgd() -> Self {
        Optimizer::Sgd {
            learning_rate: 0.01,
            momentum: 0.0,
            nesterov: false,
        }
    }

    /// `keras.optimizers.Adam()`: learning rate 0.001, betas 0.9 and 0.999, epsilon 1e-7.
    pub fn adam() -> Self {
        Optimizer::Adam {
            learning_rate: 0.001,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::RmsProp { .. } => "rmsprop",
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
        }
    }

    pub fn learning_rate(&self) -> f32 {
        match *self {
            Optimizer::RmsProp { learning_rate, .. }
            | Optimizer::Sgd { learning_rate, .. }
            | Optimizer::Adam { learning_rate, .. } => learning_rate,
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_learning_rate(mut self, lr: f32) -> Self {
        match &mut self {
            Optimizer::RmsProp { learning_rate, .. }
            | Optimizer::Sgd { learning_rate, .. }
            | Optimizer::Adam { learning_rate, .. } => *learning_rate = lr,
        }
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let lr = self.learning_rate();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(ModelError::invalid(
                "learning rate",
                format!("{lr} (must be a finite number above 0)"),
            ));
        }
        let in_unit = |name, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(ModelError::invalid(
                    name,
                    format!("{v} (must be in [0, 1))"),
                ))
            }
        };
        match *self {
            Optimizer::RmsProp { rho, epsilon, .. } => {
                in_unit("rho", rho)?;
                positive("epsilon", epsilon)
            }
            Optimizer::Sgd { momentum, .. } => in_unit("momentum", momentum),
            Optimizer::Adam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => {
                in_unit("beta_1", beta_1)?;
                in_unit("beta_2", beta_2)?;
                positive("epsilon", epsilon)
            }
        }
    }

    /// Buffers of state per parameter tensor.
    fn slots(&self) -> usize {
        self.slot_names().len()
    }

    /// Keras' names of the buffers kept per parameter tensor.
    pub(crate) fn slot_names(&self) -> &'static [&'static str] {
        match *self {
            Optimizer::RmsProp { .. } => &["velocity"],
            Optimizer::Sgd { momentum, .. } if momentum > 0.0 => &["momentum"],
            Optimizer::Sgd { .. } => &[],
            Optimizer::Adam { .. } => &["momentum", "velocity"],
        }
    }

    /// The state buffers of the first layer's kernel, the first in `state`.
    pub(crate) fn first_kernel_slots<'s>(&self, state: &'s OptimizerState) -> &'s [AlignedBuf] {
        &state.slots[..self.slots().min(state.slots.len())]
    }

    pub(crate) fn new_state(&self, layers: &[Layer]) -> OptimizerState {
        let sizes = layers
            .iter()
            .flat_map(|l| l.params().into_iter().map(|(_, _, v)| v.len()));
        let slots = sizes
            .flat_map(|n| std::iter::repeat_n(n, self.slots()))
            .map(AlignedBuf::zeros)
            .collect();
        OptimizerState {
            slots,
            iterations: 0,
        }
    }

    /// Applies one update to every parameter from the gradients in `ws`, and
    /// refreshes its bf16 copies there under `mixed_bfloat16`; returns whether
    /// every value it wrote into the first layer's kernel, its state and its
    /// copy is finite (the rows it skipped keep what they held).
    pub(crate) fn apply(
        &self,
        state: &mut OptimizerState,
        layers: &mut [Layer],
        ws: &mut Workspace,
    ) -> bool {
        let Workspace {
            zero_inputs,
            dparams,
            compute_params,
            ..
        } = ws;
        let mut first_kernel_finite = true;
        state.iterations += 1;
        let per_param = self.slots();
        let mut slots = state.slots.chunks_exact_mut(per_param.max(1));
        for (l, layer) in layers.iter_mut().enumerate() {
            // A sparse batch's empty columns: rows of the first kernel's gradient
            // that the weight-gradient product has set to zeros.
            let zero_rows = (l == 0 && !zero_inputs.is_empty()).then_some(&zero_inputs[..]);
            let units = layer.output_shape().last().copied().unwrap_or(1);
            let params = layer.params_mut();
            if params.iter().all(Option::is_none) {
                continue;
            }
            let _span = profile::span(|| {
                let values = params.iter().flatten().map(|p| p.len() as u64).sum::<u64>();
                // Values of rows of zeros whose update is the velocity's decay alone.
                let decayed = match (self, zero_rows) {
                    (Optimizer::RmsProp { .. }, Some(zero)) => {
                        (zero.iter().filter(|&&z| z).count() * units) as u64
                    }
                    _ => 0,
                };
                // Each value: the weight read and written, its gradient read, each
                // slot read and written; a decayed one, its velocity read and written.
                let bytes = 4 * ((values - decayed) * (3 + 2 * per_param as u64) + 2 * decayed);
                Work::kernel("optimizer update").layer(l).bytes(bytes)
            });
            let grads = dparams[l].iter();
            let mut copies = compute_params.get_mut(l).map(|c| c.iter_mut());
            for (i, (w, g)) in params.into_iter().flatten().zip(grads).enumerate() {
                // Only the kernel (the first parameter) of the first layer has zero rows.
                let zero_rows = if i == 0 { zero_rows } else { None };
                let slot = if per_param > 0 { slots.next() } else { None };
                let copy = copies.as_mut().and_then(Iterator::next).map(|c| &mut c[..]);
                let finite = self.step(w, g, zero_rows, slot, copy, state.iterations);
                if l == 0 && i == 0 {
                    first_kernel_finite = finite;
                }
            }
        }
        first_kernel_finite
    }

    /// One update of `w`, whose gradient is `g`, zeros in `zero_rows` if given
    /// (only RMSprop takes the shortcut; the others' updates there are not just
    /// their state's decay), and of its bf16 copy if given (`mixed_bfloat16`);
    /// whether every value it wrote, the copy's included, is finite.
    fn step(
        &self,
        w: &mut [f32],
        g: &[f32],
        zero_rows: Option<&[bool]>,
        slot: Option<&mut [AlignedBuf]>,
        bf16_copy: Option<&mut [f32]>,
        iteration: u64,
    ) -> bool {
        // RMSprop, the default, refreshes the copy in its own pass, in cache.
        let (bf16_copy, copy_after) = match self {
            Optimizer::RmsProp { .. } => (bf16_copy, None),
            _ => (None, bf16_copy),
        };
        let finite = match (*self, slot) {
            (
                Optimizer::RmsProp {
                    learning_rate,
                    rho,
                    epsilon,
                },
                Some([v]),
            ) => {
                let p = RmsProp {
                    lr: learning_rate,
                    rho,
                    epsilon,
                };
                optim::rmsprop_step_with(Isa::detected(), w, g, v, zero_rows, bf16_copy, p)
            }
            (
                Optimizer::Sgd {
                    learning_rate,
                    momentum,
                    nesterov,
                },
                slot,
            ) => {
                let buf = slot.map(|s| &mut s[0][..]);
                optim::sgd_step(w, g, buf, learning_rate, momentum, nesterov)
            }
            (
                Optimizer::Adam {
                    learning_rate,
                    beta_1,
                    beta_2,
                    epsilon,
                },
                Some([m, v]),
            ) => {
                let alpha = optim::adam_step_size(learning_rate, beta_1, beta_2, iteration);
                optim::adam_step(w, g, m, v, alpha, beta_1, beta_2, epsilon)
            }
            _ => unreachable!("state holds {} slots per parameter", self.slots()),
        };
        match copy_after {
            Some(copy) => kerno_tensor::bf16::round_into(w, copy) && finite,
            None => finite,
        }
    }
}

fn positive(name: &'static str, v: f32) -> Result<(), ModelError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ModelError::invalid(name, format!("{v} (must be above 0)")))
    }
}

impl fmt::Display for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Optimizer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rmsprop" => Ok(Optimizer::rmsprop()),
            "sgd" => Ok(Optimizer::sgd()),
            "adam" => Ok(Optimizer::adam()),
            other => Err(format!(
                "unknown optimizer '{other}' (expected rmsprop, sgd or adam)"
            )),
        }
    }
}

/// An optimizer's buffers (one or two per parameter tensor) and its step count.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OptimizerState {
    pub slots: Vec<AlignedBuf>,
    pub iterations: u64,
}
