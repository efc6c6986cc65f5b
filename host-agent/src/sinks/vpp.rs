//! The agent's side of the channel to the VPP plugin (`capo-agent --dataplane
//! vpp:SOCKET`).
//!
//! The plugin serves a unix socket (its startup.conf `capo { socket … }`). The agent
//! connects, says `Hello`, learns the generation the plugin holds, and pushes
//! generations: a full snapshot on connect or whenever the plugin's active generation is
//! not the one a delta would apply to, deltas otherwise. Each push is answered by one
//! `Applied`. Framing is Felix's (8-byte LE length + protobuf), message types are
//! `capo.dataplane.v1`; policy travels as Felix's own v3.32 messages, so the plugin
//! validates it with exactly the agent's code.
//!
//! A generation larger than the plugin's frame cap goes in chunks (see
//! [`split_into_chunks`]), when the plugin says in its `HelloReply` that it takes them.
//!
//! The channel is blocking and owns its socket; a broken connection is an error and the
//! caller reconnects (the plugin keeps enforcing its last generation meanwhile).

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use capo_felix::frame::DEFAULT_MAX_FRAME_LEN;
use capo_felix::frame::{FrameError, FrameReader, FrameWriter};
use capo_proto::capo::agent::v1 as api;
use capo_proto::capo::dataplane::v1::{
    from_plugin, to_plugin, Applied, BoundInterface, FlowSamples, FlowSamplesRequest, FromPlugin,
    Generation, Hello, InterfaceBinding, NicShare, NicShareApplied, ShowReply, ShowRequest,
    ToPlugin,
};
use capo_proto::felix::v3_32 as pb;
use prost::Message;

use crate::sinks::vpp_share::{lower_share, plan_share_on, sample_from_proto, SharePlan};
use crate::sinks::{Committed, Dataplane, PolicySink, SinkError};

/// The agent's version, as sent in `Hello`.
pub const AGENT_VERSION: &str = concat!("capo-agent ", env!("CARGO_PKG_VERSION"));

