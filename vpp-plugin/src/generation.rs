//! Generations as the plugin holds them, and the cell workers read them from.
//!
//! A [`Generation`] is immutable once built. It joins three things under one pointer:
//!
//! - the compiled `capo-classifier` generation the node classifies with (built
//!   incrementally by the control path's `capo_classifier::Builder`, sharing every part
//!   an update did not touch with the generation before);
//! - the validated policy state and the views' id table ([`Snapshot`]), for
//!   `show capo …` and the deciding rule in packet traces;
//! - the policed interfaces as VPP numbers them (`sw_if_index`, `invert_rx_tx`).
//!
//! [`GenerationCell`] publishes it RCU-style (`arc-swap`, as `capo_classifier::
//! GenerationCell` does for a bare classifier generation): a worker loads the active
//! generation once per frame without locking, and a generation is freed when its last
//! reader lets go, so no worker ever sees a half-built state. The plugin has its own
//! cell because it must publish the whole [`Generation`] (classifier, views and
//! interfaces together) and keep the previous one resident. The control path
//! additionally publishes under VPP's worker barrier (see `control`), so the flip is
//! also atomic with the feature enables it comes with.
//!
//! The cell keeps the previous generation while the next one settles: a NIC mark from
//! either is honoured (DESIGN.md §4).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
pub use capo_classifier::IfaceKind;
use capo_classifier::{IfaceId, SwIfIndexMap};
use capo_policy::{Direction, IdTable, State, WorkloadEndpoint};

use crate::binding::{Bindings, Bound, How};
use crate::mark::gen_tag;

/// The `sw_if_index` the views print for an endpoint interface VPP does not have
/// (VPP's `~0`, "no interface"); never looked up by the node.
pub const UNRESOLVED: u32 = u32::MAX;

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

/// One policed interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// The endpoint's interface name (as Felix gave it).
    pub name: String,
    /// VPP's name of the interface that polices it.
    pub vpp_name: String,
    /// How the endpoint was bound to it.
    pub how: How,
    /// What it is.
    pub kind: IfaceKind,
    /// VPP's index.
    pub sw_if_index: SwIfIndex,
    /// `invert_rx_tx` (reference/capo-upstream.md §2.1): set on uplinks and tunnels,
    /// where a packet VPP receives is Calico ingress.
    pub inverted: bool,
    /// The workload endpoint it was made for (the state's very object, held so that
    /// its address cannot be reused while the entry lives): a later state holding
    /// the same object has this endpoint unchanged.
    source: Option<Arc<WorkloadEndpoint>>,
    /// [`name_hash`] of `name`.
    name_hash: u64,
}

/// A fixed hash of an interface name: an entry's is kept, so telling it from a
/// delta's few changed names compares integers, not strings.
fn name_hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(name)
}

impl Iface {
    fn new(p: PolicedRef<'_>, bound: &Bound) -> Iface {
        Iface {
            name: p.name.to_string(),
            vpp_name: bound.vpp_name.clone(),
            how: bound.how,
            kind: p.kind.to_owned(),
            sw_if_index: bound.sw_if_index,
            inverted: p.inverted,
            source: p.source.cloned(),
            name_hash: name_hash(p.name),
        }
    }

    /// Calico's direction (relative to the interface's endpoint) of a packet going
    /// `dir` in VPP: `rx XOR invert` selects egress (the rx policies).
    pub fn calico_dir(&self, dir: VppDir) -> Direction {
        calico_dir(dir, self.inverted)
    }
}

/// `rx XOR invert` selects egress (see [`Iface::calico_dir`]).
#[inline]
fn calico_dir(dir: VppDir, inverted: bool) -> Direction {
    if (dir == VppDir::Rx) != inverted {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// The interfaces a state polices, by name: workloads, the host-facing interface, and
/// named host endpoints (`*` has no interface of its own).
pub fn policed_interfaces(state: &State, host_interface: &str) -> Vec<(String, IfaceKind, bool)> {
    policed(state, host_interface)
        .map(|p| (p.name.to_string(), p.kind.to_owned(), p.inverted))
        .collect()
}

/// An endpoint interface of a state, borrowed from it (see [`policed_interfaces`]).
#[derive(Debug, Clone, Copy)]
pub struct PolicedRef<'a> {
    /// The endpoint's interface name.
    pub name: &'a str,
    /// What it is.
    pub kind: KindRef<'a>,
    /// `invert_rx_tx`.
    pub inverted: bool,
    /// The workload endpoint object, for a workload.
    pub source: Option<&'a Arc<WorkloadEndpoint>>,
}

/// An [`IfaceKind`] borrowed from the state.
#[derive(Debug, Clone, Copy)]
pub enum KindRef<'a> {
    /// The host's own interface.
    Host,
    /// A workload endpoint.
    Workload(&'a capo_policy::WorkloadKey),
    /// A host endpoint's interface (forwarded traffic).
    Forward(&'a capo_policy::HostEndpointKey),
}

impl KindRef<'_> {
    /// The owned kind.
    pub fn to_owned(self) -> IfaceKind {
        match self {
            KindRef::Host => IfaceKind::Host,
            KindRef::Workload(k) => IfaceKind::Workload(k.clone()),
            KindRef::Forward(k) => IfaceKind::Forward(k.clone()),
        }
    }

    /// Whether `kind` is this one.
    pub fn is(self, kind: &IfaceKind) -> bool {
        match (self, kind) {
            (KindRef::Host, IfaceKind::Host) => true,
            (KindRef::Workload(a), IfaceKind::Workload(b)) => a == b,
            (KindRef::Forward(a), IfaceKind::Forward(b)) => a == b,
            _ => false,
        }
    }
}

/// [`policed_interfaces`] without copying: the host interface, then every workload
/// endpoint, then every named host endpoint, in the state's order.
pub fn policed<'a>(
    state: &'a State,
    host_interface: &'a str,
) -> impl Iterator<Item = PolicedRef<'a>> + 'a {
    let host = PolicedRef {
        name: host_interface,
        kind: KindRef::Host,
        inverted: false,
        source: None,
    };
    let workloads = state.workloads().iter().map(|(key, wep)| PolicedRef {
        name: &wep.name,
        kind: KindRef::Workload(key),
        inverted: false,
        source: Some(wep),
    });
    let hosts = state
        .host_endpoints()
        .iter()
        .filter(|(_, hep)| !hep.name.is_empty() && hep.name != "*")
        .map(|(key, hep)| PolicedRef {
            name: &hep.name,
            kind: KindRef::Forward(key),
            inverted: true,
            source: None,
        });
    std::iter::once(host).chain(workloads).chain(hosts)
}

/// What the views render from: the validated policy state and its ids (with VPP's
/// `sw_if_index`es).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The policy state.
    pub state: State,
    /// The views' ids, synced with `state`.
    pub ids: IdTable,
}

/// An immutable compiled snapshot.
#[derive(Debug)]
pub struct Generation {
    id: u64,
    snapshot: Arc<Snapshot>,
    classifier: Arc<capo_classifier::Generation>,
    policed: Arc<Policed>,
}

