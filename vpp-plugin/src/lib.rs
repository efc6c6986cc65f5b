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
//!
//! ```
//! use capo_vpp_plugin::PluginConfig;
//!
//! // The body of startup.conf's `capo { … }` section.
//! let cfg = PluginConfig::parse("socket /run/vpp/capo.sock unclassified drop max-generation-mb 2048").unwrap();
//! assert_eq!(cfg.max_generation_bytes, 2048 << 20);
//! assert!(PluginConfig::parse("sockt /x").is_err()); // a typo is an error, not a default
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod binding;
pub mod cli;
pub mod config;
pub mod control;
pub mod generation;
pub mod heap;
pub mod mark;
pub mod peer;
pub mod share;
pub mod trace;
pub mod worker;

#[cfg(any(test, feature = "testutils"))]
pub mod fuzzing;
#[cfg(test)]
mod tests;

#[cfg(all(feature = "vpp", not(test)))]
mod buffer;
#[cfg(all(feature = "vpp", not(test)))]
mod node;
#[cfg(all(feature = "vpp", not(test)))]
mod vnet_ifaces;
#[cfg(all(feature = "vpp", not(test)))]
mod vpp_glue;

use std::sync::{Arc, Mutex};

use capo_policy::Direction;
use capo_proto::capo::agent::v1 as api;
use capo_proto::capo::dataplane::v1::{ShowReply, ShowRequest};

pub use batch::{
    classify_batch, BatchCounts, BatchCtx, Counters, Decided, FrameOut, Next, PacketIn, PacketOut,
};
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
        .with_limits(control::ChannelLimits {
            max_frame_bytes: self.config.max_frame_bytes,
            max_generation_bytes: self.config.max_generation_bytes,
        })
    }

    /// `clear capo counters`.
    pub fn clear_counters(&self) {
        cli::clear_counters(&self.workers, &self.counters);
    }
}

impl control::Reader for Plugin {
    fn show(&self, req: &ShowRequest) -> ShowReply {
        let line = if req.verbose {
            format!("{} verbose", req.view)
        } else {
            req.view.clone()
        };
        match cli::Show::parse(&line) {
            Ok(cmd) => ShowReply {
                text: self.show(cmd, control::unix_now()),
                generation: self.cell.active_id(),
                error: String::new(),
            },
            Err(e) => ShowReply {
                error: e.to_string(),
                ..ShowReply::default()
            },
        }
    }

    fn flow_samples(&self) -> capo_proto::capo::dataplane::v1::FlowSamples {
        let flows = if self.workers.sampling() {
            self.workers.take_samples()
        } else {
            // From now on; this first answer has nothing yet.
            self.workers.set_sampling(true);
            Vec::new()
        };
        capo_proto::capo::dataplane::v1::FlowSamples {
            flows: flows
                .iter()
                .map(|(p, flags, n)| share::sample_to_proto(p, *flags, *n))
                .collect(),
            sample_every: worker::SAMPLE_EVERY,
        }
    }

    fn connection_closed(&self) {
        self.workers.set_sampling(false);
    }

    fn counters(&self) -> api::CountersReply {
        let Some(g) = self.cell.load() else {
            return api::CountersReply::default();
        };
        let views = g.views().with_compact_sets();
        let rules = views
            .numbered_rules()
            .into_iter()
            .map(|r| {
                let c = self.workers.rule(r.id);
                api::RuleCounters {
                    rule_id: r.id,
                    rule: r.line,
                    owner: r.owner,
                    software_packets: c.packets,
                    software_bytes: c.bytes,
                    placement: api::Placement::Software as i32,
                    ..Default::default()
                }
            })
            .collect();
        let mut interfaces = Vec::new();
        for iface in g.interfaces() {
            for dir in Direction::BOTH {
                let v = self.workers.interface(iface.sw_if_index.0, dir);
                interfaces.push(api::InterfaceCounters {
                    interface: iface.vpp_name.clone(),
                    sw_if_index: iface.sw_if_index.0,
                    direction: match dir {
                        Direction::Ingress => "ingress",
                        Direction::Egress => "egress",
                    }
                    .to_string(),
                    allowed_packets: v.allow,
                    denied_packets: v.deny,
                    allowed_bytes: v.allow_bytes,
                    denied_bytes: v.deny_bytes,
                });
            }
        }
        let t = self.counters.snapshot();
        api::CountersReply {
            generation: g.id(),
            rules,
            interfaces,
            totals: Some(api::Totals {
                packets: t.allowed + t.denied,
                allowed: t.allowed,
                denied: t.denied,
                nic_decided: t.nic_accepted,
                software_decided: (t.allowed + t.denied).saturating_sub(t.nic_accepted),
                flow_table_hits: t.flow_hits,
            }),
        }
    }
}
