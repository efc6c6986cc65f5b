//! Generations: immutable compiled snapshots, and the cell workers read them from.
//!
//! A [`Generation`] is never changed once published. Parts that an update does not
//! touch (programs of other interfaces, index leaves of other addresses) are shared
//! with the previous generation through `Arc`s, so an update costs what it changes.
//!
//! [`GenerationCell`] publishes generations with `arc-swap`: readers load the
//! current one without taking a lock (a few atomic operations, no syscalls), and a
//! generation is freed when the last reader holding it lets go — so the old and new
//! generations are both resident while workers move over.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use capo_policy::{Direction, HostEndpointKey, Packet, WorkloadKey};

use crate::index::{AddrIndex, AddrKey, AtomId};
use crate::program::{Decision, Program, Scratch};

/// A generation's id: strictly increasing across the life of a [`crate::Builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GenerationId(pub u64);

/// An interface within one generation (an index into its interface table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfaceId(pub(crate) u32);

impl IfaceId {
    /// The raw index, for use as a table key within one generation.
    pub fn index(self) -> u32 {
        self.0
    }
}

/// What an interface is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IfaceKind {
    /// A local workload's interface: ingress is towards the workload.
    Workload(WorkloadKey),
    /// The host-facing interface: ingress is towards the host.
    Host,
    /// A host endpoint's interface, for forwarded traffic: ingress is arriving.
    Forward(HostEndpointKey),
}

impl IfaceKind {
    /// Every interface `state` defines: each workload, the host, each host endpoint.
    pub fn all(state: &capo_policy::State) -> Vec<IfaceKind> {
        let mut kinds: Vec<IfaceKind> = state
            .workloads()
            .keys()
            .map(|k| IfaceKind::Workload(k.clone()))
            .collect();
        kinds.push(IfaceKind::Host);
        kinds.extend(
            state
                .host_endpoints()
                .keys()
                .map(|k| IfaceKind::Forward(k.clone())),
        );
        kinds
    }

    /// The reference evaluator's outcome for `pkt` here (the specification every
    /// compiled program is checked against); `None` for an interface `state` lacks.
    pub fn reference(
        &self,
        state: &capo_policy::State,
        dir: Direction,
        pkt: &Packet,
    ) -> Option<capo_policy::Outcome> {
        use capo_policy::eval::{evaluate_forward, evaluate_host, evaluate_workload};
        match self {
            IfaceKind::Workload(k) => evaluate_workload(state, k, dir, pkt),
            IfaceKind::Host => Some(evaluate_host(state, dir, pkt)),
            IfaceKind::Forward(k) => state
                .host_endpoints()
                .get(k)
                .map(|h| evaluate_forward(state, h, dir, pkt)),
        }
    }
}

/// One direction's compiled program(s).
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// One program.
    Single(Arc<Program>),
    /// Host ingress: a different program for packets from local workloads.
    BySrcAtom {
        atom: AtomId,
        member: Arc<Program>,
        other: Arc<Program>,
    },
}

/// One interface's programs.
#[derive(Debug, Clone)]
pub(crate) struct Iface {
    pub(crate) name: String,
    pub(crate) kind: IfaceKind,
    pub(crate) sw_if_index: Option<u32>,
    /// `[ingress, egress]`.
    pub(crate) entries: [Entry; 2],
    /// What each `Entry::Single` program was laid out from, where a policy change
    /// may patch it (workloads' programs).
    pub(crate) specs: [Option<Arc<crate::compile::ProgSpec>>; 2],
    /// The policies and profiles the programs were compiled from, by hash (an
    /// update asks every interface whether it uses the changed one; shared by the
    /// interface's patched versions).
    pub(crate) owners: Arc<crate::compile::FastSet<u64>>,
    pub(crate) policy_filter: crate::compile::PolicyFilter,
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Lookups from names to interfaces. By kind needs no table: the interface list is
/// in kind order (the builder keeps it in a map by kind). The tables hold ids only,
/// so rebuilding them after an endpoint comes or goes copies no names.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct IfaceMaps {
    /// Named interfaces, sorted by name.
    pub(crate) by_name: Vec<IfaceId>,
    /// No two interfaces share a name (so one added or removed updates `by_name`
    /// in place).
    pub(crate) names_unique: bool,
    pub(crate) by_sw_if_index: SwIfIndexMap<IfaceId>,
}

/// A map keyed by VPP `sw_if_index`. VPP numbers its interfaces densely from 0, so
/// indexes below [`SwIfIndexMap::DENSE`] live in a flat table (one load per packet);
/// a larger one (none in practice) goes to a hash map.
#[derive(Debug, Clone, PartialEq)]
pub struct SwIfIndexMap<V> {
    dense: Vec<Option<V>>,
    sparse: HashMap<u32, V>,
}

