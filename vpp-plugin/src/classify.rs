//! The classifier the node calls, behind a small trait.
//!
//! The fast classifier (`capo-classifier`: compiled generations, zerocopy parsing) is
//! being written beside this crate. Until its API settles, the node classifies through
//! [`Classifier`], implemented here by [`Reference`] over the policy core's reference
//! evaluator, and parses with [`parse_ip`]. Switching means one more `Classifier` impl
//! over `capo_classifier::Generation::classify` and `capo_classifier::packet::parse_ip`;
//! nothing in the node or the control path changes.
//!
//! [`parse_ip`]'s contract: it never panics or reads out of bounds; a header that does
//! not fit is a [`ParseError`]. A non-first fragment has no L4 header ([`L4::None`]),
//! as the reference evaluator expects.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use capo_policy::eval::{evaluate_forward, evaluate_host, evaluate_workload, InternalPolicy};
use capo_policy::{Decider, Direction, Outcome, Packet, Protocol, State, Verdict, L4};

use crate::generation::IfaceKind;

/// Classifies one packet on one interface, in Calico's direction relative to the
/// interface's endpoint.
pub trait Classifier: Send + Sync + fmt::Debug {
    /// The verdict and what decided it.
    fn classify(&self, kind: &IfaceKind, dir: Direction, pkt: &Packet) -> Outcome;
}

/// Builds the classifier of a generation from its validated state.
pub type ClassifierBuilder = fn(&Arc<State>) -> Arc<dyn Classifier>;

/// The reference evaluator as a [`Classifier`] (the specification; slow).
#[derive(Debug, Clone)]
pub struct Reference {
    state: Arc<State>,
}

impl Reference {
    /// A classifier over `state`.
    pub fn new(state: Arc<State>) -> Self {
        Reference { state }
    }

    /// A [`ClassifierBuilder`] for the reference evaluator.
    pub fn build(state: &Arc<State>) -> Arc<dyn Classifier> {
        Arc::new(Reference::new(Arc::clone(state)))
    }
}

fn decided(verdict: Verdict, decider: Decider) -> Outcome {
    Outcome {
        verdict,
        decider,
        logged: Vec::new(),
    }
}

impl Classifier for Reference {
    fn classify(&self, kind: &IfaceKind, dir: Direction, pkt: &Packet) -> Outcome {
        let state = &*self.state;
        match kind {
            IfaceKind::Workload(key) => evaluate_workload(state, key, dir, pkt)
                .unwrap_or_else(|| decided(Verdict::Deny, Decider::NoProfileMatched)),
            IfaceKind::Host => evaluate_host(state, dir, pkt),
            IfaceKind::Forward(key) => {
                let Some(hep) = state.host_endpoints().get(key) else {
                    return decided(Verdict::Allow, Decider::NoForwardPolicy);
                };
                // Traffic to or from the host itself is policed on the host-facing
                // interface (the views' allow-to-host policy, rules #3/#4).
                let host = state.local_host_addrs();
                let (peer, index) = match dir {
                    Direction::Ingress => (&pkt.dst, 0),
                    Direction::Egress => (&pkt.src, 1),
                };
                if host.contains(peer) {
                    return decided(
                        Verdict::Allow,
                        Decider::Internal {
                            policy: InternalPolicy::AllowToHost,
                            index,
                        },
                    );
                }
                evaluate_forward(state, hep, dir, pkt)
            }
        }
    }
}

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A header is cut short.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// The IP version nibble is not the node's family.
    #[error("IP version {0} on this arc")]
    BadVersion(u8),
    /// More IPv6 extension headers than capo walks.
    #[error("too many IPv6 extension headers")]
    TooManyExtensions,
}

/// The most IPv6 extension headers walked.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A parsed packet: the policy fields, plus the ports that identify its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parsed {
    /// What policy looks at.
    pub packet: Packet,
    /// Flow-identifying ports: L4 ports, the echo identifier on both sides for ICMP
    /// echo, else `(type, code)`.
    pub flow_ports: (u16, u16),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

