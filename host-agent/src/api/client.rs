//! capoctl's commands that ask a running agent over its API socket.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use capo_proto::capo::agent::v1 as api;
use tokio_stream::StreamExt;

use crate::api::ConnectError;
use crate::views::View;

/// The largest reply capoctl takes (a large node's views and counters run to many
/// MiB; tonic's default is 4 MiB).
pub const MAX_REPLY: usize = 1 << 30;

/// Why a command could not get its answer from the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// The agent could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The agent refused the request.
    #[error("agent: {}", .0.message())]
    Agent(#[from] tonic::Status),
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
}

/// `show capo …` from the agent.
pub fn show(socket: &Path, view: View) -> Result<String, ClientError> {
    let (kind, verbose) = match view {
        View::Interfaces => (api::ViewKind::Interfaces, false),
        View::Ipsets => (api::ViewKind::Ipsets, false),
        View::Policies { verbose } => (api::ViewKind::Policies, verbose),
        View::Rules => (api::ViewKind::Rules, false),
    };
    runtime()?.block_on(async {
        let mut c = api::views_client::ViewsClient::new(crate::api::connect(socket).await?)
            .max_decoding_message_size(MAX_REPLY);
        let r = c
            .get(api::ViewRequest {
                view: kind as i32,
                verbose,
                with_lines: false,
            })
            .await?;
        Ok(r.into_inner().text)
    })
}

fn placement(p: i32) -> &'static str {
    match api::Placement::try_from(p) {
        Ok(api::Placement::Nic) => "nic",
        Ok(api::Placement::Software) => "software",
        _ => "-",
    }
}

/// Text form of a counters snapshot.
pub fn counters_text(c: &api::CountersReply) -> String {
    let mut out = format!("generation {}\n", c.generation);
    if let Some(t) = &c.totals {
        let _ = writeln!(
            out,
            "totals: packets={} allowed={} denied={} nic={} software={} flow-hits={}",
            t.packets, t.allowed, t.denied, t.nic_decided, t.software_decided, t.flow_table_hits
        );
    }
    if !c.interfaces.is_empty() {
        out += "interfaces:\n";
        for i in &c.interfaces {
            let _ = writeln!(
                out,
                "  [{} sw_if_index={}] {}: allowed={} denied={}",
                i.interface, i.sw_if_index, i.direction, i.allowed_packets, i.denied_packets
            );
        }
    }
    if !c.rules.is_empty() {
        out += "rules:\n";
        for r in &c.rules {
            let _ = writeln!(
                out,
                "  rule#{} {} sw={}/{}B nic={}/{}B {} {}",
                r.rule_id,
                placement(r.placement),
                r.software_packets,
                r.software_bytes,
                r.nic_packets,
                r.nic_bytes,
                r.owner,
                r.rule
            );
        }
    }
    out
}

fn counters_json(c: &api::CountersReply) -> serde_json::Value {
    serde_json::json!({
        "generation": c.generation,
        "totals": c.totals.as_ref().map(|t| serde_json::json!({
            "packets": t.packets, "allowed": t.allowed, "denied": t.denied,
            "nic_decided": t.nic_decided, "software_decided": t.software_decided,
            "flow_table_hits": t.flow_table_hits,
        })),
        "interfaces": c.interfaces.iter().map(|i| serde_json::json!({
            "interface": i.interface, "sw_if_index": i.sw_if_index, "direction": i.direction,
            "allowed_packets": i.allowed_packets, "denied_packets": i.denied_packets,
            "allowed_bytes": i.allowed_bytes, "denied_bytes": i.denied_bytes,
        })).collect::<Vec<_>>(),
        "rules": c.rules.iter().map(|r| serde_json::json!({
            "rule_id": r.rule_id, "rule": r.rule, "owner": r.owner,
            "software_packets": r.software_packets, "software_bytes": r.software_bytes,
            "nic_packets": r.nic_packets, "nic_bytes": r.nic_bytes,
            "placement": placement(r.placement),
        })).collect::<Vec<_>>(),
    })
}

