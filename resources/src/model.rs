//! The typed, validated form of each supported manifest kind, and the
//! parsers that build it from a decoded document. Everything here is checked
//! once, at load; later stages trust it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::field::{At, FResult};
use crate::selector::Selector;

/// `metadata.annotations` key that names a pod's host-side interface.
pub(crate) const INTERFACE_ANNOTATION: &str = "capo.dev/interface";

/// A rule's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

impl Action {
    /// Felix's spelling (`Pass` becomes `next-tier`).
    pub(crate) fn felix(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "log",
            Action::Pass => "next-tier",
        }
    }
}

/// A protocol as written in a rule: a name (kept as written) or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Protocol {
    Name(String),
    Number(u8),
}

impl Protocol {
    fn number(&self) -> Option<u8> {
        match self {
            Protocol::Number(n) => Some(*n),
            Protocol::Name(n) => match n.to_ascii_lowercase().as_str() {
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

    pub(crate) fn supports_ports(&self) -> bool {
        matches!(self.number(), Some(6 | 17 | 132))
    }

    fn is_icmp(&self) -> bool {
        matches!(self.number(), Some(1 | 58))
    }

    pub(crate) fn lower_name(&self) -> Option<String> {
        match self {
            Protocol::Name(n) => Some(n.to_ascii_lowercase()),
            Protocol::Number(_) => None,
        }
    }
}

/// A port match: a numeric range or a named port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Port {
    Range(u16, u16),
    Named(String),
}

/// The protocols a named port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PortProto {
    Tcp,
    Udp,
    Sctp,
}

impl PortProto {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
            PortProto::Sctp => "sctp",
        }
    }
}

/// A named port on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamedPort {
    pub(crate) name: String,
    pub(crate) proto: PortProto,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Icmp {
    pub(crate) typ: u8,
    pub(crate) code: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaMatch {
    pub(crate) names: Vec<String>,
    pub(crate) selector: String,
}

/// One side (source or destination) of a Calico rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entity {
    pub(crate) nets: Vec<IpNet>,
    pub(crate) not_nets: Vec<IpNet>,
    pub(crate) selector: String,
    pub(crate) not_selector: String,
    pub(crate) namespace_selector: String,
    pub(crate) ports: Vec<Port>,
    pub(crate) not_ports: Vec<Port>,
    pub(crate) service_accounts: Option<SaMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpPath {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Http {
    pub(crate) methods: Vec<String>,
    pub(crate) paths: Vec<HttpPath>,
}

/// A Calico v3 rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) action: Action,
    pub(crate) ip_version: Option<u8>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) not_protocol: Option<Protocol>,
    pub(crate) icmp: Option<Icmp>,
    pub(crate) not_icmp: Option<Icmp>,
    pub(crate) src: Entity,
    pub(crate) dst: Entity,
    pub(crate) http: Option<Http>,
    pub(crate) metadata: BTreeMap<String, String>,
}

impl Rule {
    pub(crate) fn allow_all() -> Self {
        Self {
            action: Action::Allow,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: Entity::default(),
            dst: Entity::default(),
            http: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// The kinds of policy Felix distinguishes in `PolicyID.kind`.
// The variants are Calico's kind names, suffix and all.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PolicyKind {
    NetworkPolicy,
    GlobalNetworkPolicy,
    StagedNetworkPolicy,
    StagedGlobalNetworkPolicy,
    KubernetesNetworkPolicy,
    StagedKubernetesNetworkPolicy,
}

impl PolicyKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            PolicyKind::StagedNetworkPolicy => "StagedNetworkPolicy",
            PolicyKind::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            PolicyKind::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
            PolicyKind::StagedKubernetesNetworkPolicy => "StagedKubernetesNetworkPolicy",
        }
    }
}

