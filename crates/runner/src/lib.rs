//! The `kerno` command as a library: its arguments ([`cli`]) and what each command
//! does ([`run`]), so that tests and fuzzers can drive them without a process.

#![forbid(unsafe_code)]

mod bench;
pub mod cli;
mod commands;
mod confusion;
mod interrupt;
pub mod models;
mod output;
mod plot;
mod predict;
mod profile;
mod records;

pub use commands::run;
pub use interrupt::{Interrupted, EXIT_CODE as INTERRUPTED_EXIT_CODE};
pub use plot::register_plot_font;