/// `capoctl counters [--watch] [--json]`.
pub fn counters(socket: &Path, watch: Option<Duration>, json: bool) -> Result<String, ClientError> {
    let render = |c: &api::CountersReply| {
        if json {
            counters_json(c).to_string() + "\n"
        } else {
            counters_text(c)
        }
    };
    runtime()?.block_on(async {
        let mut client =
            api::counters_client::CountersClient::new(crate::api::connect(socket).await?)
                .max_decoding_message_size(MAX_REPLY);
        let Some(every) = watch else {
            let r = client.get(api::CountersRequest {}).await?;
            return Ok(render(&r.into_inner()));
        };
        let ms = u32::try_from(every.as_millis()).unwrap_or(u32::MAX);
        let mut stream = client
            .watch(api::WatchCountersRequest { interval_ms: ms })
            .await?
            .into_inner();
        while let Some(item) = stream.next().await {
            print!("{}", render(&item?));
        }
        Ok(String::new())
    })
}

/// `capoctl generations [--json]`.
pub fn generations(socket: &Path, json: bool) -> Result<String, ClientError> {
    runtime()?.block_on(async {
        let mut c =
            api::generations_client::GenerationsClient::new(crate::api::connect(socket).await?)
                .max_decoding_message_size(MAX_REPLY);
        let g = c.get(api::GenerationsRequest {}).await?.into_inner();
        if json {
            return Ok(serde_json::json!({
                "active": g.active, "source": g.source, "in_sync": g.in_sync,
                "pending_updates": g.pending_updates, "warnings": g.warnings,
                "history": g.history.iter().map(|h| serde_json::json!({
                    "generation": h.generation, "started_unix_ms": h.started_unix_ms,
                    "duration_us": h.duration_us, "outcome": h.outcome, "detail": h.detail,
                    "nic_group": h.nic_group,
                })).collect::<Vec<_>>(),
            })
            .to_string()
                + "\n");
        }
        let mut out = format!(
            "active generation {} (source {}, {}), {} updates pending\n",
            g.active,
            g.source,
            if g.in_sync { "in sync" } else { "not in sync" },
            g.pending_updates
        );
        for w in &g.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        for h in &g.history {
            let when = humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(h.started_unix_ms),
            );
            let _ = writeln!(
                out,
                "  #{} {} {} in {}us{}{}",
                h.generation,
                when,
                h.outcome,
                h.duration_us,
                if h.nic_group > 0 {
                    format!(" nic-group={}", h.nic_group)
                } else {
                    String::new()
                },
                if h.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", h.detail)
                }
            );
        }
        Ok(out)
    })
}

/// `capoctl offload [--json]`.
pub fn offload(
    socket: &Path,
    json: bool,
    testpmd_port: Option<u16>,
) -> Result<String, ClientError> {
    runtime()?.block_on(async {
        let mut c = api::offload_client::OffloadClient::new(crate::api::connect(socket).await?)
            .max_decoding_message_size(MAX_REPLY);
        let p = c
            .get_plan(api::OffloadPlanRequest {
                testpmd: testpmd_port.is_some(),
                port: testpmd_port.map_or(0, u32::from),
            })
            .await?
            .into_inner();
        if testpmd_port.is_some() {
            return Ok(testpmd_text(&p.nic, p.generation, &p.testpmd_commands));
        }
        if json {
            return Ok(serde_json::json!({
                "generation": p.generation, "nic": p.nic, "offload_available": p.offload_available,
                "entries_used": p.entries_used, "entries_capacity": p.entries_capacity,
                "rules": p.rules.iter().map(|r| serde_json::json!({
                    "rule_id": r.rule_id, "rule": r.rule, "placement": placement(r.placement),
                    "reason": r.reason, "nic_entries": r.nic_entries,
                })).collect::<Vec<_>>(),
                "probe": p.probe.iter().map(|f| serde_json::json!({
                    "capability": f.capability, "result": f.result, "detail": f.detail,
                })).collect::<Vec<_>>(),
                "software_only_reason": p.software_only_reason,
                "last_commit": p.last_commit.as_ref().map(|c| serde_json::json!({
                    "kind": c.kind, "nic_generation": c.nic_generation, "created": c.created,
                    "kept": c.kept, "removed": c.removed, "refusal": c.refusal,
                    "in_place_total": c.in_place_total,
                    "new_generation_total": c.new_generation_total,
                })),
                "learned_drops": p.learned_drops.as_ref().map(|l| serde_json::json!({
                    "installed": l.installed, "room": l.room,
                    "learned_total": l.learned_total, "refused_total": l.refused_total,
                })),
                "flow_layer": p.flow_layer.iter().map(|i| serde_json::json!({
                    "interface": i.interface, "sw_if_index": i.sw_if_index, "driver": i.driver,
                    "takes_flows": i.takes_flows, "installed": i.installed, "refused": i.refused,
                    "detail": i.detail,
                })).collect::<Vec<_>>(),
            })
            .to_string()
                + "\n");
        }
        let mut out = format!(
            "nic {} ({}), generation {}, {}/{} entries\n",
            p.nic,
            if p.offload_available {
                "offload available"
            } else {
                "fallback-only: every rule in software"
            },
            p.generation,
            p.entries_used,
            p.entries_capacity
        );
        if !p.software_only_reason.is_empty() {
            let _ = writeln!(out, "  {}", p.software_only_reason);
        }
        if let Some(c) = &p.last_commit {
            let _ = writeln!(out, "  {}", last_commit_line(c));
        }
        if let Some(l) = p.learned_drops.as_ref().filter(|l| l.room > 0) {
            let _ = writeln!(
                out,
                "  learned drops: {} of {} in the table; {} learned, {} refused by the NIC since start",
                l.installed, l.room, l.learned_total, l.refused_total
            );
        }
        if !p.flow_layer.is_empty() {
            out.push_str("  VPP's flow layer, per hardware interface:\n");
            for i in &p.flow_layer {
                let (took, detail) = if i.takes_flows {
                    let took = format!("{} rules installed, {} refused", i.installed, i.refused);
                    let detail = if i.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", i.detail)
                    };
                    (took, detail)
                } else if i.detail.is_empty() {
                    (
                        "fallback-only: the driver takes no flows".to_string(),
                        String::new(),
                    )
                } else {
                    (i.detail.clone(), String::new())
                };
                let _ = writeln!(
                    out,
                    "    {} (sw_if_index {}, driver {}): {took}{detail}",
                    i.interface, i.sw_if_index, i.driver
                );
            }
        }
        if !p.probe.is_empty() {
            out.push_str("  probe:\n");
            for f in &p.probe {
                let detail = if f.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", f.detail)
                };
                let _ = writeln!(out, "    {:<18} {}{detail}", f.capability, f.result);
            }
        }
        for r in &p.rules {
            let _ = writeln!(
                out,
                "  rule#{} {}{} {}",
                r.rule_id,
                placement(r.placement),
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reason)
                },
                r.rule
            );
        }
        Ok(out)
    })
}

