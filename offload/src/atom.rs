//! Atoms: single rte_flow entries. A [`Match`] expands into pairwise disjoint atoms
//! (prefix × prefix × port prefix × port prefix × flag class), and an atom lowers to
//! one pattern — the per-rule expansion cost is the number of atoms.

use capo_policy::eval::L4;
use capo_policy::{IpFamily, Packet};

use crate::caps::NicCaps;
use crate::flow::{
    EthFields, IcmpFields, Ipv4Fields, Ipv6Fields, Item, PortFields, Spec, TcpFields, TCP_ACK,
    TCP_SYN,
};
use crate::lower::{Match, TcpFlags};
use crate::set::Intervals;

/// EtherType IPv4.
pub const ETHER_TYPE_IPV4: u16 = 0x0800;
/// EtherType IPv6.
pub const ETHER_TYPE_IPV6: u16 = 0x86dd;

/// A port constraint of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortMatch {
    /// `spec`/`mask`.
    Prefix {
        /// Value.
        value: u16,
        /// Mask.
        mask: u16,
    },
    /// Native range `spec..=last` (only where the NIC has ranges).
    Range {
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
}

impl PortMatch {
    fn bounds(&self) -> (u16, u16) {
        match *self {
            PortMatch::Prefix { value, mask } => (value, value | !mask),
            PortMatch::Range { lo, hi } => (lo, hi),
        }
    }

    fn contains(&self, p: u16) -> bool {
        let (l, h) = self.bounds();
        l <= p && p <= h
    }

    fn overlaps(&self, o: &PortMatch) -> bool {
        let (a, b) = self.bounds();
        let (c, d) = o.bounds();
        a.max(c) <= b.min(d)
    }
}

/// TCP flag class of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlagClass {
    /// Any flags.
    Any,
    /// SYN set, ACK clear.
    SynOnly,
    /// ACK set.
    Ack,
    /// SYN and ACK clear.
    NoSynNoAck,
}

impl FlagClass {
    fn spec_mask(self) -> (u8, u8) {
        match self {
            FlagClass::Any => (0, 0),
            FlagClass::SynOnly => (TCP_SYN, TCP_SYN | TCP_ACK),
            FlagClass::Ack => (TCP_ACK, TCP_ACK),
            FlagClass::NoSynNoAck => (0, TCP_SYN | TCP_ACK),
        }
    }

    fn accepts(self, f: u8) -> bool {
        let (s, m) = self.spec_mask();
        f & m == s
    }
}

/// One entry's match: exactly what one rte_flow pattern expresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Atom {
    /// Family.
    pub family: IpFamily,
    /// Source prefix `(value, len)`.
    pub src: (u128, u8),
    /// Destination prefix.
    pub dst: (u128, u8),
    /// Protocol.
    pub proto: Option<u8>,
    /// Source port.
    pub sport: Option<PortMatch>,
    /// Destination port.
    pub dport: Option<PortMatch>,
    /// ICMP type and code.
    pub icmp: Option<(u8, Option<u8>)>,
    /// TCP flags.
    pub flags: FlagClass,
}

/// Why a match has no rte_flow form on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpandError {
    /// IPv6 on a device (or profile) without IPv6 patterns.
    Ipv6Unsupported,
    /// An IPv6 protocol without its own item (only TCP, UDP, SCTP, ICMPv6 have one).
    Ipv6ProtocolWithoutItem,
    /// TCP flags on a device without them.
    TcpFlagsUnsupported,
    /// A protocol whose item (SCTP, ICMP, ICMP6) or field (the IPv4 protocol on
    /// its own) the device does not match.
    ProtocolUnsupported {
        /// The IP protocol number.
        proto: u8,
    },
    /// More entries than the cap.
    OverCap {
        /// Entries the match needs (saturating).
        cost: u64,
    },
}

fn width(f: IpFamily) -> u32 {
    match f {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    }
}

fn prefix_contains(p: (u128, u8), x: u128, w: u32) -> bool {
    let host = w - u32::from(p.1);
    if host >= 128 {
        return true;
    }
    (x >> host) == (p.0 >> host)
}

fn prefixes_overlap(a: (u128, u8), b: (u128, u8), w: u32) -> bool {
    let shorter = if a.1 <= b.1 { a } else { b };
    let longer = if a.1 <= b.1 { b } else { a };
    prefix_contains(shorter, longer.0, w)
}

