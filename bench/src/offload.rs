//! `capo-bench offload`: how much of a cluster's wire traffic the NIC decides when
//! the planner only knows the past.
//!
//! The traffic is [`crate::traffic`]'s: connections over time windows. For each window
//! `k` the planner gets that window's hit counters ([`window_hits`]: packets per
//! 5-tuple and TCP flags, what software's flow table and the NIC's counters report),
//! and its plan is committed to a simulated NIC of the chosen profile. Three
//! measurements, each pooled over the windows:
//!
//! - **held-out**: the plan of window `k` on the packets of window `k+1` (the planner
//!   never sees them: new connections have new source ports, new peers arrive);
//! - **oracle**: the plan of window `k+1` on window `k+1` (the same capacity, fed the
//!   future it is measured on);
//! - **same-window** (`hw_fraction`): the plan of window `k` on window `k`.
//!
//! Every wire packet's NIC-plus-software verdict ([`capo_offload::verdict::combine`])
//! is checked against its connection's reference verdict: [`capo_policy::trace`] of
//! the opening packet, which conntrack then carries for the rest of the connection,
//! replies included (`mismatches` per packet, `flow_mismatches` per connection).
//! Packets the NIC decides are classifications software does not do.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use capo_offload::caps::{NicCaps, OffloadMode};
use capo_offload::commit::{Committer, LearnOutcome, RefreshOutcome};
use capo_offload::flow::Action;
use capo_offload::lower::{attribute, lower, EntryKind, OffloadProgram};
pub use capo_offload::plan::rules_changed;
use capo_offload::plan::{
    plan, replan, DropLearner, FlowSample, HitCounters, OffloadPlan, PlanConfig, Role,
    StatelessDrops,
};
use capo_offload::sim::SimNic;
use capo_offload::verdict::{combine, DecidedBy, Probe};
use capo_policy::{Packet, State, Verdict};

use crate::traffic::{generate_traffic, Traffic, TrafficOptions, Window};
use crate::workload::Kind;

/// The NIC insert rates the install time is stated for, rules per second: the range
/// rte_flow drivers quote for inserting rules while traffic runs.
pub const NIC_INSERT_RATES: [f64; 2] = [1_000.0, 50_000.0];

/// A NIC profile by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicProfile {
    /// mlx5-like.
    Mlx5,
    /// E810-like.
    E810,
    /// cnxk-like.
    Cnxk,
}

impl NicProfile {
    /// Parses `mlx5`, `e810`, `cnxk`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mlx5" => Some(NicProfile::Mlx5),
            "e810" => Some(NicProfile::E810),
            "cnxk" => Some(NicProfile::Cnxk),
            _ => None,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            NicProfile::Mlx5 => "mlx5",
            NicProfile::E810 => "e810",
            NicProfile::Cnxk => "cnxk",
        }
    }

    /// The profile's capabilities with `capacity` entries.
    pub fn caps(self, capacity: u32) -> NicCaps {
        match self {
            NicProfile::Mlx5 => NicCaps::mlx5(capacity),
            NicProfile::E810 => NicCaps::e810(capacity),
            NicProfile::Cnxk => NicCaps::cnxk(capacity),
        }
    }
}

/// How windows after the first are planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replan {
    /// As the agent re-plans an unchanged policy: for the installed plan's generation,
    /// the rules it shares with the installed plan keeping their MARK index and
    /// counter ([`capo_offload::plan::replan`]), committed in place.
    #[default]
    Incremental,
    /// From scratch, each plan a new generation.
    Full,
}

impl Replan {
    /// Parses `incremental`, `full`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "incremental" => Some(Replan::Incremental),
            "full" => Some(Replan::Full),
            _ => None,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Replan::Incremental => "incremental",
            Replan::Full => "full",
        }
    }
}

