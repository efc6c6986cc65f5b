//! The NIC in front of the embedded dataplane: each generation is lowered, split by
//! the planner and committed to the NIC; packets from the wire meet the NIC first,
//! and software accepts its verdict only for a generation it holds (DESIGN §4).
//!
//! `--nic none|sim:mlx5|sim:e810|sim:cnxk[:CAPACITY]|dpdk:PORT`. The simulated NICs
//! really match packets against their installed rules and count them.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capo_offload::lower::{OffloadProgram, Origin};
use capo_offload::plan::{
    DropLearner, FlowSample, HitCounters, KeepReason, OffloadPlan, PlanConfig, Role, StatelessDrops,
};
use capo_offload::verdict::{combine, DecidedBy, Fragment, Probe};
use capo_offload::{
    lower, plan, CommitOutcome, Committer, FlowBackend, FlowCount, FlowErrorKind, LearnOutcome,
    NicCaps, NicOutcome, RefreshOutcome, SimNic, SoftwareView,
};
use capo_policy::{IdTable, Packet, Protocol, State, Verdict, L4};
use capo_proto::capo::agent::v1 as api;

/// Flows kept for planning; the planner only needs the hot ones.
const MAX_SAMPLES: usize = 16_384;

/// Default table size of a simulated NIC.
pub const DEFAULT_SIM_CAPACITY: u32 = 4096;

/// Adds a NIC rule's count to `rule#` `id`'s packets and bytes.
fn add_count(counts: &mut HashMap<u32, (u64, u64)>, id: u32, c: FlowCount) {
    let e = counts.entry(id).or_default();
    e.0 += c.hits;
    e.1 += c.bytes;
}

/// Most drops learned between plans kept at once ([`NicFront::learn_drop`]).
const MAX_LEARNED_DROPS: u32 = 256;

/// The room a table of `capacity` entries sets aside for learned drops: a
/// sixteenth, at most 256.
pub fn learned_drop_room(capacity: u32) -> u32 {
    (capacity / 16).min(MAX_LEARNED_DROPS)
}

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
    /// With `--dataplane vpp:SOCKET`: the NIC VPP's driver owns, programmed by the
    /// capo plugin through VPP's flow layer (flat marks), with at most this many
    /// entries.
    VppFlow {
        /// Entries.
        capacity: u32,
    },
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
    #[error("{0:?}: expected none, sim:mlx5|sim:e810|sim:cnxk[:CAPACITY], dpdk:PORT or vpp-flow[:CAPACITY]")]
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
        if let Some(rest) = s.strip_prefix("vpp-flow") {
            let capacity = match rest.strip_prefix(':') {
                Some(c) => c.parse::<u32>().map_err(|_| NicSpecError::BadCapacity {
                    spec: s.to_string(),
                    size: c.to_string(),
                })?,
                None if rest.is_empty() => crate::sinks::vpp_share::DEFAULT_FLOW_LAYER_CAPACITY,
                None => return Err(NicSpecError::Unknown(s.to_string())),
            };
            return Ok(NicSpec::VppFlow { capacity });
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
            NicSpec::VppFlow { capacity } => write!(f, "vpp-flow:{capacity}"),
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
    /// The live plan, shared with the plan jobs that re-plan it.
    plan: Option<Arc<OffloadPlan>>,
    /// The plan's rule ids by plan rule index (decide rules only).
    plan_rule_ids: Vec<Option<u32>>,
    /// Rules of the live plan that a refused commit in place removed (nothing left
    /// relied on them): the offload view counts them out.
    plan_rules_gone: usize,
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
    /// The policy version the live plan was made from: a re-plan of it is
    /// committed in place.
    plan_policy: Option<u64>,
    /// The last commit, as the offload view reports it (its totals included).
    last_commit: Option<api::NicCommit>,
    /// The table size the next plan is made for, after a commit in place that did
    /// not fit (until a commit goes in).
    refresh_budget: Option<u32>,
    nic_decided: u64,
    /// The last commit met EIO.
    device_gone: bool,
    /// Plans made again after ENOMEM for the commit under way.
    shrinks: usize,
    /// The capacity the commit under way started from, once it shrank.
    shrunk_from: Option<u32>,
    /// The table's size as the device's capabilities give it: a capacity shrunk
    /// after ENOMEM (the previous generation took the room, or other users do) comes
    /// back to it once the previous generation is retired.
    table: u32,
    /// Turns packets software denies into drops for the live plan.
    learner: DropLearner,
    /// Learned drops kept at once: the room the live plan left them.
    learned_room: u32,
    /// The `rule#` deciding each learned drop, by the packet it was learned from.
    learned_rule_ids: HashMap<Packet, Option<u32>>,
    /// Drops learned, and learned drops the device refused, since the start.
    learned_total: u64,
    learn_refused: u64,
    /// Attempts to learn a drop left this second.
    learn_budget: LearnBudget,
}

/// Most attempts to learn a drop per second (each may cost a NIC insert and an
/// eviction).
pub const MAX_LEARNED_PER_SECOND: u32 = 1_000;

/// Attempts to learn a drop left in the current second.
#[derive(Debug)]
struct LearnBudget {
    second: Instant,
    left: u32,
}

impl LearnBudget {
    fn new() -> Self {
        LearnBudget {
            second: Instant::now(),
            left: MAX_LEARNED_PER_SECOND,
        }
    }

    fn available(&mut self) -> bool {
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.second = Instant::now();
            self.left = MAX_LEARNED_PER_SECOND;
        }
        self.left > 0
    }

    fn spend(&mut self) {
        self.left = self.left.saturating_sub(1);
    }
}

/// What a plan is made from, taken from a [`NicFront`] by [`NicFront::plan_job`]:
/// it owns everything it needs, so [`PlanJob::run`] can run on any thread.
#[derive(Debug)]
pub struct PlanJob {
    /// The NIC generation the plan will be.
    generation: u64,
    caps: NicCaps,
    hits: HitCounters,
    /// The front's last lowering and the policy version it is of.
    lowered: Option<(u64, OffloadProgram)>,
    /// The live plan (on a device with groups) and the policy version it is of: a
    /// plan of the same version is made for a commit in place.
    installed: Option<(u64, Arc<OffloadPlan>)>,
    /// Entries set aside for learned drops.
    learned_room: u32,
}

/// A plan made by [`PlanJob::run`], for [`NicFront::commit_planned`].
#[derive(Debug)]
pub struct Planned {
    policy: u64,
    program: OffloadProgram,
    plan: OffloadPlan,
    /// `rule#` per plan rule (decide rules only).
    rule_ids: Vec<Option<u32>>,
    /// A re-plan of the live generation, to be committed in place.
    in_place: bool,
    /// Entries the plan left for learned drops.
    learned_room: u32,
}

/// How a plan went into the NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitKind {
    /// A re-plan of the policy in force, only the differing rules changed.
    InPlace,
    /// The whole plan, into the other group.
    NewGeneration,
}

impl CommitKind {
    /// The name the offload view and the metrics use.
    fn name(self) -> &'static str {
        match self {
            CommitKind::InPlace => "in-place",
            CommitKind::NewGeneration => "new-generation",
        }
    }
}

/// What [`NicFront::commit_planned`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Committed (or refused in a way another plan would not mend): the summary.
    Done(String),
    /// The NIC ran out of entries part-way, or a commit in place would not fit
    /// beside the installed plan: plan again for less room.
    Shrink,
    /// The plan was made for a commit in place, and its generation is no longer
    /// live: plan again.
    Again,
}

