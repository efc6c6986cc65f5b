//! The embedded software dataplane: the fast classifier and flow table inside the
//! agent, following its generations. Packets reach it through the Inject API (tests
//! and demos) or, with a DPDK port, from the port. It keeps its own copy of the
//! policy so that IP-set and policy changes apply incrementally
//! ([`capo_classifier::Builder::apply`]) rather than by a full rebuild.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use capo_classifier::{
    parse_ethernet, Builder, Counters, FlowConfig, GenerationCell, Input, ParsedPacket, Timestamp,
    Worker,
};
use capo_offload::plan::StatelessDrops;
use capo_policy::views::NumberedRule;
use capo_policy::{Direction, IdTable, Packet, State, Update, Verdict, Views};
use capo_proto::capo::agent::v1 as api;

use crate::sinks::nic::SimulatedNic;
use crate::sinks::{Committed, Dataplane, PolicySink, SinkError};

/// Locks the NIC; a panic elsewhere does not poison the dataplane.
fn nic_lock(m: &std::sync::Mutex<SimulatedNic>) -> std::sync::MutexGuard<'_, SimulatedNic> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The classifier, its published generation, one worker and its counters.
pub struct Embedded {
    builder: Builder,
    state: State,
    ids: IdTable,
    cell: Option<GenerationCell>,
    counters: Arc<Counters>,
    worker: Worker,
    started: Instant,
    scratch: Vec<Verdict>,
    nic: Option<std::sync::Mutex<SimulatedNic>>,
    /// Counts the policies committed: the NIC keeps its lowering while it stays.
    /// Not the classifier generation's id, which starts again with a new builder.
    policy_version: u64,
    /// Packets the NIC decided, per (sw_if_index, direction): allowed, denied.
    nic_verdicts: std::collections::HashMap<(u32, Direction), capo_classifier::VerdictCount>,
    /// The agent's DPDK port's NIC, as its thread reports it.
    port_nic: PortNicCounts,
    /// The daemon's generation of the policy in force (what the port's NIC plans
    /// are made of).
    daemon_generation: u64,
    /// TCP packets from the wire software denied behind the port's NIC, for the
    /// port thread to learn drops from (at most [`MAX_WIRE_DENIED`] between two
    /// takes).
    wire_denied: Vec<ParsedPacket>,
}

/// Software-denied wire packets kept for the port thread between two takes.
const MAX_WIRE_DENIED: usize = 256;

/// What the DPDK port's thread reports of its NIC.
#[derive(Debug, Clone, Default)]
struct PortNicCounts {
    /// Per `rule#`: NIC packets and bytes.
    rules: std::collections::HashMap<u32, (u64, u64)>,
    /// Per `rule#`: its placement.
    placements: std::collections::HashMap<u32, i32>,
    /// Packets the NIC decided.
    decided: u64,
}

impl Embedded {
    /// An empty dataplane with the default flow table.
    pub fn new() -> Self {
        let counters = Arc::new(Counters::new());
        let worker = Worker::new(FlowConfig::default(), &counters);
        Embedded {
            builder: Builder::new(),
            state: State::new(),
            ids: IdTable::default(),
            cell: None,
            counters,
            worker,
            started: Instant::now(),
            scratch: Vec::new(),
            nic: None,
            policy_version: 0,
            nic_verdicts: std::collections::HashMap::new(),
            port_nic: PortNicCounts::default(),
            daemon_generation: 0,
            wire_denied: Vec::new(),
        }
    }

    /// The same, with a (simulated) NIC in front: packets arriving at a workload
    /// from the wire meet the NIC first.
    pub fn with_nic(nic: SimulatedNic) -> Self {
        let mut e = Embedded::new();
        e.nic = Some(std::sync::Mutex::new(nic));
        e
    }

    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn publish(&mut self, g: Arc<capo_classifier::Generation>) {
        match &self.cell {
            Some(cell) => cell.publish(g),
            None => self.cell = Some(GenerationCell::new(g)),
        }
    }
}

