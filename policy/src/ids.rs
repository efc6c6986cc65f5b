//! Stable ids for what the views print: `ipset#`, `policy#`, `rule#`, and
//! interfaces' `sw_if_index`.
//!
//! They are allocated by [`IdTable::sync`] in a fixed
//! order and stay with an object for its life:
//!
//! - `ipset#0` is the set of every local workload address; Felix's sets follow from 1.
//! - `policy#0` workloads-to-host, `policy#1` failsafe, `policy#2` allow-from-host and
//!   `policy#3` allow-to-host are capo's internal policies; `policy#4`–`#9` are kept
//!   free. Profiles and policies follow from 10, profiles first (as a reconcile
//!   creates them).
//! - `rule#0`/`#1` (allow-from-host), `#2` (workloads-to-host) and `#3`/`#4`
//!   (allow-to-host) are internal; `#5`–`#14` are kept free. Then, per sync: profile
//!   rules; per policy, its tier's end-of-tier rule when the tier is new (it counts
//!   the tier's default drops), then the policy's rules (inbound before outbound);
//!   then failsafe rules (only while a host endpoint exists: without one, host
//!   traffic is not policed and failsafe has nothing to do).
//!

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;

use crate::config::FailsafePort;
use crate::eval::InternalPolicy;
use crate::ipset::IpSetId;
use crate::model::{Direction, PolicyKey, Rule};
use crate::state::State;

/// The id of the internal set of every local workload address.
pub const LOCAL_WORKLOADS_SET: u32 = 0;
const FIRST_FELIX_SET: u32 = 1;
const FIRST_FELIX_POLICY: u32 = 10;
const FIRST_FELIX_RULE: u32 = 15;

/// The table's maps: keyed by names Felix chose, hashed often on every update, so
/// with a faster hash than SipHash (`foldhash`, seeded per map).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;

/// A map that copies of the table share shard by shard: a copy that then changes one
/// entry copies one shard. (Copied whole, W-large's 10,000 policies made every policy
/// added or removed copy and later free 10,000 keys, milliseconds each time.)
#[derive(Debug, Clone)]
struct ShardedMap<K, V> {
    // The list of shards is shared too: a copy of the table is one reference count
    // per map, not one per shard.
    shards: Arc<Vec<Arc<HashMap<K, V>>>>,
}

/// Shards of a [`ShardedMap`] (W-large: about 40 policies a shard).
const MAP_SHARDS: usize = 256;

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: Arc::new((0..MAP_SHARDS).map(|_| Arc::default()).collect()),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for ShardedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        // Equal keys land in equal shards (the shard hash is fixed).
        self.shards == other.shards
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    fn shard_of<Q: std::hash::Hash + ?Sized>(key: &Q) -> usize {
        use std::hash::BuildHasher;
        foldhash::quality::FixedState::with_seed(0x6964_7321).hash_one(key) as usize % MAP_SHARDS
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.shards.get(Self::shard_of(key))?.get(key)
    }

    fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    fn insert(&mut self, key: K, value: V) {
        if let Some(shard) = Arc::make_mut(&mut self.shards).get_mut(Self::shard_of(&key)) {
            Arc::make_mut(shard).insert(key, value);
        }
    }

    fn remove(&mut self, key: &K) {
        // Absent: no shard copied.
        if self.contains_key(key) {
            if let Some(shard) = Arc::make_mut(&mut self.shards).get_mut(Self::shard_of(key)) {
                Arc::make_mut(shard).remove(key);
            }
        }
    }

    fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        if self.iter().all(|(k, _)| keep(k)) {
            return;
        }
        for shard in Arc::make_mut(&mut self.shards) {
            if shard.keys().any(|k| !keep(k)) {
                Arc::make_mut(shard).retain(|k, _| keep(k));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Shards this map holds apart from `other`'s (for tests of the sharing).
    #[cfg(test)]
    fn shards_apart_from(&self, other: &Self) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count()
    }
}

/// Anything that prints as `[policy#N]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyRef {
    /// One of capo's internal policies.
    Internal(InternalPolicyId),
    /// A profile, by name.
    Profile(String),
    /// A Felix policy.
    Policy(PolicyKey),
}

/// Internal policies with fixed ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InternalPolicyId {
    /// `policy#0`.
    WorkloadsToHost,
    /// `policy#1`.
    Failsafe,
    /// `policy#2`.
    AllowFromHost,
    /// `policy#3`.
    AllowToHost,
}

impl InternalPolicyId {
    pub(crate) fn id(self) -> u32 {
        match self {
            InternalPolicyId::WorkloadsToHost => 0,
            InternalPolicyId::Failsafe => 1,
            InternalPolicyId::AllowFromHost => 2,
            InternalPolicyId::AllowToHost => 3,
        }
    }

    /// The printed policy of an internal decider (`None`: not a printed policy).
    pub(crate) fn of(p: InternalPolicy) -> Option<Self> {
        match p {
            InternalPolicy::WorkloadsToHost => Some(InternalPolicyId::WorkloadsToHost),
            InternalPolicy::Failsafe => Some(InternalPolicyId::Failsafe),
            InternalPolicy::AllowFromHost => Some(InternalPolicyId::AllowFromHost),
            InternalPolicy::AllowToHost => Some(InternalPolicyId::AllowToHost),
            InternalPolicy::NeighbourDiscovery => None,
        }
    }
}

/// The host-facing interface's name when none is configured (CalicoVPP's host tap).
pub const DEFAULT_HOST_INTERFACE: &str = "tap0";

/// Every tier name the state references, in numbering order (policies' tiers, then
/// the workloads', then the host endpoints'), repeats included.
fn referenced_tiers(state: &State) -> impl Iterator<Item = &str> {
    policy_tiers(state).chain(endpoint_tiers(state))
}

/// The policies' tier names (policies without a tier name none), repeats included.
fn policy_tiers(state: &State) -> impl Iterator<Item = &str> {
    state
        .policies()
        .values()
        .filter_map(|p| Some(p.tier.as_str()).filter(|t| !t.is_empty()))
}

