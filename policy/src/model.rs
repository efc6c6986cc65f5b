//! Rules, policies, profiles, tiers and endpoints: Felix's model, validated.
//!
//! Every type here is built by the agent's conversion from Felix's protobuf (or from
//! manifests) and holds only valid values: parsed prefixes, port ranges within
//! 0..=65535, protocol numbers within 0..=255.

use std::fmt;

use compact_str::CompactString;

use crate::ipset::IpSetId;
use crate::net::{Cidr, IpFamily, PortRange, Protocol};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Accept the packet.
    Allow,
    /// Drop the packet.
    Deny,
    /// Record the match and carry on with the next rule.
    Log,
    /// Leave the current tier (`next-tier` on Felix's wire, `Pass` in the API).
    Pass,
}

impl Action {
    /// Parses Felix's action strings: `allow`, `deny`, `log`, `next-tier`, `pass`, and
    /// `""` which Felix's own renderer treats as allow.
    pub fn from_felix(s: &str) -> Option<Self> {
        // Compared without case, and without a lowered copy of every rule's action.
        let names: [(&str, Action); 6] = [
            ("", Action::Allow),
            ("allow", Action::Allow),
            ("deny", Action::Deny),
            ("log", Action::Log),
            ("next-tier", Action::Pass),
            ("pass", Action::Pass),
        ];
        names
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, a)| a)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "log",
            Action::Pass => "pass",
        })
    }
}

/// An ICMP type, optionally with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code, when the rule names one.
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// Whether a packet's type and code satisfy the match.
    pub fn matches(&self, icmp_type: u8, code: u8) -> bool {
        self.icmp_type == icmp_type && self.code.is_none_or(|c| c == code)
    }
}

/// Source- or destination-side criteria of a rule, positive or negated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SideMatch {
    /// Any one of these prefixes must hold the address (when non-empty).
    pub nets: Vec<Cidr>,
    /// None of these prefixes may hold the address.
    pub not_nets: Vec<Cidr>,
    /// Any range, or any named-port set, must hold the port (when either is non-empty).
    pub ports: Vec<PortRange>,
    /// No range may hold the port.
    pub not_ports: Vec<PortRange>,
    /// Named-port sets (`ip,proto:port` members), OR-ed with `ports`.
    pub named_port_sets: Vec<IpSetId>,
    /// Named-port sets that must not hold (address, protocol, port).
    pub not_named_port_sets: Vec<IpSetId>,
    /// Every listed set must hold the address (AND).
    pub ip_sets: Vec<IpSetId>,
    /// No listed set may hold the address.
    pub not_ip_sets: Vec<IpSetId>,
}

impl SideMatch {
    /// Whether the side constrains the port in any way.
    pub fn uses_ports(&self) -> bool {
        !(self.ports.is_empty()
            && self.not_ports.is_empty()
            && self.named_port_sets.is_empty()
            && self.not_named_port_sets.is_empty())
    }

    /// Every IP set the side refers to.
    pub fn set_ids(&self) -> impl Iterator<Item = &IpSetId> {
        self.named_port_sets
            .iter()
            .chain(&self.not_named_port_sets)
            .chain(&self.ip_sets)
            .chain(&self.not_ip_sets)
    }
}

/// One Felix rule (reference: felix-protocol §2.6), every L3/L4 criterion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What the rule does when it matches.
    pub action: Action,
    /// Family restriction (explicit, or inferred from an ICMP protocol).
    pub ip_version: Option<IpFamily>,
    /// Protocol that must match.
    pub protocol: Option<Protocol>,
    /// Protocol that must not match.
    pub not_protocol: Option<Protocol>,
    /// Source criteria.
    pub src: SideMatch,
    /// Destination criteria.
    pub dst: SideMatch,
    /// Service match: every set must hold (dst address, protocol, dst port).
    pub dst_ip_port_sets: Vec<IpSetId>,
    /// ICMP type (and code) that must match.
    pub icmp: Option<IcmpMatch>,
    /// ICMP type (and code) that must not match: NOT(type == a AND code == b).
    pub not_icmp: Option<IcmpMatch>,
    /// Felix's opaque rule id, kept for logs.
    pub rule_id: String,
}

impl Rule {
    /// A rule with the given action and no criteria: it matches every packet.
    pub fn any(action: Action) -> Self {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            src: SideMatch::default(),
            dst: SideMatch::default(),
            dst_ip_port_sets: Vec::new(),
            icmp: None,
            not_icmp: None,
            rule_id: String::new(),
        }
    }

    /// Every IP set the rule refers to.
    pub fn set_ids(&self) -> impl Iterator<Item = &IpSetId> {
        self.src
            .set_ids()
            .chain(self.dst.set_ids())
            .chain(&self.dst_ip_port_sets)
    }

    /// The family the rule is restricted to: explicit `ip_version`, else the one
    /// Felix infers from an ICMP protocol.
    pub fn family(&self) -> Option<IpFamily> {
        self.ip_version.or(match self.protocol {
            Some(Protocol::ICMP) => Some(IpFamily::V4),
            Some(Protocol::ICMPV6) => Some(IpFamily::V6),
            _ => None,
        })
    }
}

