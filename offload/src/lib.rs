//! capo's NIC offload: the hot part of the policy as DPDK `rte_flow` rules, with the
//! software fallback always holding the whole policy (the NIC is only ever a cache of
//! decisions software would make).
//!
//! Layers, from the bottom:
//!
//! - [`flow`]: the rte_flow rule model (attributes; items ETH/IPv4/IPv6/TCP/UDP/SCTP/
//!   ICMP/ICMP6 with spec/mask/last; actions DROP/MARK/RSS/QUEUE/COUNT/JUMP), bounded
//!   with `heapless`, no allocation per rule, `no_std`. With [`caps`], [`mark`],
//!   [`error`] and the [`backend::FlowBackend`] trait it builds without `std`.
//! - `lower` (std): a generation's policy state → per-endpoint first-match lists with
//!   exact (disjoint prefix) matches or typed reasons; `atom`: a match → disjoint
//!   NIC entries (port ranges as prefixes unless the NIC has native ranges).
//! - `plan`: the split planner, a pure function (program, capabilities, hit counters)
//!   → [`plan::OffloadPlan`], every rule kept in software with a typed reason.
//! - `sim`: a simulated NIC with mlx5-, E810- and cnxk-like profiles and fault
//!   injection; `dpdk` (feature `dpdk`): the backend on a real port and `acl`, a safe
//!   rte_acl wrapper.
//! - `commit`: generation commits (versioned groups + dispatcher, or drop-only
//!   monotone), rollback on failure; `verdict`: how software combines the NIC's
//!   outcome with its own classification.
//!
//! The offload benchmark (traffic over time windows, held-out measurement) is
//! `capo-bench offload`, in the `bench` crate.
//!
//! Nothing here panics on input; errors are typed.
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
//! // Lower generation 1 and split it for a ConnectX-like NIC of 4,096 entries.
//! let program = capo_offload::lower(&state, &ids, 1);
//! let caps = capo_offload::NicCaps::mlx5(4096);
//! let hits = capo_offload::plan::HitCounters::default();
//! let plan = capo_offload::plan::plan(&state, &program, &caps, &hits, &Default::default());
//! assert!(plan.entries_used() <= 4096);
//! // Whatever stays in software says why.
//! for kept in &plan.kept {
//!     println!("{:?}: {:?}", kept.origin, kept.reason);
//! }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

pub mod backend;
pub mod caps;
pub mod error;
pub mod flow;
pub mod mark;

#[cfg(feature = "std")]
pub mod atom;
#[cfg(feature = "std")]
pub mod commit;
#[cfg(feature = "std")]
pub mod lower;
#[cfg(feature = "std")]
pub mod plan;
#[cfg(feature = "std")]
pub mod probe;
#[cfg(feature = "std")]
pub mod set;
#[cfg(feature = "std")]
pub mod sim;
#[cfg(feature = "std")]
pub mod testpmd;
#[cfg(all(feature = "std", any(test, feature = "testutils")))]
pub mod testutils;
#[cfg(feature = "std")]
pub mod verdict;

#[cfg(feature = "dpdk")]
pub mod acl;
#[cfg(feature = "dpdk")]
pub mod dpdk;

pub use backend::{FlowBackend, FlowCount, FlowHandle};
pub use caps::{NicCaps, OffloadMode};
pub use error::{ErrorTarget, FlowError, FlowErrorKind};
pub use flow::{Action, Attr, FlowRule, Group, Headers, Item, Priority, RuleError, Spec};

#[cfg(feature = "std")]
pub use commit::{CommitOutcome, Committer, LearnOutcome, RefreshOutcome, SoftwareView};
#[cfg(feature = "std")]
pub use lower::{lower, OffloadProgram};
#[cfg(feature = "std")]
pub use plan::{plan, replan, HitCounters, KeepReason, OffloadPlan, PlanConfig};
#[cfg(feature = "std")]
pub use sim::{Faults, NicOutcome, SimNic};
