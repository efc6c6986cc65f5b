//! Named planner cases: TCP denies go down SYN-only, allows stay in software without
//! groups, an earlier `pass` rule is covered by a punt, priorities are layered; exact
//! flows take one entry without covers, TCP ones deny SYN-only, other denies only when
//! reply-safe (egress reachability), never for a logged tuple.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::net::{IpAddr, Ipv4Addr};

use capo_offload::flow::{Item, TCP_ACK, TCP_SYN};
use capo_offload::plan::{
    plan, FlowSample, HitCounters, KeepReason, OffloadPlan, PlanConfig, Role,
};
use capo_offload::testutils::{net, one_workload};
use capo_offload::verdict::{Fragment, Probe};
use capo_offload::{lower, NicCaps, OffloadMode};
use capo_policy::eval::L4;
use capo_policy::{
    Action, IdTable, Packet, Policy, PolicyKey, PortRange, Protocol, Rule, State, Update,
};

fn state_with(rules: Vec<Rule>) -> (State, IdTable) {
    one_workload(rules, vec![], None)
}

fn tcp(src: [u8; 4], dport: u16, flags: u8) -> Probe {
    Probe {
        packet: Packet {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: "10.244.0.1".parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: dport,
            },
        },
        tcp_flags: flags,
        fragment: Fragment::No,
    }
}

fn hits(probes: &[Probe]) -> HitCounters {
    HitCounters {
        flows: probes
            .iter()
            .map(|p| FlowSample {
                packet: p.reference_packet(),
                tcp_flags: p.flags(),
                hits: 100,
            })
            .collect(),
        ..HitCounters::default()
    }
}

/// Plans with rule atoms only (no exact flows): the rule-lowering cases.
fn planned(rules: Vec<Rule>, caps: &NicCaps, probes: &[Probe]) -> OffloadPlan {
    let (s, ids) = state_with(rules);
    let program = lower(&s, &ids, 1);
    let cfg = PlanConfig {
        exact_flows: false,
        ..PlanConfig::default()
    };
    plan(&s, &program, caps, &hits(probes), &cfg)
}

/// Plans with the default configuration (exact flows offered).
fn planned_in(s: &State, ids: &IdTable, caps: &NicCaps, probes: &[Probe]) -> OffloadPlan {
    let program = lower(s, ids, 1);
    plan(s, &program, caps, &hits(probes), &PlanConfig::default())
}

/// What a NIC holding `p` does with `probe`, and the reference verdict.
fn on_nic(
    s: &State,
    p: &OffloadPlan,
    caps: &NicCaps,
    probe: &Probe,
) -> (capo_offload::NicOutcome, capo_policy::Verdict) {
    let mut nic = capo_offload::SimNic::new(caps.clone());
    let mut c = capo_offload::Committer::new();
    c.commit(&mut nic, p, &mut |_, _| {});
    (
        nic.peek(&probe.headers()),
        capo_policy::trace(s, &probe.reference_packet()).verdict,
    )
}

fn udp(src: [u8; 4], sport: u16, dport: u16) -> Probe {
    Probe {
        packet: Packet {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: "10.244.0.1".parse().unwrap(),
            protocol: Protocol::UDP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        },
        tcp_flags: 0,
        fragment: Fragment::No,
    }
}

fn exact_flows(p: &OffloadPlan) -> Vec<&capo_offload::plan::PlannedRule> {
    p.rules
        .iter()
        .filter(|r| matches!(r.role, Role::ExactFlow { .. }))
        .collect()
}

