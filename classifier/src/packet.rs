//! Packet parsing through zerocopy typed views: Ethernet (RFC 894) with up to two
//! 802.1Q/802.1ad tags, IPv4 (RFC 791) with options, IPv6 (RFC 8200) with its
//! extension headers up to the upper-layer header, TCP (RFC 9293), UDP (RFC 768),
//! UDP-Lite (RFC 3828), SCTP (RFC 9260), ICMP (RFC 792) and ICMPv6 (RFC 4443).
//!
//! Contract: no function here panics or reads out of bounds, whatever the input; a
//! header that does not fit is a [`ParseError`]. Every header is read through
//! `FromBytes::ref_from_prefix`, which checks the length.
//!
//! Fragments: a non-first fragment (IPv4 offset ≠ 0, or an IPv6 fragment header
//! with offset ≠ 0) carries no L4 header, so it parses to [`L4::None`] with the
//! upper-layer protocol, exactly as the reference evaluator expects: rules with
//! port or ICMP criteria (positive or negated) never match it, rules on addresses
//! and protocol do. A first fragment is parsed like a whole packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capo_policy::{Packet, Protocol, L4};
use zerocopy::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A header is cut short.
    #[error("truncated {0} header")]
    Truncated(&'static str),
    /// The frame is not IPv4 or IPv6.
    #[error("ethertype 0x{0:04x} is not IP")]
    NotIp(u16),
    /// The IP version nibble is neither 4 nor 6.
    #[error("IP version {0} is not 4 or 6")]
    BadVersion(u8),
    /// IPv4 header length or total length is inconsistent.
    #[error("bad IPv4 header or total length")]
    BadLength,
    /// More IPv6 extension headers than capo walks.
    #[error("more than {0} IPv6 extension headers")]
    TooManyExtensions(usize),
}

