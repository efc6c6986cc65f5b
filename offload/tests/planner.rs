//! Named planner cases: TCP denies go down SYN-only, allows stay in software without
//! groups, an earlier `pass` rule is covered by a punt, priorities are layered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::net::{IpAddr, Ipv4Addr};

use capo_offload::flow::{Item, TCP_ACK, TCP_SYN};
use capo_offload::plan::{
    plan, FlowSample, HitCounters, KeepReason, OffloadPlan, PlanConfig, Role,
};
use capo_offload::verdict::{Fragment, Probe};
use capo_offload::{lower, NicCaps, OffloadMode};
use capo_policy::eval::L4;
use capo_policy::{
    Action, Cidr, FelixConfig, HostMetadata, IdTable, Packet, Policy, PolicyKey, PortRange,
    Protocol, Rule, State, TierDefault, TierInfo, Update, WorkloadEndpoint, WorkloadKey,
};

fn state_with(rules: Vec<Rule>) -> (State, IdTable) {
    let mut s = State::new();
    s.apply(Update::Config(FelixConfig {
        hostname: "n".into(),
        ..FelixConfig::default()
    }))
    .unwrap();
    s.apply(Update::HostMetadataUpdate(
        "n".into(),
        HostMetadata {
            ipv4: Some("192.168.100.1".parse().unwrap()),
            ipv6: None,
        },
    ))
    .unwrap();
    let key = PolicyKey {
        kind: "NetworkPolicy".into(),
        namespace: "ns".into(),
        name: "p".into(),
    };
    s.apply(Update::PolicyUpdate(
        key.clone(),
        Policy {
            inbound: rules,
            outbound: vec![],
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        },
    ))
    .unwrap();
    s.apply(Update::WorkloadUpdate(
        WorkloadKey {
            orchestrator: "k8s".into(),
            workload: "ns/a".into(),
            endpoint: "eth0".into(),
        },
        WorkloadEndpoint {
            name: "cali1".into(),
            profile_ids: vec![],
            ipv4_nets: vec!["10.244.0.1/32".parse().unwrap()],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "default".into(),
                ingress: vec![key.clone()],
                egress: vec![key],
                default_action: TierDefault::Deny,
            }],
        },
    ))
    .unwrap();
    let mut ids = IdTable::default();
    ids.sync(&s);
    (s, ids)
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
        rules: Default::default(),
    }
}

fn planned(rules: Vec<Rule>, caps: &NicCaps, probes: &[Probe]) -> OffloadPlan {
    let (s, ids) = state_with(rules);
    let program = lower(&s, &ids, 1);
    plan(&s, &program, caps, &hits(probes), &PlanConfig::default())
}

fn net(s: &str) -> Cidr {
    s.parse().unwrap()
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
        },
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
