//! The daemon core and the agent's configuration.

pub mod config;
pub mod daemon;
