//! Arena layout: a lowered program's rules become per-rule bitmaps (masks, protocol
//! classes, port tables, atom slots) in one arena (see [`Layout`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use capo_policy::{IpFamily, PortRange};

use super::lower::{Fragment, LRule, LSide, ProgSpec, SegSpec};
use crate::bits;
use crate::index::AtomId;
use crate::overlay::ExactRule;
use crate::program::{
    atom_table_into, port_table, port_table_over, table_rows, CRule, DeciderTable, Layout, Program,
    SegKind, Segment, TablePatch, Verify, BLOOM_WORDS, F_DST_NP, F_ICMP, F_SPARSE, F_SRC_NP, F_SVC,
    KINDS, K_DST_NEG, K_DST_NNP, K_DST_NP, K_DST_POS, K_SRC_NEG, K_SRC_NNP, K_SRC_NP, K_SRC_POS,
    K_SVC, M_DPORT_REQ, M_DST_REQ, M_FAM4, M_FAM6, M_NEED_ICMP, M_NEED_PORTS, M_PROTO, M_SPORT_REQ,
    M_SRC_REQ, M_SVC_REQ, SPARSE_MIN_WORDS,
};

/// Turns a spec into a program.
pub(super) fn finish(spec: &ProgSpec, min_words: usize) -> Program {
    let n = spec.rule_count();
    let w = bits::words_for(n).max(min_words);
    let sparse = w >= SPARSE_MIN_WORDS;
    let protos = ProtoClasses::of(spec.rules());
    let sizes = Sizes::of(spec);
    let mut masks = RuleMasks::new(w, protos.reps.len());
    masks.src.reserve(sizes.ports[0]);
    masks.dst.reserve(sizes.ports[1]);
    let mut slots = AtomSlots::new(w);
    slots.uses.reserve(sizes.atom_uses);
    let mut deciders = DeciderTable::default();
    let mut rules = Vec::with_capacity(n);
    let mut verifies = Vec::new();
    let mut bounds = Vec::with_capacity(spec.segments.len());
    for (fragments, kind) in &spec.segments {
        let start = rules.len();
        for fragment in fragments.iter() {
            deciders.push_rules(fragment.deciders.clone());
            for (j, r) in fragment.rules.iter().enumerate() {
                let i = rules.len();
                masks.add(i, r, &protos.reps, &mut slots);
                let check = verify(r);
                rules.push(CRule::new(
                    r.act,
                    fragment.rule_ids.get(j).copied().flatten(),
                    check.is_some(),
                ));
                verifies.extend(check.map(|v| (i as u32, v)));
            }
        }
        bounds.push((start, rules.len(), kind.clone()));
    }
    let segments = segments(bounds, &mut deciders);
    let (fv, fd, fr) = &spec.fallback;
    let fallback = (*fv, deciders.push_tail(fd.clone()), *fr);
    let flags = masks.flags() | if sparse { F_SPARSE } else { 0 };
    let (slots, atom_bits) = slots.compact(sparse);
    let bloom = bloom(&slots);
    // A tallied spec has its port tables' bounds sorted already.
    let starts = spec
        .tallied
        .then(|| [spec.port_starts(0), spec.port_starts(1)]);
    let icmp_rules = std::mem::take(&mut masks.icmp_rules);
    let (arena, atoms, lay) = masks.arena(&slots, &atom_bits, starts.as_ref());
    let mut program = Program {
        arena: arena.into(),
        atoms: atoms.into(),
        words: w as u32,
        flags,
        lay,
        bloom,
        proto_class: protos.class,
        rules: rules.into(),
        overlay: None,
        verifies: verifies.into(),
        segments: segments.into(),
        deciders: Arc::new(deciders),
        fallback,
        icmp_rules: icmp_rules.into(),
        icmp_criteria: Arc::default(),
        icmp_bits: Arc::default(),
        bases: Arc::default(),
    };
    program.derive();
    program
}

/// How many port ranges (positive, negated; per side) and atom uses a spec's rules
/// hold: the lists filled per rule are sized once.
struct Sizes {
    ports: [[usize; 2]; 2],
    atom_uses: usize,
}

impl Sizes {
    fn of(spec: &ProgSpec) -> Self {
        let mut sizes = Sizes {
            ports: [[0; 2]; 2],
            atom_uses: 0,
        };
        for r in spec.rules() {
            for (counts, side) in sizes.ports.iter_mut().zip([&r.src, &r.dst]) {
                counts[0] += side.ports.len();
                counts[1] += side.not_ports.len();
                sizes.atom_uses += side.pos.len() + side.neg.len() + side.np.len() + side.nnp.len();
            }
            sizes.atom_uses += r.svc.len();
        }
        sizes
    }
}

/// Protocol classes: each protocol a rule names, plus one for all others (every
/// protocol its own class when rules name 255 or more).
struct ProtoClasses {
    /// Protocol → class.
    class: [u8; 256],
    /// A representative protocol per class.
    reps: Vec<u8>,
}

