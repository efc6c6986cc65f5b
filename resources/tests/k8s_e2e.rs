//! The Kubernetes network-policy e2e cases (namespaces x, y, z with pods a,
//! b, c): the Felix state each policy produces, and the reachability matrix
//! it must give (checked with the test evaluator in common/eval.rs).
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use capo_resources::felix::protocol::NumberOrName;
use capo_resources::{IpSetKind, Selector, Snapshot};
use common::eval::{check_matrix, Expect};
use common::{knp, members, rule_summary, snap, strs, tiers, wep, xyz_cluster, xyz_pods};
use sha2::{Digest, Sha224};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn cluster_with(policy: &str) -> Snapshot {
    let yaml = format!("{}---\n{policy}", xyz_cluster());
    snap(&common::load(&yaml), None)
}

fn set_id(selector: &str) -> String {
    Selector::parse(selector).expect("selector").unique_id()
}

/// Felix's named-port set id over a selector id, protocol and port name.
fn named_port_id(selector_id: &str, proto: &str, name: &str) -> String {
    let digest = Sha224::digest(format!("n:{selector_id},{proto},{name}").as_bytes());
    format!("n:{}", URL_SAFE_NO_PAD.encode(digest))
}

fn expect(proto: u8, port: u16, rules: Vec<(&'static str, &'static str, bool)>) -> Expect {
    Expect {
        proto,
        port,
        default: true,
        rules,
    }
}

#[test]
fn no_policy_allows_everything() {
    let s = snap(&common::load(&xyz_cluster()), None);
    assert!(s.policies().is_empty());
    assert!(s.ip_sets().is_empty());
    assert_eq!(s.workload_endpoints().len(), 9);
    assert_eq!(s.profiles().len(), 6, "kns.x/y/z and ksa.<ns>.default");
    check_matrix(&s, &xyz_pods(), &expect(TCP, 80, vec![]));
}

#[test]
fn deny_all_ingress() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
    );
    let p = knp(&s, "x", "deny-all");
    assert!(p.inbound_rules.is_empty() && p.outbound_rules.is_empty());
    assert_eq!(
        p.original_selector,
        "(projectcalico.org/orchestrator == \"k8s\" && projectcalico.org/namespace == \"x\")"
    );
    for pod in ["a", "b", "c"] {
        assert_eq!(
            tiers(&wep(&s, "x", pod).tiers),
            vec![("default".into(), strs(&["deny-all"]), vec![], "Deny".into())]
        );
        assert!(wep(&s, "y", pod).tiers.is_empty());
    }
    check_matrix(&s, &xyz_pods(), &expect(TCP, 80, vec![("*", "x/*", false)]));
}

#[test]
fn deny_all_egress() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    );
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![(
            "default".into(),
            vec![],
            strs(&["deny-egress"]),
            "Deny".into()
        )]
    );
    check_matrix(&s, &xyz_pods(), &expect(UDP, 53, vec![("x/*", "*", false)]));
}

#[test]
fn allow_from_namespace() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: y}}
",
    );
    let p = knp(&s, "x", "allow-ns-y");
    assert_eq!(p.inbound_rules.len(), 1);
    let r = &p.inbound_rules[0];
    // No ports: any protocol.
    assert!(r.protocol.is_none() && r.dst_ports.is_empty());
    let id = set_id("(pcns.ns == \"y\") && (projectcalico.org/orchestrator == 'k8s')");
    assert_eq!(r.src_ip_set_ids, vec![id.clone()]);
    assert_eq!(r.original_src_namespace_selector, "ns == 'y'");
    assert_eq!(
        members(&s, &id),
        strs(&["10.0.2.1/32", "10.0.2.2/32", "10.0.2.3/32"])
    );
    let e = vec![("y/*", "x/a", true), ("*", "x/a", false)];
    check_matrix(&s, &xyz_pods(), &expect(TCP, 80, e.clone()));
    check_matrix(&s, &xyz_pods(), &expect(UDP, 81, e));
}

#[test]
fn implicit_namespace_name_label() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-ns-name, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}
",
    );
    let id = set_id(
        "(pcns.kubernetes.io/metadata.name == \"z\") && (projectcalico.org/orchestrator == 'k8s')",
    );
    assert_eq!(members(&s, &id).len(), 3);
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(TCP, 80, vec![("z/*", "x/*", true), ("*", "x/*", false)]),
    );
}

