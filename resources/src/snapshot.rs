//! The Felix-side state for one node, and the message streams that carry it:
//! the full snapshot ([`Snapshot::to_felix_messages`]) and the minimal
//! update between two snapshots ([`diff`]), both in Felix's flush order
//! (felix/calc/event_sequencer.go). Within one step Felix's order is Go map
//! order; here it is sorted by id so output is reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use capo_proto::felix::v3_32 as pb;
use pb::to_dataplane::Payload;

/// Identity of a policy in Felix v3.32+ (`PolicyID`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// `KubernetesNetworkPolicy`, `NetworkPolicy`, `GlobalNetworkPolicy`,
    /// or a `Staged…` kind.
    pub kind: String,
    /// Empty for global policies.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl PolicyRef {
    fn to_pb(&self) -> pb::PolicyId {
        pb::PolicyId {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            kind: self.kind.clone(),
        }
    }
}

/// Identity of a pod's workload endpoint (`k8s`, `<ns>/<pod>`, `eth0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
}

impl WorkloadRef {
    fn to_pb(&self) -> pb::WorkloadEndpointId {
        pb::WorkloadEndpointId {
            orchestrator_id: "k8s".to_string(),
            workload_id: format!("{}/{}", self.namespace, self.pod),
            endpoint_id: "eth0".to_string(),
        }
    }
}

/// The IP-set types Felix produces from policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetKind {
    /// Selector sets: CIDR members such as `10.0.0.1/32`.
    Net,
    /// Named-port sets: members such as `10.0.0.1,tcp:8080`.
    IpAndPort,
}

impl IpSetKind {
    fn to_pb(self) -> pb::ip_set_update::IpSetType {
        match self {
            IpSetKind::Net => pb::ip_set_update::IpSetType::Net,
            IpSetKind::IpAndPort => pb::ip_set_update::IpSetType::IpAndPort,
        }
    }
}

/// One IP set with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Its type.
    pub kind: IpSetKind,
    /// Its members, in Felix's text form.
    pub members: BTreeSet<String>,
}

/// Everything Felix would have sent a driver on one node, keyed by id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) ip_sets: BTreeMap<String, IpSet>,
    pub(crate) policies: BTreeMap<PolicyRef, pb::Policy>,
    pub(crate) profiles: BTreeMap<String, pb::Profile>,
    pub(crate) workload_endpoints: BTreeMap<WorkloadRef, pb::WorkloadEndpoint>,
    pub(crate) host_endpoints: BTreeMap<String, pb::HostEndpoint>,
    pub(crate) hosts: BTreeMap<String, pb::HostMetadataUpdate>,
}

/// Members in address order (IPv4 first), then text, for readable output.
fn member_order(members: &BTreeSet<String>) -> Vec<String> {
    let key = |m: &String| {
        let addr = m.split(['/', ',']).next().unwrap_or_default();
        let ip = addr.parse::<IpAddr>().ok();
        let num = match ip {
            Some(IpAddr::V4(a)) => (0u8, u128::from(u32::from(a))),
            Some(IpAddr::V6(a)) => (1u8, u128::from(a)),
            None => (2u8, 0),
        };
        (num, m.clone())
    };
    let mut v: Vec<String> = members.iter().cloned().collect();
    v.sort_by_key(key);
    v
}

fn msg(payload: Payload) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(payload),
    }
}

fn config_msg(config: &BTreeMap<String, String>) -> pb::ToDataplane {
    msg(Payload::ConfigUpdate(pb::ConfigUpdate {
        config: config.clone().into_iter().collect(),
        source_to_raw_config: Default::default(),
        message: String::new(),
    }))
}

fn ipset_msg(id: &str, set: &IpSet) -> pb::ToDataplane {
    msg(Payload::IpsetUpdate(pb::IpSetUpdate {
        id: id.to_string(),
        members: member_order(&set.members),
        r#type: set.kind.to_pb() as i32,
    }))
}

fn policy_msg(id: &PolicyRef, p: &pb::Policy) -> pb::ToDataplane {
    msg(Payload::ActivePolicyUpdate(pb::ActivePolicyUpdate {
        id: Some(id.to_pb()),
        policy: Some(p.clone()),
    }))
}

fn profile_msg(name: &str, p: &pb::Profile) -> pb::ToDataplane {
    msg(Payload::ActiveProfileUpdate(pb::ActiveProfileUpdate {
        id: Some(pb::ProfileId {
            name: name.to_string(),
        }),
        profile: Some(p.clone()),
    }))
}

fn wep_msg(id: &WorkloadRef, ep: &pb::WorkloadEndpoint) -> pb::ToDataplane {
    msg(Payload::WorkloadEndpointUpdate(
        pb::WorkloadEndpointUpdate {
            id: Some(id.to_pb()),
            endpoint: Some(ep.clone()),
        },
    ))
}

fn hep_msg(id: &str, ep: &pb::HostEndpoint) -> pb::ToDataplane {
    msg(Payload::HostEndpointUpdate(pb::HostEndpointUpdate {
        id: Some(pb::HostEndpointId {
            endpoint_id: id.to_string(),
        }),
        endpoint: Some(ep.clone()),
    }))
}

