//! Differential property tests: for random policies, traffic, capacities and device
//! profiles, with and without exact-flow entries (rule atoms and covers only), the
//! NIC's decision where it decides and software's otherwise equals the
//! reference verdict ([`capo_policy::trace`]); during a commit every packet gets the
//! verdict of the old or of the new generation; during a re-plan committed in place
//! (the same generation, new counters) every packet gets the generation's verdict
//! and a refused re-plan leaves the installed plan whole; the same under injected
//! faults; per
//! flow, with conntrack semantics, a connection the policy allows carries its replies
//! and later packets whatever the NIC holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use rand::SeedableRng as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capo_offload::commit::{CommitOutcome, Committer, RefreshOutcome, SoftwareView};
use capo_offload::flow::Group;
use capo_offload::lower::{ContinueReason, EntryKind};
use capo_offload::plan::{
    plan, replan, DropLearner, FlowSample, HitCounters, OffloadPlan, PlanConfig, StatelessDrops,
};
use capo_offload::sim::{Faults, SimNic};
use capo_offload::testutils::{Below as _, Rng};
use capo_offload::verdict::{combine, DecidedBy, Fragment, Probe};
use capo_offload::{lower, FlowErrorKind, NicCaps};
use capo_policy::eval::L4;
use capo_policy::{
    trace, Action, Cidr, FelixConfig, HostEndpoint, HostEndpointKey, HostMetadata, IcmpMatch,
    IdTable, IpSetId, IpSetKind, Member, Packet, Policy, PolicyKey, PortRange, Profile, Protocol,
    Rule, State, TierDefault, TierInfo, Update, Verdict, WorkloadEndpoint, WorkloadKey,
};
use proptest::prelude::*;

const NODE: &str = "node-1";

fn host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 100, 1))
}

fn pod(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 0, i))
}

fn pod6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
}

fn remote(rng: &mut Rng) -> IpAddr {
    if rng.below(10) == 0 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, rng.below(4) as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(172, 16, 0, rng.below(16) as u8))
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn random_net(rng: &mut Rng) -> Cidr {
    match rng.below(5) {
        0 => cidr(&format!("172.16.0.{}/32", rng.below(16))),
        1 => cidr(&format!("172.16.0.{}/30", rng.below(4) * 4)),
        2 => cidr(&format!("172.16.0.{}/29", rng.below(2) * 8)),
        3 => cidr("fd00:1::/126"),
        _ => cidr("172.16.0.0/28"),
    }
}

fn random_rule(rng: &mut Rng, sets: &[IpSetId], named: &IpSetId) -> Rule {
    let action = match rng.below(20) {
        0..=7 => Action::Allow,
        8..=14 => Action::Deny,
        15..=16 => Action::Pass,
        _ => Action::Log,
    };
    let mut r = Rule::any(action);
    r.protocol = match rng.below(6) {
        0 | 1 => None,
        2 | 3 => Some(Protocol::TCP),
        4 => Some(Protocol::UDP),
        _ => Some(Protocol::ICMP),
    };
    match rng.below(6) {
        0 => r.src.nets.push(random_net(rng)),
        1 => r
            .src
            .ip_sets
            .push(sets[rng.below(sets.len() as u64) as usize].clone()),
        2 => r.src.not_nets.push(random_net(rng)),
        3 => r
            .src
            .not_ip_sets
            .push(sets[rng.below(sets.len() as u64) as usize].clone()),
        _ => {}
    }
    if matches!(r.protocol, Some(Protocol::TCP) | Some(Protocol::UDP)) {
        match rng.below(6) {
            0 => r
                .dst
                .ports
                .push(PortRange::single(80 + rng.below(4) as u16)),
            1 => r.dst.ports.push(PortRange::new(80, 82).unwrap()),
            2 => r.dst.not_ports.push(PortRange::single(81)),
            3 if rng.below(3) == 0 => r.dst.named_port_sets.push(named.clone()),
            4 => r.src.ports.push(PortRange::single(1000)),
            _ => {}
        }
    }
    if r.protocol == Some(Protocol::ICMP) && rng.below(2) == 0 {
        r.icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: (rng.below(2) == 0).then_some(0),
        });
    }
    if rng.below(20) == 0 {
        r.not_protocol = Some(Protocol::UDP);
    }
    if rng.below(10) == 0 {
        r.dst.nets.push(cidr("10.244.0.0/24"));
    }
    r
}

/// A small random state: two pods (one dual-stack), IP sets over a small remote space,
/// one or two tiers, profiles, sometimes a host endpoint with forward policy.
fn random_state(seed: u64) -> (State, IdTable) {
    let mut rng = Rng::seed_from_u64(seed);
    let mut s = State::new();
    let cfg = FelixConfig {
        hostname: NODE.into(),
        ..FelixConfig::default()
    };
    s.apply(Update::Config(cfg)).unwrap();
    s.apply(Update::HostMetadataUpdate(
        NODE.into(),
        HostMetadata {
            ipv4: Some(host()),
            ipv6: None,
        },
    ))
    .unwrap();
    let mut sets = Vec::new();
    for i in 0..3 {
        let id = IpSetId::new(format!("s:{i}")).unwrap();
        let members: Vec<Member> = (0..1 + rng.below(4))
            .map(|_| Member::Net(random_net(&mut rng)))
            .collect();
        s.apply(Update::IpSetReplace {
            id: id.clone(),
            kind: IpSetKind::Net,
            members,
        })
        .unwrap();
        sets.push(id);
    }
    let named = IpSetId::new("s:named").unwrap();
    s.apply(Update::IpSetReplace {
        id: named.clone(),
        kind: IpSetKind::IpAndPort,
        members: vec!["10.244.0.1,tcp:82".parse().unwrap()],
    })
    .unwrap();
    let mut tiers = Vec::new();
    for t in 0..1 + rng.below(2) {
        let mut keys = Vec::new();
        for p in 0..1 + rng.below(3) {
            let key = PolicyKey {
                kind: "NetworkPolicy".into(),
                namespace: "ns".into(),
                name: format!("t{t}p{p}").into(),
            };
            let n_in = rng.below(5) as usize;
            let n_out = rng.below(3) as usize;
            let policy = Policy {
                inbound: (0..n_in)
                    .map(|_| random_rule(&mut rng, &sets, &named))
                    .collect(),
                outbound: (0..n_out)
                    .map(|_| random_rule(&mut rng, &sets, &named))
                    .collect(),
                untracked: false,
                pre_dnat: false,
                tier: format!("tier{t}"),
            };
            s.apply(Update::PolicyUpdate(key.clone(), policy.into()))
                .unwrap();
            keys.push(key);
        }
        tiers.push(TierInfo {
            name: format!("tier{t}").into(),
            ingress: keys.clone(),
            egress: keys,
            default_action: if rng.below(4) == 0 {
                TierDefault::Pass
            } else {
                TierDefault::Deny
            },
        });
    }
    let profile = Profile {
        inbound: (0..rng.below(3))
            .map(|_| random_rule(&mut rng, &sets, &named))
            .collect(),
        outbound: vec![Rule::any(Action::Allow)],
    };
    s.apply(Update::ProfileUpdate("kns.ns".into(), profile.into()))
        .unwrap();
    for i in 1..=2u8 {
        let tiers = if i == 2 && rng.below(3) == 0 {
            Vec::new()
        } else {
            tiers.clone()
        };
        let wep = WorkloadEndpoint {
            name: format!("cali{i}"),
            profile_ids: vec!["kns.ns".into()],
            ipv4_nets: vec![Cidr::host(pod(i))],
            ipv6_nets: if i == 1 {
                vec![Cidr::host(pod6())]
            } else {
                vec![]
            },
            tiers,
        };
        let key = WorkloadKey {
            orchestrator: "k8s".into(),
            workload: format!("ns/pod{i}"),
            endpoint: "eth0".into(),
        };
        s.apply(Update::WorkloadUpdate(key, wep.into())).unwrap();
    }
    if rng.below(5) == 0 {
        let key = PolicyKey {
            kind: "GlobalNetworkPolicy".into(),
            namespace: Default::default(),
            name: "fwd".into(),
        };
        let policy = Policy {
            inbound: (0..1 + rng.below(3))
                .map(|_| random_rule(&mut rng, &sets, &named))
                .collect(),
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        };
        s.apply(Update::PolicyUpdate(key.clone(), policy.into()))
            .unwrap();
        let hep = HostEndpoint {
            name: "eth0".into(),
            profile_ids: vec![],
            tiers: vec![],
            untracked_tiers: vec![],
            pre_dnat_tiers: vec![],
            forward_tiers: vec![TierInfo {
                name: "default".into(),
                ingress: vec![key],
                egress: vec![],
                default_action: TierDefault::Deny,
            }],
            expected_addrs: vec![host()],
        };
        s.apply(Update::HostEndpointUpdate(
            HostEndpointKey("eth0".into()),
            hep,
        ))
        .unwrap();
    }
    let mut ids = IdTable::default();
    ids.sync(&s);
    (s, ids)
}

