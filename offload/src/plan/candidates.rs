//! Which decision entries are worth offloading, the atoms (NIC entries) they expand
//! into, what each atom is worth in hits, and the order the selection meets them in.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use capo_policy::State;

use crate::atom::{atom_match, expand, Atom, ExpandError};
use crate::caps::NicCaps;
use crate::lower::{Domain, Entry, EntryKind, Match, OffloadProgram, Origin};

use super::{
    conflicting_earlier, AtomId, EntryId, FlowResults, HitCounters, KeepReason, PlanConfig,
};

/// The atoms of every entry that may go down.
pub(super) type AtomsByEntry = HashMap<EntryId, Vec<Atom>>;

/// The software entry each flow sample first matches (`None`: from a local source, or
/// to no local workload).
pub(super) fn attribute_samples(
    results: &mut FlowResults,
    state: &State,
    program: &OffloadProgram,
    hits: &HitCounters,
) -> Vec<Option<EntryId>> {
    hits.flows
        .iter()
        .map(|s| results.first_entry(state, program, &s.packet, s.tcp_flags))
        .collect()
}

/// The `rule#` an entry's hits are counted under.
fn rule_id(origin: &Origin) -> Option<u32> {
    match origin {
        Origin::Rule { rule_id, .. } | Origin::EndOfTier { rule_id, .. } => *rule_id,
        Origin::NoProfileMatched | Origin::NeighbourDiscovery { .. } => None,
    }
}

/// The entry's rule counter, when it has one.
fn rule_hits(hits: &HitCounters, dom: &Domain, entry: &Entry) -> Option<u64> {
    let r = rule_id(&entry.origin)?;
    hits.rules.get(&(dom.workload.clone(), r)).copied()
}

/// Entries that carry traffic: a flow sample first matches them, or their rule
/// counter is non-zero.
pub(super) fn hot_entries(
    program: &OffloadProgram,
    hits: &HitCounters,
    attributed: &[Option<EntryId>],
) -> HashSet<EntryId> {
    let mut hot: HashSet<EntryId> = attributed.iter().flatten().copied().collect();
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if rule_hits(hits, dom, entry).is_some_and(|h| h > 0) {
                hot.insert((d, e));
            }
        }
    }
    hot
}

/// Every decision entry's atoms, or why it has none.
#[derive(Debug, Default)]
pub(super) struct Expansion {
    /// Atoms of the entries that may go down.
    pub atoms: AtomsByEntry,
    /// Why each other decision entry stays in software.
    pub reasons: BTreeMap<EntryId, KeepReason>,
}

/// Expands every offloadable decision entry into atoms.
pub(super) fn expand_entries(
    program: &OffloadProgram,
    caps: &NicCaps,
    cfg: &PlanConfig,
    groups: bool,
    hot: &HashSet<EntryId>,
) -> Expansion {
    let mut out = Expansion::default();
    // Allows need a mark (groups, or one flat table that takes marks).
    let marks = groups || caps.mode() == crate::caps::OffloadMode::FlatMarks;
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if !matches!(entry.kind, EntryKind::Allow | EntryKind::Deny) {
                continue;
            }
            let hot = hot.contains(&(d, e));
            let m = match offloadable_match(program, dom, entry, groups, marks, hot) {
                Ok(m) => m,
                Err(reason) => {
                    out.reasons.insert((d, e), reason);
                    continue;
                }
            };
            match expand(&m, caps, cfg.rule_cap) {
                Ok(v) => {
                    out.atoms.insert((d, e), v);
                }
                Err(ExpandError::OverCap { cost }) => {
                    out.reasons.insert((d, e), KeepReason::OverRuleCap { cost });
                }
                Err(why) => {
                    out.reasons
                        .insert((d, e), KeepReason::DeviceCannotExpress { why });
                }
            }
        }
    }
    out
}

