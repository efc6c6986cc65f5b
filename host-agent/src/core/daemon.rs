//! The agent's long-running side. [`Daemon`] holds the policy (one Felix
//! connection at a time, each a fresh sync; the last in-sync state is kept —
//! fail-static — when a connection ends), turns every change into a generation and
//! hands it to the dataplanes ([`PolicySink`]). It does no I/O: the inputs
//! (`felix_stream`, `felix_fds`, `felix_socket`, `manifest_poll`) lock it per frame,
//! so the gRPC API can read it between frames.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use capo_policy::{Direction, IdTable, Packet, State, Update};
use capo_proto::capo::agent::v1 as api;

use capo_felix::frame::{Frame, Schema, DEFAULT_MAX_FRAME_LEN};

use crate::sinks::embedded::{InjectError, SharedEmbedded};
use crate::sinks::vpp::VppHandle;
use crate::sinks::{Dataplane, PolicySink};
use capo_felix::session::{Event, Phase, Session, SessionError};

/// How often a long snapshot logs progress, in frames.
const PROGRESS_EVERY: u64 = 10_000;

/// How many commits the history keeps.
const HISTORY: usize = 64;

/// Settings of the Felix side of the agent.
#[derive(Debug, Clone)]
pub struct FelixOptions {
    /// Force a schema instead of detecting it from `CalicoVersion`.
    pub schema: Option<Schema>,
    /// Frame length cap.
    pub max_frame_len: u64,
    /// Record each connection's frames to this file (truncated per connection).
    pub record: Option<PathBuf>,
    /// Interval of `ProcessStatusUpdate` reports.
    pub status_interval: Duration,
    /// On the Felix socket: how long a frame may take once its first byte arrived
    /// (a peer silent between frames is fine; one that stops mid-frame is dropped).
    pub stall_timeout: Duration,
}

/// How often Felix expects a status report (felix-protocol §2.2: doc.go says 10 s).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Default [`FelixOptions::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for FelixOptions {
    fn default() -> Self {
        FelixOptions {
            schema: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            record: None,
            status_interval: STATUS_INTERVAL,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Where policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing connected yet.
    None,
    /// Felix through the felix-api-proxy socket.
    FelixSocket,
    /// Felix's fds 3 and 4.
    FelixFds,
    /// Manifests on disk.
    Manifests,
}

impl Source {
    /// The name the API reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::None => "none",
            Source::FelixSocket => "felix-socket",
            Source::FelixFds => "felix-fds",
            Source::Manifests => "manifests",
        }
    }
}

/// One commit, as the Generations API reports it.
#[derive(Debug, Clone)]
pub struct CommitRecord {
    /// The generation id.
    pub generation: u64,
    /// When it started.
    pub started: SystemTime,
    /// How long it took, sinks included.
    pub duration: Duration,
    /// `committed`, or `partial` when a sink refused it.
    pub outcome: &'static str,
    /// What each sink said.
    pub detail: String,
}

/// Policy state across connections, and the dataplanes that follow it.
pub struct Daemon {
    opts: FelixOptions,
    ids: IdTable,
    live: Option<State>,
    session: Option<Session>,
    source: Source,
    generation: u64,
    history: VecDeque<CommitRecord>,
    sinks: Vec<Box<dyn PolicySink>>,
    started: Instant,
    commit_latency: prometheus_client::metrics::histogram::Histogram,
    /// The policy in force as readers last asked for it, while one still holds it
    /// (see [`Daemon::snapshot`]).
    snapshot: Option<(u64, std::sync::Weak<State>, std::sync::Weak<IdTable>)>,
    /// The DPDK port's probe (`--nic dpdk:PORT`), for the offload view.
    port: Option<PortReport>,
}

/// What the offload view says of the agent's DPDK port.
#[derive(Debug, Clone, Default)]
pub struct PortReport {
    /// `dpdk:PORT (driver D)`.
    pub nic: String,
    /// The capability probe's findings.
    pub probe: Vec<api::ProbeFinding>,
    /// Why every rule is in software (empty once a plan is committed).
    pub software_only_reason: String,
    /// The plan committed to the port, once there is one.
    pub plan: Option<api::OffloadPlanReply>,
}

