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
//! other denies go down only as exact-flow entries, where the caller allows them
//! ([`StatelessDrops`]), and only when no flow the endpoint's egress policy may allow
//! can have replies matching them.
//!
//! Hotness is hits per NIC entry: an atom's value is its measured (or synthetic) hits
//! divided by what it costs, itself plus the covers it needs. The greedy choice keeps
//! within the device's capacity, and priority layers (the longest chain of overlapping
//! earlier rules) within its priority range; anything that does not fit, and anything
//! that loses a dependency because of that, stays in software with a typed reason.

//!
//! The planner runs in stages, each in its own module:
//!
//! 1. `fixed`: the fragment and source punts, and the entries left for decisions;
//! 2. `candidates`: which entries carry traffic and may go down, their atoms, hits
//!    per atom, and the candidates ranked by hits per entry they would cost;
//! 3. `exact`: exact-flow candidates for sampled tuples;
//! 4. `select`: the greedy choice within the budget, with covers and dependencies;
//! 5. `layers`: priority layers, withdrawing what the device's priorities cannot
//!    hold and what relied on it;
//! 6. `emit`: the NIC rules in installation order, with marks and counters;
//! 7. `kept_entries`: every decision entry not wholly offloaded, with its reason.
//!
//! Between plans, `learn` turns a conversation software has just refused into an
//! exact-flow drop ([`DropLearner`]), which the committer adds to the live plan.

use std::collections::{HashMap, HashSet};

use capo_policy::{Packet, State, WorkloadKey};

use crate::atom::{Atom, ExpandError};
use crate::caps::{NicCaps, OffloadMode};
use crate::flow::FlowRule;
use crate::lower::{ContinueReason, Domain, EntryKind, NotExpressible, OffloadProgram, Origin};

mod candidates;
mod carry;
mod emit;
mod exact;
mod fixed;
mod layers;
mod learn;
mod select;

pub use carry::{carry_over, identity, rules_changed, RuleIdentity};
pub use learn::{DropLearner, LearnedDrop};

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
    /// Whether denies of protocols other than TCP may go down.
    pub stateless: StatelessDrops,
}

/// Whether the NIC may drop protocols other than TCP. It has no connection state: a
/// TCP deny goes down as connection attempts only (SYN without ACK), but a UDP, SCTP
/// or ICMP drop meets every packet of a flow, and software keeps flows an earlier
/// generation allowed (Calico's conntrack does) and the replies of flows the
/// endpoint opened. Only the caller knows which flows software holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StatelessDrops {
    /// None go down: software may hold flows the planner cannot see.
    #[default]
    Off,
    /// They go down where they meet none of these flows (their first packets, as
    /// software's flow table holds them; replies are checked too) and no reply of a
    /// flow the endpoint's egress policy may allow. Sound when no flow missing from
    /// the list can be allowed by another generation before the plan is replaced:
    /// the list is taken, and the plan committed, while no other generation decides
    /// packets.
    Sparing(Vec<Packet>),
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
    /// Positions in the plan of the rules that must sit above this one for its
    /// decisions to be right: a decision's covers, and the decided atoms of earlier
    /// entries it overlaps (always higher in the plan). Empty for other roles.
    pub relies_on: Vec<usize>,
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

/// A decision entry: (domain, entry).
type EntryId = (usize, usize);
/// One atom of a decision entry: (domain, entry, atom).
type AtomId = (usize, usize, usize);

/// A selected NIC entry before emission.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// Decides an atom of an entry.
    Decide {
        domain: usize,
        entry: usize,
        atom: usize,
        allow: bool,
    },
    /// Punts an earlier conflicting entry's overlap with decided atoms.
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

    /// The NIC match of the node.
    fn atom(&self, atoms: &candidates::AtomsByEntry) -> Option<Atom> {
        match self {
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
    }
}

/// Whether an earlier entry of kind `a` could decide differently from one of kind `b`.
fn conflicts(a: EntryKind, b: EntryKind) -> bool {
    a != b || matches!(a, EntryKind::Continue(_))
}

/// Earlier entries of `dom` that conflict with entry `e` and may overlap it; `None`
/// when `e` has no exact match.
fn conflicting_earlier(dom: &Domain, e: usize) -> Option<Vec<usize>> {
    let entry = &dom.entries[e];
    let m = entry.exact.as_ref().ok()?;
    Some(
        (0..e)
            .filter(|&j| {
                let ej = &dom.entries[j];
                conflicts(ej.kind, entry.kind) && ej.approx.overlaps(m)
            })
            .collect(),
    )
}