impl Snapshot {
    /// The full stream Felix sends a freshly started driver: `ConfigUpdate`,
    /// `IPSetUpdate`s, `ActivePolicyUpdate`s, `ActiveProfileUpdate`s,
    /// endpoint updates, `HostMetadataUpdate`s, then `InSync`, numbered from
    /// 0 as Felix numbers its frames.
    pub fn to_felix_messages(&self) -> Vec<pb::ToDataplane> {
        let mut out = vec![config_msg(&self.config)];
        out.extend(self.ip_sets.iter().map(|(id, s)| ipset_msg(id, s)));
        out.extend(self.policies.iter().map(|(id, p)| policy_msg(id, p)));
        out.extend(self.profiles.iter().map(|(n, p)| profile_msg(n, p)));
        out.extend(self.workload_endpoints.iter().map(|(id, e)| wep_msg(id, e)));
        out.extend(self.host_endpoints.iter().map(|(id, e)| hep_msg(id, e)));
        out.extend(
            self.hosts
                .values()
                .map(|h| msg(Payload::HostMetadataUpdate(h.clone()))),
        );
        out.push(msg(Payload::InSync(pb::InSync {})));
        number_from(&mut out, 0);
        out
    }

    /// `ConfigUpdate.config`.
    pub fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }

    /// Active IP sets by id.
    pub fn ip_sets(&self) -> &BTreeMap<String, IpSet> {
        &self.ip_sets
    }

    /// Active policies by id.
    pub fn policies(&self) -> &BTreeMap<PolicyRef, pb::Policy> {
        &self.policies
    }

    /// Active profiles by name.
    pub fn profiles(&self) -> &BTreeMap<String, pb::Profile> {
        &self.profiles
    }

    /// Local workload endpoints.
    pub fn workload_endpoints(&self) -> &BTreeMap<WorkloadRef, pb::WorkloadEndpoint> {
        &self.workload_endpoints
    }

    /// Local host endpoints by name.
    pub fn host_endpoints(&self) -> &BTreeMap<String, pb::HostEndpoint> {
        &self.host_endpoints
    }

    /// Host metadata of every node.
    pub fn hosts(&self) -> &BTreeMap<String, pb::HostMetadataUpdate> {
        &self.hosts
    }
}

/// Sets `sequence_number` to `first`, `first + 1`, … as a sender does.
pub fn number_from(msgs: &mut [pb::ToDataplane], first: u64) {
    for (i, m) in (first..).zip(msgs.iter_mut()) {
        m.sequence_number = i;
    }
}

/// The updates that take a driver holding `old` to `new`, in Felix's flush
/// order: config, new sets, set deltas, policies, profiles, endpoint
/// updates, endpoint removes, profile removes, policy removes, set removes,
/// host metadata removes, host metadata updates. Unchanged items are not
/// repeated. Sequence numbers are 0; see [`number_from`].
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<pb::ToDataplane> {
    let mut out = Vec::new();
    if old.config != new.config {
        out.push(config_msg(&new.config));
    }
    for (id, set) in &new.ip_sets {
        match old.ip_sets.get(id) {
            Some(o) if o.kind == set.kind => {}
            _ => out.push(ipset_msg(id, set)),
        }
    }
    for (id, set) in &new.ip_sets {
        let Some(o) = old.ip_sets.get(id).filter(|o| o.kind == set.kind) else {
            continue;
        };
        if o.members == set.members {
            continue;
        }
        let added = set.members.difference(&o.members).cloned().collect();
        let removed = o.members.difference(&set.members).cloned().collect();
        out.push(msg(Payload::IpsetDeltaUpdate(pb::IpSetDeltaUpdate {
            id: id.clone(),
            added_members: member_order(&added),
            removed_members: member_order(&removed),
        })));
    }
    for (id, p) in &new.policies {
        if old.policies.get(id) != Some(p) {
            out.push(policy_msg(id, p));
        }
    }
    for (name, p) in &new.profiles {
        if old.profiles.get(name) != Some(p) {
            out.push(profile_msg(name, p));
        }
    }
    for (id, e) in &new.workload_endpoints {
        if old.workload_endpoints.get(id) != Some(e) {
            out.push(wep_msg(id, e));
        }
    }
    for (id, e) in &new.host_endpoints {
        if old.host_endpoints.get(id) != Some(e) {
            out.push(hep_msg(id, e));
        }
    }
    for id in old.workload_endpoints.keys() {
        if !new.workload_endpoints.contains_key(id) {
            out.push(msg(Payload::WorkloadEndpointRemove(
                pb::WorkloadEndpointRemove {
                    id: Some(id.to_pb()),
                },
            )));
        }
    }
    for id in old.host_endpoints.keys() {
        if !new.host_endpoints.contains_key(id) {
            out.push(msg(Payload::HostEndpointRemove(pb::HostEndpointRemove {
                id: Some(pb::HostEndpointId {
                    endpoint_id: id.clone(),
                }),
            })));
        }
    }
    for name in old.profiles.keys() {
        if !new.profiles.contains_key(name) {
            out.push(msg(Payload::ActiveProfileRemove(pb::ActiveProfileRemove {
                id: Some(pb::ProfileId { name: name.clone() }),
            })));
        }
    }
    for id in old.policies.keys() {
        if !new.policies.contains_key(id) {
            out.push(msg(Payload::ActivePolicyRemove(pb::ActivePolicyRemove {
                id: Some(id.to_pb()),
            })));
        }
    }
    for id in old.ip_sets.keys() {
        if !new.ip_sets.contains_key(id) {
            out.push(msg(Payload::IpsetRemove(pb::IpSetRemove {
                id: id.clone(),
            })));
        }
    }
    for name in old.hosts.keys() {
        if !new.hosts.contains_key(name) {
            // Felix fills in only the hostname.
            out.push(msg(Payload::HostMetadataRemove(pb::HostMetadataRemove {
                hostname: name.clone(),
                ipv4_addr: String::new(),
            })));
        }
    }
    for (name, h) in &new.hosts {
        if old.hosts.get(name) != Some(h) {
            out.push(msg(Payload::HostMetadataUpdate(h.clone())));
        }
    }
    out
}
