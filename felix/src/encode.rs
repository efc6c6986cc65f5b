//! The policy core's updates back to Felix's v3.32 messages: how the agent hands
//! policy to a software dataplane that applies it with [`crate::convert`].
//!
//! `convert(encode(u)) == u` for every update the converter produces (a property
//! test checks it), so a dataplane fed these messages holds exactly the agent's state.

use std::collections::HashMap;

use capo_policy::{
    Action, Cidr, EndpointToHostAction, FailsafePort, FelixConfig, HostEndpoint, HostMetadata,
    IcmpMatch, IpFamily, IpSetKind, Member, Policy, PolicyKey, PortRange, Profile, Protocol, Rule,
    SideMatch, State, TierDefault, TierInfo, Update, WorkloadEndpoint,
};
use capo_proto::felix::v3_32 as pb;
use pb::to_dataplane::Payload as P;

/// Where a Felix version older than v3.32 is kept in an encoded `ConfigUpdate`.
pub const SOURCE_VERSION_KEY: &str = "CapoSourceCalicoVersion";

/// One update as the Felix message that produces it.
pub fn update(u: &Update) -> pb::ToDataplane {
    let payload = match u {
        Update::Config(c) => P::ConfigUpdate(config(c)),
        Update::IpSetReplace { id, kind, members } => P::IpsetUpdate(pb::IpSetUpdate {
            id: id.as_str().to_string(),
            members: members.iter().map(member).collect(),
            r#type: set_type(*kind) as i32,
        }),
        Update::IpSetDelta { id, added, removed } => P::IpsetDeltaUpdate(pb::IpSetDeltaUpdate {
            id: id.as_str().to_string(),
            added_members: added.iter().map(member).collect(),
            removed_members: removed.iter().map(member).collect(),
        }),
        Update::IpSetRemove(id) => P::IpsetRemove(pb::IpSetRemove {
            id: id.as_str().to_string(),
        }),
        Update::PolicyUpdate(k, p) => P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
            id: Some(policy_id(k)),
            policy: Some(policy(p)),
        }),
        Update::PolicyRemove(k) => P::ActivePolicyRemove(pb::ActivePolicyRemove {
            id: Some(policy_id(k)),
        }),
        Update::ProfileUpdate(name, p) => P::ActiveProfileUpdate(pb::ActiveProfileUpdate {
            id: Some(pb::ProfileId { name: name.clone() }),
            profile: Some(profile(p)),
        }),
        Update::ProfileRemove(name) => P::ActiveProfileRemove(pb::ActiveProfileRemove {
            id: Some(pb::ProfileId { name: name.clone() }),
        }),
        Update::WorkloadUpdate(k, w) => P::WorkloadEndpointUpdate(pb::WorkloadEndpointUpdate {
            id: Some(pb::WorkloadEndpointId {
                orchestrator_id: k.orchestrator.clone(),
                workload_id: k.workload.clone(),
                endpoint_id: k.endpoint.clone(),
            }),
            endpoint: Some(workload(w)),
        }),
        Update::WorkloadRemove(k) => P::WorkloadEndpointRemove(pb::WorkloadEndpointRemove {
            id: Some(pb::WorkloadEndpointId {
                orchestrator_id: k.orchestrator.clone(),
                workload_id: k.workload.clone(),
                endpoint_id: k.endpoint.clone(),
            }),
        }),
        Update::HostEndpointUpdate(k, h) => P::HostEndpointUpdate(pb::HostEndpointUpdate {
            id: Some(pb::HostEndpointId {
                endpoint_id: k.0.clone(),
            }),
            endpoint: Some(host_endpoint(h)),
        }),
        Update::HostEndpointRemove(k) => P::HostEndpointRemove(pb::HostEndpointRemove {
            id: Some(pb::HostEndpointId {
                endpoint_id: k.0.clone(),
            }),
        }),
        Update::HostMetadataUpdate(name, h) => P::HostMetadataUpdate(host_metadata(name, h)),
        Update::HostMetadataRemove(name) => P::HostMetadataRemove(pb::HostMetadataRemove {
            hostname: name.clone(),
            ipv4_addr: String::new(),
        }),
    };
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(payload),
    }
}

/// The whole state as a Felix snapshot in Felix's flush order, ending with
/// `InSync`, numbered from 0.
pub fn snapshot(state: &State) -> Vec<pb::ToDataplane> {
    let mut out = vec![update(&Update::Config(state.config().clone()))];
    for (id, set) in state.ipsets() {
        out.push(update(&Update::IpSetReplace {
            id: id.clone(),
            kind: set.kind(),
            members: set.members().copied().collect(),
        }));
    }
    for (k, p) in state.policies() {
        out.push(update(&Update::PolicyUpdate(k.clone(), p.clone())));
    }
    for (k, p) in state.profiles() {
        out.push(update(&Update::ProfileUpdate(k.clone(), p.clone())));
    }
    for (k, w) in state.workloads() {
        out.push(update(&Update::WorkloadUpdate(k.clone(), w.clone())));
    }
    for (k, h) in state.host_endpoints() {
        out.push(update(&Update::HostEndpointUpdate(k.clone(), h.clone())));
    }
    for (k, h) in state.hosts() {
        out.push(update(&Update::HostMetadataUpdate(k.clone(), h.clone())));
    }
    out.push(pb::ToDataplane {
        sequence_number: 0,
        payload: Some(P::InSync(pb::InSync {})),
    });
    for (i, m) in out.iter_mut().enumerate() {
        m.sequence_number = i as u64;
    }
    out
}

