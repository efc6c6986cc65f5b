//! Invalid manifests are rejected with the file, the object and the field;
//! unknown kinds are skipped with a warning.
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use capo_resources::{Error, Resources};
use common::load_err;

/// Asserts an `Invalid` error about `object` (Display form) at `field`.
fn assert_invalid(err: Error, object: &str, field: &str) {
    match &err {
        Error::Invalid {
            file,
            object: o,
            field: f,
            ..
        } => {
            assert_eq!(file, Path::new("bad.yaml"));
            assert_eq!(o.to_string(), object);
            assert_eq!(f, field, "{err}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("bad.yaml: "), "{text}");
    assert!(text.contains(field), "{text}");
}

#[test]
fn k8s_port_name_invalid() {
    let err = load_err(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress:
    - ports:
        - port: 80
        - port: Not_A_Name!
",
    );
    assert_invalid(err, "NetworkPolicy x/np", "spec.ingress[0].ports[1].port");
}

#[test]
fn k8s_end_port_needs_numeric_port() {
    let err = load_err(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {}
  egress:
    - ports: [{port: http, endPort: 90}]
",
    );
    // No namespace given: kubectl's default.
    assert_invalid(
        err,
        "NetworkPolicy default/np",
        "spec.egress[0].ports[0].endPort",
    );
}

#[test]
fn k8s_ip_block_except_outside_cidr() {
    let err = load_err(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from:
        - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}
",
    );
    assert_invalid(
        err,
        "NetworkPolicy x/np",
        "spec.ingress[0].from[0].ipBlock.except[0]",
    );
}

#[test]
fn k8s_bad_match_expression() {
    let err = load_err(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector:
    matchExpressions: [{key: a, operator: Equals, values: [b]}]
",
    );
    assert_invalid(
        err,
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].operator",
    );
}

#[test]
fn calico_selector_invalid() {
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  selector: all()
  ingress:
    - action: Allow
      source: {selector: \"role = 'x'\"}
",
    );
    assert_invalid(err, "NetworkPolicy x/np", "spec.ingress[0].source.selector");
}

#[test]
fn calico_ports_need_protocol() {
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: gnp}
spec:
  egress:
    - action: Allow
      destination: {ports: [443]}
",
    );
    assert_invalid(
        err,
        "GlobalNetworkPolicy gnp",
        "spec.egress[0].destination.ports",
    );
}

#[test]
fn calico_bad_action_and_tier_action() {
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: gnp}
spec:
  ingress: [{action: Accept}]
",
    );
    assert_invalid(err, "GlobalNetworkPolicy gnp", "spec.ingress[0].action");
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: t}
spec: {defaultAction: Allow}
",
    );
    assert_invalid(err, "Tier t", "spec.defaultAction");
}

#[test]
fn pod_bad_ip_and_label() {
    let err = load_err(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x}
spec: {nodeName: n}
status: {podIP: 10.0.0.300}
",
    );
    assert_invalid(err, "Pod x/p", "status.podIP");
    let err = load_err(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, labels: {enabled: true}}
",
    );
    assert_invalid(err, "Pod x/p", "metadata.labels.enabled");
}

#[test]
fn missing_name() {
    let err = load_err(
        "apiVersion: v1
kind: Namespace
metadata: {labels: {a: b}}
",
    );
    assert_invalid(err, "Namespace ?", "metadata.name");
}

