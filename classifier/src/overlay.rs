//! Rules a program holds apart from its bitmaps.
//!
//! A policy edit that keeps its rule count (a port moved, an action flipped, a rule
//! replaced) used to rewrite those rules' bits in a copy of every program listing the
//! policy before the update could be published: tens of microseconds a program, and
//! a policy that many endpoints list patches dozens. Now each such program is
//! published as a shallow copy (the arena and atoms shared) with an [`Overlay`]: the
//! edited rules' new criteria. Classification computes the candidate bitmap as
//! before, then clears each overlaid rule's stale bit and sets it again where the
//! rule's new criteria hold for the packet ([`ExactRule::matches`]), before the scan.
//! The result is the bitmap a program laid out from the new rules would have, so the
//! verdict is the same; the property tests hold both to the reference evaluator.
//!
//! An overlay is bounded ([`MAX_OVERLAID`]): an edit that would take it past the
//! bound patches a program that has none and lays one that has one out again, and
//! an edit that restores a rule's laid-out criteria drops it from the overlay. The
//! overlay keeps the spec its program's arena was laid out from, for the
//! compiler's consistency check: it shares every fragment with the current spec but
//! the edited policies' old ones.

use std::cell::OnceCell;
use std::sync::Arc;

use capo_policy::{IcmpMatch, IpFamily, Packet, PortRange, L4};

use crate::compile::ProgSpec;
use crate::index::{AddrIndex, AddrKey, AtomId};
use crate::program::CRule;

/// Most rules a program holds in its overlay: each costs every first packet of the
/// program a check, and beyond a few the layout is the better buy.
pub(crate) const MAX_OVERLAID: usize = 8;

/// One side of an [`ExactRule`]: its address atoms and its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExactSide {
    /// Atoms that must all hold the address (nets, IP sets).
    pub(crate) pos: Box<[AtomId]>,
    /// Atoms none of which may hold it (`not_nets`, `not_ip_sets`).
    pub(crate) neg: Box<[AtomId]>,
    /// The port must be in one of these or in a named-port atom of `np`, where
    /// either is given.
    pub(crate) ports: Box<[PortRange]>,
    pub(crate) np: Box<[AtomId]>,
    /// The port must be in none of these, nor in a named-port atom of `nnp`.
    pub(crate) not_ports: Box<[PortRange]>,
    pub(crate) nnp: Box<[AtomId]>,
}

impl ExactSide {
    fn names_address(&self) -> bool {
        !(self.pos.is_empty() && self.neg.is_empty())
    }

    fn names_ports(&self) -> bool {
        !(self.ports.is_empty() && self.np.is_empty())
    }

    /// Whether the side's port criteria hold for `port`; `named`: the named-port
    /// atoms holding (address, protocol, port), sorted.
    fn ports_hold(&self, port: u16, named: &[AtomId]) -> bool {
        let in_named = |atoms: &[AtomId]| atoms.iter().any(|a| named.binary_search(a).is_ok());
        let allowed = !self.names_ports()
            || self.ports.iter().any(|r| r.contains(port))
            || in_named(&self.np);
        allowed && !self.not_ports.iter().any(|r| r.contains(port)) && !in_named(&self.nnp)
    }
}

/// A rule's criteria, checked against one packet at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExactRule {
    pub(crate) family: Option<IpFamily>,
    pub(crate) protocol: Option<u8>,
    pub(crate) not_protocol: Option<u8>,
    pub(crate) icmp: Option<IcmpMatch>,
    pub(crate) not_icmp: Option<IcmpMatch>,
    /// A side has a port criterion or the rule a service: only packets with ports
    /// can match.
    pub(crate) needs_ports: bool,
    pub(crate) src: ExactSide,
    pub(crate) dst: ExactSide,
    /// Service atoms that must all hold (destination address, protocol, port).
    pub(crate) svc: Box<[AtomId]>,
}

/// Where a packet's atoms are looked up: each side's address atoms once per packet,
/// however many overlaid rules name them.
pub(crate) struct Lookups<'a> {
    idx: &'a AddrIndex,
    keys: &'a [AddrKey; 2],
    /// Per side: the atoms holding the address exactly, and by prefix.
    sides: [OnceCell<(&'a [AtomId], &'a [AtomId])>; 2],
}

impl<'a> Lookups<'a> {
    pub(crate) fn new(idx: &'a AddrIndex, keys: &'a [AddrKey; 2]) -> Self {
        Lookups {
            idx,
            keys,
            sides: [OnceCell::new(), OnceCell::new()],
        }
    }

    /// Side `side`'s (0: source, 1: destination) address atoms.
    fn address(&self, side: usize) -> (&'a [AtomId], &'a [AtomId]) {
        match (self.sides.get(side), self.keys.get(side)) {
            (Some(cell), Some(key)) => *cell.get_or_init(|| self.idx.lookup_key(key)),
            _ => (&[], &[]),
        }
    }
}

