//! Test fixtures shared by the planner's stages, capo-offload's integration tests and
//! the hardware tests (feature `testutils`): one workload with one policy, lowered, and
//! flow samples towards it.
#![allow(clippy::unwrap_used)] // fixtures: a failure is a broken fixture

use std::net::{IpAddr, Ipv4Addr};

use capo_policy::eval::L4;
use capo_policy::{
    Action, Cidr, FelixConfig, HostMetadata, IdTable, Packet, Policy, PolicyKey, PortRange,
    Profile, Protocol, Rule, State, TierDefault, TierInfo, Update, WorkloadEndpoint, WorkloadKey,
};

use crate::flow::TCP_SYN;
use crate::lower::{lower, OffloadProgram};
use crate::plan::FlowSample;

/// Random test inputs from a seed: splitmix64 (`rand_xoshiro`), one reproducible run
/// per seed (`Rng::seed_from_u64`).
pub type Rng = rand_xoshiro::SplitMix64;

/// Uniform draws below a bound (0 when the bound is 0).
pub trait Below {
    /// A draw in `0..n`, or 0 when `n` is 0.
    fn below(&mut self, n: u64) -> u64;
}

impl Below for Rng {
    fn below(&mut self, n: u64) -> u64 {
        use rand::RngExt as _;
        if n == 0 {
            0
        } else {
            self.random_range(0..n)
        }
    }
}

/// `s` as a CIDR.
pub fn net(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// Allows TCP to port `port` from `src`.
pub fn allow_tcp(src: &str, port: u16) -> Rule {
    let mut r = Rule::any(Action::Allow);
    r.protocol = Some(Protocol::TCP);
    r.src.nets.push(net(src));
    r.dst.ports.push(PortRange::single(port));
    r
}

/// One workload `ns/a` (`cali1`, `10.244.0.1`) on node `n` (host `192.168.100.1`), with
/// one policy (`inbound`, `outbound`) in the default tier (default deny) and, when
/// given, a profile with these egress rules.
pub fn one_workload(
    inbound: Vec<Rule>,
    outbound: Vec<Rule>,
    profile_egress: Option<Vec<Rule>>,
) -> (State, IdTable) {
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
            inbound,
            outbound,
            untracked: false,
            pre_dnat: false,
            tier: "default".into(),
        }
        .into(),
    ))
    .unwrap();
    let profile_ids = match profile_egress {
        Some(outbound) => {
            s.apply(Update::ProfileUpdate(
                "kns.ns".into(),
                Profile {
                    inbound: vec![],
                    outbound,
                }
                .into(),
            ))
            .unwrap();
            vec!["kns.ns".to_string()]
        }
        None => vec![],
    };
    s.apply(Update::WorkloadUpdate(
        WorkloadKey {
            orchestrator: "k8s".into(),
            workload: "ns/a".into(),
            endpoint: "eth0".into(),
        },
        WorkloadEndpoint {
            name: "cali1".into(),
            profile_ids,
            ipv4_nets: vec!["10.244.0.1/32".parse().unwrap()],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "default".into(),
                ingress: vec![key.clone()],
                egress: vec![key],
                default_action: TierDefault::Deny,
            }],
        }
        .into(),
    ))
    .unwrap();
    let mut ids = IdTable::default();
    ids.sync(&s);
    (s, ids)
}

/// [`one_workload`] with these ingress and egress rules, and its program (generation 1).
pub fn program(inbound: Vec<Rule>, outbound: Vec<Rule>) -> (State, OffloadProgram) {
    let (s, ids) = one_workload(inbound, outbound, None);
    let program = lower(&s, &ids, 1);
    (s, program)
}

fn sample(src: [u8; 4], protocol: Protocol, dport: u16, hits: u64) -> FlowSample {
    FlowSample {
        packet: Packet {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: "10.244.0.1".parse().unwrap(),
            protocol,
            l4: L4::Ports {
                src: 40000,
                dst: dport,
            },
        },
        tcp_flags: (protocol == Protocol::TCP).then_some(TCP_SYN),
        hits,
    }
}

/// A TCP connection attempt to the workload.
pub fn tcp_sample(src: [u8; 4], dport: u16, hits: u64) -> FlowSample {
    sample(src, Protocol::TCP, dport, hits)
}

/// A UDP flow to the workload.
pub fn udp_sample(src: [u8; 4], dport: u16, hits: u64) -> FlowSample {
    sample(src, Protocol::UDP, dport, hits)
}

/// Whether every decision installed on `nic` (outside the root group) has, in one of
/// `plans` that holds it, the fixed punts and every rule it relies on installed at a
/// higher priority: what makes any state of a commit in place safe, whatever packets
/// arrive. The error names the first decision that has not.
pub fn decisions_protected(
    nic: &crate::sim::SimNic,
    plans: &[&crate::plan::OffloadPlan],
) -> Result<(), String> {
    use crate::flow::{Attr, FlowRule, Group};
    use crate::plan::{PlannedRule, Role};
    let installed: Vec<FlowRule> = nic
        .rules()
        .filter(|(_, r)| r.attr().group != Group::ROOT)
        .map(|(_, r)| {
            r.with_attr(Attr {
                group: Group(0),
                ..*r.attr()
            })
        })
        .collect();
    let has = |r: &FlowRule| installed.contains(r);
    for rule in &installed {
        let holders: Vec<(&crate::plan::OffloadPlan, &PlannedRule)> = plans
            .iter()
            .flat_map(|p| {
                p.rules
                    .iter()
                    .filter(|pr| &pr.flow == rule)
                    .map(move |pr| (*p, pr))
            })
            .collect();
        if !holders
            .iter()
            .any(|(_, pr)| matches!(pr.role, Role::Decide { .. }))
        {
            continue;
        }
        let protected = holders.iter().any(|(p, pr)| {
            let punts_in = p
                .rules
                .iter()
                .all(|x| !matches!(x.role, Role::FragmentPunt | Role::SourcePunt) || has(&x.flow));
            punts_in
                && pr.relies_on.iter().all(|&d| {
                    p.rules.get(d).is_some_and(|dep| {
                        has(&dep.flow) && dep.flow.attr().priority < pr.flow.attr().priority
                    })
                })
        });
        if !protected {
            return Err(format!("{rule:?} is installed without what it relies on"));
        }
    }
    Ok(())
}
