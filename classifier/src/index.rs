//! The address indexes shared by every program of a generation.
//!
//! An *atom* is anything a rule tests an address against: a Felix IP set, an
//! anonymous set made of a rule's `nets` (or `not_nets`) list, or one of capo's
//! virtual sets (local workload addresses, the host's addresses). The indexes map a
//! packet's address to the sorted list of atoms that contain it, so a program only
//! has to look at those atoms: the cost per packet depends on how many sets hold the
//! address, never on how many members the sets have.
//!
//! - Host members (`/32`, `/128`) live in [`ShardedMap`]: a hash table split into
//!   4096 leaves behind two levels of `Arc`s (256 mid-level arrays of 16 leaves).
//!   Adding or removing one member copies one leaf, the top array and one mid-level
//!   array (copy-on-write through `Arc::make_mut`), so a generation that still reads
//!   the old index keeps it intact.
//! - Shorter prefixes live in a [`PrefixTable`]: the elementary intervals of the
//!   (laminar) prefix family, each with the union of the atoms of every prefix
//!   covering it, found by binary search; a change recomputes only the changed
//!   prefixes' ranges (`crate::prefix`).
//! - `ip,proto:port` members live in a [`ShardedMap`] keyed by [`EpKey`].

use std::net::IpAddr;
use std::sync::Arc;

use crate::arc_copy::arc_copy;
use crate::prefix::PrefixTable;

/// Index of an atom in a generation.
pub(crate) type AtomId = u32;

/// A key of a [`ShardedMap`].
pub(crate) trait MapKey: Copy + Eq + Default {
    /// A well-mixed 64-bit hash.
    fn hash64(&self) -> u64;
}

#[inline]
fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: cheap and good enough for addresses.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl MapKey for u32 {
    #[inline]
    fn hash64(&self) -> u64 {
        mix(u64::from(*self))
    }
}

impl MapKey for u128 {
    #[inline]
    fn hash64(&self) -> u64 {
        mix((*self as u64) ^ mix((*self >> 64) as u64))
    }
}

/// Key of the `ip,proto:port` index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub(crate) struct EpKey {
    addr: u128,
    port: u16,
    proto: u8,
    v6: bool,
}

impl EpKey {
    pub(crate) fn new(addr: &IpAddr, proto: u8, port: u16) -> Self {
        let (addr, v6) = addr_key(addr);
        EpKey {
            addr,
            port,
            proto,
            v6,
        }
    }
}

impl MapKey for EpKey {
    #[inline]
    fn hash64(&self) -> u64 {
        self.addr.hash64()
            ^ mix((u64::from(self.port) << 16) | (u64::from(self.proto) << 1) | u64::from(self.v6))
    }
}

/// An address as a 128-bit number and whether it is IPv6.
#[inline]
pub(crate) fn addr_key(addr: &IpAddr) -> (u128, bool) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(*a)), false),
        IpAddr::V6(a) => (u128::from(*a), true),
    }
}

/// The levels' fan-outs: 256 mid-level arrays of 16 leaves each. Copying a
/// mid-level array changes a reference count in each of its leaves' two slices
/// (atomic increments, each on a line of its own), and an update of many keys (an IP
/// set of 64 addresses) copies one array per distinct array its keys fall in: a
/// narrow mid level makes those copies cheap, at the price of a wider top array,
/// which every update copies once (see `docs/benchmarks.md`).
const TOP_BITS: u32 = 8;
const TOP: usize = 1 << TOP_BITS;
const MID_BITS: u32 = 4;
const MID: usize = 1 << MID_BITS;

/// Atom lists up to this long live inside the slot (one cache line per lookup).
const INLINE: usize = 6;

/// One slot of a leaf: the key, and its atoms inline or in the leaf's pool.
#[derive(Clone, Copy, Default)]
struct Slot<K> {
    key: K,
    /// Number of atoms; 0 marks an empty slot.
    len: u32,
    /// The atoms when `len <= INLINE`, else `data[0]` is the offset in the pool.
    data: [AtomId; INLINE],
}