/// A policy in Calico's v3 form (Kubernetes NetworkPolicies are converted
/// into this at load, as Calico's KDD backend does).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    pub(crate) kind: PolicyKind,
    /// `None` for global kinds.
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    pub(crate) tier: String,
    pub(crate) order: Option<f64>,
    pub(crate) selector: String,
    pub(crate) namespace_selector: String,
    pub(crate) service_account_selector: String,
    pub(crate) ingress: bool,
    pub(crate) egress: bool,
    pub(crate) ingress_rules: Vec<Rule>,
    pub(crate) egress_rules: Vec<Rule>,
    pub(crate) do_not_track: bool,
    pub(crate) pre_dnat: bool,
    pub(crate) apply_on_forward: bool,
    pub(crate) perf_hints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tier {
    pub(crate) name: String,
    pub(crate) order: Option<f64>,
    /// `true` for `defaultAction: Pass`.
    pub(crate) pass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccount {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pod {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) node: String,
    pub(crate) host_network: bool,
    pub(crate) service_account: String,
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) ports: Vec<NamedPort>,
    /// Succeeded or Failed: Calico withdraws the pod's IPs.
    pub(crate) finished: bool,
    pub(crate) interface: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ipv4: String,
    pub(crate) ipv6: String,
    pub(crate) asn: String,
}

/// A NetworkSet (`namespace` set) or GlobalNetworkSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetSet {
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) nets: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEndpoint {
    pub(crate) name: String,
    pub(crate) node: String,
    pub(crate) interface: String,
    pub(crate) expected_ips: Vec<IpAddr>,
    pub(crate) profiles: Vec<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) labels_to_apply: BTreeMap<String, String>,
    pub(crate) ingress: Vec<Rule>,
    pub(crate) egress: Vec<Rule>,
}

// ---------------------------------------------------------------------------
// Shared field parsers.

pub(crate) fn selector_field(at: &At<'_>, key: &str) -> FResult<String> {
    let Some(a) = at.get(key) else {
        return Ok(String::new());
    };
    let s = a.str()?;
    Selector::parse(s).map_err(|e| a.err(format!("invalid selector {s:?}: {e}")))?;
    Ok(s.to_string())
}

/// A CIDR or bare address; the result is masked to its network, as Calico
/// stores rule nets.
pub(crate) fn net(at: &At<'_>) -> FResult<IpNet> {
    let s = at.str()?;
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| at.err(format!("{s:?} is not a CIDR or IP address")))
}

fn nets(at: &At<'_>, key: &str) -> FResult<Vec<IpNet>> {
    at.items(key)?.iter().map(net).collect()
}

fn ip(at: &At<'_>) -> FResult<IpAddr> {
    let s = at.str()?;
    s.parse::<IpAddr>()
        .map_err(|_| at.err(format!("{s:?} is not an IP address")))
}

/// Calico's and Kubernetes' rule for port names: an IANA service name.
fn valid_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && !s.contains("--")
}

fn port_number(at: &At<'_>, s: &str) -> FResult<u16> {
    s.parse::<u16>()
        .map_err(|_| at.err(format!("{s:?} is not a port number (0-65535)")))
}

/// A Calico rule port: `80`, `"80"`, `"8000:9000"` or a port name.
fn calico_port(at: &At<'_>) -> FResult<Port> {
    if at.v.is_number() {
        let n = at.int(0, 65535)?;
        let p = u16::try_from(n).map_err(|_| at.err("port out of range"))?;
        return Ok(Port::Range(p, p));
    }
    let s = at.str()?;
    if let Some((a, b)) = s.split_once(':') {
        let (first, last) = (port_number(at, a)?, port_number(at, b)?);
        if first > last {
            return Err(at.err(format!("range {s:?} has its first port after its last")));
        }
        return Ok(Port::Range(first, last));
    }
    if s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty() {
        let p = port_number(at, s)?;
        return Ok(Port::Range(p, p));
    }
    if !valid_port_name(s) {
        return Err(at.err(format!(
            "{s:?} is neither a port, a range nor a valid port name"
        )));
    }
    Ok(Port::Named(s.to_string()))
}