/// The tier names the workloads and host endpoints reference, in numbering order.
fn endpoint_tiers(state: &State) -> impl Iterator<Item = &str> {
    state
        .workloads()
        .values()
        .flat_map(|w| w.tiers.iter().map(|t| t.name.as_str()))
        .chain(
            state
                .host_endpoints()
                .values()
                .flat_map(|h| h.all_tiers().map(|t| t.name.as_str())),
        )
}

/// Tier names remembered while numbering an endpoint sync's tiers (clusters have a
/// handful; more are simply looked up each time).
const FEW_TIERS: usize = 16;

/// What one update can have changed, for [`IdTable::sync_after`].
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    /// A policy was updated or removed.
    Policy(&'a PolicyKey),
    /// A profile was updated or removed.
    Profile(&'a str),
    /// Workload endpoints changed (their tiers, profiles and interfaces).
    Workloads,
    /// One workload endpoint was updated or removed: only its tiers and its
    /// interface can be new.
    Workload(&'a crate::model::WorkloadKey),
}

/// A policy or profile being synced: its ref, its tier, its inbound and outbound rules.
type LiveList<'s> = (PolicyRef, Option<&'s str>, [&'s [Rule]; 2]);

/// Each list's rules with their ids, to keep the id of an unchanged rule. The lists
/// are spread over shards by a fixed hash of their key, so that a copy of the table
/// that then changes one list copies one shard.
#[derive(Debug, Clone, PartialEq)]
struct RuleIds {
    shards: Arc<Vec<Arc<ListShard>>>,
}

type ListShard = IndexMap<ListKey, Arc<NumberedRules>, foldhash::quality::RandomState>;

/// Shards of [`RuleIds`] (W-large's 20,000 lists: about 80 per shard).
const RULE_SHARDS: usize = 256;

impl Default for RuleIds {
    fn default() -> Self {
        RuleIds {
            shards: Arc::new((0..RULE_SHARDS).map(|_| Arc::default()).collect()),
        }
    }
}

impl RuleIds {
    fn shard_of(q: &ListQuery<'_>) -> usize {
        use std::hash::BuildHasher;
        // Fixed, so that equal tables shard alike (and compare shard by shard).
        foldhash::quality::FixedState::with_seed(0x6361_706f).hash_one(q) as usize % RULE_SHARDS
    }

    fn get(&self, q: &ListQuery<'_>) -> Option<&NumberedRules> {
        self.shards
            .get(Self::shard_of(q))
            .and_then(|s| s.get(q))
            .map(|l| l.as_ref())
    }

    /// The shard holding `q`'s list, for changing (copied if shared).
    fn shard_mut(&mut self, q: &ListQuery<'_>) -> Option<&mut ListShard> {
        Arc::make_mut(&mut self.shards)
            .get_mut(Self::shard_of(q))
            .map(Arc::make_mut)
    }

    fn remove(&mut self, q: &ListQuery<'_>) -> Option<Arc<NumberedRules>> {
        // Absent: no shard copied.
        self.get(q)?;
        self.shard_mut(q)?.swap_remove(q)
    }

    fn insert(&mut self, key: ListKey, rules: NumberedRules) {
        if let Some(shard) = self.shard_mut(&key.query()) {
            shard.insert(key, Arc::new(rules));
        }
    }

    fn retain(&mut self, keep: impl Fn(&ListKey) -> bool) {
        if self.iter().all(|(k, _)| keep(k)) {
            return;
        }
        for shard in Arc::make_mut(&mut self.shards) {
            if shard.keys().any(|k| !keep(k)) {
                Arc::make_mut(shard).retain(|k, _| keep(k));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&ListKey, &NumberedRules)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, l)| (k, l.as_ref())))
    }
}

/// A rule list's rules with their ids.
type NumberedRules = Vec<(Rule, u32)>;

/// A rule list: whose, which direction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListKey {
    pref: Arc<PolicyRef>,
    dir: Direction,
}

impl ListKey {
    fn query(&self) -> ListQuery<'_> {
        ListQuery::new(self.pref.as_ref(), self.dir)
    }
}

/// A [`ListKey`] borrowed, so that looking a list up clones no name.
#[derive(Hash)]
enum RefQuery<'a> {
    Internal(InternalPolicyId),
    Profile(&'a str),
    Policy(&'a PolicyKey),
}

#[derive(Hash)]
struct ListQuery<'a> {
    pref: RefQuery<'a>,
    dir: Direction,
}

impl<'a> ListQuery<'a> {
    fn new(pref: &'a PolicyRef, dir: Direction) -> Self {
        let pref = match pref {
            PolicyRef::Internal(i) => RefQuery::Internal(*i),
            PolicyRef::Profile(name) => RefQuery::Profile(name),
            PolicyRef::Policy(key) => RefQuery::Policy(key),
        };
        ListQuery { pref, dir }
    }
}

// A key hashes as its borrowed form, so either finds the other's entries.
impl std::hash::Hash for ListKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.query().hash(state);
    }
}

impl indexmap::Equivalent<ListKey> for ListQuery<'_> {
    fn equivalent(&self, key: &ListKey) -> bool {
        self.dir == key.dir
            && match (&self.pref, key.pref.as_ref()) {
                (RefQuery::Internal(a), PolicyRef::Internal(b)) => a == b,
                (RefQuery::Profile(a), PolicyRef::Profile(b)) => *a == b.as_str(),
                (RefQuery::Policy(a), PolicyRef::Policy(b)) => *a == b,
                _ => false,
            }
    }
}