fn random_probes(seed: u64, n: usize) -> Vec<Probe> {
    let mut rng = Rng::seed_from_u64(seed ^ 0x5555);
    (0..n)
        .map(|_| {
            let src = match rng.below(12) {
                0 => pod(1),
                1 => host(),
                _ => remote(&mut rng),
            };
            let v6 = src.is_ipv6();
            let dst = if v6 {
                pod6()
            } else {
                match rng.below(8) {
                    0 => pod(9),
                    1 => host(),
                    2..=4 => pod(2),
                    _ => pod(1),
                }
            };
            let (protocol, l4) = match rng.below(7) {
                0..=2 => (
                    Protocol::TCP,
                    L4::Ports {
                        src: [1000, 40000][rng.below(2) as usize],
                        dst: 79 + rng.below(5) as u16,
                    },
                ),
                3 | 4 => (
                    Protocol::UDP,
                    L4::Ports {
                        src: [1000, 53][rng.below(2) as usize],
                        dst: 79 + rng.below(5) as u16,
                    },
                ),
                5 => (
                    if v6 { Protocol::ICMPV6 } else { Protocol::ICMP },
                    L4::Icmp {
                        // Echo request and reply, and (over IPv6) neighbour
                        // discovery, which no NIC rule of a workload's may drop.
                        icmp_type: if v6 {
                            [128, 129, 135, 136]
                        } else {
                            [8, 0, 135, 136]
                        }[rng.below(4) as usize],
                        code: rng.below(2) as u8,
                    },
                ),
                _ => (Protocol(47), L4::None),
            };
            Probe {
                packet: Packet {
                    src,
                    dst,
                    protocol,
                    l4,
                },
                tcp_flags: [0x02, 0x10, 0x12, 0x00][rng.below(4) as usize],
                fragment: match rng.below(10) {
                    0 => Fragment::First,
                    1 => Fragment::Later,
                    _ => Fragment::No,
                },
            }
        })
        .collect()
}

fn hits_from(probes: &[Probe], seed: u64) -> HitCounters {
    let mut rng = Rng::seed_from_u64(seed ^ 0xabcd);
    HitCounters {
        flows: probes
            .iter()
            .map(|p| FlowSample {
                packet: p.reference_packet(),
                tcp_flags: p.flags(),
                hits: rng.below(1000),
            })
            .collect(),
        ..HitCounters::default()
    }
}

/// `hits` with stateless drops sparing `held` when `on`, else off.
fn sparing(hits: HitCounters, on: bool, held: Vec<Packet>) -> HitCounters {
    HitCounters {
        stateless: if on {
            StatelessDrops::Sparing(held)
        } else {
            StatelessDrops::Off
        },
        ..hits
    }
}

fn caps_for(profile: u8, capacity: u32) -> NicCaps {
    match profile {
        0 => NicCaps::mlx5(capacity),
        1 => NicCaps::e810(capacity),
        2 => NicCaps::cnxk(capacity),
        3 => {
            // mlx5 with few priorities: exercises the priority pruning.
            let mut c = NicCaps::mlx5(capacity);
            c.max_priority = 4;
            c
        }
        // VPP's flow layer: one flat table of drops and marks.
        4 => NicCaps::vpp_flow_layer(capacity),
        _ => {
            // A flat table that also matches TCP flags: SYN drops go down beside
            // the marks, so an allow that overlaps one must stay in software.
            let mut c = NicCaps::vpp_flow_layer(capacity);
            c.tcp_flags = true;
            c
        }
    }
}

/// `exact`: offer exact-flow entries besides rule atoms (the default), or plan with
/// rule atoms and covers only.
fn make_plan(
    state: &State,
    ids: &IdTable,
    generation: u64,
    caps: &NicCaps,
    hits: &HitCounters,
    exact: bool,
) -> OffloadPlan {
    let program = lower(state, ids, generation);
    let cfg = PlanConfig {
        exact_flows: exact,
        ..PlanConfig::default()
    };
    plan(state, &program, caps, hits, &cfg)
}

