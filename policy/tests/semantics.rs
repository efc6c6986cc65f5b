//! The semantic matrix of DESIGN.md §3: one named test per point of Felix's policy
//! semantics, each building a small [`State`] through [`State::apply`] and checking
//! both the verdict and what decided it, through the reference evaluator.
//!
//! Match-level points (ICMP, families, sets, ports, negations) go through the whole
//! evaluator with [`probe`]: the rule under test sits in front of a deny-all rule, so
//! "rule 0 allowed" means it matched and "rule 1 denied" means it did not.
//!
//! Statefulness (§3.7) is not the evaluator's job (it decides single packets) and is
//! not tested here.

// Test helpers outside `#[test]` functions: a malformed fixture should fail loudly.
#![allow(clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use capo_policy::config::{parse_failsafe_ports, EndpointToHostAction};
use capo_policy::eval::{
    evaluate_forward, evaluate_host, evaluate_workload, rule_matches, trace, CheckPoint, Decider,
    InternalPolicy, Outcome, Packet, Verdict, L4,
};
use capo_policy::{
    Action, Cidr, Direction, FelixConfig, HostEndpoint, HostEndpointKey, HostMetadata, IcmpMatch,
    IpFamily, IpSetId, IpSetKind, Member, Policy, PolicyKey, PortRange, Profile, Protocol, Rule,
    State, TierDefault, TierInfo, Update, WorkloadEndpoint, WorkloadKey,
};
use proptest::prelude::*;

use Direction::{Egress, Ingress};
use Verdict::{Allow, Deny};

// ---------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("test CIDR")
}

fn range(first: u16, last: u16) -> PortRange {
    PortRange::new(first.into(), last.into()).expect("test port range")
}

fn set_id(s: &str) -> IpSetId {
    IpSetId::new(s).expect("test set id")
}

/// A `GlobalNetworkPolicy` key (v3.32+ form).
fn gnp(name: &str) -> PolicyKey {
    PolicyKey {
        kind: "GlobalNetworkPolicy".into(),
        namespace: Default::default(),
        name: name.into(),
    }
}

/// A `StagedGlobalNetworkPolicy` key.
fn staged(name: &str) -> PolicyKey {
    PolicyKey {
        kind: "StagedGlobalNetworkPolicy".into(),
        namespace: Default::default(),
        name: name.into(),
    }
}

/// Chainable edits on a [`Rule`].
trait RuleExt: Sized {
    fn with(self, f: impl FnOnce(&mut Rule)) -> Self;
    fn proto(self, p: Protocol) -> Self {
        self.with(|r| r.protocol = Some(p))
    }
    fn dport(self, port: u16) -> Self {
        self.with(|r| r.dst.ports.push(PortRange::single(port)))
    }
    fn tcp_dport(self, port: u16) -> Self {
        self.proto(Protocol::TCP).dport(port)
    }
}

impl RuleExt for Rule {
    fn with(mut self, f: impl FnOnce(&mut Rule)) -> Self {
        f(&mut self);
        self
    }
}

fn allow() -> Rule {
    Rule::any(Action::Allow)
}
fn deny() -> Rule {
    Rule::any(Action::Deny)
}
fn log() -> Rule {
    Rule::any(Action::Log)
}
fn pass() -> Rule {
    Rule::any(Action::Pass)
}

fn tier(name: &str, ingress: &[&PolicyKey], egress: &[&PolicyKey]) -> TierInfo {
    TierInfo {
        name: name.into(),
        ingress: ingress.iter().map(|k| (*k).clone()).collect(),
        egress: egress.iter().map(|k| (*k).clone()).collect(),
        default_action: TierDefault::Deny,
    }
}

fn pass_tier(name: &str, ingress: &[&PolicyKey], egress: &[&PolicyKey]) -> TierInfo {
    TierInfo {
        default_action: TierDefault::Pass,
        ..tier(name, ingress, egress)
    }
}

fn hep(name: &str) -> HostEndpoint {
    HostEndpoint {
        name: name.into(),
        profile_ids: vec![],
        tiers: vec![],
        untracked_tiers: vec![],
        pre_dnat_tiers: vec![],
        forward_tiers: vec![],
        expected_addrs: vec![],
    }
}

const NODE: &str = "node-a";
const NODE_V4: &str = "192.168.0.10";
const NODE_V6: &str = "fd00:ff::10";

/// A state under construction; every update must be accepted.
#[derive(Clone)]
struct World {
    state: State,
}

impl World {
    fn new() -> Self {
        World {
            state: State::new(),
        }
    }

    fn apply(&mut self, update: Update) {
        if let Err(e) = self.state.apply(update) {
            panic!("update rejected: {e}");
        }
    }

    fn set(&mut self, id: &str, kind: IpSetKind, members: &[&str]) -> IpSetId {
        let id = set_id(id);
        let members = members
            .iter()
            .map(|m| m.parse::<Member>().expect("test member"))
            .collect();
        self.apply(Update::IpSetReplace {
            id: id.clone(),
            kind,
            members,
        });
        id
    }

    fn policy(&mut self, key: &PolicyKey, tier: &str, inbound: Vec<Rule>, outbound: Vec<Rule>) {
        self.policy_with(key, tier, inbound, outbound, |_| {});
    }

    fn policy_with(
        &mut self,
        key: &PolicyKey,
        tier: &str,
        inbound: Vec<Rule>,
        outbound: Vec<Rule>,
        f: impl FnOnce(&mut Policy),
    ) {
        let mut p = Policy {
            inbound,
            outbound,
            untracked: false,
            pre_dnat: false,
            tier: tier.into(),
        };
        f(&mut p);
        self.apply(Update::PolicyUpdate(key.clone(), p.into()));
    }

    fn profile(&mut self, name: &str, inbound: Vec<Rule>, outbound: Vec<Rule>) {
        self.apply(Update::ProfileUpdate(
            name.into(),
            Profile { inbound, outbound }.into(),
        ));
    }

    fn workload(
        &mut self,
        pod: &str,
        addrs: &[&str],
        tiers: Vec<TierInfo>,
        profiles: &[&str],
    ) -> WorkloadKey {
        let key = WorkloadKey {
            orchestrator: "k8s".into(),
            workload: format!("ns/{pod}"),
            endpoint: "eth0".into(),
        };
        let nets: Vec<Cidr> = addrs.iter().map(|a| cidr(a)).collect();
        let wep = WorkloadEndpoint {
            name: format!("tun-{pod}"),
            profile_ids: profiles.iter().map(|p| p.to_string()).collect(),
            ipv4_nets: nets.iter().copied().filter(Cidr::is_ipv4).collect(),
            ipv6_nets: nets.iter().copied().filter(|c| !c.is_ipv4()).collect(),
            tiers,
        };
        self.apply(Update::WorkloadUpdate(key.clone(), wep.into()));
        key
    }

    fn host_endpoint(&mut self, id: &str, hep: HostEndpoint) -> HostEndpointKey {
        let key = HostEndpointKey(id.into());
        self.apply(Update::HostEndpointUpdate(key.clone(), hep));
        key
    }

    fn config(&mut self, f: impl FnOnce(&mut FelixConfig)) {
        let mut cfg = self.state.config().clone();
        cfg.hostname = NODE.into();
        f(&mut cfg);
        self.apply(Update::Config(cfg));
    }

    /// Names this node and gives it its addresses.
    fn node(&mut self) {
        self.config(|_| {});
        self.apply(Update::HostMetadataUpdate(
            NODE.into(),
            HostMetadata {
                ipv4: Some(ip(NODE_V4)),
                ipv6: Some(ip(NODE_V6)),
            },
        ));
    }

    fn wl(&self, key: &WorkloadKey, dir: Direction, pkt: &Packet) -> Outcome {
        evaluate_workload(&self.state, key, dir, pkt).expect("known workload")
    }

    fn host(&self, dir: Direction, pkt: &Packet) -> Outcome {
        evaluate_host(&self.state, dir, pkt)
    }

    fn fwd(&self, key: &HostEndpointKey, dir: Direction, pkt: &Packet) -> Outcome {
        let hep = self
            .state
            .host_endpoints()
            .get(key)
            .expect("a host endpoint the world holds");
        evaluate_forward(&self.state, hep, dir, pkt)
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        protocol: Protocol::TCP,
        l4: L4::Ports {
            src: sport,
            dst: dport,
        },
    }
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet {
        protocol: Protocol::UDP,
        ..tcp(src, dst, sport, dport)
    }
}

fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Packet {
    let src = ip(src);
    Packet {
        src,
        dst: ip(dst),
        protocol: if src.is_ipv4() {
            Protocol::ICMP
        } else {
            Protocol::ICMPV6
        },
        l4: L4::Icmp { icmp_type, code },
    }
}

/// A non-first fragment: the IP header only.
fn fragment(src: &str, dst: &str, protocol: Protocol) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        protocol,
        l4: L4::None,
    }
}

// Deciders.

fn by_rule(tier: &str, policy: &PolicyKey, direction: Direction, index: usize) -> Decider {
    Decider::PolicyRule {
        tier: tier.into(),
        policy: policy.clone(),
        direction,
        index,
    }
}

fn by_profile(profile: &str, direction: Direction, index: usize) -> Decider {
    Decider::ProfileRule {
        profile: profile.into(),
        direction,
        index,
    }
}

fn end_of_tier(tier: &str) -> Decider {
    Decider::EndOfTier { tier: tier.into() }
}

fn internal(policy: InternalPolicy, index: usize) -> Decider {
    Decider::Internal { policy, index }
}

