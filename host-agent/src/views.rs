//! What capoctl and the agent share: view selection, packet arguments, trace output.

use std::fmt::Write as _;
use std::net::IpAddr;

use capo_policy::eval::{CheckPoint, Trace};
use capo_policy::{IdTable, Packet, Protocol, State, Verdict, Views, L4};

/// Why an argument naming a view, a packet's fields or an interface index was
/// rejected; the message names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Not one of the views.
    #[error("unknown view {0:?}: expected `show capo interfaces|ipsets|policies [verbose]|rules`")]
    UnknownView(String),
    /// Not a protocol name or number.
    #[error("--proto: {0:?} is not a protocol: use tcp, udp, sctp, icmp, icmpv6, udplite, an IANA name (gre, esp, ah, ipip, ospf, …) or a number 0-255")]
    UnknownProtocol(String),
    /// The two ends are of different families.
    #[error("--from {from} and --to {to} are of different IP families")]
    MixedFamilies {
        /// The source.
        from: IpAddr,
        /// The destination.
        to: IpAddr,
    },
    /// Ports given for ICMP.
    #[error("--sport/--dport do not apply to ICMP: use --icmp-type/--icmp-code")]
    PortsForIcmp,
    /// ICMP fields given for a protocol with ports.
    #[error("--icmp-type/--icmp-code do not apply to {0}")]
    IcmpForPorts(String),
    /// Ports or ICMP fields given for a protocol with neither.
    #[error("protocol {0} has no ports or ICMP fields")]
    NoL4Fields(String),
    /// Not `NAME=INDEX`.
    #[error("{0:?}: expected NAME=SW_IF_INDEX")]
    NotNameIndex(String),
    /// The index is not a number.
    #[error("{arg:?}: {index:?} is not an interface index")]
    BadIndex {
        /// The whole argument.
        arg: String,
        /// Its index part.
        index: String,
    },
    /// No name before `=`.
    #[error("{0:?}: empty interface name")]
    EmptyName(String),
}

/// One of the capo views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// `show capo interfaces`.
    Interfaces,
    /// `show capo ipsets`.
    Ipsets,
    /// `show capo policies [verbose]`.
    Policies {
        /// With every rule.
        verbose: bool,
    },
    /// `show capo rules`.
    Rules,
}

impl View {
    /// All four views, as `capoctl replay` prints them when none is named.
    pub const ALL: [View; 4] = [
        View::Interfaces,
        View::Ipsets,
        View::Policies { verbose: true },
        View::Rules,
    ];

    /// The command that shows the view.
    pub fn command(self) -> &'static str {
        match self {
            View::Interfaces => "show capo interfaces",
            View::Ipsets => "show capo ipsets",
            View::Policies { verbose: false } => "show capo policies",
            View::Policies { verbose: true } => "show capo policies verbose",
            View::Rules => "show capo rules",
        }
    }

    /// Parses `show capo interfaces|ipsets|policies [verbose]|rules` (`sh` and
    /// `show` both work; the words `show capo` may be left out).
    pub fn parse(words: &[String]) -> Result<View, ArgError> {
        let mut w: Vec<&str> = words.iter().map(String::as_str).collect();
        if matches!(w.first(), Some(&"show") | Some(&"sh")) {
            w.remove(0);
        }
        if w.first() == Some(&"capo") {
            w.remove(0);
        }
        match w.as_slice() {
            ["interfaces"] | ["int"] => Ok(View::Interfaces),
            ["ipsets"] => Ok(View::Ipsets),
            ["policies"] => Ok(View::Policies { verbose: false }),
            ["policies", "verbose"] => Ok(View::Policies { verbose: true }),
            ["rules"] => Ok(View::Rules),
            _ => Err(ArgError::UnknownView(words.join(" "))),
        }
    }

    /// Renders the view.
    pub fn render(self, state: &State, ids: &IdTable) -> String {
        let v = Views::new(state, ids);
        match self {
            View::Interfaces => v.interfaces(),
            View::Ipsets => v.ipsets(),
            View::Policies { verbose } => v.policies(verbose),
            View::Rules => v.rules(),
        }
    }
}