impl ProtoClasses {
    fn of<'a>(rules: impl Iterator<Item = &'a LRule>) -> Self {
        // The named protocols as a 256-bit set: no list to sort per program.
        let mut named = [0u64; 4];
        for r in rules {
            for p in r.protocol.into_iter().chain(r.not_protocol) {
                if let Some(w) = named.get_mut(usize::from(p) / 64) {
                    *w |= 1 << (p % 64);
                }
            }
        }
        let is_named = |p: u8| {
            named
                .get(usize::from(p) / 64)
                .is_some_and(|w| w & 1 << (p % 64) != 0)
        };
        let count: u32 = named.iter().map(|w| w.count_ones()).sum();
        let mut class = [0u8; 256];
        let mut reps: Vec<u8> = Vec::new();
        if count >= 255 {
            for p in 0..=255u8 {
                if let Some(c) = class.get_mut(usize::from(p)) {
                    *c = p;
                }
                reps.push(p);
            }
        } else {
            let other = (0..=255u8).find(|p| !is_named(*p)).unwrap_or(0);
            reps.push(other);
            for p in (0..=255u8).filter(|p| is_named(*p)) {
                if let Some(c) = class.get_mut(usize::from(p)) {
                    *c = reps.len() as u8;
                }
                reps.push(p);
            }
        }
        ProtoClasses { class, reps }
    }
}

/// The atom kinds (`K_*`) of one side of a rule.
struct SideKinds {
    pos: usize,
    neg: usize,
    np: usize,
    nnp: usize,
}

const SRC_KINDS: SideKinds = SideKinds {
    pos: K_SRC_POS,
    neg: K_SRC_NEG,
    np: K_SRC_NP,
    nnp: K_SRC_NNP,
};
const DST_KINDS: SideKinds = SideKinds {
    pos: K_DST_POS,
    neg: K_DST_NEG,
    np: K_DST_NP,
    nnp: K_DST_NNP,
};

/// One side's port lists.
struct SidePorts {
    ports: Vec<(usize, PortRange)>,
    not_ports: Vec<(usize, PortRange)>,
    /// Some rule uses named ports on this side.
    named_ports: bool,
}

impl SidePorts {
    fn new() -> Self {
        SidePorts {
            ports: Vec::new(),
            not_ports: Vec::new(),
            named_ports: false,
        }
    }

    /// Room for `[positive, negated]` port ranges.
    fn reserve(&mut self, [ports, not_ports]: [usize; 2]) {
        self.ports.reserve_exact(ports);
        self.not_ports.reserve_exact(not_ports);
    }

    fn add(&mut self, i: usize, side: &LSide) {
        for p in &side.ports {
            self.ports.push((i, *p));
        }
        for p in &side.not_ports {
            self.not_ports.push((i, *p));
        }
        self.named_ports |= !side.np.is_empty() || !side.nnp.is_empty();
    }
}

/// The per-rule bitmaps of a program, `w` words each.
struct RuleMasks {
    w: usize,
    /// The masks (in `M_*` order), then one bitmap per protocol class: the head of
    /// the arena, as it lays them out.
    head: Vec<u64>,
    src: SidePorts,
    dst: SidePorts,
    icmp_rules: Vec<(
        u32,
        Option<capo_policy::IcmpMatch>,
        Option<capo_policy::IcmpMatch>,
    )>,
}

impl RuleMasks {
    fn new(w: usize, proto_classes: usize) -> Self {
        RuleMasks {
            w,
            head: vec![0; (M_PROTO + proto_classes) * w],
            src: SidePorts::new(),
            dst: SidePorts::new(),
            icmp_rules: Vec::new(),
        }
    }

    /// Sets rule `i`'s bit in row `row` of the head.
    fn set(&mut self, row: usize, i: usize) {
        if let Some(word) = self.head.get_mut(row * self.w + i / 64) {
            *word |= 1 << (i % 64);
        }
    }

    /// Row `row` of the head.
    fn row(&self, row: usize) -> &[u64] {
        self.head
            .get(row * self.w..(row + 1) * self.w)
            .unwrap_or(&[])
    }

    /// Sets rule `i`'s bits (`reps`: a protocol per class); its atoms go to `slots`.
    fn add(&mut self, i: usize, r: &LRule, reps: &[u8], slots: &mut AtomSlots) {
        self.add_masks(i, r, reps);
        slots.add_rule(i, r);
    }

