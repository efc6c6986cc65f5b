//! capo's policy core: Calico's policy model, the state store that Felix's updates
//! build, the reference evaluator and the capo views.
//!
//! Everything here is pure: no I/O, no clocks, no threads. The agent converts Felix's
//! protobuf (or manifests) into [`Update`]s, applies them to a [`State`] (validated
//! first, so a rejected update changes nothing), and asks the evaluator or the views.
//!
//! Nothing in this crate panics on input: bad values are rejected by the validating
//! constructors at the edge ([`Cidr`], [`PortRange`], [`Protocol`], [`Member`]).
#![warn(missing_docs)]

pub mod config;
pub mod eval;
pub mod ipset;
pub mod model;
pub mod net;
pub mod state;
pub mod views;

pub use config::{EndpointToHostAction, FailsafePort, FelixConfig, HostMetadata};
pub use eval::{trace, Decider, Outcome, Packet, Trace, Verdict, L4};
pub use ipset::{IpSet, IpSetId, IpSetKind, Member};
pub use model::{
    Action, Direction, HostEndpoint, HostEndpointKey, IcmpMatch, Policy, PolicyKey, Profile, Rule,
    SideMatch, TierDefault, TierInfo, WorkloadEndpoint, WorkloadKey,
};
pub use net::{Cidr, IpFamily, ParseError, PortRange, Protocol};
pub use state::{Applied, State, StateError, Update};
pub use views::{IdTable, Views};
