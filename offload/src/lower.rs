//! Lowering: the policy state of one generation → per-endpoint ordered match lists.
//!
//! The NIC sees packets arriving on the uplink. For a packet to a local workload `D`
//! from a non-local source, Felix's verdict (what [`capo_policy::trace`] computes) is
//! the first decision along one **flattened** list per `D` ([`Domain`]):
//!
//! 1. the uplink host endpoint's forward-ingress stage, if there is a host endpoint
//!    (untracked and pre-DNAT tiers, then forward tiers with their end-of-tier drop):
//!    a deny decides, an allow only lets the packet on ([`ContinueReason::StageAllow`]);
//! 2. `D`'s ingress tiers (policies in order, rules in order, each enforced tier's
//!    end-of-tier drop as a match-all deny), then its profiles, then the final drop.
//!
//! `pass` and `log` rules do not decide: they become [`EntryKind::Continue`] entries,
//! which the planner treats as conflicting with everything after them, so a later
//! rule goes down only with a cover that punts their overlap (DESIGN.md §5). Packets
//! from local sources (workloads, the host) are evaluated differently by Felix and are
//! punted as a whole ([`OffloadProgram::local_sources`]).
//!
//! Each entry has an **exact** match when every criterion is expressible in rte_flow
//! (IP sets, nets and their negations become disjoint prefix lists by set algebra,
//! port ranges and their negations become port sets) or a typed reason why not, and an
//! **over-approximation** (non-expressible criteria dropped) that covers use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use capo_policy::eval::{has_enforced_policies, host_endpoint_for_host_traffic, L4};
use capo_policy::ids::PolicyRef;
use capo_policy::{
    Action as PolicyAction, Direction, IdTable, IpFamily, Packet, Protocol, Rule, SideMatch, State,
    TierInfo, WorkloadKey,
};

use crate::set::{all_ports, ports_from_ranges, AddrSet, Intervals};

/// TCP flag constraint of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcpFlags {
    /// Any flags.
    Any,
    /// SYN set, ACK clear: a connection attempt.
    SynOnly,
    /// Anything but a connection attempt.
    NotSynOnly,
}

impl TcpFlags {
    fn overlaps(self, o: TcpFlags) -> bool {
        !matches!(
            (self, o),
            (TcpFlags::SynOnly, TcpFlags::NotSynOnly) | (TcpFlags::NotSynOnly, TcpFlags::SynOnly)
        )
    }

    fn intersect(self, o: TcpFlags) -> Option<TcpFlags> {
        match (self, o) {
            (a, TcpFlags::Any) => Some(a),
            (TcpFlags::Any, b) => Some(b),
            (a, b) if a == b => Some(a),
            _ => None,
        }
    }

    /// Whether flags `f` satisfy the constraint.
    pub fn accepts(self, f: u8) -> bool {
        let syn_only = f & (crate::flow::TCP_SYN | crate::flow::TCP_ACK) == crate::flow::TCP_SYN;
        match self {
            TcpFlags::Any => true,
            TcpFlags::SynOnly => syn_only,
            TcpFlags::NotSynOnly => !syn_only,
        }
    }
}

/// A conjunction of L3/L4 constraints over disjoint sets: what one NIC-expressible
/// (or over-approximated) rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Match {
    /// Source addresses (an empty family never matches). Shared: a rule's sets recur
    /// in every workload list that includes its policy, and an IP set's can be large.
    pub src: Arc<AddrSet>,
    /// Destination addresses.
    pub dst: Arc<AddrSet>,
    /// IP protocol, when constrained.
    pub proto: Option<u8>,
    /// Source ports; `Some` also requires a port-carrying header.
    pub sport: Option<Intervals>,
    /// Destination ports; `Some` also requires a port-carrying header.
    pub dport: Option<Intervals>,
    /// ICMP type and optional code; requires an ICMP header.
    pub icmp: Option<(u8, Option<u8>)>,
    /// TCP flags (only meaningful with `proto == 6`).
    pub tcp: TcpFlags,
}