/// Calico's two rule directions within a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic towards the endpoint (`inbound_rules`, a tier's `ingress_policies`).
    Ingress,
    /// Traffic from the endpoint (`outbound_rules`, a tier's `egress_policies`).
    Egress,
}

impl Direction {
    /// Both directions, ingress first.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Identity of a policy: `(kind, namespace, name)` since v3.32; v3.31's
/// `(tier, name)` maps onto it with an empty kind and namespace.
///
/// The parts are compact strings: up to 24 bytes are held in the key itself, so
/// looking such a key up in a map compares and hashes it without reading three more
/// allocations (an endpoint lists dozens of policies, each looked up several times
/// when it is compiled), and copying it allocates nothing. Longer parts are held
/// apart, as a `String` would hold them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyKey {
    /// `NetworkPolicy`, `GlobalNetworkPolicy`, `KubernetesNetworkPolicy`, `Staged…`; may be empty (v3.31).
    pub kind: CompactString,
    /// Namespace of namespaced kinds.
    pub namespace: CompactString,
    /// Name.
    pub name: CompactString,
}

/// Hashes the namespace and the name only (an endpoint's compile hashes each of
/// its dozens of keys several times): a policy and its staged form share a hash,
/// which costs a map one more comparison. Where a hash must tell every key apart
/// (the builder's owner hashes), hash the parts.
impl std::hash::Hash for PolicyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.namespace.hash(state);
        self.name.hash(state);
    }
}

impl PolicyKey {
    /// Whether Felix's own dataplanes skip this policy: staged kinds (v3.32+) and
    /// v3.31 names in their `staged:` form.
    pub fn is_staged(&self) -> bool {
        self.kind.starts_with("Staged")
            || self.name.starts_with("staged:")
            || (self.name.as_bytes().contains(&b'/') && self.name.contains("/staged:"))
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.kind.is_empty() {
            write!(f, "{} ", self.kind)?;
        }
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        f.write_str(&self.name)
    }
}

/// A policy as Felix sends it in `ActivePolicyUpdate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Rules for traffic towards the endpoint.
    pub inbound: Vec<Rule>,
    /// Rules for traffic from the endpoint.
    pub outbound: Vec<Rule>,
    /// Untracked (doNotTrack) policy.
    pub untracked: bool,
    /// Pre-DNAT policy.
    pub pre_dnat: bool,
    /// Tier the policy belongs to (`Policy.tier` in v3.32+, `PolicyID.tier` before).
    pub tier: String,
}

impl Policy {
    /// The rules for one direction.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// A profile (`kns.<ns>`, `ksa.<ns>.<sa>`, or a Calico Profile).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// Rules for traffic towards the endpoint.
    pub inbound: Vec<Rule>,
    /// Rules for traffic from the endpoint.
    pub outbound: Vec<Rule>,
}

impl Profile {
    /// The rules for one direction.
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.inbound,
            Direction::Egress => &self.outbound,
        }
    }
}

/// What a tier does with a packet that none of its policies decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TierDefault {
    /// Drop (Felix's end-of-tier drop): the default.
    Deny,
    /// Carry on with the next tier.
    Pass,
}

/// One tier as listed on an endpoint: its policies for this endpoint, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierInfo {
    /// Tier name (compact, as [`PolicyKey`]'s parts).
    pub name: CompactString,
    /// Policies applying to traffic towards the endpoint, in evaluation order.
    pub ingress: Vec<PolicyKey>,
    /// Policies applying to traffic from the endpoint, in evaluation order.
    pub egress: Vec<PolicyKey>,
    /// The tier's default action.
    pub default_action: TierDefault,
}

impl TierInfo {
    /// The tier's policies for one direction.
    pub fn policies(&self, dir: Direction) -> &[PolicyKey] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the tier drops, in `dir`, what none of its policies decided (Felix's
    /// end-of-tier drop): its default action is `Deny` and at least one of its
    /// policies for `dir` is enforced (staged policies alone never drop). Stages
    /// without end-of-tier drops (untracked, pre-DNAT) do not ask.
    pub fn drops_at_end(&self, dir: Direction) -> bool {
        self.default_action == TierDefault::Deny
            && self.policies(dir).iter().any(|k| !k.is_staged())
    }
}

/// `WorkloadEndpointID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    /// `k8s` for Kubernetes pods.
    pub orchestrator: String,
    /// `<namespace>/<pod>` for Kubernetes.
    pub workload: String,
    /// `eth0` for Kubernetes.
    pub endpoint: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.orchestrator, self.workload, self.endpoint
        )
    }
}

