//! The calculation Felix's calc graph does, on a whole cluster at once:
//! endpoints and their labels (with profile inheritance), which policies and
//! profiles are active on the local node, the IP sets their rules need and
//! the members of those sets, and each local endpoint's tiers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use capo_proto::felix::v3_32 as pb;
use ipnet::IpNet;

use crate::model::{NamedPort, Policy, PolicyKind, Rule};
use crate::resources::Resources;
use crate::rules::{
    self, IpSetDef, LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT, NAMESPACE_LABEL_PREFIX, SA_LABEL_PREFIX,
};
use crate::selector::Selector;
use crate::snapshot::{IpSet, IpSetKind, PolicyRef, Snapshot, WorkloadRef};

/// Calico's label with an object's own name, set on `kns.`/`ksa.` profiles.
const LABEL_NAME: &str = "projectcalico.org/name";
const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// The label the API server puts on every namespace.
const LABEL_K8S_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Kubernetes limits label values to 63 characters; Calico sets the
/// service-account label only below that.
const MAX_SA_LABEL_LEN: usize = 63;
/// Calico's default tier and its order.
const DEFAULT_TIER: &str = "default";
const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Calico's built-in tiers for admin / baseline network policies.
const BUILTIN_TIERS: [(&str, f64, bool); 3] = [
    ("kube-admin", 1_000.0, true),
    (DEFAULT_TIER, DEFAULT_TIER_ORDER, false),
    ("kube-baseline", 10_000_000.0, true),
];
/// Felix's default failsafe ports.
const FAILSAFE_IN: &str =
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
const FAILSAFE_OUT: &str =
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
/// The perf hint that makes Felix send a policy to every node.
const HINT_EVERY_NODE: &str = "AssumeNeededOnEveryNode";

/// What to compute a snapshot for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The node Felix runs on: only its pods and host endpoints are local.
    /// `None` treats every pod and host endpoint as local.
    pub local_node: Option<String>,
    /// `CalicoVersion` in the `ConfigUpdate`.
    pub calico_version: String,
    /// Extra or overriding Felix configuration (`ConfigUpdate.config`).
    pub config: BTreeMap<String, String>,
}