fn config(c: &FelixConfig) -> pb::ConfigUpdate {
    let mut raw: HashMap<String, String> = c.raw.clone().into_iter().collect();
    // The parsed values win over stale raw ones, so a config built in code encodes too.
    raw.insert("FelixHostname".into(), c.hostname.clone());
    raw.insert(
        "DefaultEndpointToHostAction".into(),
        match c.endpoint_to_host {
            EndpointToHostAction::Drop => "DROP",
            EndpointToHostAction::Accept => "ACCEPT",
            EndpointToHostAction::Return => "RETURN",
        }
        .into(),
    );
    raw.insert(
        "FailsafeInboundHostPorts".into(),
        failsafe(&c.failsafe_inbound),
    );
    raw.insert(
        "FailsafeOutboundHostPorts".into(),
        failsafe(&c.failsafe_outbound),
    );
    // These messages are always in the v3.32 shape: a version that would make the
    // receiver decode them as v3.31 is kept under another key.
    raw.remove("CalicoVersion");
    if let Some(v) = &c.calico_version {
        let key = match crate::frame::schema_for_calico_version(v) {
            Some(crate::frame::Schema::V3_31) => SOURCE_VERSION_KEY,
            _ => "CalicoVersion",
        };
        raw.insert(key.into(), v.clone());
    }
    pb::ConfigUpdate {
        config: raw,
        ..Default::default()
    }
}

