//! Raw bindings to the system's DPDK, and nothing else.
//!
//! Prefer the safe layer in `capo-offload` (`capo_offload::dpdk`, `capo_offload::acl`)
//! over this crate.
//!
//! - With the `dpdk` feature the bindings are generated at build time by bindgen from
//!   the DPDK found by pkg-config (`libdpdk`, 22.11 LTS on Debian 12; 23.11/24.11 are
//!   expected to build), allow-listed to EAL, ethdev, mbuf, mempool, rte_flow and
//!   rte_acl, and the library is linked. DPDK's static inline functions and macros are
//!   reached through a small C shim (`csrc/capo_dpdk.c`, functions named
//!   `capo_<what they wrap>`), compiled with `cc`.
//! - Without it the crate includes bindings pre-generated from DPDK 22.11 so that the
//!   workspace checks, documents and tests without DPDK installed; nothing is linked
//!   and [`LINKED`] is false, so no function here may be called.
//!
//! [`consts`] pins values DPDK defines through function-like macros that bindgen cannot
//! evaluate.
//!
//! ```
//! // Whether this build links DPDK; without the `dpdk` feature nothing may be called.
//! if !dpdk_sys::LINKED {
//!     println!("built without DPDK");
//! }
//! ```
#![allow(
    // bindgen's output: C names, unions and zero-initialising `Default` impls.
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(feature = "dpdk")]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

#[cfg(not(feature = "dpdk"))]
include!("bindings_pregenerated.rs");

/// True when the crate was built against (and links) the system DPDK.
pub const LINKED: bool = cfg!(feature = "dpdk");

/// Values DPDK defines with function-like macros (`RTE_BIT64`), pinned here.
pub mod consts {
    /// `RTE_ETH_RX_METADATA_USER_FLAG` (rte_ethdev.h: `RTE_BIT64(0)`).
    pub const RTE_ETH_RX_METADATA_USER_FLAG: u64 = 1 << 0;
    /// `RTE_ETH_RX_METADATA_USER_MARK` (rte_ethdev.h: `RTE_BIT64(1)`).
    pub const RTE_ETH_RX_METADATA_USER_MARK: u64 = 1 << 1;
    /// `RTE_ETH_RX_METADATA_TUNNEL_ID` (rte_ethdev.h: `RTE_BIT64(2)`).
    pub const RTE_ETH_RX_METADATA_TUNNEL_ID: u64 = 1 << 2;
    /// `RTE_MBUF_F_RX_FDIR` (rte_mbuf_core.h: `1ULL << 2`).
    pub const RTE_MBUF_F_RX_FDIR: u64 = 1 << 2;
    /// `RTE_MBUF_F_RX_FDIR_ID` (rte_mbuf_core.h: `1ULL << 13`).
    pub const RTE_MBUF_F_RX_FDIR_ID: u64 = 1 << 13;
    /// `RTE_ACL_FIELD_TYPE_MASK` (rte_acl.h, an anonymous enum bindgen numbers per
    /// target; pinned here).
    pub const RTE_ACL_FIELD_TYPE_MASK: u8 = 0;
    /// `RTE_ACL_FIELD_TYPE_RANGE`.
    pub const RTE_ACL_FIELD_TYPE_RANGE: u8 = 1;
    /// `RTE_ACL_FIELD_TYPE_BITMASK`.
    pub const RTE_ACL_FIELD_TYPE_BITMASK: u8 = 2;
    /// `SOCKET_ID_ANY` (rte_memory.h: `-1`).
    pub const SOCKET_ID_ANY: i32 = -1;
}
