//! vppctl commands: parsing and rendering, both pure; the VPP registration (two paths,
//! `show capo` and `clear capo`) is in `vpp_glue` and only calls these.
//!
//! - `show capo interfaces|ipsets|policies [verbose]|rules`: the capo views, printed by
//!   the policy core's [`capo_policy::Views`], the same renderer capoctl uses;
//! - `show capo generations`: the active generation, the agent connection (fail-static
//!   when it is gone) and the recent pushes;
//! - `show capo counters`: every rule of the active generation with the packets and
//!   bytes software decided with it (`capo_classifier::Counters`, summed over worker
//!   threads), then the node's totals;
//! - `show capo flows [verbose]`: flow-table sizes per thread, the node's totals, and
//!   (verbose) the flow-table statistics;
//! - `clear capo counters`: resets every counter (rule, flow-table, node totals) and
//!   forgets the flows.

use std::fmt::Write as _;

use crate::batch::Counters;
use crate::control::{AgentState, Status};
use crate::generation::GenerationCell;
use crate::worker::Workers;

/// A `show capo` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// `show capo interfaces`.
    Interfaces,
    /// `show capo ipsets`.
    Ipsets,
    /// `show capo policies [verbose]`.
    Policies {
        /// Print each policy's rules.
        verbose: bool,
    },
    /// `show capo rules`.
    Rules,
    /// `show capo generations`.
    Generations,
    /// `show capo counters`.
    Counters,
    /// `show capo flows [verbose]`.
    Flows {
        /// List every flow.
        verbose: bool,
    },
}

/// Help for `show capo`.
pub const SHOW_HELP: &str =
    "show capo interfaces|ipsets|policies [verbose]|rules|generations|counters|flows [verbose]|offload";

/// One interface with capo's feature (or an uplink the NIC share goes on), as VPP's
/// flow layer answered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadRow {
    /// An uplink of the share without capo's feature.
    pub uplink: bool,
    /// VPP's name of the interface.
    pub name: String,
    /// Its index.
    pub sw_if_index: u32,
    /// The driver (device class) under it.
    pub driver: String,
    /// What enabling a canary MARK flow on it returned: 0, or a `VNET_FLOW_ERROR_*`.
    pub flow_layer: i32,
    /// Under `capo test flow-emulation`: flows enabled, packets dropped and marked.
    pub emulated: Option<(u32, u64, u64)>,
}

/// The NIC share the plugin holds, for `show capo offload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareSummary {
    /// The generation it was planned on (0: none yet).
    pub generation: u64,
    /// Its rules (drops and marks).
    pub rules: usize,
    /// What each hardware interface took.
    pub interfaces: Vec<capo_proto::capo::agent::v1::FlowLayerInterface>,
}

/// Renders `show capo offload`.
pub fn render_offload(rows: &[OffloadRow], share: &ShareSummary) -> String {
    if rows.is_empty() {
        return "capo offload: no interface has capo's feature enabled and no uplink has the NIC share\n".to_string();
    }
    let mut out = String::from(
        "capo offload through VPP's flow layer (a canary MARK flow per interface, added and removed again):\n",
    );
    if share.generation == 0 && share.rules == 0 {
        out.push_str("  NIC share: none (the agent installs one with --nic vpp-flow)\n");
    } else {
        let _ = writeln!(
            out,
            "  NIC share: {} rules planned on generation {}",
            share.rules, share.generation
        );
    }
    for r in rows {
        let on_hw = share
            .interfaces
            .iter()
            .find(|i| i.sw_if_index == r.sw_if_index);
        let verdict = match on_hw {
            _ if r.flow_layer != 0 => format!(
                "fallback-only: the flow layer refused the canary ({}): every rule in software",
                crate::share::flow_error_name(r.flow_layer)
            ),
            Some(i) if i.refused > 0 => format!(
                "the driver takes flows: {} of {} share rules installed, {} refused ({}); those stay in software",
                i.installed, share.rules, i.refused, i.detail
            ),
            Some(i) => format!(
                "the driver takes flows: {} of {} share rules installed",
                i.installed, share.rules
            ),
            None if share.rules == 0 => {
                "the driver takes flows; no share rules: every rule in software".to_string()
            }
            // Another policed interface on the same hardware carries the share.
            None => "the driver takes flows; the share is on its hardware's first policed interface".to_string(),
        };
        let _ = writeln!(
            out,
            "  {}{} (sw_if_index {}, driver {}): {verdict}",
            if r.uplink { "uplink " } else { "" },
            r.name,
            r.sw_if_index,
            r.driver
        );
        if let Some((flows, dropped, marked)) = r.emulated {
            let _ = writeln!(
                out,
                "    emulated NIC (capo test flow-emulation): {flows} flows, {dropped} packets dropped, {marked} marked"
            );
        }
    }
    out
}