/// One leaf: open addressing (linear probing) over slots. Stored by value in its
/// mid-level array, so a lookup goes mid entry → slot line (two loads past the hot
/// top level); the slots and the pool are shared, immutable `Arc` slices.
#[derive(Clone)]
struct Leaf<K> {
    slots: Arc<[Slot<K>]>,
    pool: Arc<[AtomId]>,
    len: u32,
    /// Atoms of the lists held in the pool (the rest of it is left by lists since
    /// replaced): kept, not summed over the slots on every change.
    pooled: u32,
}

impl<K> Default for Leaf<K> {
    fn default() -> Self {
        Leaf {
            slots: Arc::from(Vec::new()),
            pool: Arc::from(Vec::new()),
            len: 0,
            pooled: 0,
        }
    }
}

impl<K: MapKey> Slot<K> {
    #[inline]
    fn atoms<'a>(&'a self, pool: &'a [AtomId]) -> &'a [AtomId] {
        let len = self.len as usize;
        if len <= INLINE {
            self.data.get(..len).unwrap_or(&[])
        } else {
            let off = self.data[0] as usize;
            pool.get(off..off + len).unwrap_or(&[])
        }
    }
}

impl<K: MapKey> Leaf<K> {
    #[inline]
    fn get(&self, key: &K, h: u64) -> Option<&[AtomId]> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = (h as usize) & mask;
        loop {
            let s = self.slots.get(i)?;
            if s.len == 0 {
                return None;
            }
            if s.key == *key {
                return Some(s.atoms(&self.pool));
            }
            i = (i + 1) & mask;
        }
    }

    /// Address of the slot `h` hashes to (for prefetching; never dereferenced).
    #[inline]
    fn slot_ptr(&self, h: u64) -> *const u8 {
        let mask = self.slots.len().saturating_sub(1);
        self.slots
            .as_ptr()
            .wrapping_add((h as usize) & mask)
            .cast::<u8>()
    }

    fn entries(&self) -> impl Iterator<Item = (K, &[AtomId])> + '_ {
        self.slots
            .iter()
            .filter(|s| s.len != 0)
            .map(|s| (s.key, s.atoms(&self.pool)))
    }

    fn fill(slot: &mut Slot<K>, pool: &mut Vec<AtomId>, key: K, atoms: &[AtomId]) {
        slot.key = key;
        slot.len = atoms.len() as u32;
        slot.data = [0; INLINE];
        if atoms.len() <= INLINE {
            if let Some(d) = slot.data.get_mut(..atoms.len()) {
                d.copy_from_slice(atoms);
            }
        } else {
            slot.data[0] = pool.len() as u32;
            pool.extend_from_slice(atoms);
        }
    }

    /// The leaf laid out anew, compact, with `key` mapped to `atoms` (removed when
    /// empty).
    fn rebuilt(&self, key: K, atoms: &[AtomId]) -> Leaf<K> {
        let mut entries: Vec<(K, Vec<AtomId>)> = self
            .entries()
            .filter(|(k, _)| *k != key)
            .map(|(k, a)| (k, a.to_vec()))
            .collect();
        if !atoms.is_empty() {
            entries.push((key, atoms.to_vec()));
        }
        Leaf::build(entries)
    }

    /// A copy of the leaf with `key` mapped to `atoms` (removed when empty).
    fn with(&self, key: K, h: u64, atoms: &[AtomId]) -> Leaf<K> {
        let wasteful = self.pool.len() > 2 * self.pooled as usize + 64;
        if atoms.is_empty() && !wasteful {
            return self.without(key, h);
        }
        // A removal that gets here compacts a wasteful pool.
        if wasteful || (self.len as usize + 1) * 2 > self.slots.len() {
            return self.rebuilt(key, atoms);
        }
        let mut slots = copy_of(&self.slots);
        let Some(all) = Arc::get_mut(&mut slots) else {
            return self.rebuilt(key, atoms);
        };
        // Common case: one plain copy, then the slot rewritten in place (the pool
        // is copied only when the new list does not fit inline).
        let mut len = self.len;
        let mut pooled = self.pooled;
        let mut pool: Option<Vec<AtomId>> = None;
        let mask = all.len() - 1;
        let mut i = (h as usize) & mask;
        while let Some(s) = all.get_mut(i) {
            if s.len != 0 && s.key != key {
                i = (i + 1) & mask;
                continue;
            }
            if s.len == 0 {
                len += 1;
            }
            if s.len as usize > INLINE {
                debug_assert!(pooled >= s.len, "pooled count below a pooled list");
                pooled = pooled.saturating_sub(s.len);
            }
            let p = pool.get_or_insert_with(|| {
                if atoms.len() > INLINE {
                    self.pool.to_vec()
                } else {
                    Vec::new()
                }
            });
            Leaf::fill(s, p, key, atoms);
            if atoms.len() > INLINE {
                pooled += atoms.len() as u32;
            }
            break;
        }
        Leaf {
            slots,
            pool: match pool {
                Some(p) if atoms.len() > INLINE => Arc::from(p),
                _ => self.pool.clone(),
            },
            len,
            pooled,
        }
    }

    /// A copy of the leaf without `key`: one plain copy of the slots, the key's slot
    /// emptied and the later slots of its probe run moved back into the hole (so
    /// every key stays reachable from its home slot). A pooled list's atoms stay in
    /// the shared pool until a rebuild compacts it.
    fn without(&self, key: K, h: u64) -> Leaf<K> {
        let Some(mask) = self.slots.len().checked_sub(1) else {
            return self.clone();
        };
        let mut hole = (h as usize) & mask;
        loop {
            match self.slots.get(hole) {
                Some(s) if s.len == 0 => return self.clone(),
                Some(s) if s.key == key => break,
                Some(_) => hole = (hole + 1) & mask,
                None => return self.clone(),
            }
        }
        let mut copy = copy_of(&self.slots);
        let Some(slots) = Arc::get_mut(&mut copy) else {
            return self.rebuilt(key, &[]);
        };
        let removed = slots.get(hole).map_or(0, |s| s.len);
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(&next) = slots.get(j) else { break };
            if next.len == 0 {
                break;
            }
            let home = (next.key.hash64() as usize) & mask;
            // `next` may fill the hole when the hole lies on its probe path: at
            // least as far from its home as its own slot is.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                if let Some(h) = slots.get_mut(hole) {
                    *h = next;
                }
                hole = j;
            }
        }
        if let Some(h) = slots.get_mut(hole) {
            *h = Slot::default();
        }
        Leaf {
            slots: copy,
            pool: self.pool.clone(),
            len: self.len.saturating_sub(1),
            pooled: if removed as usize > INLINE {
                debug_assert!(self.pooled >= removed, "pooled count below a pooled list");
                self.pooled.saturating_sub(removed)
            } else {
                self.pooled
            },
        }
    }

    fn build(entries: Vec<(K, Vec<AtomId>)>) -> Leaf<K> {
        if entries.is_empty() {
            return Leaf::default();
        }
        let cap = (entries.len() * 2).next_power_of_two().max(4);
        let mut slots = vec![Slot::default(); cap];
        let mut pool = Vec::new();
        let len = entries.len() as u32;
        let mask = cap - 1;
        for (k, atoms) in entries {
            let mut i = (k.hash64() as usize) & mask;
            while slots.get(i).is_some_and(|s| s.len != 0) {
                i = (i + 1) & mask;
            }
            if let Some(slot) = slots.get_mut(i) {
                Leaf::fill(slot, &mut pool, k, &atoms);
            }
        }
        Leaf {
            slots: Arc::from(slots),
            pooled: pool.len() as u32,
            pool: Arc::from(pool),
            len,
        }
    }

    fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot<K>>() + self.pool.len() * 4
    }
}

