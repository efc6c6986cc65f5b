//! capo's benchmark support: deterministic workload generators (DESIGN.md §7), the
//! peer engines (the C plugin's linear algorithm, DPDK rte_acl) and the measurements
//! behind `capo-bench classify`.
#![warn(missing_docs)]

pub mod acl;
pub mod cpu;
pub mod linear;
pub mod offload;
pub mod run;
pub mod workload;
