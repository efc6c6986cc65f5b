//! Dependency tracking: each interface remembers the policies and profiles its
//! programs were built from, so a change to one recompiles only the interfaces that
//! use it.

use std::hash::BuildHasher;
use std::sync::Arc;

use capo_policy::PolicyKey;

use super::patch::Owner;
use super::FastSet;

/// The policies and profiles an interface's programs read (named ones included even
/// when absent from the state: their arrival must recompile the interface).
#[derive(Default)]
pub(super) struct Deps {
    policies: FastSet<PolicyKey>,
    profiles: FastSet<String>,
}

impl Deps {
    pub(super) fn uses_policy(&mut self, key: &PolicyKey) {
        self.policies.insert(key.clone());
    }

    pub(super) fn uses_profile(&mut self, name: &str) {
        self.profiles.insert(name.to_string());
    }

    /// The interface's `policies` and `profiles`, and the filter of its policies.
    pub(super) fn into_sets(self) -> (Arc<FastSet<PolicyKey>>, Arc<FastSet<String>>, PolicyFilter) {
        let mut filter = PolicyFilter::default();
        for key in &self.policies {
            filter.insert(Owner::Policy(key));
        }
        for name in &self.profiles {
            filter.insert(Owner::Profile(name));
        }
        (Arc::new(self.policies), Arc::new(self.profiles), filter)
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
    /// The two bits of a policy or profile, which [`PolicyFilter::may_hold`] looks
    /// for.
    pub(super) fn bits(owner: Owner<'_>) -> [(usize, u64); 2] {
        let hasher = foldhash::fast::FixedState::with_seed(0x5eed);
        let h = match owner {
            Owner::Policy(key) => hasher.hash_one((0u8, key)),
            Owner::Profile(name) => hasher.hash_one((1u8, name)),
        };
        let bit = |b: u64| ((b >> 6) as usize % 8, 1u64 << (b % 64));
        [bit(h & 511), bit((h >> 9) & 511)]
    }

    fn insert(&mut self, owner: Owner<'_>) {
        for (word, bit) in Self::bits(owner) {
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
