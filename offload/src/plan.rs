//! The split planner: a pure function from (program, NIC capabilities, hit counters)
//! to an [`OffloadPlan`].
//!
//! Safety (DESIGN.md §5, offload.md §6.1): an entry `r` of a domain's first-match list
//! may be decided by the NIC for a packet only if every earlier entry `e` that
//! overlaps it and could decide differently (a different verdict, or any `Continue`)
//! is, for that overlap, either installed above `r` itself (dependent set) or punted
//! by a **cover** (`approx(e) ∩ r` → MARK(punt)+RSS) above `r`. The planner works per
//! **atom** (one NIC entry of a rule's disjoint expansion), so the hottest members of
//! a big IP set go down without the cold ones. Denies of TCP are lowered to SYN-only;
//! other denies go down only when no flow the endpoint's egress policy may allow can
//! have replies matching them.
//!
//! Hotness is hits per NIC entry: an atom's value is its measured (or synthetic) hits
//! divided by what it costs, itself plus the covers it needs. The greedy choice keeps
//! within the device's capacity, and priority layers (the longest chain of overlapping
//! earlier rules) within its priority range; anything that does not fit, and anything
//! that loses a dependency because of that, stays in software with a typed reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use capo_policy::{Packet, State, WorkloadKey};

use crate::atom::{atom_match, expand, Atom, ExpandError};
use crate::caps::{NicCaps, OffloadMode};
use crate::flow::{
    Action, Attr, FlowRule, Group, Ipv4Fields, Ipv6Fields, Item, Priority, Rss, Spec,
};
use crate::lower::{EntryKind, Match, NotExpressible, OffloadProgram, Origin};
use crate::mark::{gen_tag, max_index, Mark, MarkKind};

/// Most NIC entries one policy rule may expand into (offload.md §6.1 item 2); only its
/// hot entries are installed, so the cap bounds planning work, not the table.
pub const DEFAULT_RULE_CAP: u64 = 4096;

/// A flow observed by software or the NIC, with its packet count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSample {
    /// The first packet's fields.
    pub packet: Packet,
    /// TCP flags of the packets counted (SYN-only for connection attempts).
    pub tcp_flags: Option<u8>,
    /// Packets.
    pub hits: u64,
}

/// Hit counters the planner ranks by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HitCounters {
    /// Per flow (the flow table's, or the NIC's per-entry counters folded into flows).
    pub flows: Vec<FlowSample>,
    /// Per rule and workload (`rule#` from the capo views), spread evenly over a
    /// rule's entries when no flow samples fall into it.
    pub rules: HashMap<(WorkloadKey, u32), u64>,
}

/// Why a rule (or part of it) stays in software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum KeepReason {
    /// The device has no usable rte_flow.
    SoftwareOnlyDevice,
    /// Not an allow or deny, or a criterion rte_flow cannot express.
    NotExpressible {
        /// Which.
        why: NotExpressible,
    },
    /// The device cannot express the match.
    DeviceCannotExpress {
        /// Which.
        why: ExpandError,
    },
    /// Expands into more entries than one rule may use.
    OverRuleCap {
        /// Entries it would take.
        cost: u64,
    },
    /// No measured traffic.
    Cold,
    /// The table is full (capacity or mark space).
    TableFull,
    /// An earlier conflicting rule could not be installed or covered.
    Dependency,
    /// A hardware deny could drop replies of flows the endpoint may open.
    StatefulUnsafe,
    /// The device's mode does not offload this kind (allow rules without groups).
    ModeForbids,
    /// Not enough priority levels.
    PriorityLimit,
    /// The endpoint has no address of its own.
    DomainSkipped,
}

/// What a planned NIC rule is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
pub enum Role {
    /// Punt every fragment (IPv4 offset/MF range, IPv6 fragment header).
    FragmentPunt,
    /// Punt packets from local sources (Felix evaluates them differently).
    SourcePunt,
    /// An atom of an entry, decided in hardware.
    Decide {
        /// Domain index.
        domain: usize,
        /// Entry index.
        entry: usize,
        /// Allow or deny.
        allow: bool,
    },
    /// One flow's exact 5-tuple (TCP: any flags for an allow, SYN-only for a deny),
    /// decided with the full policy's verdict for that tuple: an exact tuple cannot be
    /// decided differently by any earlier rule, so it needs no covers.
    ExactFlow {
        /// Domain index.
        domain: usize,
        /// Allow or deny.
        allow: bool,
        /// The flow's first packet (to credit the rule that decides it).
        #[serde(skip)]
        packet: Packet,
    },
    /// Punts the overlap of an earlier conflicting entry with a decided atom.
    Cover {
        /// Domain index.
        domain: usize,
        /// The conflicting earlier entry.
        entry: usize,
    },
    /// Lowest priority: punt the rest.
    CatchAll,
}

