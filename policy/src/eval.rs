//! The reference evaluator: Felix's policy semantics written as plainly as possible.
//!
//! This is the specification every fast path is tested against. It scans rules and
//! IP-set members linearly and makes no attempt at speed. Semantics (DESIGN.md §3):
//!
//! 1. Tiers in order, only those with policies for the direction. Within a tier,
//!    policies in order (staged ones skipped), rules in order: `allow` accepts, `deny`
//!    drops, `pass` leaves the tier, `log` records and carries on, no match → next
//!    policy.
//! 2. End of tier undecided: drop, unless the tier's default action is `Pass` or the
//!    tier holds only staged policies.
//! 3. Then profiles in order; a profile rule allow/deny decides; no match → drop.
//! 4. Rule criteria are AND-ed (see [`rule_matches`]).
//!
//! Internal policies that CalicoVPP adds (and capo keeps, for the same reasons):
//! allow-from-host on workload ingress, workloads-to-host (`DefaultEndpointToHostAction`)
//! and failsafe on the host-facing interface, allow-to-host on uplinks.
//!
//! Packets that are non-first fragments carry no L4 header ([`L4::None`]): a rule
//! with any port or ICMP criterion never matches them, positive or negated, as with
//! Felix's iptables matches.

use std::net::IpAddr;

use compact_str::CompactString;

use crate::config::EndpointToHostAction;
use crate::model::{
    Action, Direction, HostEndpoint, HostEndpointKey, PolicyKey, Rule, SideMatch, TierInfo,
    WorkloadKey,
};
use crate::net::{IpFamily, Protocol};
use crate::state::State;

/// What follows the IP header, as far as policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// A protocol with 16-bit ports (TCP, UDP, SCTP, UDP-Lite).
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// ICMP or ICMPv6 type and code.
    Icmp {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
    },
    /// No L4 header is visible (other protocols, non-first fragments).
    None,
}

/// The fields of a packet that policy can look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub protocol: Protocol,
    /// L4 fields.
    pub l4: L4,
}

impl Packet {
    /// The packet's family; a mixed-family packet is treated as its source's family.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.src)
    }

    fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Ports { src, dst } => Some((src, dst)),
            _ => None,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

/// Policies capo adds by itself (CalicoVPP's internal policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InternalPolicy {
    /// `DefaultEndpointToHostAction` for local workloads talking to the host.
    WorkloadsToHost,
    /// Failsafe ports on the host-facing interface.
    Failsafe,
    /// The host may always reach its own workloads.
    AllowFromHost,
    /// On uplinks, traffic to the host is left to the host-facing interface.
    AllowToHost,
    /// IPv6 neighbour discovery and MLD on a workload's link, accepted before any
    /// policy ([`NEIGHBOUR_DISCOVERY_ICMPV6_TYPES`]; the index is the type's position).
    NeighbourDiscovery,
}

/// The ICMPv6 types Felix accepts before policy: MLD query, report and done (130–132),
/// router solicitation (133), neighbour solicitation and advertisement (135, 136).
/// Router advertisements (134), redirects (137) and MLDv2 reports (143) meet policy.
///
/// Felix's iptables/nftables rules accept them first in `cali-wl-to-host`
/// (`DefaultRuleRenderer.ICMPv6Filter`, IPv6 only), before the workload's egress
/// policy and `DefaultEndpointToHostAction`, while host → workload traffic is not
/// policed at all; its eBPF programs skip policy for them in both directions
/// (`tc.c`, `do_policy`). So on a workload's link these never meet policy, whether
/// the workload has policies or not. capo applies that on workload interfaces, both
/// directions; host endpoints' policy still sees them (as in the iptables dataplane).
pub const NEIGHBOUR_DISCOVERY_ICMPV6_TYPES: [u8; 6] = [130, 131, 132, 133, 135, 136];

