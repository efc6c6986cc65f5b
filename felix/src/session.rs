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

use crate::convert::{convert_with, upgrade_v3_31, ConvertError, ConvertOptions, Converted};
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
    convert: ConvertOptions,
    /// Per policy, what it asks for that capo does not enforce.
    unenforced: std::collections::BTreeMap<String, Vec<String>>,
    /// Policies whose entry in `unenforced` is new since the last
    /// [`Session::take_new_warnings`].
    fresh: Vec<String>,
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
            convert: ConvertOptions::default(),
            unenforced: std::collections::BTreeMap::new(),
            fresh: Vec::new(),
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

    /// What the current policies ask for that capo does not enforce: one line per
    /// rule, naming the policy and the rule.
    pub fn warnings(&self) -> impl Iterator<Item = &String> {
        self.unenforced.values().flatten()
    }

    /// The warnings of policies that gained or changed them since the last call
    /// (to log each once).
    pub fn take_new_warnings(&mut self) -> Vec<String> {
        let fresh = std::mem::take(&mut self.fresh);
        fresh
            .iter()
            .filter_map(|p| self.unenforced.get(p))
            .flatten()
            .cloned()
            .collect()
    }

    /// Notes what a policy update asks for that capo does not enforce: HTTP matches
    /// (Calico's application layer policy) are not looked at.
    fn note_unenforced(&mut self, policy: String, http_rules: Vec<String>) {
        let lines: Vec<String> = http_rules
            .into_iter()
            .map(|rule| {
                format!(
                    "policy {policy}: {rule} has an HTTP match, which capo does not enforce \
                     (application layer policy); the rule is enforced on its other fields"
                )
            })
            .collect();
        if lines.is_empty() {
            self.unenforced.remove(&policy);
        } else if self.unenforced.get(&policy) != Some(&lines) {
            self.unenforced.insert(policy.clone(), lines);
            self.fresh.push(policy);
        }
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
                // Only updates after InSync are deltas a dataplane needs.
                let copy = (self.phase == Phase::InSync).then(|| update.clone());
                match self.state.apply(update) {
                    Ok(Applied::Changed) => {
                        self.stats.changed += 1;
                        self.applied.extend(copy);
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
        // The schema is fixed for the session: Felix's wire format cannot change
        // without a restart, whatever a later ConfigUpdate's CalicoVersion says.
        let version = cfg.config.get("CalicoVersion").cloned();
        if let Some(v) = version.as_deref() {
            if self.forced_schema.is_none() {
                if let Some(s) = schema_for_calico_version(v) {
                    self.schema = s;
                }
            }
            self.convert.split_host_metadata = is_v3_32_x(v);
        }
        let converted = convert_with(msg, &self.state, self.convert).map_err(|source| {
            SessionError::Convert {
                frame: frame.index,
                seq,
                source,
            }
        })?;
        self.phase = Phase::Syncing;
        Ok((seq, converted))
    }

    fn decode(&mut self, frame: &Frame) -> Result<(u64, Converted), SessionError> {
        let (seq, converted) = match self.schema {
            Schema::V3_32 => {
                let msg = decode_to_dataplane_v3_32(frame)?;
                use pb::to_dataplane::Payload as P;
                if matches!(
                    msg.payload,
                    Some(
                        P::HostMetadataV6Update(_)
                            | P::HostMetadataV6Remove(_)
                            | P::HostMetadataV4v6Update(_)
                            | P::HostMetadataV4v6Remove(_)
                    )
                ) {
                    // Only v3.32.x sends these: its field 14 carries IPv4 only.
                    self.convert.split_host_metadata = true;
                }
                match &msg.payload {
                    Some(P::ActivePolicyUpdate(u)) => {
                        let id =
                            u.id.as_ref()
                                .map_or_else(String::new, |i| policy_label(&i.namespace, &i.name));
                        let rules = u.policy.as_ref().map_or_else(Vec::new, |p| {
                            http_rules(
                                p.inbound_rules.iter().map(|r| r.http_match.is_some()),
                                p.outbound_rules.iter().map(|r| r.http_match.is_some()),
                            )
                        });
                        self.note_unenforced(id, rules);
                    }
                    Some(P::ActivePolicyRemove(r)) => {
                        let id =
                            r.id.as_ref()
                                .map_or_else(String::new, |i| policy_label(&i.namespace, &i.name));
                        self.note_unenforced(id, Vec::new());
                    }
                    _ => {}
                }
                (
                    msg.sequence_number,
                    convert_with(msg, &self.state, self.convert),
                )
            }
            Schema::V3_31 => {
                let msg = decode_to_dataplane_v3_31(frame)?;
                use capo_proto::felix::v3_31::to_dataplane::Payload as P31;
                match &msg.payload {
                    Some(P31::ActivePolicyUpdate(u)) => {
                        let id = u.id.as_ref().map_or_else(String::new, |i| i.name.clone());
                        let rules = u.policy.as_ref().map_or_else(Vec::new, |p| {
                            http_rules(
                                p.inbound_rules.iter().map(|r| r.http_match.is_some()),
                                p.outbound_rules.iter().map(|r| r.http_match.is_some()),
                            )
                        });
                        self.note_unenforced(id, rules);
                    }
                    Some(P31::ActivePolicyRemove(r)) => {
                        let id = r.id.as_ref().map_or_else(String::new, |i| i.name.clone());
                        self.note_unenforced(id, Vec::new());
                    }
                    _ => {}
                }
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

/// A policy as warnings name it: `namespace/name`, or `name` when global.
fn policy_label(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// `inbound rule N` / `outbound rule N` for the rules (given as "has an HTTP match")
/// that have one.
fn http_rules(
    inbound: impl Iterator<Item = bool>,
    outbound: impl Iterator<Item = bool>,
) -> Vec<String> {
    let named = |dir: &'static str, rules: Vec<bool>| {
        rules
            .into_iter()
            .enumerate()
            .filter(|(_, http)| *http)
            .map(move |(i, _)| format!("{dir} rule {i}"))
    };
    named("inbound", inbound.collect())
        .chain(named("outbound", outbound.collect()))
        .collect()
}

/// Whether a Felix version is a v3.32.x release (host metadata in three families).
fn is_v3_32_x(version: &str) -> bool {
    let v = version.trim_start_matches('v');
    v == "3.32" || v.starts_with("3.32.") || v.starts_with("3.32-")
}

/// The payload's variant name, without formatting its (possibly huge) contents.
fn payload_name(p: &pb::to_dataplane::Payload) -> String {
    /// Stops writing at the first `(`: only the variant name is wanted.
    struct UpToParen(String);
    impl std::fmt::Write for UpToParen {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match s.find('(') {
                Some(i) => {
                    self.0.push_str(&s[..i]);
                    Err(std::fmt::Error)
                }
                None => {
                    self.0.push_str(s);
                    Ok(())
                }
            }
        }
    }
    let mut w = UpToParen(String::new());
    let _ = std::fmt::write(&mut w, format_args!("{p:?}"));
    w.0
}