/// Which interface table a generation polices, kept (its entries only) so that a
/// later table can be told apart from it and compared with it.
#[derive(Debug, Clone, Default)]
pub struct InterfacesSeen(Option<Arc<Policed>>);

/// Whether two entries police one endpoint name at the same place, bound the same
/// way.
fn same_place(a: &Iface, b: &Iface) -> bool {
    std::ptr::eq(a, b)
        || (a.name == b.name
            && a.sw_if_index == b.sw_if_index
            && a.how == b.how
            && a.vpp_name == b.vpp_name)
}

/// Finds a table's entries by name for endpoints met in the table's order but for
/// a few: walking the table, with a name map made only where the orders part.
struct TableWalk<'a> {
    old: &'a [Arc<Iface>],
    next: usize,
    /// Entries the walk stepped over (a removed endpoint's, usually).
    passed: Vec<&'a Arc<Iface>>,
    /// Positions by name.
    by_name: Option<HashMap<&'a str, usize>>,
}

impl<'a> TableWalk<'a> {
    fn new(old: &'a [Arc<Iface>]) -> Self {
        TableWalk {
            old,
            next: 0,
            passed: Vec::new(),
            by_name: None,
        }
    }

    /// The entry named `name` and its position, passing over the entries `skip`
    /// says in the walk.
    fn find(
        &mut self,
        name: &str,
        skip: impl Fn(&Iface) -> bool,
    ) -> Option<(usize, &'a Arc<Iface>)> {
        let old = self.old;
        while let Some(f) = old.get(self.next).filter(|f| skip(f)) {
            self.passed.push(f);
            self.next += 1;
        }
        match old.get(self.next) {
            Some(f) if f.name == name => {
                self.next += 1;
                Some((self.next - 1, f))
            }
            // One entry stepped over (an endpoint removed from the middle).
            Some(f)
                if self.by_name.is_none()
                    && old.get(self.next + 1).is_some_and(|g| g.name == name) =>
            {
                self.passed.push(f);
                self.next += 2;
                old.get(self.next - 1).map(|g| (self.next - 1, g))
            }
            // The whole table met in order: nothing of it is left to find (the
            // usual end of an endpoint added).
            None if self.by_name.is_none() => None,
            _ => self
                .by_name
                .get_or_insert_with(|| {
                    old.iter()
                        .enumerate()
                        .map(|(at, f)| (f.name.as_str(), at))
                        .collect()
                })
                .get(name)
                .and_then(|&at| old.get(at).map(|f| (at, f))),
        }
    }

    /// The entry the walk is at.
    fn at(&self) -> Option<&'a Arc<Iface>> {
        self.old.get(self.next)
    }

    /// Steps past the entry the walk is at (met in order); its position.
    fn step(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    /// [`TableWalk::find`] for an entry of the next table: the very entry the walk
    /// is at when the two tables share it (the usual case), found without comparing
    /// names.
    fn find_entry(&mut self, entry: &Arc<Iface>) -> Option<&'a Arc<Iface>> {
        match self.old.get(self.next) {
            Some(o) if Arc::ptr_eq(o, entry) => {
                self.next += 1;
                Some(o)
            }
            _ => self.find(&entry.name, |_| false).map(|(_, o)| o),
        }
    }

    /// The entries the walk did not meet, when it met the others in order without
    /// the name map (`None` once the map was made).
    fn unmet(&self) -> Option<impl Iterator<Item = &'a Arc<Iface>> + '_> {
        let rest = self.old.get(self.next..).unwrap_or_default();
        self.by_name
            .is_none()
            .then(|| self.passed.iter().copied().chain(rest))
    }
}

/// What a generation polices differently from an [`InterfacesSeen`] table.
#[derive(Debug, Default)]
pub struct InterfaceChanges<'g> {
    /// Endpoints new to the table, or policed elsewhere than it says, in the
    /// generation's order.
    pub changed: Vec<&'g Iface>,
    /// Endpoints of the table the generation does not police.
    pub gone: Vec<String>,
}

impl InterfacesSeen {
    /// `g`'s table.
    pub fn of(g: &Generation) -> Self {
        InterfacesSeen(Some(Arc::clone(&g.policed)))
    }

    /// Whether `g` polices that very table.
    pub fn still(&self, g: &Generation) -> bool {
        self.0.as_ref().is_some_and(|t| Arc::ptr_eq(t, &g.policed))
    }

    /// How `g`'s table differs from this one (`None` without one): where each
    /// endpoint is policed (its VPP interface, index and binding). From the record
    /// of the endpoint delta that made `g`'s table out of this one, else by walking
    /// both tables.
    pub fn changes<'g>(&self, g: &'g Generation) -> Option<InterfaceChanges<'g>> {
        let seen = self.0.as_ref()?;
        match &g.policed.delta {
            Some(d) if std::ptr::eq(d.from.as_ptr(), Arc::as_ptr(seen)) => {
                Some(d.changes(&g.policed.ifaces))
            }
            _ => self.changes_by_walk(g),
        }
    }

    /// [`InterfacesSeen::changes`] by walking both tables. Tables share the entries
    /// of endpoints a delta did not change, so those are found by pointer, walking
    /// both lists (names are hashed only where their orders part); a table bound
    /// again is compared entry by entry. Where the orders part, an entry the walk
    /// meets out of place may be told as changed though it is not.
    pub(crate) fn changes_by_walk<'g>(&self, g: &'g Generation) -> Option<InterfaceChanges<'g>> {
        let old = &self.0.as_ref()?.ifaces;
        let mut walk = TableWalk::new(old);
        let mut changes = InterfaceChanges::default();
        for f in &g.policed.ifaces {
            if !walk.find_entry(f).is_some_and(|o| same_place(o, f)) {
                changes.changed.push(f);
            }
        }
        // A name is gone when no entry of `g` has it: of the entries the walk did
        // not meet (few), or of the whole table once the orders parted.
        let new = &g.policed.ifaces;
        changes.gone = match walk.unmet() {
            Some(unmet) => unmet
                .filter(|o| !new.iter().any(|f| f.name == o.name))
                .map(|o| o.name.clone())
                .collect(),
            None => {
                let now: HashSet<&str> = new.iter().map(|f| f.name.as_str()).collect();
                old.iter()
                    .filter(|o| !now.contains(o.name.as_str()))
                    .map(|o| o.name.clone())
                    .collect()
            }
        };
        Some(changes)
    }
}

