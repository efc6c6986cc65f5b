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
//! The channel is blocking and owns its socket; a broken connection is an error and the
//! caller reconnects (the plugin keeps enforcing its last generation meanwhile).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capo_felix::frame::{FrameError, FrameReader, FrameWriter};
use capo_proto::capo::dataplane::v1::{
    from_plugin, to_plugin, Applied, FromPlugin, Generation, Hello, ToPlugin,
};
use capo_proto::felix::v3_32 as pb;
use prost::Message;

/// The agent's version, as sent in `Hello`.
pub const AGENT_VERSION: &str = concat!("capo-agent ", env!("CARGO_PKG_VERSION"));

/// How long a push may wait for its `Applied` (a large full generation takes a while).
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// A connection to the plugin.
#[derive(Debug)]
pub struct VppChannel {
    reader: FrameReader<BufReader<UnixStream>>,
    writer: FrameWriter<UnixStream>,
    plugin_version: String,
    active: u64,
}

/// Parses `--dataplane vpp:SOCKET` into the socket path.
pub fn parse_dataplane_arg(arg: &str) -> Option<PathBuf> {
    arg.strip_prefix("vpp:")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

impl VppChannel {
    /// Connects, says `Hello` and reads the plugin's `HelloReply`.
    ///
    /// # Errors
    ///
    /// [`VppError`] if the socket cannot be opened or the plugin does not answer `Hello`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, VppError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| VppError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        // A plugin that stops reading must not hang the agent (it writes under the
        // daemon's lock).
        stream.set_write_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        let mut ch = VppChannel {
            reader: FrameReader::new(BufReader::new(stream.try_clone()?)),
            writer: FrameWriter::new(stream),
            plugin_version: String::new(),
            active: 0,
        };
        let reply = ch.ask(to_plugin::Msg::Hello(Hello {
            agent_version: AGENT_VERSION.to_string(),
        }))?;
        match reply {
            from_plugin::Msg::Hello(h) => {
                ch.plugin_version = h.plugin_version;
                ch.active = h.active_generation;
                Ok(ch)
            }
            other => Err(unexpected("HelloReply", &other)),
        }
    }

    /// Whether the plugin is still there: a closed or failed socket is not. Checked
    /// without blocking. The plugin never sends unasked, so any pending byte is a
    /// protocol error too and counts as gone (the caller reconnects).
    pub fn is_alive(&self) -> bool {
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

    fn push(&mut self, g: Generation) -> Result<Applied, VppError> {
        let id = g.id;
        match self.ask(to_plugin::Msg::Generation(g))? {
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

fn unexpected(wanted: &'static str, got: &from_plugin::Msg) -> VppError {
    let got = match got {
        from_plugin::Msg::Hello(_) => "HelloReply",
        from_plugin::Msg::Applied(_) => "Applied",
    };
    VppError::Unexpected {
        wanted,
        got: got.to_string(),
    }
}

/// The VPP plugin as one of the agent's dataplanes (`--dataplane vpp:SOCKET`): each
/// generation goes to the plugin as a delta on the one it holds, or as a full
/// snapshot after a (re)connect. When the plugin is away it keeps its last
/// generation (fail-static); the agent reconnects on the next generation or tick.
pub struct VppSink {
    path: PathBuf,
    channel: Option<VppChannel>,
    /// The generation the plugin was last told about and accepted.
    pushed: u64,
    unknown_interfaces: Vec<String>,
}

impl VppSink {
    /// A sink for the plugin's control socket at `path` (not connected yet).
    pub fn new(path: PathBuf) -> Self {
        VppSink {
            path,
            channel: None,
            pushed: 0,
            unknown_interfaces: Vec::new(),
        }
    }

    fn push(
        &mut self,
        generation: u64,
        state: &capo_policy::State,
        delta: Option<&[capo_policy::Update]>,
    ) -> Result<String, String> {
        if self.channel.is_none() {
            let ch = VppChannel::connect(&self.path).map_err(|e| e.to_string())?;
            tracing::info!(
                socket = %self.path.display(),
                plugin = ch.plugin_version(),
                holds = ch.active_generation(),
                "connected to the VPP plugin"
            );
            self.channel = Some(ch);
        }
        let Some(ch) = self.channel.as_mut() else {
            return Err("not connected".into());
        };
        let delta_msgs: Vec<pb::ToDataplane> = delta
            .map(|d| d.iter().map(capo_felix::encode::update).collect())
            .unwrap_or_default();
        let base = if delta.is_some() { self.pushed } else { 0 };
        match ch.sync(generation, base, delta_msgs, || {
            capo_felix::encode::snapshot(state)
        }) {
            Ok(a) if a.ok => {
                self.pushed = generation;
                if a.unknown_interfaces != self.unknown_interfaces {
                    if !a.unknown_interfaces.is_empty() {
                        tracing::warn!(interfaces = ?a.unknown_interfaces, "VPP has no interface of these endpoints");
                    }
                    self.unknown_interfaces = a.unknown_interfaces.clone();
                }
                Ok(format!("VPP plugin holds generation {generation}"))
            }
            Ok(a) => Err(format!(
                "VPP plugin refused generation {generation}: {}",
                a.error
            )),
            Err(e) => {
                // The channel broke: reconnect next time, with a full snapshot.
                self.channel = None;
                Err(format!("VPP plugin: {e} (it keeps its last generation)"))
            }
        }
    }
}

impl crate::daemon::PolicySink for VppSink {
    fn name(&self) -> &str {
        "vpp"
    }

    fn commit(
        &mut self,
        generation: u64,
        state: &capo_policy::State,
        _ids: &capo_policy::IdTable,
        delta: Option<&[capo_policy::Update]>,
    ) -> Result<String, String> {
        self.push(generation, state, delta)
    }

    fn tick(&mut self, generation: u64, state: &capo_policy::State) {
        if self.channel.as_ref().is_some_and(|c| !c.is_alive()) {
            tracing::warn!(socket = %self.path.display(), "the VPP plugin went away; reconnecting");
            self.channel = None;
            self.pushed = 0;
        }
        if self.pushed == generation && self.channel.is_some() {
            return;
        }
        match self.push(generation, state, None) {
            Ok(msg) => tracing::info!("{msg}"),
            Err(e) => tracing::debug!(error = %e, "VPP plugin still unreachable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