impl<V> Default for SwIfIndexMap<V> {
    fn default() -> Self {
        SwIfIndexMap {
            dense: Vec::new(),
            sparse: HashMap::new(),
        }
    }
}

impl<V: Copy> SwIfIndexMap<V> {
    /// Indexes below this live in the flat table.
    pub const DENSE: u32 = 1 << 16;

    /// The value filed under `sw_if_index`.
    #[inline]
    pub fn get(&self, sw_if_index: u32) -> Option<V> {
        if sw_if_index < Self::DENSE {
            self.dense.get(sw_if_index as usize).copied().flatten()
        } else {
            self.sparse.get(&sw_if_index).copied()
        }
    }

    /// A map about to be filed `indexes`: its flat table made at once for the
    /// largest of them it holds, not grown with each insert (larger ones, such as
    /// `~0` for an interface VPP lacks, go to the hash map as ever).
    pub fn for_indexes(indexes: impl Iterator<Item = u32>) -> Self {
        let flat = indexes.filter(|i| *i < Self::DENSE).max();
        SwIfIndexMap {
            dense: flat.map_or_else(Vec::new, |i| vec![None; i as usize + 1]),
            sparse: HashMap::new(),
        }
    }

    /// Files `value` under `sw_if_index`, replacing what was there (returned).
    pub fn insert(&mut self, sw_if_index: u32, value: V) -> Option<V> {
        if sw_if_index < Self::DENSE {
            let at = sw_if_index as usize;
            if self.dense.len() <= at {
                self.dense.resize(at + 1, None);
            }
            self.dense.get_mut(at).and_then(|e| e.replace(value))
        } else {
            self.sparse.insert(sw_if_index, value)
        }
    }

    /// The indexes filed, ascending: a walk of the flat table (no sort), then the
    /// few large ones sorted.
    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        let mut large: Vec<u32> = self.sparse.keys().copied().collect();
        large.sort_unstable();
        self.dense
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some())
            .map(|(i, _)| i as u32)
            .chain(large)
    }
}

/// An immutable compiled snapshot of the whole policy state.
pub struct Generation {
    pub(crate) id: GenerationId,
    pub(crate) index: AddrIndex,
    pub(crate) ifaces: Arc<Vec<Arc<Iface>>>,
    /// Per interface, `[ingress, egress]` when that direction has one program: a
    /// flat table the batch path's prefetch stages read without touching `Iface`.
    pub(crate) direct: Arc<Vec<[Option<Arc<Program>>; 2]>>,
    pub(crate) maps: Arc<IfaceMaps>,
    pub(crate) members: usize,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.id)
            .field("interfaces", &self.ifaces.len())
            .finish()
    }
}

/// Memory used by a generation, as reported by [`Generation::memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Bytes of the address indexes (IP-set members, prefixes, named ports).
    pub index_bytes: usize,
    /// Bytes of the compiled programs.
    pub program_bytes: usize,
    /// IP-set members (Felix sets plus capo's virtual sets) held in the indexes.
    pub members: usize,
    /// Programs compiled with the sparse layout of wide programs (over 256 rules).
    pub sparse_programs: usize,
}

impl Generation {
    /// The generation's id.
    pub fn id(&self) -> GenerationId {
        self.id
    }

    /// The interface with this name (workload interface, host-facing interface or a
    /// host endpoint's interface).
    pub fn interface(&self, name: &str) -> Option<IfaceId> {
        let name_of = |id: &IfaceId| self.ifaces.get(id.0 as usize).map(|i| i.name.as_str());
        let at = self
            .maps
            .by_name
            .binary_search_by(|id| name_of(id).cmp(&Some(name)))
            .ok()?;
        self.maps.by_name.get(at).copied()
    }

    /// The interface of a workload, the host, or a host endpoint.
    pub fn interface_of(&self, kind: &IfaceKind) -> Option<IfaceId> {
        let at = self.ifaces.binary_search_by(|i| i.kind.cmp(kind)).ok()?;
        Some(IfaceId(at as u32))
    }

    /// Whether `other` numbers its interfaces as this one does (same ids for the same
    /// names, kinds and indexes): true when a generation was compiled from the other
    /// without an interface added, removed or renumbered.
    pub fn same_interface_ids(&self, other: &Generation) -> bool {
        Arc::ptr_eq(&self.maps, &other.maps)
    }

    /// The interface with this `sw_if_index` (as the views number them).
    pub fn interface_by_sw_if_index(&self, sw_if_index: u32) -> Option<IfaceId> {
        self.maps.by_sw_if_index.get(sw_if_index)
    }