/// Atoms among `atoms` overlapping `a`.
fn overlapping<'a>(atoms: &'a [Atom], a: &'a Atom) -> impl Iterator<Item = usize> + 'a {
    (0..atoms.len()).filter(move |&k| atoms[k].overlaps(a))
}

/// Whether every atom among `atoms` overlapping `a` is installed.
fn all_installed(atoms: &[Atom], installed: Option<&HashSet<usize>>, a: &Atom) -> bool {
    overlapping(atoms, a).all(|k| installed.is_some_and(|s| s.contains(&k)))
}

/// The hasher of the planner's hot maps (keys are atoms and packet tuples): seeded
/// per process, much cheaper than SipHash on these wide keys.
type FastHash = foldhash::fast::RandomState;

/// Per-flow policy results within one plan: the samples of one conversation share
/// them (with the source port left out when no rule looks at source ports).
#[derive(Debug, Default)]
struct FlowResults {
    /// Whether no rule looks at source ports.
    source_port_blind: Option<bool>,
    /// Per flow key and TCP flags: its domain and first entry.
    first_entry: HashMap<(Packet, Option<u8>), Option<EntryId>, FastHash>,
    /// Per flow key: whether the full policy allows it.
    allowed: HashMap<Packet, bool, FastHash>,
    /// Per flow key and TCP flags: whether a `log` rule of its domain matches it.
    logged: HashMap<(Packet, Option<u8>), bool, FastHash>,
}

impl FlowResults {
    /// Conversations whose results are kept.
    fn remembered(&self) -> usize {
        self.first_entry.len() + self.allowed.len() + self.logged.len()
    }

    fn blind(&mut self, state: &State) -> bool {
        *self
            .source_port_blind
            .get_or_insert_with(|| exact::source_port_blind(state))
    }

    /// The key a flow's policy results are kept under.
    fn key(&mut self, state: &State, pkt: &Packet) -> Packet {
        if self.blind(state) {
            exact::conversation(pkt)
        } else {
            *pkt
        }
    }

    /// The domain and first entry of `pkt` ([`crate::lower::attribute`]).
    fn first_entry(
        &mut self,
        state: &State,
        program: &OffloadProgram,
        pkt: &Packet,
        tcp_flags: Option<u8>,
    ) -> Option<EntryId> {
        let key = (self.key(state, pkt), tcp_flags);
        if let Some(e) = self.first_entry.get(&key) {
            return *e;
        }
        let e = crate::lower::attribute(state, program, pkt, tcp_flags);
        self.first_entry.insert(key, e);
        e
    }

    /// Whether a `log` entry of domain `dom` matches `pkt` (software must record it).
    fn logged(&mut self, state: &State, dom: &Domain, pkt: &Packet, tcp_flags: Option<u8>) -> bool {
        let key = (self.key(state, pkt), tcp_flags);
        if let Some(l) = self.logged.get(&key) {
            return *l;
        }
        let l = dom.entries.iter().any(|e| {
            e.kind == EntryKind::Continue(crate::lower::ContinueReason::Log)
                && e.matches(state, pkt, tcp_flags)
        });
        self.logged.insert(key, l);
        l
    }

    /// Whether the full policy allows `pkt` ([`capo_policy::trace`]). The first entry
    /// `pkt` (with `tcp_flags`) matches in its domain gives the verdict when it is an
    /// allow, a deny, or the stateful remainder of a deny (the deny's rule matched,
    /// only not as a connection attempt): the flattened list's contract
    /// ([`crate::lower`]). A packet whose first match is a `pass`, a `log` or a
    /// stage allow walks the whole policy, and so does TCP without flags (a later
    /// fragment), which the list's SYN/non-SYN split cannot place.
    fn allowed(
        &mut self,
        state: &State,
        program: &OffloadProgram,
        pkt: &Packet,
        tcp_flags: Option<u8>,
    ) -> bool {
        let key = self.key(state, pkt);
        if let Some(a) = self.allowed.get(&key) {
            return *a;
        }
        let placeable = pkt.protocol != capo_policy::Protocol::TCP || tcp_flags.is_some();
        let first = placeable
            .then(|| self.first_entry(state, program, pkt, tcp_flags))
            .flatten()
            .and_then(|(d, e)| program.domains.get(d)?.entries.get(e))
            .map(|entry| entry.kind);
        let a = match first {
            Some(EntryKind::Allow) => true,
            Some(EntryKind::Deny | EntryKind::Continue(ContinueReason::StatefulRemainder)) => false,
            _ => capo_policy::trace(state, pkt).verdict == capo_policy::Verdict::Allow,
        };
        self.allowed.insert(key, a);
        a
    }
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
    let mut results = FlowResults::default();
    let mode = caps.mode();
    if mode == OffloadMode::SoftwareOnly {
        return software_plan(program, mode, KeepReason::SoftwareOnlyDevice);
    }
    let groups = mode == OffloadMode::VersionedGroups;
    let fixed = fixed::fixed_rules(program, caps, groups);
    let fixed_entries = fixed.len() as u64 + u64::from(groups);
    let Some(budget) = fixed::entry_budget(caps, cfg, fixed_entries) else {
        // No room for the fixed rules and one more: software decides everything.
        return software_plan(program, OffloadMode::SoftwareOnly, KeepReason::TableFull);
    };

