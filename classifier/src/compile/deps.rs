//! Dependency tracking: each interface remembers the policies and profiles its
//! programs were built from, so a change to one recompiles only the interfaces that
//! use it.

use std::hash::BuildHasher;
use std::sync::Arc;

use capo_policy::PolicyKey;

use super::patch::Owner;
use super::FastSet;

/// The policies and profiles an interface's programs read (named ones included even
/// when absent from the state: their arrival must recompile the interface), each
/// by a 64-bit hash ([`owner_hash`]). Two owners of one hash make an interface look
/// like a user of both: a change to the one it does not read then recompiles it
/// (no patch finds its fragments there), which is wasted work, never a stale program.
#[derive(Default)]
pub(super) struct Deps {
    owners: FastSet<u64>,
}

impl Deps {
    pub(super) fn uses_policy(&mut self, key: &PolicyKey) {
        self.owners.insert(owner_hash(Owner::Policy(key)));
    }

    pub(super) fn uses_profile(&mut self, name: &str) {
        self.owners.insert(owner_hash(Owner::Profile(name)));
    }

    /// The interface's owners, and their filter.
    pub(super) fn into_sets(self) -> (Arc<FastSet<u64>>, PolicyFilter) {
        let mut filter = PolicyFilter::default();
        for h in &self.owners {
            filter.insert(*h);
        }
        (Arc::new(self.owners), filter)
    }
}

/// A policy's or profile's hash, as interfaces file the ones they read: fixed, so
/// every interface and update agree on it.
pub(super) fn owner_hash(owner: Owner<'_>) -> u64 {
    let hasher = foldhash::fast::FixedState::with_seed(0x5eed);
    match owner {
        // Every part of the key: `PolicyKey`'s own hash leaves the kind out, and a
        // staged policy must not look like its enforced twin.
        Owner::Policy(key) => hasher.hash_one((
            0u8,
            key.kind.as_str(),
            key.namespace.as_str(),
            key.name.as_str(),
        )),
        Owner::Profile(name) => hasher.hash_one((1u8, name)),
    }
}

/// A 512-bit filter of the policies and profiles an interface's programs read: the
/// builder keeps the listed interfaces' filters side by side, so finding a
/// policy's or profile's users reads one contiguous table instead of every
/// interface's set (two bits each: with W-large's ~45 policies per interface,
/// about 3% of interfaces pass the filter without listing the policy, and the set
/// then says no).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PolicyFilter([u64; 8]);

impl PolicyFilter {
    /// The two bits of a policy's or profile's hash ([`owner_hash`]), which
    /// [`PolicyFilter::may_hold`] looks for.
    pub(super) fn bits(h: u64) -> [(usize, u64); 2] {
        let bit = |b: u64| ((b >> 6) as usize % 8, 1u64 << (b % 64));
        [bit(h & 511), bit((h >> 9) & 511)]
    }

    fn insert(&mut self, h: u64) {
        for (word, bit) in Self::bits(h) {
            if let Some(w) = self.0.get_mut(word) {
                *w |= bit;
            }
        }
    }

    /// False when the interface surely does not read the policy or profile whose
    /// bits these are.
    pub(super) fn may_hold(&self, bits: &[(usize, u64); 2]) -> bool {
        bits.iter()
            .all(|(word, bit)| self.0.get(*word).is_some_and(|w| w & bit != 0))
    }
}
