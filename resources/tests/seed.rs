//! The seed's manifests (tests/data/seed) must give what Felix sent for the
//! seed on kind-worker2 (the shared fixture `fixtures/felix/seed.scenario.json`,
//! whose values are written out below).
//!
//! Two deliberate differences from that fixture, both because the fixture
//! does not hash/normalise as Felix does (checked against Felix's sources,
//! felix/calc/rule_scanner.go and libcalico-go/lib/selector/parser):
//! - the IP-set id: Felix hashes the *normalised* selector text; the fixture's
//!   `s:ebLtp9XA…` is the hash of the raw text;
//! - `Policy.original_selector`: Felix sends `selector.Normalise` of the
//!   namespaced selector; the fixture carries the raw pod selector.
//!
//! Members, rule, tiers, profiles, endpoint and host metadata are equal.
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use capo_resources::felix::{self as pb, protocol::NumberOrName, to_dataplane::Payload};
use capo_resources::{IpSetKind, Resources, Selector};
use common::eval::{allowed, reference_allowed, reference_state, Pkt};
use common::{kinds, strs, tiers};

fn seed() -> Resources {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seed");
    Resources::load(&[dir]).expect("seed manifests load")
}

/// The selector Felix builds for the policy's `from` peer.
const SENDER_SELECTOR: &str =
    "(projectcalico.org/namespace == 'default') && (projectcalico.org/orchestrator == 'k8s' && role == 'sender')";

#[test]
fn seed_message_order_matches_fixture() {
    let msgs = seed().to_felix_messages(Some("kind-worker2"));
    assert_eq!(
        kinds(&msgs),
        vec![
            "ConfigUpdate",
            "IPSetUpdate",
            "ActivePolicyUpdate",
            "ActiveProfileUpdate",
            "ActiveProfileUpdate",
            "WorkloadEndpointUpdate",
            "HostMetadataUpdate",
            "InSync"
        ]
    );
    let seqs: Vec<u64> = msgs.iter().map(|m| m.sequence_number).collect();
    assert_eq!(seqs, (0..8).collect::<Vec<u64>>());
}

#[test]
fn seed_config() {
    let s = common::snap(&seed(), Some("kind-worker2"));
    let c = s.config();
    assert_eq!(c["FelixHostname"], "kind-worker2");
    assert_eq!(c["DefaultEndpointToHostAction"], "ACCEPT");
    assert_eq!(
        c["FailsafeInboundHostPorts"],
        "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
    );
    assert_eq!(
        c["FailsafeOutboundHostPorts"],
        "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
    );
    assert_eq!(c["DatastoreType"], "kubernetes");
    assert_eq!(c["CalicoVersion"], "v3.33.0");
}

#[test]
fn seed_ip_set_policy_and_rule() {
    let s = common::snap(&seed(), Some("kind-worker2"));
    assert_eq!(s.ip_sets().len(), 1);
    let (id, set) = s.ip_sets().iter().next().expect("one set");
    assert_eq!(set.kind, IpSetKind::Net);
    assert_eq!(
        set.members.iter().cloned().collect::<Vec<_>>(),
        strs(&["11.0.0.196/32", "fd20::58fd:b191:5c13:9cc3/128"])
    );
    // Felix's id: the hash of the normalised selector.
    let normalised = Selector::parse(SENDER_SELECTOR).expect("parses");
    assert_eq!(
        normalised.as_str(),
        "(projectcalico.org/namespace == \"default\" && (projectcalico.org/orchestrator == \"k8s\" && role == \"sender\"))"
    );
    assert_eq!(id, &normalised.unique_id());

    let p = common::knp(&s, "default", "test-network-policy");
    assert_eq!(p.tier, "default");
    assert_eq!(p.namespace, "default");
    assert!(p.outbound_rules.is_empty());
    assert_eq!(p.inbound_rules.len(), 1);
    let r = &p.inbound_rules[0];
    let want = pb::Rule {
        action: "allow".into(),
        protocol: Some(pb::Protocol {
            number_or_name: Some(NumberOrName::Name("tcp".into())),
        }),
        dst_ports: vec![pb::PortRange {
            first: 5978,
            last: 5978,
        }],
        src_ip_set_ids: vec![id.clone()],
        original_src_selector: "projectcalico.org/orchestrator == 'k8s' && role == 'sender'".into(),
        rule_id: r.rule_id.clone(),
        ..pb::Rule::default()
    };
    assert_eq!(r, &want);
    assert_eq!(r.rule_id.len(), 16);
    assert_eq!(
        p.original_selector,
        "((projectcalico.org/orchestrator == \"k8s\" && role == \"receiver\") && projectcalico.org/namespace == \"default\")"
    );
}