/// An unshared copy of `slots`, made straight into its `Arc` (a `Vec` turned into one
/// would be copied twice) with one block move.
fn copy_of<K: Copy>(slots: &Arc<[Slot<K>]>) -> Arc<[Slot<K>]> {
    arc_copy(slots)
}

type Mid<K> = Arc<[Leaf<K>; MID]>;

/// A persistent hash map from keys to sorted atom lists (see the module doc).
#[derive(Clone)]
pub(crate) struct ShardedMap<K> {
    top: Arc<[Mid<K>; TOP]>,
    len: usize,
}

impl<K: MapKey> Default for ShardedMap<K> {
    fn default() -> Self {
        let mid: Mid<K> = Arc::new(std::array::from_fn(|_| Leaf::default()));
        ShardedMap {
            top: Arc::new(std::array::from_fn(|_| mid.clone())),
            len: 0,
        }
    }
}

#[inline]
fn shard(h: u64) -> (usize, usize) {
    let t = (h >> (64 - TOP_BITS)) as usize;
    let m = ((h >> (64 - TOP_BITS - MID_BITS)) as usize) & (MID - 1);
    (t, m)
}

impl<K: MapKey> ShardedMap<K> {
    #[inline]
    fn leaf(&self, h: u64) -> Option<&Leaf<K>> {
        let (t, m) = shard(h);
        self.top.get(t).and_then(|mid| mid.get(m))
    }

