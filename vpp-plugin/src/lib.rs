//! capo's VPP plugin (VPP 26.06, through the `vpp-plugin` crate): Calico policy in VPP's
//! graph, in Rust.
//!
//! # Structure
//!
//! Everything that decides something is plain Rust, tested without VPP:
//!
//! - [`control`]: the agent pushes generations (full or delta) over a unix socket; each
//!   is validated with the agent's own code (`capo_felix::convert`, `State::apply`),
//!   compiled beside the active one by `capo_classifier::Builder` (incrementally for
//!   deltas) and flipped to whole or not at all. Fail-static.
//! - [`generation`]: immutable generations (the compiled classifier generation, the
//!   views' state, the interfaces with `sw_if_index` and `invert_rx_tx`) and the RCU
//!   cell workers read them from.
//! - [`batch`]: the node's logic over plain byte buffers: NIC marks, parsing
//!   (`capo_classifier::parse_ip`), then the frame decided as a batch by the thread's
//!   `capo_classifier::Worker` (flow table, compiled generation); next node, counters,
//!   trace records.
//! - [`worker`] (one classifier worker per VPP thread), [`mark`] (capo-offload's MARK
//!   layout as VPP delivers it), [`trace`], [`cli`], [`config`]: the parts.
//!
//! With the `vpp` feature, the VPP glue registers the plugin: four graph nodes
//! (`capo-ip4-in`, `capo-ip6-in` on ip4/ip6-unicast; `capo-ip4-out`, `capo-ip6-out` on
//! ip4/ip6-output), enabled per interface when a generation polices it; `show capo …`
//! and `clear capo counters`; the `capo { … }` startup.conf section; and a process node
//! that runs resolve/commit requests from the control thread on VPP's main thread under
//! the worker barrier. All `unsafe` lives in two modules, the node adapter and the
//! buffer helper (plus the registration glue the `vpp-plugin` macros expand to).
//!
//! Nothing here panics on input: bad frames and bad policy are typed errors, refused
//! generations change nothing.
#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod config;
pub mod control;
pub mod generation;
pub mod mark;
pub mod trace;
pub mod worker;

#[cfg(test)]
mod tests;

#[cfg(all(feature = "vpp", not(test)))]
mod buffer;
#[cfg(all(feature = "vpp", not(test)))]
mod node;
#[cfg(all(feature = "vpp", not(test)))]
mod vpp_glue;

use std::sync::{Arc, Mutex};

pub use batch::{classify_batch, BatchCounts, BatchCtx, Counters, Next, PacketIn, PacketOut};
pub use config::PluginConfig;
pub use control::{ControlCore, VppContext};
pub use generation::{Generation, GenerationCell, SwIfIndex, VppDir};

/// Everything the plugin's nodes, CLI and control thread share: one owned struct, reached
/// in VPP through a single guarded static (see `vpp_glue`).
#[derive(Debug)]
pub struct Plugin {
    /// The configuration (startup.conf).
    pub config: PluginConfig,
    /// The generations workers read.
    pub cell: Arc<GenerationCell>,
    /// Control status.
    pub status: control::SharedStatus,
    /// Per-thread classifier workers (flow tables, rule counters).
    pub workers: worker::Workers,
    /// The plugin's counters.
    pub counters: Counters,
}

impl Plugin {
    /// A plugin with no generation yet.
    pub fn new(config: PluginConfig) -> Self {
        let status = control::Status {
            socket: config.socket.display().to_string(),
            ..control::Status::default()
        };
        Plugin {
            workers: worker::Workers::new(config.flow_config()),
            config,
            cell: Arc::new(GenerationCell::new()),
            status: Arc::new(Mutex::new(status)),
            counters: Counters::default(),
        }
    }

    /// Renders a `show capo` command.
    pub fn show(&self, cmd: cli::Show, now: u64) -> String {
        let status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        cli::render(
            cmd,
            &cli::CliCtx {
                cell: &self.cell,
                status: &status,
                workers: &self.workers,
                counters: &self.counters,
                now,
            },
        )
    }

    /// A control core publishing into this plugin.
    pub fn control_core<C: VppContext>(&self, ctx: C) -> ControlCore<C> {
        ControlCore::new(
            Arc::clone(&self.cell),
            Arc::clone(&self.status),
            ctx,
            &self.config.host_interface,
        )
    }

    /// `clear capo counters`.
    pub fn clear_counters(&self) {
        cli::clear_counters(&self.workers, &self.counters);
    }
}