fn verdict(
    nic: &SimNic,
    sw: &SoftwareView,
    caps: &NicCaps,
    p: &Probe,
    refs: &dyn Fn(u64) -> Verdict,
) -> Verdict {
    let out = nic.peek(&p.headers());
    combine(out, sw, caps.mark_bits, &mut |g| refs(g)).0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// NIC where it decides, software otherwise, equals the reference.
    #[test]
    fn prop_nic_plus_software_equals_reference(seed in any::<u64>(), capacity in 1u32..120, profile in 0u8..6, exact in any::<bool>(), stateless in any::<bool>()) {
        let (state, ids) = random_state(seed);
        let probes = random_probes(seed, 120);
        let caps = caps_for(profile, capacity);
        let hits = sparing(hits_from(&probes, seed), stateless, Vec::new());
        let p = make_plan(&state, &ids, 1, &caps, &hits, exact);
        prop_assert!(p.entries_used() <= capacity as usize);
        let mut nic = SimNic::new(caps.clone());
        let mut c = Committer::new();
        c.commit(&mut nic, &p, &mut |_, _| {});
        let sw = c.software().clone();
        for pr in &probes {
            let reference = trace(&state, &pr.reference_packet()).verdict;
            let out = nic.receive(&pr.headers(), 64);
            let (v, _) = combine(out, &sw, caps.mark_bits, &mut |_| reference);
            prop_assert_eq!(v, reference, "probe {:?}\nplan rules {:#?}", pr, p.rules);
        }
        prop_assert_eq!(nic.same_priority_conflicts(), 0);
    }

    /// The domain index answers as a scan of the domains in order does.
    #[test]
    fn prop_domain_index_equals_a_scan(seed in any::<u64>()) {
        let (state, ids) = random_state(seed);
        let program = lower(&state, &ids, 1);
        let mut addrs: Vec<IpAddr> = random_probes(seed, 60).iter().map(|p| p.reference_packet().dst).collect();
        for d in &program.domains {
            for (lo, hi) in d.dst.v4.ranges() {
                for a in [*lo, *hi, hi.saturating_add(1)] {
                    addrs.push(IpAddr::V4(Ipv4Addr::from(a.min(u128::from(u32::MAX)) as u32)));
                }
            }
            for (lo, hi) in d.dst.v6.ranges() {
                addrs.push(IpAddr::V6(Ipv6Addr::from(*lo)));
                addrs.push(IpAddr::V6(Ipv6Addr::from(*hi)));
            }
        }
        for a in addrs {
            let scan = program.domains.iter().position(|d| d.dst.contains(&a));
            prop_assert_eq!(program.domain_of(&a), scan, "{}", a);
        }
    }

    /// The lowering's contract, on which the planner's verdicts rest: for a packet from
    /// a non-local source to a local workload (TCP with its flags), the first entry of
    /// the workload's list that matches it, when it is an allow or a deny, is the
    /// reference's verdict; when it is a deny's stateful remainder (the deny's rule
    /// matched, not as a connection attempt), the verdict is deny.
    #[test]
    fn prop_a_deciding_first_entry_is_the_reference_verdict(seed in any::<u64>()) {
        let (state, ids) = random_state(seed);
        let program = lower(&state, &ids, 1);
        let mut decided = 0usize;
        for pr in random_probes(seed, 200) {
            let pkt = pr.reference_packet();
            if pkt.protocol == Protocol::TCP && pr.flags().is_none() {
                continue;
            }
            let Some((d, e)) = capo_offload::lower::attribute(&state, &program, &pkt, pr.flags()) else {
                continue;
            };
            let expected = match program.domains[d].entries[e].kind {
                EntryKind::Allow => Verdict::Allow,
                EntryKind::Deny | EntryKind::Continue(ContinueReason::StatefulRemainder) => {
                    Verdict::Deny
                }
                EntryKind::Continue(_) => continue,
            };
            decided += 1;
            prop_assert_eq!(trace(&state, &pkt).verdict, expected, "{:?} entry {} of domain {}", pr, e, d);
        }
        // The probes reach deciding entries at all (else the property says nothing).
        prop_assume!(decided > 0);
    }

    /// Per flow: first packets get the reference verdict; an allowed connection's
    /// replies and later packets pass (conntrack), NIC or not.
    #[test]
    fn prop_flows_keep_conntrack_semantics(seed in any::<u64>(), capacity in 1u32..120, profile in 0u8..6, exact in any::<bool>(), stateless in any::<bool>(), learn in any::<bool>()) {
        check_flows(seed, capacity, profile, exact, stateless, learn)?;
    }

    /// During a commit (and the retire after it) every packet gets the verdict of the
    /// old or the new generation; afterwards exactly the new one.
    #[test]
    fn prop_commit_is_per_packet_consistent(seed in any::<u64>(), capacity in 4u32..120, profile in 0u8..6, exact in any::<bool>()) {
        check_commit(seed, capacity, profile, exact, None)?;
    }

    /// A re-plan committed in place (devices with groups: mlx5, and mlx5 with few
    /// priorities), with and without exact-flow entries.
    #[test]
    fn prop_replans_commit_in_place(seed in any::<u64>(), capacity in 4u32..160, profile in prop_oneof![Just(0u8), Just(3u8)], exact in any::<bool>()) {
        check_refresh(seed, capacity, profile, exact, None)?;
    }

    /// The same when the device runs out of room, refuses destroys, or goes away
    /// part-way.
    #[test]
    fn prop_replans_in_place_under_faults(
        seed in any::<u64>(),
        capacity in 4u32..160,
        exact in any::<bool>(),
        enomem in proptest::option::of(0usize..60),
        destroys in proptest::option::of(0u64..20),
        eio in proptest::option::of(0u64..80),
    ) {
        let faults = Faults {
            enomem_after: enomem,
            destroy_fails_after: destroys,
            eio_after_creates: eio,
            ..Faults::default()
        };
        check_refresh(seed, capacity, 0, exact, Some(faults))?;
    }

    /// The same with faults injected while the new generation is installed.
    #[test]
    fn prop_commit_under_faults(
        seed in any::<u64>(),
        capacity in 4u32..120,
        profile in 0u8..6,
        enomem in proptest::option::of(0usize..60),
        eio in proptest::option::of(0u64..60),
        every in proptest::option::of(1u64..6),
        exact in any::<bool>(),
    ) {
        let faults = Faults { enomem_after: enomem, eio_after_creates: eio, create_fails_every: every, ..Faults::default() };
        check_commit(seed, capacity, profile, exact, Some(faults))?;
    }

    /// A dispatcher the device will not destroy (the first generation's, at root
    /// priority 0, or the second's, at 1), through three more commits and their
    /// retirements: every packet gets one of the generations in play, none meets a
    /// group where no rule matches it or two rules at one priority, a commit that
    /// says the NIC decides has every packet meet its group, and once the device lets
    /// go nothing of the old groups is left.
    #[test]
    fn prop_a_stuck_dispatcher_never_strands_packets(
        seed in any::<u64>(),
        capacity in 8u32..120,
        profile in prop_oneof![Just(0u8), Just(3u8)],
        exact in any::<bool>(),
        stuck_at in 1usize..=2,
    ) {
        let met = check_stuck_dispatcher(seed, capacity, profile, exact, stuck_at)?;
        prop_assume!(met.is_some(), "no dispatcher was down to refuse");
    }
}

