//! `--nic dpdk:PORT`: the agent on a DPDK port. The port is opened through the
//! EAL and probed with one canary rule per capability the planner may use
//! (`capo_offload::probe`, offload.md §6.5); the embedded dataplane then classifies
//! the packets the port receives. The agent drives the port fallback-only (every
//! rule in software): a port whose probe finds no usable rte_flow is reported as
//! such; on one that has it, the agent does not install rte_flow rules yet (the
//! planner, commits and the DPDK backend are in `capo-offload`, tested on simulated
//! NICs and EAL virtual devices). `capoctl offload` shows the probe's findings.
//!
//! PORT is a PCI address (`0000:03:00.0`, probed with `-a`) or a virtual device
//! (`net_null0`, `net_ring0`, `net_tap0,iface=capo0`: no hugepages, no PCI scan).
//! `CAPO_EAL_ARGS` adds EAL arguments (space-separated). Built only with the agent's
//! `dpdk` feature.

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
        "the agent classifies this port's packets in software; it does not install \
         rte_flow rules on its own port yet"
            .to_string()
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
            drop(flow);
            let summary = ProbeSummary {
                driver: p.driver().to_string(),
                offload: report.caps.flow_api,
                refusal: report.refusal.as_ref().map(ToString::to_string),
            };
            crate::core::daemon::lock(&daemon).set_port_report(port_report(
                &spec,
                &summary,
                &report.findings,
            ));
            let _ = tx.send(Ok(summary));
            poll(&p, &daemon);
        })
        .map_err(PortError::Thread)?;
    rx.recv().map_err(|_| PortError::ThreadEnded)?
}

#[cfg(feature = "dpdk")]
fn poll(p: &capo_offload::dpdk::ethdev::Port, daemon: &crate::core::daemon::SharedDaemon) {
    const BURST: u16 = 32;
    // Packets wait in the port's ring until there is a policy to judge them by.
    while crate::core::daemon::lock(daemon).generation() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Bursts are classified by the embedded dataplane under its own lock, never the
    // daemon's (Felix's updates and the API go on meanwhile).
    let embedded = crate::core::daemon::lock(daemon).embedded();
    let mut idle: u32 = 0;
    loop {
        let pkts = p.rx_burst(0, BURST);
        if pkts.is_empty() {
            // Back off when idle: this is the fallback path, not a busy-polling worker.
            idle = idle.saturating_add(1);
            let pause = if idle < 1000 { 20 } else { 1000 };
            std::thread::sleep(std::time::Duration::from_micros(pause));
            continue;
        }
        idle = 0;
        let verdicts = {
            let frames: Vec<&[u8]> = pkts.iter().map(|m| m.data()).collect();
            match &embedded {
                Some(e) => crate::sinks::embedded::lock_embedded(e)
                    .classify_wire(&frames)
                    .unwrap_or_else(|| vec![capo_policy::Verdict::Deny; frames.len()]),
                None => crate::core::daemon::lock(daemon).classify_wire(&frames),
            }
        };
        let allowed: Vec<_> = pkts
            .into_iter()
            .zip(verdicts)
            .filter(|(_, v)| *v == capo_policy::Verdict::Allow)
            .map(|(m, _)| m)
            .collect();
        // Whatever the PMD does not take is freed here.
        drop(p.tx_burst(0, allowed));
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
