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
    /// Counts the lists: every change and every list made anew makes the next.
    version: u64,
    /// Older lists, oldest first.
    spares: VecDeque<Spare>,
    /// The edits that made each list since the oldest spare's: `(version made,
    /// edits)`, oldest first.
    log: VecDeque<(u64, Vec<Edit>)>,
    /// Changes made on a spare, on a fresh copy, and spares brought forward by
    /// [`Listing::settle`].
    on_spare: u64,
    copied: u64,
    settled: u64,
}

/// How the interface list was changed since the builder last compiled everything
/// ([`super::Builder::interface_list_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListChanges {
    /// Changes that edited a spare copy no generation held.
    pub on_spare: u64,
    /// Changes that copied the list.
    pub copied: u64,
    /// Spares brought up to the current list by `Builder::settle`.
    pub settled: u64,
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
        // A list a generation holds stays as it is, kept as a spare; the change is
        // made on the newest spare none holds, brought forward, else on a copy. A
        // list none holds yet is edited where it is.
        if !unheld(&mut self.ifaces, &mut self.direct) {
            let (ifaces, direct) = self.writable();
            let replaced = Spare {
                ifaces: std::mem::replace(&mut self.ifaces, ifaces),
                direct: std::mem::replace(&mut self.direct, direct),
                version: self.version,
            };
            self.spares.push_back(replaced);
            if self.spares.len() > SPARES {
                self.spares.pop_front();
            }
        }
        if let Some((l, d)) = both_mut(&mut self.ifaces, &mut self.direct) {
            for e in &edits {
                apply(l, d, e);
            }
        }
        for e in &edits {
            edit_filters(&mut self.filters, e);
        }
        // Every change is the next version, which the spares replay.
        self.version += 1;
        self.log.push_back((self.version, edits));
        self.prune();
        true
    }

    /// The newest spare no generation holds, brought up to the current list, else a
    /// copy of it.
    fn writable(&mut self) -> (Arc<Vec<Arc<Iface>>>, Arc<Vec<Direct>>) {
        let free = self
            .spares
            .iter_mut()
            .rposition(|s| unheld(&mut s.ifaces, &mut s.direct));
        match free.and_then(|at| self.spares.remove(at)) {
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
        }
    }

    /// Brings the spares no generation holds up to the current list now: the
    /// interfaces and programs only they still held are let go of here rather than
    /// during the next change.
    pub(super) fn settle(&mut self) {
        let current = self.version;
        for spare in &mut self.spares {
            if spare.version != current {
                replay(spare, &self.log);
                self.settled += u64::from(spare.version == current);
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

    /// How many changes were made on a spare and how many on a copy, and how many
    /// spares [`Listing::settle`] brought forward.
    pub(super) fn counts(&self) -> ListChanges {
        ListChanges {
            on_spare: self.on_spare,
            copied: self.copied,
            settled: self.settled,
        }
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
    let Some((l, d)) = both_mut(&mut spare.ifaces, &mut spare.direct) else {
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

/// Both vectors, where nothing else (no generation) holds either.
fn both_mut<'a>(
    ifaces: &'a mut Arc<Vec<Arc<Iface>>>,
    direct: &'a mut Arc<Vec<Direct>>,
) -> Option<(&'a mut Vec<Arc<Iface>>, &'a mut Vec<Direct>)> {
    Arc::get_mut(ifaces).zip(Arc::get_mut(direct))
}

/// Whether nothing else (no generation) holds either vector.
fn unheld(ifaces: &mut Arc<Vec<Arc<Iface>>>, direct: &mut Arc<Vec<Direct>>) -> bool {
    both_mut(ifaces, direct).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Builder;
    use capo_policy::{Cidr, IdTable, State, Update, WorkloadEndpoint, WorkloadKey};

    /// A builder's interfaces for `n` endpoints (and the host's), to list.
    fn some_ifaces(n: u8) -> Vec<Arc<Iface>> {
        let mut state = State::new();
        for i in 0..n {
            let key = WorkloadKey {
                orchestrator: "k8s".into(),
                workload: format!("ns/pod{i}"),
                endpoint: "eth0".into(),
            };
            let endpoint = WorkloadEndpoint {
                name: format!("tun{i}"),
                profile_ids: vec![],
                ipv4_nets: vec![Cidr::host(std::net::IpAddr::from([10, 0, 0, i + 1]))],
                ipv6_nets: vec![],
                tiers: vec![],
            };
            state
                .apply(Update::WorkloadUpdate(key, endpoint.into()))
                .unwrap();
        }
        let mut ids = IdTable::default();
        ids.sync(&state);
        let mut b = Builder::new();
        b.build(&state, &ids);
        b.listing.ifaces().to_vec()
    }

    fn same(a: &[Arc<Iface>], b: &[Arc<Iface>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
    }

    /// Random edits, one or two a change, while the lists made are held for a
    /// while (as generations hold them) or let go of at once, settled now and
    /// then, and edited again before anything holds them: the list is always what
    /// the same edits make of a plain vector, every spare replays to it, and no
    /// held list ever changes.
    #[test]
    fn edits_equal_a_plain_vector_whatever_is_held() {
        let pool = some_ifaces(12);
        let mut listing = Listing::default();
        let mut model: Vec<Arc<Iface>> = pool[..4].to_vec();
        listing.reset(model.clone());
        // Lists held, each with what it held when made.
        type Held = (Arc<Vec<Arc<Iface>>>, Vec<Arc<Iface>>);
        let mut held: Vec<Held> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..3_000 {
            let mut edits = Vec::new();
            for _ in 0..1 + (x >> 50) % 2 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let iface = pool[(x % pool.len() as u64) as usize].clone();
                let len = model.len();
                let at = |n: usize| ((x >> 8) % n.max(1) as u64) as usize;
                let edit = match (x >> 32) % 3 {
                    0 if len > 0 => Edit::Set(at(len), iface),
                    1 if len > 2 => Edit::Remove(at(len)),
                    _ => Edit::Insert(at(len + 1), iface),
                };
                match &edit {
                    Edit::Set(at, i) => model[*at] = i.clone(),
                    Edit::Insert(at, i) => model.insert(*at, i.clone()),
                    Edit::Remove(at) => {
                        model.remove(*at);
                    }
                }
                edits.push(edit);
            }
            assert!(listing.edit(edits), "step {step}");
            assert!(same(listing.ifaces(), &model), "step {step}");
            assert!(listing.consistent(), "step {step}");
            assert!(listing.spares_replay_to_current(), "step {step}");
            for (list, was) in &held {
                assert!(same(list, was), "step {step}: a held list changed");
            }
            match (x >> 40) % 4 {
                0 => held.push((listing.ifaces().clone(), model.clone())),
                1 => held.clear(),
                _ => {}
            }
            if held.len() > 3 {
                held.remove(0);
            }
            if (x >> 44) % 3 == 0 {
                listing.settle();
                assert!(listing.spares_replay_to_current(), "step {step}");
            }
        }
        // An edit out of the list is refused and changes nothing.
        let len = model.len();
        assert!(!listing.edit(vec![Edit::Remove(len)]));
        assert!(!listing.edit(vec![
            Edit::Insert(0, pool[0].clone()),
            Edit::Set(len + 1, pool[0].clone())
        ]));
        assert!(same(listing.ifaces(), &model));
        let counts = listing.counts();
        assert!(
            counts.on_spare > 300 && counts.copied > 100 && counts.settled > 100,
            "{counts:?}"
        );
    }
}