/// Help for `clear capo`.
pub const CLEAR_HELP: &str = "clear capo counters";

/// A command line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown input {input:?}; usage: {usage}")]
pub struct CliError {
    input: String,
    usage: &'static str,
}

impl Show {
    /// Parses what follows `show capo`.
    ///
    /// # Errors
    ///
    /// [`CliError`] with the usage line.
    pub fn parse(input: &str) -> Result<Show, CliError> {
        let words: Vec<&str> = input.split_whitespace().collect();
        let err = || CliError {
            input: input.trim().to_string(),
            usage: SHOW_HELP,
        };
        let verbose = |rest: &[&str]| match rest {
            [] => Ok(false),
            ["verbose"] => Ok(true),
            _ => Err(err()),
        };
        match words.split_first() {
            Some((&"interfaces", [])) => Ok(Show::Interfaces),
            Some((&"ipsets", [])) => Ok(Show::Ipsets),
            Some((&"rules", [])) => Ok(Show::Rules),
            Some((&"generations", [])) => Ok(Show::Generations),
            Some((&"counters", [])) => Ok(Show::Counters),
            Some((&"policies", rest)) => Ok(Show::Policies {
                verbose: verbose(rest)?,
            }),
            Some((&"flows", rest)) => Ok(Show::Flows {
                verbose: verbose(rest)?,
            }),
            _ => Err(err()),
        }
    }
}

/// Parses what follows `clear capo` (only `counters`).
///
/// # Errors
///
/// [`CliError`] with the usage line.
pub fn parse_clear(input: &str) -> Result<(), CliError> {
    match input.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["counters"] => Ok(()),
        _ => Err(CliError {
            input: input.trim().to_string(),
            usage: CLEAR_HELP,
        }),
    }
}

/// What the commands read.
#[derive(Debug, Clone, Copy)]
pub struct CliCtx<'a> {
    /// Generations.
    pub cell: &'a GenerationCell,
    /// Control status.
    pub status: &'a Status,
    /// Classifier workers (flow tables, rule counters).
    pub workers: &'a Workers,
    /// Counters.
    pub counters: &'a Counters,
    /// Unix seconds.
    pub now: u64,
}

/// Renders a `show capo` command.
pub fn render(cmd: Show, ctx: &CliCtx<'_>) -> String {
    let views_of = |f: &dyn Fn(capo_policy::Views<'_>) -> String| match ctx.cell.load() {
        Some(g) => f(g.views()),
        None => "capo: no policy generation yet (no agent has pushed one)\n".to_string(),
    };
    match cmd {
        Show::Interfaces => views_of(&|v| v.interfaces()),
        Show::Ipsets => views_of(&|v| v.ipsets()),
        Show::Policies { verbose } => views_of(&|v| v.policies(verbose)),
        Show::Rules => views_of(&|v| v.rules()),
        Show::Generations => generations(ctx),
        Show::Counters => counters(ctx),
        Show::Flows { verbose } => flows(ctx, verbose),
    }
}

fn ago(now: u64, t: u64) -> String {
    format!("{}s ago", now.saturating_sub(t))
}

