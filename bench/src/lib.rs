//! capo's benchmark support: deterministic workload generators (DESIGN.md §7), the
//! peer engines (the C plugin's linear algorithm, DPDK rte_acl), the measurements
//! behind `capo-bench classify`, and the offload benchmark (`capo-bench offload`) with
//! its traffic over time windows.
//!
//! ```
//! use capo_bench::workload::{generate, Kind};
//!
//! // The same seed gives the same workload, every time.
//! let w = generate(Kind::Seed);
//! assert_eq!(w.updates, generate(Kind::Seed).updates);
//! let mut state = capo_policy::State::new();
//! for u in &w.updates {
//!     state.apply(u.clone()).unwrap();
//! }
//! assert!(!w.packets.is_empty());
//! ```
#![warn(missing_docs)]

pub mod acl;
pub mod acl_plugin;
pub mod children;
pub mod cpu;
pub mod expand;
pub mod export;
pub mod linear;
pub mod measure;
pub mod node;
pub mod npol;
pub mod offload;
pub mod run;
pub mod traffic;
pub mod updates;
pub mod vpp;
pub mod vppapi;
pub mod workload;
