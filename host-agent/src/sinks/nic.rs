//! The NIC in front of the embedded dataplane: each generation is lowered, split by
//! the planner and committed to the NIC; packets from the wire meet the NIC first,
//! and software accepts its verdict only for a generation it holds (DESIGN §4).
//!
//! `--nic none|sim:mlx5|sim:e810|sim:cnxk[:CAPACITY]|dpdk:PORT`. The simulated NICs
//! really match packets against their installed rules and count them.

use std::collections::HashMap;

use capo_offload::lower::{OffloadProgram, Origin};
use capo_offload::plan::{FlowSample, HitCounters, KeepReason, OffloadPlan, PlanConfig, Role};
use capo_offload::verdict::{combine, DecidedBy, Fragment, Probe};
use capo_offload::{
    lower, plan, CommitOutcome, Committer, FlowBackend, FlowErrorKind, NicCaps, NicOutcome, SimNic,
};
use capo_policy::{IdTable, Packet, Protocol, State, Verdict, L4};
use capo_proto::capo::agent::v1 as api;

/// Flows kept for planning; the planner only needs the hot ones.
const MAX_SAMPLES: usize = 16_384;

/// Default table size of a simulated NIC.
pub const DEFAULT_SIM_CAPACITY: u32 = 4096;

/// Which NIC, from `--nic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicSpec {
    /// No NIC: fallback-only.
    None,
    /// A simulated NIC with a profile and a table size.
    Sim {
        /// `mlx5`, `e810` or `cnxk`.
        profile: String,
        /// Entries.
        capacity: u32,
    },
    /// A DPDK port (id or PCI address).
    Dpdk(String),
}

/// Why a `--nic` value was rejected (the value is quoted first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicSpecError {
    /// The simulated table size is not a number.
    #[error("{spec:?}: {size:?} is not a table size")]
    BadCapacity {
        /// The value.
        spec: String,
        /// Its size part.
        size: String,
    },
    /// Not one of the simulated profiles.
    #[error("{0:?}: the simulated profiles are mlx5, e810 and cnxk")]
    UnknownProfile(String),
    /// `dpdk:` without a port.
    #[error("{0:?}: name a port id or PCI address")]
    NoPort(String),
    /// None of the forms.
    #[error("{0:?}: expected none, sim:mlx5|sim:e810|sim:cnxk[:CAPACITY] or dpdk:PORT")]
    Unknown(String),
}

impl std::str::FromStr for NicSpec {
    type Err = NicSpecError;

    fn from_str(s: &str) -> Result<Self, NicSpecError> {
        if s == "none" {
            return Ok(NicSpec::None);
        }
        if let Some(rest) = s.strip_prefix("sim:") {
            let (profile, capacity) = match rest.split_once(':') {
                Some((p, c)) => (
                    p,
                    c.parse::<u32>().map_err(|_| NicSpecError::BadCapacity {
                        spec: s.to_string(),
                        size: c.to_string(),
                    })?,
                ),
                None => (rest, DEFAULT_SIM_CAPACITY),
            };
            if !matches!(profile, "mlx5" | "e810" | "cnxk") {
                return Err(NicSpecError::UnknownProfile(s.to_string()));
            }
            return Ok(NicSpec::Sim {
                profile: profile.to_string(),
                capacity,
            });
        }
        if let Some(port) = s.strip_prefix("dpdk:") {
            if port.is_empty() {
                return Err(NicSpecError::NoPort(s.to_string()));
            }
            return Ok(NicSpec::Dpdk(port.to_string()));
        }
        Err(NicSpecError::Unknown(s.to_string()))
    }
}

impl std::fmt::Display for NicSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NicSpec::None => f.write_str("none"),
            NicSpec::Sim { profile, capacity } => write!(f, "sim:{profile}:{capacity}"),
            NicSpec::Dpdk(p) => write!(f, "dpdk:{p}"),
        }
    }
}

