//! `--nic dpdk:PORT`: the agent on a DPDK port. The port is opened through the
//! EAL and probed with one canary rule per capability the planner may use
//! (`capo_offload::probe`, offload.md §6.5); the embedded dataplane then classifies
//! the packets the port receives. On a port whose probe finds rte_flow, a planner
//! thread plans each generation with the probed capabilities and the flows
//! software decided (the port's thread goes on receiving meanwhile); the port's
//! thread commits the plan through the port's own rte_flow backend, takes a
//! packet's verdict from its MARK only when the mark names a generation software
//! holds, and retires the previous generation after a grace period. A port without
//! usable rte_flow runs fallback-only (every rule in software) and says why.
//! `capoctl offload` shows the probe's findings and the committed plan.
//!
//! What ran here: the fallback-only path on `net_pcap`, `net_ring`, `net_null` and
//! `net_tap` (no TC flower on this kernel). No rte_flow-capable port was reachable,
//! so commits to a real NIC and marks from one have not run; the same planner,
//! committer and mark decoding run on the simulated NICs.
//!
//! PORT is a PCI address (`0000:03:00.0`, probed with `-a`) or a virtual device
//! (`net_null0`, `net_ring0`, `net_tap0,iface=capo0`: no hugepages, no PCI scan).
//! `CAPO_EAL_ARGS` adds EAL arguments (space-separated). Built only with the agent's
//! `dpdk` feature.

#[cfg(feature = "dpdk")]
use crate::sinks::nic::{
    BackgroundPlanner, Committed, NicFront, NicVerdicts, PlanOutcome, PlanResult, PolicyVersion,
};

/// Why the port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// DPDK's environment did not start.
    #[error("EAL: {0}")]
    Eal(String),
    /// The port did not open.
    #[error("port {port}: {error}")]
    Port {
        /// The port.
        port: String,
        /// DPDK's error.
        error: String,
    },
    /// The port's thread did not start.
    #[error("port thread: {0}")]
    Thread(std::io::Error),
    /// The port's thread ended before reporting.
    #[error("the port thread ended during the probe")]
    ThreadEnded,
    /// The agent was built without DPDK.
    #[error("dpdk:{0}: this capo-agent was built without DPDK support (build with --features dpdk; needs libdpdk-dev)")]
    NoDpdk(String),
}

/// What the probe found, for the log.
#[derive(Debug, Clone)]
pub struct ProbeSummary {
    /// The port's driver.
    pub driver: String,
    /// Whether rte_flow offload is usable.
    pub offload: bool,
    /// The refusal that ruled it out, if any.
    pub refusal: Option<String>,
}

/// The offload view's report of a probed port: its findings, and why its packets
/// are all classified in software.
pub fn port_report(
    port: &str,
    summary: &ProbeSummary,
    findings: &[capo_offload::probe::Finding],
) -> crate::core::daemon::PortReport {
    use capo_offload::probe::Outcome;
    let probe = findings
        .iter()
        .map(|f| {
            let (result, detail) = match &f.outcome {
                Outcome::Supported => ("supported", String::new()),
                Outcome::Refused(e) => ("refused", e.to_string()),
                Outcome::NotClaimed => ("not claimed", String::new()),
                Outcome::Skipped => ("skipped", String::new()),
            };
            capo_proto::capo::agent::v1::ProbeFinding {
                capability: f.capability.name().to_string(),
                result: result.to_string(),
                detail,
            }
        })
        .collect();
    let software_only_reason = if summary.offload {
        "no plan committed to the port yet (the first one follows the first policy)".to_string()
    } else {
        format!(
            "the port's probe found no usable rte_flow ({})",
            summary.refusal.as_deref().unwrap_or("no refusal recorded")
        )
    };
    crate::core::daemon::PortReport {
        nic: format!("dpdk:{port} (driver {})", summary.driver),
        probe,
        software_only_reason,
        plan: None,
    }
}