#[track_caller]
fn expect(outcome: &Outcome, verdict: Verdict, decider: Decider) {
    assert_eq!(
        (outcome.verdict, &outcome.decider),
        (verdict, &decider),
        "full outcome: {outcome:?}"
    );
}

/// Whether `rule` matches `pkt`, found through the whole workload evaluator: the rule
/// (made an allow) is rule 0 of the only policy, a deny-all is rule 1. Both the verdict
/// and the decider are checked.
#[track_caller]
fn probe(world: &World, rule: Rule, pkt: &Packet) -> bool {
    let mut w = world.clone();
    let key = gnp("under-test");
    w.policy(
        &key,
        "t",
        vec![rule.with(|r| r.action = Action::Allow), deny()],
        vec![],
    );
    let wep = w.workload(
        "probe",
        &["10.255.0.1/32"],
        vec![tier("t", &[&key], &[])],
        &[],
    );
    let o = w.wl(&wep, Ingress, pkt);
    match o.verdict {
        Allow => {
            expect(&o, Allow, by_rule("t", &key, Ingress, 0));
            true
        }
        Deny => {
            expect(&o, Deny, by_rule("t", &key, Ingress, 1));
            false
        }
    }
}

const A: &str = "10.0.0.5";
const B: &str = "10.65.0.2";

// ---------------------------------------------------------------------------------
// §3.1 – §3.3: tiers, policies, rules, profiles
// ---------------------------------------------------------------------------------

#[test]
fn tiers_apply_in_endpoint_order_and_the_first_deciding_tier_wins() {
    let mut w = World::new();
    let (p_first, p_second) = (gnp("first"), gnp("second"));
    // Arrival order is the reverse of the endpoint's tier order: only the latter counts.
    w.policy(&p_second, "second", vec![allow()], vec![]);
    w.policy(
        &p_first,
        "first",
        vec![deny().tcp_dport(23), allow().tcp_dport(80), pass()],
        vec![],
    );
    w.policy(&gnp("last"), "last", vec![deny()], vec![]);
    let tiers = vec![
        tier("first", &[&p_first], &[]),
        tier("second", &[&p_second], &[]),
        tier("last", &[&gnp("last")], &[]),
    ];
    let wep = w.workload("b", &["10.65.0.2/32"], tiers, &[]);

    // First tier's allow wins over a later tier's deny.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1000, 80)),
        Allow,
        by_rule("first", &p_first, Ingress, 1),
    );
    // First tier's deny wins over a later tier's allow.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1000, 23)),
        Deny,
        by_rule("first", &p_first, Ingress, 0),
    );
    // Only when the first tier passes does the second decide.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1000, 443)),
        Allow,
        by_rule("second", &p_second, Ingress, 0),
    );
}

#[test]
fn policies_in_order_within_a_tier_and_rules_in_order_within_a_policy() {
    let mut w = World::new();
    let (p1, p2) = (gnp("p1"), gnp("p2"));
    // p1: its first matching rule decides; a packet no rule matches goes to p2.
    w.policy(
        &p1,
        "t",
        vec![allow().tcp_dport(80), deny().proto(Protocol::TCP), allow()],
        vec![],
    );
    w.policy(&p2, "t", vec![deny()], vec![]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![tier("t", &[&p1, &p2], &[])],
        &[],
    );

    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_rule("t", &p1, Ingress, 0),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        by_rule("t", &p1, Ingress, 1),
    );
    expect(
        &w.wl(&wep, Ingress, &udp(A, B, 1, 81)),
        Allow,
        by_rule("t", &p1, Ingress, 2),
    );

    // Same policies, other order: p2 decides first.
    let wep2 = w.workload(
        "c",
        &["10.65.0.3/32"],
        vec![tier("t", &[&p2, &p1], &[])],
        &[],
    );
    expect(
        &w.wl(&wep2, Ingress, &tcp(A, B, 1, 80)),
        Deny,
        by_rule("t", &p2, Ingress, 0),
    );
}

#[test]
fn pass_leaves_the_tier_and_the_next_tier_still_applies() {
    let mut w = World::new();
    let (p1, p1b, p2) = (gnp("p1"), gnp("p1b"), gnp("p2"));
    w.policy(&p1, "t1", vec![pass().proto(Protocol::TCP)], vec![]);
    w.policy(&p1b, "t1", vec![allow()], vec![]);
    w.policy(&p2, "t2", vec![deny().tcp_dport(80)], vec![]);
    w.profile("allow-all", vec![allow()], vec![allow()]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![tier("t1", &[&p1, &p1b], &[]), tier("t2", &[&p2], &[])],
        &["allow-all"],
    );

    // pass skips p1b (same tier) but not t2, nor t2's end-of-tier drop: it does not
    // jump straight to the profiles, which would allow.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Deny,
        by_rule("t2", &p2, Ingress, 0),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        end_of_tier("t2"),
    );
    // Not passed: p1b decides within t1.
    expect(
        &w.wl(&wep, Ingress, &udp(A, B, 1, 81)),
        Allow,
        by_rule("t1", &p1b, Ingress, 0),
    );

    // A pass in the last tier reaches the profiles.
    let wep2 = w.workload(
        "c",
        &["10.65.0.3/32"],
        vec![tier("t1", &[&p1], &[])],
        &["allow-all"],
    );
    expect(
        &w.wl(&wep2, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_profile("allow-all", Ingress, 0),
    );
}

#[test]
fn end_of_tier_drops_when_no_policy_decides_and_profiles_are_not_reached() {
    let mut w = World::new();
    let (p1, p2) = (gnp("p1"), gnp("p2"));
    w.policy(&p1, "t1", vec![allow().tcp_dport(80)], vec![]);
    w.policy(&p2, "t2", vec![allow()], vec![]);
    w.profile("allow-all", vec![allow()], vec![allow()]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![tier("t1", &[&p1], &[]), tier("t2", &[&p2], &[])],
        &["allow-all"],
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        end_of_tier("t1"),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_rule("t1", &p1, Ingress, 0),
    );
    // A policy that applies to the direction but has no rules for it also ends in a drop.
    let p3 = gnp("p3");
    w.policy(&p3, "t3", vec![], vec![allow()]);
    let wep2 = w.workload(
        "c",
        &["10.65.0.3/32"],
        vec![tier("t3", &[&p3], &[])],
        &["allow-all"],
    );
    expect(
        &w.wl(&wep2, Ingress, &tcp(A, B, 1, 80)),
        Deny,
        end_of_tier("t3"),
    );
}

#[test]
fn tier_default_action_pass_continues_with_the_next_tier_or_the_profiles() {
    let mut w = World::new();
    let (p1, p2) = (gnp("p1"), gnp("p2"));
    w.policy(&p1, "t1", vec![deny().tcp_dport(23)], vec![]);
    w.policy(&p2, "t2", vec![allow().tcp_dport(80)], vec![]);
    w.profile("allow-all", vec![allow()], vec![allow()]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![pass_tier("t1", &[&p1], &[]), tier("t2", &[&p2], &[])],
        &["allow-all"],
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_rule("t2", &p2, Ingress, 0),
    );
    // The default action only applies when nothing decided.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 23)),
        Deny,
        by_rule("t1", &p1, Ingress, 0),
    );
    // The next tier keeps its own default (Deny).
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        end_of_tier("t2"),
    );

    let wep2 = w.workload(
        "c",
        &["10.65.0.3/32"],
        vec![pass_tier("t1", &[&p1], &[])],
        &["allow-all"],
    );
    expect(
        &w.wl(&wep2, Ingress, &tcp(A, B, 1, 81)),
        Allow,
        by_profile("allow-all", Ingress, 0),
    );
}

