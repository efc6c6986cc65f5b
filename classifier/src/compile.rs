//! Compilation: from the policy core's [`State`] (and its [`IdTable`]) to
//! [`Generation`]s, fully or incrementally.
//!
//! The [`Builder`] keeps what it needs between generations: the atom registry, the
//! address indexes and each interface's programs with the policies and profiles
//! they were built from. [`Builder::apply`] validates and applies one [`Update`] to
//! the state and publishes only what depends on it:
//!
//! - IP-set changes touch the index entries of the changed members and nothing else
//!   (programs refer to sets by atom, never to their members);
//! - a policy or profile change recompiles the interfaces that use it;
//! - an endpoint change recompiles that endpoint's interface (host endpoints and
//!   configuration: the host-facing and host-endpoint interfaces), and updates the
//!   virtual sets of local workload and host addresses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use capo_policy::config::EndpointToHostAction;
use capo_policy::eval::{has_enforced_policies, host_endpoint_for_host_traffic, InternalPolicy};
use capo_policy::ids::PolicyRef;
use capo_policy::{
    Action, Applied, Cidr, Decider, Direction, HostEndpoint, IcmpMatch, IdTable, IpFamily, IpSetId,
    Member, PortRange, Rule, SideMatch, State, StateError, TierInfo, Update, Verdict, WorkloadKey,
};

use crate::bits;
use crate::generation::{Entry, Generation, GenerationId, Iface, IfaceId, IfaceKind, IfaceMaps};
use crate::index::{addr_key, AddrIndex, AtomId, EpKey, Prefix, PrefixIndex, ShardedMap};
use crate::program::{
    atom_table, port_table, Act, CRule, Layout, Program, SegKind, Segment, Verify, F_DST_NP,
    F_ICMP, F_SRC_NP, F_SVC, KINDS, K_DST_NEG, K_DST_NNP, K_DST_NP, K_DST_POS, K_SRC_NEG,
    K_SRC_NNP, K_SRC_NP, K_SRC_POS, K_SVC, M_PROTO,
};

/// Atoms of capo's virtual sets, fixed.
const LOCAL_WORKLOADS: AtomId = 0;
const HOST_ADDRS: AtomId = 1;
const FIRST_ATOM: AtomId = 2;

/// Rule ids of internal rules, as the views number them.
const RULE_ALLOW_FROM_HOST_IN: u32 = 0;
const RULE_ALLOW_FROM_HOST_OUT: u32 = 1;
const RULE_WORKLOADS_TO_HOST: u32 = 2;

/// Builds generations from the policy state.
#[derive(Clone)]
pub struct Builder {
    sets: HashMap<IpSetId, AtomId>,
    anon: HashMap<Vec<Cidr>, AtomId>,
    next_atom: AtomId,
    index: AddrIndex,
    virtual_members: [Vec<Cidr>; 2],
    ifaces: BTreeMap<IfaceKind, Arc<Iface>>,
    list: Arc<Vec<Arc<Iface>>>,
    direct: Arc<Vec<[Option<Arc<Program>>; 2]>>,
    maps: Arc<IfaceMaps>,
    next_id: u64,
    members: usize,
    prefixes_dirty: [bool; 2],
    current: Option<Arc<Generation>>,
    /// Tests: pad every program's bitmaps to at least this many words, so the
    /// wider code paths run on small random policies.
    min_words: usize,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("atoms", &self.next_atom)
            .field("interfaces", &self.ifaces.len())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

/// A rule lowered to atoms.
struct LRule {
    act: Act,
    decider: Decider,
    rule_id: Option<u32>,
    family: Option<IpFamily>,
    protocol: Option<u8>,
    not_protocol: Option<u8>,
    icmp: Option<IcmpMatch>,
    not_icmp: Option<IcmpMatch>,
    src: LSide,
    dst: LSide,
    svc: Vec<AtomId>,
}

#[derive(Default)]
struct LSide {
    pos: Vec<AtomId>,
    neg: Vec<AtomId>,
    ports: Vec<PortRange>,
    not_ports: Vec<PortRange>,
    np: Vec<AtomId>,
    nnp: Vec<AtomId>,
    uses_ports: bool,
}

/// A program being assembled: rules in order, segments, fallback.
struct ProgSpec {
    rules: Vec<LRule>,
    segments: Vec<(usize, usize, SegSpec)>,
    fallback: (Verdict, Decider, Option<u32>),
}

enum SegSpec {
    Plain,
    Tier(Option<(Decider, Option<u32>)>),
    Profile,
}

impl ProgSpec {
    fn new() -> Self {
        ProgSpec {
            rules: Vec::new(),
            segments: Vec::new(),
            fallback: (Verdict::Deny, Decider::NoProfileMatched, None),
        }
    }

    fn with_fallback(verdict: Verdict, decider: Decider, rule_id: Option<u32>) -> Self {
        ProgSpec {
            fallback: (verdict, decider, rule_id),
            ..ProgSpec::new()
        }
    }