impl std::fmt::Display for ProbeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "driver {}: {}",
            self.driver,
            if self.offload {
                "rte_flow offload available"
            } else {
                "no usable rte_flow offload"
            }
        )?;
        if let Some(r) = &self.refusal {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

/// EAL arguments for `port`.
pub fn eal_args(port: &str) -> Vec<String> {
    let is_pci = port.contains(':') && port.contains('.');
    let mut args = if is_pci {
        vec![
            "capo-agent".to_string(),
            "-a".into(),
            port.to_string(),
            "--file-prefix=capo-agent".into(),
        ]
    } else {
        let mut a = vec![
            "capo-agent".to_string(),
            "--no-huge".into(),
            "--no-pci".into(),
            "--no-telemetry".into(),
            "-m".into(),
            "256".into(),
            format!("--file-prefix=capo-agent-{}", std::process::id()),
        ];
        a.push(format!("--vdev={port}"));
        a
    };
    if let Ok(extra) = std::env::var("CAPO_EAL_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

/// The device name the port is opened by (a vdev's name without its arguments).
pub fn device_name(port: &str) -> &str {
    port.split(',').next().unwrap_or(port)
}

/// Opens and probes the port on a thread of its own, which then polls it: each burst
/// of packets from the wire is classified by the embedded dataplane; allowed packets
/// are sent back out of the port (towards their endpoint), denied ones are freed.
/// Returns once the probe is done.
#[cfg(feature = "dpdk")]
pub fn spawn(
    port: &str,
    daemon: crate::core::daemon::SharedDaemon,
) -> Result<ProbeSummary, PortError> {
    use capo_offload::dpdk::eal::Eal;
    use capo_offload::dpdk::ethdev::{Port, PortConfig};
    use capo_offload::dpdk::flow::DpdkFlow;
    let (tx, rx) = std::sync::mpsc::channel::<Result<ProbeSummary, PortError>>();
    let spec = port.to_string();
    std::thread::Builder::new()
        .name("capo-port".into())
        .spawn(move || {
            // The EAL, the port and its mbufs all stay on this thread.
            let args = eal_args(&spec);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let eal = match Eal::init(&refs) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(PortError::Eal(e.to_string())));
                    return;
                }
            };
            let p = match Port::open(eal, device_name(&spec), &PortConfig::default()) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(PortError::Port {
                        port: spec.clone(),
                        error: e.to_string(),
                    }));
                    return;
                }
            };
            let (flow, report) = DpdkFlow::probe(&p);
            let summary = ProbeSummary {
                driver: p.driver().to_string(),
                offload: report.caps.flow_api,
                refusal: report.refusal.as_ref().map(ToString::to_string),
            };
            let port_report = port_report(&spec, &summary, &report.findings);
            crate::core::daemon::lock(&daemon).set_port_report(port_report.clone());
            let _ = tx.send(Ok(summary));
            let mut nic = NicFront::with_backend(format!("dpdk:{spec}"), flow);
            poll(&p, &daemon, &mut nic, port_report);
        })
        .map_err(PortError::Thread)?;
    rx.recv().map_err(|_| PortError::ThreadEnded)?
}

/// How long a generation the NIC no longer uses stays installed: packets it
/// marked may still wait in the receive ring.
#[cfg(feature = "dpdk")]
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Software-decided flows wait at least this long before they re-plan the NIC.
#[cfg(feature = "dpdk")]
const REPLAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The NIC side of the port thread: has each generation planned (and a re-plan
/// when software sees new flows) on the planner thread, commits what it plans,
/// retires the previous generation after [`RETIRE_GRACE`], and keeps the offload
/// view's report current.
#[cfg(feature = "dpdk")]
struct PortNic<'n, 'p> {
    nic: &'n mut NicFront<capo_offload::dpdk::flow::DpdkFlow<'p>>,
    /// Plans away from the port thread; `None` once it failed (the port thread
    /// then plans itself).
    planner: Option<BackgroundPlanner>,
    report: crate::core::daemon::PortReport,
    committed: u64,
    retire_at: Option<std::time::Instant>,
    replan_at: Option<std::time::Instant>,
    /// The last commit ran out of NIC entries: plan again for what fit.
    shrink: bool,
    /// When the NIC's rule counters were last read.
    counted_at: std::time::Instant,
    /// The policy of the live NIC plan: software's denies under it teach the NIC
    /// drops.
    policy: Option<PolicyVersion>,
}

/// How long after EIO the port's NIC is committed to again.
#[cfg(feature = "dpdk")]
const RECOMMIT_AFTER_EIO: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the port NIC's COUNT actions are queried for `capoctl counters`.
#[cfg(feature = "dpdk")]
const COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(feature = "dpdk")]
impl PortNic<'_, '_> {
    fn offloads(&self) -> bool {
        self.nic.caps().mode() != capo_offload::OffloadMode::SoftwareOnly
    }