#[test]
fn staged_policies_are_never_enforced_and_a_staged_only_tier_has_no_end_of_tier_drop() {
    let mut w = World::new();
    let (s_deny, s_allow, s_log, p) = (
        staged("deny-all"),
        staged("allow-all"),
        staged("log"),
        gnp("p"),
    );
    let v331 = PolicyKey {
        kind: Default::default(),
        namespace: Default::default(),
        name: "staged:legacy-deny".into(),
    };
    w.policy(&s_deny, "t", vec![deny()], vec![]);
    w.policy(&s_allow, "t", vec![allow()], vec![]);
    w.policy(&s_log, "t", vec![log()], vec![]);
    w.policy(&v331, "t", vec![deny()], vec![]);
    w.policy(&p, "t", vec![allow().tcp_dport(80)], vec![]);
    w.profile("allow-all", vec![allow()], vec![allow()]);

    // Only staged policies: the staged deny does not drop, no end-of-tier drop, the
    // staged log is not recorded, and the profiles decide.
    let only_staged = tier("t", &[&s_log, &s_deny, &v331], &[]);
    let wep = w.workload("b", &["10.65.0.2/32"], vec![only_staged], &["allow-all"]);
    let o = w.wl(&wep, Ingress, &tcp(A, B, 1, 81));
    expect(&o, Allow, by_profile("allow-all", Ingress, 0));
    assert!(
        o.logged.is_empty(),
        "staged log rules are not enforced: {o:?}"
    );

    // A staged allow does not rescue a packet from an enforced policy's tier.
    let mixed = tier("t", &[&s_allow, &p], &[]);
    let wep2 = w.workload("c", &["10.65.0.3/32"], vec![mixed], &["allow-all"]);
    expect(
        &w.wl(&wep2, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        end_of_tier("t"),
    );
    // …and a staged deny in front of an enforced allow does not drop.
    let mixed = tier("t", &[&s_deny, &p], &[]);
    let wep3 = w.workload("d", &["10.65.0.4/32"], vec![mixed], &["allow-all"]);
    expect(
        &w.wl(&wep3, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_rule("t", &p, Ingress, 0),
    );
}

#[test]
fn log_records_and_carries_on_with_the_next_rule_of_the_same_policy() {
    let mut w = World::new();
    let (pa, pb) = (gnp("a"), gnp("b"));
    // The C plugin abandoned the policy after a log rule; Felix carries on.
    w.policy(
        &pa,
        "t",
        vec![log(), deny().tcp_dport(23), log().tcp_dport(80)],
        vec![],
    );
    w.policy(&pb, "t", vec![allow().proto(Protocol::TCP)], vec![]);
    w.profile("logged", vec![log(), allow()], vec![]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![tier("t", &[&pa, &pb], &[])],
        &[],
    );

    let o = w.wl(&wep, Ingress, &tcp(A, B, 1, 23));
    expect(&o, Deny, by_rule("t", &pa, Ingress, 1));
    assert_eq!(o.logged, vec![by_rule("t", &pa, Ingress, 0)]);

    let o = w.wl(&wep, Ingress, &tcp(A, B, 1, 80));
    expect(&o, Allow, by_rule("t", &pb, Ingress, 0));
    assert_eq!(
        o.logged,
        vec![by_rule("t", &pa, Ingress, 0), by_rule("t", &pa, Ingress, 2)]
    );

    // Logged rules survive an end-of-tier drop.
    let o = w.wl(&wep, Ingress, &udp(A, B, 1, 80));
    expect(&o, Deny, end_of_tier("t"));
    assert_eq!(o.logged, vec![by_rule("t", &pa, Ingress, 0)]);

    // Profiles log and carry on too.
    let wep2 = w.workload("c", &["10.65.0.3/32"], vec![], &["logged"]);
    let o = w.wl(&wep2, Ingress, &udp(A, B, 1, 80));
    expect(&o, Allow, by_profile("logged", Ingress, 1));
    assert_eq!(o.logged, vec![by_profile("logged", Ingress, 0)]);
}

#[test]
fn profiles_decide_in_order_with_allow_or_deny() {
    let mut w = World::new();
    // p1: deny telnet; a pass ends p1 (not the profile walk); p2 allows everything.
    w.profile(
        "p1",
        vec![
            deny().tcp_dport(23),
            pass().tcp_dport(24),
            deny().tcp_dport(24),
        ],
        vec![],
    );
    w.profile("p2", vec![allow()], vec![]);
    let p = gnp("p");
    w.policy(&p, "t", vec![pass()], vec![]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32"],
        vec![tier("t", &[&p], &[])],
        &["p1", "p2"],
    );

    // Reached after every tier passed.
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 23)),
        Deny,
        by_profile("p1", Ingress, 0),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_profile("p2", Ingress, 0),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 24)),
        Allow,
        by_profile("p2", Ingress, 0),
    );
}

#[test]
fn no_profile_matched_drops() {
    let mut w = World::new();
    w.profile("web-only", vec![allow().tcp_dport(80)], vec![]);
    w.profile("empty", vec![], vec![]);
    let wep = w.workload("b", &["10.65.0.2/32"], vec![], &["web-only", "empty"]);
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 81)),
        Deny,
        Decider::NoProfileMatched,
    );
    expect(
        &w.wl(&wep, Egress, &tcp(B, A, 1, 80)),
        Deny,
        Decider::NoProfileMatched,
    );
    // No tiers and no profiles at all: drop.
    let bare = w.workload("c", &["10.65.0.3/32"], vec![], &[]);
    expect(
        &w.wl(&bare, Ingress, &tcp(A, B, 1, 80)),
        Deny,
        Decider::NoProfileMatched,
    );
}

#[test]
fn endpoint_without_tiers_for_the_direction_uses_its_profiles() {
    let mut w = World::new();
    w.profile("kns.ns", vec![allow()], vec![allow()]);
    let eg = gnp("egress-only");
    w.policy(&eg, "t", vec![], vec![deny()]);
    let plain = w.workload("b", &["10.65.0.2/32"], vec![], &["kns.ns"]);
    expect(
        &w.wl(&plain, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_profile("kns.ns", Ingress, 0),
    );
    expect(
        &w.wl(&plain, Egress, &tcp(B, A, 1, 80)),
        Allow,
        by_profile("kns.ns", Egress, 0),
    );

    // A tier with policies for egress only does not count for ingress.
    let wep = w.workload(
        "c",
        &["10.65.0.3/32"],
        vec![tier("t", &[], &[&eg])],
        &["kns.ns"],
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(A, B, 1, 80)),
        Allow,
        by_profile("kns.ns", Ingress, 0),
    );
    expect(
        &w.wl(&wep, Egress, &tcp(B, A, 1, 80)),
        Deny,
        by_rule("t", &eg, Egress, 0),
    );
}

// ---------------------------------------------------------------------------------
// §3.4 – §3.5: rule matching and IP sets
// ---------------------------------------------------------------------------------

#[test]
fn icmp_type_and_type_code_and_their_negations() {
    let w = World::new();
    let (s, d) = ("10.0.0.5", "10.65.0.2");
    let icmp_rule = |f: fn(&mut Rule)| allow().proto(Protocol::ICMP).with(f);

    let type8 = icmp_rule(|r| {
        r.icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: None,
        })
    });
    assert!(probe(&w, type8.clone(), &icmp(s, d, 8, 0)));
    assert!(probe(&w, type8.clone(), &icmp(s, d, 8, 5)));
    assert!(!probe(&w, type8.clone(), &icmp(s, d, 0, 0)));

    let t3c1 = icmp_rule(|r| {
        r.icmp = Some(IcmpMatch {
            icmp_type: 3,
            code: Some(1),
        })
    });
    assert!(probe(&w, t3c1.clone(), &icmp(s, d, 3, 1)));
    assert!(!probe(&w, t3c1.clone(), &icmp(s, d, 3, 0)));
    assert!(!probe(&w, t3c1, &icmp(s, d, 1, 3)));

    let not8 = icmp_rule(|r| {
        r.not_icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: None,
        })
    });
    assert!(!probe(&w, not8.clone(), &icmp(s, d, 8, 0)));
    assert!(!probe(&w, not8.clone(), &icmp(s, d, 8, 1)));
    assert!(probe(&w, not8, &icmp(s, d, 0, 0)));

    // NOT(type == 8 AND code == 0): type 8 code 1 still matches, as does type 0 code 0.
    let not80 = icmp_rule(|r| {
        r.not_icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: Some(0),
        })
    });
    assert!(!probe(&w, not80.clone(), &icmp(s, d, 8, 0)));
    assert!(probe(&w, not80.clone(), &icmp(s, d, 8, 1)));
    assert!(probe(&w, not80.clone(), &icmp(s, d, 0, 0)));

    // An ICMP rule never matches TCP, whatever the ports look like.
    assert!(!probe(&w, type8, &tcp(s, d, 8, 0)));
    assert!(!probe(&w, not80, &tcp(s, d, 8, 1)));
    let icmp_only = allow().proto(Protocol::ICMP);
    assert!(!probe(&w, icmp_only, &tcp(s, d, 1, 80)));

    // ICMPv6 works the same way on its own family.
    let v6_echo = allow().proto(Protocol::ICMPV6).with(|r| {
        r.icmp = Some(IcmpMatch {
            icmp_type: 128,
            code: Some(0),
        })
    });
    assert!(probe(
        &w,
        v6_echo.clone(),
        &icmp("fd00::5", "fd00::2", 128, 0)
    ));
    assert!(!probe(&w, v6_echo, &icmp("fd00::5", "fd00::2", 129, 0)));
}

#[test]
fn ip_version_restricts_the_family_explicitly_by_icmp_protocol_and_by_nets() {
    let w = World::new();
    let v4 = tcp("10.0.0.5", "10.65.0.2", 1, 80);
    let v6 = tcp("fd00::5", "fd00::2", 1, 80);

    let only_v4 = allow().with(|r| r.ip_version = Some(IpFamily::V4));
    assert!(probe(&w, only_v4.clone(), &v4));
    assert!(!probe(&w, only_v4, &v6));
    let only_v6 = allow().with(|r| r.ip_version = Some(IpFamily::V6));
    assert!(!probe(&w, only_v6.clone(), &v4));
    assert!(probe(&w, only_v6, &v6));

    // protocol icmp with no ip_version means IPv4 (Felix infers it), icmpv6 means IPv6,
    // even for a packet that carries the other number.
    let icmp4 = allow().proto(Protocol::ICMP);
    assert_eq!(icmp4.family(), Some(IpFamily::V4));
    assert!(probe(
        &w,
        icmp4.clone(),
        &icmp("10.0.0.5", "10.65.0.2", 8, 0)
    ));
    let odd_v6 = Packet {
        protocol: Protocol::ICMP,
        ..icmp("fd00::5", "fd00::2", 8, 0)
    };
    assert!(!probe(&w, icmp4, &odd_v6));
    let icmp6 = allow().proto(Protocol::ICMPV6);
    assert_eq!(icmp6.family(), Some(IpFamily::V6));
    let odd_v4 = Packet {
        protocol: Protocol::ICMPV6,
        ..icmp("10.0.0.5", "10.65.0.2", 128, 0)
    };
    assert!(!probe(&w, icmp6, &odd_v4));

    // Positive nets all of the other family: never matches that family.
    let v6_nets = allow().with(|r| r.src.nets = vec![cidr("fd00::/64"), cidr("::/0")]);
    assert!(!probe(&w, v6_nets.clone(), &v4));
    assert!(probe(&w, v6_nets, &v6));
    let v6_dst = allow().with(|r| r.dst.nets = vec![cidr("fd00::/64")]);
    assert!(!probe(&w, v6_dst, &v4));
    // Mixed positive nets: each family uses its own.
    let mixed = allow().with(|r| r.src.nets = vec![cidr("fd00::/64"), cidr("10.0.0.0/8")]);
    assert!(probe(&w, mixed.clone(), &v4));
    assert!(probe(&w, mixed, &v6));
    // Negated nets of the other family are vacuous.
    let not_v6 = allow().with(|r| r.src.not_nets = vec![cidr("::/0")]);
    assert!(probe(&w, not_v6.clone(), &v4));
    assert!(!probe(&w, not_v6, &v6));
}

