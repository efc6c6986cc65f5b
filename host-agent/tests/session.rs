//! The Felix state machine: start-up order, tolerated repeats, and violations that
//! must end in a resync without touching the state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use capo_felix::frame::{encode_frame, Frame, FrameReader, Schema};
use capo_felix::session::{Event, Phase, Session, SessionError};
use capo_policy::{IpSetId, StateError};
use capo_proto::felix::v3_32 as pb;
use pb::to_dataplane::Payload as P;

fn frames(payloads: Vec<P>) -> Vec<Frame> {
    let bytes: Vec<u8> = payloads
        .into_iter()
        .enumerate()
        .flat_map(|(i, p)| {
            encode_frame(&pb::ToDataplane {
                sequence_number: i as u64,
                payload: Some(p),
            })
        })
        .collect();
    FrameReader::new(bytes.as_slice())
        .map(|f| f.unwrap())
        .collect()
}

fn config(version: &str) -> P {
    P::ConfigUpdate(pb::ConfigUpdate {
        config: [("CalicoVersion".to_string(), version.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    })
}

fn ipset(id: &str, members: &[&str]) -> P {
    P::IpsetUpdate(pb::IpSetUpdate {
        id: id.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        r#type: pb::ip_set_update::IpSetType::Net as i32,
    })
}

fn delta(id: &str, add: &[&str], del: &[&str]) -> P {
    P::IpsetDeltaUpdate(pb::IpSetDeltaUpdate {
        id: id.into(),
        added_members: add.iter().map(|m| m.to_string()).collect(),
        removed_members: del.iter().map(|m| m.to_string()).collect(),
    })
}

fn run(session: &mut Session, frames: &[Frame]) -> Result<Vec<Event>, SessionError> {
    frames.iter().map(|f| session.on_frame(f)).collect()
}

#[test]
fn config_first_then_snapshot_then_in_sync() {
    let fs = frames(vec![
        config("v3.33.0"),
        ipset("s:a", &["10.0.0.1/32"]),
        P::RouteUpdate(pb::RouteUpdate::default()),
        P::InSync(pb::InSync {}),
        delta("s:a", &["10.0.0.2/32"], &[]),
    ]);
    let mut s = Session::new(None);
    assert_eq!(s.phase(), Phase::AwaitingConfig);
    let events = run(&mut s, &fs).unwrap();
    assert_eq!(
        events,
        vec![
            Event::Changed,
            Event::Changed,
            Event::Ignored("route_update"),
            Event::Reconcile,
            Event::Changed
        ]
    );
    assert_eq!(s.phase(), Phase::InSync);
    assert_eq!(s.schema(), Schema::V3_32);
    assert_eq!(
        s.state()
            .ipsets()
            .get(&IpSetId::new("s:a").unwrap())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn calico_version_picks_the_schema_unless_forced() {
    let fs = frames(vec![config("v3.31.7")]);
    let mut s = Session::new(None);
    run(&mut s, &fs).unwrap();
    assert_eq!(s.schema(), Schema::V3_31);
    let mut forced = Session::new(Some(Schema::V3_32));
    run(&mut forced, &fs).unwrap();
    assert_eq!(forced.schema(), Schema::V3_32);
}

#[test]
fn anything_before_config_update_is_refused() {
    let fs = frames(vec![ipset("s:a", &[])]);
    let mut s = Session::new(None);
    let err = s.on_frame(&fs[0]).unwrap_err();
    assert!(
        matches!(err, SessionError::ConfigNotFirst { frame: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("IpsetUpdate"), "{err}");
}

#[test]
fn repeats_and_unknown_removes_are_tolerated() {
    let fs = frames(vec![
        config("v3.33.0"),
        ipset("s:a", &["10.0.0.1/32", "10.0.0.2/32"]),
        // A known id again, without a remove in between: a full replace.
        ipset("s:a", &["10.0.0.3/32"]),
        P::IpsetRemove(pb::IpSetRemove {
            id: "s:never".into(),
        }),
        P::ActivePolicyRemove(pb::ActivePolicyRemove {
            id: Some(pb::PolicyId {
                name: "gone".into(),
                ..Default::default()
            }),
        }),
        config("v3.33.1"),
        P::InSync(pb::InSync {}),
        P::InSync(pb::InSync {}),
    ]);
    let mut s = Session::new(None);
    let events = run(&mut s, &fs).unwrap();
    assert_eq!(events[3], Event::Unchanged);
    assert_eq!(events[4], Event::Unchanged);
    assert_eq!(
        events[7],
        Event::Unchanged,
        "a second InSync changes nothing"
    );
    let set = &s
        .state()
        .ipsets()
        .get(&IpSetId::new("s:a").unwrap())
        .unwrap();
    assert_eq!(
        set.members()
            .map(|m| m.view(set.kind()))
            .collect::<Vec<_>>(),
        vec!["10.0.0.3/32"]
    );
    assert_eq!(
        s.state().config().calico_version.as_deref(),
        Some("v3.33.1")
    );
}

#[test]
fn delta_for_unknown_set_is_a_violation_naming_frame_and_set() {
    let fs = frames(vec![
        config("v3.33.0"),
        ipset("s:a", &["10.0.0.1/32"]),
        P::InSync(pb::InSync {}),
        delta("s:unknown", &["10.0.0.9/32"], &[]),
    ]);
    let mut s = Session::new(None);
    run(&mut s, &fs[..3]).unwrap();
    let err = s.on_frame(&fs[3]).unwrap_err();
    match &err {
        SessionError::Violation { frame, seq, source } => {
            assert_eq!((*frame, *seq), (3, 3));
            assert_eq!(
                *source,
                StateError::UnknownIpSetDelta(IpSetId::new("s:unknown").unwrap())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("s:unknown"));
    assert_eq!(s.state().ipsets().len(), 1, "nothing applied");
}

#[test]
fn endpoint_naming_unknown_policy_is_a_violation() {
    let fs = frames(vec![
        config("v3.33.0"),
        P::WorkloadEndpointUpdate(pb::WorkloadEndpointUpdate {
            id: Some(pb::WorkloadEndpointId {
                orchestrator_id: "k8s".into(),
                workload_id: "ns/pod".into(),
                endpoint_id: "eth0".into(),
            }),
            endpoint: Some(pb::WorkloadEndpoint {
                name: "tun0".into(),
                tiers: vec![pb::TierInfo {
                    name: "default".into(),
                    ingress_policies: vec![pb::PolicyId {
                        name: "ghost".into(),
                        namespace: "ns".into(),
                        kind: "NetworkPolicy".into(),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
    ]);
    let mut s = Session::new(None);
    s.on_frame(&fs[0]).unwrap();
    let err = s.on_frame(&fs[1]).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert!(s.state().workloads().is_empty());
}

#[test]
fn bad_field_values_name_the_field() {
    let fs = frames(vec![
        config("v3.33.0"),
        ipset("s:a", &["10.0.0.1/32", "not-an-address"]),
        P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
            id: Some(pb::PolicyId {
                name: "p".into(),
                ..Default::default()
            }),
            policy: Some(pb::Policy {
                inbound_rules: vec![
                    pb::Rule::default(),
                    pb::Rule {
                        dst_ports: vec![pb::PortRange {
                            first: 90,
                            last: 80,
                        }],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        }),
    ]);
    let mut s = Session::new(None);
    s.on_frame(&fs[0]).unwrap();
    let err = s.on_frame(&fs[1]).unwrap_err().to_string();
    assert!(
        err.contains("frame 1") && err.contains("ipset_update.members[1]"),
        "{err}"
    );
    let err = s.on_frame(&fs[2]).unwrap_err().to_string();
    assert!(
        err.contains("frame 2")
            && err.contains("active_policy_update.policy.inbound_rules[1].dst_ports[0]"),
        "{err}"
    );
    assert!(s.state().ipsets().is_empty() && s.state().policies().is_empty());
}

fn host_meta(name: &str, v4: &str, v6: &str) -> P {
    P::HostMetadataUpdate(pb::HostMetadataUpdate {
        hostname: name.into(),
        ipv4_addr: v4.into(),
        ipv6_addr: v6.into(),
        ..Default::default()
    })
}

fn host_of(s: &Session, name: &str) -> (Option<String>, Option<String>) {
    let h = s.state().hosts().get(name).unwrap();
    (h.ipv4.map(|a| a.to_string()), h.ipv6.map(|a| a.to_string()))
}

#[test]
fn the_schema_is_fixed_by_the_first_config_update() {
    let fs = frames(vec![config("v3.31.7"), config("v3.33.0")]);
    let mut s = Session::new(None);
    run(&mut s, &fs).unwrap();
    assert_eq!(
        s.schema(),
        Schema::V3_31,
        "a later CalicoVersion does not switch the wire format"
    );
}

#[test]
fn v3_32_x_host_metadata_in_three_families_keeps_both_addresses() {
    // v3.32.x: field 14 carries the bare IPv4 address, 37 both families; any order.
    for v4v6_first in [false, true] {
        let v4v6 = P::HostMetadataV4v6Update(pb::HostMetadataV4v6Update {
            hostname: "node-a".into(),
            ipv4_addr: "10.0.0.1/24".into(),
            ipv6_addr: "fd00::1/64".into(),
            ..Default::default()
        });
        let v4 = host_meta("node-a", "10.0.0.1", "");
        let (a, b) = if v4v6_first { (v4v6, v4) } else { (v4, v4v6) };
        let fs = frames(vec![config("v3.32.1"), a, b]);
        let mut s = Session::new(None);
        run(&mut s, &fs).unwrap();
        assert_eq!(
            host_of(&s, "node-a"),
            (Some("10.0.0.1".into()), Some("fd00::1".into())),
            "v4v6 first: {v4v6_first}"
        );
    }
    // A separate IPv6 message (35) fills in the IPv6 address.
    let fs = frames(vec![
        config("v3.32.1"),
        host_meta("node-b", "10.0.0.2", ""),
        P::HostMetadataV6Update(pb::HostMetadataV6Update {
            hostname: "node-b".into(),
            ipv6_addr: "fd00::2".into(),
        }),
    ]);
    let mut s = Session::new(None);
    run(&mut s, &fs).unwrap();
    assert_eq!(
        host_of(&s, "node-b"),
        (Some("10.0.0.2".into()), Some("fd00::2".into()))
    );
}

#[test]
fn master_host_metadata_replaces_the_entry() {
    let fs = frames(vec![
        config("v3.33.0"),
        host_meta("node-a", "10.0.0.1/24", "fd00::1/64"),
        host_meta("node-a", "10.0.0.1/24", ""),
    ]);
    let mut s = Session::new(None);
    run(&mut s, &fs).unwrap();
    assert_eq!(host_of(&s, "node-a"), (Some("10.0.0.1".into()), None));
}

fn web_policy(http: bool) -> P {
    P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
        id: Some(pb::PolicyId {
            name: "web".into(),
            namespace: "shop".into(),
            kind: "NetworkPolicy".into(),
        }),
        policy: Some(pb::Policy {
            inbound_rules: vec![
                pb::Rule {
                    action: "allow".into(),
                    ..Default::default()
                },
                pb::Rule {
                    action: "allow".into(),
                    http_match: http.then(|| pb::HttpMatch {
                        methods: vec!["GET".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
    })
}

#[test]
fn http_matches_are_warned_about_once_per_change_and_cleared() {
    let mut s = Session::new(None);
    run(&mut s, &frames(vec![config("v3.32.0"), web_policy(true)])).unwrap();
    let w: Vec<&String> = s.warnings().collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("policy shop/web: inbound rule 1 has an HTTP match"),
        "{w:?}"
    );
    assert_eq!(s.take_new_warnings().len(), 1);
    // The same policy again: still in force, not logged again.
    run(&mut s, &frames(vec![web_policy(true)])).unwrap();
    assert_eq!(s.warnings().count(), 1);
    assert!(s.take_new_warnings().is_empty());
    // Updated without it: gone.
    run(&mut s, &frames(vec![web_policy(false)])).unwrap();
    assert_eq!(s.warnings().count(), 0);
}
