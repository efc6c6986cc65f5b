//! The one trait every rte_flow backend implements: the simulated NIC and the DPDK port.
//!
//! The contract follows rte_flow's (offload.md §1.6): `validate` is advisory (a
//! successful validate does not promise a successful create); `create` returns a
//! handle or an error; `destroy` is only guaranteed in reverse creation order, which is
//! how capo always destroys. There is no flush: capo never removes rules it did not
//! create.

use crate::caps::NicCaps;
use crate::error::FlowError;
use crate::flow::FlowRule;

/// An installed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowHandle(pub u64);

/// A COUNT reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowCount {
    /// Packets.
    pub hits: u64,
    /// Bytes.
    pub bytes: u64,
}

/// An rte_flow device.
pub trait FlowBackend {
    /// Capabilities (probed or profiled).
    fn caps(&self) -> &NicCaps;
    /// `rte_flow_validate`.
    ///
    /// # Errors
    ///
    /// The device's refusal, typed.
    fn validate(&mut self, rule: &FlowRule) -> Result<(), FlowError>;
    /// `rte_flow_create`.
    ///
    /// # Errors
    ///
    /// The device's refusal, typed.
    fn create(&mut self, rule: &FlowRule) -> Result<FlowHandle, FlowError>;
    /// `rte_flow_destroy`.
    ///
    /// # Errors
    ///
    /// The device's refusal, typed.
    fn destroy(&mut self, handle: FlowHandle) -> Result<(), FlowError>;
    /// `rte_flow_query` of the rule's COUNT action.
    ///
    /// # Errors
    ///
    /// The device's refusal, typed (`NotSup` without counters).
    fn query_count(&mut self, handle: FlowHandle, reset: bool) -> Result<FlowCount, FlowError>;
}
