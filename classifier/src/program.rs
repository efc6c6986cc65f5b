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
//! - ICMP: for ICMP packets only, each distinct ICMP criterion once, the rules
//!   holding one the packet misses cleared by their bitmap.
//!
//! The AND of those bitmaps is scanned for the first rule in evaluation order, with
//! tiers, `pass`, `log`, end-of-tier drops and profiles as control flow over rule
//! ranges. The rare rules the bitmaps cannot decide exactly (two or more IP sets that
//! must *all* hold the address, several service sets) are marked and verified on
//! their own against the packet's atom lists.

use std::sync::Arc;

use capo_policy::{Decider, IcmpMatch, IpFamily, Packet, PortRange, Verdict, L4};

use zerocopy::{FromBytes, IntoBytes};

use crate::bits;
use crate::index::{AddrIndex, AddrKey, AtomId};
use crate::overlay::{Lookups, Overlay};

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Allow,
    Deny,
    Log,
    Pass,
}

/// One compiled rule, eight bytes: the scan reads one per candidate, and a patch
/// changing a rule copies them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CRule {
    /// The views' `rule#`, for counters ([`NO_RULE_ID`]: none).
    pub(crate) rule_id: u32,
    pub(crate) act: Act,
    /// The rule's atoms must *all* hold (source, destination, service): its
    /// [`Verify`] is in the program's `verifies`.
    pub(crate) verify: bool,
}

/// A [`CRule`] without a `rule#`.
pub(crate) const NO_RULE_ID: u32 = u32::MAX;

impl CRule {
    pub(crate) fn new(act: Act, rule_id: Option<u32>, verify: bool) -> Self {
        CRule {
            rule_id: rule_id.unwrap_or(NO_RULE_ID),
            act,
            verify,
        }
    }

    pub(crate) fn rule_id(&self) -> Option<u32> {
        Some(self.rule_id).filter(|id| *id != NO_RULE_ID)
    }
}

// The size the scan and the patches count on.
const _: () = assert!(std::mem::size_of::<CRule>() == 8);

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

/// Port-interval starts packed per arena word (16 bits each).
const STARTS_PER_WORD: usize = 4;

/// An interval table over one side's port ranges, as it is laid out in the
/// program's arena: `n` interval starts (16 bits each, packed four per `u64` in
/// native byte order, so they read back as a `[u16]`), then per interval the
/// positive-range bitmap and, where some rule has a negated range
/// ([`table_rows`] 2), the negated-range bitmap. Most sides have none: their
/// tables are half the size, for packets to read and patches to copy.
pub(crate) fn port_table(
    words: usize,
    pos: &[(usize, PortRange)],
    neg: &[(usize, PortRange)],
) -> (Vec<u64>, usize) {
    let starts = port_starts(pos, neg);
    port_table_over(words, &starts, pos, neg)
}

/// Bitmaps per interval of a port table: the positive one, and the negated one
/// where the side has a negated range.
pub(crate) fn table_rows(negated: bool) -> usize {
    if negated {
        2
    } else {
        1
    }
}

/// [`port_table`] with its interval starts known (0 and every range's bounds,
/// sorted, each once).
pub(crate) fn port_table_over(
    words: usize,
    starts: &[u16],
    pos: &[(usize, PortRange)],
    neg: &[(usize, PortRange)],
) -> (Vec<u64>, usize) {
    let rows = table_rows(!neg.is_empty());
    let mut out = empty_port_table(words, rows, starts);
    set_port_ranges(&mut out, words, rows, starts, pos, neg);
    (out, starts.len())
}

/// Appends to `out` the [`port_table`] of the patch's interval `starts` (0 and
/// every rule's bounds, sorted) made from `old`, the table of `old_n` intervals
/// before the rules in `changed` (sorted) changed their ranges to `pos` and `neg`,
/// and returns its number of intervals: each interval's bitmaps copied
/// from the old interval holding its start, with the changed rules' bits cleared,
/// then set from their new ranges. A bound the old table had and no rule has now
/// joined two intervals whose bitmaps differed only in changed rules' bits, so
/// copying either is right. The old table is a program's, folded
/// ([`Program::derive`]): the result is folded but for the changed rules, until the
/// patched program is derived again.
pub(crate) fn port_table_patched(
    out: &mut Vec<u64>,
    words: usize,
    old: &[u64],
    old_n: usize,
    old_rows: usize,
    patch: &TablePatch<'_>,
) -> usize {
    let starts = patch.starts;
    let n = starts.len();
    let row = patch.rows * words;
    let old_row = old_rows * words;
    let old_sw = old_n.div_ceil(STARTS_PER_WORD);
    let old_starts = unpacked_starts(old.get(..old_sw).unwrap_or(&[]), old_n);
    // Every row is copied, so none is zeroed first; the old interval holding each
    // start is found walking both sorted lists together.
    let table = out.len();
    out.reserve(n.div_ceil(STARTS_PER_WORD) + n * row);
    out.extend(packed_starts(starts));
    let mut from = 0;
    for start in starts {
        while old_starts.get(from + 1).is_some_and(|s| s <= start) {
            from += 1;
        }
        // The old interval's bitmaps, as many as the new table has (a negated
        // bitmap the old table lacks is empty).
        let src = old_sw + from * old_row;
        let at = out.len();
        match old.get(src..src + row.min(old_row)) {
            Some(s) => out.extend_from_slice(s),
            None => out.resize(at + row.min(old_row), 0),
        }
        out.resize(at + row, 0);
        if let Some(d) = out.get_mut(at..) {
            for i in patch.changed {
                for half in (0..patch.rows).map(|r| r * words) {
                    if let Some(word) = d.get_mut(half + i / 64) {
                        *word &= !(1u64 << (i % 64));
                    }
                }
            }
        }
    }
    if let Some(t) = out.get_mut(table..) {
        set_port_ranges(t, words, patch.rows, starts, patch.pos, patch.neg);
    }
    n
}

/// What a patch changes in one port table: its interval starts and bitmaps per
/// interval ([`table_rows`] of the side's negated ranges) after the patch, the
/// changed rules (their bits cleared everywhere) and their new ranges, positive
/// and negated.
pub(crate) struct TablePatch<'a> {
    pub(crate) starts: &'a [u16],
    pub(crate) rows: usize,
    pub(crate) changed: &'a [usize],
    pub(crate) pos: &'a [(usize, PortRange)],
    pub(crate) neg: &'a [(usize, PortRange)],
}

/// The interval starts of a table over `pos` and `neg`: 0 and every range's bounds.
fn port_starts(pos: &[(usize, PortRange)], neg: &[(usize, PortRange)]) -> Vec<u16> {
    let mut starts: Vec<u16> = vec![0];
    for (_, r) in pos.iter().chain(neg) {
        starts.extend(range_bounds(r));
    }
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// The interval starts a port range puts in a table: its first port, and the one
/// after its last (none after 65535).
pub(crate) fn range_bounds(r: &PortRange) -> impl Iterator<Item = u16> {
    std::iter::once(r.first()).chain(r.last().checked_add(1))
}

/// A table of `starts` with every bitmap empty, `rows` bitmaps per interval.
fn empty_port_table(words: usize, rows: usize, starts: &[u16]) -> Vec<u64> {
    let n = starts.len();
    let sw = n.div_ceil(STARTS_PER_WORD);
    let mut out = Vec::with_capacity(sw + n * rows * words);
    out.extend(packed_starts(starts));
    out.resize(sw + n * rows * words, 0);
    out
}

/// A table's interval starts, [`STARTS_PER_WORD`] to a word.
fn packed_starts(starts: &[u16]) -> impl Iterator<Item = u64> + '_ {
    starts.chunks(STARTS_PER_WORD).map(|c| {
        let mut b = [0u8; 8];
        for (d, s) in b.chunks_mut(2).zip(c) {
            d.copy_from_slice(&s.to_ne_bytes());
        }
        u64::from_ne_bytes(b)
    })
}