    /// Reads the NIC's rule counters into the embedded dataplane's counters, at
    /// most once per [`COUNT_INTERVAL`], serving bursts between the queries.
    fn publish_counts(&mut self, path: &PortPath<'_>) {
        let now = std::time::Instant::now();
        if now < self.counted_at + COUNT_INTERVAL {
            return;
        }
        self.counted_at = now;
        let Some(e) = path.embedded.as_ref() else {
            return;
        };
        let mut seen = Vec::new();
        let counts = self
            .nic
            .rule_counts_serving(SERVE_EVERY, &mut path.serving(&mut seen));
        self.record(&seen);
        let placements = self
            .report
            .plan
            .as_ref()
            .map(|p| p.rules.iter().map(|r| (r.rule_id, r.placement)).collect())
            .unwrap_or_default();
        crate::sinks::embedded::lock_embedded(e).set_port_nic_rules(counts, placements);
    }

    /// Commits a finished plan; starts one when the policy changed, new flows are
    /// due or the last commit shrank; retires when the grace period is over. Only
    /// the commit (the rte_flow calls) runs on the port thread.
    fn maintain(&mut self, path: &PortPath<'_>) {
        let daemon = path.daemon;
        let now = std::time::Instant::now();
        if self.retire_at.is_some_and(|t| now >= t) {
            let mut seen = Vec::new();
            self.nic
                .retire_previous_serving(SERVE_EVERY, &mut path.serving(&mut seen));
            self.record(&seen);
            self.retire_at = None;
        }
        if let Some(planner) = &mut self.planner {
            match planner.finished() {
                Ok(Some(PlanOutcome::Planned(result))) => self.commit(*result, path),
                Ok(Some(PlanOutcome::NoPolicy) | None) => {}
                Err(e) => {
                    tracing::error!("port NIC planner: {e}; planning on the port thread");
                    self.planner = None;
                }
            }
            if self.planner.as_ref().is_some_and(BackgroundPlanner::busy) {
                return;
            }
        }
        let generation = crate::core::daemon::lock(daemon).generation();
        let replan = self.replan_at.is_some_and(|t| now >= t);
        if generation == self.committed && !replan && !self.shrink {
            return;
        }
        self.replan_at = None;
        let job = self.nic.plan_job();
        if let Some(planner) = &mut self.planner {
            if let Err(e) = planner.start(job) {
                tracing::error!("port NIC planner: {e}; planning on the port thread");
                self.planner = None;
            }
            return;
        }
        let t0 = std::time::Instant::now();
        if let Some(version) = policy_version(daemon) {
            self.commit(job.run_for(&version, t0), path);
        }
    }

    /// Commits a plan: the NIC's new generation, the previous one retired after the
    /// grace period. Bursts are served between the commit's NIC calls.
    fn commit(&mut self, result: PlanResult, path: &PortPath<'_>) {
        let t0 = std::time::Instant::now();
        let mut seen = Vec::new();
        let committed = self.nic.commit_planned_serving(
            result.planned,
            SERVE_EVERY,
            &mut path.serving(&mut seen),
        );
        self.record(&seen);
        let summary = match committed {
            Committed::Done(summary) => summary,
            // Plan again: for the capacity that fit, or as a new generation.
            Committed::Shrink | Committed::Again => {
                self.shrink = true;
                return;
            }
        };
        tracing::info!(
            generation = result.version,
            plan_ms = result.took.as_millis() as u64,
            commit_ms = t0.elapsed().as_millis() as u64,
            "port NIC plan committed: {summary}"
        );
        self.shrink = false;
        self.committed = result.version;
        self.retire_at = Some(std::time::Instant::now() + RETIRE_GRACE);
        if self.nic.device_gone() {
            // EIO: the port was reset or removed, and its rules with it; software
            // decides everything until a commit goes in again.
            tracing::warn!("the port's NIC is gone (EIO): committing again in 5 s");
            self.replan_at = Some(std::time::Instant::now() + RECOMMIT_AFTER_EIO);
        }
        self.policy = policy_version(path.daemon).filter(|v| v.version == result.version);
        self.report.plan = Some(self.nic.plan_reply(&result.rules));
        self.report.software_only_reason.clear();
        crate::core::daemon::lock(path.daemon).set_port_report(self.report.clone());
    }

