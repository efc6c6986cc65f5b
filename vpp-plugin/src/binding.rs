//! Which VPP interface polices which endpoint. Pure: the control path lists VPP's
//! interfaces (index and name) and asks [`bind`].
//!
//! An endpoint is found, in this order:
//!
//! 1. **explicit**: an operator-given binding (`capo-agent --bind ENDPOINT=VPP_IF`)
//!    naming the endpoint by its workload id (`default/ts2`), workload and endpoint id
//!    (`default/ts2/eth0`), host endpoint id, or interface name. It is authoritative:
//!    while its VPP interface is missing, the endpoint is unknown;
//! 2. **name**: VPP has an interface of the endpoint's interface name (standalone VPP,
//!    or interfaces renamed to the names Felix gives);
//! 3. **calicovpp**: the endpoint's interface name is `vpp-tun-<N>`, the name a
//!    CalicoVPP node's CNI server hands back to Calico's CNI plugin for a pod
//!    interface whose `sw_if_index` is N (Calico stores it in the WorkloadEndpoint's
//!    `interfaceName`, and Felix sends it as the endpoint's name). Accepted only when
//!    VPP has interface N.
//!
//! An endpoint none of these finds is reported as unknown and not policed until one
//! does (the plugin binds again whenever VPP adds or deletes an interface).

use std::collections::HashMap;

use capo_classifier::IfaceKind;

use crate::generation::SwIfIndex;

/// The prefix of CalicoVPP's pod interface names (`vpp-tun-<sw_if_index>`).
pub const CALICOVPP_PREFIX: &str = "vpp-tun-";

/// One VPP software interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VppInterface {
    /// VPP's index.
    pub sw_if_index: SwIfIndex,
    /// VPP's name (`show interface`).
    pub name: String,
}

/// An operator-given binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplicitBinding {
    /// The endpoint: workload id, workload/endpoint id, host endpoint id or interface
    /// name.
    pub endpoint: String,
    /// VPP's name of the interface.
    pub vpp_interface: String,
}

/// How an endpoint was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// An operator-given binding.
    Explicit,
    /// VPP has an interface of the endpoint's name.
    Name,
    /// CalicoVPP's `vpp-tun-<sw_if_index>` name.
    CalicoVpp,
}

impl How {
    /// The name reported to the agent and in `show capo generations`.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Explicit => "explicit",
            How::Name => "name",
            How::CalicoVpp => "calicovpp",
        }
    }
}

/// Where an endpoint is policed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// VPP's index.
    pub sw_if_index: SwIfIndex,
    /// VPP's name.
    pub vpp_name: String,
    /// How it was found.
    pub how: How,
}

/// The bindings of one generation: endpoint interface name → where it is policed.
pub type Bindings = HashMap<String, Bound>;

/// Whether an explicit binding's endpoint names this policed endpoint.
fn names_endpoint(binding: &str, name: &str, kind: &IfaceKind) -> bool {
    if binding == name {
        return true;
    }
    match kind {
        IfaceKind::Workload(key) => {
            binding == key.workload
                || binding
                    .strip_prefix(key.workload.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|ep| ep == key.endpoint)
        }
        IfaceKind::Forward(key) => binding == key.0,
        IfaceKind::Host => false,
    }
}

/// The names and indexes [`bind`] looks up among VPP's interfaces to bind these
/// endpoints: an explicit binding's interface, else the endpoint's own name and, for
/// a CalicoVPP name, its index. Binding them against exactly the interfaces VPP has
/// among these binds them as against all of VPP's (a look-up in VPP that misses one
/// leaves its endpoint unbound; the plugin then lists every interface).
pub fn lookups<'a>(
    policed: impl IntoIterator<Item = (&'a str, &'a IfaceKind)>,
    explicit: &[ExplicitBinding],
) -> (Vec<String>, Vec<SwIfIndex>) {
    let (mut names, mut indexes) = (Vec::new(), Vec::new());
    for (name, kind) in policed {
        if let Some(b) = explicit_for(explicit, name, kind) {
            names.push(b.vpp_interface.clone());
            continue;
        }
        names.push(name.to_string());
        if let Some(idx) = calicovpp_index(name) {
            indexes.push(SwIfIndex(idx));
        }
    }
    (names, indexes)
}

/// The operator's binding of this policed endpoint, if one names it.
fn explicit_for<'b>(
    explicit: &'b [ExplicitBinding],
    name: &str,
    kind: &IfaceKind,
) -> Option<&'b ExplicitBinding> {
    explicit
        .iter()
        .find(|b| names_endpoint(&b.endpoint, name, kind))
}

/// The `sw_if_index` a CalicoVPP pod interface name (`vpp-tun-<N>`) carries.
fn calicovpp_index(name: &str) -> Option<u32> {
    name.strip_prefix(CALICOVPP_PREFIX)?.parse().ok()
}

