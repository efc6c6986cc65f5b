//! Addresses, prefixes, protocols and ports: the validated leaf types of the model.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An IP prefix, stored with its host bits cleared (Felix and VPP both match on
/// the network part only), but remembering whether it was written as a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

/// Why a string is not an address, prefix, port or protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither `a.b.c.d[/n]` nor an IPv6 address with optional prefix length.
    #[error("{0:?} is not an IP address or CIDR")]
    BadCidr(String),
    /// An `ip,proto:port` IP-set member that does not parse.
    #[error("{0:?} is not an `ip,proto:port` member")]
    BadIpPortMember(String),
    /// A protocol name Felix does not produce.
    #[error("{0:?} is not a known protocol name")]
    UnknownProtocol(String),
    /// A number outside 0..=255 used as a protocol.
    #[error("protocol number {0} is outside 0..=255")]
    ProtocolOutOfRange(i64),
    /// A port outside 0..=65535 or a range whose first port is after its last.
    #[error("port range {first}..{last} is invalid (ports are 0..=65535, first <= last)")]
    BadPortRange {
        /// First port as received.
        first: i64,
        /// Last port as received.
        last: i64,
    },
    /// An ICMP type or code outside 0..=255.
    #[error("ICMP {what} {value} is outside 0..=255")]
    BadIcmp {
        /// "type" or "code".
        what: &'static str,
        /// The value received.
        value: i64,
    },
    /// A failsafe port entry (`proto:port` or `proto:net:port`) that does not parse.
    #[error("{0:?} is not a failsafe port entry (`proto:port` or `proto:net:port`)")]
    BadFailsafe(String),
}

impl Cidr {
    /// A prefix covering exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Cidr(IpNet::from(addr))
    }

    /// The prefix, host bits cleared.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Whether `addr` falls inside the prefix (always false across families).
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.0.contains(addr)
    }

    /// True for IPv4 prefixes.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    /// Accepts `10.0.0.1/32`, `10.0.0.0/24`, a bare `10.0.0.1` and their IPv6 forms.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(Cidr::host)
            .map_err(|_| ParseError::BadCidr(s.to_string()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP.
    pub const ICMP: Protocol = Protocol(1);
    /// TCP.
    pub const TCP: Protocol = Protocol(6);
    /// UDP.
    pub const UDP: Protocol = Protocol(17);
    /// ICMPv6.
    pub const ICMPV6: Protocol = Protocol(58);
    /// SCTP.
    pub const SCTP: Protocol = Protocol(132);
    /// UDP-Lite.
    pub const UDPLITE: Protocol = Protocol(136);

    /// Parses a protocol the way Felix's rules carry it: a lower-case name as written
    /// in the API (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `udplite`) or a number.
    pub fn from_name(name: &str) -> Result<Self, ParseError> {
        match name.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::TCP),
            "udp" => Ok(Self::UDP),
            "icmp" => Ok(Self::ICMP),
            "icmpv6" | "icmp6" => Ok(Self::ICMPV6),
            "sctp" => Ok(Self::SCTP),
            "udplite" => Ok(Self::UDPLITE),
            other => match other.parse::<i64>() {
                Ok(n) => Self::from_number(n),
                Err(_) => Err(ParseError::UnknownProtocol(name.to_string())),
            },
        }
    }

    /// Validates a protocol number.
    pub fn from_number(n: i64) -> Result<Self, ParseError> {
        u8::try_from(n)
            .map(Protocol)
            .map_err(|_| ParseError::ProtocolOutOfRange(n))
    }

    /// Whether packets of this protocol carry 16-bit source and destination ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP | Self::UDPLITE)
    }

    /// Whether this is ICMP or ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::ICMP | Self::ICMPV6)
    }
}

impl fmt::Display for Protocol {
    /// VPP's protocol names (protocols.def), as the capo views print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "HOPOPT",
            1 => "ICMP",
            2 => "IGMP",
            4 => "IP_IN_IP",
            6 => "TCP",
            17 => "UDP",
            41 => "IPV6",
            47 => "GRE",
            50 => "IPSEC_ESP",
            51 => "IPSEC_AH",
            58 => "ICMP6",
            132 => "SCTP",
            136 => "UDP_LITE",
            n => return write!(f, "unknown 0x{n:x}"),
        };
        f.write_str(name)
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Validates a range as Felix sends it (`int32` fields).
    pub fn new(first: i64, last: i64) -> Result<Self, ParseError> {
        match (u16::try_from(first), u16::try_from(last)) {
            (Ok(f), Ok(l)) if f <= l => Ok(PortRange { first: f, last: l }),
            _ => Err(ParseError::BadPortRange { first, last }),
        }
    }

    /// A single port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// First port, inclusive.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// Last port, inclusive.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Whether `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    /// `N` for a single port and `[a-b]` otherwise, as the capo views print ports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "[{}-{}]", self.first, self.last)
        }
    }
}

/// IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_accepts_bare_addresses_and_clears_host_bits() {
        let bare: Cidr = "10.0.0.1".parse().unwrap();
        assert_eq!(bare.to_string(), "10.0.0.1/32");
        let v6: Cidr = "fd20::1".parse().unwrap();
        assert_eq!(v6.to_string(), "fd20::1/128");
        let net: Cidr = "6.6.6.6/24".parse().unwrap();
        assert_eq!(net.to_string(), "6.6.6.0/24");
        assert!(net.contains(&"6.6.6.200".parse().unwrap()));
        assert!(!net.contains(&"::1".parse().unwrap()));
        assert!("10.0.0.300".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn protocol_names_and_numbers() {
        assert_eq!(Protocol::from_name("TCP").unwrap(), Protocol::TCP);
        assert_eq!(Protocol::from_name("icmpv6").unwrap(), Protocol::ICMPV6);
        assert_eq!(Protocol::from_name("47").unwrap(), Protocol(47));
        assert!(Protocol::from_name("carrier-pigeon").is_err());
        assert!(Protocol::from_number(256).is_err());
        assert_eq!(Protocol::ICMPV6.to_string(), "ICMP6");
    }

    #[test]
    fn port_ranges_validate_and_print() {
        assert_eq!(PortRange::new(80, 80).unwrap().to_string(), "80");
        assert_eq!(
            PortRange::new(3050, 3060).unwrap().to_string(),
            "[3050-3060]"
        );
        assert!(PortRange::new(10, 9).is_err());
        assert!(PortRange::new(0, 65536).is_err());
        assert!(PortRange::new(-1, 5).is_err());
    }
}