    fn segment(&mut self, rules: Vec<LRule>, kind: SegSpec) {
        let start = self.rules.len();
        self.rules.extend(rules);
        self.segments.push((start, self.rules.len(), kind));
    }
}

fn act(a: Action) -> Act {
    match a {
        Action::Allow => Act::Allow,
        Action::Deny => Act::Deny,
        Action::Log => Act::Log,
        Action::Pass => Act::Pass,
    }
}

fn prefix_of(c: &Cidr) -> (Prefix, bool, bool) {
    let net = c.net();
    let (start, v6) = addr_key(&net.addr());
    let full = c.prefix_len() == if v6 { 128 } else { 32 };
    (
        Prefix {
            start,
            len: c.prefix_len(),
        },
        v6,
        full,
    )
}

/// Which index entries a member lives in.
enum Key {
    V4(u32),
    V6(u128),
    P4(Prefix),
    P6(Prefix),
    Ep(EpKey),
}

fn member_key(m: &Member) -> Key {
    match m {
        Member::Net(c) => cidr_key(c),
        Member::IpPort {
            addr,
            protocol,
            port,
        } => Key::Ep(EpKey::new(addr, protocol.0, *port)),
    }
}

fn cidr_key(c: &Cidr) -> Key {
    let (p, v6, full) = prefix_of(c);
    match (v6, full) {
        (false, true) => Key::V4(p.start as u32),
        (true, true) => Key::V6(p.start),
        (false, false) => Key::P4(p),
        (true, false) => Key::P6(p),
    }
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Builder {
            sets: HashMap::new(),
            anon: HashMap::new(),
            next_atom: FIRST_ATOM,
            index: AddrIndex::default(),
            virtual_members: [Vec::new(), Vec::new()],
            ifaces: BTreeMap::new(),
            list: Arc::new(Vec::new()),
            direct: Arc::new(Vec::new()),
            maps: Arc::new(IfaceMaps::default()),
            next_id: 1,
            members: 0,
            prefixes_dirty: [false; 2],
            current: None,
            min_words: 1,
        }
    }

    /// Tests only: a builder whose programs use bitmaps of at least `words` 64-bit
    /// words, whatever their rule count (exercises the multi-word and the
    /// scratch-buffer code paths with small policies). Verdicts are unchanged.
    #[doc(hidden)]
    pub fn with_min_words(words: usize) -> Self {
        Builder {
            min_words: words.max(1),
            ..Builder::new()
        }
    }

    /// The last generation built.
    pub fn current(&self) -> Option<&Arc<Generation>> {
        self.current.as_ref()
    }

    /// Compiles the whole state from scratch (the builder's previous contents are
    /// dropped, generation ids keep increasing).
    pub fn build(&mut self, state: &State, ids: &IdTable) -> Arc<Generation> {
        let (next_id, min_words) = (self.next_id, self.min_words);
        *self = Builder::new();
        self.next_id = next_id;
        self.min_words = min_words;
        // Bulk-load every set's members.
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut ep = Vec::new();
        let mut ep_marks = Vec::new();
        let mut p4 = PrefixIndex::new(32);
        let mut p6 = PrefixIndex::new(128);
        for (id, set) in state.ipsets() {
            let atom = self.set_atom(id);
            for m in set.members() {
                self.members += 1;
                match member_key(m) {
                    Key::V4(k) => v4.push((k, atom)),
                    Key::V6(k) => v6.push((k, atom)),
                    Key::P4(p) => {
                        p4.add(p, atom);
                    }
                    Key::P6(p) => {
                        p6.add(p, atom);
                    }
                    Key::Ep(k) => {
                        ep.push((k, atom));
                        if let Member::IpPort {
                            addr,
                            protocol,
                            port,
                        } = m
                        {
                            ep_marks.push((*addr, protocol.0, *port));
                        }
                    }
                }
            }
        }
        p4.rebuild();
        p6.rebuild();
        self.index = AddrIndex {
            v4: ShardedMap::from_pairs(v4),
            v6: ShardedMap::from_pairs(v6),
            p4: Arc::new(p4),
            p6: Arc::new(p6),
            ep: ShardedMap::from_pairs(ep),
            ep_filter: AddrIndex::default().ep_filter,
        };
        for (addr, proto, port) in ep_marks {
            self.index.ep_mark(&addr, proto, port);
        }
        self.sync_virtual(state);
        let kinds = IfaceKind::all(state);
        for kind in kinds {
            self.compile_iface(state, ids, kind);
        }
        self.relist(ids);
        self.publish()
    }