impl TableDelta {
    /// [`InterfacesSeen::changes`] from the table the delta was made from to
    /// `ifaces` (the table the delta describes). A fresh entry is a change unless
    /// it polices its name where the first dropped entry of that name did (an
    /// endpoint changed in what VPP does not see); a dropped entry's name is gone
    /// unless a fresh entry has it (no entry taken over has a dropped one's name).
    fn changes<'g>(&self, ifaces: &'g [Arc<Iface>]) -> InterfaceChanges<'g> {
        let fresh: Vec<&'g Arc<Iface>> =
            self.fresh.iter().filter_map(|&at| ifaces.get(at)).collect();
        // A few of each (a pod's churn) are compared in turn; a delta changing many
        // endpoints looks names up.
        let few = fresh.len() <= FEW_CHANGED && self.dropped.len() <= FEW_CHANGED;
        let mut first_dropped: HashMap<&str, &Iface> = HashMap::new();
        let mut fresh_names: HashSet<&str> = HashSet::new();
        if !few {
            for o in &self.dropped {
                first_dropped.entry(o.name.as_str()).or_insert(o);
            }
            fresh_names.extend(fresh.iter().map(|f| f.name.as_str()));
        }
        let dropped_named = |name: &str| -> Option<&Iface> {
            if few {
                self.dropped.iter().find(|o| o.name == name).map(|o| &**o)
            } else {
                first_dropped.get(name).copied()
            }
        };
        let is_fresh_name = |name: &str| {
            if few {
                fresh.iter().any(|f| f.name == name)
            } else {
                fresh_names.contains(name)
            }
        };
        let changed = fresh
            .iter()
            .filter(|f| !dropped_named(&f.name).is_some_and(|o| same_place(o, f)))
            .map(|f| &***f)
            .collect();
        let gone = self
            .dropped
            .iter()
            .filter(|o| !is_fresh_name(&o.name))
            .map(|o| o.name.clone())
            .collect();
        InterfaceChanges { changed, gone }
    }
}

/// `v` sorted, each index once.
pub(crate) fn sorted_unique(mut v: Vec<SwIfIndex>) -> Vec<SwIfIndex> {
    v.sort_unstable();
    v.dedup();
    v
}

/// How the indexes a generation polices differ from another's
/// ([`Generation::index_changes_from`]); each list ascending, each index once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexChanges {
    /// Policed now, not before.
    pub added: Vec<SwIfIndex>,
    /// Policed before, not now.
    pub removed: Vec<SwIfIndex>,
    /// Policed before and now for another endpoint (VPP may have deleted the first
    /// one's interface and given its index to the next one's).
    pub reused: Vec<SwIfIndex>,
}

/// A generation's policed interfaces, shared with the next generation when that one
/// changes no endpoint; one that changes some shares the other endpoints' entries.
#[derive(Debug)]
struct Policed {
    ifaces: Vec<Arc<Iface>>,
    /// What a delta's edit reads of each entry, beside `ifaces` in its order: read
    /// in one sequential pass, without a load from each entry.
    meta: Vec<EntryMeta>,
    /// Where the host endpoints' entries begin (after the workloads'): where a new
    /// workload's entry goes.
    forwards_from: usize,
    /// Position in `ifaces` and `invert_rx_tx` by `sw_if_index`: what the node needs
    /// of an interface per packet, without a load from the shared entry.
    by_sw_if_index: SwIfIndexMap<PolicedAt>,
    /// Whether no two entries share an index.
    indexes_unique: bool,
    unknown: Vec<String>,
    /// How it differs from the table it was made from, for one an endpoint delta
    /// made.
    delta: Option<TableDelta>,
}

/// How a table [`Generation::interfaces_after`] made differs from the one it was
/// made from: what an agent is told after the delta, found without walking both.
#[derive(Debug)]
struct TableDelta {
    /// The table it was made from: compared by address only (the `Weak` keeps the
    /// address from being reused).
    from: Weak<Policed>,
    /// Positions of the entries made anew; every other entry is one of `from`'s.
    fresh: Vec<usize>,
    /// `from`'s entries no endpoint took over, in its order; each has the name of
    /// a changed endpoint.
    dropped: Vec<Arc<Iface>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PolicedAt {
    pos: u32,
    inverted: bool,
}

/// An entry's [`name_hash`], index and kind, kept beside it.
#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    name_hash: u64,
    sw_if_index: SwIfIndex,
    inverted: bool,
    /// A host endpoint's interface.
    forward: bool,
}

impl EntryMeta {
    fn of(f: &Iface) -> EntryMeta {
        EntryMeta {
            name_hash: f.name_hash,
            sw_if_index: f.sw_if_index,
            inverted: f.inverted,
            forward: matches!(f.kind, IfaceKind::Forward(_)),
        }
    }
}

impl Policed {
    fn new(ifaces: Vec<Arc<Iface>>, unknown: Vec<String>) -> Policed {
        let meta = ifaces.iter().map(|f| EntryMeta::of(f)).collect();
        Policed::with_meta(ifaces, meta, unknown)
    }

    /// The table of `ifaces`, whose [`EntryMeta`] `meta` holds in their order.
    fn with_meta(ifaces: Vec<Arc<Iface>>, meta: Vec<EntryMeta>, unknown: Vec<String>) -> Policed {
        let mut by_sw_if_index = SwIfIndexMap::for_indexes(meta.iter().map(|m| m.sw_if_index.0));
        let mut indexes_unique = true;
        for (i, m) in meta.iter().enumerate() {
            let at = PolicedAt {
                pos: i as u32,
                inverted: m.inverted,
            };
            indexes_unique &= by_sw_if_index.insert(m.sw_if_index.0, at).is_none();
        }
        let forwards_from = meta.iter().position(|m| m.forward).unwrap_or(meta.len());
        Policed {
            ifaces,
            meta,
            forwards_from,
            by_sw_if_index,
            indexes_unique,
            unknown,
            delta: None,
        }
    }
}

/// Changed endpoints [`Generation::interfaces_after`] compares names with one by
/// one rather than hashing every endpoint's name.
const FEW_CHANGED: usize = 8;

/// How a delta of a few workload updates changes a table
/// ([`Generation::plan_delta`]): the places it changes, in the table's order.
#[derive(Debug, Default)]
pub struct DeltaPlan<'a> {
    places: Vec<Place<'a>>,
}

/// One place of the table a planned delta changes.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    /// A position in the table before.
    at: usize,
    /// Whether the entry there goes (replaced by `endpoint`, or dropped); else
    /// `endpoint` goes in before it.
    replaces: bool,
    endpoint: Option<PolicedRef<'a>>,
}

impl<'a> DeltaPlan<'a> {
    /// Every endpoint of the next state holding a changed name, what to bind, in
    /// the table's order (the state's), as the walk lists them: binding takes, of
    /// two endpoints with one name, the later one's explicit binding.
    pub fn endpoints(&self) -> impl Iterator<Item = &PolicedRef<'a>> + '_ {
        self.places.iter().filter_map(|p| p.endpoint.as_ref())
    }
}

/// A workload endpoint of a state, as [`policed`] gives it.
fn workload_ref<'a>(
    key: &'a capo_policy::WorkloadKey,
    wep: &'a Arc<WorkloadEndpoint>,
) -> PolicedRef<'a> {
    PolicedRef {
        name: &wep.name,
        kind: KindRef::Workload(key),
        inverted: false,
        source: Some(wep),
    }
}

/// A generation's policed interfaces after an endpoint delta, built before the
/// generation they go into ([`Generation::interfaces_after`]).
#[derive(Debug)]
pub struct ChangedInterfaces(Policed);