/// Prefixes of an interval set on a device: exact-match devices only take full-length
/// prefixes or "any" (mask 0), so other prefixes expand into hosts.
fn addr_prefixes(set: &Intervals, w: u32, caps: &NicCaps) -> Vec<(u128, u8)> {
    let ps = set.prefixes(w);
    if caps.ip_prefix_masks {
        return ps;
    }
    let mut out = Vec::new();
    for (v, len) in ps {
        if len == 0 || u32::from(len) == w {
            out.push((v, len));
        } else {
            let n = 1u128 << (w - u32::from(len));
            for i in 0..n {
                out.push((v + i, w as u8));
            }
        }
    }
    out
}

fn addr_count(set: &Intervals, w: u32, caps: &NicCaps) -> u64 {
    if caps.ip_prefix_masks {
        return set.prefix_count(w);
    }
    set.prefixes(w).iter().fold(0u64, |acc, (_, len)| {
        let n = if *len == 0 || u32::from(*len) == w {
            1
        } else {
            let host = w - u32::from(*len);
            if host >= 63 {
                u64::MAX
            } else {
                1u64 << host
            }
        };
        acc.saturating_add(n)
    })
}

fn port_count(p: &Option<Intervals>, caps: &NicCaps) -> u64 {
    match p {
        None => 1,
        Some(s) if caps.l4_ranges => s.ranges().len() as u64,
        Some(s) if caps.port_prefix_masks => s.prefix_count(16),
        Some(s) => s
            .prefixes(16)
            .iter()
            .map(|(_, len)| exact_ports(*len))
            .sum(),
    }
}

/// Entries a port prefix of length `len` takes on a device with exact port masks
/// only (mask 0 still matches any port).
fn exact_ports(len: u8) -> u64 {
    if len == 0 {
        1
    } else {
        1u64 << (16 - u32::from(len.min(16)))
    }
}

fn port_matches(p: &Option<Intervals>, caps: &NicCaps) -> Vec<Option<PortMatch>> {
    match p {
        None => vec![None],
        Some(s) if caps.l4_ranges => s
            .ranges()
            .iter()
            .map(|(l, h)| {
                Some(PortMatch::Range {
                    lo: *l as u16,
                    hi: *h as u16,
                })
            })
            .collect(),
        Some(s) if caps.port_prefix_masks => s
            .prefixes(16)
            .into_iter()
            .map(|(v, len)| {
                let mask = if len == 0 {
                    0
                } else {
                    u16::MAX << (16 - u32::from(len))
                };
                Some(PortMatch::Prefix {
                    value: v as u16,
                    mask,
                })
            })
            .collect(),
        // Exact ports only: each prefix becomes its ports.
        Some(s) => s
            .prefixes(16)
            .into_iter()
            .flat_map(|(v, len)| {
                let (first, n) = if len == 0 {
                    (0, 1)
                } else {
                    (v as u16, exact_ports(len))
                };
                (0..n).map(move |i| {
                    Some(PortMatch::Prefix {
                        value: first.wrapping_add(i as u16),
                        mask: if len == 0 { 0 } else { u16::MAX },
                    })
                })
            })
            .collect(),
    }
}

fn flag_classes(t: TcpFlags) -> &'static [FlagClass] {
    match t {
        TcpFlags::Any => &[FlagClass::Any],
        TcpFlags::SynOnly => &[FlagClass::SynOnly],
        TcpFlags::NotSynOnly => &[FlagClass::Ack, FlagClass::NoSynNoAck],
    }
}

fn check(m: &Match, f: IpFamily, caps: &NicCaps) -> Result<(), ExpandError> {
    if f == IpFamily::V6 {
        if !caps.ipv6 {
            return Err(ExpandError::Ipv6Unsupported);
        }
        if m.proto.is_some_and(|p| !matches!(p, 6 | 17 | 132 | 58)) {
            return Err(ExpandError::Ipv6ProtocolWithoutItem);
        }
    }
    if m.tcp != TcpFlags::Any && m.proto == Some(6) && !caps.tcp_flags {
        return Err(ExpandError::TcpFlagsUnsupported);
    }
    if let Some(proto) = m.proto {
        if !protocol_expressible(proto, f, caps) {
            return Err(ExpandError::ProtocolUnsupported { proto });
        }
    }
    Ok(())
}

/// Whether the device matches protocol `proto` of family `f`: through its L4 item
/// (TCP and UDP always; SCTP, ICMP, ICMP6 per profile), or, on IPv4, through the
/// protocol field.
fn protocol_expressible(proto: u8, f: IpFamily, caps: &NicCaps) -> bool {
    match (proto, f) {
        (6 | 17, _) => true,
        (132, _) => caps.sctp,
        (1, IpFamily::V4) => caps.icmp,
        (58, IpFamily::V6) => caps.icmp6,
        (_, IpFamily::V4) => caps.ipv4_proto,
        (_, IpFamily::V6) => false,
    }
}

