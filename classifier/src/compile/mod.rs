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
//! - a policy or profile change overlays (or patches) the programs of the
//!   interfaces that use it where its rules keep their number (`patch`), and
//!   recompiles them otherwise; every other policy's rules come lowered from the
//!   builder's fragments, one per policy (or profile), tier and direction, whose
//!   deciders the programs share;
//! - an endpoint change recompiles that endpoint's interface (host endpoints and
//!   configuration: the host-facing and host-endpoint interfaces), and updates the
//!   virtual sets of local workload and host addresses.
//!
//! By concern: `index` keeps the atom registry and the address indexes, `deps`
//! which interfaces use which policies and profiles, `lower` turns rules, tiers and
//! profiles into rules over atoms in evaluation order, `iface` builds each kind of
//! interface's programs, `layout` lays a program's bitmaps and tables out (and
//! patches them), and `patch` finds the programs a policy or profile change can
//! overlay or patch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use capo_policy::ids::{Changed, InterfaceIndexes};
use capo_policy::{Applied, Cidr, Direction, IdTable, IpSetId, State, StateError, Update};

use crate::generation::{
    Entry, Generation, GenerationId, Iface, IfaceId, IfaceKind, IfaceMaps, SwIfIndexMap,
};
use crate::index::{AddrIndex, AtomId};
use crate::prefix::PrefixSource;

mod deps;
mod iface;
mod index;
mod layout;
mod listing;
mod lower;
mod patch;
mod shared;

pub use listing::ListChanges;
use listing::{Edit, Listing};
use patch::Owner;

pub(crate) use deps::PolicyFilter;
pub(crate) use lower::ProgSpec;

