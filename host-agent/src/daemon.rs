//! The agent's long-running side: one Felix connection at a time, each a fresh
//! sync; the last in-sync state is kept (fail-static) when a connection ends.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capo_policy::{IdTable, State};

use crate::felix::frame::{FrameReader, Schema, DEFAULT_MAX_FRAME_LEN};
use crate::felix::session::{Event, Phase, Session};
use crate::felix::stream::{self, Recorder, StreamError, STATUS_INTERVAL};

/// The socket CalicoVPP's felix-api-proxy connects to.
pub const DEFAULT_FELIX_SOCKET: &str = "/var/run/calico/felix-dataplane.sock";

/// How often a long snapshot logs progress, in frames.
const PROGRESS_EVERY: u64 = 10_000;

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
}

impl Default for FelixOptions {
    fn default() -> Self {
        FelixOptions {
            schema: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            record: None,
            status_interval: STATUS_INTERVAL,
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// Felix closed the stream.
    Eof,
    /// A protocol violation or bad input: the connection is dropped so that Felix
    /// starts over with a fresh snapshot.
    Resync(StreamError),
    /// The recording file could not be created.
    RecordSetup(std::io::Error),
}

/// Policy state across connections.
pub struct Daemon {
    opts: FelixOptions,
    ids: IdTable,
    live: Option<State>,
    generation: u64,
}

impl Daemon {
    /// A daemon with no state yet; `ids` carries interface presets.
    pub fn new(opts: FelixOptions, ids: IdTable) -> Self {
        Daemon {
            opts,
            ids,
            live: None,
            generation: 0,
        }
    }

    /// The state of the last in-sync connection, if any.
    pub fn live(&self) -> Option<&State> {
        self.live.as_ref()
    }

    /// Ids of the live state.
    pub fn ids(&self) -> &IdTable {
        &self.ids
    }

    /// Changes applied since start (one per reconcile or in-sync update).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Serves one Felix stream: `input` carries `ToDataplane` frames; status
    /// reports go to `output` when given. Returns when the stream ends or fails.
    pub fn serve_connection<R: Read, W: Write + Send + 'static>(
        &mut self,
        input: R,
        output: Option<W>,
    ) -> ConnectionEnd {
        let mut recorder = match &self.opts.record {
            Some(path) => match Recorder::create(path) {
                Ok(r) => Some(r),
                Err(e) => return ConnectionEnd::RecordSetup(e),
            },
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let status =
            output.map(|w| stream::spawn_status_writer(w, self.opts.status_interval, stop.clone()));
        let mut reader = FrameReader::with_max_frame_len(input, self.opts.max_frame_len);
        let mut session = Session::new(self.opts.schema);
        let started = Instant::now();
        let ids = &mut self.ids;
        let generation = &mut self.generation;
        let result = stream::run(
            &mut reader,
            &mut session,
            recorder.as_mut(),
            |s, frame, ev| match (ev, s.phase()) {
                (Event::Reconcile, _) => {
                    ids.sync(s.state());
                    *generation += 1;
                    let st = s.state();
                    tracing::info!(
                        generation = *generation,
                        frames = frame.index + 1,
                        schema = %s.schema(),
                        ipsets = st.ipsets().len(),
                        policies = st.policies().len(),
                        profiles = st.profiles().len(),
                        workloads = st.workloads().len(),
                        host_endpoints = st.host_endpoints().len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "in sync with Felix: snapshot reconciled"
                    );
                }
                (Event::Changed, Phase::InSync) => {
                    ids.sync(s.state());
                    *generation += 1;
                    tracing::debug!(
                        generation = *generation,
                        frame = frame.index,
                        "update applied"
                    );
                }
                (Event::Ignored(what), _) => {
                    tracing::debug!(frame = frame.index, payload = what, "ignored payload");
                }
                (_, Phase::Syncing) if (frame.index + 1) % PROGRESS_EVERY == 0 => {
                    let st = s.state();
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
            },
        );
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = status {
            let _ = h.join();
        }
        let in_sync = session.phase() == Phase::InSync;
        if in_sync {
            self.live = Some(session.into_state());
        }
        match result {
            Ok(()) => ConnectionEnd::Eof,
            Err(e) => {
                if !in_sync {
                    // The partial snapshot is dropped; the last in-sync state stays.
                    if let Some(live) = &self.live {
                        self.ids.sync(live);
                    }
                }
                ConnectionEnd::Resync(e)
            }
        }
    }
}

/// Binds the Felix socket, replacing a stale socket file left by a previous run.
pub fn bind_felix_socket(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

/// Accepts Felix connections one after another, forever (or until accept fails).
pub fn serve_felix_socket(listener: &UnixListener, daemon: &mut Daemon) -> std::io::Error {
    loop {
        let (conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) => return e,
        };
        tracing::info!("Felix connected: starting a fresh sync");
        let output = match conn.try_clone() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot clone the connection for status reports");
                None
            }
        };
        match daemon.serve_connection(&conn, output) {
            ConnectionEnd::Eof => tracing::info!("Felix closed the connection"),
            ConnectionEnd::Resync(e) => {
                tracing::error!(error = %e, "dropping the Felix connection to force a resync")
            }
            ConnectionEnd::RecordSetup(e) => {
                tracing::error!(error = %e, "cannot create the recording file; closing the connection")
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Both);
        if daemon.live().is_some() {
            tracing::info!(
                generation = daemon.generation(),
                "keeping the last in-sync policy until Felix reconnects"
            );
        }
    }
}

/// Exits the process on SIGTERM or SIGINT (Felix gives its driver 4 s), after
/// running `cleanup`.
pub fn exit_on_signals(cleanup: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
            cleanup();
            std::process::exit(0);
        }
    });
    Ok(())
}