impl Match {
    /// Matches every packet.
    pub fn any() -> Self {
        Match {
            src: Arc::new(AddrSet::any()),
            dst: Arc::new(AddrSet::any()),
            proto: None,
            sport: None,
            dport: None,
            icmp: None,
            tcp: TcpFlags::Any,
        }
    }

    fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter(|f| !self.src.family(*f).is_empty() && !self.dst.family(*f).is_empty())
    }

    /// True when no packet can match.
    pub fn is_empty(&self) -> bool {
        self.families().next().is_none()
            || self.sport.as_ref().is_some_and(|p| p.is_empty())
            || self.dport.as_ref().is_some_and(|p| p.is_empty())
    }

    /// Whether some packet matches both (may answer true for disjoint matches, never
    /// false for overlapping ones).
    pub fn overlaps(&self, o: &Match) -> bool {
        if let (Some(a), Some(b)) = (self.proto, o.proto) {
            if a != b {
                return false;
            }
        }
        let fam = [IpFamily::V4, IpFamily::V6].into_iter().any(|f| {
            self.src.family(f).overlaps(o.src.family(f))
                && self.dst.family(f).overlaps(o.dst.family(f))
        });
        if !fam {
            return false;
        }
        let ports_ok = |a: &Option<Intervals>, b: &Option<Intervals>| match (a, b) {
            (Some(a), Some(b)) => a.overlaps(b),
            _ => true,
        };
        if !ports_ok(&self.sport, &o.sport) || !ports_ok(&self.dport, &o.dport) {
            return false;
        }
        if let (Some((ta, ca)), Some((tb, cb))) = (self.icmp, o.icmp) {
            if ta != tb || matches!((ca, cb), (Some(x), Some(y)) if x != y) {
                return false;
            }
        }
        let proto = self.proto.or(o.proto);
        if proto == Some(6) || proto.is_none() {
            return self.tcp.overlaps(o.tcp);
        }
        true
    }

    /// The packets matching both; `None` when provably disjoint.
    pub fn intersect(&self, o: &Match) -> Option<Match> {
        if !self.overlaps(o) {
            return None;
        }
        let ports = |a: &Option<Intervals>, b: &Option<Intervals>| match (a, b) {
            (Some(a), Some(b)) => Some(a.intersect(b)),
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        };
        let icmp = match (self.icmp, o.icmp) {
            (Some((t, ca)), Some((_, cb))) => Some((t, ca.or(cb))),
            (a, b) => a.or(b),
        };
        let m = Match {
            src: Arc::new(self.src.intersect(&o.src)),
            dst: Arc::new(self.dst.intersect(&o.dst)),
            proto: self.proto.or(o.proto),
            sport: ports(&self.sport, &o.sport),
            dport: ports(&self.dport, &o.dport),
            icmp,
            tcp: self.tcp.intersect(o.tcp)?,
        };
        (!m.is_empty()).then_some(m)
    }

    /// Whether a packet matches (`tcp_flags` of TCP packets; `None` for others).
    pub fn contains(&self, pkt: &Packet, tcp_flags: Option<u8>) -> bool {
        // The constant-time fields first: address sets can hold thousands of ranges.
        if self.proto.is_some_and(|p| p != pkt.protocol.0) {
            return false;
        }
        let ports = match pkt.l4 {
            L4::Ports { src, dst } => Some((src, dst)),
            _ => None,
        };
        if self.sport.is_some() || self.dport.is_some() {
            let Some((s, d)) = ports else { return false };
            if self.sport.as_ref().is_some_and(|p| !p.contains(s.into()))
                || self.dport.as_ref().is_some_and(|p| !p.contains(d.into()))
            {
                return false;
            }
        }
        if let Some((t, c)) = self.icmp {
            let L4::Icmp { icmp_type, code } = pkt.l4 else {
                return false;
            };
            if icmp_type != t || c.is_some_and(|c| c != code) {
                return false;
            }
        }
        if self.tcp != TcpFlags::Any {
            let accepted = match tcp_flags {
                Some(f) if pkt.protocol == Protocol::TCP => self.tcp.accepts(f),
                _ => false,
            };
            if !accepted {
                return false;
            }
        }
        self.dst.contains(&pkt.dst) && self.src.contains(&pkt.src)
    }

    /// Whether the match needs an L4 header (ports, ICMP fields or TCP flags).
    pub fn uses_l4(&self) -> bool {
        self.sport.is_some()
            || self.dport.is_some()
            || self.icmp.is_some()
            || self.tcp != TcpFlags::Any
    }

    /// The match of the replies to flows this match describes (addresses and ports
    /// swapped; ICMP replies are not modelled, so ICMP fields are dropped).
    pub fn reversed(&self) -> Match {
        Match {
            src: self.dst.clone(),
            dst: self.src.clone(),
            proto: self.proto,
            sport: self.dport.clone(),
            dport: self.sport.clone(),
            icmp: None,
            tcp: TcpFlags::Any,
        }
    }
}