/// What of a decision entry the NIC may decide, or why it stays in software.
fn offloadable_match<'a>(
    program: &OffloadProgram,
    dom: &Domain,
    entry: &'a Entry,
    groups: bool,
    marks: bool,
    hot: bool,
) -> Result<Cow<'a, Match>, KeepReason> {
    if dom.skipped.is_some() {
        return Err(KeepReason::DomainSkipped);
    }
    let m = entry
        .exact
        .as_ref()
        .map_err(|why| KeepReason::NotExpressible { why: *why })?;
    if !marks && entry.kind == EntryKind::Allow {
        return Err(KeepReason::ModeForbids);
    }
    if entry.kind == EntryKind::Deny && m.proto != Some(6) && drops_replies(dom, m) {
        return Err(KeepReason::StatefulUnsafe);
    }
    if !hot {
        return Err(KeepReason::Cold);
    }
    if groups {
        return Ok(Cow::Borrowed(m));
    }
    // Without a source punt (drop-only and flat-marks modes) the hardware share of a rule leaves out
    // local sources, which Felix evaluates differently.
    Ok(Cow::Owned(Match {
        src: Arc::new(m.src.difference(&program.local_sources)),
        ..m.clone()
    }))
}

/// Whether a stateless (non-TCP) deny `m` could drop replies of flows the endpoint's
/// egress policy may allow.
fn drops_replies(dom: &Domain, m: &Match) -> bool {
    dom.egress_allow.iter().any(|a| a.reversed().overlaps(m))
        || (matches!(m.proto, None | Some(1) | Some(58)) && !dom.egress_allow.is_empty())
}

/// Hits per atom, and the flow samples each atom decides.
#[derive(Debug, Default)]
pub(super) struct AtomHits {
    /// Packets per atom.
    pub hits: HashMap<AtomId, u64>,
    /// Flow samples (indices into [`HitCounters::flows`]) per atom.
    pub samples: HashMap<AtomId, Vec<usize>>,
}

/// Hits per atom: flow samples first-matched in software; an entry without samples
/// spreads its rule counter evenly over its atoms.
pub(super) fn atom_hits(
    program: &OffloadProgram,
    hits: &HitCounters,
    attributed: &[Option<EntryId>],
    atoms: &AtomsByEntry,
) -> AtomHits {
    let mut out = AtomHits::default();
    let mut sampled: HashSet<EntryId> = HashSet::new();
    for (i, (s, at)) in hits.flows.iter().zip(attributed).enumerate() {
        let Some((d, e)) = *at else {
            continue;
        };
        let Some(list) = atoms.get(&(d, e)) else {
            continue;
        };
        if let Some(a) = list.iter().position(|a| a.contains(&s.packet, s.tcp_flags)) {
            *out.hits.entry((d, e, a)).or_insert(0) += s.hits;
            out.samples.entry((d, e, a)).or_default().push(i);
            sampled.insert((d, e));
        }
    }
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if sampled.contains(&(d, e)) {
                continue;
            }
            let Some(list) = atoms.get(&(d, e)) else {
                continue;
            };
            if let Some(h) = rule_hits(hits, dom, entry) {
                let per = spread(h, list.len());
                for a in 0..list.len() {
                    out.hits.insert((d, e, a), per);
                }
            }
        }
    }
    out
}

/// One atom's share of a rule counter of `hits` spread over `atoms` atoms: at least
/// one hit when the rule has any, so no atom of a hot rule counts as cold.
fn spread(hits: u64, atoms: usize) -> u64 {
    (hits / atoms.max(1) as u64).max(u64::from(hits > 0))
}

/// An atom with traffic: a candidate NIC entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cand {
    pub domain: usize,
    pub entry: usize,
    pub atom: usize,
    pub hits: u64,
}

impl Cand {
    pub(super) fn id(&self) -> AtomId {
        (self.domain, self.entry, self.atom)
    }
}

/// The candidates, densest first, with each one's estimated entry cost.
#[derive(Debug, Default)]
pub(super) struct Ranked {
    /// Atoms with hits, by hits per estimated entry, then hits, then position.
    pub cands: Vec<Cand>,
    /// Entries each candidate would take, itself plus its covers (none installed
    /// yet); absent means 1.
    pub est: HashMap<AtomId, u64>,
}

impl Ranked {
    /// The candidate's estimated entry cost.
    pub(super) fn cost(&self, c: &Cand) -> u64 {
        self.est.get(&c.id()).copied().unwrap_or(1)
    }
}

