//! The offload benchmark, as a library for `capo-bench offload`.
//!
//! [`run_offload_bench`] generates the workload, lowers and plans it (timed: `plan_ms`
//! is lowering plus planning), commits the plan to a simulated NIC of the chosen
//! profile, then replays every flow: the NIC's outcome combined with software
//! ([`crate::verdict::combine`]) must equal the reference verdict
//! ([`capo_policy::trace`]) for every packet (`mismatches`), and per flow with
//! conntrack semantics (`flow_mismatches`: a flow whose first packet the policy allows
//! must carry every later packet, whatever the NIC holds), and `hw_fraction` is the
//! share of packets decided in hardware. The hit counters the planner ranks by are the
//! workload's own flow counts (synthetic counters; the fast classifier's come later).
//!
//! [`oracle_compare`] runs the planner and an exhaustive search over every subset of
//! candidate NIC entries on a small workload, at the same capacity.
//!
//! Intended CLI mapping: `capo-bench offload --workload w-k8s --nic mlx5|e810|cnxk
//! --nic-capacity 4096 [--zipf 1.1] [--seed N] --json` →
//! `serde_json::to_string(&run_offload_bench(&cfg))`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use capo_policy::{trace, Verdict};

use crate::caps::NicCaps;
use crate::commit::Committer;
use crate::lower::{lower, EntryKind, OffloadProgram};
use crate::plan::{plan, FlowSample, HitCounters, OffloadPlan, PlanConfig, Role};
use crate::sim::SimNic;
use crate::verdict::{combine, DecidedBy};
use crate::workload::{generate, Workload, WorkloadSpec};

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

    /// The profile's capabilities with `capacity` entries.
    pub fn caps(self, capacity: u32) -> NicCaps {
        match self {
            NicProfile::Mlx5 => NicCaps::mlx5(capacity),
            NicProfile::E810 => NicCaps::e810(capacity),
            NicProfile::Cnxk => NicCaps::cnxk(capacity),
        }
    }
}

/// Workloads the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// W-k8s (DESIGN.md §7).
    WK8s,
    /// A small workload (oracle comparisons).
    Small,
}

impl WorkloadKind {
    /// Parses `w-k8s`, `small`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "w-k8s" => Some(WorkloadKind::WK8s),
            "small" => Some(WorkloadKind::Small),
            _ => None,
        }
    }
}

/// Benchmark parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OffloadBenchConfig {
    /// Workload.
    pub workload: WorkloadKind,
    /// NIC profile.
    pub nic: NicProfile,
    /// NIC entries.
    pub capacity: u32,
    /// Zipf exponent.
    pub zipf: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for OffloadBenchConfig {
    fn default() -> Self {
        OffloadBenchConfig {
            workload: WorkloadKind::WK8s,
            nic: NicProfile::Mlx5,
            capacity: 4096,
            zipf: 1.1,
            seed: 1,
        }
    }
}

/// The benchmark's result (the first five fields are the CLI's JSON contract).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OffloadBenchReport {
    /// Share of packets decided by the NIC.
    pub hw_fraction: f64,
    /// Packets whose final verdict differs from the reference.
    pub mismatches: u64,
    /// Flows whose packets break conntrack semantics (see [`Replay`]).
    pub flow_mismatches: u64,
    /// Lowering plus planning, milliseconds.
    pub plan_ms: f64,
    /// Policy rules with at least one entry in hardware.
    pub rules_offloaded: usize,
    /// NIC entries used (the dispatcher included).
    pub entries_used: usize,
    /// Decided entries (atoms) in hardware.
    pub decided_entries: usize,
    /// Cover entries.
    pub cover_entries: usize,
    /// Exact-flow entries (one flow's 5-tuple, decided with the policy's verdict).
    pub exact_flow_entries: usize,
    /// Priority layers used.
    pub layers: u32,
    /// Packets replayed.
    pub packets: u64,
    /// Flows replayed.
    pub flows: usize,
    /// Rules kept in software, by reason.
    pub kept_by_reason: BTreeMap<String, usize>,
    /// Two matching rules at one priority (must be 0).
    pub same_priority_conflicts: u64,
    /// Share of packets per outcome ([`breakdown`]): `hw/<role>` for packets the NIC
    /// decided, `sw/<NIC role>/<first entry>/<its kept reason>` for the others.
    pub packet_share: BTreeMap<String, f64>,
}

/// Synthetic hit counters from a workload's flows.
pub fn hit_counters(w: &Workload) -> HitCounters {
    let mut flows = Vec::new();
    for f in &w.flows {
        let first_hits = if f.rest.is_some() { 1 } else { f.packets };
        flows.push(FlowSample {
            packet: f.first.reference_packet(),
            tcp_flags: f.first.flags(),
            hits: first_hits,
        });
        if let Some(r) = &f.rest {
            flows.push(FlowSample {
                packet: r.reference_packet(),
                tcp_flags: r.flags(),
                hits: f.packets.saturating_sub(1),
            });
        }
    }
    HitCounters {
        flows,
        rules: Default::default(),
    }
}

