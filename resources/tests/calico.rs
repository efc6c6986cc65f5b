//! Calico policy features: tiers and their order, policy order, Pass, Log,
//! rule fields, staged policies, namespace/service-account selectors,
//! network sets, host endpoints and profiles.
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use capo_resources::felix::{self as pb, protocol::NumberOrName, rule};
use capo_resources::{Selector, Snapshot};
use common::eval::{check_matrix, Expect};
use common::{members, policy, snap, strs, tiers, wep, xyz_cluster, xyz_pods};

const TCP: u8 = 6;

fn cluster_with(extra: &str) -> Snapshot {
    snap(
        &common::load(&format!("{}---\n{extra}", xyz_cluster())),
        None,
    )
}

fn set_id(selector: &str) -> String {
    Selector::parse(selector).expect("selector").unique_id()
}

fn expect(rules: Vec<(&'static str, &'static str, bool)>) -> Expect {
    Expect {
        proto: TCP,
        port: 80,
        default: true,
        rules,
    }
}

const TIERS: &str = "apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 200, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-z}
spec:
  tier: security
  order: 10
  selector: all()
  ingress:
    - action: Deny
      source: {namespaceSelector: ns == 'z'}
    - action: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: log-all}
spec:
  tier: platform
  selector: all()
  ingress:
    - action: Log
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";

#[test]
fn tiers_in_order_with_pass_and_log() {
    let s = cluster_with(TIERS);
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![
            ("security".into(), strs(&["block-z"]), vec![], "Deny".into()),
            ("platform".into(), strs(&["log-all"]), vec![], "Pass".into()),
            (
                "default".into(),
                strs(&["x-a-from-y"]),
                vec![],
                "Deny".into()
            ),
        ]
    );
    assert_eq!(wep(&s, "y", "b").tiers.len(), 2);
    let block = policy(&s, "GlobalNetworkPolicy", "", "block-z");
    assert_eq!(block.tier, "security");
    assert_eq!(block.namespace, "");
    assert_eq!(block.original_selector, "all()");
    let actions: Vec<&str> = block
        .inbound_rules
        .iter()
        .map(|r| r.action.as_str())
        .collect();
    assert_eq!(actions, vec!["deny", "next-tier"]);
    let z = set_id("pcns.ns == \"z\"");
    assert_eq!(block.inbound_rules[0].src_ip_set_ids, vec![z.clone()]);
    assert_eq!(
        members(&s, &z),
        strs(&["10.0.3.1/32", "10.0.3.2/32", "10.0.3.3/32"])
    );
    let log = policy(&s, "GlobalNetworkPolicy", "", "log-all");
    assert_eq!(log.inbound_rules[0].action, "log");
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(vec![
            ("z/*", "*", false),
            ("y/*", "x/a", true),
            ("*", "x/a", false),
        ]),
    );
}

#[test]
fn tier_default_action_and_unset_order() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: zz}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: aa}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: early}
spec: {order: 1}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p-zz}
spec: {tier: zz, selector: pod == 'a', ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p-aa}
spec: {tier: aa, selector: pod == 'a', ingress: [{action: Pass}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p-default}
spec: {selector: pod == 'a', ingress: [{action: Pass}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p-early}
spec: {tier: early, selector: pod == 'a', types: [Egress]}
",
    );
    let names: Vec<String> = wep(&s, "y", "a")
        .tiers
        .iter()
        .map(|t| t.name.clone())
        .collect();
    // Unset orders sort after every set order, then by name.
    assert_eq!(names, strs(&["early", "default", "aa", "zz"]));
    assert_eq!(
        tiers(&wep(&s, "y", "a").tiers)[0],
        ("early".into(), vec![], strs(&["p-early"]), "Deny".into())
    );
    // early: egress with no rules -> pods a can send nothing; ingress passes
    // through default and aa into zz, which allows.
    check_matrix(&s, &xyz_pods(), &expect(vec![("*/a", "*", false)]));
}