impl Embedded {
    /// What a counters reply is read from: taken under the dataplane's lock, cheap
    /// (the per-worker counters are shared atomics, read later by
    /// [`CounterSources::reply`] outside it).
    pub fn counter_sources(&self, numbered: &[NumberedRule]) -> CounterSources {
        let (nic_counts, placements, nic_decided) = match &self.nic {
            Some(nic) => {
                let mut n = nic_lock(nic);
                let counts = n.rule_counts();
                let placements = n
                    .plan_reply(numbered)
                    .rules
                    .iter()
                    .map(|r| (r.rule_id, r.placement))
                    .collect();
                (counts, placements, n.nic_decided())
            }
            None => (
                self.port_nic.rules.clone(),
                self.port_nic.placements.clone(),
                self.port_nic.decided,
            ),
        };
        CounterSources {
            counters: Arc::clone(&self.counters),
            nic_counts,
            placements,
            nic_verdicts: self.nic_verdicts.clone(),
            nic_decided,
        }
    }

    /// The offload plan over `numbered` (the rules of the policy in force), if a NIC
    /// is in front.
    pub(crate) fn plan_for(&self, numbered: &[NumberedRule]) -> Option<api::OffloadPlanReply> {
        Some(nic_lock(self.nic.as_ref()?).plan_reply(numbered))
    }

    /// The NIC's plan as testpmd commands for `port`; `None` without a NIC.
    pub fn testpmd_script(&self, port: u16) -> Option<Vec<String>> {
        Some(nic_lock(self.nic.as_ref()?).testpmd_script(port))
    }

    /// Whether `pkt` would be decided by the NIC (`Some("nic")`) or software;
    /// `None` without a NIC.
    pub(crate) fn decided_where(
        &self,
        interface: &str,
        dir: Direction,
        pkt: &Packet,
    ) -> Option<&'static str> {
        let nic = self.nic.as_ref()?;
        let on_wire = dir == Direction::Ingress
            && self.state.workloads().values().any(|w| w.name == interface);
        Some(if on_wire && nic_lock(nic).decides(pkt) {
            "nic"
        } else {
            "software"
        })
    }
}

/// The embedded dataplane's counters, detached from its lock.
pub struct CounterSources {
    counters: Arc<Counters>,
    nic_counts: std::collections::HashMap<u32, (u64, u64)>,
    placements: std::collections::HashMap<u32, i32>,
    nic_verdicts: std::collections::HashMap<(u32, Direction), capo_classifier::VerdictCount>,
    nic_decided: u64,
}

