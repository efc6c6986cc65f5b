//! Calico v3 rules to Felix `Rule` messages, in the two steps Calico takes:
//! libcalico-go's update processors fold namespace, namespace-selector and
//! service-account matches into one selector per side
//! (`GetEntityRuleSelector`), then Felix's rule scanner turns selectors and
//! named ports into IP-set ids (`ruleToParsedRule`).

use std::collections::BTreeMap;

use capo_proto::felix::v3_32 as pb;
use prost::Message as _;

use crate::hash::{make_unique_id, rule_ids};
use crate::model::{Entity, HttpPath, Icmp, Port, PortProto, Protocol, Rule};
use crate::selector::Selector;

/// Label Calico puts on every workload endpoint with its namespace.
pub(crate) const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label Calico puts on every pod endpoint with its service account.
pub(crate) const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// Prefix of namespace labels inherited through the `kns.` profile.
pub(crate) const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Prefix of service-account labels inherited through the `ksa.` profile.
pub(crate) const SA_LABEL_PREFIX: &str = "pcsa.";

/// The protocol of a named-port IP set (Felix's `ipsetmember.Protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SetProto {
    Port(PortProto),
    /// No protocol in the rule: ports of every protocol match.
    Any,
}

impl SetProto {
    fn as_str(self) -> &'static str {
        match self {
            SetProto::Port(p) => p.as_str(),
            SetProto::Any => "any",
        }
    }

    pub(crate) fn matches(self, p: PortProto) -> bool {
        match self {
            SetProto::Any => true,
            SetProto::Port(x) => x == p,
        }
    }

    /// Felix's `ProtocolFrom`: UDP and SCTP by name or number, else TCP.
    fn from_rule(p: Option<&Protocol>) -> Self {
        let Some(p) = p else {
            return SetProto::Any;
        };
        let port = match p {
            Protocol::Number(17) => PortProto::Udp,
            Protocol::Number(132) => PortProto::Sctp,
            Protocol::Number(_) => PortProto::Tcp,
            Protocol::Name(n) => match n.to_ascii_lowercase().as_str() {
                "udp" => PortProto::Udp,
                "sctp" => PortProto::Sctp,
                _ => PortProto::Tcp,
            },
        };
        SetProto::Port(port)
    }
}

/// An IP set a rule refers to: a selector, optionally narrowed to one
/// named port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpSetDef {
    pub(crate) selector: Selector,
    pub(crate) named_port: Option<(SetProto, String)>,
}

impl IpSetDef {
    /// Felix's `IPSetData.UniqueID`.
    pub(crate) fn id(&self) -> String {
        match &self.named_port {
            None => self.selector.unique_id(),
            Some((proto, name)) => make_unique_id(
                "n",
                &format!("{},{},{}", self.selector.unique_id(), proto.as_str(), name),
            ),
        }
    }
}

/// Parses a selector this crate assembled from validated parts. Should it
/// ever fail, match nothing rather than everything.
pub(crate) fn parse_built(s: &str) -> Selector {
    Selector::parse(s)
        .or_else(|_| Selector::parse("!all()"))
        .unwrap_or_else(|_| Selector::all())
}

/// Calico's `parseSelectorAttachPrefix`.
pub(crate) fn prefixed(selector: &str, prefix: &str) -> String {
    Selector::parse(selector)
        .map(|s| s.with_label_prefix(prefix).as_str().to_string())
        .unwrap_or_default()
}

/// Calico's `parseServiceAccounts`.
fn service_account_selector(names: &[String], selector: &str) -> String {
    let updated = if selector.is_empty() {
        String::new()
    } else {
        prefixed(selector, SA_LABEL_PREFIX)
    };
    if names.is_empty() {
        return updated;
    }
    let by_name = format!("{LABEL_SERVICE_ACCOUNT} in {{ '{}' }}", names.join("', '"));
    let by_name = parse_built(&by_name).as_str().to_string();
    if updated.is_empty() {
        by_name
    } else {
        format!("({updated}) && ({by_name})")
    }
}

