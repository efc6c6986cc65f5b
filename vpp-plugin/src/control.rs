//! The control channel: the agent pushes generations over a unix socket; the plugin
//! validates each with the agent's own code (`capo_felix::convert` and the policy core's
//! `State::apply`), compiles it beside the active one with `capo_classifier::Builder`,
//! and flips to it whole or not at all.
//!
//! [`ControlCore`] is sans-IO: it turns one `ToPlugin` into one `FromPlugin`, and reaches
//! VPP only through [`VppContext`] (resolve interface names; commit = enable features and
//! publish under the barrier). [`serve`] is the thin I/O shell: Felix's framing
//! (8-byte LE length + protobuf) over a `UnixStream`, one agent at a time.
//!
//! # Applying a delta
//!
//! 1. Validate: every update of the delta is converted and applied to a copy of the
//!    active state (the views' copy of the next generation). Any error refuses the
//!    delta here, before the compiler has seen any of it.
//! 2. Resolve the endpoint interfaces to `sw_if_index`es.
//! 3. Compile incrementally: the validated updates go one by one through
//!    `Builder::apply`, on the builder's own copy of the state, which recompiles only
//!    what each update touches (an IP-set member change touches index entries only).
//!    When an already known interface changes its VPP index, the classifier's
//!    interface tables are redrawn with no program compiled (`Builder::reindex`).
//! 4. Commit under VPP's barrier. If VPP refuses, the builder is rebuilt from the
//!    active generation, so it always mirrors what workers run.
//!
//! The views' copy in step 1 is not a clone of the whole state: the plugin keeps the
//! snapshots it published, and once a retired generation's snapshot is free (no worker
//! and no cell holds it) it is brought forward by replaying the deltas since, which
//! costs what the deltas changed. A full clone happens only when no retired snapshot is
//! free yet, and for full generations (counted in `show capo generations`).
//!
//! Fail-static: when the agent goes away, nothing is torn down; the last generation
//! keeps enforcing and `show capo generations` says so.
//!
//! # Agent epochs
//!
//! Each run of the agent says its epoch in `Hello` (its start time): generations are
//! ordered by `(epoch, id)`. A restarted agent numbers from 1 again, and its first full
//! generation still replaces what an older run pushed; an older run that reconnects
//! can never replace a newer run's policy.
//!
//! # Binding again
//!
//! Endpoints are bound to VPP interfaces by [`crate::binding::bind`]. VPP's interfaces
//! come and go under the plugin (pods created after a push, a pod interface deleted
//! and created again, VPP clearing its features with it): [`ControlCore::rebind`],
//! run whenever VPP adds or deletes an interface and periodically, binds the active
//! generation again, re-enables features VPP dropped, and republishes the same
//! generation id with the new bindings.
//!
//! # Chunks
//!
//! A generation larger than a frame (five IP sets of a million members are ~80 MB)
//! arrives in chunks of the same id (`more` set on all but the last). They are held,
//! counted against `max-generation-mb`, and applied together when the last arrives: a
//! chunked generation is applied whole or not at all, like any other. A new `Hello`, a
//! disconnect, or a chunk of another generation drops what is held.
//!
//! Invariants:
//! - a refused generation changes nothing (the previous one stays active);
//! - a delta applies only on top of the active generation (`base_id`) of the same
//!   agent epoch;
//! - `(epoch, id)` strictly increases; a full generation must end with `InSync`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufReader};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use capo_classifier::Builder;
use capo_felix::convert::{convert, Converted};
use capo_felix::frame::{FrameError, FrameReader, FrameWriter};
use capo_policy::{IdTable, State, Update};
use capo_proto::capo::dataplane::v1::{
    from_plugin, to_plugin, Applied, ChunkReceived, FlowSamples, FromPlugin,
    Generation as PbGeneration, HelloReply, NicShare, NicShareApplied, ToPlugin,
};
use prost::Message;

use crate::binding::{self, Bindings, ExplicitBinding, VppInterface};
use crate::config::PluginConfig;
use crate::generation::{
    sorted_unique, ChangedInterfaces, Generation, GenerationCell, Iface, IfaceKind, IndexChanges,
    InterfacesSeen, Snapshot, SwIfIndex, UNRESOLVED,
};
use crate::share::FlowLayerRule;
use capo_proto::capo::agent::v1 as api;
use capo_proto::capo::agent::v1::CountersReply;
use capo_proto::capo::dataplane::v1::{BoundInterface, ShowReply, ShowRequest};

/// The plugin's version, as reported in `HelloReply`.
pub const PLUGIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Generations kept in the status history.
const HISTORY: usize = 8;

/// Published snapshots kept for reuse (active, previous, and retired ones).
const SNAPSHOTS: usize = 4;

/// Copies of a generation's state made in the background after it was published
/// without a delta log (full, or bound again): the deltas after it find no retired
/// snapshot free until the cell lets go of two generations, and copying a
/// million-member state in their path takes 0.1–0.4 s.
const SPARES: usize = 2;

/// Room left in a frame for the envelope around a chunk's updates (ids, flags, tags).
const CHUNK_ENVELOPE_BYTES: u64 = 64 * 1024;

/// Caps on what the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLimits {
    /// The largest frame read (one message, one chunk).
    pub max_frame_bytes: u64,
    /// The largest generation held, over all its chunks (encoded bytes).
    pub max_generation_bytes: u64,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits {
            max_frame_bytes: crate::config::DEFAULT_MAX_FRAME_BYTES,
            max_generation_bytes: crate::config::DEFAULT_MAX_GENERATION_BYTES,
        }
    }
}

impl ChannelLimits {
    /// The largest chunk the agent may send (told in `HelloReply`).
    pub fn max_chunk_bytes(&self) -> u64 {
        self.max_frame_bytes
            .saturating_sub(CHUNK_ENVELOPE_BYTES)
            .max(1)
    }
}

/// The chunks of one generation received so far.
struct Assembly {
    id: u64,
    full: bool,
    base_id: u64,
    updates: Vec<capo_proto::felix::v3_32::ToDataplane>,
    chunks: u64,
    bytes: u64,
}

/// VPP could not do what the control path asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The main thread did not answer in time (VPP busy or shutting down).
    #[error("VPP main thread did not answer: {0}")]
    Unavailable(String),
    /// VPP has no interface of this index (any more).
    #[error("VPP has no interface {0}")]
    NoInterface(u32),
    /// Enabling or disabling a feature failed.
    #[error("feature {arc} on sw_if_index {sw_if_index}: VPP error {code}")]
    Feature {
        /// The feature arc.
        arc: &'static str,
        /// The interface.
        sw_if_index: u32,
        /// VPP's `vnet_api_error` code.
        code: i32,
    },
}

/// One flip to a new generation.
#[derive(Debug)]
pub struct Commit {
    /// Where workers read generations from.
    pub cell: Arc<GenerationCell>,
    /// The new generation.
    pub next: Arc<Generation>,
    /// Interfaces that gain the capo features.
    pub enable: Vec<SwIfIndex>,
    /// Interfaces that lose them.
    pub disable: Vec<SwIfIndex>,
}

/// The endpoints `state` polices whose interface names `keep` takes, with their kinds.
fn policed_where<'s>(
    state: &'s State,
    host_interface: &'s str,
    keep: impl Fn(&str) -> bool,
) -> Vec<(&'s str, IfaceKind)> {
    crate::generation::policed(state, host_interface)
        .filter(|p| keep(p.name))
        .map(|p| (p.name, p.kind.to_owned()))
        .collect()
}

/// The endpoints of `state` whose names are in `only`, by walking them all.
fn policed_named<'s>(
    state: &'s State,
    host_interface: &'s str,
    only: &HashSet<String>,
) -> Vec<(&'s str, IfaceKind)> {
    // A handful of names: compared in turn, not hashed for each of the endpoints.
    let few = only.len() <= crate::binding::FEW_TO_SCAN;
    policed_where(state, host_interface, |name| {
        if few {
            only.iter().any(|o| o == name)
        } else {
            only.contains(name)
        }
    })
}

/// The interface names of `policed`, owned.
fn names_of(policed: Vec<(&str, IfaceKind)>) -> Vec<String> {
    policed.into_iter().map(|(n, _)| n.to_string()).collect()
}

/// The items of sorted `a` that sorted `b` lacks, in one merge pass.
fn sorted_difference(a: &[SwIfIndex], b: &[SwIfIndex]) -> Vec<SwIfIndex> {
    let mut out = Vec::new();
    let mut rest = b.iter().peekable();
    for x in a {
        while rest.next_if(|y| *y < x).is_some() {}
        if rest.peek() != Some(&x) {
            out.push(*x);
        }
    }
    out
}

