//! The dataplanes that follow the agent's generations: the embedded classifier
//! (with a simulated NIC in front of it), the capo VPP plugin, and the NIC model.

pub mod embedded;
pub mod nic;
pub mod vpp;