    /// Sets rule `i`'s bits (`reps`: a protocol per class).
    fn add_masks(&mut self, i: usize, r: &LRule, reps: &[u8]) {
        for (row, fam) in [(M_FAM4, IpFamily::V4), (M_FAM6, IpFamily::V6)] {
            if r.family.is_none_or(|x| x == fam) {
                self.set(row, i);
            }
        }
        for (c, p) in reps.iter().enumerate() {
            if r.protocol.is_none_or(|x| x == *p) && r.not_protocol.is_none_or(|x| x != *p) {
                self.set(M_PROTO + c, i);
            }
        }
        if r.src.uses_ports || r.dst.uses_ports || !r.svc.is_empty() {
            self.set(M_NEED_PORTS, i);
        }
        if r.icmp.is_some() || r.not_icmp.is_some() {
            self.set(M_NEED_ICMP, i);
            self.icmp_rules.push((i as u32, r.icmp, r.not_icmp));
        }
        for (side, req, port_req) in [
            (&r.src, M_SRC_REQ, M_SPORT_REQ),
            (&r.dst, M_DST_REQ, M_DPORT_REQ),
        ] {
            if !side.pos.is_empty() {
                self.set(req, i);
            }
            if !side.ports.is_empty() || !side.np.is_empty() {
                self.set(port_req, i);
            }
        }
        self.src.add(i, &r.src);
        self.dst.add(i, &r.dst);
        if !r.svc.is_empty() {
            self.set(M_SVC_REQ, i);
        }
    }

    /// The program's `F_*` flags.
    fn flags(&self) -> u8 {
        let has_svc = self.row(M_SVC_REQ).iter().any(|x| *x != 0);
        let mut flags = 0;
        for (on, f) in [
            (self.src.named_ports, F_SRC_NP),
            (self.dst.named_ports, F_DST_NP),
            (has_svc, F_SVC),
            (!self.icmp_rules.is_empty(), F_ICMP),
        ] {
            if on {
                flags |= f;
            }
        }
        flags
    }

    /// The arena and the atoms (see [`Layout`]). The arena: the head (the masks in
    /// `M_*` order, the protocol classes), then the port tables; the atoms: the atom
    /// table, then the compacted atom slots (`slots` offsets relative to
    /// `atom_bits`). `starts`: each side's port-table interval starts, where known.
    fn arena(
        self,
        slots: &[(AtomId, u32)],
        atom_bits: &[u64],
        starts: Option<&[Vec<u16>; 2]>,
    ) -> (Vec<u64>, Vec<u64>, Layout) {
        let w = self.w;
        let table = |side: &SidePorts, starts: Option<&Vec<u16>>| match starts {
            Some(starts) => port_table_over(w, starts, &side.ports, &side.not_ports),
            None => port_table(w, &side.ports, &side.not_ports),
        };
        let (sports, sports_n) = table(&self.src, starts.map(|[s, _]| s));
        let (dports, dports_n) = table(&self.dst, starts.map(|[_, d]| d));
        let atab_len = (slots.len() * 2).next_power_of_two().max(2);
        let slots: Vec<(AtomId, u32)> = slots
            .iter()
            .map(|(a, o)| (*a, (atab_len + *o as usize) as u32))
            .collect();
        let mut arena = self.head;
        arena.reserve_exact(sports.len() + dports.len());
        let lay = Layout {
            atab_mask: (atab_len - 1) as u32,
            sports: arena.len() as u32,
            sports_n: sports_n as u32,
            dports: (arena.len() + sports.len()) as u32,
            dports_n: dports_n as u32,
            rows: [&self.src, &self.dst].map(|side| table_rows(!side.not_ports.is_empty()) as u8),
            kinds: slots
                .iter()
                .filter_map(|(_, o)| atom_bits.get(*o as usize - atab_len))
                .fold(0, |k, mask| k | *mask as u16),
        };
        arena.extend_from_slice(&sports);
        arena.extend_from_slice(&dports);
        let mut atoms = Vec::with_capacity(atab_len + atom_bits.len());
        atom_table_into(&mut atoms, &slots);
        atoms.extend_from_slice(atom_bits);
        (arena, atoms, lay)
    }
}

/// One fragment of a program swapped for another with as many rules: where its
/// rules start, the fragment the program holds, its replacement, and the rules
/// (by index in the fragment) that differ.
#[derive(Clone)]
pub(super) struct Swap {
    pub(super) start: usize,
    pub(super) old: Arc<Fragment>,
    pub(super) new: Arc<Fragment>,
    pub(super) changed: Arc<[usize]>,
    /// Per changed rule, its criteria after and before, as an overlay holds them
    /// (made once for every program).
    pub(super) exact: Arc<[(Arc<ExactRule>, Arc<ExactRule>)]>,
}