/// Stable ids for everything the views print.
#[derive(Debug, Clone, PartialEq)]
pub struct IdTable {
    // The maps are shared between copies until one copy changes them (a dataplane
    // keeps a copy per generation for its views): a copy costs a few reference
    // counts, and an update copies only the maps it changes.
    ipsets: ShardedMap<IpSetId, u32>,
    policies: ShardedMap<PolicyRef, u32>,
    rules: RuleIds,
    tiers: Arc<HashMap<String, u32>>,
    failsafe_rules: Vec<(FailsafeRule, u32)>,
    interfaces: InterfaceMap,
    /// The name a dataplane knows an interface by, where it differs from the
    /// endpoint's (a VPP interface bound to the endpoint).
    shown_names: Arc<HashMap<String, String>>,
    next_ipset: u32,
    next_policy: u32,
    next_rule: u32,
    next_interface: u32,
    host_interface: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FailsafeRule {
    inbound: bool,
    port: FailsafePort,
}

impl Default for IdTable {
    fn default() -> Self {
        IdTable::new(DEFAULT_HOST_INTERFACE)
    }
}

impl IdTable {
    /// An empty table; `host_interface` names the host-facing interface.
    pub fn new(host_interface: &str) -> Self {
        IdTable {
            ipsets: ShardedMap::default(),
            policies: ShardedMap::default(),
            rules: RuleIds::default(),
            tiers: Arc::default(),
            failsafe_rules: Vec::new(),
            interfaces: InterfaceMap::default(),
            shown_names: Arc::default(),
            next_ipset: FIRST_FELIX_SET,
            next_policy: FIRST_FELIX_POLICY,
            next_rule: FIRST_FELIX_RULE,
            next_interface: 1,
            host_interface: host_interface.to_string(),
        }
    }

    /// Fixes an interface's index (VPP's `sw_if_index`), before or after a sync.
    pub fn set_interface_index(&mut self, name: &str, index: u32) {
        if self.interfaces.by_name.get(name) != Some(&index) {
            self.interfaces.set(name, index);
        }
    }

    /// Prints interface `name` as `shown` (the dataplane's name of the interface
    /// bound to the endpoint); `shown == name` undoes it.
    pub fn set_interface_shown_name(&mut self, name: &str, shown: &str) {
        if name == shown {
            if self.shown_names.contains_key(name) {
                Arc::make_mut(&mut self.shown_names).remove(name);
            }
        } else if self.shown_names.get(name).map(String::as_str) != Some(shown) {
            Arc::make_mut(&mut self.shown_names).insert(name.to_string(), shown.to_string());
        }
    }

    /// The name the views print for interface `name`.
    pub fn shown_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.shown_names.get(name).map_or(name, String::as_str)
    }

    /// The host-facing interface's name.
    pub fn host_interface(&self) -> &str {
        &self.host_interface
    }

    /// Gives ids to objects new in `state` and forgets those it no longer holds.
    pub fn sync(&mut self, state: &State) {
        self.sync_inner(state, None);
    }

    /// [`IdTable::sync`] after an update that can only have changed `changed`: the
    /// same ids (a property test in the classifier checks it against the full sync
    /// after every update), without walking every rule list of the state, which the
    /// full sync compares one by one.
    pub fn sync_after(&mut self, state: &State, changed: Changed<'_>) {
        self.sync_inner(state, Some(changed));
    }

    /// [`IdTable::sync`] after IP set `id` was added or removed, which changes no
    /// other id (a set is added before and removed after the rules naming it): a
    /// new set is numbered as the full sync numbers it, a removed one forgotten.
    pub fn sync_ipset(&mut self, state: &State, id: &IpSetId) {
        if !state.ipsets().contains_key(id) {
            self.ipsets.remove(id);
        } else if !self.ipsets.contains_key(id) {
            self.ipsets.insert(id.clone(), self.next_ipset);
            self.next_ipset += 1;
        }
    }

    fn sync_inner(&mut self, state: &State, only: Option<Changed<'_>>) {
        if only.is_none() {
            // IP sets.
            let ipsets = &mut self.ipsets;
            ipsets.retain(|id| state.ipsets().contains_key(id));
            for id in state.ipsets().keys() {
                if !ipsets.contains_key(id) {
                    ipsets.insert(id.clone(), self.next_ipset);
                    self.next_ipset += 1;
                }
            }
        }
        // Profiles, then policies (each preceded by its tier's end-of-tier rule the
        // first time the tier is seen), with their rules: all of them, or the one
        // that changed.
        let mut live: Vec<LiveList<'_>> = Vec::new();
        match only {
            None => {
                for (name, p) in state.profiles() {
                    live.push((
                        PolicyRef::Profile(name.clone()),
                        None,
                        [&p.inbound, &p.outbound],
                    ));
                }
                for (key, p) in state.policies() {
                    let tier = Some(p.tier.as_str()).filter(|t| !t.is_empty());
                    live.push((
                        PolicyRef::Policy(key.clone()),
                        tier,
                        [&p.inbound, &p.outbound],
                    ));
                }
                // Hash sets keep a sync linear in the number of objects.
                let live_refs: HashSet<&PolicyRef> = live.iter().map(|(l, _, _)| l).collect();
                self.policies
                    .retain(|r| matches!(r, PolicyRef::Internal(_)) || live_refs.contains(r));
                self.rules.retain(|k| live_refs.contains(k.pref.as_ref()));
            }
            Some(Changed::Policy(key)) => {
                let r = PolicyRef::Policy(key.clone());
                match state.policies().get(key) {
                    Some(p) => live.push((
                        r,
                        Some(p.tier.as_str()).filter(|t| !t.is_empty()),
                        [&p.inbound, &p.outbound],
                    )),
                    None => self.forget(&r),
                }
            }
            Some(Changed::Profile(name)) => {
                let r = PolicyRef::Profile(name.to_string());
                match state.profiles().get(name) {
                    Some(p) => live.push((r, None, [&p.inbound, &p.outbound])),
                    None => self.forget(&r),
                }
            }
            Some(Changed::Workloads | Changed::Workload(_)) => {}
        }
        // A policy or profile change can add only its own tier (numbered below) and
        // can only drop the last reference to a tier: the other tiers stay as they are.
        let tier_names: Vec<&str> = match only {
            Some(Changed::Policy(_) | Changed::Profile(_)) => {
                self.drop_unreferenced_tiers(state);
                Vec::new()
            }
            Some(Changed::Workloads) => {
                // Every policy's tier is numbered already: only endpoints' tiers can be
                // new, numbered in the order a full sync would meet them.
                self.drop_unreferenced_tiers(state);
                endpoint_tiers(state).collect()
            }
            Some(Changed::Workload(key)) => {
                // Every other endpoint's tiers are numbered already.
                self.drop_unreferenced_tiers(state);
                state
                    .workloads()
                    .get(key)
                    .map(|w| w.tiers.iter().map(|t| t.name.as_str()).collect())
                    .unwrap_or_default()
            }
            None => {
                let names: Vec<&str> = referenced_tiers(state).collect();
                let tier_set: HashSet<&str> = names.iter().copied().collect();
                Arc::make_mut(&mut self.tiers).retain(|t, _| tier_set.contains(t.as_str()));
                names
            }
        };
        for (pref, tier, lists) in &live {
            if let Some(t) = tier {
                self.ensure_tier(t);
            }
            if !self.policies.contains_key(pref) {
                self.policies.insert(pref.clone(), self.next_policy);
                self.next_policy += 1;
            }
            for (dir, rules) in Direction::BOTH.into_iter().zip(lists) {
                self.sync_rule_list(pref.clone(), dir, rules);
            }
        }
        // Endpoints repeat the same few tier names: those met already are skipped
        // without hashing them again (numbering follows first occurrences anyway).
        let mut met: Vec<&str> = Vec::with_capacity(FEW_TIERS);
        for t in tier_names {
            if met.contains(&t) {
                continue;
            }
            if met.len() < FEW_TIERS {
                met.push(t);
            }
            self.ensure_tier(t);
        }
        // Failsafe rules follow the host endpoints and the config, interfaces the
        // endpoints: neither changes with a policy or profile.
        if only.is_none() {
            self.sync_failsafe(state);
        }
        match only {
            None | Some(Changed::Workloads) => self.sync_interfaces(state),
            Some(Changed::Workload(key)) => {
                if let Some(w) = state.workloads().get(key) {
                    self.number_interface(&w.name);
                }
            }
            Some(Changed::Policy(_) | Changed::Profile(_)) => {}
        }
    }

