//! Felix's protobuf messages → the policy core's validated [`Update`]s.
//!
//! One converter handles the v3.32+ types; v3.31 messages are first brought to the
//! v3.32 shape by [`upgrade_v3_31`] (most messages are wire-identical between the two
//! schemas; only policy ids, tier lists and host metadata differ). Every error names
//! the field path inside the message (`active_policy_update.policy.inbound_rules[2].src_net[0]`).

use std::collections::BTreeMap;

use capo_policy::{
    Action, Cidr, FelixConfig, HostEndpoint, HostEndpointKey, HostMetadata, IcmpMatch, IpFamily,
    IpSetId, IpSetKind, Member, Policy, PolicyKey, PortRange, Profile, Protocol, Rule, SideMatch,
    State, TierDefault, TierInfo, Update, WorkloadEndpoint, WorkloadKey,
};
use capo_proto::felix::{v3_31, v3_32 as pb};
use prost::Message;

/// A message whose content cannot be used; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    /// Path of the bad field inside the message.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl std::fmt::Display, reason: impl ToString) -> ConvertError {
    ConvertError {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// Where a field sits inside the message. Written out only when an error names
/// it: a policy's rules have a score of fields each, and formatting every path up
/// front was a quarter of a whole snapshot's conversion.
#[derive(Debug, Clone, Copy)]
enum At<'a> {
    Root(&'a str),
    Field(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl<'a> At<'a> {
    fn field(&'a self, name: &'a str) -> At<'a> {
        At::Field(self, name)
    }

    fn index(&'a self, i: usize) -> At<'a> {
        At::Index(self, i)
    }
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root(name) => f.write_str(name),
            At::Field(parent, name) => write!(f, "{parent}.{name}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// What one `ToDataplane` message means for the policy core.
#[derive(Debug, Clone, PartialEq)]
pub enum Converted {
    /// A state change.
    Update(Update),
    /// `InSync`: the snapshot is complete.
    InSync,
    /// A payload capo does not use (routes, services, …), named for logs.
    Ignored(&'static str),
}

/// How to read messages whose meaning depends on the Felix release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Host metadata arrives in three families (v3.32.x: field 14 carries only the
    /// IPv4 address, 35-38 the rest), so a field-14 update keeps the IPv6 address
    /// already held. On master, field 14 carries both and replaces the entry.
    pub split_host_metadata: bool,
}

/// Converts one v3.32+ message (master's reading of host metadata).
pub fn convert(msg: pb::ToDataplane, state: &State) -> Result<Converted, ConvertError> {
    convert_with(msg, state, ConvertOptions::default())
}

/// Converts one v3.32+ message. `state` is read for host metadata that arrives in
/// parts (v3.31, v3.32.x) and for nothing else.
pub fn convert_with(
    msg: pb::ToDataplane,
    state: &State,
    opts: ConvertOptions,
) -> Result<Converted, ConvertError> {
    let host = |name: &str| state.hosts().get(name).cloned().unwrap_or_default();
    use pb::to_dataplane::Payload as P;
    let Some(payload) = msg.payload else {
        return Ok(Converted::Ignored("unknown payload"));
    };
    let update = match payload {
        P::InSync(_) => return Ok(Converted::InSync),
        P::ConfigUpdate(c) => {
            let raw: BTreeMap<String, String> = c.config.into_iter().collect();
            let cfg = FelixConfig::from_raw(raw)
                .map_err(|e| err(format!("config_update.config[{}]", e.key), e.reason))?;
            Update::Config(cfg)
        }
        P::IpsetUpdate(u) => {
            let f = At::Root("ipset_update");
            let kind = match pb::ip_set_update::IpSetType::try_from(u.r#type) {
                Ok(pb::ip_set_update::IpSetType::Ip) => IpSetKind::Ip,
                Ok(pb::ip_set_update::IpSetType::IpAndPort) => IpSetKind::IpAndPort,
                Ok(pb::ip_set_update::IpSetType::Net) => IpSetKind::Net,
                Err(_) => {
                    return Err(err(
                        f.field("type"),
                        format!("unknown IP set type {}", u.r#type),
                    ))
                }
            };
            Update::IpSetReplace {
                id: set_id(&u.id, &f.field("id"))?,
                kind,
                members: members(&u.members, &f.field("members"))?,
            }
        }
        P::IpsetDeltaUpdate(u) => {
            let f = At::Root("ipset_delta_update");
            Update::IpSetDelta {
                id: set_id(&u.id, &f.field("id"))?,
                added: members(&u.added_members, &f.field("added_members"))?,
                removed: members(&u.removed_members, &f.field("removed_members"))?,
            }
        }
        P::IpsetRemove(u) => Update::IpSetRemove(set_id(&u.id, &At::Root("ipset_remove.id"))?),
        P::ActiveProfileUpdate(u) => {
            let f = At::Root("active_profile_update");
            let name = profile_name(u.id.as_ref(), &f.field("id").field("name"))?;
            let p = u.profile.unwrap_or_default();
            Update::ProfileUpdate(
                name,
                Profile {
                    inbound: rules(&p.inbound_rules, &f.field("profile").field("inbound_rules"))?,
                    outbound: rules(
                        &p.outbound_rules,
                        &f.field("profile").field("outbound_rules"),
                    )?,
                }
                .into(),
            )
        }
        P::ActiveProfileRemove(u) => Update::ProfileRemove(profile_name(
            u.id.as_ref(),
            &At::Root("active_profile_remove.id.name"),
        )?),
        P::ActivePolicyUpdate(u) => {
            let f = At::Root("active_policy_update");
            let key = policy_key(u.id.as_ref(), &f.field("id"))?;
            let p = u.policy.unwrap_or_default();
            Update::PolicyUpdate(
                key,
                Policy {
                    inbound: rules(&p.inbound_rules, &f.field("policy").field("inbound_rules"))?,
                    outbound: rules(
                        &p.outbound_rules,
                        &f.field("policy").field("outbound_rules"),
                    )?,
                    untracked: p.untracked,
                    pre_dnat: p.pre_dnat,
                    tier: p.tier,
                }
                .into(),
            )
        }
        P::ActivePolicyRemove(u) => Update::PolicyRemove(policy_key(
            u.id.as_ref(),
            &At::Root("active_policy_remove.id"),
        )?),
        P::WorkloadEndpointUpdate(u) => {
            let f = At::Root("workload_endpoint_update");
            let key = workload_key(u.id.as_ref(), &f.field("id"))?;
            let e = u.endpoint.unwrap_or_default();
            let ef = f.field("endpoint");
            Update::WorkloadUpdate(
                key,
                WorkloadEndpoint {
                    name: e.name,
                    profile_ids: e.profile_ids,
                    ipv4_nets: cidrs(&e.ipv4_nets, &ef.field("ipv4_nets"))?,
                    ipv6_nets: cidrs(&e.ipv6_nets, &ef.field("ipv6_nets"))?,
                    tiers: tiers(e.tiers, &ef.field("tiers"))?,
                }
                .into(),
            )
        }
        P::WorkloadEndpointRemove(u) => Update::WorkloadRemove(workload_key(
            u.id.as_ref(),
            &At::Root("workload_endpoint_remove.id"),
        )?),
        P::HostEndpointUpdate(u) => {
            let f = At::Root("host_endpoint_update");
            let key = host_endpoint_key(u.id.as_ref(), &f.field("id"))?;
            let e = u.endpoint.unwrap_or_default();
            let ef = f.field("endpoint");
            let mut expected_addrs = Vec::new();
            for (list, name) in [
                (&e.expected_ipv4_addrs, "expected_ipv4_addrs"),
                (&e.expected_ipv6_addrs, "expected_ipv6_addrs"),
            ] {
                for (i, a) in list.iter().enumerate() {
                    let c: Cidr = a.parse().map_err(|e| err(ef.field(name).index(i), e))?;
                    expected_addrs.push(c.net().addr());
                }
            }
            Update::HostEndpointUpdate(
                key,
                HostEndpoint {
                    name: e.name,
                    profile_ids: e.profile_ids,
                    tiers: tiers(e.tiers, &ef.field("tiers"))?,
                    untracked_tiers: tiers(e.untracked_tiers, &ef.field("untracked_tiers"))?,
                    pre_dnat_tiers: tiers(e.pre_dnat_tiers, &ef.field("pre_dnat_tiers"))?,
                    forward_tiers: tiers(e.forward_tiers, &ef.field("forward_tiers"))?,
                    expected_addrs,
                },
            )
        }
        P::HostEndpointRemove(u) => Update::HostEndpointRemove(host_endpoint_key(
            u.id.as_ref(),
            &At::Root("host_endpoint_remove.id"),
        )?),
        P::HostMetadataUpdate(u) => {
            let f = At::Root("host_metadata_update");
            let ipv4 = opt_addr(&u.ipv4_addr, &f.field("ipv4_addr"))?;
            let ipv6 = opt_addr(&u.ipv6_addr, &f.field("ipv6_addr"))?;
            let ipv6 = match (ipv6, opts.split_host_metadata) {
                (None, true) => host(&u.hostname).ipv6,
                (v6, _) => v6,
            };
            Update::HostMetadataUpdate(u.hostname, HostMetadata { ipv4, ipv6 })
        }
        P::HostMetadataV6Update(u) => {
            let mut h = host(&u.hostname);
            h.ipv6 = opt_addr(&u.ipv6_addr, &At::Root("host_metadata_v6_update.ipv6_addr"))?;
            Update::HostMetadataUpdate(u.hostname, h)
        }
        P::HostMetadataV6Remove(u) => {
            let mut h = host(&u.hostname);
            h.ipv6 = None;
            Update::HostMetadataUpdate(u.hostname, h)
        }
        P::HostMetadataV4v6Update(u) => {
            let f = At::Root("host_metadata_v4v6_update");
            Update::HostMetadataUpdate(
                u.hostname,
                HostMetadata {
                    ipv4: opt_addr(&u.ipv4_addr, &f.field("ipv4_addr"))?,
                    ipv6: opt_addr(&u.ipv6_addr, &f.field("ipv6_addr"))?,
                },
            )
        }
        P::HostMetadataV4v6Remove(u) => Update::HostMetadataRemove(u.hostname),
        P::HostMetadataRemove(u) => Update::HostMetadataRemove(u.hostname),
        P::IpamPoolUpdate(_) => return Ok(Converted::Ignored("ipam_pool_update")),
        P::IpamPoolRemove(_) => return Ok(Converted::Ignored("ipam_pool_remove")),
        P::ServiceAccountUpdate(_) => return Ok(Converted::Ignored("service_account_update")),
        P::ServiceAccountRemove(_) => return Ok(Converted::Ignored("service_account_remove")),
        P::NamespaceUpdate(_) => return Ok(Converted::Ignored("namespace_update")),
        P::NamespaceRemove(_) => return Ok(Converted::Ignored("namespace_remove")),
        P::RouteUpdate(_) => return Ok(Converted::Ignored("route_update")),
        P::RouteRemove(_) => return Ok(Converted::Ignored("route_remove")),
        P::VtepUpdate(_) => return Ok(Converted::Ignored("vtep_update")),
        P::VtepRemove(_) => return Ok(Converted::Ignored("vtep_remove")),
        P::WireguardEndpointUpdate(_) => {
            return Ok(Converted::Ignored("wireguard_endpoint_update"))
        }
        P::WireguardEndpointRemove(_) => {
            return Ok(Converted::Ignored("wireguard_endpoint_remove"))
        }
        P::WireguardEndpointV6Update(_) => {
            return Ok(Converted::Ignored("wireguard_endpoint_v6_update"))
        }
        P::WireguardEndpointV6Remove(_) => {
            return Ok(Converted::Ignored("wireguard_endpoint_v6_remove"))
        }
        P::GlobalBgpConfigUpdate(_) => return Ok(Converted::Ignored("global_bgp_config_update")),
        P::Encapsulation(_) => return Ok(Converted::Ignored("encapsulation")),
        P::ServiceUpdate(_) => return Ok(Converted::Ignored("service_update")),
        P::ServiceRemove(_) => return Ok(Converted::Ignored("service_remove")),
    };
    Ok(Converted::Update(update))
}

fn set_id(id: &str, field: &At<'_>) -> Result<IpSetId, ConvertError> {
    IpSetId::new(id).ok_or_else(|| err(field, "empty IP set id"))
}

/// Each item of a message's list converted by `one` (given the item and its
/// field path), the first error returned.
fn each<T, U>(
    list: &[T],
    field: &At<'_>,
    one: impl Fn(&T, &At<'_>) -> Result<U, ConvertError>,
) -> Result<Vec<U>, ConvertError> {
    // Most of a rule's lists are empty: no collecting machinery for them.
    if list.is_empty() {
        return Ok(Vec::new());
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| one(item, &field.index(i)))
        .collect()
}

fn set_ids(ids: &[String], field: &At<'_>) -> Result<Vec<IpSetId>, ConvertError> {
    each(ids, field, |id, at| set_id(id, at))
}

fn members(list: &[String], field: &At<'_>) -> Result<Vec<Member>, ConvertError> {
    each(list, field, |m, at| m.parse().map_err(|e| err(at, e)))
}

fn cidrs(list: &[String], field: &At<'_>) -> Result<Vec<Cidr>, ConvertError> {
    each(list, field, |m, at| m.parse().map_err(|e| err(at, e)))
}

fn opt_addr(s: &str, field: &At<'_>) -> Result<Option<std::net::IpAddr>, ConvertError> {
    if s.is_empty() {
        return Ok(None);
    }
    // Felix keeps the host bits (`172.18.0.2/16`): the address is what matters.
    let addr = s.split('/').next().unwrap_or(s);
    addr.parse()
        .map(Some)
        .map_err(|_| err(field, format!("{s:?} is not an address or address/prefix")))
}

fn ports(list: &[pb::PortRange], field: &At<'_>) -> Result<Vec<PortRange>, ConvertError> {
    each(list, field, |p, at| {
        PortRange::new(i64::from(p.first), i64::from(p.last)).map_err(|e| err(at, e))
    })
}

fn protocol(p: Option<&pb::Protocol>, field: &At<'_>) -> Result<Option<Protocol>, ConvertError> {
    use pb::protocol::NumberOrName as N;
    match p.and_then(|p| p.number_or_name.as_ref()) {
        None => Ok(None),
        Some(N::Number(n)) => Protocol::from_number(i64::from(*n))
            .map(Some)
            .map_err(|e| err(field.field("number"), e)),
        Some(N::Name(s)) => Protocol::from_name(s)
            .map(Some)
            .map_err(|e| err(field.field("name"), e)),
    }
}

fn icmp_byte(v: i32, what: &'static str, field: &At<'_>) -> Result<u8, ConvertError> {
    u8::try_from(v).map_err(|_| {
        err(
            field,
            capo_policy::ParseError::BadIcmp {
                what,
                value: i64::from(v),
            },
        )
    })
}

fn icmp_type_code(tc: &pb::IcmpTypeAndCode, field: &At<'_>) -> Result<IcmpMatch, ConvertError> {
    Ok(IcmpMatch {
        icmp_type: icmp_byte(tc.r#type, "type", &field.field("type"))?,
        code: Some(icmp_byte(tc.code, "code", &field.field("code"))?),
    })
}

fn rules(list: &[pb::Rule], field: &At<'_>) -> Result<Vec<Rule>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| rule_at(r, &field.index(i)))
        .collect()
}

/// Converts one rule, every field of Felix's `Rule` that matters for L3/L4 policy;
/// errors name its fields under `field`.
pub fn rule(r: &pb::Rule, field: &str) -> Result<Rule, ConvertError> {
    rule_at(r, &At::Root(field))
}

fn rule_at(r: &pb::Rule, f: &At<'_>) -> Result<Rule, ConvertError> {
    use pb::rule::{Icmp, NotIcmp};
    let action = Action::from_felix(&r.action)
        .ok_or_else(|| err(f.field("action"), format!("unknown action {:?}", r.action)))?;
    let ip_version = match pb::IpVersion::try_from(r.ip_version) {
        Ok(pb::IpVersion::Any) => None,
        Ok(pb::IpVersion::Ipv4) => Some(IpFamily::V4),
        Ok(pb::IpVersion::Ipv6) => Some(IpFamily::V6),
        Err(_) => {
            return Err(err(
                f.field("ip_version"),
                format!("unknown IP version {}", r.ip_version),
            ))
        }
    };
    let icmp = match &r.icmp {
        None => None,
        Some(Icmp::IcmpType(t)) => Some(IcmpMatch {
            icmp_type: icmp_byte(*t, "type", &f.field("icmp_type"))?,
            code: None,
        }),
        Some(Icmp::IcmpTypeCode(tc)) => Some(icmp_type_code(tc, &f.field("icmp_type_code"))?),
    };
    let not_icmp = match &r.not_icmp {
        None => None,
        Some(NotIcmp::NotIcmpType(t)) => Some(IcmpMatch {
            icmp_type: icmp_byte(*t, "type", &f.field("not_icmp_type"))?,
            code: None,
        }),
        Some(NotIcmp::NotIcmpTypeCode(tc)) => {
            Some(icmp_type_code(tc, &f.field("not_icmp_type_code"))?)
        }
    };
    Ok(Rule {
        action,
        ip_version,
        protocol: protocol(r.protocol.as_ref(), &f.field("protocol"))?,
        not_protocol: protocol(r.not_protocol.as_ref(), &f.field("not_protocol"))?,
        src: SideMatch {
            nets: cidrs(&r.src_net, &f.field("src_net"))?,
            not_nets: cidrs(&r.not_src_net, &f.field("not_src_net"))?,
            ports: ports(&r.src_ports, &f.field("src_ports"))?,
            not_ports: ports(&r.not_src_ports, &f.field("not_src_ports"))?,
            named_port_sets: set_ids(
                &r.src_named_port_ip_set_ids,
                &f.field("src_named_port_ip_set_ids"),
            )?,
            not_named_port_sets: set_ids(
                &r.not_src_named_port_ip_set_ids,
                &f.field("not_src_named_port_ip_set_ids"),
            )?,
            ip_sets: set_ids(&r.src_ip_set_ids, &f.field("src_ip_set_ids"))?,
            not_ip_sets: set_ids(&r.not_src_ip_set_ids, &f.field("not_src_ip_set_ids"))?,
        },
        dst: SideMatch {
            nets: cidrs(&r.dst_net, &f.field("dst_net"))?,
            not_nets: cidrs(&r.not_dst_net, &f.field("not_dst_net"))?,
            ports: ports(&r.dst_ports, &f.field("dst_ports"))?,
            not_ports: ports(&r.not_dst_ports, &f.field("not_dst_ports"))?,
            named_port_sets: set_ids(
                &r.dst_named_port_ip_set_ids,
                &f.field("dst_named_port_ip_set_ids"),
            )?,
            not_named_port_sets: set_ids(
                &r.not_dst_named_port_ip_set_ids,
                &f.field("not_dst_named_port_ip_set_ids"),
            )?,
            ip_sets: set_ids(&r.dst_ip_set_ids, &f.field("dst_ip_set_ids"))?,
            not_ip_sets: set_ids(&r.not_dst_ip_set_ids, &f.field("not_dst_ip_set_ids"))?,
        },
        dst_ip_port_sets: set_ids(&r.dst_ip_port_set_ids, &f.field("dst_ip_port_set_ids"))?,
        icmp,
        not_icmp,
        rule_id: r.rule_id.clone(),
    })
}

fn profile_name(id: Option<&pb::ProfileId>, field: &At<'_>) -> Result<String, ConvertError> {
    match id {
        Some(id) if !id.name.is_empty() => Ok(id.name.clone()),
        _ => Err(err(field, "missing profile name")),
    }
}

fn policy_key(id: Option<&pb::PolicyId>, field: &At<'_>) -> Result<PolicyKey, ConvertError> {
    match id {
        Some(id) if !id.name.is_empty() => Ok(policy_key_of(id)),
        _ => Err(err(field.field("name"), "missing policy name")),
    }
}

fn policy_key_of(id: &pb::PolicyId) -> PolicyKey {
    PolicyKey {
        kind: id.kind.as_str().into(),
        namespace: id.namespace.as_str().into(),
        name: id.name.as_str().into(),
    }
}

fn workload_key(
    id: Option<&pb::WorkloadEndpointId>,
    field: &At<'_>,
) -> Result<WorkloadKey, ConvertError> {
    let id = id.ok_or_else(|| err(field, "missing workload endpoint id"))?;
    if id.workload_id.is_empty() {
        return Err(err(field.field("workload_id"), "empty workload id"));
    }
    Ok(WorkloadKey {
        orchestrator: id.orchestrator_id.clone(),
        workload: id.workload_id.clone(),
        endpoint: id.endpoint_id.clone(),
    })
}

fn host_endpoint_key(
    id: Option<&pb::HostEndpointId>,
    field: &At<'_>,
) -> Result<HostEndpointKey, ConvertError> {
    match id {
        Some(id) if !id.endpoint_id.is_empty() => Ok(HostEndpointKey(id.endpoint_id.clone())),
        _ => Err(err(field.field("endpoint_id"), "missing host endpoint id")),
    }
}

/// The tiers of an endpoint, its policy names moved out of the message (an endpoint
/// lists dozens: copying each name was most of converting it).
fn tiers(list: Vec<pb::TierInfo>, field: &At<'_>) -> Result<Vec<TierInfo>, ConvertError> {
    list.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let f = field.index(i);
            let default_action = match t.default_action.as_str() {
                "" | "Deny" | "deny" => TierDefault::Deny,
                "Pass" | "pass" => TierDefault::Pass,
                other => {
                    return Err(err(
                        f.field("default_action"),
                        format!("{other:?} is not Deny or Pass"),
                    ))
                }
            };
            let keys = |ids: Vec<pb::PolicyId>, name: &str| {
                ids.into_iter()
                    .enumerate()
                    .map(|(j, id)| {
                        if id.name.is_empty() {
                            Err(err(
                                f.field(name).index(j).field("name"),
                                "missing policy name",
                            ))
                        } else {
                            Ok(PolicyKey {
                                kind: id.kind.into(),
                                namespace: id.namespace.into(),
                                name: id.name.into(),
                            })
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(TierInfo {
                name: t.name.into(),
                ingress: keys(t.ingress_policies, "ingress_policies")?,
                egress: keys(t.egress_policies, "egress_policies")?,
                default_action,
            })
        })
        .collect()
}

/// Re-encodes a message of one schema as the wire-identical message of the other.
fn transcode<A: Message, B: Message + Default>(a: &A, field: &At<'_>) -> Result<B, ConvertError> {
    B::decode(a.encode_to_vec().as_slice())
        .map_err(|e| err(field, format!("cannot carry over: {e}")))
}

fn v31_policy_key(id: &v3_31::PolicyId) -> PolicyKey {
    // v3.31 names policies in Calico's v1 form (`default/knp.default.x`): the kind
    // and namespace are part of the name.
    PolicyKey {
        kind: Default::default(),
        namespace: Default::default(),
        name: id.name.as_str().into(),
    }
}

fn v31_tiers(list: &[v3_31::TierInfo]) -> Vec<pb::TierInfo> {
    let ids = |names: &[String]| {
        names
            .iter()
            .map(|n| pb::PolicyId {
                name: n.clone(),
                namespace: String::new(),
                kind: String::new(),
            })
            .collect()
    };
    list.iter()
        .map(|t| pb::TierInfo {
            name: t.name.clone(),
            ingress_policies: ids(&t.ingress_policies),
            egress_policies: ids(&t.egress_policies),
            default_action: t.default_action.clone(),
        })
        .collect()
}

/// Brings a v3.31 message to the v3.32 shape. Host metadata, which v3.31 splits over
/// three messages, is merged with what `state` already holds for that host.
pub fn upgrade_v3_31(msg: v3_31::ToDataplane, state: &State) -> Result<Converted, ConvertError> {
    use pb::to_dataplane::Payload as P;
    use v3_31::to_dataplane::Payload as O;
    let seq = msg.sequence_number;
    let Some(payload) = msg.payload else {
        return Ok(Converted::Ignored("unknown payload"));
    };
    let host = |name: &str| state.hosts().get(name).cloned().unwrap_or_default();
    let payload = match payload {
        O::ActivePolicyUpdate(u) => {
            let f = At::Root("active_policy_update");
            let id =
                u.id.ok_or_else(|| err(f.field("id"), "missing policy id"))?;
            let mut policy: pb::Policy = match &u.policy {
                Some(p) => transcode(p, &f.field("policy"))?,
                None => pb::Policy::default(),
            };
            policy.tier = id.tier.clone();
            let key = v31_policy_key(&id);
            P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
                id: Some(pb::PolicyId {
                    name: key.name.into(),
                    namespace: key.namespace.into(),
                    kind: key.kind.into(),
                }),
                policy: Some(policy),
            })
        }
        O::ActivePolicyRemove(u) => P::ActivePolicyRemove(pb::ActivePolicyRemove {
            id: u.id.map(|id| pb::PolicyId {
                name: id.name,
                namespace: String::new(),
                kind: String::new(),
            }),
        }),
        O::WorkloadEndpointUpdate(mut u) => {
            let tiers = u
                .endpoint
                .as_ref()
                .map(|e| v31_tiers(&e.tiers))
                .unwrap_or_default();
            if let Some(e) = u.endpoint.as_mut() {
                e.tiers.clear();
            }
            let mut up: pb::WorkloadEndpointUpdate =
                transcode(&u, &At::Root("workload_endpoint_update"))?;
            if let Some(e) = up.endpoint.as_mut() {
                e.tiers = tiers;
            }
            P::WorkloadEndpointUpdate(up)
        }
        O::HostEndpointUpdate(mut u) => {
            let lists = u.endpoint.as_ref().map(|e| {
                [
                    v31_tiers(&e.tiers),
                    v31_tiers(&e.untracked_tiers),
                    v31_tiers(&e.pre_dnat_tiers),
                    v31_tiers(&e.forward_tiers),
                ]
            });
            if let Some(e) = u.endpoint.as_mut() {
                e.tiers.clear();
                e.untracked_tiers.clear();
                e.pre_dnat_tiers.clear();
                e.forward_tiers.clear();
            }
            let mut up: pb::HostEndpointUpdate = transcode(&u, &At::Root("host_endpoint_update"))?;
            if let (Some(e), Some([t, ut, pt, ft])) = (up.endpoint.as_mut(), lists) {
                e.tiers = t;
                e.untracked_tiers = ut;
                e.pre_dnat_tiers = pt;
                e.forward_tiers = ft;
            }
            P::HostEndpointUpdate(up)
        }
        O::HostMetadataUpdate(u) => {
            let f = At::Root("host_metadata_update");
            let mut h = host(&u.hostname);
            h.ipv4 = opt_addr(&u.ipv4_addr, &f.field("ipv4_addr"))?;
            return Ok(Converted::Update(Update::HostMetadataUpdate(u.hostname, h)));
        }
        O::HostMetadataV6Update(u) => {
            let f = At::Root("host_metadata_v6_update");
            let mut h = host(&u.hostname);
            h.ipv6 = opt_addr(&u.ipv6_addr, &f.field("ipv6_addr"))?;
            return Ok(Converted::Update(Update::HostMetadataUpdate(u.hostname, h)));
        }
        O::HostMetadataV4v6Update(u) => {
            let f = At::Root("host_metadata_v4v6_update");
            let h = HostMetadata {
                ipv4: opt_addr(&u.ipv4_addr, &f.field("ipv4_addr"))?,
                ipv6: opt_addr(&u.ipv6_addr, &f.field("ipv6_addr"))?,
            };
            return Ok(Converted::Update(Update::HostMetadataUpdate(u.hostname, h)));
        }
        O::HostMetadataRemove(u) => P::HostMetadataRemove(pb::HostMetadataRemove {
            hostname: u.hostname,
            ipv4_addr: u.ipv4_addr,
        }),
        O::HostMetadataV6Remove(_) => return Ok(Converted::Ignored("host_metadata_v6_remove")),
        O::HostMetadataV4v6Remove(u) => P::HostMetadataRemove(pb::HostMetadataRemove {
            hostname: u.hostname,
            ipv4_addr: u.ipv4_addr,
        }),
        // Everything else is wire-identical between the schemas.
        other => {
            let env = v3_31::ToDataplane {
                sequence_number: seq,
                payload: Some(other),
            };
            let up: pb::ToDataplane = transcode(&env, &At::Root("payload"))?;
            return convert(up, state);
        }
    };
    convert(
        pb::ToDataplane {
            sequence_number: seq,
            payload: Some(payload),
        },
        state,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::to_dataplane::Payload as P;

    fn field_of(payload: P) -> String {
        let msg = pb::ToDataplane {
            payload: Some(payload),
            ..Default::default()
        };
        match convert(msg, &State::new()) {
            Err(e) => e.field,
            Ok(c) => format!("converted: {c:?}"),
        }
    }

    fn policy_id(name: &str) -> pb::PolicyId {
        pb::PolicyId {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Errors name the bad field by its whole path, however deep it sits.
    #[test]
    fn errors_name_the_field_path() {
        let allow = pb::Rule {
            action: "allow".into(),
            ..Default::default()
        };
        let bad_net = pb::Rule {
            src_net: vec!["10.0.0.0/8".into(), "10.1.0.0/99".into()],
            ..allow.clone()
        };
        let bad_set = pb::Rule {
            dst_ip_set_ids: vec!["s:a".into(), String::new()],
            ..allow.clone()
        };
        let bad_icmp = pb::Rule {
            not_icmp: Some(pb::rule::NotIcmp::NotIcmpTypeCode(pb::IcmpTypeAndCode {
                r#type: 8,
                code: 300,
            })),
            ..allow.clone()
        };
        let policy = |inbound: Vec<pb::Rule>, outbound: Vec<pb::Rule>| {
            P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
                id: Some(policy_id("p")),
                policy: Some(pb::Policy {
                    inbound_rules: inbound,
                    outbound_rules: outbound,
                    ..Default::default()
                }),
            })
        };
        assert_eq!(
            field_of(policy(vec![allow.clone(), allow.clone(), bad_net], vec![])),
            "active_policy_update.policy.inbound_rules[2].src_net[1]"
        );
        assert_eq!(
            field_of(policy(vec![], vec![bad_set])),
            "active_policy_update.policy.outbound_rules[0].dst_ip_set_ids[1]"
        );
        assert_eq!(
            field_of(policy(vec![bad_icmp], vec![])),
            "active_policy_update.policy.inbound_rules[0].not_icmp_type_code.code"
        );
        let endpoint = |tiers: Vec<pb::TierInfo>| {
            P::WorkloadEndpointUpdate(pb::WorkloadEndpointUpdate {
                id: Some(pb::WorkloadEndpointId {
                    orchestrator_id: "k8s".into(),
                    workload_id: "ns/pod".into(),
                    endpoint_id: "eth0".into(),
                }),
                endpoint: Some(pb::WorkloadEndpoint {
                    tiers,
                    ..Default::default()
                }),
            })
        };
        assert_eq!(
            field_of(endpoint(vec![
                pb::TierInfo {
                    name: "default".into(),
                    ..Default::default()
                },
                pb::TierInfo {
                    name: "security".into(),
                    egress_policies: vec![policy_id("a"), policy_id("")],
                    ..Default::default()
                },
            ])),
            "workload_endpoint_update.endpoint.tiers[1].egress_policies[1].name"
        );
        assert_eq!(
            field_of(endpoint(vec![pb::TierInfo {
                name: "default".into(),
                default_action: "Allow".into(),
                ..Default::default()
            }])),
            "workload_endpoint_update.endpoint.tiers[0].default_action"
        );
        assert_eq!(
            field_of(P::HostEndpointUpdate(pb::HostEndpointUpdate {
                id: Some(pb::HostEndpointId {
                    endpoint_id: "eth0".into(),
                }),
                endpoint: Some(pb::HostEndpoint {
                    expected_ipv6_addrs: vec!["fd00::1".into(), "not-an-address".into()],
                    ..Default::default()
                }),
            })),
            "host_endpoint_update.endpoint.expected_ipv6_addrs[1]"
        );
        assert_eq!(
            field_of(P::IpsetRemove(pb::IpSetRemove { id: String::new() })),
            "ipset_remove.id"
        );
    }
}