/// The benchmark's settings.
#[derive(Debug, Clone, Copy)]
pub struct OffloadOptions {
    /// Cluster (policy and endpoints).
    pub kind: Kind,
    /// NIC profile.
    pub nic: NicProfile,
    /// NIC entries.
    pub capacity: u32,
    /// Traffic windows, size, skew and seed.
    pub traffic: TrafficOptions,
    /// How windows after the first are planned.
    pub replan: Replan,
    /// Let denies of protocols other than TCP go down (sparing the flows software
    /// holds), as the embedded dataplane does; off, as a VPP plugin's or a DPDK
    /// port's planner is.
    pub stateless_drops: bool,
    /// Drops learned between plans kept at once (0: none), set aside from the
    /// table the planner fills ([`Learning`]).
    pub learned_drops: u32,
}

/// Drops learned while a plan is live: the first packet of a refused conversation
/// that software denies makes an exact-flow drop ([`DropLearner`]), installed at
/// once ([`Committer::learn_drop`]), so the conversation's next packets meet it.
/// The traffic has no clock: a learned drop is taken to be in place before the
/// conversation's next packet, which holds when the insert (microseconds to a
/// millisecond on rte_flow drivers) beats TCP's first SYN retransmission (1 s, RFC
/// 6298) and a ping's interval (1 s by default).
#[derive(Debug, Clone, Copy)]
pub struct Learning<'a> {
    /// The policy.
    pub state: &'a State,
    /// Its lowering (the plans' generation).
    pub program: &'a OffloadProgram,
    /// Learned drops kept at once.
    pub room: usize,
    /// Whether drops of protocols other than TCP may be learned (sparing the flows
    /// software holds: [`measure`]).
    pub stateless: bool,
}

/// What one plan did on one window's packets (wire packets only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// Packets.
    pub packets: u64,
    /// Packets decided by the NIC (drops, and allow marks software accepted).
    pub hardware: u64,
    /// Packets of refused connections.
    pub denied: u64,
    /// Of those, dropped by the NIC.
    pub denied_in_hardware: u64,
    /// Packets whose final verdict is not their connection's reference verdict.
    pub mismatches: u64,
    /// Connections with at least one such packet.
    pub flow_mismatches: u64,
    /// Connections.
    pub connections: u64,
    /// Two matching NIC rules at one priority (must be 0).
    pub conflicts: u64,
    /// Drops learned (installed) while measuring.
    pub learned: u64,
}

impl Measured {
    fn add(&mut self, o: &Measured) {
        self.learned += o.learned;
        self.packets += o.packets;
        self.hardware += o.hardware;
        self.denied += o.denied;
        self.denied_in_hardware += o.denied_in_hardware;
        self.mismatches += o.mismatches;
        self.flow_mismatches += o.flow_mismatches;
        self.connections += o.connections;
        self.conflicts += o.conflicts;
    }

    /// Share of packets decided by the NIC.
    pub fn hw_fraction(&self) -> f64 {
        ratio(self.hardware, self.packets)
    }