impl Options {
    /// Options for `local_node` with Calico v3.33.0 and default config.
    pub fn for_node(local_node: Option<&str>) -> Self {
        Self {
            local_node: local_node.map(str::to_string),
            calico_version: "v3.33.0".to_string(),
            config: BTreeMap::new(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::for_node(None)
    }
}

struct ProfileData {
    labels: BTreeMap<String, String>,
    ingress: Vec<Rule>,
    egress: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum EndpointKey {
    Workload(WorkloadRef),
    Host(String),
}

struct Endpoint {
    key: EndpointKey,
    node: String,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    ports: Vec<NamedPort>,
    profile_ids: Vec<String>,
    interface: String,
}

struct NetSetData {
    labels: BTreeMap<String, String>,
    nets: Vec<IpNet>,
}

struct FelixPolicy {
    id: PolicyRef,
    tier: String,
    order: Option<f64>,
    selector: Selector,
    ingress: bool,
    egress: bool,
    untracked: bool,
    pre_dnat: bool,
    apply_on_forward: bool,
    every_node: bool,
    message: pb::Policy,
    sets: BTreeMap<String, IpSetDef>,
}

/// Endpoint labels: its own, then each profile's in order for labels it
/// lacks (Felix's parent-label inheritance).
fn inherit(
    own: BTreeMap<String, String>,
    profile_ids: &[String],
    profiles: &BTreeMap<String, ProfileData>,
) -> BTreeMap<String, String> {
    let mut labels = own;
    for id in profile_ids {
        if let Some(p) = profiles.get(id) {
            for (k, v) in &p.labels {
                labels.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    labels
}

fn profiles(res: &Resources) -> BTreeMap<String, ProfileData> {
    let mut out = BTreeMap::new();
    // Every namespace in use exists in a real cluster, with its profile.
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = res
        .namespaces
        .values()
        .map(|n| (n.name.clone(), n.labels.clone()))
        .collect();
    for (ns, _) in res.pods.keys() {
        namespaces.entry(ns.clone()).or_default();
    }
    for (ns, mut labels) in namespaces {
        // Kubernetes sets this label on every namespace itself.
        labels
            .entry(LABEL_K8S_NAMESPACE_NAME.to_string())
            .or_insert_with(|| ns.clone());
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone()))
            .collect();
        l.insert(format!("{NAMESPACE_LABEL_PREFIX}{LABEL_NAME}"), ns.clone());
        out.insert(
            format!("kns.{ns}"),
            ProfileData {
                labels: l,
                ingress: vec![Rule::allow_all()],
                egress: vec![Rule::allow_all()],
            },
        );
    }
    let mut accounts: BTreeMap<(String, String), BTreeMap<String, String>> = res
        .service_accounts
        .values()
        .map(|s| ((s.namespace.clone(), s.name.clone()), s.labels.clone()))
        .collect();
    for p in res.pods.values() {
        accounts
            .entry((p.namespace.clone(), p.service_account.clone()))
            .or_default();
    }
    for ((ns, sa), labels) in accounts {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (format!("{SA_LABEL_PREFIX}{k}"), v.clone()))
            .collect();
        l.insert(format!("{SA_LABEL_PREFIX}{LABEL_NAME}"), sa.clone());
        out.insert(
            format!("ksa.{ns}.{sa}"),
            ProfileData {
                labels: l,
                ingress: Vec::new(),
                egress: Vec::new(),
            },
        );
    }
    for p in res.profiles.values() {
        out.insert(
            p.name.clone(),
            ProfileData {
                labels: p.labels_to_apply.clone(),
                ingress: p.ingress.clone(),
                egress: p.egress.clone(),
            },
        );
    }
    out
}

fn endpoints(res: &Resources, profiles: &BTreeMap<String, ProfileData>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for pod in res.pods.values() {
        // Calico makes no workload endpoint for these, and Felix drops
        // endpoints without addresses.
        if pod.node.is_empty() || pod.host_network || pod.finished || pod.ips.is_empty() {
            continue;
        }
        let mut own = pod.labels.clone();
        own.insert(LABEL_NAMESPACE.to_string(), pod.namespace.clone());
        own.insert(LABEL_ORCHESTRATOR.to_string(), "k8s".to_string());
        if pod.service_account.len() < MAX_SA_LABEL_LEN {
            own.insert(
                LABEL_SERVICE_ACCOUNT.to_string(),
                pod.service_account.clone(),
            );
        }
        let profile_ids = vec![
            format!("kns.{}", pod.namespace),
            format!("ksa.{}.{}", pod.namespace, pod.service_account),
        ];
        out.push(Endpoint {
            key: EndpointKey::Workload(WorkloadRef {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
            }),
            node: pod.node.clone(),
            labels: inherit(own, &profile_ids, profiles),
            ips: pod.ips.clone(),
            ports: pod.ports.clone(),
            profile_ids,
            interface: pod.interface.clone(),
        });
    }
    for hep in res.host_endpoints.values() {
        out.push(Endpoint {
            key: EndpointKey::Host(hep.name.clone()),
            node: hep.node.clone(),
            labels: inherit(hep.labels.clone(), &hep.profiles, profiles),
            ips: hep.expected_ips.clone(),
            ports: hep.ports.clone(),
            profile_ids: hep.profiles.clone(),
            interface: hep.interface.clone(),
        });
    }
    out
}

fn net_sets(res: &Resources, profiles: &BTreeMap<String, ProfileData>) -> Vec<NetSetData> {
    res.net_sets
        .values()
        .map(|s| {
            let mut own = s.labels.clone();
            let mut parents = Vec::new();
            if let Some(ns) = &s.namespace {
                own.insert(LABEL_NAMESPACE.to_string(), ns.clone());
                parents.push(format!("kns.{ns}"));
            }
            NetSetData {
                labels: inherit(own, &parents, profiles),
                nets: s.nets.clone(),
            }
        })
        .collect()
}

/// libcalico-go's `prefixAndAppendSelector`.
fn prefix_and_append(current: String, extra: &str, prefix: &str) -> String {
    if extra.is_empty() {
        return current;
    }
    let p = rules::prefixed(extra, prefix);
    if p.is_empty() {
        current
    } else if current.is_empty() {
        p
    } else {
        format!("({current}) && {p}")
    }
}

/// The policy's endpoint selector as the update processors build it.
fn policy_selector(p: &Policy) -> String {
    let mut sel = p.selector.clone();
    match &p.namespace {
        Some(ns) => {
            let ns_sel = format!("{LABEL_NAMESPACE} == '{ns}'");
            sel = if sel.is_empty() {
                ns_sel
            } else {
                format!("({sel}) && {ns_sel}")
            };
            prefix_and_append(sel, &p.service_account_selector, SA_LABEL_PREFIX)
        }
        None => {
            if !p.namespace_selector.is_empty() {
                sel = prefix_and_append(sel, &p.namespace_selector, NAMESPACE_LABEL_PREFIX)
                    .replace("all()", "has(projectcalico.org/namespace)");
            }
            if !p.service_account_selector.is_empty() {
                sel = prefix_and_append(sel, &p.service_account_selector, SA_LABEL_PREFIX)
                    .replace("all()", "has(projectcalico.org/serviceaccount)");
            }
            sel
        }
    }
}

fn felix_policy(p: &Policy) -> FelixPolicy {
    let ns = p.namespace.clone().unwrap_or_default();
    let selector_text = policy_selector(p);
    let mut sets = BTreeMap::new();
    let inbound = rules::to_proto_list(
        &p.ingress_rules,
        &ns,
        &format!("pol-in-default/{}", p.name),
        &mut sets,
    );
    let outbound = rules::to_proto_list(
        &p.egress_rules,
        &ns,
        &format!("pol-out-default/{}", p.name),
        &mut sets,
    );
    let selector = rules::parse_built(&selector_text);
    FelixPolicy {
        id: PolicyRef {
            kind: p.kind.as_str().to_string(),
            namespace: ns.clone(),
            name: p.name.clone(),
        },
        tier: p.tier.clone(),
        order: p.order,
        ingress: p.ingress,
        egress: p.egress,
        untracked: p.do_not_track,
        pre_dnat: p.pre_dnat,
        apply_on_forward: p.apply_on_forward,
        every_node: p.perf_hints.iter().any(|h| h == HINT_EVERY_NODE),
        message: pb::Policy {
            inbound_rules: inbound,
            outbound_rules: outbound,
            untracked: p.do_not_track,
            pre_dnat: p.pre_dnat,
            namespace: ns,
            original_selector: crate::selector::normalise(&selector_text),
            perf_hints: p.perf_hints.clone(),
            tier: p.tier.clone(),
        },
        selector,
        sets,
    }
}

fn members(def: &IpSetDef, eps: &[Endpoint], nsets: &[NetSetData]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match &def.named_port {
        None => {
            for ep in eps.iter().filter(|e| def.selector.matches(&e.labels)) {
                out.extend(ep.ips.iter().map(|ip| IpNet::from(*ip).to_string()));
            }
            for s in nsets.iter().filter(|s| def.selector.matches(&s.labels)) {
                out.extend(s.nets.iter().map(ToString::to_string));
            }
        }
        Some((proto, name)) => {
            for ep in eps.iter().filter(|e| def.selector.matches(&e.labels)) {
                for port in ep
                    .ports
                    .iter()
                    .filter(|p| &p.name == name && proto.matches(p.proto))
                {
                    for ip in &ep.ips {
                        out.insert(format!("{ip},{}:{}", port.proto.as_str(), port.port));
                    }
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
struct TierDef {
    name: String,
    order: Option<f64>,
    pass: bool,
}

/// Felix's `TierLess`: by order (unset last), then name.
fn tier_cmp(a: &TierDef, b: &TierDef) -> std::cmp::Ordering {
    order_cmp(a.order, b.order).then_with(|| a.name.cmp(&b.name))
}

fn order_cmp(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    // Unset sorts after every number, as Felix's +Inf default does.
    let a = a.unwrap_or(f64::INFINITY);
    let b = b.unwrap_or(f64::INFINITY);
    a.total_cmp(&b)
}

/// Felix's `PolKVLess`: by order (unset last), then "name/namespace/kind".
fn policy_cmp(a: &FelixPolicy, b: &FelixPolicy) -> std::cmp::Ordering {
    order_cmp(a.order, b.order).then_with(|| {
        let ka = format!("{}/{}/{}", a.id.name, a.id.namespace, a.id.kind);
        let kb = format!("{}/{}/{}", b.id.name, b.id.namespace, b.id.kind);
        ka.cmp(&kb)
    })
}

struct EndpointTiers {
    normal: Vec<pb::TierInfo>,
    untracked: Vec<pb::TierInfo>,
    pre_dnat: Vec<pb::TierInfo>,
    forward: Vec<pb::TierInfo>,
}

fn pb_id(id: &PolicyRef) -> pb::PolicyId {
    pb::PolicyId {
        name: id.name.clone(),
        namespace: id.namespace.clone(),
        kind: id.kind.clone(),
    }
}

/// Felix's `tierInfoToProtoTierInfo` for one endpoint.
fn endpoint_tiers(ep: &Endpoint, tiers: &[(TierDef, Vec<&FelixPolicy>)]) -> EndpointTiers {
    let mut out = EndpointTiers {
        normal: Vec::new(),
        untracked: Vec::new(),
        pre_dnat: Vec::new(),
        forward: Vec::new(),
    };
    for (tier, policies) in tiers {
        let action = if tier.pass { "Pass" } else { "Deny" };
        let mk = |a: &str| pb::TierInfo {
            name: tier.name.clone(),
            ingress_policies: Vec::new(),
            egress_policies: Vec::new(),
            default_action: a.to_string(),
        };
        let (mut normal, mut untracked, mut pre_dnat, mut forward) =
            (mk(action), mk("Pass"), mk("Pass"), mk(action));
        let add = |ti: &mut pb::TierInfo, p: &FelixPolicy, egress_allowed: bool| {
            if p.ingress {
                ti.ingress_policies.push(pb_id(&p.id));
            }
            if egress_allowed && p.egress {
                ti.egress_policies.push(pb_id(&p.id));
            }
        };
        for p in policies.iter().filter(|p| p.selector.matches(&ep.labels)) {
            if p.untracked {
                add(&mut untracked, p, true);
            } else if p.pre_dnat {
                add(&mut pre_dnat, p, false);
            } else {
                if p.apply_on_forward {
                    add(&mut forward, p, true);
                }
                add(&mut normal, p, true);
            }
        }
        for (ti, list) in [
            (untracked, &mut out.untracked),
            (pre_dnat, &mut out.pre_dnat),
            (forward, &mut out.forward),
            (normal, &mut out.normal),
        ] {
            if !ti.ingress_policies.is_empty() || !ti.egress_policies.is_empty() {
                list.push(ti);
            }
        }
    }
    out
}

fn is_local(node: &str, local: Option<&str>) -> bool {
    local.is_none_or(|l| l == node)
}

fn split_families(ips: &[IpAddr]) -> (Vec<String>, Vec<String>) {
    let v4 = ips.iter().filter(|i| i.is_ipv4());
    let v6 = ips.iter().filter(|i| i.is_ipv6());
    (
        v4.map(|i| IpNet::from(*i).to_string()).collect(),
        v6.map(|i| IpNet::from(*i).to_string()).collect(),
    )
}

/// Computes what Felix on `opts.local_node` would hold for this cluster.
pub(crate) fn snapshot(res: &Resources, opts: &Options) -> Snapshot {
    let local = opts.local_node.as_deref();
    let profiles = profiles(res);
    let eps = endpoints(res, &profiles);
    let nsets = net_sets(res, &profiles);
    let policies: Vec<FelixPolicy> = res.policies.values().map(felix_policy).collect();
    let local_eps: Vec<&Endpoint> = eps.iter().filter(|e| is_local(&e.node, local)).collect();

    let active: Vec<&FelixPolicy> = policies
        .iter()
        .filter(|p| p.every_node || local_eps.iter().any(|e| p.selector.matches(&e.labels)))
        .collect();

    // Tiers: the built-in ones unless redefined, then the defined ones,
    // then any tier only named by a policy (no order, Deny).
    let mut tier_defs: BTreeMap<String, TierDef> = BUILTIN_TIERS
        .iter()
        .map(|(n, o, pass)| {
            (
                (*n).to_string(),
                TierDef {
                    name: (*n).to_string(),
                    order: Some(*o),
                    pass: *pass,
                },
            )
        })
        .collect();
    for t in res.tiers.values() {
        tier_defs.insert(
            t.name.clone(),
            TierDef {
                name: t.name.clone(),
                order: t.order,
                pass: t.pass,
            },
        );
    }
    for p in &active {
        tier_defs.entry(p.tier.clone()).or_insert_with(|| TierDef {
            name: p.tier.clone(),
            order: None,
            pass: false,
        });
    }
    let mut tier_list: Vec<TierDef> = tier_defs.into_values().collect();
    tier_list.sort_by(tier_cmp);
    let tiers: Vec<(TierDef, Vec<&FelixPolicy>)> = tier_list
        .into_iter()
        .map(|t| {
            let mut ps: Vec<&FelixPolicy> = active
                .iter()
                .copied()
                .filter(|p| p.tier == t.name)
                .collect();
            ps.sort_by(|a, b| policy_cmp(a, b));
            (t, ps)
        })
        .filter(|(_, ps)| !ps.is_empty())
        .collect();

    let mut snap = Snapshot::default();
    let mut needed_sets: BTreeMap<String, IpSetDef> = BTreeMap::new();
    for p in &active {
        needed_sets.extend(p.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
        snap.policies.insert(p.id.clone(), p.message.clone());
    }

    let active_profiles: BTreeSet<&String> = local_eps
        .iter()
        .flat_map(|e| e.profile_ids.iter())
        .collect();
    for name in active_profiles {
        let mut sets = BTreeMap::new();
        let (inbound, outbound) = match profiles.get(name) {
            Some(p) => (
                rules::to_proto_list(&p.ingress, "", &format!("prof-in-{name}"), &mut sets),
                rules::to_proto_list(&p.egress, "", &format!("prof-out-{name}"), &mut sets),
            ),
            None => (Vec::new(), Vec::new()),
        };
        needed_sets.extend(sets);
        snap.profiles.insert(
            name.clone(),
            pb::Profile {
                inbound_rules: inbound,
                outbound_rules: outbound,
            },
        );
    }

    for (id, def) in &needed_sets {
        snap.ip_sets.insert(
            id.clone(),
            IpSet {
                kind: if def.named_port.is_some() {
                    IpSetKind::IpAndPort
                } else {
                    IpSetKind::Net
                },
                members: members(def, &eps, &nsets),
            },
        );
    }

    for ep in &local_eps {
        let t = endpoint_tiers(ep, &tiers);
        let (v4, v6) = split_families(&ep.ips);
        match &ep.key {
            EndpointKey::Workload(w) => {
                snap.workload_endpoints.insert(
                    w.clone(),
                    pb::WorkloadEndpoint {
                        state: "active".to_string(),
                        name: ep.interface.clone(),
                        profile_ids: ep.profile_ids.clone(),
                        ipv4_nets: v4,
                        ipv6_nets: v6,
                        tiers: t.normal,
                        ..pb::WorkloadEndpoint::default()
                    },
                );
            }
            EndpointKey::Host(name) => {
                let bare = |l: Vec<String>| -> Vec<String> {
                    l.into_iter()
                        .map(|s| s.split('/').next().unwrap_or_default().to_string())
                        .collect()
                };
                snap.host_endpoints.insert(
                    name.clone(),
                    pb::HostEndpoint {
                        name: ep.interface.clone(),
                        profile_ids: ep.profile_ids.clone(),
                        tiers: t.normal,
                        expected_ipv4_addrs: bare(v4),
                        expected_ipv6_addrs: bare(v6),
                        untracked_tiers: t.untracked,
                        pre_dnat_tiers: t.pre_dnat,
                        forward_tiers: t.forward,
                        qos_policies: Vec::new(),
                    },
                );
            }
        }
    }

    for n in res.nodes.values() {
        snap.hosts.insert(
            n.name.clone(),
            pb::HostMetadataUpdate {
                hostname: n.name.clone(),
                ipv4_addr: n.ipv4.clone(),
                ipv6_addr: n.ipv6.clone(),
                asnumber: n.asn.clone(),
                labels: n.labels.clone().into_iter().collect(),
            },
        );
    }

    let mut config: BTreeMap<String, String> = [
        ("CalicoVersion", opts.calico_version.as_str()),
        ("DatastoreType", "kubernetes"),
        ("DefaultEndpointToHostAction", "ACCEPT"),
        ("FailsafeInboundHostPorts", FAILSAFE_IN),
        ("FailsafeOutboundHostPorts", FAILSAFE_OUT),
        ("Ipv6Support", "true"),
        ("UseInternalDataplaneDriver", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(l) = local {
        config.insert("FelixHostname".to_string(), l.to_string());
    }
    config.extend(res.felix_config.clone());
    config.extend(opts.config.clone());
    snap.config = config;
    snap
}

/// Whether a policy kind is staged (sent, never enforced).
pub(crate) fn is_staged(kind: &str) -> bool {
    [
        PolicyKind::StagedNetworkPolicy,
        PolicyKind::StagedGlobalNetworkPolicy,
        PolicyKind::StagedKubernetesNetworkPolicy,
    ]
    .iter()
    .any(|k| k.as_str() == kind)
}
