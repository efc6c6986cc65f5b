//! A compiled program: one interface, one direction.
//!
//! Rules are numbered in evaluation order (internal rules, then each tier's
//! policies' rules, then each profile's rules). Per packet, each field is looked up
//! once and yields a bitmap of the rules that field allows:
//!
//! - family and protocol: precomputed bitmaps;
//! - source and destination address: the atoms holding the address (see
//!   [`crate::index`]), each contributing "satisfies a positive criterion" and
//!   "hits a negated criterion" bitmaps;
//! - ports: an interval table per side (binary search over range bounds), plus the
//!   named-port atoms holding (address, protocol, port);
//! - ICMP: the few rules with ICMP criteria are checked one by one, for ICMP
//!   packets only.
//!
//! The AND of those bitmaps is scanned for the first rule in evaluation order, with
//! tiers, `pass`, `log`, end-of-tier drops and profiles as control flow over rule
//! ranges. The rare rules the bitmaps cannot decide exactly (two or more IP sets that
//! must *all* hold the address, several service sets) are marked and verified on
//! their own against the packet's atom lists.

use capo_policy::{Decider, IcmpMatch, IpFamily, Packet, PortRange, Verdict, L4};

use crate::bits;
use crate::index::{AddrIndex, AtomId, EpKey};

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Allow,
    Deny,
    Log,
    Pass,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct CRule {
    pub(crate) act: Act,
    /// Index into [`Program::deciders`].
    pub(crate) decider: u32,
    /// The views' `rule#`, for counters.
    pub(crate) rule_id: Option<u32>,
    /// Atoms that must *all* hold (source, destination, service) when the rule is
    /// marked for verification.
    pub(crate) verify: Option<Box<Verify>>,
}

/// Criteria checked rule by rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verify {
    pub(crate) src_all: Vec<AtomId>,
    pub(crate) dst_all: Vec<AtomId>,
    pub(crate) svc_all: Vec<AtomId>,
}

/// A range of rules with its control flow.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) start: u32,
    pub(crate) end: u32,
    pub(crate) kind: SegKind,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum SegKind {
    /// Internal rules: allow/deny decide, nothing else happens.
    Plain,
    /// A tier: `pass` leaves it; undecided → `end_drop` when set.
    Tier {
        end_drop: Option<(u32, Option<u32>)>,
    },
    /// A profile: `pass` ends the profile.
    Profile,
}

/// Bitmaps for one atom as a program uses it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AtomSlot {
    atom: AtomId,
    /// Offset (in words) of this slot's bitmaps in [`Program::atom_bits`].
    off: u32,
}

/// Kinds of per-atom bitmaps, in storage order.
pub(crate) const K_SRC_POS: usize = 0;
pub(crate) const K_SRC_NEG: usize = 1;
pub(crate) const K_DST_POS: usize = 2;
pub(crate) const K_DST_NEG: usize = 3;
pub(crate) const K_SRC_NP: usize = 4;
pub(crate) const K_SRC_NNP: usize = 5;
pub(crate) const K_DST_NP: usize = 6;
pub(crate) const K_DST_NNP: usize = 7;
pub(crate) const K_SVC: usize = 8;
pub(crate) const KINDS: usize = 9;

/// Interval table over one side's port ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortTable {
    starts: Vec<u16>,
    /// Per interval: positive-range bitmap then negated-range bitmap.
    bits: Vec<u64>,
}

