//! Greedy selection under the device's capacity: candidates by hits per entry they
//! cost, each atom with the covers its earlier conflicting entries need (or relying
//! on those entries' own atoms being installed above it).

use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::atom::{atom_match, expand, Atom};
use crate::caps::NicCaps;
use crate::lower::{EntryKind, OffloadProgram};

use super::candidates::{AtomsByEntry, Cand, Ranked};
use super::exact::FlowCand;
use super::{
    all_installed, conflicting_earlier, overlapping, AtomId, EntryId, FastHash, FlowSample,
    KeepReason, Node,
};

/// A candidate of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Index into [`Ranked::cands`].
    Atom(usize),
    /// Index into the exact-flow candidates.
    Flow(usize),
}

/// A queued candidate of the lazy greedy selection.
#[derive(Debug, Clone, Copy)]
struct Queued {
    density: f64,
    hits: u64,
    rank: usize,
    pick: Pick,
    /// Queued after every candidate with traffic of its own (see [`Selector::triage`]).
    late: bool,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.density
            .total_cmp(&o.density)
            .then(self.hits.cmp(&o.hits))
            .then(o.rank.cmp(&self.rank))
    }
}

/// What an installed decision relies on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Reliance {
    /// Cover nodes punting earlier conflicting entries' overlap.
    pub covers: Vec<usize>,
    /// Earlier conflicting entries whose overlapping atoms are all installed (the
    /// dependent set).
    pub entries: Vec<usize>,
}

/// The outcome of the selection.
#[derive(Debug, Default)]
pub(super) struct Selection {
    /// Decisions and covers, in the order chosen.
    pub nodes: Vec<Node>,
    /// Atoms installed per entry.
    pub installed: HashMap<EntryId, HashSet<usize>>,
    /// Per decision node: what it relies on.
    pub relies: HashMap<usize, Reliance>,
    /// Why atoms of an entry were left out (the first reason met).
    pub reasons: HashMap<EntryId, KeepReason>,
    /// Chosen exact-flow candidates.
    pub flows: Vec<usize>,
}

impl Selection {
    /// Records why an atom of `id` stays in software, unless a reason is known.
    pub(super) fn keep(&mut self, id: EntryId, reason: KeepReason) {
        self.reasons.entry(id).or_insert(reason);
    }
}

/// What the selection chooses from.
pub(super) struct Inputs<'a> {
    pub program: &'a OffloadProgram,
    pub caps: &'a NicCaps,
    /// Most entries one cover may expand into.
    pub rule_cap: u64,
    /// Groups mode (covers are possible).
    pub groups: bool,
    /// Entries available.
    pub budget: u64,
    pub flows: &'a [FlowSample],
    pub atoms: &'a AtomsByEntry,
    /// Flow samples per atom.
    pub samples: &'a HashMap<AtomId, Vec<usize>>,
    pub ranked: &'a Ranked,
    pub flow_cands: &'a [FlowCand],
}

/// Covers and reliance one atom needs to be decided safely.
#[derive(Debug, Default, PartialEq, Eq)]
struct Needs {
    /// Covers already placed.
    covers: Vec<usize>,
    /// Covers to place: (earlier entry, atom).
    new_covers: Vec<(usize, Atom)>,
    /// Earlier entries relied on.
    entries: Vec<usize>,
}

/// What to do with a popped candidate.
#[derive(Debug, PartialEq)]
enum Triage {
    Drop,
    Requeue(Queued),
    Take,
}

struct Selector<'a> {
    inp: Inputs<'a>,
    /// Flow samples some chosen entry already decides.
    served: Vec<bool>,
    /// Entries used.
    used: u64,
    /// Earlier conflicting entries per entry.
    deps_of: HashMap<EntryId, Vec<usize>>,
    /// Placed covers by (domain, earlier entry, atom).
    cover_keys: HashMap<(usize, usize, Atom), usize, FastHash>,
    out: Selection,
}

