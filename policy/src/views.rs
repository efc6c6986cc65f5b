//! The capo views: `show capo interfaces|ipsets|policies [verbose]|rules`, in exactly
//! the format of the C plugin (and of the seed document), plus the stable ids they
//! print.
//!
//! The ids they print come from [`crate::ids::IdTable`].
//!
//! Where the format has no room for Calico's meaning (several tiers, a tier's default
//! action, staged policies), extra lines in the same style say it; a single tier of
//! enforced policies with the default action Deny prints exactly as the C plugin did.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::EndpointToHostAction;
use crate::eval::{has_enforced_policies, Decider, InternalPolicy};
use crate::ipset::IpSetId;
use crate::model::{
    Action, Direction, HostEndpoint, Rule, SideMatch, TierDefault, TierInfo, WorkloadEndpoint,
};
use crate::net::{Cidr, IpFamily, PortRange};
use crate::state::State;

use crate::ids::{IdTable, InternalPolicyId, PolicyRef, LOCAL_WORKLOADS_SET};

/// One of the node's policed interfaces, as the views list them.
#[derive(Debug, Clone, Copy)]
pub struct NodeInterface<'a> {
    /// Its `sw_if_index` (`u32::MAX` when not known).
    pub sw_if_index: u32,
    /// The endpoint's interface name (the host-facing interface's for the host).
    pub name: &'a str,
    /// What it is.
    pub kind: NodeInterfaceKind<'a>,
}

/// What a policed interface is.
#[derive(Debug, Clone, Copy)]
pub enum NodeInterfaceKind<'a> {
    /// A local workload's.
    Workload(&'a WorkloadEndpoint),
    /// The host-facing interface.
    Host,
    /// A named host endpoint's.
    HostEndpoint(&'a HostEndpoint),
}

/// A rule as the counters and the rules view list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberedRule {
    /// `rule#` id.
    pub id: u32,
    /// `[policy#N]` and what it is (policy, profile, tier end).
    pub owner: String,
    /// The rule as `show capo rules` prints it.
    pub line: String,
}

/// Renders views of one state with one id table.
pub struct Views<'a> {
    state: &'a State,
    ids: &'a IdTable,
    compact_sets: bool,
}

/// Rule id of an internal rule with a fixed id.
fn internal_rule_id(p: InternalPolicyId, dir: Direction) -> Option<u32> {
    match (p, dir) {
        (InternalPolicyId::AllowFromHost, Direction::Ingress) => Some(0),
        (InternalPolicyId::AllowFromHost, Direction::Egress) => Some(1),
        (InternalPolicyId::WorkloadsToHost, Direction::Ingress) => Some(2),
        (InternalPolicyId::AllowToHost, Direction::Ingress) => Some(3),
        (InternalPolicyId::AllowToHost, Direction::Egress) => Some(4),
        _ => None,
    }
}

/// A rule together with its id, ready to print.
struct Numbered<'r> {
    id: u32,
    rule: std::borrow::Cow<'r, Rule>,
}

/// A synthetic set id standing for `ipset#0` inside internal rules.
fn local_workloads_set_id() -> IpSetId {
    IpSetId::new("capo:local-workloads").unwrap_or_else(|| unreachable!("non-empty literal"))
}

impl<'a> Views<'a> {
    /// Views over `state`, printing the ids of `ids` (which must have been synced
    /// with this state).
    pub fn new(state: &'a State, ids: &'a IdTable) -> Self {
        Views {
            state,
            ids,
            compact_sets: false,
        }
    }

    /// The same views, with IP sets referenced as `[ipset#N;kind;M members]` instead of
    /// printed in full: for counters and plans, where a million members would not fit.
    pub fn with_compact_sets(mut self) -> Self {
        self.compact_sets = true;
        self
    }

    fn host_cidrs(&self) -> Vec<Cidr> {
        self.state
            .local_host_addrs()
            .into_iter()
            .map(Cidr::host)
            .collect()
    }