/// The position in [`NEIGHBOUR_DISCOVERY_ICMPV6_TYPES`] of the packet's ICMPv6 type,
/// if it is one of them.
pub fn neighbour_discovery(pkt: &Packet) -> Option<usize> {
    if pkt.protocol != Protocol::ICMPV6 || pkt.family() != IpFamily::V6 {
        return None;
    }
    match pkt.l4 {
        L4::Icmp { icmp_type, .. } => NEIGHBOUR_DISCOVERY_ICMPV6_TYPES
            .iter()
            .position(|t| *t == icmp_type),
        _ => None,
    }
}

/// What decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decider {
    /// A rule of a policy in a tier.
    PolicyRule {
        /// Tier name.
        tier: CompactString,
        /// The policy.
        #[serde(serialize_with = "ser_display")]
        policy: PolicyKey,
        /// Which rule list (`inbound` for ingress, `outbound` for egress).
        direction: Direction,
        /// Index of the rule within that list.
        index: usize,
    },
    /// A tier ended undecided and its default action is Deny.
    EndOfTier {
        /// Tier name.
        tier: CompactString,
    },
    /// A profile rule.
    ProfileRule {
        /// Profile name.
        profile: String,
        /// Which rule list.
        direction: Direction,
        /// Index of the rule within that list.
        index: usize,
    },
    /// No profile rule matched (or the endpoint has none): drop.
    NoProfileMatched,
    /// One of capo's internal policies.
    Internal {
        /// Which one.
        policy: InternalPolicy,
        /// Index of its rule (failsafe: the entry in the failsafe list).
        index: usize,
    },
    /// Host traffic on a node without a host endpoint: Felix does not police it.
    NoHostEndpoint,
    /// Forwarded traffic through a host endpoint without forward policy: allowed.
    NoForwardPolicy,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A verdict, who decided it, and the `log` rules passed on the way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// What decided it.
    pub decider: Decider,
    /// `log` rules that matched before the decision.
    pub logged: Vec<Decider>,
}