#[test]
fn duplicate_object() {
    let yaml = "apiVersion: v1
kind: Namespace
metadata: {name: x}
";
    let mut r = Resources::new();
    r.add_text(Path::new("one.yaml"), yaml).expect("first");
    match r.add_text(Path::new("two.yaml"), yaml) {
        Err(Error::Duplicate {
            file,
            first,
            object,
        }) => {
            assert_eq!(file, Path::new("two.yaml"));
            assert_eq!(first, Path::new("one.yaml"));
            assert_eq!(object.to_string(), "Namespace x");
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_the_document() {
    let err =
        load_err("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
    match err {
        Error::Syntax { file, document, .. } => {
            assert_eq!(file, Path::new("bad.yaml"));
            assert_eq!(document, 1);
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
}

#[test]
fn unknown_kinds_are_warnings() {
    let r = common::load(
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
",
    );
    assert_eq!(r.warnings().len(), 1);
    let w = r.warnings()[0].to_string();
    assert!(w.contains("test.yaml") && w.contains("Deployment"), "{w}");
}

#[test]
fn lists_json_and_directories() {
    let dir = std::env::temp_dir().join(format!("capo-resources-test-{}", std::process::id()));
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(
        dir.join("list.yaml"),
        "apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: b}}
",
    )
    .expect("write");
    std::fs::write(
        sub.join("ns.json"),
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}"#,
    )
    .expect("write");
    std::fs::write(sub.join("notes.txt"), "not a manifest").expect("write");
    let r = Resources::load(&[&dir]).expect("load");
    let msgs = r.to_felix_messages(None);
    // Namespaces alone make no local endpoints: config and InSync only.
    assert_eq!(msgs.len(), 2);
    let files = capo_resources::manifest_files(&dir).expect("list");
    assert_eq!(files.len(), 2);
    std::fs::remove_dir_all(&dir).expect("cleanup");

    match Resources::load(&[dir.join("missing")]) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("missing")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn namespace_names_must_be_dns_labels() {
    let err = load_err(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: \"x'y\"}
",
    );
    assert_invalid(err, "Pod x'y/p", "metadata.namespace");
}

#[test]
fn felix_configuration_values_felix_would_refuse_are_errors_at_load() {
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeInboundHostPorts:
    - {protocol: TCP, port: 22}
    - {protocol: \"TCP x\", port: 22}
",
    );
    assert_invalid(
        err,
        "FelixConfiguration default",
        "spec.failsafeInboundHostPorts[1]",
    );
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeOutboundHostPorts:
    - {protocol: UDP, net: not-a-net, port: 53}
",
    );
    assert_invalid(
        err,
        "FelixConfiguration default",
        "spec.failsafeOutboundHostPorts[0]",
    );
}

/// Misspelled fields are errors naming the field (decoded strictly, as `kubectl
/// apply --validate=strict` and calicoctl do): dropped silently, each of these would
/// leave a rule or selector matching everything.
#[test]
fn unknown_fields_are_errors_not_allow_all() {
    let cases = [
        (
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p}
spec:
  selector: all()
  ingress:
    - action: Allow
      source: {notNet: [10.0.0.0/8]}
",
            "GlobalNetworkPolicy p",
            "spec.ingress[0].source.notNet",
        ),
        (
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p}
spec:
  selector: all()
  ingress:
    - action: Allow
      sourc: {nets: [10.0.0.0/8]}
",
            "GlobalNetworkPolicy p",
            "spec.ingress[0].sourc",
        ),
        (
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector: {}
  ingress:
    - frm:
        - podSelector: {matchLabels: {app: a}}
",
            "NetworkPolicy x/np",
            "spec.ingress[0].frm",
        ),
        (
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec:
  podSelector:
    matchLabel: {app: a}
",
            "NetworkPolicy x/np",
            "spec.podSelector.matchLabel",
        ),
    ];
    for (yaml, object, field) in cases {
        let err = load_err(yaml);
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert_invalid(err, object, field);
    }
}

/// Calico's validator: fields of GlobalNetworkPolicy only are refused on a
/// namespaced NetworkPolicy; domain-based network sets are refused (capo would match
/// nothing, silently).
#[test]
fn global_only_fields_and_domain_sets_are_refused() {
    for field in [
        "applyOnForward",
        "preDNAT",
        "doNotTrack",
        "namespaceSelector",
    ] {
        let value = if field == "namespaceSelector" {
            "all()"
        } else {
            "true"
        };
        let err = load_err(&format!(
            "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  selector: all()
  {field}: {value}
"
        ));
        assert!(
            err.to_string()
                .contains("only valid in a GlobalNetworkPolicy"),
            "{err}"
        );
        assert_invalid(err, "NetworkPolicy x/p", &format!("spec.{field}"));
    }
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: s}
spec:
  allowedEgressDomains: [example.com]
",
    );
    assert!(err.to_string().contains("not supported"), "{err}");
    assert_invalid(err, "GlobalNetworkSet s", "spec.allowedEgressDomains");
}

/// Calico's validator on the untracked and pre-DNAT flags.
#[test]
fn pre_dnat_and_do_not_track_combinations_are_refused() {
    let gnp = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: p}}