/// The entries `m` needs on a device (saturating).
///
/// # Errors
///
/// [`ExpandError`] when the device cannot express the match.
pub fn cost(m: &Match, caps: &NicCaps) -> Result<u64, ExpandError> {
    let mut total = 0u64;
    let flags = if m.proto == Some(6) {
        flag_classes(m.tcp).len() as u64
    } else {
        1
    };
    for f in [IpFamily::V4, IpFamily::V6] {
        let (s, d) = (m.src.family(f), m.dst.family(f));
        if s.is_empty() || d.is_empty() {
            continue;
        }
        check(m, f, caps)?;
        let w = width(f);
        let n = addr_count(s, w, caps)
            .saturating_mul(addr_count(d, w, caps))
            .saturating_mul(port_count(&m.sport, caps))
            .saturating_mul(port_count(&m.dport, caps))
            .saturating_mul(flags);
        total = total.saturating_add(n);
    }
    Ok(total)
}

/// The atom matching exactly one flow's packets: host addresses, protocol, both ports
/// (TCP, UDP, SCTP) or ICMP type and code, and the flag class `flags` (TCP only).
/// `None` when the device cannot express it or the packet carries no L4 fields a
/// policy could look at (other protocols, later fragments): those are left to
/// software.
pub fn exact_atom(pkt: &Packet, flags: FlagClass, caps: &NicCaps) -> Option<Atom> {
    let (family, src, dst) = match (pkt.src, pkt.dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => (
            IpFamily::V4,
            (u128::from(u32::from(s)), 32),
            (u128::from(u32::from(d)), 32),
        ),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            (IpFamily::V6, (u128::from(s), 128), (u128::from(d), 128))
        }
        _ => return None,
    };
    if family == IpFamily::V6 && !caps.ipv6 {
        return None;
    }
    let proto = pkt.protocol.0;
    let exact = |p: u16| {
        Some(PortMatch::Prefix {
            value: p,
            mask: u16::MAX,
        })
    };
    let (sport, dport, icmp) = match (proto, pkt.l4, family) {
        (6 | 17 | 132, L4::Ports { src, dst }, _) => (exact(src), exact(dst), None),
        (1, L4::Icmp { icmp_type, code }, IpFamily::V4)
        | (58, L4::Icmp { icmp_type, code }, IpFamily::V6) => {
            (None, None, Some((icmp_type, Some(code))))
        }
        _ => return None,
    };
    let flags = if proto == 6 { flags } else { FlagClass::Any };
    if flags != FlagClass::Any && !caps.tcp_flags || !protocol_expressible(proto, family, caps) {
        return None;
    }
    Some(Atom {
        family,
        src,
        dst,
        proto: Some(proto),
        sport,
        dport,
        icmp,
        flags,
    })
}