/// How the indexes `next` polices differ from those `before` does, comparing the
/// two tables whole ([`Generation::index_changes_from`] for a table an endpoint
/// delta made).
pub(crate) fn index_changes(before: Option<&Generation>, next: &Generation) -> IndexChanges {
    // Sorted lists, not tree sets: a tree allocates a node per few entries. The
    // generations keep their indexes in order, so neither list is sorted here.
    let was: Vec<SwIfIndex> = before.map_or_else(Vec::new, |b| b.policed_indexes().collect());
    let now: Vec<SwIfIndex> = next.policed_indexes().collect();
    // An index policed before and after for different endpoints. An entry carried
    // over is the very same one.
    let reused = before.map_or_else(Vec::new, |b| {
        sorted_unique(
            next.interfaces()
                .iter()
                .filter(|i| {
                    b.interface(i.sw_if_index).is_some_and(|old| {
                        !std::ptr::eq(old, &***i) && (old.name != i.name || old.kind != i.kind)
                    })
                })
                .map(|i| i.sw_if_index)
                .collect(),
        )
    });
    IndexChanges {
        added: sorted_difference(&now, &was),
        removed: sorted_difference(&was, &now),
        reused,
    }
}

/// What the control path needs from VPP.
pub trait VppContext: Send {
    /// Every software interface VPP has.
    ///
    /// # Errors
    ///
    /// [`ContextError::Unavailable`] when VPP cannot be asked.
    fn interfaces(&mut self) -> Result<Vec<VppInterface>, ContextError>;

    /// The interfaces VPP has among these names and indexes (more are allowed):
    /// what binding a few endpoints reads ([`binding::lookups`]), looked up rather
    /// than listing every interface VPP has. It may miss a name VPP has (its name
    /// parser does not read every name the listing gives); the caller lists every
    /// interface for an endpoint left unbound.
    ///
    /// # Errors
    ///
    /// [`ContextError::Unavailable`] when VPP cannot be asked.
    fn interfaces_among(
        &mut self,
        names: &[String],
        indexes: &[SwIfIndex],
    ) -> Result<Vec<VppInterface>, ContextError>;

    /// Those of `policed` on which the capo features are not enabled (VPP clears an
    /// interface's features when it deletes it).
    ///
    /// # Errors
    ///
    /// [`ContextError::Unavailable`] when VPP cannot be asked.
    fn without_features(&mut self, policed: &[SwIfIndex]) -> Result<Vec<SwIfIndex>, ContextError>;

    /// Enables and disables the features and publishes `next`, all under VPP's worker
    /// barrier, so no worker sees a half-done flip.
    ///
    /// # Errors
    ///
    /// [`ContextError`] if a feature cannot be changed; then nothing was published.
    /// Otherwise the generation the cell let go of ([`GenerationCell::publish`]),
    /// which the core frees after its reply.
    fn commit(&mut self, commit: Commit) -> Result<Option<Arc<Generation>>, ContextError>;

    /// Installs a NIC share (planned on `generation`) through VPP's flow layer on the
    /// hardware under the `policed` interfaces, under VPP's worker barrier, replacing
    /// the last share ([`crate::share::ShareState::apply`]); what each hardware
    /// interface took.
    ///
    /// # Errors
    ///
    /// [`ContextError::Unavailable`] when VPP cannot be asked.
    fn install_share(
        &mut self,
        generation: u64,
        rules: Vec<FlowLayerRule>,
        targets: ShareTargets,
    ) -> Result<ShareOutcome, ContextError>;
}

/// Where a NIC share goes: the hardware under these interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareTargets {
    /// The interfaces the active generation polices.
    pub policed: Vec<SwIfIndex>,
    /// Uplinks, by VPP's name.
    pub uplinks: Vec<String>,
}

/// What installing a NIC share did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareOutcome {
    /// Per hardware interface.
    pub interfaces: Vec<api::FlowLayerInterface>,
    /// Uplinks VPP has no interface of.
    pub unknown_uplinks: Vec<String>,
}

/// The agent connection, as `show capo generations` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// No agent has connected since the plugin started.
    Never,
    /// Connected (after `Hello`).
    Connected {
        /// Unix seconds.
        since: u64,
        /// The agent's version string.
        version: String,
    },
    /// The agent went away; the last generation stays (fail-static).
    Disconnected {
        /// Unix seconds.
        since: u64,
    },
}

/// One generation the agent pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRecord {
    /// Generation id.
    pub id: u64,
    /// Full or delta (with its base).
    pub full: bool,
    /// The delta's base.
    pub base_id: u64,
    /// Unix seconds.
    pub at: u64,
    /// Why it was refused (`None`: applied).
    pub error: Option<String>,
    /// Endpoint interfaces VPP does not have.
    pub unknown_interfaces: Vec<String>,
}

/// The last time the plugin bound the active generation again on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebindRecord {
    /// Unix seconds.
    pub at: u64,
    /// What changed (`tun3 -> sw_if_index 5`, `tun3 unbound`, `features restored on 5`).
    pub changes: Vec<String>,
    /// Why it failed, if it did (the previous bindings stay).
    pub error: Option<String>,
}

/// The control path's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The agent connection.
    pub agent: AgentState,
    /// Recent generations, newest last.
    pub history: VecDeque<AppliedRecord>,
    /// Generations applied since start.
    pub applied: u64,
    /// Generations refused since start.
    pub refused: u64,
    /// The control socket.
    pub socket: String,
    /// How generations were compiled.
    pub compiled: CompileStats,
    /// The agent epoch of the active generation (0: none).
    pub active_epoch: u64,
    /// Times the active generation was bound again (VPP's interfaces changed).
    pub rebinds: u64,
    /// The last of them.
    pub last_rebind: Option<RebindRecord>,
    /// How deltas found the VPP interfaces of the endpoints they changed.
    pub delta_binds: DeltaBinds,
}

/// How deltas that change endpoints bound them (`show capo generations`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaBinds {
    /// Every changed endpoint bound through VPP's look-ups by name and index.
    pub looked_up: u64,
    /// One left unbound by them, bound against the list of every interface.
    pub listed: u64,
    /// Its endpoints found, and its table made, from the entries of the names it
    /// changes alone (not a walk over every endpoint).
    pub planned: u64,
}

/// How generations were compiled (`show capo generations`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Generations compiled from scratch (full generations, recovery after a refused
    /// commit).
    pub full: u64,
    /// Deltas compiled incrementally (`Builder::apply`).
    pub incremental: u64,
    /// Generations whose interfaces moved to other VPP indexes, published with their
    /// interface tables redrawn and no program compiled for the move
    /// (`Builder::reindex`); a delta that also changed policy counts as incremental
    /// too.
    pub reindexed: u64,
    /// Whole-state copies made (full generations, or no retired snapshot free).
    pub state_copies: u64,
    /// Views' copies brought forward by replaying deltas instead.
    pub replayed: u64,
    /// Of those, copies made in the background after a full generation.
    pub background_copies: u64,
    /// Of those, copies brought forward after the previous reply
    /// ([`ControlCore::after_reply`]), before the delta came.
    pub ready_after_reply: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            agent: AgentState::Never,
            history: VecDeque::new(),
            applied: 0,
            refused: 0,
            socket: String::new(),
            compiled: CompileStats::default(),
            active_epoch: 0,
            rebinds: 0,
            last_rebind: None,
            delta_binds: DeltaBinds::default(),
        }
    }
}

/// Shared status (read by the CLI without touching the control path).
pub type SharedStatus = Arc<Mutex<Status>>;

fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, Status> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a generation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedError {
    /// `(epoch, id)` must increase.
    #[error("generation {id} of agent epoch {epoch} is not newer than the active generation {active} of epoch {active_epoch}")]
    NotNewer {
        /// The pushed id.
        id: u64,
        /// The pushing agent's epoch.
        epoch: u64,
        /// The active id.
        active: u64,
        /// The active generation's epoch.
        active_epoch: u64,
    },
    /// The delta's base is not the active generation (of this agent epoch).
    #[error("delta on generation {base} but the active generation is {active} (0: none, or another agent epoch's); send a full generation")]
    WrongBase {
        /// The delta's base.
        base: u64,
        /// The active id.
        active: u64,
    },
    /// An update could not be converted.
    #[error("updates[{index}]: {source}")]
    Convert {
        /// Index in `updates`.
        index: usize,
        /// What is wrong.
        source: capo_felix::convert::ConvertError,
    },
    /// An update contradicts the state.
    #[error("updates[{index}]: {source}")]
    Violation {
        /// Index in `updates`.
        index: usize,
        /// What is inconsistent.
        source: capo_policy::StateError,
    },
    /// A full snapshot without `InSync`.
    #[error("a full generation must end with InSync")]
    NotInSync,
    /// More bytes than `max-generation-mb` allows (nothing of it was applied).
    #[error("generation {id} is larger than this plugin holds: {bytes} bytes received, the cap is {cap} bytes (startup.conf capo {{ max-generation-mb }})")]
    TooLarge {
        /// The generation.
        id: u64,
        /// Bytes received when the cap was passed.
        bytes: u64,
        /// The cap.
        cap: u64,
    },
    /// The compiler refused an update the validation accepted (a bug); the compiler
    /// was rebuilt from the active generation.
    #[error("updates[{index}]: refused by the compiler after validation: {source}")]
    Compile {
        /// Index among the delta's updates.
        index: usize,
        /// What it said.
        source: capo_policy::StateError,
    },
    /// VPP could not apply it.
    #[error(transparent)]
    Vpp(#[from] ContextError),
}

/// The compiler's side of the active generation: the builder and the state and ids it
/// compiled, always equal to the active generation's (`None` before the first one).
struct Compiled {
    builder: Builder,
    state: State,
    ids: IdTable,
}

/// Published snapshots and the deltas between them, for bringing a retired snapshot
/// forward instead of cloning the active one.
#[derive(Default)]
struct SnapshotPool {
    /// `(generation id, snapshot)`, oldest first.
    held: VecDeque<(u64, Arc<Snapshot>)>,
    /// `(generation id, its validated updates)` of deltas since the oldest held.
    log: VecDeque<(u64, Vec<Update>)>,
    /// Copies of one generation's state being made in the background.
    spares: Option<Spares>,
}

/// [`SPARES`] copies of generation `id`'s state, sent as a background thread makes
/// them.
struct Spares {
    id: u64,
    copies: std::sync::mpsc::Receiver<State>,
    maker: std::thread::JoinHandle<()>,
}

impl SnapshotPool {
    fn published(&mut self, id: u64, snapshot: Arc<Snapshot>, delta: Option<Vec<Update>>) {
        match delta {
            Some(updates) => self.log.push_back((id, updates)),
            None => {
                self.held.clear();
                self.log.clear();
                self.make_spares(id, &snapshot);
            }
        }
        self.held.push_back((id, snapshot));
        while self.held.len() > SNAPSHOTS {
            self.held.pop_front();
        }
        if let Some(&(oldest, _)) = self.held.front() {
            while self.log.front().is_some_and(|(i, _)| *i <= oldest) {
                self.log.pop_front();
            }
            // The log no longer reaches back to the spares: they could not be
            // brought forward.
            if self.spares.as_ref().is_some_and(|s| s.id < oldest) {
                self.spares = None;
            }
        }
    }

    /// Starts copying `snapshot`'s state in the background, unless the copies of an
    /// earlier one are still being made (then the next deltas copy, as without
    /// spares: at most one copier runs).
    fn make_spares(&mut self, id: u64, snapshot: &Arc<Snapshot>) {
        if self.spares.as_ref().is_some_and(|s| !s.maker.is_finished()) {
            self.spares = None;
            return;
        }
        let (tx, copies) = std::sync::mpsc::channel();
        let source = Arc::clone(snapshot);
        let made = std::thread::Builder::new()
            .name("capo-spare".into())
            .spawn(move || {
                for _ in 1..SPARES {
                    if tx.send(source.state.clone()).is_err() {
                        return;
                    }
                }
                // Let go of the snapshot before the last copy is taken: a delta
                // after it finds the snapshot free to bring forward, however late
                // this thread runs.
                let last = source.state.clone();
                drop(source);
                let _ = tx.send(last);
            });
        self.spares = made.ok().map(|maker| Spares { id, copies, maker });
    }

    /// A spare copy brought forward to generation `base`, if one is (or is being)
    /// made and the log reaches from it to `base`. With `wait`, waits for a copy in
    /// the making (it is further along than a copy started now); without, takes
    /// only a copy already made.
    fn spare(&mut self, base: u64, wait: bool) -> Option<State> {
        use std::sync::mpsc::TryRecvError;
        let spares = self.spares.as_ref().filter(|s| s.id <= base)?;
        let id = spares.id;
        let copy = if wait {
            spares.copies.recv().ok()
        } else {
            match spares.copies.try_recv() {
                Ok(state) => Some(state),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        match copy {
            Some(state) => self.replay(state, id, base),
            None => {
                self.spares = None;
                None
            }
        }
    }

    /// A free retired snapshot brought forward to generation `base`, if one is free:
    /// the newest, which has the fewest deltas to replay.
    fn reclaim(&mut self, base: u64) -> Option<State> {
        let mut i = self.held.len();
        while i > 0 {
            i -= 1;
            if self.held.get(i).is_none_or(|(id, _)| *id >= base) {
                continue;
            }
            let Some((id, snap)) = self.held.remove(i) else {
                break;
            };
            match Arc::try_unwrap(snap) {
                Ok(snap) => {
                    if let Some(state) = self.replay(snap.state, id, base) {
                        return Some(state);
                    }
                }
                Err(snap) => self.held.insert(i, (id, snap)),
            }
        }
        None
    }

    /// Applies the logged deltas after `from` up to `to`; `None` if the log has a gap.
    fn replay(&self, mut state: State, from: u64, to: u64) -> Option<State> {
        let mut at = from;
        for (id, updates) in self.log.iter().filter(|(id, _)| *id > from && *id <= to) {
            for u in updates {
                state.apply(u.clone()).ok()?;
            }
            at = *id;
        }
        (at == to).then_some(state)
    }
}

/// The sans-IO control logic.
pub struct ControlCore<C: VppContext> {
    cell: Arc<GenerationCell>,
    status: SharedStatus,
    ctx: C,
    host_interface: String,
    compiled: Option<Compiled>,
    pool: SnapshotPool,
    /// The operator's bindings (from the agent's `Hello`; kept when it goes away).
    explicit: Vec<ExplicitBinding>,
    /// The epoch of the connected agent.
    conn_epoch: u64,
    /// The epoch of the agent that pushed the active generation.
    active_epoch: u64,
    limits: ChannelLimits,
    /// Chunks of a generation not complete yet.
    assembly: Option<Assembly>,
    /// The connected agent keeps the interfaces it was last sent
    /// (`Hello.interfaces_when_changed`).
    interfaces_when_changed: bool,
    /// The connected agent applies the interfaces as changes to those it was last
    /// sent (`Hello.interfaces_as_changes`).
    interfaces_as_changes: bool,
    /// The interface table the connected agent was last sent.
    interfaces_sent: InterfacesSeen,
    /// Generations the cell let go of, freed after the reply ([`Self::after_reply`]).
    released: Vec<Arc<Generation>>,
    /// The active generation's state, made ready after the reply for the next delta
    /// to start from.
    ready: Option<ReadyState>,
}

/// A copy of one generation's state that no generation holds, for a delta on it to
/// apply its updates to.
struct FreeState {
    state: State,
    /// Made from a copy taken in the background (else a retired snapshot).
    spare: bool,
}

/// The active generation's [`FreeState`], made after a reply, for the agent run
/// (`epoch`) and generation (`id`) it was made for.
struct ReadyState {
    epoch: u64,
    id: u64,
    free: FreeState,
}

impl<C: VppContext> std::fmt::Debug for ControlCore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCore")
            .field("active", &self.cell.active_id())
            .field("host_interface", &self.host_interface)
            .finish()
    }
}

/// A validated generation, before it is compiled.
struct Validated {
    /// The next generation's state (the views' copy).
    state: State,
    /// The converted updates, in order (for a delta: to compile and to replay).
    updates: Vec<Update>,
}

impl<C: VppContext> ControlCore<C> {
    /// A core publishing into `cell`, reporting into `status`.
    pub fn new(
        cell: Arc<GenerationCell>,
        status: SharedStatus,
        ctx: C,
        host_interface: &str,
    ) -> Self {
        ControlCore {
            cell,
            status,
            ctx,
            host_interface: host_interface.to_string(),
            compiled: None,
            pool: SnapshotPool::default(),
            explicit: Vec::new(),
            conn_epoch: 0,
            active_epoch: 0,
            limits: ChannelLimits::default(),
            assembly: None,
            interfaces_when_changed: false,
            interfaces_as_changes: false,
            interfaces_sent: InterfacesSeen::default(),
            released: Vec::new(),
            ready: None,
        }
    }

    /// The same core with other channel caps.
    #[must_use]
    pub fn with_limits(mut self, limits: ChannelLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The channel caps.
    pub fn limits(&self) -> ChannelLimits {
        self.limits
    }

    /// The VPP context (tests inspect fakes through it).
    pub fn context(&self) -> &C {
        &self.ctx
    }

    /// The VPP context, mutably (tests make fakes fail through it).
    pub fn context_mut(&mut self) -> &mut C {
        &mut self.ctx
    }

    /// Handles one message; `now` is unix seconds.
    pub fn on_message(&mut self, msg: ToPlugin, now: u64) -> FromPlugin {
        // What the last reply left to free, if `after_reply` did not run.
        self.released.clear();
        let reply = match msg.msg {
            Some(to_plugin::Msg::Hello(h)) => {
                lock(&self.status).agent = AgentState::Connected {
                    since: now,
                    version: h.agent_version,
                };
                self.conn_epoch = h.epoch;
                self.assembly = None;
                self.interfaces_when_changed = h.interfaces_when_changed;
                self.interfaces_as_changes = h.interfaces_as_changes;
                self.interfaces_sent = InterfacesSeen::default();
                self.explicit = h
                    .bindings
                    .into_iter()
                    .map(|b| ExplicitBinding {
                        endpoint: b.endpoint,
                        vpp_interface: b.vpp_interface,
                    })
                    .collect();
                // The same generation id from another agent run is another
                // generation: the agent must not send a delta on it.
                let same_run = self.conn_epoch == self.active_epoch;
                if !same_run && self.active_epoch != 0 {
                    // Another run numbers its generations again, so its tags could
                    // name the NIC share's marks: the share leaves the NIC until the
                    // new run sends its own (software decides meanwhile). With no
                    // generation ever taken there is no share.
                    // (The context fails only when VPP's main thread does not answer;
                    // the new run's first share replaces everything then.)
                    let _ = self
                        .ctx
                        .install_share(0, Vec::new(), ShareTargets::default());
                }
                from_plugin::Msg::Hello(HelloReply {
                    plugin_version: PLUGIN_VERSION.to_string(),
                    active_generation: if same_run { self.cell.active_id() } else { 0 },
                    active_epoch: self.active_epoch,
                    max_chunk_bytes: self.limits.max_chunk_bytes(),
                    max_generation_bytes: self.limits.max_generation_bytes,
                })
            }
            Some(to_plugin::Msg::Generation(g)) => match self.on_chunk(g) {
                Ok(Some(whole)) => from_plugin::Msg::Applied(self.on_generation(whole, now)),
                Ok(None) => {
                    let held = self.assembly.as_ref();
                    from_plugin::Msg::Chunk(ChunkReceived {
                        generation: held.map_or(0, |a| a.id),
                        chunks: held.map_or(0, |a| a.chunks),
                        bytes: held.map_or(0, |a| a.bytes),
                    })
                }
                Err((id, e)) => from_plugin::Msg::Applied(self.refused(id, false, 0, e, now)),
            },
            Some(to_plugin::Msg::NicShare(share)) => {
                from_plugin::Msg::NicShare(self.on_nic_share(&share))
            }
            Some(
                to_plugin::Msg::Show(_)
                | to_plugin::Msg::Counters(_)
                | to_plugin::Msg::FlowSamples(_),
            )
            | None => {
                // Read-only requests are answered by `serve_connection` without the
                // core; reaching here means an empty or unknown message.
                from_plugin::Msg::Applied(Applied {
                    generation: 0,
                    ok: false,
                    error: "empty or unknown ToPlugin message".to_string(),
                    ..Applied::default()
                })
            }
        };
        FromPlugin { msg: Some(reply) }
    }

    /// Installs a NIC share on the hardware under the interfaces the active
    /// generation polices; a share planned on another generation is refused whole.
    fn on_nic_share(&mut self, share: &NicShare) -> NicShareApplied {
        let active = self.cell.active_id();
        let refused = |error: String| NicShareApplied {
            generation: share.generation,
            error,
            ..NicShareApplied::default()
        };
        let rules = match crate::share::validate_share(share, active) {
            Ok(rules) => rules,
            Err(e) => return refused(e.to_string()),
        };
        let targets = ShareTargets {
            policed: self
                .cell
                .load()
                .map(|g| g.interfaces().iter().map(|i| i.sw_if_index).collect())
                .unwrap_or_default(),
            uplinks: share.uplinks.clone(),
        };
        let count = rules.len() as u32;
        match self.ctx.install_share(share.generation, rules, targets) {
            Ok(outcome) => NicShareApplied {
                generation: share.generation,
                error: String::new(),
                rules: count,
                interfaces: outcome.interfaces,
                unknown_uplinks: outcome.unknown_uplinks,
            },
            Err(e) => refused(e.to_string()),
        }
    }

    /// Records that the agent connection ended (fail-static: nothing else changes).
    pub fn on_disconnect(&mut self, now: u64) {
        self.released.clear();
        self.assembly = None;
        self.interfaces_sent = InterfacesSeen::default();
        let mut s = lock(&self.status);
        if matches!(s.agent, AgentState::Connected { .. }) {
            s.agent = AgentState::Disconnected { since: now };
        }
    }

    /// Takes one `Generation` message: the whole generation once it is complete
    /// (`None` while chunks are held), or why it was dropped (its id and the error).
    fn on_chunk(&mut self, g: PbGeneration) -> Result<Option<PbGeneration>, (u64, RefusedError)> {
        let bytes = g.encoded_len() as u64;
        let continues = self
            .assembly
            .as_ref()
            .is_some_and(|a| (a.id, a.full, a.base_id) == (g.id, g.full, g.base_id));
        // A chunk of another generation means the agent gave the held one up.
        let mut held = if continues {
            self.assembly.take()
        } else {
            self.assembly = None;
            None
        }
        .unwrap_or(Assembly {
            id: g.id,
            full: g.full,
            base_id: g.base_id,
            updates: Vec::new(),
            chunks: 0,
            bytes: 0,
        });
        held.bytes = held.bytes.saturating_add(bytes);
        held.chunks += 1;
        if held.bytes > self.limits.max_generation_bytes {
            return Err((
                g.id,
                RefusedError::TooLarge {
                    id: g.id,
                    bytes: held.bytes,
                    cap: self.limits.max_generation_bytes,
                },
            ));
        }
        if held.chunks == 1 && !g.more {
            return Ok(Some(g));
        }
        held.updates.extend(g.updates);
        if g.more {
            self.assembly = Some(held);
            return Ok(None);
        }
        Ok(Some(PbGeneration {
            id: held.id,
            full: held.full,
            base_id: held.base_id,
            updates: held.updates,
            more: false,
        }))
    }

    fn on_generation(&mut self, g: PbGeneration, now: u64) -> Applied {
        let (id, full, base_id) = (g.id, g.full, g.base_id);
        match self.apply(g) {
            Ok(unknown) => {
                let reply = self.interfaces_reply();
                let mut s = lock(&self.status);
                s.applied += 1;
                s.active_epoch = self.active_epoch;
                Self::record(&mut s, id, full, base_id, now, None, unknown.clone());
                Applied {
                    generation: id,
                    ok: true,
                    error: String::new(),
                    unknown_interfaces: unknown,
                    ..reply
                }
            }
            Err(e) => self.refused(id, full, base_id, e, now),
        }
    }

    /// Records and answers a refusal (the active generation stays). An agent that
    /// keeps the interfaces takes none from a refusal, so none are sent to it (nor
    /// counted as sent); others get the whole list, as always.
    fn refused(&mut self, id: u64, full: bool, base_id: u64, e: RefusedError, now: u64) -> Applied {
        let reply = if self.interfaces_when_changed || self.interfaces_as_changes {
            Applied::default()
        } else {
            self.interfaces_reply()
        };
        let mut s = lock(&self.status);
        s.refused += 1;
        let error = e.to_string();
        Self::record(
            &mut s,
            id,
            full,
            base_id,
            now,
            Some(error.clone()),
            Vec::new(),
        );
        Applied {
            generation: id,
            ok: false,
            error,
            unknown_interfaces: Vec::new(),
            ..reply
        }
    }

    fn record(
        s: &mut Status,
        id: u64,
        full: bool,
        base_id: u64,
        at: u64,
        error: Option<String>,
        unknown_interfaces: Vec<String>,
    ) {
        s.history.push_back(AppliedRecord {
            id,
            full,
            base_id,
            at,
            error,
            unknown_interfaces,
        });
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
    }

    /// Where the active generation polices each endpoint, for an `Applied` (its
    /// interface fields only): to an agent that keeps them, nothing while they are
    /// what it was last sent (`interfaces_unchanged`), and to one that applies
    /// changes, only what changed since (`interfaces_changes`).
    fn interfaces_reply(&mut self) -> Applied {
        let Some(active) = self.cell.load() else {
            return Applied::default();
        };
        if self.interfaces_when_changed && self.interfaces_sent.still(&active) {
            return Applied {
                interfaces_unchanged: true,
                ..Applied::default()
            };
        }
        let changes = if self.interfaces_as_changes {
            self.interfaces_sent.changes(&active)
        } else {
            None
        };
        let reply = match changes {
            Some(changes) => Applied {
                interfaces: changes.changed.into_iter().map(bound_interface).collect(),
                interfaces_changes: true,
                interfaces_gone: changes.gone,
                ..Applied::default()
            },
            None => Applied {
                interfaces: active
                    .interfaces()
                    .iter()
                    .map(|i| bound_interface(i))
                    .collect(),
                ..Applied::default()
            },
        };
        self.interfaces_sent = InterfacesSeen::of(&active);
        reply
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// Converts and applies every update to `state`: the validation step. Nothing but
    /// `state` changes; on an error `state` is half-updated and must be dropped.
    fn validate(
        mut state: State,
        updates: Vec<capo_proto::felix::v3_32::ToDataplane>,
    ) -> Result<(Validated, bool), RefusedError> {
        let mut in_sync = false;
        let mut out = Vec::with_capacity(updates.len());
        for (index, msg) in updates.into_iter().enumerate() {
            match convert(msg, &state).map_err(|source| RefusedError::Convert { index, source })? {
                Converted::Update(u) => {
                    state
                        .apply(u.clone())
                        .map_err(|source| RefusedError::Violation { index, source })?;
                    out.push(u);
                }
                Converted::InSync => in_sync = true,
                Converted::Ignored(_) => {}
            }
        }
        Ok((
            Validated {
                state,
                updates: out,
            },
            in_sync,
        ))
    }

    /// Validates, compiles and commits one generation; returns its unknown interfaces.
    fn apply(&mut self, g: PbGeneration) -> Result<Vec<String>, RefusedError> {
        let PbGeneration {
            id,
            full,
            base_id,
            updates,
            more: _,
        } = g;
        let active = self.cell.load();
        let active_id = active.as_ref().map_or(0, |a| a.id());
        let epoch = self.conn_epoch;
        if active.is_some() && (epoch, id) <= (self.active_epoch, active_id) {
            return Err(RefusedError::NotNewer {
                id,
                epoch,
                active: active_id,
                active_epoch: self.active_epoch,
            });
        }
        // 1. Validate into the next generation's state; nothing live changes.
        let same_run = epoch == self.active_epoch;
        let start = match (full, &active) {
            (true, _) => State::new(),
            (false, Some(a)) if same_run && a.id() == base_id && self.compiled.is_some() => {
                let ready = self
                    .ready
                    .take()
                    .filter(|r| (r.epoch, r.id) == (epoch, base_id));
                let (free, ready) = match ready {
                    Some(r) => (Some(r.free), true),
                    None => (self.free_state(base_id, true), false),
                };
                match free {
                    Some(free) => {
                        let mut s = self.stats();
                        s.compiled.replayed += 1;
                        s.compiled.background_copies += u64::from(free.spare);
                        s.compiled.ready_after_reply += u64::from(ready);
                        free.state
                    }
                    None => {
                        self.stats().compiled.state_copies += 1;
                        a.state().clone()
                    }
                }
            }
            (false, _) => {
                return Err(RefusedError::WrongBase {
                    base: base_id,
                    active: active_id,
                })
            }
        };
        let (validated, in_sync) = Self::validate(start, updates)?;
        if full && !in_sync {
            return Err(RefusedError::NotInSync);
        }
        // 2. Map endpoints to VPP interfaces; unknown names are reported, not fatal.
        // A delta keeps the active generation's binding for every endpoint it does not
        // change (the rebinder keeps that in step with VPP's interfaces) and binds the
        // ones it changes.
        let binding = match active.as_deref().filter(|_| !full) {
            Some(a) if !validated.updates.iter().any(changes_endpoints) => Binding::Kept(a),
            Some(a) => {
                let changed = changed_endpoint_names(&validated.updates, a.state());
                let host = self.host_interface.clone();
                // A pod's churn: the endpoints to bind and their places found from
                // the changed entries alone; otherwise by walking every endpoint.
                let plan =
                    Generation::plan_delta(a, &validated.state, &changed, &validated.updates);
                let policed = match &plan {
                    Some(plan) => (plan.endpoints())
                        .map(|p| (p.name, p.kind.to_owned()))
                        .collect(),
                    None => policed_named(&validated.state, &host, &changed),
                };
                let (names, resolved) = self.bind_only(policed)?;
                let planned = plan
                    .as_ref()
                    .and_then(|plan| Generation::interfaces_after_plan(a, plan, &resolved));
                if planned.is_some() {
                    self.stats().delta_binds.planned += 1;
                }
                let ifaces = planned.or_else(|| {
                    Generation::interfaces_after(
                        a,
                        &validated.state,
                        &self.host_interface,
                        &changed,
                        &resolved,
                    )
                });
                match ifaces {
                    Some(ifaces) => Binding::Changed(names, resolved, Box::new(ifaces)),
                    None => {
                        let (names, resolved) = self.bind(&validated.state)?;
                        Binding::New(names, resolved)
                    }
                }
            }
            None => {
                let (names, resolved) = self.bind(&validated.state)?;
                Binding::New(names, resolved)
            }
        };
        // 3. Compile beside the active generation.
        let (classifier, ids) = self.compile(
            full,
            &validated,
            match &binding {
                Binding::New(names, resolved) | Binding::Changed(names, resolved, _) => {
                    Some((names.as_slice(), resolved))
                }
                Binding::Kept(_) => None,
            },
        )?;
        let snapshot = Arc::new(Snapshot {
            state: validated.state,
            ids,
        });
        let next = Arc::new(match binding {
            Binding::New(_, resolved) => {
                Generation::build(id, Arc::clone(&snapshot), classifier, &resolved)
            }
            Binding::Kept(a) => {
                Generation::with_interfaces_of(id, Arc::clone(&snapshot), classifier, a)
            }
            Binding::Changed(_, _, ifaces) => {
                Generation::with_changed_interfaces(id, Arc::clone(&snapshot), classifier, *ifaces)
            }
        });
        // 4. Flip: features and pointer together, under the barrier.
        let unknown = next.unknown_interfaces().to_vec();
        if let Err(e) = self.flip(active.as_deref(), next, &[]) {
            self.recompile_active();
            return Err(e.into());
        }
        self.active_epoch = epoch;
        self.pool
            .published(id, snapshot, (!full).then_some(validated.updates));
        Ok(unknown)
    }

    /// A state of generation `base` that no generation holds: a retired snapshot
    /// brought forward, else a copy made in the background (waiting for one in the
    /// making with `wait`).
    fn free_state(&mut self, base: u64, wait: bool) -> Option<FreeState> {
        match self.pool.reclaim(base) {
            Some(state) => Some(FreeState {
                state,
                spare: false,
            }),
            None => self
                .pool
                .spare(base, wait)
                .map(|state| FreeState { state, spare: true }),
        }
    }

    /// Tests: the compiler's builder, once a generation was compiled.
    #[cfg(test)]
    pub(crate) fn builder(&self) -> Option<&Builder> {
        self.compiled.as_ref().map(|c| &c.builder)
    }

    /// The work a reply need not wait for, done after it is written: the
    /// generations the cell let go of are freed (and the builder's spare interface
    /// list brought forward, `Builder::settle`), and the active generation's state
    /// is made ready for the next delta (a retired snapshot brought forward, or a
    /// background copy already made; this never waits for one). The plugin's
    /// connection calls it once each reply is written, before it reads the next
    /// message. Nothing depends on it: a message frees what is left to free first,
    /// and a delta that finds no ready state makes one itself.
    pub fn after_reply(&mut self) {
        self.released.clear();
        // The replaced generations are gone: the builder's spare interface list is
        // free to bring forward.
        if let Some(c) = &mut self.compiled {
            c.builder.settle();
        }
        let Some(active) = self.cell.load() else {
            return;
        };
        let (epoch, id) = (self.active_epoch, active.id());
        // No delta of another agent run starts from this generation.
        if self.compiled.is_none()
            || self.conn_epoch != epoch
            || self
                .ready
                .as_ref()
                .is_some_and(|r| (r.epoch, r.id) == (epoch, id))
        {
            return;
        }
        self.ready = self
            .free_state(id, false)
            .map(|free| ReadyState { epoch, id, free });
    }

    /// The policed endpoint names of `state` and where VPP has them.
    fn bind(&mut self, state: &State) -> Result<(Vec<String>, Bindings), ContextError> {
        let policed = policed_where(state, &self.host_interface, |_| true);
        let vpp = self.ctx.interfaces()?;
        let resolved = binding::bind(policed.iter().map(|(n, k)| (*n, k)), &self.explicit, &vpp);
        Ok((names_of(policed), resolved))
    }

    /// [`Self::bind`] for the endpoints `policed` (a delta's).
    fn bind_only(
        &mut self,
        policed: Vec<(&str, IfaceKind)>,
    ) -> Result<(Vec<String>, Bindings), ContextError> {
        // Binding these reads only the interfaces they name: looked up, not listed.
        let (names, indexes) =
            binding::lookups(policed.iter().map(|(n, k)| (*n, k)), &self.explicit);
        let vpp = self.ctx.interfaces_among(&names, &indexes)?;
        let mut resolved =
            binding::bind(policed.iter().map(|(n, k)| (*n, k)), &self.explicit, &vpp);
        // VPP's name parser does not read every name its listing gives (a dot in a
        // name, hidden interfaces): an endpoint the look-ups left unbound is bound
        // against the list of every interface, as a full binding would.
        let unbound = policed.iter().any(|(n, _)| !resolved.contains_key(*n));
        if unbound {
            let vpp = self.ctx.interfaces()?;
            resolved = binding::bind(policed.iter().map(|(n, k)| (*n, k)), &self.explicit, &vpp);
            self.stats().delta_binds.listed += 1;
        } else {
            self.stats().delta_binds.looked_up += 1;
        }
        Ok((names_of(policed), resolved))
    }

    /// Publishes `next` with the features it needs: enabled on its interfaces that
    /// `before` did not police, on `restore`, and on indexes `before` policed for
    /// another endpoint where VPP no longer has them; disabled on those it no longer
    /// polices. The generation the cell lets go of waits for [`Self::after_reply`].
    fn flip(
        &mut self,
        before: Option<&Generation>,
        next: Arc<Generation>,
        restore: &[SwIfIndex],
    ) -> Result<(), ContextError> {
        let commit = self.commit_for(before, next, restore)?;
        let released = self.ctx.commit(commit)?;
        self.released.extend(released);
        Ok(())
    }

    /// What [`Self::flip`] commits.
    fn commit_for(
        &mut self,
        before: Option<&Generation>,
        next: Arc<Generation>,
        restore: &[SwIfIndex],
    ) -> Result<Commit, ContextError> {
        if before.is_some_and(|b| b.shares_interfaces_with(&next)) && restore.is_empty() {
            // The same interfaces: no feature to enable or disable.
            return Ok(Commit {
                cell: Arc::clone(&self.cell),
                next,
                enable: Vec::new(),
                disable: Vec::new(),
            });
        }
        // An endpoint delta knows what it changed; other generations are compared
        // whole.
        let changes = before
            .and_then(|b| next.index_changes_from(b))
            .unwrap_or_else(|| index_changes(before, &next));
        // A reused index's features are checked, not assumed.
        let missing = if changes.reused.is_empty() {
            Vec::new()
        } else {
            self.ctx.without_features(&changes.reused)?
        };
        let enable = sorted_unique(
            changes
                .added
                .into_iter()
                .chain(
                    restore
                        .iter()
                        .filter(|i| next.interface(**i).is_some())
                        .copied(),
                )
                .chain(missing)
                .collect(),
        );
        let disable = changes.removed;
        Ok(Commit {
            cell: Arc::clone(&self.cell),
            next,
            enable,
            disable,
        })
    }

    /// Binds the active generation again: endpoints VPP now has (or no longer has, or
    /// has under another index) and interfaces whose features VPP dropped (deleted
    /// and created again). Republishes the same generation id when anything changed;
    /// returns what changed (empty: nothing).
    ///
    /// # Errors
    ///
    /// [`ContextError`] when VPP cannot be asked or refuses a feature; the active
    /// generation stays as it was.
    pub fn rebind(&mut self, now: u64) -> Result<Vec<String>, ContextError> {
        let Some(active) = self.cell.load() else {
            return Ok(Vec::new());
        };
        let result = self.rebind_active(&active);
        // No reply follows a rebinding: what its flip let go of is freed now.
        self.released.clear();
        match &result {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => {
                let mut s = self.stats();
                s.rebinds += 1;
                s.last_rebind = Some(RebindRecord {
                    at: now,
                    changes: changes.clone(),
                    error: None,
                });
            }
            Err(e) => {
                self.stats().last_rebind = Some(RebindRecord {
                    at: now,
                    changes: Vec::new(),
                    error: Some(e.to_string()),
                });
            }
        }
        result
    }

    fn rebind_active(&mut self, active: &Arc<Generation>) -> Result<Vec<String>, ContextError> {
        let (names, resolved) = self.bind(active.state())?;
        let mut changes = Vec::new();
        let was: HashMap<&str, SwIfIndex> = active
            .interfaces()
            .iter()
            .map(|i| (i.name.as_str(), i.sw_if_index))
            .collect();
        for name in &names {
            match (was.get(name.as_str()), resolved.get(name)) {
                (Some(a), Some(b)) if *a == b.sw_if_index => {}
                (_, Some(b)) => changes.push(format!(
                    "{name} -> {} sw_if_index {}",
                    b.vpp_name, b.sw_if_index
                )),
                (Some(_), None) => changes.push(format!("{name} unbound")),
                (None, None) => {}
            }
        }
        let kept: Vec<SwIfIndex> = active
            .interfaces()
            .iter()
            .filter(|i| {
                resolved
                    .get(&i.name)
                    .is_some_and(|b| b.sw_if_index == i.sw_if_index)
            })
            .map(|i| i.sw_if_index)
            .collect();
        let restore = self.ctx.without_features(&kept)?;
        changes.extend(
            restore
                .iter()
                .map(|i| format!("features restored on sw_if_index {i}")),
        );
        if changes.is_empty() {
            return Ok(changes);
        }
        let validated = Validated {
            state: active.state().clone(),
            updates: Vec::new(),
        };
        self.stats().compiled.state_copies += 1;
        let (classifier, ids) = match self.compile(false, &validated, Some((&names, &resolved))) {
            Ok(c) => c,
            Err(RefusedError::Vpp(e)) => return Err(e),
            Err(e) => return Err(ContextError::Unavailable(e.to_string())),
        };
        let snapshot = Arc::new(Snapshot {
            state: validated.state,
            ids,
        });
        let next = Arc::new(Generation::build(
            active.id(),
            Arc::clone(&snapshot),
            classifier,
            &resolved,
        ));
        if let Err(e) = self.flip(Some(active), next, &restore) {
            self.recompile_active();
            return Err(e);
        }
        self.pool.published(active.id(), snapshot, None);
        Ok(changes)
    }

    /// Compiles a validated generation with the builder; returns the classifier
    /// generation and the ids to publish. On an error the builder is rebuilt from the
    /// active generation.
    /// `bound`: the policed names and their VPP interfaces, when they were bound
    /// again (`None`: the compiler's ids hold the active generation's indexes).
    fn compile(
        &mut self,
        full: bool,
        v: &Validated,
        bound: Option<(&[String], &Bindings)>,
    ) -> Result<(Arc<capo_classifier::Generation>, IdTable), RefusedError> {
        let mut c = match self.compiled.take() {
            Some(c) => c,
            None => Compiled {
                builder: Builder::new(),
                state: State::new(),
                ids: IdTable::new(&self.host_interface),
            },
        };
        // Every policed name gets its VPP index (or `~0`): the classifier finds
        // interfaces by the ids' indexes. A known interface whose index changed needs
        // the classifier's interface table rebuilt.
        let mut renumbered = false;
        let (names, resolved): (&[String], _) = match bound {
            Some((names, resolved)) => (names, Some(resolved)),
            None => (&[], None),
        };
        for name in names {
            let bound = resolved.and_then(|r| r.get(name));
            let want = bound.map_or(UNRESOLVED, |b| b.sw_if_index.0);
            renumbered |= c.ids.interface(name).is_some_and(|had| had != want);
            c.ids.set_interface_index(name, want);
            c.ids
                .set_interface_shown_name(name, bound.map_or(name, |b| b.vpp_name.as_str()));
        }
        let generation = if full {
            c.state = v.state.clone();
            self.stats().compiled.state_copies += 1;
            c.ids.sync(&c.state);
            self.stats().compiled.full += 1;
            c.builder.build(&c.state, &c.ids)
        } else {
            let mut last = c.builder.current().cloned();
            for (index, u) in v.updates.iter().enumerate() {
                match c.builder.apply(&mut c.state, &mut c.ids, u.clone()) {
                    Ok(g) => last = Some(g),
                    Err(source) => {
                        self.compiled = Some(c);
                        self.recompile_active();
                        return Err(RefusedError::Compile { index, source });
                    }
                }
            }
            if !renumbered || !v.updates.is_empty() {
                self.stats().compiled.incremental += 1;
            }
            if renumbered && c.builder.current().is_some() {
                // An endpoint's interface moved: its tables redrawn, nothing compiled.
                self.stats().compiled.reindexed += 1;
                c.builder.reindex(&c.ids)
            } else {
                match last {
                    Some(g) => g,
                    None => c.builder.build(&c.state, &c.ids),
                }
            }
        };
        let ids = c.ids.clone();
        self.compiled = Some(c);
        Ok((generation, ids))
    }

    /// Rebuilds the compiler's side from the active generation (after a refusal that
    /// came after compiling began).
    fn recompile_active(&mut self) {
        let Some(active) = self.cell.load() else {
            self.compiled = None;
            return;
        };
        let mut builder = self
            .compiled
            .take()
            .map_or_else(Builder::new, |c| c.builder);
        let state = active.state().clone();
        let ids = active.ids().clone();
        builder.build(&state, &ids);
        {
            let mut s = self.stats();
            s.compiled.state_copies += 1;
            s.compiled.full += 1;
        }
        self.compiled = Some(Compiled {
            builder,
            state,
            ids,
        });
    }
}

/// Where one endpoint is policed, as an `Applied` says it.
fn bound_interface(i: &Iface) -> BoundInterface {
    BoundInterface {
        endpoint: i.name.clone(),
        vpp_interface: i.vpp_name.clone(),
        sw_if_index: i.sw_if_index.0,
        how: i.how.as_str().to_string(),
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a generation's endpoints are bound.
enum Binding<'a> {
    /// As the active generation has them.
    Kept(&'a Generation),
    /// Bound again now: the policed names, and where VPP has them.
    New(Vec<String>, Bindings),
    /// The endpoints a delta changed bound now (their names and where VPP has
    /// them), the others as the active generation has them: the interfaces.
    Changed(Vec<String>, Bindings, Box<ChangedInterfaces>),
}

/// The interface names, before (in `before`) and after them, of the endpoints
/// `updates` add, change or remove.
pub(crate) fn changed_endpoint_names(updates: &[Update], before: &State) -> HashSet<String> {
    let mut names = HashSet::new();
    for u in updates {
        let (old, new) = match u {
            Update::WorkloadUpdate(k, w) => {
                (before.workloads().get(k).map(|w| &w.name), Some(&w.name))
            }
            Update::WorkloadRemove(k) => (before.workloads().get(k).map(|w| &w.name), None),
            Update::HostEndpointUpdate(k, h) => (
                before.host_endpoints().get(k).map(|h| &h.name),
                Some(&h.name),
            ),
            Update::HostEndpointRemove(k) => {
                (before.host_endpoints().get(k).map(|h| &h.name), None)
            }
            _ => (None, None),
        };
        names.extend(old.into_iter().chain(new).cloned());
    }
    names
}

/// Whether an update can change which interfaces are policed, or how.
fn changes_endpoints(u: &Update) -> bool {
    matches!(
        u,
        Update::WorkloadUpdate(..)
            | Update::WorkloadRemove(_)
            | Update::HostEndpointUpdate(..)
            | Update::HostEndpointRemove(_)
    )
}

/// Binds the control socket with its configured permissions and group, through
/// capo's one hardened binder ([`capo_socket::bind`]): only a stale socket is ever
/// replaced, and nobody can connect before the permissions hold.
///
/// # Errors
///
/// As for [`capo_socket::bind`].
pub fn bind(cfg: &PluginConfig) -> io::Result<UnixListener> {
    bind_path(&cfg.socket, cfg.socket_mode, cfg.socket_gid)
}

/// [`bind`] with explicit values.
///
/// # Errors
///
/// As for [`capo_socket::bind`].
pub fn bind_path(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    capo_socket::bind(path, mode, gid)
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Framing or I/O failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame that is not a `ToPlugin`.
    #[error("frame {frame}: not a ToPlugin message")]
    Decode {
        /// Frame number.
        frame: u64,
        /// What prost said.
        source: prost::DecodeError,
    },
    /// The socket could not be duplicated for reading and writing.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// What the agent may read from the plugin (views, counters, sampled flows),
/// answered without the control core's lock.
pub trait Reader: Send + Sync {
    /// A `show capo …` view.
    fn show(&self, req: &ShowRequest) -> ShowReply;
    /// The counters, summed over VPP's threads.
    fn counters(&self) -> CountersReply;
    /// The flows sampled since the last call; the first call turns sampling on.
    fn flow_samples(&self) -> FlowSamples;
    /// The agent's connection ended (sampling stops).
    fn connection_closed(&self);
}

impl<T: Reader + ?Sized> Reader for &T {
    fn show(&self, req: &ShowRequest) -> ShowReply {
        (**self).show(req)
    }
    fn counters(&self) -> CountersReply {
        (**self).counters()
    }
    fn flow_samples(&self) -> FlowSamples {
        (**self).flow_samples()
    }
    fn connection_closed(&self) {
        (**self).connection_closed()
    }
}

impl<T: Reader + ?Sized> Reader for Arc<T> {
    fn show(&self, req: &ShowRequest) -> ShowReply {
        (**self).show(req)
    }
    fn counters(&self) -> CountersReply {
        (**self).counters()
    }
    fn flow_samples(&self) -> FlowSamples {
        (**self).flow_samples()
    }
    fn connection_closed(&self) {
        (**self).connection_closed()
    }
}

/// Serves one agent connection until it ends.
///
/// # Errors
///
/// [`ConnectionError`] when the connection broke or the agent spoke garbage; the
/// core is told of the disconnect either way.
pub fn serve_connection<C: VppContext>(
    stream: UnixStream,
    core: &Mutex<ControlCore<C>>,
    plugin: &dyn Reader,
) -> Result<(), ConnectionError> {
    let max_frame = core
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .limits()
        .max_frame_bytes;
    let result = (|| {
        let mut reader =
            FrameReader::with_max_frame_len(BufReader::new(stream.try_clone()?), max_frame);
        let mut writer = FrameWriter::new(stream);
        while let Some(frame) = reader.read_frame()? {
            let msg = ToPlugin::decode(frame.bytes.as_slice()).map_err(|source| {
                ConnectionError::Decode {
                    frame: frame.index,
                    source,
                }
            })?;
            // (the reply, whether the core answered it)
            let (reply, by_core) = match msg.msg {
                Some(to_plugin::Msg::Show(req)) => (
                    FromPlugin {
                        msg: Some(from_plugin::Msg::Show(plugin.show(&req))),
                    },
                    false,
                ),
                Some(to_plugin::Msg::Counters(_)) => (
                    FromPlugin {
                        msg: Some(from_plugin::Msg::Counters(plugin.counters())),
                    },
                    false,
                ),
                Some(to_plugin::Msg::FlowSamples(_)) => (
                    FromPlugin {
                        msg: Some(from_plugin::Msg::FlowSamples(plugin.flow_samples())),
                    },
                    false,
                ),
                _ => (
                    core.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .on_message(msg, unix_now()),
                    true,
                ),
            };
            writer.write_message(&reply)?;
            if by_core {
                core.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .after_reply();
            }
        }
        Ok(())
    })();
    core.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .on_disconnect(unix_now());
    plugin.connection_closed();
    result
}

/// Accepts agents one at a time, forever (run it on its own thread). Connection errors
/// are passed to `on_error` and the next agent is served.
pub fn serve<C: VppContext>(
    listener: UnixListener,
    core: Arc<Mutex<ControlCore<C>>>,
    reader: impl Reader,
    mut on_error: impl FnMut(&dyn std::error::Error),
) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                if let Err(e) = serve_connection(s, &core, &reader) {
                    on_error(&e);
                }
            }
            Err(e) => on_error(&e),
        }
    }
}

/// Wakes the rebinder: VPP added or deleted an interface.
#[derive(Debug, Default)]
pub struct RebindSignal {
    pending: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl RebindSignal {
    /// A signal with nothing pending.
    pub fn new() -> Self {
        RebindSignal::default()
    }

    /// Asks for a rebind (cheap; callable from VPP's interface callbacks).
    pub fn notify(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Waits until notified or `timeout` passed; true when notified.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut pending, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |p| !*p)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *pending)
    }
}

/// Binds the active generation again whenever `signal` fires, and every `period`
/// (tags and names can change without an add or delete), forever (run it on its own
/// thread). Changes and errors go to `log`.
pub fn run_rebinder<C: VppContext>(
    core: &Mutex<ControlCore<C>>,
    signal: &RebindSignal,
    period: std::time::Duration,
    mut log: impl FnMut(&str),
) {
    loop {
        signal.wait(period);
        let result = core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rebind(unix_now());
        match result {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => log(&format!("bound again: {}", changes.join("; "))),
            Err(e) => log(&format!("binding again failed: {e}")),
        }
    }
}

/// Generation `id` as one message of the agent's (`more`: chunks follow), for tests
/// and benchmarks.
#[cfg(any(test, feature = "testutils"))]
pub fn generation_message(
    id: u64,
    full: bool,
    base_id: u64,
    updates: Vec<capo_proto::felix::v3_32::ToDataplane>,
    more: bool,
) -> ToPlugin {
    ToPlugin {
        msg: Some(to_plugin::Msg::Generation(PbGeneration {
            id,
            full,
            base_id,
            updates,
            more,
        })),
    }
}

/// Generation `id` in chunks of at most `per_chunk` updates, as the agent sends a
/// large one (tests and benchmarks).
#[cfg(any(test, feature = "testutils"))]
pub fn generation_chunks(
    id: u64,
    full: bool,
    base_id: u64,
    updates: Vec<capo_proto::felix::v3_32::ToDataplane>,
    per_chunk: usize,
) -> Vec<ToPlugin> {
    let mut pieces: Vec<_> = updates
        .chunks(per_chunk.max(1))
        .map(<[_]>::to_vec)
        .collect();
    if pieces.is_empty() {
        pieces.push(Vec::new());
    }
    let last = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, updates)| generation_message(id, full, base_id, updates, i < last))
        .collect()
}