/// How long a push may wait for its `Applied` (a large full generation takes a while).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The chunk size the agent aims for when a generation is chunked (smaller than the
/// plugin's cap, so neither side holds a frame of tens of MB at once).
pub const DEFAULT_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// What went wrong on the channel.
#[derive(Debug, thiserror::Error)]
pub enum VppError {
    /// The socket could not be opened.
    #[error("connecting to the VPP plugin at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Framing or I/O failed; the connection is unusable.
    #[error("VPP plugin channel: {0}")]
    Frame(#[from] FrameError),
    /// The socket could not be configured.
    #[error("VPP plugin channel: {0}")]
    Io(#[from] std::io::Error),
    /// The plugin closed the connection.
    #[error("the VPP plugin closed the connection")]
    Closed,
    /// A reply that is not a `FromPlugin`.
    #[error("the VPP plugin sent an undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A reply of the wrong kind.
    #[error("the VPP plugin answered {got} where {wanted} was expected")]
    Unexpected {
        /// What was expected.
        wanted: &'static str,
        /// What came.
        got: String,
    },
    /// An `Applied` for another generation.
    #[error("the VPP plugin answered for generation {got}, not {wanted}")]
    WrongGeneration {
        /// The generation pushed.
        wanted: u64,
        /// The one answered.
        got: u64,
    },
    /// A generation the plugin cannot take (nothing was sent).
    #[error("generation {id} is {bytes} bytes encoded; the VPP plugin takes at most {cap} bytes ({why})")]
    TooLarge {
        /// The generation.
        id: u64,
        /// Its encoded size.
        bytes: u64,
        /// The plugin's cap.
        cap: u64,
        /// Which cap, and where it is set.
        why: &'static str,
    },
    /// The plugin refused a generation (it keeps its previous one).
    #[error("the VPP plugin refused the generation: {0}")]
    Refused(String),
}

/// A connection to the plugin.
#[derive(Debug)]
pub struct VppChannel {
    reader: FrameReader<BufReader<UnixStream>>,
    writer: FrameWriter<UnixStream>,
    plugin_version: String,
    active: u64,
    /// The plugin's largest chunk (0: it takes no chunks).
    max_chunk_bytes: u64,
    /// The plugin's largest generation (0: not said).
    max_generation_bytes: u64,
    /// The chunk size aimed for.
    chunk_bytes: u64,
}

/// Parses `--dataplane vpp:SOCKET` into the socket path.
pub fn parse_dataplane_arg(arg: &str) -> Option<PathBuf> {
    arg.strip_prefix("vpp:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

impl VppChannel {
    /// Connects, says `Hello` (epoch 0, no bindings) and reads the plugin's
    /// `HelloReply`.
    ///
    /// # Errors
    ///
    /// [`VppError`] if the socket cannot be opened or the plugin does not answer `Hello`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, VppError> {
        Self::connect_with(path, 0, &[])
    }

    /// Connects as agent run `epoch` with the operator's `bindings`.
    ///
    /// # Errors
    ///
    /// As for [`VppChannel::connect`].
    pub(crate) fn connect_with(
        path: impl AsRef<Path>,
        epoch: u64,
        bindings: &[InterfaceBinding],
    ) -> Result<Self, VppError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| VppError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        // A plugin that stops reading must not hang the sink's thread for good.
        stream.set_write_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        let mut ch = VppChannel {
            reader: FrameReader::new(BufReader::new(stream.try_clone()?)),
            writer: FrameWriter::new(stream),
            plugin_version: String::new(),
            active: 0,
            max_chunk_bytes: 0,
            max_generation_bytes: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        };
        let reply = ch.ask(to_plugin::Msg::Hello(Hello {
            agent_version: AGENT_VERSION.to_string(),
            epoch,
            bindings: bindings.to_vec(),
            interfaces_when_changed: true,
            interfaces_as_changes: true,
        }))?;
        match reply {
            from_plugin::Msg::Hello(h) => {
                ch.plugin_version = h.plugin_version;
                ch.active = h.active_generation;
                ch.max_chunk_bytes = h.max_chunk_bytes;
                ch.max_generation_bytes = h.max_generation_bytes;
                Ok(ch)
            }
            other => Err(unexpected("HelloReply", &other)),
        }
    }

    /// Whether the plugin is still there: a closed or failed socket is not. Checked
    /// without blocking. The plugin never sends unasked, so any pending byte is a
    /// protocol error too and counts as gone (the caller reconnects).
    pub(crate) fn is_alive(&self) -> bool {
        use std::io::Read;
        let mut stream = self.writer.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = match stream.read(&mut byte) {
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        let _ = stream.set_nonblocking(false);
        alive
    }

    /// The plugin's version string.
    pub fn plugin_version(&self) -> &str {
        &self.plugin_version
    }

    /// Sets the chunk size aimed for (bounded by what the plugin takes).
    pub fn set_chunk_bytes(&mut self, bytes: u64) {
        self.chunk_bytes = bytes.max(1);
    }

    /// The generation the plugin holds, as far as this channel knows (0: none).
    pub fn active_generation(&self) -> u64 {
        self.active
    }

    /// Pushes generation `id` as a full snapshot (an `InSync` is appended if `msgs` does
    /// not end with one).
    ///
    /// # Errors
    ///
    /// [`VppError`] if the channel broke; a refusal is `Ok` with `ok == false` (the
    /// plugin keeps its previous generation).
    pub fn push_full(
        &mut self,
        id: u64,
        mut msgs: Vec<pb::ToDataplane>,
    ) -> Result<Applied, VppError> {
        let ends_in_sync = matches!(
            msgs.last().and_then(|m| m.payload.as_ref()),
            Some(pb::to_dataplane::Payload::InSync(_))
        );
        if !ends_in_sync {
            msgs.push(pb::ToDataplane {
                sequence_number: 0,
                payload: Some(pb::to_dataplane::Payload::InSync(pb::InSync {})),
            });
        }
        self.push(Generation {
            id,
            full: true,
            base_id: 0,
            updates: msgs,
            more: false,
        })
    }

    /// Pushes generation `id` as a delta on generation `base`.
    ///
    /// # Errors
    ///
    /// As for [`VppChannel::push_full`].
    pub fn push_delta(
        &mut self,
        id: u64,
        base: u64,
        msgs: Vec<pb::ToDataplane>,
    ) -> Result<Applied, VppError> {
        self.push(Generation {
            id,
            full: false,
            base_id: base,
            updates: msgs,
            more: false,
        })
    }

    /// Pushes generation `id`: the delta on `base` when the plugin holds `base`, else
    /// the full snapshot `snapshot()` (which is only built when needed). A delta the
    /// plugin refuses is followed by the full snapshot.
    ///
    /// # Errors
    ///
    /// As for [`VppChannel::push_full`].
    pub fn sync(
        &mut self,
        id: u64,
        base: u64,
        delta: Vec<pb::ToDataplane>,
        snapshot: impl FnOnce() -> Vec<pb::ToDataplane>,
    ) -> Result<Applied, VppError> {
        if base != 0 && self.active == base {
            let applied = self.push_delta(id, base, delta)?;
            if applied.ok {
                return Ok(applied);
            }
        }
        self.push_full(id, snapshot())
    }

    /// Asks the plugin to render a view.
    ///
    /// # Errors
    ///
    /// [`VppError`] if the channel broke or the answer is not a `ShowReply`.
    pub(crate) fn show(&mut self, req: ShowRequest) -> Result<ShowReply, VppError> {
        match self.ask(to_plugin::Msg::Show(req))? {
            from_plugin::Msg::Show(r) => Ok(r),
            other => Err(unexpected("ShowReply", &other)),
        }
    }

    /// Reads the plugin's counters.
    ///
    /// # Errors
    ///
    /// [`VppError`] if the channel broke or the answer is not a `CountersReply`.
    pub(crate) fn counters(&mut self) -> Result<api::CountersReply, VppError> {
        match self.ask(to_plugin::Msg::Counters(api::CountersRequest {}))? {
            from_plugin::Msg::Counters(r) => Ok(r),
            other => Err(unexpected("CountersReply", &other)),
        }
    }

    /// Hands the plugin a NIC share to install through VPP's flow layer.
    ///
    /// # Errors
    ///
    /// [`VppError`] if the channel broke or the answer is not a `NicShareApplied`.
    pub fn nic_share(&mut self, share: NicShare) -> Result<NicShareApplied, VppError> {
        match self.ask(to_plugin::Msg::NicShare(share))? {
            from_plugin::Msg::NicShare(r) => Ok(r),
            other => Err(unexpected("NicShareApplied", &other)),
        }
    }

    /// The flows the plugin sampled since the last call (the first call turns its
    /// sampling on).
    ///
    /// # Errors
    ///
    /// [`VppError`] if the channel broke or the answer is not `FlowSamples`.
    pub fn flow_samples(&mut self) -> Result<FlowSamples, VppError> {
        match self.ask(to_plugin::Msg::FlowSamples(FlowSamplesRequest {}))? {
            from_plugin::Msg::FlowSamples(r) => Ok(r),
            other => Err(unexpected("FlowSamples", &other)),
        }
    }

    fn push(&mut self, g: Generation) -> Result<Applied, VppError> {
        let id = g.id;
        let bytes = g.encoded_len() as u64;
        if self.max_generation_bytes != 0 && bytes > self.max_generation_bytes {
            return Err(VppError::TooLarge {
                id,
                bytes,
                cap: self.max_generation_bytes,
                why: "startup.conf capo { max-generation-mb }",
            });
        }
        let reply = if self.max_chunk_bytes == 0 {
            // A plugin without chunks reads one frame of at most Felix's cap.
            if bytes > DEFAULT_MAX_FRAME_LEN {
                return Err(VppError::TooLarge {
                    id,
                    bytes,
                    cap: DEFAULT_MAX_FRAME_LEN,
                    why: "the plugin's frame cap; this plugin version takes no chunks",
                });
            }
            self.ask(to_plugin::Msg::Generation(g))?
        } else {
            let limit = self.chunk_bytes.min(self.max_chunk_bytes);
            let chunks = split_into_chunks(g, limit);
            let last = chunks.len().saturating_sub(1);
            let mut reply = None;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let answer = self.ask(to_plugin::Msg::Generation(chunk))?;
                match answer {
                    from_plugin::Msg::Chunk(c) if i < last && c.generation == id => {}
                    // A refusal ends the generation whatever chunk it answers.
                    other => {
                        reply = Some(other);
                        break;
                    }
                }
            }
            reply.ok_or(VppError::Unexpected {
                wanted: "Applied",
                got: "ChunkReceived for the last chunk".to_string(),
            })?
        };
        match reply {
            from_plugin::Msg::Applied(a) => {
                if a.generation != id {
                    return Err(VppError::WrongGeneration {
                        wanted: id,
                        got: a.generation,
                    });
                }
                if a.ok {
                    self.active = id;
                }
                Ok(a)
            }
            other => Err(unexpected("Applied", &other)),
        }
    }

    fn ask(&mut self, msg: to_plugin::Msg) -> Result<from_plugin::Msg, VppError> {
        self.writer.write_message(&ToPlugin { msg: Some(msg) })?;
        let frame = self.reader.read_frame()?.ok_or(VppError::Closed)?;
        let reply = FromPlugin::decode(frame.bytes.as_slice())?;
        reply.msg.ok_or_else(|| VppError::Unexpected {
            wanted: "a message",
            got: "an empty FromPlugin".to_string(),
        })
    }
}

/// Splits `g` into chunks of at most about `limit` encoded bytes each, in order: all
/// but the last have `more` set. An IP-set update larger than `limit` is split by
/// members into the set's update (the first members) and deltas adding the rest;
/// a delta into deltas (removals first, as a delta applies them). Any other single
/// update larger than `limit` travels alone, for the plugin's frame cap to judge.
pub fn split_into_chunks(g: Generation, limit: u64) -> Vec<Generation> {
    use prost::encoding::encoded_len_varint;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
    let in_list = |m: &pb::ToDataplane| {
        let len = m.encoded_len();
        1 + encoded_len_varint(len as u64) + len
    };
    let Generation {
        id,
        full,
        base_id,
        updates,
        more: _,
    } = g;
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0usize;
    for update in updates.into_iter().flat_map(|u| split_update(u, limit)) {
        let bytes = in_list(&update);
        if !current.is_empty() && current_bytes + bytes > limit {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(update);
    }
    chunks.push(current);
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, updates)| Generation {
            id,
            full,
            base_id,
            updates,
            more: i < last,
        })
        .collect()
}

/// One update as pieces of at most about `limit` bytes (IP-set updates only; others
/// whole).
fn split_update(update: pb::ToDataplane, limit: usize) -> Vec<pb::ToDataplane> {
    use pb::to_dataplane::Payload as P;
    // Room for the id, type, tags and lengths around the members.
    const OVERHEAD: usize = 1024;
    if update.encoded_len() + 16 <= limit {
        return vec![update];
    }
    let seq = update.sequence_number;
    let wrap = |payload| pb::ToDataplane {
        sequence_number: seq,
        payload: Some(payload),
    };
    let budget = limit.saturating_sub(OVERHEAD).max(1);
    match update.payload {
        Some(P::IpsetUpdate(mut u)) => {
            let mut pieces = member_pieces(std::mem::take(&mut u.members), budget).into_iter();
            let first = pieces.next().unwrap_or_default();
            let mut out = vec![wrap(P::IpsetUpdate(pb::IpSetUpdate {
                members: first,
                ..u.clone()
            }))];
            out.extend(pieces.map(|added| {
                wrap(P::IpsetDeltaUpdate(pb::IpSetDeltaUpdate {
                    id: u.id.clone(),
                    added_members: added,
                    removed_members: Vec::new(),
                }))
            }));
            out
        }
        Some(P::IpsetDeltaUpdate(d)) => {
            let removed = member_pieces(d.removed_members, budget)
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|removed| (Vec::new(), removed));
            let added = member_pieces(d.added_members, budget)
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|added| (added, Vec::new()));
            removed
                .chain(added)
                .map(|(added_members, removed_members)| {
                    wrap(P::IpsetDeltaUpdate(pb::IpSetDeltaUpdate {
                        id: d.id.clone(),
                        added_members,
                        removed_members,
                    }))
                })
                .collect()
        }
        payload => vec![pb::ToDataplane {
            sequence_number: seq,
            payload,
        }],
    }
}

