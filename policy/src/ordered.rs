//! An insertion-ordered hash map whose removals cost the same wherever the key sits.
//!
//! The state keeps Felix's objects in arrival order (the views number and print in
//! it). `IndexMap::shift_remove` keeps that order by moving every later entry up
//! and re-indexing each of them in its table: removing an early IP set among
//! W-large's 10,000, or an early member of a set of 10,000, touched all the later
//! ones, and the VPP plugin applies each update to three copies of the state.
//! Here a removal leaves a hole in the entry list (its key leaves the table at
//! once); the holes are squeezed out when they outnumber the live entries, so a
//! removal is O(1) amortized and iteration stays in arrival order.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// One place in arrival order: the entry, or a hole a removal left. `Copy` when its
/// entry is (a set's members): a copy of the map then copies the list in one go.
#[derive(Clone, Copy)]
struct Place<K, V> {
    /// The key's hash, kept so that squeezing out holes rehashes nothing.
    hash: u64,
    entry: Option<(K, V)>,
}

/// An insertion-ordered map: a new key goes last, a replaced one keeps its place,
/// a removed one leaves the order of the rest unchanged.
pub struct OrderedMap<K, V, S = foldhash::quality::RandomState> {
    /// Positions in `places` of the live keys.
    table: HashTable<usize>,
    places: Vec<Place<K, V>>,
    live: usize,
    hasher: S,
}

/// A copy's entry list keeps room for this fraction of its length more (and
/// [`COPY_ROOM_MIN`]; an empty one none): a copy made exactly full copies the whole
/// list again at its first addition. The plugin's state copies are made whole and then take one
/// update at a time, so each set's first new member after a copy paid that.
const COPY_ROOM_DIVISOR: usize = 8;
const COPY_ROOM_MIN: usize = 4;

impl<K: Clone, V: Clone, S: Clone> Clone for OrderedMap<K, V, S> {
    fn clone(&self) -> Self {
        let room = match self.places.len() {
            0 => 0,
            n => n / COPY_ROOM_DIVISOR + COPY_ROOM_MIN,
        };
        let mut places = Vec::with_capacity(self.places.len() + room);
        places.extend_from_slice(&self.places);
        OrderedMap {
            table: self.table.clone(),
            places,
            live: self.live,
            hasher: self.hasher.clone(),
        }
    }
}

impl<K, V, S: Default> Default for OrderedMap<K, V, S> {
    fn default() -> Self {
        OrderedMap {
            table: HashTable::new(),
            places: Vec::new(),
            live: 0,
            hasher: S::default(),
        }
    }
}

impl<K, V, S> OrderedMap<K, V, S> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The entries in arrival order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            places: self.places.iter(),
            left: self.live,
        }
    }

    /// The keys in arrival order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// The values in arrival order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// The `i`th entry in arrival order (a walk over the entries when removals left
    /// holes).
    pub fn get_index(&self, i: usize) -> Option<(&K, &V)> {
        if self.places.len() == self.live {
            self.places
                .get(i)
                .and_then(|p| p.entry.as_ref().map(|(k, v)| (k, v)))
        } else {
            self.iter().nth(i)
        }
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> OrderedMap<K, V, S> {
    /// Where `key` (of hash `hash`) sits in `places`.
    fn position<Q>(&self, hash: u64, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let places = &self.places;
        self.table.find(hash, |&at| is_at(places, at, key)).copied()
    }

    fn find<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position(self.hasher.hash_one(key), key)
    }

    /// The value at `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// The key held equal to `key`, and its value (the map's own key, borrowed for
    /// as long as the map).
    pub fn get_key_value<Q>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.find(key)?;
        self.places
            .get(at)
            .and_then(|p| p.entry.as_ref())
            .map(|(k, v)| (k, v))
    }

    /// The value at `key`, to change in place.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let at = self.find(key)?;
        self.places
            .get_mut(at)
            .and_then(|p| p.entry.as_mut())
            .map(|(_, v)| v)
    }

    /// Whether `key` is held.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(key).is_some()
    }

    /// Puts `value` at `key`: a new key goes last, a held one keeps its place. The
    /// value it replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(&key);
        if let Some(at) = self.position(hash, &key) {
            let (_, old) = self.places.get_mut(at)?.entry.as_mut()?;
            return Some(std::mem::replace(old, value));
        }
        let places = &self.places;
        self.table
            .insert_unique(hash, places.len(), |&i| places.get(i).map_or(0, |p| p.hash));
        self.places.push(Place {
            hash,
            entry: Some((key, value)),
        });
        self.live += 1;
        None
    }

    /// Removes `key`; the rest keep their order. The value it held, if any.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let places = &self.places;
        let (at, _) = self
            .table
            .find_entry(hash, |&at| is_at(places, at, key))
            .ok()?
            .remove();
        let (_, value) = self.places.get_mut(at)?.entry.take()?;
        self.live -= 1;
        if self.live == 0 {
            self.places.clear();
        } else if self.places.len() - self.live > self.live.max(16) {
            self.squeeze();
        }
        Some(value)
    }

    /// Drops the holes and renumbers the table: O(n), once per n removals at most.
    fn squeeze(&mut self) {
        self.places.retain(|p| p.entry.is_some());
        let places = &self.places;
        let mut table = HashTable::with_capacity(places.len());
        for (at, place) in places.iter().enumerate() {
            table.insert_unique(place.hash, at, |&i| places.get(i).map_or(0, |p| p.hash));
        }
        self.table = table;
    }
}