    /// Atoms holding `key` (empty when none).
    #[inline]
    pub(crate) fn get(&self, key: &K) -> &[AtomId] {
        self.get_hashed(key, key.hash64())
    }

    /// [`ShardedMap::get`] with the key's hash already computed.
    #[inline]
    pub(crate) fn get_hashed(&self, key: &K, h: u64) -> &[AtomId] {
        self.leaf(h).and_then(|l| l.get(key, h)).unwrap_or(&[])
    }

    /// Address of the mid-level entry (the leaf header) a hash lives under, for a
    /// first prefetch stage: computing it touches only the hot top level.
    #[inline]
    pub(crate) fn leaf_head_ptr(&self, h: u64) -> *const u8 {
        let (t, m) = shard(h);
        match self.top.get(t) {
            Some(mid) => mid.as_ptr().wrapping_add(m).cast::<u8>(),
            None => std::ptr::null(),
        }
    }

    /// Address of the slot a hash probes first, for a second prefetch stage (reads
    /// the leaf header).
    #[inline]
    pub(crate) fn slot_ptr(&self, h: u64) -> *const u8 {
        match self.leaf(h) {
            Some(leaf) => leaf.slot_ptr(h),
            None => std::ptr::null(),
        }
    }

    fn update(&mut self, key: K, f: impl FnOnce(&mut Vec<AtomId>) -> bool) -> bool {
        let h = key.hash64();
        let (t, m) = shard(h);
        let mut atoms = self.get(&key).to_vec();
        let before = atoms.is_empty();
        if !f(&mut atoms) {
            return false;
        }
        let after = atoms.is_empty();
        let top = Arc::make_mut(&mut self.top);
        if let Some(mid) = top.get_mut(t) {
            let mid = Arc::make_mut(mid);
            if let Some(leaf) = mid.get_mut(m) {
                *leaf = leaf.with(key, h, &atoms);
            }
        }
        match (before, after) {
            (true, false) => self.len += 1,
            (false, true) => self.len -= 1,
            _ => {}
        }
        true
    }

    /// Adds `atom` to `key`'s list; false when it was there already.
    pub(crate) fn add(&mut self, key: K, atom: AtomId) -> bool {
        self.update(key, |a| match a.binary_search(&atom) {
            Err(pos) => {
                a.insert(pos, atom);
                true
            }
            Ok(_) => false,
        })
    }

    /// Removes `atom` from `key`'s list; false when it was not there.
    pub(crate) fn remove(&mut self, key: K, atom: AtomId) -> bool {
        self.update(key, |a| match a.binary_search(&atom) {
            Ok(pos) => {
                a.remove(pos);
                true
            }
            Err(_) => false,
        })
    }

