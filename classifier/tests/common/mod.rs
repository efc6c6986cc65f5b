//! Random policy states and packets for the differential tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::IpAddr;

use capo_classifier::{Generation, IfaceKind, Scratch};
use capo_policy::config::{EndpointToHostAction, FailsafePort};
use capo_policy::eval::Outcome;
use capo_policy::{
    Action, Cidr, Direction, FelixConfig, HostEndpoint, HostEndpointKey, HostMetadata, IcmpMatch,
    IdTable, IpFamily, IpSetId, IpSetKind, Member, Packet, Policy, PolicyKey, PortRange, Profile,
    Protocol, Rule, SideMatch, State, TierDefault, TierInfo, Update, WorkloadEndpoint, WorkloadKey,
    L4,
};
use proptest::prelude::*;

pub(crate) const ADDRS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "10.0.1.1",
    "10.1.0.1",
    "192.168.1.1",
    "172.16.0.5",
    "fd00::1",
    "fd00::2",
    "fd00:1::1",
    "2001:db8::7",
];
pub(crate) const NETS: &[&str] = &[
    "10.0.0.0/24",
    "10.0.0.0/8",
    "10.0.0.2/31",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "fd00::/64",
    "fd00::/16",
    "::/0",
    "10.0.1.1/32",
    "fd00::2/128",
];
pub(crate) const PORTS: &[u16] = &[0, 22, 53, 80, 443, 8080, 65535];
pub(crate) const PROTOS: &[u8] = &[6, 17, 1, 58, 132, 47];

pub(crate) fn ip(i: usize) -> IpAddr {
    ADDRS[i % ADDRS.len()].parse().unwrap()
}
pub(crate) fn net(i: usize) -> Cidr {
    NETS[i % NETS.len()].parse().unwrap()
}
pub(crate) fn set_id(i: usize) -> IpSetId {
    IpSetId::new(format!("s:{i}")).unwrap()
}
pub(crate) fn pkey(i: usize) -> PolicyKey {
    PolicyKey {
        kind: if i % 5 == 4 {
            "StagedGlobalNetworkPolicy".into()
        } else {
            "GlobalNetworkPolicy".into()
        },
        namespace: Default::default(),
        name: format!("p{i}").into(),
    }
}
/// A policy in tier `t1` with these inbound rules.
pub(crate) fn t1_policy(inbound: Vec<Rule>) -> Policy {
    Policy {
        inbound,
        outbound: vec![],
        untracked: false,
        pre_dnat: false,
        tier: "t1".into(),
    }
}

/// A workload `name` owning `addr`, its ingress policed by policy 0 in tier `t1`
/// (default deny).
pub(crate) fn t1_workload(name: &str, addr: &str) -> WorkloadEndpoint {
    WorkloadEndpoint {
        name: name.into(),
        profile_ids: vec![],
        ipv4_nets: addr.parse().into_iter().collect(),
        ipv6_nets: vec![],
        tiers: vec![TierInfo {
            name: "t1".into(),
            ingress: vec![pkey(0)],
            egress: vec![],
            default_action: TierDefault::Deny,
        }],
    }
}

/// Applies `updates` in order (each must apply); the last generation.
pub(crate) fn apply_all(
    b: &mut capo_classifier::Builder,
    state: &mut State,
    ids: &mut IdTable,
    updates: Vec<Update>,
) -> std::sync::Arc<Generation> {
    let mut last = None;
    for u in updates {
        last = Some(b.apply(state, ids, u).unwrap());
    }
    last.expect("no updates")
}

/// Applies `u`, which the builder must patch into one interface's programs (not
/// compile them again) equal to programs laid out afresh; the new generation.
pub(crate) fn apply_patched(
    b: &mut capo_classifier::Builder,
    state: &mut State,
    ids: &mut IdTable,
    u: Update,
) -> std::sync::Arc<Generation> {
    let before = b.patched_interfaces();
    let g = b.apply(state, ids, u).unwrap();
    assert_eq!(b.patched_interfaces(), before + 1, "not patched in place");
    assert_eq!(b.check_programs_against_specs(), Ok(()));
    g
}