#[test]
fn pod_and_namespace_selectors_are_anded_within_a_peer() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-from-yz, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector:
            matchExpressions: [{key: ns, operator: In, values: [z, y]}]
          podSelector: {matchLabels: {pod: b}}
",
    );
    let r = &knp(&s, "x", "allow-b-from-yz").inbound_rules[0];
    let id = set_id(
        "(pcns.ns in { 'z', 'y' }) && (projectcalico.org/orchestrator == 'k8s' && pod == 'b')",
    );
    assert_eq!(r.src_ip_set_ids, vec![id.clone()]);
    assert_eq!(members(&s, &id), strs(&["10.0.2.2/32", "10.0.3.2/32"]));
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(
            TCP,
            80,
            vec![
                ("y/b", "x/a", true),
                ("z/b", "x/a", true),
                ("*", "x/a", false),
            ],
        ),
    );
}

#[test]
fn peers_are_ored_one_rule_each() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-or-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {ns: y}}
        - podSelector: {matchLabels: {pod: c}}
",
    );
    let p = knp(&s, "x", "allow-y-or-c");
    assert_eq!(p.inbound_rules.len(), 2);
    let c_id = set_id(
        "(projectcalico.org/namespace == 'x') && (projectcalico.org/orchestrator == 'k8s' && pod == 'c')",
    );
    assert_eq!(p.inbound_rules[1].src_ip_set_ids, vec![c_id.clone()]);
    assert_eq!(members(&s, &c_id), strs(&["10.0.1.3/32"]));
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(
            TCP,
            80,
            vec![
                ("y/*", "x/a", true),
                ("x/c", "x/a", true),
                ("*", "x/a", false),
            ],
        ),
    );
}

#[test]
fn empty_namespace_selector_means_all_namespaces() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ns-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {}
          podSelector: {matchLabels: {pod: b}}
",
    );
    let r = &knp(&s, "x", "allow-all-ns-b").inbound_rules[0];
    let id = set_id(
        "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s' && pod == 'b')",
    );
    assert_eq!(r.src_ip_set_ids, vec![id.clone()]);
    assert_eq!(
        members(&s, &id),
        strs(&["10.0.1.2/32", "10.0.2.2/32", "10.0.3.2/32"])
    );
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(TCP, 80, vec![("*/b", "x/a", true), ("*", "x/a", false)]),
    );
}

#[test]
fn ip_block_with_except() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from:
        - ipBlock: {cidr: 10.0.0.9/16, except: [10.0.1.0/24]}
",
    );
    let e = &knp(&s, "x", "egress-ipblock").outbound_rules[0];
    assert_eq!(e.dst_net, strs(&["10.0.2.0/24"]));
    assert_eq!(e.not_dst_net, strs(&["10.0.2.2/32"]));
    assert!(e.dst_ip_set_ids.is_empty());
    let i = &knp(&s, "x", "ingress-ipblock").inbound_rules[0];
    // Calico masks the CIDR to its network.
    assert_eq!(i.src_net, strs(&["10.0.0.0/16"]));
    assert_eq!(i.not_src_net, strs(&["10.0.1.0/24"]));
    assert!(s.ip_sets().is_empty());
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(
            TCP,
            80,
            vec![
                ("x/a", "y/b", false),
                ("x/a", "y/*", true),
                ("x/a", "*", false),
                ("x/*", "x/b", false),
                ("*", "x/b", true),
            ],
        ),
    );
}

#[test]
fn named_port_ingress() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81-by-name, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - ports:
        - port: serve-81-tcp
