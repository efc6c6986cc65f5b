//! `--nic dpdk:PORT`: the agent on a DPDK port. The port is opened through the
//! EAL and probed with a canary rule (offload.md §6.5); a port whose probe finds no
//! usable rte_flow is reported and the agent runs fallback-only (every rule in
//! software).
//!
//! PORT is a PCI address (`0000:03:00.0`, probed with `-a`) or a virtual device
//! (`net_null0`, `net_ring0`, `net_tap0,iface=capo0`: no hugepages, no PCI scan).
//! `CAPO_EAL_ARGS` adds EAL arguments (space-separated). Built only with the agent's
//! `dpdk` feature.

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

/// Opens and probes the port.
#[cfg(feature = "dpdk")]
pub fn probe(port: &str) -> Result<ProbeSummary, String> {
    use capo_offload::dpdk::eal::Eal;
    use capo_offload::dpdk::ethdev::{Port, PortConfig};
    use capo_offload::dpdk::flow::DpdkFlow;
    let args = eal_args(port);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let eal = Eal::init(&refs).map_err(|e| format!("EAL: {e}"))?;
    let p = Port::open(eal, device_name(port), &PortConfig::default())
        .map_err(|e| format!("port {port}: {e}"))?;
    let (_flow, report) = DpdkFlow::probe(&p);
    Ok(ProbeSummary {
        driver: p.driver().to_string(),
        offload: report.caps.flow_api && report.refusal.is_none(),
        refusal: report.refusal.map(|r| format!("{r:?}")),
    })
}

/// Without DPDK support the port cannot be used.
#[cfg(not(feature = "dpdk"))]
pub fn probe(port: &str) -> Result<ProbeSummary, String> {
    Err(format!(
        "dpdk:{port}: this capo-agent was built without DPDK support (build with --features dpdk; needs libdpdk-dev)"
    ))
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