    fn internal_rules(&self, p: InternalPolicyId, dir: Direction) -> Vec<Numbered<'static>> {
        // Without a node address (manifests without --node) the rules on the host's
        // addresses match nothing: they are not listed (printed bare they would read
        // as allow-all).
        let on_host_addrs = matches!(
            (p, dir),
            (InternalPolicyId::AllowFromHost, Direction::Ingress)
                | (InternalPolicyId::AllowToHost, _)
        );
        if on_host_addrs && self.state.local_host_addrs().is_empty() {
            return Vec::new();
        }
        let mut rule = match (p, dir) {
            (InternalPolicyId::AllowFromHost, Direction::Ingress) => {
                let mut r = Rule::any(Action::Allow);
                r.src.nets = self.host_cidrs();
                r
            }
            (InternalPolicyId::AllowFromHost, Direction::Egress) => {
                let mut r = Rule::any(Action::Allow);
                r.dst.ip_sets = vec![local_workloads_set_id()];
                r
            }
            (InternalPolicyId::WorkloadsToHost, Direction::Ingress) => {
                let action = match self.state.config().endpoint_to_host {
                    EndpointToHostAction::Accept => Action::Allow,
                    EndpointToHostAction::Drop => Action::Deny,
                    EndpointToHostAction::Return => Action::Pass,
                };
                let mut r = Rule::any(action);
                r.src.ip_sets = vec![local_workloads_set_id()];
                r
            }
            (InternalPolicyId::AllowToHost, Direction::Ingress) => {
                let mut r = Rule::any(Action::Allow);
                r.dst.nets = self.host_cidrs();
                r
            }
            (InternalPolicyId::AllowToHost, Direction::Egress) => {
                let mut r = Rule::any(Action::Allow);
                r.src.nets = self.host_cidrs();
                r
            }
            (InternalPolicyId::Failsafe, _) => {
                let inbound = dir == Direction::Ingress;
                return self
                    .ids
                    .failsafe_rule_ids()
                    .filter(|(rule_inbound, _, _)| *rule_inbound == inbound)
                    .map(|(_, port, id)| {
                        let mut r = Rule::any(Action::Allow);
                        r.protocol = Some(port.protocol);
                        r.dst.ports = vec![PortRange::single(port.port)];
                        let side = if inbound { &mut r.src } else { &mut r.dst };
                        side.nets.extend(port.net);
                        Numbered {
                            id,
                            rule: std::borrow::Cow::Owned(r),
                        }
                    })
                    .collect();
            }
            _ => return Vec::new(),
        };
        rule.rule_id = String::new();
        internal_rule_id(p, dir)
            .map(|id| Numbered {
                id,
                rule: std::borrow::Cow::Owned(rule),
            })
            .into_iter()
            .collect()
    }

    fn rules_of(&self, pref: &PolicyRef, dir: Direction) -> Vec<Numbered<'a>> {
        match pref {
            PolicyRef::Internal(i) => self.internal_rules(*i, dir),
            other => self
                .ids
                .rule_list(other, dir)
                .map(|l| {
                    l.iter()
                        .map(|(r, id)| Numbered {
                            id: *id,
                            rule: std::borrow::Cow::Borrowed(r),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn policy_id(&self, pref: &PolicyRef) -> String {
        match self.ids.policy(pref) {
            Some(id) => format!("policy#{id}"),
            None => "deleted policy".to_string(),
        }
    }

    fn set_view(&self, id: &IpSetId) -> String {
        if *id == local_workloads_set_id() {
            if self.compact_sets {
                let n = self.local_workload_addrs().len();
                return format!("[ipset#{LOCAL_WORKLOADS_SET};ip;{n} members]");
            }
            return self.local_workloads_set_view();
        }
        match (self.ids.ipset(id), self.state.ipsets().get(id)) {
            (Some(n), Some(set)) if self.compact_sets => {
                format!(
                    "[ipset#{n};{};{} members]",
                    set.kind().view_name(),
                    set.len()
                )
            }
            (Some(n), Some(set)) => {
                let mut s = format!("[ipset#{n};{};", set.kind().view_name());
                for m in set.members() {
                    let _ = write!(s, "{},", m.view(set.kind()));
                }
                s.push(']');
                s
            }
            _ => "deleted ipset".to_string(),
        }
    }

    fn local_workload_addrs(&self) -> Vec<IpAddr> {
        self.state
            .workloads()
            .values()
            .flat_map(|w| w.nets().map(|n| n.net().addr()))
            .collect()
    }

    fn local_workloads_set_view(&self) -> String {
        let mut s = format!("[ipset#{LOCAL_WORKLOADS_SET};ip;");
        for a in self.local_workload_addrs() {
            let _ = write!(s, "{a},");
        }
        s.push(']');
        s
    }

    /// One rule as `[rule#N;action][criteria,…]`.
    pub fn rule_line(&self, id: u32, rule: &Rule) -> String {
        let mut s = format!("[rule#{id};{}][", rule.action);
        if let Some(v) = rule.ip_version {
            let _ = write!(s, "af==ip{},", if v == IpFamily::V4 { 4 } else { 6 });
        }
        if let Some(p) = rule.protocol {
            let _ = write!(s, "proto=={p},");
        }
        if let Some(p) = rule.not_protocol {
            let _ = write!(s, "proto!={p},");
        }
        if let Some(m) = rule.icmp {
            let _ = write!(s, "icmp-type=={},", m.icmp_type);
            if let Some(c) = m.code {
                let _ = write!(s, "icmp-code=={c},");
            }
        }
        if let Some(m) = rule.not_icmp {
            match m.code {
                None => {
                    let _ = write!(s, "icmp-type!={},", m.icmp_type);
                }
                // NOT(type AND code): the C plugin's two `!=` filters would mean
                // something else, so it prints as one pair.
                Some(c) => {
                    let _ = write!(s, "icmp!=[{};{c}],", m.icmp_type);
                }
            }
        }
        self.side(&mut s, "dst==", &rule.dst, true);
        for id in &rule.dst_ip_port_sets {
            let _ = write!(s, "svc=={},", self.set_view(id));
        }
        self.side(&mut s, "src==", &rule.src, true);
        self.side(&mut s, "dst!=", &rule.dst, false);
        self.side(&mut s, "src!=", &rule.src, false);
        s.push(']');
        s
    }

    fn side(&self, s: &mut String, tag: &str, side: &SideMatch, positive: bool) {
        let (nets, ports, sets, named) = if positive {
            (
                &side.nets,
                &side.ports,
                &side.ip_sets,
                &side.named_port_sets,
            )
        } else {
            (
                &side.not_nets,
                &side.not_ports,
                &side.not_ip_sets,
                &side.not_named_port_sets,
            )
        };
        for n in nets {
            let _ = write!(s, "{tag}{n},");
        }
        for p in ports {
            let _ = write!(s, "{tag}{p},");
        }
        for id in sets.iter().chain(named) {
            let _ = write!(s, "{tag}{},", self.set_view(id));
        }
    }

    /// `show capo rules`.
    pub fn rules(&self) -> String {
        self.numbered_rules()
            .into_iter()
            .map(|r| r.line + "\n")
            .collect()
    }

    /// Every rule with its id, owner and printed form, in id order.
    pub fn numbered_rules(&self) -> Vec<NumberedRule> {
        let mut out: Vec<NumberedRule> = Vec::new();
        for p in [
            InternalPolicyId::AllowFromHost,
            InternalPolicyId::WorkloadsToHost,
            InternalPolicyId::AllowToHost,
            InternalPolicyId::Failsafe,
        ] {
            let owner = self.policy_id(&PolicyRef::Internal(p));
            for dir in Direction::BOTH {
                for n in self.internal_rules(p, dir) {
                    out.push(NumberedRule {
                        id: n.id,
                        owner: owner.clone(),
                        line: self.rule_line(n.id, &n.rule),
                    });
                }
            }
        }
        for (pref, list) in self.ids.rule_lists() {
            let owner = match pref {
                PolicyRef::Profile(name) => format!("{} profile {name}", self.policy_id(pref)),
                PolicyRef::Policy(key) => format!("{} {key}", self.policy_id(pref)),
                PolicyRef::Internal(_) => self.policy_id(pref),
            };
            for (rule, id) in list {
                out.push(NumberedRule {
                    id: *id,
                    owner: owner.clone(),
                    line: self.rule_line(*id, rule),
                });
            }
        }
        for (tier, id) in self.ids.tier_rules() {
            out.push(NumberedRule {
                id,
                owner: format!("tier {tier} end-of-tier"),
                line: format!("[rule#{id};deny][]"),
            });
        }
        out.sort_by_key(|r| r.id);
        out
    }

    /// `show capo ipsets`.
    pub fn ipsets(&self) -> String {
        let mut out = self.local_workloads_set_view() + "\n";
        let mut sets: Vec<(&IpSetId, u32)> = self
            .state
            .ipsets()
            .keys()
            .filter_map(|id| self.ids.ipset(id).map(|n| (id, n)))
            .collect();
        sets.sort_by_key(|(_, n)| *n);
        for (id, _) in sets {
            out += &self.set_view(id);
            out.push('\n');
        }
        out
    }

    fn all_policies(&self) -> Vec<(u32, PolicyRef)> {
        let mut v: Vec<(u32, PolicyRef)> = [
            InternalPolicyId::WorkloadsToHost,
            InternalPolicyId::Failsafe,
            InternalPolicyId::AllowFromHost,
            InternalPolicyId::AllowToHost,
        ]
        .into_iter()
        .map(|i| (i.id(), PolicyRef::Internal(i)))
        .collect();
        v.extend(self.ids.policy_ids().map(|(r, id)| (id, r.clone())));
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// `show capo policies [verbose]`.
    pub fn policies(&self, verbose: bool) -> String {
        let mut out = String::new();
        for (id, pref) in self.all_policies() {
            let tx = self.rules_of(&pref, Direction::Ingress);
            let rx = self.rules_of(&pref, Direction::Egress);
            if verbose {
                let _ = writeln!(out, "[policy#{id}]");
                self.write_rules(&mut out, "  tx:", &tx);
                self.write_rules(&mut out, "  rx:", &rx);
            } else {
                let _ = writeln!(
                    out,
                    "[policy#{id}] rx-rules:{} tx-rules:{}",
                    rx.len(),
                    tx.len()
                );
            }
        }
        out
    }

    fn write_rules(&self, out: &mut String, prefix: &str, rules: &[Numbered<'_>]) {
        for n in rules {
            let _ = writeln!(out, "{prefix}{}", self.rule_line(n.id, &n.rule));
        }
    }

    /// The node's policed interfaces in the order the views print them (by
    /// `sw_if_index`; unknown indices last): each local workload, the host-facing
    /// interface, each named host endpoint.
    pub fn node_interfaces(&self) -> Vec<NodeInterface<'a>> {
        let index = |name: &str| self.ids.interface(name).unwrap_or(u32::MAX);
        let mut out: Vec<NodeInterface<'a>> = Vec::new();
        for wep in self.state.workloads().values() {
            out.push(NodeInterface {
                sw_if_index: index(&wep.name),
                name: &wep.name,
                kind: NodeInterfaceKind::Workload(wep),
            });
        }
        let host = self.ids.host_interface();
        out.push(NodeInterface {
            sw_if_index: index(host),
            name: host,
            kind: NodeInterfaceKind::Host,
        });
        for hep in self.state.host_endpoints().values() {
            if hep.name.is_empty() || hep.name == "*" {
                continue;
            }
            out.push(NodeInterface {
                sw_if_index: index(&hep.name),
                name: &hep.name,
                kind: NodeInterfaceKind::HostEndpoint(hep),
            });
        }
        out.sort_by_key(|i| i.sw_if_index);
        out
    }

    /// `show capo interfaces`.
    pub fn interfaces(&self) -> String {
        let mut out = String::from("Interfaces with policies configured:\n");
        for iface in self.node_interfaces() {
            out += &match iface.kind {
                NodeInterfaceKind::Workload(wep) => self.workload_block(iface.sw_if_index, wep),
                NodeInterfaceKind::Host => self.host_interface_block().1,
                NodeInterfaceKind::HostEndpoint(hep) => {
                    self.host_endpoint_block(iface.sw_if_index, hep)
                }
            };
        }
        out
    }

    fn workload_block(&self, idx: u32, wep: &WorkloadEndpoint) -> String {
        let v4 = wep.ipv4_nets.first().map(|n| n.net().addr());
        let v6 = wep.ipv6_nets.first().map(|n| n.net().addr());
        let mut b = header(self.ids.shown_name(&wep.name), idx, false, v4, v6);
        let mut tx = Vec::new();
        // allow-from-host, when the node has an address it could match.
        if has_enforced_policies(&wep.tiers, Direction::Ingress)
            && !self.state.local_host_addrs().is_empty()
        {
            tx.push(Item::Policy(PolicyRef::Internal(
                InternalPolicyId::AllowFromHost,
            )));
        }
        tx.extend(tier_items(&wep.tiers, Direction::Ingress));
        let rx = tier_items(&wep.tiers, Direction::Egress);
        self.write_dirs(&mut b, &rx, &tx, false);
        self.write_profiles(&mut b, &wep.profile_ids);
        b
    }

    fn host_endpoint_block(&self, idx: u32, hep: &HostEndpoint) -> String {
        let mut b = header(self.ids.shown_name(&hep.name), idx, true, None, None);
        // Inverted: packets arriving (VPP rx) are Calico ingress.
        let mut ingress = vec![Item::Policy(PolicyRef::Internal(
            InternalPolicyId::AllowToHost,
        ))];
        ingress.extend(tier_items(&hep.pre_dnat_tiers, Direction::Ingress));
        ingress.extend(tier_items(&hep.forward_tiers, Direction::Ingress));
        let mut egress = vec![Item::Policy(PolicyRef::Internal(
            InternalPolicyId::AllowToHost,
        ))];
        egress.extend(tier_items(&hep.forward_tiers, Direction::Egress));
        self.write_dirs(&mut b, &ingress, &egress, true);
        b
    }

    fn host_interface_block(&self) -> (u32, String) {
        let name = self.ids.host_interface();
        let idx = self.ids.interface(name).unwrap_or(u32::MAX);
        let mut b = header(self.ids.shown_name(name), idx, false, None, None);
        let hep = crate::eval::host_endpoint_for_host_traffic(self.state, false).map(|(_, h)| h);
        let mut tx = vec![Item::Policy(PolicyRef::Internal(
            InternalPolicyId::WorkloadsToHost,
        ))];
        let mut rx = Vec::new();
        if let Some(hep) = hep {
            tx.push(Item::Policy(PolicyRef::Internal(
                InternalPolicyId::Failsafe,
            )));
            tx.extend(tier_items(&hep.untracked_tiers, Direction::Ingress));
            tx.extend(tier_items(&hep.pre_dnat_tiers, Direction::Ingress));
            tx.extend(tier_items(&hep.tiers, Direction::Ingress));
            rx.push(Item::Policy(PolicyRef::Internal(
                InternalPolicyId::AllowFromHost,
            )));
            rx.push(Item::Policy(PolicyRef::Internal(
                InternalPolicyId::Failsafe,
            )));
            rx.extend(tier_items(&hep.untracked_tiers, Direction::Egress));
            rx.extend(tier_items(&hep.tiers, Direction::Egress));
        }
        self.write_dirs(&mut b, &rx, &tx, false);
        if let Some(hep) = hep {
            self.write_profiles(&mut b, &hep.profile_ids);
        }
        (idx, b)
    }

    /// Writes `  rx:` then `  tx:`; `rx_items` are the policies for packets VPP
    /// receives on the interface (Calico egress for pods, ingress when inverted).
    fn write_dirs(&self, b: &mut String, rx_items: &[Item], tx_items: &[Item], inverted: bool) {
        // Which rule list each heading prints: pods' ingress rules are VPP tx.
        let (rx_rules, tx_rules) = if inverted {
            (Direction::Ingress, Direction::Egress)
        } else {
            (Direction::Egress, Direction::Ingress)
        };
        for (heading, items, dir, tag) in [
            ("  rx:", rx_items, rx_rules, "rx:"),
            ("  tx:", tx_items, tx_rules, "tx:"),
        ] {
            if items.is_empty() {
                continue;
            }
            let _ = writeln!(b, "{heading}");
            for item in items {
                match item {
                    Item::Tier(t, dir_of_tier) => {
                        let _ = writeln!(b, "    {}", self.tier_line(t, *dir_of_tier));
                    }
                    Item::Policy(pref) => {
                        let staged = matches!(pref, PolicyRef::Policy(k) if k.is_staged());
                        let _ = writeln!(
                            b,
                            "    [{}{}]",
                            self.policy_id(pref),
                            if staged { " staged" } else { "" }
                        );
                        let rules = self.rules_of(pref, dir);
                        self.write_rules(b, &format!("      {tag}"), &rules);
                    }
                }
            }
        }
    }

    fn tier_line(&self, t: &TierInfo, dir: Direction) -> String {
        let end = match (t.drops_at_end(dir), self.ids.tier_rule(&t.name)) {
            (true, Some(id)) => format!(" end-of-tier=[rule#{id};deny]"),
            (true, None) => " end-of-tier=deny".to_string(),
            (false, _) => " end-of-tier=pass".to_string(),
        };
        format!("[tier {}{end}]", t.name)
    }

    fn write_profiles(&self, b: &mut String, profile_ids: &[String]) {
        if profile_ids.is_empty() {
            return;
        }
        let _ = writeln!(b, "  profiles:");
        for name in profile_ids {
            let pref = PolicyRef::Profile(name.clone());
            let _ = writeln!(b, "    [{}]", self.policy_id(&pref));
            self.write_rules(b, "      tx:", &self.rules_of(&pref, Direction::Ingress));
            self.write_rules(b, "      rx:", &self.rules_of(&pref, Direction::Egress));
        }
    }

    /// The rule a decider points at, printed as in the views (`[rule#18;allow][…]`),
    /// or a plain sentence for deciders that are not rules.
    pub fn decider_line(&self, d: &Decider) -> String {
        let numbered = |pref: PolicyRef, dir: Direction, index: usize| {
            let rules = self.rules_of(&pref, dir);
            match rules.get(index) {
                Some(n) => format!(
                    "[{}] {}",
                    self.policy_id(&pref),
                    self.rule_line(n.id, &n.rule)
                ),
                None => format!("[{}] rule {index}", self.policy_id(&pref)),
            }
        };
        match d {
            Decider::PolicyRule {
                tier,
                policy,
                direction,
                index,
            } => format!(
                "tier {tier}: {}",
                numbered(PolicyRef::Policy(policy.clone()), *direction, *index)
            ),
            Decider::EndOfTier { tier } => match self.ids.tier_rule(tier) {
                Some(id) => format!("tier {tier}: end of tier [rule#{id};deny][]"),
                None => format!("tier {tier}: end of tier, deny"),
            },
            Decider::ProfileRule {
                profile,
                direction,
                index,
            } => format!(
                "profile {profile}: {}",
                numbered(PolicyRef::Profile(profile.clone()), *direction, *index)
            ),
            Decider::NoProfileMatched => "no profile rule matched: deny".to_string(),
            Decider::Internal {
                policy: InternalPolicy::NeighbourDiscovery,
                index,
            } => format!(
                "allowed before policy: neighbour discovery (ICMPv6 type {})",
                crate::eval::NEIGHBOUR_DISCOVERY_ICMPV6_TYPES
                    .get(*index)
                    .map_or_else(|| "?".to_string(), u8::to_string)
            ),
            Decider::Internal { policy, index } => {
                let Some(id) = InternalPolicyId::of(*policy) else {
                    return format!("internal {policy:?}");
                };
                let (dir, index) = match (policy, index) {
                    (InternalPolicy::AllowFromHost, 1) => (Direction::Egress, 0),
                    (InternalPolicy::Failsafe, i) => {
                        let n_in = self.state.config().failsafe_inbound.len();
                        if *i < n_in {
                            (Direction::Ingress, *i)
                        } else {
                            (Direction::Egress, i - n_in)
                        }
                    }
                    (_, i) => (Direction::Ingress, *i),
                };
                let name = match policy {
                    InternalPolicy::WorkloadsToHost => "workloads-to-host",
                    InternalPolicy::Failsafe => "failsafe",
                    InternalPolicy::AllowFromHost => "allow-from-host",
                    InternalPolicy::AllowToHost => "allow-to-host",
                    InternalPolicy::NeighbourDiscovery => "neighbour-discovery",
                };
                format!("{name}: {}", numbered(PolicyRef::Internal(id), dir, index))
            }
            Decider::NoHostEndpoint => "no host endpoint: host traffic is not policed".to_string(),
            Decider::NoForwardPolicy => "no forward policy: allow".to_string(),
        }
    }
}

enum Item {
    Tier(TierInfo, Direction),
    Policy(PolicyRef),
}

/// The policies of `tiers` for `dir`, with tier lines where one tier with the
/// default action Deny and only enforced policies would not say enough.
fn tier_items(tiers: &[TierInfo], dir: Direction) -> Vec<Item> {
    let used: Vec<&TierInfo> = tiers
        .iter()
        .filter(|t| !t.policies(dir).is_empty())
        .collect();
    let plain = used.len() == 1
        && used.iter().all(|t| {
            t.default_action == TierDefault::Deny && t.policies(dir).iter().all(|k| !k.is_staged())
        });
    let mut items = Vec::new();
    for t in used {
        if !plain {
            items.push(Item::Tier(t.clone(), dir));
        }
        items.extend(
            t.policies(dir)
                .iter()
                .map(|k| Item::Policy(PolicyRef::Policy(k.clone()))),
        );
    }
    items
}

fn header(name: &str, idx: u32, inverted: bool, v4: Option<IpAddr>, v6: Option<IpAddr>) -> String {
    let mut s = format!("[{name} sw_if_index={idx} ");
    if inverted {
        s += "inverted";
    }
    if let Some(a) = v4 {
        let _ = write!(s, " addr={a}");
    }
    if let Some(a) = v6 {
        let _ = write!(s, " addr6={a}");
    }
    s += "]\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipset::{IpSetKind, Member};

    #[test]
    fn rule_line_orders_filters_then_dst_src_groups() {
        let mut state = State::new();
        let id = IpSetId::new("s:x").unwrap();
        state
            .apply(crate::state::Update::IpSetReplace {
                id: id.clone(),
                kind: IpSetKind::Net,
                members: vec!["11.0.0.196/32".parse::<Member>().unwrap()],
            })
            .unwrap();
        let mut ids = IdTable::default();
        ids.sync(&state);
        let mut r = Rule::any(Action::Allow);
        r.protocol = Some(crate::net::Protocol::TCP);
        r.dst.ports = vec![PortRange::single(5978)];
        r.src.ip_sets = vec![id];
        r.dst.not_ports = vec![PortRange::new(3050, 3060).unwrap()];
        let v = Views::new(&state, &ids);
        assert_eq!(
            v.rule_line(18, &r),
            "[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,],dst!=[3050-3060],]"
        );
        assert_eq!(
            v.rule_line(1, &Rule::any(Action::Allow)),
            "[rule#1;allow][]"
        );
    }

    #[test]
    fn unknown_interface_index_header_has_double_space_before_addr() {
        let h = header(
            "tun3",
            11,
            false,
            "11.0.0.67".parse().ok(),
            "fd20::1".parse().ok(),
        );
        assert_eq!(h, "[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1]\n");
        assert_eq!(
            header("uplink", 2, false, None, None),
            "[uplink sw_if_index=2 ]\n"
        );
    }
}
