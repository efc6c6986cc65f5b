//! One Felix connection's protocol state machine, without I/O.
//!
//! Felix sends `ConfigUpdate` first, then a snapshot, then `InSync` once, then
//! incremental updates (reference: felix-protocol §1.3, §3). The session decodes
//! each frame with the right schema, converts it, validates it against the state
//! and applies it. Anything that contradicts the protocol is returned as a
//! [`SessionError`] naming the frame; the update it came with was not applied, and
//! the caller answers with a resync (closing the connection makes Felix start over).

use capo_policy::{Applied, State, StateError};
use capo_proto::felix::v3_32 as pb;

use crate::convert::{convert, upgrade_v3_31, ConvertError, Converted};
use crate::frame::{
    decode_to_dataplane_v3_31, decode_to_dataplane_v3_32, schema_for_calico_version, Frame,
    FrameError, Schema,
};

/// Where the session is in Felix's start-up sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing received yet: the first message must be `ConfigUpdate`.
    AwaitingConfig,
    /// Building the snapshot; nothing is programmed yet.
    Syncing,
    /// `InSync` seen: updates apply to the live state one by one.
    InSync,
}

/// What a frame did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The state changed (before `InSync`: the snapshot being built).
    Changed,
    /// Valid, but nothing changed (a repeated update, a remove of an unknown id).
    Unchanged,
    /// A payload capo does not use.
    Ignored(&'static str),
    /// `InSync`: the snapshot is complete; reconcile the dataplane with it.
    Reconcile,
}

/// A protocol violation or undecodable input; nothing of that frame was applied.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The frame's bytes are not a `ToDataplane` of the session's schema.
    #[error(transparent)]
    Decode(#[from] FrameError),
    /// The first message was not `ConfigUpdate`.
    #[error("frame {frame}: the first message must be ConfigUpdate, got {got}")]
    ConfigNotFirst {
        /// Frame number (0-based).
        frame: u64,
        /// What arrived instead.
        got: String,
    },
    /// A field holds a value capo cannot use.
    #[error("frame {frame} (seq {seq}): {source}")]
    Convert {
        /// Frame number (0-based).
        frame: u64,
        /// Felix's sequence number.
        seq: u64,
        /// The bad field.
        source: ConvertError,
    },
    /// The update contradicts the state (unknown set, unknown policy, …).
    #[error("frame {frame} (seq {seq}): protocol violation: {source}")]
    Violation {
        /// Frame number (0-based).
        frame: u64,
        /// Felix's sequence number.
        seq: u64,
        /// What is inconsistent.
        source: StateError,
    },
}

impl SessionError {
    /// The frame the error is about.
    pub fn frame(&self) -> u64 {
        match self {
            SessionError::Decode(e) => e.frame(),
            SessionError::ConfigNotFirst { frame, .. }
            | SessionError::Convert { frame, .. }
            | SessionError::Violation { frame, .. } => *frame,
        }
    }
}

/// Counters of one session, for logs and progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames handled.
    pub frames: u64,
    /// Frames that changed the state.
    pub changed: u64,
    /// Frames ignored (payloads capo does not use).
    pub ignored: u64,
}

/// The state machine of one Felix connection.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    forced_schema: Option<Schema>,
    schema: Schema,
    state: State,
    stats: SessionStats,
    applied: Vec<capo_policy::Update>,
}

impl Session {
    /// A fresh session; `forced_schema` overrides detection from `CalicoVersion`.
    pub fn new(forced_schema: Option<Schema>) -> Self {
        Session {
            phase: Phase::AwaitingConfig,
            forced_schema,
            schema: forced_schema.unwrap_or(Schema::V3_32),
            state: State::new(),
            stats: SessionStats::default(),
            applied: Vec::new(),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The schema in use.
    pub fn schema(&self) -> Schema {
        self.schema
    }

    /// The state built so far (live once [`Phase::InSync`]).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes the state out of the session.
    pub fn into_state(self) -> State {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The updates that changed the state since the last call, in order: what a
    /// dataplane holding the previous state needs to catch up.
    pub fn take_applied(&mut self) -> Vec<capo_policy::Update> {
        std::mem::take(&mut self.applied)
    }

    /// Handles one frame.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<Event, SessionError> {
        self.stats.frames += 1;
        let (seq, converted) = match self.phase {
            Phase::AwaitingConfig => self.first_frame(frame)?,
            _ => self.decode(frame)?,
        };
        let event = match converted {
            Converted::Ignored(what) => {
                self.stats.ignored += 1;
                Event::Ignored(what)
            }
            Converted::InSync => {
                // Felix sends InSync once per process; a repeat changes nothing.
                if self.phase == Phase::InSync {
                    Event::Unchanged
                } else {
                    self.phase = Phase::InSync;
                    Event::Reconcile
                }
            }
            Converted::Update(update) => {
                if let capo_policy::Update::Config(cfg) = &update {
                    self.follow_calico_version(cfg.calico_version.as_deref());
                }
                let copy = update.clone();
                match self.state.apply(update) {
                    Ok(Applied::Changed) => {
                        self.stats.changed += 1;
                        self.applied.push(copy);
                        Event::Changed
                    }
                    Ok(Applied::Unchanged) => Event::Unchanged,
                    Err(source) => {
                        return Err(SessionError::Violation {
                            frame: frame.index,
                            seq,
                            source,
                        })
                    }
                }
            }
        };
        Ok(event)
    }

    fn first_frame(&mut self, frame: &Frame) -> Result<(u64, Converted), SessionError> {
        // ConfigUpdate is the same in every schema, so it can be read before the
        // schema is known.
        let msg = decode_to_dataplane_v3_32(frame)?;
        let seq = msg.sequence_number;
        let Some(pb::to_dataplane::Payload::ConfigUpdate(cfg)) = &msg.payload else {
            let got = match &msg.payload {
                Some(p) => payload_name(p),
                None => "an unknown payload".to_string(),
            };
            return Err(SessionError::ConfigNotFirst {
                frame: frame.index,
                got,
            });
        };
        self.follow_calico_version(cfg.config.get("CalicoVersion").map(String::as_str));
        self.phase = Phase::Syncing;
        let converted = convert(msg, &self.state).map_err(|source| SessionError::Convert {
            frame: frame.index,
            seq,
            source,
        })?;
        Ok((seq, converted))
    }

    fn follow_calico_version(&mut self, version: Option<&str>) {
        if self.forced_schema.is_none() {
            if let Some(s) = version.and_then(schema_for_calico_version) {
                self.schema = s;
            }
        }
    }

    fn decode(&self, frame: &Frame) -> Result<(u64, Converted), SessionError> {
        let (seq, converted) = match self.schema {
            Schema::V3_32 => {
                let msg = decode_to_dataplane_v3_32(frame)?;
                (msg.sequence_number, convert(msg, &self.state))
            }
            Schema::V3_31 => {
                let msg = decode_to_dataplane_v3_31(frame)?;
                (msg.sequence_number, upgrade_v3_31(msg, &self.state))
            }
        };
        let converted = converted.map_err(|source| SessionError::Convert {
            frame: frame.index,
            seq,
            source,
        })?;
        Ok((seq, converted))
    }
}

fn payload_name(p: &pb::to_dataplane::Payload) -> String {
    let dbg = format!("{p:?}");
    dbg.split('(').next().unwrap_or("payload").to_string()
}