impl PortReport {
    /// The offload reply for this port: its plan, or every rule in software and
    /// why.
    pub fn reply(&self, generation: u64) -> api::OffloadPlanReply {
        let base = self.plan.clone().unwrap_or(api::OffloadPlanReply {
            offload_available: false,
            ..Default::default()
        });
        api::OffloadPlanReply {
            generation,
            nic: self.nic.clone(),
            probe: self.probe.clone(),
            software_only_reason: self.software_only_reason.clone(),
            ..base
        }
    }
}

/// The policy in force at one generation, shared with readers (API, metrics) that
/// render it without holding the daemon's lock.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    /// The generation.
    pub generation: u64,
    /// Its state.
    pub state: Arc<State>,
    /// Its ids.
    pub ids: Arc<IdTable>,
}

/// Buckets of the commit latency histogram, in seconds (10 µs to ~10 s).
fn commit_latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 11),
    )
}

/// The daemon shared between the policy source and the API.
pub type SharedDaemon = Arc<Mutex<Daemon>>;

/// Locks the daemon; a panic in another holder does not stop the agent.
pub fn lock(d: &SharedDaemon) -> MutexGuard<'_, Daemon> {
    d.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Daemon {
    /// A daemon with no state yet; `ids` carries interface presets.
    pub fn new(opts: FelixOptions, ids: IdTable) -> Self {
        Daemon {
            opts,
            ids,
            live: None,
            session: None,
            source: Source::None,
            generation: 0,
            history: VecDeque::new(),
            sinks: Vec::new(),
            started: Instant::now(),
            commit_latency: commit_latency_histogram(),
            snapshot: None,
            port: None,
        }
    }

    /// Adds a dataplane; it receives the current state at once if there is one.
    pub fn add_sink(&mut self, mut sink: Box<dyn PolicySink>) {
        if let Some(state) = self.state() {
            if let Err(e) = sink.commit(self.generation, state, &self.ids, None) {
                tracing::error!(sink = sink.name(), error = %e, "dataplane refused the current generation");
            }
        }
        self.sinks.push(sink);
    }

    /// Felix options.
    pub(crate) fn options(&self) -> &FelixOptions {
        &self.opts
    }

    /// The policy in force: the current connection's once in sync, else the last
    /// in-sync state (fail-static), else none.
    pub(crate) fn state(&self) -> Option<&State> {
        in_force(self.session.as_ref(), self.live.as_ref())
    }

    /// The policy in force as a snapshot readers can keep: copied at most once per
    /// generation, and only when a reader asks, so the update path never copies.
    /// The copy is not kept once no reader holds it.
    pub(crate) fn snapshot(&mut self) -> Option<PolicySnapshot> {
        if let Some((generation, state, ids)) = &self.snapshot {
            if *generation == self.generation {
                if let (Some(state), Some(ids)) = (state.upgrade(), ids.upgrade()) {
                    return Some(PolicySnapshot {
                        generation: *generation,
                        state,
                        ids,
                    });
                }
            }
        }
        let snapshot = PolicySnapshot {
            generation: self.generation,
            state: Arc::new(self.state()?.clone()),
            ids: Arc::new(self.ids.clone()),
        };
        self.snapshot = Some((
            snapshot.generation,
            Arc::downgrade(&snapshot.state),
            Arc::downgrade(&snapshot.ids),
        ));
        Some(snapshot)
    }

    /// Ids of the policy in force.
    pub fn ids(&self) -> &IdTable {
        &self.ids
    }

    /// Records the DPDK port's probe for the offload view.
    pub fn set_port_report(&mut self, report: PortReport) {
        self.port = Some(report);
    }

    /// The DPDK port's probe, when the agent has a port.
    pub fn port_report(&self) -> Option<PortReport> {
        self.port.clone()
    }

    /// The active generation (0: none yet).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Commits, newest first.
    pub(crate) fn history(&self) -> impl Iterator<Item = &CommitRecord> {
        self.history.iter()
    }

    /// Where policy comes from.
    pub(crate) fn source(&self) -> Source {
        self.source
    }

    /// What the policy in force asks for that capo does not enforce.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.session
            .as_ref()
            .map(|s| s.warnings().cloned().collect())
            .unwrap_or_default()
    }

    /// Ready to enforce: a generation is in force and every dataplane took the
    /// newest commit (a refused commit keeps the agent not ready until one succeeds).
    pub(crate) fn ready(&self) -> bool {
        self.generation > 0
            && self
                .history
                .front()
                .is_some_and(|c| c.outcome == "committed")
    }

    /// Whether the current source is in sync.
    pub(crate) fn in_sync(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.phase() == Phase::InSync)
    }

    /// Updates received but not committed: the snapshot being built before InSync.
    pub(crate) fn pending_updates(&self) -> u64 {
        match &self.session {
            Some(s) if s.phase() != Phase::InSync => s.stats().changed,
            _ => 0,
        }
    }

    /// The dataplanes behind the sinks.
    fn dataplanes(&self) -> impl Iterator<Item = Dataplane> + '_ {
        self.sinks.iter().map(|s| s.dataplane())
    }

    /// The VPP plugin's handle, when the software dataplane is VPP.
    pub(crate) fn vpp(&self) -> Option<VppHandle> {
        self.dataplanes().find_map(|d| match d {
            Dataplane::Vpp(h) => Some(h),
            Dataplane::Embedded(_) => None,
        })
    }

    /// The embedded dataplane, when it is shared with packet sources.
    pub(crate) fn embedded(&self) -> Option<SharedEmbedded> {
        self.dataplanes().find_map(|d| match d {
            Dataplane::Embedded(e) => Some(e),
            Dataplane::Vpp(_) => None,
        })
    }

    /// Counters of the classifying dataplane, if one is attached.
    pub fn counters(&self) -> Option<api::CountersReply> {
        let state = self.state()?;
        self.dataplanes().find_map(|d| d.counters(state, &self.ids))
    }

    /// The offload plan; without a NIC every rule is in software.
    pub fn offload_plan(&self) -> api::OffloadPlanReply {
        let Some(state) = self.state() else {
            return api::OffloadPlanReply::default();
        };
        if let Some(plan) = self
            .dataplanes()
            .find_map(|d| d.offload_plan(state, &self.ids))
        {
            return api::OffloadPlanReply {
                generation: self.generation,
                ..plan
            };
        }
        match &self.port {
            Some(port) => port.reply(self.generation),
            None => api::OffloadPlanReply {
                generation: self.generation,
                nic: "none".into(),
                offload_available: false,
                ..Default::default()
            },
        }
    }

    /// Where a packet would be decided: `nic` when a NIC says so, else `software`.
    pub fn decided_in(&self, interface: &str, dir: Direction, pkt: &Packet) -> &'static str {
        self.dataplanes()
            .find_map(|d| d.decided_in(interface, dir, pkt))
            .unwrap_or("software")
    }

    /// Classifies frames from the wire; without a classifying dataplane they are
    /// denied (fail closed).
    pub fn classify_wire(&self, frames: &[&[u8]]) -> Vec<capo_policy::Verdict> {
        self.dataplanes()
            .find_map(|d| d.classify_wire(frames))
            .unwrap_or_else(|| vec![capo_policy::Verdict::Deny; frames.len()])
    }

    /// Hands raw frames to the embedded dataplane.
    pub(crate) fn inject(
        &self,
        interface: &str,
        dir: Direction,
        frames: &[Vec<u8>],
    ) -> Result<api::InjectReply, InjectError> {
        self.dataplanes()
            .find_map(|d| d.inject(interface, dir, frames))
            .unwrap_or(Err(InjectError::NoEmbeddedDataplane))
    }

    /// Commit latency, for metrics.
    pub(crate) fn commit_latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.commit_latency
    }

    /// How long the agent has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts a fresh sync from `source`.
    pub(crate) fn begin(&mut self, source: Source) {
        self.end();
        self.source = source;
        self.session = Some(Session::new(self.opts.schema));
    }

    /// Ends the current connection, keeping its state if it was in sync.
    pub(crate) fn end(&mut self) {
        if let Some(s) = self.session.take() {
            if s.phase() == Phase::InSync {
                self.live = Some(s.into_state());
            }
        }
    }

    /// Handles one frame of the current connection; commits a generation when the
    /// policy in force changed.
    pub(crate) fn on_frame(&mut self, frame: &Frame) -> Result<Event, SessionError> {
        if self.session.is_none() {
            self.begin(Source::None);
        }
        let session = self
            .session
            .as_mut()
            .unwrap_or_else(|| unreachable!("begin() sets the session"));
        let event = session.on_frame(frame)?;
        for w in session.take_new_warnings() {
            tracing::warn!("{w}");
        }
        match (&event, session.phase()) {
            (Event::Reconcile, _) => {
                let _ = session.take_applied();
                let st = session.state();
                tracing::info!(
                    frames = frame.index + 1,
                    schema = %session.schema(),
                    ipsets = st.ipsets().len(),
                    policies = st.policies().len(),
                    profiles = st.profiles().len(),
                    workloads = st.workloads().len(),
                    host_endpoints = st.host_endpoints().len(),
                    "in sync with Felix: snapshot reconciled"
                );
                self.commit(None);
            }
            (Event::Changed, Phase::InSync) => {
                let delta = session.take_applied();
                self.commit(Some(delta));
            }
            (Event::Ignored(what), _) => {
                tracing::debug!(frame = frame.index, payload = what, "ignored payload");
            }
            (_, Phase::Syncing) if (frame.index + 1) % PROGRESS_EVERY == 0 => {
                let st = session.state();
                tracing::info!(
                    frames = frame.index + 1,
                    ipsets = st.ipsets().len(),
                    members = st.ipsets().values().map(|s| s.len()).sum::<usize>(),
                    policies = st.policies().len(),
                    workloads = st.workloads().len(),
                    "receiving Felix snapshot"
                );
            }
            _ => {}
        }
        Ok(event)
    }

    fn commit(&mut self, delta: Option<Vec<Update>>) {
        let started = SystemTime::now();
        let t0 = Instant::now();
        let Some(state) = self.session.as_ref().map(Session::state) else {
            return;
        };
        // A member change gives no object a new id: skip the sync on the hot path.
        let members_only = delta
            .as_deref()
            .is_some_and(|d| d.iter().all(|u| matches!(u, Update::IpSetDelta { .. })));
        if !members_only {
            self.ids.sync(state);
        }
        self.generation += 1;
        let mut outcome = "committed";
        let mut detail = Vec::new();
        for sink in &mut self.sinks {
            match sink.commit(self.generation, state, &self.ids, delta.as_deref()) {
                Ok(done) => detail.push(format!("{}: {}", sink.name(), done.detail)),
                Err(e) => {
                    tracing::error!(sink = sink.name(), generation = self.generation, error = %e, "dataplane refused the generation");
                    outcome = "partial";
                    detail.push(format!("{}: refused: {e}", sink.name()));
                }
            }
        }
        let duration = t0.elapsed();
        self.commit_latency.observe(duration.as_secs_f64());
        tracing::debug!(
            generation = self.generation,
            us = duration.as_micros() as u64,
            "generation committed"
        );
        self.history.push_front(CommitRecord {
            generation: self.generation,
            started,
            duration,
            outcome,
            detail: detail.join("; "),
        });
        self.history.truncate(HISTORY);
    }
}

/// The policy in force: the connection's once it is in sync, else the last
/// in-sync state (a free function so callers can borrow the sinks beside it).
fn in_force<'a>(session: Option<&'a Session>, live: Option<&'a State>) -> Option<&'a State> {
    match session {
        Some(s) if s.phase() == Phase::InSync => Some(s.state()),
        _ => live,
    }
}
