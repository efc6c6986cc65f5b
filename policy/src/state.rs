//! The state store: everything Felix has told the dataplane, kept consistent.
//!
//! [`State::apply`] validates an [`Update`] against the current state before it
//! changes anything, so a rejected update leaves the state exactly as it was.
//! Objects keep their arrival order (the order the views allocate ids in).

use indexmap::IndexMap;

use crate::config::{FelixConfig, HostMetadata};
use crate::ipset::{IpSet, IpSetId, IpSetKind, Member, WrongMemberKind};
use crate::model::{
    HostEndpoint, HostEndpointKey, Policy, PolicyKey, Profile, TierInfo, WorkloadEndpoint,
    WorkloadKey,
};

/// One change to the state, already converted from Felix's protobuf or a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// `ConfigUpdate`.
    Config(FelixConfig),
    /// `IPSetUpdate`: create, or replace the whole membership of a known set.
    IpSetReplace {
        /// Set id.
        id: IpSetId,
        /// Set type.
        kind: IpSetKind,
        /// Full membership.
        members: Vec<Member>,
    },
    /// `IPSetDeltaUpdate`.
    IpSetDelta {
        /// Set id.
        id: IpSetId,
        /// Members to add.
        added: Vec<Member>,
        /// Members to remove.
        removed: Vec<Member>,
    },
    /// `IPSetRemove`.
    IpSetRemove(IpSetId),
    /// `ActivePolicyUpdate`.
    PolicyUpdate(PolicyKey, Policy),
    /// `ActivePolicyRemove`.
    PolicyRemove(PolicyKey),
    /// `ActiveProfileUpdate`.
    ProfileUpdate(String, Profile),
    /// `ActiveProfileRemove`.
    ProfileRemove(String),
    /// `WorkloadEndpointUpdate`.
    WorkloadUpdate(WorkloadKey, WorkloadEndpoint),
    /// `WorkloadEndpointRemove`.
    WorkloadRemove(WorkloadKey),
    /// `HostEndpointUpdate`.
    HostEndpointUpdate(HostEndpointKey, HostEndpoint),
    /// `HostEndpointRemove`.
    HostEndpointRemove(HostEndpointKey),
    /// Host metadata of a node (this node's addresses matter for policy).
    HostMetadataUpdate(String, HostMetadata),
    /// A node went away.
    HostMetadataRemove(String),
}

/// What [`State::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed.
    Changed,
    /// A remove for something unknown, or an update equal to what is held: nothing changed.
    Unchanged,
}

/// A protocol violation: the update contradicts the state. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// `IPSetDeltaUpdate` for a set never created.
    #[error("delta for unknown IP set {0}")]
    UnknownIpSetDelta(IpSetId),
    /// A member the set's type cannot hold.
    #[error("IP set {id}: {source}")]
    WrongMember {
        /// The set.
        id: IpSetId,
        /// The member problem.
        source: WrongMemberKind,
    },
    /// A policy or profile rule names a set that is not held.
    #[error("{owner} refers to unknown IP set {set}")]
    UnknownIpSet {
        /// `policy X` or `profile Y`.
        owner: String,
        /// The missing set.
        set: IpSetId,
    },
    /// An endpoint names a policy that is not held.
    #[error("endpoint {endpoint} refers to unknown policy {policy}")]
    UnknownPolicy {
        /// The endpoint.
        endpoint: String,
        /// The missing policy.
        policy: PolicyKey,
    },
    /// An endpoint names a profile that is not held.
    #[error("endpoint {endpoint} refers to unknown profile {profile}")]
    UnknownProfile {
        /// The endpoint.
        endpoint: String,
        /// The missing profile.
        profile: String,
    },
    /// Removing an object that something still uses.
    #[error("cannot remove {what}: still used by {user}")]
    StillReferenced {
        /// What was to be removed.
        what: String,
        /// Who uses it.
        user: String,
    },
}

/// Everything Felix has sent, consistent by construction.
#[derive(Debug, Clone, Default)]
pub struct State {
    config: FelixConfig,
    ipsets: IndexMap<IpSetId, IpSet>,
    policies: IndexMap<PolicyKey, Policy>,
    profiles: IndexMap<String, Profile>,
    workloads: IndexMap<WorkloadKey, WorkloadEndpoint>,
    host_endpoints: IndexMap<HostEndpointKey, HostEndpoint>,
    hosts: IndexMap<String, HostMetadata>,
}

impl State {
    /// An empty state with Felix's default configuration.
    pub fn new() -> Self {
        State::default()
    }

    /// Validates `update` against the state and applies it; on error nothing changed.
    pub fn apply(&mut self, update: Update) -> Result<Applied, StateError> {
        self.check(&update)?;
        Ok(self.commit(update))
    }

