//! Dependency tracking: each interface remembers the policies and profiles its
//! programs were built from, so a change to one recompiles only the interfaces that
//! use it.

use std::sync::Arc;

use capo_policy::{IdTable, PolicyKey, State};

use super::{Builder, FastSet};
use crate::generation::{Iface, IfaceKind};

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

    /// The interface's `policies` and `profiles`.
    pub(super) fn into_sets(self) -> (Arc<FastSet<PolicyKey>>, Arc<FastSet<String>>) {
        (Arc::new(self.policies), Arc::new(self.profiles))
    }
}

impl Builder {
    /// Recompiles the interfaces whose programs `uses`.
    pub(super) fn recompile_dependents(
        &mut self,
        state: &State,
        ids: &IdTable,
        uses: impl Fn(&Iface) -> bool,
    ) {
        let affected: Vec<IfaceKind> = self
            .ifaces
            .iter()
            .filter(|(_, i)| uses(i))
            .map(|(k, _)| k.clone())
            .collect();
        for k in affected {
            self.compile_iface(state, ids, k);
        }
    }
}