impl ExactRule {
    /// Whether the rule matches `pkt`: the same meaning as the rule's bits in a
    /// laid-out program (and a `verify` check where it has several atoms a side).
    pub(crate) fn matches(&self, pkt: &Packet, look: &Lookups<'_>) -> bool {
        if self.family.is_some_and(|f| f != pkt.family()) {
            return false;
        }
        let proto = pkt.protocol.0;
        if self.protocol.is_some_and(|p| p != proto) || self.not_protocol == Some(proto) {
            return false;
        }
        let ports = match pkt.l4 {
            L4::Ports { src, dst } => Some((src, dst)),
            _ => None,
        };
        if self.needs_ports && ports.is_none() {
            return false;
        }
        if self.icmp.is_some() || self.not_icmp.is_some() {
            let L4::Icmp { icmp_type, code } = pkt.l4 else {
                return false;
            };
            if !self.icmp.is_none_or(|m| m.matches(icmp_type, code))
                || self.not_icmp.is_some_and(|m| m.matches(icmp_type, code))
            {
                return false;
            }
        }
        for (at, side) in [&self.src, &self.dst].into_iter().enumerate() {
            if !side.names_address() {
                continue;
            }
            let (host, prefixes) = look.address(at);
            let holds =
                |a: &AtomId| host.binary_search(a).is_ok() || prefixes.binary_search(a).is_ok();
            if !side.pos.iter().all(holds) || side.neg.iter().any(holds) {
                return false;
            }
        }
        let Some((sport, dport)) = ports else {
            return true;
        };
        let named = |side: &ExactSide, addr, port| {
            if side.np.is_empty() && side.nnp.is_empty() {
                &[][..]
            } else {
                look.idx.ep_get(addr, proto, port)
            }
        };
        if !self
            .src
            .ports_hold(sport, named(&self.src, &pkt.src, sport))
            || !self
                .dst
                .ports_hold(dport, named(&self.dst, &pkt.dst, dport))
        {
            return false;
        }
        if self.svc.is_empty() {
            return true;
        }
        let services = look.idx.ep_get(&pkt.dst, proto, dport);
        self.svc.iter().all(|a| services.binary_search(a).is_ok())
    }
}

/// One rule held in an overlay.
#[derive(Debug, Clone)]
pub(crate) struct Overlaid {
    /// Its position in the program.
    pub(crate) at: u32,
    /// Its criteria now.
    pub(crate) now: Arc<ExactRule>,
    /// The criteria its bits in the arena stand for: an edit bringing the rule back
    /// to them drops it from the overlay.
    pub(crate) laid: Arc<ExactRule>,
}

impl Overlaid {
    /// Whether the arena's bits are the rule's again.
    pub(crate) fn is_laid_out(&self) -> bool {
        Arc::ptr_eq(&self.now, &self.laid) || self.now == self.laid
    }
}

/// A program's overlaid rules (see the module doc).
pub(crate) struct Overlay {
    /// By position, ascending.
    pub(crate) rules: Box<[Overlaid]>,
    /// The rule list the arena was laid out with (actions, `verify` marks).
    pub(crate) laid_rules: Arc<[CRule]>,
    /// The spec the arena was laid out from (for the compiler's consistency check).
    pub(crate) laid_spec: Arc<ProgSpec>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Overlay {
    /// Heap bytes held: the criteria, both ways, and the laid-out rule list (which
    /// it shares with the program it was made from) counted as its own; the laid-out
    /// spec not counted (its fragments are the current spec's but for the edited
    /// policies' old ones).
    pub(crate) fn bytes(&self) -> usize {
        let criteria = |r: &ExactRule| {
            let atoms = |s: &ExactSide| s.pos.len() + s.neg.len() + s.np.len() + s.nnp.len();
            let ranges = |s: &ExactSide| s.ports.len() + s.not_ports.len();
            std::mem::size_of::<ExactRule>()
                + (atoms(&r.src) + atoms(&r.dst) + r.svc.len()) * std::mem::size_of::<AtomId>()
                + (ranges(&r.src) + ranges(&r.dst)) * std::mem::size_of::<PortRange>()
        };
        std::mem::size_of::<Overlay>()
            + (self.rules.iter())
                .map(|e| std::mem::size_of::<Overlaid>() + criteria(&e.now) + criteria(&e.laid))
                .sum::<usize>()
            + self.laid_rules.len() * std::mem::size_of::<CRule>()
    }

    /// Replaces each overlaid rule's bit in `cand` by whether it matches `pkt`.
    /// Out of line and cold: most programs hold no overlay, and their packets'
    /// path should not make room for this one.
    #[cold]
    #[inline(never)]
    pub(crate) fn apply(&self, cand: &mut [u64], pkt: &Packet, look: &Lookups<'_>) {
        for e in self.rules.iter() {
            let (word, bit) = ((e.at / 64) as usize, 1u64 << (e.at % 64));
            if let Some(w) = cand.get_mut(word) {
                *w &= !bit;
                if e.now.matches(pkt, look) {
                    *w |= bit;
                }
            }
        }
    }
}