/// An IP-and-port set holding one member, `addr` on TCP port `port`.
pub(crate) fn tcp_port_set(id: &IpSetId, addr: &str, port: u16) -> Update {
    Update::IpSetReplace {
        id: id.clone(),
        kind: IpSetKind::IpAndPort,
        members: vec![Member::IpPort {
            addr: addr.parse().unwrap(),
            protocol: Protocol::TCP,
            port,
        }],
    }
}

/// Workload 0 on interface `tun0` at 10.0.0.1, the endpoint of the one-program tests.
pub(crate) fn tun0_endpoint() -> Update {
    Update::WorkloadUpdate(wkey(0), t1_workload("tun0", "10.0.0.1/32").into())
}

/// A TCP packet from `src`:`sport` to `dst`:`dport`.
pub(crate) fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::TCP,
        l4: L4::Ports {
            src: sport,
            dst: dport,
        },
    }
}

/// The verdict of `pkt` entering the endpoint of interface `iface`.
pub(crate) fn ingress_verdict(g: &Generation, iface: &str, pkt: &Packet) -> capo_policy::Verdict {
    let iface = g.interface(iface).unwrap();
    g.classify(iface, Direction::Ingress, pkt, &mut Scratch::default())
        .unwrap()
        .verdict
}

pub(crate) fn wkey(i: usize) -> WorkloadKey {
    WorkloadKey {
        orchestrator: "k8s".into(),
        workload: format!("ns/pod{i}"),
        endpoint: "eth0".into(),
    }
}

pub(crate) const NSETS: usize = 5;
pub(crate) const NPOL: usize = 6;

pub(crate) fn member() -> impl Strategy<Value = Member> {
    prop_oneof![
        (0..ADDRS.len()).prop_map(|i| Member::Net(Cidr::host(ip(i)))),
        (0..NETS.len()).prop_map(|i| Member::Net(net(i))),
        (0..ADDRS.len(), 0..3usize, 0..PORTS.len()).prop_map(|(a, p, q)| Member::IpPort {
            addr: ip(a),
            protocol: [Protocol::TCP, Protocol::UDP, Protocol::SCTP][p],
            port: PORTS[q],
        }),
    ]
}

pub(crate) fn set_update(i: usize) -> impl Strategy<Value = Update> {
    (prop::collection::vec(member(), 0..5), any::<bool>()).prop_map(move |(ms, ipport)| {
        let kind = if ipport {
            IpSetKind::IpAndPort
        } else {
            IpSetKind::Net
        };
        let members = ms
            .into_iter()
            .filter(|m| kind == IpSetKind::IpAndPort || matches!(m, Member::Net(_)))
            .collect();
        Update::IpSetReplace {
            id: set_id(i),
            kind,
            members,
        }
    })
}

pub(crate) fn range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        (0..PORTS.len()).prop_map(|i| PortRange::single(PORTS[i])),
        (0..PORTS.len(), 0..PORTS.len()).prop_map(|(a, b)| {
            let (a, b) = (PORTS[a.min(b)], PORTS[a.max(b)]);
            PortRange::new(a.into(), b.into()).unwrap()
        }),
    ]
}

fn side() -> impl Strategy<Value = SideMatch> {
    let sets = || prop::collection::vec((0..NSETS).prop_map(set_id), 0..3);
    let small = |n| prop::collection::vec((0..NETS.len()).prop_map(net), 0..n);
    (
        prop_oneof![3 => Just(vec![]), 1 => small(3)],
        prop_oneof![3 => Just(vec![]), 1 => small(2)],
        prop_oneof![2 => Just(vec![]), 1 => prop::collection::vec(range(), 1..3)],
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(range(), 1..2)],
        prop_oneof![3 => Just(vec![]), 1 => sets()],
        prop_oneof![4 => Just(vec![]), 1 => sets()],
        prop_oneof![2 => Just(vec![]), 1 => sets()],
        prop_oneof![4 => Just(vec![]), 1 => sets()],
    )
        .prop_map(
            |(nets, not_nets, ports, not_ports, named, not_named, ip_sets, not_ip_sets)| {
                SideMatch {
                    nets,
                    not_nets,
                    ports,
                    not_ports,
                    named_port_sets: named,
                    not_named_port_sets: not_named,
                    ip_sets,
                    not_ip_sets,
                }
            },
        )
}