#[test]
fn test_exact_flow_takes_one_entry_without_covers() {
    // The allow atom would need a cover for the earlier pass rule; the flow's exact
    // tuple is decided by one entry.
    let mut pass = Rule::any(Action::Pass);
    pass.src.nets.push(net("172.16.0.4/30"));
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.src.nets.push(net("172.16.0.0/29"));
    allow.dst.ports.push(PortRange::single(80));
    let (s, ids) = state_with(vec![pass, allow]);
    // Room for one entry besides the fixed ones (two fragment punts, two source
    // punts, the catch-all, the reserve).
    let caps = NicCaps::mlx5(7);
    let probe = tcp([172, 16, 0, 1], 80, TCP_ACK);
    let p = planned_in(&s, &ids, &caps, &[probe]);
    assert_eq!(p.exact_flows, 1);
    assert!(!p.rules.iter().any(|r| matches!(r.role, Role::Cover { .. })));
    let e = exact_flows(&p)[0];
    assert!(
        matches!(
            e.role,
            Role::ExactFlow {
                domain: 0,
                allow: true,
                ..
            }
        ),
        "{:?}",
        e.role
    );
    let tcp_item = e.flow.pattern().iter().find_map(|i| match i {
        Item::Tcp(Some(s)) => Some(*s),
        _ => None,
    });
    let t = tcp_item.expect("a TCP item");
    // No rule looks at source ports: the entry is the conversation's (any source
    // port), so the next connection, from a new source port, is decided too.
    assert_eq!(
        (t.mask.src_port, t.mask.dst_port, t.mask.flags),
        (0, 0xffff, 0)
    );
    let mut next_connection = tcp([172, 16, 0, 1], 80, TCP_SYN);
    next_connection.packet.l4 = L4::Ports {
        src: 51000,
        dst: 80,
    };
    // Its SYN and ACK packets are allowed in hardware.
    for probe in [
        tcp([172, 16, 0, 1], 80, TCP_SYN),
        tcp([172, 16, 0, 1], 80, TCP_ACK),
        next_connection,
    ] {
        let (out, v) = on_nic(&s, &p, &caps, &probe);
        assert!(matches!(
            out,
            capo_offload::NicOutcome::Delivered { mark: Some(_) }
        ));
        assert_eq!(v, capo_policy::Verdict::Allow);
    }
}

/// A rule that looks at source ports makes every entry an exact 5-tuple: a
/// conversation's packets may then get different verdicts.
#[test]
fn test_source_port_rules_keep_exact_tuples() {
    let mut deny = Rule::any(Action::Deny);
    deny.protocol = Some(Protocol::TCP);
    deny.src.ports.push(PortRange::single(51000));
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.dst.ports.push(PortRange::single(80));
    let (s, ids) = state_with(vec![deny, allow]);
    let caps = NicCaps::mlx5(64);
    let p = planned_in(&s, &ids, &caps, &[tcp([172, 16, 0, 1], 80, TCP_ACK)]);
    let e = exact_flows(&p);
    assert_eq!(e.len(), 1);
    let t = e[0]
        .flow
        .pattern()
        .iter()
        .find_map(|i| match i {
            Item::Tcp(Some(s)) => Some(*s),
            _ => None,
        })
        .expect("a TCP item");
    assert_eq!((t.spec.src_port, t.mask.src_port), (40000, 0xffff));
    // The denied source port is not allowed by the allowed tuple's entry.
    let mut other = tcp([172, 16, 0, 1], 80, TCP_SYN);
    other.packet.l4 = L4::Ports {
        src: 51000,
        dst: 80,
    };
    let (out, v) = on_nic(&s, &p, &caps, &other);
    assert_eq!(v, capo_policy::Verdict::Deny);
    let allowed_by_nic = match out {
        capo_offload::NicOutcome::Delivered { mark: Some(raw) } => {
            capo_offload::mark::Mark::decode(raw, caps.mark_bits).kind
                == capo_offload::mark::MarkKind::Allow
        }
        _ => false,
    };
    assert!(!allowed_by_nic, "{out:?}");
}