#[test]
fn seed_profiles_endpoint_and_host() {
    let s = common::snap(&seed(), Some("kind-worker2"));
    let names: Vec<&String> = s.profiles().keys().collect();
    assert_eq!(names, vec!["kns.default", "ksa.default.default"]);
    let kns = &s.profiles()["kns.default"];
    assert_eq!(kns.inbound_rules.len(), 1);
    assert_eq!(kns.inbound_rules[0].action, "allow");
    assert_eq!(kns.outbound_rules.len(), 1);
    assert_eq!(kns.outbound_rules[0].action, "allow");
    let ksa = &s.profiles()["ksa.default.default"];
    assert!(ksa.inbound_rules.is_empty() && ksa.outbound_rules.is_empty());

    // ts1 runs on kind-worker3: not local.
    assert_eq!(s.workload_endpoints().len(), 1);
    let ep = common::wep(&s, "default", "ts2");
    assert_eq!(ep.state, "active");
    assert_eq!(ep.name, "tun3");
    assert_eq!(ep.ipv4_nets, strs(&["11.0.0.67/32"]));
    assert_eq!(ep.ipv6_nets, strs(&["fd20::1cc0:b1ac:ad47:e7c2/128"]));
    assert_eq!(
        ep.profile_ids,
        strs(&["kns.default", "ksa.default.default"])
    );
    assert_eq!(
        tiers(&ep.tiers),
        vec![(
            "default".to_string(),
            strs(&["test-network-policy"]),
            vec![],
            "Deny".to_string()
        )]
    );
    assert_eq!(
        ep.tiers[0].ingress_policies[0].kind,
        "KubernetesNetworkPolicy"
    );
    assert_eq!(ep.tiers[0].ingress_policies[0].namespace, "default");

    let h = &s.hosts()["kind-worker2"];
    assert_eq!(h.ipv4_addr, "172.18.0.2/16");
    assert_eq!(h.ipv6_addr, "fc00:f853:ccd:e793::2/64");
    assert_eq!(h.asnumber, "");
    assert_eq!(h.labels["kubernetes.io/hostname"], "kind-worker2");
    assert_eq!(h.labels["kubernetes.io/os"], "linux");
    assert_eq!(h.labels["kubernetes.io/arch"], "amd64");
}

#[test]
fn seed_default_interface_name_is_calicos() {
    // Without the annotation the name is Calico's cali+SHA-1 name.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seed");
    let mut r = Resources::new();
    for f in capo_resources::manifest_files(std::path::Path::new(dir)).expect("list") {
        let text = std::fs::read_to_string(&f).expect("read");
        let text = text.replace("    capo.dev/interface: tun3\n", "");
        r.add_text(&f, &text).expect("load");
    }
    let s = common::snap(&r, Some("kind-worker2"));
    let name = &common::wep(&s, "default", "ts2").name;
    assert!(name.starts_with("cali") && name.len() == 15, "{name}");
}

