//! The published interface list and the per-direction program table beside it,
//! edited where they changed.
//!
//! A generation shares both vectors with the builder. Copying one to edit it takes
//! a reference on every interface and program (and dropping the old copy gives
//! them back): on W-large that is 1,500 reference counts in as many cache lines,
//! tens of microseconds on every update that moves one interface. So the builder
//! keeps the copies later changes replaced (the spares) and the edits made since;
//! once no generation holds a spare any more, the next change replays those edits
//! onto it and edits it in place. The VPP plugin keeps the generation before the
//! active one, so it takes two spares for one to be free.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::generation::{Entry, Iface};
use crate::program::Program;

use super::PolicyFilter;

/// An interface's program per direction, where it has one of its own (else its
/// programs are chosen by source atom, through the interface).
pub(crate) type Direct = [Option<Arc<Program>>; 2];

/// How many replaced copies are kept for later changes to edit.
const SPARES: usize = 2;

/// One change to the list, by position.
#[derive(Debug, Clone)]
pub(super) enum Edit {
    /// The interface at this position replaced.
    Set(usize, Arc<Iface>),
    /// An interface inserted at this position.
    Insert(usize, Arc<Iface>),
    /// The interface at this position removed.
    Remove(usize),
}

/// The list, its program table and its interfaces' policy filters.
#[derive(Clone, Default)]
pub(super) struct Listing {
    ifaces: Arc<Vec<Arc<Iface>>>,
    direct: Arc<Vec<Direct>>,
    /// Each listed interface's policy filter, in list order (the builder's own).
    filters: Vec<PolicyFilter>,
    /// Counts the lists: each change that copies or brings a spare forward makes
    /// the next.
    version: u64,
    /// Older lists, oldest first.
    spares: VecDeque<Spare>,
    /// The edits that made each list since the oldest spare's: `(version made,
    /// edits)`, oldest first.
    log: VecDeque<(u64, Vec<Edit>)>,
    /// Changes made on a spare, and on a fresh copy.
    on_spare: u64,
    copied: u64,
}

/// An older list and table.
#[derive(Clone)]
struct Spare {
    ifaces: Arc<Vec<Arc<Iface>>>,
    direct: Arc<Vec<Direct>>,
    version: u64,
}

impl Listing {
    /// The interfaces, in kind order.
    pub(super) fn ifaces(&self) -> &Arc<Vec<Arc<Iface>>> {
        &self.ifaces
    }

    /// Each interface's programs of its own, in list order.
    pub(super) fn direct(&self) -> &Arc<Vec<Direct>> {
        &self.direct
    }

    /// Each interface's policy filter, in list order.
    pub(super) fn filters(&self) -> &[PolicyFilter] {
        &self.filters
    }

    /// The list made anew from `ifaces` (the spares dropped: nothing to replay).
    pub(super) fn reset(&mut self, ifaces: Vec<Arc<Iface>>) {
        self.direct = Arc::new(ifaces.iter().map(|i| direct_programs(i)).collect());
        self.filters = ifaces.iter().map(|i| i.policy_filter).collect();
        self.ifaces = Arc::new(ifaces);
        self.version += 1;
        self.spares.clear();
        self.log.clear();
    }

    /// Applies `edits` in turn, each position read from the list the edits before
    /// it left. False, and nothing changed, if a position is out of the list.
    pub(super) fn edit(&mut self, edits: Vec<Edit>) -> bool {
        if !fits(self.ifaces.len(), &edits) {
            return false;
        }
        if edits.is_empty() {
            return true;
        }
        for e in &edits {
            edit_filters(&mut self.filters, e);
        }
        // Not published since the last change: edited where it is, as part of it.
        if let (Some(ifaces), Some(direct)) = unique(&mut self.ifaces, &mut self.direct) {
            for e in &edits {
                apply(ifaces, direct, e);
            }
            match self.log.back_mut() {
                Some((version, last)) if *version == self.version => last.extend(edits),
                // Nothing older kept: nothing to replay it onto.
                _ => debug_assert!(self.spares.is_empty()),
            }
            return true;
        }
        // The newest spare no generation holds, brought forward; else a copy.
        let free = self.spares.iter_mut().rposition(|s| {
            Arc::get_mut(&mut s.ifaces).is_some() && Arc::get_mut(&mut s.direct).is_some()
        });
        let (mut ifaces, mut direct) = match free.and_then(|at| self.spares.remove(at)) {
            Some(mut spare) => {
                replay(&mut spare, &self.log);
                self.on_spare += 1;
                (spare.ifaces, spare.direct)
            }
            None => {
                self.copied += 1;
                (
                    Arc::new(Vec::clone(&self.ifaces)),
                    Arc::new(Vec::clone(&self.direct)),
                )
            }
        };
        if let (Some(l), Some(d)) = unique(&mut ifaces, &mut direct) {
            for e in &edits {
                apply(l, d, e);
            }
        }
        let replaced = Spare {
            ifaces: std::mem::replace(&mut self.ifaces, ifaces),
            direct: std::mem::replace(&mut self.direct, direct),
            version: self.version,
        };
        self.version += 1;
        self.spares.push_back(replaced);
        if self.spares.len() > SPARES {
            self.spares.pop_front();
        }
        self.log.push_back((self.version, edits));
        self.prune();
        true
    }

