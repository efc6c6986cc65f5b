//! capo's host agent: takes policy from Felix (its external dataplane driver
//! protocol) and keeps the policy core's state, ids and views; `capoctl` replays,
//! traces and demonstrates it offline.
//!
//! The protocol logic is sans-IO (`capo_felix::session`); binaries only wire it to
//! file descriptors, sockets and signals.
//!
//! ```
//! use capo_agent::views::View;
//! use capo_agent::inputs::replay::{replay_reader, ReplayOptions};
//!
//! // A recorded Felix stream (here the seed's) replayed offline, as `capoctl replay`.
//! let frames = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/felix/seed.master.frames")).unwrap();
//! let r = replay_reader(frames.as_slice(), &ReplayOptions::default()).unwrap();
//! assert!(r.in_sync);
//! let view = View::Interfaces.render(&r.state, &r.ids);
//! assert!(view.starts_with("Interfaces with policies configured:"));
//! ```
#![warn(missing_docs)]
//!
//! By role:
//!
//! - [`core`]: the daemon core (policy across connections, generations, commits to
//!   the dataplanes; no I/O) and the agent's configuration file;
//! - [`inputs`]: where policy and packets come from (Felix's stream, fds and
//!   socket; manifests; recordings; a DPDK port);
//! - [`sinks`]: the dataplanes that follow the generations (embedded, VPP, NIC);
//! - [`api`]: the gRPC server, its readers and client, and the metrics scrape;
//! - [`views`]: the views, packet arguments and trace output the API and capoctl
//!   share;
//! - [`capoctl`]: capoctl's offline demonstration;
//! - [`process`]: logging and signals.

pub mod api;
pub mod capoctl;
pub mod core;
pub mod fuzzing;
pub mod inputs;
pub mod process;
pub mod sinks;
pub mod views;