fn icmp() -> impl Strategy<Value = Option<IcmpMatch>> {
    prop_oneof![
        4 => Just(None),
        1 => (prop_oneof![Just(0u8), Just(8u8), Just(128u8)], prop::option::of(0u8..2))
            .prop_map(|(t, c)| Some(IcmpMatch { icmp_type: t, code: c })),
    ]
}

pub(crate) fn rule() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![4 => Just(Action::Allow), 3 => Just(Action::Deny), 1 => Just(Action::Log), 1 => Just(Action::Pass)],
        prop_oneof![4 => Just(None), 1 => Just(Some(IpFamily::V4)), 1 => Just(Some(IpFamily::V6))],
        prop::option::of((0..PROTOS.len()).prop_map(|i| Protocol(PROTOS[i]))),
        prop_oneof![4 => Just(None), 1 => (0..PROTOS.len()).prop_map(|i| Some(Protocol(PROTOS[i])))],
        side(),
        side(),
        prop_oneof![5 => Just(vec![]), 1 => prop::collection::vec((0..NSETS).prop_map(set_id), 1..3)],
        icmp(),
        icmp(),
    )
        .prop_map(|(action, ip_version, protocol, not_protocol, src, dst, svc, icmp, not_icmp)| Rule {
            action,
            ip_version,
            protocol,
            not_protocol,
            src,
            dst,
            dst_ip_port_sets: svc,
            icmp,
            not_icmp,
            rule_id: String::new(),
        })
}

pub(crate) fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::collection::vec(rule(), 0..4),
        prop::collection::vec(rule(), 0..4),
        prop::sample::select(vec!["t1", "t2"]),
    )
        .prop_map(|(inbound, outbound, tier)| Policy {
            inbound,
            outbound,
            untracked: false,
            pre_dnat: false,
            tier: tier.into(),
        })
}

pub(crate) fn profile() -> impl Strategy<Value = Profile> {
    (
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(inbound, outbound)| Profile { inbound, outbound })
}

pub(crate) fn tiers() -> impl Strategy<Value = Vec<TierInfo>> {
    let keys = || prop::collection::vec((0..NPOL).prop_map(pkey), 0..3);
    prop::collection::vec(
        (
            prop::sample::select(vec!["t1", "t2", "t3"]),
            keys(),
            keys(),
            any::<bool>(),
        )
            .prop_map(|(name, ingress, egress, pass)| TierInfo {
                name: name.into(),
                ingress,
                egress,
                default_action: if pass {
                    TierDefault::Pass
                } else {
                    TierDefault::Deny
                },
            }),
        0..3,
    )
}

pub(crate) fn workload(i: usize) -> impl Strategy<Value = Update> {
    (
        tiers(),
        prop::collection::vec(prop::sample::select(vec!["prof0", "prof1"]), 0..2),
        0..ADDRS.len(),
        prop::option::of(0..ADDRS.len()),
    )
        .prop_map(move |(tiers, profiles, a, b)| {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for x in std::iter::once(a).chain(b) {
                let c = Cidr::host(ip(x));
                if c.is_ipv4() {
                    v4.push(c)
                } else {
                    v6.push(c)
                }
            }
            Update::WorkloadUpdate(
                wkey(i),
                WorkloadEndpoint {
                    name: format!("tun{i}"),
                    profile_ids: profiles.into_iter().map(String::from).collect(),
                    ipv4_nets: v4,
                    ipv6_nets: v6,
                    tiers,
                }
                .into(),
            )
        })
}

pub(crate) fn hep(i: usize) -> impl Strategy<Value = Update> {
    (
        tiers(),
        tiers(),
        tiers(),
        tiers(),
        any::<bool>(),
        prop::option::of(0..ADDRS.len()),
        prop::collection::vec(prop::sample::select(vec!["prof0", "prof1"]), 0..2),
    )
        .prop_map(
            move |(t, untracked, pre_dnat, forward, star, addr, profiles)| {
                Update::HostEndpointUpdate(
                    HostEndpointKey(format!("hep{i}")),
                    HostEndpoint {
                        name: if star { "*".into() } else { format!("eth{i}") },
                        profile_ids: profiles.into_iter().map(String::from).collect(),
                        tiers: t,
                        untracked_tiers: untracked,
                        pre_dnat_tiers: pre_dnat,
                        forward_tiers: forward,
                        expected_addrs: addr.map(ip).into_iter().collect(),
                    },
                )
            },
        )
}