/// `members` in consecutive runs of at most `budget` encoded bytes (at least one
/// member each; one empty run for no members).
fn member_pieces(members: Vec<String>, budget: usize) -> Vec<Vec<String>> {
    let mut pieces = vec![Vec::new()];
    let mut bytes = 0usize;
    for m in members {
        let len = 1 + prost::encoding::encoded_len_varint(m.len() as u64) + m.len();
        if bytes + len > budget && pieces.last().is_some_and(|p| !p.is_empty()) {
            pieces.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        if let Some(p) = pieces.last_mut() {
            p.push(m);
        }
    }
    pieces
}

fn unexpected(wanted: &'static str, got: &from_plugin::Msg) -> VppError {
    let got = match got {
        from_plugin::Msg::Hello(_) => "HelloReply",
        from_plugin::Msg::Applied(_) => "Applied",
        from_plugin::Msg::Show(_) => "ShowReply",
        from_plugin::Msg::Counters(_) => "CountersReply",
        from_plugin::Msg::Chunk(_) => "ChunkReceived",
        from_plugin::Msg::NicShare(_) => "NicShareApplied",
        from_plugin::Msg::FlowSamples(_) => "FlowSamples",
    };
    VppError::Unexpected {
        wanted,
        got: got.to_string(),
    }
}

/// This run's agent epoch: the start time in nanoseconds since the Unix epoch. A
/// restarted agent has a larger one, so its generations replace the old run's in the
/// plugin whatever their ids (the plugin orders generations by `(epoch, id)`).
pub fn agent_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    })
}

/// A `--bind` value that is not `ENDPOINT=VPP_INTERFACE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected ENDPOINT=VPP_INTERFACE, e.g. default/ts2=host-veth-ts2")]
pub struct BindingError(String);

/// Parses `--bind ENDPOINT=VPP_INTERFACE`.
///
/// # Errors
///
/// [`BindingError`] when either side is missing.
pub fn parse_binding(arg: &str) -> Result<InterfaceBinding, BindingError> {
    match arg.split_once('=') {
        Some((e, v)) if !e.is_empty() && !v.is_empty() => Ok(InterfaceBinding {
            endpoint: e.to_string(),
            vpp_interface: v.to_string(),
        }),
        _ => Err(BindingError(arg.to_string())),
    }
}