/// IANA protocol keywords (as `/etc/protocols` and iptables take them) beyond the
/// names Calico's rules use, for `capoctl trace|inject --proto`.
const IANA_PROTOCOLS: &[(&str, u8)] = &[
    ("hopopt", 0),
    ("igmp", 2),
    ("ggp", 3),
    ("ipip", 4),
    ("ipencap", 4),
    ("ipv4", 4),
    ("st", 5),
    ("egp", 8),
    ("igp", 9),
    ("pup", 12),
    ("hmp", 20),
    ("xns-idp", 22),
    ("rdp", 27),
    ("iso-tp4", 29),
    ("dccp", 33),
    ("xtp", 36),
    ("ddp", 37),
    ("idpr-cmtp", 38),
    ("ipv6", 41),
    ("ipv6-route", 43),
    ("ipv6-frag", 44),
    ("idrp", 45),
    ("rsvp", 46),
    ("gre", 47),
    ("esp", 50),
    ("ipsec-esp", 50),
    ("ah", 51),
    ("ipsec-ah", 51),
    ("skip", 57),
    ("ipv6-icmp", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("rspf", 73),
    ("vmtp", 81),
    ("eigrp", 88),
    ("ospf", 89),
    ("ospfigp", 89),
    ("ax.25", 93),
    ("ipip-ax", 94),
    ("etherip", 97),
    ("encap", 98),
    ("pim", 103),
    ("ipcomp", 108),
    ("vrrp", 112),
    ("l2tp", 115),
    ("isis", 124),
    ("fc", 133),
    ("mobility-header", 135),
    ("mpls-in-ip", 137),
    ("manet", 138),
    ("hip", 139),
    ("shim6", 140),
    ("wesp", 141),
    ("rohc", 142),
    ("ethernet", 143),
];

/// `--proto`: Calico's names (`tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, `udplite`), an
/// IANA keyword (`gre`, `esp`, `ah`, `ipip`, …) or a number 0–255.
///
/// # Errors
///
/// A message naming the value and what is accepted.
pub fn protocol_arg(name: &str) -> Result<Protocol, ArgError> {
    if let Ok(p) = Protocol::from_name(name) {
        return Ok(p);
    }
    let lower = name.to_ascii_lowercase();
    IANA_PROTOCOLS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, n)| Protocol(*n))
        .ok_or_else(|| ArgError::UnknownProtocol(name.to_string()))
}

/// Builds a packet from trace arguments; the error names the bad argument.
pub fn packet(
    from: IpAddr,
    to: IpAddr,
    proto: &str,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
) -> Result<Packet, ArgError> {
    if from.is_ipv4() != to.is_ipv4() {
        return Err(ArgError::MixedFamilies { from, to });
    }
    let protocol = protocol_arg(proto)?;
    let l4 = if protocol.is_icmp() {
        if sport.is_some() || dport.is_some() {
            return Err(ArgError::PortsForIcmp);
        }
        L4::Icmp {
            icmp_type: icmp_type.unwrap_or(if protocol == Protocol::ICMP { 8 } else { 128 }),
            code: icmp_code.unwrap_or(0),
        }
    } else if protocol.has_ports() {
        if icmp_type.is_some() || icmp_code.is_some() {
            return Err(ArgError::IcmpForPorts(proto.to_string()));
        }
        L4::Ports {
            src: sport.unwrap_or(0),
            dst: dport.unwrap_or(0),
        }
    } else {
        if sport.is_some() || dport.is_some() || icmp_type.is_some() || icmp_code.is_some() {
            return Err(ArgError::NoL4Fields(proto.to_string()));
        }
        L4::None
    };
    Ok(Packet {
        src: from,
        dst: to,
        protocol,
        l4,
    })
}

/// The text form of a trace: `ALLOW` or `DENY`, then one line per check.
pub fn trace_text(t: &Trace, state: &State, ids: &IdTable) -> String {
    let views = Views::new(state, ids);
    let mut out = match t.verdict {
        Verdict::Allow => "ALLOW\n".to_string(),
        Verdict::Deny => "DENY\n".to_string(),
    };
    if t.steps.is_empty() {
        out += "  no local endpoint on the path: not policed on this node\n";
    }
    for step in &t.steps {
        let at = match &step.at {
            CheckPoint::Workload {
                key,
                interface,
                direction,
            } => format!("{interface} ({key}) {direction}"),
            CheckPoint::Host { direction } => {
                format!("{} (host) {direction}", ids.host_interface())
            }
            CheckPoint::Forward {
                key,
                interface,
                direction,
            } => format!("{interface} (host endpoint {key}, forwarded) {direction}"),
        };
        let verdict = match step.outcome.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        };
        let line = views.decider_line(&step.outcome.decider);
        // "allowed before policy: …" reads as it is.
        if line.starts_with("allowed before policy") {
            let _ = writeln!(out, "  {at}: {line}");
        } else {
            let _ = writeln!(out, "  {at}: {verdict} by {line}");
        }
        for l in &step.outcome.logged {
            let _ = writeln!(out, "    logged by {}", views.decider_line(l));
        }
    }
    out
}