/// Calico's `GetEntityRuleSelector`: the one positive selector for a side.
fn entity_selector(e: &Entity, ns: &str) -> String {
    let sa = e
        .service_accounts
        .as_ref()
        .map(|m| service_account_selector(&m.names, &m.selector))
        .unwrap_or_default();
    let ns_selector = if !e.namespace_selector.is_empty() {
        prefixed(&e.namespace_selector, NAMESPACE_LABEL_PREFIX)
            // "all()" means every namespace, not every endpoint.
            .replace("all()", "has(projectcalico.org/namespace)")
            .replace("global()", "!has(projectcalico.org/namespace)")
    } else if !ns.is_empty() {
        format!("{LABEL_NAMESPACE} == '{ns}'")
    } else {
        String::new()
    };
    let parts: Vec<&str> = [sa.as_str(), e.selector.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    let selector = match parts.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        many => format!("({})", many.join(") && (")),
    };
    let scoped =
        !selector.is_empty() || !e.not_selector.is_empty() || !e.namespace_selector.is_empty();
    if !ns_selector.is_empty() && scoped {
        if selector.is_empty() {
            return ns_selector;
        }
        return format!("({ns_selector}) && ({selector})");
    }
    selector
}

/// Felix's `combineMatchesIfPossible`: fold the negated selector into the
/// positive one when there is a positive one.
fn combine(positive: String, negated: &str) -> (Option<Selector>, Option<Selector>) {
    if positive.is_empty() {
        return (None, (!negated.is_empty()).then(|| parse_built(negated)));
    }
    let positive = if negated.is_empty() {
        positive
    } else {
        format!("({positive}) && (!({negated}))")
    };
    (Some(parse_built(&positive)), None)
}

fn split_ports(ports: &[Port]) -> (Vec<pb::PortRange>, Vec<String>) {
    let mut numeric = Vec::new();
    let mut named = Vec::new();
    for p in ports {
        match p {
            Port::Range(a, b) => numeric.push(pb::PortRange {
                first: i32::from(*a),
                last: i32::from(*b),
            }),
            Port::Named(n) => named.push(n.clone()),
        }
    }
    (numeric, named)
}

fn proto_protocol(p: &Protocol) -> pb::Protocol {
    pb::Protocol {
        number_or_name: Some(match p {
            Protocol::Number(n) => pb::protocol::NumberOrName::Number(i32::from(*n)),
            Protocol::Name(n) => pb::protocol::NumberOrName::Name(n.to_ascii_lowercase()),
        }),
    }
}

fn icmp_fields(i: Icmp) -> (Option<i32>, Option<pb::IcmpTypeAndCode>) {
    match i.code {
        Some(code) => (
            None,
            Some(pb::IcmpTypeAndCode {
                r#type: i32::from(i.typ),
                code: i32::from(code),
            }),
        ),
        None => (Some(i32::from(i.typ)), None),
    }
}