    /// Validates and applies `update` to `state` (re-syncing `ids` when rules or
    /// endpoints change), then builds the next generation from what changed. On a
    /// rejected update nothing changes and the error is returned; an update that
    /// changes nothing returns the current generation.
    pub fn apply(
        &mut self,
        state: &mut State,
        ids: &mut IdTable,
        update: Update,
    ) -> Result<Arc<Generation>, StateError> {
        if self.current.is_none() {
            state.apply(update)?;
            ids.sync(state);
            return Ok(self.build(state, ids));
        }
        match &update {
            Update::IpSetDelta { id, added, removed } => {
                let (id, added, removed) = (id.clone(), added.clone(), removed.clone());
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                let atom = self.set_atom(&id);
                let added_set: HashSet<&Member> = added.iter().collect();
                for m in removed.iter().filter(|m| !added_set.contains(m)) {
                    self.index_member(m, atom, false);
                }
                for m in &added {
                    self.index_member(m, atom, true);
                }
            }
            Update::IpSetReplace { id, .. } | Update::IpSetRemove(id) => {
                let id = id.clone();
                let old: Vec<Member> = state
                    .ipsets()
                    .get(&id)
                    .map(|s| s.members().copied().collect())
                    .unwrap_or_default();
                let is_new = old.is_empty() && !state.ipsets().contains_key(&id);
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                let new: Vec<Member> = state
                    .ipsets()
                    .get(&id)
                    .map(|s| s.members().copied().collect())
                    .unwrap_or_default();
                let atom = self.set_atom(&id);
                let new_set: HashSet<&Member> = new.iter().collect();
                let old_set: HashSet<&Member> = old.iter().collect();
                for m in old.iter().filter(|m| !new_set.contains(m)) {
                    self.index_member(m, atom, false);
                }
                for m in new.iter().filter(|m| !old_set.contains(m)) {
                    self.index_member(m, atom, true);
                }
                if is_new || !state.ipsets().contains_key(&id) {
                    ids.sync(state);
                }
            }
            Update::PolicyUpdate(key, _) | Update::PolicyRemove(key) => {
                let key = key.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync(state);
                let affected: Vec<IfaceKind> = self
                    .ifaces
                    .iter()
                    .filter(|(_, i)| i.policies.contains(&key))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in affected {
                    self.compile_iface(state, ids, k);
                }
            }
            Update::ProfileUpdate(name, _) | Update::ProfileRemove(name) => {
                let name = name.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync(state);
                let affected: Vec<IfaceKind> = self
                    .ifaces
                    .iter()
                    .filter(|(_, i)| i.profiles.contains(&name))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in affected {
                    self.compile_iface(state, ids, k);
                }
            }
            Update::WorkloadUpdate(key, _) | Update::WorkloadRemove(key) => {
                let kind = IfaceKind::Workload(key.clone());
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync(state);
                self.ifaces.remove(&kind);
                self.compile_iface(state, ids, kind);
                self.sync_virtual(state);
                // Host programs choose between "from a workload" and not by atom, so
                // they need no recompile; the views' interface numbering may change.
            }
            Update::HostEndpointUpdate(..)
            | Update::HostEndpointRemove(_)
            | Update::Config(_)
            | Update::HostMetadataUpdate(..)
            | Update::HostMetadataRemove(_) => {
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync(state);
                self.ifaces
                    .retain(|k, _| !matches!(k, IfaceKind::Forward(_)));
                for kind in IfaceKind::all(state) {
                    if matches!(kind, IfaceKind::Host | IfaceKind::Forward(_)) {
                        self.compile_iface(state, ids, kind);
                    }
                }
                self.sync_virtual(state);
            }
        }
        if self.ifaces.len() != self.list.len()
            || self
                .list
                .iter()
                .zip(self.ifaces.values())
                .any(|(a, b)| !Arc::ptr_eq(a, b))
        {
            self.relist(ids);
        }
        Ok(self.publish())
    }

    fn current_or_publish(&mut self) -> Arc<Generation> {
        match &self.current {
            Some(g) => g.clone(),
            None => self.publish(),
        }
    }

    fn publish(&mut self) -> Arc<Generation> {
        self.rebuild_prefixes();
        let g = Arc::new(Generation {
            id: GenerationId(self.next_id),
            index: self.index.clone(),
            ifaces: self.list.clone(),
            direct: self.direct.clone(),
            maps: self.maps.clone(),
            members: self.members,
        });
        self.next_id += 1;
        self.current = Some(g.clone());
        g
    }

    fn relist(&mut self, ids: &IdTable) {
        let list: Vec<Arc<Iface>> = self.ifaces.values().cloned().collect();
        let mut maps = IfaceMaps::default();
        for (i, iface) in list.iter().enumerate() {
            let id = IfaceId(i as u32);
            if !iface.name.is_empty() && iface.name != "*" {
                maps.by_name.insert(iface.name.clone(), id);
            }
            maps.by_kind.insert(iface.kind.clone(), id);
            if let Some(sw) = ids.interface(&iface.name) {
                maps.by_sw_if_index.insert(sw, id);
            }
        }
        let single = |e: &Entry| match e {
            Entry::Single(p) => Some(p.clone()),
            Entry::BySrcAtom { .. } => None,
        };
        self.direct = Arc::new(
            list.iter()
                .map(|i| [single(&i.entries[0]), single(&i.entries[1])])
                .collect(),
        );
        self.list = Arc::new(list);
        self.maps = Arc::new(maps);
    }

    fn set_atom(&mut self, id: &IpSetId) -> AtomId {
        if let Some(a) = self.sets.get(id) {
            return *a;
        }
        let a = self.next_atom;
        self.next_atom += 1;
        self.sets.insert(id.clone(), a);
        a
    }

