//! Non-host prefixes (shorter than `/32` or `/128`) and the lookup table built from
//! them.
//!
//! Prefixes form a laminar family (two prefixes are nested or disjoint), so the
//! address space splits into elementary intervals, each covered by the same prefixes
//! throughout. [`PrefixTable`] holds those intervals with the union of the covering
//! prefixes' atoms and is found by binary search; generations share it through an
//! `Arc`. [`PrefixSource`] is the builder's own list of prefixes with their atoms. A
//! change of prefix `P` changes the table only inside `P`'s range, so the next table
//! is the old one with those ranges recomputed from the prefixes that overlap them
//! (`P`'s ancestors and descendants): one pass of copies, however many prefixes the
//! family holds, instead of a sort of the whole family.

use std::collections::BTreeMap;

use crate::index::AtomId;

/// A prefix in one family: start address as a 128-bit number and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Prefix {
    /// First address (host bits zero).
    pub(crate) start: u128,
    /// Prefix length.
    pub(crate) len: u8,
}

impl Prefix {
    /// Last address of the prefix in a family of `bits`-bit addresses.
    fn last(&self, bits: u8) -> u128 {
        let host = u32::from(bits.saturating_sub(self.len));
        if host >= 128 {
            u128::MAX
        } else {
            self.start | ((1u128 << host) - 1)
        }
    }
}