fn nets(list: &[ipnet::IpNet]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// Converts one rule of a policy in namespace `ns` (empty for global
/// policies and profiles), recording the IP sets it needs in `sets`.
pub(crate) fn to_proto(r: &Rule, ns: &str, sets: &mut BTreeMap<String, IpSetDef>) -> pb::Rule {
    let Rule {
        action,
        ip_version,
        protocol,
        not_protocol,
        icmp,
        not_icmp,
        src,
        dst,
        http,
        metadata,
    } = r;

    let (src_sel, not_src_sel) = combine(entity_selector(src, ns), &src.not_selector);
    let (dst_sel, not_dst_sel) = combine(entity_selector(dst, ns), &dst.not_selector);
    let (src_ports, src_named) = split_ports(&src.ports);
    let (dst_ports, dst_named) = split_ports(&dst.ports);
    let (not_src_ports, not_src_named) = split_ports(&src.not_ports);
    let (not_dst_ports, not_dst_named) = split_ports(&dst.not_ports);
    let set_proto = SetProto::from_rule(protocol.as_ref());

    let mut record = |def: IpSetDef| -> String {
        let id = def.id();
        sets.entry(id.clone()).or_insert(def);
        id
    };
    // Named ports are filtered by the positive selector of their side (also
    // for negated ports: the rule only matches inside that selector anyway).
    let mut named_sets = |names: &[String], sel: &Option<Selector>| -> Vec<String> {
        names
            .iter()
            .map(|n| {
                record(IpSetDef {
                    selector: sel.clone().unwrap_or_else(Selector::all),
                    named_port: Some((set_proto, n.clone())),
                })
            })
            .collect()
    };
    let src_named_ids = named_sets(&src_named, &src_sel);
    let dst_named_ids = named_sets(&dst_named, &dst_sel);
    let not_src_named_ids = named_sets(&not_src_named, &src_sel);
    let not_dst_named_ids = named_sets(&not_dst_named, &dst_sel);

    let mut sel_sets = |sel: &Option<Selector>| -> Vec<String> {
        sel.iter()
            .map(|s| {
                let def = IpSetDef {
                    selector: s.clone(),
                    named_port: None,
                };
                let id = def.id();
                sets.entry(id.clone()).or_insert(def);
                id
            })
            .collect()
    };
    // A side with only named ports is already narrowed by their sets.
    let src_ids = if !src_ports.is_empty() || src_named.is_empty() {
        sel_sets(&src_sel)
    } else {
        Vec::new()
    };
    let dst_ids = if !dst_ports.is_empty() || dst_named.is_empty() {
        sel_sets(&dst_sel)
    } else {
        Vec::new()
    };
    let not_src_ids = sel_sets(&not_src_sel);
    let not_dst_ids = sel_sets(&not_dst_sel);

    let inferred_version = match (ip_version, protocol.as_ref().and_then(Protocol::lower_name)) {
        (Some(4), _) => pb::IpVersion::Ipv4,
        (Some(6), _) => pb::IpVersion::Ipv6,
        (None, Some(p)) if p == "icmp" => pb::IpVersion::Ipv4,
        (None, Some(p)) if p == "icmpv6" => pb::IpVersion::Ipv6,
        _ => pb::IpVersion::Any,
    };
    let (icmp_type, icmp_type_code) = icmp.map(icmp_fields).unwrap_or((None, None));
    let (not_icmp_type, not_icmp_type_code) = not_icmp.map(icmp_fields).unwrap_or((None, None));
    let sa_match = |e: &Entity| {
        e.service_accounts
            .as_ref()
            .filter(|m| !m.names.is_empty() || !m.selector.is_empty())
            .map(|m| pb::ServiceAccountMatch {
                selector: m.selector.clone(),
                names: m.names.clone(),
            })
    };

    pb::Rule {
        action: action.felix().to_string(),
        ip_version: inferred_version as i32,
        protocol: protocol.as_ref().map(proto_protocol),
        src_net: nets(&src.nets),
        src_ports,
        src_named_port_ip_set_ids: src_named_ids,
        dst_net: nets(&dst.nets),
        dst_ports,
        dst_named_port_ip_set_ids: dst_named_ids,
        icmp: icmp_type
            .map(pb::rule::Icmp::IcmpType)
            .or(icmp_type_code.map(pb::rule::Icmp::IcmpTypeCode)),
        src_ip_set_ids: src_ids,
        dst_ip_set_ids: dst_ids,
        dst_ip_port_set_ids: Vec::new(),
        not_protocol: not_protocol.as_ref().map(proto_protocol),
        not_src_net: nets(&src.not_nets),
        not_src_ports,
        not_dst_net: nets(&dst.not_nets),
        not_dst_ports,
        not_icmp: not_icmp_type
            .map(pb::rule::NotIcmp::NotIcmpType)
            .or(not_icmp_type_code.map(pb::rule::NotIcmp::NotIcmpTypeCode)),
        not_src_ip_set_ids: not_src_ids,
        not_dst_ip_set_ids: not_dst_ids,
        not_src_named_port_ip_set_ids: not_src_named_ids,
        not_dst_named_port_ip_set_ids: not_dst_named_ids,
        original_src_selector: src.selector.clone(),
        original_dst_selector: dst.selector.clone(),
        original_src_namespace_selector: src.namespace_selector.clone(),
        original_dst_namespace_selector: dst.namespace_selector.clone(),
        original_not_src_selector: src.not_selector.clone(),
        original_not_dst_selector: dst.not_selector.clone(),
        original_dst_service: String::new(),
        original_dst_service_namespace: String::new(),
        original_src_service: String::new(),
        original_src_service_namespace: String::new(),
        src_service_account_match: sa_match(src),
        dst_service_account_match: sa_match(dst),
        http_match: http.as_ref().map(|h| pb::HttpMatch {
            methods: h.methods.clone(),
            paths: h
                .paths
                .iter()
                .map(|p| pb::http_match::PathMatch {
                    path_match: Some(match p {
                        HttpPath::Exact(e) => {
                            pb::http_match::path_match::PathMatch::Exact(e.clone())
                        }
                        HttpPath::Prefix(x) => {
                            pb::http_match::path_match::PathMatch::Prefix(x.clone())
                        }
                    }),
                })
                .collect(),
        }),
        metadata: (!metadata.is_empty()).then(|| pb::RuleMetadata {
            annotations: metadata.clone().into_iter().collect(),
        }),
        rule_id: String::new(),
    }
}

/// Converts a rule list and fills in Felix's rule ids for `seed`.
pub(crate) fn to_proto_list(
    rules: &[Rule],
    ns: &str,
    seed: &str,
    sets: &mut BTreeMap<String, IpSetDef>,
) -> Vec<pb::Rule> {
    let mut out: Vec<pb::Rule> = rules.iter().map(|r| to_proto(r, ns, sets)).collect();
    let encoded: Vec<Vec<u8>> = out.iter().map(go_order_encoding).collect();
    let ids = rule_ids(seed, encoded.iter().map(Vec::as_slice));
    for (rule, id) in out.iter_mut().zip(ids) {
        rule.rule_id = id;
    }
    out
}

/// The rule's bytes as Go's protobuf marshals them: top-level fields in
/// field-number order (prost writes them in declaration order, which for
/// `Rule` is not numeric), map entries sorted so the result is stable.
fn go_order_encoding(rule: &pb::Rule) -> Vec<u8> {
    let bytes = rule.encode_to_vec();
    let Some(mut fields) = split_fields(&bytes) else {
        return bytes;
    };
    // Field 123 is `metadata`, whose map entries prost writes in hash order.
    for (num, raw) in &mut fields {
        if *num == 123 {
            if let Some(sorted) = sorted_submessage(raw) {
                *raw = sorted;
            }
        }
    }
    fields.sort_by_key(|(num, _)| *num);
    fields.into_iter().flat_map(|(_, raw)| raw).collect()
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Splits an encoded message into (field number, raw bytes incl. tag).
fn split_fields(b: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let tag = read_varint(b, &mut pos)?;
        match tag & 7 {
            0 => {
                read_varint(b, &mut pos)?;
            }
            1 => pos += 8,
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                pos += len;
            }
            5 => pos += 4,
            _ => return None,
        }
        out.push((tag >> 3, b.get(start..pos)?.to_vec()));
    }
    Some(out)
}