    /// Brings the spares no generation holds up to the current list now: the
    /// interfaces and programs only they still held are let go of here rather than
    /// during the next change.
    pub(super) fn settle(&mut self) {
        let current = self.version;
        for spare in &mut self.spares {
            if spare.version != current {
                replay(spare, &self.log);
            }
        }
        self.prune();
    }

    /// Drops the edits every spare has.
    fn prune(&mut self) {
        let oldest = self.spares.iter().map(|s| s.version).min();
        while let Some((version, _)) = self.log.front() {
            if oldest.is_some_and(|o| *version > o) {
                break;
            }
            self.log.pop_front();
        }
    }

    /// How many changes were made on a spare, and how many on a copy.
    pub(super) fn changes_on_spare_and_copied(&self) -> (u64, u64) {
        (self.on_spare, self.copied)
    }

    /// Tests: whether every spare, with the logged edits since it replayed, is the
    /// current list.
    #[cfg(test)]
    pub(super) fn spares_replay_to_current(&self) -> bool {
        self.spares.iter().all(|spare| {
            let mut copy = Spare {
                ifaces: Arc::new(Vec::clone(&spare.ifaces)),
                direct: Arc::new(Vec::clone(&spare.direct)),
                version: spare.version,
            };
            replay(&mut copy, &self.log);
            copy.version == self.version
                && same_entries(&copy.ifaces, &copy.direct, &self.ifaces, &self.direct)
        })
    }

    /// Tests: whether the list, table and filters are what a list made anew from
    /// the same interfaces has.
    #[cfg(test)]
    pub(super) fn consistent(&self) -> bool {
        let fresh: Vec<Direct> = self.ifaces.iter().map(|i| direct_programs(i)).collect();
        let filters: Vec<PolicyFilter> = self.ifaces.iter().map(|i| i.policy_filter).collect();
        same_entries(&self.ifaces, &fresh, &self.ifaces, &self.direct) && filters == self.filters
    }
}

/// The logged edits since `spare`'s version applied to it, if no generation holds
/// it (else it is left as it was).
fn replay(spare: &mut Spare, log: &VecDeque<(u64, Vec<Edit>)>) {
    let (Some(l), Some(d)) = unique(&mut spare.ifaces, &mut spare.direct) else {
        return;
    };
    for (version, edits) in log {
        if *version > spare.version {
            for e in edits {
                apply(l, d, e);
            }
            spare.version = *version;
        }
    }
}

#[cfg(test)]
fn same_entries(
    a: &[Arc<Iface>],
    a_direct: &[Direct],
    b: &[Arc<Iface>],
    b_direct: &[Direct],
) -> bool {
    let same_program = |x: &Option<Arc<Program>>, y: &Option<Arc<Program>>| match (x, y) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    };
    a.len() == b.len()
        && a_direct.len() == b_direct.len()
        && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
        && a_direct
            .iter()
            .zip(b_direct)
            .all(|(x, y)| x.iter().zip(y).all(|(p, q)| same_program(p, q)))
}

/// Both vectors, where nothing else holds them.
fn unique<'a>(
    ifaces: &'a mut Arc<Vec<Arc<Iface>>>,
    direct: &'a mut Arc<Vec<Direct>>,
) -> (Option<&'a mut Vec<Arc<Iface>>>, Option<&'a mut Vec<Direct>>) {
    (Arc::get_mut(ifaces), Arc::get_mut(direct))
}

/// Whether every edit's position is in the list the edits before it leave.
fn fits(mut len: usize, edits: &[Edit]) -> bool {
    for e in edits {
        match e {
            Edit::Set(at, _) if *at < len => {}
            Edit::Insert(at, _) if *at <= len => len += 1,
            Edit::Remove(at) if *at < len => len -= 1,
            _ => return false,
        }
    }
    true
}

/// One edit, on a list and table it fits (as [`fits`] checked).
fn apply(ifaces: &mut Vec<Arc<Iface>>, direct: &mut Vec<Direct>, edit: &Edit) {
    match edit {
        Edit::Set(at, iface) => {
            if let (Some(l), Some(d)) = (ifaces.get_mut(*at), direct.get_mut(*at)) {
                *d = direct_programs(iface);
                *l = iface.clone();
            }
        }
        Edit::Insert(at, iface) => {
            if *at <= ifaces.len() && *at <= direct.len() {
                ifaces.insert(*at, iface.clone());
                direct.insert(*at, direct_programs(iface));
            }
        }
        Edit::Remove(at) => {
            if *at < ifaces.len() && *at < direct.len() {
                ifaces.remove(*at);
                direct.remove(*at);
            }
        }
    }
}

fn edit_filters(filters: &mut Vec<PolicyFilter>, edit: &Edit) {
    match edit {
        Edit::Set(at, iface) => {
            if let Some(f) = filters.get_mut(*at) {
                *f = iface.policy_filter;
            }
        }
        Edit::Insert(at, iface) => {
            if *at <= filters.len() {
                filters.insert(*at, iface.policy_filter);
            }
        }
        Edit::Remove(at) => {
            if *at < filters.len() {
                filters.remove(*at);
            }
        }
    }
}

/// An interface's program per direction, where it has one of its own.
pub(super) fn direct_programs(i: &Iface) -> Direct {
    let single = |e: &Entry| match e {
        Entry::Single(p) => Some(p.clone()),
        Entry::BySrcAtom { .. } => None,
    };
    [single(&i.entries[0]), single(&i.entries[1])]
}