    /// Name, kind and `sw_if_index` of an interface.
    pub fn interface_info(&self, iface: IfaceId) -> Option<(&str, &IfaceKind, Option<u32>)> {
        self.ifaces
            .get(iface.0 as usize)
            .map(|i| (i.name.as_str(), &i.kind, i.sw_if_index))
    }

    /// Every interface of the generation.
    pub fn interfaces(&self) -> impl Iterator<Item = IfaceId> + '_ {
        (0..self.ifaces.len() as u32).map(IfaceId)
    }

    #[inline]
    fn entry(&self, iface: IfaceId, dir: Direction) -> Option<&Entry> {
        self.ifaces
            .get(iface.0 as usize)?
            .entries
            .get(dir_index(dir))
    }

    /// Classifies one packet on `iface` in direction `dir` (Calico's direction
    /// relative to the endpoint). `None` for an interface this generation lacks.
    #[inline]
    pub fn classify<'g>(
        &'g self,
        iface: IfaceId,
        dir: Direction,
        pkt: &Packet,
        scratch: &mut Scratch,
    ) -> Option<Decision<'g>> {
        let keys = [AddrKey::of(&pkt.src), AddrKey::of(&pkt.dst)];
        self.classify_keyed(iface, dir, pkt, &keys, scratch)
    }

    /// Whether two interfaces classify `dir` with one program (laid out once for
    /// both: their specs are the same).
    pub fn shares_program(&self, a: IfaceId, b: IfaceId, dir: Direction) -> bool {
        match (self.direct_program(a, dir), self.direct_program(b, dir)) {
            (Some(x), Some(y)) => std::ptr::eq(x, y),
            _ => false,
        }
    }

    #[inline(always)]
    fn direct_program(&self, iface: IfaceId, dir: Direction) -> Option<&Program> {
        self.direct
            .get(iface.0 as usize)?
            .get(dir_index(dir))?
            .as_deref()
    }

    #[inline]
    fn program<'g>(&'g self, entry: &'g Entry, src: &AddrKey) -> &'g Program {
        match entry {
            Entry::Single(p) => p,
            Entry::BySrcAtom {
                atom,
                member,
                other,
            } => {
                let (host, pre) = self.index.lookup_key(src);
                if host.binary_search(atom).is_ok() || pre.binary_search(atom).is_ok() {
                    member
                } else {
                    other
                }
            }
        }
    }

    #[inline]
    fn classify_keyed<'g>(
        &'g self,
        iface: IfaceId,
        dir: Direction,
        pkt: &Packet,
        keys: &[AddrKey; 2],
        scratch: &mut Scratch,
    ) -> Option<Decision<'g>> {
        let entry = self.entry(iface, dir)?;
        let prog = self.program(entry, &keys[0]);
        Some(prog.classify_keyed(&self.index, pkt, keys, scratch))
    }

    /// Classifies a batch (a VPP frame: up to 256 packets). `out` receives one
    /// decision per item (`None` for an interface the generation lacks), the same
    /// as [`Generation::classify`] on each item.
    ///
    /// A software pipeline hides the cache misses of reaching a random program and
    /// two random index slots per packet: while packet `i` is classified, packet
    /// `i + 12` has its index leaf headers and its program's header prefetched, and
    /// packet `i + 8` its index slots and its program's masks and port tables (those
    /// addresses come from the lines fetched one stage before). A third stage
    /// (prefetching the atom-table lines of the atoms holding each address) was
    /// measured and cost more than it saved: it repeats the index lookups.
    pub fn classify_batch<'g>(
        &'g self,
        items: &[(IfaceId, Direction, Packet)],
        scratch: &mut Scratch,
        out: &mut Vec<Option<Decision<'g>>>,
    ) {
        const AHEAD1: usize = 12;
        const AHEAD2: usize = 8;
        out.clear();
        let mut keys = std::mem::take(&mut scratch.keys);
        keys.clear();
        keys.extend(
            items
                .iter()
                .map(|(_, _, p)| [AddrKey::of(&p.src), AddrKey::of(&p.dst)]),
        );
        let n = items.len();
        for j in 0..AHEAD1.min(n) {
            self.stage1(items, &keys, j);
        }
        for j in 0..AHEAD2.min(n) {
            self.stage2(items, &keys, j);
        }
        for (i, ((iface, dir, pkt), k)) in items.iter().zip(&keys).enumerate() {
            self.stage1(items, &keys, i + AHEAD1);
            self.stage2(items, &keys, i + AHEAD2);
            out.push(self.classify_keyed(*iface, *dir, pkt, k, scratch));
        }
        scratch.keys = keys;
    }

    #[inline(always)]
    fn stage1(&self, items: &[(IfaceId, Direction, Packet)], keys: &[[AddrKey; 2]], j: usize) {
        let (Some((iface, dir, _)), Some(k)) = (items.get(j), keys.get(j)) else {
            return;
        };
        for a in k {
            crate::prefetch::read(self.index.head_ptr(a));
        }
        if let Some(p) = self.direct_program(*iface, *dir) {
            let h = p.head_ptr();
            crate::prefetch::read(h);
            crate::prefetch::read(h.wrapping_add(64));
        }
    }

    #[inline(always)]
    fn stage2(&self, items: &[(IfaceId, Direction, Packet)], keys: &[[AddrKey; 2]], j: usize) {
        let (Some((iface, dir, pkt)), Some(k)) = (items.get(j), keys.get(j)) else {
            return;
        };
        for a in k {
            crate::prefetch::read(self.index.slot_ptr(a));
        }
        if let Some(p) = self.direct_program(*iface, *dir) {
            p.prefetch_arena(pkt);
        }
    }

    /// Asks the CPU to start fetching what classifying `pkt` will read first (the
    /// index leaves of both addresses).
    #[inline]
    pub fn prefetch(&self, pkt: &Packet) {
        for a in [&pkt.src, &pkt.dst] {
            crate::prefetch::read(self.index.slot_ptr(&AddrKey::of(a)));
        }
    }

    /// Memory used by the generation (shared parts counted in full).
    pub fn memory(&self) -> Memory {
        let mut seen = std::collections::HashSet::new();
        let mut program_bytes = 0;
        let mut sparse_programs = 0;
        for i in self.ifaces.iter() {
            for e in &i.entries {
                let progs: Vec<&Arc<Program>> = match e {
                    Entry::Single(p) => vec![p],
                    Entry::BySrcAtom { member, other, .. } => vec![member, other],
                };
                for p in progs {
                    if seen.insert(Arc::as_ptr(p)) {
                        program_bytes += p.bytes();
                        sparse_programs += usize::from(p.flags & crate::program::F_SPARSE != 0);
                    }
                }
            }
        }
        Memory {
            index_bytes: self.index.bytes(),
            program_bytes,
            members: self.members,
            sparse_programs,
        }
    }

    /// Number of rules compiled for an interface and direction (all programs).
    pub fn rule_count(&self, iface: IfaceId, dir: Direction) -> usize {
        match self
            .ifaces
            .get(iface.0 as usize)
            .and_then(|i| i.entries.get(dir_index(dir)))
        {
            Some(Entry::Single(p)) => p.rules.len(),
            Some(Entry::BySrcAtom { member, other, .. }) => member.rules.len() + other.rules.len(),
            None => 0,
        }
    }
}