/// `program` with fragments swapped in place, `spec` being its spec after the
/// swaps: each changed rule's bits rewritten where they are, the port tables laid
/// out again when ports changed. `None` when a changed rule needs what the layout
/// lacks (a protocol without a class of its own, an atom or an atom kind the
/// program does not use, a word a sparse list does not hold): the caller lays the
/// program out anew.
pub(super) fn patch(program: &Program, spec: &ProgSpec, swaps: &[Swap]) -> Option<Program> {
    let w = program.words as usize;
    let classes = LaidClasses::of(&program.proto_class);
    let mut new_masks = RuleMasks::new(w, classes.reps.len());
    let mut new_slots = AtomSlots::new(w);
    let mut old_slots = AtomSlots::new(w);
    // Changed rules, by position, with their new lowering.
    let mut changed: Vec<(usize, &LRule)> = Vec::new();
    let mut ports_changed = [false; 2];
    // The changed rules' port ranges per side: positive, negated.
    let mut changed_ports: [[Vec<(usize, PortRange)>; 2]; 2] = Default::default();
    for swap in swaps {
        for j in swap.changed.iter().copied() {
            let (Some(old), Some(new)) = (swap.old.rules.get(j), swap.new.rules.get(j)) else {
                return None;
            };
            let named = new.protocol.into_iter().chain(new.not_protocol);
            if !named.into_iter().all(|x| classes.own(x)) {
                return None;
            }
            let i = swap.start + j;
            changed.push((i, new));
            new_masks.add(i, new, &classes.reps, &mut new_slots);
            old_slots.add_rule(i, old);
            let sides = [(&old.src, &new.src), (&old.dst, &new.dst)];
            for ((o, n), (moved, [pos, neg])) in sides
                .into_iter()
                .zip(ports_changed.iter_mut().zip(&mut changed_ports))
            {
                // A rule gaining or losing a port criterion re-cuts the side too:
                // its bits in the positive bitmaps go with it ([`Program::derive`]).
                let requires = |s: &LSide| !s.ports.is_empty() || !s.np.is_empty();
                *moved |=
                    o.ports != n.ports || o.not_ports != n.not_ports || requires(o) != requires(n);
                pos.extend(n.ports.iter().map(|r| (i, *r)));
                neg.extend(n.not_ports.iter().map(|r| (i, *r)));
            }
        }
    }
    changed.sort_unstable_by_key(|(i, _)| *i);
    let positions: Vec<usize> = changed.iter().map(|(i, _)| *i).collect();
    // The port tables first, so the arena is written once.
    let starts = [0, 1].map(|side| {
        ports_changed
            .get(side)
            .is_some_and(|c| *c)
            .then(|| spec.port_starts(side))
    });
    let mut patches = [None, None];
    for (side, (patch, starts)) in patches.iter_mut().zip(&starts).enumerate() {
        let (Some(starts), Some([pos, neg])) = (starts, changed_ports.get(side)) else {
            continue;
        };
        *patch = Some(TablePatch {
            starts,
            rows: spec.table_rows(side),
            changed: &positions,
            pos,
            neg,
        });
    }
    let mut p = program.with_port_tables(patches);
    // The rule list, the checks and the ICMP rules are shared with the old program
    // unless the patch changes them (a port moved changes none).
    let mut rules = Cow::Borrowed(&*program.rules);
    let set_rule = |rules: &mut Cow<'_, [CRule]>, i: usize, rule: CRule| {
        if rules.get(i).is_some_and(|r| *r != rule) {
            if let Some(r) = rules.to_mut().get_mut(i) {
                *r = rule;
            }
        }
    };
    for swap in swaps {
        for (k, id) in swap.new.rule_ids.iter().enumerate() {
            let i = swap.start + k;
            if let Some(r) = program.rules.get(i) {
                set_rule(&mut rules, i, CRule::new(r.act, *id, r.verify));
            }
        }
    }
    let mut verifies = Cow::Borrowed(&*program.verifies);
    for (i, new) in &changed {
        let check = verify(new);
        let id = rules.get(*i)?.rule_id();
        set_rule(&mut rules, *i, CRule::new(new.act, id, check.is_some()));
        let at = verifies.partition_point(|(r, _)| (*r as usize) < *i);
        let held = verifies.get(at).is_some_and(|(r, _)| *r as usize == *i);
        if held || check.is_some() {
            let list = verifies.to_mut();
            if held {
                list.remove(at);
            }
            if let Some(v) = check {
                list.insert(at, (*i as u32, v));
            }
        }
    }
    if let Cow::Owned(r) = rules {
        p.rules = r.into();
    }
    if let Cow::Owned(v) = verifies {
        p.verifies = v.into();
    }
    // The head rows: the masks, then the protocol classes, as the arena has them.
    let arena = Arc::make_mut(&mut p.arena);
    let mut head_changed = false;
    for i in &positions {
        for r in 0..M_PROTO + classes.reps.len() {
            head_changed |= copy_bit(arena.get_mut(r * w..(r + 1) * w)?, new_masks.row(r), *i);
        }
    }
    // Old bits cleared before new ones set: a rule keeping an atom keeps its bit.
    // Rules whose atoms all stayed leave the atoms shared with the old program.
    if old_slots.uses != new_slots.uses {
        let mut atoms = p.atoms.to_vec();
        for (uses, on) in [(&old_slots.uses, false), (&new_slots.uses, true)] {
            for (atom, kind, i) in uses {
                let at = atom_word(&p, &atoms, *atom, usize::from(*kind), *i as usize)?;
                let word = atoms.get_mut(at)?;
                let bit = 1u64 << (*i % 64);
                *word = if on { *word | bit } else { *word & !bit };
            }
        }
        p.atoms = atoms.into();
    }
    let changed_icmp = |r: &u32| positions.binary_search(&(*r as usize)).is_ok();
    let icmp_changed =
        !new_masks.icmp_rules.is_empty() || p.icmp_rules.iter().any(|(r, _, _)| changed_icmp(r));
    if icmp_changed {
        let mut icmp: Vec<_> = p
            .icmp_rules
            .iter()
            .filter(|(r, _, _)| !changed_icmp(r))
            .copied()
            .collect();
        icmp.extend(new_masks.icmp_rules);
        icmp.sort_unstable_by_key(|(r, _, _)| *r);
        p.icmp_rules = icmp.into();
    }
    let named_ports = |side: usize| spec.named_ports.get(side).is_none_or(|n| *n > 0);
    let svc = p
        .arena
        .get(M_SVC_REQ * w..(M_SVC_REQ + 1) * w)
        .is_some_and(|row| row.iter().any(|x| *x != 0));
    let mut flags = p.flags & F_SPARSE;
    for (on, f) in [
        (named_ports(0), F_SRC_NP),
        (named_ports(1), F_DST_NP),
        (svc, F_SVC),
        (!p.icmp_rules.is_empty(), F_ICMP),
    ] {
        if on {
            flags |= f;
        }
    }
    p.flags = flags;
    p.derive_patched(head_changed, icmp_changed);
    Some(p)
}