    let attributed = candidates::attribute_samples(&mut results, state, program, hits);
    let hot = candidates::hot_entries(program, hits, &attributed);
    let expansion = candidates::expand_entries(program, caps, cfg, groups, &hot);
    let atom_hits = candidates::atom_hits(program, hits, &attributed, &expansion.atoms);
    let ranked = candidates::rank(program, caps, &expansion.atoms, &atom_hits.hits);
    let flow_cands = if cfg.exact_flows {
        exact::exact_flow_candidates(&mut results, state, program, caps, hits, groups)
    } else {
        Vec::new()
    };

    let mut selection = select::select(select::Inputs {
        program,
        caps,
        rule_cap: cfg.rule_cap,
        groups,
        budget,
        flows: &hits.flows,
        atoms: &expansion.atoms,
        samples: &atom_hits.samples,
        ranked: &ranked,
        flow_cands: &flow_cands,
    });
    let layout = layers::fit_priorities(
        &mut selection,
        &expansion.atoms,
        layers::max_layers(caps, groups),
    );
    let emitted = emit::emit(&emit::Inputs {
        generation: program.generation,
        caps,
        groups,
        fixed: &fixed,
        flow_cands: &flow_cands,
        selection: &selection,
        layout: &layout,
        atoms: &expansion.atoms,
    });
    OffloadPlan {
        generation: program.generation,
        mode,
        rules: emitted.rules,
        kept: kept_entries(program, &expansion, &selection),
        decided_atoms: emitted.decided_atoms,
        rules_offloaded: emitted.rules_offloaded,
        exact_flows: emitted.exact_flows,
        layers: emitted.layers,
    }
}

/// Plans `program` again, on new counters, for the generation `installed` holds (the
/// policy and its lowering unchanged), for a commit in place
/// ([`crate::commit::Committer::refresh`]): the rules the new plan shares with
/// `installed` keep their MARK index and counter ([`carry_over`]). `None` when the
/// plan cannot be committed in place (another generation, a device without groups,
/// or MARK indices run out): plan it as a new generation.
pub fn replan(
    state: &State,
    program: &OffloadProgram,
    caps: &NicCaps,
    hits: &HitCounters,
    cfg: &PlanConfig,
    installed: &OffloadPlan,
) -> Option<OffloadPlan> {
    // Without groups a commit already changes only the difference (drops and marks
    // in one flat table, break before make).
    if program.generation != installed.generation
        || installed.mode != OffloadMode::VersionedGroups
        || caps.mode() != installed.mode
    {
        return None;
    }
    carry_over(
        installed,
        plan(state, program, caps, hits, cfg),
        caps.mark_bits,
    )
}

/// A plan that leaves every decision entry to software, for `reason`.
fn software_plan(program: &OffloadProgram, mode: OffloadMode, reason: KeepReason) -> OffloadPlan {
    let mut kept = Vec::new();
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
    OffloadPlan {
        generation: program.generation,
        mode,
        rules: Vec::new(),
        kept,
        decided_atoms: 0,
        rules_offloaded: 0,
        exact_flows: 0,
        layers: 0,
    }
}

