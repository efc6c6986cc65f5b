//! Felix's driver in a CalicoVPP cluster: one Felix feeds both CalicoVPP's agent
//! and capo.
//!
//! Felix starts one driver process (fds 3 and 4). CalicoVPP's `calico-vpp-agent`
//! needs the whole stream (node addresses, pools, routes, endpoints and policy) and
//! answers Felix's status; capo needs the policy part. The tee copies Felix's bytes
//! unchanged to CalicoVPP's socket and CalicoVPP's bytes back to Felix, exactly as
//! CalicoVPP's own `felix-api-proxy` does, and exits when either side closes (Felix
//! then restarts it and resyncs both).
//!
//! capo is a side branch that never holds CalicoVPP up: the tee follows the stream
//! with capo's own Felix session and feeds capo-agent's Felix socket a normalized
//! stream (v3.32 schema): on every (re)connection the whole policy as a fresh sync
//! (`ConfigUpdate`, snapshot, `InSync`), then each change as Felix sends it. When
//! capo-agent is absent, slow or restarting, only capo's branch is dropped and
//! reconnected; Felix and CalicoVPP see nothing of it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capo_felix::frame::{encode_frame, Frame, FrameReader, Schema};
use capo_felix::session::{Event, Phase, Session};

/// Where the tee sends what.
#[derive(Debug, Clone)]
pub struct TeeOptions {
    /// CalicoVPP's Felix socket: gets every byte, and its answers go to Felix.
    pub primary: PathBuf,
    /// capo-agent's Felix socket.
    pub capo: PathBuf,
    /// Felix's schema, when not detected from `CalicoVersion`.
    pub schema: Option<Schema>,
    /// Largest frame accepted from Felix.
    pub max_frame_len: u64,
    /// How often to try capo-agent's socket while it is not connected.
    pub capo_retry: Duration,
    /// Frames queued for capo before a slow capo-agent is dropped (and resynced).
    pub capo_queue: usize,
}

/// Why the tee stopped.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// CalicoVPP's socket could not be reached.
    #[error("cannot connect to {path} after {tries} tries: {source}")]
    Primary {
        /// The socket.
        path: PathBuf,
        /// How many times it was tried.
        tries: u32,
        /// The last error.
        source: std::io::Error,
    },
    /// Felix's stream broke (or was not a stream of frames).
    #[error("reading Felix: {0}")]
    Felix(#[from] capo_felix::frame::FrameError),
    /// Writing to CalicoVPP failed: it went away.
    #[error("writing to {path}: {source}")]
    PrimaryWrite {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// fd 3 or fd 4 is not usable.
    #[error("{0}")]
    Fds(String),
}

/// Connects to `path`, as `felix-api-proxy` does: `tries` attempts, one second apart.
pub fn connect_with_retries(path: &Path, tries: u32) -> Result<UnixStream, TeeError> {
    let mut last = None;
    for attempt in 1..=tries {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::warn!(socket = %path.display(), attempt, error = %e, "waiting for CalicoVPP's Felix socket");
                last = Some(e);
            }
        }
        if attempt < tries {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Err(TeeError::Primary {
        path: path.to_path_buf(),
        tries,
        source: last.unwrap_or_else(|| std::io::Error::other("no attempt")),
    })
}

/// capo's branch: the session that follows Felix, and the connection to capo-agent
/// when there is one. Both under one lock so that a new connection's snapshot and
/// the changes after it are never interleaved or lost.
struct CapoBranch {
    session: Session,
    /// Frames for the connected capo-agent (its writer thread sends them).
    queue: Option<SyncSender<Vec<u8>>>,
    /// Numbers capo-agent connections, so that a closed one's threads clear only
    /// their own.
    connection: u64,
    /// Set when capo's session could not follow Felix: capo is left alone until the
    /// next Felix sync (the tee's restart), CalicoVPP is not disturbed.
    broken: bool,
}

impl CapoBranch {
    /// Queues `bytes` for capo-agent; a full queue (capo-agent not reading) drops the
    /// connection, to be resynced on the next one.
    fn send(&mut self, bytes: Vec<u8>) {
        let Some(q) = &self.queue else { return };
        match q.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    "capo-agent is not keeping up: dropping its connection, it resyncs on the next"
                );
                self.queue = None;
            }
            Err(TrySendError::Disconnected(_)) => self.queue = None,
        }
    }

    /// Follows one Felix frame and forwards what changed to capo-agent.
    fn follow(&mut self, frame: &Frame) {
        if self.broken {
            return;
        }
        match self.session.on_frame(frame) {
            Ok(Event::Reconcile) => {
                let _ = self.session.take_applied();
                let snapshot = encode_snapshot(&self.session);
                self.send(snapshot);
            }
            Ok(_) => {
                let changes = self.session.take_applied();
                if !changes.is_empty() && self.session.phase() == Phase::InSync {
                    let mut bytes = Vec::new();
                    for u in &changes {
                        bytes.extend(encode_frame(&capo_felix::encode::update(u)));
                    }
                    self.send(bytes);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "capo cannot follow this Felix stream: capo-agent keeps its last policy until Felix resyncs; CalicoVPP is not affected");
                self.broken = true;
                self.queue = None;
            }
        }
    }
}