/// Whether the entry at `at` holds `key`.
fn is_at<K: Borrow<Q>, V, Q: Eq + ?Sized>(places: &[Place<K, V>], at: usize, key: &Q) -> bool {
    places
        .get(at)
        .and_then(|p| p.entry.as_ref())
        .is_some_and(|(k, _)| k.borrow() == key)
}

/// The entries of an [`OrderedMap`] in arrival order.
pub struct Iter<'a, K, V> {
    places: std::slice::Iter<'a, Place<K, V>>,
    left: usize,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        for place in self.places.by_ref() {
            if let Some((k, v)) = &place.entry {
                self.left -= 1;
                return Some((k, v));
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

impl<'a, K, V, S> IntoIterator for &'a OrderedMap<K, V, S> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Equal when they hold the same entries, in any order (as `IndexMap`'s and
/// `HashMap`'s equality).
impl<K: Hash + Eq, V: PartialEq, S: BuildHasher> PartialEq for OrderedMap<K, V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq, V: Eq, S: BuildHasher> Eq for OrderedMap<K, V, S> {}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for OrderedMap<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> FromIterator<(K, V)> for OrderedMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = OrderedMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k % 64, v)),
            any::<u8>().prop_map(|k| Op::Remove(k % 64)),
        ]
    }

    proptest! {
        /// Against `IndexMap` with `shift_remove` (the order the views relied on):
        /// the same entries in the same order, look-ups, indexes and lengths, after
        /// every step.
        #[test]
        fn prop_ordered_map_is_an_index_map_with_shift_removal(ops in prop::collection::vec(op(), 0..400)) {
            let mut ours: OrderedMap<u8, u32> = OrderedMap::default();
            let mut model: IndexMap<u8, u32> = IndexMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(ours.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(ours.remove(&k), model.shift_remove(&k)),
                }
                prop_assert_eq!(ours.len(), model.len());
                prop_assert_eq!(ours.iter().len(), model.len());
                prop_assert!(ours.iter().eq(model.iter()));
                for k in 0..64u8 {
                    prop_assert_eq!(ours.get(&k), model.get(&k));
                    prop_assert_eq!(ours.get_key_value(&k), model.get_key_value(&k));
                    prop_assert_eq!(ours.contains_key(&k), model.contains_key(&k));
                }
                let i = model.len() / 2;
                prop_assert_eq!(ours.get_index(i), model.get_index(i));
            }
        }
    }

    #[test]
    fn holes_are_squeezed_out_and_order_kept() {
        let mut map: OrderedMap<u32, u32> = (0..1_000).map(|k| (k, k)).collect();
        for k in (0..1_000).step_by(2) {
            assert_eq!(map.remove(&k), Some(k));
        }
        // Half removed: the holes outnumbered the live entries once and were
        // squeezed out; the list holds at most as many holes as entries.
        assert!(
            map.places.len() <= 2 * map.len(),
            "{} places",
            map.places.len()
        );
        assert!(map.keys().copied().eq((1..1_000).step_by(2)));
        // A removed key comes back last, a held one keeps its place.
        map.insert(0, 7);
        map.insert(1, 9);
        assert_eq!(map.get_index(0), Some((&1, &9)));
        assert_eq!(map.iter().last(), Some((&0, &7)));
        assert_eq!(map.get(&0), Some(&7));
    }

    #[test]
    fn a_copy_takes_new_entries_without_growing_its_list() {
        let mut map: OrderedMap<u32, u32> = (0..1_000).map(|k| (k, k)).collect();
        map.remove(&500);
        let mut copy = map.clone();
        assert!(copy.iter().eq(map.iter()));
        assert_eq!(copy.places.len(), map.places.len());
        // A removal and its key added back, an eighth of the list over: the list
        // is not grown (grown, it is copied, unless the allocator can extend it).
        let room = copy.places.capacity();
        copy.insert(500, 1);
        for k in 1_000..1_000 + 1_000 / COPY_ROOM_DIVISOR as u32 {
            copy.insert(k, k);
        }
        assert_eq!(copy.places.capacity(), room);
        assert_eq!(copy.iter().nth(999), Some((&500, &1)));
        assert_eq!(copy.len(), 1_000 + 1_000 / COPY_ROOM_DIVISOR);
        assert_eq!(map.len(), 999);
    }

    #[test]
    fn equality_ignores_order() {
        let a: OrderedMap<u8, u8> = [(1, 1), (2, 2)].into_iter().collect();
        let b: OrderedMap<u8, u8> = [(2, 2), (1, 1)].into_iter().collect();
        let c: OrderedMap<u8, u8> = [(2, 2), (1, 3)].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