/// Selects atoms and exact flows within the budget: lazy greedy by hits per entry, a
/// candidate whose samples were meanwhile decided by another re-queued with what is
/// left.
pub(super) fn select(inp: Inputs<'_>) -> Selection {
    let mut s = Selector {
        served: vec![false; inp.flows.len()],
        inp,
        used: 0,
        deps_of: HashMap::new(),
        cover_keys: HashMap::default(),
        out: Selection::default(),
    };
    let mut queue = s.initial_queue();
    while let Some(q) = queue.pop() {
        match s.triage(q) {
            Triage::Drop => {}
            Triage::Requeue(q) => queue.push(q),
            Triage::Take => match q.pick {
                Pick::Flow(i) => s.take_flow(i),
                Pick::Atom(i) => s.take_atom(i),
            },
        }
    }
    s.out
}

impl<'a> Selector<'a> {
    /// Hits of `samples` no chosen entry decides yet.
    fn unserved(&self, samples: &[usize]) -> u64 {
        samples
            .iter()
            .filter(|&&i| !self.served[i])
            .map(|&i| self.inp.flows[i].hits)
            .sum()
    }

    /// What a candidate is worth now.
    fn current_hits(&self, pick: Pick) -> u64 {
        match pick {
            Pick::Atom(i) => {
                let c = &self.inp.ranked.cands[i];
                match self.inp.samples.get(&c.id()) {
                    Some(v) => self.unserved(v),
                    None => c.hits,
                }
            }
            Pick::Flow(i) => self.unserved(&self.inp.flow_cands[i].samples),
        }
    }

    fn est_cost(&self, pick: Pick) -> f64 {
        match pick {
            Pick::Atom(i) => self.inp.ranked.cost(&self.inp.ranked.cands[i]) as f64,
            Pick::Flow(_) => 1.0,
        }
    }

    /// Every candidate with hits, atoms (in rank order) before flows on ties.
    fn initial_queue(&self) -> BinaryHeap<Queued> {
        let picks = (0..self.inp.ranked.cands.len())
            .map(Pick::Atom)
            .chain((0..self.inp.flow_cands.len()).map(Pick::Flow));
        let mut queue = BinaryHeap::new();
        for (rank, pick) in picks.enumerate() {
            let h = self.current_hits(pick);
            if h > 0 {
                queue.push(Queued {
                    density: h as f64 / self.est_cost(pick),
                    hits: h,
                    rank,
                    pick,
                    late: false,
                });
            }
        }
        queue
    }

    /// Takes the candidate, or re-queues it with what it is worth now.
    fn triage(&self, q: Queued) -> Triage {
        let h = if q.late {
            q.hits
        } else {
            self.current_hits(q.pick)
        };
        if h == 0 {
            // An atom whose samples exact flows took still decides the rule's future
            // flows (new tuples): it gets what room is left after every candidate
            // with measured traffic of its own, best first.
            return match q.pick {
                Pick::Atom(i) => {
                    let c = &self.inp.ranked.cands[i];
                    let density = c.hits as f64 / self.est_cost(q.pick);
                    Triage::Requeue(Queued {
                        density: -1.0 / (1.0 + density),
                        hits: c.hits,
                        late: true,
                        ..q
                    })
                }
                Pick::Flow(_) => Triage::Drop,
            };
        }
        if h < q.hits && !q.late {
            return Triage::Requeue(Queued {
                density: h as f64 / self.est_cost(q.pick),
                hits: h,
                ..q
            });
        }
        Triage::Take
    }

    fn serve(&mut self, samples: &[usize]) {
        for &k in samples {
            self.served[k] = true;
        }
    }

    fn take_flow(&mut self, i: usize) {
        if self.used < self.inp.budget {
            self.used += 1;
            let flow_cands = self.inp.flow_cands;
            self.serve(&flow_cands[i].samples);
            self.out.flows.push(i);
        }
    }