    /// Learns drops from the TCP packets software denied under `generation`, while
    /// the live plan is of that policy (TCP only: the port's planner thread plans
    /// while packets flow, so drops of other protocols stay in software as in its
    /// plans; the embedded dataplane lists TCP denies only).
    fn learn(&mut self, generation: u64, denied: &[capo_classifier::ParsedPacket]) {
        let Some(v) = self.policy.as_ref().filter(|v| v.version == generation) else {
            return;
        };
        for p in denied {
            self.nic.learn_drop(
                (&v.state, &v.ids, v.version),
                &p.packet,
                Some(p.tcp_flags),
                &capo_offload::plan::StatelessDrops::Off,
            );
        }
    }

    /// Records the packets software decided as flows for the next plan.
    fn record(&mut self, seen: &[capo_classifier::ParsedPacket]) {
        let mut new = false;
        for p in seen {
            let flags = (p.packet.protocol == capo_policy::Protocol::TCP).then_some(p.tcp_flags);
            new |= self.nic.record(&p.packet, flags);
        }
        if new && self.replan_at.is_none() {
            self.replan_at = Some(std::time::Instant::now() + REPLAN_INTERVAL);
        }
    }
}

/// What a burst of the port is decided with: the port, the embedded dataplane (or
/// the daemon when there is none), whether the NIC offloads.
#[cfg(feature = "dpdk")]
struct PortPath<'a> {
    port: &'a capo_offload::dpdk::ethdev::Port,
    daemon: &'a crate::core::daemon::SharedDaemon,
    embedded: Option<crate::sinks::embedded::SharedEmbedded>,
    offloads: bool,
}

/// Packets received per burst.
#[cfg(feature = "dpdk")]
const BURST: u16 = 32;

/// How often a long commit or retirement lets the port's packets in.
#[cfg(feature = "dpdk")]
const SERVE_EVERY: std::time::Duration = std::time::Duration::from_micros(200);

#[cfg(feature = "dpdk")]
impl PortPath<'_> {
    /// Receives one burst and decides it: the NIC's verdict (`nic`) where a mark of
    /// a generation software holds gives one, the embedded dataplane's otherwise;
    /// allowed packets go back out of the port. The flows software decided are
    /// added to `seen`. Returns whether packets came.
    fn serve(
        &self,
        nic: &mut dyn FnMut(capo_offload::NicOutcome) -> Option<capo_policy::Verdict>,
        seen: &mut Vec<capo_classifier::ParsedPacket>,
    ) -> bool {
        let pkts = self.port.rx_burst(0, BURST);
        if pkts.is_empty() {
            return false;
        }
        let frames: Vec<&[u8]> = pkts.iter().map(|m| m.data()).collect();
        let deny_all = || vec![capo_policy::Verdict::Deny; frames.len()];
        let verdicts = match (&self.embedded, self.offloads) {
            (Some(e), true) => {
                let from_nic: Vec<Option<capo_policy::Verdict>> = pkts
                    .iter()
                    .map(|m| {
                        nic(capo_offload::NicOutcome::Delivered {
                            mark: m.flow_mark(),
                        })
                    })
                    .collect();
                crate::sinks::embedded::lock_embedded(e)
                    .classify_wire_behind_nic(&frames, &from_nic, seen)
                    .unwrap_or_else(deny_all)
            }
            (Some(e), false) => crate::sinks::embedded::lock_embedded(e)
                .classify_wire(&frames)
                .unwrap_or_else(deny_all),
            (None, _) => crate::core::daemon::lock(self.daemon).classify_wire(&frames),
        };
        drop(frames);
        let allowed: Vec<_> = pkts
            .into_iter()
            .zip(verdicts)
            .filter(|(_, v)| *v == capo_policy::Verdict::Allow)
            .map(|(m, _)| m)
            .collect();
        // Whatever the PMD does not take is freed here.
        drop(self.port.tx_burst(0, allowed));
        true
    }

    /// What a commit, a retirement or a counter read hands its NIC verdicts to
    /// between NIC calls: one burst served with them, its flows added to `seen`.
    fn serving<'s>(
        &'s self,
        seen: &'s mut Vec<capo_classifier::ParsedPacket>,
    ) -> impl FnMut(&NicVerdicts<'_>) + 's {
        move |v| {
            self.serve(&mut |o| v.verdict(o), seen);
        }
    }
}