/// A NIC in front of software: its rte_flow backend (a simulated NIC, or the
/// agent's DPDK port), the committer, the plan and what software saw.
pub struct NicFront<B: FlowBackend> {
    /// What the offload view calls it (`sim:mlx5:4096`, `dpdk:PORT`).
    name: String,
    caps: NicCaps,
    nic: B,
    committer: Committer,
    plan: Option<OffloadPlan>,
    /// The plan's rule ids by plan rule index (decide rules only).
    plan_rule_ids: Vec<Option<u32>>,
    /// The previous plan's rule ids, until its generation is retired.
    retiring_rule_ids: Vec<Option<u32>>,
    /// Per `rule#`: packets and bytes counted by retired NIC generations.
    retired_counts: HashMap<u32, (u64, u64)>,
    /// Flows software decided, for hotness (keyed by the first packet).
    samples: HashMap<Packet, FlowSample>,
    /// NIC plans committed (the NIC's own generation numbers: one per plan).
    plans: u64,
    /// The last lowering and the policy version it is of: a re-plan of the same
    /// policy on new counters plans it again without lowering it again.
    lowered: Option<(u64, OffloadProgram)>,
    nic_decided: u64,
    /// The last commit met EIO.
    device_gone: bool,
}

/// Plans made again for a smaller table after ENOMEM, per commit.
const MAX_SHRINKS: usize = 3;

/// A simulated NIC in front of the embedded dataplane.
pub type SimulatedNic = NicFront<SimNic>;

impl SimulatedNic {
    /// A simulated NIC of `profile` with `capacity` entries.
    pub fn new(profile: &str, capacity: u32) -> Self {
        let caps = match profile {
            "e810" => NicCaps::e810(capacity),
            "cnxk" => NicCaps::cnxk(capacity),
            _ => NicCaps::mlx5(capacity),
        };
        let spec = NicSpec::Sim {
            profile: profile.to_string(),
            capacity,
        };
        NicFront::with_backend(spec.to_string(), SimNic::new(caps))
    }

    /// Plans `state` (policy version `policy`) with the hit counters seen so far and
    /// commits it to the NIC; nothing is in flight in a simulated NIC, so the previous
    /// generation is retired at once.
    pub fn commit(&mut self, state: &State, ids: &IdTable, policy: u64) -> String {
        let summary = self.commit_plan(state, ids, policy);
        self.retire_previous();
        summary
    }

    /// Passes a packet from the wire through the NIC; `software` classifies it when
    /// the NIC does not decide. Returns the verdict and whether the NIC decided.
    pub(crate) fn receive(
        &mut self,
        pkt: &Packet,
        tcp_flags: u8,
        bytes: u64,
        software: &mut dyn FnMut() -> Verdict,
    ) -> (Verdict, bool) {
        let out = self.nic.receive(&headers(pkt, tcp_flags), bytes);
        self.decide(out, software)
    }

    /// Whether the NIC would decide this packet (without counting it).
    pub(crate) fn decides(&self, pkt: &Packet) -> bool {
        let flags = if pkt.protocol == Protocol::TCP {
            0x02
        } else {
            0
        };
        self.hardware_verdict(self.nic.peek(&headers(pkt, flags)))
            .is_some()
    }
}

impl<B: FlowBackend> NicFront<B> {
    /// A NIC front over `nic`, planning with its capabilities.
    pub fn with_backend(name: String, nic: B) -> Self {
        NicFront {
            name,
            caps: nic.caps().clone(),
            nic,
            committer: Committer::new(),
            plan: None,
            plan_rule_ids: Vec::new(),
            retiring_rule_ids: Vec::new(),
            retired_counts: HashMap::new(),
            samples: HashMap::new(),
            plans: 0,
            lowered: None,
            nic_decided: 0,
            device_gone: false,
        }
    }

    /// The capabilities it plans with.
    pub fn caps(&self) -> &NicCaps {
        &self.caps
    }

    /// Whether a generation other than the newest is still installed.
    pub fn retiring(&self) -> bool {
        self.committer.software().resident.len() > 1
    }