/// Why a rule has no exact rte_flow form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotExpressible {
    /// `not_protocol`.
    NegatedProtocol,
    /// Named ports (IP-set members with protocol and port).
    NamedPorts,
    /// A service match (`dst_ip_port_set_ids`).
    ServiceMatch,
    /// `not_icmp`.
    NegatedIcmp,
    /// Ports without TCP, UDP or SCTP as the protocol.
    PortsWithoutL4Protocol,
    /// ICMP fields without ICMP as the protocol.
    IcmpWithoutProtocol,
    /// Not an allow or deny (pass, log, a stage allow).
    NotADecision,
}

/// Why a non-deciding entry exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContinueReason {
    /// A `pass` rule (leaves the tier or the profile).
    Pass,
    /// A `log` rule (software must record the match).
    Log,
    /// An allow in the forward-ingress stage: the endpoint's policy still applies.
    StageAllow,
    /// The non-SYN remainder of a TCP deny: established flows may pass.
    StatefulRemainder,
}

/// What an entry does to the packets it matches first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// Accept.
    Allow,
    /// Drop.
    Deny,
    /// No decision here: software carries on.
    Continue(ContinueReason),
}

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// A policy or profile rule.
    Rule {
        /// `rule#` in the capo views, when the id table knows it.
        rule_id: Option<u32>,
        /// `policy <key>` or `profile <name>`.
        list: String,
        /// Index in the list.
        index: usize,
        /// `true` for the forward-ingress stage of the uplink.
        forward: bool,
    },
    /// A tier's end-of-tier drop.
    EndOfTier {
        /// Tier name.
        tier: String,
        /// `rule#` counting the tier's default drops.
        rule_id: Option<u32>,
    },
    /// No profile matched: drop.
    NoProfileMatched,
    /// IPv6 neighbour discovery, accepted before the workload's policy
    /// ([`capo_policy::eval::NEIGHBOUR_DISCOVERY_ICMPV6_TYPES`]); the index is the
    /// type's position there.
    NeighbourDiscovery {
        /// Position in the type list.
        index: usize,
    },
}

/// One entry of a flattened list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where it comes from.
    pub origin: Origin,
    /// What it does.
    pub kind: EntryKind,
    /// The exact match, restricted to the domain, or why there is none.
    pub exact: Result<Match, NotExpressible>,
    /// A superset of what the entry matches (always available).
    pub approx: Match,
    /// The policy rule, for exact evaluation of what has no exact match.
    pub rule: Option<Arc<Rule>>,
}

/// Why a workload endpoint gets no offload at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DomainSkip {
    /// It has no address of its own (none, or all shared with another endpoint).
    NoOwnAddress,
}

/// One local workload's ingress policy, flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// The workload.
    pub workload: WorkloadKey,
    /// The addresses whose traffic this list decides.
    pub dst: AddrSet,
    /// The entries in first-match order.
    pub entries: Vec<Entry>,
    /// Over-approximations of the flows the workload's egress policy can allow (their
    /// replies must not meet a hardware deny).
    pub egress_allow: Vec<Match>,
    /// Set when the domain cannot be offloaded at all.
    pub skipped: Option<DomainSkip>,
}