fn protocol(at: &At<'_>) -> FResult<Protocol> {
    if at.v.is_number() {
        let n = at.int(0, 255)?;
        return u8::try_from(n)
            .map(Protocol::Number)
            .map_err(|_| at.err("protocol number out of range"));
    }
    let s = at.str()?;
    if let Ok(n) = s.parse::<u8>() {
        return Ok(Protocol::Number(n));
    }
    let p = Protocol::Name(s.to_string());
    if p.number().is_none() {
        return Err(at.err(format!(
            "{s:?} is not a protocol (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 0-255)"
        )));
    }
    Ok(p)
}

fn icmp(at: &At<'_>) -> FResult<Icmp> {
    at.only(&["type", "code"])?;
    let typ = match at.get("type") {
        Some(t) => Some(u8::try_from(t.int(0, 254)?).map_err(|_| t.err("out of range"))?),
        None => None,
    };
    let code = match at.get("code") {
        Some(c) => Some(u8::try_from(c.int(0, 255)?).map_err(|_| c.err("out of range"))?),
        None => None,
    };
    match typ {
        Some(typ) => Ok(Icmp { typ, code }),
        None if code.is_some() => Err(at.err_at("type", "required when code is set")),
        None => Err(at.err_at("type", "required")),
    }
}

fn entity(at: &At<'_>) -> FResult<Entity> {
    at.only(&[
        "nets",
        "notNets",
        "selector",
        "notSelector",
        "namespaceSelector",
        "ports",
        "notPorts",
        "serviceAccounts",
        "services",
    ])?;
    let service_accounts = match at.get("serviceAccounts") {
        Some(sa) => {
            sa.only(&["names", "selector"])?;
            let names = sa.str_list("names")?;
            // Names are quoted into a selector; quotes would break it.
            if let Some(i) = names.iter().position(|n| n.contains(['\'', '"'])) {
                return Err(sa.err_at(
                    &format!("names[{i}]"),
                    "is not a valid service account name",
                ));
            }
            Some(SaMatch {
                names,
                selector: selector_field(&sa, "selector")?,
            })
        }
        None => None,
    };
    if let Some(svc) = at.get("services") {
        return Err(svc.err(
            "service matches need Kubernetes Services and EndpointSlices, which standalone input does not model",
        ));
    }
    Ok(Entity {
        nets: nets(at, "nets")?,
        not_nets: nets(at, "notNets")?,
        selector: selector_field(at, "selector")?,
        not_selector: selector_field(at, "notSelector")?,
        namespace_selector: selector_field(at, "namespaceSelector")?,
        ports: at
            .items("ports")?
            .iter()
            .map(calico_port)
            .collect::<FResult<_>>()?,
        not_ports: at
            .items("notPorts")?
            .iter()
            .map(calico_port)
            .collect::<FResult<_>>()?,
        service_accounts,
    })
}

fn http(at: &At<'_>) -> FResult<Http> {
    at.only(&["methods", "paths"])?;
    let mut paths = Vec::new();
    for p in at.items("paths")? {
        p.only(&["exact", "prefix"])?;
        match (p.opt_str("exact")?, p.opt_str("prefix")?) {
            (Some(e), None) => paths.push(HttpPath::Exact(e.to_string())),
            (None, Some(x)) => paths.push(HttpPath::Prefix(x.to_string())),
            _ => return Err(p.err("exactly one of exact and prefix is required")),
        }
    }
    Ok(Http {
        methods: at.str_list("methods")?,
        paths,
    })
}