impl CounterSources {
    /// The counters reply for the policy `state`/`ids` whose rules are `numbered`.
    pub fn reply(
        &self,
        numbered: &[NumberedRule],
        state: &State,
        ids: &IdTable,
    ) -> api::CountersReply {
        let rules = numbered
            .iter()
            .map(|r| {
                let c = self.counters.rule(r.id);
                let (nic_packets, nic_bytes) =
                    self.nic_counts.get(&r.id).copied().unwrap_or((0, 0));
                api::RuleCounters {
                    rule_id: r.id,
                    rule: r.line.clone(),
                    owner: r.owner.clone(),
                    software_packets: c.packets,
                    software_bytes: c.bytes,
                    nic_packets,
                    nic_bytes,
                    placement: self
                        .placements
                        .get(&r.id)
                        .copied()
                        .unwrap_or(api::Placement::Software as i32),
                }
            })
            .collect();
        let mut interfaces = Vec::new();
        // In the views' order.
        let names: Vec<String> = Views::new(state, ids)
            .node_interfaces()
            .iter()
            .map(|i| i.name.to_string())
            .collect();
        let (mut allowed, mut denied) = (0, 0);
        for name in names {
            let Some(idx) = ids.interface(&name) else {
                continue;
            };
            for dir in Direction::BOTH {
                let v = self.counters.interface(idx, dir);
                let nic = self
                    .nic_verdicts
                    .get(&(idx, dir))
                    .copied()
                    .unwrap_or_default();
                allowed += v.allow + nic.allow;
                denied += v.deny + nic.deny;
                interfaces.push(api::InterfaceCounters {
                    interface: name.clone(),
                    sw_if_index: idx,
                    direction: dir_name(dir).into(),
                    allowed_packets: v.allow + nic.allow,
                    denied_packets: v.deny + nic.deny,
                    allowed_bytes: v.allow_bytes + nic.allow_bytes,
                    denied_bytes: v.deny_bytes + nic.deny_bytes,
                });
            }
        }
        let flows = self.counters.flows();
        api::CountersReply {
            generation: 0,
            rules,
            interfaces,
            totals: Some(api::Totals {
                packets: allowed + denied,
                allowed,
                denied,
                nic_decided: self.nic_decided,
                software_decided: (allowed + denied).saturating_sub(self.nic_decided),
                flow_table_hits: flows.hits,
            }),
        }
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded::new()
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// Why injected frames were not classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// No policy has reached the dataplane yet.
    #[error("the embedded dataplane has no generation yet")]
    NoGeneration,
    /// The interface is not one of the policy's.
    #[error("interface: {0:?} is not a known interface")]
    UnknownInterface(String),
    /// A frame does not parse.
    #[error("frames[{index}]: {error}")]
    Frame {
        /// Its position.
        index: usize,
        /// Why.
        error: capo_classifier::ParseError,
    },
    /// The agent runs another dataplane.
    #[error("no embedded dataplane: start capo-agent with --dataplane embedded")]
    NoEmbeddedDataplane,
}

impl Embedded {
    /// Takes the daemon's generation: `delta` applied incrementally when it can be,
    /// else the whole state rebuilt.
    pub fn commit(&mut self, state: &State, ids: &IdTable, delta: Option<&[Update]>) -> Committed {
        let t0 = Instant::now();
        let incremental = match delta {
            Some(updates) if self.cell.is_some() => {
                let mut last = None;
                let mut failed = None;
                for u in updates {
                    match self
                        .builder
                        .apply(&mut self.state, &mut self.ids, u.clone())
                    {
                        Ok(g) => last = Some(g),
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                match (failed, last) {
                    (None, Some(g)) => Some(g),
                    (None, None) => return Committed::new("unchanged"),
                    // Part of the delta applied: rebuild from the daemon's state rather
                    // than stay out of step with it.
                    (Some(e), _) => {
                        tracing::warn!(error = %e, "incremental update refused; rebuilding the classifier");
                        None
                    }
                }
            }
            _ => None,
        };
        let g = match incremental {
            Some(g) => g,
            None => {
                self.state = state.clone();
                self.ids = ids.clone();
                self.builder = Builder::new();
                self.builder.build(&self.state, &self.ids)
            }
        };
        let id = g.id();
        self.publish(g);
        self.policy_version += 1;
        let mut msg = format!(
            "classifier generation {id:?} in {}us",
            t0.elapsed().as_micros()
        );
        // The cell let go of the generation before: the builder's spare interface
        // list is free to bring forward (and what only it held is freed now, not
        // during the next change).
        self.builder.settle();
        if let Some(nic) = &self.nic {
            msg += "; ";
            let held = held_flows(&self.worker);
            msg += &nic_lock(nic).commit_sparing(state, ids, self.policy_version, held);
        }
        Committed::new(msg)
    }

    /// The NIC's plan, when there is a NIC.
    pub fn offload_plan(&self, state: &State, ids: &IdTable) -> Option<api::OffloadPlanReply> {
        self.nic.as_ref()?;
        self.plan_for(&Views::new(state, ids).with_compact_sets().numbered_rules())
    }

    /// The port NIC's per-rule counts and placements, as its thread last read them.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn set_port_nic_rules(
        &mut self,
        rules: std::collections::HashMap<u32, (u64, u64)>,
        placements: std::collections::HashMap<u32, i32>,
    ) {
        self.port_nic.rules = rules;
        self.port_nic.placements = placements;
    }

    /// The interface a packet from the wire to `dst` arrives at: a local workload's,
    /// or the host's; `None` when it is for neither (not policed here).
    fn wire_target(&self, dst: &std::net::IpAddr, host_addrs: &[std::net::IpAddr]) -> Option<u32> {
        match self.state.workload_owning(dst) {
            Some((_, w)) => self.ids.interface(&w.name),
            None if host_addrs.contains(dst) => self.ids.interface(self.ids.host_interface()),
            // Not for a local endpoint: not policed on this node.
            None => None,
        }
    }

    /// Classifies frames that arrived from the wire (a DPDK port), each at the
    /// endpoint its destination belongs to; `None` before the first generation.
    pub fn classify_wire(&mut self, frames: &[&[u8]]) -> Option<Vec<Verdict>> {
        self.classify_wire_behind_nic(frames, &[], &mut Vec::new())
    }

    /// [`Embedded::classify_wire`] behind the port's NIC: a frame whose `nic`
    /// verdict is `Some` keeps it, is counted at its endpoint as NIC-decided and,
    /// when allowed, leaves a flow as software's allows do (its later packets pass
    /// statefully); the others are classified, and their packets go to `seen` (the
    /// flows for the NIC's next plan). Frames past the end of `nic` are the
    /// software's.
    pub(crate) fn classify_wire_behind_nic(
        &mut self,
        frames: &[&[u8]],
        nic: &[Option<Verdict>],
        seen: &mut Vec<ParsedPacket>,
    ) -> Option<Vec<Verdict>> {
        let cell = self.cell.as_ref()?;
        let generation = cell.load_full();
        let now = self.now();
        let host_addrs = self.state.local_host_addrs();
        let mut out = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            let by_nic = nic.get(i).copied().flatten();
            let packet = match parse_ethernet(f) {
                Ok(p) => p,
                // Not IP (ARP, LLDP, …): Calico policy does not police it.
                Err(capo_classifier::ParseError::NotIp(_)) => {
                    out.push(by_nic.unwrap_or(Verdict::Allow));
                    continue;
                }
                // Malformed IP: it cannot be classified, so it does not pass.
                Err(_) => {
                    out.push(by_nic.unwrap_or(Verdict::Deny));
                    continue;
                }
            };
            // Frames for no local endpoint are policed nowhere, by NIC or software.
            let Some(sw_if_index) = self.wire_target(&packet.packet.dst, &host_addrs) else {
                out.push(by_nic.unwrap_or(Verdict::Allow));
                continue;
            };
            let input = Input {
                sw_if_index,
                dir: Direction::Ingress,
                packet,
                len: u32::try_from(f.len()).unwrap_or(u32::MAX),
            };
            out.push(match by_nic {
                Some(v) => {
                    self.port_nic.decided += 1;
                    self.nic_verdicts
                        .entry((sw_if_index, Direction::Ingress))
                        .or_default()
                        .add(v, f.len() as u64);
                    if v == Verdict::Allow {
                        self.worker.admit(&generation, &input, now);
                    }
                    v
                }
                None => {
                    seen.push(packet);
                    let v = self.worker.process_one(&generation, &input, now);
                    // TCP only: what the port's NIC learns (its plans keep other
                    // protocols' denies in software).
                    if v == Verdict::Deny
                        && packet.packet.protocol == capo_policy::Protocol::TCP
                        && self.wire_denied.len() < MAX_WIRE_DENIED
                    {
                        self.wire_denied.push(packet);
                    }
                    v
                }
            });
        }
        Some(out)
    }

