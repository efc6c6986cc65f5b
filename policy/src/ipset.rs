//! IP sets as Felix sends them: typed, members as CIDRs, bare IPs or `ip,proto:port`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::ordered::OrderedMap;

use crate::net::{Cidr, ParseError, Protocol};

/// Felix's id of an IP set (`s:…`, `n:…`, `svc:…`, …). Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetId(String);

impl IpSetId {
    /// Validates an id: Felix never sends an empty one.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        (!id.is_empty()).then_some(IpSetId(id))
    }

    /// The id as Felix wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IpSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Felix's `IPSetUpdate.IPSetType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpSetKind {
    /// Addresses (`IP` = 0).
    Ip,
    /// Address, protocol and port triples (`IP_AND_PORT` = 1).
    IpAndPort,
    /// Prefixes (`NET` = 2).
    Net,
}

impl IpSetKind {
    /// The type's name in the capo views: `ip`, `ip+port`, `prefix`.
    pub fn view_name(self) -> &'static str {
        match self {
            IpSetKind::Ip => "ip",
            IpSetKind::IpAndPort => "ip+port",
            IpSetKind::Net => "prefix",
        }
    }
}

/// One member of an IP set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// A prefix (a single address is a full-length prefix).
    Net(Cidr),
    /// An `ip,proto:port` triple (named ports and service sets).
    IpPort {
        /// The address.
        addr: IpAddr,
        /// tcp, udp or sctp.
        protocol: Protocol,
        /// The port.
        port: u16,
    },
}

impl FromStr for Member {
    type Err = ParseError;

    /// Parses `10.0.0.1/32`, `10.0.0.0/24`, `10.0.0.1`, `fd00::1/128` and
    /// `10.0.0.1,tcp:8080` (protocols tcp, udp and sctp, as Felix produces).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, rest)) = s.split_once(',') else {
            return s.parse::<Cidr>().map(Member::Net);
        };
        let bad = || ParseError::BadIpPortMember(s.to_string());
        let (proto, port) = rest.split_once(':').ok_or_else(bad)?;
        let protocol = match proto {
            "tcp" => Protocol::TCP,
            "udp" => Protocol::UDP,
            "sctp" => Protocol::SCTP,
            _ => return Err(bad()),
        };
        Ok(Member::IpPort {
            addr: addr.parse().map_err(|_| bad())?,
            protocol,
            port: port.parse().map_err(|_| bad())?,
        })
    }
}

impl Member {
    /// Whether the member covers `addr` (prefix members only: an `ip,proto:port`
    /// member says nothing about an address on its own).
    pub fn covers_addr(&self, addr: &IpAddr) -> bool {
        match self {
            Member::Net(cidr) => cidr.contains(addr),
            Member::IpPort { .. } => false,
        }
    }

    /// Whether the member is exactly this address, protocol and port.
    pub fn is_endpoint(&self, addr: &IpAddr, protocol: Protocol, port: u16) -> bool {
        match self {
            Member::IpPort {
                addr: a,
                protocol: p,
                port: q,
            } => a == addr && *p == protocol && *q == port,
            Member::Net(_) => false,
        }
    }

    /// Renders the member as the capo views do for a set of `kind`.
    pub fn view(&self, kind: IpSetKind) -> String {
        match self {
            Member::Net(cidr) if kind == IpSetKind::Ip && is_full_length(cidr) => {
                cidr.net().addr().to_string()
            }
            Member::Net(cidr) => cidr.to_string(),
            Member::IpPort {
                addr,
                protocol,
                port,
            } => format!("{protocol} {addr};{port}"),
        }
    }
}

fn is_full_length(cidr: &Cidr) -> bool {
    cidr.prefix_len() == if cidr.is_ipv4() { 32 } else { 128 }
}

/// An IP set: its type and its members, in arrival order (the order the views print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    kind: IpSetKind,
    /// The members (a map to nothing: a removal anywhere in a large set is O(1)).
    members: OrderedMap<Member, ()>,
    /// Members shorter than one address: only they need a scan to test an address.
    prefixes: usize,
}

/// 1 for a member shorter than one address, else 0.
fn prefix_count(m: &Member) -> usize {
    usize::from(matches!(m, Member::Net(c) if !is_full_length(c)))
}

/// A member that the set's type cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member {member:?} cannot be held by a {kind:?} set")]
pub struct WrongMemberKind {
    /// The set's type.
    pub kind: IpSetKind,
    /// The member.
    pub member: Member,
}

impl IpSet {
    /// A set from its members; duplicates collapse. CIDR members are accepted in every
    /// set type (Felix sends selector members as CIDRs), `ip,proto:port` only in
    /// `IpAndPort` sets.
    pub fn new(
        kind: IpSetKind,
        members: impl IntoIterator<Item = Member>,
    ) -> Result<Self, WrongMemberKind> {
        let mut set = IpSet {
            kind,
            members: OrderedMap::default(),
            prefixes: 0,
        };
        for m in members {
            set.check(&m)?;
            if set.members.insert(m, ()).is_none() {
                set.prefixes += prefix_count(&m);
            }
        }
        Ok(set)
    }

    fn check(&self, member: &Member) -> Result<(), WrongMemberKind> {
        match (self.kind, member) {
            (IpSetKind::IpAndPort, _) | (_, Member::Net(_)) => Ok(()),
            (kind, member) => Err(WrongMemberKind {
                kind,
                member: *member,
            }),
        }
    }