fn generations(ctx: &CliCtx<'_>) -> String {
    let mut out = String::new();
    let s = ctx.status;
    match ctx.cell.load() {
        Some(g) => {
            let _ = writeln!(
                out,
                "active generation: {} ({} interfaces policed, {} unknown)",
                g.id(),
                g.interfaces().len(),
                g.unknown_interfaces().len()
            );
            if !g.unknown_interfaces().is_empty() {
                let _ = writeln!(
                    out,
                    "  unknown interfaces: {}",
                    g.unknown_interfaces().join(" ")
                );
            }
            let _ = writeln!(out, "  pushed by agent epoch {}", s.active_epoch);
            for i in g.interfaces() {
                let _ = writeln!(
                    out,
                    "  {} on {} sw_if_index={} (bound by {})",
                    i.name,
                    i.vpp_name,
                    i.sw_if_index,
                    i.how.as_str()
                );
            }
        }
        None => out.push_str("active generation: none\n"),
    }
    if let Some(r) = &s.last_rebind {
        match &r.error {
            None => {
                let _ = writeln!(
                    out,
                    "bound again {}: {} (times: {})",
                    ago(ctx.now, r.at),
                    r.changes.join("; "),
                    s.rebinds
                );
            }
            Some(e) => {
                let _ = writeln!(out, "binding again failed {}: {e}", ago(ctx.now, r.at));
            }
        }
    }
    let d = s.delta_binds;
    if d.looked_up + d.listed > 0 {
        let _ = writeln!(
            out,
            "deltas that changed endpoints: {} bound them by look-up, {} against the list of every interface; {} found them from their own entries",
            d.looked_up, d.listed, d.planned
        );
    }
    if let Some(p) = ctx.cell.previous_id() {
        let _ = writeln!(out, "previous generation: {p} (NIC marks still honoured)");
    }
    match &s.agent {
        AgentState::Never => out.push_str("agent: never connected\n"),
        AgentState::Connected { since, version } => {
            let _ = writeln!(
                out,
                "agent: connected ({version}), since {}",
                ago(ctx.now, *since)
            );
        }
        AgentState::Disconnected { since } => {
            let _ = writeln!(
                out,
                "agent: disconnected {}; fail-static: enforcing the last generation until an agent reconnects",
                ago(ctx.now, *since)
            );
        }
    }
    let _ = writeln!(
        out,
        "control socket: {}\ngenerations applied: {} refused: {}",
        s.socket, s.applied, s.refused
    );
    let c = s.compiled;
    let _ = writeln!(
        out,
        "compiled: {} incremental, {} re-indexed, {} from scratch; state copies: {} \
         (replayed instead: {}, {} of them from copies made in the background, {} made \
         ready after a reply)",
        c.incremental,
        c.reindexed,
        c.full,
        c.state_copies,
        c.replayed,
        c.background_copies,
        c.ready_after_reply
    );
    for r in s.history.iter().rev() {
        let kind = if r.full {
            "full".to_string()
        } else {
            format!("delta on {}", r.base_id)
        };
        let result = match &r.error {
            None => "applied".to_string(),
            Some(e) => format!("refused: {e}"),
        };
        let _ = writeln!(
            out,
            "  [generation {} {kind}] {result}, {}",
            r.id,
            ago(ctx.now, r.at)
        );
        if !r.unknown_interfaces.is_empty() {
            let _ = writeln!(
                out,
                "    unknown interfaces: {}",
                r.unknown_interfaces.join(" ")
            );
        }
    }
    out
}

fn totals(out: &mut String, ctx: &CliCtx<'_>) {
    let c = ctx.counters.snapshot();
    let _ = writeln!(
        out,
        "allowed: {} denied: {} flow-table hits: {} NIC verdicts accepted: {} \
         NIC marks from an unknown generation: {} malformed: {}",
        c.allowed, c.denied, c.flow_hits, c.nic_accepted, c.nic_unknown_generation, c.malformed
    );
}

fn counters(ctx: &CliCtx<'_>) -> String {
    let mut out = String::new();
    match ctx.cell.load() {
        Some(g) => {
            let _ = writeln!(out, "rule counters (software), generation {}:", g.id());
            for r in g.views().numbered_rules() {
                let c = ctx.workers.rule(r.id);
                let _ = writeln!(out, "{} packets {} bytes {}", r.line, c.packets, c.bytes);
            }
        }
        None => out.push_str("capo: no policy generation yet (no agent has pushed one)\n"),
    }
    totals(&mut out, ctx);
    out
}