/// One NIC rule of the plan (its group is set by the commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRule {
    /// Why it exists.
    pub role: Role,
    /// The rule, in group 0 until committed.
    pub flow: FlowRule,
}

/// A rule kept (wholly or partly) in software.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Kept {
    /// Domain index.
    pub domain: usize,
    /// Entry index.
    pub entry: usize,
    /// Where it comes from.
    pub origin: Origin,
    /// Why.
    pub reason: KeepReason,
    /// Entries of the rule that did go down (a partly offloaded rule).
    pub atoms_offloaded: usize,
    /// Entries of the rule in total (0 when not expandable).
    pub atoms_total: usize,
}

/// The split of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadPlan {
    /// Generation id.
    pub generation: u64,
    /// Mode.
    pub mode: OffloadMode,
    /// NIC rules, in installation order (highest priority first).
    pub rules: Vec<PlannedRule>,
    /// Every decision entry not wholly offloaded, with its reason.
    pub kept: Vec<Kept>,
    /// Entries of rules (atoms) decided in hardware.
    pub decided_atoms: usize,
    /// Distinct policy entries with at least one atom in hardware.
    pub rules_offloaded: usize,
    /// Exact-flow entries ([`Role::ExactFlow`]).
    pub exact_flows: usize,
    /// Priority layers used by decided atoms and covers.
    pub layers: u32,
}

impl OffloadPlan {
    /// NIC entries the plan uses (the dispatcher rule not included).
    pub fn entries_used(&self) -> usize {
        self.rules.len()
    }
}

/// Tuning knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Most entries per rule.
    pub rule_cap: u64,
    /// Entries kept free (the dispatcher, spare room for a swap).
    pub reserve: u32,
    /// Offer exact-flow entries ([`Role::ExactFlow`]) for sampled flows, ranked with
    /// the rules' atoms by hits per entry.
    pub exact_flows: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            rule_cap: DEFAULT_RULE_CAP,
            reserve: 1,
            exact_flows: true,
        }
    }
}

/// A candidate exact-flow entry.
#[derive(Debug, Clone)]
struct FlowCand {
    domain: usize,
    packet: Packet,
    atom: Atom,
    allow: bool,
    /// Flow samples the entry decides.
    samples: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Atom(usize),
    Flow(usize),
}