/// The JSON form of a trace: `{"verdict": "allow"|"deny", "steps": [...]}`, each
/// step with the decider's rule printed as in the views.
pub fn trace_json(t: &Trace, state: &State, ids: &IdTable) -> serde_json::Value {
    let views = Views::new(state, ids);
    let steps: Vec<serde_json::Value> = t
        .steps
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
            if let serde_json::Value::Object(m) = &mut v {
                m.insert(
                    "rule".into(),
                    serde_json::Value::String(views.decider_line(&s.outcome.decider)),
                );
                if let CheckPoint::Host { .. } = s.at {
                    m.insert(
                        "interface".into(),
                        serde_json::Value::String(ids.host_interface().to_string()),
                    );
                }
            }
            v
        })
        .collect();
    serde_json::json!({
        "verdict": t.verdict,
        "steps": steps,
    })
}

/// Parses `NAME=INDEX` interface index presets.
pub fn parse_interface_index(s: &str) -> Result<(String, u32), ArgError> {
    let (name, idx) = s
        .split_once('=')
        .ok_or_else(|| ArgError::NotNameIndex(s.to_string()))?;
    let idx: u32 = idx.parse().map_err(|_| ArgError::BadIndex {
        arg: s.to_string(),
        index: idx.to_string(),
    })?;
    if name.is_empty() {
        return Err(ArgError::EmptyName(s.to_string()));
    }
    Ok((name.to_string(), idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn views_parse_with_or_without_show_capo() {
        assert_eq!(
            View::parse(&words("show capo interfaces")).unwrap(),
            View::Interfaces
        );
        assert_eq!(View::parse(&words("sh capo rules")).unwrap(), View::Rules);
        assert_eq!(
            View::parse(&words("policies verbose")).unwrap(),
            View::Policies { verbose: true }
        );
        assert!(View::parse(&words("show capo flows please")).is_err());
    }

    #[test]
    fn packet_arguments_are_checked() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(packet(a, v6, "tcp", None, Some(80), None, None).is_err());
        assert!(packet(a, b, "icmp", None, Some(80), None, None).is_err());
        assert!(packet(a, b, "tcp", None, Some(80), Some(8), None).is_err());
        assert!(packet(a, b, "bogus", None, None, None, None).is_err());
        let p = packet(a, b, "udp", Some(1), Some(53), None, None).unwrap();
        assert_eq!(p.l4, L4::Ports { src: 1, dst: 53 });
        let p = packet(a, b, "47", None, None, None, None).unwrap();
        assert_eq!(p.l4, L4::None);
    }

    #[test]
    fn interface_index_presets_parse() {
        assert_eq!(
            parse_interface_index("tun3=11").unwrap(),
            ("tun3".into(), 11)
        );
        assert!(parse_interface_index("tun3").is_err());
        assert!(parse_interface_index("=3").is_err());
        assert!(parse_interface_index("tun3=x").is_err());
    }
}

#[cfg(test)]
mod protocol_tests {
    use super::*;

    #[test]
    fn protocols_by_calico_name_iana_keyword_or_number() {
        for (name, n) in [
            ("tcp", 6),
            ("icmpv6", 58),
            ("ipv6-icmp", 58),
            ("gre", 47),
            ("ESP", 50),
            ("ah", 51),
            ("ipip", 4),
            ("ospf", 89),
            ("vrrp", 112),
            ("255", 255),
        ] {
            assert_eq!(protocol_arg(name).unwrap(), Protocol(n), "{name}");
        }
        assert!(protocol_arg("256").is_err());
        assert!(protocol_arg("bogus")
            .unwrap_err()
            .to_string()
            .contains("IANA"));
    }
}
