//! Generations as the plugin holds them, and the cell workers read them from.
//!
//! A [`Generation`] is immutable once built: the validated policy state, the views' id
//! table (with VPP's `sw_if_index`es), the policed interfaces and the classifier built
//! for them. [`GenerationCell`] publishes it RCU-style (`arc-swap`): a worker loads the
//! active generation once per frame without locking, and a generation is freed when its
//! last reader lets go, so no worker ever sees a half-built state. The control path
//! additionally publishes under VPP's worker barrier (see `control`), so the flip is
//! also atomic with the feature enables it comes with.
//!
//! The cell keeps the previous generation while the next one settles: a NIC mark from
//! either is honoured (DESIGN.md §4).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use capo_policy::{Direction, HostEndpointKey, IdTable, State, WorkloadKey};

use crate::classify::{Classifier, ClassifierBuilder};
use crate::mark::tag_of;

/// VPP's software interface index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SwIfIndex(pub u32);

impl std::fmt::Display for SwIfIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The direction of VPP's graph: a packet received on, or sent out of, an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VppDir {
    /// Received by VPP on the interface (the ip4/ip6-unicast arcs).
    Rx,
    /// About to be sent on the interface (the ip4/ip6-output arcs).
    Tx,
}

/// What an interface is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IfaceKind {
    /// A local workload's interface (pod tun/tap/memif).
    Workload(WorkloadKey),
    /// The host-facing interface (CalicoVPP's host tap).
    Host,
    /// A host endpoint's interface (uplink, tunnel): forwarded traffic.
    Forward(HostEndpointKey),
}

/// One policed interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// The interface's VPP name.
    pub name: String,
    /// What it is.
    pub kind: IfaceKind,
    /// VPP's index.
    pub sw_if_index: SwIfIndex,
    /// `invert_rx_tx` (reference/capo-upstream.md §2.1): set on uplinks and tunnels,
    /// where a packet VPP receives is Calico ingress.
    pub inverted: bool,
}

