//! Exact-flow entries: one NIC entry per sampled 5-tuple, decided with the full
//! policy's verdict for that tuple; when no rule looks at source ports, one per
//! conversation (the source port wildcarded), which carries over to the
//! conversation's next connections.

use std::collections::HashMap;

use std::net::IpAddr;

use capo_policy::{Packet, Protocol, State, L4};

use crate::atom::{atom_match, exact_atom, Atom, FlagClass};
use crate::caps::NicCaps;
use crate::lower::{Domain, OffloadProgram, TcpFlags};

use super::{FastHash, FlowResults, HitCounters, StatelessDrops};

/// A candidate exact-flow entry.
#[derive(Debug, Clone)]
pub(super) struct FlowCand {
    pub domain: usize,
    pub packet: Packet,
    pub atom: Atom,
    pub allow: bool,
    /// Flow samples the entry decides.
    pub samples: Vec<usize>,
}

/// Exact-flow candidates: per distinct sampled flow (addresses, protocol, L4 fields)
/// from a non-local source to a workload of the program, the full policy's verdict
/// for that exact tuple ([`capo_policy::trace`]). Nothing earlier in the policy can
/// decide differently for the packets of one exact tuple, so such an entry needs no
/// covers; what remains are the statefulness rules (DESIGN.md §5):
///
/// - allow: every packet of the tuple (software would allow them too: by policy, or
///   as part of a flow);
/// - TCP deny: connection attempts only (SYN without ACK);
/// - other denies: every packet, only where the caller allows stateless drops and
///   they meet no flow software holds and no reply of a flow the endpoint's egress
///   policy may allow ([`StatelessDrops`]; software keeps flows an earlier
///   generation allowed, as Calico's conntrack does);
/// - no entry when a `log` rule matches the tuple (software must record it), when
///   the device cannot express it, or (drop-only mode) for allows.
pub(super) fn exact_flow_candidates(
    results: &mut FlowResults,
    state: &State,
    program: &OffloadProgram,
    caps: &NicCaps,
    hits: &HitCounters,
    groups: bool,
) -> Vec<FlowCand> {
    let conversations = results.blind(state);
    let spared = SparedFlows::of(&hits.stateless);
    let mut by_tuple: HashMap<Packet, Vec<usize>, FastHash> = HashMap::default();
    let mut order: Vec<Packet> = Vec::new();
    for (i, s) in hits.flows.iter().enumerate() {
        if s.hits == 0 {
            continue;
        }
        let key = if conversations {
            conversation(&s.packet)
        } else {
            s.packet
        };
        let v = by_tuple.entry(key).or_default();
        if v.is_empty() {
            order.push(key);
        }
        v.push(i);
    }
    let mut out = Vec::new();
    for key in order {
        let Some(samples) = by_tuple.get(&key) else {
            continue;
        };
        // The first sampled packet stands for its conversation.
        let Some(pkt) = samples.first().map(|&i| hits.flows[i].packet) else {
            continue;
        };
        let Some((d, dom)) = wire_domain(program, &pkt) else {
            continue;
        };
        let logged = samples.iter().any(|&i| {
            let f = &hits.flows[i];
            results.logged(state, dom, &f.packet, f.tcp_flags)
        });
        if logged {
            continue;
        }
        let first_flags = samples.first().and_then(|&i| hits.flows[i].tcp_flags);
        let allow = results.allowed(state, program, &pkt, first_flags);
        let samples: Vec<usize> = if allow {
            if !groups && caps.mode() != crate::caps::OffloadMode::FlatMarks {
                continue;
            }
            samples.clone()
        } else if pkt.protocol == Protocol::TCP {
            samples
                .iter()
                .copied()
                .filter(|&i| {
                    hits.flows[i]
                        .tcp_flags
                        .is_some_and(|f| TcpFlags::SynOnly.accepts(f))
                })
                .collect()
        } else {
            samples.clone()
        };
        if samples.is_empty() {
            continue;
        }
        let Some(atom) = entry_atom(&pkt, allow, dom, caps, conversations, spared.as_ref()) else {
            continue;
        };
        out.push(FlowCand {
            domain: d,
            packet: pkt,
            atom,
            allow,
            samples,
        });
    }
    out
}