/// What one generation's policy looks like to the offload planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadProgram {
    /// Generation id.
    pub generation: u64,
    /// Per local workload, ingress.
    pub domains: Vec<Domain>,
    /// Sources Felix evaluates differently (local workloads, the host): always punted.
    pub local_sources: AddrSet,
    /// Which domain decides an address ([`OffloadProgram::domain_of`]).
    by_dst: DomainIndex,
}

/// The domains by destination: single addresses (a workload's own, nearly every
/// domain) hashed, the domains owning wider ranges scanned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DomainIndex {
    /// Per single address (IPv4 as its number, flagged): the first domain owning it.
    hosts: HashMap<(bool, u128), usize>,
    /// Domains owning a range wider than one address, in order.
    wide: Vec<usize>,
}

impl DomainIndex {
    fn new(domains: &[Domain]) -> Self {
        let mut index = DomainIndex::default();
        for (d, dom) in domains.iter().enumerate() {
            let mut wide = false;
            for (v6, set) in [(false, &dom.dst.v4), (true, &dom.dst.v6)] {
                for &(lo, hi) in set.ranges() {
                    if lo == hi {
                        index.hosts.entry((v6, lo)).or_insert(d);
                    } else {
                        wide = true;
                    }
                }
            }
            if wide {
                index.wide.push(d);
            }
        }
        index
    }
}

impl OffloadProgram {
    /// The domain that decides packets to `dst`, if any.
    pub fn domain_of(&self, dst: &IpAddr) -> Option<usize> {
        let key = match dst {
            IpAddr::V4(a) => (false, u128::from(u32::from(*a))),
            IpAddr::V6(a) => (true, u128::from(*a)),
        };
        let host = self.by_dst.hosts.get(&key).copied();
        // A wider range of an earlier domain comes first, as in the domains' order.
        let wide = self
            .by_dst
            .wide
            .iter()
            .copied()
            .take_while(|&d| host.is_none_or(|h| d < h))
            .find(|&d| self.domains.get(d).is_some_and(|dom| dom.dst.contains(dst)));
        wide.or(host)
    }

    /// The first entry of a domain matching the packet (software's view of the
    /// flattened list: `tcp_flags` as for [`Match::contains`]); `state` is the state
    /// the program was lowered from.
    pub fn first_match(
        &self,
        state: &State,
        domain: usize,
        pkt: &Packet,
        tcp_flags: Option<u8>,
    ) -> Option<usize> {
        let d = self.domains.get(domain)?;
        d.entries
            .iter()
            .position(|e| e.matches(state, pkt, tcp_flags))
    }
}

impl Entry {
    /// Whether the entry matches a packet exactly (the policy rule itself where the
    /// entry has no exact match).
    pub fn matches(&self, state: &State, pkt: &Packet, tcp_flags: Option<u8>) -> bool {
        match (&self.exact, &self.rule) {
            (Ok(m), _) => m.contains(pkt, tcp_flags),
            // The over-approximation rejects most packets for a fraction of the
            // rule's own evaluation (IP-set look-ups per member set).
            (Err(_), Some(rule)) => {
                self.approx.contains(pkt, tcp_flags)
                    && capo_policy::eval::rule_matches(state, rule, pkt)
            }
            (Err(_), None) => self.approx.contains(pkt, tcp_flags),
        }
    }
}