fn l4(protocol: u8, b: &[u8]) -> Result<(L4, (u16, u16)), ParseError> {
    match protocol {
        6 | 17 | 132 | 136 => {
            let (Some(src), Some(dst)) = (be16(b, 0), be16(b, 2)) else {
                return Err(ParseError::Truncated("L4"));
            };
            Ok((L4::Ports { src, dst }, (src, dst)))
        }
        1 | 58 => {
            let (Some(&icmp_type), Some(&code)) = (b.first(), b.get(1)) else {
                return Err(ParseError::Truncated("ICMP"));
            };
            let echo = matches!((protocol, icmp_type), (1, 0 | 8) | (58, 128 | 129));
            let ports = match (echo, be16(b, 4)) {
                (true, Some(id)) => (id, id),
                _ => (u16::from(icmp_type), u16::from(code)),
            };
            Ok((L4::Icmp { icmp_type, code }, ports))
        }
        _ => Ok((L4::None, (0, 0))),
    }
}

/// Parses a packet that starts at its IP header of family `ip6` (VPP's ip4/ip6 arcs
/// hand these over).
///
/// # Errors
///
/// [`ParseError`] when a header does not fit or the version is not the family's.
pub fn parse_ip(bytes: &[u8], ip6: bool) -> Result<Parsed, ParseError> {
    let version = bytes.first().map(|b| b >> 4);
    match (version, ip6) {
        (Some(4), false) => parse_ipv4(bytes),
        (Some(6), true) => parse_ipv6(bytes),
        (Some(v), _) => Err(ParseError::BadVersion(v)),
        (None, _) => Err(ParseError::Truncated("IP")),
    }
}

fn parse_ipv4(b: &[u8]) -> Result<Parsed, ParseError> {
    let short = ParseError::Truncated("IPv4");
    let ihl = usize::from(b.first().ok_or(short)? & 0x0f) * 4;
    let (Some(frag), Some(&proto), Some(src), Some(dst)) =
        (be16(b, 6), b.get(9), array::<4>(b, 12), array::<4>(b, 16))
    else {
        return Err(short);
    };
    if ihl < 20 || b.len() < ihl {
        return Err(short);
    }
    let non_first_fragment = frag & 0x1fff != 0;
    let (l4, flow_ports) = if non_first_fragment {
        (L4::None, (0, 0))
    } else {
        l4(proto, b.get(ihl..).unwrap_or_default())?
    };
    Ok(Parsed {
        packet: Packet {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            protocol: Protocol(proto),
            l4,
        },
        flow_ports,
    })
}

fn parse_ipv6(b: &[u8]) -> Result<Parsed, ParseError> {
    let (Some(&first_next), Some(src), Some(dst)) =
        (b.get(6), array::<16>(b, 8), array::<16>(b, 24))
    else {
        return Err(ParseError::Truncated("IPv6"));
    };
    let mut next = first_next;
    let mut at = 40usize;
    let mut non_first_fragment = false;
    let mut walked = 0;
    loop {
        match next {
            // Hop-by-hop, routing, destination options: (next, len in 8-octet units - 1).
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (b.get(at), b.get(at + 1)) else {
                    return Err(ParseError::Truncated("IPv6 extension"));
                };
                next = n;
                at += (usize::from(len) + 1) * 8;
            }
            // Fragment: fixed 8 octets.
            44 => {
                let (Some(&n), Some(off)) = (b.get(at), be16(b, at + 2)) else {
                    return Err(ParseError::Truncated("IPv6 fragment"));
                };
                non_first_fragment |= off & 0xfff8 != 0;
                next = n;
                at += 8;
            }
            // Authentication header: length in 4-octet units - 2.
            51 => {
                let (Some(&n), Some(&len)) = (b.get(at), b.get(at + 1)) else {
                    return Err(ParseError::Truncated("IPv6 AH"));
                };
                next = n;
                at += (usize::from(len) + 2) * 4;
            }
            _ => break,
        }
        walked += 1;
        if walked > MAX_EXTENSION_HEADERS {
            return Err(ParseError::TooManyExtensions);
        }
    }
    let (l4, flow_ports) = if non_first_fragment {
        (L4::None, (0, 0))
    } else {
        l4(next, b.get(at..).unwrap_or_default())?
    };
    Ok(Parsed {
        packet: Packet {
            src: IpAddr::V6(Ipv6Addr::from(src)),
            dst: IpAddr::V6(Ipv6Addr::from(dst)),
            protocol: Protocol(next),
            l4,
        },
        flow_ports,
    })
}

