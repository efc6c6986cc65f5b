//! Prometheus metrics on an optional HTTP listener (loopback by default): per-rule
//! and per-interface counters, the active generation, commit latency, NIC table
//! occupancy. Built from the daemon at each scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::readers::Readers;
use crate::core::daemon::lock;

/// Where the metrics listener binds when `--metrics` is given without an address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    placement: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleDeciderLabels {
    rule: String,
    decided_in: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    direction: String,
    verdict: String,
}

/// The text exposition of every metric, now. The daemon's lock is held only for its
/// own few numbers; counters and the plan are read as the API reads them.
pub async fn render(readers: &Readers) -> String {
    let mut reg = Registry::with_prefix("capo");
    let daemon = readers.daemon();
    // With VPP the counters are VPP's, read outside the daemon's lock.
    let vpp = tokio::task::block_in_place(|| lock(daemon).vpp());
    let counters = match vpp {
        Some(h) => match tokio::task::block_in_place(|| h.counters()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no counters from the VPP plugin for this scrape");
                None
            }
        },
        None => readers.embedded_counters().await,
    };
    let plan = readers.offload_plan().await.unwrap_or_default();
    let (active, synced, commit_latency) = {
        let d = tokio::task::block_in_place(|| lock(daemon));
        (d.generation(), d.in_sync(), d.commit_latency().clone())
    };

    let generation: Gauge = Gauge::default();
    generation.set(i64::try_from(active).unwrap_or(i64::MAX));
    reg.register("active_generation", "The generation in force", generation);

    let in_sync: Gauge = Gauge::default();
    in_sync.set(i64::from(synced));
    reg.register("in_sync", "1 when the policy source is in sync", in_sync);

    reg.register(
        "commit_duration_seconds",
        "Time to commit a generation, dataplanes included",
        commit_latency,
    );

    let packets = Family::<RuleDeciderLabels, Counter>::default();
    let bytes = Family::<RuleDeciderLabels, Counter>::default();
    let ifaces = Family::<InterfaceLabels, Counter>::default();
    let iface_bytes = Family::<InterfaceLabels, Counter>::default();
    if let Some(c) = counters {
        for r in &c.rules {
            for (decided_in, p, b) in [
                ("software", r.software_packets, r.software_bytes),
                ("nic", r.nic_packets, r.nic_bytes),
            ] {
                let l = RuleDeciderLabels {
                    rule: r.rule_id.to_string(),
                    decided_in: decided_in.into(),
                };
                packets.get_or_create(&l).inc_by(p);
                bytes.get_or_create(&l).inc_by(b);
            }
        }
        for i in &c.interfaces {
            for (verdict, n, b) in [
                ("allow", i.allowed_packets, i.allowed_bytes),
                ("deny", i.denied_packets, i.denied_bytes),
            ] {
                let l = InterfaceLabels {
                    interface: i.interface.clone(),
                    direction: i.direction.clone(),
                    verdict: verdict.into(),
                };
                ifaces.get_or_create(&l).inc_by(n);
                iface_bytes.get_or_create(&l).inc_by(b);
            }
        }
    }
    reg.register("rule_packets", "Packets decided by a rule", packets);
    reg.register("rule_bytes", "Bytes decided by a rule", bytes);
    reg.register(
        "interface_packets",
        "Packets per interface, direction and verdict",
        ifaces,
    );
    reg.register(
        "interface_bytes",
        "Bytes per interface, direction and verdict",
        iface_bytes,
    );

    let used: Gauge = Gauge::default();
    used.set(i64::from(plan.entries_used));
    reg.register("nic_table_entries_used", "NIC flow entries in use", used);
    let cap: Gauge = Gauge::default();
    cap.set(i64::from(plan.entries_capacity));
    reg.register(
        "nic_table_entries_capacity",
        "NIC flow entries available",
        cap,
    );
    let commits = Family::<CommitLabels, Counter>::default();
    if let Some(c) = &plan.last_commit {
        for (kind, n) in [
            ("in-place", c.in_place_total),
            ("new-generation", c.new_generation_total),
        ] {
            commits
                .get_or_create(&CommitLabels { kind: kind.into() })
                .inc_by(n);
        }
    }
    reg.register(
        "nic_commits",
        "NIC plan commits: in place (a re-plan of the policy in force) or as a new generation",
        commits,
    );
    let placements = Family::<RuleLabels, Gauge>::default();
    for r in &plan.rules {
        let placement = match capo_proto::capo::agent::v1::Placement::try_from(r.placement) {
            Ok(capo_proto::capo::agent::v1::Placement::Nic) => "nic",
            _ => "software",
        };
        placements
            .get_or_create(&RuleLabels {
                rule: r.rule_id.to_string(),
                placement: placement.into(),
            })
            .set(1);
    }
    reg.register(
        "rule_placement",
        "Where each rule is decided (1)",
        placements,
    );

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Serves `GET /metrics` until `stop` resolves.
pub async fn serve(
    readers: Readers,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = readers.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&r).await,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
