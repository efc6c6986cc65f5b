//! Felix's external dataplane driver protocol: the protocol logic lives in
//! `capo-felix` (re-exported here); this module adds the I/O around it.

pub use capo_felix::{convert, frame, session};

pub mod stream;