    /// The atom of an anonymous set of prefixes (a rule's `nets` or `not_nets`).
    fn anon_atom(&mut self, nets: &[Cidr]) -> AtomId {
        let mut key = nets.to_vec();
        key.sort_unstable();
        key.dedup();
        if let Some(a) = self.anon.get(&key) {
            return *a;
        }
        let a = self.next_atom;
        self.next_atom += 1;
        for c in &key {
            if self.index_cidr(c, a, true) {
                self.members += 1;
            }
        }
        self.anon.insert(key, a);
        a
    }

    fn index_member(&mut self, m: &Member, atom: AtomId, add: bool) {
        let changed = match m {
            Member::Net(c) => self.index_cidr(c, atom, add),
            Member::IpPort {
                addr,
                protocol,
                port,
            } => {
                let k = EpKey::new(addr, protocol.0, *port);
                if add {
                    self.index.ep_mark(addr, protocol.0, *port);
                    self.index.ep.add(k, atom)
                } else {
                    self.index.ep.remove(k, atom)
                }
            }
        };
        match (changed, add) {
            (true, true) => self.members += 1,
            (true, false) => self.members = self.members.saturating_sub(1),
            (false, _) => {}
        }
    }

    /// Adds or removes one prefix of an atom; true when the index changed.
    fn index_cidr(&mut self, c: &Cidr, atom: AtomId, add: bool) -> bool {
        match (cidr_key(c), add) {
            (Key::V4(k), true) => self.index.v4.add(k, atom),
            (Key::V4(k), false) => self.index.v4.remove(k, atom),
            (Key::V6(k), true) => self.index.v6.add(k, atom),
            (Key::V6(k), false) => self.index.v6.remove(k, atom),
            (Key::P4(p), add) => {
                self.prefixes_dirty[0] = true;
                let p4 = Arc::make_mut(&mut self.index.p4);
                if add {
                    p4.add(p, atom)
                } else {
                    p4.remove(p, atom)
                }
            }
            (Key::P6(p), add) => {
                self.prefixes_dirty[1] = true;
                let p6 = Arc::make_mut(&mut self.index.p6);
                if add {
                    p6.add(p, atom)
                } else {
                    p6.remove(p, atom)
                }
            }
            (Key::Ep(_), _) => false,
        }
    }

    /// Rebuilds the interval tables of the prefix indexes that changed.
    fn rebuild_prefixes(&mut self) {
        if std::mem::take(&mut self.prefixes_dirty[0]) {
            Arc::make_mut(&mut self.index.p4).rebuild();
        }
        if std::mem::take(&mut self.prefixes_dirty[1]) {
            Arc::make_mut(&mut self.index.p6).rebuild();
        }
    }

    fn sync_virtual(&mut self, state: &State) {
        let workloads: Vec<Cidr> = state
            .workloads()
            .values()
            .flat_map(|w| w.nets().copied())
            .collect();
        let host: Vec<Cidr> = state
            .local_host_addrs()
            .into_iter()
            .map(Cidr::host)
            .collect();
        for (slot, atom, wanted) in [(0usize, LOCAL_WORKLOADS, workloads), (1, HOST_ADDRS, host)] {
            let mut wanted = wanted;
            wanted.sort_unstable();
            wanted.dedup();
            let old = self.virtual_members.get(slot).cloned().unwrap_or_default();
            if old == wanted {
                continue;
            }
            for c in old.iter().filter(|c| wanted.binary_search(c).is_err()) {
                if self.index_cidr(c, atom, false) {
                    self.members = self.members.saturating_sub(1);
                }
            }
            for c in wanted.iter().filter(|c| old.binary_search(c).is_err()) {
                if self.index_cidr(c, atom, true) {
                    self.members += 1;
                }
            }
            if let Some(v) = self.virtual_members.get_mut(slot) {
                *v = wanted;
            }
        }
    }

    // ------------------------------------------------------------------------
    // Interfaces

    fn compile_iface(&mut self, state: &State, ids: &IdTable, kind: IfaceKind) {
        let built = match &kind {
            IfaceKind::Workload(key) => self.workload_iface(state, ids, key),
            IfaceKind::Host => Some(self.host_iface(state, ids)),
            IfaceKind::Forward(key) => state
                .host_endpoints()
                .get(key)
                .map(|hep| self.forward_iface(state, ids, key.clone(), hep)),
        };
        match built {
            Some(i) => {
                self.ifaces.insert(kind, Arc::new(i));
            }
            None => {
                self.ifaces.remove(&kind);
            }
        }
    }