/// The offload view's line on the NIC's last commit.
fn last_commit_line(c: &api::NicCommit) -> String {
    let how = if c.kind == "in-place" {
        "in place"
    } else {
        "as a new generation"
    };
    let mut line = format!(
        "last commit: {how} (NIC generation {}): {} rules created, {} kept, {} removed; \
         commits so far: {} in place, {} as a new generation",
        c.nic_generation, c.created, c.kept, c.removed, c.in_place_total, c.new_generation_total
    );
    if !c.refusal.is_empty() {
        line += &format!("; {}", c.refusal);
    }
    line
}

/// testpmd commands with a header saying what they are (testpmd skips `#` lines).
pub fn testpmd_text(nic: &str, generation: u64, commands: &[String]) -> String {
    let mut out = format!(
        "# capo's offload plan for {nic}, generation {generation}: {} testpmd commands\n\
         # (what installing it on a port that holds no capo rule issues)\n",
        commands.len()
    );
    if commands.is_empty() {
        out.push_str("# no NIC plan: every rule is in software\n");
    }
    for c in commands {
        out.push_str(c);
        out.push('\n');
    }
    out
}

/// `capoctl trace …` against the agent.
pub fn trace(socket: &Path, req: api::TraceRequest, json: bool) -> Result<String, ClientError> {
    runtime()?.block_on(async {
        let mut c = api::trace_client::TraceClient::new(crate::api::connect(socket).await?)
            .max_decoding_message_size(MAX_REPLY);
        let r = c.trace(req).await?.into_inner();
        Ok(if json { r.json + "\n" } else { r.text })
    })
}

/// `capoctl inject …`.
pub fn inject(
    socket: &Path,
    interface: &str,
    direction: &str,
    frames: Vec<Vec<u8>>,
) -> Result<String, ClientError> {
    runtime()?.block_on(async {
        let mut c = api::inject_client::InjectClient::new(crate::api::connect(socket).await?)
            .max_decoding_message_size(MAX_REPLY);
        let r = c
            .inject(api::InjectRequest {
                interface: interface.to_string(),
                direction: direction.to_string(),
                frames,
            })
            .await?
            .into_inner();
        Ok(format!(
            "{} allowed, {} denied ({} by the NIC): {}\n",
            r.allowed,
            r.denied,
            r.nic_decided,
            r.verdicts.join(" ")
        ))
    })
}