    fn take_atom(&mut self, i: usize) {
        let ranked: &'a Ranked = self.inp.ranked;
        let c = &ranked.cands[i];
        let id = (c.domain, c.entry);
        let Some(a) = self.inp.atoms.get(&id).and_then(|v| v.get(c.atom)).copied() else {
            return;
        };
        if self.used >= self.inp.budget {
            // Not even the atom fits: no need to work out its covers.
            return self.out.keep(id, KeepReason::TableFull);
        }
        let needs = match self.needs(c, &a) {
            Ok(n) => n,
            Err(reason) => return self.out.keep(id, reason),
        };
        let cost = 1 + needs.new_covers.len() as u64;
        if self.used + cost > self.inp.budget {
            return self.out.keep(id, KeepReason::TableFull);
        }
        self.used += cost;
        let nodes = &mut self.out.nodes;
        let mut covers = needs.covers;
        for (j, ca) in needs.new_covers {
            self.cover_keys.insert((c.domain, j, ca), nodes.len());
            covers.push(nodes.len());
            nodes.push(Node::Cover {
                domain: c.domain,
                entry: j,
                atom: ca,
            });
        }
        self.out.relies.insert(
            nodes.len(),
            Reliance {
                covers,
                entries: needs.entries,
            },
        );
        self.out.installed.entry(id).or_default().insert(c.atom);
        let samples = self.inp.samples;
        if let Some(v) = samples.get(&c.id()) {
            self.serve(v);
        }
        let allow = self.inp.program.domains[c.domain].entries[c.entry].kind == EntryKind::Allow;
        self.out.nodes.push(Node::Decide {
            domain: c.domain,
            entry: c.entry,
            atom: c.atom,
            allow,
        });
    }

    /// For each earlier conflicting entry overlapping atom `a`: rely on its atoms when
    /// all that overlap are installed, else cover the overlap (groups mode only, and
    /// only when the cover leaves the atom something to decide).
    fn needs(&mut self, c: &Cand, a: &Atom) -> Result<Needs, KeepReason> {
        let dom = &self.inp.program.domains[c.domain];
        let am = atom_match(a);
        let deps = self
            .deps_of
            .entry((c.domain, c.entry))
            .or_insert_with(|| conflicting_earlier(dom, c.entry).unwrap_or_default());
        let mut needs = Needs::default();
        // One flat table has no order: nothing that decides otherwise may overlap.
        let flat = self.inp.caps.mode() == crate::caps::OffloadMode::FlatMarks;
        for &j in deps.iter() {
            let ej = &dom.entries[j];
            if !ej.approx.overlaps(&am) {
                continue;
            }
            if flat {
                return Err(KeepReason::Dependency);
            }
            if let Some(jatoms) = self.inp.atoms.get(&(c.domain, j)) {
                let inst = self.out.installed.get(&(c.domain, j));
                if overlapping(jatoms, a).next().is_some() && all_installed(jatoms, inst, a) {
                    needs.entries.push(j);
                    continue;
                }
            }
            if !self.inp.groups {
                return Err(KeepReason::Dependency);
            }
            let Some(cm) = ej.approx.intersect(&am) else {
                continue;
            };
            if cm == am {
                // The cover would punt everything the atom decides.
                return Err(KeepReason::Dependency);
            }
            let cover_atoms = expand(&cm, self.inp.caps, self.inp.rule_cap)
                .map_err(|_| KeepReason::Dependency)?;
            // An expansion's atoms are disjoint, and each (entry, atom) names one
            // cover: no cover is listed twice.
            for ca in cover_atoms {
                match self.cover_keys.get(&(c.domain, j, ca)) {
                    Some(&id) => needs.covers.push(id),
                    None => needs.new_covers.push((j, ca)),
                }
            }
        }
        Ok(needs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::candidates::{
        atom_hits, attribute_samples, expand_entries, hot_entries, rank,
    };
    use super::super::exact::exact_flow_candidates;
    use super::super::{FlowResults, HitCounters, PlanConfig};
    use super::*;
    use crate::testutils::{self as fixture, tcp_sample};
    use capo_policy::{Action, Rule, State};

    /// Runs the stages before the selection and the selection itself.
    fn selected(
        s: &State,
        program: &OffloadProgram,
        caps: &NicCaps,
        hits: &HitCounters,
        budget: u64,
        exact_flows: bool,
    ) -> Selection {
        let groups = caps.mode() == crate::caps::OffloadMode::VersionedGroups;
        let attributed = attribute_samples(&mut FlowResults::default(), s, program, hits);
        let hot = hot_entries(program, hits, &attributed);
        let x = expand_entries(program, caps, &PlanConfig::default(), groups, &hot);
        let ah = atom_hits(program, hits, &attributed, &x.atoms);
        let ranked = rank(program, caps, &x.atoms, &ah.hits);
        let flow_cands = if exact_flows {
            exact_flow_candidates(&mut FlowResults::default(), s, program, caps, hits, groups)
        } else {
            Vec::new()
        };
        select(Inputs {
            program,
            caps,
            rule_cap: 16,
            groups,
            budget,
            flows: &hits.flows,
            atoms: &x.atoms,
            samples: &ah.samples,
            ranked: &ranked,
            flow_cands: &flow_cands,
        })
    }

    fn decided(sel: &Selection) -> Vec<EntryId> {
        sel.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Decide { domain, entry, .. } => Some((*domain, *entry)),
                Node::Cover { .. } => None,
            })
            .collect()
    }

