//! Decodes the recorded Felix streams and checks them against the scenario.
//!
//! The fixtures live with the host agent's tests (they are its input too):
//! `seed.master.frames` is written with the v3.32+ schema, `seed.v3.31.frames`
//! with the v3.31 one, and `seed.scenario.json` says in readable form what both
//! contain. Each frame is an 8-byte little-endian length and a serialized
//! `felix.ToDataplane`.

// Test helpers outside #[test] functions count as non-test code to clippy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../host-agent/tests/fixtures/felix")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} unreadable: {e}", path.display()))
}

fn scenario() -> Value {
    serde_json::from_slice(&fixture("seed.scenario.json")).expect("scenario is JSON")
}

/// Splits a stream into frame bodies; the stream must end on a frame boundary.
fn split_frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 8, "frame {}: truncated header", frames.len());
        let (header, rest) = bytes.split_at(8);
        let len = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        let len = usize::try_from(len).expect("length fits usize");
        assert!(rest.len() >= len, "frame {}: truncated body", frames.len());
        let (body, rest) = rest.split_at(len);
        frames.push(body);
        bytes = rest;
    }
    frames
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

/// A missing key reads as an empty list, as proto3 would.
fn strs(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().map(s).collect(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

fn arr(v: &Value) -> &[Value] {
    match v {
        Value::Null => &[],
        Value::Array(a) => a,
        other => panic!("expected a list, got {other}"),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Strips the prefix length: v3.31's field-14/35 host metadata carries bare
/// addresses while the scenario lists CIDRs.
fn bare(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_owned()
}

/// Checks shared by both schemas; the message types differ, so a macro
/// instantiates them once per generated module.
macro_rules! common_checks {
    ($schema:path) => {
        use super::*;
        use pb::to_dataplane::Payload;
        use $schema as pb;

        /// Decodes every frame and checks the envelope: frame i carries
        /// sequence number i, and re-encoding yields the same length, so no
        /// field on the wire went unrecognised by this schema.
        pub(super) fn decode_stream(name: &str) -> Vec<Payload> {
            let bytes = fixture(name);
            let frames = split_frames(&bytes);
            assert!(!frames.is_empty(), "{name}: no frames");
            frames
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let msg = pb::ToDataplane::decode(*body)
                        .unwrap_or_else(|e| panic!("{name} frame {i}: {e}"));
                    assert_eq!(msg.sequence_number, i as u64, "{name} frame {i}");
                    assert_eq!(
                        msg.encoded_len(),
                        body.len(),
                        "{name} frame {i}: fields unknown to the schema"
                    );
                    msg.payload
                        .unwrap_or_else(|| panic!("{name} frame {i}: no payload"))
                })
                .collect()
        }

        pub(super) fn check_config(j: &Value, got: &pb::ConfigUpdate, calico_version: &str) {
            let want = j.as_object().expect("config is an object");
            for (k, v) in want {
                assert_eq!(got.config.get(k), Some(&s(v)), "config[{k}]");
            }
            assert_eq!(
                got.config.get("CalicoVersion").map(String::as_str),
                Some(calico_version)
            );
            // Every value Felix sends must be attributed to some source.
            let raw = &got.source_to_raw_config;
            assert!(raw.values().any(|r| r.source == "environment variable"));
            for (k, v) in &got.config {
                assert!(
                    raw.values().any(|r| r.config.get(k) == Some(v)),
                    "config[{k}] has no raw source"
                );
            }
        }

        pub(super) fn check_ipset(j: &Value, got: &pb::IpSetUpdate) {
            assert_eq!(got.id, s(&j["id"]));
            assert_eq!(
                got.r#type().as_str_name(),
                s(&j["type"]),
                "ipset {} type",
                got.id
            );
            assert_eq!(sorted(got.members.clone()), sorted(strs(&j["members"])));
        }

        fn port_ranges(v: &Value) -> Vec<pb::PortRange> {
            arr(v)
                .iter()
                .map(|p| pb::PortRange {
                    first: p["first"].as_i64().expect("first") as i32,
                    last: p["last"].as_i64().expect("last") as i32,
                })
                .collect()
        }

        /// Builds the Rule the scenario describes. Keys the scenario may use
        /// are listed; any other key fails the test rather than being skipped.
        pub(super) fn expected_rule(j: &Value) -> pb::Rule {
            let mut r = pb::Rule::default();
            for (k, v) in j.as_object().expect("rule is an object") {
                match k.as_str() {
                    "action" => r.action = s(v),
                    "protocol" => {
                        use pb::protocol::NumberOrName;
                        let p = if let Some(n) = v.get("number") {
                            NumberOrName::Number(n.as_i64().expect("number") as i32)
                        } else {
                            NumberOrName::Name(s(&v["name"]))
                        };
                        r.protocol = Some(pb::Protocol {
                            number_or_name: Some(p),
                        });
                    }
                    "src_net" => r.src_net = strs(v),
                    "dst_net" => r.dst_net = strs(v),
                    "src_ports" => r.src_ports = port_ranges(v),
                    "dst_ports" => r.dst_ports = port_ranges(v),
                    "src_ip_set_ids" => r.src_ip_set_ids = strs(v),
                    "dst_ip_set_ids" => r.dst_ip_set_ids = strs(v),
                    "original_src_selector" => r.original_src_selector = s(v),
                    "original_dst_selector" => r.original_dst_selector = s(v),
                    other => panic!("scenario rule key {other} not handled by this test"),
                }
            }
            r
        }

        /// Rule IDs are hashes Felix computes; check their shape, then blank
        /// them so the rest compares exactly.
        pub(super) fn strip_rule_ids(rules: &mut [pb::Rule]) {
            for r in rules {
                assert_eq!(r.rule_id.len(), 16, "rule_id {:?}", r.rule_id);
                r.rule_id.clear();
            }
        }

        pub(super) fn rules(v: &Value) -> Vec<pb::Rule> {
            arr(v).iter().map(expected_rule).collect()
        }

        pub(super) fn check_profile(j: &Value, got: &pb::ActiveProfileUpdate) {
            let name = s(&j["name"]);
            assert_eq!(
                got.id.as_ref().map(|id| id.name.as_str()),
                Some(name.as_str())
            );
            let mut profile = got.profile.clone().expect("profile body");
            strip_rule_ids(&mut profile.inbound_rules);
            strip_rule_ids(&mut profile.outbound_rules);
            let want = pb::Profile {
                inbound_rules: rules(&j["inbound_rules"]),
                outbound_rules: rules(&j["outbound_rules"]),
            };
            assert_eq!(profile, want, "profile {name}");
        }

        /// `tiers` is passed in because TierInfo differs between schemas.
        pub(super) fn check_wep(
            j: &Value,
            got: &pb::WorkloadEndpointUpdate,
            tiers: Vec<pb::TierInfo>,
        ) {
            let id = &j["id"];
            let want_id = pb::WorkloadEndpointId {
                orchestrator_id: s(&id["orchestrator_id"]),
                workload_id: s(&id["workload_id"]),
                endpoint_id: s(&id["endpoint_id"]),
            };
            assert_eq!(got.id.as_ref(), Some(&want_id));
            let want = pb::WorkloadEndpoint {
                state: "active".to_owned(),
                name: s(&j["name"]),
                profile_ids: strs(&j["profile_ids"]),
                ipv4_nets: strs(&j["ipv4_nets"]),
                ipv6_nets: strs(&j["ipv6_nets"]),
                tiers,
                ..Default::default()
            };
            assert_eq!(got.endpoint.as_ref(), Some(&want));
        }

        pub(super) fn labels(v: &Value) -> std::collections::HashMap<String, String> {
            v.as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), s(v))).collect())
                .unwrap_or_default()
        }
    };
}