    /// Share of refused connections' packets dropped by the NIC.
    pub fn deny_drop_fraction(&self) -> f64 {
        ratio(self.denied_in_hardware, self.denied)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One plan measured on one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairResult {
    /// The window whose counters the plan was made from.
    pub planned_on: usize,
    /// The window whose packets it was measured on.
    pub measured_on: usize,
    /// What it did.
    pub measured: Measured,
}

/// The hit counters of one window: wire packets per 5-tuple and TCP flags, hottest
/// first (ties in order of first appearance), and stateless drops sparing the
/// window's allowed connections (the flows software's table holds at its end, as
/// the embedded dataplane hands them to its NIC's planner).
pub fn window_hits(w: &Window) -> HitCounters {
    let mut index: HashMap<(Packet, Option<u8>), usize> = HashMap::new();
    let mut flows: Vec<FlowSample> = Vec::new();
    for s in w
        .connections
        .iter()
        .flat_map(|c| &c.segments)
        .filter(|s| s.from_wire)
    {
        let key = (s.probe.reference_packet(), s.probe.flags());
        match index.get(&key) {
            Some(&i) => {
                if let Some(f) = flows.get_mut(i) {
                    f.hits += s.count;
                }
            }
            None => {
                index.insert(key, flows.len());
                flows.push(FlowSample {
                    packet: key.0,
                    tcp_flags: key.1,
                    hits: s.count,
                });
            }
        }
    }
    flows.sort_by_key(|f| std::cmp::Reverse(f.hits));
    HitCounters {
        flows,
        rules: Default::default(),
        stateless: StatelessDrops::Sparing(allowed_connections(w)),
    }
}

/// The first packets of the window's allowed connections: the flows software's
/// table holds by its end.
fn allowed_connections(w: &Window) -> Vec<Packet> {
    w.connections
        .iter()
        .filter(|c| c.allowed)
        .filter_map(|c| c.segments.first())
        .map(|s| s.probe.reference_packet())
        .collect()
}

/// Commits `plan` to a fresh simulated NIC and replays `w`'s wire packets through
/// it, learning drops as it goes when `learning` says so. A drop of a protocol
/// other than TCP is learned sparing the flows software holds at that point: the
/// allowed connections of `earlier` (the window before, whose flows may not have
/// expired) and those of `w` opened so far.
pub fn measure(
    plan: &OffloadPlan,
    caps: &NicCaps,
    w: &Window,
    earlier: Option<&Window>,
    learning: Option<&Learning<'_>>,
) -> Measured {
    let mut nic = SimNic::new(caps.clone());
    let mut committer = Committer::new();
    committer.commit(&mut nic, plan, &mut |_, _| {});
    let sw = committer.software().clone();
    let mut learner = DropLearner::new();
    let mut held: Vec<Packet> = earlier.map(allowed_connections).unwrap_or_default();
    let mut m = Measured::default();
    for conn in &w.connections {
        if conn.allowed {
            if let Some(first) = conn.segments.first() {
                held.push(first.probe.reference_packet());
            }
        }
        // Software's verdict for every packet of the connection: the policy's for the
        // opening packet and its retries, then its flow table (replies included).
        let expected = if conn.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let mut broken = false;
        for s in conn.segments.iter().filter(|s| s.from_wire) {
            let mut left = s.count;
            while left > 0 {
                let out = nic.receive(&s.probe.headers(), 64);
                let (v, by) = combine(out, &sw, caps.mark_bits, &mut |_| expected);
                // A packet that teaches the NIC a drop is counted alone: the rest of
                // the segment meets the drop.
                let learned = match learning {
                    Some(l) if by != DecidedBy::Hardware && v == Verdict::Deny => {
                        let spare = if l.stateless {
                            StatelessDrops::Sparing(held.clone())
                        } else {
                            StatelessDrops::Off
                        };
                        let pkt = s.probe.reference_packet();
                        learner
                            .drop_for(l.state, l.program, caps, &pkt, s.probe.flags(), &spare)
                            .is_some_and(|d| {
                                let outcome =
                                    committer.learn_drop(&mut nic, &d, l.room, caps.counters);
                                matches!(outcome, LearnOutcome::Installed { .. })
                            })
                    }
                    _ => false,
                };
                let n = if learned { 1 } else { left };
                left -= n;
                m.learned += u64::from(learned);
                m.packets += n;
                if by == DecidedBy::Hardware {
                    m.hardware += n;
                }
                if !conn.allowed {
                    m.denied += n;
                    if by == DecidedBy::Hardware && v == Verdict::Deny {
                        m.denied_in_hardware += n;
                    }
                }
                if v != expected {
                    m.mismatches += n;
                    broken = true;
                }
            }
        }
        m.connections += 1;
        m.flow_mismatches += u64::from(broken);
    }
    m.conflicts = nic.same_priority_conflicts();
    m
}

/// A plan and how long it took.
#[derive(Debug, Clone)]
pub struct TimedPlan {
    /// The plan.
    pub plan: OffloadPlan,
    /// Planning time, milliseconds.
    pub ms: f64,
}

/// Every measurement of one run.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Plan of window `k` (from window `k`'s counters only), in window order.
    pub plans: Vec<TimedPlan>,
    /// Plan `k` on window `k+1`.
    pub held_out: Vec<PairResult>,
    /// The same without learned drops (the plans alone), when drops were learned.
    pub held_out_planned: Vec<PairResult>,
    /// Plan `k+1` on window `k+1`.
    pub oracle: Vec<PairResult>,
    /// Plan `k` on window `k`, for `k` before the last window.
    pub same_window: Vec<PairResult>,
}

/// Plans every window of `t` with `planner`, fed that window's counters only (and
/// the plan of the window before, which a re-plan starts from), and measures the
/// plans on their own and the next window.
pub fn evaluate(
    t: &Traffic,
    caps: &NicCaps,
    learning: Option<&Learning<'_>>,
    planner: &mut dyn FnMut(&HitCounters, Option<&OffloadPlan>) -> OffloadPlan,
) -> Evaluation {
    let mut plans: Vec<TimedPlan> = Vec::with_capacity(t.windows.len());
    for w in &t.windows {
        let hits = window_hits(w);
        let t0 = Instant::now();
        let plan = planner(&hits, plans.last().map(|p| &p.plan));
        plans.push(TimedPlan {
            plan,
            ms: t0.elapsed().as_secs_f64() * 1e3,
        });
    }
    let pair = |planned_on: usize, measured_on: usize, learning| -> Option<PairResult> {
        let p = plans.get(planned_on)?;
        let w = t.windows.get(measured_on)?;
        Some(PairResult {
            planned_on,
            measured_on,
            measured: measure(
                &p.plan,
                caps,
                w,
                measured_on.checked_sub(1).and_then(|k| t.windows.get(k)),
                learning,
            ),
        })
    };
    let next = 1..t.windows.len();
    Evaluation {
        held_out: next
            .clone()
            .filter_map(|k| pair(k - 1, k, learning))
            .collect(),
        held_out_planned: match learning {
            Some(_) => next.clone().filter_map(|k| pair(k - 1, k, None)).collect(),
            None => Vec::new(),
        },
        oracle: next.clone().filter_map(|k| pair(k, k, learning)).collect(),
        same_window: next.filter_map(|k| pair(k - 1, k - 1, learning)).collect(),
        plans,
    }
}

fn pooled(pairs: &[PairResult]) -> Measured {
    let mut m = Measured::default();
    for p in pairs {
        m.add(&p.measured);
    }
    m
}

/// The benchmark's JSON row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OffloadReport {
    /// Cluster.
    pub workload: String,
    /// NIC profile.
    pub nic: String,
    /// NIC entries.
    pub capacity: u32,
    /// Zipf exponent of conversation popularity.
    pub zipf: f64,
    /// Traffic seed.
    pub seed: u64,
    /// Time windows (held-out and oracle pool the `windows - 1` later ones).
    pub windows: usize,
    /// Same-window share of packets decided by the NIC (plan `k` on window `k`).
    pub hw_fraction: f64,
    /// Held-out share (plan `k` on window `k+1`).
    pub held_out_fraction: f64,
    /// Oracle share (plan `k+1` on window `k+1`).
    pub oracle_fraction: f64,
    /// `held_out_fraction / oracle_fraction`.
    pub held_out_vs_oracle: f64,
    /// Held-out: share of refused connections' packets dropped by the NIC.
    pub deny_drop_fraction: f64,
    /// The same for the oracle.
    pub oracle_deny_drop_fraction: f64,
    /// Drops learned between plans kept at once (0: none learned).
    pub learned_drops: u32,
    /// Held-out share of refused connections' packets dropped by the plans' own
    /// rules (learned drops left out).
    pub planned_deny_drop_fraction: f64,
    /// Held-out: drops learned per window (mean).
    pub learned_per_window: f64,
    /// Packets with a wrong final verdict, over every measurement (must be 0).
    pub mismatches: u64,
    /// Connections with such a packet, over every measurement (must be 0).
    pub flow_mismatches: u64,
    /// Lowering plus planning of the first window, milliseconds.
    pub plan_ms: f64,
    /// Planning again for the next window (the policy unchanged, the lowering kept),
    /// mean over the windows after the first, milliseconds.
    pub replan_ms: f64,
    /// `incremental`: each window after the first is planned from the installed plan
    /// and committed in place (what the agent does while the policy is unchanged);
    /// `full`: planned from scratch and committed as a new generation.
    pub replan_mode: String,
    /// Denies of protocols other than TCP could go down (sparing the flows software
    /// holds).
    pub stateless_drops: bool,
    /// Re-plans that could be committed in place (incremental mode).
    pub replans_in_place: usize,
    /// NIC rules inserted plus destroyed between consecutive plans (mean;
    /// [`rules_changed`]).
    pub rules_changed: f64,
    /// Rules a re-plan's commit creates (mean): in place, the new plan's rules the
    /// installed one lacks; as a new generation, the whole plan.
    pub entries_per_commit: f64,
    /// Most NIC entries held at once during any re-plan's commit, the dispatcher
    /// included, replayed on a simulated NIC ([`commit_cost`]): a table smaller than
    /// this refuses the commit.
    pub commit_peak_entries: usize,
    /// Time to install `rules_changed` at 1,000 rules/s.
    pub install_s_at_1k_per_s: f64,
    /// Time to install `rules_changed` at 50,000 rules/s.
    pub install_s_at_50k_per_s: f64,
    /// Held-out packets decided by the NIC: classifications software does not do.
    pub classifications_avoided: u64,
    /// Held-out wire packets.
    pub packets: u64,
    /// Held-out connections.
    pub flows: u64,
    /// Conversations over all windows.
    pub conversations: usize,
    /// Of the last held-out plan: policy rules with an entry in hardware.
    pub rules_offloaded: usize,
    /// Its NIC entries (the dispatcher included).
    pub entries_used: usize,
    /// Its decided entries (atoms).
    pub decided_entries: usize,
    /// Its cover entries.
    pub cover_entries: usize,
    /// Its exact-flow entries.
    pub exact_flow_entries: usize,
    /// Its priority layers.
    pub layers: u32,
    /// Its rules kept in software, by reason.
    pub kept_by_reason: BTreeMap<String, usize>,
    /// Two matching rules at one priority, over every measurement (must be 0).
    pub same_priority_conflicts: u64,
    /// The last held-out window's packets by outcome ([`breakdown`]).
    pub packet_share: BTreeMap<String, f64>,
}