/// Builds the offload program of `state` (ids from `ids`, synced to `state`).
pub fn lower(state: &State, ids: &IdTable, generation: u64) -> OffloadProgram {
    let host_addrs: Vec<IpAddr> = state.local_host_addrs();
    let host_set = AddrSet::from_cidrs(
        &host_addrs
            .iter()
            .map(|a| capo_policy::Cidr::host(*a))
            .collect::<Vec<_>>(),
    );
    let mut local = host_set.clone();
    for w in state.workloads().values() {
        local = local.union(&AddrSet::from_cidrs(w.nets()));
    }
    let forward = host_endpoint_for_host_traffic(state, false).map(|(_, h)| h);
    let mut claimed = host_set.clone();
    let mut domains = Vec::new();
    let mut matches = RuleMatches::default();
    for (key, wep) in state.workloads() {
        let own = AddrSet::from_cidrs(wep.nets()).difference(&claimed);
        claimed = claimed.union(&own);
        let mut flat = Flattener {
            state,
            ids,
            matches: &mut matches,
            dst: own.clone(),
            out: Vec::new(),
        };
        if let Some(hep) = forward {
            flat.tiers(&hep.untracked_tiers, Direction::Ingress, false, true);
            flat.tiers(&hep.pre_dnat_tiers, Direction::Ingress, false, true);
            if has_enforced_policies(&hep.forward_tiers, Direction::Ingress) {
                flat.tiers(&hep.forward_tiers, Direction::Ingress, true, true);
            }
        }
        // After the uplink's stage (host endpoint policy sees neighbour discovery),
        // before the workload's: no NIC rule of the workload's may drop it.
        flat.neighbour_discovery();
        flat.tiers(&wep.tiers, Direction::Ingress, true, false);
        flat.profiles(&wep.profile_ids, Direction::Ingress);
        let entries = flat.out;

        let own_src = AddrSet::from_cidrs(wep.nets());
        let egress_allow = egress_allows(state, &mut matches, &wep.tiers, &wep.profile_ids)
            .into_iter()
            .map(|mut m| {
                m.src = Arc::new(m.src.intersect(&own_src));
                m
            })
            .filter(|m| !m.is_empty())
            .collect();
        domains.push(Domain {
            workload: key.clone(),
            skipped: own.is_empty().then_some(DomainSkip::NoOwnAddress),
            dst: own,
            entries,
            egress_allow,
        });
    }
    OffloadProgram {
        generation,
        by_dst: DomainIndex::new(&domains),
        domains,
        local_sources: local,
    }
}

/// Over-approximations of the allow rules of an endpoint's egress policy that a
/// packet can reach: every allow rule of the tiers and profiles, up to the first tier
/// whose end-of-tier drop nothing can get past (an enforced tier with a `Deny`
/// default and no `pass` rule: every packet leaving it without a decision is
/// dropped, so later tiers and the profiles never allow a flow).
fn egress_allows<'s>(
    state: &'s State,
    matches: &mut RuleMatches<'s>,
    tiers: &[TierInfo],
    profile_ids: &[String],
) -> Vec<Match> {
    let dir = Direction::Egress;
    let mut out = Vec::new();
    for tier in tiers {
        let keys = tier.policies(dir);
        let mut passes = false;
        for key in keys.iter().filter(|k| !k.is_staged()) {
            let Some(policy) = state.policies().get(key) else {
                continue;
            };
            for rule in policy.rules(dir) {
                match rule.action {
                    PolicyAction::Allow => {
                        let (_, (_, approx)) = matches.of(state, rule);
                        out.push(approx.clone());
                    }
                    PolicyAction::Pass => passes = true,
                    PolicyAction::Deny | PolicyAction::Log => {}
                }
            }
        }
        if tier.drops_at_end(dir) && !passes {
            return out;
        }
    }
    for name in profile_ids {
        let Some(profile) = state.profiles().get(name) else {
            continue;
        };
        for rule in profile.rules(dir) {
            if rule.action == PolicyAction::Allow {
                let (_, (_, approx)) = matches.of(state, rule);
                out.push(approx.clone());
            }
        }
    }
    out
}

struct Flattener<'a, 'm> {
    state: &'a State,
    ids: &'a IdTable,
    matches: &'m mut RuleMatches<'a>,
    dst: AddrSet,
    out: Vec<Entry>,
}