/// The domain an exact-flow entry for `pkt` belongs to: the workload its destination
/// is, when the packet comes from the wire (not a local source) and the workload
/// has an address of its own.
pub(super) fn wire_domain<'p>(
    program: &'p OffloadProgram,
    pkt: &Packet,
) -> Option<(usize, &'p Domain)> {
    if program.local_sources.contains(&pkt.src) {
        return None;
    }
    let d = program.domain_of(&pkt.dst)?;
    let dom = program.domains.get(d)?;
    dom.skipped.is_none().then_some((d, dom))
}

/// The NIC match of an exact-flow entry for `pkt` (of domain `dom`), which the full
/// policy allows (`allow`) or denies: every packet of the tuple for an allow, TCP
/// connection attempts only for a TCP deny, and for other denies every packet, only
/// where stateless drops are on (`spared`) and meet no flow software holds and no
/// reply of a flow the endpoint may open. With `conversations` the source port is
/// wildcarded. `None` when the device cannot express it or the drop is unsafe.
pub(super) fn entry_atom(
    pkt: &Packet,
    allow: bool,
    dom: &Domain,
    caps: &NicCaps,
    conversations: bool,
    spared: Option<&SparedFlows>,
) -> Option<Atom> {
    let tcp = pkt.protocol == Protocol::TCP;
    let flags = if allow || !tcp {
        FlagClass::Any
    } else {
        FlagClass::SynOnly
    };
    let mut atom = exact_atom(pkt, flags, caps)?;
    if conversations {
        atom.sport = None;
    }
    // Without connection state a drop would cut flows software keeps.
    let stateless_unsafe = |s: &SparedFlows| s.meets(pkt, &atom) || meets_replies(dom, &atom);
    if !allow && !tcp && spared.is_none_or(stateless_unsafe) {
        return None;
    }
    Some(atom)
}

/// The flows a stateless drop must spare, by the (source, destination) of their
/// packets in either direction. The flow table keys an ICMP flow by its address
/// pair and the echo identifier (or type and code), which the planner's packets do
/// not carry: any held ICMP flow between two addresses spares every ICMP drop
/// between them.
pub(super) struct SparedFlows {
    by_ends: HashMap<(IpAddr, IpAddr), Vec<Packet>, FastHash>,
}

impl SparedFlows {
    /// `None` when stateless drops are off.
    pub(super) fn of(stateless: &StatelessDrops) -> Option<Self> {
        let StatelessDrops::Sparing(flows) = stateless else {
            return None;
        };
        let mut by_ends: HashMap<(IpAddr, IpAddr), Vec<Packet>, FastHash> = HashMap::default();
        // A TCP flow meets no stateless drop: those are of other protocols.
        for first in flows.iter().filter(|p| p.protocol != Protocol::TCP) {
            for p in [*first, reply_packet(first)] {
                by_ends.entry((p.src, p.dst)).or_default().push(p);
            }
        }
        Some(SparedFlows { by_ends })
    }

    /// Whether a packet of a spared flow (either way) may match `atom`, an entry for
    /// packets from `pkt`'s source to its destination.
    fn meets(&self, pkt: &Packet, atom: &Atom) -> bool {
        self.by_ends.get(&(pkt.src, pkt.dst)).is_some_and(|v| {
            v.iter().any(|p| {
                atom.contains(p, None) || (is_icmp(p.protocol) && atom.proto == Some(p.protocol.0))
            })
        })
    }
}

fn is_icmp(p: Protocol) -> bool {
    p == Protocol::ICMP || p == Protocol::ICMPV6
}

/// The packets of flow `p` the other way: addresses and ports swapped.
fn reply_packet(p: &Packet) -> Packet {
    let l4 = match p.l4 {
        L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
        other => other,
    };
    Packet {
        src: p.dst,
        dst: p.src,
        protocol: p.protocol,
        l4,
    }
}

/// Whether a packet of a flow the domain's egress policy may allow could match
/// `atom` (a drop towards the endpoint) on its way back. The reversed match leaves
/// ICMP types out: the flow table relates an echo flow's packets by identifier, not
/// by type, so any ICMP the endpoint may send meets any ICMP drop.
fn meets_replies(dom: &Domain, atom: &Atom) -> bool {
    let m = atom_match(atom);
    dom.egress_allow.iter().any(|a| a.reversed().overlaps(&m))
}

