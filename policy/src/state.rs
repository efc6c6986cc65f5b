//! The state store: everything Felix has told the dataplane, kept consistent.
//!
//! [`State::apply`] validates an [`Update`] against the current state before it
//! changes anything, so a rejected update leaves the state exactly as it was.
//! Objects keep their arrival order (the order the views allocate ids in).

use std::hash::BuildHasher as _;
use std::sync::Arc;

use crate::ordered::OrderedMap;

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
    PolicyUpdate(PolicyKey, Arc<Policy>),
    /// `ActivePolicyRemove`.
    PolicyRemove(PolicyKey),
    /// `ActiveProfileUpdate`.
    ProfileUpdate(String, Arc<Profile>),
    /// `ActiveProfileRemove`.
    ProfileRemove(String),
    /// `WorkloadEndpointUpdate`.
    WorkloadUpdate(WorkloadKey, Arc<WorkloadEndpoint>),
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

/// Puts `v` at `k`: a new key goes last, a known one keeps its place.
fn put<K: std::hash::Hash + Eq, V: PartialEq>(m: &mut StateMap<K, V>, k: K, v: V) -> Applied {
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

/// Removes `k`; the other keys keep their order (the order the views number by).
fn del<K: std::hash::Hash + Eq, V>(m: &mut StateMap<K, V>, k: &K) -> Applied {
    match m.remove(k) {
        Some(_) => Applied::Changed,
        None => Applied::Unchanged,
    }
}

/// The state's maps: insertion-ordered, removals O(1) wherever the key sits
/// ([`OrderedMap`]), hashed with `foldhash` (every update looks up names Felix
/// chose; SipHash was a tenth of an endpoint update).
pub type StateMap<K, V> = OrderedMap<K, V, foldhash::quality::RandomState>;

/// Everything Felix has sent, consistent by construction.
#[derive(Debug, Clone, Default)]
pub struct State {
    config: FelixConfig,
    ipsets: StateMap<IpSetId, IpSet>,
    policies: StateMap<PolicyKey, Arc<Policy>>,
    profiles: StateMap<String, Arc<Profile>>,
    workloads: StateMap<WorkloadKey, Arc<WorkloadEndpoint>>,
    host_endpoints: StateMap<HostEndpointKey, HostEndpoint>,
    hosts: StateMap<String, HostMetadata>,
    /// How often the endpoints' tiers name each policy.
    policy_refs: RefCounts<PolicyKey>,
    /// How often the policies' and profiles' rules name each IP set.
    set_refs: RefCounts<IpSetId>,
}

/// Reference counts kept with the state, so that a removal is checked without a
/// scan of every endpoint (policies) or every rule (IP sets): on W-large those scans
/// compared 100,000 keys per removal. The counts sit in a table probed with a hash
/// computed once per key and change (an endpoint update moves some seventy policy
/// keys of three strings each, and the VPP plugin applies it to more than one copy
/// of the state): a count that reaches zero goes, and a new key is cloned, without
/// hashing the key again.
#[derive(Clone)]
struct RefCounts<K> {
    table: hashbrown::HashTable<(K, u32)>,
    hasher: foldhash::quality::RandomState,
}

impl<K> Default for RefCounts<K> {
    fn default() -> Self {
        RefCounts {
            table: hashbrown::HashTable::new(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for RefCounts<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.table.iter().map(|(k, n)| (k, n)))
            .finish()
    }
}

impl<K: std::hash::Hash + Eq + Clone> RefCounts<K> {
    fn add<'a>(&mut self, keys: impl Iterator<Item = &'a K>)
    where
        K: 'a,
    {
        let RefCounts { table, hasher } = self;
        for k in keys {
            let h = hasher.hash_one(k);
            match table.entry(h, |(e, _)| e == k, |(e, _)| hasher.hash_one(e)) {
                hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().1 += 1,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert((k.clone(), 1));
                }
            }
        }
    }

    fn remove<'a>(&mut self, keys: impl Iterator<Item = &'a K>)
    where
        K: 'a,
    {
        let RefCounts { table, hasher } = self;
        for k in keys {
            if let Ok(mut o) = table.find_entry(hasher.hash_one(k), |(e, _)| e == k) {
                let n = &mut o.get_mut().1;
                *n -= 1;
                if *n == 0 {
                    o.remove();
                }
            }
        }
    }

    fn is_used(&self, k: &K) -> bool {
        self.table
            .find(self.hasher.hash_one(k), |(e, _)| e == k)
            .is_some()
    }

    /// The counts as a plain map (tests compare them with a recount).
    #[cfg(test)]
    fn as_map(&self) -> std::collections::HashMap<K, u32> {
        self.table.iter().cloned().collect()
    }
}