/// Serves policy from manifests instead of Felix: the initial stream, then the
/// minimal updates for each change on disk, through the same session as Felix's
/// messages. Returns only if the first load fails.
pub fn serve_manifests(
    paths: Vec<PathBuf>,
    node: Option<String>,
    poll: Duration,
    daemon: &mut Daemon,
) -> Result<(), String> {
    let (mut watcher, initial) = crate::manifests::Watcher::start(paths, node.clone())?;
    let mut session = Session::new(None);
    daemon.feed(&mut session, &initial);
    tracing::info!(paths = ?watcher.paths(), "serving policy from manifests; watching for changes");
    loop {
        std::thread::sleep(poll);
        match watcher.poll() {
            Ok(None) => {}
            Ok(Some(msgs)) if msgs.is_empty() => {
                tracing::info!("manifests changed; no policy change")
            }
            Ok(Some(msgs)) => {
                tracing::info!(updates = msgs.len(), "manifests changed; applying updates");
                if !daemon.feed(&mut session, &msgs) {
                    // Cannot happen with valid manifests; start over from a full load.
                    let (w, full) = crate::manifests::Watcher::start(watcher.paths().to_vec(), node.clone())?;
                    watcher = w;
                    session = Session::new(None);
                    daemon.feed(&mut session, &full);
                }
            }
            Err(e) => tracing::error!(error = %e, "manifests are invalid; keeping the current policy"),
        }
    }
}

impl Daemon {
    /// Applies messages through `session` as if they came from Felix; returns false
    /// (after logging) if one is refused, in which case the rest are not applied.
    pub fn feed(&mut self, session: &mut Session, msgs: &[capo_proto::felix::v3_32::ToDataplane]) -> bool {
        let bytes = crate::demo::frames(msgs);
        let mut reader = FrameReader::new(bytes.as_slice());
        let ids = &mut self.ids;
        let generation = &mut self.generation;
        let result = stream::run(&mut reader, session, None, |s, _, ev| {
            if matches!(ev, Event::Reconcile) || (matches!(ev, Event::Changed) && s.phase() == Phase::InSync) {
                ids.sync(s.state());
                *generation += 1;
            }
        });
        if session.phase() == Phase::InSync {
            self.live = Some(session.state().clone());
        }
        match result {
            Ok(()) => {
                tracing::info!(generation = self.generation, "policy applied");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "update refused");
                false
            }
        }
    }
}