#[test]
fn test_exact_tcp_deny_drops_only_the_connection_attempt() {
    // The end-of-tier drop's atom would need a cover for the allow above it.
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.src.nets.push(net("172.16.0.0/24"));
    allow.dst.ports.push(PortRange::single(80));
    let (s, ids) = state_with(vec![allow]);
    let caps = NicCaps::mlx5(64);
    let p = planned_in(&s, &ids, &caps, &[tcp([172, 16, 0, 9], 443, TCP_SYN)]);
    let e = exact_flows(&p);
    assert_eq!(e.len(), 1);
    assert!(
        matches!(
            e[0].role,
            Role::ExactFlow {
                domain: 0,
                allow: false,
                ..
            }
        ),
        "{:?}",
        e[0].role
    );
    let (out, v) = on_nic(&s, &p, &caps, &tcp([172, 16, 0, 9], 443, TCP_SYN));
    assert_eq!(
        (out, v),
        (
            capo_offload::NicOutcome::Dropped,
            capo_policy::Verdict::Deny
        )
    );
    // An ACK of the same tuple may belong to a flow software knows: not dropped here.
    let (out, _) = on_nic(&s, &p, &caps, &tcp([172, 16, 0, 9], 443, TCP_ACK));
    assert_ne!(out, capo_offload::NicOutcome::Dropped);
}

#[test]
fn test_non_tcp_denies_stay_in_software() {
    let caps = NicCaps::mlx5(64);
    // Denied UDP and ICMP: the NIC has no connection state, and a drop there would
    // also cut a connection an earlier generation allowed (conntrack keeps it).
    let mut deny_udp = Rule::any(Action::Deny);
    deny_udp.protocol = Some(Protocol::UDP);
    let probes = [
        udp([172, 16, 0, 9], 5353, 40000),
        udp([172, 16, 0, 9], 53, 40000),
    ];
    let (s, ids) = state_with(vec![deny_udp]);
    let p = planned_in(&s, &ids, &caps, &probes);
    assert_eq!(p.exact_flows, 0, "{:#?}", p.rules);
    for probe in &probes {
        let (out, v) = on_nic(&s, &p, &caps, probe);
        assert_ne!(out, capo_offload::NicOutcome::Dropped, "{probe:?}");
        assert_eq!(v, capo_policy::Verdict::Deny);
    }
    // A deny of every protocol goes down for TCP connection attempts only.
    let syn = tcp([172, 16, 0, 9], 443, TCP_SYN);
    let (s, ids) = state_with(vec![Rule::any(Action::Deny)]);
    let p = planned_in(&s, &ids, &caps, &[probes[0], probes[1], syn]);
    let (out, v) = on_nic(&s, &p, &caps, &probes[0]);
    assert_ne!(out, capo_offload::NicOutcome::Dropped);
    assert_eq!(v, capo_policy::Verdict::Deny);
    let (out, v) = on_nic(&s, &p, &caps, &syn);
    assert_eq!(
        (out, v),
        (
            capo_offload::NicOutcome::Dropped,
            capo_policy::Verdict::Deny
        )
    );
}

#[test]
fn test_logged_tuple_stays_in_software() {
    let mut log = Rule::any(Action::Log);
    log.src.nets.push(net("172.16.0.0/24"));
    let allow = Rule::any(Action::Allow);
    let (s, ids) = state_with(vec![log, allow]);
    let caps = NicCaps::mlx5(64);
    let p = planned_in(&s, &ids, &caps, &[tcp([172, 16, 0, 1], 80, TCP_ACK)]);
    assert_eq!(p.exact_flows, 0);
    // A source the log rule does not match goes down.
    let p = planned_in(&s, &ids, &caps, &[tcp([172, 16, 1, 1], 80, TCP_ACK)]);
    assert_eq!(p.exact_flows, 1);
}

