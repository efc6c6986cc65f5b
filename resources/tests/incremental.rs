//! `diff`: the minimal update between two snapshots, in Felix's flush order.
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use capo_resources::felix::to_dataplane::Payload;
use capo_resources::{diff, number_from, Options, Snapshot};
use common::{kinds, snap, xyz_cluster};

const ALLOW_FROM_Y: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";

const EXTRA_Y_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {pod: d}}
spec: {nodeName: node-2}
status: {podIP: 10.0.2.4}
";

fn with(parts: &[&str]) -> Snapshot {
    let mut yaml = xyz_cluster();
    for p in parts {
        yaml.push_str("---\n");
        yaml.push_str(p);
    }
    snap(&common::load(&yaml), None)
}

#[test]
fn no_change_no_messages() {
    let a = with(&[ALLOW_FROM_Y]);
    assert!(diff(&a, &a.clone()).is_empty());
}

#[test]
fn full_stream_equals_diff_from_empty_plus_in_sync() {
    let a = with(&[ALLOW_FROM_Y]);
    let mut from_empty = diff(&Snapshot::default(), &a);
    number_from(&mut from_empty, 0);
    let full = a.to_felix_messages();
    assert_eq!(&full[..full.len() - 1], &from_empty[..]);
}

#[test]
fn new_member_is_a_delta() {
    let old = with(&[ALLOW_FROM_Y]);
    let new = with(&[ALLOW_FROM_Y, EXTRA_Y_POD]);
    let msgs = diff(&old, &new);
    assert_eq!(
        kinds(&msgs),
        vec!["IPSetDeltaUpdate", "WorkloadEndpointUpdate"]
    );
    let Some(Payload::IpsetDeltaUpdate(d)) = &msgs[0].payload else {
        panic!("expected a delta");
    };
    assert_eq!(d.added_members, vec!["10.0.2.4/32".to_string()]);
    assert!(d.removed_members.is_empty());
    // y/d's profiles (kns.y, ksa.y.default) are active already.

    let back = diff(&new, &old);
    assert_eq!(
        kinds(&back),
        vec!["IPSetDeltaUpdate", "WorkloadEndpointRemove"]
    );
    let Some(Payload::IpsetDeltaUpdate(d)) = &back[0].payload else {
        panic!("expected a delta");
    };
    assert_eq!(d.removed_members, vec!["10.0.2.4/32".to_string()]);
}

#[test]
fn adding_a_policy_sends_sets_then_policy_then_endpoint() {
    let old = with(&[]);
    let new = with(&[ALLOW_FROM_Y]);
    assert_eq!(
        kinds(&diff(&old, &new)),
        vec![
            "IPSetUpdate",
            "ActivePolicyUpdate",
            "WorkloadEndpointUpdate"
        ]
    );
    // Removing it: endpoint first, then policy, then set (reverse order).
    assert_eq!(
        kinds(&diff(&new, &old)),
        vec![
            "WorkloadEndpointUpdate",
            "ActivePolicyRemove",
            "IPSetRemove"
        ]
    );
}

#[test]
fn changed_policy_is_resent_alone() {
    let old = with(&[ALLOW_FROM_Y]);
    let changed = ALLOW_FROM_Y.replace("ingress:", "policyTypes: [Ingress]\n  ingress:");
    // Same meaning after defaulting: nothing to send.
    assert!(diff(&old, &with(&[&changed])).is_empty());
    let ported = ALLOW_FROM_Y.replace("}}]}]", "}}], ports: [{port: 80}]}]");
    assert_eq!(
        kinds(&diff(&old, &with(&[&ported]))),
        vec!["ActivePolicyUpdate"]
    );
}

#[test]
fn node_and_config_changes() {
    let node = "apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}
";
    let r_old = common::load(&xyz_cluster());
    let r_new = common::load(&format!("{}---\n{node}", xyz_cluster()));
    let old = r_old.snapshot(&Options::for_node(Some("node-1")));
    let new = r_new.snapshot(&Options::for_node(Some("node-1")));
    let msgs = diff(&old, &new);
    assert_eq!(kinds(&msgs), vec!["HostMetadataUpdate"]);
    let Some(Payload::HostMetadataUpdate(h)) = &msgs[0].payload else {
        panic!("expected host metadata");
    };
    assert_eq!(h.ipv4_addr, "192.168.1.1/32");
    assert_eq!(kinds(&diff(&new, &old)), vec!["HostMetadataRemove"]);

    let mut opts = Options::for_node(Some("node-1"));
    opts.config
        .insert("DefaultEndpointToHostAction".into(), "DROP".into());
    let dropped = r_old.snapshot(&opts);
    assert_eq!(kinds(&diff(&old, &dropped)), vec!["ConfigUpdate"]);
    assert_eq!(dropped.config()["DefaultEndpointToHostAction"], "DROP");
}

#[test]
fn diff_applied_to_the_policy_core_reaches_the_new_state() {
    use capo_felix::convert::{convert, Converted};
    let steps = [
        with(&[]),
        with(&[ALLOW_FROM_Y]),
        with(&[ALLOW_FROM_Y, EXTRA_Y_POD]),
        with(&[EXTRA_Y_POD]),
        with(&[]),
    ];
    let mut state = common::eval::reference_state(&steps[0]);
    for pair in steps.windows(2) {
        for m in diff(&pair[0], &pair[1]) {
            match convert(m, &state).expect("converts") {
                Converted::Update(u) => {
                    state.apply(u).expect("applies in order");
                }
                Converted::InSync | Converted::Ignored(_) => {}
            }
        }
        let fresh = common::eval::reference_state(&pair[1]);
        assert!(state.ipsets() == fresh.ipsets());
        assert!(state.policies() == fresh.policies());
        assert!(state.profiles() == fresh.profiles());
        assert!(state.workloads() == fresh.workloads());
    }
}