/// Maps and sets the compiler hashes names into on every update: `foldhash` (seeded
/// per map) is several times faster than SipHash on these short keys, which come
/// from Felix, not from traffic.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::quality::RandomState>;

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
    sets: FastMap<IpSetId, AtomId>,
    anon: FastMap<Vec<Cidr>, AtomId>,
    next_atom: AtomId,
    index: AddrIndex,
    virtual_members: [Vec<Cidr>; 2],
    /// Policies' and profiles' rules as lowered, shared between programs.
    fragments: lower::Fragments,
    /// Workload programs by the spec they were laid out from, for interfaces with
    /// the same spec to share.
    shared: shared::SharedPrograms,
    /// The internal rules each workload program starts with, per direction.
    preamble: [iface::Preamble; 2],
    ifaces: BTreeMap<IfaceKind, Arc<Iface>>,
    /// `ifaces` as the generations list them, with their programs and filters.
    listing: Listing,
    maps: Arc<IfaceMaps>,
    /// Each listed interface's index when the maps were made.
    list_sw: Vec<Option<u32>>,
    /// The ids' interface indexes `list_sw` was read from.
    indexes_seen: Option<InterfaceIndexes>,
    next_id: u64,
    members: usize,
    /// The non-host prefixes of each family (IPv4, IPv6) the index's tables are
    /// made from.
    prefixes: [PrefixSource; 2],
    current: Option<Arc<Generation>>,
    /// Tests: pad every program's bitmaps to at least this many words, so the
    /// wider code paths run on small random policies.
    min_words: usize,
    /// Interfaces whose programs a policy or profile change patched rather than
    /// compiled.
    patched: u64,
    /// Lists made anew from every compiled interface (tests check an endpoint's
    /// change edits the list instead).
    relisted: u64,
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

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        let mut builder = Builder {
            sets: FastMap::default(),
            anon: FastMap::default(),
            next_atom: FIRST_ATOM,
            index: AddrIndex::default(),
            virtual_members: [Vec::new(), Vec::new()],
            fragments: lower::Fragments::default(),
            shared: shared::SharedPrograms::default(),
            ifaces: BTreeMap::new(),
            listing: Listing::default(),
            maps: Arc::new(IfaceMaps::default()),
            list_sw: Vec::new(),
            indexes_seen: None,
            next_id: 1,
            members: 0,
            prefixes: [PrefixSource::new(32), PrefixSource::new(128)],
            current: None,
            min_words: 1,
            patched: 0,
            relisted: 0,
            preamble: [Arc::from([]), Arc::from([])],
        };
        builder.preamble = Direction::BOTH.map(|dir| builder.workload_preamble(dir));
        builder
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

    /// How many times a policy or profile change patched an interface's programs
    /// instead of compiling them again (tests check the patch path is the one
    /// taken).
    pub fn patched_interfaces(&self) -> u64 {
        self.patched
    }

    /// Rules the interfaces' programs hold in overlays rather than in their
    /// bitmaps (`crate::overlay`), summed over interfaces and directions: tests
    /// check which way an edit went.
    #[doc(hidden)]
    pub fn overlaid_rules(&self) -> usize {
        let overlaid = |e: &Entry| match e {
            Entry::Single(p) => p.overlay.as_ref().map_or(0, |o| o.rules.len()),
            _ => 0,
        };
        (self.ifaces.values())
            .map(|i| i.entries.iter().map(overlaid).sum::<usize>())
            .sum()
    }

    /// How the published interface list was changed since the last full compile
    /// (which restarts the counts): edits of a spare copy no generation held,
    /// copies, and spares [`Builder::settle`] brought forward. Tests check the
    /// plugin's path finds a free spare.
    pub fn interface_list_changes(&self) -> ListChanges {
        self.listing.counts()
    }

    /// The last generation built.
    pub fn current(&self) -> Option<&Arc<Generation>> {
        self.current.as_ref()
    }

    /// Work the last update left that no reply need wait for: the builder's spare
    /// copies of the interface list (up to two) are brought up to the published
    /// one where no generation holds them any more, so the interfaces and programs
    /// only they held are let go of now and the next endpoint or policy change
    /// edits one in place. Call it once the generations the last publish replaced
    /// are released; no verdict depends on it. A builder never settled keeps
    /// replaced interfaces (and their programs) until two more changes of the list,
    /// or a full compile. The programs that stopped being kept for endpoints made
    /// again are let go of here too (a builder never settled lets them go a few
    /// dozen at a time as more are retired), and the programs a policy edit made
    /// are filed for sharing (a builder never settled files them before its next
    /// look-up, or a thousand at a time).
    pub fn settle(&mut self) {
        self.listing.settle();
        self.shared.settle();
    }

    /// Compiles the whole state from scratch (the builder's previous contents are
    /// dropped, generation ids keep increasing).
    pub fn build(&mut self, state: &State, ids: &IdTable) -> Arc<Generation> {
        let (next_id, min_words) = (self.next_id, self.min_words);
        *self = Builder::new();
        self.next_id = next_id;
        self.min_words = min_words;
        self.load_index(state);
        self.sync_virtual(state);
        let kinds = IfaceKind::all(state);
        for kind in kinds {
            self.compile_iface(state, ids, kind);
        }
        self.relist(ids);
        self.publish()
    }

    /// Publishes the next generation with every interface at the `sw_if_index` `ids`
    /// gives it now (VPP created an endpoint's interface again under another index,
    /// or deleted it): the interface tables are redrawn, no program is compiled.
    pub fn reindex(&mut self, ids: &IdTable) -> Arc<Generation> {
        for iface in self.ifaces.values_mut() {
            let now = ids.interface(&iface.name);
            if iface.sw_if_index != now {
                let mut moved = Iface::clone(iface);
                moved.sw_if_index = now;
                *iface = Arc::new(moved);
            }
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
        // Whether the list is known to be the compiled interfaces after the branch.
        let mut listed = false;
        match &update {
            Update::IpSetDelta { id, added, removed } => {
                let (id, added, removed) = (id.clone(), added.clone(), removed.clone());
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                self.index_delta(&id, &added, &removed);
                listed = true;
            }
            Update::IpSetReplace { id, .. } | Update::IpSetRemove(id) => {
                let id = id.clone();
                let old = index::set_members(state, &id);
                let is_new = old.is_empty() && !state.ipsets().contains_key(&id);
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                let new = index::set_members(state, &id);
                self.index_replace(&id, &old, &new);
                if is_new || !state.ipsets().contains_key(&id) {
                    ids.sync_ipset(state, &id);
                }
                listed = true;
            }
            Update::PolicyUpdate(key, _) | Update::PolicyRemove(key) => {
                let key = key.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                let old = self.fragments.take(Owner::Policy(&key));
                ids.sync_after(state, Changed::Policy(&key));
                // A policy no endpoint names (just added, or removed) is in no program:
                // no interface needs asking.
                listed = !state.policy_is_used(&key)
                    || self.update_users(state, ids, Owner::Policy(&key), &old);
            }
            Update::ProfileUpdate(name, _) | Update::ProfileRemove(name) => {
                let name = name.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                let old = self.fragments.take(Owner::Profile(&name));
                ids.sync_after(state, Changed::Profile(&name));
                listed = self.update_users(state, ids, Owner::Profile(&name), &old);
            }
            Update::WorkloadUpdate(key, _) | Update::WorkloadRemove(key) => {
                let key = key.clone();
                let nets = |state: &State| -> Vec<Cidr> {
                    state
                        .workloads()
                        .get(&key)
                        .map(|w| w.nets().copied().collect())
                        .unwrap_or_default()
                };
                let old_nets = nets(state);
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync_after(state, Changed::Workload(&key));
                let kind = IfaceKind::Workload(key.clone());
                let old = self.ifaces.remove(&kind);
                self.compile_iface(state, ids, kind.clone());
                self.retire(old, &kind);
                // The list was the compiled interfaces as the update started (every
                // apply ends with them listed; a debug assertion checks it): only
                // this one's entry moves.
                self.relist_one(ids, &kind);
                listed = true;
                self.sync_workload_addrs(&old_nets, &nets(state));
                // Host programs choose between "from a workload" and not by atom, so
                // they need no recompile; the views' interface numbering may change.
            }
            Update::HostMetadataUpdate(host, _) | Update::HostMetadataRemove(host)
                if *host != state.config().hostname =>
            {
                // Another node's addresses: no program and no id depends on them
                // (only this node's own are the host's addresses).
                state.apply(update)?;
                return Ok(self.current_or_publish());
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
        // Where the branch did not put the interfaces it changed in the list, the
        // list is read anew if it differs.
        if !listed && self.list_is_stale() {
            self.relist(ids);
        }
        debug_assert!(!self.list_is_stale(), "the list is the compiled interfaces");
        Ok(self.publish())
    }

    /// Whether the published interface list differs from the compiled interfaces.
    fn list_is_stale(&self) -> bool {
        let list = self.listing.ifaces();
        self.ifaces.len() != list.len()
            || list
                .iter()
                .zip(self.ifaces.values())
                .any(|(a, b)| !Arc::ptr_eq(a, b))
    }

    fn current_or_publish(&mut self) -> Arc<Generation> {
        match &self.current {
            Some(g) => g.clone(),
            None => self.publish(),
        }
    }

    fn publish(&mut self) -> Arc<Generation> {
        self.update_prefix_tables();
        let g = Arc::new(Generation {
            id: GenerationId(self.next_id),
            index: self.index.clone(),
            ifaces: self.listing.ifaces().clone(),
            direct: self.listing.direct().clone(),
            maps: self.maps.clone(),
            members: self.members,
        });
        self.next_id += 1;
        self.current = Some(g.clone());
        g
    }

    /// The list made anew from the compiled interfaces.
    fn relist(&mut self, ids: &IdTable) {
        self.relisted += 1;
        let list: Vec<Arc<Iface>> = self.ifaces.values().cloned().collect();
        let old = self.listing.ifaces().clone();
        let same_names = list.len() == old.len()
            && list
                .iter()
                .zip(old.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.name == b.name);
        let change = if same_names {
            None
        } else {
            one_change(&old, &list)
        };
        self.listing.reset(list);
        self.relist_indexes(ids, &old, same_names, change);
    }

    /// The list after `kind`'s interface alone was compiled, removed, or both,
    /// from a list that was the compiled interfaces before: edited at the
    /// interface's position (found by kind, the list's order), not made anew.
    fn relist_one(&mut self, ids: &IdTable, kind: &IfaceKind) {
        let old = self.listing.ifaces().clone();
        let now = self.ifaces.get(kind);
        let (edit, same_names, change) = match (old.binary_search_by(|i| i.kind.cmp(kind)), now) {
            (Ok(at), Some(iface)) => {
                if Arc::ptr_eq(&old[at], iface) {
                    return;
                }
                let same = old[at].name == iface.name;
                (Edit::Set(at, iface.clone()), same, None)
            }
            (Ok(at), None) => (Edit::Remove(at), false, Some(OneChange::Removed(at))),
            (Err(at), Some(iface)) => (
                Edit::Insert(at, iface.clone()),
                false,
                Some(OneChange::Added(at)),
            ),
            (Err(_), None) => return,
        };
        if !self.listing.edit(vec![edit]) {
            return self.relist(ids);
        }
        self.relist_indexes(ids, &old, same_names, change);
    }

    /// The indexes and maps of the list just made from `old`: kept where the names
    /// and indexes are, followed where one interface came or went (`change`),
    /// looked up otherwise.
    fn relist_indexes(
        &mut self,
        ids: &IdTable,
        old: &[Arc<Iface>],
        same_names: bool,
        change: Option<OneChange>,
    ) {
        let list = self.listing.ifaces().clone();
        // Each position's index as the ids have it now: an index fixed since the last
        // relist (`set_interface_index`) moves its interface in the maps. Same names
        // and no index changed: the last relist's.
        let indexes = ids.interface_indexes();
        let unchanged = same_names
            && self
                .indexes_seen
                .as_ref()
                .is_some_and(|seen| seen.same_as(&indexes));
        let sw: Vec<Option<u32>> = if unchanged {
            self.list_sw.clone()
        } else {
            self.indexes_patched(&list, old, ids, same_names, change)
                .unwrap_or_else(|| list.iter().map(|i| ids.interface(&i.name)).collect())
        };
        self.indexes_seen = Some(indexes);
        // The maps name positions: they stand when only programs changed (a policy
        // update). Otherwise the index table is rebuilt from `sw` (integers only) and
        // the names follow one interface added or removed without a sort.
        if !(same_names && sw == self.list_sw) {
            let (by_name, names_unique) = if same_names {
                (self.maps.by_name.clone(), self.maps.names_unique)
            } else {
                match change.and_then(|c| self.names_after_one_change(&list, c)) {
                    Some(by_name) => (by_name, true),
                    None => Self::names_of(&list),
                }
            };
            self.maps = Arc::new(IfaceMaps {
                by_name,
                names_unique,
                by_sw_if_index: by_index(&sw),
            });
        }
        self.list_sw = sw;
    }

    /// Puts patched interfaces (each with its position) in the published list, as a
    /// relist would: the same names and indexes, other programs. Only while the
    /// ids' indexes are the ones the list was read with; otherwise the list is left
    /// stale, for a relist to read them. True when the list is the interfaces'.
    pub(super) fn replace_listed(
        &mut self,
        ids: &IdTable,
        patched: Vec<(usize, Arc<Iface>)>,
    ) -> bool {
        let indexes_kept = self
            .indexes_seen
            .as_ref()
            .is_some_and(|seen| seen.same_as(&ids.interface_indexes()));
        if !indexes_kept {
            return false;
        }
        let edits = patched
            .into_iter()
            .map(|(at, iface)| Edit::Set(at, iface))
            .collect();
        // A position out of the list leaves it stale, for the relist to follow.
        self.listing.edit(edits)
    }

    /// `list`'s indexes from the last relist's, when the list kept its names (or
    /// took `change`) and the ids remember which names they set since: only the
    /// interface added and those names are looked up (an endpoint added looked up
    /// all of its hundreds of neighbours again).
    fn indexes_patched(
        &self,
        list: &[Arc<Iface>],
        old: &[Arc<Iface>],
        ids: &IdTable,
        same_names: bool,
        change: Option<OneChange>,
    ) -> Option<Vec<Option<u32>>> {
        let set = ids.interfaces_set_since(self.indexes_seen.as_ref()?)?;
        let mut sw = self.list_sw.clone();
        let mut added = None;
        match change {
            _ if same_names => {}
            Some(OneChange::Added(at)) if at <= sw.len() => {
                let name = &list.get(at)?.name;
                sw.insert(at, ids.interface(name));
                added = Some(name.as_str());
            }
            Some(OneChange::Removed(at)) if at < sw.len() => {
                sw.remove(at);
            }
            _ => return None,
        }
        // The added interface's own entry is fresh; another entry of its name (a name
        // two endpoints share) is not, if the old list had one.
        let in_old = |name: &str| {
            !is_named_str(name) || search_by_name(&self.maps.by_name, old, name).is_ok()
        };
        for name in set.filter(|n| Some(*n) != added || in_old(n)) {
            for (i, iface) in list.iter().enumerate() {
                if iface.name == name {
                    *sw.get_mut(i)? = ids.interface(name);
                }
            }
        }
        Some(sw)
    }

    /// The maps' names for `list` when it is the published list with one interface
    /// added or removed (`change`), and every name is unique.
    fn names_after_one_change(
        &self,
        list: &[Arc<Iface>],
        change: OneChange,
    ) -> Option<Vec<IfaceId>> {
        if !self.maps.names_unique {
            return None;
        }
        let mut by_name = self.maps.by_name.clone();
        match change {
            OneChange::Added(p) => {
                for id in &mut by_name {
                    if id.0 as usize >= p {
                        id.0 += 1;
                    }
                }
                let added = list.get(p)?;
                if is_named(added) {
                    let at = search_by_name(&by_name, list, &added.name).err()?;
                    by_name.insert(at, IfaceId(p as u32));
                }
            }
            OneChange::Removed(p) => {
                by_name.retain(|id| id.0 as usize != p);
                for id in &mut by_name {
                    if id.0 as usize > p {
                        id.0 -= 1;
                    }
                }
            }
        }
        Some(by_name)
    }

    /// Named interfaces sorted by name, and whether every name is unique (of two
    /// interfaces of one name, the later in list order is kept, as the later of two
    /// insertions into a map by name won).
    fn names_of(list: &[Arc<Iface>]) -> (Vec<IfaceId>, bool) {
        let mut by_name: Vec<IfaceId> = (0..list.len() as u32)
            .map(IfaceId)
            .filter(|id| list.get(id.0 as usize).is_some_and(|i| is_named(i)))
            .collect();
        let name = |id: &IfaceId| list.get(id.0 as usize).map(|i| i.name.as_str());
        by_name.sort_unstable_by(|a, b| name(a).cmp(&name(b)).then(b.0.cmp(&a.0)));
        let named = by_name.len();
        by_name.dedup_by(|later, kept| name(later) == name(kept));
        let unique = by_name.len() == named;
        (by_name, unique)
    }
}

/// Each position by its index (of two positions with one index, the later).
fn by_index(sw: &[Option<u32>]) -> SwIfIndexMap<IfaceId> {
    let mut map = SwIfIndexMap::for_indexes(sw.iter().flatten().copied());
    for (i, sw) in sw.iter().enumerate() {
        if let Some(sw) = sw {
            map.insert(*sw, IfaceId(i as u32));
        }
    }
    map
}

/// How a list differs from the one before it by a single interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OneChange {
    /// An interface inserted at this position.
    Added(usize),
    /// The interface at this position removed.
    Removed(usize),
}

/// Whether `list` is `old` with one interface added or removed (the others the same
/// ones, by identity or name, in the same order), and where.
fn one_change(old: &[Arc<Iface>], list: &[Arc<Iface>]) -> Option<OneChange> {
    let same = |a: &Arc<Iface>, b: &Arc<Iface>| Arc::ptr_eq(a, b) || a.name == b.name;
    let (short, long) = if list.len() > old.len() {
        (old, list)
    } else {
        (list, old)
    };
    if long.len() != short.len() + 1 {
        return None;
    }
    let p = short
        .iter()
        .zip(long)
        .position(|(a, b)| !same(a, b))
        .unwrap_or(short.len());
    let rest_same = short
        .get(p..)?
        .iter()
        .zip(long.get(p + 1..)?)
        .all(|(a, b)| same(a, b));
    match (rest_same, list.len() > old.len()) {
        (false, _) => None,
        (true, true) => Some(OneChange::Added(p)),
        (true, false) => Some(OneChange::Removed(p)),
    }
}

/// Where `name` is (or would go) in `by_name`, the named interfaces of `list` sorted
/// by name.
fn search_by_name(by_name: &[IfaceId], list: &[Arc<Iface>], name: &str) -> Result<usize, usize> {
    by_name.binary_search_by(|id| {
        list.get(id.0 as usize)
            .map(|i| i.name.as_str())
            .cmp(&Some(name))
    })
}

/// Whether the maps list an interface by name (`*` names every interface).
fn is_named(i: &Iface) -> bool {
    is_named_str(&i.name)
}

/// [`is_named`] for a name.
fn is_named_str(name: &str) -> bool {
    !name.is_empty() && name != "*"
}

#[cfg(test)]
mod tests {
    use super::listing::direct_programs;
    use super::*;
    use crate::program::Program;
    use capo_policy::{WorkloadEndpoint, WorkloadKey};

    /// Each listed interface's index, looked up.
    fn looked_up(b: &Builder, ids: &IdTable) -> Vec<Option<u32>> {
        b.listing
            .ifaces()
            .iter()
            .map(|i| ids.interface(&i.name))
            .collect()
    }

    /// The maps as a full rebuild makes them from the published list.
    fn rebuilt(b: &Builder, ids: &IdTable) -> IfaceMaps {
        let (by_name, names_unique) = Builder::names_of(b.listing.ifaces());
        let sw = looked_up(b, ids);
        IfaceMaps {
            by_name,
            names_unique,
            by_sw_if_index: by_index(&sw),
        }
    }

    /// Endpoints come, go, move address, share a name now and then, and get their
    /// indexes fixed: after every update the maps are what a full rebuild gives, and
    /// every uniquely named interface is found by its name. The list is edited in
    /// place (on the builder's spare copy) or on a copy, as old generations are
    /// held or let go of: every generation keeps the list it was published with,
    /// and the builder's list, program table and filters are the interfaces'.
    #[test]
    fn interface_maps_follow_endpoint_churn_as_a_full_rebuild() {
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::new();
        let mut present = std::collections::BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut incremental = 0;
        // Generations still held, with the interfaces and programs each was
        // published with.
        type Listed = (Vec<*const Iface>, Vec<[Option<*const Program>; 2]>);
        let listed = |g: &Generation| -> Listed {
            let ptr = |p: &Option<Arc<Program>>| p.as_ref().map(Arc::as_ptr);
            (
                g.ifaces.iter().map(Arc::as_ptr).collect(),
                g.direct.iter().map(|[i, e]| [ptr(i), ptr(e)]).collect(),
            )
        };
        let mut held: std::collections::VecDeque<(Arc<Generation>, Listed)> =
            std::collections::VecDeque::new();
        for step in 0..600u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 40) as u32;
            let key = WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/pod{n}"),
                endpoint: "eth0".into(),
            };
            let update = if present.contains(&n) && (x >> 20) % 3 == 0 {
                present.remove(&n);
                Update::WorkloadRemove(key)
            } else {
                present.insert(n);
                let name = if (x >> 30) % 32 == 0 {
                    "shared".to_string()
                } else {
                    format!("tun{n}")
                };
                let addr = std::net::IpAddr::from([10, 0, (step >> 8) as u8, step as u8]);
                Update::WorkloadUpdate(
                    key,
                    WorkloadEndpoint {
                        name,
                        profile_ids: vec![],
                        ipv4_nets: vec![Cidr::host(addr)],
                        ipv6_nets: vec![],
                        tiers: vec![],
                    }
                    .into(),
                )
            };
            let unique_before = b.maps.names_unique;
            let g = b.apply(&mut state, &mut ids, update).unwrap();
            assert!(
                !b.list_is_stale(),
                "step {step}: the list is the compiled interfaces"
            );
            assert!(
                b.listing.consistent(),
                "step {step}: table and filters follow the list"
            );
            assert!(b.listing.spares_replay_to_current(), "step {step}");
            for (old, was) in &held {
                assert!(
                    listed(old) == *was,
                    "step {step}: a held generation's list changed"
                );
            }
            // Some generations held across later updates (as a worker still
            // classifying with one does), some let go of; now and then the
            // builder settles between updates.
            match (x >> 40) % 4 {
                0 => held.push_back((g.clone(), listed(&g))),
                1 => held.clear(),
                _ => {}
            }
            if held.len() > 3 {
                held.pop_front();
            }
            if (x >> 44) % 3 == 0 {
                b.settle();
            }
            assert_eq!(*b.maps, rebuilt(&b, &ids), "step {step}");
            assert_eq!(b.list_sw, looked_up(&b, &ids), "step {step}");
            incremental += usize::from(unique_before && b.maps.names_unique);
            for (i, iface) in b.listing.ifaces().iter().enumerate() {
                if b.maps.names_unique {
                    assert_eq!(g.interface(&iface.name), Some(IfaceId(i as u32)));
                }
                assert_eq!(g.interface_of(&iface.kind), Some(IfaceId(i as u32)));
            }
            // Indexes fixed between updates (VPP's, as the plugin binds them): of
            // this endpoint, of another, or of two (beyond what the ids remember
            // when many pile up).
            if step % 37 == 0 {
                ids.set_interface_index(&format!("tun{n}"), 1_000 + step);
            }
            if step % 5 == 0 {
                ids.set_interface_index(&format!("tun{}", (n + 7) % 40), 2_000 + step);
            }
            if step % 97 == 0 {
                for k in 0..12 {
                    ids.set_interface_index(&format!("tun{k}"), 3_000 + step + k);
                }
            }
            // The name two endpoints may share: its index moves under the one
            // listed while the other comes.
            if step % 3 == 0 {
                ids.set_interface_index("shared", 4_000 + step);
            }
        }
        // Most updates meet unique names, where the names are updated in place.
        assert!(
            incremental > 300,
            "names unique around {incremental} updates of 600"
        );
        // Every endpoint's change edited the list; only the first made it.
        assert_eq!(b.relisted, 1, "lists made anew");
        let ListChanges {
            on_spare, copied, ..
        } = b.listing.counts();
        assert!(
            on_spare > 200 && copied > 20,
            "changes on the spare {on_spare}, on a copy {copied}"
        );
    }

    /// A policy change that patches every program listing it puts the patched
    /// interfaces in the published list where they were, with their programs in
    /// the per-direction table the classifier prefetches from: what a relist gives.
    #[test]
    fn patched_interfaces_replace_their_list_entries_in_place() {
        use capo_policy::{
            Action, Policy, PolicyKey, PortRange, Protocol, Rule, TierDefault, TierInfo,
        };
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::new();
        let pkey = PolicyKey {
            kind: "NetworkPolicy".into(),
            namespace: "ns".into(),
            name: "web".into(),
        };
        let policy = |port: u16| {
            let mut allow = Rule::any(Action::Allow);
            allow.protocol = Some(Protocol::TCP);
            allow.dst.ports = vec![PortRange::single(port)];
            Update::PolicyUpdate(
                pkey.clone(),
                Policy {
                    inbound: vec![allow],
                    outbound: vec![],
                    untracked: false,
                    pre_dnat: false,
                    tier: "t1".into(),
                }
                .into(),
            )
        };
        b.apply(&mut state, &mut ids, policy(80)).unwrap();
        for n in 0..4u8 {
            let key = WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/pod{n}"),
                endpoint: "eth0".into(),
            };
            // Pods 0 and 1 list the policy inbound, 2 and 3 both ways: two specs
            // a direction, each program shared by two interfaces.
            let endpoint = WorkloadEndpoint {
                name: format!("tun{n}"),
                profile_ids: vec![],
                ipv4_nets: vec![Cidr::host(std::net::IpAddr::from([10, 0, 0, n + 1]))],
                ipv6_nets: vec![],
                tiers: vec![TierInfo {
                    name: "t1".into(),
                    ingress: vec![pkey.clone()],
                    egress: if n < 2 { vec![] } else { vec![pkey.clone()] },
                    default_action: TierDefault::Deny,
                }],
            };
            b.apply(
                &mut state,
                &mut ids,
                Update::WorkloadUpdate(key, endpoint.into()),
            )
            .unwrap();
        }
        // Unlike specs (one direction's program differs) hold the same internal
        // rules, the builder's, not copies made per endpoint.
        for d in 0..2 {
            let firsts: Vec<Arc<lower::Fragment>> = (b.ifaces.values())
                .filter(|i| matches!(i.kind, IfaceKind::Workload(_)))
                .filter_map(|i| i.specs.get(d)?.as_ref()?.fragments().next().cloned())
                .collect();
            assert_eq!(firsts.len(), 4);
            assert!(firsts.iter().all(|f| Arc::ptr_eq(f, &firsts[0])), "{d}");
        }
        for port in [443, 8080, 80] {
            let before = b.current().unwrap().clone();
            let patched = b.patched;
            let g = b.apply(&mut state, &mut ids, policy(port)).unwrap();
            assert_eq!(b.patched, patched + 4, "every interface patched");
            assert!(!b.list_is_stale(), "the list is the map's");
            assert!(!Arc::ptr_eq(&before.ifaces, &g.ifaces), "a new list");
            for (i, iface) in g.ifaces.iter().enumerate() {
                let want = direct_programs(iface);
                let got = &g.direct[i];
                for d in 0..2 {
                    match (&got[d], &want[d]) {
                        (Some(x), Some(y)) => assert!(Arc::ptr_eq(x, y), "{i} {d}"),
                        (None, None) => {}
                        _ => panic!("{i} {d}: a direction gained or lost its program"),
                    }
                }
            }
            // The generation before keeps its own entries; the host's is shared.
            for (old, new) in before.ifaces.iter().zip(g.ifaces.iter()) {
                let workload = matches!(new.kind, IfaceKind::Workload(_));
                assert_eq!(Arc::ptr_eq(old, new), !workload, "{}", new.name);
            }
        }
    }

    /// Policy `key` in tier `t1`: one inbound rule allowing destination port `port`.
    fn allow_port_in_t1(key: &capo_policy::PolicyKey, port: u16) -> Update {
        use capo_policy::{Action, Policy, PortRange, Rule};
        let mut allow = Rule::any(Action::Allow);
        allow.dst.ports = vec![PortRange::single(port)];
        let p = Policy {
            inbound: vec![allow],
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "t1".into(),
        };
        Update::PolicyUpdate(key.clone(), p.into())
    }

    /// A staged policy's change leaves the endpoints of its enforced twin (the same
    /// namespace and name) as they are: the two do not share an owner hash, though
    /// `PolicyKey`'s own hash leaves the kind out.
    #[test]
    fn a_staged_policys_change_leaves_its_enforced_twins_users_alone() {
        use capo_policy::{PolicyKey, TierDefault, TierInfo};
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::new();
        let key = |kind: &str| PolicyKey {
            kind: kind.into(),
            namespace: "ns".into(),
            name: "web".into(),
        };
        let (enforced, staged) = (key("NetworkPolicy"), key("StagedNetworkPolicy"));
        b.apply(&mut state, &mut ids, allow_port_in_t1(&enforced, 80))
            .unwrap();
        b.apply(&mut state, &mut ids, allow_port_in_t1(&staged, 81))
            .unwrap();
        let wkey = WorkloadKey {
            orchestrator: "k8s".into(),
            workload: "ns/pod".into(),
            endpoint: "eth0".into(),
        };
        let wep = WorkloadEndpoint {
            name: "tun0".into(),
            profile_ids: vec![],
            ipv4_nets: vec![Cidr::host(std::net::IpAddr::from([10, 0, 2, 1]))],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "t1".into(),
                ingress: vec![staged.clone(), enforced.clone()],
                egress: vec![],
                default_action: TierDefault::Deny,
            }],
        };
        b.apply(
            &mut state,
            &mut ids,
            Update::WorkloadUpdate(wkey.clone(), wep.into()),
        )
        .unwrap();
        let kind = IfaceKind::Workload(wkey);
        let before = Arc::clone(b.ifaces.get(&kind).unwrap());
        b.apply(&mut state, &mut ids, allow_port_in_t1(&staged, 82))
            .unwrap();
        assert!(
            Arc::ptr_eq(&before, b.ifaces.get(&kind).unwrap()),
            "left alone"
        );
        // The enforced one's change still reaches it.
        b.apply(&mut state, &mut ids, allow_port_in_t1(&enforced, 83))
            .unwrap();
        assert!(
            !Arc::ptr_eq(&before, b.ifaces.get(&kind).unwrap()),
            "patched"
        );
    }

    /// A pod deleted and made again with the same policies (a restart) gets the
    /// programs laid out for it before, even once the builder settled and no
    /// generation holds them, until enough other endpoints went since.
    #[test]
    fn an_endpoint_made_again_finds_its_programs_still_laid_out() {
        use capo_policy::{PolicyKey, TierDefault, TierInfo};
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::new();
        let endpoint = |n: usize| {
            let key = WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/pod{n}"),
                endpoint: "eth0".into(),
            };
            // Each pod its own policy: no other endpoint shares its programs.
            let policy = PolicyKey {
                kind: "NetworkPolicy".into(),
                namespace: "ns".into(),
                name: format!("p{n}").into(),
            };
            let wep = WorkloadEndpoint {
                name: format!("tun{n}"),
                profile_ids: vec![],
                ipv4_nets: vec![Cidr::host(std::net::IpAddr::from([10, 0, 1, n as u8]))],
                ipv6_nets: vec![],
                tiers: vec![TierInfo {
                    name: "t1".into(),
                    ingress: vec![policy.clone()],
                    egress: vec![],
                    default_action: TierDefault::Deny,
                }],
            };
            (key, wep, policy)
        };
        let programs = |b: &Builder, key: &WorkloadKey| -> Vec<Arc<Program>> {
            let iface = b.ifaces.get(&IfaceKind::Workload(key.clone())).unwrap();
            (iface.entries.iter())
                .filter_map(|e| match e {
                    Entry::Single(p) => Some(Arc::clone(p)),
                    _ => None,
                })
                .collect()
        };
        let pods = shared::RETIRED_KEPT + 2;
        for n in 0..pods {
            let (key, wep, policy) = endpoint(n);
            let p = allow_port_in_t1(&policy, 1_000 + n as u16);
            b.apply(&mut state, &mut ids, p).unwrap();
            b.apply(
                &mut state,
                &mut ids,
                Update::WorkloadUpdate(key, wep.into()),
            )
            .unwrap();
        }
        // An endpoint changed without changing its programs (another address)
        // retires nothing.
        let (key, mut wep, _) = endpoint(1);
        wep.ipv4_nets = vec![Cidr::host(std::net::IpAddr::from([10, 0, 3, 1]))];
        b.apply(
            &mut state,
            &mut ids,
            Update::WorkloadUpdate(key, wep.into()),
        )
        .unwrap();
        assert_eq!(b.shared.retired_count(), 0);
        // Its ingress program, its own (every pod's egress program is the same).
        let (first, _, _) = endpoint(0);
        let before = programs(&b, &first);
        let weak: Vec<_> = before.iter().take(1).map(Arc::downgrade).collect();
        drop(before);
        let remove = |b: &mut Builder, state: &mut State, ids: &mut IdTable, n: usize| {
            let (key, _, _) = endpoint(n);
            b.apply(state, ids, Update::WorkloadRemove(key)).unwrap();
            b.settle();
            b.settle();
        };
        remove(&mut b, &mut state, &mut ids, 0);
        assert!(weak.iter().all(|w| w.strong_count() > 0), "kept");
        let (key, wep, _) = endpoint(0);
        b.apply(
            &mut state,
            &mut ids,
            Update::WorkloadUpdate(key.clone(), wep.into()),
        )
        .unwrap();
        let again = programs(&b, &key);
        assert_eq!((again.len(), weak.len()), (2, 1));
        for (p, w) in again.iter().zip(&weak) {
            assert!(std::ptr::eq(Arc::as_ptr(p), w.as_ptr()), "the same program");
        }
        drop(again);
        // Removed again, then enough others after it: its programs are let go of.
        remove(&mut b, &mut state, &mut ids, 0);
        for n in 1..pods {
            remove(&mut b, &mut state, &mut ids, n);
        }
        assert!(weak.iter().all(|w| w.strong_count() == 0), "let go of");
    }

    /// An interface VPP created again under another index is found there after a
    /// re-index, and nowhere else; the maps are a full rebuild's; every program is
    /// the one before (nothing compiled), so packets get the same decisions.
    #[test]
    fn reindex_moves_interfaces_and_compiles_nothing() {
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::new();
        let key = |n: u32| WorkloadKey {
            orchestrator: "k8s".into(),
            workload: format!("ns/pod{n}"),
            endpoint: "eth0".into(),
        };
        for n in 0..3u32 {
            let endpoint = WorkloadEndpoint {
                name: format!("tun{n}"),
                profile_ids: vec![],
                ipv4_nets: vec![Cidr::host(std::net::IpAddr::from([10, 0, 0, n as u8 + 1]))],
                ipv6_nets: vec![],
                tiers: vec![],
            };
            b.apply(
                &mut state,
                &mut ids,
                Update::WorkloadUpdate(key(n), endpoint.into()),
            )
            .unwrap();
        }
        let before = b.current().unwrap().clone();
        let old = ids.interface("tun1").unwrap();
        ids.set_interface_index("tun1", 500);
        let after = b.reindex(&ids);
        assert!(after.id() > before.id());
        assert_eq!(*b.maps, rebuilt(&b, &ids));
        let tun1 = after.interface("tun1").unwrap();
        assert_eq!(after.interface_by_sw_if_index(500), Some(tun1));
        assert_eq!(after.interface_by_sw_if_index(old), None);
        assert_eq!(after.interface_info(tun1).map(|i| i.2), Some(Some(500)));
        for n in [0, 2] {
            let name = format!("tun{n}");
            let sw = ids.interface(&name).unwrap();
            assert_eq!(after.interface_by_sw_if_index(sw), after.interface(&name));
        }
        // The same programs, direction by direction: nothing was compiled.
        assert_eq!(before.direct.len(), after.direct.len());
        for (a, z) in before.direct.iter().zip(after.direct.iter()) {
            for (p, q) in a.iter().zip(z) {
                match (p, q) {
                    (Some(p), Some(q)) => assert!(Arc::ptr_eq(p, q)),
                    (None, None) => {}
                    _ => panic!("a direction gained or lost its program"),
                }
            }
        }
    }
}
