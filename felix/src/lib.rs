//! Felix's external dataplane driver protocol, without I/O: framing ([`frame`]),
//! conversion of Felix's messages to the policy core's updates ([`convert`]), and
//! the per-connection state machine ([`session`]).
//!
//! Shared by the agent (which reads Felix) and the VPP plugin (which receives the
//! same messages from the agent), so both validate and apply policy identically.
//!
//! ```
//! use capo_felix::frame::{encode_frames, FrameReader};
//! use capo_felix::session::{Event, Phase, Session};
//! use capo_proto::felix::v3_32 as pb;
//! use pb::to_dataplane::Payload as P;
//!
//! // Felix's first and last messages of a sync: its config, then InSync.
//! let config = pb::ConfigUpdate {
//!     config: [("CalicoVersion".to_string(), "v3.32.0".to_string())].into(),
//!     ..Default::default()
//! };
//! let msgs = [P::ConfigUpdate(config), P::InSync(pb::InSync {})]
//!     .map(|p| pb::ToDataplane { sequence_number: 0, payload: Some(p) });
//! let bytes = encode_frames(&msgs); // 8-byte little-endian length, then protobuf
//!
//! let mut session = Session::new(None);
//! let events: Vec<Event> = FrameReader::new(bytes.as_slice())
//!     .map(|frame| session.on_frame(&frame.unwrap()).unwrap())
//!     .collect();
//! assert_eq!(session.phase(), Phase::InSync);
//! assert_eq!(events.last(), Some(&Event::Reconcile));
//! ```
#![warn(missing_docs)]

pub mod convert;
pub mod encode;
pub mod frame;
pub mod session;