/// Re-encodes a length-delimited field with its sub-fields sorted bytewise.
fn sorted_submessage(raw: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    let tag = read_varint(raw, &mut pos)?;
    let len_start = pos;
    read_varint(raw, &mut pos)?;
    let body = raw.get(pos..)?;
    let mut parts = split_fields(body)?;
    parts.sort_by(|a, b| a.1.cmp(&b.1));
    let mut out = Vec::new();
    let _ = tag;
    out.extend_from_slice(raw.get(..len_start)?);
    out.extend_from_slice(raw.get(len_start..pos)?);
    for (_, p) in parts {
        out.extend(p);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SaMatch;

    #[test]
    fn test_entity_selector_namespaced() {
        let e = Entity {
            selector: "projectcalico.org/orchestrator == 'k8s' && role == 'sender'".into(),
            ..Entity::default()
        };
        assert_eq!(
            entity_selector(&e, "default"),
            "(projectcalico.org/namespace == 'default') && (projectcalico.org/orchestrator == 'k8s' && role == 'sender')"
        );
        // No selector at all: no IP set, whatever the namespace.
        assert_eq!(entity_selector(&Entity::default(), "default"), "");
    }

    #[test]
    fn test_entity_selector_namespace_selector() {
        let e = Entity {
            selector: "projectcalico.org/orchestrator == 'k8s'".into(),
            namespace_selector: "all()".into(),
            ..Entity::default()
        };
        assert_eq!(
            entity_selector(&e, "x"),
            "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s')"
        );
        let e = Entity {
            namespace_selector: "ns == 'y'".into(),
            ..Entity::default()
        };
        assert_eq!(entity_selector(&e, "x"), "pcns.ns == \"y\"");
    }

    #[test]
    fn test_entity_selector_service_accounts() {
        let e = Entity {
            service_accounts: Some(SaMatch {
                names: vec!["b".into(), "a".into()],
                selector: "role == 'x'".into(),
            }),
            ..Entity::default()
        };
        assert_eq!(
            entity_selector(&e, ""),
            "(pcsa.role == \"x\") && (projectcalico.org/serviceaccount in {\"a\", \"b\"})"
        );
    }

    #[test]
    fn test_go_order_encoding_sorts_fields() {
        let rule = pb::Rule {
            action: "allow".into(),
            src_named_port_ip_set_ids: vec!["n:x".into()],
            dst_ports: vec![pb::PortRange { first: 1, last: 2 }],
            ..pb::Rule::default()
        };
        let fields = split_fields(&go_order_encoding(&rule)).unwrap();
        let nums: Vec<u64> = fields.iter().map(|f| f.0).collect();
        assert_eq!(nums, vec![1, 7, 12]);
    }
}