    /// Checks that every member could be added, without changing the set.
    pub fn check_all<'a>(
        &self,
        members: impl IntoIterator<Item = &'a Member>,
    ) -> Result<(), WrongMemberKind> {
        members.into_iter().try_for_each(|m| self.check(m))
    }

    /// Adds members (already checked with [`IpSet::check_all`]); existing ones stay.
    pub fn add(&mut self, members: impl IntoIterator<Item = Member>) {
        for m in members {
            if self.members.insert(m, ()).is_none() {
                self.prefixes += prefix_count(&m);
            }
        }
    }

    /// Removes members; absent ones are ignored.
    pub fn remove<'a>(&mut self, members: impl IntoIterator<Item = &'a Member>) {
        for m in members {
            if self.members.remove(m).is_some() {
                self.prefixes -= prefix_count(m);
            }
        }
    }

    /// The set's type.
    pub fn kind(&self) -> IpSetKind {
        self.kind
    }

    /// Members in arrival order.
    pub fn members(&self) -> impl ExactSizeIterator<Item = &Member> {
        self.members.keys()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the set has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether some member covers `addr`: the host member equal to it (a hash
    /// look-up), else a scan of the members when the set holds prefixes.
    pub fn contains_addr(&self, addr: &IpAddr) -> bool {
        self.members.contains_key(&Member::Net(Cidr::host(*addr)))
            || (self.prefixes > 0 && self.members.keys().any(|m| m.covers_addr(addr)))
    }

    /// Whether an `ip,proto:port` member equals the triple (a hash look-up).
    pub fn contains_endpoint(&self, addr: &IpAddr, protocol: Protocol, port: u16) -> bool {
        self.members.contains_key(&Member::IpPort {
            addr: *addr,
            protocol,
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(host: bool, a: u8, len: u8, port: Option<u16>) -> Member {
        let addr = IpAddr::from([10, 0, a >> 4, a]);
        match port {
            Some(port) => Member::IpPort {
                addr,
                protocol: Protocol::TCP,
                port,
            },
            None if host => Member::Net(Cidr::host(addr)),
            None => format!("10.0.{}.0/{len}", a >> 4).parse().unwrap(),
        }
    }

    proptest! {
        /// The look-ups equal a scan of every member, through adds and removes.
        #[test]
        fn lookups_equal_a_scan_of_the_members(
            ops in prop::collection::vec(
                (any::<bool>(), any::<bool>(), any::<u8>(), 20u8..32, prop::option::weighted(0.2, 1u16..4)),
                1..60,
            ),
            probes in prop::collection::vec((any::<u8>(), 1u16..4), 40),
        ) {
            let mut set = IpSet::new(IpSetKind::IpAndPort, []).unwrap();
            for (add, host, a, len, port) in ops {
                let m = member(host, a, len, port);
                if add {
                    set.add([m]);
                } else {
                    set.remove([&m]);
                }
                for (b, port) in &probes {
                    let addr = IpAddr::from([10, 0, b >> 4, *b]);
                    let scan = set.members().any(|m| m.covers_addr(&addr));
                    prop_assert_eq!(set.contains_addr(&addr), scan);
                    let scan = set.members().any(|m| m.is_endpoint(&addr, Protocol::TCP, *port));
                    prop_assert_eq!(set.contains_endpoint(&addr, Protocol::TCP, *port), scan);
                }
            }
        }
    }

    #[test]
    fn members_parse_in_all_felix_forms() {
        let m: Member = "10.0.0.1/32".parse().unwrap();
        assert_eq!(m, Member::Net("10.0.0.1".parse().unwrap()));
        let bare: Member = "10.0.0.1".parse().unwrap();
        assert_eq!(m, bare);
        let ipp: Member = "fd00::1,udp:53".parse().unwrap();
        assert_eq!(
            ipp,
            Member::IpPort {
                addr: "fd00::1".parse().unwrap(),
                protocol: Protocol::UDP,
                port: 53
            }
        );
        assert!("10.0.0.1,icmp:8".parse::<Member>().is_err());
        assert!("10.0.0.1,tcp:70000".parse::<Member>().is_err());
        assert!("nonsense".parse::<Member>().is_err());
    }

    #[test]
    fn mixed_family_set_matches_both_families() {
        let set = IpSet::new(
            IpSetKind::Net,
            ["11.0.0.196/32", "fd20::58fd:b191:5c13:9cc3/128"]
                .iter()
                .map(|s| s.parse().unwrap()),
        )
        .unwrap();
        assert!(set.contains_addr(&"11.0.0.196".parse().unwrap()));
        assert!(set.contains_addr(&"fd20::58fd:b191:5c13:9cc3".parse().unwrap()));
        assert!(!set.contains_addr(&"11.0.0.5".parse().unwrap()));
    }

    #[test]
    fn ip_port_members_only_in_ip_and_port_sets() {
        let m: Member = "10.0.0.1,tcp:80".parse().unwrap();
        assert!(IpSet::new(IpSetKind::Net, [m]).is_err());
        let set = IpSet::new(IpSetKind::IpAndPort, [m]).unwrap();
        let a = "10.0.0.1".parse().unwrap();
        assert!(set.contains_endpoint(&a, Protocol::TCP, 80));
        assert!(!set.contains_endpoint(&a, Protocol::UDP, 80));
        assert!(!set.contains_endpoint(&a, Protocol::TCP, 81));
        assert_eq!(m.view(IpSetKind::IpAndPort), "TCP 10.0.0.1;80");
    }

    #[test]
    fn removing_one_ip_port_member_keeps_the_others() {
        // The C plugin's compare bug removed unrelated members here.
        let ms: Vec<Member> = ["10.0.0.1,tcp:80", "10.0.0.1,tcp:81", "10.0.0.2,tcp:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut set = IpSet::new(IpSetKind::IpAndPort, ms.clone()).unwrap();
        set.remove([&ms[0]]);
        assert_eq!(set.members().copied().collect::<Vec<_>>(), ms[1..].to_vec());
    }
}
