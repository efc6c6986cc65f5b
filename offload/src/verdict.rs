//! Probe packets and what software makes of the NIC's outcome.
//!
//! Software trusts a hardware verdict only from a generation it holds (DESIGN.md §4):
//! an allow mark of a resident generation is accepted as is; a punt mark is
//! classified with the generation it carries; anything else — no mark, or the mark of
//! an unknown generation — is classified with the active generation.

use std::net::IpAddr;

use capo_policy::eval::L4;
use capo_policy::{Packet, Protocol, Verdict};

use crate::atom::{ETHER_TYPE_IPV4, ETHER_TYPE_IPV6};
use crate::commit::SoftwareView;
use crate::flow::{
    Headers, IcmpFields, Ipv4Fields, Ipv6Fields, L3Header, L4Header, PortFields, TcpFields,
};
use crate::mark::{gen_tag, Mark, MarkKind};
use crate::sim::NicOutcome;

/// Whether and where a packet is a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not fragmented.
    No,
    /// The first fragment (headers visible, more fragments follow).
    First,
    /// A later fragment (no L4 header).
    Later,
}

/// A packet as it arrives on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Addresses, protocol and L4 fields as the first fragment carries them.
    pub packet: Packet,
    /// TCP flags (ignored for other protocols).
    pub tcp_flags: u8,
    /// Fragmentation.
    pub fragment: Fragment,
}

impl Probe {
    /// The packet as the reference evaluator sees it (later fragments have no L4).
    pub fn reference_packet(&self) -> Packet {
        let mut p = self.packet;
        if self.fragment == Fragment::Later {
            p.l4 = L4::None;
        }
        p
    }

    /// TCP flags, for TCP packets with a visible header.
    pub fn flags(&self) -> Option<u8> {
        (self.packet.protocol == Protocol::TCP && self.fragment != Fragment::Later)
            .then_some(self.tcp_flags)
    }

    /// The headers a NIC parses.
    pub fn headers(&self) -> Headers {
        let p = &self.packet;
        let l4 = if self.fragment == Fragment::Later {
            L4Header::None
        } else {
            match (p.protocol, p.l4) {
                (Protocol::TCP, L4::Ports { src, dst }) => L4Header::Tcp(TcpFields {
                    src_port: src,
                    dst_port: dst,
                    flags: self.tcp_flags,
                }),
                (Protocol::UDP, L4::Ports { src, dst }) => L4Header::Udp(PortFields {
                    src_port: src,
                    dst_port: dst,
                }),
                (Protocol::SCTP, L4::Ports { src, dst }) => L4Header::Sctp(PortFields {
                    src_port: src,
                    dst_port: dst,
                }),
                (Protocol::ICMP, L4::Icmp { icmp_type, code }) => {
                    L4Header::Icmp(IcmpFields { icmp_type, code })
                }
                (Protocol::ICMPV6, L4::Icmp { icmp_type, code }) => {
                    L4Header::Icmp6(IcmpFields { icmp_type, code })
                }
                _ => L4Header::None,
            }
        };
        let (ether_type, l3) = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                ETHER_TYPE_IPV4,
                L3Header::V4(Ipv4Fields {
                    src: s.octets(),
                    dst: d.octets(),
                    proto: p.protocol.0,
                    fragment_offset: match self.fragment {
                        Fragment::No => 0,
                        Fragment::First => 0x2000,
                        Fragment::Later => 0x00b9,
                    },
                }),
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => (
                ETHER_TYPE_IPV6,
                L3Header::V6(Ipv6Fields {
                    src: s.octets(),
                    dst: d.octets(),
                    proto: p.protocol.0,
                    has_frag_ext: self.fragment != Fragment::No,
                }),
            ),
            _ => (0, L3Header::Other),
        };
        Headers { ether_type, l3, l4 }
    }
}

/// Who decided a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The NIC (a drop, or an allow mark software accepted).
    Hardware,
    /// Software, with this generation.
    Software(u64),
}

/// The final verdict of NIC + software for one packet; `reference(g)` is software's
/// verdict under generation `g`.
pub fn combine(
    nic: NicOutcome,
    sw: &SoftwareView,
    mark_bits: u8,
    reference: &mut dyn FnMut(u64) -> Verdict,
) -> (Verdict, DecidedBy) {
    let active = sw.active.unwrap_or(0);
    match nic {
        NicOutcome::Dropped => (Verdict::Deny, DecidedBy::Hardware),
        NicOutcome::Delivered { mark: Some(raw) } => {
            let m = Mark::decode(raw, mark_bits);
            let generation = sw
                .resident
                .iter()
                .copied()
                .find(|g| gen_tag(*g) == m.gen_tag);
            match (generation, m.kind) {
                (Some(_), MarkKind::Allow) => (Verdict::Allow, DecidedBy::Hardware),
                (Some(g), MarkKind::Punt) => (reference(g), DecidedBy::Software(g)),
                (None, _) => (reference(active), DecidedBy::Software(active)),
            }
        }
        NicOutcome::Delivered { mark: None } => (reference(active), DecidedBy::Software(active)),
    }
}