/// A local workload endpoint (a pod's interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEndpoint {
    /// Host-side interface name.
    pub name: String,
    /// Profiles, in order.
    pub profile_ids: Vec<String>,
    /// IPv4 addresses as CIDRs.
    pub ipv4_nets: Vec<Cidr>,
    /// IPv6 addresses as CIDRs.
    pub ipv6_nets: Vec<Cidr>,
    /// Tiers in evaluation order.
    pub tiers: Vec<TierInfo>,
}

impl WorkloadEndpoint {
    /// Every address prefix of the endpoint, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = &Cidr> {
        self.ipv4_nets.iter().chain(&self.ipv6_nets)
    }

    /// Whether the endpoint owns `addr`.
    pub fn owns(&self, addr: &std::net::IpAddr) -> bool {
        self.nets().any(|n| n.contains(addr))
    }
}

/// `HostEndpointID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostEndpointKey(pub String);

impl fmt::Display for HostEndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host endpoint of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Interface name, `*` for all interfaces, empty when matched by address.
    pub name: String,
    /// Profiles, in order.
    pub profile_ids: Vec<String>,
    /// Tiers applied to traffic to and from the host.
    pub tiers: Vec<TierInfo>,
    /// Untracked tiers (no end-of-tier drop, no profiles).
    pub untracked_tiers: Vec<TierInfo>,
    /// Pre-DNAT tiers (ingress only; no end-of-tier drop, no profiles).
    pub pre_dnat_tiers: Vec<TierInfo>,
    /// Tiers applied to forwarded traffic (applyOnForward).
    pub forward_tiers: Vec<TierInfo>,
    /// Expected addresses of the interface.
    pub expected_addrs: Vec<std::net::IpAddr>,
}

impl HostEndpoint {
    /// Every tier list of the endpoint.
    pub fn all_tiers(&self) -> impl Iterator<Item = &TierInfo> {
        self.tiers
            .iter()
            .chain(&self.untracked_tiers)
            .chain(&self.pre_dnat_tiers)
            .chain(&self.forward_tiers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staged kinds and v3.31's staged names are told from the rest; keys that
    /// differ in kind alone (hashed alike) are still two keys.
    #[test]
    fn staged_policies_are_told_and_kinds_kept_apart() {
        let key = |kind: &str, name: &str| PolicyKey {
            kind: kind.into(),
            namespace: "ns".into(),
            name: name.into(),
        };
        for (kind, name, staged) in [
            ("StagedNetworkPolicy", "p", true),
            ("StagedKubernetesNetworkPolicy", "p", true),
            ("", "staged:p", true),
            ("", "default/staged:p", true),
            ("NetworkPolicy", "p", false),
            ("", "default/p", false),
            ("", "default/staged", false),
            ("", "stagedp", false),
        ] {
            assert_eq!(key(kind, name).is_staged(), staged, "{kind} {name}");
        }
        let map: std::collections::HashMap<PolicyKey, u8> = [
            (key("NetworkPolicy", "p"), 1),
            (key("StagedNetworkPolicy", "p"), 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&key("StagedNetworkPolicy", "p")), Some(&2));
        assert_eq!(map.get(&key("NetworkPolicy", "p")), Some(&1));
    }

    /// Keys whose parts are held in the key (up to 24 bytes) and outside it order,
    /// compare and name themselves as their text does.
    #[test]
    fn policy_keys_short_and_long_behave_as_their_text() {
        let parts = [
            "",
            "ns",
            "twenty-four-bytes-long-x",
            "twenty-five-bytes-long-xy",
        ];
        let mut keys = Vec::new();
        for kind in ["", "KubernetesNetworkPolicy"] {
            for namespace in parts {
                for name in parts {
                    keys.push(PolicyKey {
                        kind: kind.into(),
                        namespace: namespace.into(),
                        name: name.into(),
                    });
                }
            }
        }
        let text = |k: &PolicyKey| {
            (
                k.kind.to_string(),
                k.namespace.to_string(),
                k.name.to_string(),
            )
        };
        for a in &keys {
            for b in &keys {
                assert_eq!(a == b, text(a) == text(b));
                assert_eq!(a.cmp(b), text(a).cmp(&text(b)));
            }
        }
        let long = keys.last().map(|k| k.to_string());
        assert_eq!(
            long.as_deref(),
            Some("KubernetesNetworkPolicy twenty-five-bytes-long-xy/twenty-five-bytes-long-xy")
        );
    }

    /// Felix's action names in any case, the empty one as allow, and nothing else.
    #[test]
    fn felix_actions_parse_without_case() {
        for (name, want) in [
            ("", Some(Action::Allow)),
            ("allow", Some(Action::Allow)),
            ("Allow", Some(Action::Allow)),
            ("DENY", Some(Action::Deny)),
            ("log", Some(Action::Log)),
            ("Next-Tier", Some(Action::Pass)),
            ("pass", Some(Action::Pass)),
            ("passed", None),
            ("allo", None),
            ("next_tier", None),
        ] {
            assert_eq!(Action::from_felix(name), want, "{name:?}");
        }
    }
}