/// Sets each range's rule bit in the intervals it covers, in a table of `rows`
/// bitmaps per interval (2 where `neg` has ranges).
fn set_port_ranges(
    out: &mut [u64],
    words: usize,
    rows: usize,
    starts: &[u16],
    pos: &[(usize, PortRange)],
    neg: &[(usize, PortRange)],
) {
    let sw = starts.len().div_ceil(STARTS_PER_WORD);
    let neg = if rows > 1 { neg } else { &[] };
    // Each range covers a run of whole intervals: from the one it starts to the one
    // holding its last port (every bound is an interval start).
    for (rules, half) in [(pos, 0), (neg, words)] {
        for (rule, r) in rules {
            let first = starts.partition_point(|s| *s < r.first());
            let end = starts.partition_point(|s| *s <= r.last());
            for iv in first..end {
                let off = sw + iv * rows * words + half;
                if let Some(b) = out.get_mut(off..off + words) {
                    bits::set(b, *rule);
                }
            }
        }
    }
}

/// The interval of a [`port_table`] holding `port`, from its `n` packed starts.
#[inline(always)]
fn port_interval(packed: &[u64], n: usize, port: u16) -> usize {
    let starts = unpacked_starts(packed, n);
    // A few dozen starts at most in practice: a branch-free count (vectorised, eight
    // 16-bit starts per SSE2 compare, 16-bit lanes throughout: at most 64 ones, no
    // overflow) beats a binary search's dependent, unpredictable steps.
    if n <= 64 {
        usize::from(starts.iter().map(|s| u16::from(*s <= port)).sum::<u16>())
    } else {
        starts.partition_point(|s| *s <= port)
    }
    .saturating_sub(1)
}

/// The first `n` interval starts of a table's packed starts ([`packed_starts`]).
#[inline(always)]
fn unpacked_starts(packed: &[u64], n: usize) -> &[u16] {
    <[u16]>::ref_from_bytes(packed.as_bytes())
        .ok()
        .and_then(|s| s.get(..n))
        .unwrap_or(&[])
}

/// Words of a program's atom filter.
pub(crate) const BLOOM_WORDS: usize = 64;

/// Keeps in `cand` the rules whose criteria on one field, both sides, hold: a rule
/// requiring a side (`req`: source, destination) needs a hit in that side's
/// positive bitmap, and no rule may hit a side's negated one (`hits`: source
/// positive, negated, destination positive, negated). All `cand.len()` words.
#[inline(always)]
fn keep_matching(cand: &mut [u64], req: [&[u64]; 2], hits: [&[u64]; 4]) {
    let [sreq, dreq] = req;
    let [spos, sneg, dpos, dneg] = hits;
    for (((((c, sr), sp), sn), dr), (dp, dn)) in cand
        .iter_mut()
        .zip(sreq)
        .zip(spos)
        .zip(sneg)
        .zip(dreq)
        .zip(dpos.iter().zip(dneg))
    {
        *c &= !(sr & !sp) & !sn & !(dr & !dp) & !dn;
    }
}

/// [`keep_matching`] for one side's criterion.
#[inline(always)]
fn keep_side(cand: &mut [u64], req: &[u64], pos: &[u64], neg: &[u64]) {
    for (((c, r), p), n) in cand.iter_mut().zip(req).zip(pos).zip(neg) {
        *c &= !(r & !p) & !n;
    }
}

/// Keeps in `cand` the rules a side's hits leave: in `pos`, not in `neg`.
#[inline(always)]
fn keep_hits(cand: &mut [u64], pos: &[u64], neg: &[u64]) {
    for ((c, p), n) in cand.iter_mut().zip(pos).zip(neg) {
        *c &= p & !n;
    }
}

/// The rows a packet of an L4 kind ([`l4_kind`]) drops by, as masks: rules that
/// need ports (`drop_ports`) unless it has ports, rules that need ICMP unless it
/// is ICMP.
#[inline(always)]
fn l4_drops(kind: usize) -> (u64, u64) {
    match kind {
        0 => (0, !0),
        1 => (!0, 0),
        _ => (!0, !0),
    }
}

/// The kind of L4 header a base row is for: 0 ports, 1 ICMP, 2 neither.
#[inline(always)]
fn l4_kind(l4: &L4) -> usize {
    match l4 {
        L4::Ports { .. } => 0,
        L4::Icmp { .. } => 1,
        L4::None => 2,
    }
}

/// Copies `src` into `dst`, or zeroes `dst` when `src` is missing (a port table
/// without negated bitmaps, or outside the arena).
#[inline(always)]
fn copy_or_zero(dst: &mut [u64], src: &[u64]) {
    if dst.len() == src.len() {
        dst.copy_from_slice(src);
    } else {
        dst.fill(0);
    }
}

/// Flags of a program.
pub(crate) const F_SRC_NP: u8 = 1;
pub(crate) const F_DST_NP: u8 = 2;
pub(crate) const F_SVC: u8 = 4;
pub(crate) const F_ICMP: u8 = 8;
/// Programs wider than the stack paths take ([`SPARSE_MIN_WORDS`] words and
/// more) store their atoms' bitmaps as sparse lists: an atom is named by a few
/// rules, so a dense bitmap per atom would grow every program by its width times
/// its atoms (memory per rule growing with the rules).
pub(crate) const F_SPARSE: u8 = 16;
/// Every packet passes the source port side, which is skipped: no rule has a
/// source port criterion, named or not, other than the whole range. Set by
/// [`Program::derive`].
pub(crate) const F_ANY_SRC_PORT: u8 = 32;
/// No rule has a source (destination) address criterion, positive or negated:
/// every packet passes that side, whose address is not looked up. Set by
/// [`Program::derive`].
pub(crate) const F_ANY_SRC_ADDR: u8 = 64;
pub(crate) const F_ANY_DST_ADDR: u8 = 128;

/// The narrowest program with sparse atom slots.
pub(crate) const SPARSE_MIN_WORDS: usize = STACK_WORDS + 1;