/// What the VPP sink has got the plugin to confirm (read by the API without I/O).
#[derive(Debug, Clone, Default)]
pub struct VppStatus {
    /// Connected to the plugin now.
    pub connected: bool,
    /// The newest generation the agent handed to the sink.
    pub wanted: u64,
    /// The newest generation the plugin acknowledged as applied (0: none).
    pub confirmed: u64,
    /// The last refusal or channel error, with the generation it concerned.
    pub last_error: Option<(u64, String)>,
    /// Endpoints the plugin has no interface for.
    pub unknown_interfaces: Vec<String>,
    /// Where the plugin polices each endpoint.
    pub interfaces: Vec<BoundInterface>,
    /// `--nic vpp-flow`: the flow-layer entries the NIC share may use (None: no
    /// share is planned).
    pub share_capacity: Option<u32>,
    /// The share's rules the plugin last acknowledged.
    pub share_rules: usize,
    /// The generation of the last acknowledged share.
    pub share_generation: u64,
    /// What each hardware interface took of it.
    pub flow_layer: Vec<api::FlowLayerInterface>,
    /// The last share the plugin refused, and why.
    pub share_error: Option<String>,
}

impl VppStatus {
    /// What the sink says of `generation`: `applied`, `refused: …`, or `pending`.
    pub fn outcome(&self, generation: u64) -> String {
        if self.confirmed >= generation && self.confirmed != 0 {
            return "applied (acknowledged by the VPP plugin)".into();
        }
        match &self.last_error {
            Some((g, e)) if *g >= generation => format!("not applied: {e}; retrying"),
            _ => "pending: not yet acknowledged by the VPP plugin".into(),
        }
    }
}

/// Work for the sink's thread.
enum Job {
    /// A new generation: the updates since the previous one, or the whole state.
    Commit {
        generation: u64,
        change: Change,
    },
    Show(ShowRequest, mpsc::Sender<Result<ShowReply, RequestError>>),
    Counters(mpsc::Sender<Result<api::CountersReply, RequestError>>),
}

enum Change {
    Delta(Vec<capo_policy::Update>),
    Full(Box<capo_policy::State>),
}

/// How long an API request waits for the plugin (it may be applying a generation).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the sink checks the plugin when nothing happens (liveness, retries).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often the NIC share is sent again while nothing changes (interfaces VPP
/// added get it then).
const SHARE_REFRESH: Duration = Duration::from_secs(5);

/// How often the plugin's sampled flows are read (and the share planned again when
/// new flows came).
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Most sampled flows the sink keeps (the hottest).
const MAX_SAMPLES: usize = 16_384;

/// A sampled flow counts in plans for this long after it was last sampled.
const SAMPLE_WINDOW: Duration = Duration::from_secs(30);

/// The longest wait between two tries of a generation the plugin refused or could
/// not take (the wait doubles from [`IDLE_CHECK`] after each failure; a new
/// generation is tried at once).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Why a request of the API to the VPP plugin failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The sink's thread has ended.
    #[error("the VPP sink stopped")]
    SinkStopped,
    /// The plugin did not answer in time (it may be applying a generation).
    #[error("the VPP plugin did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// The plugin could not be reached, or failed the request (its error's text:
    /// it crosses from the sink's thread).
    #[error("{0}")]
    Channel(String),
    /// The plugin refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A handle on the VPP sink for the API: views and counters from the plugin, and
/// what it confirmed. Cheap to clone; never holds the daemon.
#[derive(Clone)]
pub struct VppHandle {
    jobs: mpsc::Sender<Job>,
    status: Arc<Mutex<VppStatus>>,
}

impl std::fmt::Debug for VppHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VppHandle").finish_non_exhaustive()
    }
}

impl VppHandle {
    /// What the plugin confirmed.
    pub fn status(&self) -> VppStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn ask<T>(
        &self,
        job: impl FnOnce(mpsc::Sender<Result<T, RequestError>>) -> Job,
    ) -> Result<T, RequestError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(job(tx))
            .map_err(|_| RequestError::SinkStopped)?;
        rx.recv_timeout(REQUEST_TIMEOUT)
            .map_err(|_| RequestError::Timeout)?
    }

    /// A `show capo …` view, rendered by the plugin (`vppctl`'s text).
    ///
    /// # Errors
    ///
    /// The plugin is unreachable, did not answer in time, or refused the view.
    pub fn show(&self, view: &str, verbose: bool) -> Result<ShowReply, RequestError> {
        let req = ShowRequest {
            view: view.to_string(),
            verbose,
        };
        let reply = self.ask(|tx| Job::Show(req, tx))?;
        if reply.error.is_empty() {
            Ok(reply)
        } else {
            Err(RequestError::Refused(reply.error))
        }
    }

    /// The plugin's counters.
    ///
    /// # Errors
    ///
    /// The plugin is unreachable or did not answer in time.
    pub(crate) fn counters(&self) -> Result<api::CountersReply, RequestError> {
        self.ask(Job::Counters)
    }
}

/// The NIC share through VPP's flow layer (`--nic vpp-flow[:CAPACITY]`,
/// `--vpp-uplink NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicShareConfig {
    /// Flow-layer entries the share may use.
    pub capacity: u32,
    /// VPP interfaces where traffic from outside the node arrives: the share goes on
    /// their hardware besides that of every policed interface.
    pub uplinks: Vec<String>,
}

/// The VPP plugin as one of the agent's dataplanes (`--dataplane vpp:SOCKET`).
///
/// The daemon hands it generations without waiting: they go over a channel to the
/// sink's own thread, which keeps its own copy of the policy (so that a full snapshot
/// can be sent at any time), talks to the plugin, and records what the plugin
/// acknowledged. A plugin that is slow or gone delays only this thread: Felix, the
/// API and other dataplanes go on. Generations that arrive while a push is in flight
/// are merged into one delta. Each is reported applied only once the plugin said so;
/// a refused or unacknowledged one is retried as a full snapshot, after 1 s, then
/// waiting twice as long after each failure (at most 30 s), and at once when a new
/// generation arrives.
pub struct VppSink {
    handle: VppHandle,
}

