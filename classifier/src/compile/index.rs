//! Atom and index upkeep: every IP set, anonymous prefix list and virtual set has an
//! atom; the address indexes map each member to the atoms holding it.

use std::sync::Arc;

use capo_policy::{Cidr, IpSetId, Member, State};

use super::{Builder, FastSet, HOST_ADDRS, LOCAL_WORKLOADS};
use crate::index::{addr_key, AddrIndex, AtomId, EpKey, ShardedMap};
use crate::prefix::{Prefix, PrefixSource};

fn prefix_of(c: &Cidr) -> (Prefix, bool, bool) {
    let net = c.net();
    let (start, v6) = addr_key(&net.addr());
    let full = c.prefix_len() == if v6 { 128 } else { 32 };
    (
        Prefix {
            start,
            len: c.prefix_len(),
        },
        v6,
        full,
    )
}

/// Which index entries a member lives in.
enum Key {
    V4(u32),
    V6(u128),
    P4(Prefix),
    P6(Prefix),
    Ep(EpKey),
}

fn member_key(m: &Member) -> Key {
    match m {
        Member::Net(c) => cidr_key(c),
        Member::IpPort {
            addr,
            protocol,
            port,
        } => Key::Ep(EpKey::new(addr, protocol.0, *port)),
    }
}

fn cidr_key(c: &Cidr) -> Key {
    let (p, v6, full) = prefix_of(c);
    match (v6, full) {
        (false, true) => Key::V4(p.start as u32),
        (true, true) => Key::V6(p.start),
        (false, false) => Key::P4(p),
        (true, false) => Key::P6(p),
    }
}

/// The members of set `id` (none when it does not exist).
pub(super) fn set_members(state: &State, id: &IpSetId) -> Vec<Member> {
    state
        .ipsets()
        .get(id)
        .map(|s| s.members().copied().collect())
        .unwrap_or_default()
}