    /// Plans `state` with the hit counters seen so far and commits it; the
    /// previous generation stays installed until [`NicFront::retire_previous`]
    /// (packets it marked may still be in the receive rings). A previous one still
    /// waiting is retired first: at most two are resident.
    ///
    /// `policy` names the version of `state` and `ids` (a number that changes
    /// whenever either does): while it stays the same, the lowering is kept and only
    /// the planning runs again.
    pub fn commit_plan(&mut self, state: &State, ids: &IdTable, policy: u64) -> String {
        if self.retiring() {
            self.retire_previous();
        }
        let hits = HitCounters {
            flows: self.samples.values().cloned().collect(),
            rules: HashMap::new(),
        };
        let table = self.caps.capacity;
        let mut shrinks = 0;
        let mut program = match self.lowered.take() {
            Some((version, program)) if version == policy => program,
            _ => lower(state, ids, self.plans + 1),
        };
        let (p, outcome) = loop {
            self.plans += 1;
            // The marks name the NIC generation, not the policy's.
            program.generation = self.plans;
            let p = plan(state, &program, &self.caps, &hits, &PlanConfig::default());
            let outcome = self.committer.commit(&mut self.nic, &p, &mut |_, _| {});
            match &outcome {
                // The table is smaller than its profile says (other users, another
                // generation resident): plan for what fit, a few times at most.
                CommitOutcome::SoftwareOnly { error, rule, .. }
                    if error.kind == FlowErrorKind::NoMem
                        && *rule > 0
                        && (*rule as u32) < self.caps.capacity
                        && shrinks < MAX_SHRINKS =>
                {
                    shrinks += 1;
                    self.caps.capacity = *rule as u32;
                }
                _ => break (p, outcome),
            }
        };
        self.device_gone = matches!(
            &outcome,
            CommitOutcome::SoftwareOnly { error, .. } if error.kind == FlowErrorKind::Io
        );
        self.retiring_rule_ids = std::mem::take(&mut self.plan_rule_ids);
        self.plan_rule_ids = p
            .rules
            .iter()
            .map(|r| match &r.role {
                Role::Decide { domain, entry, .. } => program
                    .domains
                    .get(*domain)
                    .and_then(|d| d.entries.get(*entry))
                    .and_then(|e| origin_rule_id(&e.origin)),
                // An exact-flow entry decides as the full policy does: credit the rule
                // that decides its flow.
                Role::ExactFlow { packet, .. } => decider_rule_id(state, ids, packet),
                _ => None,
            })
            .collect();
        let mut summary = match &outcome {
            CommitOutcome::Offloaded { installed, refused } => {
                format!("{installed} NIC rules installed, {refused} refused")
            }
            CommitOutcome::SoftwareOnly { error, rule, .. } => {
                format!("NIC refused rule {rule} ({error:?}): software decides everything")
            }
        };
        if shrinks > 0 {
            summary += &format!(
                " (the NIC ran out of entries: planned again for {} of {table})",
                self.caps.capacity
            );
        }
        self.plan = Some(p);
        self.lowered = Some((policy, program));
        summary
    }

    /// Whether the last commit met EIO (the device is gone or was reset): it is
    /// worth committing again later.
    pub fn device_gone(&self) -> bool {
        self.device_gone
    }

    /// Retires the previous generation: its rules' final counts are kept, its
    /// rules destroyed.
    pub fn retire_previous(&mut self) {
        let old_ids = std::mem::take(&mut self.retiring_rule_ids);
        for r in self.committer.retire(&mut self.nic, &mut |_, _| {}) {
            for (i, c) in r.counts {
                if let Some(Some(id)) = old_ids.get(i) {
                    let e = self.retired_counts.entry(*id).or_default();
                    e.0 += c.hits;
                    e.1 += c.bytes;
                }
            }
        }
    }

    /// The NIC's verdict on a packet (`out`), if it has one: a drop, or an allow
    /// mark naming a generation software holds (DESIGN §4); `None` leaves the
    /// packet to software.
    pub fn nic_verdict(&mut self, out: NicOutcome) -> Option<Verdict> {
        let v = self.hardware_verdict(out);
        self.nic_decided += u64::from(v.is_some());
        v
    }

    /// [`NicFront::nic_verdict`] without counting it.
    fn hardware_verdict(&self, out: NicOutcome) -> Option<Verdict> {
        let (v, by) = combine(
            out,
            self.committer.software(),
            self.caps.mark_bits,
            &mut |_| Verdict::Deny,
        );
        (by == DecidedBy::Hardware).then_some(v)
    }