/// A Calico v3 rule, validated as Calico's API validator does for the
/// fields that change what Felix receives.
pub(crate) fn rule(at: &At<'_>) -> FResult<Rule> {
    at.only(&[
        "action",
        "ipVersion",
        "protocol",
        "notProtocol",
        "icmp",
        "notICMP",
        "source",
        "destination",
        "http",
        "metadata",
    ])?;
    let action_at = at.req("action")?;
    let action = match action_at.str()? {
        "Allow" | "allow" => Action::Allow,
        "Deny" | "deny" => Action::Deny,
        "Log" | "log" => Action::Log,
        "Pass" | "pass" => Action::Pass,
        other => {
            return Err(action_at.err(format!(
                "{other:?} is not an action (Allow, Deny, Log, Pass)"
            )))
        }
    };
    let ip_version = match at.get("ipVersion") {
        Some(v) => match v.int(4, 6)? {
            4 => Some(4),
            6 => Some(6),
            n => return Err(v.err(format!("{n} is not an IP version (4 or 6)"))),
        },
        None => None,
    };
    let protocol_v = at.get("protocol").map(|p| protocol(&p)).transpose()?;
    let not_protocol = at.get("notProtocol").map(|p| protocol(&p)).transpose()?;
    let icmp_v = at.get("icmp").map(|i| icmp(&i)).transpose()?;
    let not_icmp = at.get("notICMP").map(|i| icmp(&i)).transpose()?;
    let src = match at.get("source") {
        Some(s) => entity(&s)?,
        None => Entity::default(),
    };
    let dst = match at.get("destination") {
        Some(d) => entity(&d)?,
        None => Entity::default(),
    };

    // Ports only mean something for protocols that have them.
    let ports_ok = protocol_v.as_ref().is_some_and(Protocol::supports_ports);
    for (side, e) in [("source", &src), ("destination", &dst)] {
        for (key, list) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
            if !list.is_empty() && !ports_ok {
                return Err(at.err_at(
                    &format!("{side}.{key}"),
                    "ports need protocol TCP, UDP or SCTP",
                ));
            }
        }
    }
    let icmp_ok = protocol_v.as_ref().is_some_and(Protocol::is_icmp);
    for (key, v) in [("icmp", icmp_v), ("notICMP", not_icmp)] {
        if v.is_some() && !icmp_ok {
            return Err(at.err_at(key, "ICMP matches need protocol ICMP or ICMPv6"));
        }
    }
    if let Some(ver) = ip_version {
        for (side, e) in [("source", &src), ("destination", &dst)] {
            for (key, list) in [("nets", &e.nets), ("notNets", &e.not_nets)] {
                let want_v4 = ver == 4;
                if list.iter().any(|n| matches!(n, IpNet::V4(_)) != want_v4) {
                    return Err(at.err_at(
                        &format!("{side}.{key}"),
                        format!("holds a net of the other family than ipVersion {ver}"),
                    ));
                }
            }
        }
    }
    Ok(Rule {
        action,
        ip_version,
        protocol: protocol_v,
        not_protocol,
        icmp: icmp_v,
        not_icmp,
        src,
        dst,
        http: at.get("http").map(|h| http(&h)).transpose()?,
        metadata: match at.get("metadata") {
            Some(m) => {
                m.only(&["annotations"])?;
                m.str_map("annotations")?
            }
            None => BTreeMap::new(),
        },
    })
}

pub(crate) fn rules(at: &At<'_>, key: &str) -> FResult<Vec<Rule>> {
    at.items(key)?.iter().map(rule).collect()
}

/// `spec.types`, defaulted as Calico's API server does when absent.
pub(crate) fn policy_types(
    spec: &At<'_>,
    ingress: &[Rule],
    egress: &[Rule],
) -> FResult<(bool, bool)> {
    let items = spec.items("types")?;
    if items.is_empty() {
        return Ok(match (ingress.is_empty(), egress.is_empty()) {
            (_, true) => (true, false),
            (true, false) => (false, true),
            (false, false) => (true, true),
        });
    }
    let (mut i, mut e) = (false, false);
    for t in items {
        match t.str()? {
            "Ingress" => i = true,
            "Egress" => e = true,
            other => return Err(t.err(format!("{other:?} is not a policy type (Ingress, Egress)"))),
        }
    }
    Ok((i, e))
}