/// A VPP stand-in for tests: a name → index table; commits publish directly and
/// are logged; features are tracked per interface.
#[cfg(any(test, feature = "testutils"))]
#[derive(Debug, Default)]
pub struct FakeVpp {
    /// Interfaces VPP "has".
    pub interfaces: HashMap<String, SwIfIndex>,
    /// Interfaces with the capo features enabled.
    pub enabled: std::collections::BTreeSet<SwIfIndex>,
    /// `(generation, enabled, disabled)` per commit.
    pub commits: Vec<(u64, Vec<SwIfIndex>, Vec<SwIfIndex>)>,
    /// Refuse commits (as VPP does when a feature cannot be enabled).
    pub fail_commits: bool,
    /// Every NIC share, in order.
    pub shares: Vec<FakeShare>,
    /// Names the look-up by name misses although VPP has them (as VPP's parser
    /// misses some of the names its listing gives).
    pub unparsed: std::collections::BTreeSet<String>,
}

/// A NIC share [`FakeVpp`] was handed.
#[cfg(any(test, feature = "testutils"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeShare {
    /// The generation it was planned on.
    pub generation: u64,
    /// Its rules.
    pub rules: Vec<FlowLayerRule>,
    /// Where it goes.
    pub targets: ShareTargets,
    /// Commits (generations published) before it.
    pub after_commits: usize,
}