/// Addresses of this node: its workloads and the host.
fn is_local(a: IpAddr) -> bool {
    a == pod(1) || a == pod(2) || a == pod6() || a == host()
}

/// The reply to `p`: addresses and ports swapped, SYN-ACK for TCP, echo reply for
/// an echo request; `None` where conntrack would not relate one.
fn reply_to(p: &Probe) -> Option<Probe> {
    let q = p.packet;
    let l4 = match q.l4 {
        L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
        L4::Icmp { icmp_type: 8, code } => L4::Icmp { icmp_type: 0, code },
        L4::Icmp {
            icmp_type: 128,
            code,
        } => L4::Icmp {
            icmp_type: 129,
            code,
        },
        L4::Icmp { .. } => return None,
        L4::None => L4::None,
    };
    Some(Probe {
        packet: Packet {
            src: q.dst,
            dst: q.src,
            protocol: q.protocol,
            l4,
        },
        tcp_flags: 0x12,
        fragment: Fragment::No,
    })
}

/// Connections: each probe as a first packet (SYN for TCP, whole datagrams), from
/// where its source is, and the same connection opened the other way.
fn random_flows(seed: u64, n: usize) -> Vec<Probe> {
    random_probes(seed, n)
        .into_iter()
        .flat_map(|mut p| {
            p.fragment = Fragment::No;
            p.tcp_flags = 0x02;
            let back = reply_to(&p).map(|mut r| {
                r.tcp_flags = 0x02;
                if let L4::Icmp { icmp_type, .. } = &mut r.packet.l4 {
                    *icmp_type = echo_request(r.packet.protocol);
                }
                r
            });
            std::iter::once(p).chain(back)
        })
        .collect()
}

/// The echo request type of an ICMP protocol.
fn echo_request(protocol: Protocol) -> u8 {
    if protocol == Protocol::ICMPV6 {
        128
    } else {
        8
    }
}

/// For an echo flow, an echo request the other way with the flow's identifier: the
/// flow table keys echo flows by address pair and identifier, not by type, so it
/// passes such a request as part of the flow.
fn echo_back(first: &Probe) -> Option<Probe> {
    let echo = echo_request(first.packet.protocol);
    match first.packet.l4 {
        L4::Icmp { icmp_type, .. } if icmp_type == echo => reply_to(first).map(|mut r| {
            r.packet.l4 = L4::Icmp {
                icmp_type: echo,
                code: 0,
            };
            r
        }),
        _ => None,
    }
}

/// Capo's verdict for `p` when it arrives from the wire (NIC, then software) or from
/// a local source (software only); `software` is software's verdict (a flow-table
/// hit for packets of a known connection, else the policy).
fn capo_verdict(
    nic: &mut SimNic,
    sw: &SoftwareView,
    caps: &NicCaps,
    p: &Probe,
    software: Verdict,
) -> Verdict {
    capo_decision(nic, sw, caps, p, software).0
}

/// [`capo_verdict`], and whether the NIC decided.
fn capo_decision(
    nic: &mut SimNic,
    sw: &SoftwareView,
    caps: &NicCaps,
    p: &Probe,
    software: Verdict,
) -> (Verdict, bool) {
    if is_local(p.packet.src) {
        return (software, false);
    }
    let out = nic.receive(&p.headers(), 64);
    let (v, by) = combine(out, sw, caps.mark_bits, &mut |_| software);
    (v, by == DecidedBy::Hardware)
}

/// `stateless`: plan with stateless drops, sparing the flows software holds (none
/// before the first generation; the connections the first one allowed before the
/// second). `learn`: each first packet software denies teaches the NIC a drop
/// ([`DropLearner`], sparing the connections allowed so far), which every later
/// packet meets until the second generation's commit removes it.
fn check_flows(
    seed: u64,
    capacity: u32,
    profile: u8,
    exact: bool,
    stateless: bool,
    learn: bool,
) -> Result<(), TestCaseError> {
    let (state, ids) = random_state(seed);
    let flows = random_flows(seed, 60);
    let caps = caps_for(profile, capacity);
    let hits = sparing(hits_from(&flows, seed), stateless, Vec::new());
    let p = make_plan(&state, &ids, 1, &caps, &hits, exact);
    let mut nic = SimNic::new(caps.clone());
    let mut c = Committer::new();
    c.commit(&mut nic, &p, &mut |_, _| {});
    let sw = c.software().clone();
    let program = lower(&state, &ids, 1);
    let mut learner = DropLearner::new();
    let mut allowed_so_far: Vec<Packet> = Vec::new();
    for first in &flows {
        let reference = trace(&state, &first.reference_packet()).verdict;
        let (got, by_nic) = capo_decision(&mut nic, &sw, &caps, first, reference);
        prop_assert_eq!(got, reference, "first packet {:?}", first);
        if reference != Verdict::Allow {
            if learn && !by_nic && !is_local(first.packet.src) {
                let spare = sparing(HitCounters::default(), stateless, allowed_so_far.clone());
                if let Some(d) = learner.drop_for(
                    &state,
                    &program,
                    &caps,
                    &first.reference_packet(),
                    first.flags(),
                    &spare.stateless,
                ) {
                    c.learn_drop(&mut nic, &d, 1_000, caps.counters);
                }
            }
            continue;
        }
        allowed_so_far.push(first.reference_packet());
        // Conntrack: the connection is established; its replies and later packets
        // pass whatever the policy says of them.
        if let Some(reply) = reply_to(first) {
            let got = capo_verdict(&mut nic, &sw, &caps, &reply, Verdict::Allow);
            prop_assert_eq!(
                got,
                Verdict::Allow,
                "reply {:?} of {:?}\nplan {:#?}",
                reply,
                first,
                p.rules
            );
        }
        let mut later = *first;
        later.tcp_flags = 0x10;
        let got = capo_verdict(&mut nic, &sw, &caps, &later, Verdict::Allow);
        prop_assert_eq!(got, Verdict::Allow, "later packet {:?}", later);
        if let Some(back) = echo_back(first) {
            let got = capo_verdict(&mut nic, &sw, &caps, &back, Verdict::Allow);
            prop_assert_eq!(
                got,
                Verdict::Allow,
                "echo request {:?} of {:?}",
                back,
                first
            );
        }
    }
    if learn {
        // A re-plan of the same policy, committed in place, keeps the learned drops
        // that fit and that it does not hold itself: every packet still gets its
        // verdict, and no two rules match at one priority.
        let cfg = PlanConfig {
            exact_flows: exact,
            ..PlanConfig::default()
        };
        let hits = sparing(
            hits_from(&flows, seed.wrapping_add(7)),
            stateless,
            allowed_so_far.clone(),
        );
        if let Some(again) = replan(&state, &program, &caps, &hits, &cfg, &p) {
            c.refresh(&mut nic, &again, caps.capacity, &mut |_, _| {});
        }
        let sw = c.software().clone();
        for first in &flows {
            let reference = trace(&state, &first.reference_packet()).verdict;
            let got = capo_verdict(&mut nic, &sw, &caps, first, reference);
            prop_assert_eq!(got, reference, "first packet {:?} after a refresh", first);
            if reference != Verdict::Allow {
                continue;
            }
            let mut later = *first;
            later.tcp_flags = 0x10;
            let replies = [reply_to(first), echo_back(first), Some(later)];
            for p in replies.into_iter().flatten() {
                let got = capo_verdict(&mut nic, &sw, &caps, &p, Verdict::Allow);
                prop_assert_eq!(
                    got,
                    Verdict::Allow,
                    "{:?} of {:?} after a refresh",
                    p,
                    first
                );
            }
        }
        prop_assert_eq!(nic.same_priority_conflicts(), 0);
    }
    // A new generation: connections established under the old one keep passing
    // (Calico's conntrack accepts established traffic before policy).
    let (next, next_ids) = random_state(seed.wrapping_add(1));
    let held: Vec<Packet> = flows
        .iter()
        .map(Probe::reference_packet)
        .filter(|p| trace(&state, p).verdict == Verdict::Allow)
        .collect();
    let p2 = make_plan(
        &next,
        &next_ids,
        2,
        &caps,
        &sparing(hits, stateless, held),
        exact,
    );
    c.commit(&mut nic, &p2, &mut |_, _| {});
    c.retire(&mut nic, &mut |_, _| {});
    prop_assert_eq!(c.learned_drops(), 0);
    let sw = c.software().clone();
    for first in &flows {
        if trace(&state, &first.reference_packet()).verdict != Verdict::Allow {
            continue;
        }
        let mut later = *first;
        later.tcp_flags = 0x10;
        let got = capo_verdict(&mut nic, &sw, &caps, &later, Verdict::Allow);
        prop_assert_eq!(
            got,
            Verdict::Allow,
            "established {:?} after a new generation\nplan {:#?}",
            later,
            p2.rules
        );
        if let Some(reply) = reply_to(first) {
            let got = capo_verdict(&mut nic, &sw, &caps, &reply, Verdict::Allow);
            prop_assert_eq!(
                got,
                Verdict::Allow,
                "reply {:?} after a new generation",
                reply
            );
        }
        if let Some(back) = echo_back(first) {
            let got = capo_verdict(&mut nic, &sw, &caps, &back, Verdict::Allow);
            prop_assert_eq!(
                got,
                Verdict::Allow,
                "echo request {:?} after a new generation",
                back
            );
        }
    }
    Ok(())
}

