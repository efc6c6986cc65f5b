//! Where policy and packets come from: Felix (its stream, fds 3 and 4, the
//! felix-api-proxy socket, and the tee that feeds capo beside CalicoVPP), manifests
//! on disk, recordings, and a DPDK port.

pub mod dpdk_port;
pub mod felix_fds;
pub mod felix_socket;
pub mod felix_stream;
pub mod felix_tee;
pub mod manifest_poll;
pub mod manifests;
pub mod replay;