#[cfg(any(test, feature = "testutils"))]
impl FakeVpp {
    /// A fake with these interfaces.
    pub fn with(interfaces: &[(&str, u32)]) -> Self {
        FakeVpp {
            interfaces: interfaces
                .iter()
                .map(|(n, i)| (n.to_string(), SwIfIndex(*i)))
                .collect(),
            enabled: std::collections::BTreeSet::new(),
            commits: Vec::new(),
            fail_commits: false,
            shares: Vec::new(),
            unparsed: std::collections::BTreeSet::new(),
        }
    }

    /// VPP deletes an interface (and with it its features).
    pub fn delete(&mut self, name: &str) {
        if let Some(i) = self.interfaces.remove(name) {
            self.enabled.remove(&i);
        }
    }

    /// VPP creates an interface.
    pub fn create(&mut self, name: &str, sw_if_index: u32) {
        self.interfaces
            .insert(name.to_string(), SwIfIndex(sw_if_index));
    }
}

#[cfg(any(test, feature = "testutils"))]
impl VppContext for FakeVpp {
    fn interfaces(&mut self) -> Result<Vec<VppInterface>, ContextError> {
        Ok(self
            .interfaces
            .iter()
            .map(|(n, i)| VppInterface {
                sw_if_index: *i,
                name: n.clone(),
            })
            .collect())
    }

