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
//! threads. Nothing panics on input; the only `unsafe` is the CPU prefetch hint and
//! one initialisation of a slice copied with one block move (`arc_copy`).
//!
//! How a program works and why it is built this way: `docs/architecture.md`
//! ("Fast classifier").
//!
//! ```
//! use capo_policy::*;
//!
//! // The seed: ts2 admits TCP 5978 and nothing else.
//! let key = PolicyKey { kind: "NetworkPolicy".into(), namespace: "default".into(), name: "web".into() };
//! let mut allow = Rule::any(Action::Allow);
//! allow.protocol = Some(Protocol::TCP);
//! allow.dst.ports = vec![PortRange::single(5978)];
//! let policy = Policy { inbound: vec![allow], outbound: vec![], untracked: false, pre_dnat: false, tier: "default".into() };
//! let ts2 = WorkloadKey { orchestrator: "k8s".into(), workload: "default/ts2".into(), endpoint: "eth0".into() };
//! let mut state = State::new();
//! state.apply(Update::PolicyUpdate(key.clone(), policy.into())).unwrap();
//! state.apply(Update::WorkloadUpdate(ts2.clone(), WorkloadEndpoint {
//!     name: "tun3".into(),
//!     profile_ids: vec![],
//!     ipv4_nets: vec!["11.0.0.67/32".parse().unwrap()],
//!     ipv6_nets: vec![],
//!     tiers: vec![TierInfo { name: "default".into(), ingress: vec![key], egress: vec![], default_action: TierDefault::Deny }],
//! }.into())).unwrap();
//! let mut ids = IdTable::default();
//! ids.sync(&state);
//!
//! let generation = capo_classifier::Builder::new().build(&state, &ids);
//! let tun3 = generation.interface_of(&capo_classifier::IfaceKind::Workload(ts2)).unwrap();
//! let mut scratch = capo_classifier::Scratch::default();
//! for (port, want) in [(5978, Verdict::Allow), (5979, Verdict::Deny)] {
//!     let pkt = Packet {
//!         src: "11.0.0.196".parse().unwrap(),
//!         dst: "11.0.0.67".parse().unwrap(),
//!         protocol: Protocol::TCP,
//!         l4: L4::Ports { src: 40000, dst: port },
//!     };
//!     let decision = generation.classify(tun3, Direction::Ingress, &pkt, &mut scratch).unwrap();
//!     // The reference evaluator's verdict, always.
//!     assert_eq!(decision.verdict, want);
//!     assert_eq!(trace(&state, &pkt).verdict, want);
//! }
//! ```
#![warn(missing_docs)]

mod arc_copy;
mod bits;
mod compile;
mod counters;
mod flow;
mod generation;
mod index;
mod overlay;
mod packet;
mod prefetch;
mod prefix;
mod program;

pub use compile::{Builder, ListChanges};
pub use counters::{Counters, FlowStats, RuleCount, VerdictCount, WorkerCounters};
pub use flow::{
    reply_of, EstablishedFlows, FlowConfig, FlowTable, FullPolicy, Input, Timestamp, Worker,
    MAX_BATCH,
};
pub use generation::{
    Generation, GenerationCell, GenerationGuard, GenerationId, IfaceId, IfaceKind, Memory,
    SwIfIndexMap,
};
pub use packet::{
    build, parse_ethernet, parse_ip, parse_ipv4, parse_ipv6, tcp_flags, ParseError, ParsedPacket,
};
pub use program::{Decision, Scratch};
