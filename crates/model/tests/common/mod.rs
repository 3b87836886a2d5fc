//! What the training-run tests share: a model's weights as bits, and a callback
//! that interrupts a run after a given step.

use kerno_model::{Callback, Control, ModelError, Sequential};

/// Every weight of `model`, in order, as its bits.
pub fn bits(model: &Sequential) -> Vec<u32> {
    model
        .weights()
        .iter()
        .flat_map(|t| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        .collect()
}

/// Interrupts the run right after step `step` of epoch `epoch` (both 0-based).
pub struct InterruptAt {
    pub epoch: usize,
    pub step: usize,
}

impl Callback for InterruptAt {
    fn on_batch_end(&mut self, epoch: usize, step: usize, _: f32) -> Result<Control, ModelError> {
        Ok(if (epoch, step) == (self.epoch, self.step) {
            Control::Interrupt
        } else {
            Control::Continue
        })
    }
}