/// Expands `m` into pairwise disjoint atoms, at most `cap` of them.
///
/// # Errors
///
/// [`ExpandError`] when the device cannot express the match or it needs more than
/// `cap` entries.
pub fn expand(m: &Match, caps: &NicCaps, cap: u64) -> Result<Vec<Atom>, ExpandError> {
    let c = cost(m, caps)?;
    if c > cap {
        return Err(ExpandError::OverCap { cost: c });
    }
    let mut out = Vec::with_capacity(c as usize);
    let sports = port_matches(&m.sport, caps);
    let dports = port_matches(&m.dport, caps);
    let flags: &[FlagClass] = if m.proto == Some(6) {
        flag_classes(m.tcp)
    } else {
        &[FlagClass::Any]
    };
    for f in [IpFamily::V4, IpFamily::V6] {
        let (s, d) = (m.src.family(f), m.dst.family(f));
        if s.is_empty() || d.is_empty() {
            continue;
        }
        let w = width(f);
        let dsts = addr_prefixes(d, w, caps);
        for src in addr_prefixes(s, w, caps) {
            for dst in &dsts {
                for sp in &sports {
                    for dp in &dports {
                        for fl in flags {
                            out.push(Atom {
                                family: f,
                                src,
                                dst: *dst,
                                proto: m.proto,
                                sport: *sp,
                                dport: *dp,
                                icmp: m.icmp,
                                flags: *fl,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

impl Atom {
    /// Whether some packet matches both.
    pub fn overlaps(&self, o: &Atom) -> bool {
        if self.family != o.family {
            return false;
        }
        let w = width(self.family);
        if !prefixes_overlap(self.src, o.src, w) || !prefixes_overlap(self.dst, o.dst, w) {
            return false;
        }
        if let (Some(a), Some(b)) = (self.proto, o.proto) {
            if a != b {
                return false;
            }
        }
        let po = |a: &Option<PortMatch>, b: &Option<PortMatch>| match (a, b) {
            (Some(a), Some(b)) => a.overlaps(b),
            _ => true,
        };
        if !po(&self.sport, &o.sport) || !po(&self.dport, &o.dport) {
            return false;
        }
        if let (Some((ta, ca)), Some((tb, cb))) = (self.icmp, o.icmp) {
            if ta != tb || matches!((ca, cb), (Some(x), Some(y)) if x != y) {
                return false;
            }
        }
        let (sa, ma) = self.flags.spec_mask();
        let (sb, mb) = o.flags.spec_mask();
        (sa ^ sb) & ma & mb == 0
    }

    /// Whether a packet (as the reference sees it) matches the atom.
    pub fn contains(&self, pkt: &Packet, tcp_flags: Option<u8>) -> bool {
        let w = width(self.family);
        let addr = |a: &std::net::IpAddr| match a {
            std::net::IpAddr::V4(v) => (IpFamily::V4, u128::from(u32::from(*v))),
            std::net::IpAddr::V6(v) => (IpFamily::V6, u128::from(*v)),
        };
        let (fs, s) = addr(&pkt.src);
        let (fd, d) = addr(&pkt.dst);
        if fs != self.family || fd != self.family {
            return false;
        }
        if !prefix_contains(self.src, s, w) || !prefix_contains(self.dst, d, w) {
            return false;
        }
        if self.proto.is_some_and(|p| p != pkt.protocol.0) {
            return false;
        }
        if self.sport.is_some() || self.dport.is_some() {
            let L4::Ports { src, dst } = pkt.l4 else {
                return false;
            };
            if self.sport.is_some_and(|p| !p.contains(src))
                || self.dport.is_some_and(|p| !p.contains(dst))
            {
                return false;
            }
        }
        if let Some((t, c)) = self.icmp {
            let L4::Icmp { icmp_type, code } = pkt.l4 else {
                return false;
            };
            if t != icmp_type || c.is_some_and(|c| c != code) {
                return false;
            }
        }
        if self.flags != FlagClass::Any {
            return tcp_flags.is_some_and(|f| self.flags.accepts(f));
        }
        true
    }

    /// Whether the atom looks at L4 fields.
    pub fn uses_l4(&self) -> bool {
        self.sport.is_some()
            || self.dport.is_some()
            || self.icmp.is_some()
            || self.flags != FlagClass::Any
    }

    /// The rte_flow pattern: ETH (EtherType), IPv4/IPv6 (prefixes, protocol on IPv4),
    /// then the L4 item the protocol or the L4 fields need. Masks are always explicit.
    pub fn pattern(&self) -> heapless::Vec<Item, { crate::flow::MAX_ITEMS }> {
        let mut p = heapless::Vec::new();
        let w = width(self.family);
        let mask_of = |len: u8| -> u128 {
            if len == 0 {
                0
            } else {
                (u128::MAX << (128 - u32::from(len))) >> (128 - w)
            }
        };
        let ether_type = match self.family {
            IpFamily::V4 => ETHER_TYPE_IPV4,
            IpFamily::V6 => ETHER_TYPE_IPV6,
        };
        // Capacity is MAX_ITEMS (4) and at most 3 items are pushed.
        let _ = p.push(Item::Eth(Some(Spec::masked(
            EthFields { ether_type },
            EthFields { ether_type: 0xffff },
        ))));
        match self.family {
            IpFamily::V4 => {
                // The L4 item names the protocol (rte_flow: an item implies its
                // layer); the field is matched only for protocols without one (the
                // ice switch and cnxk's default key profile refuse it beside one).
                let (proto, proto_mask) = match self.proto {
                    Some(6 | 17 | 132 | 1) | None => (0, 0),
                    Some(p) => (p, 0xff),
                };
                let _ = p.push(Item::Ipv4(Some(Spec::masked(
                    Ipv4Fields {
                        src: (self.src.0 as u32).to_be_bytes(),
                        dst: (self.dst.0 as u32).to_be_bytes(),
                        proto,
                        fragment_offset: 0,
                    },
                    Ipv4Fields {
                        src: (mask_of(self.src.1) as u32).to_be_bytes(),
                        dst: (mask_of(self.dst.1) as u32).to_be_bytes(),
                        proto: proto_mask,
                        fragment_offset: 0,
                    },
                ))));
            }
            IpFamily::V6 => {
                let _ = p.push(Item::Ipv6(Some(Spec::masked(
                    Ipv6Fields {
                        src: self.src.0.to_be_bytes(),
                        dst: self.dst.0.to_be_bytes(),
                        proto: 0,
                        has_frag_ext: false,
                    },
                    Ipv6Fields {
                        src: mask_of(self.src.1).to_be_bytes(),
                        dst: mask_of(self.dst.1).to_be_bytes(),
                        proto: 0,
                        has_frag_ext: false,
                    },
                ))));
            }
        }
        let ports = |sp: Option<PortMatch>, dp: Option<PortMatch>| -> Spec<PortFields> {
            let one = |m: Option<PortMatch>| match m {
                None => (0, 0, None),
                Some(PortMatch::Prefix { value, mask }) => (value, mask, None),
                Some(PortMatch::Range { lo, hi }) => (lo, 0xffff, Some(hi)),
            };
            let (sv, sm, sl) = one(sp);
            let (dv, dm, dl) = one(dp);
            let last = (sl.is_some() || dl.is_some()).then_some(PortFields {
                src_port: sl.unwrap_or(sv),
                dst_port: dl.unwrap_or(dv),
            });
            Spec {
                spec: PortFields {
                    src_port: sv,
                    dst_port: dv,
                },
                mask: PortFields {
                    src_port: sm,
                    dst_port: dm,
                },
                last,
            }
        };
        let l4 = match (self.proto, self.family) {
            (Some(6), _) => {
                let s = ports(self.sport, self.dport);
                let (fs, fm) = self.flags.spec_mask();
                Some(Item::Tcp(Some(Spec {
                    spec: TcpFields {
                        src_port: s.spec.src_port,
                        dst_port: s.spec.dst_port,
                        flags: fs,
                    },
                    mask: TcpFields {
                        src_port: s.mask.src_port,
                        dst_port: s.mask.dst_port,
                        flags: fm,
                    },
                    last: s.last.map(|l| TcpFields {
                        src_port: l.src_port,
                        dst_port: l.dst_port,
                        flags: fs,
                    }),
                })))
            }
            (Some(17), _) => Some(Item::Udp(Some(ports(self.sport, self.dport)))),
            (Some(132), _) => Some(Item::Sctp(Some(ports(self.sport, self.dport)))),
            (Some(1), IpFamily::V4) | (Some(58), IpFamily::V6) => {
                let spec = |t: u8, c: Option<u8>| {
                    Spec::masked(
                        IcmpFields {
                            icmp_type: t,
                            code: c.unwrap_or(0),
                        },
                        IcmpFields {
                            icmp_type: 0xff,
                            code: if c.is_some() { 0xff } else { 0 },
                        },
                    )
                };
                let s = self.icmp.map(|(t, c)| spec(t, c));
                Some(if self.family == IpFamily::V4 {
                    Item::Icmp(s)
                } else {
                    Item::Icmp6(s)
                })
            }
            // IPv6 carries its protocol in the L4 item only (`expand` refuses others).
            _ => None,
        };
        if let Some(item) = l4 {
            let _ = p.push(item);
        }
        p
    }
}

/// The atom as a [`Match`] (for covers and overlap with approximations).
pub fn atom_match(a: &Atom) -> Match {
    use crate::set::{AddrSet, V4_MAX};
    let w = width(a.family);
    let iv = |p: (u128, u8)| {
        let host = w - u32::from(p.1);
        let hi = if host >= 128 {
            u128::MAX
        } else {
            p.0 | ((1u128 << host) - 1)
        };
        Intervals::from_ranges([(p.0, hi)])
    };
    let fam = |p: (u128, u8)| match a.family {
        IpFamily::V4 => AddrSet {
            v4: iv(p).intersect(&Intervals::full(V4_MAX)),
            v6: Intervals::empty(),
        },
        IpFamily::V6 => AddrSet {
            v4: Intervals::empty(),
            v6: iv(p),
        },
    };
    let ports = |p: Option<PortMatch>| {
        p.map(|p| {
            let (l, h) = p.bounds();
            Intervals::from_ranges([(u128::from(l), u128::from(h))])
        })
    };
    Match {
        src: std::sync::Arc::new(fam(a.src)),
        dst: std::sync::Arc::new(fam(a.dst)),
        proto: a.proto,
        sport: ports(a.sport),
        dport: ports(a.dport),
        icmp: a.icmp,
        tcp: match a.flags {
            FlagClass::Any => TcpFlags::Any,
            FlagClass::SynOnly => TcpFlags::SynOnly,
            FlagClass::Ack | FlagClass::NoSynNoAck => TcpFlags::NotSynOnly,
        },
    }
}