/// A compiled program. The header fields every packet reads come first and sit next
/// to each other in the program's allocation (`repr(C)`): the batch path prefetches
/// them a few packets ahead, then the arena lines they point to. What
/// [`Program::derive`] adds (bases, ICMP groups) sits in allocations of its own.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Program {
    /// The masks and port tables of the program in one allocation (see
    /// [`Layout`]), shared with the program's overlaid copies.
    pub(crate) arena: Arc<[u64]>,
    /// The atom table and the atom slots (see [`Layout`]), in an allocation of
    /// their own: a patch that leaves the rules' atoms alone shares it.
    pub(crate) atoms: Arc<[u64]>,
    pub(crate) words: u32,
    pub(crate) flags: u8,
    pub(crate) lay: Layout,
    /// A 4,096-bit filter of the atoms the program uses: most atoms holding an
    /// address belong to other programs, and are dismissed here without touching
    /// the atom table. (At 512 bits, W-large's programs, 135 atoms each on
    /// average, set about a quarter of the bits, and a false positive costs a probe
    /// into a cold line of the table.)
    pub(crate) bloom: [u64; BLOOM_WORDS],
    /// Protocol → class.
    pub(crate) proto_class: [u8; 256],
    // The lists below are shared with the program's patched versions until a
    // patch changes them: a patch copies only what it rewrites.
    pub(crate) rules: Arc<[CRule]>,
    /// Rules whose bits in the arena are stale, with their criteria now (see
    /// [`crate::overlay`]); none in a program laid out or patched.
    pub(crate) overlay: Option<Arc<Overlay>>,
    /// The [`Verify`] of each rule marked `verify`, by rule (sorted).
    pub(crate) verifies: Arc<[(u32, Verify)]>,
    pub(crate) segments: Arc<[Segment]>,
    /// Shared by the program's patched versions (a patch keeps every rule's
    /// decider: a policy's deciders name its rules by position).
    pub(crate) deciders: Arc<DeciderTable>,
    /// Verdict, decider and rule id when nothing decided.
    pub(crate) fallback: (Verdict, u32, Option<u32>),
    pub(crate) icmp_rules: Arc<[IcmpRule]>,
    /// The ICMP criteria of `icmp_rules`, each once, with the bitmap of the rules
    /// holding it (`words` each, in `icmp_bits`): an ICMP packet checks each
    /// criterion once, not each rule. Derived by [`Program::derive`].
    pub(crate) icmp_criteria: Arc<[IcmpCriterion]>,
    pub(crate) icmp_bits: Arc<[u64]>,
    /// Sparse programs only: per family, protocol class and kind of L4 header
    /// ([`Program::base_at`]), the rules those alone leave, `words` each: one row
    /// read per packet instead of four. Derived from the masks
    /// ([`Program::combine_bases`]) after every layout, and after a patch that
    /// changes them.
    pub(crate) bases: Arc<[u64]>,
}

/// A rule's ICMP criterion: the type (and code) it must match, the one it must not.
pub(crate) type IcmpCriterion = (Option<IcmpMatch>, Option<IcmpMatch>);

/// A rule with an ICMP criterion: its position, the criterion.
pub(crate) type IcmpRule = (u32, Option<IcmpMatch>, Option<IcmpMatch>);

/// One kind of an atom's use in a program: its bitmap, as the program's layout
/// holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AtomBits<'a> {
    /// The program's width of words.
    Dense(&'a [u64]),
    /// `(word index, bits)` pairs of the non-zero words.
    Sparse(&'a [u64]),
}

impl<'a> AtomBits<'a> {
    /// The words held, with their indexes.
    pub(crate) fn words(self) -> impl Iterator<Item = (usize, u64)> + 'a {
        let (dense, pairs) = match self {
            AtomBits::Dense(d) => (d, &[][..]),
            AtomBits::Sparse(p) => (&[][..], p),
        };
        dense.iter().copied().enumerate().chain(
            pairs
                .chunks_exact(2)
                .filter_map(|p| Some((*p.first()? as usize, *p.get(1)?))),
        )
    }
}

/// Where things are (offsets in words). In [`Program::arena`]: the `M_*` masks,
/// one bitmap per protocol class, the source and destination port tables
/// ([`port_table`]). In [`Program::atoms`]: the atom table (`atab_mask + 1`
/// entries; open addressing, linear probing, `atom << 32 | offset` per entry,
/// `u64::MAX` empty), then the atom slots: each a mask of the kinds (`K_*`) the
/// program uses the atom for, then one bitmap per such kind (most atoms have one
/// or two of the [`KINDS`]); with [`F_SPARSE`], one sparse list per such kind
/// instead (its length, then (word index, word) pairs).
///
/// 24 bytes: with the fields before it, the program's header fits one cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Layout {
    pub(crate) atab_mask: u32,
    pub(crate) sports: u32,
    pub(crate) sports_n: u32,
    pub(crate) dports: u32,
    pub(crate) dports_n: u32,
    /// Every slot's kind mask ORed: the kinds (`K_*`) some slot holds. A patch
    /// rewrites bits within the slots and never adds a slot or a kind, so this
    /// stays true of a patched program (a kind may then have empty bitmaps only).
    pub(crate) kinds: u16,
    /// Bitmaps per interval of the source and destination port tables
    /// ([`table_rows`]): 2 where some rule has a negated range on that side.
    pub(crate) rows: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<Layout>() == 24 && KINDS <= 16);

impl Default for Layout {
    /// Empty tables of one bitmap per interval.
    fn default() -> Self {
        Layout {
            atab_mask: 0,
            sports: 0,
            sports_n: 0,
            dports: 0,
            dports_n: 0,
            kinds: 0,
            rows: [1, 1],
        }
    }
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

/// Scratch bitmaps a worker reuses across packets (no allocation per packet), and
/// the batch path's per-packet state.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    buf: Vec<u64>,
    pub(crate) keys: Vec<[AddrKey; 2]>,
}

const NSCRATCH: usize = 6;

/// Programs up to this many words (64 rules each) run with their bitmaps on the
/// stack, specialised per width; wider ones use the scratch buffer.
pub(crate) const STACK_WORDS: usize = 4;

/// What decided each rule of a program, then its end-of-tier drops and its
/// fallback. A policy's or profile's deciders are shared, one allocation for every
/// program that includes it (see the compiler's fragments); rule `i` has decider
/// `i`, so the table only has to find the chunk holding it.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeciderTable {
    /// Chunks in rule order: the index of the chunk's first decider, the chunk.
    chunks: Vec<(u32, Arc<[Decider]>)>,
    /// Deciders after the rules' (end-of-tier drops, the fallback).
    tail: Vec<Decider>,
    /// Number of rules (the first index in `tail`).
    rules: u32,
}

impl DeciderTable {
    /// Appends a chunk of rule deciders.
    pub(crate) fn push_rules(&mut self, chunk: Arc<[Decider]>) {
        let len = chunk.len() as u32;
        if len > 0 {
            self.chunks.push((self.rules, chunk));
            self.rules += len;
        }
    }

    /// Appends a decider after the rules'; its index.
    pub(crate) fn push_tail(&mut self, d: Decider) -> u32 {
        self.tail.push(d);
        self.rules + self.tail.len() as u32 - 1
    }

    /// Decider `i`.
    pub(crate) fn get(&self, i: u32) -> Option<&Decider> {
        if let Some(t) = i.checked_sub(self.rules) {
            return self.tail.get(t as usize);
        }
        let c = self.chunks.partition_point(|(start, _)| *start <= i);
        let (start, chunk) = self.chunks.get(c.checked_sub(1)?)?;
        chunk.get((i - start) as usize)
    }

    /// Bytes, counting shared chunks in full (as if the program held them alone).
    fn bytes(&self) -> usize {
        let n = self.rules as usize + self.tail.capacity();
        self.chunks.capacity() * std::mem::size_of::<(u32, Arc<[Decider]>)>()
            + n * std::mem::size_of::<Decider>()
    }
}

/// The result of classifying one packet.
#[derive(Clone, Copy)]
pub struct Decision<'g> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The views' `rule#` that decided, when the decider is a rule.
    pub rule_id: Option<u32>,
    program: &'g Program,
    decider: u32,
}

impl<'g> Decision<'g> {
    /// What decided, as the reference evaluator names it (looked up only when asked:
    /// the packet path needs the verdict alone).
    pub fn decider(&self) -> &'g Decider {
        self.program
            .deciders
            .get(self.decider)
            .unwrap_or(&FALLBACK_DECIDER)
    }
}

impl PartialEq for Decision<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.verdict == other.verdict
            && self.rule_id == other.rule_id
            && self.decider() == other.decider()
    }
}

impl Eq for Decision<'_> {}

impl std::fmt::Debug for Decision<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("verdict", &self.verdict)
            .field("rule_id", &self.rule_id)
            .field("decider", self.decider())
            .finish()
    }
}

/// An empty entry of the atom table.
pub(crate) const EMPTY_ENTRY: u64 = u64::MAX;