impl PlanJob {
    /// Lowers `state` (policy version `policy`) unless the job holds its lowering
    /// already, and plans it: the work a commit does before it touches the NIC.
    pub fn run(self, state: &State, ids: &IdTable, policy: u64) -> Planned {
        let mut program = match self.lowered {
            Some((version, program)) if version == policy => program,
            _ => lower(state, ids, self.generation),
        };
        let mut cfg = PlanConfig::default();
        cfg.reserve += self.learned_room;
        // The same policy as the live plan: plan it again for the live generation,
        // committed in place (only the rules that differ change).
        let again = self
            .installed
            .as_ref()
            .filter(|(version, _)| *version == policy)
            .and_then(|(_, live)| {
                program.generation = live.generation;
                capo_offload::replan(state, &program, &self.caps, &self.hits, &cfg, live)
            });
        let in_place = again.is_some();
        let p = again.unwrap_or_else(|| {
            program.generation = self.generation;
            plan(state, &program, &self.caps, &self.hits, &cfg)
        });
        let rule_ids = p
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
        Planned {
            policy,
            program,
            plan: p,
            rule_ids,
            in_place,
            learned_room: self.learned_room,
        }
    }

    /// [`PlanJob::run`] on `version`, with the views' rules the offload report
    /// lists; `took` counts from `since`.
    pub fn run_for(self, version: &PolicyVersion, since: Instant) -> PlanResult {
        let planned = self.run(&version.state, &version.ids, version.version);
        let rules = capo_policy::Views::new(&version.state, &version.ids)
            .with_compact_sets()
            .numbered_rules();
        PlanResult {
            version: version.version,
            planned,
            rules,
            took: since.elapsed(),
        }
    }
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

    /// [`SimulatedNic::commit`] for a caller that holds its software dataplane
    /// still meanwhile: `held` are the first packets of every flow software holds
    /// (allowed by this or an earlier generation; `None` when the caller did not
    /// list them). Denies of protocols other than TCP may then go down where they
    /// meet none of them: no packet is classified between this list and the NIC's
    /// switch to the plan, so no flow it lacks can be allowed by another generation.
    /// Only when no other generation is installed.
    pub fn commit_sparing(
        &mut self,
        state: &State,
        ids: &IdTable,
        policy: u64,
        held: Option<Vec<Packet>>,
    ) -> String {
        let stateless = match held {
            Some(held) if !self.retiring() => StatelessDrops::Sparing(held),
            _ => StatelessDrops::Off,
        };
        let summary = self.commit_plan_with(state, ids, policy, &stateless);
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
        let table = nic.caps().capacity;
        NicFront {
            name,
            caps: nic.caps().clone(),
            nic,
            committer: Committer::new(),
            plan: None,
            plan_rule_ids: Vec::new(),
            plan_rules_gone: 0,
            retiring_rule_ids: Vec::new(),
            retired_counts: HashMap::new(),
            samples: HashMap::new(),
            plans: 0,
            lowered: None,
            plan_policy: None,
            last_commit: None,
            refresh_budget: None,
            nic_decided: 0,
            device_gone: false,
            shrinks: 0,
            shrunk_from: None,
            table,
            learner: DropLearner::new(),
            learned_room: 0,
            learned_rule_ids: HashMap::new(),
            learned_total: 0,
            learn_refused: 0,
            learn_budget: LearnBudget::new(),
        }
    }

    /// The capabilities it plans with.
    pub fn caps(&self) -> &NicCaps {
        &self.caps
    }

    /// Whether a generation other than the newest, or what a failed commit left,
    /// is still installed.
    pub fn retiring(&self) -> bool {
        self.committer.software().resident.len() > 1 || self.committer.has_retiring()
    }

    /// Plans `state` with the hit counters seen so far and commits it; the
    /// previous generation stays installed until [`NicFront::retire_previous`]
    /// (packets it marked may still be in the receive rings). A previous one still
    /// waiting is retired first: at most two are resident.
    ///
    /// `policy` names the version of `state` and `ids` (a number that changes
    /// whenever either does): while it stays the same, the lowering is kept and only
    /// the planning runs again.
    ///
    /// The same as [`NicFront::plan_job`], [`PlanJob::run`] and
    /// [`NicFront::commit_planned`] in turn, which a packet path uses to plan on
    /// another thread.
    pub fn commit_plan(&mut self, state: &State, ids: &IdTable, policy: u64) -> String {
        self.commit_plan_with(state, ids, policy, &StatelessDrops::Off)
    }

    /// [`NicFront::commit_plan`], with `stateless` for the planner.
    fn commit_plan_with(
        &mut self,
        state: &State,
        ids: &IdTable,
        policy: u64,
        stateless: &StatelessDrops,
    ) -> String {
        loop {
            let planned = self
                .plan_job_with(stateless.clone())
                .run(state, ids, policy);
            if let Committed::Done(summary) = self.commit_planned(planned) {
                return summary;
            }
        }
    }

    /// What the next plan is made from: the hit counters seen so far, the
    /// capabilities and the kept lowering (handed over until the plan comes back).
    /// Denies of protocols other than TCP stay in software: the packets keep flowing
    /// while the plan is made and committed, so software may meanwhile hold flows
    /// another generation allowed that such a drop would cut.
    pub fn plan_job(&mut self) -> PlanJob {
        self.plan_job_with(StatelessDrops::Off)
    }

    /// [`NicFront::plan_job`] with `stateless` as the planner's stateless-drop input.
    fn plan_job_with(&mut self, stateless: StatelessDrops) -> PlanJob {
        let mut caps = self.caps.clone();
        if let Some(budget) = self.refresh_budget {
            caps.capacity = caps.capacity.min(budget);
        }
        PlanJob {
            generation: self.plans + 1,
            learned_room: learned_drop_room(caps.capacity),
            caps,
            hits: HitCounters {
                flows: self.samples.values().cloned().collect(),
                rules: HashMap::new(),
                stateless,
            },
            lowered: self.lowered.take(),
            installed: self.live_plan(),
        }
    }

    /// The live plan and its policy version, when a re-plan can go in place: a
    /// device with groups holds it as the newest generation.
    fn live_plan(&self) -> Option<(u64, Arc<OffloadPlan>)> {
        let p = self.plan.as_ref()?;
        let live = p.mode == capo_offload::OffloadMode::VersionedGroups
            && self.committer.nic_generation() == Some(p.generation)
            && !self.device_gone;
        live.then(|| Some((self.plan_policy?, Arc::clone(p))))
            .flatten()
    }

    /// Commits a plan made from [`NicFront::plan_job`] (see
    /// [`NicFront::commit_plan`]). When the NIC runs out of entries part-way, the
    /// front's capacity becomes what fit and [`Committed::Shrink`] asks for another
    /// plan, a few times at most.
    pub fn commit_planned(&mut self, planned: Planned) -> Committed {
        self.commit_planned_serving(planned, Duration::MAX, &mut |_| {})
    }