/// A queued candidate of the lazy greedy selection.
#[derive(Debug, Clone, Copy)]
struct Queued {
    density: f64,
    hits: u64,
    rank: usize,
    pick: Pick,
    /// Queued after every candidate with traffic of its own (see the selection).
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

#[derive(Debug, Clone)]
struct Cand {
    domain: usize,
    entry: usize,
    atom: usize,
    hits: u64,
}

#[derive(Debug, Clone)]
enum Node {
    Decide {
        domain: usize,
        entry: usize,
        atom: usize,
        allow: bool,
    },
    Cover {
        domain: usize,
        entry: usize,
        atom: Atom,
    },
}

impl Node {
    fn domain(&self) -> usize {
        match self {
            Node::Decide { domain, .. } | Node::Cover { domain, .. } => *domain,
        }
    }
    /// Sort key: position in the list; covers before decisions at the same position.
    fn key(&self) -> (usize, u8) {
        match self {
            Node::Cover { entry, .. } => (*entry, 0),
            Node::Decide { entry, .. } => (*entry, 1),
        }
    }
}

fn conflicts(a: EntryKind, b: EntryKind) -> bool {
    a != b || matches!(a, EntryKind::Continue(_))
}

/// Plans the split of `program` (lowered from `state`) on a device with `caps`, ranked
/// by `hits`.
pub fn plan(
    state: &State,
    program: &OffloadProgram,
    caps: &NicCaps,
    hits: &HitCounters,
    cfg: &PlanConfig,
) -> OffloadPlan {
    let mode = caps.mode();
    let mut kept: Vec<Kept> = Vec::new();
    let keep_all = |reason: KeepReason, kept: &mut Vec<Kept>| {
        for (d, dom) in program.domains.iter().enumerate() {
            for (e, entry) in dom.entries.iter().enumerate() {
                if matches!(entry.kind, EntryKind::Allow | EntryKind::Deny) {
                    kept.push(Kept {
                        domain: d,
                        entry: e,
                        origin: entry.origin.clone(),
                        reason,
                        atoms_offloaded: 0,
                        atoms_total: 0,
                    });
                }
            }
        }
    };
    let empty = |kept: Vec<Kept>| OffloadPlan {
        generation: program.generation,
        mode,
        rules: Vec::new(),
        kept,
        decided_atoms: 0,
        rules_offloaded: 0,
        exact_flows: 0,
        layers: 0,
    };
    if mode == OffloadMode::SoftwareOnly {
        keep_all(KeepReason::SoftwareOnlyDevice, &mut kept);
        return empty(kept);
    }
    let groups = mode == OffloadMode::VersionedGroups;

    // Fixed rules: fragment punts, source punts, catch-all (groups mode only).
    let mut fixed_top: Vec<(Role, Vec<Item>)> = Vec::new();
    if groups {
        for pat in fragment_patterns(caps) {
            fixed_top.push((Role::FragmentPunt, pat));
        }
        let mut src_match = Match::any();
        src_match.src = program.local_sources.clone();
        if let Ok(atoms) = expand(&src_match, caps, u64::from(caps.capacity)) {
            for a in atoms {
                fixed_top.push((Role::SourcePunt, a.pattern().to_vec()));
            }
        }
    }
    let fixed = fixed_top.len() as u64 + u64::from(groups);
    if fixed + u64::from(cfg.reserve) + 1 > u64::from(caps.capacity) {
        // No room for the fixed rules and one more: software decides everything.
        keep_all(KeepReason::TableFull, &mut kept);
        let mut p = empty(kept);
        p.mode = OffloadMode::SoftwareOnly;
        return p;
    }
    let mut budget = u64::from(caps.capacity)
        .saturating_sub(u64::from(cfg.reserve))
        .saturating_sub(fixed);
    budget = budget.min(u64::from(max_index(caps.mark_bits)).saturating_sub(fixed));

    // Which entries carry traffic: flow samples first-matched as software would.
    let attributed: Vec<Option<(usize, usize)>> = hits
        .flows
        .iter()
        .map(|s| crate::lower::attribute(state, program, &s.packet, s.tcp_flags))
        .collect();
    let mut hot: HashSet<(usize, usize)> = attributed.iter().flatten().copied().collect();
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            let rid = match &entry.origin {
                Origin::Rule { rule_id, .. } | Origin::EndOfTier { rule_id, .. } => *rule_id,
                Origin::NoProfileMatched | Origin::NeighbourDiscovery { .. } => None,
            };
            if rid.is_some_and(|r| {
                hits.rules
                    .get(&(dom.workload.clone(), r))
                    .is_some_and(|h| *h > 0)
            }) {
                hot.insert((d, e));
            }
        }
    }

    // Candidates: exact, expressible, hot decisions, expanded into atoms.
    let mut atoms: HashMap<(usize, usize), Vec<Atom>> = HashMap::new();
    let mut entry_reason: BTreeMap<(usize, usize), KeepReason> = BTreeMap::new();
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if !matches!(entry.kind, EntryKind::Allow | EntryKind::Deny) {
                continue;
            }
            if dom.skipped.is_some() {
                entry_reason.insert((d, e), KeepReason::DomainSkipped);
                continue;
            }
            let m = match &entry.exact {
                Ok(m) => m,
                Err(why) => {
                    entry_reason.insert((d, e), KeepReason::NotExpressible { why: *why });
                    continue;
                }
            };
            if !groups && entry.kind == EntryKind::Allow {
                entry_reason.insert((d, e), KeepReason::ModeForbids);
                continue;
            }
            if entry.kind == EntryKind::Deny && m.proto != Some(6) {
                let unsafe_reply = dom.egress_allow.iter().any(|a| a.reversed().overlaps(m))
                    || (matches!(m.proto, None | Some(1) | Some(58))
                        && !dom.egress_allow.is_empty());
                if unsafe_reply {
                    entry_reason.insert((d, e), KeepReason::StatefulUnsafe);
                    continue;
                }
            }
            if !hot.contains(&(d, e)) {
                entry_reason.insert((d, e), KeepReason::Cold);
                continue;
            }
            // Without a source punt (drop-only mode) the hardware share of a rule
            // leaves out local sources, which Felix evaluates differently.
            let restricted;
            let m = if groups {
                m
            } else {
                restricted = Match {
                    src: m.src.difference(&program.local_sources),
                    ..m.clone()
                };
                &restricted
            };
            match expand(m, caps, cfg.rule_cap) {
                Ok(v) => {
                    atoms.insert((d, e), v);
                }
                Err(ExpandError::OverCap { cost }) => {
                    entry_reason.insert((d, e), KeepReason::OverRuleCap { cost });
                }
                Err(why) => {
                    entry_reason.insert((d, e), KeepReason::DeviceCannotExpress { why });
                }
            }
        }
    }

    // Hits per atom: flow samples first-matched in software, then rule counters.
    let mut atom_hits: HashMap<(usize, usize, usize), u64> = HashMap::new();
    let mut atom_samples: HashMap<(usize, usize, usize), Vec<usize>> = HashMap::new();
    let mut sampled: HashSet<(usize, usize)> = HashSet::new();
    for (i, (s, at)) in hits.flows.iter().zip(&attributed).enumerate() {
        let Some((d, e)) = *at else {
            continue;
        };
        let Some(list) = atoms.get(&(d, e)) else {
            continue;
        };
        if let Some(a) = list.iter().position(|a| a.contains(&s.packet, s.tcp_flags)) {
            *atom_hits.entry((d, e, a)).or_insert(0) += s.hits;
            atom_samples.entry((d, e, a)).or_default().push(i);
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
            let rid = match &entry.origin {
                Origin::Rule { rule_id, .. } | Origin::EndOfTier { rule_id, .. } => *rule_id,
                Origin::NoProfileMatched | Origin::NeighbourDiscovery { .. } => None,
            };
            if let Some(h) = rid.and_then(|r| hits.rules.get(&(dom.workload.clone(), r))) {
                let per = (*h / list.len().max(1) as u64).max(u64::from(*h > 0));
                for a in 0..list.len() {
                    atom_hits.insert((d, e, a), per);
                }
            }
        }
    }
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
    // Hits per entry used: estimate each candidate's covers (none installed yet).
    let mut est: HashMap<(usize, usize, usize), u64> = HashMap::new();
    for c in &cands {
        let dom = &program.domains[c.domain];
        let entry = &dom.entries[c.entry];
        let (Ok(m), Some(a)) = (
            &entry.exact,
            atoms.get(&(c.domain, c.entry)).and_then(|v| v.get(c.atom)),
        ) else {
            continue;
        };
        let am = atom_match(a);
        let mut n = 1u64;
        for j in 0..c.entry {
            let ej = &dom.entries[j];
            if conflicts(ej.kind, entry.kind) && ej.approx.overlaps(m) {
                if let Some(cm) = ej.approx.intersect(&am) {
                    n += crate::atom::cost(&cm, caps).unwrap_or(u64::MAX / 4).max(1);
                }
            }
        }
        est.insert((c.domain, c.entry, c.atom), n);
    }
    let density = |c: &Cand| {
        c.hits as f64 / est.get(&(c.domain, c.entry, c.atom)).copied().unwrap_or(1) as f64
    };
    cands.sort_by(|a, b| {
        density(b)
            .total_cmp(&density(a))
            .then(b.hits.cmp(&a.hits))
            .then(a.domain.cmp(&b.domain))
            .then(a.entry.cmp(&b.entry))
            .then(a.atom.cmp(&b.atom))
    });
    let flow_cands = if cfg.exact_flows {
        exact_flow_candidates(state, program, caps, hits, groups)
    } else {
        Vec::new()
    };

    // Lazy greedy over atoms and exact flows by hits per entry: a candidate whose
    // samples were meanwhile decided by another is re-queued with what is left.
    let mut served = vec![false; hits.flows.len()];
    let unserved = |samples: &[usize], served: &[bool]| -> u64 {
        samples
            .iter()
            .filter(|&&i| !served[i])
            .map(|&i| hits.flows[i].hits)
            .sum()
    };
    let cur_hits = |pick: Pick, served: &[bool]| -> u64 {
        match pick {
            Pick::Atom(i) => {
                let c = &cands[i];
                match atom_samples.get(&(c.domain, c.entry, c.atom)) {
                    Some(v) => unserved(v, served),
                    None => c.hits,
                }
            }
            Pick::Flow(i) => unserved(&flow_cands[i].samples, served),
        }
    };
    let est_cost = |pick: Pick| -> f64 {
        match pick {
            Pick::Atom(i) => {
                let c = &cands[i];
                est.get(&(c.domain, c.entry, c.atom)).copied().unwrap_or(1) as f64
            }
            Pick::Flow(_) => 1.0,
        }
    };
    let mut queue: std::collections::BinaryHeap<Queued> = std::collections::BinaryHeap::new();
    let picks = (0..cands.len())
        .map(Pick::Atom)
        .chain((0..flow_cands.len()).map(Pick::Flow));
    for (rank, pick) in picks.enumerate() {
        let h = cur_hits(pick, &served);
        if h > 0 {
            queue.push(Queued {
                density: h as f64 / est_cost(pick),
                hits: h,
                rank,
                pick,
                late: false,
            });
        }
    }
    let mut flow_nodes: Vec<usize> = Vec::new();

    // Earlier conflicting entries per candidate entry.
    let mut deps_of: HashMap<(usize, usize), Vec<usize>> = HashMap::new();

    // Greedy selection.
    let mut nodes: Vec<Node> = Vec::new();
    let mut installed: HashMap<(usize, usize), HashSet<usize>> = HashMap::new();
    let mut cover_keys: HashMap<(usize, usize, Atom), usize> = HashMap::new();
    // For each decided node: the covers and installed entries it relies on.
    let mut relies: HashMap<usize, (Vec<usize>, Vec<usize>)> = HashMap::new();
    let mut atom_reason: HashMap<(usize, usize), KeepReason> = HashMap::new();
    let mut used = 0u64;
    while let Some(q) = queue.pop() {
        let h = if q.late {
            q.hits
        } else {
            cur_hits(q.pick, &served)
        };
        if h == 0 {
            // An atom whose samples exact flows took still decides the rule's future
            // flows (new tuples): it gets what room is left after every candidate
            // with measured traffic of its own, best first.
            if let Pick::Atom(i) = q.pick {
                let c = &cands[i];
                let density = c.hits as f64 / est_cost(q.pick);
                queue.push(Queued {
                    density: -1.0 / (1.0 + density),
                    hits: c.hits,
                    late: true,
                    ..q
                });
            }
            continue;
        }
        if h < q.hits && !q.late {
            queue.push(Queued {
                density: h as f64 / est_cost(q.pick),
                hits: h,
                ..q
            });
            continue;
        }
        let c = match q.pick {
            Pick::Flow(i) => {
                if used < budget {
                    used += 1;
                    for &k in &flow_cands[i].samples {
                        served[k] = true;
                    }
                    flow_nodes.push(i);
                }
                continue;
            }
            Pick::Atom(i) => &cands[i],
        };
        let dom = &program.domains[c.domain];
        let entry = &dom.entries[c.entry];
        let Some(a) = atoms
            .get(&(c.domain, c.entry))
            .and_then(|v| v.get(c.atom))
            .copied()
        else {
            continue;
        };
        let am = atom_match(&a);
        let deps = deps_of.entry((c.domain, c.entry)).or_insert_with(|| {
            let Ok(m) = &entry.exact else {
                return Vec::new();
            };
            (0..c.entry)
                .filter(|&j| {
                    let ej = &dom.entries[j];
                    conflicts(ej.kind, entry.kind) && ej.approx.overlaps(m)
                })
                .collect()
        });
        let mut new_covers: Vec<(usize, Atom)> = Vec::new();
        let mut cover_ids: Vec<usize> = Vec::new();
        let mut rely_entries: Vec<usize> = Vec::new();
        let mut ok = true;
        for &j in deps.iter() {
            let ej = &dom.entries[j];
            if !ej.approx.overlaps(&am) {
                continue;
            }
            // Dependent set: every atom of j overlapping this one is installed.
            if let Some(jatoms) = atoms.get(&(c.domain, j)) {
                let inst = installed.get(&(c.domain, j));
                let overl: Vec<usize> = (0..jatoms.len())
                    .filter(|&k| jatoms[k].overlaps(&a))
                    .collect();
                if !overl.is_empty() && overl.iter().all(|k| inst.is_some_and(|s| s.contains(k))) {
                    rely_entries.push(j);
                    continue;
                }
            }
            if !groups {
                ok = false;
                break;
            }
            let Some(cm) = ej.approx.intersect(&am) else {
                continue;
            };
            if cm == am {
                // The cover would punt everything the atom decides.
                ok = false;
                break;
            }
            match expand(&cm, caps, cfg.rule_cap) {
                Ok(cv) => {
                    for ca in cv {
                        match cover_keys.get(&(c.domain, j, ca)) {
                            Some(&id) => {
                                if !cover_ids.contains(&id) {
                                    cover_ids.push(id);
                                }
                            }
                            None => {
                                if !new_covers.contains(&(j, ca)) {
                                    new_covers.push((j, ca));
                                }
                            }
                        }
                    }
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            atom_reason
                .entry((c.domain, c.entry))
                .or_insert(KeepReason::Dependency);
            continue;
        }
        let cost = 1 + new_covers.len() as u64;
        if used + cost > budget {
            atom_reason
                .entry((c.domain, c.entry))
                .or_insert(KeepReason::TableFull);
            continue;
        }
        used += cost;
        for (j, ca) in new_covers {
            cover_keys.insert((c.domain, j, ca), nodes.len());
            cover_ids.push(nodes.len());
            nodes.push(Node::Cover {
                domain: c.domain,
                entry: j,
                atom: ca,
            });
        }
        relies.insert(nodes.len(), (cover_ids, rely_entries));
        installed
            .entry((c.domain, c.entry))
            .or_default()
            .insert(c.atom);
        if let Some(v) = atom_samples.get(&(c.domain, c.entry, c.atom)) {
            for &k in v {
                served[k] = true;
            }
        }
        nodes.push(Node::Decide {
            domain: c.domain,
            entry: c.entry,
            atom: c.atom,
            allow: entry.kind == EntryKind::Allow,
        });
    }

    // Layers, pruning to the device's priorities, and the dependency fixpoint.
    let max_layers: u32 = if groups {
        caps.max_priority.saturating_sub(2)
    } else {
        caps.max_priority.saturating_add(1)
    };
    let atom_of = |n: &Node| -> Option<Atom> {
        match n {
            Node::Decide {
                domain,
                entry,
                atom,
                ..
            } => atoms
                .get(&(*domain, *entry))
                .and_then(|v| v.get(*atom))
                .copied(),
            Node::Cover { atom, .. } => Some(*atom),
        }
    };
    let mut alive: Vec<bool> = vec![true; nodes.len()];
    let mut layer: Vec<u32> = vec![0; nodes.len()];
    loop {
        compute_layers(&nodes, &alive, &atom_of, &mut layer);
        let mut changed = false;
        for i in 0..nodes.len() {
            if alive[i] && layer[i] >= max_layers {
                alive[i] = false;
                changed = true;
                if let Node::Decide {
                    domain,
                    entry,
                    atom,
                    ..
                } = nodes[i]
                {
                    atom_reason
                        .entry((domain, entry))
                        .or_insert(KeepReason::PriorityLimit);
                    if let Some(s) = installed.get_mut(&(domain, entry)) {
                        s.remove(&atom);
                    }
                }
            }
        }
        // A decided atom whose covers or relied-on entries lost atoms goes too.
        for i in 0..nodes.len() {
            if !alive[i] {
                continue;
            }
            let Node::Decide {
                domain,
                entry,
                atom,
                ..
            } = nodes[i]
            else {
                continue;
            };
            let Some((covers, ents)) = relies.get(&i) else {
                continue;
            };
            let Some(a) = atom_of(&nodes[i]) else {
                continue;
            };
            let covers_ok = covers.iter().all(|&c| alive[c]);
            let ents_ok = ents.iter().all(|&j| {
                atoms.get(&(domain, j)).is_some_and(|jatoms| {
                    let inst = installed.get(&(domain, j));
                    (0..jatoms.len())
                        .filter(|&k| jatoms[k].overlaps(&a))
                        .all(|k| inst.is_some_and(|s| s.contains(&k)))
                })
            });
            if !(covers_ok && ents_ok) {
                alive[i] = false;
                changed = true;
                atom_reason
                    .entry((domain, entry))
                    .or_insert(KeepReason::PriorityLimit);
                if let Some(s) = installed.get_mut(&(domain, entry)) {
                    s.remove(&atom);
                }
            }
        }
        if !changed {
            break;
        }
    }

    // Emit: fixed top rules, then nodes by layer, then the catch-all.
    let tag = gen_tag(program.generation);
    let mut rules: Vec<PlannedRule> = Vec::new();
    // Punts and allows differ only in the mark's kind.
    let mark_actions = |kind: MarkKind, idx: usize| -> Vec<Action> {
        let mut v = Vec::new();
        if let Some(m) = (Mark {
            gen_tag: tag,
            kind,
            index: idx as u32,
        })
        .encode(caps.mark_bits)
        {
            v.push(Action::Mark(m));
        }
        if caps.counters {
            v.push(Action::Count(idx as u32));
        }
        v.push(Action::Rss(Rss::default()));
        v
    };
    let punt_actions = |idx: usize| mark_actions(MarkKind::Punt, idx);
    let allow_actions = |idx: usize| mark_actions(MarkKind::Allow, idx);
    let drop_actions = |idx: usize| -> Vec<Action> {
        let mut v = Vec::new();
        if caps.counters {
            v.push(Action::Count(idx as u32));
        }
        v.push(Action::Drop);
        v
    };
    let push = |rules: &mut Vec<PlannedRule>,
                role: Role,
                prio: u32,
                pattern: &[Item],
                actions: Vec<Action>| {
        if let Ok(flow) = FlowRule::new(Attr::ingress(Group(0), Priority(prio)), pattern, &actions)
        {
            rules.push(PlannedRule { role, flow });
        }
    };
    for (role, pat) in &fixed_top {
        let prio = if *role == Role::FragmentPunt { 0 } else { 1 };
        let idx = rules.len();
        push(&mut rules, role.clone(), prio, pat, punt_actions(idx));
    }
    // Exact flows: pairwise disjoint, disjoint from the source punts (their sources
    // are not local), so they share priority 1 under the fragment punt; without
    // groups (drop-only) they take priority 0 and give way to any decided atom they
    // overlap (both drop: the flow entry is redundant).
    let mut exact_flows = 0;
    for &f in &flow_nodes {
        let fc = &flow_cands[f];
        if !groups
            && (0..nodes.len()).any(|i| {
                alive[i]
                    && matches!(nodes[i], Node::Decide { domain, .. } if domain == fc.domain)
                    && atom_of(&nodes[i]).is_some_and(|a| a.overlaps(&fc.atom))
            })
        {
            continue;
        }
        let idx = rules.len();
        let actions = if fc.allow {
            allow_actions(idx)
        } else {
            drop_actions(idx)
        };
        exact_flows += 1;
        push(
            &mut rules,
            Role::ExactFlow {
                domain: fc.domain,
                allow: fc.allow,
                packet: fc.packet,
            },
            u32::from(groups),
            &fc.atom.pattern(),
            actions,
        );
    }
    let base = if groups { 2 } else { 0 };
    let mut order: Vec<usize> = (0..nodes.len()).filter(|&i| alive[i]).collect();
    order.sort_by_key(|&i| (layer[i], nodes[i].domain(), nodes[i].key(), i));
    let mut layers_used = 0;
    let mut offloaded: HashSet<(usize, usize)> = HashSet::new();
    let mut decided_atoms = 0;
    for &i in &order {
        let Some(a) = atom_of(&nodes[i]) else {
            continue;
        };
        layers_used = layers_used.max(layer[i] + 1);
        let idx = rules.len();
        let prio = base + layer[i];
        match &nodes[i] {
            Node::Decide {
                domain,
                entry,
                allow,
                ..
            } => {
                let actions = if *allow {
                    allow_actions(idx)
                } else {
                    drop_actions(idx)
                };
                offloaded.insert((*domain, *entry));
                decided_atoms += 1;
                push(
                    &mut rules,
                    Role::Decide {
                        domain: *domain,
                        entry: *entry,
                        allow: *allow,
                    },
                    prio,
                    &a.pattern(),
                    actions,
                );
            }
            Node::Cover { domain, entry, .. } => {
                push(
                    &mut rules,
                    Role::Cover {
                        domain: *domain,
                        entry: *entry,
                    },
                    prio,
                    &a.pattern(),
                    punt_actions(idx),
                );
            }
        }
    }
    if groups {
        let idx = rules.len();
        push(
            &mut rules,
            Role::CatchAll,
            caps.max_priority,
            &[Item::Eth(None)],
            punt_actions(idx),
        );
    }

    // Reasons for everything not wholly offloaded.
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if !matches!(entry.kind, EntryKind::Allow | EntryKind::Deny) {
                continue;
            }
            let total = atoms.get(&(d, e)).map_or(0, Vec::len);
            let done = installed.get(&(d, e)).map_or(0, HashSet::len);
            if total > 0 && done == total {
                continue;
            }
            let reason = entry_reason
                .get(&(d, e))
                .copied()
                .or_else(|| atom_reason.get(&(d, e)).copied())
                .unwrap_or(KeepReason::Cold);
            kept.push(Kept {
                domain: d,
                entry: e,
                origin: entry.origin.clone(),
                reason,
                atoms_offloaded: done,
                atoms_total: total,
            });
        }
    }
    OffloadPlan {
        generation: program.generation,
        mode,
        rules,
        kept,
        decided_atoms,
        rules_offloaded: offloaded.len(),
        exact_flows,
        layers: layers_used,
    }
}

