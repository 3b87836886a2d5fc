//! Ctrl-C during training: the first press lets the current step finish and stops
//! the run (with a checkpoint when one is asked for); a second press quits at once.

use kerno_model::{Callback, Control, ModelError};
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of a run stopped by Ctrl-C: 128 + SIGINT, as shells report it.
pub const EXIT_CODE: u8 = 130;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Routes Ctrl-C (SIGINT, and SIGTERM) to [`StopOnInterrupt`] instead of ending the process.
pub fn install() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::Relaxed) {
            std::process::exit(EXIT_CODE.into());
        }
        eprintln!("\nstopping after the current step (Ctrl-C again quits at once)");
    })
    .map_err(|e| anyhow::anyhow!("could not set the Ctrl-C handler: {e}"))
}

/// Interrupts `fit` after the step during which Ctrl-C was pressed.
pub struct StopOnInterrupt;

impl Callback for StopOnInterrupt {
    fn on_batch_end(&mut self, _: usize, _: usize, _: f32) -> Result<Control, ModelError> {
        Ok(if REQUESTED.load(Ordering::Relaxed) {
            Control::Interrupt
        } else {
            Control::Continue
        })
    }
}

/// The error that ends a run stopped by Ctrl-C; `main` exits with [`EXIT_CODE`].
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}