impl Generation {
    /// Generation `id`: `classifier` compiled from `snapshot`; `resolved` binds
    /// endpoint interface names to VPP interfaces (names without one are reported in
    /// [`Generation::unknown_interfaces`] and not policed).
    pub fn build(
        id: u64,
        snapshot: Arc<Snapshot>,
        classifier: Arc<capo_classifier::Generation>,
        resolved: &Bindings,
    ) -> Generation {
        let mut ifaces = Vec::new();
        let mut unknown = Vec::new();
        for p in policed(&snapshot.state, snapshot.ids.host_interface()) {
            match resolved.get(p.name) {
                Some(bound) => ifaces.push(Arc::new(Iface::new(p, bound))),
                None => unknown.push(p.name.to_string()),
            }
        }
        Generation {
            id,
            snapshot,
            classifier,
            policed: Arc::new(Policed::new(ifaces, unknown)),
        }
    }

    /// Generation `id` with `prev`'s policed interfaces, for a delta that changed no
    /// endpoint (so binds them as `prev` does).
    pub fn with_interfaces_of(
        id: u64,
        snapshot: Arc<Snapshot>,
        classifier: Arc<capo_classifier::Generation>,
        prev: &Generation,
    ) -> Generation {
        Generation {
            id,
            snapshot,
            classifier,
            policed: Arc::clone(&prev.policed),
        }
    }