spec:
  selector: all()
{spec}"
        )
    };
    for (spec, field, words) in [
        (
            "  doNotTrack: true\n",
            "spec.applyOnForward",
            "must be true when doNotTrack is",
        ),
        (
            "  preDNAT: true\n  applyOnForward: true\n  doNotTrack: true\n",
            "spec.doNotTrack",
            "cannot be true when preDNAT is",
        ),
        (
            "  preDNAT: true\n  applyOnForward: true\n  egress:\n    - action: Allow\n",
            "spec.egress",
            "ingress only",
        ),
        (
            "  preDNAT: true\n  applyOnForward: true\n  types: [Ingress, Egress]\n",
            "spec.types",
            "ingress only",
        ),
    ] {
        let err = load_err(&gnp(spec));
        assert!(err.to_string().contains(words), "{spec}: {err}");
        assert_invalid(err, "GlobalNetworkPolicy p", field);
    }
    // The valid forms still load.
    for spec in [
        "  doNotTrack: true\n  applyOnForward: true\n",
        "  preDNAT: true\n  applyOnForward: true\n  ingress:\n    - action: Deny\n",
    ] {
        capo_resources::Resources::new()
            .add_text(std::path::Path::new("ok.yaml"), &gnp(spec))
            .unwrap();
    }
}

#[test]
fn known_kinds_under_unknown_versions_are_errors() {
    let err = load_err(
        "apiVersion: projectcalico.org/v4
kind: GlobalNetworkPolicy
metadata: {name: p}
spec: {selector: all()}
",
    );
    assert_invalid(err, "GlobalNetworkPolicy p", "apiVersion");
    let err = load_err(
        "apiVersion: networking.k8s.io/v1beta1
kind: NetworkPolicy
metadata: {name: np, namespace: x}
spec: {podSelector: {}}
",
    );
    assert!(
        err.to_string()
            .contains("networking.k8s.io/v1, not version \"v1beta1\""),
        "{err}"
    );
    let err = load_err("apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n");
    assert!(err.to_string().contains("served as v1"), "{err}");
}

#[test]
fn calico_crd_storage_form_is_refused_with_the_form_to_use() {
    let err = load_err(
        "apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {selector: all()}
",
    );
    let text = err.to_string();
    assert!(text.contains("crd.projectcalico.org/v1"), "{text}");
    assert!(text.contains("projectcalico.org/v3"), "{text}");
    // A CRD-only kind capo does not use is skipped with a warning, as any unknown kind.
    let r = common::load(
        "apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b}
",
    );
    assert_eq!(r.warnings().len(), 1);
}

#[test]
fn label_keys_and_values_are_checked() {
    let err = load_err(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, labels: {\"bad key!\": a}}
spec: {nodeName: n}
",
    );
    assert_invalid(err, "Pod x/p", "metadata.labels.bad key!");
    let err = load_err(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: s, labels: {Example.com/role: a}}
spec: {nets: [10.0.0.0/8]}
",
    );
    assert!(err.to_string().contains("prefix before '/'"), "{err}");
    let err = load_err(
        "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {role: \"has space\"}}
",
    );
    assert_invalid(err, "Namespace x", "metadata.labels.role");
}

#[test]
fn container_port_names_are_checked() {
    let err = load_err(
        "apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x}
spec:
  nodeName: n
  containers: [{name: c, ports: [{containerPort: 80, name: Web_Port}]}]
",
    );
    assert_invalid(err, "Pod x/p", "spec.containers[0].ports[0].name");
}

#[test]
fn http_matches_are_warned_about_per_rule() {
    let r = common::load(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web}
spec:
  selector: all()
  ingress:
    - action: Allow
    - action: Allow
      http: {methods: [GET]}
  egress:
    - action: Allow
      http: {paths: [{prefix: /api}]}
",
    );
    let w: Vec<String> = r.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("GlobalNetworkPolicy web: spec.ingress[1].http"),
        "{w:?}"
    );
    assert!(w[1].contains("spec.egress[0].http"), "{w:?}");
    assert!(w[0].contains("enforced on its other fields only"), "{w:?}");
}