    /// Builds a map from a full list of (key, atom) pairs in one go (compile path).
    pub(crate) fn from_pairs(mut pairs: Vec<(K, AtomId)>) -> Self
    where
        K: Ord,
    {
        pairs.sort_unstable();
        pairs.dedup();
        let mut shards: Vec<Vec<(K, Vec<AtomId>)>> = vec![Vec::new(); TOP * MID];
        let mut len = 0;
        let mut i = 0;
        while let Some((k, _)) = pairs.get(i) {
            let k = *k;
            let mut atoms = Vec::new();
            while let Some((k2, a)) = pairs.get(i) {
                if *k2 != k {
                    break;
                }
                atoms.push(*a);
                i += 1;
            }
            let (t, m) = shard(k.hash64());
            if let Some(s) = shards.get_mut(t * MID + m) {
                s.push((k, atoms));
                len += 1;
            }
        }
        let empty = Leaf::default();
        let mut it = shards.into_iter();
        // Fixed-size levels: a shard index (bits of the hash) needs no bounds check.
        let top: [Mid<K>; TOP] = std::array::from_fn(|_| {
            Arc::new(std::array::from_fn(|_| {
                let entries = it.next().unwrap_or_default();
                if entries.is_empty() {
                    empty.clone()
                } else {
                    Leaf::build(entries)
                }
            }))
        });
        ShardedMap {
            top: Arc::new(top),
            len,
        }
    }

    /// Number of keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes used.
    pub(crate) fn bytes(&self) -> usize {
        let mut n = TOP * 16;
        for mid in self.top.iter() {
            n += MID * std::mem::size_of::<Leaf<K>>();
            for leaf in mid.iter() {
                n += leaf.bytes();
            }
        }
        n
    }

    /// Every key holding `atom` (a full scan).
    #[cfg(test)]
    pub(crate) fn keys_with(&self, atom: AtomId) -> Vec<K> {
        let mut out = Vec::new();
        for mid in self.top.iter() {
            for leaf in mid.iter() {
                for (k, atoms) in leaf.entries() {
                    if atoms.binary_search(&atom).is_ok() {
                        out.push(k);
                    }
                }
            }
        }
        out
    }
}

/// Every address index of a generation.
#[derive(Clone)]
pub(crate) struct AddrIndex {
    pub(crate) v4: ShardedMap<u32>,
    pub(crate) v6: ShardedMap<u128>,
    pub(crate) p4: Arc<PrefixTable>,
    pub(crate) p6: Arc<PrefixTable>,
    pub(crate) ep: ShardedMap<EpKey>,
    /// A 64 Ki-bit filter over the `ip,proto:port` keys of `ep`: most packets'
    /// (address, port) pairs are no named-port member, and are dismissed here
    /// without hashing into `ep`. Bits are set on add and only cleared by a full
    /// build (a stale bit costs one lookup, never a wrong answer).
    pub(crate) ep_filter: Arc<[u64]>,
}

impl Default for AddrIndex {
    fn default() -> Self {
        AddrIndex {
            v4: ShardedMap::default(),
            v6: ShardedMap::default(),
            p4: Arc::new(PrefixTable::empty(32)),
            p6: Arc::new(PrefixTable::empty(128)),
            ep: ShardedMap::default(),
            ep_filter: Arc::from(vec![0u64; EP_FILTER_WORDS]),
        }
    }
}

const EP_FILTER_WORDS: usize = 1024;

/// The bit of `ep_filter` for (address, protocol, port): one multiply.
#[inline]
fn ep_bit(addr: &IpAddr, proto: u8, port: u16) -> (usize, u64) {
    let a = match addr {
        IpAddr::V4(a) => u64::from(u32::from(*a)),
        IpAddr::V6(a) => {
            let x = u128::from(*a);
            (x as u64) ^ ((x >> 64) as u64)
        }
    };
    let h = (a ^ (u64::from(port) << 32) ^ (u64::from(proto) << 48))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        >> 48;
    let h = h as usize;
    (h / 64, 1u64 << (h % 64))
}