    /// `prev`'s policed interfaces after a delta that changed the endpoints named in
    /// `changed` (their names before and after it) into `state`: those are bound as
    /// `bound` says (a name it lacks is unknown to VPP); every other endpoint keeps
    /// `prev`'s entry, as [`Generation::with_interfaces_of`] keeps them all. A pod's
    /// churn thus costs a pass over pointers, not binding and copying every
    /// endpoint. `None` when an endpoint's entry in `prev` does not fit it (then
    /// every endpoint is bound again).
    pub fn interfaces_after(
        prev: &Generation,
        state: &State,
        host_interface: &str,
        changed: &HashSet<String>,
        bound: &Bindings,
    ) -> Option<ChangedInterfaces> {
        // A delta changes a few endpoints: asking the set about every endpoint would
        // hash every name.
        let few: Option<Vec<&str>> =
            (changed.len() <= FEW_CHANGED).then(|| changed.iter().map(String::as_str).collect());
        let is_changed = |name: &str| match &few {
            Some(few) => few.contains(&name),
            None => changed.contains(name),
        };
        let few_hashes: Option<Vec<u64>> = few
            .as_ref()
            .map(|few| few.iter().map(|n| name_hash(n)).collect());
        // Whether an entry's name may be a changed one (true: compare the names).
        let may_be_changed = |f: &Iface| match &few_hashes {
            Some(hashes) => hashes.contains(&f.name_hash),
            None => changed.contains(f.name.as_str()),
        };
        // `prev`'s entries come in the order `policed` gives, which a delta keeps
        // for every endpoint it does not change.
        let old = &prev.policed.ifaces;
        let mut walk = TableWalk::new(old);
        let mut unknown_before: Option<HashSet<&str>> = None;
        let mut ifaces = Vec::with_capacity(old.len() + changed.len());
        let mut unknown = Vec::new();
        // Positions of the entries made anew, and of `prev`'s entries taken over.
        let mut fresh = Vec::new();
        let mut taken = vec![false; old.len()];
        for p in policed(state, host_interface) {
            // The usual endpoint: the walk is at the entry made for this very
            // workload object (so name, key and direction are the entry's), and no
            // changed name can be its name.
            if let (Some(source), Some(f)) = (p.source, walk.at()) {
                if f.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, source)) && !may_be_changed(f) {
                    if let Some(t) = taken.get_mut(walk.step()) {
                        *t = true;
                    }
                    ifaces.push(Arc::clone(f));
                    continue;
                }
            }
            if is_changed(p.name) {
                match bound.get(p.name) {
                    Some(b) => {
                        fresh.push(ifaces.len());
                        ifaces.push(Arc::new(Iface::new(p, b)));
                    }
                    None => unknown.push(p.name.to_string()),
                }
                continue;
            }
            if let Some((at, f)) = walk.find(p.name, |f| is_changed(&f.name)) {
                if !p.kind.is(&f.kind) || p.inverted != f.inverted {
                    return None;
                }
                if let Some(t) = taken.get_mut(at) {
                    *t = true;
                }
                ifaces.push(Arc::clone(f));
            } else if unknown_before
                .get_or_insert_with(|| prev.policed.unknown.iter().map(String::as_str).collect())
                .contains(p.name)
            {
                unknown.push(p.name.to_string());
            } else {
                return None;
            }
        }
        let dropped: Vec<Arc<Iface>> = old
            .iter()
            .zip(&taken)
            .filter(|(_, &t)| !t)
            .map(|(f, _)| Arc::clone(f))
            .collect();
        // The record's changes rely on every dropped entry having a changed name.
        // That holds whenever the walk gets here (an endpoint it did not change
        // takes its own entry, or the tables are bound again); checked, as a table
        // without a record is only compared whole.
        let exact = dropped.iter().all(|o| is_changed(&o.name));
        let mut policed = Policed::new(ifaces, unknown);
        policed.delta = exact.then(|| TableDelta {
            from: Arc::downgrade(&prev.policed),
            fresh,
            dropped,
        });
        Some(ChangedInterfaces(policed))
    }

    /// The plan of a delta of workload updates on `prev`'s table, made from the
    /// entries of the names it changes alone (no walk over every endpoint):
    /// `state` is `prev`'s state with `updates` applied, `changed` the names
    /// [`Generation::interfaces_after`] is given. `None` where the plan would
    /// need the walk: a host endpoint changed, a changed name held by the host
    /// interface or a host endpoint, or unknown to VPP before, a workload sent
    /// twice, two new workloads (their order), more than a few names.
    pub fn plan_delta<'a>(
        prev: &'a Generation,
        state: &'a State,
        changed: &HashSet<String>,
        updates: &[capo_policy::Update],
    ) -> Option<DeltaPlan<'a>> {
        use capo_policy::Update;
        if changed.len() > FEW_CHANGED {
            return None;
        }
        let table = &prev.policed;
        if table.unknown.iter().any(|n| changed.contains(n)) {
            return None;
        }
        let mut keys: Vec<&capo_policy::WorkloadKey> = Vec::new();
        for u in updates {
            match u {
                Update::WorkloadUpdate(k, _) | Update::WorkloadRemove(k) => {
                    if keys.contains(&k) || keys.len() == FEW_CHANGED {
                        return None;
                    }
                    keys.push(k);
                }
                Update::HostEndpointUpdate(..) | Update::HostEndpointRemove(_) => return None,
                _ => {}
            }
        }
        // The entries holding a changed name: by their hashes, in one pass.
        let hashes: Vec<u64> = changed.iter().map(|n| name_hash(n)).collect();
        let olds: Vec<usize> = (table.meta.iter().enumerate())
            .filter(|(_, m)| hashes.contains(&m.name_hash))
            .map(|(at, _)| at)
            .filter(|&at| {
                table
                    .ifaces
                    .get(at)
                    .is_some_and(|f| changed.contains(&f.name))
            })
            .collect();
        let mut places = Vec::new();
        let replace = |at, endpoint| Place {
            at,
            replaces: true,
            endpoint,
        };
        let mut kind_at = Vec::with_capacity(olds.len());
        for &at in &olds {
            let f = table.ifaces.get(at)?;
            let IfaceKind::Workload(k) = &f.kind else {
                return None;
            };
            kind_at.push((k, at));
            if keys.contains(&k) {
                continue;
            }
            // An endpoint the delta left, sharing a changed name: bound again where
            // it is.
            let (key, wep) = state.workloads().get_key_value(k)?;
            if wep.name != f.name {
                return None;
            }
            places.push(replace(at, Some(workload_ref(key, wep))));
        }
        let mut new_keys = 0;
        for k in keys {
            // An endpoint of the state before has an entry (its name before is a
            // changed one, and no changed name was unknown): a key without one is
            // new to the state.
            let old = kind_at
                .iter()
                .find(|(held, _)| *held == k)
                .map(|&(_, at)| at);
            match (state.workloads().get_key_value(k), old) {
                (Some((key, wep)), Some(at)) => {
                    places.push(replace(at, Some(workload_ref(key, wep))));
                }
                // A key new to the state goes after every other workload.
                (Some((key, wep)), None) => {
                    new_keys += 1;
                    places.push(Place {
                        at: table.forwards_from,
                        replaces: false,
                        endpoint: Some(workload_ref(key, wep)),
                    });
                }
                (None, Some(at)) => places.push(replace(at, None)),
                (None, None) => {}
            }
        }
        places.sort_unstable_by_key(|p| (p.at, p.replaces));
        (new_keys <= 1).then_some(DeltaPlan { places })
    }

    /// `prev`'s table with `plan`'s edits, the endpoints it names bound as `bound`
    /// says: the table [`Generation::interfaces_after`] gives for the same delta.
    /// `None` when one of them is unbound (the walk lists it among the unknown in
    /// its place).
    pub fn interfaces_after_plan(
        prev: &Generation,
        plan: &DeltaPlan<'_>,
        bound: &Bindings,
    ) -> Option<ChangedInterfaces> {
        let table = &prev.policed;
        let len = table.ifaces.len() + 1;
        let mut ifaces = Vec::with_capacity(len);
        let mut meta = Vec::with_capacity(len);
        let mut fresh = Vec::new();
        let mut dropped = Vec::new();
        // The entries between two places, copied as runs.
        let mut copied = 0;
        for place in &plan.places {
            ifaces.extend_from_slice(table.ifaces.get(copied..place.at)?);
            meta.extend_from_slice(table.meta.get(copied..place.at)?);
            copied = place.at;
            if place.replaces {
                dropped.push(Arc::clone(table.ifaces.get(place.at)?));
                copied = place.at + 1;
            }
            if let Some(p) = place.endpoint {
                let f = Arc::new(Iface::new(p, bound.get(p.name)?));
                fresh.push(ifaces.len());
                meta.push(EntryMeta::of(&f));
                ifaces.push(f);
            }
        }
        ifaces.extend_from_slice(table.ifaces.get(copied..)?);
        meta.extend_from_slice(table.meta.get(copied..)?);
        let mut policed = Policed::with_meta(ifaces, meta, table.unknown.clone());
        policed.delta = Some(TableDelta {
            from: Arc::downgrade(&prev.policed),
            fresh,
            dropped,
        });
        Some(ChangedInterfaces(policed))
    }

    /// Generation `id` policing `interfaces` ([`Generation::interfaces_after`]).
    pub fn with_changed_interfaces(
        id: u64,
        snapshot: Arc<Snapshot>,
        classifier: Arc<capo_classifier::Generation>,
        interfaces: ChangedInterfaces,
    ) -> Generation {
        Generation {
            id,
            snapshot,
            classifier,
            policed: Arc::new(interfaces.0),
        }
    }

    /// Where this generation polices each bound endpoint, as a binding pass found it.
    pub fn bindings(&self) -> Bindings {
        self.interfaces()
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    Bound {
                        sw_if_index: i.sw_if_index,
                        vpp_name: i.vpp_name.clone(),
                        how: i.how,
                    },
                )
            })
            .collect()
    }

    /// Whether this generation polices the very interfaces of `other` (one took
    /// them from the other).
    pub fn shares_interfaces_with(&self, other: &Generation) -> bool {
        Arc::ptr_eq(&self.policed, &other.policed)
    }

    /// The generation's id (the agent's).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The policy state.
    pub fn state(&self) -> &State {
        &self.snapshot.state
    }

    /// The views' ids (synced with [`Generation::state`]).
    pub fn ids(&self) -> &IdTable {
        &self.snapshot.ids
    }

    /// The state and ids together.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The policed interfaces.
    pub fn interfaces(&self) -> &[Arc<Iface>] {
        &self.policed.ifaces
    }

    /// What publishing this generation after `before` changes in the indexes
    /// policed, from the endpoint delta that made its table out of `before`'s:
    /// `None` when no delta did, or when `before` polices an index for two
    /// endpoints (then the tables are compared whole).
    pub fn index_changes_from(&self, before: &Generation) -> Option<IndexChanges> {
        let delta = self.policed.delta.as_ref()?;
        let made_from_before = std::ptr::eq(delta.from.as_ptr(), Arc::as_ptr(&before.policed));
        if !made_from_before || !before.policed.indexes_unique {
            return None;
        }
        // Every other entry is one of `before`'s, at the index it had there.
        let fresh: Vec<&Arc<Iface>> = delta
            .fresh
            .iter()
            .filter_map(|&at| self.policed.ifaces.get(at))
            .collect();
        Some(IndexChanges {
            added: sorted_unique(
                fresh
                    .iter()
                    .map(|f| f.sw_if_index)
                    .filter(|&i| before.interface(i).is_none())
                    .collect(),
            ),
            removed: sorted_unique(
                delta
                    .dropped
                    .iter()
                    .map(|o| o.sw_if_index)
                    .filter(|&i| self.interface(i).is_none())
                    .collect(),
            ),
            reused: sorted_unique(
                fresh
                    .iter()
                    .filter(|f| {
                        before
                            .interface(f.sw_if_index)
                            .is_some_and(|old| old.name != f.name || old.kind != f.kind)
                    })
                    .map(|f| f.sw_if_index)
                    .collect(),
            ),
        })
    }

    /// The indexes of the policed interfaces, ascending and each once.
    pub fn policed_indexes(&self) -> impl Iterator<Item = SwIfIndex> + '_ {
        self.policed.by_sw_if_index.keys().map(SwIfIndex)
    }

    /// The interface with this index, if policed.
    #[inline]
    pub fn interface(&self, sw_if_index: SwIfIndex) -> Option<&Iface> {
        let at = self.policed.by_sw_if_index.get(sw_if_index.0)?;
        self.policed.ifaces.get(at.pos as usize).map(|f| &**f)
    }

    /// Calico's direction of a packet going `dir` on the interface with this index
    /// ([`Iface::calico_dir`]), if policed: the node's per-packet look-up.
    #[inline]
    pub fn calico_dir(&self, sw_if_index: SwIfIndex, dir: VppDir) -> Option<Direction> {
        let at = self.policed.by_sw_if_index.get(sw_if_index.0)?;
        Some(calico_dir(dir, at.inverted))
    }

    /// `iface`'s interface in the classifier generation (`None`: it has no
    /// program), found by its `sw_if_index` as the node's worker finds it. Looked up
    /// on demand (traces and `capo bench` ask): kept in [`Iface`] it would tie the
    /// interface table to the classifier's numbering, which an added or removed
    /// endpoint shifts.
    #[inline]
    pub fn classifier_iface(&self, iface: &Iface) -> Option<IfaceId> {
        self.classifier
            .interface_by_sw_if_index(iface.sw_if_index.0)
    }

    /// Endpoint interfaces VPP does not have.
    pub fn unknown_interfaces(&self) -> &[String] {
        &self.policed.unknown
    }

    /// The compiled classifier generation.
    pub fn classifier(&self) -> &capo_classifier::Generation {
        &self.classifier
    }

    /// The compiled classifier generation, shared.
    pub fn classifier_arc(&self) -> &Arc<capo_classifier::Generation> {
        &self.classifier
    }

    /// The views over this generation (`show capo …`).
    pub fn views(&self) -> capo_policy::Views<'_> {
        capo_policy::Views::new(&self.snapshot.state, &self.snapshot.ids)
    }
}