    /// The wire packets software denied since the last take, and the daemon's
    /// generation of the policy that denied them.
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub(crate) fn take_wire_denied(&mut self) -> (u64, Vec<ParsedPacket>) {
        (
            self.daemon_generation,
            std::mem::take(&mut self.wire_denied),
        )
    }

    /// Classifies raw frames as arriving at `interface`/`dir`.
    pub(crate) fn inject(
        &mut self,
        interface: &str,
        dir: Direction,
        frames: &[Vec<u8>],
    ) -> Result<api::InjectReply, InjectError> {
        let Some(cell) = &self.cell else {
            return Err(InjectError::NoGeneration);
        };
        let Some(sw_if_index) = self.ids.interface(interface) else {
            return Err(InjectError::UnknownInterface(interface.to_string()));
        };
        let mut batch = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            match parse_ethernet(f) {
                Ok(packet) => batch.push(Input {
                    sw_if_index,
                    dir,
                    packet,
                    len: u32::try_from(f.len()).unwrap_or(u32::MAX),
                }),
                Err(error) => return Err(InjectError::Frame { index: i, error }),
            }
        }
        let generation = cell.load_full();
        let now = self.now();
        let mut reply = api::InjectReply::default();
        // Packets towards a workload come from the wire: the NIC sees them first.
        let on_wire = dir == Direction::Ingress
            && self.state.workloads().values().any(|w| w.name == interface);
        let mut replan = false;
        let Embedded {
            worker,
            scratch,
            nic,
            nic_verdicts,
            state,
            ids,
            policy_version,
            ..
        } = self;
        match nic.as_ref().filter(|_| on_wire) {
            Some(nic) => {
                let mut nic = nic_lock(nic);
                for input in &batch {
                    let mut by_software = false;
                    let (v, hw) = nic.receive(
                        &input.packet.packet,
                        input.packet.tcp_flags,
                        u64::from(input.len),
                        &mut || {
                            by_software = true;
                            worker.process_one(&generation, input, now)
                        },
                    );
                    if hw && v == Verdict::Allow {
                        // What the NIC allowed leaves a flow, as software's allows do:
                        // its replies and later packets pass statefully.
                        worker.admit(&generation, input, now);
                    }
                    if hw {
                        reply.nic_decided += 1;
                        nic_verdicts
                            .entry((sw_if_index, dir))
                            .or_default()
                            .add(v, u64::from(input.len));
                    }
                    if by_software {
                        let pkt = &input.packet.packet;
                        let flags = (pkt.protocol == capo_policy::Protocol::TCP)
                            .then_some(input.packet.tcp_flags);
                        replan |= nic.record(pkt, flags);
                        if v == Verdict::Deny && nic.may_learn(*policy_version) {
                            // Its conversation's next packets are dropped by the NIC
                            // (UDP and ICMP only sparing the flows held now).
                            let stateless = if pkt.protocol == capo_policy::Protocol::TCP {
                                StatelessDrops::Off
                            } else {
                                held_flows(worker)
                                    .map_or(StatelessDrops::Off, StatelessDrops::Sparing)
                            };
                            nic.learn_drop((state, ids, *policy_version), pkt, flags, &stateless);
                        }
                    }
                    scratch.push(v);
                }
            }
            None => {
                for chunk in batch.chunks(capo_classifier::MAX_BATCH) {
                    let mut out = Vec::new();
                    worker.process(&generation, chunk, now, &mut out);
                    scratch.extend(out);
                }
            }
        }
        for v in scratch.drain(..) {
            match v {
                Verdict::Allow => reply.allowed += 1,
                Verdict::Deny => reply.denied += 1,
            }
            reply.verdicts.push(
                match v {
                    Verdict::Allow => "allow",
                    Verdict::Deny => "deny",
                }
                .into(),
            );
        }
        // New flows are hit counters the planner has not seen: plan again so hot
        // flows move to the NIC.
        if replan {
            if let Some(nic) = nic.as_ref() {
                let held = held_flows(worker);
                let outcome = nic_lock(nic).commit_sparing(state, ids, *policy_version, held);
                tracing::info!(%outcome, "NIC plan refreshed from measured flows");
            }
        }
        Ok(reply)
    }
}