/// What one replay saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// Packets decided in hardware.
    pub hardware: u64,
    /// Packets replayed.
    pub total: u64,
    /// Packets whose verdict differs from the reference.
    pub mismatches: u64,
    /// Flows that break conntrack semantics: an allowed first packet whose later
    /// packets do not all pass, or a first packet with the wrong verdict.
    pub flow_mismatches: u64,
    /// Same-priority overlaps the NIC saw.
    pub conflicts: u64,
}

/// Replays `w` through a NIC holding `plan` (committed by a fresh committer). Later
/// packets of a flow meet software's flow table (allowed once the first packet was),
/// as in the dataplanes.
pub fn replay(w: &Workload, plan: &OffloadPlan, caps: &NicCaps) -> Replay {
    let mut nic = SimNic::new(caps.clone());
    let mut c = Committer::new();
    c.commit(&mut nic, plan, &mut |_, _| {});
    let sw = c.software().clone();
    let mut r = Replay::default();
    for f in &w.flows {
        let first_count = if f.rest.is_some() { 1 } else { f.packets };
        let reference = trace(&w.state, &f.first.reference_packet()).verdict;
        let out = nic.receive(&f.first.headers(), 64);
        let (first, by) = combine(out, &sw, caps.mark_bits, &mut |_| reference);
        r.total += first_count;
        if by == DecidedBy::Hardware {
            r.hardware += first_count;
        }
        let mut flow_ok = first == reference;
        if !flow_ok {
            r.mismatches += first_count;
        }
        if let Some(rest) = f.rest {
            let n = f.packets.saturating_sub(1);
            if n == 0 {
                continue;
            }
            let policy = trace(&w.state, &rest.reference_packet()).verdict;
            // Software: a flow-table hit once the first packet was allowed.
            let software = if first == Verdict::Allow {
                Verdict::Allow
            } else {
                policy
            };
            let out = nic.receive(&rest.headers(), 64);
            let (v, by) = combine(out, &sw, caps.mark_bits, &mut |_| software);
            r.total += n;
            if by == DecidedBy::Hardware {
                r.hardware += n;
            }
            if v != policy {
                r.mismatches += n;
            }
            if reference == Verdict::Allow && v != Verdict::Allow {
                flow_ok = false;
            }
        }
        if !flow_ok {
            r.flow_mismatches += 1;
        }
    }
    r.conflicts = nic.same_priority_conflicts();
    r
}

/// Runs the benchmark.
pub fn run_offload_bench(cfg: &OffloadBenchConfig) -> OffloadBenchReport {
    let spec = match cfg.workload {
        WorkloadKind::WK8s => WorkloadSpec::w_k8s(cfg.zipf, cfg.seed),
        WorkloadKind::Small => WorkloadSpec::small(cfg.zipf, cfg.seed),
    };
    let w = generate(&spec);
    let caps = cfg.nic.caps(cfg.capacity);
    run_on(&w, &caps)
}