#[test]
fn policy_order_and_unset_order() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p-ten, namespace: x}
spec: {order: 10, selector: pod == 'a', ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p-five, namespace: x}
spec:
  order: 5
  selector: pod == 'a'
  ingress: [{action: Deny, source: {namespaceSelector: ns == 'y'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-five, namespace: x}
spec:
  order: 5
  selector: pod == 'a'
  ingress: [{action: Allow, source: {selector: pod == 'a', namespaceSelector: ns == 'y'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p-unset, namespace: x}
spec: {selector: pod == 'a', ingress: [{action: Deny}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k8s-1000, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
",
    );
    assert_eq!(
        tiers(&wep(&s, "x", "a").tiers),
        vec![(
            "default".into(),
            strs(&["a-five", "p-five", "p-ten", "k8s-1000", "p-unset"]),
            vec![],
            "Deny".into()
        )]
    );
    let p = policy(&s, "NetworkPolicy", "x", "p-ten");
    assert_eq!(
        p.original_selector,
        "(pod == \"a\" && projectcalico.org/namespace == \"x\")"
    );
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(vec![("y/a", "x/a", true), ("y/*", "x/a", false)]),
    );
}

#[test]
fn rule_fields() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: misc}
spec:
  selector: pod == 'c'
  ingress:
    - action: Allow
      protocol: ICMP
      icmp: {type: 8, code: 0}
    - action: Allow
      protocol: ICMPv6
      notICMP: {type: 128}
    - action: Deny
      protocol: TCP
      source:
        nets: [10.0.0.0/8, 10.0.1.7]
        notNets: [10.1.0.0/16]
        notPorts: [22, '1000:2000']
      destination:
        notNets: [10.0.2.3]
        ports: [443, http]
    - action: Allow
      protocol: 132
      ipVersion: 6
    - action: Log
      notProtocol: UDP
  egress:
    - action: Allow
      destination:
        notSelector: pod == 'b'
",
    );
    let p = policy(&s, "GlobalNetworkPolicy", "", "misc");
    let r = &p.inbound_rules;
    assert_eq!(r[0].ip_version, pb::IpVersion::Ipv4 as i32);
    assert_eq!(
        r[0].icmp,
        Some(rule::Icmp::IcmpTypeCode(pb::IcmpTypeAndCode {
            r#type: 8,
            code: 0
        }))
    );
    assert_eq!(r[1].ip_version, pb::IpVersion::Ipv6 as i32);
    assert_eq!(
        r[1].protocol
            .as_ref()
            .and_then(|p| p.number_or_name.clone()),
        Some(NumberOrName::Name("icmpv6".into()))
    );
    assert_eq!(r[1].not_icmp, Some(rule::NotIcmp::NotIcmpType(128)));
    assert_eq!(r[2].action, "deny");
    assert_eq!(r[2].src_net, strs(&["10.0.0.0/8", "10.0.1.7/32"]));
    assert_eq!(r[2].not_src_net, strs(&["10.1.0.0/16"]));
    assert_eq!(
        r[2].not_src_ports,
        vec![
            pb::PortRange {
                first: 22,
                last: 22
            },
            pb::PortRange {
                first: 1000,
                last: 2000
            }
        ]
    );
    assert_eq!(r[2].not_dst_net, strs(&["10.0.2.3/32"]));
    assert_eq!(
        r[2].dst_ports,
        vec![pb::PortRange {
            first: 443,
            last: 443
        }]
    );
    assert_eq!(r[2].dst_named_port_ip_set_ids.len(), 1);
    assert_eq!(r[2].ip_version, 0);
    assert_eq!(
        r[3].protocol
            .as_ref()
            .and_then(|p| p.number_or_name.clone()),
        Some(NumberOrName::Number(132))
    );
    assert_eq!(r[3].ip_version, pb::IpVersion::Ipv6 as i32);
    assert_eq!(r[4].action, "log");
    assert_eq!(
        r[4].not_protocol
            .as_ref()
            .and_then(|p| p.number_or_name.clone()),
        Some(NumberOrName::Name("udp".into()))
    );
    // A lone notSelector in a global policy is a negated set of its own.
    let e = &p.outbound_rules[0];
    assert!(e.dst_ip_set_ids.is_empty());
    let not_b = set_id("pod == 'b'");
    assert_eq!(e.not_dst_ip_set_ids, vec![not_b.clone()]);
    assert_eq!(members(&s, &not_b).len(), 3);
    // The agent's converter and the policy core accept the whole stream.
    common::eval::reference_state(&s);
}