/// The generation tags of the held generations (a set of 2-bit tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldTags(u8);

impl HeldTags {
    /// Whether a mark with this tag comes from a held generation.
    #[inline]
    pub fn contains(self, tag: u8) -> bool {
        tag < 8 && self.0 & (1 << tag) != 0
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
    /// generation (for NIC marks) until the next publish. Returns the generation
    /// the cell no longer holds (the previous one until now), for the caller to
    /// release where freeing it delays nobody: the flip runs under VPP's worker
    /// barrier.
    #[must_use = "dropping the released generation here frees it where the flip runs"]
    pub fn publish(&self, next: Arc<Generation>) -> Option<Arc<Generation>> {
        let old = self.active.swap(Some(next));
        self.previous.swap(old)
    }

    /// Whether a NIC mark's generation tag is that of a generation software holds.
    pub fn holds_tag(&self, tag: u8) -> bool {
        self.held_tags().contains(tag)
    }

    /// The tags of the generations software holds, read once (per frame).
    pub fn held_tags(&self) -> HeldTags {
        let mut bits = 0u8;
        for g in [self.active.load(), self.previous.load()] {
            if let Some(g) = g.as_ref() {
                bits |= 1 << gen_tag(g.id);
            }
        }
        HeldTags(bits)
    }

    /// The previous generation's id, if one is still held.
    pub fn previous_id(&self) -> Option<u64> {
        self.previous.load().as_ref().map(|g| g.id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn generation(id: u64, resolved: &HashMap<String, SwIfIndex>) -> Arc<Generation> {
        let state = State::new();
        let mut ids = IdTable::new("tap0");
        for (name, idx) in resolved {
            ids.set_interface_index(name, idx.0);
        }
        let resolved: Bindings = resolved
            .iter()
            .map(|(n, i)| {
                let bound = crate::binding::Bound {
                    sw_if_index: *i,
                    vpp_name: n.clone(),
                    how: How::Name,
                };
                (n.clone(), bound)
            })
            .collect();
        ids.sync(&state);
        let classifier = capo_classifier::Builder::new().build(&state, &ids);
        Arc::new(Generation::build(
            id,
            Arc::new(Snapshot { state, ids }),
            classifier,
            &resolved,
        ))
    }

    #[test]
    fn rx_xor_invert_selects_egress() {
        let mut f = Iface {
            name: "tun3".into(),
            vpp_name: "tun3".into(),
            how: How::Name,
            kind: IfaceKind::Host,
            sw_if_index: SwIfIndex(11),
            inverted: false,
            source: None,
            name_hash: name_hash("tun3"),
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
        let none = HashMap::new();
        let _ = cell.publish(generation(1, &none));
        let _ = cell.publish(generation(2, &none));
        assert_eq!(cell.active_id(), 2);
        assert_eq!(cell.previous_id(), Some(1));
        assert!(cell.holds_tag(gen_tag(1)) && cell.holds_tag(gen_tag(2)));
        assert!(!cell.holds_tag(gen_tag(3)));
        let _ = cell.publish(generation(3, &none));
        assert!(!cell.holds_tag(gen_tag(1)));
    }

    #[test]
    fn unresolved_names_are_reported_not_policed() {
        let mut resolved = HashMap::new();
        resolved.insert("tap0".to_string(), SwIfIndex(1));
        let g = generation(1, &resolved);
        assert_eq!(g.interfaces().len(), 1);
        assert!(g.unknown_interfaces().is_empty());
        let f = g.interface(SwIfIndex(1)).unwrap();
        assert_eq!(f.kind, IfaceKind::Host);
        // The node's lookup and the classifier's agree on the interface.
        assert_eq!(
            g.classifier_iface(f),
            g.classifier().interface_by_sw_if_index(1)
        );
        let g = generation(1, &HashMap::new());
        assert_eq!(g.unknown_interfaces(), ["tap0".to_string()]);
        assert!(g.interface(SwIfIndex(1)).is_none());
    }

    #[test]
    fn sparse_indexes_are_found() {
        let mut resolved = HashMap::new();
        resolved.insert(
            "tap0".to_string(),
            SwIfIndex(SwIfIndexMap::<u32>::DENSE + 5),
        );
        let g = generation(1, &resolved);
        assert!(g
            .interface(SwIfIndex(SwIfIndexMap::<u32>::DENSE + 5))
            .is_some());
        assert!(g.interface(SwIfIndex(5)).is_none());
    }

    /// Workload `pod`'s key (namespace `default`).
    fn pod_key(pod: &str) -> capo_policy::WorkloadKey {
        capo_policy::WorkloadKey {
            orchestrator: "k8s".into(),
            workload: format!("default/{pod}"),
            endpoint: "eth0".into(),
        }
    }

    /// A workload endpoint on interface `name`, at 10.0.`subnet`.`host`.
    fn tun_endpoint(name: &str, subnet: u8, host: u8) -> Arc<WorkloadEndpoint> {
        Arc::new(WorkloadEndpoint {
            name: name.into(),
            profile_ids: vec![],
            ipv4_nets: vec![capo_policy::Cidr::host(std::net::IpAddr::from([
                10, 0, subnet, host,
            ]))],
            ipv6_nets: vec![],
            tiers: vec![],
        })
    }

    /// Each named interface bound by its name at its index.
    fn bound_by_name(at: impl IntoIterator<Item = (String, u32)>) -> Bindings {
        at.into_iter()
            .map(|(name, index)| {
                let bound = crate::binding::Bound {
                    sw_if_index: SwIfIndex(index),
                    vpp_name: name.clone(),
                    how: How::Name,
                };
                (name, bound)
            })
            .collect()
    }

    /// A generation compiled from `state`, its endpoints bound as `bound` says.
    fn built(state: State, bound: &Bindings) -> Generation {
        let mut ids = IdTable::new("tap0");
        ids.sync(&state);
        let classifier = capo_classifier::Builder::new().build(&state, &ids);
        Generation::build(1, Arc::new(Snapshot { state, ids }), classifier, bound)
    }

    /// Each entry's name, index and kind.
    fn rows(ifaces: &[Arc<Iface>]) -> Vec<(String, SwIfIndex, IfaceKind)> {
        ifaces
            .iter()
            .map(|i| (i.name.clone(), i.sw_if_index, i.kind.clone()))
            .collect()
    }

    /// Endpoints in another order than the generation before lists them (the
    /// walk over both lists parts): each still gets the very entry it had, and the
    /// table is the one binding every endpoint again gives.
    #[test]
    fn interfaces_after_finds_entries_out_of_order() {
        use capo_policy::Update;
        // Each state makes its endpoint objects anew: only names match.
        let state_of = |order: &[u32]| {
            let mut state = State::new();
            for &n in order {
                let wep = tun_endpoint(&format!("tun{n}"), 0, n as u8);
                state
                    .apply(Update::WorkloadUpdate(pod_key(&format!("pod{n}")), wep))
                    .unwrap();
            }
            state
        };
        let bindings = bound_by_name((1..=4u32).map(|n| (format!("tun{n}"), 10 + n)));
        let build = |state: State| built(state, &bindings);
        let prev = build(state_of(&[1, 2, 3]));
        // pod3 first now, pod2 changed, pod4 new.
        let next = state_of(&[3, 1, 2, 4]);
        let changed: HashSet<String> = ["tun2".to_string(), "tun4".to_string()].into();
        let after = Generation::interfaces_after(&prev, &next, "tap0", &changed, &bindings)
            .expect("every unchanged endpoint has its entry");
        let again = build(next.clone());
        assert_eq!(rows(&after.0.ifaces), rows(again.interfaces()));
        for name in ["tun1", "tun3"] {
            let find =
                |ifaces: &[Arc<Iface>]| ifaces.iter().find(|i| i.name == name).cloned().unwrap();
            assert!(
                Arc::ptr_eq(&find(&after.0.ifaces), &find(prev.interfaces())),
                "{name}"
            );
        }
        // What an agent is sent: tun4 (new) only, tun2 being bound again where it
        // was; nothing gone. Then tun1 leaves from the middle.
        let seen = InterfacesSeen::of(&prev);
        let next = Generation::with_changed_interfaces(
            2,
            Arc::clone(&again.snapshot),
            Arc::clone(&again.classifier),
            after,
        );
        let changes = seen.changes(&next).unwrap();
        let names =
            |c: &InterfaceChanges<'_>| c.changed.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&changes), ["tun4"]);
        assert!(changes.gone.is_empty());
        // Walking both tables (the orders part) tells the same.
        let walked = seen.changes_by_walk(&next).unwrap();
        assert_eq!(names(&walked), ["tun4"]);
        assert!(walked.gone.is_empty());
        let without_1 = build(state_of(&[3, 2, 4]));
        let changes = InterfacesSeen::of(&next).changes(&without_1).unwrap();
        // Bound again from scratch: the same places, so nothing changed but the gone.
        assert!(names(&changes).is_empty(), "{:?}", names(&changes));
        assert_eq!(changes.gone, ["tun1"]);
        assert!(InterfacesSeen::default().changes(&next).is_none());
    }

    /// A delta's next state shares the endpoint objects it did not change with the
    /// state before. An entry is taken over for such an object only while no
    /// changed name is its name: an unchanged endpoint sharing its interface name
    /// with a changed one is bound again, and an object moved to another key gets
    /// that key. Each case's table is the one binding every endpoint again gives.
    #[test]
    fn interfaces_after_binds_again_what_shares_a_changed_name() {
        use capo_policy::Update;
        let key = pod_key;
        let endpoint = |name: &str, n: u8| tun_endpoint(name, 0, n);
        let bindings = |tun1: u32| {
            bound_by_name(
                [("tun1", tun1), ("tun2", 12), ("tun3", 13)].map(|(n, i)| (n.to_string(), i)),
            )
        };
        let build = built;
        let moved = endpoint("tun3", 4);
        let mut before = State::new();
        for (pod, wep) in [
            ("a", endpoint("tun1", 1)),
            ("b", endpoint("tun1", 2)),
            ("c", endpoint("tun2", 3)),
            ("d", Arc::clone(&moved)),
        ] {
            before.apply(Update::WorkloadUpdate(key(pod), wep)).unwrap();
        }
        let prev = build(before.clone(), &bindings(11));
        // Each case's updates, its changed names, and where VPP has tun1 then.
        let cases: [(Vec<Update>, &[&str], u32); 2] = [
            // Pod a changes; VPP now has tun1 at another index. Pod b, unchanged,
            // shares the name: it must move to the new index too.
            (
                vec![Update::WorkloadUpdate(key("a"), endpoint("tun1", 5))],
                &["tun1"],
                21,
            ),
            // Pod d's very object now under key e.
            (
                vec![
                    Update::WorkloadRemove(key("d")),
                    Update::WorkloadUpdate(key("e"), Arc::clone(&moved)),
                ],
                &["tun3"],
                11,
            ),
        ];
        for (k, (updates, changed, tun1)) in cases.into_iter().enumerate() {
            let mut next = before.clone();
            for u in updates {
                next.apply(u).unwrap();
            }
            let changed: HashSet<String> = changed.iter().map(|n| n.to_string()).collect();
            let bound = bindings(tun1);
            let after = Generation::interfaces_after(&prev, &next, "tap0", &changed, &bound)
                .expect("every unchanged endpoint has its entry");
            let again = build(next, &bound);
            assert_eq!(rows(&after.0.ifaces), rows(again.interfaces()), "case {k}");
            // Pod c's entry is the very one before.
            let find = |ifaces: &[Arc<Iface>]| ifaces.iter().find(|i| i.name == "tun2").cloned();
            assert!(
                find(&after.0.ifaces)
                    .zip(find(prev.interfaces()))
                    .is_some_and(|(a, b)| Arc::ptr_eq(&a, &b)),
                "case {k}"
            );
        }
    }

    /// What an agent is told after a delta, from the delta's record, for a pod's
    /// churn and for a delta sending every endpoint again (names looked up, not
    /// compared in turn): the endpoint new to VPP's interfaces, and the one gone;
    /// endpoints bound again where they were are not told.
    #[test]
    fn a_delta_record_tells_what_moved_for_few_and_many_endpoints() {
        use capo_policy::Update;
        let key = |n: u32| pod_key(&format!("pod{n}"));
        let endpoint = |n: u32, subnet: u8| tun_endpoint(&format!("tun{n}"), subnet, n as u8);
        let bindings = bound_by_name((0..=20u32).map(|n| (format!("tun{n}"), 100 + n)));
        let build = |state: State| built(state, &bindings);
        let mut before = State::new();
        for n in 1..=12 {
            before
                .apply(Update::WorkloadUpdate(key(n), endpoint(n, 0)))
                .unwrap();
        }
        let prev = build(before.clone());
        // Pod 3 leaves and pod 13 comes; with `again`, every other pod is sent again.
        for again in [false, true] {
            let mut next = before.clone();
            let mut changed: HashSet<String> = ["tun3", "tun13"].map(String::from).into();
            next.apply(Update::WorkloadRemove(key(3))).unwrap();
            next.apply(Update::WorkloadUpdate(key(13), endpoint(13, 0)))
                .unwrap();
            if again {
                for n in (1..=12).filter(|n| *n != 3) {
                    next.apply(Update::WorkloadUpdate(key(n), endpoint(n, 1)))
                        .unwrap();
                    changed.insert(format!("tun{n}"));
                }
            }
            let after = Generation::interfaces_after(&prev, &next, "tap0", &changed, &bindings)
                .expect("every unchanged endpoint has its entry");
            assert!(after.0.delta.is_some(), "again: {again}");
            let g = Generation::with_changed_interfaces(
                2,
                Arc::clone(&prev.snapshot),
                Arc::clone(&prev.classifier),
                after,
            );
            let changes = InterfacesSeen::of(&prev).changes(&g).unwrap();
            let names: Vec<&str> = changes.changed.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(names, ["tun13"], "again: {again}");
            assert_eq!(changes.gone, ["tun3"], "again: {again}");
        }
    }

    /// A delta planned from the changed entries alone gives the walk's table: the
    /// same endpoints to bind, the same entries in the same order, the same
    /// unknown names and the same changes told to an agent, and the table binding
    /// every endpoint again gives. Random states (names shared between pods and
    /// with host endpoints, names VPP lacks) and deltas of one to three updates.
    #[test]
    fn a_planned_delta_gives_the_walks_table() {
        use capo_policy::{HostEndpoint, HostEndpointKey, Update};
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut draw = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names: Vec<String> = (0..8)
            .map(|n| format!("tun{n}"))
            .chain(["tap0", "eth1"].map(String::from))
            .collect();
        let (mut planned, mut unplanned, mut unplaced) = (0, 0, 0);
        for case in 0..3_000 {
            let name = |draw: &mut dyn FnMut(u64) -> u64, pod: u64| {
                // Mostly a pod's own name, some another's, seldom the host's or a
                // host endpoint's.
                let pick = match draw(40) {
                    0..=31 => pod,
                    32..=37 => draw(8),
                    n => 8 + n % 2,
                };
                names.get(pick as usize).map_or("tun0", String::as_str)
            };
            let mut before = State::new();
            for pod in 0..6u32 {
                if draw(4) > 0 {
                    let wep = tun_endpoint(name(&mut draw, u64::from(pod)), 0, pod as u8 + 1);
                    let key = pod_key(&format!("pod{pod}"));
                    before.apply(Update::WorkloadUpdate(key, wep)).unwrap();
                }
            }
            if draw(3) == 0 {
                let hep = HostEndpoint {
                    name: name(&mut draw, 9).to_string(),
                    ..HostEndpoint::default()
                };
                let key = HostEndpointKey("hep".into());
                before.apply(Update::HostEndpointUpdate(key, hep)).unwrap();
            }
            // Where VPP has each name, before and after: some lacking, one moved.
            let bind = |draw: &mut dyn FnMut(u64) -> u64, moved: u32| {
                bound_by_name(
                    (names.iter().enumerate())
                        .filter(|_| draw(16) > 0)
                        .map(|(i, n)| (n.to_string(), 10 + i as u32 + moved)),
                )
            };
            let bound_before = bind(&mut draw, 0);
            let moved = draw(4) == 0;
            let bound_after = if moved {
                bind(&mut draw, 100)
            } else {
                bound_before.clone()
            };
            let prev = built(before.clone(), &bound_before);
            let mut updates = Vec::new();
            for _ in 0..=draw(3) / 2 {
                let pod = draw(8);
                let key = pod_key(&format!("pod{pod}"));
                updates.push(match draw(10) {
                    0..=2 => Update::WorkloadRemove(key),
                    9 => Update::HostEndpointRemove(HostEndpointKey("hep".into())),
                    n => {
                        Update::WorkloadUpdate(key, tun_endpoint(name(&mut draw, pod), 1, n as u8))
                    }
                });
            }
            let mut next = before.clone();
            for u in &updates {
                next.apply(u.clone()).unwrap();
            }
            let changed = crate::control::changed_endpoint_names(&updates, &before);
            let Some(plan) = Generation::plan_delta(&prev, &next, &changed, &updates) else {
                unplanned += 1;
                continue;
            };
            let walked: Vec<_> = policed(&next, "tap0")
                .filter(|p| changed.contains(p.name))
                .map(|p| (p.name.to_string(), p.kind.to_owned()))
                .collect();
            let from_plan: Vec<_> = plan
                .endpoints()
                .map(|p| (p.name.to_string(), p.kind.to_owned()))
                .collect();
            // In the walk's order: binding takes, of two endpoints with one name,
            // the later one's explicit binding.
            assert_eq!(from_plan, walked, "case {case}: {updates:?}");
            let Some(after) = Generation::interfaces_after_plan(&prev, &plan, &bound_after) else {
                unplaced += 1;
                continue;
            };
            planned += 1;
            let walk = Generation::interfaces_after(&prev, &next, "tap0", &changed, &bound_after)
                .expect("the walk places what the plan places");
            let entries =
                |t: &Policed| t.ifaces.iter().map(|f| Iface::clone(f)).collect::<Vec<_>>();
            assert_eq!(
                entries(&after.0),
                entries(&walk.0),
                "case {case}: {updates:?}"
            );
            // A delta keeps the others' bindings: binding again from scratch gives
            // the same table while VPP moved nothing.
            if !moved {
                let again = built(next.clone(), &bound_after);
                assert_eq!(entries(&after.0), entries(&again.policed), "case {case}");
            }
            assert_eq!(after.0.unknown, walk.0.unknown, "case {case}");
            assert_eq!(after.0.forwards_from, walk.0.forwards_from, "case {case}");
            let told = |ifaces: ChangedInterfaces| {
                let g = Generation::with_changed_interfaces(
                    2,
                    Arc::clone(&prev.snapshot),
                    Arc::clone(&prev.classifier),
                    ifaces,
                );
                let c = InterfacesSeen::of(&prev).changes(&g).unwrap();
                let changed: Vec<String> = c.changed.iter().map(|i| i.name.clone()).collect();
                (changed, c.gone, g.index_changes_from(&prev))
            };
            assert_eq!(told(after), told(walk), "case {case}: {updates:?}");
        }
        // Each way out taken, and most deltas planned.
        assert!(
            planned > 1_000,
            "{planned} planned, {unplanned} unplanned, {unplaced} unplaced"
        );
        assert!(
            unplanned > 100 && unplaced > 50,
            "{unplanned} unplanned, {unplaced} unplaced"
        );
    }
}