/// Runs the benchmark on a given workload and device.
pub fn run_on(w: &Workload, caps: &NicCaps) -> OffloadBenchReport {
    let hits = hit_counters(w);
    let t0 = Instant::now();
    let program = lower(&w.state, &w.ids, 1);
    let p = plan(&w.state, &program, caps, &hits, &PlanConfig::default());
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;
    let Replay {
        hardware: hw,
        total,
        mismatches: bad,
        flow_mismatches,
        conflicts,
    } = replay(w, &p, caps);
    let mut kept_by_reason = BTreeMap::new();
    for k in &p.kept {
        let name = serde_json::to_value(k.reason)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
            .unwrap_or_default();
        *kept_by_reason.entry(name).or_insert(0) += 1;
    }
    let dispatcher = usize::from(p.mode == crate::caps::OffloadMode::VersionedGroups);
    OffloadBenchReport {
        hw_fraction: if total == 0 {
            0.0
        } else {
            hw as f64 / total as f64
        },
        mismatches: bad,
        flow_mismatches,
        plan_ms,
        rules_offloaded: p.rules_offloaded,
        entries_used: p.entries_used() + dispatcher,
        decided_entries: p.decided_atoms,
        cover_entries: p
            .rules
            .iter()
            .filter(|r| matches!(r.role, Role::Cover { .. }))
            .count(),
        exact_flow_entries: p.exact_flows,
        layers: p.layers,
        packets: total,
        flows: w.flows.len(),
        kept_by_reason,
        same_priority_conflicts: conflicts,
        packet_share: breakdown(w, &program, &p),
    }
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

/// Where a workload's packets are decided under `plan`, by packet weight: the NIC rule
/// that takes each packet (the plan's rules matched directly, lowest priority number
/// first) and, for packets software decides, the first entry of the flattened list
/// that matches (its kind) and why that entry is not in hardware.
pub fn breakdown(
    w: &Workload,
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
    for f in &w.flows {
        let probes = [
            Some((f.first, if f.rest.is_some() { 1 } else { f.packets })),
            f.rest.map(|r| (r, f.packets.saturating_sub(1))),
        ];
        for (p, n) in probes.into_iter().flatten() {
            if n == 0 {
                continue;
            }
            total += n;
            let h = p.headers();
            let rule = plan
                .rules
                .iter()
                .filter(|r| r.flow.matches(&h))
                .min_by_key(|r| r.flow.attr().priority.0);
            let role = rule.map_or_else(|| "none".to_string(), |r| kebab(&r.role, "role"));
            let key = if matches!(
                rule.map(|r| &r.role),
                Some(Role::Decide { .. } | Role::ExactFlow { .. })
            ) {
                let allow = rule.is_some_and(|r| r.flow.fate() != Some(&crate::flow::Action::Drop));
                format!("hw/{role}/{}", if allow { "allow" } else { "deny" })
            } else {
                let pkt = p.reference_packet();
                let first = crate::lower::attribute(&w.state, program, &pkt, p.flags());
                let what = match first {
                    None => "no-domain".to_string(),
                    Some((d, e)) => {
                        let entry = &program.domains[d].entries[e];
                        let kind = match entry.kind {
                            EntryKind::Allow => "allow".to_string(),
                            EntryKind::Deny => "deny".to_string(),
                            EntryKind::Continue(c) => format!("continue-{}", kebab(&c, "")),
                        };
                        let why = reasons.get(&(d, e)).cloned().unwrap_or_else(|| "-".into());
                        format!("{kind}/{why}")
                    }
                };
                let v = match trace(&w.state, &pkt).verdict {
                    Verdict::Allow => "allow",
                    _ => "deny",
                };
                let syn = match p.flags() {
                    Some(f) if f & 0x12 == 0x02 => "syn",
                    Some(_) => "ack",
                    None => "-",
                };
                format!("sw/{role}/{what}/verdict-{v}/{syn}")
            };
            *out.entry(key).or_insert(0.0) += n as f64;
        }
    }
    for v in out.values_mut() {
        *v /= total.max(1) as f64;
    }
    out
}

/// Planner versus exhaustive selection on a small workload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OracleReport {
    /// NIC entries allowed.
    pub capacity: u32,
    /// Flows searched (every subset of them was planned).
    pub candidates: usize,
    /// The planner's hardware share.
    pub planner_hw_fraction: f64,
    /// The best hardware share over all subsets that fit.
    pub oracle_hw_fraction: f64,
    /// Mismatches of the planner's plan.
    pub planner_mismatches: u64,
    /// Mismatches of the oracle's best plan.
    pub oracle_mismatches: u64,
}

/// Compares the planner with an exhaustive search: every subset of the 14 hottest flows
/// is planned with unlimited room (so each subset gets exactly the entries and covers
/// it needs), and the best subset whose plan fits `capacity` entries is the oracle.
pub fn oracle_compare(seed: u64, capacity: u32) -> OracleReport {
    let w = generate(&WorkloadSpec::small(1.1, seed));
    let caps = NicCaps::mlx5(capacity);
    let program = lower(&w.state, &w.ids, 1);
    let hits = hit_counters(&w);
    let p = plan(&w.state, &program, &caps, &hits, &PlanConfig::default());
    let Replay {
        hardware: hw,
        total,
        mismatches: bad,
        ..
    } = replay(&w, &p, &caps);

    // Group samples by flow (SYN and ACK samples together); search over every subset
    // of the hottest 14 flows, each planned with unlimited room.
    let mut groups: BTreeMap<(std::net::IpAddr, std::net::IpAddr, u8, u16), Vec<FlowSample>> =
        BTreeMap::new();
    for s in &hits.flows {
        let dport = match s.packet.l4 {
            capo_policy::L4::Ports { dst, .. } => dst,
            _ => 0,
        };
        groups
            .entry((s.packet.src, s.packet.dst, s.packet.protocol.0, dport))
            .or_default()
            .push(s.clone());
    }
    let mut keys: Vec<_> = groups.keys().copied().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(groups[k].iter().map(|s| s.hits).sum::<u64>()));
    keys.truncate(14);
    let roomy = NicCaps::mlx5(1 << 20);
    let mut best = (0u64, 0u64);
    for mask in 0u32..(1 << keys.len()) {
        let flows: Vec<FlowSample> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .flat_map(|(_, k)| groups[k].clone())
            .collect();
        let h = HitCounters {
            flows,
            rules: Default::default(),
        };
        let q = plan(&w.state, &program, &roomy, &h, &PlanConfig::default());
        if q.entries_used() + 1 > capacity as usize {
            continue;
        }
        let Replay {
            hardware: qhw,
            mismatches: qbad,
            ..
        } = replay(&w, &q, &roomy);
        if qhw > best.0 {
            best = (qhw, qbad);
        }
    }
    OracleReport {
        capacity,
        candidates: keys.len(),
        planner_hw_fraction: if total == 0 {
            0.0
        } else {
            hw as f64 / total as f64
        },
        oracle_hw_fraction: if total == 0 {
            0.0
        } else {
            best.0 as f64 / total as f64
        },
        planner_mismatches: bad,
        oracle_mismatches: best.1,
    }
}

/// The verdict type, re-exported for callers comparing results.
pub type ReferenceVerdict = Verdict;