/// A re-plan on other counters, committed in place: the generation's verdict for
/// every probe at every step, and every installed decision protected
/// ([`capo_offload::testutils::decisions_protected`]); afterwards the NIC holds exactly the new plan (beside
/// the dispatcher), exactly the old one when the commit was refused up front, part
/// of the old one when the device refused a rule part-way, and decides nothing after
/// a failure.
fn check_refresh(
    seed: u64,
    capacity: u32,
    profile: u8,
    exact: bool,
    faults: Option<Faults>,
) -> Result<Option<RefreshOutcome>, TestCaseError> {
    let (state, ids) = random_state(seed);
    let probes = random_probes(seed, 80);
    let caps = caps_for(profile, capacity);
    let program = lower(&state, &ids, 1);
    let cfg = PlanConfig {
        exact_flows: exact,
        ..PlanConfig::default()
    };
    // Overlapping samples: some flows go cold (an earlier entry a staying decision
    // relied on may lose its atoms and need covers instead), others come.
    let before = plan(
        &state,
        &program,
        &caps,
        &hits_from(&probes[..60], seed),
        &cfg,
    );
    let Some(after) = replan(
        &state,
        &program,
        &caps,
        &hits_from(&probes[20..], seed.wrapping_add(7)),
        &cfg,
        &before,
    ) else {
        // Only a plan with versioned groups is committed in place.
        prop_assert!(before.mode != capo_offload::OffloadMode::VersionedGroups);
        return Ok(None);
    };
    let refs: Vec<Verdict> = probes
        .iter()
        .map(|p| trace(&state, &p.reference_packet()).verdict)
        .collect();
    let mut nic = SimNic::new(caps.clone());
    let mut c = Committer::new();
    c.commit(&mut nic, &before, &mut |_, _| {});
    let rules_of = |nic: &SimNic| {
        let mut v: Vec<_> = nic
            .rules()
            .filter(|(_, r)| r.attr().group.0 != 0)
            .map(|(_, r)| {
                r.with_attr(capo_offload::Attr {
                    group: capo_offload::Group(0),
                    ..*r.attr()
                })
            })
            .collect();
        v.sort_by_key(|r| format!("{r:?}"));
        v
    };
    let sorted = |p: &OffloadPlan| {
        let mut v: Vec<_> = p.rules.iter().map(|r| r.flow.clone()).collect();
        v.sort_by_key(|r| format!("{r:?}"));
        v
    };
    prop_assert_eq!(rules_of(&nic), sorted(&before));
    if let Some(f) = faults {
        nic.set_faults(f);
    }
    let mut failure: Option<String> = None;
    let mut steps = 0usize;
    let mut check = |nic: &SimNic, sw: &SoftwareView| {
        steps += 1;
        if failure.is_some() {
            return;
        }
        if let Err(e) = capo_offload::testutils::decisions_protected(nic, &[&before, &after]) {
            failure = Some(format!("step {steps}: {e}"));
        }
        for (i, p) in probes.iter().enumerate() {
            let v = verdict(nic, sw, &caps, p, &|_| refs[i]);
            if v != refs[i] && failure.is_none() {
                failure = Some(format!(
                    "step {steps}, probe {p:?}: {v:?}, not {:?}",
                    refs[i]
                ));
            }
        }
    };
    let outcome = c.refresh(&mut nic, &after, u32::MAX, &mut check);
    if let Some(f) = failure {
        return Err(TestCaseError::fail(f));
    }
    match outcome.clone() {
        RefreshOutcome::Refreshed {
            inserted,
            destroyed,
            ..
        } => {
            prop_assert_eq!(rules_of(&nic), sorted(&after));
            prop_assert_eq!(
                inserted + destroyed.len(),
                capo_offload::plan::rules_changed(&before, &after, caps.mark_bits)
            );
        }
        RefreshOutcome::Refused {
            destroyed, needed, ..
        } => {
            let left = rules_of(&nic);
            let whole = sorted(&before);
            if destroyed.is_empty() {
                prop_assert_eq!(left, whole, "refused up front: nothing changes");
                prop_assert!(needed > capacity as usize || faults.is_some());
            } else {
                prop_assert!(faults.is_some(), "refused part-way without a fault");
                prop_assert!(left.iter().all(|r| whole.contains(r)), "{left:?}");
                prop_assert_eq!(left.len() + destroyed.len(), whole.len());
            }
            prop_assert!(capo_offload::testutils::decisions_protected(&nic, &[&before]).is_ok());
        }
        RefreshOutcome::Failed { .. } => {
            prop_assert!(faults.is_some(), "failed without a fault");
            prop_assert_eq!(c.nic_generation(), None, "no plan is live");
            prop_assert!(c.has_retiring());
            for (i, p) in probes.iter().enumerate() {
                prop_assert_eq!(verdict(&nic, c.software(), &caps, p, &|_| refs[i]), refs[i]);
            }
            // Every rule left, of either plan, is retired once the device lets go.
            nic.set_faults(Faults::default());
            c.retire(&mut nic, &mut |_, _| {});
            prop_assert!(rules_of(&nic).is_empty(), "{:?}", rules_of(&nic));
        }
        RefreshOutcome::NotLive => prop_assert!(false, "the plan's generation is live"),
    }
    for (i, p) in probes.iter().enumerate() {
        prop_assert_eq!(verdict(&nic, c.software(), &caps, p, &|_| refs[i]), refs[i]);
    }
    Ok(Some(outcome))
}