    /// Decides a packet the NIC delivered (`out`), or classifies it with
    /// `software` ([`NicFront::nic_verdict`]). Returns the verdict and whether the
    /// NIC decided.
    pub fn decide(
        &mut self,
        out: NicOutcome,
        software: &mut dyn FnMut() -> Verdict,
    ) -> (Verdict, bool) {
        match self.nic_verdict(out) {
            Some(v) => (v, true),
            None => (software(), false),
        }
    }

    /// Whether `pkt` is new to the planner's samples (a flow it has not seen).
    pub(crate) fn record(&mut self, pkt: &Packet, tcp_flags: Option<u8>) -> bool {
        // Bounded: past the limit a new flow replaces the coldest one.
        if self.samples.len() >= MAX_SAMPLES && !self.samples.contains_key(pkt) {
            if let Some(coldest) = self
                .samples
                .iter()
                .min_by_key(|(_, s)| s.hits)
                .map(|(k, _)| *k)
            {
                self.samples.remove(&coldest);
            }
        }
        let mut new = false;
        self.samples
            .entry(*pkt)
            .or_insert_with(|| {
                new = true;
                FlowSample {
                    packet: *pkt,
                    tcp_flags,
                    hits: 0,
                }
            })
            .hits += 1;
        new
    }

    /// Packets the NIC decided.
    pub(crate) fn nic_decided(&self) -> u64 {
        self.nic_decided
    }

    /// NIC packets and bytes per `rule#`, live and retired generations.
    pub(crate) fn rule_counts(&mut self) -> HashMap<u32, (u64, u64)> {
        let mut out = self.retired_counts.clone();
        for (i, c) in self.committer.live_counts(&mut self.nic) {
            if let Some(Some(id)) = self.plan_rule_ids.get(i) {
                let e = out.entry(*id).or_default();
                e.0 += c.hits;
                e.1 += c.bytes;
            }
        }
        out
    }

    /// The current plan as the testpmd commands that install it on `port` of an
    /// empty NIC (empty before the first plan).
    pub fn testpmd_script(&self, port: u16) -> Vec<String> {
        self.plan
            .as_ref()
            .map(|p| capo_offload::testpmd::script(p, &self.caps, port))
            .unwrap_or_default()
    }

    /// The plan as the API reports it; `rules` lists every rule of the views.
    pub(crate) fn plan_reply(
        &self,
        rules: &[capo_policy::views::NumberedRule],
    ) -> api::OffloadPlanReply {
        let mut placement: HashMap<u32, (api::Placement, String, u32)> = HashMap::new();
        if let Some(p) = &self.plan {
            for id in self.plan_rule_ids.iter().flatten() {
                let e = placement
                    .entry(*id)
                    .or_insert((api::Placement::Nic, String::new(), 0));
                e.2 += 1;
            }
            for k in &p.kept {
                let Some(id) = origin_rule_id(&k.origin) else {
                    continue;
                };
                let reason = keep_reason(&k.reason);
                let e = placement
                    .entry(id)
                    .or_insert((api::Placement::Software, String::new(), 0));
                if k.atoms_offloaded == 0 {
                    e.0 = api::Placement::Software;
                }
                if e.1.is_empty() {
                    e.1 = if k.atoms_offloaded > 0 {
                        format!(
                            "partly ({}/{} entries): {reason}",
                            k.atoms_offloaded, k.atoms_total
                        )
                    } else {
                        reason
                    };
                }
            }
        }
        let rules = rules
            .iter()
            .map(|r| {
                let (pl, reason, n) = placement.get(&r.id).cloned().unwrap_or((
                    api::Placement::Software,
                    "not a NIC candidate (internal or not on the wire path)".into(),
                    0,
                ));
                api::RulePlacement {
                    rule_id: r.id,
                    rule: r.line.clone(),
                    placement: pl as i32,
                    reason,
                    nic_entries: n,
                }
            })
            .collect();
        api::OffloadPlanReply {
            generation: 0,
            nic: self.name.clone(),
            offload_available: self.caps.flow_api,
            entries_used: self
                .plan
                .as_ref()
                .map_or(0, |p| u32::try_from(p.entries_used()).unwrap_or(u32::MAX)),
            entries_capacity: self.caps.capacity,
            rules,
            ..Default::default()
        }
    }
}