#[inline(always)]
fn atom_hash(atom: AtomId) -> u32 {
    atom.wrapping_mul(0x9e37_79b9)
}

/// Appends the atom table of `slots` (atom, offset in [`Program::atoms`]) to `out`,
/// a power of two of entries: a program's atoms are the table and then the bitmaps,
/// in one allocation.
pub(crate) fn atom_table_into(out: &mut Vec<u64>, slots: &[(AtomId, u32)]) {
    let cap = (slots.len() * 2).next_power_of_two().max(2);
    let at = out.len();
    out.resize(at + cap, EMPTY_ENTRY);
    let Some(t) = out.get_mut(at..) else {
        return;
    };
    let mask = cap - 1;
    for (atom, off) in slots {
        let mut i = (atom_hash(*atom) as usize) & mask;
        while t.get(i).is_some_and(|e| *e != EMPTY_ENTRY) {
            i = (i + 1) & mask;
        }
        if let Some(e) = t.get_mut(i) {
            *e = (u64::from(*atom) << 32) | u64::from(*off);
        }
    }
}

impl Program {
    /// Offset of `atom`'s slot in [`Program::atoms`], if the program uses it.
    #[inline]
    pub(crate) fn slot(&self, atom: AtomId) -> Option<usize> {
        let (word, bit) = Program::bloom_bit(atom);
        if self.bloom.get(word).is_none_or(|b| b & bit == 0) {
            return None;
        }
        let mask = self.lay.atab_mask as usize;
        let mut i = (atom_hash(atom) as usize) & mask;
        loop {
            let e = *self.atoms.get(i)?;
            if e == EMPTY_ENTRY {
                return None;
            }
            if (e >> 32) as u32 == atom {
                return Some(e as u32 as usize);
            }
            i = (i + 1) & mask;
        }
    }

    /// Words of a port table of `n` intervals of `rows` bitmaps each.
    fn port_table_len(&self, n: u32, rows: u32) -> usize {
        (n as usize).div_ceil(STARTS_PER_WORD) + n as usize * rows as usize * self.words as usize
    }

    /// The source (`[0]`) and destination (`[1]`) port tables, each with its number
    /// of intervals.
    pub(crate) fn port_tables(&self) -> [(&[u64], usize); 2] {
        let lay = &self.lay;
        let table = |at: u32, n: u32, rows: u32| {
            let at = at as usize;
            let words = self
                .arena
                .get(at..at + self.port_table_len(n, rows))
                .unwrap_or(&[]);
            (words, n as usize)
        };
        [
            table(lay.sports, lay.sports_n, u32::from(lay.rows[0])),
            table(lay.dports, lay.dports_n, u32::from(lay.rows[1])),
        ]
    }