/// Whether `rule` matches `pkt` (the packet seen in direction `dir` is irrelevant to
/// the rule itself: source is source, destination is destination).
pub fn rule_matches(state: &State, rule: &Rule, pkt: &Packet) -> bool {
    let family = pkt.family();
    if rule.family().is_some_and(|f| f != family) {
        return false;
    }
    if rule.protocol.is_some_and(|p| p != pkt.protocol) {
        return false;
    }
    if rule.not_protocol.is_some_and(|p| p == pkt.protocol) {
        return false;
    }
    if rule.icmp.is_some() || rule.not_icmp.is_some() {
        let L4::Icmp { icmp_type, code } = pkt.l4 else {
            return false;
        };
        if rule.icmp.is_some_and(|m| !m.matches(icmp_type, code)) {
            return false;
        }
        if rule.not_icmp.is_some_and(|m| m.matches(icmp_type, code)) {
            return false;
        }
    }
    let (sport, dport) = match pkt.ports() {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    if !side_matches(state, &rule.src, &pkt.src, pkt.protocol, sport)
        || !side_matches(state, &rule.dst, &pkt.dst, pkt.protocol, dport)
    {
        return false;
    }
    rule.dst_ip_port_sets.iter().all(|id| match dport {
        Some(port) => state
            .ipsets()
            .get(id)
            .is_some_and(|s| s.contains_endpoint(&pkt.dst, pkt.protocol, port)),
        None => false,
    })
}

fn side_matches(
    state: &State,
    side: &SideMatch,
    addr: &IpAddr,
    protocol: Protocol,
    port: Option<u16>,
) -> bool {
    let set_has_addr = |id| {
        state
            .ipsets()
            .get(id)
            .is_some_and(|s| s.contains_addr(addr))
    };
    let set_has_endpoint = |id, port| {
        state
            .ipsets()
            .get(id)
            .is_some_and(|s| s.contains_endpoint(addr, protocol, port))
    };
    if !side.nets.is_empty() && !side.nets.iter().any(|n| n.contains(addr)) {
        return false;
    }
    if side.not_nets.iter().any(|n| n.contains(addr)) {
        return false;
    }
    if !side.ip_sets.iter().all(set_has_addr) {
        return false;
    }
    if side.not_ip_sets.iter().any(set_has_addr) {
        return false;
    }
    if side.uses_ports() {
        let Some(port) = port else {
            return false;
        };
        let positive = !side.ports.is_empty() || !side.named_port_sets.is_empty();
        if positive
            && !side.ports.iter().any(|r| r.contains(port))
            && !side
                .named_port_sets
                .iter()
                .any(|id| set_has_endpoint(id, port))
        {
            return false;
        }
        if side.not_ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        if side
            .not_named_port_sets
            .iter()
            .any(|id| set_has_endpoint(id, port))
        {
            return false;
        }
    }
    true
}

/// Whether tiers hold at least one enforced (non-staged) policy for `dir`.
pub fn has_enforced_policies(tiers: &[TierInfo], dir: Direction) -> bool {
    tiers
        .iter()
        .any(|t| t.policies(dir).iter().any(|k| !k.is_staged()))
}

/// Tier walk result: a decision, or carry on (to profiles or the next stage).
enum TierWalk {
    Decided(Outcome),
    Undecided(Vec<Decider>),
}

/// Walks tiers; `end_of_tier_drop` is false for untracked and pre-DNAT tiers.
fn walk_tiers(
    state: &State,
    tiers: &[TierInfo],
    dir: Direction,
    pkt: &Packet,
    end_of_tier_drop: bool,
    mut logged: Vec<Decider>,
) -> TierWalk {
    for tier in tiers {
        let keys = tier.policies(dir);
        if keys.is_empty() {
            continue;
        }
        let mut passed = false;
        'policies: for key in keys.iter().filter(|k| !k.is_staged()) {
            let Some(policy) = state.policies().get(key) else {
                continue;
            };
            for (index, rule) in policy.rules(dir).iter().enumerate() {
                if !rule_matches(state, rule, pkt) {
                    continue;
                }
                let decider = Decider::PolicyRule {
                    tier: tier.name.clone(),
                    policy: key.clone(),
                    direction: dir,
                    index,
                };
                match rule.action {
                    Action::Allow => {
                        return TierWalk::Decided(decided(Verdict::Allow, decider, logged))
                    }
                    Action::Deny => {
                        return TierWalk::Decided(decided(Verdict::Deny, decider, logged))
                    }
                    Action::Log => logged.push(decider),
                    Action::Pass => {
                        passed = true;
                        break 'policies;
                    }
                }
            }
        }
        if !passed && end_of_tier_drop && tier.drops_at_end(dir) {
            let decider = Decider::EndOfTier {
                tier: tier.name.clone(),
            };
            return TierWalk::Decided(decided(Verdict::Deny, decider, logged));
        }
    }
    TierWalk::Undecided(logged)
}

fn decided(verdict: Verdict, decider: Decider, logged: Vec<Decider>) -> Outcome {
    Outcome {
        verdict,
        decider,
        logged,
    }
}

fn walk_profiles(
    state: &State,
    profile_ids: &[String],
    dir: Direction,
    pkt: &Packet,
    mut logged: Vec<Decider>,
) -> Outcome {
    for name in profile_ids {
        let Some(profile) = state.profiles().get(name) else {
            continue;
        };
        for (index, rule) in profile.rules(dir).iter().enumerate() {
            if !rule_matches(state, rule, pkt) {
                continue;
            }
            let decider = Decider::ProfileRule {
                profile: name.clone(),
                direction: dir,
                index,
            };
            match rule.action {
                Action::Allow => return decided(Verdict::Allow, decider, logged),
                Action::Deny => return decided(Verdict::Deny, decider, logged),
                Action::Log => logged.push(decider),
                // A pass in a profile has no tier to leave: it ends this profile.
                Action::Pass => break,
            }
        }
    }
    decided(Verdict::Deny, Decider::NoProfileMatched, logged)
}