/// Whether no rule of the policy looks at source ports. Then every packet of a
/// conversation (addresses, protocol, destination port) gets the same verdict
/// whatever its source port, and one entry with the source port wildcarded decides
/// the conversation's next connections too, which take new source ports.
pub(super) fn source_port_blind(state: &State) -> bool {
    let blind = |r: &capo_policy::Rule| {
        r.src.ports.is_empty()
            && r.src.not_ports.is_empty()
            && r.src.named_port_sets.is_empty()
            && r.src.not_named_port_sets.is_empty()
    };
    state
        .policies()
        .values()
        .all(|p| p.inbound.iter().chain(&p.outbound).all(blind))
        && state
            .profiles()
            .values()
            .all(|p| p.inbound.iter().chain(&p.outbound).all(blind))
}

/// A packet's conversation: the same with source port 0.
pub(super) fn conversation(pkt: &Packet) -> Packet {
    match pkt.l4 {
        L4::Ports { dst, .. } => Packet {
            l4: L4::Ports { src: 0, dst },
            ..*pkt
        },
        _ => *pkt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{TCP_ACK, TCP_SYN};
    use crate::testutils::{self as fixture, tcp_sample, udp_sample};
    use capo_policy::{Action, Rule};

    /// The candidates of one plan (fresh per-flow results).
    fn candidates(
        s: &State,
        program: &OffloadProgram,
        caps: &NicCaps,
        hits: &HitCounters,
        groups: bool,
    ) -> Vec<FlowCand> {
        exact_flow_candidates(&mut FlowResults::default(), s, program, caps, hits, groups)
    }

    fn with_flags(mut s: super::super::FlowSample, flags: u8) -> super::super::FlowSample {
        s.tcp_flags = Some(flags);
        s
    }

    #[test]
    fn test_allowed_tuple_takes_every_sample() {
        let (s, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let hits = HitCounters {
            flows: vec![
                with_flags(tcp_sample([172, 16, 0, 1], 80, 10), TCP_SYN),
                with_flags(tcp_sample([172, 16, 0, 1], 80, 90), TCP_ACK),
            ],
            ..HitCounters::default()
        };
        let c = candidates(&s, &program, &NicCaps::mlx5(64), &hits, true);
        assert_eq!(c.len(), 1);
        assert!(c[0].allow);
        assert_eq!((c[0].domain, c[0].samples.clone()), (0, vec![0, 1]));
        assert_eq!(c[0].atom.flags, FlagClass::Any);
        // Drop-only mode offers no allows.
        assert!(candidates(&s, &program, &NicCaps::mlx5(64), &hits, false).is_empty());
    }

    #[test]
    fn test_denied_tcp_tuple_takes_connection_attempts_only() {
        let (s, program) = fixture::program(vec![], vec![]);
        let hits = HitCounters {
            flows: vec![
                with_flags(tcp_sample([172, 16, 0, 1], 80, 10), TCP_SYN),
                with_flags(tcp_sample([172, 16, 0, 1], 80, 90), TCP_ACK),
            ],
            ..HitCounters::default()
        };
        let c = candidates(&s, &program, &NicCaps::mlx5(64), &hits, true);
        assert_eq!(c.len(), 1);
        assert!(!c[0].allow);
        assert_eq!(c[0].samples, vec![0]);
        assert_eq!(c[0].atom.flags, FlagClass::SynOnly);
    }

    /// An ICMP echo request from `src` to the workload.
    fn ping(src: [u8; 4]) -> super::super::FlowSample {
        let mut s = udp_sample(src, 0, 10);
        s.packet.protocol = capo_policy::Protocol::ICMP;
        s.packet.l4 = L4::Icmp {
            icmp_type: 8,
            code: 0,
        };
        s
    }

    fn sparing(flows: Vec<super::super::FlowSample>, held: Vec<Packet>) -> HitCounters {
        HitCounters {
            flows,
            stateless: StatelessDrops::Sparing(held),
            ..HitCounters::default()
        }
    }

    /// Allows UDP or ICMP (the egress rules' protocol) to anywhere.
    fn egress(protocol: capo_policy::Protocol, icmp_type: Option<u8>) -> capo_policy::Rule {
        let mut r = Rule::any(Action::Allow);
        r.protocol = Some(protocol);
        r.icmp = icmp_type.map(|t| capo_policy::IcmpMatch {
            icmp_type: t,
            code: None,
        });
        r
    }

    #[test]
    fn test_stateless_denies_go_down_where_they_cut_no_flow_software_holds() {
        let (s, program) = fixture::program(vec![], vec![]);
        let caps = NicCaps::mlx5(64);
        let udp = udp_sample([172, 16, 0, 1], 53, 10);
        // Off (the default): software keeps them.
        let off = HitCounters {
            flows: vec![udp.clone(), ping([172, 16, 0, 2])],
            ..HitCounters::default()
        };
        assert!(candidates(&s, &program, &caps, &off, true).is_empty());
        // Sparing no flow: both go down as drops of every packet of the tuple.
        let on = sparing(off.flows.clone(), vec![]);
        let c = candidates(&s, &program, &caps, &on, true);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| !c.allow && c.atom.flags == FlagClass::Any));
        // A flow software holds (allowed by an earlier generation), either way round,
        // keeps the drop that would meet it in software.
        for held in [udp.packet, reply_packet(&udp.packet)] {
            let c = candidates(
                &s,
                &program,
                &caps,
                &sparing(vec![udp.clone()], vec![held]),
                true,
            );
            assert!(c.is_empty(), "{held:?}");
        }
        // An echo flow the endpoint opened towards the peer (a request, or even a
        // reply: the flow table keys echo flows by identifier, not by type) keeps
        // the peer's pings in software.
        for icmp_type in [8, 0] {
            let mut opened = ping([172, 16, 0, 2]).packet;
            (opened.src, opened.dst) = (opened.dst, opened.src);
            opened.l4 = L4::Icmp { icmp_type, code: 0 };
            let held = sparing(vec![ping([172, 16, 0, 2])], vec![opened]);
            assert!(
                candidates(&s, &program, &caps, &held, true).is_empty(),
                "{icmp_type}"
            );
        }
        // A held flow elsewhere does not.
        let mut other = udp.packet;
        other.src = "172.16.0.99".parse().unwrap();
        let c = candidates(&s, &program, &caps, &sparing(vec![udp], vec![other]), true);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn test_stateless_denies_spare_replies_of_flows_the_endpoint_may_open() {
        let caps = NicCaps::mlx5(64);
        let flows = vec![udp_sample([172, 16, 0, 1], 53, 10), ping([172, 16, 0, 2])];
        let kept = |outbound: Vec<capo_policy::Rule>| {
            let (s, program) = fixture::program(vec![], outbound);
            let c = candidates(&s, &program, &caps, &sparing(flows.clone(), vec![]), true);
            c.iter().map(|c| c.packet.protocol.0).collect::<Vec<_>>()
        };
        // The endpoint may send UDP to anywhere: a reply from port 53 to its port 53
        // would meet the conversation's drop (any source port).
        assert_eq!(
            kept(vec![egress(capo_policy::Protocol::UDP, None)]),
            vec![1]
        );
        // Pings it may send: the flow table passes every echo packet of the flow
        // (requests included) by identifier, which a NIC entry cannot see.
        for icmp_type in [Some(8), Some(0), None] {
            assert_eq!(
                kept(vec![egress(capo_policy::Protocol::ICMP, icmp_type)]),
                vec![17]
            );
        }
        // TCP it may open leaves both.
        assert_eq!(kept(vec![fixture::allow_tcp("0.0.0.0/0", 80)]), vec![17, 1]);
    }

    #[test]
    fn test_no_entry_for_stateless_denies_local_sources_or_logged_tuples() {
        let (s, program) = fixture::program(vec![], vec![]);
        let caps = NicCaps::mlx5(64);
        let udp = HitCounters {
            flows: vec![udp_sample([172, 16, 0, 1], 53, 10)],
            ..HitCounters::default()
        };
        assert!(candidates(&s, &program, &caps, &udp, true).is_empty());
        let (s, program) = fixture::program(vec![fixture::allow_tcp("0.0.0.0/0", 80)], vec![]);
        let from_host = HitCounters {
            flows: vec![tcp_sample([192, 168, 100, 1], 80, 10)],
            ..HitCounters::default()
        };
        assert!(candidates(&s, &program, &caps, &from_host, true).is_empty());
        let (s, program) = fixture::program(
            vec![Rule::any(Action::Log), fixture::allow_tcp("0.0.0.0/0", 80)],
            vec![],
        );
        let logged = HitCounters {
            flows: vec![tcp_sample([172, 16, 0, 1], 80, 10)],
            ..HitCounters::default()
        };
        assert!(candidates(&s, &program, &caps, &logged, true).is_empty());
    }
}
