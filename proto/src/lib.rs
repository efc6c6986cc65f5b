//! Generated Rust types for the protobuf schemas capo speaks.
//!
//! Today that is Felix's external dataplane driver protocol
//! (`felixbackend.proto`, package `felix`). Its wire format changes between
//! Calico minor releases, so each incompatible schema gets its own module and
//! the caller picks one by Felix version:
//!
//! - [`felix::v3_31`]: Calico v3.31.x and earlier. `PolicyID {tier, name}`,
//!   `TierInfo` policy lists as strings, host metadata split over fields
//!   14/18, 35/36 and 37/38.
//! - [`felix::v3_32`]: Calico v3.32 and later. `PolicyID {name, namespace,
//!   kind}`, `TierInfo` policy lists as `PolicyID`s, host metadata only at
//!   14/18.
//!
//! The code is generated at build time from the `.proto` files in this crate;
//! there is no hand-written logic here.

#![warn(missing_docs)]

/// Felix's dataplane driver protocol, one module per wire-incompatible schema.
pub mod felix {
    /// Schema for Calico v3.31.x and earlier.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v3_31 {
        include!(concat!(env!("OUT_DIR"), "/v3_31/felix.rs"));
    }

    /// Schema for Calico v3.32 and later, including master.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v3_32 {
        include!(concat!(env!("OUT_DIR"), "/v3_32/felix.rs"));
    }
}