#[test]
fn src_ip_sets_are_anded_and_each_not_set_is_a_separate_negative() {
    let mut w = World::new();
    let net = w.set("s:net", IpSetKind::Net, &["10.0.0.0/24"]);
    let pair = w.set("s:pair", IpSetKind::Net, &["10.0.0.5/32", "10.0.1.5/32"]);
    let c = w.set("s:c", IpSetKind::Net, &["10.0.0.7/32"]);
    let d = w.set("s:d", IpSetKind::Net, &["10.0.0.8/32"]);
    let to = "10.65.0.2";

    // The address must be in every listed set.
    let both = allow().with(|r| r.src.ip_sets = vec![net.clone(), pair.clone()]);
    assert!(probe(&w, both.clone(), &tcp("10.0.0.5", to, 1, 80)));
    assert!(
        !probe(&w, both.clone(), &tcp("10.0.0.6", to, 1, 80)),
        "only in s:net"
    );
    assert!(
        !probe(&w, both, &tcp("10.0.1.5", to, 1, 80)),
        "only in s:pair"
    );

    // Each negated set excludes on its own (not "not in all of them").
    let neither = allow().with(|r| r.src.not_ip_sets = vec![c.clone(), d.clone()]);
    assert!(!probe(&w, neither.clone(), &tcp("10.0.0.7", to, 1, 80)));
    assert!(!probe(&w, neither.clone(), &tcp("10.0.0.8", to, 1, 80)));
    assert!(probe(&w, neither, &tcp("10.0.0.9", to, 1, 80)));

    // Same on the destination side.
    let dst_both = allow().with(|r| r.dst.ip_sets = vec![net.clone(), pair.clone()]);
    assert!(probe(&w, dst_both.clone(), &tcp(to, "10.0.0.5", 1, 80)));
    assert!(!probe(&w, dst_both, &tcp(to, "10.0.0.6", 1, 80)));
    let dst_not = allow().with(|r| r.dst.not_ip_sets = vec![c, d]);
    assert!(!probe(&w, dst_not.clone(), &tcp(to, "10.0.0.8", 1, 80)));
    assert!(probe(&w, dst_not, &tcp(to, "10.0.0.9", 1, 80)));
}

#[test]
fn named_port_sets_are_ored_with_numeric_ports_and_can_be_negated() {
    let mut w = World::new();
    let http = w.set(
        "n:http",
        IpSetKind::IpAndPort,
        &["10.65.0.2,tcp:8080", "10.65.0.3,tcp:9090"],
    );
    let src = "10.0.0.5";

    let rule = allow().proto(Protocol::TCP).with(|r| {
        r.dst.ports = vec![PortRange::single(80)];
        r.dst.named_port_sets = vec![http.clone()];
    });
    assert!(
        probe(&w, rule.clone(), &tcp(src, "10.65.0.2", 1, 8080)),
        "named port"
    );
    assert!(
        probe(&w, rule.clone(), &tcp(src, "10.65.0.9", 1, 80)),
        "numeric port"
    );
    assert!(
        !probe(&w, rule.clone(), &tcp(src, "10.65.0.2", 1, 9090)),
        "named port of another pod"
    );
    assert!(
        !probe(&w, rule.clone(), &tcp(src, "10.65.0.9", 1, 8080)),
        "not a member address"
    );
    let any_proto = rule.with(|r| r.protocol = None);
    assert!(
        !probe(&w, any_proto, &udp(src, "10.65.0.2", 1, 8080)),
        "member is tcp only"
    );

    let only_named = allow()
        .proto(Protocol::TCP)
        .with(|r| r.dst.named_port_sets = vec![http.clone()]);
    assert!(probe(
        &w,
        only_named.clone(),
        &tcp(src, "10.65.0.3", 1, 9090)
    ));
    assert!(!probe(&w, only_named, &tcp(src, "10.65.0.3", 1, 80)));

    let not_named = allow()
        .proto(Protocol::TCP)
        .with(|r| r.dst.not_named_port_sets = vec![http.clone()]);
    assert!(!probe(
        &w,
        not_named.clone(),
        &tcp(src, "10.65.0.2", 1, 8080)
    ));
    assert!(probe(
        &w,
        not_named.clone(),
        &tcp(src, "10.65.0.2", 1, 8081)
    ));
    assert!(probe(&w, not_named, &tcp(src, "10.65.0.9", 1, 8080)));

    // Source side: (source address, protocol, source port).
    let src_named = allow()
        .proto(Protocol::TCP)
        .with(|r| r.src.named_port_sets = vec![http]);
    assert!(probe(
        &w,
        src_named.clone(),
        &tcp("10.65.0.2", "10.0.0.5", 8080, 1)
    ));
    assert!(!probe(
        &w,
        src_named,
        &tcp("10.65.0.2", "10.0.0.5", 1, 8080)
    ));
}

#[test]
fn service_sets_are_anded_with_the_rest_of_the_rule() {
    let mut w = World::new();
    let svc = w.set(
        "svc:dns",
        IpSetKind::IpAndPort,
        &[
            "10.96.0.10,udp:53",
            "10.96.0.10,tcp:53",
            "10.96.0.11,tcp:8000",
        ],
    );
    let src = "10.65.0.2";
    // Service match AND a numeric port range: both must hold.
    let rule = allow().with(|r| {
        r.dst_ip_port_sets = vec![svc.clone()];
        r.dst.ports = vec![range(50, 60)];
    });
    assert!(probe(&w, rule.clone(), &udp(src, "10.96.0.10", 1, 53)));
    assert!(probe(&w, rule.clone(), &tcp(src, "10.96.0.10", 1, 53)));
    assert!(
        !probe(&w, rule.clone(), &tcp(src, "10.96.0.11", 1, 8000)),
        "service yes, range no"
    );
    assert!(
        !probe(&w, rule.clone(), &tcp(src, "10.96.0.10", 1, 55)),
        "range yes, service no"
    );

    // AND-ed with protocol and nets too.
    let udp_only = rule.clone().proto(Protocol::UDP);
    assert!(!probe(&w, udp_only.clone(), &tcp(src, "10.96.0.10", 1, 53)));
    assert!(probe(&w, udp_only, &udp(src, "10.96.0.10", 1, 53)));
    let from_elsewhere = rule.with(|r| r.src.nets = vec![cidr("192.0.2.0/24")]);
    assert!(!probe(&w, from_elsewhere, &udp(src, "10.96.0.10", 1, 53)));

    // A service match needs a port: never matches ICMP.
    let svc_only = allow().with(|r| r.dst_ip_port_sets = vec![svc]);
    assert!(!probe(&w, svc_only, &icmp(src, "10.96.0.10", 8, 0)));
}

#[test]
fn negations_not_protocol_not_src_net_not_dst_ports() {
    let w = World::new();
    let to = "10.65.0.2";

    let not_tcp = allow().with(|r| r.not_protocol = Some(Protocol::TCP));
    assert!(!probe(&w, not_tcp.clone(), &tcp("10.0.0.5", to, 1, 80)));
    assert!(probe(&w, not_tcp.clone(), &udp("10.0.0.5", to, 1, 80)));
    assert!(probe(&w, not_tcp, &icmp("10.0.0.5", to, 8, 0)));

    let not_src = allow().with(|r| r.src.not_nets = vec![cidr("10.0.0.0/24"), cidr("10.2.0.0/16")]);
    assert!(!probe(&w, not_src.clone(), &tcp("10.0.0.5", to, 1, 80)));
    assert!(!probe(&w, not_src.clone(), &tcp("10.2.3.4", to, 1, 80)));
    assert!(probe(&w, not_src, &tcp("10.0.1.5", to, 1, 80)));

    let not_dports = allow()
        .proto(Protocol::TCP)
        .with(|r| r.dst.not_ports = vec![PortRange::single(80), range(8000, 8999)]);
    assert!(!probe(&w, not_dports.clone(), &tcp("10.0.0.5", to, 1, 80)));
    assert!(!probe(
        &w,
        not_dports.clone(),
        &tcp("10.0.0.5", to, 1, 8500)
    ));
    assert!(probe(&w, not_dports.clone(), &tcp("10.0.0.5", to, 1, 443)));
    // A negated port criterion still needs a port to look at.
    assert!(!probe(
        &w,
        not_dports.with(|r| r.protocol = None),
        &icmp("10.0.0.5", to, 8, 0)
    ));

    // Positive and negated criteria together: 10/8 but not 10.0.0.0/24, dst port 80.
    let combo = allow().tcp_dport(80).with(|r| {
        r.src.nets = vec![cidr("10.0.0.0/8")];
        r.src.not_nets = vec![cidr("10.0.0.0/24")];
    });
    assert!(probe(&w, combo.clone(), &tcp("10.9.9.9", to, 1, 80)));
    assert!(!probe(&w, combo.clone(), &tcp("10.0.0.9", to, 1, 80)));
    assert!(!probe(&w, combo, &tcp("10.9.9.9", to, 1, 81)));
}

