//! Felix's external dataplane driver protocol: framing, conversion to the policy
//! core's updates, the per-connection state machine, and the I/O around it.

pub mod convert;
pub mod frame;
pub mod session;
pub mod stream;
