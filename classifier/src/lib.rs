//! capo's fast software classifier: the engine of the software fallback, used by
//! the VPP plugin and by the agent's embedded dataplane.
//!
//! - [`Builder`] compiles the policy core's [`capo_policy::State`] (with its
//!   [`capo_policy::IdTable`], for rule ids) into a [`Generation`]: per interface
//!   (each workload, the host-facing interface, each host endpoint) and direction, a
//!   program that gives exactly the reference evaluator's verdict and decider
//!   ([`capo_policy::eval`] is the specification). [`Builder::apply`] takes one
//!   update at a time and rebuilds only what depends on it.
//! - [`GenerationCell`] publishes generations to workers without locks.
//! - [`Worker`] owns a [`FlowTable`] and per-worker [`WorkerCounters`], and decides
//!   batches of parsed packets ([`parse_ethernet`], [`parse_ip`]).
//!
//! Everything is pure: no I/O, no clock (time is a [`Timestamp`] parameter), no
//! threads. Nothing panics on input; the only `unsafe` is the CPU prefetch hint.
//!
//! How a program works and why it is built this way: `docs/architecture.md`
//! ("Fast classifier").
#![warn(missing_docs)]

mod bits;
mod compile;
mod counters;
mod flow;
mod generation;
mod index;
mod packet;
mod prefetch;
mod program;

pub use compile::Builder;
pub use counters::{Counters, FlowStats, RuleCount, VerdictCount, WorkerCounters};
pub use flow::{
    reply_of, EstablishedFlows, FlowConfig, FlowTable, FullPolicy, Input, Timestamp, Worker,
    MAX_BATCH,
};
pub use generation::{
    Generation, GenerationCell, GenerationGuard, GenerationId, IfaceId, IfaceKind, Memory,
};
pub use packet::{build, parse_ethernet, parse_ip, tcp_flags, ParseError, ParsedPacket};
pub use program::{Decision, Scratch};
