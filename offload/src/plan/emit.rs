//! Rule emission: the fixed punts, exact flows, the surviving decisions and covers by
//! layer, then the catch-all, each with its mark, counter and queue actions.

use std::collections::{HashMap, HashSet};

use crate::caps::NicCaps;
use crate::flow::{Action, Attr, FlowRule, Group, Item, Priority, Rss};
use crate::mark::{gen_tag, Mark, MarkKind};

use super::candidates::AtomsByEntry;
use super::exact::FlowCand;
use super::layers::Layout;
use super::select::Selection;
use super::{Node, PlannedRule, Role};

/// What the plan emits.
pub(super) struct Inputs<'a> {
    pub generation: u64,
    pub caps: &'a NicCaps,
    pub groups: bool,
    pub fixed: &'a [(Role, Vec<Item>)],
    pub flow_cands: &'a [FlowCand],
    pub selection: &'a Selection,
    pub layout: &'a Layout,
    pub atoms: &'a AtomsByEntry,
}

/// The emitted rules and what they amount to.
#[derive(Debug, Default)]
pub(super) struct Emitted {
    pub rules: Vec<PlannedRule>,
    pub decided_atoms: usize,
    pub rules_offloaded: usize,
    pub exact_flows: usize,
    pub layers: u32,
}

/// Builds rules in installation order; a rule's index (its mark and counter) is its
/// position (a re-plan committed in place renumbers: `carry_over`).
struct Emitter<'a> {
    caps: &'a NicCaps,
    tag: u8,
    out: Emitted,
    /// Rules emitted with a COUNT action (the device may have fewer counters than
    /// entries: ice has 256).
    counted: u32,
}

impl Emitter<'_> {
    fn next_index(&self) -> usize {
        self.out.rules.len()
    }

    /// Mark (when it fits the device's mark bits), count, and spread over queues:
    /// punts and allows differ only in the mark's kind.
    fn marked(&self, kind: MarkKind) -> Vec<Action> {
        let idx = self.next_index();
        let mut v = Vec::new();
        let mark = Mark {
            gen_tag: self.tag,
            kind,
            index: idx as u32,
        };
        if let Some(m) = mark.encode(self.caps.mark_bits) {
            v.push(Action::Mark(m));
        }
        if self.counter_left() {
            v.push(Action::Count(idx as u32));
        }
        v.push(Action::Rss(Rss::default()));
        v
    }

    fn punt(&self) -> Vec<Action> {
        self.marked(MarkKind::Punt)
    }

    fn decide(&self, allow: bool) -> Vec<Action> {
        if allow {
            return self.marked(MarkKind::Allow);
        }
        let mut v = Vec::new();
        if self.counter_left() {
            v.push(Action::Count(self.next_index() as u32));
        }
        v.push(Action::Drop);
        v
    }

    /// Whether the next rule can still carry a counter.
    fn counter_left(&self) -> bool {
        self.caps.counters && self.counted < self.caps.counter_limit
    }

    /// Appends a rule in group 0 (the commit sets the group) and returns its
    /// position; one the model rejects is left out.
    fn push(
        &mut self,
        role: Role,
        prio: u32,
        pattern: &[Item],
        actions: Vec<Action>,
    ) -> Option<usize> {
        let flow =
            FlowRule::new(Attr::ingress(Group(0), Priority(prio)), pattern, &actions).ok()?;
        self.counted += u32::from(flow.counts());
        self.out.rules.push(PlannedRule {
            role,
            flow,
            relies_on: Vec::new(),
        });
        Some(self.out.rules.len() - 1)
    }
}

/// Emits the plan's rules.
pub(super) fn emit(inp: &Inputs<'_>) -> Emitted {
    let mut em = Emitter {
        caps: inp.caps,
        tag: gen_tag(inp.generation),
        out: Emitted::default(),
        counted: 0,
    };
    for (role, pattern) in inp.fixed {
        let prio = if *role == Role::FragmentPunt { 0 } else { 1 };
        em.push(role.clone(), prio, pattern, em.punt());
    }
    emit_exact_flows(&mut em, inp);
    emit_nodes(&mut em, inp);
    if inp.groups {
        em.push(
            Role::CatchAll,
            inp.caps.max_priority,
            &[Item::Eth(None)],
            em.punt(),
        );
    }
    em.out
}

/// Exact flows are pairwise disjoint and disjoint from the source punts (their
/// sources are not local), so they share priority 1 under the fragment punt; without
/// groups (drop-only) they take priority 0 and give way to any decided atom they
/// overlap (both drop: the flow entry is redundant).
fn emit_exact_flows(em: &mut Emitter<'_>, inp: &Inputs<'_>) {
    for &f in &inp.selection.flows {
        let fc = &inp.flow_cands[f];
        if !inp.groups && shadowed(fc, inp) {
            continue;
        }
        em.out.exact_flows += 1;
        em.push(
            Role::ExactFlow {
                domain: fc.domain,
                allow: fc.allow,
                packet: fc.packet,
            },
            u32::from(inp.groups),
            &fc.atom.pattern(),
            em.decide(fc.allow),
        );
    }
}

/// Whether a live decision of the flow's domain overlaps its entry.
fn shadowed(fc: &FlowCand, inp: &Inputs<'_>) -> bool {
    let nodes = &inp.selection.nodes;
    (0..nodes.len()).any(|i| {
        inp.layout.alive[i]
            && matches!(nodes[i], Node::Decide { domain, .. } if domain == fc.domain)
            && nodes[i]
                .atom(inp.atoms)
                .is_some_and(|a| a.overlaps(&fc.atom))
    })
}