impl AddrIndex {
    /// Whether `ep` may hold (address, protocol, port).
    #[inline(always)]
    pub(crate) fn ep_maybe(&self, addr: &IpAddr, proto: u8, port: u16) -> bool {
        let (w, b) = ep_bit(addr, proto, port);
        self.ep_filter.get(w).is_some_and(|x| x & b != 0)
    }

    /// Atoms holding (address, protocol, port) as a named-port member. The filter
    /// test is inlined into the caller; the map lookup (rare) is not.
    #[inline(always)]
    pub(crate) fn ep_get(&self, addr: &IpAddr, proto: u8, port: u16) -> &[AtomId] {
        if !self.ep_maybe(addr, proto, port) {
            return &[];
        }
        self.ep_lookup(addr, proto, port)
    }

    #[inline(never)]
    fn ep_lookup(&self, addr: &IpAddr, proto: u8, port: u16) -> &[AtomId] {
        self.ep.get(&EpKey::new(addr, proto, port))
    }

    /// Marks (address, protocol, port) in the filter.
    pub(crate) fn ep_mark(&mut self, addr: &IpAddr, proto: u8, port: u16) {
        let (w, b) = ep_bit(addr, proto, port);
        if self.ep_filter.get(w).is_some_and(|x| x & b == 0) {
            if let Some(x) = Arc::make_mut(&mut self.ep_filter).get_mut(w) {
                *x |= b;
            }
        }
    }
}

/// A packet address as the indexes key it, with its hash computed once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AddrKey {
    V4(u32, u64),
    V6(u128, u64),
}

impl AddrKey {
    #[inline]
    pub(crate) fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from(*a);
                AddrKey::V4(k, k.hash64())
            }
            IpAddr::V6(a) => {
                let k = u128::from(*a);
                AddrKey::V6(k, k.hash64())
            }
        }
    }
}

impl AddrIndex {
    /// The atoms holding an address: host members, then covering prefixes.
    #[inline(always)]
    pub(crate) fn lookup_key(&self, k: &AddrKey) -> (&[AtomId], &[AtomId]) {
        match *k {
            AddrKey::V4(a, h) => (self.v4.get_hashed(&a, h), self.p4.get(u128::from(a))),
            AddrKey::V6(a, h) => (self.v6.get_hashed(&a, h), self.p6.get(a)),
        }
    }

    /// First prefetch stage for an address: its leaf header.
    #[inline]
    pub(crate) fn head_ptr(&self, k: &AddrKey) -> *const u8 {
        match *k {
            AddrKey::V4(_, h) => self.v4.leaf_head_ptr(h),
            AddrKey::V6(_, h) => self.v6.leaf_head_ptr(h),
        }
    }

    /// Second prefetch stage for an address: its first slot.
    #[inline]
    pub(crate) fn slot_ptr(&self, k: &AddrKey) -> *const u8 {
        match *k {
            AddrKey::V4(_, h) => self.v4.slot_ptr(h),
            AddrKey::V6(_, h) => self.v6.slot_ptr(h),
        }
    }