    fn interfaces_among(
        &mut self,
        names: &[String],
        indexes: &[SwIfIndex],
    ) -> Result<Vec<VppInterface>, ContextError> {
        let mut out: Vec<VppInterface> = names
            .iter()
            .filter(|n| !self.unparsed.contains(*n))
            .filter_map(|n| {
                self.interfaces.get(n).map(|i| VppInterface {
                    sw_if_index: *i,
                    name: n.clone(),
                })
            })
            .collect();
        if !indexes.is_empty() {
            // VPP finds a name by index directly; the fake keeps names only.
            out.extend(
                self.interfaces
                    .iter()
                    .filter(|(_, i)| indexes.contains(i))
                    .map(|(n, i)| VppInterface {
                        sw_if_index: *i,
                        name: n.clone(),
                    }),
            );
        }
        Ok(out)
    }

    fn without_features(&mut self, policed: &[SwIfIndex]) -> Result<Vec<SwIfIndex>, ContextError> {
        Ok(policed
            .iter()
            .filter(|i| !self.enabled.contains(i))
            .copied()
            .collect())
    }

    fn commit(&mut self, c: Commit) -> Result<Option<Arc<Generation>>, ContextError> {
        if self.fail_commits {
            return Err(ContextError::Feature {
                arc: "ip4-unicast",
                sw_if_index: c.enable.first().map_or(0, |i| i.0),
                code: -1,
            });
        }
        self.enabled.extend(c.enable.iter().copied());
        for i in &c.disable {
            self.enabled.remove(i);
        }
        self.commits.push((c.next.id(), c.enable, c.disable));
        Ok(c.cell.publish(c.next))
    }