    #[test]
    fn test_budget_goes_to_the_hottest_candidate() {
        let (s, program) = fixture::program(
            vec![
                fixture::allow_tcp("172.16.0.0/24", 80),
                fixture::allow_tcp("172.16.1.0/24", 443),
            ],
            vec![],
        );
        let hits = HitCounters {
            flows: vec![
                tcp_sample([172, 16, 0, 1], 80, 10),
                tcp_sample([172, 16, 1, 1], 443, 90),
            ],
            ..HitCounters::default()
        };
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 1, false);
        assert_eq!(decided(&sel), vec![(0, 1)]);
        assert_eq!(sel.reasons.get(&(0, 0)), Some(&KeepReason::TableFull));
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 2, false);
        assert_eq!(decided(&sel), vec![(0, 1), (0, 0)]);
    }

    #[test]
    fn test_atom_below_a_pass_rule_needs_a_cover() {
        let mut pass = Rule::any(Action::Pass);
        pass.src.nets.push(fixture::net("172.16.0.4/30"));
        let (s, program) =
            fixture::program(vec![pass, fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let hits = HitCounters {
            flows: vec![tcp_sample([172, 16, 0, 1], 80, 10)],
            ..HitCounters::default()
        };
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 8, false);
        assert!(matches!(sel.nodes[0], Node::Cover { entry: 0, .. }));
        assert!(matches!(sel.nodes[1], Node::Decide { entry: 1, .. }));
        assert_eq!(
            sel.relies[&1],
            Reliance {
                covers: vec![0],
                entries: vec![]
            }
        );
        // The decision and its cover do not fit in one entry.
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 1, false);
        assert!(sel.nodes.is_empty());
        assert_eq!(sel.reasons.get(&(0, 1)), Some(&KeepReason::TableFull));
    }

    #[test]
    fn test_atom_whose_samples_an_exact_flow_took_comes_last() {
        let mut pass = Rule::any(Action::Pass);
        pass.src.nets.push(fixture::net("172.16.0.4/30"));
        let (s, program) =
            fixture::program(vec![pass, fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let hits = HitCounters {
            flows: vec![tcp_sample([172, 16, 0, 1], 80, 10)],
            ..HitCounters::default()
        };
        // The flow (one entry) is denser than the atom with its cover (two).
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 3, true);
        assert_eq!(sel.flows, vec![0]);
        assert_eq!(decided(&sel), vec![(0, 1)]);
        let sel = selected(&s, &program, &NicCaps::mlx5(64), &hits, 2, true);
        assert_eq!(sel.flows, vec![0]);
        assert!(sel.nodes.is_empty());
    }
}