/// The highest address of a family.
fn max_addr(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Address bits of the IPv4 interval directory ([`PrefixTable`]).
const DIR_BITS: u32 = 12;
const DIR_LEN: usize = (1 << DIR_BITS) + 1;

/// The elementary intervals of one family's prefixes, each with its atoms.
#[derive(Clone, Default)]
pub(crate) struct PrefixTable {
    /// Interval starts (IPv6), or empty for IPv4, which uses `starts4`.
    starts: Vec<u128>,
    /// Interval starts of an IPv4 table: half the bytes to search.
    starts4: Vec<u32>,
    /// IPv4: for each block of the top [`DIR_BITS`] address bits, the index of its
    /// first interval start (one more entry at the end), so a lookup searches only
    /// the intervals starting inside its block (a handful) instead of all of them.
    /// Fixed-size, so indexing it by the top bits needs no bounds check.
    dir4: Option<Box<[u32; DIR_LEN]>>,
    /// Each interval's atoms: offset and length in `pool`.
    spans: Vec<(u32, u32)>,
    pool: Vec<AtomId>,
    bits: u8,
}

impl PrefixTable {
    /// The table of a family with no prefixes.
    pub(crate) fn empty(bits: u8) -> Self {
        TableBuilder::new(bits, 1).finish()
    }

    /// Atoms of every prefix covering `addr`.
    #[inline(always)]
    pub(crate) fn get(&self, addr: u128) -> &[AtomId] {
        let i = if self.bits == 32 {
            let a = addr as u32;
            let b = (a >> (32 - DIR_BITS)) as usize;
            match self.dir4.as_deref().map(|d| (d.get(b), d.get(b + 1))) {
                Some((Some(lo), Some(hi))) => {
                    let (lo, hi) = (*lo as usize, *hi as usize);
                    lo + self
                        .starts4
                        .get(lo..hi)
                        .unwrap_or(&[])
                        .partition_point(|s| *s <= a)
                }
                _ => self.starts4.partition_point(|s| *s <= a),
            }
        } else {
            self.starts.partition_point(|s| *s <= addr)
        }
        .saturating_sub(1);
        self.atoms(i)
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn start(&self, i: usize) -> u128 {
        if self.bits == 32 {
            self.starts4.get(i).map_or(u128::MAX, |s| u128::from(*s))
        } else {
            self.starts.get(i).copied().unwrap_or(u128::MAX)
        }
    }

    /// Index of the first interval starting at or after `addr`.
    fn first_from(&self, addr: u128) -> usize {
        if self.bits == 32 {
            match u32::try_from(addr) {
                Ok(a) => self.starts4.partition_point(|s| *s < a),
                Err(_) => self.starts4.len(),
            }
        } else {
            self.starts.partition_point(|s| *s < addr)
        }
    }

    /// Index of the first interval starting after `addr`.
    fn first_after(&self, addr: u128) -> usize {
        if self.bits == 32 {
            match u32::try_from(addr) {
                Ok(a) => self.starts4.partition_point(|s| *s <= a),
                Err(_) => self.starts4.len(),
            }
        } else {
            self.starts.partition_point(|s| *s <= addr)
        }
    }

    fn atoms(&self, i: usize) -> &[AtomId] {
        match self.spans.get(i) {
            Some((off, len)) => self
                .pool
                .get(*off as usize..(*off + *len) as usize)
                .unwrap_or(&[]),
            None => &[],
        }
    }

    /// Every interval: its first address and its atoms.
    #[cfg(test)]
    fn intervals(&self) -> Vec<(u128, Vec<AtomId>)> {
        (0..self.len())
            .map(|i| (self.start(i), self.atoms(i).to_vec()))
            .collect()
    }

    /// Heap bytes of the lookup arrays.
    pub(crate) fn bytes(&self) -> usize {
        self.starts.capacity() * 16
            + self.starts4.capacity() * 4
            + self.dir4.as_ref().map_or(0, |_| DIR_LEN * 4)
            + self.spans.capacity() * 8
            + self.pool.capacity() * 4
    }
}

/// Writes a [`PrefixTable`] interval by interval, in address order, merging an
/// interval into the previous one when their atoms are equal (so any way of
/// producing the same address-to-atoms function gives the same table).
struct TableBuilder {
    bits: u8,
    starts: Vec<u128>,
    starts4: Vec<u32>,
    spans: Vec<(u32, u32)>,
    pool: Vec<AtomId>,
}

impl TableBuilder {
    fn new(bits: u8, intervals: usize) -> Self {
        let (starts, starts4) = if bits == 32 {
            (Vec::new(), Vec::with_capacity(intervals))
        } else {
            (Vec::with_capacity(intervals), Vec::new())
        };
        TableBuilder {
            bits,
            starts,
            starts4,
            spans: Vec::with_capacity(intervals),
            pool: Vec::new(),
        }
    }

    fn last_start(&self) -> Option<u128> {
        if self.bits == 32 {
            self.starts4.last().map(|s| u128::from(*s))
        } else {
            self.starts.last().copied()
        }
    }

    /// Starts the interval at `start` (at or after every interval so far; at the
    /// same start it replaces the last one). False when `atoms` equal the previous
    /// interval's, which then extends over it.
    fn begin(&mut self, start: u128, atoms: &[AtomId]) -> bool {
        if self.last_start() == Some(start) {
            if let Some((off, len)) = self.spans.pop() {
                // Its atoms stay in the pool (garbage) unless they were the last added.
                if (off + len) as usize == self.pool.len() {
                    self.pool.truncate(off as usize);
                }
            }
            self.starts4.pop();
            self.starts.pop();
        }
        let same = match self.spans.last() {
            Some((off, len)) => self.pool.get(*off as usize..(*off + *len) as usize) == Some(atoms),
            None => false,
        };
        if same {
            return false;
        }
        if self.bits == 32 {
            self.starts4.push(start as u32);
        } else {
            self.starts.push(start);
        }
        true
    }

    /// Appends the interval starting at `start` with `atoms`.
    fn push(&mut self, start: u128, atoms: &[AtomId]) {
        if self.begin(start, atoms) {
            self.spans
                .push((self.pool.len() as u32, atoms.len() as u32));
            self.pool.extend_from_slice(atoms);
        }
    }

    /// Appends `old`'s intervals `from..to` as they are. Only for a builder made by
    /// [`TableBuilder::patching`] `old`, whose pool starts as `old`'s.
    fn copy(&mut self, old: &PrefixTable, from: usize, to: usize) {
        if from >= to {
            return;
        }
        if self.begin(old.start(from), old.atoms(from)) {
            self.spans
                .extend_from_slice(old.spans.get(from..=from).unwrap_or(&[]));
        }
        // The rest of the run is canonical already: no two neighbours are equal.
        let rest = from + 1..to;
        if self.bits == 32 {
            self.starts4
                .extend_from_slice(old.starts4.get(rest.clone()).unwrap_or(&[]));
        } else {
            self.starts
                .extend_from_slice(old.starts.get(rest.clone()).unwrap_or(&[]));
        }
        self.spans
            .extend_from_slice(old.spans.get(rest).unwrap_or(&[]));
    }

    /// A builder for a table patched from `old`: `old`'s atom lists stay where they
    /// are, so its intervals are copied without their atoms.
    fn patching(old: &PrefixTable, extra: usize) -> Self {
        let mut b = TableBuilder::new(old.bits, old.len() + extra);
        b.pool = old.pool.clone();
        b
    }

    fn finish(mut self) -> PrefixTable {
        if self.spans.is_empty() {
            self.push(0, &[]);
        }
        // Patches leave replaced atom lists behind; drop them once they are half.
        let live: usize = self.spans.iter().map(|(_, len)| *len as usize).sum();
        if self.pool.len() > 2 * live + COMPACT_SLACK {
            let mut pool = Vec::with_capacity(live);
            for (off, len) in &mut self.spans {
                pool.extend_from_slice(
                    self.pool
                        .get(*off as usize..(*off + *len) as usize)
                        .unwrap_or(&[]),
                );
                *off = (pool.len() - *len as usize) as u32;
            }
            self.pool = pool;
        }
        let dir4 = (self.bits == 32).then(|| {
            let mut dir = Box::new([0u32; DIR_LEN]);
            let mut k = 0usize;
            for (b, slot) in dir.iter_mut().enumerate() {
                let block_start = (b as u64) << (32 - DIR_BITS);
                while self
                    .starts4
                    .get(k)
                    .is_some_and(|s| u64::from(*s) < block_start)
                {
                    k += 1;
                }
                *slot = k as u32;
            }
            dir
        });
        PrefixTable {
            starts: self.starts,
            starts4: self.starts4,
            dir4,
            spans: self.spans,
            pool: self.pool,
            bits: self.bits,
        }
    }
}

/// Garbage a patched table's pool may hold beyond its live atoms before it is
/// compacted (none in tests, so they compact often).
const COMPACT_SLACK: usize = if cfg!(test) { 0 } else { 1024 };

/// Recomputing this many ranges or more (against the table's intervals) rebuilds the
/// whole table instead: a full sweep is cheaper than that many ancestor look-ups.
const FULL_REBUILD_DIVISOR: usize = 8;

/// One family's prefixes with their atoms, and the prefixes changed since the last
/// table was made.
#[derive(Clone, Default)]
pub(crate) struct PrefixSource {
    prefixes: BTreeMap<Prefix, Vec<AtomId>>,
    bits: u8,
    dirty: Vec<Prefix>,
}

impl PrefixSource {
    pub(crate) fn new(bits: u8) -> Self {
        PrefixSource {
            bits,
            ..PrefixSource::default()
        }
    }

    /// Adds `atom` to `prefix`; true when it was not there.
    pub(crate) fn add(&mut self, prefix: Prefix, atom: AtomId) -> bool {
        let atoms = self.prefixes.entry(prefix).or_default();
        let added = match atoms.binary_search(&atom) {
            Err(pos) => {
                atoms.insert(pos, atom);
                true
            }
            Ok(_) => false,
        };
        if added {
            self.dirty.push(prefix);
        }
        added
    }

    /// Removes `atom` from `prefix`; true when it was there.
    pub(crate) fn remove(&mut self, prefix: Prefix, atom: AtomId) -> bool {
        let Some(atoms) = self.prefixes.get_mut(&prefix) else {
            return false;
        };
        let removed = match atoms.binary_search(&atom) {
            Ok(pos) => {
                atoms.remove(pos);
                true
            }
            Err(_) => false,
        };
        if atoms.is_empty() {
            self.prefixes.remove(&prefix);
        }
        if removed {
            self.dirty.push(prefix);
        }
        removed
    }

    /// Whether prefixes changed since the last table.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The whole table, from every prefix.
    pub(crate) fn build(&mut self) -> PrefixTable {
        self.dirty.clear();
        let mut out = TableBuilder::new(self.bits, 2 * self.prefixes.len() + 1);
        self.sweep(Prefix { start: 0, len: 0 }, &mut out, &mut Vec::new());
        out.finish()
    }

    /// The table after the changes since `old` was made: patched when few ranges
    /// changed, else built whole.
    pub(crate) fn update(&mut self, old: &PrefixTable) -> PrefixTable {
        if self.dirty.len() * FULL_REBUILD_DIVISOR >= old.len() || old.bits != self.bits {
            self.build()
        } else {
            self.patch(old)
        }
    }

    /// `old`'s intervals outside the changed prefixes' ranges, the ranges recomputed.
    fn patch(&mut self, old: &PrefixTable) -> PrefixTable {
        let mut ranges = std::mem::take(&mut self.dirty);
        // Only the outermost changed prefixes: a nested one's range is inside theirs.
        ranges.sort_unstable();
        let mut outer: Vec<Prefix> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match outer.last() {
                Some(o) if r.start <= o.last(self.bits) => {}
                _ => outer.push(r),
            }
        }
        let mut out = TableBuilder::patching(old, 2 * outer.len());
        let mut scratch = Vec::new();
        let mut k = 0usize;
        for range in outer {
            let (lo, hi) = (range.start, range.last(self.bits));
            let run = k;
            k = old.first_from(lo).max(k);
            out.copy(old, run, k);
            self.sweep(range, &mut out, &mut scratch);
            k = old.first_after(hi).max(k);
            // The old interval that held `hi + 1` resumes there, unless one starts
            // there anyway. The first interval starts at 0, so `k >= 1`.
            if hi < max_addr(self.bits) && (k == old.len() || old.start(k) != hi + 1) {
                out.push(hi + 1, old.atoms(k.saturating_sub(1)));
            }
        }
        out.copy(old, k, old.len());
        out.finish()
    }

    /// Writes the intervals of `range` (a prefix's addresses): from the prefixes
    /// covering all of it (its ancestors, itself) and those inside it.
    fn sweep(&self, range: Prefix, out: &mut TableBuilder, scratch: &mut Vec<AtomId>) {
        let (lo, hi) = (range.start, range.last(self.bits));
        // Open prefixes as (last address, atoms); ancestors first, shortest first.
        let mut open: Vec<(u128, &[AtomId])> = Vec::new();
        for len in 0..=range.len {
            let host = u32::from(self.bits - len);
            let mask = if host >= 128 {
                0
            } else {
                !((1u128 << host) - 1)
            };
            let key = Prefix {
                start: lo & mask,
                len,
            };
            if let Some(atoms) = self.prefixes.get(&key) {
                open.push((key.last(self.bits), atoms));
            }
        }
        let inside = self.prefixes.range(
            Prefix {
                start: lo,
                len: range.len.saturating_add(1),
            }..=Prefix {
                start: hi,
                len: u8::MAX,
            },
        );
        // Interval boundaries: the range's start, each inner prefix's start and the
        // address after its end (within the range).
        let mut points: Vec<u128> = vec![lo];
        for (p, _) in inside.clone() {
            points.push(p.start);
            let last = p.last(self.bits);
            if last < hi {
                points.push(last + 1);
            }
        }
        points.sort_unstable();
        points.dedup();
        let mut inside = inside.peekable();
        for p in points {
            open.retain(|(last, _)| *last >= p);
            while let Some((pre, atoms)) = inside.peek() {
                if pre.start != p {
                    break;
                }
                open.push((pre.last(self.bits), atoms));
                inside.next();
            }
            scratch.clear();
            for (_, atoms) in &open {
                scratch.extend_from_slice(atoms);
            }
            scratch.sort_unstable();
            scratch.dedup();
            out.push(p, scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(a: u32, l: u8) -> Prefix {
        Prefix {
            start: u128::from(a),
            len: l,
        }
    }

    #[test]
    fn intervals_union_nested_prefixes() {
        let mut s = PrefixSource::new(32);
        s.add(net(0x0a00_0000, 8), 1);
        s.add(net(0x0a01_0000, 16), 2);
        s.add(net(0, 0), 3);
        let p = s.build();
        assert_eq!(p.get(0x0a01_0203), &[1, 2, 3]);
        assert_eq!(p.get(0x0a02_0000), &[1, 3]);
        assert_eq!(p.get(0x0b00_0000), &[3]);
        assert_eq!(p.get(u128::from(u32::MAX)), &[3]);
        s.remove(net(0, 0), 3);
        let q = s.update(&p);
        assert_eq!(q.get(0x0b00_0000), &[] as &[u32]);
        assert_eq!(q.get(0x0a00_0001), &[1]);
        // The old table is untouched (a generation may still read it).
        assert_eq!(p.get(0x0b00_0000), &[3]);
    }

    #[test]
    fn empty_family_matches_nothing() {
        let t = PrefixTable::empty(32);
        assert_eq!(t.get(0x0a00_0001), &[] as &[u32]);
        let t = PrefixTable::empty(128);
        assert_eq!(t.get(u128::MAX), &[] as &[u32]);
    }

    /// A prefix of one family from a small universe, so changes nest and collide.
    fn prefix(bits: u8) -> impl Strategy<Value = Prefix> {
        let max_len = if bits == 32 { 31u8 } else { 127 };
        (0u8..4, 0u32..64, any::<bool>()).prop_map(move |(depth, pick, top)| {
            // Lengths near the top of the address (short prefixes) and near the
            // bottom (long ones), with starts sharing high bits.
            let len = if top { depth * 3 } else { max_len - depth * 3 };
            let shift = bits - len;
            let start = if shift >= 128 {
                0
            } else {
                let spread = u128::from(pick % 8) << (bits - 3);
                let near = u128::from(pick) << (bits / 2);
                ((spread | near) >> shift) << shift
            };
            Prefix { start, len }
        })
    }

    fn check_family(bits: u8, batches: Vec<Vec<(Prefix, u32, bool)>>) -> Result<(), TestCaseError> {
        let mut s = PrefixSource::new(bits);
        let mut table = s.build();
        for batch in batches {
            let before = table.clone();
            let before_intervals = before.intervals();
            for (p, atom, add) in batch {
                if add {
                    s.add(p, atom);
                } else {
                    s.remove(p, atom);
                }
            }
            let whole = s.clone().update(&before);
            table = s.patch(&before);
            let full = s.clone().build();
            prop_assert_eq!(whole.intervals(), full.intervals());
            prop_assert_eq!(table.intervals(), full.intervals());
            prop_assert_eq!(before.intervals(), before_intervals);
            // Point look-ups at every boundary and its neighbours.
            for (start, _) in full.intervals() {
                for a in [start.saturating_sub(1), start, start.saturating_add(1)] {
                    if a <= max_addr(bits) {
                        prop_assert_eq!(table.get(a), full.get(a));
                    }
                }
            }
        }
        Ok(())
    }

    fn batches(bits: u8) -> impl Strategy<Value = Vec<Vec<(Prefix, u32, bool)>>> {
        let change = (prefix(bits), 0u32..4, prop::bool::weighted(0.7));
        prop::collection::vec(prop::collection::vec(change, 1..6), 1..25)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Recomputing the changed ranges gives the same intervals as a full sweep,
        /// and leaves the old table as it was.
        #[test]
        fn incremental_tables_equal_full_builds_v4(b in batches(32)) {
            check_family(32, b)?;
        }

        #[test]
        fn incremental_tables_equal_full_builds_v6(b in batches(128)) {
            check_family(128, b)?;
        }
    }
}