#[test]
fn not_selector_folds_into_namespaced_positive_selector() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-b, namespace: x}
spec:
  selector: pod == 'a'
  ingress:
    - action: Allow
      source: {notSelector: pod == 'b'}
",
    );
    let r = &policy(&s, "NetworkPolicy", "x", "not-b").inbound_rules[0];
    // Namespaced: the positive side becomes the namespace, and the negated
    // selector is folded into it (Felix's combineMatchesIfPossible).
    let id = set_id("(projectcalico.org/namespace == 'x') && (!(pod == 'b'))");
    assert_eq!(r.src_ip_set_ids, vec![id.clone()]);
    assert!(r.not_src_ip_set_ids.is_empty());
    assert_eq!(members(&s, &id), strs(&["10.0.1.1/32", "10.0.1.3/32"]));
    check_matrix(
        &s,
        &xyz_pods(),
        &expect(vec![("x/c", "x/a", true), ("*", "x/a", false)]),
    );
}

#[test]
fn staged_policies_are_sent_but_not_enforced() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: staged-deny, namespace: x}
spec:
  selector: pod == 'a'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: staged-delete}
spec:
  stagedAction: Delete
  selector: all()
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: staged-knp, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Ingress]
",
    );
    let a = &wep(&s, "x", "a").tiers;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].ingress_policies[0].kind, "StagedNetworkPolicy");
    assert_eq!(
        wep(&s, "y", "b").tiers[0].ingress_policies[0].kind,
        "StagedKubernetesNetworkPolicy"
    );
    assert!(!s.policies().keys().any(|k| k.name == "staged-delete"));
    assert!(capo_resources::is_staged_kind("StagedNetworkPolicy"));
    check_matrix(&s, &xyz_pods(), &expect(vec![]));
}

#[test]
fn service_account_and_namespace_selectors() {
    let s = snap(
        &common::load(
            "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa-b, namespace: x, labels: {trusted: 'yes'}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, serviceAccountName: sa-a}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n1, serviceAccountName: sa-b}
status: {podIP: 10.0.1.2}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: red-team}
spec:
  namespaceSelector: team == 'red'
  serviceAccountSelector: all()
  ingress:
    - action: Allow
      source:
        serviceAccounts: {names: [sa-b]}
    - action: Allow
      source:
        serviceAccounts: {selector: trusted == 'yes'}
        namespaceSelector: global()
",
        ),
        None,
    );
    let p = policy(&s, "GlobalNetworkPolicy", "", "red-team");
    assert_eq!(
        p.original_selector,
        "(pcns.team == \"red\" && has(projectcalico.org/serviceaccount))"
    );
    // The policy selects both pods (namespace label inherited via kns.x).
    assert_eq!(wep(&s, "x", "a").tiers.len(), 1);
    let by_name = set_id("projectcalico.org/serviceaccount in {\"sa-b\"}");
    assert_eq!(p.inbound_rules[0].src_ip_set_ids, vec![by_name.clone()]);
    assert_eq!(members(&s, &by_name), strs(&["10.0.1.2/32"]));
    assert_eq!(
        p.inbound_rules[0].src_service_account_match,
        Some(pb::ServiceAccountMatch {
            selector: String::new(),
            names: strs(&["sa-b"])
        })
    );
    let by_label = set_id("(!has(projectcalico.org/namespace)) && (pcsa.trusted == \"yes\")");
    assert_eq!(p.inbound_rules[1].src_ip_set_ids, vec![by_label.clone()]);
    // global() excludes namespaced endpoints: no pod qualifies.
    assert!(members(&s, &by_label).is_empty());
    // The agent's converter and the policy core accept the whole stream.
    common::eval::reference_state(&s);
}