/// The policies an endpoint's tiers name, repeats included.
fn tier_policies<'a>(
    tiers: impl Iterator<Item = &'a TierInfo>,
) -> impl Iterator<Item = &'a PolicyKey> {
    tiers.flat_map(|t| t.ingress.iter().chain(&t.egress))
}

/// The parts of two lists that differ once their common prefix and suffix are
/// trimmed: an endpoint update usually adds or removes a policy or two of the many
/// its tiers name, a policy update changes the sets of a rule or two.
fn changed_middle<'l, T: PartialEq>(old: &'l [T], new: &'l [T]) -> (&'l [T], &'l [T]) {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let (old, new) = (
        old.get(prefix..).unwrap_or_default(),
        new.get(prefix..).unwrap_or_default(),
    );
    let suffix = old
        .iter()
        .rev()
        .zip(new.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    (
        old.get(..old.len() - suffix).unwrap_or_default(),
        new.get(..new.len() - suffix).unwrap_or_default(),
    )
}

/// A policy's rule lists: inbound, outbound.
fn policy_lists(p: &Policy) -> [&[crate::model::Rule]; 2] {
    [&p.inbound, &p.outbound]
}

/// A profile's rule lists: inbound, outbound.
fn profile_lists(p: &Profile) -> [&[crate::model::Rule]; 2] {
    [&p.inbound, &p.outbound]
}

/// Moves a policy's or profile's IP-set references from its previous rule lists
/// (inbound, outbound) to its new ones.
fn follow_rules(
    refs: &mut RefCounts<IpSetId>,
    before: Option<[&[crate::model::Rule]; 2]>,
    after: Option<[&[crate::model::Rule]; 2]>,
) {
    let (old, new) = (lists_sets(before), lists_sets(after));
    let (gone, came) = changed_middle(&old, &new);
    refs.remove(gone.iter().copied());
    refs.add(came.iter().copied());
}

/// The IP sets rule lists (inbound, outbound) name, in order, repeats included.
fn lists_sets(lists: Option<[&[crate::model::Rule]; 2]>) -> Vec<&IpSetId> {
    lists.map_or_else(Vec::new, |[inbound, outbound]| {
        rule_sets(inbound, outbound).collect()
    })
}

/// Moves an endpoint's references from its previous tiers to its new ones.
fn follow_endpoint<'a>(
    refs: &mut RefCounts<PolicyKey>,
    before: Option<impl Iterator<Item = &'a TierInfo>>,
    after: impl Iterator<Item = &'a TierInfo>,
) {
    let old: Vec<&PolicyKey> = before.map_or_else(Vec::new, |b| tier_policies(b).collect());
    let new: Vec<&PolicyKey> = tier_policies(after).collect();
    let (gone, came) = changed_middle(&old, &new);
    refs.remove(gone.iter().copied());
    refs.add(came.iter().copied());
}

/// The IP sets a policy's or profile's rules name, repeats included.
fn rule_sets<'a>(
    inbound: &'a [crate::model::Rule],
    outbound: &'a [crate::model::Rule],
) -> impl Iterator<Item = &'a IpSetId> {
    inbound.iter().chain(outbound).flat_map(|r| r.set_ids())
}

impl State {
    /// An empty state with Felix's default configuration.
    pub fn new() -> Self {
        State::default()
    }