mod v3_32 {
    common_checks!(capo_proto::felix::v3_32);

    fn policy_id(j: &Value) -> pb::PolicyId {
        pb::PolicyId {
            name: s(&j["name"]),
            namespace: s(&j["namespace"]),
            kind: s(&j["kind"]),
        }
    }

    #[test]
    fn master_stream_matches_scenario() {
        let sc = scenario();
        let payloads = decode_stream("seed.master.frames");
        let mut it = payloads.iter();
        let mut next = |what: &str| {
            it.next()
                .unwrap_or_else(|| panic!("stream ended; expected {what}"))
        };

        let Payload::ConfigUpdate(cfg) = next("ConfigUpdate") else {
            panic!("frame 0 is not ConfigUpdate");
        };
        check_config(&sc["config"], cfg, "v3.33.0");

        for j in arr(&sc["ipsets"]) {
            let Payload::IpsetUpdate(got) = next("IPSetUpdate") else {
                panic!("expected IPSetUpdate for {}", j["id"]);
            };
            check_ipset(j, got);
        }

        for j in arr(&sc["policies"]) {
            let Payload::ActivePolicyUpdate(got) = next("ActivePolicyUpdate") else {
                panic!("expected ActivePolicyUpdate for {}", j["name"]);
            };
            assert_eq!(got.id.as_ref(), Some(&policy_id(j)));
            let mut policy = got.policy.clone().expect("policy body");
            strip_rule_ids(&mut policy.inbound_rules);
            strip_rule_ids(&mut policy.outbound_rules);
            let want = pb::Policy {
                inbound_rules: rules(&j["inbound_rules"]),
                outbound_rules: rules(&j["outbound_rules"]),
                namespace: s(&j["namespace"]),
                original_selector: s(&j["original_selector"]),
                tier: s(&j["tier"]),
                ..Default::default()
            };
            assert_eq!(policy, want, "policy {}", j["name"]);
        }

        for j in arr(&sc["profiles"]) {
            let Payload::ActiveProfileUpdate(got) = next("ActiveProfileUpdate") else {
                panic!("expected ActiveProfileUpdate for {}", j["name"]);
            };
            check_profile(j, got);
        }

        for j in arr(&sc["workload_endpoints"]) {
            let Payload::WorkloadEndpointUpdate(got) = next("WorkloadEndpointUpdate") else {
                panic!("expected WorkloadEndpointUpdate for {}", j["name"]);
            };
            let tiers = arr(&j["tiers"])
                .iter()
                .map(|t| pb::TierInfo {
                    name: s(&t["name"]),
                    ingress_policies: arr(&t["ingress_policies"]).iter().map(policy_id).collect(),
                    egress_policies: arr(&t["egress_policies"]).iter().map(policy_id).collect(),
                    default_action: s(&t["default_action"]),
                })
                .collect();
            check_wep(j, got, tiers);
        }

        for j in arr(&sc["hosts"]) {
            let Payload::HostMetadataUpdate(got) = next("HostMetadataUpdate") else {
                panic!("expected HostMetadataUpdate for {}", j["hostname"]);
            };
            let want = pb::HostMetadataUpdate {
                hostname: s(&j["hostname"]),
                ipv4_addr: s(&j["ipv4_addr"]),
                ipv6_addr: s(&j["ipv6_addr"]),
                asnumber: s(&j["asnumber"]),
                labels: labels(&j["labels"]),
            };
            assert_eq!(got, &want);
        }

        assert!(matches!(next("InSync"), Payload::InSync(_)));
        assert!(it.next().is_none(), "frames after InSync");
    }
}

