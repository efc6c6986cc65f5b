//! capo's host agent: takes policy from Felix (its external dataplane driver
//! protocol) and keeps the policy core's state, ids and views; `capoctl` replays,
//! traces and demonstrates it offline.
//!
//! The protocol logic is sans-IO (`capo_felix::session`); binaries only wire it to
//! file descriptors, sockets and signals.
//!
//! ```
//! use capo_agent::cli::View;
//! use capo_agent::replay::{replay_reader, ReplayOptions};
//!
//! // A recorded Felix stream (here the seed's) replayed offline, as `capoctl replay`.
//! let frames = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/felix/seed.master.frames")).unwrap();
//! let r = replay_reader(frames.as_slice(), &ReplayOptions::default()).unwrap();
//! assert!(r.in_sync);
//! let view = View::Interfaces.render(&r.state, &r.ids);
//! assert!(view.starts_with("Interfaces with policies configured:"));
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dpdk_port;
pub mod embedded;
pub mod felix_fds;
pub mod felix_socket;
pub mod felix_stream;
pub mod fuzzing;
pub mod logging;
pub mod manifest_poll;
pub mod manifests;
pub mod metrics;
pub mod nic;
pub mod readers;
pub mod replay;
pub mod signals;
pub mod vpp;
