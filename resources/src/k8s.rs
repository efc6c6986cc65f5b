//! Kubernetes `networking.k8s.io/v1` NetworkPolicy: validation, and the
//! conversion to a Calico policy exactly as Calico's Kubernetes backend does
//! it (libcalico-go `K8sNetworkPolicyToCalico`):
//!
//! - tier `default`, order 1000, kind `KubernetesNetworkPolicy`;
//! - selectors gain `projectcalico.org/orchestrator == 'k8s'`; an empty
//!   namespace selector becomes `all()`;
//! - `policyTypes` empty means Ingress, plus Egress when `egress` has rules (the
//!   API server's defaulting); rules of a direction not listed are
//!   still converted (Felix sends them, but no tier lists the policy for that
//!   direction);
//! - one rule per protocol (protocols sorted) × peer, each carrying all that
//!   protocol's ports, merged into ranges; ports with no protocol are TCP.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::field::{At, FResult};
use crate::model::{self, Action, Entity, Policy, PolicyKind, Port, Protocol, Rule};

/// Calico's order for every converted Kubernetes NetworkPolicy.
const K8S_POLICY_ORDER: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelSelector {
    match_labels: BTreeMap<String, String>,
    exprs: Vec<(String, ExprOp, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExprOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SelectorKind {
    Pod,
    Namespace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortValue {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct K8sPort {
    protocol: String,
    port: Option<PortValue>,
    end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Selectors {
        pod: Option<LabelSelector>,
        namespace: Option<LabelSelector>,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

fn label_selector(at: &At<'_>) -> FResult<LabelSelector> {
    at.only(&["matchLabels", "matchExpressions"])?;
    let mut exprs = Vec::new();
    for e in at.items("matchExpressions")? {
        e.only(&["key", "operator", "values"])?;
        let key = e.req_str("key")?.to_string();
        let op_at = e.req("operator")?;
        let op = match op_at.str()? {
            "In" => ExprOp::In,
            "NotIn" => ExprOp::NotIn,
            "Exists" => ExprOp::Exists,
            "DoesNotExist" => ExprOp::DoesNotExist,
            other => {
                return Err(op_at.err(format!(
                    "{other:?} is not an operator (In, NotIn, Exists, DoesNotExist)"
                )))
            }
        };
        let values = e.str_list("values")?;
        match op {
            ExprOp::In | ExprOp::NotIn if values.is_empty() => {
                return Err(e.err_at("values", "must be non-empty for In and NotIn"))
            }
            ExprOp::Exists | ExprOp::DoesNotExist if !values.is_empty() => {
                return Err(e.err_at("values", "must be empty for Exists and DoesNotExist"))
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            if v.contains('\'') {
                return Err(e.err_at(&format!("values[{i}]"), "is not a valid label value"));
            }
        }
        exprs.push((key, op, values));
    }
    let match_labels = at.str_map("matchLabels")?;
    for (k, v) in &match_labels {
        if v.contains('\'') {
            return Err(at.err_at(&format!("matchLabels.{k}"), "is not a valid label value"));
        }
    }
    Ok(LabelSelector {
        match_labels,
        exprs,
    })
}

/// Calico's `k8sSelectorToCalico`.
fn selector_to_calico(sel: Option<&LabelSelector>, kind: SelectorKind) -> String {
    let mut parts = Vec::new();
    if kind == SelectorKind::Pod {
        parts.push("projectcalico.org/orchestrator == 'k8s'".to_string());
    }
    let Some(sel) = sel else {
        return parts.join(" && ");
    };
    if kind == SelectorKind::Namespace && sel.match_labels.is_empty() && sel.exprs.is_empty() {
        return "all()".to_string();
    }
    for (k, v) in &sel.match_labels {
        parts.push(format!("{k} == '{v}'"));
    }
    for (key, op, values) in &sel.exprs {
        let list = values.join("', '");
        parts.push(match op {
            ExprOp::In => format!("{key} in {{ '{list}' }}"),
            ExprOp::NotIn => format!("{key} not in {{ '{list}' }}"),
            ExprOp::Exists => format!("has({key})"),
            ExprOp::DoesNotExist => format!("! has({key})"),
        });
    }
    parts.join(" && ")
}

fn cidr(at: &At<'_>) -> FResult<IpNet> {
    let s = at.str()?;
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| at.err(format!("{s:?} is not a CIDR")))
}

fn peer(at: &At<'_>) -> FResult<Peer> {
    at.only(&["podSelector", "namespaceSelector", "ipBlock"])?;
    let pod = at
        .get("podSelector")
        .map(|p| label_selector(&p))
        .transpose()?;
    let namespace = at
        .get("namespaceSelector")
        .map(|p| label_selector(&p))
        .transpose()?;
    let Some(block) = at.get("ipBlock") else {
        if pod.is_none() && namespace.is_none() {
            return Err(at.err("must specify podSelector, namespaceSelector or ipBlock"));
        }
        return Ok(Peer::Selectors { pod, namespace });
    };
    if pod.is_some() || namespace.is_some() {
        return Err(block.err("may not be combined with podSelector or namespaceSelector"));
    }
    block.only(&["cidr", "except"])?;
    let cidr_v = cidr(&block.req("cidr")?)?;
    let mut except = Vec::new();
    for e in block.items("except")? {
        let n = cidr(&e)?;
        let strict_subset = cidr_v.contains(&n) && n.prefix_len() > cidr_v.prefix_len();
        if !strict_subset {
            return Err(e.err(format!("{n} is not a strict subset of cidr {cidr_v}")));
        }
        except.push(n);
    }
    Ok(Peer::IpBlock {
        cidr: cidr_v,
        except,
    })
}

fn k8s_port(at: &At<'_>) -> FResult<K8sPort> {
    at.only(&["protocol", "port", "endPort"])?;
    let protocol = match at.get("protocol") {
        Some(p) => match p.str()? {
            s @ ("TCP" | "UDP" | "SCTP") => s.to_string(),
            other => return Err(p.err(format!("{other:?} is not TCP, UDP or SCTP"))),
        },
        None => "TCP".to_string(),
    };
    let port = match at.get("port") {
        None => None,
        Some(p) if p.v.is_number() => Some(PortValue::Number(
            u16::try_from(p.int(1, 65535)?).map_err(|_| p.err("out of range"))?,
        )),
        Some(p) => {
            let s = p.str()?;
            if !model::is_port_name(s) {
                return Err(p.err(format!("{s:?} is not a port number or a valid port name")));
            }
            Some(PortValue::Name(s.to_string()))
        }
    };
    let end_port = match at.get("endPort") {
        None => None,
        Some(e) => {
            let end = u16::try_from(e.int(1, 65535)?).map_err(|_| e.err("out of range"))?;
            match &port {
                Some(PortValue::Number(p)) if end >= *p => Some(end),
                Some(PortValue::Number(p)) => {
                    return Err(e.err(format!("{end} is less than port {p}")))
                }
                _ => return Err(e.err("needs a numeric port")),
            }
        }
    };
    Ok(K8sPort {
        protocol,
        port,
        end_port,
    })
}

/// Calico's `SimplifyPorts`: named ports first (in order), then the numeric
/// ports merged into the fewest ranges.
fn simplify_ports(ports: Vec<Port>) -> Vec<Port> {
    if ports.len() <= 1 {
        return ports;
    }
    let mut numeric = Vec::new();
    let mut out = Vec::new();
    for p in &ports {
        match p {
            Port::Named(_) => out.push(p.clone()),
            Port::Range(a, b) => numeric.extend(u32::from(*a)..=u32::from(*b)),
        }
    }
    if numeric.len() <= 1 {
        return ports;
    }
    numeric.sort_unstable();
    let mut i = 0;
    while i < numeric.len() {
        let first = numeric[i];
        let mut last = first;
        i += 1;
        while i < numeric.len() && numeric[i] <= last + 1 {
            last = numeric[i];
            i += 1;
        }
        // Both came from u16 values, so they fit.
        let (f, l) = (
            u16::try_from(first).unwrap_or(u16::MAX),
            u16::try_from(last).unwrap_or(u16::MAX),
        );
        out.push(Port::Range(f, l));
    }
    out
}

/// Calico's `k8sRuleToCalico`.
fn rules_to_calico(peers: &[Peer], ports: &[K8sPort], ingress: bool) -> Vec<Rule> {
    // `None` key: no port restriction at all; `None` value: all ports of
    // that protocol.
    let mut by_proto: BTreeMap<String, Option<Vec<Port>>> = BTreeMap::new();
    if ports.is_empty() {
        by_proto.insert(String::new(), None);
    }
    for p in ports {
        let calico_ports = p.port.as_ref().map(|v| {
            vec![match (v, p.end_port) {
                (PortValue::Number(n), Some(end)) => Port::Range(*n, end),
                (PortValue::Number(n), None) => Port::Range(*n, *n),
                (PortValue::Name(s), _) => Port::Named(s.clone()),
            }]
        });
        match calico_ports {
            None => {
                by_proto.insert(p.protocol.clone(), None);
            }
            Some(list) => match by_proto.get_mut(&p.protocol) {
                None => {
                    by_proto.insert(p.protocol.clone(), Some(list));
                }
                Some(Some(existing)) => existing.extend(list),
                // Already "all ports" for this protocol.
                Some(None) => {}
            },
        }
    }
    let no_peer = [None];
    let peer_list: Vec<Option<&Peer>> = if peers.is_empty() {
        no_peer.to_vec()
    } else {
        peers.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for (proto, ports) in by_proto {
        let ports = simplify_ports(ports.unwrap_or_default());
        let protocol = (!proto.is_empty()).then(|| Protocol::Name(proto.clone()));
        for peer in &peer_list {
            let mut side = Entity::default();
            match peer {
                None => {}
                Some(Peer::IpBlock { cidr, except }) => {
                    side.nets = vec![*cidr];
                    side.not_nets = except.clone();
                }
                Some(Peer::Selectors { pod, namespace }) => {
                    side.selector = selector_to_calico(pod.as_ref(), SelectorKind::Pod);
                    side.namespace_selector =
                        selector_to_calico(namespace.as_ref(), SelectorKind::Namespace);
                }
            }
            let mut rule = Rule::allow_all();
            rule.action = Action::Allow;
            rule.protocol = protocol.clone();
            if ingress {
                rule.src = side;
                rule.dst.ports = ports.clone();
            } else {
                side.ports = ports.clone();
                rule.dst = side;
            }
            out.push(rule);
        }
    }
    out
}

fn direction(spec: &At<'_>, key: &str, peer_key: &str, ingress: bool) -> FResult<Vec<Rule>> {
    let mut out = Vec::new();
    for r in spec.items(key)? {
        r.only(&[peer_key, "ports"])?;
        let peers = r
            .items(peer_key)?
            .iter()
            .map(peer)
            .collect::<FResult<Vec<_>>>()?;
        let ports = r
            .items("ports")?
            .iter()
            .map(k8s_port)
            .collect::<FResult<Vec<_>>>()?;
        out.extend(rules_to_calico(&peers, &ports, ingress));
    }
    Ok(out)
}

/// Parses and converts a Kubernetes NetworkPolicy spec (also the spec of a
/// StagedKubernetesNetworkPolicy) into Calico's form.
pub(crate) fn network_policy(
    spec: &At<'_>,
    namespace: &str,
    name: &str,
    kind: PolicyKind,
) -> FResult<Policy> {
    if kind == PolicyKind::StagedKubernetesNetworkPolicy {
        spec.only(&[
            "podSelector",
            "policyTypes",
            "ingress",
            "egress",
            "stagedAction",
        ])?;
    } else {
        spec.only(&["podSelector", "policyTypes", "ingress", "egress"])?;
    }
    let pod_selector = spec
        .get("podSelector")
        .map(|p| label_selector(&p))
        .transpose()?;
    let (mut ingress, mut egress) = (false, false);
    for t in spec.items("policyTypes")? {
        match t.str()? {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => return Err(t.err(format!("{other:?} is not Ingress or Egress"))),
        }
    }
    if !ingress && !egress {
        // The API server's defaulting (SetDefaults_NetworkPolicySpec), which Calico
        // sees: Ingress, plus Egress when the policy has egress rules.
        ingress = true;
        egress = !spec.items("egress")?.is_empty();
    }
    Ok(Policy {
        kind,
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
        tier: "default".to_string(),
        order: Some(K8S_POLICY_ORDER),
        // A missing podSelector is treated like `{}`: every pod.
        selector: selector_to_calico(
            Some(&pod_selector.unwrap_or(LabelSelector {
                match_labels: BTreeMap::new(),
                exprs: Vec::new(),
            })),
            SelectorKind::Pod,
        ),
        namespace_selector: String::new(),
        service_account_selector: String::new(),
        ingress,
        egress,
        ingress_rules: direction(spec, "ingress", "from", true)?,
        egress_rules: direction(spec, "egress", "to", false)?,
        do_not_track: false,
        pre_dnat: false,
        apply_on_forward: false,
        perf_hints: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_simplify_ports() {
        let got = simplify_ports(vec![
            Port::Range(82, 82),
            Port::Named("http".into()),
            Port::Range(80, 81),
            Port::Range(9090, 9090),
        ]);
        assert_eq!(
            got,
            vec![
                Port::Named("http".into()),
                Port::Range(80, 82),
                Port::Range(9090, 9090)
            ]
        );
    }

    #[test]
    fn test_selector_to_calico() {
        let sel = LabelSelector {
            match_labels: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            exprs: vec![
                ("c".into(), ExprOp::In, vec!["x".into(), "y".into()]),
                ("d".into(), ExprOp::DoesNotExist, vec![]),
            ],
        };
        assert_eq!(
            selector_to_calico(Some(&sel), SelectorKind::Pod),
            "projectcalico.org/orchestrator == 'k8s' && a == '1' && b == '2' && c in { 'x', 'y' } && ! has(d)"
        );
        let empty = LabelSelector {
            match_labels: BTreeMap::new(),
            exprs: vec![],
        };
        assert_eq!(
            selector_to_calico(Some(&empty), SelectorKind::Namespace),
            "all()"
        );
        assert_eq!(selector_to_calico(None, SelectorKind::Namespace), "");
    }
}