#[test]
fn one_set_may_mix_ipv4_and_ipv6_members() {
    let mut w = World::new();
    let mixed = w.set(
        "s:mixed",
        IpSetKind::Net,
        &["10.0.0.1/32", "fd00::1/128", "10.1.0.0/16"],
    );
    let ports = w.set(
        "n:mixed",
        IpSetKind::IpAndPort,
        &["10.65.0.2,tcp:80", "fd00::2,tcp:80"],
    );

    let rule = allow().with(|r| r.src.ip_sets = vec![mixed.clone()]);
    assert!(probe(
        &w,
        rule.clone(),
        &tcp("10.0.0.1", "10.65.0.2", 1, 80)
    ));
    assert!(probe(
        &w,
        rule.clone(),
        &tcp("10.1.2.3", "10.65.0.2", 1, 80)
    ));
    assert!(probe(&w, rule.clone(), &tcp("fd00::1", "fd00::2", 1, 80)));
    assert!(!probe(
        &w,
        rule.clone(),
        &tcp("10.0.0.2", "10.65.0.2", 1, 80)
    ));
    assert!(!probe(&w, rule, &tcp("fd00::3", "fd00::2", 1, 80)));

    let named = allow()
        .proto(Protocol::TCP)
        .with(|r| r.dst.named_port_sets = vec![ports]);
    assert!(probe(
        &w,
        named.clone(),
        &tcp("10.0.0.1", "10.65.0.2", 1, 80)
    ));
    assert!(probe(&w, named.clone(), &tcp("fd00::1", "fd00::2", 1, 80)));
    assert!(!probe(&w, named, &tcp("fd00::1", "fd00::2", 1, 81)));

    // Bare-IP members (the IP set type) and CIDR members match alike.
    let bare = w.set("s:bare", IpSetKind::Ip, &["10.0.0.9", "fd00::9"]);
    let rule = allow().with(|r| r.src.ip_sets = vec![bare]);
    assert!(probe(
        &w,
        rule.clone(),
        &tcp("10.0.0.9", "10.65.0.2", 1, 80)
    ));
    assert!(probe(&w, rule, &tcp("fd00::9", "fd00::2", 1, 80)));
}

#[test]
fn non_first_fragments_match_only_rules_without_port_or_icmp_criteria() {
    let w = World::new();
    let frag = fragment("10.0.0.5", "10.65.0.2", Protocol::TCP);

    assert!(!probe(&w, allow().tcp_dport(80), &frag));
    assert!(!probe(
        &w,
        allow()
            .proto(Protocol::TCP)
            .with(|r| r.src.ports = vec![range(0, 65535)]),
        &frag
    ));
    assert!(!probe(
        &w,
        allow().with(|r| r.dst.not_ports = vec![PortRange::single(80)]),
        &frag
    ));
    assert!(probe(&w, allow().proto(Protocol::TCP), &frag));
    assert!(probe(
        &w,
        allow().with(|r| r.dst.nets = vec![cidr("10.65.0.0/16")]),
        &frag
    ));
    assert!(probe(&w, allow(), &frag));

    let icmp_frag = fragment("10.0.0.5", "10.65.0.2", Protocol::ICMP);
    let echo = allow().proto(Protocol::ICMP).with(|r| {
        r.icmp = Some(IcmpMatch {
            icmp_type: 8,
            code: None,
        })
    });
    assert!(!probe(&w, echo, &icmp_frag));
    assert!(probe(&w, allow().proto(Protocol::ICMP), &icmp_frag));
}

// ---------------------------------------------------------------------------------
// §3.6: host endpoints and CalicoVPP's internal policies
// ---------------------------------------------------------------------------------

/// A node with a `*` host endpoint whose ingress policy allows tcp/9000 only, whose
/// egress policy allows nothing, and one local workload.
fn host_world() -> (World, PolicyKey, WorkloadKey) {
    let mut w = World::new();
    w.node();
    let hp = gnp("host-policy");
    w.policy(
        &hp,
        "hep",
        vec![allow().tcp_dport(9000)],
        vec![deny().proto(Protocol::UDP)],
    );
    let mut all = hep("*");
    all.tiers = vec![tier("hep", &[&hp], &[&hp])];
    w.host_endpoint("all", all);
    w.profile("kns.ns", vec![allow()], vec![allow()]);
    let wep = w.workload("b", &["10.65.0.2/32"], vec![], &["kns.ns"]);
    (w, hp, wep)
}

const OUTSIDE: &str = "192.0.2.50";

#[test]
fn failsafe_inbound_port_is_allowed_even_when_host_endpoint_policy_denies() {
    let (mut w, hp, _) = host_world();
    // Felix defaults: inbound tcp:22 is entry 0, udp:68 entry 1.
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 40000, 22)),
        Allow,
        internal(InternalPolicy::Failsafe, 0),
    );
    expect(
        &w.host(Ingress, &udp(OUTSIDE, NODE_V4, 67, 68)),
        Allow,
        internal(InternalPolicy::Failsafe, 1),
    );
    expect(
        &w.host(Ingress, &tcp("fd00::50", NODE_V6, 40000, 22)),
        Allow,
        internal(InternalPolicy::Failsafe, 0),
    );
    // Not failsafe: the host endpoint's policy decides.
    expect(
        &w.host(Ingress, &udp(OUTSIDE, NODE_V4, 1, 22)),
        Deny,
        end_of_tier("hep"),
    );
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 23)),
        Deny,
        end_of_tier("hep"),
    );
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 9000)),
        Allow,
        by_rule("hep", &hp, Ingress, 0),
    );

    // A failsafe entry restricted to a source prefix.
    w.config(|c| {
        c.failsafe_inbound = parse_failsafe_ports("tcp:10.0.0.0/8:22").expect("failsafe list");
    });
    expect(
        &w.host(Ingress, &tcp("10.1.2.3", NODE_V4, 1, 22)),
        Allow,
        internal(InternalPolicy::Failsafe, 0),
    );
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 22)),
        Deny,
        end_of_tier("hep"),
    );
}

#[test]
fn failsafe_outbound_port_is_allowed_even_when_host_endpoint_policy_denies() {
    let (w, hp, _) = host_world();
    let n_in = w.state.config().failsafe_inbound.len();
    // Felix defaults: outbound udp:53 is entry 0, numbered after the inbound entries.
    expect(
        &w.host(Egress, &udp(NODE_V4, "8.8.8.8", 40000, 53)),
        Allow,
        internal(InternalPolicy::Failsafe, n_in),
    );
    expect(
        &w.host(Egress, &tcp(NODE_V4, OUTSIDE, 40000, 179)),
        Allow,
        internal(InternalPolicy::Failsafe, n_in + 2),
    );
    expect(
        &w.host(Egress, &udp(NODE_V4, OUTSIDE, 40000, 54)),
        Deny,
        by_rule("hep", &hp, Egress, 0),
    );
    expect(
        &w.host(Egress, &tcp(NODE_V4, OUTSIDE, 40000, 443)),
        Deny,
        end_of_tier("hep"),
    );
}

#[test]
fn default_endpoint_to_host_action_drop_accept_and_return() {
    let (mut w, hp, _) = host_world();
    let from_pod = |dport| tcp(B, NODE_V4, 40000, dport);

    // DROP (Felix's default), even on a failsafe port: it comes before failsafe.
    assert_eq!(
        w.state.config().endpoint_to_host,
        EndpointToHostAction::Drop
    );
    expect(
        &w.host(Ingress, &from_pod(9000)),
        Deny,
        internal(InternalPolicy::WorkloadsToHost, 0),
    );
    expect(
        &w.host(Ingress, &from_pod(22)),
        Deny,
        internal(InternalPolicy::WorkloadsToHost, 0),
    );

    w.config(|c| c.endpoint_to_host = EndpointToHostAction::Accept);
    expect(
        &w.host(Ingress, &from_pod(1234)),
        Allow,
        internal(InternalPolicy::WorkloadsToHost, 0),
    );

    // RETURN: the host endpoint's ingress policy (after failsafe) decides.
    w.config(|c| c.endpoint_to_host = EndpointToHostAction::Return);
    expect(
        &w.host(Ingress, &from_pod(9000)),
        Allow,
        by_rule("hep", &hp, Ingress, 0),
    );
    expect(&w.host(Ingress, &from_pod(1234)), Deny, end_of_tier("hep"));
    expect(
        &w.host(Ingress, &from_pod(22)),
        Allow,
        internal(InternalPolicy::Failsafe, 0),
    );

    // Not from a workload: the action does not apply.
    w.config(|c| c.endpoint_to_host = EndpointToHostAction::Drop);
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 9000)),
        Allow,
        by_rule("hep", &hp, Ingress, 0),
    );

    // Without any host endpoint, DROP still applies to workloads; RETURN finds no
    // policy and lets the packet through.
    let mut bare = World::new();
    bare.node();
    bare.profile("kns.ns", vec![allow()], vec![allow()]);
    bare.workload("b", &["10.65.0.2/32"], vec![], &["kns.ns"]);
    expect(
        &bare.host(Ingress, &from_pod(9000)),
        Deny,
        internal(InternalPolicy::WorkloadsToHost, 0),
    );
    bare.config(|c| c.endpoint_to_host = EndpointToHostAction::Return);
    expect(
        &bare.host(Ingress, &from_pod(9000)),
        Allow,
        Decider::NoHostEndpoint,
    );
}