    fn workload_iface(&mut self, state: &State, ids: &IdTable, key: &WorkloadKey) -> Option<Iface> {
        let wep = state.workloads().get(key)?;
        let mut deps = Deps::default();
        let mut entries = Vec::new();
        for dir in Direction::BOTH {
            let mut spec = ProgSpec::new();
            // Neighbour discovery on the workload's link never meets policy.
            let nd = capo_policy::eval::NEIGHBOUR_DISCOVERY_ICMPV6_TYPES
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut r =
                        self.internal_rule(Act::Allow, InternalPolicy::NeighbourDiscovery, i, None);
                    r.family = Some(IpFamily::V6);
                    r.protocol = Some(capo_policy::Protocol::ICMPV6.0);
                    r.icmp = Some(IcmpMatch {
                        icmp_type: *t,
                        code: None,
                    });
                    r
                })
                .collect();
            spec.segment(nd, SegSpec::Plain);
            if dir == Direction::Ingress {
                let mut r = self.internal_rule(
                    Act::Allow,
                    InternalPolicy::AllowFromHost,
                    0,
                    Some(RULE_ALLOW_FROM_HOST_IN),
                );
                r.src.pos.push(HOST_ADDRS);
                spec.segment(vec![r], SegSpec::Plain);
            }
            self.tiers_into(&mut spec, state, ids, &wep.tiers, dir, true, &mut deps);
            self.profiles_into(&mut spec, state, ids, &wep.profile_ids, dir, &mut deps);
            entries.push(Entry::Single(Arc::new(finish(spec, self.min_words))));
        }
        Some(Iface {
            name: wep.name.clone(),
            kind: IfaceKind::Workload(key.clone()),
            sw_if_index: ids.interface(&wep.name),
            entries: two(entries)?,
            policies: deps.policies.into_iter().collect(),
            profiles: deps.profiles.into_iter().collect(),
        })
    }

    fn host_iface(&mut self, state: &State, ids: &IdTable) -> Iface {
        let mut deps = Deps::default();
        let cfg = state.config().clone();
        // Ingress: packets from local workloads first meet DefaultEndpointToHostAction.
        let from_wl = match cfg.endpoint_to_host {
            EndpointToHostAction::Accept | EndpointToHostAction::Drop => {
                let verdict = if cfg.endpoint_to_host == EndpointToHostAction::Accept {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                finish(
                    ProgSpec::with_fallback(
                        verdict,
                        Decider::Internal {
                            policy: InternalPolicy::WorkloadsToHost,
                            index: 0,
                        },
                        Some(RULE_WORKLOADS_TO_HOST),
                    ),
                    self.min_words,
                )
            }
            EndpointToHostAction::Return => {
                let hep = host_endpoint_for_host_traffic(state, true).map(|(_, h)| h.clone());
                self.host_program(state, ids, hep.as_ref(), Direction::Ingress, &mut deps)
            }
        };
        let hep = host_endpoint_for_host_traffic(state, false).map(|(_, h)| h.clone());
        let other = self.host_program(state, ids, hep.as_ref(), Direction::Ingress, &mut deps);
        let egress = self.host_program(state, ids, hep.as_ref(), Direction::Egress, &mut deps);
        let name = ids.host_interface().to_string();
        Iface {
            sw_if_index: ids.interface(&name),
            name,
            kind: IfaceKind::Host,
            entries: [
                Entry::BySrcAtom {
                    atom: LOCAL_WORKLOADS,
                    member: Arc::new(from_wl),
                    other: Arc::new(other),
                },
                Entry::Single(Arc::new(egress)),
            ],
            policies: deps.policies.into_iter().collect(),
            profiles: deps.profiles.into_iter().collect(),
        }
    }

    fn host_program(
        &mut self,
        state: &State,
        ids: &IdTable,
        hep: Option<&HostEndpoint>,
        dir: Direction,
        deps: &mut Deps,
    ) -> Program {
        let Some(hep) = hep else {
            return finish(
                ProgSpec::with_fallback(Verdict::Allow, Decider::NoHostEndpoint, None),
                self.min_words,
            );
        };
        let cfg = state.config();
        let mut spec = ProgSpec::new();
        let mut internal = Vec::new();
        let n_in = cfg.failsafe_inbound.len();
        let (list, base) = match dir {
            Direction::Ingress => (&cfg.failsafe_inbound, 0),
            Direction::Egress => {
                let mut r = self.internal_rule(
                    Act::Allow,
                    InternalPolicy::AllowFromHost,
                    1,
                    Some(RULE_ALLOW_FROM_HOST_OUT),
                );
                r.dst.pos.push(LOCAL_WORKLOADS);
                internal.push(r);
                (&cfg.failsafe_outbound, n_in)
            }
        };
        for (i, f) in list.iter().enumerate() {
            let mut r = self.internal_rule(
                Act::Allow,
                InternalPolicy::Failsafe,
                base + i,
                ids.failsafe_rule(base + i),
            );
            r.protocol = Some(f.protocol.0);
            r.dst.ports.push(PortRange::single(f.port));
            r.dst.uses_ports = true;
            if let Some(net) = f.net {
                let atom = self.anon_atom(&[net]);
                match dir {
                    Direction::Ingress => r.src.pos.push(atom),
                    Direction::Egress => r.dst.pos.push(atom),
                }
            }
            internal.push(r);
        }
        spec.segment(internal, SegSpec::Plain);
        self.tiers_into(
            &mut spec,
            state,
            ids,
            &hep.untracked_tiers,
            dir,
            false,
            deps,
        );
        if dir == Direction::Ingress {
            self.tiers_into(&mut spec, state, ids, &hep.pre_dnat_tiers, dir, false, deps);
        }
        self.tiers_into(&mut spec, state, ids, &hep.tiers, dir, true, deps);
        self.profiles_into(&mut spec, state, ids, &hep.profile_ids, dir, deps);
        finish(spec, self.min_words)
    }

    fn forward_iface(
        &mut self,
        state: &State,
        ids: &IdTable,
        key: capo_policy::HostEndpointKey,
        hep: &HostEndpoint,
    ) -> Iface {
        let mut deps = Deps::default();
        let mut entries = Vec::new();
        for dir in Direction::BOTH {
            let mut spec = ProgSpec::with_fallback(Verdict::Allow, Decider::NoForwardPolicy, None);
            if dir == Direction::Ingress {
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.untracked_tiers,
                    dir,
                    false,
                    &mut deps,
                );
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.pre_dnat_tiers,
                    dir,
                    false,
                    &mut deps,
                );
            }
            if has_enforced_policies(&hep.forward_tiers, dir) {
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.forward_tiers,
                    dir,
                    true,
                    &mut deps,
                );
            }
            entries.push(Entry::Single(Arc::new(finish(spec, self.min_words))));
        }
        let [a, b] = match two(entries) {
            Some(e) => e,
            None => unreachable!("two directions were pushed"),
        };
        Iface {
            sw_if_index: ids.interface(&hep.name),
            name: hep.name.clone(),
            kind: IfaceKind::Forward(key),
            entries: [a, b],
            policies: deps.policies.into_iter().collect(),
            profiles: deps.profiles.into_iter().collect(),
        }
    }

    fn internal_rule(
        &self,
        act: Act,
        policy: InternalPolicy,
        index: usize,
        rule_id: Option<u32>,
    ) -> LRule {
        LRule {
            act,
            decider: Decider::Internal { policy, index },
            rule_id,
            family: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: LSide::default(),
            dst: LSide::default(),
            svc: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tiers_into(
        &mut self,
        spec: &mut ProgSpec,
        state: &State,
        ids: &IdTable,
        tiers: &[TierInfo],
        dir: Direction,
        end_of_tier_drop: bool,
        deps: &mut Deps,
    ) {
        for tier in tiers {
            let keys = tier.policies(dir);
            if keys.is_empty() {
                continue;
            }
            let mut rules = Vec::new();
            for key in keys.iter().filter(|k| !k.is_staged()) {
                deps.policies.insert(key.clone());
                let Some(policy) = state.policies().get(key) else {
                    continue;
                };
                let pref = PolicyRef::Policy(key.clone());
                for (index, rule) in policy.rules(dir).iter().enumerate() {
                    let decider = Decider::PolicyRule {
                        tier: tier.name.clone(),
                        policy: key.clone(),
                        direction: dir,
                        index,
                    };
                    rules.push(self.lower(rule, decider, ids.rule(&pref, dir, index)));
                }
            }
            let end_drop = (end_of_tier_drop && tier.drops_at_end(dir)).then(|| {
                (
                    Decider::EndOfTier {
                        tier: tier.name.clone(),
                    },
                    ids.tier_rule(&tier.name),
                )
            });
            spec.segment(rules, SegSpec::Tier(end_drop));
        }
    }

    fn profiles_into(
        &mut self,
        spec: &mut ProgSpec,
        state: &State,
        ids: &IdTable,
        profile_ids: &[String],
        dir: Direction,
        deps: &mut Deps,
    ) {
        for name in profile_ids {
            deps.profiles.insert(name.clone());
            let Some(profile) = state.profiles().get(name) else {
                continue;
            };
            let pref = PolicyRef::Profile(name.clone());
            let rules = profile
                .rules(dir)
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    let decider = Decider::ProfileRule {
                        profile: name.clone(),
                        direction: dir,
                        index,
                    };
                    self.lower(rule, decider, ids.rule(&pref, dir, index))
                })
                .collect();
            spec.segment(rules, SegSpec::Profile);
        }
    }

    fn lower(&mut self, rule: &Rule, decider: Decider, rule_id: Option<u32>) -> LRule {
        let src = self.lower_side(&rule.src);
        let dst = self.lower_side(&rule.dst);
        let svc = rule
            .dst_ip_port_sets
            .iter()
            .map(|s| self.set_atom(s))
            .collect();
        LRule {
            act: act(rule.action),
            decider,
            rule_id,
            family: rule.family(),
            protocol: rule.protocol.map(|p| p.0),
            not_protocol: rule.not_protocol.map(|p| p.0),
            icmp: rule.icmp,
            not_icmp: rule.not_icmp,
            src,
            dst,
            svc,
        }
    }

    fn lower_side(&mut self, side: &SideMatch) -> LSide {
        let mut pos = Vec::new();
        if !side.nets.is_empty() {
            pos.push(self.anon_atom(&side.nets));
        }
        pos.extend(side.ip_sets.iter().map(|s| self.set_atom(s)));
        pos.sort_unstable();
        pos.dedup();
        let mut neg = Vec::new();
        if !side.not_nets.is_empty() {
            neg.push(self.anon_atom(&side.not_nets));
        }
        neg.extend(side.not_ip_sets.iter().map(|s| self.set_atom(s)));
        LSide {
            pos,
            neg,
            ports: side.ports.clone(),
            not_ports: side.not_ports.clone(),
            np: side
                .named_port_sets
                .iter()
                .map(|s| self.set_atom(s))
                .collect(),
            nnp: side
                .not_named_port_sets
                .iter()
                .map(|s| self.set_atom(s))
                .collect(),
            uses_ports: side.uses_ports(),
        }
    }
}

