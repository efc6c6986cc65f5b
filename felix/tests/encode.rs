//! `encode` is the inverse of `convert`: what the agent sends a dataplane rebuilds
//! exactly the agent's state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use capo_felix::convert::{self, convert, Converted};
use capo_felix::encode;
use capo_felix::frame::{Frame, FrameReader};
use capo_felix::session::Session;
use capo_policy::{
    Action, Cidr, IcmpMatch, IpFamily, IpSetId, PortRange, Protocol, Rule, SideMatch, State,
};
use proptest::prelude::*;

fn seed_state() -> State {
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../host-agent/tests/fixtures/felix/seed.v3.31.frames"),
    )
    .unwrap();
    let mut s = Session::new(None);
    for f in FrameReader::new(bytes.as_slice()) {
        s.on_frame(&f.unwrap()).unwrap();
    }
    s.into_state()
}

fn rebuild(msgs: &[capo_proto::felix::v3_32::ToDataplane]) -> State {
    let bytes: Vec<u8> = msgs
        .iter()
        .flat_map(capo_felix::frame::encode_frame)
        .collect();
    let frames: Vec<Frame> = FrameReader::new(bytes.as_slice())
        .map(|f| f.unwrap())
        .collect();
    let mut s = Session::new(None);
    for f in &frames {
        s.on_frame(f).unwrap();
    }
    s.into_state()
}

#[test]
fn a_snapshot_rebuilds_the_same_state() {
    // From the v3.31 fixture: the snapshot re-expresses it in the v3.32 shape.
    let original = seed_state();
    let rebuilt = rebuild(&encode::snapshot(&original));
    assert_eq!(rebuilt.ipsets(), original.ipsets());
    assert_eq!(rebuilt.policies(), original.policies());
    assert_eq!(rebuilt.profiles(), original.profiles());
    assert_eq!(rebuilt.workloads(), original.workloads());
    assert_eq!(rebuilt.host_endpoints(), original.host_endpoints());
    assert_eq!(rebuilt.hosts(), original.hosts());
    let (a, b) = (rebuilt.config(), original.config());
    assert_eq!(
        (
            &a.hostname,
            a.endpoint_to_host,
            &a.failsafe_inbound,
            &a.failsafe_outbound
        ),
        (
            &b.hostname,
            b.endpoint_to_host,
            &b.failsafe_inbound,
            &b.failsafe_outbound
        )
    );
    // A v3.31 version must not make the receiver decode v3.32-shaped messages as v3.31.
    assert_eq!(b.calico_version.as_deref(), Some("v3.31.7"));
    assert_eq!(a.calico_version, None);
    assert_eq!(
        a.raw.get(encode::SOURCE_VERSION_KEY).map(String::as_str),
        Some("v3.31.7")
    );
    assert!(!original.policies().is_empty() && !original.workloads().is_empty());
}

#[test]
fn every_update_round_trips() {
    let state = seed_state();
    for msg in encode::snapshot(&state) {
        let Converted::Update(u) = convert(msg.clone(), &state).unwrap() else {
            continue;
        };
        let again = encode::update(&u);
        let Converted::Update(u2) = convert(again, &state).unwrap() else {
            panic!("not an update");
        };
        if let (capo_policy::Update::Config(_), capo_policy::Update::Config(_)) = (&u, &u2) {
            continue;
        }
        assert_eq!(u, u2);
    }
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| format!(
            "{}/{l}",
            std::net::Ipv4Addr::from(a)
        )
        .parse()
        .unwrap()),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| format!(
            "{}/{l}",
            std::net::Ipv6Addr::from(a)
        )
        .parse()
        .unwrap()),
    ]
}

fn range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), any::<u16>())
        .prop_map(|(a, b)| PortRange::new(a.min(b).into(), a.max(b).into()).unwrap())
}

fn set() -> impl Strategy<Value = IpSetId> {
    "[a-z]{1,4}:[A-Za-z0-9_-]{1,8}".prop_map(|s| IpSetId::new(s).unwrap())
}

fn side() -> impl Strategy<Value = SideMatch> {
    (
        prop::collection::vec(cidr(), 0..3),
        prop::collection::vec(cidr(), 0..2),
        prop::collection::vec(range(), 0..3),
        prop::collection::vec(range(), 0..2),
        prop::collection::vec(set(), 0..2),
        prop::collection::vec(set(), 0..2),
        prop::collection::vec(set(), 0..2),
        prop::collection::vec(set(), 0..2),
    )
        .prop_map(
            |(nets, not_nets, ports, not_ports, named, not_named, sets, not_sets)| SideMatch {
                nets,
                not_nets,
                ports,
                not_ports,
                named_port_sets: named,
                not_named_port_sets: not_named,
                ip_sets: sets,
                not_ip_sets: not_sets,
            },
        )
}

fn icmp() -> impl Strategy<Value = Option<IcmpMatch>> {
    prop::option::of(
        (any::<u8>(), prop::option::of(any::<u8>())).prop_map(|(t, c)| IcmpMatch {
            icmp_type: t,
            code: c,
        }),
    )
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![
            Just(Action::Allow),
            Just(Action::Deny),
            Just(Action::Log),
            Just(Action::Pass)
        ],
        prop::option::of(prop_oneof![Just(IpFamily::V4), Just(IpFamily::V6)]),
        prop::option::of(any::<u8>().prop_map(Protocol)),
        prop::option::of(any::<u8>().prop_map(Protocol)),
        side(),
        side(),
        prop::collection::vec(set(), 0..2),
        icmp(),
        icmp(),
        "[A-Za-z0-9_-]{0,16}",
    )
        .prop_map(
            |(
                action,
                ip_version,
                protocol,
                not_protocol,
                src,
                dst,
                svc,
                icmp,
                not_icmp,
                rule_id,
            )| Rule {
                action,
                ip_version,
                protocol,
                not_protocol,
                src,
                dst,
                dst_ip_port_sets: svc,
                icmp,
                not_icmp,
                rule_id,
            },
        )
}

proptest! {
    #[test]
    fn rules_round_trip(r in rule()) {
        let back = convert::rule(&encode::rule(&r), "rule").unwrap();
        prop_assert_eq!(back, r);
    }
}