/// Normal endpoint policy: tiers with end-of-tier drop, then profiles.
fn tiers_then_profiles(
    state: &State,
    tiers: &[TierInfo],
    profile_ids: &[String],
    dir: Direction,
    pkt: &Packet,
    logged: Vec<Decider>,
) -> Outcome {
    match walk_tiers(state, tiers, dir, pkt, true, logged) {
        TierWalk::Decided(o) => o,
        TierWalk::Undecided(logged) => walk_profiles(state, profile_ids, dir, pkt, logged),
    }
}

fn internal(
    verdict: Verdict,
    policy: InternalPolicy,
    index: usize,
    logged: Vec<Decider>,
) -> Outcome {
    decided(verdict, Decider::Internal { policy, index }, logged)
}

/// Evaluates a local workload endpoint's policy for a packet going `dir` (ingress:
/// towards the workload; egress: from it).
///
/// Returns `None` when the workload is unknown.
pub fn evaluate_workload(
    state: &State,
    key: &WorkloadKey,
    dir: Direction,
    pkt: &Packet,
) -> Option<Outcome> {
    let wep = state.workloads().get(key)?;
    if let Some(i) = neighbour_discovery(pkt) {
        return Some(internal(
            Verdict::Allow,
            InternalPolicy::NeighbourDiscovery,
            i,
            Vec::new(),
        ));
    }
    // allow-from-host: Felix never polices the node's own traffic to its workloads
    // (kubelet probes). The views print it in front of the ingress policies, where
    // CalicoVPP's policy#2 sits; without ingress policies it is not printed.
    if dir == Direction::Ingress && state.local_host_addrs().contains(&pkt.src) {
        return Some(internal(
            Verdict::Allow,
            InternalPolicy::AllowFromHost,
            0,
            Vec::new(),
        ));
    }
    Some(tiers_then_profiles(
        state,
        &wep.tiers,
        &wep.profile_ids,
        dir,
        pkt,
        Vec::new(),
    ))
}

/// The host endpoint that polices traffic to and from the host itself: the `*`
/// endpoint when there is one, else the first named one (capo models a node with
/// one uplink). Traffic from local workloads is policed only by a `*` endpoint, as
/// a named one sits on an interface that workload traffic does not cross.
pub fn host_endpoint_for_host_traffic(
    state: &State,
    from_workload: bool,
) -> Option<(&HostEndpointKey, &HostEndpoint)> {
    let all = state.host_endpoints().iter().find(|(_, h)| h.name == "*");
    if from_workload {
        return all;
    }
    all.or_else(|| state.host_endpoints().iter().next())
}

/// Evaluates traffic to (`Ingress`) or from (`Egress`) the host itself, on the
/// host-facing interface.
pub fn evaluate_host(state: &State, dir: Direction, pkt: &Packet) -> Outcome {
    let cfg = state.config();
    let logged = Vec::new();
    match dir {
        Direction::Ingress => {
            let from_workload = state.workload_owning(&pkt.src).is_some();
            if from_workload {
                match cfg.endpoint_to_host {
                    EndpointToHostAction::Accept => {
                        return internal(Verdict::Allow, InternalPolicy::WorkloadsToHost, 0, logged)
                    }
                    EndpointToHostAction::Drop => {
                        return internal(Verdict::Deny, InternalPolicy::WorkloadsToHost, 0, logged)
                    }
                    EndpointToHostAction::Return => {}
                }
            }
            let Some((_, hep)) = host_endpoint_for_host_traffic(state, from_workload) else {
                return decided(Verdict::Allow, Decider::NoHostEndpoint, logged);
            };
            if let Some(i) = failsafe_hit(&cfg.failsafe_inbound, pkt, &pkt.src, pkt_dport(pkt)) {
                return internal(Verdict::Allow, InternalPolicy::Failsafe, i, logged);
            }
            host_tiers(state, hep, dir, pkt, logged)
        }
        Direction::Egress => {
            let Some((_, hep)) = host_endpoint_for_host_traffic(state, false) else {
                return decided(Verdict::Allow, Decider::NoHostEndpoint, logged);
            };
            if state.workload_owning(&pkt.dst).is_some() {
                return internal(Verdict::Allow, InternalPolicy::AllowFromHost, 1, logged);
            }
            let n_in = cfg.failsafe_inbound.len();
            if let Some(i) = failsafe_hit(&cfg.failsafe_outbound, pkt, &pkt.dst, pkt_dport(pkt)) {
                return internal(Verdict::Allow, InternalPolicy::Failsafe, n_in + i, logged);
            }
            host_tiers(state, hep, dir, pkt, logged)
        }
    }
}

