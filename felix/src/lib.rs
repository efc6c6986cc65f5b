//! Felix's external dataplane driver protocol, without I/O: framing ([`frame`]),
//! conversion of Felix's messages to the policy core's updates ([`convert`]), and
//! the per-connection state machine ([`session`]).
//!
//! Shared by the agent (which reads Felix) and the VPP plugin (which receives the
//! same messages from the agent), so both validate and apply policy identically.
#![warn(missing_docs)]

pub mod convert;
pub mod encode;
pub mod frame;
pub mod session;