/// Runs the benchmark.
pub fn run(o: &OffloadOptions) -> OffloadReport {
    let t = generate_traffic(o.kind, &o.traffic);
    let caps = o.nic.caps(o.capacity);
    let t0 = Instant::now();
    let program = lower(&t.state, &t.ids, 1);
    let lower_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut cfg = PlanConfig::default();
    // Room for the learned drops is set aside from what the planner fills.
    cfg.reserve += o.learned_drops;
    let learning = Learning {
        state: &t.state,
        program: &program,
        room: o.learned_drops as usize,
        stateless: o.stateless_drops,
    };
    // Per plan: whether it is a re-plan of the one before, to be committed in place.
    let mut in_place: Vec<bool> = Vec::new();
    let learning = (o.learned_drops > 0).then_some(&learning);
    let e = evaluate(&t, &caps, learning, &mut |hits, installed| {
        let off;
        let hits = if o.stateless_drops {
            hits
        } else {
            off = HitCounters {
                stateless: StatelessDrops::Off,
                ..hits.clone()
            };
            &off
        };
        let again = match (installed, o.replan) {
            (Some(before), Replan::Incremental) => {
                replan(&t.state, &program, &caps, hits, &cfg, before)
            }
            _ => None,
        };
        in_place.push(again.is_some());
        again.unwrap_or_else(|| plan(&t.state, &program, &caps, hits, &cfg))
    });
    report(o, &caps, &t, &program, &e, lower_ms, &in_place)
}