",
    );
    let r = &knp(&s, "x", "allow-81-by-name").inbound_rules[0];
    assert!(r.dst_ports.is_empty());
    let id = named_port_id(&Selector::all().unique_id(), "tcp", "serve-81-tcp");
    assert_eq!(r.dst_named_port_ip_set_ids, vec![id.clone()]);
    assert!(r.dst_ip_set_ids.is_empty() && r.src_ip_set_ids.is_empty());
    assert_eq!(s.ip_sets()[&id].kind, IpSetKind::IpAndPort);
    let m = members(&s, &id);
    assert_eq!(m.len(), 9, "{m:?}");
    assert!(m.contains(&"10.0.1.1,tcp:81".to_string()));
    assert!(m.contains(&"10.0.3.3,tcp:81".to_string()));
    let pods = xyz_pods();
    check_matrix(&s, &pods, &expect(TCP, 81, vec![]));
    check_matrix(&s, &pods, &expect(TCP, 80, vec![("*", "x/a", false)]));
    check_matrix(&s, &pods, &expect(UDP, 81, vec![("*", "x/a", false)]));
}

#[test]
fn named_port_egress_filtered_by_peer() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-b-http, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector: {matchLabels: {pod: b}}
      ports:
        - {protocol: UDP, port: serve-80-udp}
",
    );
    let r = &knp(&s, "x", "to-b-http").outbound_rules[0];
    let sel = set_id(
        "(projectcalico.org/namespace == 'x') && (projectcalico.org/orchestrator == 'k8s' && pod == 'b')",
    );
    let id = named_port_id(&sel, "udp", "serve-80-udp");
    assert_eq!(r.dst_named_port_ip_set_ids, vec![id.clone()]);
    // The selector set is folded into the named-port set.
    assert!(r.dst_ip_set_ids.is_empty());
    assert_eq!(members(&s, &id), strs(&["10.0.1.2,udp:80"]));
    assert_eq!(
        r.protocol.as_ref().and_then(|p| p.number_or_name.clone()),
        Some(NumberOrName::Name("udp".into()))
    );
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(UDP, 80, vec![("x/a", "x/b", true), ("x/a", "*", false)]),
    );
    check_matrix(&s, &xyz_pods(), &expect(TCP, 80, vec![("x/a", "*", false)]));
}

#[test]
fn end_port_range() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - ports:
        - {protocol: TCP, port: 80, endPort: 81}
",
    );
    let r = &knp(&s, "x", "range").inbound_rules[0];
    assert_eq!(rule_summary(r)["dst_ports"], "80-81");
    let pods = xyz_pods();
    check_matrix(&s, &pods, &expect(TCP, 80, vec![]));
    check_matrix(&s, &pods, &expect(TCP, 81, vec![]));
    check_matrix(&s, &pods, &expect(TCP, 82, vec![("*", "x/a", false)]));
}

#[test]
fn ingress_and_egress_together() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}]
  egress:
    - to: [{podSelector: {matchLabels: {pod: c}}}]
      ports: [{port: 80}]
",
    );
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![(
            "default".into(),
            strs(&["both"]),
            strs(&["both"]),
            "Deny".into()
        )]
    );
    let pods = xyz_pods();
    let e = vec![
        ("x/b", "x/a", true),
        ("*", "x/a", false),
        ("x/a", "x/c", true),
        ("x/a", "*", false),
    ];
    check_matrix(&s, &pods, &expect(TCP, 80, e));
    // Egress allows TCP 80 only.
    check_matrix(
        &s,
        &pods,
        &expect(
            TCP,
            81,
            vec![
                ("x/b", "x/a", true),
                ("*", "x/a", false),
                ("x/a", "*", false),
            ],
        ),
    );
}

#[test]
fn rules_grouped_by_protocol_then_peer() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: grouped, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - podSelector: {matchLabels: {pod: b}}
        - ipBlock: {cidr: 192.168.0.0/16}
      ports:
        - {protocol: UDP, port: 53}
        - {port: 81}
        - {protocol: TCP, port: 80}
        - {protocol: SCTP}
",
    );
    let rules = &knp(&s, "x", "grouped").inbound_rules;
    let got: Vec<_> = rules.iter().map(rule_summary).collect();
    let proto = |p: &str| format!("{:?}", Some(NumberOrName::Name(p.into())));
    assert_eq!(got.len(), 6);
    // Protocols in sorted order: SCTP, TCP, UDP; peers in order within each.
    assert_eq!(got[0]["protocol"], proto("sctp"));
    assert!(!got[0].contains_key("dst_ports"));
    assert_eq!(got[1]["src_net"], "192.168.0.0/16");
    assert_eq!(got[2]["protocol"], proto("tcp"));
    assert_eq!(got[2]["dst_ports"], "80-81");
    assert_eq!(got[3]["src_net"], "192.168.0.0/16");
    assert_eq!(got[4]["protocol"], proto("udp"));
    assert_eq!(got[4]["dst_ports"], "53-53");
    // Rule ids differ and are 16 characters.
    let ids: std::collections::BTreeSet<_> = rules.iter().map(|r| r.rule_id.clone()).collect();
    assert_eq!(ids.len(), 6);
}