    /// [`NicFront::commit_planned`] for a thread that also receives packets: a
    /// commit's NIC calls (validate, create, destroy, and a retirement's queries)
    /// run at 1–50k a second on a real NIC, so between them, at most every `every`,
    /// `serve` is handed the NIC's verdicts as software holds them at that step
    /// (marks of a generation being committed or retired are judged as the
    /// invariant of DESIGN §4 allows) and can decide a burst.
    pub fn commit_planned_serving(
        &mut self,
        planned: Planned,
        every: Duration,
        serve: &mut dyn FnMut(&NicVerdicts<'_>),
    ) -> Committed {
        let committed = self.serving(every, serve, |front, between| {
            front.commit_steps(planned, between)
        });
        // The commit removed the learned drops first: their counts stay with their
        // rules.
        for (packet, count) in self.committer.take_forgotten() {
            self.fold_learned(packet, count);
        }
        committed
    }

    /// Learns a drop from a packet software just denied under policy version
    /// `policy` ([`DropLearner`]): its conversation's next packets are dropped by
    /// the NIC until the next plan is committed, which counts them. Only while the
    /// live plan is of that version (lowered for it, nothing planning it away), and
    /// only as many as the room the plans leave ([`learned_drop_room`]), the oldest
    /// replaced first. `stateless` as for planning: drops of protocols other than
    /// TCP are learned only sparing the flows software holds now. Returns whether a
    /// drop was installed.
    pub(crate) fn learn_drop(
        &mut self,
        version: (&State, &IdTable, u64),
        pkt: &Packet,
        tcp_flags: Option<u8>,
        stateless: &StatelessDrops,
    ) -> bool {
        let (state, ids, policy) = version;
        if !self.may_learn(policy) {
            return false;
        }
        // `may_learn` found the lowering of `policy` here.
        let Some((_, program)) = self.lowered.as_ref() else {
            return false;
        };
        self.learn_budget.spend();
        let Some(drop) = self
            .learner
            .drop_for(state, program, &self.caps, pkt, tcp_flags, stateless)
        else {
            return false;
        };
        let outcome = self.committer.learn_drop(
            &mut self.nic,
            &drop,
            self.learned_room as usize,
            self.caps.counters,
        );
        match outcome {
            LearnOutcome::Installed { evicted } => {
                for (packet, count) in evicted {
                    self.fold_learned(packet, count);
                }
                self.learned_rule_ids
                    .insert(drop.packet, decider_rule_id(state, ids, &drop.packet));
                self.learned_total += 1;
                tracing::debug!(packet = ?drop.packet, "NIC drop learned");
                true
            }
            LearnOutcome::Refused { error, evicted } => {
                for (packet, count) in evicted {
                    self.fold_learned(packet, count);
                }
                self.learn_refused += 1;
                tracing::debug!(?error, "the NIC refused a learned drop");
                false
            }
            LearnOutcome::Known | LearnOutcome::NotLive | LearnOutcome::NoRoom => false,
        }
    }

    /// Whether a packet denied under policy version `policy` may teach the NIC a
    /// drop now: room is left for them, the live plan is of that version and its
    /// lowering is here (no plan job holds it), and the rate allows another (a
    /// flood of refused conversations costs the thread at most
    /// [`MAX_LEARNED_PER_SECOND`] NIC inserts a second).
    pub(crate) fn may_learn(&mut self, policy: u64) -> bool {
        self.learned_room > 0
            && self.plan_policy == Some(policy)
            && !self.device_gone
            && self.lowered.as_ref().is_some_and(|(v, _)| *v == policy)
            && self.learn_budget.available()
    }

    /// Keeps a removed learned drop's final count under its `rule#`.
    fn fold_learned(&mut self, packet: Packet, count: Option<FlowCount>) {
        if let (Some(Some(id)), Some(c)) = (self.learned_rule_ids.remove(&packet), count) {
            add_count(&mut self.retired_counts, id, c);
        }
    }

    /// Runs `steps` (a commit's or a retirement's NIC calls), handing `serve` the
    /// NIC's verdicts between them at most every `every`; the verdicts served count
    /// as the NIC's.
    fn serving<R>(
        &mut self,
        every: Duration,
        serve: &mut dyn FnMut(&NicVerdicts<'_>),
        steps: impl FnOnce(&mut Self, &mut dyn FnMut(&SoftwareView)) -> R,
    ) -> R {
        let decided = Cell::new(0u64);
        let mark_bits = self.caps.mark_bits;
        let mut last = Instant::now();
        let mut between = |view: &SoftwareView| {
            if last.elapsed() >= every {
                serve(&NicVerdicts {
                    view,
                    mark_bits,
                    decided: &decided,
                });
                last = Instant::now();
            }
        };
        let out = steps(self, &mut between);
        self.nic_decided += decided.get();
        out
    }

    fn commit_steps(
        &mut self,
        planned: Planned,
        between: &mut dyn FnMut(&SoftwareView),
    ) -> Committed {
        if self.retiring() {
            self.retire_steps(between);
        }
        let Planned {
            policy,
            program,
            plan: p,
            rule_ids,
            in_place,
            learned_room,
        } = planned;
        // Learned drops get the room this plan left them.
        self.learned_room = learned_room;
        if in_place {
            return self.refresh_steps(policy, program, p, rule_ids, between);
        }
        // The marks name the NIC generation, not the policy's.
        self.plans = self.plans.max(program.generation);
        let outcome = self
            .committer
            .commit(&mut self.nic, &p, &mut |_, view| between(view));
        self.lowered = Some((policy, program));
        let table = self.shrunk_from.unwrap_or(self.caps.capacity);
        match &outcome {
            // The table is smaller than its profile says (other users, another
            // generation resident): plan for what fit, a few times at most.
            CommitOutcome::SoftwareOnly { error, rule, .. }
                if error.kind == FlowErrorKind::NoMem
                    && *rule > 0
                    && (*rule as u32) < self.caps.capacity
                    && self.shrinks < MAX_SHRINKS =>
            {
                self.shrinks += 1;
                self.shrunk_from = Some(table);
                self.caps.capacity = *rule as u32;
                return Committed::Shrink;
            }
            _ => {}
        }
        self.device_gone = matches!(
            &outcome,
            CommitOutcome::SoftwareOnly { error, .. } if error.kind == FlowErrorKind::Io
        );
        self.retiring_rule_ids = std::mem::replace(&mut self.plan_rule_ids, rule_ids);
        let mut summary = match &outcome {
            CommitOutcome::Offloaded { installed, refused } => {
                format!("{installed} NIC rules installed, {refused} refused")
            }
            CommitOutcome::SoftwareOnly { error, rule, .. } => {
                format!("NIC refused rule {rule} ({error:?}): software decides everything")
            }
        };
        if self.shrinks > 0 {
            summary += &format!(
                " (the NIC ran out of entries: planned again for {} of {table})",
                self.caps.capacity
            );
        }
        let stuck = self.committer.stuck_dispatchers();
        if stuck > 0 {
            summary += &format!(
                " ({stuck} dispatcher rule(s) the NIC would not destroy: once retired, their \
                 groups keep only a catch-all to software; tried again at every commit and \
                 retirement)"
            );
        }
        self.shrinks = 0;
        self.shrunk_from = None;
        self.refresh_budget = None;
        let (created, refusal) = match &outcome {
            CommitOutcome::Offloaded { installed, refused } => (
                *installed,
                (*refused > 0).then(|| format!("{refused} rules refused: software decides them")),
            ),
            CommitOutcome::SoftwareOnly { error, rule, .. } => (
                0,
                Some(format!(
                    "rule {rule} refused ({error:?}): software decides everything"
                )),
            ),
        };
        self.record_commit(
            CommitKind::NewGeneration,
            p.generation,
            created,
            0,
            0,
            refusal,
        );
        self.plan = Some(Arc::new(p));
        self.plan_rules_gone = 0;
        self.plan_policy = Some(policy);
        Committed::Done(summary)
    }

    /// Keeps what the offload view says about the last commit.
    fn record_commit(
        &mut self,
        kind: CommitKind,
        nic_generation: u64,
        created: usize,
        kept: usize,
        removed: usize,
        refusal: Option<String>,
    ) {
        let (mut in_place, mut new_generation) = self
            .last_commit
            .as_ref()
            .map_or((0, 0), |c| (c.in_place_total, c.new_generation_total));
        match kind {
            CommitKind::InPlace => in_place += 1,
            CommitKind::NewGeneration => new_generation += 1,
        }
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        self.last_commit = Some(api::NicCommit {
            kind: kind.name().to_string(),
            nic_generation,
            created: n(created),
            kept: n(kept),
            removed: n(removed),
            refusal: refusal.unwrap_or_default(),
            in_place_total: in_place,
            new_generation_total: new_generation,
        });
    }

    /// Keeps the final counts of live rules removed (by plan index) under their
    /// `rule#`s; returns how many were removed.
    fn fold_counts(&mut self, destroyed: Vec<(usize, Option<capo_offload::FlowCount>)>) -> usize {
        let removed = destroyed.len();
        for (i, count) in destroyed {
            if let (Some(Some(id)), Some(c)) = (self.plan_rule_ids.get(i), count) {
                add_count(&mut self.retired_counts, *id, c);
            }
        }
        removed
    }

    /// Commits a re-plan of the live generation in place: the final counts of the
    /// rules it removes are kept under their `rule#`s. When the two plans' rules do
    /// not fit the table together, it asks for a smaller plan (a few times at most);
    /// another refusal leaves the installed plan; a failure part-way takes the NIC
    /// out of the decision until the next plan goes in as a new generation.
    fn refresh_steps(
        &mut self,
        policy: u64,
        program: OffloadProgram,
        p: OffloadPlan,
        rule_ids: Vec<Option<u32>>,
        between: &mut dyn FnMut(&SoftwareView),
    ) -> Committed {
        let capacity = self.refresh_budget.unwrap_or(self.caps.capacity);
        let outcome = self
            .committer
            .refresh(&mut self.nic, &p, capacity, &mut |_, view| between(view));
        self.lowered = Some((policy, program));
        // The plan is of the installed generation, refused or not.
        let generation = p.generation;
        match outcome {
            RefreshOutcome::Refreshed {
                inserted,
                kept,
                destroyed,
            } => {
                let removed = self.fold_counts(destroyed);
                self.record_commit(
                    CommitKind::InPlace,
                    generation,
                    inserted,
                    kept,
                    removed,
                    None,
                );
                self.plan_rule_ids = rule_ids;
                self.plan_rules_gone = 0;
                self.plan = Some(Arc::new(p));
                self.plan_policy = Some(policy);
                self.shrinks = 0;
                self.refresh_budget = None;
                Committed::Done(format!(
                    "NIC plan refreshed in place: {inserted} rules installed, {kept} kept, \
                     {removed} removed"
                ))
            }
            RefreshOutcome::Refused {
                error,
                rule,
                destroyed,
                needed,
                held,
                ..
            } => {
                // The installed plan stays, less what step 1 removed: those rules'
                // counts are folded and they no longer count as NIC entries.
                let gone: Vec<usize> = destroyed.iter().map(|(i, _)| *i).collect();
                let removed = self.fold_counts(destroyed);
                for i in gone {
                    if let Some(id) = self.plan_rule_ids.get_mut(i) {
                        *id = None;
                    }
                }
                self.plan_rules_gone += removed;
                if error.kind == FlowErrorKind::NoMem && needed > held && self.shrinks < MAX_SHRINKS
                {
                    // Plan in place again for a table smaller by what did not fit.
                    self.shrinks += 1;
                    self.refresh_budget = Some(capacity.saturating_sub((needed - held) as u32));
                    return Committed::Shrink;
                }
                self.shrinks = 0;
                self.refresh_budget = None;
                let refusal = format!("rule {rule} refused ({error:?}): the installed plan stays");
                self.record_commit(
                    CommitKind::InPlace,
                    generation,
                    0,
                    0,
                    removed,
                    Some(refusal.clone()),
                );
                Committed::Done(format!("NIC refused the refreshed plan: {refusal}"))
            }
            RefreshOutcome::Failed {
                error,
                dispatcher_removed,
                destroyed,
            } => {
                let removed = self.fold_counts(destroyed);
                self.device_gone = error.kind == FlowErrorKind::Io;
                // What is left of the group is retired with the plan's rule ids.
                self.retiring_rule_ids = std::mem::take(&mut self.plan_rule_ids);
                self.plan_rules_gone = 0;
                self.plan = None;
                self.plan_policy = None;
                self.shrinks = 0;
                self.refresh_budget = None;
                let refusal = if dispatcher_removed {
                    format!(
                        "the NIC failed part-way ({error:?}): it decides nothing now, \
                         software decides everything until the next plan goes in as a new \
                         generation"
                    )
                } else {
                    format!(
                        "the NIC failed part-way ({error:?}) and kept its dispatcher: the \
                         rules left decide (each with what it relies on) until they are \
                         retired, then the group's catch-all sends every packet to software \
                         until the NIC lets the dispatcher go (tried again at every commit)"
                    )
                };
                self.record_commit(
                    CommitKind::InPlace,
                    generation,
                    0,
                    0,
                    removed,
                    Some(refusal.clone()),
                );
                Committed::Done(refusal)
            }
            RefreshOutcome::NotLive => {
                self.plan_policy = None;
                Committed::Again
            }
        }
    }

    /// Whether the last commit met EIO (the device is gone or was reset): it is
    /// worth committing again later.
    pub fn device_gone(&self) -> bool {
        self.device_gone
    }

    /// Retires the previous generation: its rules' final counts are kept, its
    /// rules destroyed.
    pub fn retire_previous(&mut self) {
        self.retire_previous_serving(Duration::MAX, &mut |_| {});
    }

    /// [`NicFront::retire_previous`], serving packets between its NIC calls as
    /// [`NicFront::commit_planned_serving`] does.
    pub fn retire_previous_serving(
        &mut self,
        every: Duration,
        serve: &mut dyn FnMut(&NicVerdicts<'_>),
    ) {
        self.serving(every, serve, |front, between| front.retire_steps(between));
    }

    /// Destroys the previous generation's rules, keeping their final counts under
    /// their `rule#`s.
    fn retire_steps(&mut self, between: &mut dyn FnMut(&SoftwareView)) {
        let old_ids = std::mem::take(&mut self.retiring_rule_ids);
        let retired = self
            .committer
            .retire(&mut self.nic, &mut |_, view| between(view));
        // The room the retired generation held is free again: the next plan may use
        // the whole table (if others hold part of it, ENOMEM shrinks it again).
        self.caps.capacity = self.table;
        for r in retired {
            for (i, c) in r.counts {
                if let Some(Some(id)) = old_ids.get(i) {
                    add_count(&mut self.retired_counts, *id, c);
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
        hardware_verdict(out, self.committer.software(), self.caps.mark_bits)
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
        self.rule_counts_serving(Duration::MAX, &mut |_| {})
    }

    /// [`NicFront::rule_counts`], serving packets between its queries (one per
    /// live rule with a COUNT action) as [`NicFront::commit_planned_serving`]
    /// does.
    pub(crate) fn rule_counts_serving(
        &mut self,
        every: Duration,
        serve: &mut dyn FnMut(&NicVerdicts<'_>),
    ) -> HashMap<u32, (u64, u64)> {
        let live = self.serving(every, serve, |front, between| {
            front
                .committer
                .live_counts_observed(&mut front.nic, &mut |_, view| between(view))
        });
        let mut out = self.retired_counts.clone();
        for (i, c) in live {
            if let Some(Some(id)) = self.plan_rule_ids.get(i) {
                add_count(&mut out, *id, c);
            }
        }
        for (packet, c) in self.committer.learned_counts(&mut self.nic) {
            if let Some(Some(id)) = self.learned_rule_ids.get(&packet) {
                add_count(&mut out, *id, c);
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
            entries_used: self.plan.as_ref().map_or(0, |p| {
                u32::try_from(p.entries_used().saturating_sub(self.plan_rules_gone))
                    .unwrap_or(u32::MAX)
            }),
            entries_capacity: self.caps.capacity,
            rules,
            last_commit: self.last_commit.clone(),
            learned_drops: self.plan.as_ref().map(|_| api::LearnedDrops {
                installed: u32::try_from(self.committer.learned_drops()).unwrap_or(u32::MAX),
                room: self.learned_room,
                learned_total: self.learned_total,
                refused_total: self.learn_refused,
            }),
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

/// A policy version a [`BackgroundPlanner`] plans: the version number (see
/// [`NicFront::commit_plan`]) with its state and ids.
#[derive(Debug, Clone)]
pub struct PolicyVersion {
    /// Changes whenever the state or the ids do.
    pub version: u64,
    /// The policy.
    pub state: Arc<State>,
    /// Its ids.
    pub ids: Arc<IdTable>,
}

/// A plan a [`BackgroundPlanner`] made.
#[derive(Debug)]
pub struct PlanResult {
    /// The policy version planned.
    pub version: u64,
    /// The plan, for [`NicFront::commit_planned`].
    pub planned: Planned,
    /// Every rule of the version's views, for the offload report.
    pub rules: Vec<capo_policy::views::NumberedRule>,
    /// How long the planner took (snapshot, lowering, plan, views).
    pub took: Duration,
}

/// What a [`BackgroundPlanner`] job came to.
#[derive(Debug)]
pub enum PlanOutcome {
    /// A plan to commit.
    Planned(Box<PlanResult>),
    /// There was no policy to plan.
    NoPolicy,
}

/// Plans on a thread of its own, one job at a time, so that the thread that owns
/// a NIC and polls its port only commits: planning a policy (72–96 ms on W-k8s)
/// no longer holds received packets in the ring. Each job plans the policy
/// version `source` gives when the job starts.
pub struct BackgroundPlanner {
    jobs: Option<std::sync::mpsc::Sender<PlanJob>>,
    done: std::sync::mpsc::Receiver<PlanOutcome>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: bool,
}

/// Why a [`BackgroundPlanner`] cannot take a job.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlannerError {
    /// A job is under way.
    #[error("a plan is under way")]
    Busy,
    /// The planner thread ended (it panicked).
    #[error("the planner thread ended")]
    Gone,
}

impl BackgroundPlanner {
    /// Starts the planner thread, named `name`.
    pub fn spawn<F>(name: &str, mut source: F) -> std::io::Result<Self>
    where
        F: FnMut() -> Option<PolicyVersion> + Send + 'static,
    {
        let (jobs, job_rx) = std::sync::mpsc::channel::<PlanJob>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in job_rx {
                    let t0 = Instant::now();
                    let outcome = match source() {
                        Some(p) => PlanOutcome::Planned(Box::new(job.run_for(&p, t0))),
                        None => PlanOutcome::NoPolicy,
                    };
                    if done_tx.send(outcome).is_err() {
                        return;
                    }
                }
            })?;
        Ok(BackgroundPlanner {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a job is under way.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Hands `job` to the planner thread.
    pub fn start(&mut self, job: PlanJob) -> Result<(), PlannerError> {
        if self.in_flight {
            return Err(PlannerError::Busy);
        }
        let jobs = self.jobs.as_ref().ok_or(PlannerError::Gone)?;
        jobs.send(job).map_err(|_| PlannerError::Gone)?;
        self.in_flight = true;
        Ok(())
    }

    /// The job's outcome once it is done (without waiting); `Err` when the planner
    /// thread ended without one.
    pub fn finished(&mut self) -> Result<Option<PlanOutcome>, PlannerError> {
        if !self.in_flight {
            return Ok(None);
        }
        match self.done.try_recv() {
            Ok(outcome) => {
                self.in_flight = false;
                Ok(Some(outcome))
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.in_flight = false;
                self.jobs = None;
                Err(PlannerError::Gone)
            }
        }
    }
}

impl Drop for BackgroundPlanner {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once its job (if any) is done.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The NIC's verdict on a packet (`out`) under `view`: a drop, or an allow mark
/// naming a generation the view holds; `None` leaves the packet to software.
fn hardware_verdict(out: NicOutcome, view: &SoftwareView, mark_bits: u8) -> Option<Verdict> {
    let (v, by) = combine(out, view, mark_bits, &mut |_| Verdict::Deny);
    (by == DecidedBy::Hardware).then_some(v)
}

/// The NIC's verdicts as software holds them at one step of a commit or
/// retirement, for a packet path served in between
/// ([`NicFront::commit_planned_serving`]); counted with the front's.
pub struct NicVerdicts<'a> {
    view: &'a SoftwareView,
    mark_bits: u8,
    decided: &'a Cell<u64>,
}

impl NicVerdicts<'_> {
    /// The NIC's verdict on a packet, if it has one (see [`NicFront::nic_verdict`]).
    pub fn verdict(&self, out: NicOutcome) -> Option<Verdict> {
        let v = hardware_verdict(out, self.view, self.mark_bits);
        self.decided
            .set(self.decided.get() + u64::from(v.is_some()));
        v
    }
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

    /// A TCP packet of the `web` fixture's client to its server.
    fn web_packet(sport: u16, dport: u16) -> Packet {
        Packet {
            src: "11.0.0.196".parse().unwrap(),
            dst: "11.0.0.67".parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    /// Records `count` connection attempts (SYN) from one client to port 81, each
    /// from its own source port.
    fn record_syns_to_81(nic: &mut SimulatedNic, count: u16) {
        for port in 0..count {
            nic.record(&web_packet(40000 + port, 81), Some(0x02));
        }
    }

    /// A learned drop counts under the rule that decides its conversation (here the
    /// tier's end), while installed and after a new generation removed it; it is
    /// learned only for the policy version of the live plan.
    #[test]
    fn learned_drops_count_under_their_rule_and_go_with_their_policy() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.commit(&state, &ids, 1);
        let ssh = web_packet(40000, 22);
        let rule = decider_rule_id(&state, &ids, &ssh).expect("the tier's end decides");
        // Another policy version than the live plan's: not learned.
        assert!(!nic.learn_drop((&state, &ids, 2), &ssh, Some(0x02), &StatelessDrops::Off));
        assert!(nic.learn_drop((&state, &ids, 1), &ssh, Some(0x02), &StatelessDrops::Off));
        let next = web_packet(40001, 22);
        let software = &mut || Verdict::Allow;
        assert_eq!(
            nic.receive(&next, 0x02, 60, software),
            (Verdict::Deny, true)
        );
        assert_eq!(nic.rule_counts().get(&rule), Some(&(1, 60)));
        let view = nic.plan_reply(&[]).learned_drops.unwrap();
        assert_eq!((view.installed, view.learned_total, view.room), (1, 1, 4));
        // A new policy version goes in as a new generation: the drop goes, its count
        // stays with the rule.
        nic.commit(&state, &ids, 2);
        assert_eq!(nic.plan_reply(&[]).learned_drops.unwrap().installed, 0);
        assert_eq!(nic.rule_counts().get(&rule), Some(&(1, 60)));
        assert_eq!(
            nic.receive(&next, 0x02, 60, software),
            (Verdict::Allow, false)
        );
    }

    /// A table smaller than the profile says: ENOMEM part-way makes the NIC plan
    /// again for what fit, and the second plan goes in.
    #[test]
    fn enomem_plans_again_for_a_smaller_table() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        record_syns_to_81(&mut nic, 40);
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
        // Once the previous generation is retired, the next plan may use the whole
        // table again; the table is still small (the fault stays), so the next
        // generation's commit shrinks again.
        nic.retire_previous();
        assert_eq!(nic.caps().capacity, 64);
        let summary = nic.commit_plan(&state, &ids, 2);
        assert!(summary.contains("ran out of entries"), "{summary}");
    }

    /// A re-plan of the same policy version plans the kept lowering (the plan equals
    /// one from a fresh lowering); a new version lowers the new policy.
    #[test]
    fn replans_keep_the_lowering_until_the_policy_changes() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        let to_port = |port: u16| web_packet(40000, port);
        nic.record(&to_port(80), Some(0x10));
        let fresh = |nic: &SimulatedNic, state: &State, ids: &IdTable| {
            let hits = HitCounters {
                flows: nic.samples.values().cloned().collect(),
                ..HitCounters::default()
            };
            let generation = nic.plan.as_ref().map_or(0, |p| p.generation);
            let program = lower(state, ids, generation);
            plan(state, &program, &nic.caps, &hits, &PlanConfig::default())
        };
        nic.commit(&state, &ids, 1);
        assert_eq!(nic.plan.as_deref(), Some(&fresh(&nic, &state, &ids)));
        // New counters, the same policy: planned again on the kept lowering.
        nic.record(&to_port(443), Some(0x02));
        nic.commit(&state, &ids, 1);
        let replanned = nic.plan.as_deref().cloned().unwrap();
        assert_eq!(
            replanned.generation, 1,
            "in place: the NIC generation stays"
        );
        // The same rules as a fresh plan's, numbered to keep the installed ones'.
        let bits = nic.caps.mark_bits;
        assert_eq!(
            capo_offload::plan::rules_changed(&replanned, &fresh(&nic, &state, &ids), bits),
            0
        );
        // The policy changes (443 open instead of 80): version 2 is lowered again.
        let (mut closed, mut closed_ids) = web();
        let (key, policy) = closed.policies().iter().next().unwrap();
        let (key, mut policy) = (key.clone(), capo_policy::Policy::clone(policy));
        policy.inbound[0].dst.ports = vec![capo_policy::PortRange::single(443)];
        closed
            .apply(capo_policy::Update::PolicyUpdate(key, policy.into()))
            .unwrap();
        closed_ids.sync(&closed);
        nic.commit(&closed, &closed_ids, 2);
        let after = nic.plan.as_deref().cloned().unwrap();
        assert_eq!(after, fresh(&nic, &closed, &closed_ids));
        assert_ne!(
            after.rules, replanned.rules,
            "closing the port changes the plan"
        );
    }

    /// A re-plan of the live policy goes in place: the rules both plans hold stay
    /// (the same NIC entries), the NIC keeps deciding without a new generation, and
    /// the counts of the rules it removes stay with their `rule#`s.
    #[test]
    fn replans_of_the_live_policy_go_in_place_and_keep_counts() {
        let (state, ids) = web();
        let mut nic = SimulatedNic::new("mlx5", 64);
        let http = web_packet(40000, 80);
        nic.record(&http, Some(0x10));
        nic.commit(&state, &ids, 1);
        for _ in 0..3 {
            assert_eq!(
                nic.receive(&http, 0x10, 100, &mut || Verdict::Deny),
                (Verdict::Allow, true)
            );
        }
        let counted = nic.rule_counts();
        assert!(counted.values().any(|c| c.0 == 3), "{counted:?}");
        // The NIC entry that allows the flow: it must stay, the same entry.
        let bits = nic.caps.mark_bits;
        let allows = |nic: &SimulatedNic| -> Vec<_> {
            nic.nic
                .rules()
                .filter(|(_, r)| {
                    r.matches(&headers(&http, 0x10))
                        && r.mark().is_some_and(|m| {
                            capo_offload::mark::Mark::decode(m, bits).kind
                                == capo_offload::mark::MarkKind::Allow
                        })
                })
                .map(|(h, r)| (h, r.clone()))
                .collect()
        };
        let allow_entry = allows(&nic);
        assert_eq!(allow_entry.len(), 1, "{allow_entry:?}");
        let entries_before: Vec<_> = nic.nic.rules().map(|(h, r)| (h, r.clone())).collect();
        // New flows, the same policy version: planned again, committed in place.
        record_syns_to_81(&mut nic, 20);
        let planned = nic.plan_job().run(&state, &ids, 1);
        assert!(planned.in_place);
        let Committed::Done(summary) = nic.commit_planned(planned) else {
            panic!("not committed");
        };
        assert!(summary.contains("refreshed in place"), "{summary}");
        assert!(!nic.retiring(), "no second generation");
        let last = nic.plan_reply(&[]).last_commit.unwrap();
        assert_eq!(
            (last.kind.as_str(), last.nic_generation, last.in_place_total),
            ("in-place", 1, 1)
        );
        assert_eq!(last.new_generation_total, 1);
        assert!(last.created > 0 && last.kept > 0, "{last:?}");
        assert_eq!(nic.committer.nic_generation(), Some(1));
        let entries_after: Vec<_> = nic.nic.rules().map(|(h, r)| (h, r.clone())).collect();
        let kept = entries_before
            .iter()
            .filter(|e| entries_after.contains(e))
            .count();
        assert!(kept > 0, "no entry stayed in place");
        assert!(entries_after.len() > kept, "no entry was added");
        assert_eq!(allows(&nic), allow_entry, "the allow entry was replaced");
        // The counts carry over, and the NIC still decides the flow.
        let carried = nic.rule_counts();
        for (id, c) in &counted {
            assert_eq!(carried.get(id), Some(c), "{carried:?}");
        }
        assert_eq!(
            nic.receive(&http, 0x10, 100, &mut || Verdict::Deny),
            (Verdict::Allow, true)
        );
        // The refused SYNs to port 81 are now dropped by the NIC.
        assert_eq!(
            nic.receive(&web_packet(41000, 81), 0x02, 60, &mut || Verdict::Allow),
            (Verdict::Deny, true)
        );
        let before_removal = nic.rule_counts();
        let entries = nic.nic.installed();
        // Going back to the first counters removes the drop: its count stays.
        nic.samples.retain(|p, _| *p == http);
        let planned = nic.plan_job().run(&state, &ids, 1);
        assert!(planned.in_place);
        let Committed::Done(summary) = nic.commit_planned(planned) else {
            panic!("not committed");
        };
        assert!(summary.contains("refreshed in place"), "{summary}");
        assert!(nic.nic.installed() < entries, "nothing was removed");
        assert_eq!(allows(&nic), allow_entry, "the allow entry was replaced");
        assert_eq!(nic.rule_counts(), before_removal);
    }

    /// A re-plan whose rules do not fit beside the installed ones is planned again in
    /// place for less room; a device that fails part-way is taken out of the
    /// decision, and the next plan goes in as a new generation.
    #[test]
    fn refreshes_that_do_not_fit_or_fail_are_handled_in_place_or_as_a_generation() {
        let (state, ids) = web();
        let http = web_packet(40000, 80);
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.record(&http, Some(0x10));
        nic.commit(&state, &ids, 1);
        let installed = nic.nic.installed();
        // The front plans for less than its profile says (another user of the
        // table): the second plan does not fit beside the first.
        nic.caps.capacity = installed as u32 + 1;
        record_syns_to_81(&mut nic, 20);
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("refreshed in place"), "{summary}");
        assert_eq!(nic.committer.nic_generation(), Some(1), "{summary}");
        assert!(nic.nic.installed() <= installed + 1);
        assert_eq!(nic.refresh_budget, None, "the budget lasts one commit");
        // Destroys fail from now on: the refresh stops where it is safe, and the NIC
        // decides nothing; the next plan goes in as a new generation.
        nic.caps.capacity = 64;
        nic.samples.retain(|p, _| *p == http);
        nic.nic.set_faults(capo_offload::Faults {
            destroy_fails_after: Some(0),
            ..Default::default()
        });
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("failed part-way"), "{summary}");
        assert!(summary.contains("kept its dispatcher"), "{summary}");
        assert_eq!(nic.committer.nic_generation(), None);
        assert_eq!(
            nic.receive(&http, 0x10, 100, &mut || Verdict::Deny).0,
            Verdict::Allow
        );
        assert!(nic.retiring());
        nic.nic.set_faults(capo_offload::Faults::default());
        let planned = nic.plan_job().run(&state, &ids, 1);
        assert!(!planned.in_place);
        let Committed::Done(summary) = nic.commit_planned(planned) else {
            panic!("not committed");
        };
        assert!(summary.contains("NIC rules installed"), "{summary}");
        assert_eq!(nic.committer.nic_generation(), Some(2));
        assert_eq!(
            nic.receive(&http, 0x10, 100, &mut || Verdict::Deny),
            (Verdict::Allow, true)
        );
        let last = nic.plan_reply(&[]).last_commit.unwrap();
        assert_eq!((last.in_place_total, last.new_generation_total), (2, 2));
        // The device goes away during a refresh: it is reported gone (the port
        // commits again later).
        record_syns_to_81(&mut nic, 20);
        nic.nic.set_faults(capo_offload::Faults {
            eio_after_creates: Some(0),
            ..Default::default()
        });
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("failed part-way"), "{summary}");
        assert!(nic.device_gone());
    }

    /// A refresh refused part-way leaves the installed plan less what its first step
    /// removed: the offload view counts what the NIC holds, not the plan as it was.
    #[test]
    fn a_refused_refresh_shows_what_the_nic_still_holds() {
        let (state, ids) = web();
        let http = web_packet(40000, 80);
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.record(&http, Some(0x10));
        record_syns_to_81(&mut nic, 20);
        nic.commit(&state, &ids, 1);
        let overhead = nic.nic.installed() - nic.plan_reply(&[]).entries_used as usize;
        assert_eq!(
            nic.receive(&http, 0x10, 100, &mut || Verdict::Deny),
            (Verdict::Allow, true)
        );
        // Only refused SYNs now: what nothing relies on any more goes in step 1, then
        // the device refuses the first new rule.
        nic.samples.clear();
        for port in 0..20 {
            nic.record(&web_packet(40000 + port, 82), Some(0x02));
        }
        nic.nic.set_faults(capo_offload::Faults {
            create_fails_every: Some(1),
            ..Default::default()
        });
        let before = nic.nic.installed();
        let summary = nic.commit_plan(&state, &ids, 1);
        assert!(summary.contains("refused"), "{summary}");
        assert!(nic.nic.installed() < before, "step 1 removed nothing");
        let reply = nic.plan_reply(&[]);
        assert_eq!(
            nic.nic.installed() - reply.entries_used as usize,
            overhead,
            "the view counts removed rules"
        );
        let last = reply.last_commit.unwrap();
        assert!(last.removed > 0 && !last.refusal.is_empty(), "{last:?}");
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
        let pkt = web_packet(40000, 80);
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
        // A second plan (a new policy version): the first stays resident until
        // retired.
        nic.commit_plan(&state, &ids, 2);
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

    /// Waits for the planner's job, failing after 30 s.
    fn wait_for(planner: &mut BackgroundPlanner) -> PlanOutcome {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(outcome) = planner.finished().expect("planner thread alive") {
                return outcome;
            }
            assert!(std::time::Instant::now() < until, "the plan never came");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The port's path: a plan is made on the planner thread while the NIC goes on
    /// deciding by the generation it holds, and committing it gives what the
    /// synchronous path gives.
    #[test]
    fn the_background_planner_plans_while_the_nic_keeps_deciding() {
        let (state, ids) = web();
        let (state, ids) = (Arc::new(state), Arc::new(ids));
        let flow = |port: u16, sport: u16| web_packet(sport, port);
        let mut nic = SimulatedNic::new("mlx5", 64);
        let mut twin = SimulatedNic::new("mlx5", 64);
        for n in [&mut nic, &mut twin] {
            n.record(&flow(80, 40000), Some(0x10));
            n.commit_plan(&state, &ids, 1);
        }
        let NicOutcome::Delivered { mark: Some(mark) } =
            nic.nic.peek(&headers(&flow(80, 40000), 0x10))
        else {
            panic!("the allow rule did not mark the packet");
        };
        // The planner's source waits for the gate, as a slow plan would.
        let (gate, gate_rx) = std::sync::mpsc::channel::<()>();
        let planner_thread = Arc::new(std::sync::Mutex::new(None));
        let source = {
            let (state, ids, seen) = (state.clone(), ids.clone(), planner_thread.clone());
            move || {
                gate_rx.recv().ok()?;
                *seen.lock().unwrap() = Some(std::thread::current().id());
                Some(PolicyVersion {
                    version: 2,
                    state: state.clone(),
                    ids: ids.clone(),
                })
            }
        };
        let mut planner = BackgroundPlanner::spawn("test-plan", source).unwrap();
        for n in [&mut nic, &mut twin] {
            n.record(&flow(80, 40001), Some(0x02));
        }
        planner.start(nic.plan_job()).unwrap();
        assert!(planner.busy());
        assert_eq!(
            planner.start(nic.plan_job()).err(),
            Some(PlannerError::Busy)
        );
        assert!(matches!(planner.finished(), Ok(None)));
        let delivered = NicOutcome::Delivered { mark: Some(mark) };
        assert_eq!(
            nic.decide(delivered, &mut || Verdict::Deny),
            (Verdict::Allow, true),
            "generation 1 decides while generation 2 is planned"
        );
        gate.send(()).unwrap();
        let PlanOutcome::Planned(result) = wait_for(&mut planner) else {
            panic!("no plan");
        };
        assert!(!planner.busy());
        assert_ne!(
            *planner_thread.lock().unwrap(),
            Some(std::thread::current().id())
        );
        assert_eq!(result.version, 2);
        assert!(!result.rules.is_empty());
        let Committed::Done(summary) = nic.commit_planned(result.planned) else {
            panic!("a shrink without ENOMEM");
        };
        let twin_summary = twin.commit_plan(&state, &ids, 2);
        assert_eq!(summary, twin_summary);
        assert!(nic.plan.is_some());
        assert_eq!(nic.plan, twin.plan);
        assert_eq!(nic.plan_rule_ids, twin.plan_rule_ids);
        // The new generation's mark names the plan rule, credited to the policy rule
        // that decides the flow.
        let NicOutcome::Delivered { mark: Some(raw) } =
            nic.nic.peek(&headers(&flow(80, 40002), 0x10))
        else {
            panic!("the allow rule did not mark the packet");
        };
        let m = capo_offload::mark::Mark::decode(raw, nic.caps().mark_bits);
        let want = decider_rule_id(&state, &ids, &flow(80, 40002));
        assert!(want.is_some());
        // A new generation's marks index its plan's positions.
        assert_eq!(nic.plan_rule_ids.get(m.index as usize).copied(), Some(want));
    }

    /// A commit and a retirement serve packets between their NIC calls: a packet
    /// the live generation marked is the NIC's allow at every step of the next
    /// commit, and at every step of its own retirement until software lets the
    /// generation go, then software's; the served verdicts count as the NIC's.
    #[test]
    fn commits_and_retirements_serve_packets_between_nic_calls() {
        let (state, ids) = web();
        let flow = |sport: u16| web_packet(sport, 80);
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.record(&flow(40000), Some(0x10));
        nic.commit_plan(&state, &ids, 1);
        let NicOutcome::Delivered { mark: Some(mark) } = nic.nic.peek(&headers(&flow(40000), 0x10))
        else {
            panic!("the allow rule did not mark the packet");
        };
        let marked = NicOutcome::Delivered { mark: Some(mark) };
        let unmarked = NicOutcome::Delivered { mark: None };
        let decided_before = nic.nic_decided();
        nic.record(&flow(40001), Some(0x02));
        // A new policy version: a new generation (the same one would go in place).
        let planned = nic.plan_job().run(&state, &ids, 2);
        assert!(!planned.in_place);
        let rules = planned.plan.rules.len();
        let mut during_commit = Vec::new();
        let committed = nic.commit_planned_serving(planned, Duration::ZERO, &mut |v| {
            during_commit.push((v.verdict(marked), v.verdict(unmarked)));
        });
        assert!(matches!(committed, Committed::Done(_)), "{committed:?}");
        assert!(
            during_commit.len() >= rules,
            "{} serves for {rules} rules",
            during_commit.len()
        );
        assert!(during_commit
            .iter()
            .all(|v| *v == (Some(Verdict::Allow), None)));
        assert!(nic.retiring());
        let mut during_retire = Vec::new();
        nic.retire_previous_serving(Duration::ZERO, &mut |v| {
            during_retire.push(v.verdict(marked));
        });
        assert!(!nic.retiring());
        let held = during_retire
            .iter()
            .take_while(|v| **v == Some(Verdict::Allow))
            .count();
        assert!(held > 0, "{during_retire:?}");
        assert!(
            during_retire[held..].iter().all(Option::is_none),
            "{during_retire:?}"
        );
        assert_eq!(
            nic.nic_decided() - decided_before,
            (during_commit.len() + held) as u64
        );
        // Without a period, nothing is served.
        nic.record(&flow(40002), Some(0x02));
        let planned = nic.plan_job().run(&state, &ids, 3);
        let mut served = 0;
        nic.commit_planned_serving(planned, Duration::MAX, &mut |_| served += 1);
        assert_eq!(served, 0);
    }

    /// Reading the NIC's counters serves packets between the queries and reads
    /// what reading without serving reads.
    #[test]
    fn rule_counts_serve_packets_between_queries() {
        let (state, ids) = web();
        let pkt = web_packet(40000, 80);
        let mut nic = SimulatedNic::new("mlx5", 64);
        nic.record(&pkt, Some(0x10));
        nic.commit(&state, &ids, 1);
        for _ in 0..3 {
            assert_eq!(
                nic.receive(&pkt, 0x10, 100, &mut || Verdict::Deny),
                (Verdict::Allow, true)
            );
        }
        let NicOutcome::Delivered { mark: Some(mark) } = nic.nic.peek(&headers(&pkt, 0x10)) else {
            panic!("the allow rule did not mark the packet");
        };
        let plain = nic.rule_counts();
        assert!(plain.values().any(|c| *c == (3, 300)), "{plain:?}");
        let mut served = Vec::new();
        let counted = nic.rule_counts_serving(Duration::ZERO, &mut |v| {
            served.push(v.verdict(NicOutcome::Delivered { mark: Some(mark) }));
        });
        assert_eq!(counted, plain);
        assert!(!served.is_empty());
        assert!(served.iter().all(|v| *v == Some(Verdict::Allow)));
    }

    /// No policy yet: the job ends without a plan. ENOMEM part-way: the commit
    /// asks for a plan for what fit, and the planner's second plan goes in.
    #[test]
    fn the_background_planner_waits_for_a_policy_and_plans_again_after_enomem() {
        let (state, ids) = web();
        let (state, ids) = (Arc::new(state), Arc::new(ids));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let source = {
            let (state, ids, calls) = (state.clone(), ids.clone(), calls.clone());
            move || {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (n > 0).then(|| PolicyVersion {
                    version: 1,
                    state: state.clone(),
                    ids: ids.clone(),
                })
            }
        };
        let mut planner = BackgroundPlanner::spawn("test-plan", source).unwrap();
        let mut nic = SimulatedNic::new("mlx5", 64);
        record_syns_to_81(&mut nic, 40);
        planner.start(nic.plan_job()).unwrap();
        assert!(matches!(wait_for(&mut planner), PlanOutcome::NoPolicy));
        nic.nic.set_faults(capo_offload::Faults {
            enomem_after: Some(3),
            ..Default::default()
        });
        planner.start(nic.plan_job()).unwrap();
        let PlanOutcome::Planned(first) = wait_for(&mut planner) else {
            panic!("no plan");
        };
        assert_eq!(nic.commit_planned(first.planned), Committed::Shrink);
        assert!(nic.caps().capacity <= 3, "{}", nic.caps().capacity);
        planner.start(nic.plan_job()).unwrap();
        let PlanOutcome::Planned(second) = wait_for(&mut planner) else {
            panic!("no plan");
        };
        let Committed::Done(summary) = nic.commit_planned(second.planned) else {
            panic!("a second shrink");
        };
        assert!(summary.contains("ran out of entries"), "{summary}");
        assert!(summary.contains("of 64"), "{summary}");
        assert!(nic.nic.installed() <= 3);
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
        assert_eq!(
            "vpp-flow".parse::<NicSpec>().unwrap(),
            NicSpec::VppFlow {
                capacity: crate::sinks::vpp_share::DEFAULT_FLOW_LAYER_CAPACITY
            }
        );
        assert_eq!(
            "vpp-flow:256".parse::<NicSpec>().unwrap().to_string(),
            "vpp-flow:256"
        );
        assert!("vpp-flow:lots".parse::<NicSpec>().is_err());
        assert!("vpp-flowers".parse::<NicSpec>().is_err());
    }
}