    /// Validates `update` without applying it.
    pub fn check(&self, update: &Update) -> Result<(), StateError> {
        match update {
            Update::Config(_) | Update::HostMetadataUpdate(..) | Update::HostMetadataRemove(_) => {
                Ok(())
            }
            Update::IpSetReplace { id, kind, members } => {
                IpSet::new(*kind, members.iter().copied())
                    .map(|_| ())
                    .map_err(|source| StateError::WrongMember {
                        id: id.clone(),
                        source,
                    })
            }
            Update::IpSetDelta { id, added, .. } => {
                let set = self
                    .ipsets
                    .get(id)
                    .ok_or_else(|| StateError::UnknownIpSetDelta(id.clone()))?;
                set.check_all(added)
                    .map_err(|source| StateError::WrongMember {
                        id: id.clone(),
                        source,
                    })
            }
            Update::IpSetRemove(id) => self.check_set_unused(id),
            Update::PolicyUpdate(key, p) => self.check_sets_known(
                &format!("policy {key}"),
                p.inbound.iter().chain(&p.outbound),
            ),
            Update::ProfileUpdate(name, p) => self.check_sets_known(
                &format!("profile {name}"),
                p.inbound.iter().chain(&p.outbound),
            ),
            Update::PolicyRemove(key) => self.check_policy_unused(key),
            Update::ProfileRemove(name) => self.check_profile_unused(name),
            Update::WorkloadUpdate(key, wep) => self.check_endpoint_refs(
                &format!("workload {key}"),
                &wep.profile_ids,
                wep.tiers.iter(),
            ),
            Update::HostEndpointUpdate(key, hep) => self.check_endpoint_refs(
                &format!("host endpoint {key}"),
                &hep.profile_ids,
                hep.all_tiers(),
            ),
            Update::WorkloadRemove(_) | Update::HostEndpointRemove(_) => Ok(()),
        }
    }