/// Test and benchmark packets, as VPP's ip arcs see them (from the IP header on).
pub mod build {
    use std::net::IpAddr;

    use capo_policy::{Packet, L4};

    /// Bytes of `pkt`, starting at its IP header, with a minimal L4 header.
    pub fn ip_bytes(pkt: &Packet) -> Vec<u8> {
        let mut l4 = match pkt.l4 {
            L4::Ports { src, dst } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&src.to_be_bytes());
                h[2..4].copy_from_slice(&dst.to_be_bytes());
                h
            }
            L4::Icmp { icmp_type, code } => vec![icmp_type, code, 0, 0, 0, 1, 0, 1],
            L4::None => Vec::new(),
        };
        match (pkt.src, pkt.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = vec![0u8; 20];
                h[0] = 0x45;
                let total = (20 + l4.len()) as u16;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[8] = 64;
                h[9] = pkt.protocol.0;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h.append(&mut l4);
                h
            }
            (s, d) => {
                let to6 = |a: IpAddr| match a {
                    IpAddr::V6(v) => v,
                    IpAddr::V4(v) => v.to_ipv6_mapped(),
                };
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                h[6] = pkt.protocol.0;
                h[7] = 64;
                h[8..24].copy_from_slice(&to6(s).octets());
                h[24..40].copy_from_slice(&to6(d).octets());
                h.append(&mut l4);
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::build::ip_bytes;
    use super::*;

    fn pkt(src: &str, dst: &str, protocol: u8, l4: L4) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol(protocol),
            l4,
        }
    }

    #[test]
    fn parse_round_trips_built_packets() {
        for p in [
            pkt(
                "11.0.0.196",
                "11.0.0.67",
                6,
                L4::Ports {
                    src: 40000,
                    dst: 5978,
                },
            ),
            pkt("fd20::1", "fd20::2", 17, L4::Ports { src: 53, dst: 5353 }),
            pkt(
                "10.0.0.1",
                "10.0.0.2",
                1,
                L4::Icmp {
                    icmp_type: 8,
                    code: 0,
                },
            ),
            pkt(
                "fd20::1",
                "fd20::2",
                58,
                L4::Icmp {
                    icmp_type: 128,
                    code: 0,
                },
            ),
            pkt("10.0.0.1", "10.0.0.2", 47, L4::None),
        ] {
            let bytes = ip_bytes(&p);
            let ip6 = p.src.is_ipv6();
            assert_eq!(parse_ip(&bytes, ip6).unwrap().packet, p);
        }
    }

    #[test]
    fn echo_flows_use_the_identifier() {
        let p = pkt(
            "10.0.0.1",
            "10.0.0.2",
            1,
            L4::Icmp {
                icmp_type: 8,
                code: 0,
            },
        );
        assert_eq!(parse_ip(&ip_bytes(&p), false).unwrap().flow_ports, (1, 1));
    }

    #[test]
    fn truncation_and_family_are_errors_never_panics() {
        let p = pkt("11.0.0.196", "11.0.0.67", 6, L4::Ports { src: 1, dst: 2 });
        let bytes = ip_bytes(&p);
        for n in 0..bytes.len() {
            let _ = parse_ip(&bytes[..n], false);
        }
        assert_eq!(
            parse_ip(&bytes[..22], false),
            Err(ParseError::Truncated("L4"))
        );
        assert_eq!(parse_ip(&bytes, true), Err(ParseError::BadVersion(4)));
        assert_eq!(parse_ip(&[], false), Err(ParseError::Truncated("IP")));
    }

    #[test]
    fn non_first_fragments_have_no_l4() {
        let p = pkt("11.0.0.196", "11.0.0.67", 6, L4::Ports { src: 1, dst: 2 });
        let mut bytes = ip_bytes(&p);
        bytes[6] = 0x00;
        bytes[7] = 0x10; // offset 16 octets
        bytes.truncate(20);
        let parsed = parse_ip(&bytes, false).unwrap();
        assert_eq!(parsed.packet.l4, L4::None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128), ip6 in proptest::bool::ANY) {
            let _ = parse_ip(&bytes, ip6);
        }
    }
}