/// Most flows a plan is handed to spare: past this many, the plan keeps stateless
/// drops off rather than copy the table under the dataplane's lock.
const MAX_HELD_FLOWS: usize = 65_536;

/// The first packets of the flows `worker` holds that a stateless NIC drop could
/// meet (every protocol but TCP, whose drops are connection attempts only); `None`
/// past [`MAX_HELD_FLOWS`].
fn held_flows(worker: &Worker) -> Option<Vec<capo_policy::Packet>> {
    let held: Vec<capo_policy::Packet> = worker
        .flows()
        .first_packets()
        .filter(|p| p.protocol != capo_policy::Protocol::TCP)
        .take(MAX_HELD_FLOWS + 1)
        .copied()
        .collect();
    if held.len() > MAX_HELD_FLOWS {
        tracing::debug!(
            "over {MAX_HELD_FLOWS} UDP and ICMP flows held: stateless NIC drops off for this plan"
        );
        return None;
    }
    Some(held)
}

/// The embedded dataplane shared between the daemon (which hands it generations) and
/// its packet sources (a DPDK port's poller, the Inject API), so that packets never
/// wait for the daemon's lock: they wait only for a generation being compiled into
/// this dataplane.
pub type SharedEmbedded = Arc<Mutex<Embedded>>;

/// Locks the embedded dataplane; a panic elsewhere does not stop it.
pub fn lock_embedded(e: &SharedEmbedded) -> MutexGuard<'_, Embedded> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`Embedded`] as the daemon's sink, shared with the packet sources.
pub struct EmbeddedSink(SharedEmbedded);

impl EmbeddedSink {
    /// A sink over `embedded`.
    pub fn new(embedded: SharedEmbedded) -> Self {
        EmbeddedSink(embedded)
    }
}

impl PolicySink for EmbeddedSink {
    fn name(&self) -> &str {
        "embedded"
    }