impl VppSink {
    /// A sink for the plugin's control socket at `path`, binding endpoints with
    /// `bindings` first; starts its thread (it connects on the first generation).
    pub fn new(path: PathBuf, bindings: Vec<InterfaceBinding>) -> Self {
        VppSink::with_nic_share(path, bindings, None)
    }

    /// [`VppSink::new`], and with `share` each generation's NIC share is planned for
    /// VPP's flow layer and sent to the plugin to install (`--nic vpp-flow`; see
    /// [`crate::sinks::vpp_share`]).
    pub fn with_nic_share(
        path: PathBuf,
        bindings: Vec<InterfaceBinding>,
        share: Option<NicShareConfig>,
    ) -> Self {
        let (jobs, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(VppStatus {
            share_capacity: share.as_ref().map(|s| s.capacity),
            ..VppStatus::default()
        }));
        let worker = SinkThread {
            path,
            bindings,
            channel: None,
            state: None,
            generation: 0,
            pushed: 0,
            pending: Some(Vec::new()),
            status: Arc::clone(&status),
            last_failure: None,
            retry: None,
            share,
            share_held: Vec::new(),
            share_plan: None,
            share_lowered: None,
            share_sent: None,
            samples: HashMap::new(),
            samples_read: None,
        };
        let spawned = std::thread::Builder::new()
            .name("capo-vpp-sink".into())
            .spawn(move || worker.run(&rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the VPP sink's thread");
        }
        VppSink {
            handle: VppHandle { jobs, status },
        }
    }

    /// A handle for the API.
    pub fn handle(&self) -> VppHandle {
        self.handle.clone()
    }
}

impl PolicySink for VppSink {
    fn name(&self) -> &str {
        "vpp"
    }

    fn commit(
        &mut self,
        generation: u64,
        state: &capo_policy::State,
        _ids: &capo_policy::IdTable,
        delta: Option<&[capo_policy::Update]>,
    ) -> Result<Committed, SinkError> {
        let change = match delta {
            Some(d) => Change::Delta(d.to_vec()),
            None => Change::Full(Box::new(state.clone())),
        };
        self.handle
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .wanted = generation;
        self.handle
            .jobs
            .send(Job::Commit { generation, change })
            .map_err(|_| SinkError::Stopped("VPP"))?;
        Ok(Committed::new(
            "handed to the VPP sink; pending the plugin's acknowledgement",
        ))
    }