pub(crate) fn config() -> impl Strategy<Value = Update> {
    let fs = || {
        prop::collection::vec(
            (0..3usize, 0..PORTS.len(), prop::option::of(0..NETS.len())).prop_map(|(p, q, n)| {
                FailsafePort {
                    protocol: [Protocol::TCP, Protocol::UDP, Protocol::SCTP][p],
                    port: PORTS[q],
                    net: n.map(net),
                }
            }),
            0..3,
        )
    };
    (0..3usize, fs(), fs()).prop_map(|(a, fin, fout)| {
        Update::Config(FelixConfig {
            hostname: "node".into(),
            endpoint_to_host: [
                EndpointToHostAction::Drop,
                EndpointToHostAction::Accept,
                EndpointToHostAction::Return,
            ][a],
            failsafe_inbound: fin,
            failsafe_outbound: fout,
            ..FelixConfig::default()
        })
    })
}

/// A node's host metadata (`node` is this one, whose addresses are the host's), or
/// its removal.
pub(crate) fn host_metadata() -> impl Strategy<Value = Update> {
    (
        prop_oneof![Just("node"), Just("other-node")],
        prop::option::of(0..ADDRS.len()),
        any::<bool>(),
    )
        .prop_map(|(host, addr, remove)| {
            if remove {
                Update::HostMetadataRemove(host.into())
            } else {
                Update::HostMetadataUpdate(
                    host.into(),
                    HostMetadata {
                        ipv4: addr.map(ip).filter(|a| a.is_ipv4()),
                        ipv6: addr.map(ip).filter(|a| a.is_ipv6()),
                    },
                )
            }
        })
}

/// Updates that build a whole state, in an order the state accepts.
pub(crate) fn scenario() -> impl Strategy<Value = Vec<Update>> {
    (
        config(),
        prop::option::of(0..ADDRS.len()),
        (0..NSETS).map(set_update).collect::<Vec<_>>(),
        prop::collection::vec(policy(), NPOL),
        (profile(), profile()),
        (workload(0), workload(1)),
        prop::collection::vec(hep(0).boxed(), 0..2),
    )
        .prop_map(|(cfg, host_addr, sets, pols, (pr0, pr1), (w0, w1), heps)| {
            let mut v = vec![cfg];
            v.push(Update::HostMetadataUpdate(
                "node".into(),
                HostMetadata {
                    ipv4: host_addr.map(ip).filter(|a| a.is_ipv4()),
                    ipv6: host_addr.map(ip).filter(|a| a.is_ipv6()),
                },
            ));
            v.extend(sets);
            for (i, p) in pols.into_iter().enumerate() {
                v.push(Update::PolicyUpdate(pkey(i), p.into()));
            }
            v.push(Update::ProfileUpdate("prof0".into(), pr0.into()));
            v.push(Update::ProfileUpdate("prof1".into(), pr1.into()));
            v.push(w0);
            v.push(w1);
            for (i, h) in heps.into_iter().enumerate() {
                if let Update::HostEndpointUpdate(_, hep) = h {
                    v.push(Update::HostEndpointUpdate(
                        HostEndpointKey(format!("hep{i}")),
                        hep,
                    ));
                }
            }
            v
        })
}