/// Ranks the atoms with hits by hits per entry they would cost.
pub(super) fn rank(
    program: &OffloadProgram,
    caps: &NicCaps,
    atoms: &AtomsByEntry,
    atom_hits: &HashMap<AtomId, u64>,
) -> Ranked {
    let mut cands: Vec<Cand> = atom_hits
        .iter()
        .filter(|(_, h)| **h > 0)
        .map(|(&(domain, entry, atom), &hits)| Cand {
            domain,
            entry,
            atom,
            hits,
        })
        .collect();
    let mut est: HashMap<AtomId, u64> = HashMap::new();
    for c in &cands {
        let Some(a) = atoms.get(&(c.domain, c.entry)).and_then(|v| v.get(c.atom)) else {
            continue;
        };
        if let Some(n) = estimated_cost(&program.domains[c.domain], c.entry, a, caps) {
            est.insert(c.id(), n);
        }
    }
    let ranked = Ranked {
        cands: Vec::new(),
        est,
    };
    let density = |c: &Cand| c.hits as f64 / ranked.cost(c) as f64;
    cands.sort_by(|a, b| {
        density(b)
            .total_cmp(&density(a))
            .then(b.hits.cmp(&a.hits))
            .then(a.domain.cmp(&b.domain))
            .then(a.entry.cmp(&b.entry))
            .then(a.atom.cmp(&b.atom))
    });
    Ranked { cands, ..ranked }
}