fn encode_snapshot(session: &Session) -> Vec<u8> {
    capo_felix::encode::snapshot(session.state())
        .iter()
        .flat_map(encode_frame)
        .collect()
}

/// Keeps capo-agent connected: connects while it is not, sends a new connection the
/// whole policy (once Felix is in sync), then hands it the changes.
fn run_capo_connector(branch: Arc<Mutex<CapoBranch>>, opts: TeeOptions) {
    let mut logged_absent = false;
    loop {
        let connected = branch
            .lock()
            .map(|b| b.queue.as_ref().is_some() || b.broken)
            .unwrap_or(true);
        if !connected {
            match UnixStream::connect(&opts.capo) {
                Ok(stream) => {
                    logged_absent = false;
                    attach_capo(&branch, stream, &opts);
                }
                Err(e) if !logged_absent => {
                    tracing::warn!(socket = %opts.capo.display(), error = %e, "capo-agent is not reachable; retrying");
                    logged_absent = true;
                }
                Err(_) => {}
            }
        }
        std::thread::sleep(opts.capo_retry);
    }
}

fn attach_capo(branch: &Arc<Mutex<CapoBranch>>, stream: UnixStream, opts: &TeeOptions) {
    let (tx, rx) = sync_channel::<Vec<u8>>(opts.capo_queue);
    let Ok(mut b) = branch.lock() else { return };
    // Queue the sync first, under the lock: changes that follow land behind it.
    if b.session.phase() == Phase::InSync {
        let snapshot = encode_snapshot(&b.session);
        if tx.try_send(snapshot).is_err() {
            return;
        }
    }
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    b.queue = Some(tx);
    b.connection += 1;
    let connection = b.connection;
    drop(b);
    tracing::info!(socket = %opts.capo.display(), "capo-agent connected");
    // Whichever side notices first that capo-agent went away lets the connector
    // reconnect (and resync), even while Felix is quiet.
    let gone = {
        let branch = Arc::clone(branch);
        move || {
            if let Ok(mut b) = branch.lock() {
                if b.connection == connection {
                    b.queue = None;
                }
            }
        }
    };
    let gone_too = gone.clone();
    // capo-agent's status reports are read and dropped: Felix hears CalicoVPP's.
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        tracing::warn!("capo-agent closed its connection; reconnecting");
        gone();
    });
    let mut writer = stream;
    std::thread::spawn(move || {
        for bytes in rx {
            if let Err(e) = writer.write_all(&bytes) {
                tracing::warn!(error = %e, "capo-agent went away; reconnecting");
                break;
            }
        }
        // Dropped (write failed, or the queue was given up): close both ways so that
        // capo-agent sees the end and the reader thread stops.
        let _ = writer.shutdown(std::net::Shutdown::Both);
        gone_too();
    });
}

/// Copies Felix (`felix_in`) to CalicoVPP (`primary`) and CalicoVPP's answers to
/// Felix (`felix_out`), with capo's branch beside. Returns when Felix closes its side
/// (`Ok`) or either side fails.
pub fn run<R, W>(
    felix_in: R,
    mut felix_out: W,
    primary: UnixStream,
    opts: TeeOptions,
) -> Result<(), TeeError>
where
    R: Read,
    W: Write + Send + 'static,
{
    let branch = Arc::new(Mutex::new(CapoBranch {
        session: Session::new(opts.schema),
        queue: None,
        connection: 0,
        broken: false,
    }));
    {
        let branch = Arc::clone(&branch);
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("capo-connector".into())
            .spawn(move || run_capo_connector(branch, opts))
            .map_err(|e| TeeError::Fds(format!("cannot start a thread: {e}")))?;
    }
    // CalicoVPP's answers go to Felix unchanged; its socket closing ends the tee.
    let mut from_primary = primary
        .try_clone()
        .map_err(|e| TeeError::Fds(format!("cannot clone the socket: {e}")))?;
    let primary_path = opts.primary.clone();
    std::thread::Builder::new()
        .name("calicovpp-to-felix".into())
        .spawn(move || {
            let r = std::io::copy(&mut from_primary, &mut felix_out);
            tracing::error!(socket = %primary_path.display(), result = ?r, "CalicoVPP's Felix socket closed: exiting so that Felix restarts and resyncs");
            std::process::exit(1);
        })
        .map_err(|e| TeeError::Fds(format!("cannot start a thread: {e}")))?;
    let mut to_primary = primary;
    let mut reader = FrameReader::with_max_frame_len(felix_in, opts.max_frame_len);
    while let Some(frame) = reader.read_frame()? {
        to_primary
            .write_all(&frame.wire_bytes())
            .map_err(|source| TeeError::PrimaryWrite {
                path: opts.primary.clone(),
                source,
            })?;
        if let Ok(mut b) = branch.lock() {
            b.follow(&frame);
        }
    }
    Ok(())
}
