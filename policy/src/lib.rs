//! capo's policy core: Calico's policy model, the state store that Felix's updates
//! build, the reference evaluator and the capo views.
//!
//! Everything here is pure: no I/O, no clocks, no threads. The agent converts Felix's
//! protobuf (or manifests) into [`Update`]s, applies them to a [`State`] (validated
//! first, so a rejected update changes nothing), and asks the evaluator or the views.
//!
//! Nothing in this crate panics on input: bad values are rejected by the validating
//! constructors at the edge ([`Cidr`], [`PortRange`], [`Protocol`], [`Member`]).
//!
//! ```
//! use capo_policy::*;
//!
//! // A pod whose only policy admits TCP 5978.
//! let key = PolicyKey { kind: "NetworkPolicy".into(), namespace: "default".into(), name: "web".into() };
//! let mut allow = Rule::any(Action::Allow);
//! allow.protocol = Some(Protocol::TCP);
//! allow.dst.ports = vec![PortRange::single(5978)];
//! let policy = Policy { inbound: vec![allow], outbound: vec![], untracked: false, pre_dnat: false, tier: "default".into() };
//! let pod = WorkloadEndpoint {
//!     name: "tun3".into(),
//!     profile_ids: vec![],
//!     ipv4_nets: vec!["11.0.0.67/32".parse().unwrap()],
//!     ipv6_nets: vec![],
//!     tiers: vec![TierInfo { name: "default".into(), ingress: vec![key.clone()], egress: vec![], default_action: TierDefault::Deny }],
//! };
//! let id = WorkloadKey { orchestrator: "k8s".into(), workload: "default/ts2".into(), endpoint: "eth0".into() };
//! let mut state = State::new();
//! state.apply(Update::PolicyUpdate(key, policy.into())).unwrap();
//! state.apply(Update::WorkloadUpdate(id, pod.into())).unwrap();
//!
//! let to = |port| Packet {
//!     src: "11.0.0.196".parse().unwrap(),
//!     dst: "11.0.0.67".parse().unwrap(),
//!     protocol: Protocol::TCP,
//!     l4: L4::Ports { src: 40000, dst: port },
//! };
//! assert_eq!(trace(&state, &to(5978)).verdict, Verdict::Allow);
//! assert_eq!(trace(&state, &to(5979)).verdict, Verdict::Deny);
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod eval;
pub mod ids;
pub mod ipset;
pub mod model;
pub mod net;
pub mod ordered;
pub mod state;
pub mod views;

pub use compact_str::CompactString;
pub use config::{EndpointToHostAction, FailsafePort, FelixConfig, HostMetadata};
pub use eval::{trace, Decider, Outcome, Packet, Trace, Verdict, L4};
pub use ids::IdTable;
pub use ipset::{IpSet, IpSetId, IpSetKind, Member};
pub use model::{
    Action, Direction, HostEndpoint, HostEndpointKey, IcmpMatch, Policy, PolicyKey, Profile, Rule,
    SideMatch, TierDefault, TierInfo, WorkloadEndpoint, WorkloadKey,
};
pub use net::{Cidr, IpFamily, ParseError, PortRange, Protocol};
pub use ordered::OrderedMap;
pub use state::{Applied, State, StateError, StateMap, Update};
pub use views::Views;