/// Exact-flow candidates: per distinct sampled flow (addresses, protocol, L4 fields)
/// from a non-local source to a workload of the program, the full policy's verdict
/// for that exact tuple ([`capo_policy::trace`]). Nothing earlier in the policy can
/// decide differently for the packets of one exact tuple, so such an entry needs no
/// covers; what remains are the statefulness rules (DESIGN.md §5):
///
/// - allow: every packet of the tuple (software would allow them too: by policy, or
///   as part of a flow);
/// - TCP deny: connection attempts only (SYN without ACK);
/// - other denies: none (the NIC has no connection state; software keeps flows an
///   earlier generation allowed, as Calico's conntrack does);
/// - no entry when a `log` rule matches the tuple (software must record it), when
///   the device cannot express it, or (drop-only mode) for allows.
fn exact_flow_candidates(
    state: &State,
    program: &OffloadProgram,
    caps: &NicCaps,
    hits: &HitCounters,
    groups: bool,
) -> Vec<FlowCand> {
    use crate::atom::{exact_atom, FlagClass};
    use crate::lower::{ContinueReason, TcpFlags};
    let mut by_tuple: HashMap<Packet, Vec<usize>> = HashMap::new();
    let mut order: Vec<Packet> = Vec::new();
    for (i, s) in hits.flows.iter().enumerate() {
        if s.hits == 0 {
            continue;
        }
        let v = by_tuple.entry(s.packet).or_default();
        if v.is_empty() {
            order.push(s.packet);
        }
        v.push(i);
    }
    let mut out = Vec::new();
    for pkt in order {
        let Some(samples) = by_tuple.get(&pkt) else {
            continue;
        };
        if program.local_sources.contains(&pkt.src) {
            continue;
        }
        let Some(d) = program.domain_of(&pkt.dst) else {
            continue;
        };
        let dom = &program.domains[d];
        if dom.skipped.is_some() {
            continue;
        }
        let logged = dom.entries.iter().any(|e| {
            e.kind == EntryKind::Continue(ContinueReason::Log)
                && samples
                    .iter()
                    .any(|&i| e.matches(state, &pkt, hits.flows[i].tcp_flags))
        });
        if logged {
            continue;
        }
        let allow = capo_policy::trace(state, &pkt).verdict == capo_policy::Verdict::Allow;
        let tcp = pkt.protocol.0 == 6;
        let (flags, samples): (FlagClass, Vec<usize>) = if allow {
            if !groups {
                continue;
            }
            (FlagClass::Any, samples.clone())
        } else if tcp {
            let syn: Vec<usize> = samples
                .iter()
                .copied()
                .filter(|&i| {
                    hits.flows[i]
                        .tcp_flags
                        .is_some_and(|f| TcpFlags::SynOnly.accepts(f))
                })
                .collect();
            (FlagClass::SynOnly, syn)
        } else {
            // Non-TCP denies stay in software: without connection state a drop
            // would cut flows an earlier generation allowed (conntrack keeps them).
            continue;
        };
        if samples.is_empty() {
            continue;
        }
        let Some(atom) = exact_atom(&pkt, flags, caps) else {
            continue;
        };
        out.push(FlowCand {
            domain: d,
            packet: pkt,
            atom,
            allow,
            samples,
        });
    }
    out
}