fn flows(ctx: &CliCtx<'_>, verbose: bool) -> String {
    let mut out = String::new();
    let f = ctx.workers.flows();
    let total: usize = f.per_thread.iter().map(|(_, n)| n).sum();
    let _ = writeln!(out, "flows: {total}");
    for (thread, n) in &f.per_thread {
        let _ = writeln!(out, "thread {thread}: {n} flows");
    }
    if verbose {
        let capo_classifier::FlowStats {
            hits,
            classified,
            created,
            expired,
            evicted,
            refused,
            revalidated,
            revalidate_denied,
            no_interface,
        } = f.stats;
        let cfg = ctx.workers.config();
        let _ = writeln!(
            out,
            "flow table: capacity {} per thread, established flows {:?}\n\
             hits: {hits} classified: {classified} created: {created} expired: {expired} \
             evicted: {evicted} refused: {refused} revalidated: {revalidated} \
             revalidate-denied: {revalidate_denied} no-program: {no_interface}",
            cfg.capacity, cfg.established_flows
        );
    }
    let _ = writeln!(
        out,
        "flow sampling for the NIC share: {}",
        if ctx.workers.sampling() {
            "on (an agent with --nic vpp-flow reads it)"
        } else {
            "off"
        }
    );
    totals(&mut out, ctx);
    out
}

/// `clear capo counters`: resets the node's totals and every worker's counters, and
/// forgets every flow (the node error counters are VPP's: `clear errors`).
pub fn clear_counters(workers: &Workers, counters: &Counters) {
    counters.clear();
    workers.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_view_says_why_each_interface_is_fallback_only() {
        assert_eq!(
            render_offload(&[], &ShareSummary::default()),
            "capo offload: no interface has capo's feature enabled and no uplink has the NIC share\n"
        );
        let rows = [
            OffloadRow {
                name: "pg1".into(),
                sw_if_index: 2,
                uplink: false,
                driver: "pg".into(),
                flow_layer: -1,
                emulated: None,
            },
            OffloadRow {
                name: "HundredGigabitEthernet3/0/0".into(),
                sw_if_index: 3,
                uplink: true,
                driver: "dpdk".into(),
                flow_layer: 0,
                emulated: Some((2, 40, 0)),
            },
        ];
        let text = render_offload(&rows, &ShareSummary::default());
        assert!(text.contains("pg1 (sw_if_index 2, driver pg): fallback-only: the flow layer refused the canary (not supported)"), "{text}");
        assert!(text.contains("NIC share: none"), "{text}");
        assert!(
            text.contains("driver dpdk): the driver takes flows; no share rules"),
            "{text}"
        );
        let share = ShareSummary {
            generation: 7,
            rules: 3,
            interfaces: vec![capo_proto::capo::agent::v1::FlowLayerInterface {
                interface: "HundredGigabitEthernet3/0/0".into(),
                sw_if_index: 3,
                driver: "dpdk".into(),
                takes_flows: true,
                installed: 2,
                refused: 1,
                detail: "refused: internal error".into(),
            }],
        };
        let text = render_offload(&rows, &share);
        assert!(
            text.contains("NIC share: 3 rules planned on generation 7"),
            "{text}"
        );
        assert!(
            text.contains("  uplink HundredGigabitEthernet3/0/0 (sw_if_index 3, driver dpdk)"),
            "{text}"
        );
        assert!(text.contains("driver dpdk): the driver takes flows: 2 of 3 share rules installed, 1 refused (refused: internal error)"), "{text}");
        assert!(
            text.contains("pg1 (sw_if_index 2, driver pg): fallback-only"),
            "{text}"
        );
        assert!(text.contains("    emulated NIC (capo test flow-emulation): 2 flows, 40 packets dropped, 0 marked"), "{text}");
        assert_eq!(crate::share::flow_error_name(-6), "internal error");
        assert_eq!(crate::share::flow_error_name(-99), "unknown flow error");
    }

    #[test]
    fn parse_show() {
        assert_eq!(Show::parse("interfaces"), Ok(Show::Interfaces));
        assert_eq!(Show::parse(" ipsets "), Ok(Show::Ipsets));
        assert_eq!(Show::parse("rules"), Ok(Show::Rules));
        assert_eq!(
            Show::parse("policies verbose"),
            Ok(Show::Policies { verbose: true })
        );
        assert_eq!(
            Show::parse("policies"),
            Ok(Show::Policies { verbose: false })
        );
        assert_eq!(Show::parse("generations"), Ok(Show::Generations));
        assert_eq!(Show::parse("counters"), Ok(Show::Counters));
        assert_eq!(
            Show::parse("flows verbose"),
            Ok(Show::Flows { verbose: true })
        );
        let e = Show::parse("policies loud").unwrap_err();
        assert!(e.to_string().contains("usage: show capo"), "{e}");
        assert!(Show::parse("").is_err());
        assert!(parse_clear("counters").is_ok());
        assert!(parse_clear("everything").is_err());
    }
}