#[test]
fn test_drop_only_mode_offers_exact_denies_not_allows() {
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.dst.ports.push(PortRange::single(80));
    let (s, ids) = state_with(vec![allow]);
    // Drop-only with TCP flags (an mlx5 without groups).
    let mut caps = NicCaps::mlx5(64);
    caps.groups = false;
    let flows = [
        tcp([172, 16, 0, 1], 80, TCP_ACK),
        tcp([172, 16, 0, 1], 81, TCP_SYN),
    ];
    let p = planned_in(&s, &ids, &caps, &flows);
    let e = exact_flows(&p);
    assert_eq!(e.len(), 1);
    assert!(
        matches!(
            e[0].role,
            Role::ExactFlow {
                domain: 0,
                allow: false,
                ..
            }
        ),
        "{:?}",
        e[0].role
    );
    // ice matches no TCP flags: a SYN's exact entry cannot tell it from the
    // packets of a connection software let through, so none is offered.
    let p = planned_in(&s, &ids, &NicCaps::e810(64), &flows);
    assert!(exact_flows(&p).is_empty());
}

#[test]
fn test_tcp_deny_goes_down_syn_only() {
    let mut deny = Rule::any(Action::Deny);
    deny.protocol = Some(Protocol::TCP);
    deny.src.nets.push(net("172.16.0.0/24"));
    let p = planned(
        vec![deny],
        &NicCaps::mlx5(64),
        &[tcp([172, 16, 0, 5], 80, TCP_SYN)],
    );
    let drops: Vec<_> = p
        .rules
        .iter()
        .filter(|r| matches!(r.role, Role::Decide { allow: false, .. }))
        .collect();
    assert_eq!(drops.len(), 1);
    let tcp_item = drops[0].flow.pattern().iter().find_map(|i| match i {
        Item::Tcp(Some(s)) => Some(*s),
        _ => None,
    });
    let s = tcp_item.expect("a TCP item");
    assert_eq!((s.spec.flags, s.mask.flags), (TCP_SYN, TCP_SYN | TCP_ACK));
}

#[test]
fn test_drop_only_mode_keeps_allows_with_a_reason() {
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.dst.ports.push(PortRange::single(80));
    let p = planned(
        vec![allow],
        &NicCaps::e810(100),
        &[tcp([172, 16, 0, 5], 80, TCP_ACK)],
    );
    assert_eq!(p.mode, OffloadMode::DropOnly);
    assert!(p.rules.is_empty());
    assert!(p.kept.iter().any(|k| k.reason == KeepReason::ModeForbids));
}

#[test]
fn test_earlier_pass_rule_is_covered_by_a_punt() {
    let mut pass = Rule::any(Action::Pass);
    pass.src.nets.push(net("172.16.0.4/30"));
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.src.nets.push(net("172.16.0.0/29"));
    allow.dst.ports.push(PortRange::single(80));
    let p = planned(
        vec![pass, allow],
        &NicCaps::mlx5(64),
        &[tcp([172, 16, 0, 1], 80, TCP_ACK)],
    );
    let cover = p
        .rules
        .iter()
        .position(|r| matches!(r.role, Role::Cover { .. }));
    let decide = p
        .rules
        .iter()
        .position(|r| matches!(r.role, Role::Decide { allow: true, .. }));
    let (c, d) = (cover.expect("a cover"), decide.expect("an allow"));
    // The cover sits at a higher priority (lower number) than what it protects.
    assert!(p.rules[c].flow.attr().priority < p.rules[d].flow.attr().priority);
    assert_eq!(p.layers, 2);
}

#[test]
fn test_rules_that_need_named_ports_stay_in_software() {
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow
        .dst
        .named_port_sets
        .push(capo_policy::IpSetId::new("s:x").unwrap());
    let (mut s, _) = state_with(vec![]);
    s.apply(Update::IpSetReplace {
        id: capo_policy::IpSetId::new("s:x").unwrap(),
        kind: capo_policy::IpSetKind::IpAndPort,
        members: vec![],
    })
    .unwrap();
    let key = PolicyKey {
        kind: "NetworkPolicy".into(),
        namespace: "ns".into(),
        name: "p".into(),
    };
    s.apply(Update::PolicyUpdate(
        key,
        Policy {
            inbound: vec![allow],
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        }
        .into(),
    ))
    .unwrap();
    let mut ids = IdTable::default();
    ids.sync(&s);
    let program = lower(&s, &ids, 1);
    let p = plan(
        &s,
        &program,
        &NicCaps::mlx5(64),
        &HitCounters::default(),
        &PlanConfig::default(),
    );
    assert!(p
        .kept
        .iter()
        .any(|k| matches!(k.reason, KeepReason::NotExpressible { .. })));
}