/// Entries atom `a` of entry `entry` would take with a cover for every earlier
/// conflicting entry overlapping it; `None` when the entry has no exact match.
fn estimated_cost(dom: &Domain, entry: usize, a: &Atom, caps: &NicCaps) -> Option<u64> {
    let am = atom_match(a);
    let mut n = 1u64;
    for j in conflicting_earlier(dom, entry)? {
        if let Some(cm) = dom.entries[j].approx.intersect(&am) {
            // Saturating: several inexpressible overlaps each count as "too many".
            n = n.saturating_add(crate::atom::cost(&cm, caps).unwrap_or(u64::MAX / 4).max(1));
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::NotExpressible;
    use crate::testutils::{self as fixture, tcp_sample};
    use capo_policy::{Action, Rule};

    fn hot_all(program: &OffloadProgram) -> HashSet<EntryId> {
        (0..program.domains[0].entries.len())
            .map(|e| (0, e))
            .collect()
    }

    #[test]
    fn test_hot_entries_come_from_samples_and_rule_counters() {
        let (s, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let mut hits = HitCounters {
            flows: vec![tcp_sample([172, 16, 0, 1], 80, 100)],
            ..HitCounters::default()
        };
        let attributed = attribute_samples(&mut FlowResults::default(), &s, &program, &hits);
        assert_eq!(attributed, vec![Some((0, 0))]);
        assert_eq!(
            hot_entries(&program, &hits, &attributed),
            HashSet::from([(0, 0)])
        );
        // The end-of-tier drop's rule counter makes its entries (the drop of TCP
        // connection attempts, the stateful remainder) hot too.
        let eot = &program.domains[0].entries[1];
        let rid = rule_id(&eot.origin).unwrap();
        hits.rules
            .insert((program.domains[0].workload.clone(), rid), 5);
        assert_eq!(
            hot_entries(&program, &hits, &attributed),
            HashSet::from([(0, 0), (0, 1), (0, 2)])
        );
    }

    #[test]
    fn test_expansion_says_why_entries_stay_in_software() {
        let (_, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let caps = NicCaps::mlx5(64);
        let cfg = PlanConfig::default();
        let x = expand_entries(&program, &caps, &cfg, true, &HashSet::from([(0, 0)]));
        assert_eq!(x.atoms[&(0, 0)].len(), 1);
        assert_eq!(x.reasons.get(&(0, 1)), Some(&KeepReason::Cold));
        // Drop-only mode does not offload allows.
        let x = expand_entries(&program, &caps, &cfg, false, &hot_all(&program));
        assert_eq!(x.reasons.get(&(0, 0)), Some(&KeepReason::ModeForbids));
        // A tight rule cap.
        let tight = PlanConfig { rule_cap: 0, ..cfg };
        let x = expand_entries(&program, &caps, &tight, true, &hot_all(&program));
        assert!(matches!(
            x.reasons.get(&(0, 0)),
            Some(KeepReason::OverRuleCap { .. })
        ));
    }

    #[test]
    fn test_stateless_deny_is_kept_when_replies_could_match() {
        let (_, mut program) =
            fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let entry = &mut program.domains[0].entries[0];
        entry.kind = EntryKind::Deny;
        if let Ok(m) = &mut entry.exact {
            m.proto = Some(17);
        }
        let caps = NicCaps::mlx5(64);
        let hot = hot_all(&program);
        // Without egress allows there are no replies to protect.
        let x = expand_entries(&program, &caps, &PlanConfig::default(), true, &hot);
        assert!(x.atoms.contains_key(&(0, 0)));
        program.domains[0].egress_allow = vec![Match::any()];
        let x = expand_entries(&program, &caps, &PlanConfig::default(), true, &hot);
        assert_eq!(x.reasons.get(&(0, 0)), Some(&KeepReason::StatefulUnsafe));
    }

    #[test]
    fn test_entry_without_exact_match_is_not_expressible() {
        let (_, mut program) =
            fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        program.domains[0].entries[0].exact = Err(NotExpressible::NamedPorts);
        let x = expand_entries(
            &program,
            &NicCaps::mlx5(64),
            &PlanConfig::default(),
            true,
            &hot_all(&program),
        );
        assert_eq!(
            x.reasons.get(&(0, 0)),
            Some(&KeepReason::NotExpressible {
                why: NotExpressible::NamedPorts
            })
        );
    }

    #[test]
    fn test_rule_counters_spread_over_atoms_at_least_one_each() {
        assert_eq!(spread(10, 4), 2);
        assert_eq!(spread(3, 4), 1);
        assert_eq!(spread(0, 4), 0);
        assert_eq!(spread(7, 0), 7);
    }

    #[test]
    fn test_samples_credit_the_atom_that_contains_them() {
        let (s, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let hits = HitCounters {
            flows: vec![
                tcp_sample([172, 16, 0, 1], 80, 100),
                tcp_sample([172, 16, 0, 2], 80, 20),
            ],
            ..HitCounters::default()
        };
        let attributed = attribute_samples(&mut FlowResults::default(), &s, &program, &hits);
        let x = expand_entries(
            &program,
            &NicCaps::mlx5(64),
            &PlanConfig::default(),
            true,
            &hot_entries(&program, &hits, &attributed),
        );
        let h = atom_hits(&program, &hits, &attributed, &x.atoms);
        assert_eq!(h.hits, HashMap::from([((0, 0, 0), 120)]));
        assert_eq!(h.samples[&(0, 0, 0)], vec![0, 1]);
    }

    #[test]
    fn test_rank_orders_by_hits_per_estimated_entry() {
        // The allow needs a cover for the pass above it; the deny does not.
        let mut pass = Rule::any(Action::Pass);
        pass.src.nets.push(fixture::net("172.16.0.4/30"));
        let (_, program) =
            fixture::program(vec![pass, fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let caps = NicCaps::mlx5(64);
        let x = expand_entries(
            &program,
            &caps,
            &PlanConfig::default(),
            true,
            &hot_all(&program),
        );
        // Entry 1 is the allow, 2 the end-of-tier drop of connection attempts (covers
        // for the pass and the allow), 4 the no-profile drop.
        let hits = HashMap::from([((0, 1, 0), 100), ((0, 2, 0), 120), ((0, 4, 0), 0)]);
        let r = rank(&program, &caps, &x.atoms, &hits);
        let order: Vec<AtomId> = r.cands.iter().map(Cand::id).collect();
        // 100 over two entries ranks above 120 over three; no hits, no candidate.
        assert_eq!(order, vec![(0, 1, 0), (0, 2, 0)]);
        assert_eq!(r.cost(&r.cands[0]), 2);
        assert_eq!(r.cost(&r.cands[1]), 3);
    }
}