    fn dataplane(&self) -> Dataplane {
        Dataplane::Vpp(self.handle())
    }
}

/// Why the sink could not push a generation to the plugin.
#[derive(Debug, thiserror::Error)]
enum PushError {
    /// Nothing to push yet.
    #[error("no policy yet")]
    NoPolicy,
    /// The plugin could not be reached or did not answer.
    #[error(transparent)]
    Channel(#[from] VppError),
}

/// The sink's thread: owns the channel and its copy of the policy.
struct SinkThread {
    path: PathBuf,
    bindings: Vec<InterfaceBinding>,
    channel: Option<VppChannel>,
    /// The policy as of `generation` (None before the first).
    state: Option<capo_policy::State>,
    generation: u64,
    /// The generation the plugin holds from this sink (0: none).
    pushed: u64,
    /// The updates since `pushed` (None: a full snapshot is needed).
    pending: Option<Vec<capo_policy::Update>>,
    status: Arc<Mutex<VppStatus>>,
    /// The last failure logged, so a plugin that stays away is logged once.
    last_failure: Option<String>,
    /// After a failure: when to try again and the wait that led there.
    retry: Option<(std::time::Instant, Duration)>,
    /// `--nic vpp-flow`: the NIC share's size and uplinks (None: no share).
    share: Option<NicShareConfig>,
    /// The share the plugin last acknowledged.
    share_held: Vec<capo_proto::capo::dataplane::v1::FlowLayerRule>,
    /// The share planned for a generation.
    share_plan: Option<(u64, SharePlan)>,
    /// The lowering the generation's shares are planned on (new samples plan again
    /// on it).
    share_lowered: Option<(u64, capo_offload::OffloadProgram)>,
    /// When a share was last acknowledged.
    share_sent: Option<std::time::Instant>,
    /// The plugin's sampled flows, with when each was last sampled.
    samples: HashMap<capo_policy::Packet, (capo_offload::plan::FlowSample, std::time::Instant)>,
    /// When they were last read.
    samples_read: Option<std::time::Instant>,
}

impl SinkThread {
    fn run(mut self, jobs: &mpsc::Receiver<Job>) {
        loop {
            let wait = self.retry.map_or(IDLE_CHECK, |(at, _)| {
                at.saturating_duration_since(std::time::Instant::now())
                    .min(IDLE_CHECK)
            });
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    self.take(job);
                    // Merge whatever else is queued before talking to the plugin.
                    while let Ok(job) = jobs.try_recv() {
                        self.take(job);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.channel.as_ref().is_some_and(|c| !c.is_alive()) {
                        tracing::warn!(socket = %self.path.display(), "the VPP plugin went away; reconnecting");
                        self.disconnected();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let due = self
                .retry
                .is_none_or(|(at, _)| std::time::Instant::now() >= at);
            if due
                && self.state.is_some()
                && (self.pushed != self.generation || self.channel.is_none())
            {
                self.sync();
            } else if self.share.is_some()
                && self.channel.is_some()
                && self.pushed == self.generation
            {
                if self.read_samples() {
                    // New flows: plan this generation's share again.
                    self.share_plan = None;
                    self.send_planned_share();
                } else if self.share_due() {
                    // Interfaces VPP added since get the share too.
                    self.send_planned_share();
                }
            }
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Commit { generation, change } => {
                match change {
                    Change::Full(state) => {
                        self.state = Some(*state);
                        self.pending = None;
                    }
                    Change::Delta(updates) => {
                        if let Some(state) = self.state.as_mut() {
                            for u in &updates {
                                if let Err(e) = state.apply(u.clone()) {
                                    // Cannot happen (the daemon validated it): resync whole.
                                    tracing::error!(error = %e, "VPP sink's copy of the policy refused an update");
                                    self.pending = None;
                                }
                            }
                            if let Some(p) = self.pending.as_mut() {
                                p.extend(updates);
                            }
                        }
                    }
                }
                self.generation = generation;
                // A new generation may be what the plugin accepts: try it at once.
                self.retry = None;
            }
            Job::Show(req, reply) => {
                let _ = reply.send(self.ask(|ch| ch.show(req)));
            }
            Job::Counters(reply) => {
                let _ = reply.send(self.ask(VppChannel::counters));
            }
        }
    }

    /// A read-only request to the plugin; a failed one drops the connection (the
    /// next push reconnects).
    fn ask<T>(
        &mut self,
        f: impl FnOnce(&mut VppChannel) -> Result<T, VppError>,
    ) -> Result<T, RequestError> {
        let r = self
            .connected()
            .and_then(f)
            .map_err(|e| RequestError::Channel(e.to_string()));
        if r.is_err() {
            self.disconnected();
        }
        r
    }

    fn status(&self) -> std::sync::MutexGuard<'_, VppStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn disconnected(&mut self) {
        self.channel = None;
        self.pushed = 0;
        self.pending = None;
        self.status().connected = false;
    }

    fn connected(&mut self) -> Result<&mut VppChannel, VppError> {
        if self.channel.is_none() {
            let ch = VppChannel::connect_with(&self.path, agent_epoch(), &self.bindings)?;
            tracing::info!(
                socket = %self.path.display(),
                plugin = ch.plugin_version(),
                holds = ch.active_generation(),
                "connected to the VPP plugin"
            );
            self.pushed = ch.active_generation();
            if self.pushed == 0 || self.pushed != self.generation {
                // It holds nothing of this run, or not what the pending delta is on.
                self.pending = None;
            }
            self.channel = Some(ch);
            self.status().connected = true;
        }
        match self.channel.as_mut() {
            Some(ch) => Ok(ch),
            None => unreachable!("the channel was just set"),
        }
    }

    /// Pushes the generation in force: the pending delta when the plugin holds its
    /// base, else the whole state. With a NIC share, the share leaves the NIC first,
    /// and the new generation's share follows the generation.
    fn sync(&mut self) {
        let generation = self.generation;
        self.withdraw_share();
        let result = self.push();
        match result {
            Ok(a) if a.ok => {
                self.pushed = generation;
                self.pending = Some(Vec::new());
                self.last_failure = None;
                self.retry = None;
                if !a.unknown_interfaces.is_empty() {
                    tracing::warn!(interfaces = ?a.unknown_interfaces, "VPP has no interface of these endpoints (yet): they are policed once VPP has them");
                }
                tracing::info!(generation, "the VPP plugin applied the generation");
                let mut s = self.status();
                s.confirmed = generation;
                s.unknown_interfaces = a.unknown_interfaces;
                // Left out while they stay as last sent on this connection, and
                // sent as changes to that after the first whole list.
                if a.interfaces_changes {
                    apply_interface_changes(&mut s.interfaces, a.interfaces, &a.interfaces_gone);
                } else if !a.interfaces_unchanged {
                    s.interfaces = one_per_endpoint(a.interfaces);
                }
                drop(s);
                self.send_planned_share();
            }
            Ok(a) => {
                // Refused: the plugin keeps its previous generation; retry whole.
                self.pending = None;
                self.pushed = u64::MAX;
                self.failed(
                    generation,
                    format!("refused by the VPP plugin: {}", a.error),
                );
            }
            Err(e) => {
                self.disconnected();
                self.failed(
                    generation,
                    format!("VPP plugin unreachable ({e}); it keeps its last generation"),
                );
            }
        }
    }

    /// The share planned on the generation in force (planned once per generation).
    fn planned_share(&mut self) -> Option<&SharePlan> {
        let capacity = self.share.as_ref()?.capacity;
        let generation = self.generation;
        if self
            .share_plan
            .as_ref()
            .is_none_or(|(g, _)| *g != generation)
        {
            let state = self.state.as_ref()?;
            let started = std::time::Instant::now();
            // Flows not sampled for a while no longer count.
            self.samples
                .retain(|_, (_, seen)| seen.elapsed() < SAMPLE_WINDOW);
            let flows: Vec<_> = self.samples.values().map(|(s, _)| s.clone()).collect();
            if self
                .share_lowered
                .as_ref()
                .is_none_or(|(g, _)| *g != generation)
            {
                self.share_lowered = Some((generation, lower_share(state, generation)));
            }
            let program = &self.share_lowered.as_ref()?.1;
            let plan = plan_share_on(state, program, capacity, &flows);
            tracing::info!(
                generation,
                rules = plan.rules.len(),
                not_expressible = plan.not_expressible,
                sampled_flows = flows.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "NIC share planned for VPP's flow layer"
            );
            self.share_plan = Some((generation, plan));
        }
        self.share_plan.as_ref().map(|(_, p)| p)
    }

    /// Before a generation is pushed, the held share leaves the NIC (an empty share),
    /// so the NIC never decides for a generation software no longer holds. Its marks
    /// name the old generation, so none of them could stay anyway; a drop could, but
    /// knowing which needs the next plan, which would delay the push by a planning.
    fn withdraw_share(&mut self) {
        if self.share_held.is_empty() || self.channel.is_none() {
            return;
        }
        let share = NicShare {
            generation: self.pushed,
            rules: Vec::new(),
            uplinks: self.uplinks(),
        };
        self.send_share(share);
    }

    /// Sends the share of the generation the plugin now holds.
    fn send_planned_share(&mut self) {
        let generation = self.generation;
        let Some(rules) = self.planned_share().map(|p| p.rules.clone()) else {
            return;
        };
        let uplinks = self.uplinks();
        self.send_share(NicShare {
            generation,
            rules,
            uplinks,
        });
    }

    /// Reads the plugin's sampled flows when [`SAMPLE_PERIOD`] has passed; whether
    /// any flow is new.
    fn read_samples(&mut self) -> bool {
        if self
            .samples_read
            .is_some_and(|at| at.elapsed() < SAMPLE_PERIOD)
        {
            return false;
        }
        self.samples_read = Some(std::time::Instant::now());
        let reply = match self.connected().and_then(VppChannel::flow_samples) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the VPP plugin's sampled flows");
                self.disconnected();
                return false;
            }
        };
        let now = std::time::Instant::now();
        let mut new = false;
        for s in reply.flows.iter().filter_map(sample_from_proto) {
            match self.samples.get_mut(&s.packet) {
                Some((known, seen)) => {
                    known.hits += s.hits;
                    *seen = now;
                }
                None => {
                    new = true;
                    tracing::debug!(packet = ?s.packet, flags = ?s.tcp_flags, hits = s.hits, "new sampled flow");
                    self.samples.insert(s.packet, (s, now));
                }
            }
        }
        if self.samples.len() > MAX_SAMPLES {
            let mut hits: Vec<u64> = self.samples.values().map(|(s, _)| s.hits).collect();
            hits.sort_unstable_by(|a, b| b.cmp(a));
            let floor = hits.get(MAX_SAMPLES).copied().unwrap_or(0);
            self.samples.retain(|_, (s, _)| s.hits > floor);
        }
        new
    }