mod v3_31 {
    common_checks!(capo_proto::felix::v3_31);

    /// Calico's v1 policy name, which v3.31 uses in PolicyID and TierInfo.
    fn v1_policy_name(j: &Value) -> String {
        match s(&j["kind"]).as_str() {
            "KubernetesNetworkPolicy" => {
                format!("{}/knp.default.{}", s(&j["namespace"]), s(&j["name"]))
            }
            other => panic!("no v1 name rule for kind {other} in this test"),
        }
    }

    #[test]
    fn v3_31_stream_matches_scenario() {
        let sc = scenario();
        let payloads = decode_stream("seed.v3.31.frames");
        let mut it = payloads.iter();
        let mut next = |what: &str| {
            it.next()
                .unwrap_or_else(|| panic!("stream ended; expected {what}"))
        };

        let Payload::ConfigUpdate(cfg) = next("ConfigUpdate") else {
            panic!("frame 0 is not ConfigUpdate");
        };
        check_config(&sc["config"], cfg, "v3.31.7");

        for j in arr(&sc["ipsets"]) {
            let Payload::IpsetUpdate(got) = next("IPSetUpdate") else {
                panic!("expected IPSetUpdate for {}", j["id"]);
            };
            check_ipset(j, got);
        }

        for j in arr(&sc["policies"]) {
            let Payload::ActivePolicyUpdate(got) = next("ActivePolicyUpdate") else {
                panic!("expected ActivePolicyUpdate for {}", j["name"]);
            };
            let want_id = pb::PolicyId {
                tier: s(&j["tier"]),
                name: v1_policy_name(j),
            };
            assert_eq!(got.id.as_ref(), Some(&want_id));
            let mut policy = got.policy.clone().expect("policy body");
            strip_rule_ids(&mut policy.inbound_rules);
            strip_rule_ids(&mut policy.outbound_rules);
            let want = pb::Policy {
                inbound_rules: rules(&j["inbound_rules"]),
                outbound_rules: rules(&j["outbound_rules"]),
                namespace: s(&j["namespace"]),
                original_selector: s(&j["original_selector"]),
                ..Default::default()
            };
            assert_eq!(policy, want, "policy {}", j["name"]);
        }

        for j in arr(&sc["profiles"]) {
            let Payload::ActiveProfileUpdate(got) = next("ActiveProfileUpdate") else {
                panic!("expected ActiveProfileUpdate for {}", j["name"]);
            };
            check_profile(j, got);
        }

        for j in arr(&sc["workload_endpoints"]) {
            let Payload::WorkloadEndpointUpdate(got) = next("WorkloadEndpointUpdate") else {
                panic!("expected WorkloadEndpointUpdate for {}", j["name"]);
            };
            let tiers = arr(&j["tiers"])
                .iter()
                .map(|t| pb::TierInfo {
                    name: s(&t["name"]),
                    ingress_policies: arr(&t["ingress_policies"])
                        .iter()
                        .map(v1_policy_name)
                        .collect(),
                    egress_policies: arr(&t["egress_policies"])
                        .iter()
                        .map(v1_policy_name)
                        .collect(),
                    default_action: s(&t["default_action"]),
                })
                .collect();
            check_wep(j, got, tiers);
        }

        // v3.31 Felix sends each node three times: v4 (bare), v6 (bare), v4v6.
        for j in arr(&sc["hosts"]) {
            let hostname = s(&j["hostname"]);
            let Payload::HostMetadataUpdate(v4) = next("HostMetadataUpdate") else {
                panic!("expected HostMetadataUpdate for {hostname}");
            };
            let want_v4 = pb::HostMetadataUpdate {
                hostname: hostname.clone(),
                ipv4_addr: bare(&s(&j["ipv4_addr"])),
            };
            assert_eq!(v4, &want_v4);

            let Payload::HostMetadataV6Update(v6) = next("HostMetadataV6Update") else {
                panic!("expected HostMetadataV6Update for {hostname}");
            };
            let want_v6 = pb::HostMetadataV6Update {
                hostname: hostname.clone(),
                ipv6_addr: bare(&s(&j["ipv6_addr"])),
            };
            assert_eq!(v6, &want_v6);

            let Payload::HostMetadataV4v6Update(both) = next("HostMetadataV4V6Update") else {
                panic!("expected HostMetadataV4V6Update for {hostname}");
            };
            let want_both = pb::HostMetadataV4v6Update {
                hostname,
                ipv4_addr: s(&j["ipv4_addr"]),
                ipv6_addr: s(&j["ipv6_addr"]),
                asnumber: s(&j["asnumber"]),
                labels: labels(&j["labels"]),
            };
            assert_eq!(both, &want_both);
        }

        assert!(matches!(next("InSync"), Payload::InSync(_)));
        assert!(it.next().is_none(), "frames after InSync");
    }
}

/// The schemas are not interchangeable: TierInfo's policy lists are strings in
/// v3.31 and PolicyID messages in v3.32, on the same field numbers. This is
/// why the agent must pick the schema by Felix version.
#[test]
fn v3_31_endpoint_frame_is_not_readable_as_v3_32() {
    use capo_proto::felix::{v3_31, v3_32};

    let bytes = fixture("seed.v3.31.frames");
    let frames = split_frames(&bytes);
    let wep_frame = frames
        .iter()
        .find(|body| {
            matches!(
                v3_31::ToDataplane::decode(**body).map(|m| m.payload),
                Ok(Some(v3_31::to_dataplane::Payload::WorkloadEndpointUpdate(
                    _
                )))
            )
        })
        .expect("the v3.31 stream has a WorkloadEndpointUpdate");
    assert!(
        v3_32::ToDataplane::decode(*wep_frame).is_err(),
        "a v3.31 TierInfo decoded as v3.32 should fail"
    );
}
