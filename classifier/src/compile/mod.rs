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
//!
//! By concern: `index` keeps the atom registry and the address indexes, `deps`
//! which interfaces use which policies and profiles, `lower` turns rules, tiers and
//! profiles into rules over atoms in evaluation order, `iface` builds each kind of
//! interface's programs, and `layout` lays a program's bitmaps and tables out in
//! one arena.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use capo_policy::ids::Changed;
use capo_policy::{Applied, Cidr, IdTable, IpSetId, State, StateError, Update};

use crate::generation::{Entry, Generation, GenerationId, Iface, IfaceId, IfaceKind, IfaceMaps};
use crate::index::{AddrIndex, AtomId};
use crate::prefix::PrefixSource;
use crate::program::Program;

mod deps;
mod iface;
mod index;
mod layout;
mod lower;

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
    /// The non-host prefixes of each family (IPv4, IPv6) the index's tables are
    /// made from.
    prefixes: [PrefixSource; 2],
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
            prefixes: [PrefixSource::new(32), PrefixSource::new(128)],
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
        self.load_index(state);
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
                self.index_delta(&id, &added, &removed);
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
                    ids.sync(state);
                }
            }
            Update::PolicyUpdate(key, _) | Update::PolicyRemove(key) => {
                let key = key.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync_after(state, Changed::Policy(&key));
                self.recompile_dependents(state, ids, |i| i.policies.contains(&key));
            }
            Update::ProfileUpdate(name, _) | Update::ProfileRemove(name) => {
                let name = name.clone();
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync_after(state, Changed::Profile(&name));
                self.recompile_dependents(state, ids, |i| i.profiles.contains(&name));
            }
            Update::WorkloadUpdate(key, _) | Update::WorkloadRemove(key) => {
                let kind = IfaceKind::Workload(key.clone());
                if state.apply(update)? == Applied::Unchanged {
                    return Ok(self.current_or_publish());
                }
                ids.sync_after(state, Changed::Workloads);
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
        if self.list_is_stale() {
            self.relist(ids);
        }
        Ok(self.publish())
    }

    /// Whether the published interface list differs from the compiled interfaces.
    fn list_is_stale(&self) -> bool {
        self.ifaces.len() != self.list.len()
            || self
                .list
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
        // The maps name positions: when every position holds the same interface
        // with the index the maps have for it (only programs changed, as after a
        // policy update), they stand.
        let same_positions = list.len() == self.list.len()
            && list
                .iter()
                .zip(self.list.iter())
                .enumerate()
                .all(|(i, (a, b))| {
                    a.kind == b.kind
                        && a.name == b.name
                        && ids.interface(&a.name).is_none_or(|sw| {
                            self.maps.by_sw_if_index.get(sw) == Some(IfaceId(i as u32))
                        })
                });
        if !same_positions {
            self.maps = Arc::new(Self::maps_of(&list, ids));
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
    }

    /// Interface ids by name, kind and VPP `sw_if_index`.
    fn maps_of(list: &[Arc<Iface>], ids: &IdTable) -> IfaceMaps {
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
        maps
    }
}
