//! Exact-flow entries: one NIC entry per sampled 5-tuple, decided with the full
//! policy's verdict for that tuple; when no rule looks at source ports, one per
//! conversation (the source port wildcarded), which carries over to the
//! conversation's next connections.

use std::collections::HashMap;

use capo_policy::{Packet, State};

use crate::atom::{exact_atom, Atom, FlagClass};
use crate::caps::NicCaps;
use crate::lower::{OffloadProgram, TcpFlags};

use super::{FastHash, FlowResults, HitCounters};

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
/// - other denies: none (the NIC has no connection state; software keeps flows an
///   earlier generation allowed, as Calico's conntrack does);
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
        if program.local_sources.contains(&pkt.src) {
            continue;
        }
        let Some(d) = program.domain_of(&pkt.dst) else {
            continue;
        };
        let dom = &program.domains[d];
        if dom.skipped.is_some() {
            continue;
        }
        let logged = samples.iter().any(|&i| {
            let f = &hits.flows[i];
            results.logged(state, dom, &f.packet, f.tcp_flags)
        });
        if logged {
            continue;
        }
        let first_flags = samples.first().and_then(|&i| hits.flows[i].tcp_flags);
        let allow = results.allowed(state, program, &pkt, first_flags);
        let tcp = pkt.protocol.0 == 6;
        let (flags, samples): (FlagClass, Vec<usize>) = if allow {
            if !groups && caps.mode() != crate::caps::OffloadMode::FlatMarks {
                continue;
            }
            (FlagClass::Any, samples.clone())
        } else if tcp {
            let syn: Vec<usize> = samples
                .iter()
                .copied()
                .filter(|&i| {
                    hits.flows[i]
                        .tcp_flags
                        .is_some_and(|f| TcpFlags::SynOnly.accepts(f))
                })
                .collect();
            (FlagClass::SynOnly, syn)
        } else {
            // Non-TCP denies stay in software: without connection state a drop
            // would cut flows an earlier generation allowed (conntrack keeps them).
            continue;
        };
        if samples.is_empty() {
            continue;
        }
        let Some(mut atom) = exact_atom(&pkt, flags, caps) else {
            continue;
        };
        if conversations {
            atom.sport = None;
        }
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
        capo_policy::L4::Ports { dst, .. } => Packet {
            l4: capo_policy::L4::Ports { src: 0, dst },
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