impl<'a> Flattener<'a, '_> {
    fn tiers(&mut self, tiers: &[TierInfo], dir: Direction, end_of_tier_drop: bool, forward: bool) {
        for tier in tiers {
            let keys = tier.policies(dir);
            if keys.is_empty() {
                continue;
            }
            for key in keys.iter().filter(|k| !k.is_staged()) {
                let Some(policy) = self.state.policies().get(key) else {
                    continue;
                };
                let list = format!("policy {key}");
                let pref = PolicyRef::Policy(key.clone());
                for (index, rule) in policy.rules(dir).iter().enumerate() {
                    let origin = Origin::Rule {
                        rule_id: self.ids.rule(&pref, dir, index),
                        list: list.clone(),
                        index,
                        forward,
                    };
                    let kind = match (rule.action, forward) {
                        (PolicyAction::Allow, false) => EntryKind::Allow,
                        (PolicyAction::Allow, true) => {
                            EntryKind::Continue(ContinueReason::StageAllow)
                        }
                        (PolicyAction::Deny, _) => EntryKind::Deny,
                        (PolicyAction::Log, _) => EntryKind::Continue(ContinueReason::Log),
                        (PolicyAction::Pass, _) => EntryKind::Continue(ContinueReason::Pass),
                    };
                    self.push_rule(origin, kind, rule);
                }
            }
            if end_of_tier_drop && tier.drops_at_end(dir) {
                let origin = Origin::EndOfTier {
                    tier: tier.name.to_string(),
                    rule_id: self.ids.tier_rule(&tier.name),
                };
                self.push_deny_all(origin);
            }
        }
    }

    fn profiles(&mut self, profile_ids: &[String], dir: Direction) {
        for name in profile_ids {
            let Some(profile) = self.state.profiles().get(name) else {
                continue;
            };
            let pref = PolicyRef::Profile(name.clone());
            for (index, rule) in profile.rules(dir).iter().enumerate() {
                let origin = Origin::Rule {
                    rule_id: self.ids.rule(&pref, dir, index),
                    list: format!("profile {name}"),
                    index,
                    forward: false,
                };
                let kind = match rule.action {
                    PolicyAction::Allow => EntryKind::Allow,
                    PolicyAction::Deny => EntryKind::Deny,
                    PolicyAction::Log => EntryKind::Continue(ContinueReason::Log),
                    PolicyAction::Pass => EntryKind::Continue(ContinueReason::Pass),
                };
                self.push_rule(origin, kind, rule);
            }
        }
        self.push_deny_all(Origin::NoProfileMatched);
    }

    /// Neighbour discovery to the workload: allowed before its policy.
    fn neighbour_discovery(&mut self) {
        let Ok(all_v6) = "::/0".parse::<capo_policy::Cidr>() else {
            return;
        };
        let v6 = Arc::new(AddrSet::from_cidrs(&[all_v6]));
        let dst = Arc::new(self.dst.intersect(&v6));
        for (index, t) in capo_policy::eval::NEIGHBOUR_DISCOVERY_ICMPV6_TYPES
            .iter()
            .enumerate()
        {
            let m = Match {
                src: Arc::clone(&v6),
                dst: Arc::clone(&dst),
                proto: Some(capo_policy::Protocol::ICMPV6.0),
                icmp: Some((*t, None)),
                ..Match::any()
            };
            if m.is_empty() {
                return;
            }
            self.out.push(Entry {
                origin: Origin::NeighbourDiscovery { index },
                kind: EntryKind::Allow,
                exact: Ok(m.clone()),
                approx: m,
                rule: None,
            });
        }
    }

    /// A match-all drop (end of tier, no profile matched): hardware may drop TCP
    /// connection attempts; everything else is left to software (established flows,
    /// replies of the endpoint's own flows).
    fn push_deny_all(&mut self, origin: Origin) {
        let mut all = Match::any();
        all.dst = Arc::new(self.dst.clone());
        let syn = Match {
            proto: Some(6),
            tcp: TcpFlags::SynOnly,
            ..all.clone()
        };
        self.out.push(Entry {
            origin: origin.clone(),
            kind: EntryKind::Deny,
            exact: Ok(syn.clone()),
            approx: syn,
            rule: None,
        });
        self.out.push(Entry {
            origin,
            kind: EntryKind::Continue(ContinueReason::StatefulRemainder),
            exact: Err(NotExpressible::NotADecision),
            approx: all,
            rule: None,
        });
    }

    fn push_rule(&mut self, origin: Origin, kind: EntryKind, rule: &'a Rule) {
        let (shared, (exact, approx)) = self.matches.of(self.state, rule);
        let (rule, exact, mut approx) = (Arc::clone(shared), exact.clone(), approx.clone());
        approx.dst = Arc::new(approx.dst.intersect(&self.dst));
        let exact = match (kind, exact) {
            (EntryKind::Continue(_), _) => Err(NotExpressible::NotADecision),
            (_, Ok(mut m)) => {
                m.dst = Arc::new(m.dst.intersect(&self.dst));
                Ok(m)
            }
            (_, Err(e)) => Err(e),
        };
        if approx.is_empty() {
            // Matches nothing in this domain: irrelevant to every packet here.
            return;
        }
        if kind == EntryKind::Deny && approx.proto != Some(6) {
            // A NIC has no connection state: a drop would also cut connections the
            // previous generation allowed, which Calico's conntrack keeps. Of a
            // non-TCP deny only its TCP connection attempts (any protocol) may go
            // down; the rest is software's.
            if approx.proto.is_none() {
                let tcp_syn = |m: &Match| Match {
                    proto: Some(6),
                    tcp: TcpFlags::SynOnly,
                    ..m.clone()
                };
                self.out.push(Entry {
                    origin: origin.clone(),
                    kind: EntryKind::Deny,
                    exact: exact.as_ref().map(tcp_syn).map_err(|e| *e),
                    approx: tcp_syn(&approx),
                    rule: Some(Arc::clone(&rule)),
                });
            }
            self.out.push(Entry {
                origin,
                kind: EntryKind::Continue(ContinueReason::StatefulRemainder),
                exact: Err(NotExpressible::NotADecision),
                approx,
                rule: Some(Arc::clone(&rule)),
            });
            return;
        }
        if kind == EntryKind::Deny && approx.proto == Some(6) {
            // TCP deny: the hardware may only drop connection attempts; the rest of
            // the rule's space is left to software (established flows).
            let syn = |m: &Match, t| Match {
                tcp: t,
                ..m.clone()
            };
            self.out.push(Entry {
                origin: origin.clone(),
                kind: EntryKind::Deny,
                exact: exact
                    .as_ref()
                    .map(|m| syn(m, TcpFlags::SynOnly))
                    .map_err(|e| *e),
                approx: syn(&approx, TcpFlags::SynOnly),
                rule: Some(Arc::clone(&rule)),
            });
            self.out.push(Entry {
                origin,
                kind: EntryKind::Continue(ContinueReason::StatefulRemainder),
                exact: Err(NotExpressible::NotADecision),
                approx: syn(&approx, TcpFlags::NotSynOnly),
                rule: Some(Arc::clone(&rule)),
            });
            return;
        }
        self.out.push(Entry {
            origin,
            kind,
            exact,
            approx,
            rule: Some(Arc::clone(&rule)),
        });
    }
}

