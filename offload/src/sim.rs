//! A simulated NIC: really matches packets against its installed rules (group 0 first,
//! JUMP between groups, lowest priority number wins), counts, validates against a
//! device profile ([`NicCaps`]: mlx5-like, E810-like, cnxk-like) and injects faults
//! (ENOMEM after N rules, EIO, validate-passes-create-fails).
//!
//! Two rules of one group that match the same packet at the same priority are
//! "undefined" in rte_flow; the simulator counts such packets
//! ([`SimNic::same_priority_conflicts`]) so tests can require zero. What a packet
//! that a JUMP sent to a group where no rule matches it meets is up to the driver
//! (this simulator delivers it unmarked); [`SimNic::group_miss`] names such a group,
//! so tests can require that none is met.

use std::collections::BTreeMap;

use crate::backend::{FlowBackend, FlowCount, FlowHandle};
use crate::caps::NicCaps;
use crate::error::{ErrorTarget, FlowError, FlowErrorKind};
use crate::flow::{Action, FlowRule, Group, Headers, Item};

/// Faults to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// `create` fails with ENOMEM once this many rules are installed (besides capacity).
    pub enomem_after: Option<usize>,
    /// Every operation fails with EIO after this many successful creates (device gone).
    pub eio_after_creates: Option<u64>,
    /// `create` of every n-th rule fails with EEXIST although `validate` passed (as
    /// net_tap without TC flower does).
    pub create_fails_every: Option<u64>,
    /// `destroy` fails with EBUSY (the rule stays) after this many successful
    /// destroys, counted from when the faults are set.
    pub destroy_fails_after: Option<u64>,
    /// `destroy` of this one rule fails with EBUSY (it stays); the others go.
    pub destroy_refused: Option<FlowHandle>,
    /// `destroy` of every group-0 rule that jumps (a dispatcher) fails with EBUSY.
    pub dispatcher_destroys_refused: bool,
}

/// What the NIC did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicOutcome {
    /// Dropped by a rule.
    Dropped,
    /// Delivered to software, with the MARK id when a rule marked it.
    Delivered {
        /// MARK id.
        mark: Option<u32>,
    },
}

/// A packet's way through the rules.
struct Walk {
    outcome: NicOutcome,
    /// The rules it met, by id, in order.
    hit: Vec<u64>,
    /// Groups where two matching rules had its highest priority.
    conflicts: u64,
    /// The group a JUMP sent it to where no rule matched it.
    missed: Option<Group>,
}

impl Walk {
    fn ends(outcome: NicOutcome, hit: Vec<u64>, conflicts: u64, missed: Option<Group>) -> Walk {
        Walk {
            outcome,
            hit,
            conflicts,
            missed,
        }
    }
}

#[derive(Debug, Clone)]
struct Installed {
    rule: FlowRule,
    count: FlowCount,
}

/// The simulated NIC.
#[derive(Debug, Clone)]
pub struct SimNic {
    caps: NicCaps,
    faults: Faults,
    rules: BTreeMap<u64, Installed>,
    next: u64,
    creates: u64,
    destroys: u64,
    removed: bool,
    conflicts: u64,
}

impl SimNic {
    /// A NIC with a profile.
    pub fn new(caps: NicCaps) -> Self {
        SimNic {
            caps,
            faults: Faults::default(),
            rules: BTreeMap::new(),
            next: 1,
            creates: 0,
            destroys: 0,
            removed: false,
            conflicts: 0,
        }
    }

