//! Reachability checks. Every matrix is checked twice: with the reference
//! evaluator (`capo_policy::trace`, fed with the snapshot's Felix messages
//! through the agent's converter, exactly as Felix's stream would be), and
//! with a deliberately small evaluator of Felix's endpoint semantics written
//! here (DESIGN.md §3), so a disagreement points at one or the other.

use std::net::IpAddr;

use capo_felix::convert::{convert, Converted};
use capo_resources::felix::{self as pb, protocol::NumberOrName};
use capo_resources::{IpSetKind, Snapshot};
use ipnet::IpNet;

/// The policy core's state after the snapshot's full message stream.
pub(crate) fn reference_state(s: &Snapshot) -> capo_policy::State {
    let mut state = capo_policy::State::new();
    for m in s.to_felix_messages() {
        match convert(m, &state).expect("the converter accepts our messages") {
            Converted::Update(u) => {
                state.apply(u).expect("the state accepts our messages");
            }
            Converted::InSync | Converted::Ignored(_) => {}
        }
    }
    state
}

/// The reference evaluator's verdict for `p` on this node.
pub(crate) fn reference_allowed(state: &capo_policy::State, p: &Pkt) -> bool {
    let pkt = capo_policy::Packet {
        src: p.src,
        dst: p.dst,
        protocol: capo_policy::Protocol(p.proto),
        l4: capo_policy::L4::Ports {
            src: p.sport,
            dst: p.dport,
        },
    };
    capo_policy::trace(state, &pkt).verdict == capo_policy::Verdict::Allow
}

/// A probe: a first packet from `src` to `dst`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

fn proto_number(p: &pb::Protocol) -> Option<u8> {
    match p.number_or_name.as_ref()? {
        NumberOrName::Number(n) => u8::try_from(*n).ok(),
        NumberOrName::Name(n) => match n.as_str() {
            "tcp" => Some(6),
            "udp" => Some(17),
            "icmp" => Some(1),
            "icmpv6" => Some(58),
            "sctp" => Some(132),
            "udplite" => Some(136),
            _ => None,
        },
    }
}

fn proto_name(n: u8) -> &'static str {
    match n {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "?",
    }
}

fn net_contains(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<IpNet>()
        .map(|n| n.contains(&ip))
        .or_else(|_| cidr.parse::<IpAddr>().map(|a| a == ip))
        .unwrap_or(false)
}

fn in_set(s: &Snapshot, id: &str, ip: IpAddr, proto: u8, port: u16) -> bool {
    let Some(set) = s.ip_sets().get(id) else {
        panic!("rule refers to unknown set {id}");
    };
    set.members.iter().any(|m| match set.kind {
        IpSetKind::Net => net_contains(m, ip),
        IpSetKind::IpAndPort => {
            let Some((addr, rest)) = m.split_once(',') else {
                return false;
            };
            let Some((p, port_s)) = rest.split_once(':') else {
                return false;
            };
            addr.parse::<IpAddr>().is_ok_and(|a| a == ip)
                && p == proto_name(proto)
                && port_s.parse::<u16>().is_ok_and(|x| x == port)
        }
    })
}

fn ports_match(
    s: &Snapshot,
    ranges: &[pb::PortRange],
    named: &[String],
    ip: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    ranges
        .iter()
        .any(|r| i32::from(port) >= r.first && i32::from(port) <= r.last)
        || named.iter().any(|id| in_set(s, id, ip, proto, port))
}

pub(crate) fn rule_matches(s: &Snapshot, r: &pb::Rule, p: &Pkt) -> bool {
    let v4 = p.src.is_ipv4();
    match r.ip_version {
        4 if !v4 => return false,
        6 if v4 => return false,
        _ => {}
    }
    if let Some(proto) = &r.protocol {
        if proto_number(proto) != Some(p.proto) {
            return false;
        }
    }
    if let Some(proto) = &r.not_protocol {
        if proto_number(proto) == Some(p.proto) {
            return false;
        }
    }
    let any = |nets: &[String], ip| nets.iter().any(|n| net_contains(n, ip));
    if !r.src_net.is_empty() && !any(&r.src_net, p.src) {
        return false;
    }
    if !r.dst_net.is_empty() && !any(&r.dst_net, p.dst) {
        return false;
    }
    if any(&r.not_src_net, p.src) || any(&r.not_dst_net, p.dst) {
        return false;
    }
    if !r
        .src_ip_set_ids
        .iter()
        .all(|id| in_set(s, id, p.src, p.proto, p.sport))
        || !r
            .dst_ip_set_ids
            .iter()
            .all(|id| in_set(s, id, p.dst, p.proto, p.dport))
    {
        return false;
    }
    if r.not_src_ip_set_ids
        .iter()
        .any(|id| in_set(s, id, p.src, p.proto, p.sport))
        || r.not_dst_ip_set_ids
            .iter()
            .any(|id| in_set(s, id, p.dst, p.proto, p.dport))
    {
        return false;
    }
    if (!r.src_ports.is_empty() || !r.src_named_port_ip_set_ids.is_empty())
        && !ports_match(
            s,
            &r.src_ports,
            &r.src_named_port_ip_set_ids,
            p.src,
            p.proto,
            p.sport,
        )
    {
        return false;
    }
    if (!r.dst_ports.is_empty() || !r.dst_named_port_ip_set_ids.is_empty())
        && !ports_match(
            s,
            &r.dst_ports,
            &r.dst_named_port_ip_set_ids,
            p.dst,
            p.proto,
            p.dport,
        )
    {
        return false;
    }
    if ports_match(
        s,
        &r.not_src_ports,
        &r.not_src_named_port_ip_set_ids,
        p.src,
        p.proto,
        p.sport,
    ) || ports_match(
        s,
        &r.not_dst_ports,
        &r.not_dst_named_port_ip_set_ids,
        p.dst,
        p.proto,
        p.dport,
    ) {
        return false;
    }
    true
}