    /// Forgets a policy or profile the state no longer holds.
    fn forget(&mut self, r: &PolicyRef) {
        self.policies.remove(r);
        for dir in Direction::BOTH {
            self.rules.remove(&ListQuery::new(r, dir));
        }
    }

    /// Forgets the tiers nothing references any more, scanning only until every
    /// numbered tier has been seen: the endpoints first (each lists every tier with
    /// policies for it, so the first few usually name them all), then the policies.
    fn drop_unreferenced_tiers(&mut self, state: &State) {
        let mut unseen: HashSet<&str> = self.tiers.keys().map(String::as_str).collect();
        for name in endpoint_tiers(state).chain(policy_tiers(state)) {
            if unseen.is_empty() {
                return;
            }
            unseen.remove(name);
        }
        let gone: Vec<String> = unseen.into_iter().map(str::to_string).collect();
        for name in gone {
            Arc::make_mut(&mut self.tiers).remove(&name);
        }
    }

    fn ensure_tier(&mut self, name: &str) {
        if !self.tiers.contains_key(name) {
            Arc::make_mut(&mut self.tiers).insert(name.to_string(), self.next_rule);
            self.next_rule += 1;
        }
    }

    fn sync_rule_list(&mut self, pref: PolicyRef, dir: Direction, rules: &[Rule]) {
        if let Some(held) = self.rules.get(&ListQuery::new(&pref, dir)) {
            if held.len() == rules.len() && held.iter().zip(rules).all(|((h, _), r)| h == r) {
                return;
            }
        }
        // The old list is read where it is (earlier ids may share it), not copied.
        let old = self.rules.remove(&ListQuery::new(&pref, dir));
        let old: &[(Rule, u32)] = old.as_deref().map_or(&[], Vec::as_slice);
        let mut taken = vec![false; old.len()];
        let mut new = Vec::with_capacity(rules.len());
        for rule in rules {
            // An unchanged rule keeps its id (and its counters downstream).
            let kept = (old.iter().zip(&mut taken))
                .find(|((r, _), taken)| !**taken && r == rule)
                .map(|((_, id), taken)| {
                    *taken = true;
                    *id
                });
            let id = match kept {
                Some(id) => id,
                None => {
                    self.next_rule += 1;
                    self.next_rule - 1
                }
            };
            new.push((rule.clone(), id));
        }
        self.rules.insert(
            ListKey {
                pref: Arc::new(pref),
                dir,
            },
            new,
        );
    }

    fn sync_failsafe(&mut self, state: &State) {
        // Failsafe rules only take effect (and take ids) once a host endpoint exists:
        // without one, traffic to and from the host is not policed at all.
        if state.host_endpoints().is_empty() {
            self.failsafe_rules.clear();
            return;
        }
        let cfg = state.config();
        let wanted: Vec<FailsafeRule> = cfg
            .failsafe_inbound
            .iter()
            .map(|p| FailsafeRule {
                inbound: true,
                port: *p,
            })
            .chain(cfg.failsafe_outbound.iter().map(|p| FailsafeRule {
                inbound: false,
                port: *p,
            }))
            .collect();
        let mut old = std::mem::take(&mut self.failsafe_rules);
        for w in wanted {
            let id = match old.iter().position(|(f, _)| *f == w) {
                Some(i) => old.remove(i).1,
                None => {
                    self.next_rule += 1;
                    self.next_rule - 1
                }
            };
            self.failsafe_rules.push((w, id));
        }
    }

    fn sync_interfaces(&mut self, state: &State) {
        let host = self.host_interface.clone();
        let names = std::iter::once(host.as_str())
            .chain(
                state
                    .host_endpoints()
                    .values()
                    .filter(|h| !h.name.is_empty() && h.name != "*")
                    .map(|h| h.name.as_str()),
            )
            .chain(state.workloads().values().map(|w| w.name.as_str()));
        for name in names {
            self.number_interface(name);
        }
    }