#[test]
fn test_spare_room_goes_to_atoms_that_catch_new_flows() {
    // The flow's SYN is taken by an exact entry first (one entry against an atom and
    // its cover); with room left, the end-of-tier drop's atom goes down too, so a new
    // connection attempt (another source port) is dropped in hardware as well.
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.src.nets.push(net("172.16.0.0/24"));
    allow.dst.ports.push(PortRange::single(80));
    let (s, ids) = state_with(vec![allow]);
    let probe = tcp([172, 16, 0, 9], 443, TCP_SYN);
    let mut again = probe;
    again.packet.l4 = L4::Ports {
        src: 40001,
        dst: 443,
    };
    let roomy = NicCaps::mlx5(64);
    let p = planned_in(&s, &ids, &roomy, &[probe]);
    assert_eq!(p.exact_flows, 1);
    assert!(p
        .rules
        .iter()
        .any(|r| matches!(r.role, Role::Decide { allow: false, .. })));
    let (out, v) = on_nic(&s, &p, &roomy, &again);
    assert_eq!(
        (out, v),
        (
            capo_offload::NicOutcome::Dropped,
            capo_policy::Verdict::Deny
        )
    );
    // With room for one entry, the exact entry alone.
    let tight = NicCaps::mlx5(7);
    let p = planned_in(&s, &ids, &tight, &[probe]);
    assert_eq!(p.exact_flows, 1);
    assert!(!p
        .rules
        .iter()
        .any(|r| matches!(r.role, Role::Decide { .. })));
}

/// A workload owning a range overlapping another's address: the domain the
/// program names for an address is the first owning it, as a scan in order finds.
#[test]
fn test_domain_of_follows_domain_order_with_overlapping_ranges() {
    use capo_policy::{WorkloadEndpoint, WorkloadKey};
    let (mut s, _) = state_with(vec![]);
    let key = |w: &str| WorkloadKey {
        orchestrator: "k8s".into(),
        workload: w.into(),
        endpoint: "eth0".into(),
    };
    let a = s.workloads().get(&key("ns/a")).cloned().unwrap();
    let wide = WorkloadEndpoint {
        name: "cali2".into(),
        ipv4_nets: vec![net("10.244.0.0/30")],
        ..WorkloadEndpoint::clone(&a)
    };
    s.apply(Update::WorkloadUpdate(key("ns/b"), wide.into()))
        .unwrap();
    let host: IpAddr = "10.244.0.1".parse().unwrap();
    let other: IpAddr = "10.244.0.2".parse().unwrap();
    let outside: IpAddr = "10.244.0.9".parse().unwrap();
    let domain_named = |s: &State, addr: &IpAddr| {
        let mut ids = IdTable::default();
        ids.sync(s);
        let program = lower(s, &ids, 1);
        let scan = program.domains.iter().position(|d| d.dst.contains(addr));
        let found = program.domain_of(addr);
        assert_eq!(found, scan, "{addr}");
        found.map(|d| program.domains[d].workload.workload.clone())
    };
    // The host's domain first, then the wide one.
    assert_eq!(domain_named(&s, &host).as_deref(), Some("ns/a"));
    assert_eq!(domain_named(&s, &other).as_deref(), Some("ns/b"));
    assert_eq!(domain_named(&s, &outside), None);
    // The wide domain first: it owns the host's address too.
    s.apply(Update::WorkloadRemove(key("ns/a"))).unwrap();
    s.apply(Update::WorkloadUpdate(key("ns/a"), a)).unwrap();
    assert_eq!(domain_named(&s, &host).as_deref(), Some("ns/b"));
}