#[test]
fn allow_from_host_reaches_a_workload_whose_ingress_policy_denies() {
    let mut w = World::new();
    w.node();
    let deny_all = gnp("deny-all");
    w.policy(&deny_all, "t", vec![deny()], vec![]);
    let mut eth0 = hep("eth0");
    eth0.expected_addrs = vec![ip("192.168.0.20")];
    let hp = gnp("hep-egress");
    w.policy(&hp, "hep", vec![], vec![deny()]);
    eth0.tiers = vec![tier("hep", &[], &[&hp])];
    w.host_endpoint("eth0", eth0);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32", "fd00:65::2/128"],
        vec![tier("t", &[&deny_all], &[])],
        &[],
    );

    let from_host = internal(InternalPolicy::AllowFromHost, 0);
    expect(
        &w.wl(&wep, Ingress, &tcp(NODE_V4, B, 1, 8080)),
        Allow,
        from_host.clone(),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp(NODE_V6, "fd00:65::2", 1, 8080)),
        Allow,
        from_host.clone(),
    );
    // A host endpoint's expected address is the node's too.
    expect(
        &w.wl(&wep, Ingress, &tcp("192.168.0.20", B, 1, 8080)),
        Allow,
        from_host,
    );
    expect(
        &w.wl(&wep, Ingress, &tcp("192.168.0.11", B, 1, 8080)),
        Deny,
        by_rule("t", &deny_all, Ingress, 0),
    );
    // Only ingress: the workload's egress to the node is its own policy's business.
    let plain = w.workload("c", &["10.65.0.3/32"], vec![], &[]);
    expect(
        &w.wl(&plain, Egress, &tcp("10.65.0.3", NODE_V4, 1, 80)),
        Deny,
        Decider::NoProfileMatched,
    );

    // On the host side, the host endpoint's egress policy does not stop host → pod.
    expect(
        &w.host(Egress, &tcp(NODE_V4, B, 1, 8080)),
        Allow,
        internal(InternalPolicy::AllowFromHost, 1),
    );
    expect(
        &w.host(Egress, &tcp(NODE_V4, OUTSIDE, 1, 8080)),
        Deny,
        by_rule("hep", &hp, Egress, 0),
    );

    // The whole path: host egress, then the pod's ingress.
    let t = trace(&w.state, &tcp(NODE_V4, B, 1, 8080));
    assert_eq!(t.verdict, Allow);
    assert_eq!(t.steps.len(), 2, "{t:?}");
    assert_eq!(t.steps[0].at, CheckPoint::Host { direction: Egress });
    assert_eq!(
        t.steps[1].outcome.decider,
        internal(InternalPolicy::AllowFromHost, 0)
    );
}

#[test]
fn host_traffic_without_a_host_endpoint_is_allowed() {
    let mut w = World::new();
    w.node();
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 4444)),
        Allow,
        Decider::NoHostEndpoint,
    );
    expect(
        &w.host(Egress, &tcp(NODE_V4, OUTSIDE, 1, 4444)),
        Allow,
        Decider::NoHostEndpoint,
    );
    let t = trace(&w.state, &tcp(OUTSIDE, NODE_V4, 1, 4444));
    assert_eq!(t.verdict, Allow);
    assert_eq!(t.steps[0].outcome.decider, Decider::NoHostEndpoint);
}

#[test]
fn host_endpoint_without_policy_or_profiles_drops_all_but_failsafe() {
    let mut w = World::new();
    w.node();
    w.host_endpoint("eth0", hep("eth0"));
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 4444)),
        Deny,
        Decider::NoProfileMatched,
    );
    expect(
        &w.host(Egress, &tcp(NODE_V4, OUTSIDE, 1, 4444)),
        Deny,
        Decider::NoProfileMatched,
    );
    expect(
        &w.host(Ingress, &tcp(OUTSIDE, NODE_V4, 1, 22)),
        Allow,
        internal(InternalPolicy::Failsafe, 0),
    );
}

#[test]
fn untracked_and_pre_dnat_tiers_have_no_end_of_tier_drop_and_no_profiles() {
    let mut w = World::new();
    w.node();
    let (u, p, n) = (gnp("untracked"), gnp("pre-dnat"), gnp("normal"));
    // Default actions deliberately Deny: these tiers still never drop at their end.
    w.policy_with(
        &u,
        "raw",
        vec![deny().tcp_dport(23), allow().tcp_dport(24)],
        vec![deny().with(|r| {
            r.protocol = Some(Protocol::UDP);
            r.dst.ports = vec![PortRange::single(9999)];
        })],
        |p| p.untracked = true,
    );
    w.policy_with(
        &p,
        "mangle",
        vec![deny().tcp_dport(25), allow().tcp_dport(26)],
        vec![deny()],
        |p| p.pre_dnat = true,
    );
    w.policy(
        &n,
        "filter",
        vec![allow().tcp_dport(80)],
        vec![allow().proto(Protocol::TCP)],
    );
    w.profile("deny-all", vec![deny()], vec![deny()]);
    let mut eth0 = hep("eth0");
    eth0.untracked_tiers = vec![tier("raw", &[&u], &[&u])];
    // Felix never lists egress pre-DNAT policies; if one appears it is not applied.
    eth0.pre_dnat_tiers = vec![tier("mangle", &[&p], &[&p])];
    eth0.tiers = vec![tier("filter", &[&n], &[&n])];
    eth0.profile_ids = vec!["deny-all".into()];
    w.host_endpoint("eth0", eth0);
    let to_host = |dport| tcp(OUTSIDE, NODE_V4, 1, dport);

    expect(
        &w.host(Ingress, &to_host(23)),
        Deny,
        by_rule("raw", &u, Ingress, 0),
    );
    // An untracked allow skips pre-DNAT and normal policy.
    expect(
        &w.host(Ingress, &to_host(24)),
        Allow,
        by_rule("raw", &u, Ingress, 1),
    );
    expect(
        &w.host(Ingress, &to_host(25)),
        Deny,
        by_rule("mangle", &p, Ingress, 0),
    );
    expect(
        &w.host(Ingress, &to_host(26)),
        Allow,
        by_rule("mangle", &p, Ingress, 1),
    );
    // Undecided in raw and mangle: no drop there, no profile there; normal policy decides.
    expect(
        &w.host(Ingress, &to_host(80)),
        Allow,
        by_rule("filter", &n, Ingress, 0),
    );
    expect(&w.host(Ingress, &to_host(81)), Deny, end_of_tier("filter"));

    let from_host = |proto: Protocol, dport| Packet {
        protocol: proto,
        ..tcp(NODE_V4, OUTSIDE, 1, dport)
    };
    expect(
        &w.host(Egress, &from_host(Protocol::UDP, 9999)),
        Deny,
        by_rule("raw", &u, Egress, 0),
    );
    expect(
        &w.host(Egress, &from_host(Protocol::TCP, 443)),
        Allow,
        by_rule("filter", &n, Egress, 0),
    );
    // Normal tiers undecided (default Pass) → the profiles, which deny.
    let mut hep2 = w
        .state
        .host_endpoints()
        .get(&HostEndpointKey("eth0".into()))
        .unwrap()
        .clone();
    hep2.tiers = vec![pass_tier("filter", &[&n], &[&n])];
    w.host_endpoint("eth0", hep2);
    expect(
        &w.host(Ingress, &to_host(81)),
        Deny,
        by_profile("deny-all", Ingress, 0),
    );
}

#[test]
fn forward_tiers_drop_at_end_of_tier_and_no_forward_policy_allows() {
    let mut w = World::new();
    w.node();
    let f = gnp("fwd");
    w.policy(&f, "fwd", vec![allow().tcp_dport(443)], vec![]);
    w.profile("deny-all", vec![deny()], vec![deny()]);
    w.profile("kns.ns", vec![allow()], vec![allow()]);
    let mut eth0 = hep("eth0");
    eth0.forward_tiers = vec![tier("fwd", &[&f], &[])];
    eth0.profile_ids = vec!["deny-all".into()];
    let eth0 = w.host_endpoint("eth0", eth0);
    let wep = w.workload("b", &["10.65.0.2/32"], vec![], &["kns.ns"]);

    expect(
        &w.fwd(&eth0, Ingress, &tcp(OUTSIDE, B, 1, 443)),
        Allow,
        by_rule("fwd", &f, Ingress, 0),
    );
    expect(
        &w.fwd(&eth0, Ingress, &tcp(OUTSIDE, B, 1, 80)),
        Deny,
        end_of_tier("fwd"),
    );
    // No forward policy for egress: allowed (profiles are not used on forward).
    expect(
        &w.fwd(&eth0, Egress, &tcp(B, OUTSIDE, 1, 80)),
        Allow,
        Decider::NoForwardPolicy,
    );

    // The path from outside: forward ingress on the uplink, then the pod's ingress.
    let t = trace(&w.state, &tcp(OUTSIDE, B, 1, 443));
    assert_eq!(t.verdict, Allow);
    let at: Vec<_> = t.steps.iter().map(|s| s.at.clone()).collect();
    assert_eq!(
        at,
        vec![
            CheckPoint::Forward {
                key: eth0.clone(),
                interface: "eth0".into(),
                direction: Ingress
            },
            CheckPoint::Workload {
                key: wep.clone(),
                interface: "tun-b".into(),
                direction: Ingress
            },
        ]
    );
    let t = trace(&w.state, &tcp(OUTSIDE, B, 1, 80));
    assert_eq!(t.verdict, Deny);
    assert_eq!(t.steps.len(), 1, "stops at the first deny: {t:?}");
    expect(&t.steps[0].outcome, Deny, end_of_tier("fwd"));

    // Forward tiers that all pass (default Pass): allowed, still no profiles.
    let mut passing = w.state.host_endpoints().get(&eth0).unwrap().clone();
    passing.forward_tiers = vec![pass_tier("fwd", &[&f], &[])];
    w.host_endpoint("eth0", passing);
    expect(
        &w.fwd(&eth0, Ingress, &tcp(OUTSIDE, B, 1, 80)),
        Allow,
        Decider::NoForwardPolicy,
    );

    // A host endpoint with no forward tiers at all.
    let bare = w.host_endpoint("eth1", hep("eth1"));
    expect(
        &w.fwd(&bare, Ingress, &tcp(OUTSIDE, B, 1, 80)),
        Allow,
        Decider::NoForwardPolicy,
    );
}