/// Rule `i`'s bit of `src` into `dst`; whether it changed.
fn copy_bit(dst: &mut [u64], src: &[u64], i: usize) -> bool {
    let bit = 1u64 << (i % 64);
    match (dst.get_mut(i / 64), src.get(i / 64)) {
        (Some(d), Some(s)) => {
            let was = *d;
            *d = (*d & !bit) | (s & bit);
            *d != was
        }
        _ => false,
    }
}

/// Where in `atoms` (the program's atoms, being patched) rule `i`'s bit of `atom`'s
/// bitmap of `kind` is, when the program has one.
fn atom_word(p: &Program, atoms: &[u64], atom: AtomId, kind: usize, i: usize) -> Option<usize> {
    let w = p.words as usize;
    let off = p.slot(atom)?;
    let mask = *atoms.get(off)?;
    if mask & (1 << kind) == 0 {
        return None;
    }
    let below = mask & ((1u64 << kind) - 1);
    if p.flags & F_SPARSE == 0 {
        return Some(off + 1 + below.count_ones() as usize * w + i / 64);
    }
    // Sparse: skip the lists of the kinds before, then find the word's pair.
    let mut at = off + 1;
    for _ in 0..below.count_ones() {
        at += 1 + 2 * usize::try_from(*atoms.get(at)?).ok()?;
    }
    let n = usize::try_from(*atoms.get(at)?).ok()?;
    let pair = (0..n).find(|k| atoms.get(at + 1 + 2 * k) == Some(&((i / 64) as u64)))?;
    Some(at + 2 + 2 * pair)
}

/// A laid-out program's protocol classes, as [`ProtoClasses`] made them: a
/// representative per class, and which protocols have a class of their own.
struct LaidClasses {
    reps: Vec<u8>,
    size: [u16; 256],
    class: [u8; 256],
}

impl LaidClasses {
    fn of(class: &[u8; 256]) -> Self {
        let mut size = [0u16; 256];
        let mut first: [Option<u8>; 256] = [None; 256];
        for p in 0..=255u8 {
            let c = usize::from(class[usize::from(p)]);
            if let (Some(n), Some(f)) = (size.get_mut(c), first.get_mut(c)) {
                *n += 1;
                f.get_or_insert(p);
            }
        }
        // Classes are numbered from 0 without gaps; each one's first protocol
        // stands for it, as it did when the program was laid out.
        LaidClasses {
            reps: first.iter().map_while(|f| *f).collect(),
            size,
            class: *class,
        }
    }

    /// Whether protocol `x` is alone in its class (a rule naming it can be laid out
    /// in the classes as they are).
    fn own(&self, x: u8) -> bool {
        let c = usize::from(self.class[usize::from(x)]);
        self.size.get(c) == Some(&1)
    }
}

// A slot's kinds are a mask of one word.
const _: () = assert!(KINDS <= 64);

/// Which rules use which atom as which kind (`K_*`), gathered as plain triples and
/// laid out once by [`AtomSlots::compact`]: a program with many atoms never holds a
/// zeroed bitmap per atom and kind.
struct AtomSlots {
    w: usize,
    uses: Vec<AtomUse>,
}

/// A rule's use of an atom: (atom, kind, rule).
type AtomUse = (AtomId, u8, u32);

impl AtomSlots {
    fn new(w: usize) -> Self {
        AtomSlots {
            w,
            uses: Vec::new(),
        }
    }

    /// Marks rule `i` as using `atom` as `kind`.
    fn set(&mut self, atom: AtomId, kind: usize, i: usize) {
        self.uses.push((atom, kind as u8, i as u32));
    }

    /// Marks the atoms rule `i` (`r`) uses, each as its kind.
    fn add_rule(&mut self, i: usize, r: &LRule) {
        for (side, kinds) in [(&r.src, &SRC_KINDS), (&r.dst, &DST_KINDS)] {
            let lists = [
                (&side.pos, kinds.pos),
                (&side.neg, kinds.neg),
                (&side.np, kinds.np),
                (&side.nnp, kinds.nnp),
            ];
            for (atoms, kind) in lists {
                for a in atoms {
                    self.set(*a, kind, i);
                }
            }
        }
        for a in &r.svc {
            self.set(*a, K_SVC, i);
        }
    }