/// Addresses a side's positive and negative nets and sets allow (all exact).
fn side_addrs(state: &State, side: &SideMatch) -> AddrSet {
    let mut s = if side.nets.is_empty() {
        AddrSet::any()
    } else {
        AddrSet::from_cidrs(&side.nets)
    };
    s = s.difference(&AddrSet::from_cidrs(&side.not_nets));
    let set_addrs = |id| {
        let cidrs: Vec<capo_policy::Cidr> = state
            .ipsets()
            .get(id)
            .map(|set| {
                set.members()
                    .filter_map(|m| match m {
                        capo_policy::Member::Net(c) => Some(*c),
                        capo_policy::Member::IpPort { .. } => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        AddrSet::from_cidrs(&cidrs)
    };
    for id in &side.ip_sets {
        s = s.intersect(&set_addrs(id));
    }
    for id in &side.not_ip_sets {
        s = s.difference(&set_addrs(id));
    }
    s
}

/// Ports a side allows: `Ok(None)` when unconstrained.
fn side_ports(side: &SideMatch) -> Result<Option<Intervals>, NotExpressible> {
    if !side.uses_ports() {
        return Ok(None);
    }
    if !side.named_port_sets.is_empty() || !side.not_named_port_sets.is_empty() {
        return Err(NotExpressible::NamedPorts);
    }
    let pos = if side.ports.is_empty() {
        all_ports()
    } else {
        ports_from_ranges(&side.ports)
    };
    Ok(Some(pos.difference(&ports_from_ranges(&side.not_ports))))
}

/// A rule's exact match (or why none) and its over-approximation.
type RuleMatch = (Result<Match, NotExpressible>, Match);

/// Each distinct rule's [`rule_match`], computed once per lowering: a policy's rules
/// recur in the list of every workload that includes the policy, and their IP sets'
/// address algebra is most of the lowering's work. Keyed by the rule's content, so
/// equal rules of different policies share one entry too. The entries lowered from
/// a rule also share one copy of it.
#[derive(Default)]
struct RuleMatches<'s> {
    by_rule: HashMap<&'s Rule, (Arc<Rule>, RuleMatch), foldhash::fast::RandomState>,
}

impl<'s> RuleMatches<'s> {
    fn of(&mut self, state: &'s State, rule: &'s Rule) -> &(Arc<Rule>, RuleMatch) {
        self.by_rule
            .entry(rule)
            .or_insert_with(|| (Arc::new(rule.clone()), rule_match(state, rule)))
    }
}

/// Works a rule's [`RuleMatch`] out from its criteria and the IP sets they name.
fn rule_match(state: &State, rule: &Rule) -> RuleMatch {
    let family = rule.family();
    let src = Arc::new(side_addrs(state, &rule.src).restrict(family));
    let dst = Arc::new(side_addrs(state, &rule.dst).restrict(family));
    let proto = rule.protocol.map(|p| p.0);
    let approx_ports = |side: &SideMatch| match side_ports(side) {
        Ok(p) if proto.is_some_and(|p| Protocol(p).has_ports()) => p,
        _ => None,
    };
    let approx = Match {
        src: Arc::clone(&src),
        dst: Arc::clone(&dst),
        proto,
        sport: approx_ports(&rule.src),
        dport: approx_ports(&rule.dst),
        icmp: match (rule.icmp, proto) {
            (Some(i), Some(1 | 58)) => Some((i.icmp_type, i.code)),
            _ => None,
        },
        tcp: TcpFlags::Any,
    };
    let exact = (|| {
        if rule.not_protocol.is_some() {
            return Err(NotExpressible::NegatedProtocol);
        }
        if rule.not_icmp.is_some() {
            return Err(NotExpressible::NegatedIcmp);
        }
        if !rule.dst_ip_port_sets.is_empty() {
            return Err(NotExpressible::ServiceMatch);
        }
        let sport = side_ports(&rule.src)?;
        let dport = side_ports(&rule.dst)?;
        if (sport.is_some() || dport.is_some()) && !matches!(proto, Some(6 | 17 | 132)) {
            return Err(NotExpressible::PortsWithoutL4Protocol);
        }
        let icmp = match (rule.icmp, proto) {
            (None, _) => None,
            (Some(i), Some(1 | 58)) => Some((i.icmp_type, i.code)),
            (Some(_), _) => return Err(NotExpressible::IcmpWithoutProtocol),
        };
        Ok(Match {
            src,
            dst,
            proto,
            sport,
            dport,
            icmp,
            tcp: TcpFlags::Any,
        })
    })();
    (exact, approx)
}

/// Which (domain, entry) first matches `pkt` in software; `None` for packets from
/// local sources or to no local workload.
pub fn attribute(
    state: &State,
    program: &OffloadProgram,
    pkt: &Packet,
    tcp_flags: Option<u8>,
) -> Option<(usize, usize)> {
    if program.local_sources.contains(&pkt.src) {
        return None;
    }
    let d = program.domain_of(&pkt.dst)?;
    program
        .first_match(state, d, pkt, tcp_flags)
        .map(|e| (d, e))
}