/// The properties above meet re-plans that insert, keep and destroy decisions,
/// refusals up front and part-way, and failures: they do not pass on plans that
/// never differ or faults that never fire.
#[test]
fn test_replans_in_place_change_part_of_the_table() {
    let (mut changed, mut up_front, mut part_way, mut failed) = (0, 0, 0, 0);
    let faults = |enomem, destroys| Faults {
        enomem_after: enomem,
        destroy_fails_after: destroys,
        ..Faults::default()
    };
    for seed in 0..40u64 {
        let capacity = 100 + (seed as u32 % 4) * 20;
        let exact = seed % 2 == 0;
        match check_refresh(seed, capacity, 0, exact, None).unwrap() {
            Some(RefreshOutcome::Refreshed {
                inserted,
                kept,
                destroyed,
            }) => {
                // More kept than the punts and the catch-all, which always stay.
                changed += usize::from(inserted > 0 && kept > 5 && !destroyed.is_empty());
            }
            other => assert!(other.is_none(), "{other:?}"),
        }
        match check_refresh(seed, capacity, 0, exact, Some(faults(Some(8), None))).unwrap() {
            Some(RefreshOutcome::Refused { destroyed, .. }) if destroyed.is_empty() => {
                up_front += 1
            }
            Some(RefreshOutcome::Refused { .. }) => part_way += 1,
            _ => {}
        }
        if let Some(RefreshOutcome::Failed { .. }) =
            check_refresh(seed, capacity, 0, exact, Some(faults(None, Some(1)))).unwrap()
        {
            failed += 1;
        }
    }
    assert!(
        changed >= 10,
        "{changed} of 40 re-plans changed part of the table"
    );
    assert!(
        part_way + up_front >= 5,
        "{part_way} refused part-way, {up_front} up front"
    );
    assert!(failed >= 5, "{failed} failed");
}

fn check_commit(
    seed: u64,
    capacity: u32,
    profile: u8,
    exact: bool,
    faults: Option<Faults>,
) -> Result<(), TestCaseError> {
    let (a, ids_a) = random_state(seed);
    let (b, ids_b) = random_state(seed.wrapping_add(1));
    let probes = random_probes(seed, 80);
    let caps = caps_for(profile, capacity);
    let hits = hits_from(&probes, seed);
    let plan_a = make_plan(&a, &ids_a, 1, &caps, &hits, exact);
    let plan_b = make_plan(&b, &ids_b, 2, &caps, &hits, exact);
    let ref_a: Vec<Verdict> = probes
        .iter()
        .map(|p| trace(&a, &p.reference_packet()).verdict)
        .collect();
    let ref_b: Vec<Verdict> = probes
        .iter()
        .map(|p| trace(&b, &p.reference_packet()).verdict)
        .collect();
    let mut nic = SimNic::new(caps.clone());
    let mut c = Committer::new();
    c.commit(&mut nic, &plan_a, &mut |_, _| {});
    for (i, p) in probes.iter().enumerate() {
        let refs = |g: u64| if g == 2 { ref_b[i] } else { ref_a[i] };
        prop_assert_eq!(verdict(&nic, c.software(), &caps, p, &refs), ref_a[i]);
    }
    if let Some(f) = faults {
        nic.set_faults(f);
    }
    let mut failure: Option<String> = None;
    let mut check = |nic: &SimNic, sw: &SoftwareView| {
        for (i, p) in probes.iter().enumerate() {
            let refs = |g: u64| if g == 2 { ref_b[i] } else { ref_a[i] };
            let v = verdict(nic, sw, &caps, p, &refs);
            if v != ref_a[i] && v != ref_b[i] && failure.is_none() {
                failure = Some(format!(
                    "probe {p:?}: {v:?} is neither {:?} nor {:?} (sw {sw:?})",
                    ref_a[i], ref_b[i]
                ));
            }
            // `verdict` peeks, which `same_priority_conflicts` does not count.
            if nic.same_priority_conflict(&p.headers()) && failure.is_none() {
                failure = Some(format!("probe {p:?} met two rules at one priority"));
            }
        }
    };
    c.commit(&mut nic, &plan_b, &mut check);
    c.retire(&mut nic, &mut check);
    if let Some(f) = failure {
        return Err(TestCaseError::fail(f));
    }
    for (i, p) in probes.iter().enumerate() {
        let refs = |g: u64| if g == 2 { ref_b[i] } else { ref_a[i] };
        prop_assert_eq!(
            verdict(&nic, c.software(), &caps, p, &refs),
            ref_b[i],
            "after commit: {:?}",
            p
        );
    }
    prop_assert_eq!(nic.same_priority_conflicts(), 0);
    Ok(())
}

/// The dispatchers installed, by handle, with the group each leads to.
fn dispatch_rules(nic: &SimNic) -> Vec<(capo_offload::FlowHandle, Group)> {
    nic.rules()
        .filter_map(|(h, r)| Some((h, r.dispatch_target()?)))
        .collect()
}

/// The dispatchers installed, by handle.
fn dispatchers(nic: &SimNic) -> Vec<capo_offload::FlowHandle> {
    dispatch_rules(nic).into_iter().map(|(h, _)| h).collect()
}

/// The group the newest dispatcher leads to.
fn newest_dispatch(nic: &SimNic) -> Option<Group> {
    dispatch_rules(nic).into_iter().max().map(|(_, g)| g)
}