impl PortTable {
    pub(crate) fn build(
        words: usize,
        pos: &[(usize, PortRange)],
        neg: &[(usize, PortRange)],
    ) -> Self {
        let mut starts: Vec<u16> = vec![0];
        for (_, r) in pos.iter().chain(neg) {
            starts.push(r.first());
            if let Some(n) = r.last().checked_add(1) {
                starts.push(n);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut bitsv = vec![0u64; starts.len() * 2 * words];
        for (iv, s) in starts.iter().enumerate() {
            let base = iv * 2 * words;
            for (rule, r) in pos {
                if r.contains(*s) {
                    if let Some(b) = bitsv.get_mut(base..base + words) {
                        bits::set(b, *rule);
                    }
                }
            }
            for (rule, r) in neg {
                if r.contains(*s) {
                    if let Some(b) = bitsv.get_mut(base + words..base + 2 * words) {
                        bits::set(b, *rule);
                    }
                }
            }
        }
        PortTable {
            starts,
            bits: bitsv,
        }
    }

    #[inline]
    fn lookup(&self, words: usize, port: u16) -> (&[u64], &[u64]) {
        let iv = self
            .starts
            .partition_point(|s| *s <= port)
            .saturating_sub(1);
        let base = iv * 2 * words;
        (
            self.bits.get(base..base + words).unwrap_or(&[]),
            self.bits.get(base + words..base + 2 * words).unwrap_or(&[]),
        )
    }
}

/// A compiled program.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) words: usize,
    pub(crate) rules: Vec<CRule>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) deciders: Vec<Decider>,
    /// Verdict, decider and rule id when nothing decided.
    pub(crate) fallback: (Verdict, u32, Option<u32>),
    /// Every bitmap of the program in one allocation, so the masks every packet
    /// reads share a few cache lines: the `M_*` masks, then one per protocol class,
    /// then [`KINDS`] per atom slot (from `atom_base`).
    pub(crate) arena: Vec<u64>,
    pub(crate) atom_base: usize,
    /// Protocol → class.
    pub(crate) proto_class: Box<[u8; 256]>,
    pub(crate) icmp_rules: Vec<(u32, Option<IcmpMatch>, Option<IcmpMatch>)>,
    pub(crate) has_svc: bool,
    /// A 512-bit filter of the atoms the program uses: most atoms holding an
    /// address belong to other programs, and are dismissed here without touching
    /// the slot table.
    pub(crate) bloom: [u64; 8],
    pub(crate) sports: PortTable,
    pub(crate) dports: PortTable,
    pub(crate) uses_src_np: bool,
    pub(crate) uses_dst_np: bool,
    /// Open-addressing table atom → slot (power-of-two size, `u32::MAX` empty).
    pub(crate) atom_table: Vec<AtomSlot>,
    /// Atom id → slot number + 1 (0: not used), when the program has fewer than
    /// 65,535 atom slots: one load per atom instead of a probe sequence.
    pub(crate) atom_dense: Vec<u16>,
}

/// Masks at the start of [`Program::arena`], `words` each.
pub(crate) const M_FAM4: usize = 0;
pub(crate) const M_FAM6: usize = 1;
pub(crate) const M_NEED_PORTS: usize = 2;
pub(crate) const M_NEED_ICMP: usize = 3;
/// Rules with a positive address criterion on the source / destination side.
pub(crate) const M_SRC_REQ: usize = 4;
pub(crate) const M_DST_REQ: usize = 5;
/// Rules with a positive port criterion on the source / destination side.
pub(crate) const M_SPORT_REQ: usize = 6;
pub(crate) const M_DPORT_REQ: usize = 7;
/// Rules with a service criterion.
pub(crate) const M_SVC_REQ: usize = 8;
/// First protocol-class bitmap.
pub(crate) const M_PROTO: usize = 9;

/// Scratch bitmaps a worker reuses across packets (no allocation per packet).
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    buf: Vec<u64>,
}

const NSCRATCH: usize = 6;

/// The result of classifying one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'g> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The views' `rule#` that decided, when the decider is a rule.
    pub rule_id: Option<u32>,
    /// What decided, as the reference evaluator names it.
    pub decider: &'g Decider,
}

pub(crate) const EMPTY_ATOM: AtomId = u32::MAX;