fn failsafe(list: &[FailsafePort]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(|f| {
            let proto = match f.protocol {
                Protocol::UDP => "udp",
                Protocol::SCTP => "sctp",
                _ => "tcp",
            };
            match f.net {
                Some(n) if n.is_ipv4() => format!("{proto}:{n}:{}", f.port),
                Some(n) => format!("{proto}:[{n}]:{}", f.port),
                None => format!("{proto}:{}", f.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn set_type(k: IpSetKind) -> pb::ip_set_update::IpSetType {
    match k {
        IpSetKind::Ip => pb::ip_set_update::IpSetType::Ip,
        IpSetKind::IpAndPort => pb::ip_set_update::IpSetType::IpAndPort,
        IpSetKind::Net => pb::ip_set_update::IpSetType::Net,
    }
}

fn member(m: &Member) -> String {
    match m {
        Member::Net(c) => c.to_string(),
        Member::IpPort {
            addr,
            protocol,
            port,
        } => {
            let p = match *protocol {
                Protocol::UDP => "udp",
                Protocol::SCTP => "sctp",
                _ => "tcp",
            };
            format!("{addr},{p}:{port}")
        }
    }
}

fn policy_id(k: &PolicyKey) -> pb::PolicyId {
    pb::PolicyId {
        name: k.name.to_string(),
        namespace: k.namespace.to_string(),
        kind: k.kind.to_string(),
    }
}

fn policy(p: &Policy) -> pb::Policy {
    pb::Policy {
        inbound_rules: p.inbound.iter().map(rule).collect(),
        outbound_rules: p.outbound.iter().map(rule).collect(),
        untracked: p.untracked,
        pre_dnat: p.pre_dnat,
        tier: p.tier.clone(),
        ..Default::default()
    }
}

fn profile(p: &Profile) -> pb::Profile {
    pb::Profile {
        inbound_rules: p.inbound.iter().map(rule).collect(),
        outbound_rules: p.outbound.iter().map(rule).collect(),
    }
}

fn protocol(p: Option<Protocol>) -> Option<pb::Protocol> {
    p.map(|p| pb::Protocol {
        number_or_name: Some(pb::protocol::NumberOrName::Number(i32::from(p.0))),
    })
}

fn ports(list: &[PortRange]) -> Vec<pb::PortRange> {
    list.iter()
        .map(|r| pb::PortRange {
            first: i32::from(r.first()),
            last: i32::from(r.last()),
        })
        .collect()
}

fn nets(list: &[Cidr]) -> Vec<String> {
    list.iter().map(Cidr::to_string).collect()
}

fn ids(list: &[capo_policy::IpSetId]) -> Vec<String> {
    list.iter().map(|s| s.as_str().to_string()).collect()
}

fn type_code(m: &IcmpMatch) -> pb::IcmpTypeAndCode {
    pb::IcmpTypeAndCode {
        r#type: i32::from(m.icmp_type),
        code: i32::from(m.code.unwrap_or(0)),
    }
}

/// One rule, every field the converter reads.
pub fn rule(r: &Rule) -> pb::Rule {
    let Rule {
        action,
        ip_version,
        protocol: proto,
        not_protocol,
        src,
        dst,
        dst_ip_port_sets,
        icmp,
        not_icmp,
        rule_id,
    } = r;
    let SideMatch {
        nets: src_net,
        not_nets: not_src_net,
        ports: src_ports,
        not_ports: not_src_ports,
        named_port_sets: src_named,
        not_named_port_sets: not_src_named,
        ip_sets: src_sets,
        not_ip_sets: not_src_sets,
    } = src;
    let SideMatch {
        nets: dst_net,
        not_nets: not_dst_net,
        ports: dst_ports,
        not_ports: not_dst_ports,
        named_port_sets: dst_named,
        not_named_port_sets: not_dst_named,
        ip_sets: dst_sets,
        not_ip_sets: not_dst_sets,
    } = dst;
    pb::Rule {
        action: match action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "log",
            Action::Pass => "next-tier",
        }
        .into(),
        ip_version: match ip_version {
            None => pb::IpVersion::Any,
            Some(IpFamily::V4) => pb::IpVersion::Ipv4,
            Some(IpFamily::V6) => pb::IpVersion::Ipv6,
        } as i32,
        protocol: protocol(*proto),
        not_protocol: protocol(*not_protocol),
        src_net: nets(src_net),
        not_src_net: nets(not_src_net),
        src_ports: ports(src_ports),
        not_src_ports: ports(not_src_ports),
        src_named_port_ip_set_ids: ids(src_named),
        not_src_named_port_ip_set_ids: ids(not_src_named),
        src_ip_set_ids: ids(src_sets),
        not_src_ip_set_ids: ids(not_src_sets),
        dst_net: nets(dst_net),
        not_dst_net: nets(not_dst_net),
        dst_ports: ports(dst_ports),
        not_dst_ports: ports(not_dst_ports),
        dst_named_port_ip_set_ids: ids(dst_named),
        not_dst_named_port_ip_set_ids: ids(not_dst_named),
        dst_ip_set_ids: ids(dst_sets),
        not_dst_ip_set_ids: ids(not_dst_sets),
        dst_ip_port_set_ids: ids(dst_ip_port_sets),
        icmp: icmp.map(|m| match m.code {
            None => pb::rule::Icmp::IcmpType(i32::from(m.icmp_type)),
            Some(_) => pb::rule::Icmp::IcmpTypeCode(type_code(&m)),
        }),
        not_icmp: not_icmp.map(|m| match m.code {
            None => pb::rule::NotIcmp::NotIcmpType(i32::from(m.icmp_type)),
            Some(_) => pb::rule::NotIcmp::NotIcmpTypeCode(type_code(&m)),
        }),
        rule_id: rule_id.clone(),
        ..Default::default()
    }
}

fn tiers(list: &[TierInfo]) -> Vec<pb::TierInfo> {
    list.iter()
        .map(|t| pb::TierInfo {
            name: t.name.to_string(),
            ingress_policies: t.ingress.iter().map(policy_id).collect(),
            egress_policies: t.egress.iter().map(policy_id).collect(),
            default_action: match t.default_action {
                TierDefault::Deny => "Deny",
                TierDefault::Pass => "Pass",
            }
            .into(),
        })
        .collect()
}

fn workload(w: &WorkloadEndpoint) -> pb::WorkloadEndpoint {
    pb::WorkloadEndpoint {
        state: "active".into(),
        name: w.name.clone(),
        profile_ids: w.profile_ids.clone(),
        ipv4_nets: nets(&w.ipv4_nets),
        ipv6_nets: nets(&w.ipv6_nets),
        tiers: tiers(&w.tiers),
        ..Default::default()
    }
}

fn host_endpoint(h: &HostEndpoint) -> pb::HostEndpoint {
    let (v4, v6): (Vec<&std::net::IpAddr>, Vec<_>) =
        h.expected_addrs.iter().partition(|a| a.is_ipv4());
    pb::HostEndpoint {
        name: h.name.clone(),
        profile_ids: h.profile_ids.clone(),
        tiers: tiers(&h.tiers),
        untracked_tiers: tiers(&h.untracked_tiers),
        pre_dnat_tiers: tiers(&h.pre_dnat_tiers),
        forward_tiers: tiers(&h.forward_tiers),
        expected_ipv4_addrs: v4.iter().map(|a| a.to_string()).collect(),
        expected_ipv6_addrs: v6.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

fn host_metadata(name: &str, h: &HostMetadata) -> pb::HostMetadataUpdate {
    pb::HostMetadataUpdate {
        hostname: name.to_string(),
        ipv4_addr: h.ipv4.map(|a| a.to_string()).unwrap_or_default(),
        ipv6_addr: h.ipv6.map(|a| a.to_string()).unwrap_or_default(),
        ..Default::default()
    }
}