    /// Numbers interface `name` unless it has a number.
    fn number_interface(&mut self, name: &str) {
        if !self.interfaces.by_name.contains_key(name) {
            // The lowest index not fixed by a preset.
            while self
                .interfaces
                .by_name
                .values()
                .any(|i| *i == self.next_interface)
            {
                self.next_interface += 1;
            }
            let next = self.next_interface;
            self.interfaces.set(name, next);
            self.next_interface += 1;
        }
    }

    /// `ipset#` of a Felix set.
    pub fn ipset(&self, id: &IpSetId) -> Option<u32> {
        self.ipsets.get(id).copied()
    }

    /// `policy#` of a policy, profile or internal policy.
    pub fn policy(&self, r: &PolicyRef) -> Option<u32> {
        match r {
            PolicyRef::Internal(i) => Some(i.id()),
            other => self.policies.get(other).copied(),
        }
    }

    /// `rule#` of the `index`-th rule of a list.
    pub fn rule(&self, r: &PolicyRef, dir: Direction, index: usize) -> Option<u32> {
        self.rules
            .get(&ListQuery::new(r, dir))
            .and_then(|l| l.get(index))
            .map(|(_, id)| *id)
    }

    /// `rule#` of each rule of a policy's list, by index (one look-up for the whole
    /// list, cloning no name).
    pub fn policy_rule_ids(
        &self,
        key: &PolicyKey,
        dir: Direction,
    ) -> impl Iterator<Item = u32> + '_ {
        self.ids_of_list(ListQuery {
            pref: RefQuery::Policy(key),
            dir,
        })
    }

    /// `rule#` of each rule of a profile's list, by index.
    pub fn profile_rule_ids(&self, name: &str, dir: Direction) -> impl Iterator<Item = u32> + '_ {
        self.ids_of_list(ListQuery {
            pref: RefQuery::Profile(name),
            dir,
        })
    }

    fn ids_of_list(&self, q: ListQuery<'_>) -> impl Iterator<Item = u32> + '_ {
        self.rules
            .get(&q)
            .into_iter()
            .flat_map(|l| l.iter().map(|(_, id)| *id))
    }

    /// `rule#` counting a tier's end-of-tier drops.
    pub fn tier_rule(&self, tier: &str) -> Option<u32> {
        self.tiers.get(tier).copied()
    }

    /// `rule#` of a failsafe entry: `index` counts inbound entries first, then
    /// outbound ones, as [`Decider::Internal`](crate::eval::Decider::Internal) does for the failsafe policy.
    pub fn failsafe_rule(&self, index: usize) -> Option<u32> {
        self.failsafe_rules.get(index).map(|(_, id)| *id)
    }

    /// Failsafe rules and their ids: (inbound, the port, `rule#`).
    pub(crate) fn failsafe_rule_ids(&self) -> impl Iterator<Item = (bool, &FailsafePort, u32)> {
        self.failsafe_rules
            .iter()
            .map(|(f, id)| (f.inbound, &f.port, *id))
    }

    /// The rules of a policy or profile in one direction, with their ids.
    pub(crate) fn rule_list(&self, pref: &PolicyRef, dir: Direction) -> Option<&[(Rule, u32)]> {
        self.rules
            .get(&ListQuery::new(pref, dir))
            .map(Vec::as_slice)
    }

    /// Every numbered rule list: its owner and its rules with their ids.
    pub(crate) fn rule_lists(&self) -> impl Iterator<Item = (&PolicyRef, &[(Rule, u32)])> {
        self.rules
            .iter()
            .map(|(k, list)| (k.pref.as_ref(), list.as_slice()))
    }

    /// Each tier's end-of-tier rule id.
    pub(crate) fn tier_rules(&self) -> impl Iterator<Item = (&String, u32)> {
        self.tiers.iter().map(|(t, id)| (t, *id))
    }

    /// Every Felix policy and profile with its `policy#`.
    pub(crate) fn policy_ids(&self) -> impl Iterator<Item = (&PolicyRef, u32)> {
        self.policies.iter().map(|(r, id)| (r, *id))
    }

    /// `sw_if_index` of an interface.
    pub fn interface(&self, name: &str) -> Option<u32> {
        self.interfaces.by_name.get(name).copied()
    }

    /// The interface indexes as they stand, as a handle: any index added or changed
    /// since leaves the table with another one, so [`InterfaceIndexes::same_as`]
    /// tells a caller whether to look its indexes up again.
    pub fn interface_indexes(&self) -> InterfaceIndexes {
        InterfaceIndexes(self.interfaces.revision)
    }

    /// The names whose index was set since `seen` was taken (a name may come more
    /// than once), or `None` when the table does not remember that far back (or
    /// `seen` is another table's).
    pub fn interfaces_set_since(
        &self,
        seen: &InterfaceIndexes,
    ) -> Option<impl Iterator<Item = &str>> {
        self.interfaces.set_since(seen.0)
    }
}

/// Interface indexes by name, at a revision: every change takes a revision no
/// table has had before (copies keep theirs until they change), so two tables at one
/// revision hold the same indexes. A handle is a revision, not a reference to the
/// map: holding one does not make the next change copy the map.
#[derive(Debug, Clone)]
struct InterfaceMap {
    by_name: Arc<HashMap<String, u32>>,
    revision: u64,
    /// The last changes, oldest first: the revision each started from and the name
    /// it set, so a reader of the indexes at one of those revisions looks up only
    /// what changed since (an endpoint added renumbers one name of hundreds).
    recent: Arc<VecDeque<(u64, Arc<str>)>>,
}

/// How many changes [`InterfaceMap::recent`] remembers.
const RECENT_INTERFACE_CHANGES: usize = 8;

/// The revision the next change of any table's interface indexes takes.
static NEXT_INTERFACE_REVISION: AtomicU64 = AtomicU64::new(1);

impl Default for InterfaceMap {
    fn default() -> Self {
        InterfaceMap {
            by_name: Arc::default(),
            revision: NEXT_INTERFACE_REVISION.fetch_add(1, Ordering::Relaxed),
            recent: Arc::default(),
        }
    }
}