impl Program {
    #[inline]
    fn slot(&self, atom: AtomId) -> Option<usize> {
        if self.atom_table.is_empty() || !self.atom_dense.is_empty() {
            let s = usize::from(*self.atom_dense.get(atom as usize)?);
            return s
                .checked_sub(1)
                .map(|k| self.atom_base + k * KINDS * self.words);
        }
        let mask = self.atom_table.len().checked_sub(1)?;
        let mut i = (atom.wrapping_mul(0x9e37_79b9) as usize) & mask;
        loop {
            let s = self.atom_table.get(i)?;
            if s.atom == atom {
                return Some(self.atom_base + s.off as usize);
            }
            if s.atom == EMPTY_ATOM {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn build_atom_dense(slots: &[(AtomId, u32)], words: usize) -> Vec<u16> {
        let Some(max) = slots.iter().map(|(a, _)| *a).max() else {
            return Vec::new();
        };
        if slots.len() >= usize::from(u16::MAX) {
            return Vec::new();
        }
        let mut d = vec![0u16; max as usize + 1];
        for (a, off) in slots {
            let k = *off as usize / (KINDS * words);
            if let Some(x) = d.get_mut(*a as usize) {
                *x = (k + 1) as u16;
            }
        }
        d
    }

    pub(crate) fn build_atom_table(slots: &[(AtomId, u32)]) -> Vec<AtomSlot> {
        if slots.is_empty() {
            return Vec::new();
        }
        let cap = (slots.len() * 2).next_power_of_two();
        let mut t = vec![
            AtomSlot {
                atom: EMPTY_ATOM,
                off: 0
            };
            cap
        ];
        let mask = cap - 1;
        for (atom, off) in slots {
            let mut i = (atom.wrapping_mul(0x9e37_79b9) as usize) & mask;
            while t.get(i).is_some_and(|s| s.atom != EMPTY_ATOM) {
                i = (i + 1) & mask;
            }
            if let Some(s) = t.get_mut(i) {
                *s = AtomSlot {
                    atom: *atom,
                    off: *off,
                };
            }
        }
        t
    }

    #[inline]
    fn mask(&self, m: usize) -> &[u64] {
        self.arena
            .get(m * self.words..(m + 1) * self.words)
            .unwrap_or(&[])
    }

    /// Address of the program's first masks, for prefetching.
    pub(crate) fn head_ptr(&self) -> *const u8 {
        self.arena.as_ptr().cast::<u8>()
    }

    pub(crate) fn bloom_bit(atom: AtomId) -> (usize, u64) {
        let h = (atom.wrapping_mul(0x9e37_79b9) >> 23) as usize;
        (h / 64 % 8, 1u64 << (h % 64))
    }

    #[inline]
    fn or_atoms(
        &self,
        atoms: &[AtomId],
        kpos: usize,
        kneg: usize,
        pos: &mut [u64],
        neg: &mut [u64],
    ) {
        let w = self.words;
        for a in atoms {
            let (word, bit) = Program::bloom_bit(*a);
            if self.bloom.get(word).is_none_or(|b| b & bit == 0) {
                continue;
            }
            if let Some(off) = self.slot(*a) {
                let b = off + kpos * w;
                let n = off + kneg * w;
                if let (Some(bp), Some(bn)) = (self.arena.get(b..b + w), self.arena.get(n..n + w)) {
                    for ((p, q), (x, y)) in
                        pos.iter_mut().zip(neg.iter_mut()).zip(bp.iter().zip(bn))
                    {
                        *p |= *x;
                        *q |= *y;
                    }
                }
            }
        }
    }

    /// Classifies `pkt` with the generation's indexes.
    pub(crate) fn classify<'g>(
        &'g self,
        idx: &AddrIndex,
        pkt: &Packet,
        scratch: &mut Scratch,
    ) -> Decision<'g> {
        let w = self.words;
        if scratch.buf.len() < NSCRATCH * w {
            scratch.buf.resize(NSCRATCH * w, 0);
        }
        let (cand, rest) = scratch.buf.split_at_mut(w);
        let (pos, rest) = rest.split_at_mut(w);
        let (neg, rest) = rest.split_at_mut(w);
        let (pos2, rest) = rest.split_at_mut(w);
        let (neg2, _) = rest.split_at_mut(w);

        // Family, protocol, L4 presence.
        let fam = match pkt.family() {
            IpFamily::V4 => self.mask(M_FAM4),
            IpFamily::V6 => self.mask(M_FAM6),
        };
        let pc = usize::from(self.proto_class[usize::from(pkt.protocol.0)]);
        let pb = self.mask(M_PROTO + pc);
        let need_ports = self.mask(M_NEED_PORTS);
        let need_icmp = self.mask(M_NEED_ICMP);
        let (has_ports, icmp) = match pkt.l4 {
            L4::Ports { .. } => (true, None),
            L4::Icmp { icmp_type, code } => (false, Some((icmp_type, code))),
            L4::None => (false, None),
        };
        for (i, c) in cand.iter_mut().enumerate() {
            let mut v = fam.get(i).copied().unwrap_or(0) & pb.get(i).copied().unwrap_or(0);
            if !has_ports {
                v &= !need_ports.get(i).copied().unwrap_or(0);
            }
            if icmp.is_none() {
                v &= !need_icmp.get(i).copied().unwrap_or(0);
            }
            *c = v;
        }
        if let Some((t, c)) = icmp {
            for (r, m, nm) in &self.icmp_rules {
                let ok = m.is_none_or(|m| m.matches(t, c)) && !nm.is_some_and(|m| m.matches(t, c));
                if !ok {
                    if let Some(word) = cand.get_mut(*r as usize / 64) {
                        *word &= !(1u64 << (*r % 64));
                    }
                }
            }
        }

        // Addresses.
        let (s_host, s_pre) = idx.lookup(&pkt.src);
        let (d_host, d_pre) = idx.lookup(&pkt.dst);
        pos.fill(0);
        neg.fill(0);
        self.or_atoms(s_host, K_SRC_POS, K_SRC_NEG, pos, neg);
        self.or_atoms(s_pre, K_SRC_POS, K_SRC_NEG, pos, neg);
        pos2.fill(0);
        neg2.fill(0);
        self.or_atoms(d_host, K_DST_POS, K_DST_NEG, pos2, neg2);
        self.or_atoms(d_pre, K_DST_POS, K_DST_NEG, pos2, neg2);
        let (src_req, dst_req) = (self.mask(M_SRC_REQ), self.mask(M_DST_REQ));
        for (i, c) in cand.iter_mut().enumerate() {
            let sreq = src_req.get(i).copied().unwrap_or(0);
            let dreq = dst_req.get(i).copied().unwrap_or(0);
            let sp = pos.get(i).copied().unwrap_or(0);
            let sn = neg.get(i).copied().unwrap_or(0);
            let dp = pos2.get(i).copied().unwrap_or(0);
            let dn = neg2.get(i).copied().unwrap_or(0);
            *c &= !(sreq & !sp) & !sn & !(dreq & !dp) & !dn;
        }

        // Ports (only packets with ports reach rules with port criteria).
        let mut svc_atoms: &[AtomId] = &[];
        if let L4::Ports {
            src: sport,
            dst: dport,
        } = pkt.l4
        {
            let (spos, sneg) = self.sports.lookup(w, sport);
            let (dpos, dneg) = self.dports.lookup(w, dport);
            pos.fill(0);
            for (p, x) in pos.iter_mut().zip(spos) {
                *p = *x;
            }
            neg.fill(0);
            if self.uses_src_np {
                let atoms = idx.ep.get(&EpKey::new(&pkt.src, pkt.protocol.0, sport));
                self.or_atoms(atoms, K_SRC_NP, K_SRC_NNP, pos, neg);
            }
            pos2.fill(0);
            neg2.fill(0);
            for (p, x) in pos2.iter_mut().zip(dpos) {
                *p = *x;
            }
            let datoms = if self.uses_dst_np || self.has_svc {
                idx.ep.get(&EpKey::new(&pkt.dst, pkt.protocol.0, dport))
            } else {
                &[]
            };
            if self.uses_dst_np {
                self.or_atoms(datoms, K_DST_NP, K_DST_NNP, pos2, neg2);
            }
            svc_atoms = datoms;
            let (sport_req, dport_req) = (self.mask(M_SPORT_REQ), self.mask(M_DPORT_REQ));
            for (i, c) in cand.iter_mut().enumerate() {
                let sreq = sport_req.get(i).copied().unwrap_or(0);
                let dreq = dport_req.get(i).copied().unwrap_or(0);
                let sn = sneg.get(i).copied().unwrap_or(0) | neg.get(i).copied().unwrap_or(0);
                let dn = dneg.get(i).copied().unwrap_or(0) | neg2.get(i).copied().unwrap_or(0);
                *c &= !(sreq & !pos.get(i).copied().unwrap_or(0))
                    & !sn
                    & !(dreq & !pos2.get(i).copied().unwrap_or(0))
                    & !dn;
            }
            if self.has_svc {
                let svc_req = self.mask(M_SVC_REQ);
                pos.fill(0);
                neg.fill(0);
                self.or_atoms(svc_atoms, K_SVC, K_SVC, pos, neg);
                for (i, c) in cand.iter_mut().enumerate() {
                    *c &=
                        !(svc_req.get(i).copied().unwrap_or(0) & !pos.get(i).copied().unwrap_or(0));
                }
            }
        }

        // Control flow over the candidates.
        let atoms = PacketAtoms {
            src: [s_host, s_pre],
            dst: [d_host, d_pre],
            svc: svc_atoms,
        };
        self.scan(cand, &atoms)
    }

    fn scan<'g>(&'g self, cand: &[u64], atoms: &PacketAtoms<'_>) -> Decision<'g> {
        for seg in &self.segments {
            let end = seg.end as usize;
            let mut pos = seg.start as usize;
            let mut passed = false;
            while let Some(i) = bits::next_set(cand, pos, end) {
                pos = i + 1;
                let Some(rule) = self.rules.get(i) else {
                    break;
                };
                if let Some(v) = &rule.verify {
                    if !atoms.holds(v) {
                        continue;
                    }
                }
                match rule.act {
                    Act::Allow => return self.decision(Verdict::Allow, rule.decider, rule.rule_id),
                    Act::Deny => return self.decision(Verdict::Deny, rule.decider, rule.rule_id),
                    Act::Log => {}
                    Act::Pass => {
                        passed = true;
                        break;
                    }
                }
            }
            if let SegKind::Tier {
                end_drop: Some((decider, rule_id)),
            } = seg.kind
            {
                if !passed {
                    return self.decision(Verdict::Deny, decider, rule_id);
                }
            }
        }
        let (v, d, r) = self.fallback;
        self.decision(v, d, r)
    }

    fn decision(&self, verdict: Verdict, decider: u32, rule_id: Option<u32>) -> Decision<'_> {
        Decision {
            verdict,
            rule_id,
            decider: self
                .deciders
                .get(decider as usize)
                .unwrap_or(&FALLBACK_DECIDER),
        }
    }