    /// Each slot as a mask of the kinds in use followed by only their bitmaps
    /// (`sparse`: their sparse lists), atoms in the order of their first use (rules
    /// are added in order, each rule's atoms as [`AtomSlots::add_rule`] meets
    /// them): the atoms with their offsets into the compacted bits, and the bits.
    fn compact(self, sparse: bool) -> (Vec<(AtomId, u32)>, Vec<u64>) {
        let w = self.w;
        // Each atom numbered as first met, and its uses gathered by number with a
        // counting sort: no comparison sort, and each atom's uses stay in rule
        // order. A repeated use sets a bit twice, which is harmless.
        let mut number: HashMap<AtomId, u32, foldhash::fast::FixedState> =
            HashMap::with_capacity_and_hasher(self.uses.len(), Default::default());
        let mut atoms: Vec<AtomId> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let numbers: Vec<u32> = self
            .uses
            .iter()
            .map(|u| {
                let n = *number.entry(u.0).or_insert_with(|| {
                    atoms.push(u.0);
                    ends.push(0);
                    (atoms.len() - 1) as u32
                });
                if let Some(e) = ends.get_mut(n as usize) {
                    *e += 1;
                }
                n
            })
            .collect();
        let mut next: Vec<usize> = Vec::with_capacity(ends.len());
        let mut total = 0;
        for e in &mut ends {
            next.push(total);
            total += *e;
            *e = total;
        }
        let mut by_atom: Vec<AtomUse> = vec![(0, 0, 0); self.uses.len()];
        for (u, n) in self.uses.iter().zip(&numbers) {
            if let Some(at) = next.get_mut(*n as usize) {
                if let Some(slot) = by_atom.get_mut(*at) {
                    *slot = *u;
                }
                *at += 1;
            }
        }
        let mut slots = Vec::with_capacity(atoms.len());
        let mut compact: Vec<u64> =
            Vec::with_capacity(atoms.len() * (1 + if sparse { 3 } else { w }));
        let mut bitmap = vec![0u64; w];
        let mut begin = 0;
        for (atom, end) in atoms.iter().zip(&ends) {
            let atom_uses = by_atom.get(begin..*end).unwrap_or(&[]);
            begin = *end;
            let kinds = atom_uses.iter().fold(0u64, |m, u| m | 1 << u.1);
            slots.push((*atom, compact.len() as u32));
            compact.push(kinds);
            // Each kind's bitmap, kinds ascending (the mask's order).
            let mut left = kinds;
            while left != 0 {
                let kind = left.trailing_zeros() as u8;
                left &= left - 1;
                bitmap.fill(0);
                for (_, _, i) in atom_uses.iter().filter(|u| u.1 == kind) {
                    bits::set(&mut bitmap, *i as usize);
                }
                if sparse {
                    push_sparse(&mut compact, &bitmap);
                } else {
                    compact.extend_from_slice(&bitmap);
                }
            }
        }
        (slots, compact)
    }
}

/// Appends `bitmap` as a sparse list: the count of its non-zero words, then each
/// as (word index, word).
fn push_sparse(out: &mut Vec<u64>, bitmap: &[u64]) {
    let at = out.len();
    out.push(0);
    for (i, word) in bitmap.iter().enumerate() {
        if *word != 0 {
            out.extend([i as u64, *word]);
        }
    }
    let count = ((out.len() - at - 1) / 2) as u64;
    if let Some(n) = out.get_mut(at) {
        *n = count;
    }
}

/// The filter of the atoms a program uses ([`Program::bloom_bit`]).
fn bloom(slots: &[(AtomId, u32)]) -> [u64; BLOOM_WORDS] {
    let mut bloom = [0u64; BLOOM_WORDS];
    for (a, _) in slots {
        let (word, bit) = Program::bloom_bit(*a);
        if let Some(b) = bloom.get_mut(word) {
            *b |= bit;
        }
    }
    bloom
}

/// Rules with more than one positive atom on a side (or service) need every one of
/// them checked, not only the one a bitmap says matched.
fn verify(r: &LRule) -> Option<Verify> {
    (r.src.pos.len() > 1 || r.dst.pos.len() > 1 || r.svc.len() > 1).then(|| Verify {
        src_all: r.src.pos.clone(),
        dst_all: r.dst.pos.clone(),
        svc_all: r.svc.clone(),
    })
}

/// The program's segments; end-of-tier drops get their deciders after the rules'.
fn segments(specs: Vec<(usize, usize, SegSpec)>, deciders: &mut DeciderTable) -> Vec<Segment> {
    let mut segments = Vec::with_capacity(specs.len());
    for (start, end, kind) in specs {
        let kind = match kind {
            SegSpec::Plain => SegKind::Plain,
            SegSpec::Profile => SegKind::Profile,
            SegSpec::Tier(None) => SegKind::Tier { end_drop: None },
            SegSpec::Tier(Some((d, rule_id))) => SegKind::Tier {
                end_drop: Some((deciders.push_tail(d), rule_id)),
            },
        };
        segments.push(Segment {
            start: start as u32,
            end: end as u32,
            kind,
        });
    }
    segments
}