#[test]
fn network_sets_join_selector_sets() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: external, labels: {role: external}}
spec: {nets: [192.0.2.0/24, 198.51.100.7]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: x, labels: {role: external}}
spec: {nets: [203.0.113.0/28]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-external, namespace: x}
spec:
  selector: pod == 'a'
  ingress: [{action: Allow, source: {selector: role == 'external'}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: from-any-external}
spec:
  selector: pod == 'b'
  ingress: [{action: Allow, source: {selector: role == 'external'}}]
",
    );
    let ns = set_id("(projectcalico.org/namespace == 'x') && (role == 'external')");
    assert_eq!(members(&s, &ns), strs(&["203.0.113.0/28"]));
    let global = set_id("role == 'external'");
    assert_eq!(
        members(&s, &global),
        strs(&["192.0.2.0/24", "198.51.100.7/32", "203.0.113.0/28"])
    );
    // The agent's converter and the policy core accept the whole stream.
    common::eval::reference_state(&s);
}

#[test]
fn host_endpoints_and_their_tiers() {
    let s = snap(
        &common::load(
            "apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: host-profile}
spec:
  labelsToApply: {role: host}
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-eth0, labels: {hep: 'true'}}
spec:
  node: node-1
  interfaceName: eth0
  expectedIPs: [172.18.0.5, 'fc00::5']
  profiles: [host-profile]
  ports: [{name: ssh, port: 22, protocol: TCP}]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-2-eth0}
spec: {node: node-2, interfaceName: eth0}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: normal}
spec:
  selector: role == 'host'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [ssh]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec: {selector: has(hep), doNotTrack: true, applyOnForward: true, ingress: [{action: Allow}], egress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: prednat}
spec: {selector: has(hep), preDNAT: true, applyOnForward: true, ingress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: forward}
spec: {selector: has(hep), applyOnForward: true, types: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: hosts-set}
spec:
  selector: has(hep)
  egress: [{action: Allow, destination: {selector: role == 'host'}}]
",
        ),
        Some("node-1"),
    );
    assert_eq!(s.host_endpoints().len(), 1);
    let h = &s.host_endpoints()["node-1-eth0"];
    assert_eq!(h.name, "eth0");
    assert_eq!(h.expected_ipv4_addrs, strs(&["172.18.0.5"]));
    assert_eq!(h.expected_ipv6_addrs, strs(&["fc00::5"]));
    assert_eq!(h.profile_ids, strs(&["host-profile"]));
    assert_eq!(
        tiers(&h.tiers),
        vec![(
            "default".into(),
            strs(&["forward", "normal"]),
            strs(&["hosts-set"]),
            "Deny".into()
        )]
    );
    assert_eq!(
        tiers(&h.untracked_tiers),
        vec![(
            "default".into(),
            strs(&["untracked"]),
            strs(&["untracked"]),
            "Pass".into()
        )]
    );
    // Pre-DNAT tiers never list egress policies.
    assert_eq!(
        tiers(&h.pre_dnat_tiers),
        vec![("default".into(), strs(&["prednat"]), vec![], "Pass".into())]
    );
    assert_eq!(
        tiers(&h.forward_tiers),
        vec![("default".into(), strs(&["forward"]), vec![], "Deny".into())]
    );
    let set = set_id("role == 'host'");
    assert_eq!(members(&s, &set), strs(&["172.18.0.5/32", "fc00::5/128"]));
    let normal = policy(&s, "GlobalNetworkPolicy", "", "normal");
    let ssh = &normal.inbound_rules[0].dst_named_port_ip_set_ids[0];
    assert_eq!(
        members(&s, ssh),
        strs(&["172.18.0.5,tcp:22", "fc00::5,tcp:22"])
    );
    assert!(s.profiles().contains_key("host-profile"));
    assert_eq!(
        s.profiles()["host-profile"].inbound_rules[0].action,
        "allow"
    );
    // The agent's converter and the policy core accept the whole stream.
    common::eval::reference_state(&s);
}

#[test]
fn perf_hint_sends_policy_everywhere() {
    let s = cluster_with(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: hinted}
spec:
  selector: pod == 'nobody'
  performanceHints: [AssumeNeededOnEveryNode]
",
    );
    let p = policy(&s, "GlobalNetworkPolicy", "", "hinted");
    assert_eq!(p.perf_hints, strs(&["AssumeNeededOnEveryNode"]));
    assert!(wep(&s, "x", "a").tiers.is_empty());
    // The agent's converter and the policy core accept the whole stream.
    common::eval::reference_state(&s);
}