    /// A copy of the program with the source (`[0]`) and destination (`[1]`) port
    /// tables patched where a patch is given ([`port_table_patched`]), written
    /// straight into the copy's arena; everything else shared or copied as it is.
    /// What [`Program::derive`] made is the old program's: the caller derives the
    /// copy again once its masks are final (the new tables are not folded yet).
    pub(crate) fn with_port_tables(&self, patches: [Option<TablePatch<'_>>; 2]) -> Program {
        let w = self.words as usize;
        let mut lay = self.lay;
        let sports = lay.sports as usize;
        let old = self.port_tables();
        let size = |side: usize| match patches.get(side) {
            Some(Some(p)) => self.port_table_len(p.starts.len() as u32, p.rows as u32),
            _ => old.get(side).map_or(0, |(t, _)| t.len()),
        };
        let mut arena = Vec::with_capacity(sports + size(0) + size(1));
        arena.extend_from_slice(self.arena.get(..sports).unwrap_or(&[]));
        let mut n = [0u32; 2];
        for (side, (patch, (table, old_n))) in patches.iter().zip(old).enumerate() {
            if side == 1 {
                lay.dports = arena.len() as u32;
            }
            let old_rows = self.lay.rows.get(side).copied().unwrap_or(2) as usize;
            let count = match patch {
                Some(p) => port_table_patched(&mut arena, w, table, old_n, old_rows, p),
                None => {
                    arena.extend_from_slice(table);
                    old_n
                }
            };
            if let Some(x) = n.get_mut(side) {
                *x = count as u32;
            }
            if let (Some(r), Some(p)) = (lay.rows.get_mut(side), patch) {
                *r = p.rows as u8;
            }
        }
        [lay.sports_n, lay.dports_n] = n;
        Program {
            arena: arena.into(),
            atoms: self.atoms.clone(),
            words: self.words,
            flags: self.flags,
            lay,
            bloom: self.bloom,
            proto_class: self.proto_class,
            rules: self.rules.clone(),
            overlay: None,
            verifies: self.verifies.clone(),
            segments: self.segments.clone(),
            deciders: self.deciders.clone(),
            fallback: self.fallback,
            icmp_rules: self.icmp_rules.clone(),
            icmp_criteria: self.icmp_criteria.clone(),
            icmp_bits: self.icmp_bits.clone(),
            bases: self.bases.clone(),
        }
    }

    /// Hints the CPU to fetch the first line of what classifying `pkt` reads in
    /// the program: its base row (or the first rows and the protocol row), the
    /// requirement rows of the address sides it does not skip, the service row
    /// where rules have services, and the starts of the port tables it looks up.
    #[inline]
    pub(crate) fn prefetch_arena(&self, pkt: &Packet) {
        let p = self.arena.as_ptr();
        let w = self.words as usize;
        let fetch = |row: usize| crate::prefetch::read(p.wrapping_add(row * w).cast::<u8>());
        let pc = usize::from(self.proto_class[usize::from(pkt.protocol.0)]);
        if self.bases.is_empty() {
            fetch(M_FAM4);
            fetch(M_PROTO + pc);
        } else {
            let base = self.base_at(pkt.family(), pc, l4_kind(&pkt.l4));
            crate::prefetch::read(base.as_ptr().cast::<u8>());
        }
        if self.flags & F_ANY_SRC_ADDR == 0 {
            fetch(M_SRC_REQ);
        }
        if self.flags & F_ANY_DST_ADDR == 0 {
            fetch(M_DST_REQ);
        }
        if self.flags & F_SVC != 0 {
            fetch(M_SVC_REQ);
        }
        if self.flags & F_ANY_SRC_PORT == 0 {
            crate::prefetch::read(p.wrapping_add(self.lay.sports as usize).cast::<u8>());
        }
        crate::prefetch::read(p.wrapping_add(self.lay.dports as usize).cast::<u8>());
    }

    /// The number of protocol classes.
    fn classes(&self) -> usize {
        usize::from(self.proto_class.iter().copied().max().unwrap_or(0)) + 1
    }

    /// The base row of a family, protocol class and L4 kind ([`l4_kind`]); empty
    /// for dense programs.
    #[inline(always)]
    fn base_at(&self, family: IpFamily, class: usize, kind: usize) -> &[u64] {
        let w = self.words as usize;
        let fam = usize::from(family == IpFamily::V6);
        let at = ((class * 2 + fam) * 3 + kind) * w;
        self.bases.get(at..at + w).unwrap_or(&[])
    }

    /// What a laid-out or patched program derives from its masks: each port
    /// interval's positive bitmap also holds the rules without a port criterion on
    /// that side (so a packet reads no requirement row), the bases, the ICMP
    /// criteria grouped, and which sides a packet can skip ([`F_ANY_SRC_PORT`],
    /// [`F_ANY_SRC_ADDR`], [`F_ANY_DST_ADDR`]).
    pub(crate) fn derive(&mut self) {
        self.derive_patched(true, true);
    }

    /// [`Program::derive`] after a patch: the bases made again only where the head
    /// rows changed, the ICMP groups only where the ICMP rules did (otherwise the
    /// old program's are shared).
    pub(crate) fn derive_patched(&mut self, head_changed: bool, icmp_changed: bool) {
        self.fold_port_requirements();
        if head_changed {
            self.combine_bases();
        }
        if icmp_changed {
            self.group_icmp_criteria();
        }
        let w = self.words as usize;
        let [(src, n), _] = self.port_tables();
        let sw = n.div_ceil(STARTS_PER_WORD);
        let any_src_port = n == 1
            && self.flags & F_SRC_NP == 0
            && src
                .get(sw..sw + w)
                .is_some_and(|p| p.iter().all(|x| *x == !0))
            && (self.lay.rows[0] < 2
                || src
                    .get(sw + w..sw + 2 * w)
                    .is_some_and(|n| n.iter().all(|x| *x == 0)));
        let row_empty = |k: usize| {
            self.arena
                .get(k * w..(k + 1) * w)
                .is_some_and(|r| r.iter().all(|x| *x == 0))
        };
        const SRC: u64 = 1 << K_SRC_POS | 1 << K_SRC_NEG;
        const DST: u64 = 1 << K_DST_POS | 1 << K_DST_NEG;
        let (src_free, dst_free) = (row_empty(M_SRC_REQ), row_empty(M_DST_REQ));
        // Only a side without required addresses asks which of its kinds are in
        // use, and only for kinds some slot holds: most programs walk no slot.
        let wanted = (if src_free { SRC } else { 0 } | if dst_free { DST } else { 0 })
            & u64::from(self.lay.kinds);
        let kinds = self.used_kinds(wanted);
        let any_src_addr = src_free && kinds & SRC == 0;
        let any_dst_addr = dst_free && kinds & DST == 0;
        self.flags &= !(F_ANY_SRC_PORT | F_ANY_SRC_ADDR | F_ANY_DST_ADDR);
        for (on, f) in [
            (any_src_port, F_ANY_SRC_PORT),
            (any_src_addr, F_ANY_SRC_ADDR),
            (any_dst_addr, F_ANY_DST_ADDR),
        ] {
            if on {
                self.flags |= f;
            }
        }
    }

    /// Of the kinds of atom use `wanted` (bits `K_*`), those some rule of the
    /// program makes: with a bit set in some atom's bitmap (a patch may leave a
    /// kind's bitmaps empty).
    fn used_kinds(&self, wanted: u64) -> u64 {
        let mut kinds = 0u64;
        if wanted == 0 {
            return kinds;
        }
        self.each_atom_use(|_, kind, bits| {
            // A kind found in use needs no further scan (a patch of a wide program
            // walks thousands of atoms here).
            let bit = 1 << kind;
            if wanted & bit != 0 && kinds & bit == 0 && bits.words().any(|(_, x)| x != 0) {
                kinds |= bit;
            }
        });
        kinds
    }

    /// Calls `f(atom, kind, bitmap)` for each kind of use of each atom the program
    /// holds, whichever layout its slots have.
    pub(crate) fn each_atom_use(&self, mut f: impl FnMut(AtomId, usize, AtomBits<'_>)) {
        let w = self.words as usize;
        let sparse = self.flags & F_SPARSE != 0;
        for e in self
            .atoms
            .get(..=self.lay.atab_mask as usize)
            .unwrap_or(&[])
        {
            if *e == EMPTY_ENTRY {
                continue;
            }
            let atom = (*e >> 32) as AtomId;
            let off = *e as u32 as usize;
            let mask = self.atoms.get(off).copied().unwrap_or(0);
            let mut at = off + 1;
            // The mask's set bits, lowest first: the kinds the slot holds, in the
            // order their bitmaps follow it.
            let mut left = mask & ((1 << KINDS) - 1);
            while left != 0 {
                let kind = left.trailing_zeros() as usize;
                left &= left - 1;
                let bits = if sparse {
                    let n = self.atoms.get(at).copied().unwrap_or(0) as usize;
                    at += 1 + 2 * n;
                    AtomBits::Sparse(self.atoms.get(at - 2 * n..at).unwrap_or(&[]))
                } else {
                    at += w;
                    AtomBits::Dense(self.atoms.get(at - w..at).unwrap_or(&[]))
                };
                f(atom, kind, bits);
            }
        }
    }

    /// Computes [`Program::icmp_criteria`] and [`Program::icmp_bits`] from
    /// `icmp_rules`.
    fn group_icmp_criteria(&mut self) {
        let w = self.words as usize;
        let mut criteria: Vec<IcmpCriterion> = Vec::new();
        let mut bits = Vec::new();
        for (rule, mt, nm) in self.icmp_rules.iter() {
            let at = match criteria.iter().position(|c| *c == (*mt, *nm)) {
                Some(at) => at,
                None => {
                    criteria.push((*mt, *nm));
                    bits.resize(criteria.len() * w, 0);
                    criteria.len() - 1
                }
            };
            if let Some(row) = bits.get_mut(at * w..(at + 1) * w) {
                bits::set(row, *rule as usize);
            }
        }
        self.icmp_criteria = criteria.into();
        self.icmp_bits = bits.into();
    }

    /// ORs into each interval's positive bitmap the rules the side's requirement
    /// row (`M_SPORT_REQ`, `M_DPORT_REQ`) leaves out. Idempotent: a patch's tables
    /// copied from the old program are folded already, and a patch re-cuts a side
    /// whose rules gained or lost a port criterion.
    fn fold_port_requirements(&mut self) {
        let w = self.words as usize;
        for (req_row, at, n, rows) in [
            (
                M_SPORT_REQ,
                self.lay.sports,
                self.lay.sports_n,
                self.lay.rows[0],
            ),
            (
                M_DPORT_REQ,
                self.lay.dports,
                self.lay.dports_n,
                self.lay.rows[1],
            ),
        ] {
            let free: Vec<u64> = match self.arena.get(req_row * w..(req_row + 1) * w) {
                Some(req) => req.iter().map(|r| !r).collect(),
                None => continue,
            };
            let (at, n) = (at as usize, n as usize);
            let first = at + n.div_ceil(STARTS_PER_WORD);
            let arena = Arc::make_mut(&mut self.arena);
            for iv in 0..n {
                let off = first + iv * rows as usize * w;
                if let Some(pos) = arena.get_mut(off..off + w) {
                    for (p, f) in pos.iter_mut().zip(&free) {
                        *p |= f;
                    }
                }
            }
        }
    }

    /// Computes [`Program::bases`] from the masks (sparse programs; dense ones keep
    /// none, their rows being a few words each).
    fn combine_bases(&mut self) {
        let w = self.words as usize;
        let classes = self.classes();
        if self.flags & F_SPARSE == 0 || self.arena.len() < (M_PROTO + classes) * w {
            self.bases = Arc::default();
            return;
        }
        let row = |k: usize| self.arena.get(k * w..(k + 1) * w).unwrap_or(&[]);
        let mut bases = Vec::with_capacity(2 * classes * 3 * w);
        for class in 0..classes {
            for fam in [M_FAM4, M_FAM6] {
                for (drop_ports, drop_icmp) in (0..3).map(l4_drops) {
                    let rows = row(fam).iter().zip(row(M_PROTO + class));
                    let needs = row(M_NEED_PORTS).iter().zip(row(M_NEED_ICMP));
                    bases.extend(
                        rows.zip(needs).map(|((f, p), (np, ni))| {
                            f & p & !(np & drop_ports) & !(ni & drop_icmp)
                        }),
                    );
                }
            }
        }
        self.bases = bases.into();
    }

    /// Address of the program's header, for the first prefetch stage.
    #[inline]
    pub(crate) fn head_ptr(&self) -> *const u8 {
        (self as *const Program).cast::<u8>()
    }

    pub(crate) fn uses_ep(&self) -> bool {
        self.flags & (F_DST_NP | F_SVC) != 0
    }

    #[inline(always)]
    pub(crate) fn bloom_bit(atom: AtomId) -> (usize, u64) {
        // Atom ids are handed out sequentially and never reused: the id itself
        // spreads evenly over the filter's bits (no mixing needed here; the atom
        // table mixes, as runs of consecutive ids would cluster its probes).
        let h = (atom as usize) % (BLOOM_WORDS * 64);
        (h / 64 % BLOOM_WORDS, 1u64 << (h % 64))
    }

    #[inline(always)]
    fn bm(&self, off: usize, w: usize) -> &[u64] {
        self.arena.get(off..off + w).unwrap_or(&[])
    }

    /// `w` words of the atom slots at `off`.
    #[inline(always)]
    fn atom_bm(&self, off: usize, w: usize) -> &[u64] {
        self.atoms.get(off..off + w).unwrap_or(&[])
    }

    #[inline(always)]
    fn or_atoms(
        &self,
        w: usize,
        atoms: &[AtomId],
        kpos: usize,
        kneg: usize,
        pos: &mut [u64],
        neg: &mut [u64],
    ) {
        if self.flags & F_SPARSE != 0 {
            self.or_atoms_sparse(atoms, kpos, kneg, pos, neg);
            return;
        }
        for a in atoms {
            if let Some(off) = self.slot(*a) {
                // A slot is its kind mask, then the bitmaps of the kinds it has.
                let mask = self.atoms.get(off).copied().unwrap_or(0);
                let at = |k: usize| off + 1 + (mask & ((1u64 << k) - 1)).count_ones() as usize * w;
                if mask & (1 << kpos) != 0 {
                    for (p, x) in pos.iter_mut().zip(self.atom_bm(at(kpos), w)) {
                        *p |= *x;
                    }
                }
                if mask & (1 << kneg) != 0 {
                    for (q, y) in neg.iter_mut().zip(self.atom_bm(at(kneg), w)) {
                        *q |= *y;
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn port_lookup(&self, w: usize, side: usize, port: u16) -> (&[u64], &[u64]) {
        let lay = &self.lay;
        let (off, n, rows) = match side {
            0 => (lay.sports, lay.sports_n, lay.rows[0]),
            _ => (lay.dports, lay.dports_n, lay.rows[1]),
        };
        let (off, n) = (off as usize, n as usize);
        let sw = n.div_ceil(STARTS_PER_WORD);
        let iv = port_interval(self.arena.get(off..off + sw).unwrap_or(&[]), n, port);
        let base = off + sw + iv * rows as usize * w;
        // A table without negated bitmaps answers an empty one (read as zeros).
        let neg = if rows > 1 { self.bm(base + w, w) } else { &[] };
        (self.bm(base, w), neg)
    }

    /// ORs a sparse list at `off` (its length, then `(word index, bits)` pairs)
    /// into `dst`.
    #[inline(always)]
    fn or_list(&self, off: usize, dst: &mut [u64]) {
        let n = self.atoms.get(off).copied().unwrap_or(0) as usize;
        let pairs = self.atoms.get(off + 1..off + 1 + 2 * n).unwrap_or(&[]);
        for pair in pairs.chunks_exact(2) {
            if let (Some(word), Some(bits)) = (pair.first(), pair.get(1)) {
                if let Some(d) = dst.get_mut(*word as usize) {
                    *d |= *bits;
                }
            }
        }
    }

    /// [`Program::or_atoms`] on the sparse layout: a slot is its kind mask, then a
    /// sparse list per kind it has, in kind order.
    #[inline(always)]
    fn or_atoms_sparse(
        &self,
        atoms: &[AtomId],
        kpos: usize,
        kneg: usize,
        pos: &mut [u64],
        neg: &mut [u64],
    ) {
        let wanted = (1u64 << kpos) | (1u64 << kneg);
        for a in atoms {
            let Some(off) = self.slot(*a) else {
                continue;
            };
            let mut mask = self.atoms.get(off).copied().unwrap_or(0);
            let mut at = off + 1;
            while mask & wanted != 0 {
                let k = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if k == kpos {
                    self.or_list(at, pos);
                }
                if k == kneg {
                    self.or_list(at, neg);
                }
                at += 1 + 2 * self.atoms.get(at).copied().unwrap_or(0) as usize;
            }
        }
    }

    /// Classifies `pkt` with the generation's indexes, its addresses keyed and
    /// hashed ([`AddrKey`]).
    #[inline]
    pub(crate) fn classify_keyed<'g>(
        &'g self,
        idx: &AddrIndex,
        pkt: &Packet,
        keys: &[AddrKey; 2],
        scratch: &mut Scratch,
    ) -> Decision<'g> {
        match self.words {
            1 => self.on_stack::<{ NSCRATCH }>(1, idx, pkt, keys),
            2 => self.on_stack::<{ 2 * NSCRATCH }>(2, idx, pkt, keys),
            3 => self.on_stack::<{ 3 * NSCRATCH }>(3, idx, pkt, keys),
            4 => self.on_stack::<{ STACK_WORDS * NSCRATCH }>(4, idx, pkt, keys),
            w => {
                let w = w as usize;
                if scratch.buf.len() < NSCRATCH * w {
                    scratch.buf.resize(NSCRATCH * w, 0);
                }
                let buf = scratch.buf.get_mut(..NSCRATCH * w).unwrap_or(&mut []);
                self.core(w, buf, idx, pkt, keys)
            }
        }
    }

    #[inline(always)]
    fn on_stack<'g, const N: usize>(
        &'g self,
        w: usize,
        idx: &AddrIndex,
        pkt: &Packet,
        keys: &[AddrKey; 2],
    ) -> Decision<'g> {
        let mut buf = [0u64; N];
        self.core(w, &mut buf, idx, pkt, keys)
    }

    /// The classification proper, over `w`-word bitmaps in `buf` (`NSCRATCH * w`
    /// words). Inlined into each width's caller so the loops have constant bounds.
    #[inline(always)]
    fn core<'g>(
        &'g self,
        w: usize,
        buf: &mut [u64],
        idx: &AddrIndex,
        pkt: &Packet,
        keys: &[AddrKey; 2],
    ) -> Decision<'g> {
        if buf.len() < NSCRATCH * w || self.arena.len() < M_PROTO * w {
            let (v, d, r) = self.fallback;
            return self.decision(v, d, r);
        }
        let (cand, rest) = buf.split_at_mut(w);
        let (pos, rest) = rest.split_at_mut(w);
        let (neg, rest) = rest.split_at_mut(w);
        let (pos2, rest) = rest.split_at_mut(w);
        let (neg2, _) = rest.split_at_mut(w);
        // The masks below the protocol classes are `w` words each (checked above),
        // so the passes below zip slices of one length: no bounds check per word,
        // and the compiler vectorises them (wide programs spend most of their time
        // here).
        let m = |k: usize| self.bm(k * w, w);

        // Family, protocol, L4 presence.
        let fam = match pkt.family() {
            IpFamily::V4 => m(M_FAM4),
            IpFamily::V6 => m(M_FAM6),
        };
        let pc = usize::from(self.proto_class[usize::from(pkt.protocol.0)]);
        let pb = m(M_PROTO + pc);
        let (has_ports, icmp) = match pkt.l4 {
            L4::Ports { .. } => (true, None),
            L4::Icmp { icmp_type, code } => (false, Some((icmp_type, code))),
            L4::None => (false, None),
        };
        let kind = l4_kind(&pkt.l4);
        let drop_ports = if has_ports { 0 } else { !0 };
        let drop_icmp = if icmp.is_some() { 0 } else { !0 };
        let (need_ports, need_icmp) = (m(M_NEED_PORTS), m(M_NEED_ICMP));
        let base = self.base_at(pkt.family(), pc, kind);
        if base.len() == w {
            cand.copy_from_slice(base);
        } else if pb.len() != w {
            // A protocol class outside the arena: no rule is a candidate.
            cand.fill(0);
        } else {
            for ((((c, f), p), np), ni) in cand
                .iter_mut()
                .zip(fam)
                .zip(pb)
                .zip(need_ports)
                .zip(need_icmp)
            {
                *c = f & p & !(np & drop_ports) & !(ni & drop_icmp);
            }
        }
        if let Some((t, c)) = icmp {
            let rows = self.icmp_bits.chunks_exact(w.max(1));
            for ((mt, nm), rules) in self.icmp_criteria.iter().zip(rows) {
                let ok = mt.is_none_or(|m| m.matches(t, c)) && !nm.is_some_and(|m| m.matches(t, c));
                if !ok {
                    for (x, r) in cand.iter_mut().zip(rules) {
                        *x &= !r;
                    }
                }
            }
        }

        // Addresses: a side no rule has a criterion on (most programs have one:
        // ingress rules name sources, egress rules destinations) is not looked up.
        let src = self.flags & F_ANY_SRC_ADDR == 0;
        let dst = self.flags & F_ANY_DST_ADDR == 0;
        if src {
            let (host, pre) = idx.lookup_key(&keys[0]);
            pos.fill(0);
            neg.fill(0);
            self.or_atoms(w, host, K_SRC_POS, K_SRC_NEG, pos, neg);
            self.or_atoms(w, pre, K_SRC_POS, K_SRC_NEG, pos, neg);
        }
        if dst {
            let (host, pre) = idx.lookup_key(&keys[1]);
            pos2.fill(0);
            neg2.fill(0);
            self.or_atoms(w, host, K_DST_POS, K_DST_NEG, pos2, neg2);
            self.or_atoms(w, pre, K_DST_POS, K_DST_NEG, pos2, neg2);
        }
        match (src, dst) {
            (true, true) => {
                let hits = [&*pos, &*neg, &*pos2, &*neg2];
                keep_matching(cand, [m(M_SRC_REQ), m(M_DST_REQ)], hits);
            }
            (true, false) => keep_side(cand, m(M_SRC_REQ), pos, neg),
            (false, true) => keep_side(cand, m(M_DST_REQ), pos2, neg2),
            (false, false) => {}
        }

        // Ports (only packets with ports reach rules with port criteria).
        let mut svc_atoms: &[AtomId] = &[];
        if let L4::Ports {
            src: sport,
            dst: dport,
        } = pkt.l4
        {
            // A positive interval bitmap holds the side's rules without a port
            // criterion too ([`Program::derive`]): no requirement row to read. The
            // source side is skipped where no rule has a source port criterion.
            if self.flags & F_ANY_SRC_PORT == 0 {
                let (spos, sneg) = self.port_lookup(w, 0, sport);
                copy_or_zero(pos, spos);
                copy_or_zero(neg, sneg);
                if self.flags & F_SRC_NP != 0 {
                    let atoms = idx.ep_get(&pkt.src, pkt.protocol.0, sport);
                    self.or_atoms(w, atoms, K_SRC_NP, K_SRC_NNP, pos, neg);
                }
                keep_hits(cand, pos, neg);
            }
            if self.uses_ep() {
                svc_atoms = idx.ep_get(&pkt.dst, pkt.protocol.0, dport);
            }
            let (dpos, dneg) = self.port_lookup(w, 1, dport);
            copy_or_zero(pos2, dpos);
            copy_or_zero(neg2, dneg);
            if self.flags & F_DST_NP != 0 {
                self.or_atoms(w, svc_atoms, K_DST_NP, K_DST_NNP, pos2, neg2);
            }
            keep_hits(cand, pos2, neg2);
            if self.flags & F_SVC != 0 {
                pos.fill(0);
                neg.fill(0);
                self.or_atoms(w, svc_atoms, K_SVC, K_SVC, pos, neg);
                for ((c, r), p) in cand.iter_mut().zip(m(M_SVC_REQ)).zip(&*pos) {
                    *c &= !(r & !p);
                }
            }
        }

        // Rules held apart from the bitmaps decide their own bits.
        if let Some(overlay) = &self.overlay {
            overlay.apply(cand, pkt, &Lookups::new(idx, keys));
        }

        // Control flow over the candidates. The address atom lists are looked up
        // again only for the rare rules marked for verification.
        let atoms = PacketAtoms {
            idx,
            keys,
            svc: svc_atoms,
        };
        self.scan(cand, &atoms)
    }

    /// Walks the candidates in evaluation order: one first-set-bit search over the
    /// whole bitmap per candidate visited, the segments (tiers, profiles) advanced by
    /// position, so segments without candidates cost a compare each (plus their
    /// end-of-tier drop) instead of a search each.
    #[inline(always)]
    fn scan<'g>(&'g self, cand: &[u64], atoms: &PacketAtoms<'_>) -> Decision<'g> {
        let segs = &*self.segments;
        let mut s = 0usize;
        let mut from = 0usize;
        loop {
            let i = bits::first_set_from(cand, from);
            // Segments ending at or before `i` had no deciding candidate.
            let seg = loop {
                let Some(seg) = segs.get(s) else {
                    let (v, d, r) = self.fallback;
                    return self.decision(v, d, r);
                };
                if (seg.end as usize) > i {
                    break seg;
                }
                if let SegKind::Tier {
                    end_drop: Some((decider, rule_id)),
                } = seg.kind
                {
                    return self.decision(Verdict::Deny, decider, rule_id);
                }
                s += 1;
            };
            if i < seg.start as usize {
                // A candidate outside every segment (none by construction).
                from = seg.start as usize;
                continue;
            }
            from = i + 1;
            let Some(rule) = self.rules.get(i) else {
                from = seg.end as usize;
                s += 1;
                continue;
            };
            if rule.verify && !self.verified(i, atoms) {
                continue;
            }
            match rule.act {
                // Rule `i`'s decider is decider `i`.
                Act::Allow => return self.decision(Verdict::Allow, i as u32, rule.rule_id()),
                Act::Deny => return self.decision(Verdict::Deny, i as u32, rule.rule_id()),
                Act::Log => {}
                Act::Pass => {
                    // Leaves the tier (or profile) without its end-of-tier drop.
                    from = seg.end as usize;
                    s += 1;
                }
            }
        }
    }

    /// Whether all of rule `i`'s atoms hold (a rule marked `verify`).
    #[cold]
    fn verified(&self, i: usize, atoms: &PacketAtoms<'_>) -> bool {
        match self.verifies.binary_search_by_key(&(i as u32), |(r, _)| *r) {
            Ok(at) => self.verifies.get(at).is_some_and(|(_, v)| atoms.holds(v)),
            Err(_) => false,
        }
    }

    fn decision(&self, verdict: Verdict, decider: u32, rule_id: Option<u32>) -> Decision<'_> {
        Decision {
            verdict,
            rule_id,
            program: self,
            decider,
        }
    }