    fn uplinks(&self) -> Vec<String> {
        self.share
            .as_ref()
            .map(|s| s.uplinks.clone())
            .unwrap_or_default()
    }

    /// Whether the share is due again: it is re-sent every [`SHARE_REFRESH`] so that
    /// interfaces VPP added since get it.
    fn share_due(&self) -> bool {
        self.share.is_some()
            && self.channel.is_some()
            && self.pushed == self.generation
            && self
                .share_sent
                .is_none_or(|at| at.elapsed() >= SHARE_REFRESH)
    }

    fn send_share(&mut self, share: NicShare) {
        let generation = share.generation;
        let rules = share.rules.clone();
        // Tried once per refresh period, acknowledged or not.
        self.share_sent = Some(std::time::Instant::now());
        match self.connected().and_then(|ch| ch.nic_share(share)) {
            Ok(a) if a.error.is_empty() => {
                if !a.unknown_uplinks.is_empty() {
                    tracing::warn!(uplinks = ?a.unknown_uplinks, "VPP has no interface of these uplinks (--vpp-uplink)");
                }
                let installed: u32 = a.interfaces.iter().map(|i| i.installed).sum();
                tracing::debug!(
                    generation,
                    rules = rules.len(),
                    installed,
                    "the VPP plugin took the NIC share"
                );
                self.share_held = rules;
                let mut s = self.status();
                s.share_rules = self.share_held.len();
                s.share_generation = generation;
                s.flow_layer = a.interfaces;
                s.share_error = None;
            }
            Ok(a) => {
                tracing::warn!(generation, error = %a.error, "the VPP plugin refused the NIC share");
                self.status().share_error = Some(a.error);
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "NIC share not sent to the VPP plugin");
                self.disconnected();
            }
        }
    }

    fn failed(&mut self, generation: u64, msg: String) {
        let wait = self
            .retry
            .map_or(IDLE_CHECK, |(_, w)| (w * 2).min(MAX_RETRY_WAIT));
        self.retry = Some((std::time::Instant::now() + wait, wait));
        if self.last_failure.as_deref() != Some(msg.as_str()) {
            tracing::error!(generation, error = %msg, "generation not applied by the VPP plugin; retrying");
            self.last_failure = Some(msg.clone());
        }
        self.status().last_error = Some((generation, msg));
    }

    fn push(&mut self) -> Result<Applied, PushError> {
        let generation = self.generation;
        let pushed = self.pushed;
        let delta = self.pending.take();
        let state = self.state.take().ok_or(PushError::NoPolicy)?;
        let result = (|| {
            let ch = self.connected()?;
            let holds_base = ch.active_generation() == pushed && pushed != 0 && pushed != u64::MAX;
            match delta {
                Some(d) if holds_base => {
                    let msgs = d.iter().map(capo_felix::encode::update).collect();
                    ch.sync(generation, pushed, msgs, || {
                        capo_felix::encode::snapshot(&state)
                    })
                }
                _ => ch.push_full(generation, capo_felix::encode::snapshot(&state)),
            }
            .map_err(PushError::Channel)
        })();
        self.state = Some(state);
        result
    }
}

/// Hands every interface back to VPP: pushes an empty policy to the plugin at
/// `socket` as a new agent run, so that capo polices nothing and the node forwards as
/// it would without capo (the last step of removing capo without restarting VPP). A
/// capo-agent that connects later takes over again. Returns the plugin's version and
/// how many interfaces it policed before.
///
/// # Errors
///
/// The plugin cannot be reached, or it refused the empty generation (it then keeps
/// the previous one, and says why).
pub fn release(socket: &Path) -> Result<(String, usize), VppError> {
    let mut ch = VppChannel::connect_with(socket, agent_epoch(), &[])?;
    let before = ch
        .show(ShowRequest {
            view: "interfaces".into(),
            verbose: false,
        })
        .map(|r| r.text.lines().filter(|l| l.starts_with('[')).count())
        .unwrap_or(0);
    let empty = capo_felix::encode::snapshot(&capo_policy::State::new());
    let applied = ch.push_full(1, empty)?;
    if !applied.ok {
        return Err(VppError::Refused(applied.error));
    }
    Ok((ch.plugin_version().to_string(), before))
}

/// A whole list of interfaces, one entry per endpoint name: endpoints that share a
/// name are policed at one place (VPP binds by name), and changes name endpoints by
/// their names.
fn one_per_endpoint(list: Vec<BoundInterface>) -> Vec<BoundInterface> {
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|b| seen.insert(b.endpoint.clone()))
        .collect()
}