fn report(
    o: &OffloadOptions,
    caps: &NicCaps,
    t: &Traffic,
    program: &OffloadProgram,
    e: &Evaluation,
    lower_ms: f64,
    in_place: &[bool],
) -> OffloadReport {
    let held = pooled(&e.held_out);
    let oracle = pooled(&e.oracle);
    let same = pooled(&e.same_window);
    let mut all = held;
    all.add(&oracle);
    all.add(&same);
    let later: Vec<f64> = e.plans.iter().skip(1).map(|p| p.ms).collect();
    let changes: Vec<usize> = e
        .plans
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some(rules_changed(&a.plan, &b.plan, caps.mark_bits)),
            _ => None,
        })
        .collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let changed = mean(&changes.iter().map(|c| *c as f64).collect::<Vec<_>>());
    // Each re-plan's commit, replayed on a simulated NIC with room to spare: what
    // it creates and the most entries it holds at once.
    let commits: Vec<CommitCost> = e
        .plans
        .windows(2)
        .zip(in_place.iter().skip(1))
        .filter_map(|(w, &in_place)| match w {
            [a, b] => Some(commit_cost(caps, &a.plan, &b.plan, in_place)),
            _ => None,
        })
        .collect();
    let created: Vec<f64> = commits.iter().map(|c| c.created as f64).collect();
    let [slow, fast] = NIC_INSERT_RATES;
    let last = e.held_out.last();
    let last_plan = last.and_then(|p| e.plans.get(p.planned_on));
    let last_window = last.and_then(|p| t.windows.get(p.measured_on));
    let mut kept_by_reason = BTreeMap::new();
    let mut r = OffloadReport {
        workload: o.kind.name().to_string(),
        nic: o.nic.name().to_string(),
        capacity: o.capacity,
        zipf: o.traffic.zipf,
        seed: o.traffic.seed,
        windows: t.windows.len(),
        hw_fraction: same.hw_fraction(),
        held_out_fraction: held.hw_fraction(),
        oracle_fraction: oracle.hw_fraction(),
        held_out_vs_oracle: if oracle.hw_fraction() > 0.0 {
            held.hw_fraction() / oracle.hw_fraction()
        } else {
            0.0
        },
        deny_drop_fraction: held.deny_drop_fraction(),
        oracle_deny_drop_fraction: oracle.deny_drop_fraction(),
        learned_drops: o.learned_drops,
        planned_deny_drop_fraction: if e.held_out_planned.is_empty() {
            held.deny_drop_fraction()
        } else {
            pooled(&e.held_out_planned).deny_drop_fraction()
        },
        learned_per_window: if e.held_out.is_empty() {
            0.0
        } else {
            held.learned as f64 / e.held_out.len() as f64
        },
        mismatches: all.mismatches,
        flow_mismatches: all.flow_mismatches,
        plan_ms: lower_ms + e.plans.first().map_or(0.0, |p| p.ms),
        replan_ms: mean(&later),
        replan_mode: o.replan.name().to_string(),
        stateless_drops: o.stateless_drops,
        replans_in_place: in_place.iter().filter(|x| **x).count(),
        rules_changed: changed,
        entries_per_commit: mean(&created),
        commit_peak_entries: commits.iter().map(|c| c.peak).max().unwrap_or(0),
        install_s_at_1k_per_s: changed / slow,
        install_s_at_50k_per_s: changed / fast,
        classifications_avoided: held.hardware,
        packets: held.packets,
        flows: held.connections,
        conversations: t.conversations.len(),
        rules_offloaded: 0,
        entries_used: 0,
        decided_entries: 0,
        cover_entries: 0,
        exact_flow_entries: 0,
        layers: 0,
        kept_by_reason: BTreeMap::new(),
        same_priority_conflicts: all.conflicts,
        packet_share: BTreeMap::new(),
    };
    if let Some(tp) = last_plan {
        let p = &tp.plan;
        for k in &p.kept {
            *kept_by_reason
                .entry(kebab(&k.reason, "reason"))
                .or_insert(0) += 1;
        }
        let dispatcher = usize::from(p.mode == OffloadMode::VersionedGroups);
        r.rules_offloaded = p.rules_offloaded;
        r.entries_used = p.entries_used() + dispatcher;
        r.decided_entries = p.decided_atoms;
        r.cover_entries = p
            .rules
            .iter()
            .filter(|x| matches!(x.role, Role::Cover { .. }))
            .count();
        r.exact_flow_entries = p.exact_flows;
        r.layers = p.layers;
        r.kept_by_reason = kept_by_reason;
        if let Some(w) = last_window {
            r.packet_share = breakdown(&t.state, w, program, p);
        }
    }
    r
}