fn pkt_dport(pkt: &Packet) -> Option<u16> {
    pkt.ports().map(|(_, d)| d)
}

fn failsafe_hit(
    list: &[crate::config::FailsafePort],
    pkt: &Packet,
    peer: &IpAddr,
    dport: Option<u16>,
) -> Option<usize> {
    let dport = dport?;
    list.iter().position(|f| {
        f.protocol == pkt.protocol && f.port == dport && f.net.is_none_or(|n| n.contains(peer))
    })
}

/// Host endpoint policy for host traffic: untracked tiers, pre-DNAT tiers (ingress
/// only), both without end-of-tier drop; then the normal tiers and profiles.
fn host_tiers(
    state: &State,
    hep: &HostEndpoint,
    dir: Direction,
    pkt: &Packet,
    logged: Vec<Decider>,
) -> Outcome {
    let mut logged = logged;
    let mut stages: Vec<&[TierInfo]> = vec![&hep.untracked_tiers];
    if dir == Direction::Ingress {
        stages.push(&hep.pre_dnat_tiers);
    }
    for tiers in stages {
        match walk_tiers(state, tiers, dir, pkt, false, logged) {
            TierWalk::Decided(o) => return o,
            TierWalk::Undecided(l) => logged = l,
        }
    }
    tiers_then_profiles(state, &hep.tiers, &hep.profile_ids, dir, pkt, logged)
}

/// Evaluates forwarded traffic crossing a host endpoint's interface: `Ingress` for
/// packets arriving from outside, `Egress` for packets leaving. On ingress the
/// untracked tiers (Felix's raw PREROUTING sees forwarded packets too) and then the
/// pre-DNAT tiers apply, both without end-of-tier drop; an allow there skips the rest.
/// Then the forward tiers with end-of-tier drop and no profiles; a host endpoint
/// without forward policy for the direction lets the packet through.
pub fn evaluate_forward(
    state: &State,
    hep: &HostEndpoint,
    dir: Direction,
    pkt: &Packet,
) -> Outcome {
    let mut logged = Vec::new();
    if dir == Direction::Ingress {
        for tiers in [&hep.untracked_tiers, &hep.pre_dnat_tiers] {
            match walk_tiers(state, tiers, dir, pkt, false, logged) {
                TierWalk::Decided(o) => return o,
                TierWalk::Undecided(l) => logged = l,
            }
        }
    }
    if !has_enforced_policies(&hep.forward_tiers, dir) {
        return decided(Verdict::Allow, Decider::NoForwardPolicy, logged);
    }
    match walk_tiers(state, &hep.forward_tiers, dir, pkt, true, logged) {
        TierWalk::Decided(o) => o,
        TierWalk::Undecided(logged) => decided(Verdict::Allow, Decider::NoForwardPolicy, logged),
    }
}

/// Where along a packet's path through the node a policy check happens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "at", rename_all = "kebab-case")]
pub enum CheckPoint {
    /// A local workload endpoint.
    Workload {
        /// The endpoint.
        #[serde(serialize_with = "ser_display")]
        key: WorkloadKey,
        /// Its interface.
        interface: String,
        /// Direction relative to the workload.
        direction: Direction,
    },
    /// The host itself, on the host-facing interface.
    Host {
        /// Direction relative to the host.
        direction: Direction,
    },
    /// A host endpoint's interface, for forwarded traffic.
    Forward {
        /// The host endpoint.
        #[serde(serialize_with = "ser_display")]
        key: HostEndpointKey,
        /// Its interface name.
        interface: String,
        /// Ingress: arriving from outside; egress: leaving.
        direction: Direction,
    },
}