impl Iface {
    /// Calico's direction (relative to the interface's endpoint) of a packet going
    /// `dir` in VPP: `rx XOR invert` selects egress (the rx policies).
    pub fn calico_dir(&self, dir: VppDir) -> Direction {
        if (dir == VppDir::Rx) != self.inverted {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

/// The interfaces a state polices, by name: workloads, the host-facing interface, and
/// named host endpoints (`*` has no interface of its own).
pub fn policed_interfaces(state: &State, host_interface: &str) -> Vec<(String, IfaceKind, bool)> {
    let mut out = vec![(host_interface.to_string(), IfaceKind::Host, false)];
    for (key, wep) in state.workloads() {
        out.push((wep.name.clone(), IfaceKind::Workload(key.clone()), false));
    }
    for (key, hep) in state.host_endpoints() {
        if !hep.name.is_empty() && hep.name != "*" {
            out.push((hep.name.clone(), IfaceKind::Forward(key.clone()), true));
        }
    }
    out
}

/// An immutable compiled snapshot.
#[derive(Debug)]
pub struct Generation {
    id: u64,
    state: Arc<State>,
    ids: IdTable,
    ifaces: Vec<Iface>,
    by_sw_if_index: HashMap<SwIfIndex, usize>,
    unknown: Vec<String>,
    classifier: Arc<dyn Classifier>,
}

impl Generation {
    /// Builds generation `id` from a validated state; `resolved` maps interface names to
    /// VPP indexes (names without one are reported in [`Generation::unknown_interfaces`]
    /// and not policed).
    pub fn build(
        id: u64,
        state: State,
        host_interface: &str,
        resolved: &HashMap<String, SwIfIndex>,
        build_classifier: ClassifierBuilder,
    ) -> Generation {
        let mut ids = IdTable::new(host_interface);
        let mut ifaces = Vec::new();
        let mut unknown = Vec::new();
        for (name, kind, inverted) in policed_interfaces(&state, host_interface) {
            match resolved.get(&name) {
                Some(idx) => {
                    ids.set_interface_index(&name, idx.0);
                    ifaces.push(Iface {
                        name,
                        kind,
                        sw_if_index: *idx,
                        inverted,
                    });
                }
                None => unknown.push(name),
            }
        }
        ids.sync(&state);
        let by_sw_if_index = ifaces
            .iter()
            .enumerate()
            .map(|(i, f)| (f.sw_if_index, i))
            .collect();
        let state = Arc::new(state);
        let classifier = build_classifier(&state);
        Generation {
            id,
            state,
            ids,
            ifaces,
            by_sw_if_index,
            unknown,
            classifier,
        }
    }

    /// The generation's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The policy state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The views' ids (synced with [`Generation::state`]).
    pub fn ids(&self) -> &IdTable {
        &self.ids
    }

    /// The policed interfaces.
    pub fn interfaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The interface with this index, if policed.
    pub fn interface(&self, sw_if_index: SwIfIndex) -> Option<&Iface> {
        self.by_sw_if_index
            .get(&sw_if_index)
            .and_then(|i| self.ifaces.get(*i))
    }

    /// Endpoint interfaces VPP does not have.
    pub fn unknown_interfaces(&self) -> &[String] {
        &self.unknown
    }

    /// The classifier.
    pub fn classifier(&self) -> &dyn Classifier {
        &*self.classifier
    }

    /// The views over this generation (`show capo …`).
    pub fn views(&self) -> capo_policy::Views<'_> {
        capo_policy::Views::new(&self.state, &self.ids)
    }
}

/// The active generation and the one before it, as workers see them.
#[derive(Debug, Default)]
pub struct GenerationCell {
    active: ArcSwapOption<Generation>,
    previous: ArcSwapOption<Generation>,
}

impl GenerationCell {
    /// An empty cell: no generation yet (nothing is policed).
    pub fn new() -> Self {
        GenerationCell::default()
    }

    /// The active generation (lock-free; hold the result for one frame).
    pub fn load(&self) -> Option<Arc<Generation>> {
        self.active.load_full()
    }

    /// The id of the active generation, 0 without one.
    pub fn active_id(&self) -> u64 {
        self.active.load().as_ref().map_or(0, |g| g.id)
    }

    /// Makes `next` active; the formerly active one stays readable as the previous
    /// generation (for NIC marks) until the next publish.
    pub fn publish(&self, next: Arc<Generation>) {
        let old = self.active.swap(Some(next));
        self.previous.store(old);
    }

    /// Whether a NIC mark's generation tag is that of a generation software holds.
    pub fn holds_tag(&self, tag: u8) -> bool {
        let is = |g: &Option<Arc<Generation>>| g.as_ref().is_some_and(|g| tag_of(g.id) == tag);
        is(&self.active.load()) || is(&self.previous.load())
    }

    /// The previous generation's id, if one is still held.
    pub fn previous_id(&self) -> Option<u64> {
        self.previous.load().as_ref().map(|g| g.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Reference;

    #[test]
    fn rx_xor_invert_selects_egress() {
        let mut f = Iface {
            name: "tun3".into(),
            kind: IfaceKind::Host,
            sw_if_index: SwIfIndex(11),
            inverted: false,
        };
        assert_eq!(f.calico_dir(VppDir::Rx), Direction::Egress);
        assert_eq!(f.calico_dir(VppDir::Tx), Direction::Ingress);
        f.inverted = true;
        assert_eq!(f.calico_dir(VppDir::Rx), Direction::Ingress);
        assert_eq!(f.calico_dir(VppDir::Tx), Direction::Egress);
    }

    #[test]
    fn cell_keeps_previous_for_marks() {
        let cell = GenerationCell::new();
        assert_eq!(cell.active_id(), 0);
        assert!(cell.load().is_none());
        let g = |id| {
            Arc::new(Generation::build(
                id,
                State::new(),
                "tap0",
                &HashMap::new(),
                Reference::build,
            ))
        };
        cell.publish(g(1));
        cell.publish(g(2));
        assert_eq!(cell.active_id(), 2);
        assert_eq!(cell.previous_id(), Some(1));
        assert!(cell.holds_tag(1) && cell.holds_tag(2) && !cell.holds_tag(3));
        cell.publish(g(3));
        assert!(!cell.holds_tag(1));
    }

    #[test]
    fn unresolved_names_are_reported_not_policed() {
        let mut resolved = HashMap::new();
        resolved.insert("tap0".to_string(), SwIfIndex(1));
        let g = Generation::build(1, State::new(), "tap0", &resolved, Reference::build);
        assert_eq!(g.interfaces().len(), 1);
        assert!(g.unknown_interfaces().is_empty());
        let g = Generation::build(1, State::new(), "tap0", &HashMap::new(), Reference::build);
        assert_eq!(g.unknown_interfaces(), ["tap0".to_string()]);
        assert!(g.interface(SwIfIndex(1)).is_none());
    }
}