pub(crate) fn packet() -> impl Strategy<Value = Packet> {
    (
        0..ADDRS.len(),
        0..ADDRS.len(),
        0..PROTOS.len(),
        0..PORTS.len(),
        0..PORTS.len(),
        0..4usize,
        prop_oneof![
            Just(0u8),
            Just(8),
            Just(128),
            Just(133),
            Just(134),
            Just(135),
            Just(136)
        ],
        0u8..2,
    )
        .prop_map(|(s, d, p, sp, dp, kind, t, c)| {
            let src = ip(s);
            // Same family for both ends, as parsing gives.
            let mut dst = ip(d);
            if src.is_ipv4() != dst.is_ipv4() {
                dst = ip(if src.is_ipv4() { d % 7 } else { 7 + d % 4 });
            }
            let protocol = Protocol(PROTOS[p]);
            let l4 = match (kind, protocol.has_ports(), protocol.is_icmp()) {
                (0, _, _) => L4::None,
                (_, true, _) => L4::Ports {
                    src: PORTS[sp],
                    dst: PORTS[dp],
                },
                (_, _, true) => L4::Icmp {
                    icmp_type: t,
                    code: c,
                },
                _ => L4::None,
            };
            Packet {
                src,
                dst,
                protocol,
                l4,
            }
        })
}

/// Applies updates to a fresh state, skipping those the state rejects.
pub(crate) fn build_state(updates: &[Update]) -> (State, IdTable) {
    let mut state = State::new();
    for u in updates {
        let _ = state.apply(u.clone());
    }
    let mut ids = IdTable::default();
    ids.sync(&state);
    (state, ids)
}

/// The reference outcome for an interface kind.
pub(crate) fn reference(
    state: &State,
    kind: &IfaceKind,
    dir: Direction,
    pkt: &Packet,
) -> Option<Outcome> {
    kind.reference(state, dir, pkt)
}

/// Every interface kind the state defines.
pub(crate) fn kinds(state: &State) -> Vec<IfaceKind> {
    IfaceKind::all(state)
}

/// Checks every interface and direction of `g` against the reference on `pkts`.
pub(crate) fn check(state: &State, g: &Generation, pkts: &[Packet]) -> Result<(), TestCaseError> {
    let mut scratch = Scratch::default();
    let mut batch = Vec::new();
    let mut wants = Vec::new();
    for kind in kinds(state) {
        let iface = g.interface_of(&kind);
        prop_assert!(iface.is_some(), "no interface for {kind:?}");
        let iface = iface.unwrap();
        for dir in Direction::BOTH {
            for pkt in pkts {
                let want = reference(state, &kind, dir, pkt).expect("reference");
                let got = g.classify(iface, dir, pkt, &mut scratch).expect("classify");
                prop_assert_eq!(got.verdict, want.verdict, "{:?} {:?} {:?}", kind, dir, pkt);
                prop_assert_eq!(
                    got.decider(),
                    &want.decider,
                    "{:?} {:?} {:?}",
                    kind,
                    dir,
                    pkt
                );
                batch.push((iface, dir, *pkt));
                wants.push(want);
            }
        }
    }
    // The batch path (software-pipelined prefetching) gives the same decisions.
    let mut out = Vec::new();
    g.classify_batch(&batch, &mut scratch, &mut out);
    prop_assert_eq!(out.len(), wants.len());
    for ((got, want), item) in out.iter().zip(&wants).zip(&batch) {
        let got = got.expect("classify_batch");
        prop_assert_eq!(got.verdict, want.verdict, "batch {:?}", item);
        prop_assert_eq!(got.decider(), &want.decider, "batch {:?}", item);
    }
    Ok(())
}

/// Checks that every decision of `g` names the `rule#` a fresh build of `state`
/// with `ids` names: an incrementally built generation counts its packets under
/// the same rules.
pub(crate) fn same_rule_ids(
    state: &State,
    ids: &IdTable,
    g: &Generation,
    pkts: &[Packet],
) -> Result<(), TestCaseError> {
    let fresh = capo_classifier::Builder::new().build(state, ids);
    let mut scratch = Scratch::default();
    for kind in kinds(state) {
        let (Some(a), Some(b)) = (g.interface_of(&kind), fresh.interface_of(&kind)) else {
            prop_assert!(false, "no interface for {kind:?}");
            continue;
        };
        for dir in Direction::BOTH {
            for pkt in pkts {
                let got = g.classify(a, dir, pkt, &mut scratch).map(|d| d.rule_id);
                let want = fresh.classify(b, dir, pkt, &mut scratch).map(|d| d.rule_id);
                prop_assert_eq!(got, want, "{:?} {:?} {:?}", kind, dir, pkt);
            }
        }
    }
    Ok(())
}