    /// Heap bytes used (the program's own allocation included).
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Program>()
            + self.rules.len() * std::mem::size_of::<CRule>()
            + self.verifies.len() * std::mem::size_of::<(u32, Verify)>()
            + self
                .verifies
                .iter()
                .map(|(_, v)| (v.src_all.len() + v.dst_all.len() + v.svc_all.len()) * 4)
                .sum::<usize>()
            + self.segments.len() * std::mem::size_of::<Segment>()
            + self.deciders.bytes()
            + self.icmp_rules.len() * 16
            + self.icmp_criteria.len() * std::mem::size_of::<IcmpCriterion>()
            + self.icmp_bits.len() * 8
            + self.arena.len() * 8
            + self.atoms.len() * 8
            + self.bases.len() * 8
            + self.overlay.as_ref().map_or(0, |o| o.bytes())
    }
}

/// Never returned in practice: every decider index is valid by construction.
static FALLBACK_DECIDER: Decider = Decider::NoProfileMatched;

struct PacketAtoms<'a> {
    idx: &'a AddrIndex,
    keys: &'a [AddrKey; 2],
    svc: &'a [AtomId],
}

impl PacketAtoms<'_> {
    #[inline(never)]
    fn holds(&self, v: &Verify) -> bool {
        let (s_host, s_pre) = self.idx.lookup_key(&self.keys[0]);
        let (d_host, d_pre) = self.idx.lookup_key(&self.keys[1]);
        let has =
            |lists: &[&[AtomId]], a: &AtomId| lists.iter().any(|l| l.binary_search(a).is_ok());
        v.src_all.iter().all(|a| has(&[s_host, s_pre], a))
            && v.dst_all.iter().all(|a| has(&[d_host, d_pre], a))
            && v.svc_all.iter().all(|a| self.svc.binary_search(a).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An atom passing the filter (same bit as a used atom) but absent from the
    /// atom table is not found: the false-positive path, which the equivalence
    /// tests' small atom ids no longer reach with a 4,096-bit filter.
    #[test]
    fn filter_false_positive_misses_the_atom_table() {
        let stride = (BLOOM_WORDS * 64) as AtomId;
        let used: Vec<(AtomId, u32)> = (0..40).map(|i| (i * 7 + 3, 1000 + i)).collect();
        let mut bloom = [0u64; BLOOM_WORDS];
        for (a, _) in &used {
            let (word, bit) = Program::bloom_bit(*a);
            bloom[word] |= bit;
        }
        let mut table = Vec::new();
        atom_table_into(&mut table, &used);
        let p = Program {
            lay: Layout {
                atab_mask: (table.len() - 1) as u32,
                ..Layout::default()
            },
            arena: Arc::from(Vec::new()),
            atoms: table.into(),
            words: 1,
            flags: 0,
            bloom,
            proto_class: [0; 256],
            rules: Arc::default(),
            overlay: None,
            verifies: Arc::default(),
            segments: Arc::default(),
            deciders: Arc::default(),
            fallback: (Verdict::Deny, 0, None),
            icmp_rules: Arc::default(),
            icmp_criteria: Arc::default(),
            icmp_bits: Arc::default(),
            bases: Arc::default(),
        };
        for (a, off) in &used {
            assert_eq!(p.slot(*a), Some(*off as usize));
            assert_eq!(p.slot(a + stride), None, "false positive of atom {a}");
            assert_eq!(p.slot(a + 3 * stride), None);
        }
        assert_eq!(p.slot(4), None);
    }

    /// The packed interval table agrees with a direct evaluation of the ranges, for
    /// small tables (branch-free count) and large ones (binary search), at the
    /// bounds of the port space.
    #[test]
    fn port_table_finds_every_ports_ranges() {
        for nranges in [0usize, 1, 3, 20, 40, 100] {
            let mut pos = Vec::new();
            let mut neg = Vec::new();
            let mut x = 12345u32;
            for i in 0..nranges {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let a = (x >> 8) as u16;
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let b = a.saturating_add((x >> 20) as u16 % 3000);
                let r = PortRange::new(a.into(), b.into()).unwrap();
                if i % 3 == 0 {
                    neg.push((i % 128, r));
                } else {
                    pos.push((i % 128, r));
                }
            }
            pos.push((127, PortRange::new(65000, 65535).unwrap()));
            neg.push((126, PortRange::single(0)));
            let w = 2;
            let (table, n) = port_table(w, &pos, &neg);
            let sw = n.div_ceil(STARTS_PER_WORD);
            let mut ports: Vec<u16> = vec![0, 1, 64999, 65000, 65534, 65535];
            for (_, r) in pos.iter().chain(&neg) {
                ports.extend([r.first(), r.last(), r.first().wrapping_sub(1)]);
                ports.push(r.last().wrapping_add(1));
            }
            for port in ports {
                let iv = port_interval(&table[..sw], n, port);
                let base = sw + iv * table_rows(!neg.is_empty()) * w;
                for (rules, off) in [(&pos, base), (&neg, base + w)] {
                    let mut want = vec![0u64; w];
                    for (rule, r) in rules.iter() {
                        if r.contains(port) {
                            bits::set(&mut want, *rule);
                        }
                    }
                    assert_eq!(
                        &table[off..off + w],
                        &want[..],
                        "{nranges} ranges, port {port}"
                    );
                }
            }
        }
    }

    fn range() -> impl proptest::strategy::Strategy<Value = PortRange> {
        use proptest::prelude::*;
        // Few distinct bounds, so ranges share them and edits remove some.
        (0u16..12, 0u16..4).prop_map(|(a, len)| {
            let first = a * 1000;
            PortRange::new(first.into(), (first + len * 1500).into())
                .unwrap_or(PortRange::single(first))
        })
    }

    proptest::proptest! {
        /// A table patched for some rules' new ranges is the table laid out from
        /// scratch for the new ranges (bounds no rule uses any more dropped, the
        /// negated bitmaps gained or dropped with the side's negated ranges).
        #[test]
        fn patched_port_table_equals_a_fresh_one(
            before in proptest::collection::vec((0usize..150, range(), proptest::bool::ANY), 0..40),
            edits in proptest::collection::btree_map(0usize..150, proptest::collection::vec((range(), proptest::bool::ANY), 0..3), 0..6),
        ) {
            let w = 3;
            let split = |list: &[(usize, PortRange, bool)]| {
                let pos: Vec<(usize, PortRange)> = list.iter().filter(|x| !x.2).map(|x| (x.0, x.1)).collect();
                let neg: Vec<(usize, PortRange)> = list.iter().filter(|x| x.2).map(|x| (x.0, x.1)).collect();
                (pos, neg)
            };
            let (pos, neg) = split(&before);
            let (old, old_n) = port_table(w, &pos, &neg);
            let old_rows = table_rows(!neg.is_empty());
            let mut after: Vec<(usize, PortRange, bool)> =
                before.iter().filter(|x| !edits.contains_key(&x.0)).copied().collect();
            let mut edited = Vec::new();
            for (rule, ranges) in &edits {
                edited.extend(ranges.iter().map(|(r, negated)| (*rule, *r, *negated)));
            }
            after.extend(&edited);
            let (pos, neg) = split(&after);
            let want = port_table(w, &pos, &neg);
            let starts = port_starts(&pos, &neg);
            let changed: Vec<usize> = edits.keys().copied().collect();
            let (epos, eneg) = split(&edited);
            // Written after what the buffer holds, which it leaves alone.
            let mut got = vec![7u64; 3];
            // Negated bitmaps come and go with the side's last negated range.
            let patch = TablePatch {
                starts: &starts,
                rows: table_rows(!neg.is_empty()),
                changed: &changed,
                pos: &epos,
                neg: &eneg,
            };
            let n = port_table_patched(&mut got, w, &old, old_n, old_rows, &patch);
            proptest::prop_assert_eq!(&got[..3], &[7u64; 3][..]);
            proptest::prop_assert_eq!((got[3..].to_vec(), n), want);
        }
    }
}
