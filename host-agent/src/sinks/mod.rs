//! The dataplanes that follow the agent's generations: the embedded classifier
//! (with a simulated NIC in front of it), the capo VPP plugin, and the NIC model.
//!
//! The daemon needs one thing of a dataplane: that it takes generations
//! ([`PolicySink`]). Readers (the API, metrics) and packet sources (a DPDK port)
//! reach the dataplane itself past the daemon's lock, through [`Dataplane`].

use capo_policy::{Direction, IdTable, Packet, State, Update, Verdict};
use capo_proto::capo::agent::v1 as api;

pub mod embedded;
#[cfg(test)]
mod fixtures;
pub mod nic;
pub mod vpp;
pub mod vpp_share;

use embedded::{lock_embedded, InjectError, SharedEmbedded};
use vpp::VppHandle;

/// What a dataplane reports of a generation it took, for the commit history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// A line for the commit history.
    pub detail: String,
}

impl Committed {
    /// An outcome with this detail.
    pub fn new(detail: impl Into<String>) -> Self {
        Committed {
            detail: detail.into(),
        }
    }
}

/// Why a dataplane did not take a generation (it keeps its previous one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The thread that hands generations to the dataplane has ended.
    #[error("the {0} sink stopped")]
    Stopped(&'static str),
}

/// A dataplane that follows the agent's generations.
pub trait PolicySink: Send {
    /// Its name in logs and in the commit history.
    fn name(&self) -> &str;

    /// Takes generation `generation`. `delta` holds the updates since the previous
    /// generation, or is `None` when the whole state must be taken (after a
    /// reconcile). An error keeps the sink's previous generation; the agent logs it
    /// and records it in the history.
    fn commit(
        &mut self,
        generation: u64,
        state: &State,
        ids: &IdTable,
        delta: Option<&[Update]>,
    ) -> Result<Committed, SinkError>;

    /// The dataplane behind the sink.
    fn dataplane(&self) -> Dataplane;
}

/// A dataplane, as readers and packet sources reach it.
#[derive(Clone)]
pub enum Dataplane {
    /// The embedded classifier: counters, the NIC's plan, packets.
    Embedded(SharedEmbedded),
    /// The capo VPP plugin: views, counters and acknowledgements come from VPP.
    Vpp(VppHandle),
}

impl Dataplane {
    /// The embedded dataplane's counters.
    pub fn counters(&self, state: &State, ids: &IdTable) -> Option<api::CountersReply> {
        match self {
            Dataplane::Embedded(e) => Some(embedded::counters(e, state, ids)),
            Dataplane::Vpp(_) => None,
        }
    }

    /// The embedded dataplane's NIC plan, when it has a NIC.
    pub fn offload_plan(&self, state: &State, ids: &IdTable) -> Option<api::OffloadPlanReply> {
        match self {
            Dataplane::Embedded(e) => lock_embedded(e).offload_plan(state, ids),
            Dataplane::Vpp(_) => None,
        }
    }

    /// Where a packet at `interface`/`dir` would be decided (`nic` or `software`),
    /// when the embedded dataplane drives a NIC.
    pub fn decided_in(
        &self,
        interface: &str,
        dir: Direction,
        pkt: &Packet,
    ) -> Option<&'static str> {
        match self {
            Dataplane::Embedded(e) => lock_embedded(e).decided_where(interface, dir, pkt),
            Dataplane::Vpp(_) => None,
        }
    }

    /// Classifies frames from the wire (a DPDK port) in the embedded dataplane;
    /// `None` before its first generation.
    pub fn classify_wire(&self, frames: &[&[u8]]) -> Option<Vec<Verdict>> {
        match self {
            Dataplane::Embedded(e) => lock_embedded(e).classify_wire(frames),
            Dataplane::Vpp(_) => None,
        }
    }

    /// Classifies raw frames as arriving at `interface`/`dir` in the embedded
    /// dataplane.
    pub(crate) fn inject(
        &self,
        interface: &str,
        dir: Direction,
        frames: &[Vec<u8>],
    ) -> Option<Result<api::InjectReply, InjectError>> {
        match self {
            Dataplane::Embedded(e) => Some(lock_embedded(e).inject(interface, dir, frames)),
            Dataplane::Vpp(_) => None,
        }
    }
}