    /// Heap bytes used.
    pub(crate) fn bytes(&self) -> usize {
        self.v4.bytes()
            + self.v6.bytes()
            + self.p4.bytes()
            + self.p6.bytes()
            + self.ep.bytes()
            + self.ep_filter.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A key whose hash sends every key to one leaf, onto one of eight home slots:
    /// long probe runs that wrap round the leaf's end.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
    struct Crowded(u16);

    impl MapKey for Crowded {
        fn hash64(&self) -> u64 {
            u64::from(self.0 % 8) * 5
        }
    }

    proptest! {
        /// Adds and removes, in any order and with every key in one leaf, leave the
        /// map answering as a plain map does, and never change a copy taken before.
        #[test]
        fn prop_sharded_map_equals_a_plain_map(
            ops in proptest::collection::vec(
                (prop_oneof![2 => Just(true), 1 => Just(false)], 0u16..40, 0u32..10),
                1..300,
            ),
        ) {
            let mut m: ShardedMap<Crowded> = ShardedMap::default();
            let mut model: std::collections::BTreeMap<u16, std::collections::BTreeSet<u32>> =
                std::collections::BTreeMap::new();
            for (i, (add, key, atom)) in ops.into_iter().enumerate() {
                let before = m.clone();
                let frozen: Vec<Vec<AtomId>> =
                    (0..40).map(|k| before.get(&Crowded(k)).to_vec()).collect();
                let set = model.entry(key).or_default();
                let changed = if add { set.insert(atom) } else { set.remove(&atom) };
                if set.is_empty() {
                    model.remove(&key);
                }
                let did = if add {
                    m.add(Crowded(key), atom)
                } else {
                    m.remove(Crowded(key), atom)
                };
                prop_assert_eq!(did, changed, "step {}", i);
                for k in 0..40u16 {
                    let want: Vec<AtomId> =
                        model.get(&k).map(|s| s.iter().copied().collect()).unwrap_or_default();
                    prop_assert_eq!(m.get(&Crowded(k)), want.as_slice(), "key {} at step {}", k, i);
                    prop_assert_eq!(before.get(&Crowded(k)), frozen[usize::from(k)].as_slice());
                }
                prop_assert_eq!(m.len(), model.len());
                // The kept count of pooled atoms is exact, and a leaf the step
                // changed holds at most twice what it held pooled before the step,
                // plus 64 and the new list: a change to a leaf whose pool is more
                // than that compacts it.
                let leaves = |m: &ShardedMap<Crowded>| -> Vec<Leaf<Crowded>> {
                    m.top.iter().flat_map(|mid| mid.iter().cloned()).collect()
                };
                for (leaf, was) in leaves(&m).iter().zip(leaves(&before)) {
                    let pooled: u32 = leaf
                        .slots
                        .iter()
                        .filter(|s| s.len as usize > INLINE)
                        .map(|s| s.len)
                        .sum();
                    prop_assert_eq!(leaf.pooled, pooled, "step {}", i);
                    let unchanged = Arc::ptr_eq(&leaf.slots, &was.slots);
                    prop_assert!(
                        unchanged || leaf.pool.len() <= 2 * was.pooled as usize + 64 + 10,
                        "step {}: pool {} after {} pooled", i, leaf.pool.len(), was.pooled
                    );
                }
            }
        }
    }

    /// One list rewritten again and again, pooled each time (past the slot's inline
    /// room): the lists it leaves behind are compacted away, the pool stays bounded.
    #[test]
    fn a_pooled_list_rewritten_keeps_its_leaf_compact() {
        let mut m: ShardedMap<Crowded> = ShardedMap::default();
        for atom in 0..INLINE as u32 + 1 {
            m.add(Crowded(1), atom);
        }
        for _ in 0..50 {
            m.add(Crowded(1), 99);
            m.remove(Crowded(1), 99);
            for leaf in m.top.iter().flat_map(|mid| mid.iter()) {
                assert!(
                    leaf.pool.len() <= 2 * leaf.pooled as usize + 64 + 8,
                    "pool {} for {} pooled",
                    leaf.pool.len(),
                    leaf.pooled
                );
            }
        }
        assert_eq!(m.get(&Crowded(1)), &[0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn sharded_map_add_remove_and_share() {
        let mut m: ShardedMap<u32> = ShardedMap::default();
        m.add(1, 5);
        m.add(1, 3);
        m.add(2, 3);
        let snapshot = m.clone();
        m.remove(1, 5);
        assert_eq!(m.get(&1), &[3]);
        assert_eq!(snapshot.get(&1), &[3, 5]);
        m.remove(2, 3);
        assert_eq!(m.get(&2), &[] as &[u32]);
        assert_eq!(m.len(), 1);
        assert_eq!(snapshot.len(), 2);
        let built = ShardedMap::from_pairs(vec![(1u32, 5), (1, 3), (2, 3)]);
        assert_eq!(built.get(&1), &[3, 5]);
        assert_eq!(built.keys_with(3).len(), 2);
    }
}