/// The policy in force as the NIC planner takes it.
#[cfg(feature = "dpdk")]
fn policy_version(daemon: &crate::core::daemon::SharedDaemon) -> Option<PolicyVersion> {
    crate::core::daemon::lock(daemon)
        .snapshot()
        .map(|s| PolicyVersion {
            version: s.generation,
            state: s.state,
            ids: s.ids,
        })
}

#[cfg(feature = "dpdk")]
fn poll(
    p: &capo_offload::dpdk::ethdev::Port,
    daemon: &crate::core::daemon::SharedDaemon,
    nic: &mut NicFront<capo_offload::dpdk::flow::DpdkFlow<'_>>,
    report: crate::core::daemon::PortReport,
) {
    // Packets wait in the port's ring until there is a policy to judge them by.
    while crate::core::daemon::lock(daemon).generation() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let planner = {
        let daemon = daemon.clone();
        BackgroundPlanner::spawn("capo-port-plan", move || policy_version(&daemon))
    };
    let planner = planner
        .map_err(|e| tracing::error!("port NIC planner thread: {e}; planning on the port thread"))
        .ok();
    let mut port_nic = PortNic {
        nic,
        planner,
        report,
        committed: 0,
        retire_at: None,
        replan_at: None,
        shrink: false,
        counted_at: std::time::Instant::now(),
        policy: None,
    };
    // Bursts are classified by the embedded dataplane under its own lock, never the
    // daemon's (Felix's updates and the API go on meanwhile).
    let path = PortPath {
        port: p,
        daemon,
        embedded: crate::core::daemon::lock(daemon).embedded(),
        offloads: port_nic.offloads(),
    };
    let mut idle: u32 = 0;
    let mut seen = Vec::new();
    loop {
        if path.offloads {
            // Plans are made on the planner thread; commits run here, on the thread
            // that owns the port's flows, with bursts served between their NIC calls.
            port_nic.maintain(&path);
            port_nic.publish_counts(&path);
        }
        seen.clear();
        if !path.serve(&mut |o| port_nic.nic.nic_verdict(o), &mut seen) {
            // Back off when idle: this is the fallback path, not a busy-polling worker.
            idle = idle.saturating_add(1);
            let pause = if idle < 1000 { 20 } else { 1000 };
            std::thread::sleep(std::time::Duration::from_micros(pause));
            continue;
        }
        idle = 0;
        port_nic.record(&seen);
        // Only packets software decided (`seen`) can have been denied by it.
        if let Some(e) = path
            .embedded
            .as_ref()
            .filter(|_| path.offloads && !seen.is_empty())
        {
            let (generation, denied) = crate::sinks::embedded::lock_embedded(e).take_wire_denied();
            port_nic.learn(generation, &denied);
        }
    }
}

/// Without DPDK support the port cannot be used.
#[cfg(not(feature = "dpdk"))]
pub fn spawn(
    port: &str,
    _daemon: crate::core::daemon::SharedDaemon,
) -> Result<ProbeSummary, PortError> {
    Err(PortError::NoDpdk(port.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_arguments_for_pci_and_virtual_ports() {
        let a = eal_args("0000:03:00.0");
        assert!(a.windows(2).any(|w| w[0] == "-a" && w[1] == "0000:03:00.0"));
        assert!(!a.iter().any(|x| x == "--no-pci"));
        let v = eal_args("net_tap0,iface=capo0");
        assert!(v.contains(&"--vdev=net_tap0,iface=capo0".to_string()));
        assert!(v.contains(&"--no-pci".to_string()));
        assert_eq!(device_name("net_tap0,iface=capo0"), "net_tap0");
    }
}