/// The `rule#` deciding `pkt` on this node (the last check of its trace).
fn decider_rule_id(state: &State, ids: &IdTable, pkt: &Packet) -> Option<u32> {
    use capo_policy::eval::Decider;
    use capo_policy::ids::PolicyRef;
    let t = capo_policy::trace(state, pkt);
    match &t.steps.last()?.outcome.decider {
        Decider::PolicyRule {
            policy,
            direction,
            index,
            ..
        } => ids.rule(&PolicyRef::Policy(policy.clone()), *direction, *index),
        Decider::ProfileRule {
            profile,
            direction,
            index,
        } => ids.rule(&PolicyRef::Profile(profile.clone()), *direction, *index),
        Decider::EndOfTier { tier } => ids.tier_rule(tier),
        _ => None,
    }
}

fn origin_rule_id(o: &Origin) -> Option<u32> {
    match o {
        Origin::Rule { rule_id, .. } | Origin::EndOfTier { rule_id, .. } => *rule_id,
        Origin::NoProfileMatched | Origin::NeighbourDiscovery { .. } => None,
    }
}

fn keep_reason(r: &KeepReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| {
            let name = v.get("reason")?.as_str()?.to_string();
            let detail = v
                .as_object()?
                .iter()
                .filter(|(k, _)| *k != "reason")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            Some(if detail.is_empty() {
                name
            } else {
                format!("{name} ({detail})")
            })
        })
        .unwrap_or_else(|| format!("{r:?}"))
}

