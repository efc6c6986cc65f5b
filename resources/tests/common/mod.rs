//! Helpers shared by the integration tests: building clusters from inline
//! YAML, finding things in a snapshot, and a small test-only evaluator of
//! Felix semantics (DESIGN.md §3) used to check reachability matrices until
//! `capo-policy`'s reference evaluator can be fed from these messages.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod eval;

use std::collections::BTreeMap;
use std::path::Path;

use capo_resources::felix::{self as pb, to_dataplane::Payload};
use capo_resources::{Options, PolicyRef, Resources, Snapshot, WorkloadRef};

/// Loads inline YAML as if it were the file `test.yaml`.
pub(crate) fn load(yaml: &str) -> Resources {
    let mut r = Resources::new();
    r.add_text(Path::new("test.yaml"), yaml)
        .expect("valid test manifests");
    r
}

/// Loads inline YAML, expecting failure.
pub(crate) fn load_err(yaml: &str) -> capo_resources::Error {
    let mut r = Resources::new();
    r.add_text(Path::new("bad.yaml"), yaml)
        .expect_err("manifest should be rejected")
}

pub(crate) fn snap(r: &Resources, node: Option<&str>) -> Snapshot {
    r.snapshot(&Options::for_node(node))
}

/// The namespaces x, y, z (labelled `ns: <name>`; Kubernetes adds
/// `kubernetes.io/metadata.name` itself) with pods a, b, c each
/// (labelled `pod: <name>`), as in the Kubernetes network-policy e2e
/// suite. Pod IPs are 10.0.<1|2|3>.<1|2|3> for x|y|z and a|b|c; every pod
/// serves TCP and UDP 80 and 81 as named ports `serve-<port>-<proto>`.
/// x's pods run on node-1, y's on node-2, z's on node-3.
pub(crate) fn xyz_cluster() -> String {
    let mut out = String::new();
    for (ni, ns) in ["x", "y", "z"].iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n"
        ));
        for (pi, pod) in ["a", "b", "c"].iter().enumerate() {
            out.push_str(&format!(
                "---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {ns}
  labels:
    pod: {pod}
spec:
  nodeName: node-{n}
  containers:
    - name: cont-80-tcp
      ports:
        - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}
        - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}
    - name: cont-81-tcp
      ports:
        - {{name: serve-81-tcp, containerPort: 81}}
        - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
status:
  podIP: 10.0.{nn}.{pn}
",
                n = ni + 1,
                nn = ni + 1,
                pn = pi + 1
            ));
        }
    }
    out
}

/// Pod name (`x/a`) to IP for the xyz cluster.
pub(crate) fn xyz_pods() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (ni, ns) in ["x", "y", "z"].iter().enumerate() {
        for (pi, pod) in ["a", "b", "c"].iter().enumerate() {
            v.push((format!("{ns}/{pod}"), format!("10.0.{}.{}", ni + 1, pi + 1)));
        }
    }
    v
}

pub(crate) fn policy<'a>(s: &'a Snapshot, kind: &str, ns: &str, name: &str) -> &'a pb::Policy {
    s.policies()
        .get(&PolicyRef {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        })
        .unwrap_or_else(|| {
            panic!(
                "policy {kind} {ns}/{name} not active; have {:?}",
                s.policies().keys()
            )
        })
}

pub(crate) fn knp<'a>(s: &'a Snapshot, ns: &str, name: &str) -> &'a pb::Policy {
    policy(s, "KubernetesNetworkPolicy", ns, name)
}

pub(crate) fn wep<'a>(s: &'a Snapshot, ns: &str, pod: &str) -> &'a pb::WorkloadEndpoint {
    s.workload_endpoints()
        .get(&WorkloadRef {
            namespace: ns.into(),
            pod: pod.into(),
        })
        .unwrap_or_else(|| panic!("no local endpoint {ns}/{pod}"))
}

/// Members of an IP set, sorted.
pub(crate) fn members(s: &Snapshot, id: &str) -> Vec<String> {
    s.ip_sets()
        .get(id)
        .unwrap_or_else(|| panic!("no ip set {id}"))
        .members
        .iter()
        .cloned()
        .collect()
}

pub(crate) fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `(tier, ingress names, egress names, default action)` for an endpoint.
pub(crate) fn tiers(t: &[pb::TierInfo]) -> Vec<(String, Vec<String>, Vec<String>, String)> {
    t.iter()
        .map(|ti| {
            (
                ti.name.clone(),
                ti.ingress_policies.iter().map(|p| p.name.clone()).collect(),
                ti.egress_policies.iter().map(|p| p.name.clone()).collect(),
                ti.default_action.clone(),
            )
        })
        .collect()
}

/// The name of each message's payload, in order.
pub(crate) fn kinds(msgs: &[pb::ToDataplane]) -> Vec<&'static str> {
    msgs.iter()
        .map(|m| match &m.payload {
            Some(Payload::ConfigUpdate(_)) => "ConfigUpdate",
            Some(Payload::IpsetUpdate(_)) => "IPSetUpdate",
            Some(Payload::IpsetDeltaUpdate(_)) => "IPSetDeltaUpdate",
            Some(Payload::IpsetRemove(_)) => "IPSetRemove",
            Some(Payload::ActivePolicyUpdate(_)) => "ActivePolicyUpdate",
            Some(Payload::ActivePolicyRemove(_)) => "ActivePolicyRemove",
            Some(Payload::ActiveProfileUpdate(_)) => "ActiveProfileUpdate",
            Some(Payload::ActiveProfileRemove(_)) => "ActiveProfileRemove",
            Some(Payload::WorkloadEndpointUpdate(_)) => "WorkloadEndpointUpdate",
            Some(Payload::WorkloadEndpointRemove(_)) => "WorkloadEndpointRemove",
            Some(Payload::HostEndpointUpdate(_)) => "HostEndpointUpdate",
            Some(Payload::HostEndpointRemove(_)) => "HostEndpointRemove",
            Some(Payload::HostMetadataUpdate(_)) => "HostMetadataUpdate",
            Some(Payload::HostMetadataRemove(_)) => "HostMetadataRemove",
            Some(Payload::InSync(_)) => "InSync",
            _ => "other",
        })
        .collect()
}

/// A short readable form of a rule for assertions.
pub(crate) fn rule_summary(r: &pb::Rule) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("action", r.action.clone());
    if let Some(p) = &r.protocol {
        m.insert("protocol", format!("{:?}", p.number_or_name));
    }
    let ports = |v: &[pb::PortRange]| {
        v.iter()
            .map(|p| format!("{}-{}", p.first, p.last))
            .collect::<Vec<_>>()
            .join(",")
    };
    if !r.dst_ports.is_empty() {
        m.insert("dst_ports", ports(&r.dst_ports));
    }
    if !r.src_net.is_empty() {
        m.insert("src_net", r.src_net.join(","));
    }
    if !r.dst_net.is_empty() {
        m.insert("dst_net", r.dst_net.join(","));
    }
    if !r.not_src_net.is_empty() {
        m.insert("not_src_net", r.not_src_net.join(","));
    }
    if !r.not_dst_net.is_empty() {
        m.insert("not_dst_net", r.not_dst_net.join(","));
    }
    m
}