#[test]
fn untracked_and_pre_dnat_ingress_tiers_apply_to_forwarded_traffic() {
    // Calico's host endpoint summary: for packets arriving on a host interface and
    // forwarded, untracked (ingress rules) and pre-DNAT policies apply before the
    // applyOnForward ones; an explicit allow from either skips what follows. Packets
    // leaving through a host endpoint meet neither.
    let mut w = World::new();
    w.node();
    let (u, p, f) = (gnp("untracked"), gnp("pre-dnat"), gnp("fwd"));
    w.policy_with(
        &u,
        "raw",
        vec![deny().tcp_dport(23), allow().tcp_dport(24)],
        vec![deny()],
        |p| p.untracked = true,
    );
    w.policy_with(
        &p,
        "mangle",
        vec![deny().tcp_dport(25), allow().tcp_dport(26)],
        vec![],
        |p| p.pre_dnat = true,
    );
    w.policy(&f, "fwd", vec![allow().tcp_dport(443)], vec![]);
    let mut eth0 = hep("eth0");
    eth0.untracked_tiers = vec![tier("raw", &[&u], &[&u])];
    eth0.pre_dnat_tiers = vec![tier("mangle", &[&p], &[])];
    eth0.forward_tiers = vec![tier("fwd", &[&f], &[])];
    let eth0 = w.host_endpoint("eth0", eth0);
    let inbound = |dport| tcp(OUTSIDE, B, 1, dport);

    expect(
        &w.fwd(&eth0, Ingress, &inbound(23)),
        Deny,
        by_rule("raw", &u, Ingress, 0),
    );
    expect(
        &w.fwd(&eth0, Ingress, &inbound(24)),
        Allow,
        by_rule("raw", &u, Ingress, 1),
    );
    expect(
        &w.fwd(&eth0, Ingress, &inbound(25)),
        Deny,
        by_rule("mangle", &p, Ingress, 0),
    );
    expect(
        &w.fwd(&eth0, Ingress, &inbound(26)),
        Allow,
        by_rule("mangle", &p, Ingress, 1),
    );
    expect(
        &w.fwd(&eth0, Ingress, &inbound(443)),
        Allow,
        by_rule("fwd", &f, Ingress, 0),
    );
    expect(
        &w.fwd(&eth0, Ingress, &inbound(80)),
        Deny,
        end_of_tier("fwd"),
    );
    // Forwarded egress: the untracked egress deny-all does not apply.
    expect(
        &w.fwd(&eth0, Egress, &tcp(B, OUTSIDE, 1, 80)),
        Allow,
        Decider::NoForwardPolicy,
    );
}

#[test]
fn trace_checks_source_egress_then_destination_ingress_and_stops_at_the_first_deny() {
    let mut w = World::new();
    let (eg, ing) = (gnp("egress"), gnp("ingress"));
    w.policy(&eg, "t", vec![], vec![deny().tcp_dport(23), allow()]);
    w.policy(&ing, "t", vec![deny().tcp_dport(80), allow()], vec![]);
    let a = w.workload("a", &["10.65.0.1/32"], vec![tier("t", &[], &[&eg])], &[]);
    let b = w.workload("b", &["10.65.0.2/32"], vec![tier("t", &[&ing], &[])], &[]);
    let step = |key: &WorkloadKey, pod: &str, direction| CheckPoint::Workload {
        key: key.clone(),
        interface: format!("tun-{pod}"),
        direction,
    };

    let t = trace(&w.state, &tcp("10.65.0.1", B, 1, 443));
    assert_eq!(t.verdict, Allow);
    assert_eq!(t.steps.len(), 2);
    assert_eq!(t.steps[0].at, step(&a, "a", Egress));
    expect(&t.steps[0].outcome, Allow, by_rule("t", &eg, Egress, 1));
    assert_eq!(t.steps[1].at, step(&b, "b", Ingress));
    expect(&t.steps[1].outcome, Allow, by_rule("t", &ing, Ingress, 1));

    let t = trace(&w.state, &tcp("10.65.0.1", B, 1, 80));
    assert_eq!(t.verdict, Deny);
    expect(&t.steps[1].outcome, Deny, by_rule("t", &ing, Ingress, 0));

    let t = trace(&w.state, &tcp("10.65.0.1", B, 1, 23));
    assert_eq!(t.verdict, Deny);
    assert_eq!(t.steps.len(), 1);
    expect(&t.steps[0].outcome, Deny, by_rule("t", &eg, Egress, 0));
}

// ---------------------------------------------------------------------------------
// Algebraic properties of rule_matches
// ---------------------------------------------------------------------------------

/// A fixed state holding the sets the generated rules may refer to.
fn prop_state() -> State {
    let mut w = World::new();
    w.set("s:a", IpSetKind::Net, &["10.0.0.0/30", "fd00::/126"]);
    w.set("s:b", IpSetKind::Net, &["10.0.0.2/31", "10.1.0.0/16"]);
    w.set("s:c", IpSetKind::Ip, &["10.0.0.7", "fd00::1"]);
    w.set(
        "n:web",
        IpSetKind::IpAndPort,
        &[
            "10.0.0.1,tcp:80",
            "10.0.0.2,tcp:8080",
            "fd00::1,tcp:80",
            "10.0.0.1,udp:53",
        ],
    );
    w.state
}

const NET_SETS: [&str; 3] = ["s:a", "s:b", "s:c"];
const CIDRS: [&str; 9] = [
    "10.0.0.0/29",
    "10.0.0.4/30",
    "10.0.0.3/32",
    "10.1.0.0/16",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "fd00::/125",
    "fd00::4/126",
    "::/0",
];
const PORTS: [u16; 7] = [22, 53, 79, 80, 81, 443, 8080];

fn any_cidr() -> impl Strategy<Value = Cidr> {
    prop::sample::select(CIDRS.to_vec()).prop_map(cidr)
}

fn any_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        prop::sample::select(PORTS.to_vec()).prop_map(PortRange::single),
        Just(range(79, 81)),
        Just(range(0, 1023)),
    ]
}

fn any_net_set() -> impl Strategy<Value = IpSetId> {
    prop::sample::select(NET_SETS.to_vec()).prop_map(set_id)
}

fn any_protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![
        Protocol::TCP,
        Protocol::UDP,
        Protocol::ICMP,
        Protocol::ICMPV6,
        Protocol(47),
    ])
}

fn any_packet() -> impl Strategy<Value = Packet> {
    let v4 = (0u8..16).prop_map(|i| IpAddr::from([10, i / 8, 0, i % 8]));
    let v6 = (0u16..8).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i]));
    let pair = prop_oneof![(v4.clone(), v4), (v6.clone(), v6)];
    (
        pair,
        any_protocol(),
        prop::sample::select(PORTS.to_vec()),
        prop::sample::select(PORTS.to_vec()),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(|((src, dst), protocol, sport, dport, small, fragment)| {
            let l4 = if fragment {
                L4::None
            } else if protocol.has_ports() {
                L4::Ports {
                    src: sport,
                    dst: dport,
                }
            } else if protocol.is_icmp() {
                L4::Icmp {
                    icmp_type: [0, 3, 8, 128][usize::from(small)],
                    code: small % 2,
                }
            } else {
                L4::None
            };
            Packet {
                src,
                dst,
                protocol,
                l4,
            }
        })
}

/// Rules over the same small universe as the packets, so that they often match.
fn any_rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(any_protocol()),
        prop::option::of(any_protocol()),
        prop::collection::vec(any_cidr(), 0..2),
        prop::collection::vec(any_cidr(), 0..2),
        prop::collection::vec(any_range(), 0..2),
        prop::collection::vec(any_net_set(), 0..2),
        prop::collection::vec(any_net_set(), 0..2),
        prop::option::of(prop::sample::select(vec![IpFamily::V4, IpFamily::V6])),
        any::<bool>(),
    )
        .prop_map(
            |(
                protocol,
                not_protocol,
                src_nets,
                dst_not_nets,
                dports,
                src_sets,
                dst_not_sets,
                ip_version,
                named,
            )| {
                allow().with(|r| {
                    r.protocol = protocol;
                    r.not_protocol = not_protocol;
                    r.ip_version = ip_version;
                    r.src.nets = src_nets;
                    r.dst.not_nets = dst_not_nets;
                    r.dst.ports = dports;
                    r.src.ip_sets = src_sets;
                    r.dst.not_ip_sets = dst_not_sets;
                    if named {
                        r.dst.named_port_sets = vec![set_id("n:web")];
                    }
                })
            },
        )
}

