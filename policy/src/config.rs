//! The parts of Felix's configuration that change policy: the node's name, failsafe
//! ports and `DefaultEndpointToHostAction`.

use std::collections::BTreeMap;

use crate::net::{Cidr, ParseError, Protocol};

/// Felix's default `FailsafeInboundHostPorts`.
pub const DEFAULT_FAILSAFE_INBOUND: &str =
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";
/// Felix's default `FailsafeOutboundHostPorts`.
pub const DEFAULT_FAILSAFE_OUTBOUND: &str =
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667";

/// What happens to traffic from a local workload to the host itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EndpointToHostAction {
    /// Drop it (Felix's default).
    Drop,
    /// Accept it.
    Accept,
    /// Hand it to the host endpoint's ingress policy.
    Return,
}

/// One failsafe entry: protocol, port and an optional peer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailsafePort {
    /// tcp, udp or sctp.
    pub protocol: Protocol,
    /// The host's port (inbound) or the remote port (outbound).
    pub port: u16,
    /// Source (inbound) or destination (outbound) prefix, when restricted.
    pub net: Option<Cidr>,
}

/// Parses Felix's failsafe list syntax: comma-separated `proto:port`, `proto:net:port`
/// (`proto:[v6net]:port` for IPv6), or `port` alone (tcp). `none` or empty gives none.
pub fn parse_failsafe_ports(s: &str) -> Result<Vec<FailsafePort>, ParseError> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(parse_failsafe_entry)
        .collect()
}

fn parse_failsafe_entry(entry: &str) -> Result<FailsafePort, ParseError> {
    let bad = || ParseError::BadFailsafe(entry.to_string());
    let (head, port) = entry.rsplit_once(':').unwrap_or(("tcp", entry));
    let port: u16 = port.parse().map_err(|_| bad())?;
    let (proto, net) = match head.split_once(':') {
        Some((p, n)) => (p, Some(n.trim_start_matches('[').trim_end_matches(']'))),
        None => (head, None),
    };
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::TCP,
        "udp" => Protocol::UDP,
        "sctp" => Protocol::SCTP,
        _ => return Err(bad()),
    };
    let net = match net {
        Some(n) => Some(n.parse::<Cidr>().map_err(|_| bad())?),
        None => None,
    };
    Ok(FailsafePort {
        protocol,
        port,
        net,
    })
}

/// Felix configuration as far as policy is concerned, plus the raw map for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FelixConfig {
    /// `FelixHostname`: which host metadata describes this node.
    pub hostname: String,
    /// `DefaultEndpointToHostAction`.
    pub endpoint_to_host: EndpointToHostAction,
    /// `FailsafeInboundHostPorts`.
    pub failsafe_inbound: Vec<FailsafePort>,
    /// `FailsafeOutboundHostPorts`.
    pub failsafe_outbound: Vec<FailsafePort>,
    /// `CalicoVersion`, when Felix passes it.
    pub calico_version: Option<String>,
    /// Every raw key and value, as received.
    pub raw: BTreeMap<String, String>,
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key {key}: {reason}")]
pub struct ConfigError {
    /// The Felix parameter name.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Default for FelixConfig {
    fn default() -> Self {
        // Infallible: the defaults are constants checked by a unit test.
        let inbound = parse_failsafe_ports(DEFAULT_FAILSAFE_INBOUND).unwrap_or_default();
        let outbound = parse_failsafe_ports(DEFAULT_FAILSAFE_OUTBOUND).unwrap_or_default();
        FelixConfig {
            hostname: String::new(),
            endpoint_to_host: EndpointToHostAction::Drop,
            failsafe_inbound: inbound,
            failsafe_outbound: outbound,
            calico_version: None,
            raw: BTreeMap::new(),
        }
    }
}

impl FelixConfig {
    /// Builds the configuration from `ConfigUpdate.config`, applying Felix's defaults
    /// for absent keys.
    pub fn from_raw(raw: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut cfg = FelixConfig::default();
        let get = |k: &str| {
            raw.get(k)
                .or_else(|| raw.get(&k.to_ascii_lowercase()))
                .map(String::as_str)
        };
        if let Some(h) = get("FelixHostname") {
            cfg.hostname = h.to_string();
        }
        if let Some(a) = get("DefaultEndpointToHostAction") {
            cfg.endpoint_to_host = match a.to_ascii_uppercase().as_str() {
                "DROP" => EndpointToHostAction::Drop,
                "ACCEPT" => EndpointToHostAction::Accept,
                "RETURN" => EndpointToHostAction::Return,
                other => {
                    return Err(ConfigError {
                        key: "DefaultEndpointToHostAction".into(),
                        reason: format!("{other:?} is not DROP, ACCEPT or RETURN"),
                    })
                }
            };
        }
        for (key, slot) in [
            ("FailsafeInboundHostPorts", &mut cfg.failsafe_inbound),
            ("FailsafeOutboundHostPorts", &mut cfg.failsafe_outbound),
        ] {
            if let Some(v) = get(key) {
                *slot = parse_failsafe_ports(v).map_err(|e| ConfigError {
                    key: key.into(),
                    reason: e.to_string(),
                })?;
            }
        }
        cfg.calico_version = get("CalicoVersion").map(str::to_string);
        cfg.raw = raw;
        Ok(cfg)
    }
}

/// Host metadata: a node's addresses as Felix sends them (CIDRs keeping host bits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostMetadata {
    /// The node's IPv4 address.
    pub ipv4: Option<std::net::IpAddr>,
    /// The node's IPv6 address.
    pub ipv6: Option<std::net::IpAddr>,
}

impl HostMetadata {
    /// The node's addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = std::net::IpAddr> {
        self.ipv4.into_iter().chain(self.ipv6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn felix_default_failsafe_lists_parse() {
        assert_eq!(
            parse_failsafe_ports(DEFAULT_FAILSAFE_INBOUND)
                .unwrap()
                .len(),
            9
        );
        assert_eq!(
            parse_failsafe_ports(DEFAULT_FAILSAFE_OUTBOUND)
                .unwrap()
                .len(),
            9
        );
        assert_eq!(FelixConfig::default().failsafe_inbound.len(), 9);
    }

    #[test]
    fn failsafe_entries_with_nets() {
        let v = parse_failsafe_ports("tcp:10.0.0.0/8:22, udp:[fd00::/64]:53, 443").unwrap();
        assert_eq!(v[0].net.unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(v[1].protocol, Protocol::UDP);
        assert_eq!(v[1].net.unwrap().to_string(), "fd00::/64");
        assert_eq!((v[2].protocol, v[2].port), (Protocol::TCP, 443));
        assert!(parse_failsafe_ports("icmp:8").is_err());
        assert!(parse_failsafe_ports("tcp:99999").is_err());
        assert!(parse_failsafe_ports("none").unwrap().is_empty());
    }

    #[test]
    fn config_from_raw_checks_endpoint_to_host_action() {
        let mut raw = BTreeMap::new();
        raw.insert("DefaultEndpointToHostAction".into(), "RETURN".into());
        raw.insert("FelixHostname".into(), "node-a".into());
        let cfg = FelixConfig::from_raw(raw.clone()).unwrap();
        assert_eq!(cfg.endpoint_to_host, EndpointToHostAction::Return);
        assert_eq!(cfg.hostname, "node-a");
        raw.insert("DefaultEndpointToHostAction".into(), "MAYBE".into());
        let err = FelixConfig::from_raw(raw).unwrap_err();
        assert_eq!(err.key, "DefaultEndpointToHostAction");
    }
}