/// One policy check on the path and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// Where.
    #[serde(flatten)]
    pub at: CheckPoint,
    /// What it decided.
    pub outcome: Outcome,
}

/// The checks a packet meets on this node, in order, and the final verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Trace {
    /// Allow when every step allowed (or there was none).
    pub verdict: Verdict,
    /// The steps taken, stopping at the first deny.
    pub steps: Vec<Step>,
}

/// Follows a packet across this node: the source's egress (a local workload, or the
/// host), forward ingress on an uplink for traffic from outside, then the
/// destination's ingress (a local workload or the host), or forward egress on an
/// uplink for traffic leaving the node. Stops at the first deny.
pub fn trace(state: &State, pkt: &Packet) -> Trace {
    let host_addrs = state.local_host_addrs();
    let src_host = host_addrs.contains(&pkt.src);
    let dst_host = host_addrs.contains(&pkt.dst);
    let src_wep = state.workload_owning(&pkt.src);
    let dst_wep = state.workload_owning(&pkt.dst);
    // Forwarded traffic crosses the uplink: its own (named) host endpoint polices it,
    // the `*` endpoint only where there is none.
    let uplink = state
        .host_endpoints()
        .iter()
        .find(|(_, h)| !h.name.is_empty() && h.name != "*")
        .or_else(|| host_endpoint_for_host_traffic(state, false));

    let mut checks: Vec<(CheckPoint, Box<dyn Fn() -> Outcome + '_>)> = Vec::new();
    if let Some((key, wep)) = src_wep {
        checks.push((
            CheckPoint::Workload {
                key: key.clone(),
                interface: wep.name.clone(),
                direction: Direction::Egress,
            },
            Box::new(move || {
                evaluate_workload(state, key, Direction::Egress, pkt)
                    .unwrap_or_else(|| decided(Verdict::Deny, Decider::NoProfileMatched, vec![]))
            }),
        ));
    } else if src_host {
        checks.push((
            CheckPoint::Host {
                direction: Direction::Egress,
            },
            Box::new(move || evaluate_host(state, Direction::Egress, pkt)),
        ));
    } else if let Some((key, hep)) = uplink {
        if !dst_host {
            checks.push((
                CheckPoint::Forward {
                    key: key.clone(),
                    interface: hep.name.clone(),
                    direction: Direction::Ingress,
                },
                Box::new(move || evaluate_forward(state, hep, Direction::Ingress, pkt)),
            ));
        }
    }
    if let Some((key, wep)) = dst_wep {
        checks.push((
            CheckPoint::Workload {
                key: key.clone(),
                interface: wep.name.clone(),
                direction: Direction::Ingress,
            },
            Box::new(move || {
                evaluate_workload(state, key, Direction::Ingress, pkt)
                    .unwrap_or_else(|| decided(Verdict::Deny, Decider::NoProfileMatched, vec![]))
            }),
        ));
    } else if dst_host {
        checks.push((
            CheckPoint::Host {
                direction: Direction::Ingress,
            },
            Box::new(move || evaluate_host(state, Direction::Ingress, pkt)),
        ));
    } else if let (Some((key, hep)), false) = (uplink, src_host) {
        if src_wep.is_some() {
            checks.push((
                CheckPoint::Forward {
                    key: key.clone(),
                    interface: hep.name.clone(),
                    direction: Direction::Egress,
                },
                Box::new(move || evaluate_forward(state, hep, Direction::Egress, pkt)),
            ));
        }
    }

    let mut steps = Vec::new();
    for (at, check) in checks {
        let outcome = check();
        let deny = outcome.verdict == Verdict::Deny;
        steps.push(Step { at, outcome });
        if deny {
            return Trace {
                verdict: Verdict::Deny,
                steps,
            };
        }
    }
    Trace {
        verdict: Verdict::Allow,
        steps,
    }
}