/// What one re-plan's commit costs on the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitCost {
    /// Rules created.
    pub created: usize,
    /// Most entries installed at once (the dispatcher included).
    pub peak: usize,
}

/// Commits `a`, then `b` (in place when `in_place`: `b` is a re-plan of `a` for its
/// generation; else as a new generation), on a simulated NIC of `caps` with room for
/// both, and measures the second commit.
pub fn commit_cost(caps: &NicCaps, a: &OffloadPlan, b: &OffloadPlan, in_place: bool) -> CommitCost {
    let mut roomy = caps.clone();
    roomy.capacity = u32::MAX;
    let mut nic = SimNic::new(roomy);
    let mut c = Committer::new();
    c.commit(&mut nic, a, &mut |_, _| {});
    let before = nic.installed();
    let mut peak = before;
    let mut track = |nic: &SimNic, _: &capo_offload::commit::SoftwareView| {
        peak = peak.max(nic.installed());
    };
    let refreshed = if in_place {
        c.refresh(&mut nic, b, u32::MAX, &mut track)
    } else {
        RefreshOutcome::NotLive
    };
    let created = match refreshed {
        RefreshOutcome::Refreshed { inserted, .. } => inserted,
        _ => {
            c.commit(&mut nic, b, &mut track);
            b.rules.len()
        }
    };
    CommitCost { created, peak }
}