/// What the commits after the refusal met: how each ended, and the dispatchers
/// installed after each. `None` when no dispatcher was down to refuse.
type StuckCase = Option<Vec<(CommitOutcome, usize)>>;

/// Generations 1 to `stuck_at + 3` (over three policies, the last repeated): the
/// device refuses to destroy generation `stuck_at`'s dispatcher from then on, and
/// lets go after the last commit.
fn check_stuck_dispatcher(
    seed: u64,
    capacity: u32,
    profile: u8,
    exact: bool,
    stuck_at: usize,
) -> Result<StuckCase, TestCaseError> {
    let last = stuck_at + 3;
    let probes = random_probes(seed, 60);
    let caps = caps_for(profile, capacity);
    let hits = hits_from(&probes, seed);
    let states: Vec<(State, IdTable)> =
        (0..3).map(|k| random_state(seed.wrapping_add(k))).collect();
    let of = |g: usize| &states[(g + 2).saturating_sub(last).min(2)];
    let plans: Vec<OffloadPlan> = (1..=last)
        .map(|g| make_plan(&of(g).0, &of(g).1, g as u64, &caps, &hits, exact))
        .collect();
    let refs: Vec<Vec<Verdict>> = (1..=last)
        .map(|g| {
            probes
                .iter()
                .map(|p| trace(&of(g).0, &p.reference_packet()).verdict)
                .collect()
        })
        .collect();
    let mut nic = SimNic::new(caps.clone());
    let mut c = Committer::new();
    for plan in &plans[..stuck_at] {
        c.commit(&mut nic, plan, &mut |_, _| {});
        c.retire(&mut nic, &mut |_, _| {});
    }
    let refused = dispatchers(&nic);
    if refused.is_empty() {
        return Ok(None);
    }
    prop_assert_eq!(refused.len(), 1, "one dispatcher");
    nic.set_faults(Faults {
        destroy_refused: refused.first().copied(),
        ..Faults::default()
    });
    let mut failure: Option<String> = None;
    // Every state: each probe gets generation `g - 1`'s or `g`'s verdict, and no
    // probe reaches a group where no rule matches it or two rules at one priority.
    let mut step = |c: &mut Committer, nic: &mut SimNic, g: usize, commit: bool| {
        let mut check = |nic: &SimNic, sw: &SoftwareView| {
            for (i, p) in probes.iter().enumerate() {
                let at = |x: u64| refs[(x as usize).clamp(1, last) - 1][i];
                let v = verdict(nic, sw, &caps, p, &at);
                let (a, b) = (refs[g.saturating_sub(2)][i], refs[g - 1][i]);
                if v != a && v != b && failure.is_none() {
                    failure = Some(format!("generation {g}: probe {p:?}: {v:?} (sw {sw:?})"));
                }
                if nic.same_priority_conflict(&p.headers()) && failure.is_none() {
                    failure = Some(format!(
                        "probe {p:?} met two rules at one priority (sw {sw:?})"
                    ));
                }
                if let Some(miss) = nic.group_miss(&p.headers()) {
                    if failure.is_none() {
                        failure = Some(format!("probe {p:?} met no rule in {miss:?} (sw {sw:?})"));
                    }
                }
            }
        };
        let outcome = commit.then(|| c.commit(nic, &plans[g - 1], &mut check));
        // A commit that says the NIC decides has every packet meet its group.
        let mut shadowed = None;
        if let Some(CommitOutcome::Offloaded { .. }) = &outcome {
            let live = newest_dispatch(nic);
            shadowed = probes.iter().find_map(|p| {
                let met = nic.groups_met(&p.headers());
                met.iter()
                    .any(|x| Some(*x) != live)
                    .then(|| format!("generation {g}: probe {p:?} met {met:?}, not {live:?}"))
            });
        }
        let installed = dispatchers(nic).len();
        c.retire(nic, &mut check);
        if failure.is_none() {
            failure = shadowed;
        }
        outcome.map(|o| (o, installed))
    };
    let mut after = Vec::new();
    for g in stuck_at + 1..=last {
        after.extend(step(&mut c, &mut nic, g, true));
        prop_assert_eq!(c.stuck_dispatchers(), 1, "generation {}", g);
    }
    prop_assert!(
        dispatchers(&nic).contains(&refused[0]),
        "the refused dispatcher is still there"
    );
    // The device lets go: the next retirement clears the old group.
    nic.set_faults(Faults::default());
    step(&mut c, &mut nic, last, false);
    if let Some(f) = failure {
        return Err(TestCaseError::fail(f));
    }
    prop_assert_eq!(c.stuck_dispatchers(), 0);
    prop_assert!(!c.has_retiring());
    for (i, p) in probes.iter().enumerate() {
        let at = |_: u64| refs[last - 1][i];
        prop_assert_eq!(
            verdict(&nic, c.software(), &caps, p, &at),
            refs[last - 1][i]
        );
        prop_assert!(nic.group_miss(&p.headers()).is_none());
    }
    // Only the live generation's group and its dispatcher are left.
    let groups: Vec<Group> = nic
        .rules()
        .map(|(_, r)| r.attr().group)
        .filter(|g| *g != Group::ROOT)
        .collect();
    prop_assert!(groups.windows(2).all(|w| w[0] == w[1]), "{:?}", groups);
    prop_assert!(dispatchers(&nic).len() <= 1);
    Ok(Some(after))
}

/// Guards the stuck-dispatcher property against vacuity: most seeds put a
/// dispatcher down to refuse; stuck at priority 0 (nothing outranks it) every
/// commit after it leaves the NIC out, and stuck at 1 the commits put a dispatcher
/// down above it (the NIC deciding again) whenever the live dispatcher does not hold
/// priority 0, and leave the NIC out when it does.
#[test]
fn test_stuck_dispatcher_cases_are_met() {
    let busy = |o: &CommitOutcome| matches!(o, CommitOutcome::SoftwareOnly { error, .. } if error.kind == FlowErrorKind::Busy);
    for stuck_at in [1, 2] {
        let met: Vec<Vec<(CommitOutcome, usize)>> = (0..12u64)
            .filter_map(|seed| {
                check_stuck_dispatcher(seed, 100, 0, seed % 2 == 0, stuck_at).unwrap()
            })
            .collect();
        assert!(
            met.len() >= 8,
            "stuck at {stuck_at}: {} of 12 seeds",
            met.len()
        );
        let all: Vec<&(CommitOutcome, usize)> = met.iter().flatten().collect();
        let left_out = all.iter().filter(|(o, _)| busy(o)).count();
        let beside = all
            .iter()
            .filter(|(o, n)| matches!(o, CommitOutcome::Offloaded { .. }) && *n == 2)
            .count();
        if stuck_at == 1 {
            // Some commits may instead find no room beside the old group.
            let software = all
                .iter()
                .filter(|(o, _)| matches!(o, CommitOutcome::SoftwareOnly { .. }))
                .count();
            assert_eq!(software, all.len(), "{all:?}");
            assert!(
                left_out * 10 >= all.len() * 9,
                "{left_out} of {}",
                all.len()
            );
        } else {
            assert!(
                left_out >= met.len() && beside >= met.len(),
                "{left_out} left out, {beside} beside, of {}",
                all.len()
            );
        }
    }
}

