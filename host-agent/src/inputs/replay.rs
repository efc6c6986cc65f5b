//! Replaying a recorded Felix stream into a state and its view ids.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use capo_policy::{IdTable, State};

use crate::inputs::felix_stream::{self, StreamError};
use capo_felix::frame::{FrameReader, Schema, DEFAULT_MAX_FRAME_LEN};
use capo_felix::session::{Event, Phase, Session, SessionStats};

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Force a schema instead of detecting it from `CalicoVersion`.
    pub schema: Option<Schema>,
    /// Frame length cap.
    pub max_frame_len: u64,
    /// Interface indexes to use instead of allocating them (`name`, `sw_if_index`).
    pub interface_indexes: Vec<(String, u32)>,
    /// Name of the host-facing interface.
    pub host_interface: String,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            schema: None,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            interface_indexes: Vec::new(),
            host_interface: capo_policy::ids::DEFAULT_HOST_INTERFACE.to_string(),
        }
    }
}

impl ReplayOptions {
    /// An id table with the preset interface indexes.
    pub fn id_table(&self) -> IdTable {
        let mut ids = IdTable::new(&self.host_interface);
        for (name, idx) in &self.interface_indexes {
            ids.set_interface_index(name, *idx);
        }
        ids
    }
}

/// The outcome of a replay.
#[derive(Debug)]
pub struct Replayed {
    /// The state the stream built.
    pub state: State,
    /// Ids, allocated as a live agent would have (at `InSync`, then per update).
    pub ids: IdTable,
    /// Whether `InSync` was seen.
    pub in_sync: bool,
    /// Schema used.
    pub schema: Schema,
    /// Counters.
    pub stats: SessionStats,
}

/// A replay that failed: which file, and why.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file cannot be opened.
    #[error("{file}: {source}")]
    Open {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A frame is bad; nothing of it was applied.
    #[error("{file}: {source}")]
    Stream {
        /// The file.
        file: PathBuf,
        /// Why.
        source: Box<StreamError>,
    },
}

/// Replays a stream from any reader.
pub fn replay_reader<R: Read>(input: R, opts: &ReplayOptions) -> Result<Replayed, StreamError> {
    let mut reader = FrameReader::with_max_frame_len(input, opts.max_frame_len);
    let mut session = Session::new(opts.schema);
    let mut ids = opts.id_table();
    felix_stream::run(&mut reader, None, |frame| {
        let event = session.on_frame(frame)?;
        for w in session.take_new_warnings() {
            tracing::warn!("{w}");
        }
        match event {
            Event::Reconcile => ids.sync(session.state()),
            Event::Changed if session.phase() == Phase::InSync => ids.sync(session.state()),
            _ => {}
        }
        Ok(())
    })?;
    let in_sync = session.phase() == Phase::InSync;
    if !in_sync {
        ids.sync(session.state());
    }
    let schema = session.schema();
    let stats = session.stats();
    Ok(Replayed {
        state: session.into_state(),
        ids,
        in_sync,
        schema,
        stats,
    })
}

/// Replays a recorded file.
pub fn replay_file(path: &Path, opts: &ReplayOptions) -> Result<Replayed, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        file: path.to_path_buf(),
        source,
    })?;
    replay_reader(BufReader::new(file), opts).map_err(|source| ReplayError::Stream {
        file: path.to_path_buf(),
        source: Box::new(source),
    })
}