pub(crate) fn container_ports(pod_spec: &At<'_>) -> FResult<Vec<NamedPort>> {
    let mut out = Vec::new();
    for key in ["containers", "initContainers"] {
        for c in pod_spec.items(key)? {
            for p in c.items("ports")? {
                let port = u16::try_from(p.req("containerPort")?.int(0, 65535)?)
                    .map_err(|_| p.err_at("containerPort", "out of range"))?;
                let name = p.str_or_empty("name")?;
                if let Some(why) = crate::names::port_name_error(&name).filter(|_| !name.is_empty())
                {
                    return Err(
                        p.err_at("name", format!("{name:?} is not a valid port name: {why}"))
                    );
                }
                let host_port = match p.get("hostPort") {
                    Some(h) => h.int(0, 65535)?,
                    None => 0,
                };
                let proto = match p.opt_str("protocol")?.unwrap_or("TCP") {
                    "TCP" => PortProto::Tcp,
                    "UDP" => PortProto::Udp,
                    "SCTP" => PortProto::Sctp,
                    other => {
                        return Err(
                            p.err_at("protocol", format!("{other:?} is not TCP, UDP or SCTP"))
                        )
                    }
                };
                // Calico keeps only ports it could need: named or host ports.
                if port != 0 && (host_port != 0 || !name.is_empty()) {
                    out.push(NamedPort { name, proto, port });
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn endpoint_ports(spec: &At<'_>) -> FResult<Vec<NamedPort>> {
    let mut out = Vec::new();
    for p in spec.items("ports")? {
        p.only(&["name", "port", "protocol"])?;
        let name = p.req_str("name")?.to_string();
        let port = u16::try_from(p.req("port")?.int(0, 65535)?)
            .map_err(|_| p.err_at("port", "out of range"))?;
        let proto_at = p.req("protocol")?;
        let proto = match protocol(&proto_at)?.number() {
            Some(6) => PortProto::Tcp,
            Some(17) => PortProto::Udp,
            Some(132) => PortProto::Sctp,
            _ => return Err(proto_at.err("must be TCP, UDP or SCTP")),
        };
        out.push(NamedPort { name, proto, port });
    }
    Ok(out)
}

pub(crate) fn ip_list(at: &At<'_>, key: &str) -> FResult<Vec<IpAddr>> {
    at.items(key)?.iter().map(ip).collect()
}

pub(crate) fn ip_str(at: &At<'_>) -> FResult<IpAddr> {
    ip(at)
}

/// Whether `s` is a valid Kubernetes port name (IANA service name).
pub(crate) fn is_port_name(s: &str) -> bool {
    valid_port_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_port_forms() {
        let v = json!([80, "81", "8000:9000", "http", "Bad_Name", "9:8"]);
        let root = At::root(&v);
        let arr = v.as_array().unwrap();
        let at = |i: usize| At {
            v: &arr[i],
            path: format!("p[{i}]"),
        };
        let _ = root;
        assert_eq!(calico_port(&at(0)).unwrap(), Port::Range(80, 80));
        assert_eq!(calico_port(&at(1)).unwrap(), Port::Range(81, 81));
        assert_eq!(calico_port(&at(2)).unwrap(), Port::Range(8000, 9000));
        assert_eq!(calico_port(&at(3)).unwrap(), Port::Named("http".into()));
        assert_eq!(calico_port(&at(4)).unwrap_err().field, "p[4]");
        assert!(calico_port(&at(5)).is_err());
    }

    #[test]
    fn test_rule_needs_protocol_for_ports() {
        let v = json!({"action": "Allow", "destination": {"ports": [80]}});
        let err = rule(&At::root(&v)).unwrap_err();
        assert_eq!(err.field, "destination.ports");
    }
}