    /// Validates `update` against the state and applies it; on error nothing changed.
    pub fn apply(&mut self, update: Update) -> Result<Applied, StateError> {
        if let Update::IpSetReplace { id, kind, members } = update {
            // Building the set is its check: built once, kept.
            let set = IpSet::new(kind, members).map_err(|source| StateError::WrongMember {
                id: id.clone(),
                source,
            })?;
            return Ok(put(&mut self.ipsets, id, set));
        }
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
                &format_args!("policy {key}"),
                self.policies.get(key).map(|p| policy_lists(p)),
                policy_lists(p),
            ),
            Update::ProfileUpdate(name, p) => self.check_sets_known(
                &format_args!("profile {name}"),
                self.profiles.get(name).map(|p| profile_lists(p)),
                profile_lists(p),
            ),
            Update::PolicyRemove(key) => self.check_policy_unused(key),
            Update::ProfileRemove(name) => self.check_profile_unused(name),
            Update::WorkloadUpdate(key, wep) => self.check_endpoint_refs(
                &format_args!("workload {key}"),
                &wep.profile_ids,
                wep.tiers.iter(),
                self.workloads.get(key).map(|w| w.tiers.iter()),
            ),
            Update::HostEndpointUpdate(key, hep) => self.check_endpoint_refs(
                &format_args!("host endpoint {key}"),
                &hep.profile_ids,
                hep.all_tiers(),
                self.host_endpoints.get(key).map(HostEndpoint::all_tiers),
            ),
            Update::WorkloadRemove(_) | Update::HostEndpointRemove(_) => Ok(()),
        }
    }

    /// Checks that the sets rule lists name exist. Sets the lists' previous version
    /// (`before`) names at the same place exist already (a named set cannot be
    /// removed), so only the changed middle of the list is looked up.
    fn check_sets_known(
        &self,
        owner: &dyn std::fmt::Display,
        before: Option<[&[crate::model::Rule]; 2]>,
        after: [&[crate::model::Rule]; 2],
    ) -> Result<(), StateError> {
        let (old, new) = (lists_sets(before), lists_sets(Some(after)));
        let (_, came) = changed_middle(&old, &new);
        match came.iter().find(|s| !self.ipsets.contains_key(**s)) {
            Some(set) => Err(StateError::UnknownIpSet {
                owner: owner.to_string(),
                set: (*set).clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks that an endpoint's profiles and policies exist. Policies its previous
    /// version (`before`) names at the same place exist already (a policy named by an
    /// endpoint cannot be removed), so only the changed middle of the list is looked up.
    fn check_endpoint_refs<'a>(
        &self,
        endpoint: &dyn std::fmt::Display,
        profiles: &[String],
        tiers: impl Iterator<Item = &'a TierInfo>,
        before: Option<impl Iterator<Item = &'a TierInfo>>,
    ) -> Result<(), StateError> {
        if let Some(p) = profiles.iter().find(|p| !self.profiles.contains_key(*p)) {
            return Err(StateError::UnknownProfile {
                endpoint: endpoint.to_string(),
                profile: p.clone(),
            });
        }
        let new: Vec<&PolicyKey> = tier_policies(tiers).collect();
        let old: Vec<&PolicyKey> = before.map_or_else(Vec::new, |b| tier_policies(b).collect());
        let (_, changed) = changed_middle(&old, &new);
        match changed.iter().find(|k| !self.policies.contains_key(**k)) {
            Some(k) => Err(StateError::UnknownPolicy {
                endpoint: endpoint.to_string(),
                policy: (*k).clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_set_unused(&self, id: &IpSetId) -> Result<(), StateError> {
        if !self.set_refs.is_used(id) {
            return Ok(());
        }
        // Used: the scan names a user for the error.
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
        if !self.policy_refs.is_used(key) {
            return Ok(());
        }
        // Used: the scan names a user for the error.
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

    /// Applies an update that [`State::check`] accepted, keeping the reference
    /// counts in step.
    fn commit(&mut self, update: Update) -> Applied {
        match &update {
            Update::PolicyUpdate(k, p) => {
                let old = self.policies.get(k);
                if old == Some(p) {
                    return Applied::Unchanged;
                }
                follow_rules(
                    &mut self.set_refs,
                    old.map(|p| policy_lists(p)),
                    Some(policy_lists(p)),
                );
            }
            Update::PolicyRemove(k) => {
                follow_rules(
                    &mut self.set_refs,
                    self.policies.get(k).map(|p| policy_lists(p)),
                    None,
                );
            }
            Update::ProfileUpdate(k, p) => {
                let old = self.profiles.get(k);
                if old == Some(p) {
                    return Applied::Unchanged;
                }
                follow_rules(
                    &mut self.set_refs,
                    old.map(|p| profile_lists(p)),
                    Some(profile_lists(p)),
                );
            }
            Update::ProfileRemove(k) => {
                follow_rules(
                    &mut self.set_refs,
                    self.profiles.get(k).map(|p| profile_lists(p)),
                    None,
                );
            }
            Update::WorkloadUpdate(k, w) => {
                let old = self.workloads.get(k).map(|o| o.tiers.iter());
                follow_endpoint(&mut self.policy_refs, old, w.tiers.iter());
            }
            Update::WorkloadRemove(k) => {
                if let Some(old) = self.workloads.get(k) {
                    self.policy_refs.remove(tier_policies(old.tiers.iter()));
                }
            }
            Update::HostEndpointUpdate(k, h) => {
                let old = self.host_endpoints.get(k).map(HostEndpoint::all_tiers);
                follow_endpoint(&mut self.policy_refs, old, h.all_tiers());
            }
            Update::HostEndpointRemove(k) => {
                if let Some(old) = self.host_endpoints.get(k) {
                    self.policy_refs.remove(tier_policies(old.all_tiers()));
                }
            }
            _ => {}
        }
        self.commit_objects(update)
    }

    /// Applies an update to the objects (the reference counts already follow it).
    fn commit_objects(&mut self, update: Update) -> Applied {
        match update {
            Update::Config(c) => {
                if self.config == c {
                    Applied::Unchanged
                } else {
                    self.config = c;
                    Applied::Changed
                }
            }
            // `State::apply` builds and puts a replaced set itself; kept whole here so
            // the arm is never a panic.
            Update::IpSetReplace { id, kind, members } => IpSet::new(kind, members)
                .map_or(Applied::Unchanged, |set| put(&mut self.ipsets, id, set)),
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

    /// Whether some endpoint's tiers name the policy.
    pub fn policy_is_used(&self, key: &PolicyKey) -> bool {
        self.policy_refs.is_used(key)
    }

    /// The Felix configuration.
    pub fn config(&self) -> &FelixConfig {
        &self.config
    }

    /// IP sets in arrival order.
    pub fn ipsets(&self) -> &StateMap<IpSetId, IpSet> {
        &self.ipsets
    }

    /// Policies in arrival order.
    pub fn policies(&self) -> &StateMap<PolicyKey, Arc<Policy>> {
        &self.policies
    }

    /// Profiles in arrival order.
    pub fn profiles(&self) -> &StateMap<String, Arc<Profile>> {
        &self.profiles
    }

    /// Local workload endpoints in arrival order.
    pub fn workloads(&self) -> &StateMap<WorkloadKey, Arc<WorkloadEndpoint>> {
        &self.workloads
    }

    /// Local host endpoints in arrival order.
    pub fn host_endpoints(&self) -> &StateMap<HostEndpointKey, HostEndpoint> {
        &self.host_endpoints
    }

    /// Host metadata of every node.
    pub fn hosts(&self) -> &StateMap<String, HostMetadata> {
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
        self.workloads
            .iter()
            .find(|(_, w)| w.owns(addr))
            .map(|(k, w)| (k, &**w))
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

    /// A state holding only an empty `NET` set.
    fn with_empty_set(id: &str) -> State {
        let mut s = State::new();
        s.apply(Update::IpSetReplace {
            id: set_id(id),
            kind: IpSetKind::Net,
            members: vec![],
        })
        .unwrap();
        s
    }

    fn pod() -> WorkloadKey {
        WorkloadKey {
            orchestrator: "k8s".into(),
            workload: "ns/pod".into(),
            endpoint: "eth0".into(),
        }
    }

    /// A pod whose default tier lists `policy` for ingress.
    fn pod_listing(policy: &str) -> WorkloadEndpoint {
        WorkloadEndpoint {
            name: "tun0".into(),
            profile_ids: vec![],
            ipv4_nets: vec![],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "default".into(),
                ingress: vec![key(policy)],
                egress: vec![],
                default_action: TierDefault::Deny,
            }],
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
        let set = s.ipsets().get(&set_id("s:a")).unwrap();
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
            .apply(Update::PolicyUpdate(
                key("p"),
                policy_using("s:missing").into(),
            ))
            .unwrap_err();
        assert!(matches!(err, StateError::UnknownIpSet { .. }));
        assert!(s.policies().is_empty());

        let wep = pod_listing("p");
        let wkey = pod();
        let err = s
            .apply(Update::WorkloadUpdate(wkey, wep.into()))
            .unwrap_err();
        assert!(matches!(err, StateError::UnknownPolicy { .. }));
        assert!(s.workloads().is_empty());
    }

    /// A copy of the state (the plugin keeps several: the views', the compiler's, the
    /// retired snapshots it brings forward) shares its policies and endpoints with
    /// the original, and a copied update shares them with the state it went into;
    /// a change to one copy leaves the other as it was.
    #[test]
    fn copies_share_policies_and_endpoints() {
        let mut s = with_empty_set("s:a");
        let added = Update::PolicyUpdate(key("p"), policy_using("s:a").into());
        s.apply(added.clone()).unwrap();
        let wkey = pod();
        let wep = pod_listing("p");
        s.apply(Update::WorkloadUpdate(wkey.clone(), wep.into()))
            .unwrap();
        let Update::PolicyUpdate(_, sent) = &added else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(s.policies().get(&key("p")).unwrap(), sent));

        let mut copy = s.clone();
        assert!(Arc::ptr_eq(
            copy.policies().get(&key("p")).unwrap(),
            s.policies().get(&key("p")).unwrap()
        ));
        assert!(Arc::ptr_eq(
            copy.workloads().get(&wkey).unwrap(),
            s.workloads().get(&wkey).unwrap()
        ));

        let mut widened = policy_using("s:a");
        widened.outbound.push(Rule::any(Action::Allow));
        copy.apply(Update::PolicyUpdate(key("p"), widened.into()))
            .unwrap();
        assert_eq!(copy.policies().get(&key("p")).unwrap().outbound.len(), 1);
        assert!(s.policies().get(&key("p")).unwrap().outbound.is_empty());
    }

    /// A set replaced by members of the wrong kind is refused, and keeps what it
    /// held; the same members again change nothing.
    #[test]
    fn a_replacement_of_the_wrong_kind_changes_nothing() {
        let mut s = State::new();
        let net: Member = "10.0.0.1/32".parse().unwrap();
        let replace = |members| Update::IpSetReplace {
            id: set_id("s:a"),
            kind: IpSetKind::Net,
            members,
        };
        assert_eq!(s.apply(replace(vec![net])).unwrap(), Applied::Changed);
        assert_eq!(s.apply(replace(vec![net])).unwrap(), Applied::Unchanged);
        let port: Member = "10.0.0.2,tcp:80".parse().unwrap();
        let err = s.apply(replace(vec![net, port])).unwrap_err();
        assert!(matches!(err, StateError::WrongMember { .. }), "{err}");
        let held: Vec<Member> = s
            .ipsets()
            .get(&set_id("s:a"))
            .unwrap()
            .members()
            .copied()
            .collect();
        assert_eq!(held, vec![net]);
    }

    #[test]
    fn referenced_set_cannot_be_removed() {
        let mut s = with_empty_set("s:a");
        s.apply(Update::PolicyUpdate(key("p"), policy_using("s:a").into()))
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

    /// The reference counts, recounted from the objects.
    fn recount(s: &State) -> (RefCounts<PolicyKey>, RefCounts<IpSetId>) {
        let mut policies = RefCounts::default();
        for w in s.workloads.values() {
            policies.add(tier_policies(w.tiers.iter()));
        }
        for h in s.host_endpoints.values() {
            policies.add(tier_policies(h.all_tiers()));
        }
        let mut sets = RefCounts::default();
        for p in s.policies.values() {
            sets.add(rule_sets(&p.inbound, &p.outbound));
        }
        for p in s.profiles.values() {
            sets.add(rule_sets(&p.inbound, &p.outbound));
        }
        (policies, sets)
    }

    /// One random update over a few sets, policies and endpoints (many refused).
    fn random_update(pick: &[u8]) -> Update {
        let n = |i: usize| pick.get(i).copied().unwrap_or(0) as usize;
        let sets = ["s:a", "s:b", "s:c"];
        let tiered = |names: &[usize]| TierInfo {
            name: "default".into(),
            ingress: names.iter().map(|i| key(&format!("p{i}"))).collect(),
            egress: names
                .iter()
                .take(1)
                .map(|i| key(&format!("p{i}")))
                .collect(),
            default_action: TierDefault::Deny,
        };
        let choice = n(1) % 3;
        match n(0) % 9 {
            0 => Update::IpSetReplace {
                id: set_id(sets[choice]),
                kind: IpSetKind::Net,
                members: vec![],
            },
            1 => Update::IpSetRemove(set_id(sets[choice])),
            2 => {
                let mut p = policy_using(sets[choice]);
                if n(2) % 2 == 0 {
                    p.inbound.push(p.inbound[0].clone());
                }
                // Sometimes a second set, ahead of or behind the first.
                let other = policy_using(sets[n(2) / 2 % 3]).inbound;
                match n(2) / 6 % 3 {
                    0 => p.inbound.extend(other),
                    1 => p.inbound.splice(0..0, other).for_each(drop),
                    _ => {}
                }
                Update::PolicyUpdate(key(&format!("p{}", n(3) % 4)), p.into())
            }
            3 => Update::PolicyRemove(key(&format!("p{}", n(3) % 4))),
            4 => Update::ProfileUpdate(format!("prof{choice}"), {
                let p = policy_using(sets[n(2) % 3]);
                Profile {
                    inbound: p.inbound,
                    outbound: vec![],
                }
                .into()
            }),
            5 => Update::ProfileRemove(format!("prof{choice}")),
            6 => Update::WorkloadUpdate(
                WorkloadKey {
                    orchestrator: "k8s".into(),
                    workload: format!("ns/w{choice}"),
                    endpoint: "eth0".into(),
                },
                WorkloadEndpoint {
                    name: format!("cali{choice}"),
                    profile_ids: vec![],
                    ipv4_nets: vec![],
                    ipv6_nets: vec![],
                    tiers: vec![tiered(&[n(2) % 4, n(3) % 4])],
                }
                .into(),
            ),
            7 => Update::WorkloadRemove(WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/w{choice}"),
                endpoint: "eth0".into(),
            }),
            _ => {
                let h = HostEndpoint {
                    name: "eth1".into(),
                    tiers: vec![tiered(&[n(2) % 4])],
                    profile_ids: vec![],
                    untracked_tiers: vec![],
                    pre_dnat_tiers: vec![],
                    forward_tiers: vec![tiered(&[n(3) % 4, n(2) % 4])],
                    expected_addrs: vec![],
                };
                if choice == 0 {
                    Update::HostEndpointRemove(HostEndpointKey("h".into()))
                } else {
                    Update::HostEndpointUpdate(HostEndpointKey("h".into()), h)
                }
            }
        }
    }

    proptest::proptest! {
        /// The reference counts follow every accepted update, a removal is refused
        /// exactly when some endpoint (policies) or rule (IP sets) still names it, and
        /// an endpoint exactly when it names a policy the state lacks.
        #[test]
        fn reference_counts_follow_every_update(
            picks in proptest::collection::vec(proptest::collection::vec(0u8..=255, 4), 1..120)
        ) {
            let mut s = State::new();
            for pick in &picks {
                let update = random_update(pick);
                let named = match &update {
                    Update::PolicyRemove(k) => Some(
                        s.workloads.values().any(|w| tier_policies(w.tiers.iter()).any(|p| p == k))
                            || s.host_endpoints.values().any(|h| tier_policies(h.all_tiers()).any(|p| p == k)),
                    ),
                    Update::IpSetRemove(id) => Some(
                        s.policies.values().any(|p| rule_sets(&p.inbound, &p.outbound).any(|x| x == id))
                            || s.profiles.values().any(|p| rule_sets(&p.inbound, &p.outbound).any(|x| x == id)),
                    ),
                    // Refused exactly when it names a set the state lacks.
                    Update::PolicyUpdate(_, p) => Some(
                        rule_sets(&p.inbound, &p.outbound).any(|id| !s.ipsets.contains_key(id)),
                    ),
                    Update::ProfileUpdate(_, p) => Some(
                        rule_sets(&p.inbound, &p.outbound).any(|id| !s.ipsets.contains_key(id)),
                    ),
                    // Refused exactly when it names a policy the state lacks.
                    Update::WorkloadUpdate(_, w) => Some(
                        tier_policies(w.tiers.iter()).any(|k| !s.policies.contains_key(k)),
                    ),
                    Update::HostEndpointUpdate(_, h) => Some(
                        tier_policies(h.all_tiers()).any(|k| !s.policies.contains_key(k)),
                    ),
                    _ => None,
                };
                let result = s.apply(update);
                if let Some(named) = named {
                    proptest::prop_assert_eq!(result.is_err(), named);
                }
                let (policies, sets) = recount(&s);
                proptest::prop_assert_eq!(s.policy_refs.as_map(), policies.as_map());
                proptest::prop_assert_eq!(s.set_refs.as_map(), sets.as_map());
            }
        }
    }
}
