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
//! capo's own schemas sit beside them:
//!
//! - [`capo::agent::v1`]: the agent's gRPC API (services with the `grpc` feature);
//! - [`capo::dataplane::v1`]: the channel from the agent to a software dataplane
//!   (the VPP plugin), which carries Felix's v3.32 messages.
//!
//! The code is generated at build time from the `.proto` files in this crate;
//! there is no hand-written logic here.
//!
//! ```
//! use capo_proto::felix::v3_32 as pb;
//! use prost::Message;
//!
//! let msg = pb::ToDataplane {
//!     sequence_number: 5,
//!     payload: Some(pb::to_dataplane::Payload::InSync(pb::InSync {})),
//! };
//! let bytes = msg.encode_to_vec();
//! assert_eq!(pb::ToDataplane::decode(bytes.as_slice()).unwrap(), msg);
//! ```

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

/// capo's own protocols.
pub mod capo {
    /// The agent's API.
    pub mod agent {
        /// Version 1.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/capo.agent.v1.rs"));
        }
    }

    /// The agent-to-dataplane channel.
    pub mod dataplane {
        /// Version 1.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/capo.dataplane.v1.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of capo's own schemas, for gRPC reflection.
pub const CAPO_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/capo_descriptor.bin"));