/// The most IPv6 extension headers walked before giving up.
pub(crate) const MAX_EXTENSION_HEADERS: usize = 8;

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EthernetHeader {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VlanTag {
    tci: U16,
    ethertype: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: U16,
    id: U16,
    flags_fragment: U16,
    ttl: u8,
    protocol: u8,
    checksum: U16,
    src: [u8; 4],
    dst: [u8; 4],
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Ipv6Header {
    version_class_flow: U32,
    payload_len: U16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ExtensionHeader {
    next_header: u8,
    len: u8,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FragmentHeader {
    next_header: u8,
    reserved: u8,
    offset_flags: U16,
    id: U32,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PortsHeader {
    src: U16,
    dst: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TcpHeader {
    src: U16,
    dst: U16,
    seq: U32,
    ack: U32,
    offset: u8,
    flags: u8,
    window: U16,
    checksum: U16,
    urgent: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct IcmpHeader {
    icmp_type: u8,
    code: u8,
    checksum: U16,
    id: U16,
    seq: U16,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;

/// IPv6 extension headers (IANA "IPv6 Extension Header Types").
mod ext {
    pub(super) const HOP_BY_HOP: u8 = 0;
    pub(super) const ROUTING: u8 = 43;
    pub(super) const FRAGMENT: u8 = 44;
    pub(super) const AUTHENTICATION: u8 = 51;
    pub(super) const DESTINATION_OPTIONS: u8 = 60;
    pub(super) const MOBILITY: u8 = 135;
    pub(super) const HIP: u8 = 139;
    pub(super) const SHIM6: u8 = 140;
}

/// ICMP echo request and reply types (RFC 792, RFC 4443).
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// TCP flag bits as found in the header's flags byte.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A parsed packet: the policy fields plus what the flow table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParsedPacket {
    /// Addresses, protocol and L4 fields, as the evaluators take them.
    pub packet: Packet,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Ports identifying the flow: the L4 ports, the echo identifier on both sides
    /// for ICMP echo, else `(type, code)`.
    pub flow_ports: (u16, u16),
}

/// Parses an Ethernet frame (optionally VLAN-tagged) down to L4.
#[inline]
pub fn parse_ethernet(frame: &[u8]) -> Result<ParsedPacket, ParseError> {
    let (eth, mut rest) =
        EthernetHeader::ref_from_prefix(frame).map_err(|_| ParseError::Truncated("Ethernet"))?;
    let mut ethertype = eth.ethertype.get();
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let (tag, r) =
            VlanTag::ref_from_prefix(rest).map_err(|_| ParseError::Truncated("802.1Q"))?;
        ethertype = tag.ethertype.get();
        rest = r;
    }
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(rest),
        ETHERTYPE_IPV6 => parse_ipv6(rest),
        other => Err(ParseError::NotIp(other)),
    }
}

/// Parses a packet starting at its IP header (VPP's ip4/ip6 arcs hand these).
#[inline]
pub fn parse_ip(bytes: &[u8]) -> Result<ParsedPacket, ParseError> {
    match bytes.first().map(|b| b >> 4) {
        Some(4) => parse_ipv4(bytes),
        Some(6) => parse_ipv6(bytes),
        Some(v) => Err(ParseError::BadVersion(v)),
        None => Err(ParseError::Truncated("IP")),
    }
}

/// Parses a packet starting at its IPv4 header (VPP's ip4 arcs hand these).
#[inline(always)]
pub fn parse_ipv4(bytes: &[u8]) -> Result<ParsedPacket, ParseError> {
    let (ip, _) = Ipv4Header::ref_from_prefix(bytes).map_err(|_| ParseError::Truncated("IPv4"))?;
    let version = ip.version_ihl >> 4;
    if version != 4 {
        return Err(ParseError::BadVersion(version));
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let total = usize::from(ip.total_len.get());
    if header_len < 20 || total < header_len {
        return Err(ParseError::BadLength);
    }
    // Options are skipped; link-layer padding past the total length is ignored.
    let payload = bytes
        .get(header_len..total.min(bytes.len()))
        .ok_or(ParseError::Truncated("IPv4 options"))?;
    let src = IpAddr::V4(Ipv4Addr::from(ip.src));
    let dst = IpAddr::V4(Ipv4Addr::from(ip.dst));
    let non_first_fragment = ip.flags_fragment.get() & 0x1fff != 0;
    l4(src, dst, ip.protocol, payload, non_first_fragment)
}

/// Parses a packet starting at its IPv6 header (VPP's ip6 arcs hand these).
#[inline(always)]
pub fn parse_ipv6(bytes: &[u8]) -> Result<ParsedPacket, ParseError> {
    let (ip, mut rest) =
        Ipv6Header::ref_from_prefix(bytes).map_err(|_| ParseError::Truncated("IPv6"))?;
    let version = (ip.version_class_flow.get() >> 28) as u8;
    if version != 6 {
        return Err(ParseError::BadVersion(version));
    }
    let payload_len = usize::from(ip.payload_len.get());
    if payload_len != 0 && payload_len < rest.len() {
        rest = rest.get(..payload_len).unwrap_or(rest);
    }
    let src = IpAddr::V6(Ipv6Addr::from(ip.src));
    let dst = IpAddr::V6(Ipv6Addr::from(ip.dst));
    let mut next = ip.next_header;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match next {
            ext::HOP_BY_HOP
            | ext::ROUTING
            | ext::DESTINATION_OPTIONS
            | ext::MOBILITY
            | ext::HIP
            | ext::SHIM6 => {
                let (ext, _) = ExtensionHeader::ref_from_prefix(rest)
                    .map_err(|_| ParseError::Truncated("IPv6 extension"))?;
                let len = (usize::from(ext.len) + 1) * 8;
                next = ext.next_header;
                rest = rest
                    .get(len..)
                    .ok_or(ParseError::Truncated("IPv6 extension"))?;
            }
            // Length in 4-octet units, minus 2.
            ext::AUTHENTICATION => {
                let (ext, _) = ExtensionHeader::ref_from_prefix(rest)
                    .map_err(|_| ParseError::Truncated("IPv6 AH"))?;
                let len = (usize::from(ext.len) + 2) * 4;
                next = ext.next_header;
                rest = rest.get(len..).ok_or(ParseError::Truncated("IPv6 AH"))?;
            }
            ext::FRAGMENT => {
                let (frag, r) = FragmentHeader::ref_from_prefix(rest)
                    .map_err(|_| ParseError::Truncated("IPv6 fragment"))?;
                next = frag.next_header;
                rest = r;
                if frag.offset_flags.get() >> 3 != 0 {
                    return l4(src, dst, next, rest, true);
                }
            }
            _ => return l4(src, dst, next, rest, false),
        }
    }
    Err(ParseError::TooManyExtensions(MAX_EXTENSION_HEADERS))
}

#[inline(always)]
fn l4(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    payload: &[u8],
    non_first_fragment: bool,
) -> Result<ParsedPacket, ParseError> {
    let proto = Protocol(protocol);
    let mut out = ParsedPacket {
        packet: Packet {
            src,
            dst,
            protocol: proto,
            l4: L4::None,
        },
        tcp_flags: 0,
        flow_ports: (0, 0),
    };
    if non_first_fragment {
        return Ok(out);
    }
    match proto {
        Protocol::TCP => {
            let (tcp, _) =
                TcpHeader::ref_from_prefix(payload).map_err(|_| ParseError::Truncated("TCP"))?;
            out.tcp_flags = tcp.flags;
            out.packet.l4 = L4::Ports {
                src: tcp.src.get(),
                dst: tcp.dst.get(),
            };
        }
        Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE => {
            let (p, _) = PortsHeader::ref_from_prefix(payload)
                .map_err(|_| ParseError::Truncated("UDP/SCTP"))?;
            out.packet.l4 = L4::Ports {
                src: p.src.get(),
                dst: p.dst.get(),
            };
        }
        Protocol::ICMP | Protocol::ICMPV6 => {
            let (icmp, _) =
                IcmpHeader::ref_from_prefix(payload).map_err(|_| ParseError::Truncated("ICMP"))?;
            out.packet.l4 = L4::Icmp {
                icmp_type: icmp.icmp_type,
                code: icmp.code,
            };
            let echo = matches!(
                (proto, icmp.icmp_type),
                (Protocol::ICMP, ICMP_ECHO_REPLY | ICMP_ECHO_REQUEST)
                    | (Protocol::ICMPV6, ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            );
            out.flow_ports = if echo {
                (icmp.id.get(), icmp.id.get())
            } else {
                (u16::from(icmp.icmp_type), u16::from(icmp.code))
            };
            return Ok(out);
        }
        _ => return Ok(out),
    }
    if let L4::Ports { src, dst } = out.packet.l4 {
        out.flow_ports = (src, dst);
    }
    Ok(out)
}

/// Builds test and benchmark frames (Ethernet + IPv4/IPv6 + L4, 64 bytes or more).
pub mod build {
    use super::*;

    /// An Ethernet frame carrying `pkt` (TCP gets `tcp_flags`), padded to 64 bytes.
    pub fn frame(pkt: &Packet, tcp_flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        let l4: Vec<u8> = match (pkt.protocol, pkt.l4) {
            (Protocol::TCP, L4::Ports { src, dst }) => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&src.to_be_bytes());
                h[2..4].copy_from_slice(&dst.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = tcp_flags;
                h
            }
            (_, L4::Ports { src, dst }) => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&src.to_be_bytes());
                h[2..4].copy_from_slice(&dst.to_be_bytes());
                h
            }
            (_, L4::Icmp { icmp_type, code }) => vec![icmp_type, code, 0, 0, 0, 1, 0, 1],
            (_, L4::None) => Vec::new(),
        };
        let fragment =
            matches!(pkt.l4, L4::None) && (pkt.protocol.has_ports() || pkt.protocol.is_icmp());
        match (pkt.src, pkt.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                let mut ip = vec![0x45, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0, 0]);
                // A fragment offset of 8 octets marks a non-first fragment.
                ip.extend_from_slice(&(if fragment { 1u16 } else { 0 }).to_be_bytes());
                ip.extend_from_slice(&[64, pkt.protocol.0, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                f.extend_from_slice(&ip);
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let frag_len = if fragment { 8 } else { 0 };
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&((l4.len() + frag_len) as u16).to_be_bytes());
                ip.push(if fragment { 44 } else { pkt.protocol.0 });
                ip.push(64);
                ip.extend_from_slice(&v6(s).octets());
                ip.extend_from_slice(&v6(d).octets());
                if fragment {
                    ip.extend_from_slice(&[pkt.protocol.0, 0, 0, 8, 0, 0, 0, 1]);
                }
                f.extend_from_slice(&ip);
            }
        }
        f.extend_from_slice(&l4);
        if f.len() < 64 {
            f.resize(64, 0);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden frames, written out byte by byte from the header layouts (RFC 791,
    // 8200, 793, 768, 792), independent of the `build` module.
    const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

    fn eth(ethertype: [u8; 2], rest: &[u8]) -> Vec<u8> {
        let mut f = MACS.to_vec();
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(rest);
        f
    }

    #[test]
    fn golden_ipv4_tcp_syn() {
        let f = eth(
            [0x08, 0x00],
            &[
                0x45, 0x00, 0x00, 0x28, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x00,
                0x00, // IPv4
                10, 0, 0, 1, 10, 0, 0, 2, //
                0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, // TCP 1234 -> 80
                0x50, 0x02, 0x72, 0x10, 0, 0, 0, 0, // offset 5, SYN
            ],
        );
        let p = parse_ethernet(&f).unwrap();
        assert_eq!(p.packet.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.packet.dst, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.packet.protocol, Protocol::TCP);
        assert_eq!(p.packet.l4, L4::Ports { src: 1234, dst: 80 });
        assert_eq!(p.tcp_flags, tcp_flags::SYN);
        assert_eq!(p.flow_ports, (1234, 80));
    }

    #[test]
    fn golden_vlan_ipv6_udp() {
        let mut ip = vec![0x60, 0, 0, 0, 0x00, 0x08, 17, 64];
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[0x00, 0x35, 0xc3, 0x50, 0x00, 0x08, 0, 0]); // UDP 53 -> 50000
        let mut tagged = vec![0x00, 0x64, 0x86, 0xdd]; // VLAN 100, then IPv6
        tagged.extend_from_slice(&ip);
        let p = parse_ethernet(&eth([0x81, 0x00], &tagged)).unwrap();
        assert_eq!(p.packet.src, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.packet.protocol, Protocol::UDP);
        assert_eq!(
            p.packet.l4,
            L4::Ports {
                src: 53,
                dst: 50000
            }
        );
    }

    #[test]
    fn golden_ipv6_hop_by_hop_then_later_fragment_has_no_ports() {
        let mut ip = vec![0x60, 0, 0, 0, 0x00, 0x18, ext::HOP_BY_HOP, 64];
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[ext::FRAGMENT, 0, 1, 4, 0, 0, 0, 0]); // HBH, PadN
        ip.extend_from_slice(&[6, 0, 0x00, 0x08, 0, 0, 0, 7]); // fragment at offset 8
        ip.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 0]);
        let p = parse_ip(&ip).unwrap();
        assert_eq!(p.packet.protocol, Protocol::TCP);
        assert_eq!(p.packet.l4, L4::None);
    }

    #[test]
    fn golden_ipv4_options_then_icmp_echo() {
        let f = eth(
            [0x08, 0x00],
            &[
                0x46, 0x00, 0x00, 0x20, 0, 0, 0, 0, 64, 1, 0, 0, // IHL 6, ICMP
                10, 0, 0, 1, 10, 0, 0, 2, //
                0x01, 0x01, 0x01, 0x00, // NOP NOP NOP EOL
                8, 0, 0, 0, 0x12, 0x34, 0, 1, // echo request, id 0x1234
            ],
        );
        let p = parse_ethernet(&f).unwrap();
        assert_eq!(
            p.packet.l4,
            L4::Icmp {
                icmp_type: 8,
                code: 0
            }
        );
        assert_eq!(p.flow_ports, (0x1234, 0x1234));
    }

    #[test]
    fn golden_ipv4_later_fragment_and_truncated_tcp() {
        let later = [
            0x45, 0x00, 0x00, 0x1c, 0, 0, 0x00, 0x10, 64, 17, 0, 0, // offset 16 bytes
            10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 8, 0, 0,
        ];
        assert_eq!(parse_ip(&later).unwrap().packet.l4, L4::None);
        let short_tcp = [
            0x45, 0x00, 0x00, 0x1e, 0, 0, 0, 0, 64, 6, 0, 0, //
            10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(parse_ip(&short_tcp), Err(ParseError::Truncated("TCP")));
    }

    fn pkt(src: &str, dst: &str, proto: Protocol, l4: L4) -> Packet {
        Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: proto,
            l4,
        }
    }

    #[test]
    fn test_parse_round_trips_built_frames() {
        let cases = [
            pkt(
                "10.0.0.1",
                "10.0.0.2",
                Protocol::TCP,
                L4::Ports { src: 1234, dst: 80 },
            ),
            pkt(
                "10.0.0.1",
                "10.0.0.2",
                Protocol::UDP,
                L4::Ports { src: 53, dst: 5353 },
            ),
            pkt(
                "10.0.0.1",
                "10.0.0.2",
                Protocol::SCTP,
                L4::Ports { src: 1, dst: 2 },
            ),
            pkt(
                "10.0.0.1",
                "10.0.0.2",
                Protocol::ICMP,
                L4::Icmp {
                    icmp_type: 8,
                    code: 0,
                },
            ),
            pkt(
                "fd00::1",
                "fd00::2",
                Protocol::TCP,
                L4::Ports { src: 9, dst: 443 },
            ),
            pkt(
                "fd00::1",
                "fd00::2",
                Protocol::ICMPV6,
                L4::Icmp {
                    icmp_type: 128,
                    code: 0,
                },
            ),
            pkt("10.0.0.1", "10.0.0.2", Protocol(47), L4::None),
            pkt("10.0.0.1", "10.0.0.2", Protocol::TCP, L4::None),
            pkt("fd00::1", "fd00::2", Protocol::UDP, L4::None),
        ];
        for p in cases {
            let f = build::frame(&p, tcp_flags::SYN);
            let parsed = parse_ethernet(&f).unwrap();
            assert_eq!(parsed.packet, p, "{p:?}");
        }
    }

    #[test]
    fn test_parse_vlan_and_ipv4_options() {
        let p = pkt(
            "10.0.0.1",
            "10.0.0.2",
            Protocol::UDP,
            L4::Ports { src: 7, dst: 8 },
        );
        let plain = build::frame(&p, 0);
        // Insert one 802.1Q tag.
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(parse_ethernet(&tagged).unwrap().packet, p);
        // IPv4 with 4 bytes of options (IHL 6).
        let mut ip = plain[14..34].to_vec();
        ip[0] = 0x46;
        let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[1, 1, 1, 0]);
        ip.extend_from_slice(&plain[34..42]);
        assert_eq!(parse_ip(&ip).unwrap().packet, p);
    }

    #[test]
    fn test_parse_ipv6_extension_headers() {
        let p = pkt(
            "fd00::1",
            "fd00::2",
            Protocol::TCP,
            L4::Ports { src: 1, dst: 22 },
        );
        let plain = build::frame(&p, 0);
        let mut ip = plain[14..54].to_vec();
        ip[6] = 0; // hop-by-hop first
        let mut ext = vec![60, 0, 0, 0, 0, 0, 0, 0]; // HBH -> dest opts
        ext.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]); // dest opts -> TCP
        ip.extend_from_slice(&ext);
        ip.extend_from_slice(&plain[54..74]);
        let len = (ip.len() - 40) as u16;
        ip[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse_ip(&ip).unwrap().packet, p);
    }

    #[test]
    fn test_parse_rejects_truncated_and_non_ip() {
        assert_eq!(
            parse_ethernet(&[0; 10]),
            Err(ParseError::Truncated("Ethernet"))
        );
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse_ethernet(&arp), Err(ParseError::NotIp(0x0806)));
        let p = pkt(
            "10.0.0.1",
            "10.0.0.2",
            Protocol::TCP,
            L4::Ports { src: 1, dst: 2 },
        );
        let f = build::frame(&p, 0);
        assert!(parse_ip(&f[14..40]).is_err());
        assert_eq!(parse_ip(&[]), Err(ParseError::Truncated("IP")));
    }
}