/// A negative criterion to add to a rule, with an oracle saying whether it excludes
/// a packet, computed without the evaluator.
#[derive(Debug, Clone)]
enum Negative {
    Protocol(Protocol),
    SrcNet(Cidr),
    DstPorts(PortRange),
    SrcSet(IpSetId),
}

impl Negative {
    fn add_to(&self, rule: &Rule) -> Rule {
        rule.clone().with(|r| match self {
            Negative::Protocol(p) => r.not_protocol = Some(*p),
            Negative::SrcNet(c) => r.src.not_nets.push(*c),
            Negative::DstPorts(pr) => r.dst.not_ports.push(*pr),
            Negative::SrcSet(s) => r.src.not_ip_sets.push(s.clone()),
        })
    }

    fn excludes(&self, state: &State, pkt: &Packet) -> bool {
        match self {
            Negative::Protocol(p) => *p == pkt.protocol,
            Negative::SrcNet(c) => c.contains(&pkt.src),
            // A port criterion cannot hold on a packet without ports.
            Negative::DstPorts(pr) => match pkt.l4 {
                L4::Ports { dst, .. } => pr.contains(dst),
                _ => true,
            },
            Negative::SrcSet(s) => state
                .ipsets()
                .get(s)
                .expect("a set the state holds")
                .contains_addr(&pkt.src),
        }
    }
}

fn any_negative() -> impl Strategy<Value = Negative> {
    prop_oneof![
        any_protocol().prop_map(Negative::Protocol),
        any_cidr().prop_map(Negative::SrcNet),
        any_range().prop_map(Negative::DstPorts),
        any_net_set().prop_map(Negative::SrcSet),
    ]
}

proptest! {
    #[test]
    fn prop_rule_without_criteria_matches_every_packet(pkt in any_packet()) {
        let state = prop_state();
        for action in [Action::Allow, Action::Deny, Action::Log, Action::Pass] {
            prop_assert!(rule_matches(&state, &Rule::any(action), &pkt));
        }
    }

    /// Adding a negative criterion intersects the rule with that criterion's
    /// complement: where the criterion is vacuous the result is unchanged, where it
    /// holds the rule no longer matches.
    #[test]
    fn prop_added_negative_intersects_with_its_complement(
        rule in any_rule(),
        neg in any_negative(),
        pkt in any_packet(),
    ) {
        let state = prop_state();
        let rule = match neg {
            // not_protocol is a single value: start from a rule without one.
            Negative::Protocol(_) => rule.with(|r| r.not_protocol = None),
            _ => rule,
        };
        let before = rule_matches(&state, &rule, &pkt);
        let after = rule_matches(&state, &neg.add_to(&rule), &pkt);
        prop_assert_eq!(after, before && !neg.excludes(&state, &pkt));
    }

    /// `src_ip_set_ids` is a conjunction; `not_*_ip_set_ids` a conjunction of negatives.
    #[test]
    fn prop_ip_set_lists_are_conjunctions(
        rule in any_rule(),
        a in any_net_set(),
        b in any_net_set(),
        pkt in any_packet(),
    ) {
        let state = prop_state();
        let m = |sets: Vec<IpSetId>, negated: bool| {
            let r = rule.clone().with(|r| if negated { r.dst.not_ip_sets = sets } else { r.src.ip_sets = sets });
            rule_matches(&state, &r, &pkt)
        };
        for negated in [false, true] {
            prop_assert_eq!(
                m(vec![a.clone(), b.clone()], negated),
                m(vec![a.clone()], negated) && m(vec![b.clone()], negated)
            );
        }
    }

    /// Positive nets, and positive ports together with named-port sets, are
    /// disjunctions.
    #[test]
    fn prop_positive_nets_and_ports_are_disjunctions(
        rule in any_rule(),
        n1 in any_cidr(),
        n2 in any_cidr(),
        p1 in any_range(),
        pkt in any_packet(),
    ) {
        let state = prop_state();
        let nets = |nets: Vec<Cidr>| rule_matches(&state, &rule.clone().with(|r| r.src.nets = nets), &pkt);
        prop_assert_eq!(nets(vec![n1, n2]), nets(vec![n1]) || nets(vec![n2]));

        let ports = |ports: Vec<PortRange>, named: Vec<IpSetId>| {
            let r = rule.clone().with(|r| {
                r.dst.ports = ports;
                r.dst.named_port_sets = named;
            });
            rule_matches(&state, &r, &pkt)
        };
        let web = vec![set_id("n:web")];
        prop_assert_eq!(
            ports(vec![p1], web.clone()),
            ports(vec![p1], vec![]) || ports(vec![], web)
        );
    }

    /// An explicit family restriction is the rule AND the packet's family.
    #[test]
    fn prop_ip_version_is_a_family_filter(
        rule in any_rule(),
        family in prop::sample::select(vec![IpFamily::V4, IpFamily::V6]),
        pkt in any_packet(),
    ) {
        let state = prop_state();
        let open = rule.with(|r| r.ip_version = None);
        // Only meaningful where protocol does not already imply a family.
        prop_assume!(open.family().is_none());
        let restricted = open.clone().with(|r| r.ip_version = Some(family));
        prop_assert_eq!(
            rule_matches(&state, &restricted, &pkt),
            rule_matches(&state, &open, &pkt) && pkt.family() == family
        );
    }
}

#[test]
fn allow_from_host_applies_even_without_ingress_policy() {
    // Felix never polices the node's own traffic to its workloads: not even a
    // profile that denies everything stops it.
    let mut w = World::new();
    w.node();
    w.profile("deny-all", vec![deny()], vec![deny()]);
    let wep = w.workload("c", &["10.65.0.3/32"], vec![], &["deny-all"]);
    expect(
        &w.wl(&wep, Ingress, &tcp(NODE_V4, "10.65.0.3", 1, 10250)),
        Allow,
        internal(InternalPolicy::AllowFromHost, 0),
    );
    expect(
        &w.wl(&wep, Ingress, &tcp("10.0.0.9", "10.65.0.3", 1, 10250)),
        Deny,
        by_profile("deny-all", Ingress, 0),
    );
}

#[test]
fn forwarded_traffic_is_policed_by_the_uplinks_named_host_endpoint_before_the_wildcard() {
    let mut w = World::new();
    w.node();
    let f = gnp("fwd-named");
    w.policy(&f, "fwd", vec![allow().tcp_dport(443)], vec![]);
    let g = gnp("fwd-any");
    w.policy(&g, "fwd", vec![deny()], vec![]);
    w.profile("kns.ns", vec![allow()], vec![allow()]);
    let mut any = hep("*");
    any.forward_tiers = vec![tier("fwd", &[&g], &[])];
    let any = w.host_endpoint("all", any);
    let mut eth0 = hep("eth0");
    eth0.forward_tiers = vec![tier("fwd", &[&f], &[])];
    let eth0 = w.host_endpoint("eth0", eth0);
    w.workload("b", &["10.65.0.2/32"], vec![], &["kns.ns"]);

    let t = trace(&w.state, &tcp(OUTSIDE, B, 1, 443));
    assert_eq!(t.verdict, Allow, "{t:?}");
    assert!(
        matches!(&t.steps[0].at, CheckPoint::Forward { key, .. } if *key == eth0),
        "{t:?}"
    );
    assert_ne!(eth0, any);
}

/// IPv6 neighbour discovery and MLD (ICMPv6 130–133, 135, 136) on a workload's link
/// are accepted before its policy, in both directions, as Felix does
/// (`cali-wl-to-host`'s ICMPv6 filter; the eBPF programs' policy skip). Router
/// advertisements, redirects, MLDv2 reports and echo still meet policy, and so does
/// ICMP (v4) with the same type numbers.
#[test]
fn neighbour_discovery_is_allowed_before_workload_policy() {
    let mut w = World::new();
    let p = gnp("deny-all");
    w.policy(&p, "t1", vec![deny()], vec![deny()]);
    let wep = w.workload(
        "b",
        &["10.65.0.2/32", "fd00::2/128"],
        vec![tier("t1", &[&p], &[&p])],
        &[],
    );
    let (peer, own) = ("fe80::1", "fd00::2");
    for (i, t) in [130u8, 131, 132, 133, 135, 136].into_iter().enumerate() {
        for (dir, src, dst) in [(Ingress, peer, own), (Egress, own, peer)] {
            expect(
                &w.wl(&wep, dir, &icmp(src, dst, t, 0)),
                Allow,
                internal(InternalPolicy::NeighbourDiscovery, i),
            );
        }
    }
    for t in [128u8, 129, 134, 137, 143] {
        let o = w.wl(&wep, Ingress, &icmp(peer, own, t, 0));
        assert_eq!(o.verdict, Deny, "ICMPv6 type {t}: {o:?}");
    }
    let o = w.wl(&wep, Ingress, &icmp("10.65.0.9", "10.65.0.2", 135, 0));
    assert_eq!(o.verdict, Deny, "ICMP (v4) type 135 is not ND: {o:?}");
    // Also without any policy or profile (where everything else is dropped).
    let bare = w.workload("c", &["fd00::3/128"], vec![], &[]);
    expect(
        &w.wl(&bare, Ingress, &icmp(peer, "fd00::3", 135, 0)),
        Allow,
        internal(InternalPolicy::NeighbourDiscovery, 4),
    );
    assert_eq!(
        w.wl(&bare, Ingress, &icmp(peer, "fd00::3", 128, 0)).verdict,
        Deny
    );
}