    fn commit(
        &mut self,
        generation: u64,
        state: &State,
        ids: &IdTable,
        delta: Option<&[Update]>,
    ) -> Result<Committed, SinkError> {
        let mut e = lock_embedded(&self.0);
        let committed = e.commit(state, ids, delta);
        e.daemon_generation = generation;
        // Denied by the policy before: not this generation's to learn.
        e.wire_denied.clear();
        Ok(committed)
    }

    fn dataplane(&self) -> Dataplane {
        Dataplane::Embedded(Arc::clone(&self.0))
    }
}

/// The counters of a shared embedded dataplane; rules are numbered outside its lock
/// (packets and commits need it).
pub fn counters(e: &SharedEmbedded, state: &State, ids: &IdTable) -> api::CountersReply {
    let numbered = Views::new(state, ids).with_compact_sets().numbered_rules();
    let sources = lock_embedded(e).counter_sources(&numbered);
    sources.reply(&numbered, state, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::fixtures::web;
    use capo_policy::{Protocol, WorkloadEndpoint, WorkloadKey, L4};

    /// Endpoint deltas edit the builder's spare interface list in place: the
    /// commit settles it once the cell has let go of the generation before, so
    /// only the first changes copy the list.
    #[test]
    fn endpoint_deltas_settle_the_interface_list() {
        let (mut state, ids) = web();
        let mut e = Embedded::new();
        e.commit(&state, &ids, None);
        let (key, wep) = state
            .workloads()
            .iter()
            .next()
            .map(|(k, w)| (k.clone(), Arc::clone(w)))
            .unwrap();
        let mut other = WorkloadEndpoint::clone(&wep);
        other.name = "tun4".into();
        other.ipv4_nets = vec!["11.0.0.68/32".parse().unwrap()];
        let other_key = WorkloadKey {
            workload: "default/web2".into(),
            ..key
        };
        for n in 0..12 {
            let update = if n % 2 == 0 {
                Update::WorkloadUpdate(other_key.clone(), Arc::new(other.clone()))
            } else {
                Update::WorkloadRemove(other_key.clone())
            };
            state.apply(update.clone()).unwrap();
            let mut synced = ids.clone();
            synced.sync(&state);
            let done = e.commit(&state, &synced, Some(&[update]));
            assert!(
                done.detail.contains("classifier generation"),
                "{n}: {}",
                done.detail
            );
        }
        let changes = e.builder.interface_list_changes();
        assert_eq!(changes.on_spare + changes.copied, 12, "{changes:?}");
        assert!(changes.copied <= 2, "{changes:?}");
        assert!(changes.settled >= 9, "{changes:?}");
    }

    /// Packets the port's NIC decided count at their endpoint and in the totals as
    /// NIC-decided, and the rules carry the NIC's counts.
    #[test]
    fn port_nic_decisions_are_counted_at_their_endpoint() {
        let (state, ids) = web();
        let mut e = Embedded::new();
        e.commit(&state, &ids, None);
        let frame = |dport: u16, dst: &str| {
            capo_classifier::build::frame(
                &Packet {
                    src: "11.0.0.196".parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    protocol: Protocol::TCP,
                    l4: L4::Ports {
                        src: 40000,
                        dst: dport,
                    },
                },
                0x10,
            )
        };
        let (a, d, elsewhere) = (
            frame(80, "11.0.0.67"),
            frame(81, "11.0.0.67"),
            frame(80, "10.9.9.9"),
        );
        e.classify_wire_behind_nic(
            &[&a, &d, &elsewhere],
            &[
                Some(Verdict::Allow),
                Some(Verdict::Deny),
                Some(Verdict::Allow),
            ],
            &mut Vec::new(),
        );
        let numbered = Views::new(&state, &ids)
            .with_compact_sets()
            .numbered_rules();
        let rule = numbered.first().map(|r| r.id).unwrap();
        e.set_port_nic_rules(
            [(rule, (7, 700))].into_iter().collect(),
            [(rule, api::Placement::Nic as i32)].into_iter().collect(),
        );
        let reply = e.counter_sources(&numbered).reply(&numbered, &state, &ids);
        let tun3 = reply
            .interfaces
            .iter()
            .find(|i| i.interface == "tun3" && i.direction == "ingress")
            .unwrap();
        assert_eq!((tun3.allowed_packets, tun3.denied_packets), (1, 1));
        assert_eq!(tun3.allowed_bytes, a.len() as u64);
        let totals = reply.totals.unwrap();
        // The frame for no local endpoint is policed nowhere: not counted.
        assert_eq!(
            (totals.nic_decided, totals.packets, totals.software_decided),
            (2, 2, 0)
        );
        let r = reply.rules.iter().find(|r| r.rule_id == rule).unwrap();
        assert_eq!((r.nic_packets, r.nic_bytes), (7, 700));
        assert_eq!(r.placement, api::Placement::Nic as i32);
    }

    /// The simulated NIC drops UDP and ICMP that the policy refuses once software
    /// has seen them, but never a flow software holds: a DNS flow the first
    /// generation allowed keeps passing after the second refuses DNS, while another
    /// peer's DNS is dropped by the NIC.
    #[test]
    fn stateless_nic_drops_spare_the_flows_software_holds() {
        let (refusing, ids) = web();
        let mut allowing = refusing.clone();
        let mut dns = capo_policy::Rule::any(capo_policy::Action::Allow);
        dns.protocol = Some(Protocol::UDP);
        dns.dst.ports = vec![capo_policy::PortRange::single(53)];
        let key = refusing.policies().keys().next().unwrap().clone();
        let mut policy = capo_policy::Policy::clone(refusing.policies().get(&key).unwrap());
        policy.inbound.push(dns);
        allowing
            .apply(capo_policy::Update::PolicyUpdate(key, policy.into()))
            .unwrap();
        let frame = |src: &str, protocol: Protocol, l4: L4| {
            capo_classifier::build::frame(
                &Packet {
                    src: src.parse().unwrap(),
                    dst: "11.0.0.67".parse().unwrap(),
                    protocol,
                    l4,
                },
                0,
            )
        };
        let dns_from = |src: &str| {
            frame(
                src,
                Protocol::UDP,
                L4::Ports {
                    src: 40000,
                    dst: 53,
                },
            )
        };
        let ping = frame(
            "11.0.0.9",
            Protocol::ICMP,
            L4::Icmp {
                icmp_type: 8,
                code: 0,
            },
        );
        let mut e = Embedded::with_nic(crate::sinks::nic::SimulatedNic::new("mlx5", 64));
        let send = |e: &mut Embedded, f: &Vec<u8>| {
            let r = e
                .inject("tun3", Direction::Ingress, std::slice::from_ref(f))
                .unwrap();
            (r.allowed, r.nic_decided)
        };
        e.commit(&allowing, &ids, None);
        let held = dns_from("11.0.0.5");
        assert_eq!(send(&mut e, &held), (1, 0));
        // Refused by software, then dropped by the NIC (re-planned from the flow).
        assert_eq!(send(&mut e, &ping), (0, 0));
        assert_eq!(send(&mut e, &ping), (0, 1));
        e.commit(&refusing, &ids, None);
        let other = dns_from("11.0.0.6");
        assert_eq!(send(&mut e, &other), (0, 0));
        assert_eq!(send(&mut e, &other), (0, 1));
        // The flow the first generation allowed: software still holds it.
        assert_eq!(send(&mut e, &held), (1, 0));
        assert_eq!(send(&mut e, &ping), (0, 1));
    }

    /// A refused connection attempt that software denies teaches the NIC a drop:
    /// its retry and the conversation's next connection, in the same burst, are
    /// dropped by the NIC before any plan has counted them. A ping whose echo flow
    /// software holds is not learned. The offload view reports the learned drops.
    #[test]
    fn software_denies_teach_the_nic_drops_for_the_conversation() {
        let (state, ids) = web();
        let between = |src: &str, dst: &str, protocol: Protocol, l4: L4, flags: u8| {
            capo_classifier::build::frame(
                &Packet {
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    protocol,
                    l4,
                },
                flags,
            )
        };
        let frame = |src: &str, protocol: Protocol, l4: L4, flags: u8| {
            between(src, "11.0.0.67", protocol, l4, flags)
        };
        let icmp = |icmp_type| L4::Icmp { icmp_type, code: 0 };
        let syn = |sport| {
            frame(
                "11.0.0.9",
                Protocol::TCP,
                L4::Ports {
                    src: sport,
                    dst: 22,
                },
                0x02,
            )
        };
        let mut e = Embedded::with_nic(crate::sinks::nic::SimulatedNic::new("mlx5", 64));
        e.commit(&state, &ids, None);
        // Port 22 is refused: the first SYN by software, its retry and the next
        // connection (another source port) by the learned drop.
        let r = e
            .inject(
                "tun3",
                Direction::Ingress,
                &[syn(40000), syn(40000), syn(40001)],
            )
            .unwrap();
        assert_eq!((r.denied, r.nic_decided), (3, 2));
        let view = e.offload_plan(&state, &ids).unwrap();
        let learned = view.learned_drops.unwrap();
        assert_eq!((learned.learned_total, learned.room), (1, 4));
        // Allowed traffic is not learned, and still passes.
        let http = frame(
            "11.0.0.9",
            Protocol::TCP,
            L4::Ports {
                src: 40002,
                dst: 80,
            },
            0x02,
        );
        let r = e.inject("tun3", Direction::Ingress, &[http]).unwrap();
        assert_eq!(r.allowed, 1);
        // Under a policy that opens the workload's egress it pings the peer; the
        // echo flow stays when the next generation closes egress again. The peer's
        // ICMP to the workload is refused now, but a NIC drop of it could meet that
        // flow (the flow table relates echo packets by identifier): not learned.
        let mut open = state.clone();
        let key = open.policies().keys().next().unwrap().clone();
        let mut policy = capo_policy::Policy::clone(open.policies().get(&key).unwrap());
        policy
            .outbound
            .push(capo_policy::Rule::any(capo_policy::Action::Allow));
        open.apply(capo_policy::Update::PolicyUpdate(
            key.clone(),
            policy.into(),
        ))
        .unwrap();
        let (wkey, mut endpoint) = open
            .workloads()
            .iter()
            .next()
            .map(|(k, w)| (k.clone(), capo_policy::WorkloadEndpoint::clone(w)))
            .unwrap();
        endpoint.tiers[0].egress = vec![key];
        open.apply(capo_policy::Update::WorkloadUpdate(wkey, endpoint.into()))
            .unwrap();
        let mut open_ids = ids.clone();
        open_ids.sync(&open);
        e.commit(&open, &open_ids, None);
        let out = between("11.0.0.67", "11.0.0.9", Protocol::ICMP, icmp(8), 0);
        let r = e.inject("tun3", Direction::Egress, &[out]).unwrap();
        assert_eq!(r.allowed, 1);
        e.commit(&state, &ids, None);
        let before = e
            .offload_plan(&state, &ids)
            .unwrap()
            .learned_drops
            .unwrap()
            .learned_total;
        let ping = frame("11.0.0.9", Protocol::ICMP, icmp(13), 0);
        let r = e
            .inject("tun3", Direction::Ingress, &[ping.clone(), ping.clone()])
            .unwrap();
        assert_eq!((r.denied, r.nic_decided), (2, 0));
        let after = e
            .offload_plan(&state, &ids)
            .unwrap()
            .learned_drops
            .unwrap()
            .learned_total;
        assert_eq!(after, before);
        // From a peer the workload holds no flow with, it is learned.
        let stranger = frame("11.0.0.10", Protocol::ICMP, icmp(13), 0);
        let r = e
            .inject("tun3", Direction::Ingress, &[stranger.clone(), stranger])
            .unwrap();
        assert_eq!((r.denied, r.nic_decided), (2, 1));
    }

    /// What the port's NIC allowed leaves a flow, as in the inject path: the
    /// flow's next packet that the NIC leaves to software passes statefully, though
    /// the policy alone would deny it (TCP 81 is not allowed).
    #[test]
    fn port_nic_allows_leave_a_flow() {
        let (state, ids) = web();
        let mut e = Embedded::new();
        e.commit(&state, &ids, None);
        let frame = capo_classifier::build::frame(
            &Packet {
                src: "11.0.0.196".parse().unwrap(),
                dst: "11.0.0.67".parse().unwrap(),
                protocol: Protocol::TCP,
                l4: L4::Ports {
                    src: 40000,
                    dst: 81,
                },
            },
            0x10,
        );
        assert_eq!(e.classify_wire(&[&frame]), Some(vec![Verdict::Deny]));
        let mut seen = Vec::new();
        let nic = [Some(Verdict::Allow)];
        assert_eq!(
            e.classify_wire_behind_nic(&[&frame], &nic, &mut seen),
            Some(vec![Verdict::Allow])
        );
        assert!(seen.is_empty());
        assert_eq!(e.classify_wire(&[&frame]), Some(vec![Verdict::Allow]));
    }
}