/// Where workers find the current generation (RCU-style publication).
#[derive(Debug)]
pub struct GenerationCell {
    current: ArcSwap<Generation>,
}

/// A reader's hold on a generation; the generation stays alive while it is held.
pub type GenerationGuard = arc_swap::Guard<Arc<Generation>>;

impl GenerationCell {
    /// A cell holding `first`.
    pub fn new(first: Arc<Generation>) -> Self {
        GenerationCell {
            current: ArcSwap::new(first),
        }
    }

    /// The current generation, without taking a lock. Hold the guard for one batch.
    #[inline]
    pub fn load(&self) -> GenerationGuard {
        self.current.load()
    }

    /// The current generation as an owned `Arc` (for holding across batches).
    pub fn load_full(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Publishes `next`; readers that loaded the old one keep it until they drop it.
    pub fn publish(&self, next: Arc<Generation>) {
        self.current.store(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense indexes, an index past the flat table, absent ones on either side and
    /// a rebinding all answer as a map would.
    #[test]
    fn sw_if_index_map_answers_as_a_map() {
        // Grown with each insert, and made for the largest index (within the flat
        // table, and past it) first.
        for mut m in [
            SwIfIndexMap::default(),
            SwIfIndexMap::for_indexes([3, 0].into_iter()),
            SwIfIndexMap::for_indexes([3, 0, 70_000, u32::MAX].into_iter()),
        ] {
            let mut model = HashMap::new();
            for (sw, id) in [(3, 0), (0, 1), (70_000, 2), (3, 4), (u32::MAX, 5)] {
                assert_eq!(m.insert(sw, IfaceId(id)), model.insert(sw, IfaceId(id)));
            }
            for sw in [0, 1, 2, 3, 4, 65_535, 65_536, 70_000, 70_001, u32::MAX] {
                assert_eq!(m.get(sw), model.get(&sw).copied(), "sw_if_index {sw}");
            }
            let mut filed: Vec<u32> = model.keys().copied().collect();
            filed.sort_unstable();
            assert_eq!(m.keys().collect::<Vec<_>>(), filed);
            // The flat table reaches the largest small index, whatever large ones
            // were filed.
            assert_eq!(m.dense.len(), 4);
        }
    }
}