fn kebab<T: serde::Serialize>(v: &T, field: &str) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v
            .get(field)
            .and_then(|r| r.as_str())
            .map(str::to_string)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Where a window's wire packets are decided under `plan`, by packet weight: the NIC
/// rule that takes each packet (the plan's rules matched directly, lowest priority
/// number first): `hw/<role>/<allow|deny>` for packets the NIC decides, otherwise
/// `sw/<NIC role>/<first entry of the flattened list>/<why it is not in hardware>/
/// <connection verdict>/<syn|ack|->`.
pub fn breakdown(
    state: &State,
    w: &Window,
    program: &OffloadProgram,
    plan: &OffloadPlan,
) -> BTreeMap<String, f64> {
    let reasons: HashMap<(usize, usize), String> = plan
        .kept
        .iter()
        .map(|k| ((k.domain, k.entry), kebab(&k.reason, "reason")))
        .collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0u64;
    for conn in &w.connections {
        for s in conn.segments.iter().filter(|s| s.from_wire) {
            total += s.count;
            let key = outcome(state, program, plan, &reasons, &s.probe, conn.allowed);
            *out.entry(key).or_insert(0.0) += s.count as f64;
        }
    }
    for v in out.values_mut() {
        *v /= total.max(1) as f64;
    }
    out
}

fn outcome(
    state: &State,
    program: &OffloadProgram,
    plan: &OffloadPlan,
    reasons: &HashMap<(usize, usize), String>,
    p: &Probe,
    allowed: bool,
) -> String {
    let h = p.headers();
    let rule = plan
        .rules
        .iter()
        .filter(|r| r.flow.matches(&h))
        .min_by_key(|r| r.flow.attr().priority.0);
    let role = rule.map_or_else(|| "none".to_string(), |r| kebab(&r.role, "role"));
    if matches!(
        rule.map(|r| &r.role),
        Some(Role::Decide { .. } | Role::ExactFlow { .. })
    ) {
        let allow = rule.is_some_and(|r| r.flow.fate() != Some(&Action::Drop));
        return format!("hw/{role}/{}", if allow { "allow" } else { "deny" });
    }
    let what = match attribute(state, program, &p.reference_packet(), p.flags()) {
        None => "no-domain".to_string(),
        Some((d, e)) => {
            let kind = match program
                .domains
                .get(d)
                .and_then(|dom| dom.entries.get(e))
                .map(|entry| entry.kind)
            {
                Some(EntryKind::Allow) => "allow".to_string(),
                Some(EntryKind::Deny) => "deny".to_string(),
                Some(EntryKind::Continue(c)) => format!("continue-{}", kebab(&c, "")),
                None => "-".to_string(),
            };
            let why = reasons.get(&(d, e)).cloned().unwrap_or_else(|| "-".into());
            format!("{kind}/{why}")
        }
    };
    let v = if allowed { "allow" } else { "deny" };
    let flags = match p.flags() {
        Some(f) if f & 0x12 == 0x02 => "syn",
        Some(_) => "ack",
        None => "-",
    };
    format!("sw/{role}/{what}/verdict-{v}/{flags}")
}