/// What a program decides from, in a form any two layouts of the same rules share:
/// the masks and protocol classes as laid out, each atom's non-empty bitmaps by
/// kind (whatever the slot order, density or unused slots), the bases, the port
/// tables, rules, segments, deciders and flags (the ICMP groups are made from the
/// rules' ICMP criteria, which it compares). A patched program must have the form of
/// the program laid out afresh from its spec.
pub(super) struct Canonical {
    head: Vec<u64>,
    bases: Vec<u64>,
    atoms: std::collections::BTreeMap<(AtomId, usize), Vec<u64>>,
    ports: [(Vec<u64>, usize); 2],
    rest: String,
}

impl Canonical {
    /// The first part where `self` differs from `other`, shown.
    pub(super) fn differs_from(&self, other: &Canonical) -> Option<String> {
        let parts = [
            (
                "masks",
                format!("{:?}", self.head),
                format!("{:?}", other.head),
            ),
            (
                "bases",
                format!("{:?}", self.bases),
                format!("{:?}", other.bases),
            ),
            (
                "atoms",
                format!("{:?}", self.atoms),
                format!("{:?}", other.atoms),
            ),
            (
                "ports",
                format!("{:?}", self.ports),
                format!("{:?}", other.ports),
            ),
            ("rules", self.rest.clone(), other.rest.clone()),
        ];
        parts
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(part, a, b)| format!("{part}: {a} != {b}"))
    }

    pub(super) fn of(p: &Program) -> Canonical {
        let w = p.words as usize;
        let mut head = p.arena.get(..M_PROTO * w).unwrap_or(&[]).to_vec();
        let mut bases = Vec::new();
        // Each protocol's rows, whatever the classes (a patch keeps the class of a
        // protocol no rule names any more).
        for class in p.proto_class {
            let class = usize::from(class);
            let at = (M_PROTO + class) * w;
            head.extend_from_slice(p.arena.get(at..at + w).unwrap_or(&[]));
            let at = class * 6 * w;
            bases.extend_from_slice(p.bases.get(at..at + 6 * w).unwrap_or(&[]));
        }
        let mut atoms = std::collections::BTreeMap::new();
        p.each_atom_use(|atom, kind, bits| {
            let mut bitmap = vec![0u64; w];
            for (word, x) in bits.words() {
                if let Some(b) = bitmap.get_mut(word) {
                    *b |= x;
                }
            }
            if bitmap.iter().any(|x| *x != 0) {
                atoms.insert((atom, kind), bitmap);
            }
        });
        let [src, dst] = p.port_tables();
        let flags = p.flags;
        Canonical {
            head,
            bases,
            atoms,
            ports: [(src.0.to_vec(), src.1), (dst.0.to_vec(), dst.1)],
            rest: format!(
                "{flags} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                p.rules,
                p.verifies,
                p.segments,
                p.deciders,
                p.fallback,
                p.icmp_rules,
                p.icmp_criteria,
                p.icmp_bits
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lower::OwnRule;
    use super::super::Builder;
    use super::*;
    use crate::program::Act;
    use capo_policy::eval::InternalPolicy;
    use capo_policy::{Decider, Verdict};

    fn own_rule(protocol: Option<u8>, not_protocol: Option<u8>) -> OwnRule {
        let mut r = Builder::new().internal_rule(Act::Allow, InternalPolicy::Failsafe, 0, None);
        r.rule.protocol = protocol;
        r.rule.not_protocol = not_protocol;
        r
    }

    fn rule(protocol: Option<u8>, not_protocol: Option<u8>) -> LRule {
        own_rule(protocol, not_protocol).rule
    }

    #[test]
    fn test_named_protocols_get_classes_and_the_rest_share_one() {
        let p = ProtoClasses::of(
            [
                rule(Some(6), None),
                rule(None, Some(17)),
                rule(Some(6), None),
            ]
            .iter(),
        );
        // Class 0 is every other protocol, represented by the first one unnamed.
        assert_eq!(p.reps, vec![0, 6, 17]);
        assert_eq!(
            (p.class[6], p.class[17], p.class[1], p.class[0]),
            (1, 2, 0, 0)
        );
    }

    #[test]
    fn test_compact_slots_keep_only_the_kinds_in_use() {
        let mut slots = AtomSlots::new(2);
        slots.set(7, K_SRC_POS, 3);
        slots.set(7, K_DST_NEG, 70);
        let (atoms, bits) = slots.compact(false);
        assert_eq!(atoms, vec![(7, 0)]);
        // The kind mask, then two bitmaps of two words.
        assert_eq!(bits.len(), 1 + 2 * 2);
        assert_eq!(bits[0], (1 << K_SRC_POS) | (1 << K_DST_NEG));
        assert_eq!(&bits[1..], &[1 << 3, 0, 0, 1 << 6]);
    }

    #[test]
    fn test_sparse_slots_list_only_the_non_zero_words() {
        let mut slots = AtomSlots::new(6);
        slots.set(7, K_SRC_POS, 3);
        slots.set(7, K_SRC_POS, 300);
        slots.set(7, K_DST_NEG, 70);
        let (atoms, bits) = slots.compact(true);
        assert_eq!(atoms, vec![(7, 0)]);
        assert_eq!(bits[0], (1 << K_SRC_POS) | (1 << K_DST_NEG));
        // Source: two words (0 and 4); destination negated: one word (1).
        assert_eq!(&bits[1..], &[2, 0, 1 << 3, 4, 1 << 44, 1, 1, 1 << 6]);
    }

    #[test]
    fn test_slots_come_in_the_order_atoms_are_first_met() {
        let mut slots = AtomSlots::new(1);
        slots.set(9, K_SRC_POS, 0);
        slots.set(5, K_SRC_POS, 1);
        slots.set(3, K_DST_NEG, 1);
        slots.set(9, K_DST_POS, 2);
        slots.set(3, K_SRC_POS, 2);
        slots.set(3, K_DST_NEG, 1);
        let (atoms, bits) = slots.compact(false);
        // Atom 9 (rule 0), then 5 and 3 (rule 1, as met), each with its kinds'
        // bitmaps in ascending kind order; the repeated use of atom 3 sets one bit.
        assert_eq!(atoms, vec![(9, 0), (5, 3), (3, 5)]);
        assert_eq!(
            &bits[..3],
            &[(1 << K_SRC_POS) | (1 << K_DST_POS), 1, 1 << 2]
        );
        assert_eq!(&bits[3..5], &[1 << K_SRC_POS, 1 << 1]);
        assert_eq!(
            &bits[5..],
            &[(1 << K_SRC_POS) | (1 << K_DST_NEG), 1 << 2, 1 << 1]
        );
    }

    #[test]
    fn test_a_tallied_spec_lays_out_the_same_program() {
        let ported = |ports: Vec<PortRange>, not_ports: Vec<PortRange>| {
            let mut r = own_rule(Some(6), None);
            r.rule.dst.ports = ports;
            r.rule.dst.not_ports = not_ports;
            r.rule.src.ports = vec![PortRange::single(0)];
            r
        };
        let range = |a, b| PortRange::new(a, b).expect("a range");
        let mut spec = ProgSpec::with_fallback(Verdict::Allow, Decider::NoHostEndpoint, None);
        spec.segment(
            vec![
                ported(vec![range(80, 90), PortRange::single(443)], vec![]),
                ported(vec![range(85, 65535)], vec![PortRange::single(88)]),
            ],
            SegSpec::Plain,
        );
        spec.segment(
            vec![ported(vec![PortRange::single(53)], vec![])],
            SegSpec::Plain,
        );
        let plain = finish(&spec, 1);
        spec.tally();
        let tallied = finish(&spec, 1);
        assert_eq!(
            Canonical::of(&plain).differs_from(&Canonical::of(&tallied)),
            None
        );
        assert_eq!(plain.port_tables(), tallied.port_tables());
        // Destination starts: 0, 53, 54, 80, 85, 88, 89, 91, 443, 444.
        assert_eq!(tallied.port_tables()[1].1, 10);
    }

    #[test]
    fn test_end_of_tier_drops_get_deciders_after_the_rules() {
        let mut deciders = DeciderTable::default();
        deciders.push_rules(vec![Decider::NoProfileMatched].into());
        let segs = segments(
            vec![
                (0, 1, SegSpec::Plain),
                (
                    1,
                    1,
                    SegSpec::Tier(Some((Decider::NoHostEndpoint, Some(9)))),
                ),
            ],
            &mut deciders,
        );
        assert_eq!(deciders.get(1), Some(&Decider::NoHostEndpoint));
        assert_eq!(deciders.get(2), None);
        assert!(matches!(segs[0].kind, SegKind::Plain));
        assert!(matches!(
            segs[1].kind,
            SegKind::Tier {
                end_drop: Some((1, Some(9)))
            }
        ));
    }

    #[test]
    fn test_arena_puts_masks_then_protocols_then_tables() {
        let mut spec = ProgSpec::with_fallback(Verdict::Allow, Decider::NoHostEndpoint, None);
        spec.segment(vec![own_rule(Some(6), None)], SegSpec::Plain);
        let p = finish(&spec, 1);
        // Nine masks and two protocol classes of one word, then the port tables;
        // the atom table apart (no atoms: its two empty entries).
        assert_eq!(p.lay.sports as usize, M_PROTO + 2);
        assert_eq!(&p.atoms[..], &[u64::MAX; 2]);
        assert_eq!(p.arena[0], 1, "IPv4 mask");
        assert_eq!(p.arena[M_PROTO], 0, "other protocols");
        assert_eq!(p.arena[M_PROTO + 1], 1, "TCP");
        assert_eq!(p.fallback, (Verdict::Allow, 1, None));
    }
}