impl InterfaceMap {
    /// Sets `name`'s index, at a new revision.
    fn set(&mut self, name: &str, index: u32) {
        let recent = Arc::make_mut(&mut self.recent);
        if recent.len() == RECENT_INTERFACE_CHANGES {
            recent.pop_front();
        }
        recent.push_back((self.revision, Arc::from(name)));
        self.revision = NEXT_INTERFACE_REVISION.fetch_add(1, Ordering::Relaxed);
        Arc::make_mut(&mut self.by_name).insert(name.to_string(), index);
    }

    /// The names set since revision `seen`, if the recent changes reach back to it.
    fn set_since(&self, seen: u64) -> Option<impl Iterator<Item = &str>> {
        let from = if seen == self.revision {
            self.recent.len()
        } else {
            self.recent.iter().position(|(r, _)| *r == seen)?
        };
        Some(self.recent.iter().skip(from).map(|(_, n)| &**n))
    }
}

/// The indexes are the map's value; the revision only names a state of it.
impl PartialEq for InterfaceMap {
    fn eq(&self, other: &Self) -> bool {
        self.by_name == other.by_name
    }
}

/// A handle on an [`IdTable`]'s interface indexes at one time (see
/// [`IdTable::interface_indexes`]).
#[derive(Debug, Clone, Copy)]
pub struct InterfaceIndexes(u64);