impl Builder {
    /// Loads every set's members into fresh indexes (a full build).
    pub(super) fn load_index(&mut self, state: &State) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut ep = Vec::new();
        let mut ep_marks = Vec::new();
        let mut p4 = PrefixSource::new(32);
        let mut p6 = PrefixSource::new(128);
        for (id, set) in state.ipsets() {
            let atom = self.set_atom(id);
            for m in set.members() {
                self.members += 1;
                match member_key(m) {
                    Key::V4(k) => v4.push((k, atom)),
                    Key::V6(k) => v6.push((k, atom)),
                    Key::P4(p) => {
                        p4.add(p, atom);
                    }
                    Key::P6(p) => {
                        p6.add(p, atom);
                    }
                    Key::Ep(k) => {
                        ep.push((k, atom));
                        if let Member::IpPort {
                            addr,
                            protocol,
                            port,
                        } = m
                        {
                            ep_marks.push((*addr, protocol.0, *port));
                        }
                    }
                }
            }
        }
        self.index = AddrIndex {
            v4: ShardedMap::from_pairs(v4),
            v6: ShardedMap::from_pairs(v6),
            p4: Arc::new(p4.build()),
            p6: Arc::new(p6.build()),
            ep: ShardedMap::from_pairs(ep),
            ep_filter: AddrIndex::default().ep_filter,
        };
        self.prefixes = [p4, p6];
        for (addr, proto, port) in ep_marks {
            self.index.ep_mark(&addr, proto, port);
        }
    }

    /// Indexes a set's delta (a member both added and removed stays).
    pub(super) fn index_delta(&mut self, id: &IpSetId, added: &[Member], removed: &[Member]) {
        let atom = self.set_atom(id);
        let added_set: FastSet<&Member> = added.iter().collect();
        for m in removed.iter().filter(|m| !added_set.contains(m)) {
            self.index_member(m, atom, false);
        }
        for m in added {
            self.index_member(m, atom, true);
        }
    }

    /// Indexes a set's change from members `old` to `new`.
    pub(super) fn index_replace(&mut self, id: &IpSetId, old: &[Member], new: &[Member]) {
        let atom = self.set_atom(id);
        let new_set: FastSet<&Member> = new.iter().collect();
        let old_set: FastSet<&Member> = old.iter().collect();
        for m in old.iter().filter(|m| !new_set.contains(m)) {
            self.index_member(m, atom, false);
        }
        for m in new.iter().filter(|m| !old_set.contains(m)) {
            self.index_member(m, atom, true);
        }
    }

    pub(super) fn set_atom(&mut self, id: &IpSetId) -> AtomId {
        if let Some(a) = self.sets.get(id) {
            return *a;
        }
        let a = self.next_atom;
        self.next_atom += 1;
        self.sets.insert(id.clone(), a);
        a
    }

    /// The atom of an anonymous set of prefixes (a rule's `nets` or `not_nets`).
    pub(super) fn anon_atom(&mut self, nets: &[Cidr]) -> AtomId {
        let mut key = nets.to_vec();
        key.sort_unstable();
        key.dedup();
        if let Some(a) = self.anon.get(&key) {
            return *a;
        }
        let a = self.next_atom;
        self.next_atom += 1;
        for c in &key {
            if self.index_cidr(c, a, true) {
                self.members += 1;
            }
        }
        self.anon.insert(key, a);
        a
    }

    pub(super) fn index_member(&mut self, m: &Member, atom: AtomId, add: bool) {
        let changed = match m {
            Member::Net(c) => self.index_cidr(c, atom, add),
            Member::IpPort {
                addr,
                protocol,
                port,
            } => {
                let k = EpKey::new(addr, protocol.0, *port);
                if add {
                    self.index.ep_mark(addr, protocol.0, *port);
                    self.index.ep.add(k, atom)
                } else {
                    self.index.ep.remove(k, atom)
                }
            }
        };
        match (changed, add) {
            (true, true) => self.members += 1,
            (true, false) => self.members = self.members.saturating_sub(1),
            (false, _) => {}
        }
    }

    /// Adds or removes one prefix of an atom; true when the index changed.
    pub(super) fn index_cidr(&mut self, c: &Cidr, atom: AtomId, add: bool) -> bool {
        match (cidr_key(c), add) {
            (Key::V4(k), true) => self.index.v4.add(k, atom),
            (Key::V4(k), false) => self.index.v4.remove(k, atom),
            (Key::V6(k), true) => self.index.v6.add(k, atom),
            (Key::V6(k), false) => self.index.v6.remove(k, atom),
            (Key::P4(p), true) => self.prefixes[0].add(p, atom),
            (Key::P4(p), false) => self.prefixes[0].remove(p, atom),
            (Key::P6(p), true) => self.prefixes[1].add(p, atom),
            (Key::P6(p), false) => self.prefixes[1].remove(p, atom),
            (Key::Ep(_), _) => false,
        }
    }

    /// New interval tables for the prefix families that changed (the old ones stay
    /// with the generations that read them).
    pub(super) fn update_prefix_tables(&mut self) {
        let [p4, p6] = &mut self.prefixes;
        if p4.is_dirty() {
            self.index.p4 = Arc::new(p4.update(&self.index.p4));
        }
        if p6.is_dirty() {
            self.index.p6 = Arc::new(p6.update(&self.index.p6));
        }
    }

    /// Brings capo's virtual sets (local workloads' and the host's addresses) in line
    /// with the whole state. The workloads' list keeps one entry per workload
    /// holding a prefix, so one workload's change can be applied on its own
    /// ([`Builder::sync_workload_addrs`]).
    pub(super) fn sync_virtual(&mut self, state: &State) {
        let mut workloads: Vec<Cidr> = state
            .workloads()
            .values()
            .flat_map(|w| w.nets().copied())
            .collect();
        workloads.sort_unstable();
        let mut host: Vec<Cidr> = state
            .local_host_addrs()
            .into_iter()
            .map(Cidr::host)
            .collect();
        host.sort_unstable();
        host.dedup();
        for (slot, atom, wanted) in [(0usize, LOCAL_WORKLOADS, workloads), (1, HOST_ADDRS, host)] {
            let old = self.virtual_members.get(slot).cloned().unwrap_or_default();
            if old == wanted {
                continue;
            }
            let mut gone = old.clone();
            gone.dedup();
            for c in gone.iter().filter(|c| wanted.binary_search(c).is_err()) {
                self.index_virtual(c, atom, false);
            }
            let mut came = wanted.clone();
            came.dedup();
            for c in came.iter().filter(|c| old.binary_search(c).is_err()) {
                self.index_virtual(c, atom, true);
            }
            if let Some(v) = self.virtual_members.get_mut(slot) {
                *v = wanted;
            }
        }
    }

    /// One workload's addresses went from `old` to `new`: a prefix joins the local
    /// workloads' set with its first workload and leaves it with its last.
    pub(super) fn sync_workload_addrs(&mut self, old: &[Cidr], new: &[Cidr]) {
        for c in old {
            let Some(list) = self.virtual_members.get_mut(0) else {
                return;
            };
            if let Ok(at) = list.binary_search(c) {
                list.remove(at);
                if list.binary_search(c).is_err() {
                    self.index_virtual(c, LOCAL_WORKLOADS, false);
                }
            }
        }
        for c in new {
            let Some(list) = self.virtual_members.get_mut(0) else {
                return;
            };
            let (at, held) = match list.binary_search(c) {
                Ok(at) => (at, true),
                Err(at) => (at, false),
            };
            list.insert(at, *c);
            if !held {
                self.index_virtual(c, LOCAL_WORKLOADS, true);
            }
        }
    }

    fn index_virtual(&mut self, c: &Cidr, atom: AtomId, add: bool) {
        if self.index_cidr(c, atom, add) {
            if add {
                self.members += 1;
            } else {
                self.members = self.members.saturating_sub(1);
            }
        }
    }
}