#[test]
fn seed_probes_verdicts() {
    // The fixture's workload probes (host-traffic probes need the
    // allow-from-host rule, which is the dataplane's job, not Felix state).
    let s = common::snap(&seed(), Some("kind-worker2"));
    let probe = |src: &str, dst: &str, proto: u8, sport: u16, dport: u16| {
        allowed(
            &s,
            &Pkt {
                src: src.parse().expect("ip"),
                dst: dst.parse().expect("ip"),
                proto,
                sport,
                dport,
            },
        )
    };
    assert!(probe("11.0.0.196", "11.0.0.67", 6, 40000, 5978));
    assert!(!probe("11.0.0.196", "11.0.0.67", 6, 40000, 5979));
    assert!(!probe("11.0.0.196", "11.0.0.67", 17, 40000, 5978));
    assert!(!probe("11.0.0.5", "11.0.0.67", 6, 40000, 5978));
    assert!(!probe("11.0.0.196", "11.0.0.67", 6, 5978, 8080));
    assert!(probe(
        "fd20::58fd:b191:5c13:9cc3",
        "fd20::1cc0:b1ac:ad47:e7c2",
        6,
        40000,
        5978
    ));
    assert!(!probe(
        "fd20::58fd:b191:5c13:9cc3",
        "fd20::1cc0:b1ac:ad47:e7c2",
        6,
        40000,
        5979
    ));
    assert!(probe("11.0.0.67", "8.8.8.8", 17, 40000, 53));
    assert!(probe("11.0.0.67", "11.0.0.196", 6, 40000, 5978));
}

#[test]
fn seed_fixture_probes_through_the_reference_evaluator() {
    // Every probe of the fixture, host-traffic ones included (the node's
    // addresses come from the HostMetadataUpdate for FelixHostname).
    let s = common::snap(&seed(), Some("kind-worker2"));
    let state = reference_state(&s);
    let probes: [(&str, &str, u8, u16, u16, bool); 14] = [
        ("11.0.0.196", "11.0.0.67", 6, 40000, 5978, true),
        ("11.0.0.196", "11.0.0.67", 6, 40000, 5979, false),
        ("11.0.0.196", "11.0.0.67", 17, 40000, 5978, false),
        ("11.0.0.5", "11.0.0.67", 6, 40000, 5978, false),
        ("11.0.0.196", "11.0.0.67", 6, 5978, 8080, false),
        (
            "fd20::58fd:b191:5c13:9cc3",
            "fd20::1cc0:b1ac:ad47:e7c2",
            6,
            40000,
            5978,
            true,
        ),
        (
            "fd20::58fd:b191:5c13:9cc3",
            "fd20::1cc0:b1ac:ad47:e7c2",
            6,
            40000,
            5979,
            false,
        ),
        ("172.18.0.2", "11.0.0.67", 6, 40000, 8080, true),
        (
            "fc00:f853:ccd:e793::2",
            "fd20::1cc0:b1ac:ad47:e7c2",
            6,
            40000,
            8080,
            true,
        ),
        ("172.18.0.3", "11.0.0.67", 6, 40000, 8080, false),
        ("11.0.0.67", "8.8.8.8", 17, 40000, 53, true),
        ("11.0.0.67", "11.0.0.196", 6, 40000, 5978, true),
        ("11.0.0.67", "172.18.0.2", 6, 40000, 10250, true),
        ("11.0.0.196", "11.0.0.67", 6, 40000, 5978, true),
    ];
    for (src, dst, proto, sport, dport, want) in probes {
        let p = Pkt {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            proto,
            sport,
            dport,
        };
        assert_eq!(
            reference_allowed(&state, &p),
            want,
            "{src}:{sport} -> {dst}:{dport} proto {proto}"
        );
    }
}

#[test]
fn seed_without_node_makes_every_pod_local() {
    let s = common::snap(&seed(), None);
    assert_eq!(s.workload_endpoints().len(), 2);
    assert!(!s.config().contains_key("FelixHostname"));
    // ts1 is selected by no policy: no tiers, only its profiles.
    assert!(common::wep(&s, "default", "ts1").tiers.is_empty());
    let msgs = seed().to_felix_messages(None);
    assert!(matches!(
        msgs.last().and_then(|m| m.payload.as_ref()),
        Some(Payload::InSync(_))
    ));
}