    /// Records the share; every policed interface and known uplink "takes" every
    /// rule.
    fn install_share(
        &mut self,
        generation: u64,
        rules: Vec<FlowLayerRule>,
        targets: ShareTargets,
    ) -> Result<ShareOutcome, ContextError> {
        let mut out = ShareOutcome::default();
        let mut on: Vec<(String, SwIfIndex)> = targets
            .policed
            .iter()
            .map(|i| (format!("fake{}", i.0), *i))
            .collect();
        for name in &targets.uplinks {
            match self.interfaces.get(name) {
                Some(i) => on.push((name.clone(), *i)),
                None => out.unknown_uplinks.push(name.clone()),
            }
        }
        out.interfaces = on
            .into_iter()
            .map(|(interface, i)| api::FlowLayerInterface {
                interface,
                sw_if_index: i.0,
                driver: "fake".into(),
                takes_flows: true,
                installed: rules.len() as u32,
                ..Default::default()
            })
            .collect();
        self.shares.push(FakeShare {
            generation,
            rules,
            targets,
            after_commits: self.commits.len(),
        });
        Ok(out)
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    /// A retired snapshot is brought forward from the newest free one (fewest
    /// deltas to replay); one still in use is passed over, and the older ones stay.
    #[test]
    fn reclaim_takes_the_newest_free_snapshot() {
        let snapshot = || {
            Arc::new(Snapshot {
                state: State::new(),
                ids: IdTable::new("tap0"),
            })
        };
        // Deltas only (a whole generation would start background copies).
        let mut pool = SnapshotPool::default();
        let mut in_use = Vec::new();
        for id in 1..=4 {
            let s = snapshot();
            if id == 3 {
                in_use.push(Arc::clone(&s));
            }
            pool.published(id, s, Some(Vec::new()));
        }
        let held = |pool: &SnapshotPool| pool.held.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        assert_eq!(held(&pool), [1, 2, 3, 4]);
        assert!(pool.reclaim(4).is_some());
        assert_eq!(
            held(&pool),
            [1, 3, 4],
            "2 taken: 3 is in use, 4 is not older"
        );
        assert!(pool.reclaim(4).is_some());
        assert_eq!(held(&pool), [3, 4]);
        assert!(pool.reclaim(4).is_none(), "3 is in use");
        drop(in_use);
        assert!(pool.reclaim(4).is_some());
        assert_eq!(held(&pool), [4]);
    }
}

#[cfg(test)]
mod flip_tests {
    use super::*;