#[test]
fn test_fragment_and_source_punts_precede_everything() {
    let (state, ids) = random_state(7);
    let probes = random_probes(7, 50);
    let caps = NicCaps::mlx5(500);
    let p = make_plan(&state, &ids, 3, &caps, &hits_from(&probes, 7), true);
    use capo_offload::plan::Role;
    let first_other = p
        .rules
        .iter()
        .position(|r| !matches!(r.role, Role::FragmentPunt | Role::SourcePunt))
        .unwrap_or(p.rules.len());
    assert!(p.rules[..first_other]
        .iter()
        .any(|r| r.role == Role::FragmentPunt));
    assert!(p.rules[first_other..]
        .iter()
        .all(|r| !matches!(r.role, Role::FragmentPunt | Role::SourcePunt)));
    assert_eq!(p.rules.last().map(|r| r.role.clone()), Some(Role::CatchAll));
}

#[test]
fn test_software_only_device_keeps_everything_with_a_reason() {
    let (state, ids) = random_state(11);
    let p = make_plan(
        &state,
        &ids,
        1,
        &NicCaps::none("net_null"),
        &HitCounters::default(),
        true,
    );
    assert!(p.rules.is_empty());
    assert!(p
        .kept
        .iter()
        .all(|k| k.reason == capo_offload::KeepReason::SoftwareOnlyDevice));
}

/// Guards the properties against vacuity: the random inputs do put decisions, covers
/// and several priority layers on the NIC (rule atoms only), and exact-flow allows and
/// denies that decide probes (default planning).
#[test]
fn test_random_inputs_exercise_hardware_decisions() {
    use capo_offload::plan::Role;
    use capo_offload::verdict::DecidedBy;
    for exact in [false, true] {
        let (mut hw, mut total, mut covers, mut multi_layer, mut drops) = (0, 0, 0, 0, 0);
        let (mut exact_allows, mut exact_drops, mut hw_by_exact) = (0, 0, 0);
        let mut mlx5_total = 0;
        for seed in 0..200u64 {
            let (state, ids) = random_state(seed);
            let probes = random_probes(seed, 100);
            for profile in [0u8, 1] {
                let caps = caps_for(profile, 100);
                let p = make_plan(&state, &ids, 1, &caps, &hits_from(&probes, seed), exact);
                covers += p
                    .rules
                    .iter()
                    .filter(|r| matches!(r.role, Role::Cover { .. }))
                    .count();
                multi_layer += usize::from(p.layers > 1);
                drops += p
                    .rules
                    .iter()
                    .filter(|r| matches!(r.role, Role::Decide { allow: false, .. }))
                    .count();
                exact_allows += p
                    .rules
                    .iter()
                    .filter(|r| matches!(r.role, Role::ExactFlow { allow: true, .. }))
                    .count();
                exact_drops += p
                    .rules
                    .iter()
                    .filter(|r| matches!(r.role, Role::ExactFlow { allow: false, .. }))
                    .count();
                let mut nic = SimNic::new(caps.clone());
                let mut c = Committer::new();
                c.commit(&mut nic, &p, &mut |_, _| {});
                for pr in &probes {
                    let reference = trace(&state, &pr.reference_packet()).verdict;
                    let (_, by) = combine(
                        nic.peek(&pr.headers()),
                        c.software(),
                        caps.mark_bits,
                        &mut |_| reference,
                    );
                    total += 1;
                    let decided = by == DecidedBy::Hardware;
                    hw += usize::from(decided);
                    let h = pr.headers();
                    let by_exact = p
                        .rules
                        .iter()
                        .filter(|r| r.flow.matches(&h))
                        .min_by_key(|r| r.flow.attr().priority.0)
                        .is_some_and(|r| matches!(r.role, Role::ExactFlow { .. }));
                    // Exact entries decide on the groups profile; ice matches no TCP
                    // flags, so it has few (UDP, SCTP only).
                    if profile == 0 {
                        mlx5_total += 1;
                        hw_by_exact += usize::from(decided && by_exact);
                    }
                }
            }
        }
        assert!(
            hw * 20 > total,
            "exact {exact}: only {hw} of {total} probes decided in hardware"
        );
        if exact {
            assert!(
                exact_allows > 0 && exact_drops > 0 && hw_by_exact * 40 > mlx5_total,
                "exact allows {exact_allows}, drops {exact_drops}, probes {hw_by_exact} of {mlx5_total}"
            );
        } else {
            assert!(
                covers > 0 && multi_layer > 0 && drops > 0,
                "covers {covers}, multi-layer plans {multi_layer}, drops {drops}"
            );
        }
    }
}

/// The flat-table profiles (VPP's flow layer, and the same matching TCP flags) plan
/// one table at priority 0 in group 0, and decide some random probes in hardware, so
/// the properties above exercise them.
#[test]
fn test_flat_tables_decide_in_hardware() {
    use capo_offload::verdict::DecidedBy;
    use capo_offload::OffloadMode;
    for profile in [4u8, 5] {
        let (mut hw, mut marks) = (0, 0);
        for seed in 0..100u64 {
            let (state, ids) = random_state(seed);
            let probes = random_probes(seed, 100);
            let caps = caps_for(profile, 100);
            let p = make_plan(&state, &ids, 1, &caps, &hits_from(&probes, seed), true);
            assert_eq!(p.mode, OffloadMode::FlatMarks);
            assert!(p
                .rules
                .iter()
                .all(|r| r.flow.attr().priority.0 == 0 && r.flow.attr().group.0 == 0));
            marks += p.rules.iter().filter(|r| r.flow.mark().is_some()).count();
            let mut nic = SimNic::new(caps.clone());
            let mut c = Committer::new();
            c.commit(&mut nic, &p, &mut |_, _| {});
            for pr in &probes {
                let reference = trace(&state, &pr.reference_packet()).verdict;
                let (verdict, by) = combine(
                    nic.peek(&pr.headers()),
                    c.software(),
                    caps.mark_bits,
                    &mut |_| reference,
                );
                assert_eq!(verdict, reference, "profile {profile}, seed {seed}");
                hw += usize::from(by == DecidedBy::Hardware);
            }
        }
        assert!(
            hw > 0 && marks > 0,
            "profile {profile}: {hw} decided in hardware, {marks} marks"
        );
    }
}