    fn check_sets_known<'a>(
        &self,
        owner: &str,
        rules: impl Iterator<Item = &'a crate::model::Rule>,
    ) -> Result<(), StateError> {
        for rule in rules {
            if let Some(set) = rule.set_ids().find(|s| !self.ipsets.contains_key(*s)) {
                return Err(StateError::UnknownIpSet {
                    owner: owner.to_string(),
                    set: set.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_endpoint_refs<'a>(
        &self,
        endpoint: &str,
        profiles: &[String],
        mut tiers: impl Iterator<Item = &'a TierInfo>,
    ) -> Result<(), StateError> {
        if let Some(p) = profiles.iter().find(|p| !self.profiles.contains_key(*p)) {
            return Err(StateError::UnknownProfile {
                endpoint: endpoint.to_string(),
                profile: p.clone(),
            });
        }
        tiers.try_for_each(|tier| {
            match tier
                .ingress
                .iter()
                .chain(&tier.egress)
                .find(|k| !self.policies.contains_key(*k))
            {
                Some(k) => Err(StateError::UnknownPolicy {
                    endpoint: endpoint.to_string(),
                    policy: k.clone(),
                }),
                None => Ok(()),
            }
        })
    }

    fn check_set_unused(&self, id: &IpSetId) -> Result<(), StateError> {
        let users = self
            .policies
            .iter()
            .filter(|(_, p)| {
                p.inbound
                    .iter()
                    .chain(&p.outbound)
                    .any(|r| r.set_ids().any(|s| s == id))
            })
            .map(|(k, _)| format!("policy {k}"))
            .chain(
                self.profiles
                    .iter()
                    .filter(|(_, p)| {
                        p.inbound
                            .iter()
                            .chain(&p.outbound)
                            .any(|r| r.set_ids().any(|s| s == id))
                    })
                    .map(|(k, _)| format!("profile {k}")),
            );
        match users.into_iter().next() {
            Some(user) => Err(StateError::StillReferenced {
                what: format!("IP set {id}"),
                user,
            }),
            None => Ok(()),
        }
    }

    fn endpoints_tiers(&self) -> impl Iterator<Item = (String, &TierInfo)> {
        self.workloads
            .iter()
            .flat_map(|(k, w)| w.tiers.iter().map(move |t| (format!("workload {k}"), t)))
            .chain(self.host_endpoints.iter().flat_map(|(k, h)| {
                h.all_tiers()
                    .map(move |t| (format!("host endpoint {k}"), t))
            }))
    }

    fn check_policy_unused(&self, key: &PolicyKey) -> Result<(), StateError> {
        match self
            .endpoints_tiers()
            .find(|(_, t)| t.ingress.iter().chain(&t.egress).any(|k| k == key))
        {
            Some((user, _)) => Err(StateError::StillReferenced {
                what: format!("policy {key}"),
                user,
            }),
            None => Ok(()),
        }
    }

    fn check_profile_unused(&self, name: &str) -> Result<(), StateError> {
        let user = self
            .workloads
            .iter()
            .find(|(_, w)| w.profile_ids.iter().any(|p| p == name))
            .map(|(k, _)| format!("workload {k}"))
            .or_else(|| {
                self.host_endpoints
                    .iter()
                    .find(|(_, h)| h.profile_ids.iter().any(|p| p == name))
                    .map(|(k, _)| format!("host endpoint {k}"))
            });
        match user {
            Some(user) => Err(StateError::StillReferenced {
                what: format!("profile {name}"),
                user,
            }),
            None => Ok(()),
        }
    }

    /// Applies an update that [`State::check`] accepted.
    fn commit(&mut self, update: Update) -> Applied {
        fn put<K: std::hash::Hash + Eq, V: PartialEq>(
            m: &mut IndexMap<K, V>,
            k: K,
            v: V,
        ) -> Applied {
            match m.get_mut(&k) {
                Some(old) if *old == v => Applied::Unchanged,
                Some(old) => {
                    *old = v;
                    Applied::Changed
                }
                None => {
                    m.insert(k, v);
                    Applied::Changed
                }
            }
        }
        fn del<K: std::hash::Hash + Eq, V>(m: &mut IndexMap<K, V>, k: &K) -> Applied {
            match m.shift_remove(k) {
                Some(_) => Applied::Changed,
                None => Applied::Unchanged,
            }
        }
        match update {
            Update::Config(c) => {
                if self.config == c {
                    Applied::Unchanged
                } else {
                    self.config = c;
                    Applied::Changed
                }
            }
            Update::IpSetReplace { id, kind, members } => match IpSet::new(kind, members) {
                Ok(set) => put(&mut self.ipsets, id, set),
                Err(_) => unreachable!("checked by State::check"),
            },
            Update::IpSetDelta { id, added, removed } => match self.ipsets.get_mut(&id) {
                Some(set) => {
                    let before = set.len();
                    set.remove(removed.iter());
                    let after_remove = set.len();
                    set.add(added);
                    if before == after_remove && after_remove == set.len() {
                        Applied::Unchanged
                    } else {
                        Applied::Changed
                    }
                }
                None => unreachable!("checked by State::check"),
            },
            Update::IpSetRemove(id) => del(&mut self.ipsets, &id),
            Update::PolicyUpdate(k, p) => put(&mut self.policies, k, p),
            Update::PolicyRemove(k) => del(&mut self.policies, &k),
            Update::ProfileUpdate(k, p) => put(&mut self.profiles, k, p),
            Update::ProfileRemove(k) => del(&mut self.profiles, &k),
            Update::WorkloadUpdate(k, w) => put(&mut self.workloads, k, w),
            Update::WorkloadRemove(k) => del(&mut self.workloads, &k),
            Update::HostEndpointUpdate(k, h) => put(&mut self.host_endpoints, k, h),
            Update::HostEndpointRemove(k) => del(&mut self.host_endpoints, &k),
            Update::HostMetadataUpdate(k, h) => put(&mut self.hosts, k, h),
            Update::HostMetadataRemove(k) => del(&mut self.hosts, &k),
        }
    }

    /// The Felix configuration.
    pub fn config(&self) -> &FelixConfig {
        &self.config
    }

    /// IP sets in arrival order.
    pub fn ipsets(&self) -> &IndexMap<IpSetId, IpSet> {
        &self.ipsets
    }

    /// Policies in arrival order.
    pub fn policies(&self) -> &IndexMap<PolicyKey, Policy> {
        &self.policies
    }

    /// Profiles in arrival order.
    pub fn profiles(&self) -> &IndexMap<String, Profile> {
        &self.profiles
    }

    /// Local workload endpoints in arrival order.
    pub fn workloads(&self) -> &IndexMap<WorkloadKey, WorkloadEndpoint> {
        &self.workloads
    }

    /// Local host endpoints in arrival order.
    pub fn host_endpoints(&self) -> &IndexMap<HostEndpointKey, HostEndpoint> {
        &self.host_endpoints
    }

    /// Host metadata of every node.
    pub fn hosts(&self) -> &IndexMap<String, HostMetadata> {
        &self.hosts
    }

    /// This node's own addresses: its host metadata (by `FelixHostname`) and the
    /// expected addresses of its host endpoints.
    pub fn local_host_addrs(&self) -> Vec<std::net::IpAddr> {
        let mut addrs: Vec<std::net::IpAddr> = self
            .hosts
            .get(&self.config.hostname)
            .map(|h| h.addrs().collect())
            .unwrap_or_default();
        for hep in self.host_endpoints.values() {
            for a in &hep.expected_addrs {
                if !addrs.contains(a) {
                    addrs.push(*a);
                }
            }
        }
        addrs
    }

    /// The local workload owning `addr`, if any.
    pub fn workload_owning(
        &self,
        addr: &std::net::IpAddr,
    ) -> Option<(&WorkloadKey, &WorkloadEndpoint)> {
        self.workloads.iter().find(|(_, w)| w.owns(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Rule, TierDefault};

    fn set_id(s: &str) -> IpSetId {
        IpSetId::new(s).unwrap()
    }

    fn policy_using(set: &str) -> Policy {
        let mut rule = Rule::any(Action::Allow);
        rule.src.ip_sets.push(set_id(set));
        Policy {
            inbound: vec![rule],
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        }
    }

    fn key(name: &str) -> PolicyKey {
        PolicyKey {
            kind: "NetworkPolicy".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn delta_for_unknown_set_is_a_violation_and_changes_nothing() {
        let mut s = State::new();
        let err = s
            .apply(Update::IpSetDelta {
                id: set_id("s:x"),
                added: vec!["10.0.0.1/32".parse().unwrap()],
                removed: vec![],
            })
            .unwrap_err();
        assert_eq!(err, StateError::UnknownIpSetDelta(set_id("s:x")));
        assert!(s.ipsets().is_empty());
    }

    #[test]
    fn repeated_ipset_update_is_a_full_replace() {
        let mut s = State::new();
        let m = |x: &str| x.parse::<Member>().unwrap();
        s.apply(Update::IpSetReplace {
            id: set_id("s:a"),
            kind: IpSetKind::Net,
            members: vec![m("10.0.0.1/32"), m("10.0.0.2/32")],
        })
        .unwrap();
        s.apply(Update::IpSetReplace {
            id: set_id("s:a"),
            kind: IpSetKind::Net,
            members: vec![m("10.0.0.3/32")],
        })
        .unwrap();
        let set = &s.ipsets()[&set_id("s:a")];
        assert_eq!(
            set.members().copied().collect::<Vec<_>>(),
            vec![m("10.0.0.3/32")]
        );
    }

    #[test]
    fn removes_of_unknown_ids_are_tolerated() {
        let mut s = State::new();
        assert_eq!(
            s.apply(Update::IpSetRemove(set_id("s:nope"))).unwrap(),
            Applied::Unchanged
        );
        assert_eq!(
            s.apply(Update::PolicyRemove(key("nope"))).unwrap(),
            Applied::Unchanged
        );
        assert_eq!(
            s.apply(Update::ProfileRemove("nope".into())).unwrap(),
            Applied::Unchanged
        );
        assert_eq!(
            s.apply(Update::WorkloadRemove(WorkloadKey {
                orchestrator: "k8s".into(),
                workload: "a/b".into(),
                endpoint: "eth0".into()
            }))
            .unwrap(),
            Applied::Unchanged
        );
    }

    #[test]
    fn policy_with_unknown_set_and_endpoint_with_unknown_policy_are_violations() {
        let mut s = State::new();
        let err = s
            .apply(Update::PolicyUpdate(key("p"), policy_using("s:missing")))
            .unwrap_err();
        assert!(matches!(err, StateError::UnknownIpSet { .. }));
        assert!(s.policies().is_empty());

        let wep = WorkloadEndpoint {
            name: "tun0".into(),
            profile_ids: vec![],
            ipv4_nets: vec![],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "default".into(),
                ingress: vec![key("p")],
                egress: vec![],
                default_action: TierDefault::Deny,
            }],
        };
        let wkey = WorkloadKey {
            orchestrator: "k8s".into(),
            workload: "ns/pod".into(),
            endpoint: "eth0".into(),
        };
        let err = s.apply(Update::WorkloadUpdate(wkey, wep)).unwrap_err();
        assert!(matches!(err, StateError::UnknownPolicy { .. }));
        assert!(s.workloads().is_empty());
    }

    #[test]
    fn referenced_set_cannot_be_removed() {
        let mut s = State::new();
        s.apply(Update::IpSetReplace {
            id: set_id("s:a"),
            kind: IpSetKind::Net,
            members: vec![],
        })
        .unwrap();
        s.apply(Update::PolicyUpdate(key("p"), policy_using("s:a")))
            .unwrap();
        assert!(matches!(
            s.apply(Update::IpSetRemove(set_id("s:a"))),
            Err(StateError::StillReferenced { .. })
        ));
        assert_eq!(s.ipsets().len(), 1);
        s.apply(Update::PolicyRemove(key("p"))).unwrap();
        s.apply(Update::IpSetRemove(set_id("s:a"))).unwrap();
        assert!(s.ipsets().is_empty());
    }
}
