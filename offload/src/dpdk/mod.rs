//! The safe layer over `dpdk-sys`: one module per DPDK subsystem.
//!
//! - [`eal`]: `rte_eal_init` once per process ([`eal::Eal`] is the proof it ran).
//! - [`ethdev`]: configuring and starting a port ([`ethdev::Port`]), Rx metadata
//!   negotiation, the rte_flow template-API setup probe.
//! - [`flow`]: the rte_flow backend ([`flow::DpdkFlow`]): the one place where
//!   [`crate::flow::FlowRule`]s are lowered to DPDK's `END`-terminated C arrays,
//!   validate-before-create, typed errors, COUNT queries, and the capability probe
//!   with a canary (offload.md §6.5). It never calls `rte_flow_flush`, and never the
//!   async API (which crashes on PMDs without it in 22.11).
//!
//! Each wrapper names the C function it wraps. Every `unsafe` block states why it is
//! sound.
#![allow(unsafe_code)]

pub mod eal;
pub mod ethdev;
pub mod flow;

use std::ffi::CStr;

/// `rte_errno` of the calling thread.
pub(crate) fn errno() -> i32 {
    // SAFETY: the shim reads the calling lcore's `rte_errno`; no arguments.
    unsafe { dpdk_sys::capo_rte_errno() }
}

/// `rte_strerror(errno)` as text.
pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated
    // string, valid until the next call on this thread; it is copied at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(errno);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}