    /// The same with faults.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Changes the faults (e.g. between two commits).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.destroys = 0;
    }

    /// Installed rules.
    pub fn installed(&self) -> usize {
        self.rules.len()
    }

    /// Installed rules, by handle.
    pub fn rules(&self) -> impl Iterator<Item = (FlowHandle, &FlowRule)> {
        self.rules.iter().map(|(h, r)| (FlowHandle(*h), &r.rule))
    }

    /// Packets that met two matching rules at the same priority of one group.
    pub fn same_priority_conflicts(&self) -> u64 {
        self.conflicts
    }

    /// The group a packet reaches through a JUMP and matches no rule of, if any
    /// (what happens next is the driver's choice on a real device).
    pub fn group_miss(&self, h: &Headers) -> Option<Group> {
        self.walk(h).missed
    }

    /// The groups other than group 0 whose rules a packet meets, in order.
    pub fn groups_met(&self, h: &Headers) -> Vec<Group> {
        self.walk(h)
            .hit
            .iter()
            .filter_map(|id| self.rules.get(id))
            .map(|r| r.rule.attr().group)
            .filter(|g| *g != Group::ROOT)
            .collect()
    }

    /// Whether a packet meets two matching rules at one priority of a group on its
    /// way (without counting it in [`SimNic::same_priority_conflicts`]).
    pub fn same_priority_conflict(&self, h: &Headers) -> bool {
        self.walk(h).conflicts > 0
    }

    /// Classifies a packet and counts it (`bytes` for COUNT).
    pub fn receive(&mut self, h: &Headers, bytes: u64) -> NicOutcome {
        let Walk {
            outcome,
            hit,
            conflicts,
            ..
        } = self.walk(h);
        self.conflicts += conflicts;
        for id in hit {
            if let Some(r) = self.rules.get_mut(&id) {
                if r.rule.counts() {
                    r.count.hits += 1;
                    r.count.bytes += bytes;
                }
            }
        }
        outcome
    }

    /// Classifies a packet without counting.
    pub fn peek(&self, h: &Headers) -> NicOutcome {
        self.walk(h).outcome
    }

    fn walk(&self, h: &Headers) -> Walk {
        let mut group = Group::ROOT;
        let mut hit = Vec::new();
        let mut conflicts = 0;
        let mut mark = None;
        for _hop in 0..8 {
            let mut best: Option<(u32, u64)> = None;
            let mut tie = false;
            for (id, r) in &self.rules {
                let a = r.rule.attr();
                if !self.caps.groups_ignored && a.group != group {
                    continue;
                }
                if !r.rule.matches(h) {
                    continue;
                }
                match best {
                    Some((p, _)) if a.priority.0 > p => {}
                    Some((p, _)) if a.priority.0 == p => tie = true,
                    _ => {
                        best = Some((a.priority.0, *id));
                        tie = false;
                    }
                }
            }
            if tie {
                conflicts += 1;
            }
            let Some((_, id)) = best else {
                let missed = Some(group).filter(|g| *g != Group::ROOT);
                return Walk::ends(NicOutcome::Delivered { mark }, hit, conflicts, missed);
            };
            hit.push(id);
            let Some(r) = self.rules.get(&id) else { break };
            if let Some(m) = r.rule.mark() {
                mark = Some(m);
            }
            match r.rule.fate() {
                Some(Action::Drop) => return Walk::ends(NicOutcome::Dropped, hit, conflicts, None),
                Some(Action::Jump(g)) => group = *g,
                _ => return Walk::ends(NicOutcome::Delivered { mark }, hit, conflicts, None),
            }
        }
        Walk::ends(NicOutcome::Delivered { mark }, hit, conflicts, None)
    }

    /// Port masks the device takes: any, or only "any port" and exact ports.
    fn port_masks_ok(&self, src: u16, dst: u16) -> bool {
        self.caps.port_prefix_masks || [src, dst].iter().all(|m| matches!(m, 0 | 0xffff))
    }

    /// Rules installed with a COUNT action.
    fn counted(&self) -> usize {
        self.rules.values().filter(|r| r.rule.counts()).count()
    }

    fn check(&self, rule: &FlowRule) -> Result<(), FlowError> {
        let inval = |target, message| FlowError {
            kind: FlowErrorKind::Invalid,
            target,
            message,
        };
        let notsup = |target, message| FlowError {
            kind: FlowErrorKind::NotSup,
            target,
            message,
        };
        if !self.caps.flow_api {
            return Err(FlowError::new(
                FlowErrorKind::NoSys,
                "Function not implemented",
            ));
        }
        if self.removed {
            return Err(FlowError::new(FlowErrorKind::Io, "device removed"));
        }
        let attr = rule.attr();
        if attr.group != Group::ROOT && !self.caps.groups && !self.caps.groups_ignored {
            return Err(inval(ErrorTarget::AttrGroup, "groups not supported"));
        }
        let max = if attr.group == Group::ROOT && !self.caps.groups_ignored {
            self.caps.root_max_priority
        } else {
            self.caps.max_priority
        };
        if attr.priority.0 > max {
            return Err(inval(ErrorTarget::AttrPriority, "priority out of range"));
        }
        for (i, item) in rule.pattern().iter().enumerate() {
            let at = ErrorTarget::Item(Some(i));
            match item {
                Item::Ipv4(Some(s)) => {
                    if let Some(l) = s.last {
                        // The one range form: any fragment.
                        let frag_only = self.caps.ipv4_fragment_range
                            && l.src == s.spec.src
                            && l.dst == s.spec.dst
                            && l.proto == s.spec.proto
                            && s.mask.fragment_offset == 0x3fff
                            && s.spec.fragment_offset == 1
                            && l.fragment_offset == 0x3fff;
                        if !frag_only {
                            return Err(inval(at, "range is not valid"));
                        }
                    }
                    if s.mask.proto != 0 && !self.caps.ipv4_proto {
                        return Err(notsup(at, "IPv4 protocol field not extracted"));
                    }
                    let frag = s.spec.fragment_offset & s.mask.fragment_offset;
                    if s.last.is_none() && frag != 0 {
                        return Err(notsup(at, "specified value not supported"));
                    }
                    let prefix_ok = |m: [u8; 4]| {
                        let v = u32::from_be_bytes(m);
                        v == 0 || v == u32::MAX
                    };
                    if !(self.caps.ip_prefix_masks
                        || prefix_ok(s.mask.src) && prefix_ok(s.mask.dst))
                    {
                        return Err(notsup(at, "Mask for IPv4 src/dst addrs not supported"));
                    }
                }
                Item::Ipv6(s) => {
                    if !self.caps.ipv6 {
                        return Err(notsup(at, "IPv6 not supported"));
                    }
                    if let Some(s) = s {
                        if s.last.is_some() {
                            return Err(inval(at, "range is not valid"));
                        }
                        let ok = |m: [u8; 16]| {
                            let v = u128::from_be_bytes(m);
                            v == 0 || v == u128::MAX
                        };
                        if !(self.caps.ip_prefix_masks || ok(s.mask.src) && ok(s.mask.dst)) {
                            return Err(notsup(at, "Mask for IPv6 src/dst addrs not supported"));
                        }
                    }
                }
                Item::Tcp(Some(s)) => {
                    if s.last.is_some() && !self.caps.l4_ranges {
                        return Err(inval(at, "range is not valid"));
                    }
                    if s.mask.flags != 0 && !self.caps.tcp_flags {
                        return Err(notsup(at, "TCP flags not supported"));
                    }
                    if !self.port_masks_ok(s.mask.src_port, s.mask.dst_port) {
                        return Err(inval(at, "partial port mask not supported"));
                    }
                }
                Item::Sctp(_) if !self.caps.sctp => {
                    return Err(notsup(at, "item not supported"));
                }
                Item::Icmp(_) if !self.caps.icmp => {
                    return Err(notsup(at, "item not supported"));
                }
                Item::Icmp6(_) if !self.caps.icmp6 => {
                    return Err(notsup(at, "item not supported"));
                }
                Item::Udp(Some(s)) | Item::Sctp(Some(s))
                    if !self.port_masks_ok(s.mask.src_port, s.mask.dst_port) =>
                {
                    return Err(inval(at, "partial port mask not supported"));
                }
                other => {
                    if other.has_last() && !self.caps.l4_ranges {
                        return Err(inval(at, "range is not valid"));
                    }
                }
            }
        }
        for (i, a) in rule.actions().iter().enumerate() {
            let at = ErrorTarget::Action(Some(i));
            match a {
                Action::Jump(_) if !self.caps.groups || self.caps.groups_ignored => {
                    return Err(notsup(at, "Action is not supported"))
                }
                Action::Jump(g) if *g == Group::ROOT || *g == attr.group => {
                    return Err(inval(
                        at,
                        "target group must be other than the current flow group",
                    ))
                }
                // mlx5 (`mlx5_flow_dv.c:8098-8113`) and cnxk (`roc_npc.c:615-621`)
                // refuse it; ice's FDIR takes it, but capo never sends it.
                Action::Drop if rule.actions().iter().any(|a| matches!(a, Action::Mark(_))) => {
                    return Err(inval(at, "drop action is mutually-exclusive with mark"))
                }
                Action::Mark(m)
                    if u64::from(*m) >= (1u64 << self.caps.mark_bits.clamp(8, 32)) - 16 =>
                {
                    return Err(inval(at, "mark id out of range"))
                }
                Action::Count(_) if !self.caps.counters => {
                    return Err(notsup(at, "counters not supported"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl FlowBackend for SimNic {
    fn caps(&self) -> &NicCaps {
        &self.caps
    }

    fn validate(&mut self, rule: &FlowRule) -> Result<(), FlowError> {
        self.check(rule)
    }

    fn create(&mut self, rule: &FlowRule) -> Result<FlowHandle, FlowError> {
        self.check(rule)?;
        if self.rules.len() >= self.caps.capacity as usize
            || self
                .faults
                .enomem_after
                .is_some_and(|n| self.rules.len() >= n)
        {
            return Err(FlowError::new(FlowErrorKind::NoMem, "no free flow entries"));
        }
        if self
            .faults
            .create_fails_every
            .is_some_and(|n| n > 0 && (self.creates + 1) % n == 0)
        {
            self.creates += 1;
            return Err(FlowError {
                kind: FlowErrorKind::Exists,
                target: ErrorTarget::Handle,
                message: "overlapping rules or Kernel too old for flower support",
            });
        }
        if self
            .faults
            .eio_after_creates
            .is_some_and(|n| self.creates >= n)
        {
            self.removed = true;
            return Err(FlowError::new(FlowErrorKind::Io, "device removed"));
        }
        if self.caps.counter_limit != u32::MAX
            && rule.counts()
            && self.counted() >= self.caps.counter_limit as usize
        {
            // The driver's counter pool is empty (ice: 256 per PF); validate
            // cannot see it.
            return Err(FlowError::new(
                FlowErrorKind::Invalid,
                "failed to allocate a counter",
            ));
        }
        self.creates += 1;
        let id = self.next;
        self.next += 1;
        self.rules.insert(
            id,
            Installed {
                rule: rule.clone(),
                count: FlowCount::default(),
            },
        );
        Ok(FlowHandle(id))
    }

    fn destroy(&mut self, handle: FlowHandle) -> Result<(), FlowError> {
        if self.removed {
            // A removed device has no rules left; destroying is moot.
            self.rules.remove(&handle.0);
            return Err(FlowError::new(FlowErrorKind::Io, "device removed"));
        }
        let refused = self
            .faults
            .destroy_fails_after
            .is_some_and(|n| self.destroys >= n)
            || self.faults.destroy_refused == Some(handle)
            || (self.faults.dispatcher_destroys_refused
                && self
                    .rules
                    .get(&handle.0)
                    .is_some_and(|r| r.rule.dispatch_target().is_some()));
        if refused && self.rules.contains_key(&handle.0) {
            return Err(FlowError {
                kind: FlowErrorKind::Busy,
                target: ErrorTarget::Handle,
                message: "device busy",
            });
        }
        match self.rules.remove(&handle.0) {
            Some(_) => {
                self.destroys += 1;
                Ok(())
            }
            None => Err(FlowError {
                kind: FlowErrorKind::Invalid,
                target: ErrorTarget::Handle,
                message: "unknown flow handle",
            }),
        }
    }

    fn query_count(&mut self, handle: FlowHandle, reset: bool) -> Result<FlowCount, FlowError> {
        if !self.caps.counters {
            return Err(FlowError::new(FlowErrorKind::NotSup, "no counters"));
        }
        let r = self.rules.get_mut(&handle.0).ok_or(FlowError {
            kind: FlowErrorKind::Invalid,
            target: ErrorTarget::Handle,
            message: "unknown flow handle",
        })?;
        let mut c = r.count;
        if !self.caps.counter_bytes {
            c.bytes = 0;
        }
        if reset {
            r.count = FlowCount::default();
        }
        Ok(c)
    }
}