/// Longest chain of overlapping earlier rules, per domain, in list order.
fn compute_layers(
    nodes: &[Node],
    alive: &[bool],
    atom_of: &dyn Fn(&Node) -> Option<Atom>,
    layer: &mut [u32],
) {
    let mut by_domain: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if alive[i] {
            by_domain.entry(n.domain()).or_default().push(i);
        }
    }
    for (_, mut ids) in by_domain {
        ids.sort_by_key(|&i| (nodes[i].key(), i));
        let atoms: Vec<Option<Atom>> = ids.iter().map(|&i| atom_of(&nodes[i])).collect();
        for k in 0..ids.len() {
            let mut l = 0;
            for m in 0..k {
                if let (Some(a), Some(b)) = (&atoms[m], &atoms[k]) {
                    if a.overlaps(b) {
                        l = l.max(layer[ids[m]] + 1);
                    }
                }
            }
            layer[ids[k]] = l;
        }
    }
}

/// The fragment punt patterns the device can express.
fn fragment_patterns(caps: &NicCaps) -> Vec<Vec<Item>> {
    use crate::atom::{ETHER_TYPE_IPV4, ETHER_TYPE_IPV6};
    use crate::flow::EthFields;
    let eth = |t| {
        Item::Eth(Some(Spec::masked(
            EthFields { ether_type: t },
            EthFields { ether_type: 0xffff },
        )))
    };
    let mut out = Vec::new();
    if caps.ipv4_fragment_range {
        out.push(vec![
            eth(ETHER_TYPE_IPV4),
            Item::Ipv4(Some(Spec {
                spec: Ipv4Fields {
                    fragment_offset: 1,
                    ..Default::default()
                },
                mask: Ipv4Fields {
                    fragment_offset: 0x3fff,
                    ..Default::default()
                },
                last: Some(Ipv4Fields {
                    fragment_offset: 0x3fff,
                    ..Default::default()
                }),
            })),
        ]);
    }
    if caps.ipv6 {
        out.push(vec![
            eth(ETHER_TYPE_IPV6),
            Item::Ipv6(Some(Spec::masked(
                Ipv6Fields {
                    has_frag_ext: true,
                    ..Default::default()
                },
                Ipv6Fields {
                    has_frag_ext: true,
                    ..Default::default()
                },
            ))),
        ]);
    }
    out
}