fn headers(pkt: &Packet, tcp_flags: u8) -> capo_offload::Headers {
    let fragment = match (pkt.l4, pkt.protocol.has_ports() || pkt.protocol.is_icmp()) {
        (L4::None, true) => Fragment::Later,
        _ => Fragment::No,
    };
    Probe {
        packet: *pkt,
        tcp_flags,
        fragment,
    }
    .headers()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::fixtures::web;

    /// A table smaller than the profile says: ENOMEM part-way makes the NIC plan
    /// again for what fit, and the second plan goes in.
    #[test]
    fn enomem_plans_again_for_a_smaller_table() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        for port in 0..40u16 {
            nic.record(
                &Packet {
                    src: "11.0.0.196".parse().unwrap(),
                    dst: "11.0.0.67".parse().unwrap(),
                    protocol: Protocol::TCP,
                    l4: L4::Ports {
                        src: 40000 + port,
                        dst: 81,
                    },
                },
                Some(0x02),
            );
        }
        let full = {
            let mut probe = SimulatedNic::new("mlx5", 64);
            probe.samples = nic.samples.clone();
            probe.commit_plan(&state, &ids, 1);
            probe.plan.as_ref().map(|p| p.rules.len()).unwrap()
        };
        assert!(full > 3, "the plan is too small to shrink: {full}");
        nic.nic.set_faults(capo_offload::Faults {
            enomem_after: Some(3),
            ..Default::default()
        });
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("ran out of entries"), "{summary}");
        assert!(summary.contains("NIC rules installed"), "{summary}");
        assert!(nic.caps().capacity <= 3, "{}", nic.caps().capacity);
        assert!(nic.nic.installed() <= 3);
        assert!(!nic.device_gone());
    }

    /// A re-plan of the same policy version plans the kept lowering (the plan equals
    /// one from a fresh lowering); a new version lowers the new policy.
    #[test]
    fn replans_keep_the_lowering_until_the_policy_changes() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        let to_port = |port: u16| Packet {
            src: "11.0.0.196".parse().unwrap(),
            dst: "11.0.0.67".parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: port,
            },
        };
        nic.record(&to_port(80), Some(0x10));
        let fresh = |nic: &SimulatedNic, state: &State, ids: &IdTable| {
            let hits = HitCounters {
                flows: nic.samples.values().cloned().collect(),
                rules: HashMap::new(),
            };
            let generation = nic.plan.as_ref().map_or(0, |p| p.generation);
            let program = lower(state, ids, generation);
            plan(state, &program, &nic.caps, &hits, &PlanConfig::default())
        };
        nic.commit(&state, &ids, 1);
        assert_eq!(nic.plan, Some(fresh(&nic, &state, &ids)));
        // New counters, the same policy: planned again on the kept lowering.
        nic.record(&to_port(443), Some(0x02));
        nic.commit(&state, &ids, 1);
        let replanned = nic.plan.clone().unwrap();
        assert_eq!(replanned.generation, 2, "the NIC generation moves on");
        assert_eq!(replanned, fresh(&nic, &state, &ids));
        // The policy changes (443 open instead of 80): version 2 is lowered again.
        let (mut closed, mut closed_ids) = web();
        let (key, policy) = closed.policies().iter().next().unwrap();
        let (key, mut policy) = (key.clone(), policy.clone());
        policy.inbound[0].dst.ports = vec![capo_policy::PortRange::single(443)];
        closed
            .apply(capo_policy::Update::PolicyUpdate(key, policy))
            .unwrap();
        closed_ids.sync(&closed);
        nic.commit(&closed, &closed_ids, 2);
        let after = nic.plan.clone().unwrap();
        assert_eq!(after, fresh(&nic, &closed, &closed_ids));
        assert_ne!(
            after.rules, replanned.rules,
            "closing the port changes the plan"
        );
    }

    /// EIO: software decides everything, and the NIC says it is worth trying again.
    #[test]
    fn eio_is_reported_for_a_later_commit() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.nic.set_faults(capo_offload::Faults {
            eio_after_creates: Some(0),
            ..Default::default()
        });
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("software decides everything"), "{summary}");
        assert!(nic.device_gone());
    }

    /// The port's path: a delivered packet's mark decides only while its generation
    /// is resident (both during a commit, until the previous one is retired); an
    /// unmarked packet or one from a generation never committed goes to software.
    #[test]
    fn marks_decide_only_for_resident_generations() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        let pkt = Packet {
            src: "11.0.0.196".parse().unwrap(),
            dst: "11.0.0.67".parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: 80,
            },
        };
        // Software saw the flow: the plan places its rule on the NIC.
        assert!(nic.record(&pkt, Some(0x10)));
        nic.commit_plan(&state, &ids, 1);
        let out = nic.nic.peek(&headers(&pkt, 0x10));
        let NicOutcome::Delivered { mark: Some(mark) } = out else {
            panic!("the allow rule did not mark the packet: {out:?}");
        };
        let software = |sw: &mut u32| {
            *sw += 1;
            Verdict::Deny
        };
        let mut sw = 0;
        let delivered = |m| NicOutcome::Delivered { mark: Some(m) };
        assert_eq!(
            nic.decide(delivered(mark), &mut || software(&mut sw)),
            (Verdict::Allow, true)
        );
        // A second plan: the first stays resident until retired.
        nic.commit_plan(&state, &ids, 1);
        assert!(nic.retiring());
        assert_eq!(
            nic.decide(delivered(mark), &mut || software(&mut sw)),
            (Verdict::Allow, true)
        );
        assert_eq!(sw, 0);
        nic.retire_previous();
        assert!(!nic.retiring());
        // Generation 1's tag is no longer held (generation 2's is 2): software.
        assert_eq!(
            nic.decide(delivered(mark), &mut || software(&mut sw)),
            (Verdict::Deny, false)
        );
        assert_eq!(
            nic.decide(NicOutcome::Delivered { mark: None }, &mut || software(
                &mut sw
            )),
            (Verdict::Deny, false)
        );
        assert_eq!(sw, 2);
        assert_eq!(nic.nic_decided(), 2);
    }

    #[test]
    fn nic_specs_parse() {
        assert_eq!("none".parse::<NicSpec>().unwrap(), NicSpec::None);
        assert_eq!(
            "sim:mlx5".parse::<NicSpec>().unwrap(),
            NicSpec::Sim {
                profile: "mlx5".into(),
                capacity: DEFAULT_SIM_CAPACITY
            }
        );
        assert_eq!(
            "sim:e810:14000".parse::<NicSpec>().unwrap(),
            NicSpec::Sim {
                profile: "e810".into(),
                capacity: 14000
            }
        );
        assert_eq!(
            "dpdk:0000:03:00.0".parse::<NicSpec>().unwrap(),
            NicSpec::Dpdk("0000:03:00.0".into())
        );
        assert!("sim:bogus".parse::<NicSpec>().is_err());
        assert!("sim:mlx5:many".parse::<NicSpec>().is_err());
        assert!("dpdk:".parse::<NicSpec>().is_err());
        assert!("fpga".parse::<NicSpec>().is_err());
    }
}