/// Every decision entry not wholly offloaded, with the first reason met: the entry's
/// own (from expansion), else its atoms' (from selection and layering), else cold.
fn kept_entries(
    program: &OffloadProgram,
    expansion: &candidates::Expansion,
    selection: &select::Selection,
) -> Vec<Kept> {
    let mut kept = Vec::new();
    for (d, dom) in program.domains.iter().enumerate() {
        for (e, entry) in dom.entries.iter().enumerate() {
            if !matches!(entry.kind, EntryKind::Allow | EntryKind::Deny) {
                continue;
            }
            let total = expansion.atoms.get(&(d, e)).map_or(0, Vec::len);
            let done = selection.installed.get(&(d, e)).map_or(0, HashSet::len);
            if total > 0 && done == total {
                continue;
            }
            let reason = expansion
                .reasons
                .get(&(d, e))
                .copied()
                .or_else(|| selection.reasons.get(&(d, e)).copied())
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
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutils as fixture;

    // The fixture's allow program: 0 the allow, 1 and 3 the end-of-tier and no-profile
    // drops of TCP connection attempts, 2 and 4 their stateful remainders.

    #[test]
    fn test_kept_lists_partial_and_unexpanded_entries_with_their_reason() {
        let (_, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let mut expansion = candidates::Expansion::default();
        expansion.atoms.insert((0, 0), vec![]);
        expansion.reasons.insert((0, 1), KeepReason::Cold);
        let mut selection = select::Selection::default();
        selection.keep((0, 0), KeepReason::TableFull);
        let kept = kept_entries(&program, &expansion, &selection);
        let got: Vec<(EntryId, KeepReason)> = kept
            .iter()
            .map(|k| ((k.domain, k.entry), k.reason))
            .collect();
        assert_eq!(
            got,
            vec![
                ((0, 0), KeepReason::TableFull),
                ((0, 1), KeepReason::Cold),
                ((0, 3), KeepReason::Cold)
            ]
        );
    }

    #[test]
    fn test_wholly_installed_entry_is_not_kept() {
        let (_, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let m = program.domains[0].entries[0].exact.clone().unwrap();
        let atoms = crate::atom::expand(&m, &NicCaps::mlx5(64), 16).unwrap();
        let mut expansion = candidates::Expansion::default();
        expansion.atoms.insert((0, 0), atoms);
        let mut selection = select::Selection::default();
        selection.installed.insert((0, 0), HashSet::from([0]));
        let kept = kept_entries(&program, &expansion, &selection);
        // The end-of-tier and no-profile drops (their TCP connection attempts) remain.
        let entries: Vec<usize> = kept.iter().map(|k| k.entry).collect();
        assert_eq!(entries, vec![1, 3]);
    }

    #[test]
    fn test_software_only_device_keeps_every_decision() {
        let (_, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let p = software_plan(
            &program,
            OffloadMode::SoftwareOnly,
            KeepReason::SoftwareOnlyDevice,
        );
        assert!(p.rules.is_empty());
        assert_eq!(p.kept.len(), 3);
        assert!(p
            .kept
            .iter()
            .all(|k| k.reason == KeepReason::SoftwareOnlyDevice));
    }

    /// Shared per-flow results equal each flow's own, for flows differing in source
    /// port and TCP flags, with and without a rule that looks at source ports.
    #[test]
    fn test_flow_results_equal_each_flows_own() {
        use crate::flow::{TCP_ACK, TCP_SYN};
        use capo_policy::{Action, PortRange, Rule};
        let mut by_source_port = Rule::any(Action::Deny);
        by_source_port.src.ports = vec![PortRange::single(40001)];
        let mut logged = fixture::allow_tcp("172.16.0.0/24", 443);
        logged.action = Action::Log;
        for inbound in [
            vec![logged.clone(), fixture::allow_tcp("172.16.0.0/24", 80)],
            vec![
                logged,
                by_source_port,
                fixture::allow_tcp("172.16.0.0/24", 80),
            ],
        ] {
            let (state, program) = fixture::program(inbound, vec![]);
            let mut results = FlowResults::default();
            for sport in [40000, 40001, 40002] {
                for dport in [80, 443, 8080] {
                    for flags in [Some(TCP_SYN), Some(TCP_ACK), None] {
                        let mut f = fixture::tcp_sample([172, 16, 0, 9], dport, 1);
                        f.packet.l4 = capo_policy::L4::Ports {
                            src: sport,
                            dst: dport,
                        };
                        let pkt = f.packet;
                        assert_eq!(
                            results.first_entry(&state, &program, &pkt, flags),
                            crate::lower::attribute(&state, &program, &pkt, flags),
                            "{pkt:?} {flags:?}"
                        );
                        assert_eq!(
                            results.allowed(&state, &program, &pkt, flags),
                            capo_policy::trace(&state, &pkt).verdict == capo_policy::Verdict::Allow,
                            "{pkt:?}"
                        );
                        let dom = &program.domains[0];
                        let log_matches = dom.entries.iter().any(|e| {
                            e.kind == EntryKind::Continue(crate::lower::ContinueReason::Log)
                                && e.matches(&state, &pkt, flags)
                        });
                        assert_eq!(results.logged(&state, dom, &pkt, flags), log_matches);
                    }
                }
            }
        }
    }

    #[test]
    fn test_conflicts_are_different_kinds_or_any_continue() {
        use crate::lower::ContinueReason;
        assert!(!conflicts(EntryKind::Allow, EntryKind::Allow));
        assert!(conflicts(EntryKind::Allow, EntryKind::Deny));
        let pass = EntryKind::Continue(ContinueReason::Log);
        assert!(conflicts(pass, pass));
    }
}