#[test]
fn egress_rules_without_egress_type_are_sent_but_not_tiered() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  egress:
    - to: [{podSelector: {matchLabels: {pod: b}}}]
",
    );
    let p = knp(&s, "x", "ingress-only");
    assert_eq!(p.outbound_rules.len(), 1);
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![(
            "default".into(),
            strs(&["ingress-only"]),
            vec![],
            "Deny".into()
        )]
    );
    check_matrix(&s, &xyz_pods(), &expect(TCP, 80, vec![("*", "x/a", false)]));
}

#[test]
fn policies_combine_as_a_union() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
",
    );
    // Same order (1000): sorted by name.
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![(
            "default".into(),
            strs(&["from-y", "from-z"]),
            vec![],
            "Deny".into()
        )]
    );
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(
            TCP,
            80,
            vec![
                ("y/*", "x/a", true),
                ("z/*", "x/a", true),
                ("*", "x/a", false),
            ],
        ),
    );
}

#[test]
fn local_node_limits_endpoints_and_policies_not_set_members() {
    let yaml = format!(
        "{}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-ns-y, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-z, namespace: z}}
spec:
  podSelector: {{}}
",
        xyz_cluster()
    );
    let r = common::load(&yaml);
    let s = snap(&r, Some("node-1"));
    let weps: Vec<String> = s
        .workload_endpoints()
        .keys()
        .map(|k| format!("{}/{}", k.namespace, k.pod))
        .collect();
    assert_eq!(weps, strs(&["x/a", "x/b", "x/c"]));
    // deny-z selects no local endpoint: not sent.
    assert_eq!(s.policies().len(), 1);
    let id = set_id("(pcns.ns == \"y\") && (projectcalico.org/orchestrator == 'k8s')");
    // Remote pods are still members.
    assert_eq!(members(&s, &id).len(), 3);
    let profiles: Vec<&String> = s.profiles().keys().collect();
    assert_eq!(profiles, vec!["kns.x", "ksa.x.default"]);

    let s3 = snap(&r, Some("node-3"));
    assert_eq!(s3.policies().len(), 1);
    assert!(s3.ip_sets().is_empty());
    assert_eq!(s3.config()["FelixHostname"], "node-3");
}

/// Without `policyTypes` the API server defaults to Ingress, plus Egress when the
/// policy has egress rules: a policy with only egress rules isolates egress (it must
/// not fail open), and one with both lists isolates both.
#[test]
fn omitted_policy_types_default_as_the_api_server_does() {
    let s = cluster_with(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
    - to:
        - podSelector: {matchLabels: {pod: b}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from:
        - podSelector: {matchLabels: {pod: a}}
  egress:
    - to:
        - podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  egress: []
",
    );
    let t = |pod: &str| tiers(&wep(&s, "x", pod).tiers);
    let names = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    // egress-only: Ingress (always) and Egress (it has egress rules).
    assert_eq!(t("a")[0].1, names(&["egress-only"]));
    assert_eq!(t("a")[0].2, names(&["egress-only"]));
    assert_eq!(t("b")[0].1, names(&["both"]));
    assert_eq!(t("b")[0].2, names(&["both"]));
    // An empty egress list is no egress rule: Ingress only.
    assert_eq!(t("c")[0].1, names(&["ingress-only"]));
    assert!(t("c")[0].2.is_empty(), "{:?}", t("c"));
    // Egress from x/a is isolated: only x/b is reachable.
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(
            TCP,
            80,
            vec![
                ("x/a", "x/b", true),
                ("x/a", "*", false),
                ("*", "x/a", false),
                ("x/b", "*", false),
                ("*", "x/b", false),
                ("*", "x/c", false),
            ],
        ),
    );
}