/// Up to this many endpoints, [`bind`] scans VPP's interfaces for each instead of
/// indexing them first.
pub(crate) const FEW_TO_SCAN: usize = 8;

/// Binds each policed endpoint (`(interface name, kind)`) to a VPP interface.
/// Endpoints left out of the result are unknown to VPP.
pub fn bind<'a>(
    policed: impl IntoIterator<Item = (&'a str, &'a IfaceKind)>,
    explicit: &[ExplicitBinding],
    vpp: &[VppInterface],
) -> Bindings {
    let policed: Vec<(&str, &IfaceKind)> = policed.into_iter().collect();
    // A delta binds an endpoint or two: a scan of VPP's interfaces each is cheaper
    // than hashing every interface's name into maps first.
    let few = policed.len() <= FEW_TO_SCAN;
    let (by_name, by_index): (HashMap<&str, SwIfIndex>, HashMap<SwIfIndex, &str>) = if few {
        (HashMap::new(), HashMap::new())
    } else {
        (
            vpp.iter()
                .map(|i| (i.name.as_str(), i.sw_if_index))
                .collect(),
            vpp.iter()
                .map(|i| (i.sw_if_index, i.name.as_str()))
                .collect(),
        )
    };
    let index_of = |name: &str| -> Option<SwIfIndex> {
        if few {
            vpp.iter().find(|i| i.name == name).map(|i| i.sw_if_index)
        } else {
            by_name.get(name).copied()
        }
    };
    let name_of = |idx: SwIfIndex| -> Option<&str> {
        if few {
            vpp.iter()
                .find(|i| i.sw_if_index == idx)
                .map(|i| i.name.as_str())
        } else {
            by_index.get(&idx).copied()
        }
    };
    let mut out = Bindings::new();
    for (name, kind) in policed {
        // An explicit binding is authoritative: its interface or none.
        if let Some(b) = explicit_for(explicit, name, kind) {
            if let Some(i) = index_of(b.vpp_interface.as_str()) {
                out.insert(
                    name.to_string(),
                    Bound {
                        sw_if_index: i,
                        vpp_name: b.vpp_interface.clone(),
                        how: How::Explicit,
                    },
                );
            }
            continue;
        }
        let by_own_name = || index_of(name).map(|i| (i, name.to_string(), How::Name));
        let calicovpp = || {
            let idx = calicovpp_index(name)?;
            let vpp_name = name_of(SwIfIndex(idx))?;
            Some((SwIfIndex(idx), vpp_name.to_string(), How::CalicoVpp))
        };
        if let Some((sw_if_index, vpp_name, how)) = by_own_name().or_else(calicovpp) {
            out.insert(
                name.to_string(),
                Bound {
                    sw_if_index,
                    vpp_name,
                    how,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use capo_policy::{HostEndpointKey, WorkloadKey};

    fn vpp() -> Vec<VppInterface> {
        [(0, "local0"), (1, "host-veth-a"), (2, "tap0"), (11, "tun3")]
            .into_iter()
            .map(|(i, n)| VppInterface {
                sw_if_index: SwIfIndex(i),
                name: n.to_string(),
            })
            .collect()
    }

    fn pod(workload: &str) -> IfaceKind {
        IfaceKind::Workload(WorkloadKey {
            orchestrator: "k8s".into(),
            workload: workload.into(),
            endpoint: "eth0".into(),
        })
    }

    #[test]
    fn by_name_then_calicovpp() {
        let (ts2, ts3, host) = (pod("default/ts2"), pod("default/ts3"), IfaceKind::Host);
        let b = bind(
            [
                ("tun3", &ts2),
                ("vpp-tun-1", &ts3),
                ("tap0", &host),
                ("vpp-tun-9", &ts3),
            ],
            &[],
            &vpp(),
        );
        assert_eq!(b["tun3"].sw_if_index, SwIfIndex(11));
        assert_eq!(b["tun3"].how, How::Name);
        assert_eq!(b["vpp-tun-1"].sw_if_index, SwIfIndex(1));
        assert_eq!(b["vpp-tun-1"].vpp_name, "host-veth-a");
        assert_eq!(b["vpp-tun-1"].how, How::CalicoVpp);
        assert_eq!(b["tap0"].how, How::Name);
        assert!(!b.contains_key("vpp-tun-9"), "VPP has no interface 9");
    }

    #[test]
    fn explicit_wins_and_names_endpoints_every_way() {
        let ts2 = pod("default/ts2");
        let hep = IfaceKind::Forward(HostEndpointKey("node1-eth0".into()));
        for endpoint in ["default/ts2", "default/ts2/eth0", "tun3"] {
            let b = bind(
                [("tun3", &ts2)],
                &[ExplicitBinding {
                    endpoint: endpoint.into(),
                    vpp_interface: "host-veth-a".into(),
                }],
                &vpp(),
            );
            assert_eq!(b["tun3"].sw_if_index, SwIfIndex(1), "{endpoint}");
            assert_eq!(b["tun3"].how, How::Explicit);
        }
        // Not this endpoint: the name binding applies.
        let b = bind(
            [("tun3", &ts2)],
            &[ExplicitBinding {
                endpoint: "default/ts2/eth1".into(),
                vpp_interface: "host-veth-a".into(),
            }],
            &vpp(),
        );
        assert_eq!(b["tun3"].how, How::Name);
        let b = bind(
            [("eth0", &hep)],
            &[ExplicitBinding {
                endpoint: "node1-eth0".into(),
                vpp_interface: "host-veth-a".into(),
            }],
            &vpp(),
        );
        assert_eq!(b["eth0"].sw_if_index, SwIfIndex(1));
    }

    /// Many endpoints (VPP's interfaces indexed) bind as a few do (scanned).
    #[test]
    fn many_endpoints_bind_as_few_do() {
        let (ts2, ts3, host) = (pod("default/ts2"), pod("default/ts3"), IfaceKind::Host);
        let others: Vec<String> = (0..FEW_TO_SCAN).map(|i| format!("cali{i}")).collect();
        let few = [
            ("tun3", &ts2),
            ("vpp-tun-1", &ts3),
            ("tap0", &host),
            ("vpp-tun-9", &ts3),
        ];
        let explicit = [ExplicitBinding {
            endpoint: "default/ts3".into(),
            vpp_interface: "tun3".into(),
        }];
        let many: Vec<(&str, &IfaceKind)> = few
            .iter()
            .copied()
            .chain(others.iter().map(|n| (n.as_str(), &ts2)))
            .collect();
        assert!(many.len() > FEW_TO_SCAN);
        for explicit in [&explicit[..], &[]] {
            let one_by_one: Bindings = few
                .iter()
                .flat_map(|p| bind([*p], explicit, &vpp()))
                .collect();
            assert_eq!(bind(many.iter().copied(), explicit, &vpp()), one_by_one);
        }
    }

    #[test]
    fn explicit_binding_to_a_missing_interface_binds_nothing() {
        // Not the interface of the same name: the operator said where it is.
        let ts2 = pod("default/ts2");
        let b = bind(
            [("tun3", &ts2)],
            &[ExplicitBinding {
                endpoint: "default/ts2".into(),
                vpp_interface: "host-gone".into(),
            }],
            &vpp(),
        );
        assert!(b.is_empty());
    }

    proptest::proptest! {
        /// Binding endpoints against only the interfaces VPP has among their
        /// look-ups binds them as against every interface VPP has: random VPP
        /// tables, endpoint names (own names, CalicoVPP names, absent ones) and
        /// explicit bindings.
        #[test]
        fn binding_against_the_lookups_is_binding_against_all(
            vpp_names in proptest::collection::btree_map(0u32..12, 0usize..8, 0..10),
            endpoints in proptest::collection::vec((0usize..8, 0u32..14, proptest::bool::ANY), 1..6),
            explicit in proptest::collection::vec((0usize..3, 0usize..8), 0..3),
        ) {
            let name_pool = |k: usize| ["tun0", "tun1", "tap0", "tap1", "cali-a", "cali-b", "host-if", "eth9"][k % 8];
            let mut seen = std::collections::HashSet::new();
            let vpp: Vec<VppInterface> = vpp_names
                .iter()
                .filter(|(_, n)| seen.insert(**n))
                .map(|(i, n)| VppInterface { sw_if_index: SwIfIndex(*i), name: name_pool(*n).into() })
                .collect();
            let kinds: Vec<IfaceKind> = (0..3).map(|k| pod(&format!("default/w{k}"))).collect();
            let names: Vec<String> = endpoints
                .iter()
                .map(|(n, idx, calico)| if *calico { format!("{CALICOVPP_PREFIX}{idx}") } else { name_pool(*n).into() })
                .collect();
            let policed: Vec<(&str, &IfaceKind)> = names
                .iter()
                .enumerate()
                .map(|(k, n)| (n.as_str(), &kinds[k % 3]))
                .collect();
            let explicit: Vec<ExplicitBinding> = explicit
                .iter()
                .map(|(w, n)| ExplicitBinding { endpoint: format!("default/w{w}"), vpp_interface: name_pool(*n).into() })
                .collect();
            let (want_names, want_indexes) = lookups(policed.iter().copied(), &explicit);
            let among: Vec<VppInterface> = vpp
                .iter()
                .filter(|i| want_names.contains(&i.name) || want_indexes.contains(&i.sw_if_index))
                .cloned()
                .collect();
            proptest::prop_assert_eq!(
                bind(policed.iter().copied(), &explicit, &among),
                bind(policed.iter().copied(), &explicit, &vpp)
            );
        }
    }
}