    /// The merge pass agrees with asking `b` about each item of `a`, on empty lists,
    /// lists that interleave, share a prefix or a suffix, and random ones.
    #[test]
    fn sorted_difference_is_a_set_difference() {
        let ids = |v: &[u32]| v.iter().copied().map(SwIfIndex).collect::<Vec<_>>();
        let model = |a: &[SwIfIndex], b: &[SwIfIndex]| -> Vec<SwIfIndex> {
            a.iter().filter(|x| !b.contains(x)).copied().collect()
        };
        let mut cases: Vec<(Vec<SwIfIndex>, Vec<SwIfIndex>)> = vec![
            (ids(&[]), ids(&[])),
            (ids(&[1, 2, 3]), ids(&[])),
            (ids(&[]), ids(&[1, 2])),
            (ids(&[1, 3, 5, 7]), ids(&[2, 3, 4, 7, 9])),
            (ids(&[0, 1, 2]), ids(&[0, 1])),
            (ids(&[5, 6]), ids(&[1, 2, 5, 6])),
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut pick = |n: usize| {
                let mut v: Vec<u32> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % 40) as u32
                    })
                    .collect();
                v.sort_unstable();
                v.dedup();
                ids(&v)
            };
            let (a, b) = (pick(12), pick(12));
            cases.push((a, b));
        }
        for (a, b) in &cases {
            assert_eq!(sorted_difference(a, b), model(a, b), "{a:?} minus {b:?}");
        }
    }
}
