//! Process plumbing of the binaries: logging and signals.

pub mod logging;
pub mod signals;