/// Applies an `Applied`'s interface changes to the list last got (one entry per
/// endpoint name): an endpoint policed elsewhere keeps its place, a new one comes
/// last, a gone one leaves.
fn apply_interface_changes(
    list: &mut Vec<BoundInterface>,
    changed: Vec<BoundInterface>,
    gone: &[String],
) {
    let mut at: HashMap<String, usize> = list
        .iter()
        .enumerate()
        .map(|(i, b)| (b.endpoint.clone(), i))
        .collect();
    for b in changed {
        match at.get(&b.endpoint).and_then(|i| list.get_mut(*i)) {
            Some(held) => *held = b,
            None => {
                at.insert(b.endpoint.clone(), list.len());
                list.push(b);
            }
        }
    }
    if !gone.is_empty() {
        let gone: HashSet<&str> = gone.iter().map(String::as_str).collect();
        list.retain(|b| !gone.contains(b.endpoint.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changes keep the list's order: an endpoint policed elsewhere stays where it
    /// was, a new one comes last, a gone one leaves.
    #[test]
    fn interface_changes_apply_in_place() {
        let b = |endpoint: &str, sw_if_index: u32| BoundInterface {
            endpoint: endpoint.into(),
            vpp_interface: endpoint.into(),
            sw_if_index,
            how: "name".into(),
        };
        let mut list = vec![b("tap0", 1), b("tun3", 7), b("tun4", 8)];
        apply_interface_changes(
            &mut list,
            vec![b("tun9", 19), b("tun3", 9)],
            &["tun4".to_string()],
        );
        let got: Vec<(&str, u32)> = list
            .iter()
            .map(|i| (i.endpoint.as_str(), i.sw_if_index))
            .collect();
        assert_eq!(got, [("tap0", 1), ("tun3", 9), ("tun9", 19)]);
        apply_interface_changes(&mut list, vec![], &[]);
        assert_eq!(list.len(), 3);
        // Two endpoints of one name are one entry, in a whole list and in changes
        // (a move names it twice).
        let mut list = one_per_endpoint(vec![b("tap0", 1), b("tun5", 5), b("tun5", 5)]);
        assert_eq!(list.len(), 2);
        apply_interface_changes(&mut list, vec![b("tun5", 6), b("tun5", 6)], &[]);
        let got: Vec<(&str, u32)> = list
            .iter()
            .map(|i| (i.endpoint.as_str(), i.sw_if_index))
            .collect();
        assert_eq!(got, [("tap0", 1), ("tun5", 6)]);
    }

    fn ipset_update(id: &str, members: Vec<String>) -> pb::ToDataplane {
        pb::ToDataplane {
            sequence_number: 7,
            payload: Some(pb::to_dataplane::Payload::IpsetUpdate(pb::IpSetUpdate {
                id: id.into(),
                members,
                r#type: pb::ip_set_update::IpSetType::Ip as i32,
            })),
        }
    }

    fn addrs(range: std::ops::Range<u32>) -> Vec<String> {
        range
            .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect()
    }

    /// Applies `updates` as the plugin would (convert, then the policy core).
    fn state_of(updates: &[pb::ToDataplane]) -> capo_policy::State {
        let mut state = capo_policy::State::new();
        for u in updates {
            if let capo_felix::convert::Converted::Update(u) =
                capo_felix::convert::convert(u.clone(), &state).unwrap()
            {
                state.apply(u).unwrap();
            }
        }
        state
    }

    #[test]
    fn chunks_are_bounded_ordered_and_apply_as_the_whole() {
        let updates = vec![
            ipset_update("s:small", addrs(0..3)),
            ipset_update("s:big", addrs(0..50_000)),
            pb::ToDataplane {
                sequence_number: 8,
                payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
                    pb::IpSetDeltaUpdate {
                        id: "s:big".into(),
                        added_members: addrs(60_000..90_000),
                        // Removed first, as one delta would: 40,000..49,999 go, and
                        // none of the added come back out.
                        removed_members: addrs(40_000..70_000),
                    },
                )),
            },
            ipset_update("s:after", addrs(5..9)),
        ];
        let whole = Generation {
            id: 9,
            full: false,
            base_id: 8,
            updates: updates.clone(),
            more: false,
        };
        let limit = 64 * 1024;
        let chunks = split_into_chunks(whole, limit);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.id, c.full, c.base_id), (9, false, 8));
            assert_eq!(c.more, i + 1 < chunks.len());
            assert!(c.encoded_len() as u64 <= limit + 64, "{}", c.encoded_len());
            assert!(!c.updates.is_empty());
        }
        let joined: Vec<pb::ToDataplane> = chunks.into_iter().flat_map(|c| c.updates).collect();
        assert!(joined
            .iter()
            .all(|u| u.sequence_number == 7 || u.sequence_number == 8));
        let (a, b) = (state_of(&updates), state_of(&joined));
        let sets = |s: &capo_policy::State| {
            s.ipsets()
                .iter()
                .map(|(id, set)| {
                    let mut m: Vec<_> = set.members().copied().collect();
                    m.sort();
                    (id.clone(), m)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sets(&a), sets(&b));
        let big = capo_policy::IpSetId::new("s:big").unwrap();
        assert_eq!(b.ipsets().get(&big).map(|s| s.len()), Some(70_000));
    }

    #[test]
    fn a_small_generation_is_one_chunk() {
        let g = Generation {
            id: 1,
            full: true,
            base_id: 0,
            updates: vec![ipset_update("s:a", addrs(0..10))],
            more: false,
        };
        let chunks = split_into_chunks(g.clone(), DEFAULT_CHUNK_BYTES);
        assert_eq!(chunks, vec![g]);
    }

    #[test]
    fn dataplane_arg() {
        assert_eq!(
            parse_dataplane_arg("vpp:/run/vpp/capo.sock"),
            Some(PathBuf::from("/run/vpp/capo.sock"))
        );
        assert_eq!(parse_dataplane_arg("vpp:"), None);
        assert_eq!(parse_dataplane_arg("embedded"), None);
    }

    /// A plugin stand-in that answers `Hello`, then closes the connection when told.
    fn plugin_that_leaves(
        path: &Path,
        leave: std::sync::mpsc::Receiver<()>,
    ) -> std::thread::JoinHandle<()> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = FrameReader::new(conn.try_clone().unwrap());
            let mut writer = FrameWriter::new(conn);
            let _hello = reader.read_frame().unwrap();
            writer
                .write_message(&FromPlugin {
                    msg: Some(from_plugin::Msg::Hello(
                        capo_proto::capo::dataplane::v1::HelloReply {
                            plugin_version: "test".into(),
                            active_generation: 0,
                            active_epoch: 0,
                            ..Default::default()
                        },
                    )),
                })
                .unwrap();
            let _ = leave.recv();
        })
    }

    #[test]
    fn a_plugin_that_went_away_is_noticed() {
        let dir = std::env::temp_dir().join(format!("capo-vpp-alive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("capo.sock");
        let (tx, rx) = std::sync::mpsc::channel();
        let plugin = plugin_that_leaves(&path, rx);
        let ch = VppChannel::connect(&path).unwrap();
        assert!(ch.is_alive());
        assert!(ch.is_alive(), "checking twice changes nothing");
        tx.send(()).unwrap();
        plugin.join().unwrap();
        assert!(!ch.is_alive());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