#[derive(Default)]
struct Deps {
    policies: HashSet<capo_policy::PolicyKey>,
    profiles: HashSet<String>,
}

fn two<T>(v: Vec<T>) -> Option<[T; 2]> {
    <[T; 2]>::try_from(v).ok()
}

/// Turns a spec into bitmaps.
fn finish(spec: ProgSpec, min_words: usize) -> Program {
    let n = spec.rules.len();
    let w = bits::words_for(n).max(min_words);
    let zero = || vec![0u64; w];
    let mut deciders = Vec::with_capacity(n + 4);
    let mut rules = Vec::with_capacity(n);
    let mut family = [zero(), zero()];
    let mut need_ports = zero();
    let mut need_icmp = zero();
    let (mut src_req, mut dst_req, mut sport_req, mut dport_req, mut svc_req) =
        (zero(), zero(), zero(), zero(), zero());
    let mut icmp_rules = Vec::new();
    let mut sp_pos = Vec::new();
    let mut sp_neg = Vec::new();
    let mut dp_pos = Vec::new();
    let mut dp_neg = Vec::new();
    let mut atom_slots: HashMap<AtomId, usize> = HashMap::new();
    let mut atom_bits: Vec<u64> = Vec::new();
    let mut uses_src_np = false;
    let mut uses_dst_np = false;
    // Protocol classes: each protocol a rule names, plus one for all others.
    let mut named: Vec<u8> = spec
        .rules
        .iter()
        .flat_map(|r| r.protocol.into_iter().chain(r.not_protocol))
        .collect();
    named.sort_unstable();
    named.dedup();
    let mut proto_class = [0u8; 256];
    let mut reps: Vec<u8> = Vec::new();
    if named.len() >= 255 {
        for p in 0..=255u8 {
            if let Some(c) = proto_class.get_mut(usize::from(p)) {
                *c = p;
            }
            reps.push(p);
        }
    } else {
        let other = (0..=255u8)
            .find(|p| named.binary_search(p).is_err())
            .unwrap_or(0);
        reps.push(other);
        for (i, p) in named.iter().enumerate() {
            if let Some(c) = proto_class.get_mut(usize::from(*p)) {
                *c = (i + 1) as u8;
            }
            reps.push(*p);
        }
    }
    let mut proto_bits = vec![0u64; reps.len() * w];

    let mut slot_of = |atom: AtomId, atom_bits: &mut Vec<u64>| -> usize {
        *atom_slots.entry(atom).or_insert_with(|| {
            let off = atom_bits.len();
            atom_bits.resize(off + KINDS * w, 0);
            off
        })
    };
    let set_kind = |atom_bits: &mut Vec<u64>, off: usize, kind: usize, i: usize| {
        if let Some(b) = atom_bits.get_mut(off + kind * w..off + (kind + 1) * w) {
            bits::set(b, i);
        }
    };

    for (i, r) in spec.rules.into_iter().enumerate() {
        for (f, fam) in [IpFamily::V4, IpFamily::V6].iter().enumerate() {
            if r.family.is_none_or(|x| x == *fam) {
                if let Some(b) = family.get_mut(f) {
                    bits::set(b, i);
                }
            }
        }
        for (c, p) in reps.iter().enumerate() {
            if r.protocol.is_none_or(|x| x == *p) && r.not_protocol.is_none_or(|x| x != *p) {
                if let Some(b) = proto_bits.get_mut(c * w..(c + 1) * w) {
                    bits::set(b, i);
                }
            }
        }
        if r.src.uses_ports || r.dst.uses_ports || !r.svc.is_empty() {
            bits::set(&mut need_ports, i);
        }
        if r.icmp.is_some() || r.not_icmp.is_some() {
            bits::set(&mut need_icmp, i);
            icmp_rules.push((i as u32, r.icmp, r.not_icmp));
        }
        for (side, kpos, kneg, knp, knnp, req, preq, ppos, pneg, np_flag) in [
            (
                &r.src,
                K_SRC_POS,
                K_SRC_NEG,
                K_SRC_NP,
                K_SRC_NNP,
                &mut src_req,
                &mut sport_req,
                &mut sp_pos,
                &mut sp_neg,
                &mut uses_src_np,
            ),
            (
                &r.dst,
                K_DST_POS,
                K_DST_NEG,
                K_DST_NP,
                K_DST_NNP,
                &mut dst_req,
                &mut dport_req,
                &mut dp_pos,
                &mut dp_neg,
                &mut uses_dst_np,
            ),
        ] {
            if !side.pos.is_empty() {
                bits::set(req, i);
            }
            for a in &side.pos {
                let off = slot_of(*a, &mut atom_bits);
                set_kind(&mut atom_bits, off, kpos, i);
            }
            for a in &side.neg {
                let off = slot_of(*a, &mut atom_bits);
                set_kind(&mut atom_bits, off, kneg, i);
            }
            if !side.ports.is_empty() || !side.np.is_empty() {
                bits::set(preq, i);
            }
            ppos.extend(side.ports.iter().map(|p| (i, *p)));
            pneg.extend(side.not_ports.iter().map(|p| (i, *p)));
            for a in &side.np {
                *np_flag = true;
                let off = slot_of(*a, &mut atom_bits);
                set_kind(&mut atom_bits, off, knp, i);
            }
            for a in &side.nnp {
                *np_flag = true;
                let off = slot_of(*a, &mut atom_bits);
                set_kind(&mut atom_bits, off, knnp, i);
            }
        }
        if !r.svc.is_empty() {
            bits::set(&mut svc_req, i);
        }
        for a in &r.svc {
            let off = slot_of(*a, &mut atom_bits);
            set_kind(&mut atom_bits, off, K_SVC, i);
        }
        let verify = (r.src.pos.len() > 1 || r.dst.pos.len() > 1 || r.svc.len() > 1).then(|| {
            Box::new(Verify {
                src_all: r.src.pos.clone(),
                dst_all: r.dst.pos.clone(),
                svc_all: r.svc.clone(),
            })
        });
        deciders.push(r.decider);
        rules.push(CRule {
            act: r.act,
            decider: (deciders.len() - 1) as u32,
            rule_id: r.rule_id,
            verify,
        });
    }
    let mut segments = Vec::with_capacity(spec.segments.len());
    for (start, end, kind) in spec.segments {
        let kind = match kind {
            SegSpec::Plain => SegKind::Plain,
            SegSpec::Profile => SegKind::Profile,
            SegSpec::Tier(None) => SegKind::Tier { end_drop: None },
            SegSpec::Tier(Some((d, rule_id))) => {
                deciders.push(d);
                SegKind::Tier {
                    end_drop: Some(((deciders.len() - 1) as u32, rule_id)),
                }
            }
        };
        segments.push(Segment {
            start: start as u32,
            end: end as u32,
            kind,
        });
    }
    let (fv, fd, fr) = spec.fallback;
    deciders.push(fd);
    let fallback = (fv, (deciders.len() - 1) as u32, fr);
    let slots: Vec<(AtomId, u32)> = atom_slots.iter().map(|(a, o)| (*a, *o as u32)).collect();
    let mut bloom = [0u64; crate::program::BLOOM_WORDS];
    for (a, _) in &slots {
        let (word, bit) = Program::bloom_bit(*a);
        if let Some(b) = bloom.get_mut(word) {
            *b |= bit;
        }
    }
    let has_svc = svc_req.iter().any(|x| *x != 0);
    let [fam4, fam6] = family;
    let (sports, sports_n) = port_table(w, &sp_pos, &sp_neg);
    let (dports, dports_n) = port_table(w, &dp_pos, &dp_neg);
    // Compact the atom slots: a kind mask, then only the kinds in use.
    let mut compact: Vec<u64> = Vec::with_capacity(atom_bits.len() / 2);
    let slots: Vec<(AtomId, u32)> = slots
        .iter()
        .map(|(a, o)| {
            let at = compact.len();
            let full = atom_bits
                .get(*o as usize..*o as usize + KINDS * w)
                .unwrap_or(&[]);
            let mut mask = 0u64;
            for (k, b) in full.chunks(w).enumerate() {
                if b.iter().any(|x| *x != 0) {
                    mask |= 1 << k;
                }
            }
            compact.push(mask);
            for b in full.chunks(w) {
                if b.iter().any(|x| *x != 0) {
                    compact.extend_from_slice(b);
                }
            }
            (*a, at as u32)
        })
        .collect();
    let atom_bits = compact;
    let atab_len = (slots.len() * 2).next_power_of_two().max(2);
    let head = M_PROTO * w + proto_bits.len();
    let atom_base = head + atab_len + sports.len() + dports.len();
    // Atom slots in the arena, in order of first use (rules in evaluation order).
    let slots: Vec<(AtomId, u32)> = slots
        .iter()
        .map(|(a, o)| (*a, (atom_base + *o as usize) as u32))
        .collect();
    let mut arena = Vec::with_capacity(atom_base + atom_bits.len());
    for m in [
        fam4, fam6, need_ports, need_icmp, src_req, dst_req, sport_req, dport_req, svc_req,
    ] {
        arena.extend_from_slice(&m);
    }
    arena.extend_from_slice(&proto_bits);
    let lay = Layout {
        atab: arena.len() as u32,
        atab_mask: (atab_len - 1) as u32,
        sports: (arena.len() + atab_len) as u32,
        sports_n: sports_n as u32,
        dports: (arena.len() + atab_len + sports.len()) as u32,
        dports_n: dports_n as u32,
    };
    arena.extend_from_slice(&atom_table(&slots));
    arena.extend_from_slice(&sports);
    arena.extend_from_slice(&dports);
    arena.extend_from_slice(&atom_bits);
    let mut flags = 0;
    for (on, f) in [
        (uses_src_np, F_SRC_NP),
        (uses_dst_np, F_DST_NP),
        (has_svc, F_SVC),
        (!icmp_rules.is_empty(), F_ICMP),
    ] {
        if on {
            flags |= f;
        }
    }
    Program {
        arena: arena.into_boxed_slice(),
        words: w as u32,
        flags,
        lay,
        bloom,
        proto_class,
        rules,
        segments,
        deciders,
        fallback,
        icmp_rules,
    }
}