impl InterfaceIndexes {
    /// Whether both handles were taken with no index added or changed between
    /// them.
    pub fn same_as(&self, other: &InterfaceIndexes) -> bool {
        self.0 == other.0
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;
    use crate::model::Action;
    use crate::model::{Policy, PolicyKey};
    use crate::net::PortRange;
    use crate::state::Update;

    fn key(n: &str) -> PolicyKey {
        PolicyKey {
            kind: "NetworkPolicy".into(),
            namespace: "ns".into(),
            name: n.into(),
        }
    }

    fn policy(ports: &[u16]) -> Policy {
        Policy {
            inbound: ports
                .iter()
                .map(|p| {
                    let mut r = Rule::any(Action::Allow);
                    r.dst.ports = vec![PortRange::single(*p)];
                    r
                })
                .collect(),
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        }
    }

    /// Lists are found by their borrowed keys, and a profile and a policy of the same
    /// name, or the two directions of one list, never stand for each other.
    #[test]
    fn rule_lists_are_found_by_borrowed_keys() {
        let mut ids = IdTable::default();
        let refs = [
            PolicyRef::Internal(InternalPolicyId::Failsafe),
            PolicyRef::Profile("p".into()),
            PolicyRef::Policy(PolicyKey {
                kind: Default::default(),
                namespace: Default::default(),
                name: "p".into(),
            }),
        ];
        let len = |i: usize, dir: Direction| 2 * i + usize::from(dir == Direction::Egress) + 1;
        for (i, r) in refs.iter().enumerate() {
            for dir in Direction::BOTH {
                ids.sync_rule_list(r.clone(), dir, &vec![Rule::any(Action::Allow); len(i, dir)]);
            }
        }
        for (i, r) in refs.iter().enumerate() {
            for dir in Direction::BOTH {
                assert_eq!(ids.rule_list(r, dir).map(<[_]>::len), Some(len(i, dir)));
            }
        }
        for dir in Direction::BOTH {
            assert_eq!(ids.profile_rule_ids("p", dir).count(), len(1, dir));
            if let PolicyRef::Policy(k) = &refs[2] {
                assert_eq!(ids.policy_rule_ids(k, dir).count(), len(2, dir));
            }
        }
        assert_eq!(ids.profile_rule_ids("q", Direction::Ingress).count(), 0);
        ids.forget(&refs[1]);
        assert_eq!(ids.profile_rule_ids("p", Direction::Egress).count(), 0);
        assert_eq!(ids.rule_lists().count(), 4);
    }

    /// A handle on the interface indexes stays the same as a later one until an
    /// index is fixed to another value or a new interface is numbered.
    #[test]
    fn interface_index_handles_change_with_the_indexes() {
        let mut ids = IdTable::default();
        let mut s = State::new();
        ids.sync(&s);
        ids.set_interface_index("tun0", 3);
        let seen = ids.interface_indexes();
        ids.set_interface_index("tun0", 3);
        s.apply(Update::PolicyUpdate(key("a"), policy(&[80]).into()))
            .unwrap();
        ids.sync(&s);
        assert!(seen.same_as(&ids.interface_indexes()), "nothing renumbered");
        ids.set_interface_index("tun0", 4);
        let after_fix = ids.interface_indexes();
        assert!(!seen.same_as(&after_fix));
        ids.set_interface_index("tun1", 5);
        assert!(
            !after_fix.same_as(&ids.interface_indexes()),
            "a new interface"
        );
        // A handle holds no reference to the map: a change made while one is held
        // changes the map in place.
        let held = ids.interface_indexes();
        let map = Arc::as_ptr(&ids.interfaces.by_name);
        ids.set_interface_index("tun2", 6);
        assert_eq!(Arc::as_ptr(&ids.interfaces.by_name), map);
        assert!(!held.same_as(&ids.interface_indexes()));
        // A copy and its original changed apart never meet at one revision.
        let mut copy = ids.clone();
        assert!(copy.interface_indexes().same_as(&ids.interface_indexes()));
        copy.set_interface_index("tun3", 7);
        ids.set_interface_index("tun3", 8);
        assert!(!copy.interface_indexes().same_as(&ids.interface_indexes()));
        assert_ne!(copy, ids);
        ids.set_interface_index("tun3", 7);
        assert_eq!(copy, ids, "the revision is no part of the table's value");
    }

    /// The names set since a handle: what changed after it, in order; nothing at the
    /// handle's own revision; `None` past what the table remembers, and for a
    /// handle of a copy that changed apart.
    #[test]
    fn names_set_since_a_handle() {
        let set_since = |ids: &IdTable, seen: &InterfaceIndexes| {
            ids.interfaces_set_since(seen)
                .map(|names| names.map(str::to_string).collect::<Vec<_>>())
        };
        let mut ids = IdTable::default();
        let start = ids.interface_indexes();
        assert_eq!(set_since(&ids, &start), Some(vec![]));
        ids.set_interface_index("tun0", 3);
        ids.set_interface_index("tun0", 3);
        let one = ids.interface_indexes();
        ids.set_interface_index("tun1", 4);
        ids.set_interface_index("tun0", 5);
        assert_eq!(
            set_since(&ids, &start),
            Some(vec!["tun0".into(), "tun1".into(), "tun0".into()])
        );
        assert_eq!(
            set_since(&ids, &one),
            Some(vec!["tun1".into(), "tun0".into()])
        );
        // A copy changed apart: the common past is known to both, the other's
        // later revisions to neither.
        let mut copy = ids.clone();
        let common = ids.interface_indexes();
        copy.set_interface_index("tun2", 6);
        ids.set_interface_index("tun3", 7);
        assert_eq!(set_since(&copy, &common), Some(vec!["tun2".into()]));
        assert_eq!(set_since(&ids, &common), Some(vec!["tun3".into()]));
        assert_eq!(set_since(&ids, &copy.interface_indexes()), None);
        // Beyond the remembered changes.
        for k in 0..RECENT_INTERFACE_CHANGES as u32 {
            ids.set_interface_index(&format!("x{k}"), 100 + k);
        }
        assert_eq!(set_since(&ids, &start), None);
        assert_eq!(set_since(&ids, &common), None);
    }

    /// A copy shares every map with the original; a policy update then copies the
    /// rule lists' map alone, an interface fixed to the index it has copies nothing.
    #[test]
    fn copies_share_maps_until_one_changes() {
        let mut s = State::new();
        s.apply(Update::PolicyUpdate(key("a"), policy(&[80]).into()))
            .unwrap();
        let mut ids = IdTable::default();
        ids.sync(&s);
        ids.set_interface_index("tun1", 5);
        let copy = ids.clone();
        ids.set_interface_index("tun1", 5);
        ids.set_interface_shown_name("tun1", "tun1");
        s.apply(Update::PolicyUpdate(key("a"), policy(&[81]).into()))
            .unwrap();
        ids.sync_after(&s, Changed::Policy(&key("a")));
        // One shard of rule lists copied, the others shared.
        let copied = ids
            .rules
            .shards
            .iter()
            .zip(copy.rules.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert_eq!(copied, 1);
        assert_eq!(ids.policies.shards_apart_from(&copy.policies), 0);
        assert!(Arc::ptr_eq(&ids.tiers, &copy.tiers));
        assert_eq!(ids.ipsets.shards_apart_from(&copy.ipsets), 0);
        assert!(Arc::ptr_eq(
            &ids.interfaces.by_name,
            &copy.interfaces.by_name
        ));
        assert!(Arc::ptr_eq(&ids.shown_names, &copy.shown_names));
        // The copy still has the old rule's id; the original a new one.
        let pa = PolicyRef::Policy(key("a"));
        assert_ne!(
            ids.rule(&pa, Direction::Ingress, 0),
            copy.rule(&pa, Direction::Ingress, 0)
        );
    }

    /// A policy added to or removed from a copy copies one shard of the policies' ids
    /// (the copy keeps its own view), and one added IP set one shard of the sets'.
    #[test]
    fn a_policy_added_or_removed_copies_one_shard() {
        let mut s = State::new();
        for n in 0..200 {
            s.apply(Update::PolicyUpdate(
                key(&format!("p{n}")),
                policy(&[80]).into(),
            ))
            .unwrap();
        }
        let mut ids = IdTable::default();
        ids.sync(&s);
        let copy = ids.clone();
        s.apply(Update::PolicyUpdate(key("new"), policy(&[81]).into()))
            .unwrap();
        ids.sync_after(&s, Changed::Policy(&key("new")));
        assert_eq!(ids.policies.shards_apart_from(&copy.policies), 1);
        let added = PolicyRef::Policy(key("new"));
        assert!(ids.policy(&added).is_some());
        assert_eq!(copy.policy(&added), None);

        let copy = ids.clone();
        s.apply(Update::PolicyRemove(key("p7"))).unwrap();
        ids.sync_after(&s, Changed::Policy(&key("p7")));
        assert_eq!(ids.policies.shards_apart_from(&copy.policies), 1);
        let removed = PolicyRef::Policy(key("p7"));
        assert_eq!(ids.policy(&removed), None);
        assert!(copy.policy(&removed).is_some());
        // The sharded table equals one synced from scratch.
        let mut fresh = IdTable::default();
        fresh.sync(&s);
        let numbered = |t: &IdTable| {
            let mut v: Vec<(PolicyRef, u32)> =
                t.policy_ids().map(|(r, id)| (r.clone(), id)).collect();
            v.sort();
            v
        };
        assert_eq!(numbered(&ids).len(), 200);
        assert_eq!(
            numbered(&ids).iter().map(|(r, _)| r).collect::<Vec<_>>(),
            numbered(&fresh).iter().map(|(r, _)| r).collect::<Vec<_>>()
        );
    }

    #[test]
    fn unchanged_rules_keep_their_ids_and_removed_objects_free_theirs() {
        let mut s = State::new();
        s.apply(Update::PolicyUpdate(key("a"), policy(&[80, 443]).into()))
            .unwrap();
        let mut ids = IdTable::default();
        ids.sync(&s);
        let pa = PolicyRef::Policy(key("a"));
        let (r80, r443) = (
            ids.rule(&pa, Direction::Ingress, 0).unwrap(),
            ids.rule(&pa, Direction::Ingress, 1).unwrap(),
        );
        // Syncing again changes nothing.
        ids.sync(&s);
        assert_eq!(ids.rule(&pa, Direction::Ingress, 0), Some(r80));
        // A new rule in front: the old ones keep their ids at their new positions.
        s.apply(Update::PolicyUpdate(
            key("a"),
            policy(&[22, 80, 443]).into(),
        ))
        .unwrap();
        ids.sync(&s);
        assert_eq!(ids.rule(&pa, Direction::Ingress, 1), Some(r80));
        assert_eq!(ids.rule(&pa, Direction::Ingress, 2), Some(r443));
        let r22 = ids.rule(&pa, Direction::Ingress, 0).unwrap();
        assert!(r22 > r443, "new ids are fresh, never reused");
        // Two equal rules are two rules: each keeps an id of its own, and an equal
        // third one is new.
        s.apply(Update::PolicyUpdate(
            key("a"),
            policy(&[22, 80, 443, 80]).into(),
        ))
        .unwrap();
        ids.sync(&s);
        let r80b = ids.rule(&pa, Direction::Ingress, 3).unwrap();
        assert!(r80b > r22, "a second equal rule is a new one");
        s.apply(Update::PolicyUpdate(
            key("a"),
            policy(&[80, 80, 80, 443]).into(),
        ))
        .unwrap();
        ids.sync(&s);
        let now: Vec<u32> = (0..4)
            .filter_map(|i| ids.rule(&pa, Direction::Ingress, i))
            .collect();
        assert_eq!(now.get(..2), Some(&[r80, r80b][..]));
        assert!(now.get(2).is_some_and(|r| *r > r80b), "{now:?}");
        assert_eq!(now.get(3), Some(&r443));
        let policy_id = ids.policy(&pa).unwrap();
        s.apply(Update::PolicyRemove(key("a"))).unwrap();
        ids.sync(&s);
        assert_eq!(ids.policy(&pa), None);
        assert_eq!(ids.rule(&pa, Direction::Ingress, 0), None);
        // The same policy back is a new object with new ids.
        s.apply(Update::PolicyUpdate(key("a"), policy(&[80]).into()))
            .unwrap();
        ids.sync(&s);
        assert!(ids.policy(&pa).unwrap() > policy_id);
    }

    fn endpoint(
        n: usize,
        tiers: &[&str],
    ) -> (crate::model::WorkloadKey, crate::model::WorkloadEndpoint) {
        (
            crate::model::WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/pod{n}"),
                endpoint: "eth0".into(),
            },
            crate::model::WorkloadEndpoint {
                name: format!("tun{n}"),
                profile_ids: vec![],
                ipv4_nets: vec![],
                ipv6_nets: vec![],
                tiers: tiers
                    .iter()
                    .map(|t| crate::model::TierInfo {
                        name: (*t).into(),
                        ingress: vec![key("a")],
                        egress: vec![],
                        default_action: crate::model::TierDefault::Deny,
                    })
                    .collect(),
            },
        )
    }

    /// An endpoint sync numbers the endpoints' new tiers and forgets the ones no longer
    /// referenced exactly as a full sync does, whichever objects reference them.
    #[test]
    fn endpoint_syncs_number_and_forget_tiers_as_a_full_sync() {
        let mut s = State::new();
        // Many policies in one tier ahead of the one that names the other: the scan for
        // unreferenced tiers must not stop before it has seen every numbered tier.
        for n in 0..40 {
            s.apply(Update::PolicyUpdate(
                key(&format!("p{n:02}")),
                policy(&[80]).into(),
            ))
            .unwrap();
        }
        let mut late = policy(&[81]);
        late.tier = "late".into();
        s.apply(Update::PolicyUpdate(key("zz"), late.into()))
            .unwrap();
        s.apply(Update::PolicyUpdate(key("a"), policy(&[22]).into()))
            .unwrap();
        let (k0, e0) = endpoint(0, &["default"]);
        s.apply(Update::WorkloadUpdate(k0, e0.into())).unwrap();
        let mut ids = IdTable::default();
        ids.sync(&s);
        let check = |s: &State, ids: &IdTable| {
            let mut full = ids.clone();
            full.sync(s);
            assert_eq!(&full, ids);
        };
        // Several new tiers at once, repeated across endpoints, numbered in order.
        let (k1, e1) = endpoint(1, &["t1", "t2", "default", "t3"]);
        let (k2, e2) = endpoint(2, &["t2", "t1", "t4"]);
        s.apply(Update::WorkloadUpdate(k1.clone(), e1.into()))
            .unwrap();
        s.apply(Update::WorkloadUpdate(k2.clone(), e2.into()))
            .unwrap();
        ids.sync_after(&s, Changed::Workloads);
        check(&s, &ids);
        let t = |ids: &IdTable, name: &str| ids.tier_rule(name);
        assert!(t(&ids, "t1") < t(&ids, "t2") && t(&ids, "t2") < t(&ids, "t3"));
        assert!(t(&ids, "t3") < t(&ids, "t4"));
        // One endpoint at a time: its new tier and its interface are numbered as the
        // full sync numbers them.
        let (k3, e3) = endpoint(3, &["t5", "t1"]);
        s.apply(Update::WorkloadUpdate(k3.clone(), e3.into()))
            .unwrap();
        ids.sync_after(&s, Changed::Workload(&k3));
        check(&s, &ids);
        assert!(t(&ids, "t4") < t(&ids, "t5"));
        s.apply(Update::WorkloadRemove(k3.clone())).unwrap();
        ids.sync_after(&s, Changed::Workload(&k3));
        check(&s, &ids);
        assert_eq!(t(&ids, "t5"), None);
        // t3 loses its only reference; t1 and t2 keep one; "late" (a policy's) stays.
        s.apply(Update::WorkloadRemove(k1.clone())).unwrap();
        ids.sync_after(&s, Changed::Workload(&k1));
        check(&s, &ids);
        assert_eq!(t(&ids, "t3"), None);
        assert!(t(&ids, "t1").is_some() && t(&ids, "late").is_some());
        s.apply(Update::WorkloadRemove(k2)).unwrap();
        ids.sync_after(&s, Changed::Workloads);
        check(&s, &ids);
        assert_eq!((t(&ids, "t1"), t(&ids, "t4")), (None, None));
    }
}