    /// Heap bytes used.
    pub(crate) fn bytes(&self) -> usize {
        let w8 = |v: &Vec<u64>| v.capacity() * 8;
        self.rules.capacity() * std::mem::size_of::<CRule>()
            + self.deciders.capacity() * std::mem::size_of::<Decider>()
            + w8(&self.arena)
            + self.atom_table.capacity() * 8
            + self.atom_dense.capacity() * 2
            + self.sports.bits.capacity() * 8
            + self.dports.bits.capacity() * 8
            + 256
            + 12 * self.words * 8
    }
}

/// Never returned in practice: every decider index is valid by construction.
static FALLBACK_DECIDER: Decider = Decider::NoProfileMatched;

struct PacketAtoms<'a> {
    src: [&'a [AtomId]; 2],
    dst: [&'a [AtomId]; 2],
    svc: &'a [AtomId],
}

impl PacketAtoms<'_> {
    fn holds(&self, v: &Verify) -> bool {
        let has =
            |lists: &[&[AtomId]], a: &AtomId| lists.iter().any(|l| l.binary_search(a).is_ok());
        v.src_all.iter().all(|a| has(&self.src, a))
            && v.dst_all.iter().all(|a| has(&self.dst, a))
            && v.svc_all.iter().all(|a| self.svc.binary_search(a).is_ok())
    }
}