/// Live decisions and covers by layer (below the punts in groups mode), then domain,
/// then list position (a cover before the decision at its position).
fn emit_nodes(em: &mut Emitter<'_>, inp: &Inputs<'_>) {
    let nodes = &inp.selection.nodes;
    let Layout { alive, layer } = inp.layout;
    let base = if inp.groups { 2 } else { 0 };
    let mut order: Vec<usize> = (0..nodes.len()).filter(|&i| alive[i]).collect();
    order.sort_by_key(|&i| (layer[i], nodes[i].domain(), nodes[i].key(), i));
    let mut offloaded: HashSet<(usize, usize)> = HashSet::new();
    // Emitted positions per node, and the emitted decisions per entry: what a
    // decision relies on sits in lower layers, so it is emitted before it.
    let mut position: HashMap<usize, usize> = HashMap::new();
    let mut decided: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    // Entries with a decision left out (the model rejected its rule): whatever
    // relies on them is left out too.
    let mut incomplete: HashSet<(usize, usize)> = HashSet::new();
    for &i in &order {
        let Some(a) = nodes[i].atom(inp.atoms) else {
            continue;
        };
        em.out.layers = em.out.layers.max(layer[i] + 1);
        let prio = base + layer[i];
        match nodes[i] {
            Node::Decide {
                domain,
                entry,
                allow,
                ..
            } => {
                let role = Role::Decide {
                    domain,
                    entry,
                    allow,
                };
                let pushed =
                    reliance(inp, i, &a, &position, &decided, &incomplete).and_then(|relies_on| {
                        let at = em.push(role, prio, &a.pattern(), em.decide(allow))?;
                        em.out.rules[at].relies_on = relies_on;
                        Some(at)
                    });
                match pushed {
                    Some(at) => {
                        offloaded.insert((domain, entry));
                        em.out.decided_atoms += 1;
                        position.insert(i, at);
                        decided.entry((domain, entry)).or_default().push(i);
                    }
                    None => {
                        incomplete.insert((domain, entry));
                    }
                }
            }
            Node::Cover { domain, entry, .. } => {
                let role = Role::Cover { domain, entry };
                if let Some(at) = em.push(role, prio, &a.pattern(), em.punt()) {
                    position.insert(i, at);
                }
            }
        }
    }
    em.out.rules_offloaded = offloaded.len();
}

/// Positions of the emitted rules decision `i` (atom `a`) relies on: its covers,
/// and the emitted decisions of the earlier entries it depends on that overlap it.
/// `None` when one of them was left out: the decision cannot go down either.
fn reliance(
    inp: &Inputs<'_>,
    i: usize,
    a: &crate::atom::Atom,
    position: &HashMap<usize, usize>,
    decided: &HashMap<(usize, usize), Vec<usize>>,
    incomplete: &HashSet<(usize, usize)>,
) -> Option<Vec<usize>> {
    let nodes = &inp.selection.nodes;
    let Some(r) = inp.selection.relies.get(&i) else {
        return Some(Vec::new());
    };
    let domain = nodes[i].domain();
    let mut out: Vec<usize> = r
        .covers
        .iter()
        .map(|c| position.get(c).copied())
        .collect::<Option<_>>()?;
    if r.entries.iter().any(|j| incomplete.contains(&(domain, *j))) {
        return None;
    }
    for j in &r.entries {
        for &n in decided.get(&(domain, *j)).into_iter().flatten() {
            if nodes[n].atom(inp.atoms).is_some_and(|b| b.overlaps(a)) {
                out.extend(position.get(&n));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitter(caps: &NicCaps) -> Emitter<'_> {
        Emitter {
            caps,
            tag: gen_tag(6),
            out: Emitted::default(),
            counted: 0,
        }
    }

    #[test]
    fn test_marks_carry_generation_kind_and_position() {
        let caps = NicCaps::mlx5(64);
        let mut em = emitter(&caps);
        em.push(Role::CatchAll, 3, &[Item::Eth(None)], em.punt());
        let allow = em.decide(true);
        let want = Mark {
            gen_tag: 2,
            kind: MarkKind::Allow,
            index: 1,
        }
        .encode(caps.mark_bits)
        .unwrap();
        assert_eq!(
            allow,
            vec![
                Action::Mark(want),
                Action::Count(1),
                Action::Rss(Rss::default())
            ]
        );
    }

    #[test]
    fn test_denies_drop_without_a_mark() {
        let mut caps = NicCaps::mlx5(64);
        assert_eq!(
            emitter(&caps).decide(false),
            vec![Action::Count(0), Action::Drop]
        );
        caps.counters = false;
        assert_eq!(emitter(&caps).decide(false), vec![Action::Drop]);
    }

    #[test]
    fn test_empty_selection_emits_punts_and_the_catch_all() {
        let caps = NicCaps::mlx5(64);
        let fixed = vec![(
            Role::FragmentPunt,
            super::super::fixed::fragment_patterns(&caps)[0].clone(),
        )];
        let sel = Selection::default();
        let layout = Layout {
            alive: vec![],
            layer: vec![],
        };
        let atoms = AtomsByEntry::new();
        let out = emit(&Inputs {
            generation: 1,
            caps: &caps,
            groups: true,
            fixed: &fixed,
            flow_cands: &[],
            selection: &sel,
            layout: &layout,
            atoms: &atoms,
        });
        let roles: Vec<&Role> = out.rules.iter().map(|r| &r.role).collect();
        assert_eq!(roles, vec![&Role::FragmentPunt, &Role::CatchAll]);
        assert_eq!(
            out.rules[1].flow.attr().priority,
            Priority(caps.max_priority)
        );
        assert_eq!((out.decided_atoms, out.layers, out.exact_flows), (0, 0, 0));
    }
}