enum RulesOutcome {
    Allow,
    Deny,
    Pass,
    NoMatch,
}

fn run_rules(s: &Snapshot, rules: &[pb::Rule], p: &Pkt) -> RulesOutcome {
    for r in rules {
        if !rule_matches(s, r, p) {
            continue;
        }
        match r.action.as_str() {
            "allow" | "" => return RulesOutcome::Allow,
            "deny" => return RulesOutcome::Deny,
            "next-tier" | "pass" => return RulesOutcome::Pass,
            "log" => continue,
            other => panic!("unknown action {other}"),
        }
    }
    RulesOutcome::NoMatch
}

/// The verdict of one endpoint's policy for one direction.
pub(crate) fn endpoint_allows(
    s: &Snapshot,
    tiers: &[pb::TierInfo],
    profile_ids: &[String],
    ingress: bool,
    p: &Pkt,
) -> bool {
    'tiers: for t in tiers {
        let ids = if ingress {
            &t.ingress_policies
        } else {
            &t.egress_policies
        };
        if ids.is_empty() {
            continue;
        }
        let mut enforced = false;
        for id in ids {
            if capo_resources::is_staged_kind(&id.kind) {
                continue;
            }
            enforced = true;
            let key = capo_resources::PolicyRef {
                kind: id.kind.clone(),
                namespace: id.namespace.clone(),
                name: id.name.clone(),
            };
            let pol = s
                .policies()
                .get(&key)
                .unwrap_or_else(|| panic!("tier lists inactive policy {key:?}"));
            let rules = if ingress {
                &pol.inbound_rules
            } else {
                &pol.outbound_rules
            };
            match run_rules(s, rules, p) {
                RulesOutcome::Allow => return true,
                RulesOutcome::Deny => return false,
                RulesOutcome::Pass => continue 'tiers,
                RulesOutcome::NoMatch => {}
            }
        }
        if enforced && t.default_action != "Pass" {
            return false;
        }
    }
    for id in profile_ids {
        let prof = s
            .profiles()
            .get(id)
            .unwrap_or_else(|| panic!("endpoint refers to inactive profile {id}"));
        let rules = if ingress {
            &prof.inbound_rules
        } else {
            &prof.outbound_rules
        };
        match run_rules(s, rules, p) {
            RulesOutcome::Allow => return true,
            RulesOutcome::Deny => return false,
            RulesOutcome::Pass | RulesOutcome::NoMatch => {}
        }
    }
    false
}

fn local_endpoint(s: &Snapshot, ip: IpAddr) -> Option<&pb::WorkloadEndpoint> {
    s.workload_endpoints().values().find(|e| {
        e.ipv4_nets
            .iter()
            .chain(e.ipv6_nets.iter())
            .any(|n| net_contains(n, ip))
    })
}

/// Whether `p` is allowed: egress policy of the source (if local) and
/// ingress policy of the destination (if local).
pub(crate) fn allowed(s: &Snapshot, p: &Pkt) -> bool {
    if let Some(src) = local_endpoint(s, p.src) {
        if !endpoint_allows(s, &src.tiers, &src.profile_ids, false, p) {
            return false;
        }
    }
    if let Some(dst) = local_endpoint(s, p.dst) {
        if !endpoint_allows(s, &dst.tiers, &dst.profile_ids, true, p) {
            return false;
        }
    }
    true
}

/// An expected reachability matrix written as data: the first rule whose
/// patterns match (`"*"`, `"x/*"`, `"*/a"` or `"x/a"`) gives the answer,
/// else `default`. Self-traffic is not probed (it never leaves the pod).
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub proto: u8,
    pub port: u16,
    pub default: bool,
    pub rules: Vec<(&'static str, &'static str, bool)>,
}

fn pat(p: &str, name: &str) -> bool {
    if p == "*" {
        return true;
    }
    let (pn, pp) = p.split_once('/').unwrap_or((p, "*"));
    let (nn, np) = name.split_once('/').unwrap_or((name, ""));
    (pn == "*" || pn == nn) && (pp == "*" || pp == np)
}

impl Expect {
    pub(crate) fn get(&self, from: &str, to: &str) -> bool {
        self.rules
            .iter()
            .find(|(f, t, _)| pat(f, from) && pat(t, to))
            .map_or(self.default, |r| r.2)
    }
}

/// Checks every pod pair against `expect` with both evaluators, reporting
/// all mismatches.
pub(crate) fn check_matrix(s: &Snapshot, pods: &[(String, String)], expect: &Expect) {
    let state = reference_state(s);
    let mut wrong = Vec::new();
    for (from, fip) in pods {
        for (to, tip) in pods {
            if from == to {
                continue;
            }
            let p = Pkt {
                src: fip.parse().expect("ip"),
                dst: tip.parse().expect("ip"),
                proto: expect.proto,
                sport: 40000,
                dport: expect.port,
            };
            let want = expect.get(from, to);
            let reference = reference_allowed(&state, &p);
            if reference != want {
                wrong.push(format!(
                    "{from} -> {to}: reference evaluator {reference}, want {want}"
                ));
            }
            let small = allowed(s, &p);
            if small != want {
                wrong.push(format!(
                    "{from} -> {to}: test evaluator {small}, want {want}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "proto {} port {}: {} mismatches:\n{}",
        expect.proto,
        expect.port,
        wrong.len(),
        wrong.join("\n")
    );
}
