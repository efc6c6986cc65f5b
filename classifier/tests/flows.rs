//! Flow table: first packet decides, replies of allowed flows pass, timeouts, LRU
//! eviction when full, keep vs revalidate across generations, counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use capo_classifier::{
    reply_of, tcp_flags, Builder, Counters, EstablishedFlows, FlowConfig, FullPolicy, Input,
    ParsedPacket, Timestamp, Worker,
};
use capo_policy::*;

fn setup(allow_port: u16) -> (State, IdTable, Builder) {
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.dst.ports = vec![PortRange::single(allow_port)];
    for u in [
        Update::PolicyUpdate(
            common::pkey(0),
            Policy {
                inbound: vec![allow],
                outbound: vec![],
                untracked: false,
                pre_dnat: false,
                tier: "t1".into(),
            }
            .into(),
        ),
        Update::WorkloadUpdate(
            common::wkey(0),
            WorkloadEndpoint {
                name: "tun0".into(),
                profile_ids: vec![],
                ipv4_nets: vec!["10.0.0.1/32".parse().unwrap()],
                ipv6_nets: vec![],
                tiers: vec![TierInfo {
                    name: "t1".into(),
                    ingress: vec![common::pkey(0)],
                    egress: vec![common::pkey(0)],
                    default_action: TierDefault::Deny,
                }],
            }
            .into(),
        ),
    ] {
        b.apply(&mut state, &mut ids, u).unwrap();
    }
    (state, ids, b)
}

/// Replaces the policy `setup` made with these rules; the new generation.
fn replace_policy(
    state: &mut State,
    ids: &mut IdTable,
    b: &mut Builder,
    inbound: Vec<Rule>,
    outbound: Vec<Rule>,
) -> std::sync::Arc<capo_classifier::Generation> {
    b.apply(
        state,
        ids,
        Update::PolicyUpdate(
            common::pkey(0),
            Policy {
                inbound,
                outbound,
                untracked: false,
                pre_dnat: false,
                tier: "t1".into(),
            }
            .into(),
        ),
    )
    .unwrap()
}

fn syn(sport: u16, dport: u16) -> ParsedPacket {
    ParsedPacket {
        packet: Packet {
            src: "10.0.0.9".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        },
        tcp_flags: tcp_flags::SYN,
        flow_ports: (sport, dport),
    }
}

fn input(ids: &IdTable, dir: Direction, p: ParsedPacket) -> Input {
    Input {
        sw_if_index: ids.interface("tun0").unwrap(),
        dir,
        packet: p,
        len: 64,
    }
}

#[test]
fn replies_of_allowed_flows_pass_and_denied_packets_make_no_flow() {
    let (_, ids, b) = setup(80);
    let g = b.current().unwrap().clone();
    let counters = Counters::new();
    let mut w = Worker::new(FlowConfig::default(), &counters);
    let t = Timestamp::from_secs(1);
    let p = syn(1000, 80);
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Ingress, p), t),
        Verdict::Allow
    );
    // The reply leaves towards the peer: egress on the same interface. Egress policy
    // (port 80 as destination) would deny it, the flow lets it through.
    let r = reply_of(&p);
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Egress, r), t),
        Verdict::Allow
    );
    let denied = syn(1000, 81);
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Ingress, denied), t),
        Verdict::Deny
    );
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Egress, reply_of(&denied)), t),
        Verdict::Deny
    );
    assert_eq!(w.flows().len(), 1);
    let f = counters.flows();
    assert_eq!((f.hits, f.created), (1, 1));
    let rule = ids
        .rule(
            &capo_policy::ids::PolicyRef::Policy(common::pkey(0)),
            Direction::Ingress,
            0,
        )
        .unwrap();
    assert_eq!(counters.rule(rule).packets, 1);
    assert_eq!(counters.rule(rule).bytes, 64);
    let c = counters.interface(ids.interface("tun0").unwrap(), Direction::Ingress);
    assert_eq!((c.allow, c.deny), (1, 1));
    assert_eq!((c.allow_bytes, c.deny_bytes), (64, 64));
    // The reply's egress verdicts: one allowed by the flow, one denied by policy.
    let e = counters.interface(ids.interface("tun0").unwrap(), Direction::Egress);
    assert_eq!(
        (e.allow, e.deny, e.allow_bytes, e.deny_bytes),
        (1, 1, 64, 64)
    );
}

#[test]
fn flows_expire_after_their_timeout() {
    let (_, ids, b) = setup(80);
    let g = b.current().unwrap().clone();
    let counters = Counters::new();
    let mut w = Worker::new(FlowConfig::default(), &counters);
    let p = syn(1000, 80);
    w.process_one(
        &g,
        &input(&ids, Direction::Ingress, p),
        Timestamp::from_secs(0),
    );
    // Transient TCP (SYN only): 120 s.
    assert_eq!(w.expire(Timestamp::from_secs(100), 10), 0);
    assert_eq!(w.expire(Timestamp::from_secs(200), 10), 1);
    assert!(w.flows().is_empty());
    // Established TCP: 24 h.
    w.process_one(
        &g,
        &input(&ids, Direction::Ingress, p),
        Timestamp::from_secs(0),
    );
    let mut synack = reply_of(&p);
    synack.tcp_flags = tcp_flags::SYN | tcp_flags::ACK;
    w.process_one(
        &g,
        &input(&ids, Direction::Egress, synack),
        Timestamp::from_secs(1),
    );
    let mut ack = p;
    ack.tcp_flags = tcp_flags::ACK;
    w.process_one(
        &g,
        &input(&ids, Direction::Ingress, ack),
        Timestamp::from_secs(2),
    );
    assert_eq!(w.expire(Timestamp::from_secs(3600), 10), 0);
    assert_eq!(w.expire(Timestamp::from_secs(2 + 24 * 3600 + 1), 10), 1);
}

/// The table lists the first packet of every flow it holds, and of no flow it has
/// let go (expired) or never made (denied).
#[test]
fn first_packets_list_the_flows_held() {
    let (_, ids, b) = setup(80);
    let g = b.current().unwrap().clone();
    let counters = Counters::new();
    let mut w = Worker::new(FlowConfig::default(), &counters);
    let at = |s| Timestamp::from_secs(s);
    for (sport, dport, t) in [(1000, 80, 0), (1001, 80, 150), (1002, 81, 150)] {
        w.process_one(
            &g,
            &input(&ids, Direction::Ingress, syn(sport, dport)),
            at(t),
        );
    }
    let held = |w: &Worker| {
        let mut v: Vec<Packet> = w.flows().first_packets().copied().collect();
        v.sort_by_key(|p| format!("{p:?}"));
        v
    };
    // The one to port 81 was denied: no flow.
    assert_eq!(held(&w), vec![syn(1000, 80).packet, syn(1001, 80).packet]);
    // The first (transient TCP, 120 s) expires.
    assert_eq!(w.expire(at(200), 10), 1);
    assert_eq!(held(&w), vec![syn(1001, 80).packet]);
}

#[test]
fn full_table_evicts_lru_or_refuses() {
    let (_, ids, b) = setup(80);
    let g = b.current().unwrap().clone();
    for (policy, evicted, refused) in [(FullPolicy::EvictLru, 2, 0), (FullPolicy::Refuse, 0, 2)] {
        let counters = Counters::new();
        let cfg = FlowConfig {
            capacity: 2,
            on_full: policy,
            ..FlowConfig::default()
        };
        let mut w = Worker::new(cfg, &counters);
        for sport in 1000..1004 {
            let v = w.process_one(
                &g,
                &input(&ids, Direction::Ingress, syn(sport, 80)),
                Timestamp::from_secs(1),
            );
            assert_eq!(v, Verdict::Allow);
        }
        assert_eq!(w.flows().len(), 2);
        let f = counters.flows();
        assert_eq!((f.evicted, f.refused), (evicted, refused));
    }
}

#[test]
fn established_flows_keep_or_revalidate_across_generations() {
    for (mode, verdict) in [
        (EstablishedFlows::Keep, Verdict::Allow),
        (EstablishedFlows::Revalidate, Verdict::Deny),
    ] {
        let (mut state, mut ids, mut b) = setup(80);
        let g1 = b.current().unwrap().clone();
        let counters = Counters::new();
        let cfg = FlowConfig {
            established_flows: mode,
            ..FlowConfig::default()
        };
        let mut w = Worker::new(cfg, &counters);
        let p = syn(1000, 80);
        assert_eq!(
            w.process_one(
                &g1,
                &input(&ids, Direction::Ingress, p),
                Timestamp::from_secs(1)
            ),
            Verdict::Allow
        );
        // New generation: the policy now allows port 81 only.
        let mut allow = Rule::any(Action::Allow);
        allow.protocol = Some(Protocol::TCP);
        allow.dst.ports = vec![PortRange::single(81)];
        let g2 = replace_policy(&mut state, &mut ids, &mut b, vec![allow], vec![]);
        assert!(g2.id() > g1.id());
        let mut ack = p;
        ack.tcp_flags = tcp_flags::ACK;
        assert_eq!(
            w.process_one(
                &g2,
                &input(&ids, Direction::Ingress, ack),
                Timestamp::from_secs(2)
            ),
            verdict,
            "{mode:?}"
        );
    }
}

/// A first packet the NIC allowed (software never classified it) leaves the same
/// flow as one software allowed: its reply, which egress policy alone would deny,
/// passes, and its later packets are hits.
#[test]
fn flows_the_nic_allowed_pass_their_replies() {
    let (_, ids, b) = setup(80);
    let g = b.current().unwrap().clone();
    let counters = Counters::new();
    let mut w = Worker::new(FlowConfig::default(), &counters);
    let t = Timestamp::from_secs(1);
    let p = syn(2000, 80);
    // Without admitting it, the reply meets egress policy and is denied.
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Egress, reply_of(&p)), t),
        Verdict::Deny
    );
    w.admit(&g, &input(&ids, Direction::Ingress, p), t);
    assert_eq!(w.flows().len(), 1);
    assert_eq!(
        w.process_one(&g, &input(&ids, Direction::Egress, reply_of(&p)), t),
        Verdict::Allow
    );
    // Admitting a packet of a known flow refreshes it; no second flow.
    w.admit(&g, &input(&ids, Direction::Ingress, p), t);
    assert_eq!(w.flows().len(), 1);
    assert_eq!(counters.flows().created, 1);

    // A batch admits as its packets one by one: the same flows, the same replies
    // passing.
    let batch: Vec<Input> = (0..40u16)
        .map(|i| input(&ids, Direction::Ingress, syn(3000 + i % 25, 80)))
        .collect();
    let (one, all) = (Counters::new(), Counters::new());
    let mut by_one = Worker::new(FlowConfig::default(), &one);
    let mut at_once = Worker::new(FlowConfig::default(), &all);
    for i in &batch {
        by_one.admit(&g, i, t);
    }
    at_once.admit_batch(&g, &batch, t);
    assert_eq!(at_once.flows().len(), 25);
    assert_eq!(by_one.flows().len(), at_once.flows().len());
    assert_eq!(one.flows().created, all.flows().created);
    for i in 0..25u16 {
        let reply = input(&ids, Direction::Egress, reply_of(&syn(3000 + i, 80)));
        assert_eq!(at_once.process_one(&g, &reply, t), Verdict::Allow);
    }
}

/// One packet of the frame test: source and destination from a small pool (so frames
/// repeat flows and carry their replies), protocol, ports, flags, direction, and
/// whether it arrives on the policed interface or one the generation lacks.
fn frame_packet() -> impl proptest::strategy::Strategy<Value = (ParsedPacket, Direction, bool)> {
    use proptest::prelude::*;
    let addr = prop::sample::select(vec!["10.0.0.1", "10.0.0.8", "10.0.0.9"]);
    let port = prop::sample::select(vec![80u16, 81, 1000, 1001]);
    let flags = prop::sample::select(vec![
        tcp_flags::SYN,
        tcp_flags::SYN | tcp_flags::ACK,
        tcp_flags::ACK,
        tcp_flags::FIN | tcp_flags::ACK,
    ]);
    (
        addr.clone(),
        addr,
        any::<bool>(),
        port.clone(),
        port,
        flags,
        any::<bool>(),
        prop::bool::weighted(0.9),
    )
        .prop_map(|(src, dst, tcp, sport, dport, flags, ingress, known)| {
            let protocol = if tcp { Protocol::TCP } else { Protocol::UDP };
            let p = ParsedPacket {
                packet: Packet {
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    protocol,
                    l4: L4::Ports {
                        src: sport,
                        dst: dport,
                    },
                },
                tcp_flags: if tcp { flags } else { 0 },
                flow_ports: (sport, dport),
            };
            let dir = if ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            (p, dir, known)
        })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// `Worker::process` on a frame (keys hashed and prefetched ahead of the
    /// packets' turns) decides every packet as `Worker::process_one` does packet by
    /// packet: same verdicts, same table, same counters. Frames repeat flows and
    /// carry their replies, so a packet that no flow held when the frame came can
    /// be a hit by its turn; small tables evict or refuse; time jumps past
    /// timeouts; two generations alternate (revalidation re-decides flows).
    #[test]
    fn a_frame_decides_as_its_packets_one_by_one(
        frames in proptest::collection::vec(
            (proptest::collection::vec(frame_packet(), 1..40), proptest::prelude::any::<bool>(), 0u64..3),
            1..8,
        ),
        capacity in 1usize..12,
        evict in proptest::prelude::any::<bool>(),
        revalidate in proptest::prelude::any::<bool>(),
    ) {
        let (mut state, mut ids, mut b) = setup(80);
        let g1 = b.current().unwrap().clone();
        let mut allow = Rule::any(Action::Allow);
        allow.dst.ports = vec![PortRange::single(81)];
        let g2 = replace_policy(&mut state, &mut ids, &mut b, vec![allow.clone()], vec![allow]);
        let cfg = FlowConfig {
            capacity,
            on_full: if evict { FullPolicy::EvictLru } else { FullPolicy::Refuse },
            established_flows: if revalidate {
                EstablishedFlows::Revalidate
            } else {
                EstablishedFlows::Keep
            },
            ..FlowConfig::default()
        };
        let (framed_counters, single_counters) = (Counters::new(), Counters::new());
        let mut framed = Worker::new(cfg, &framed_counters);
        let mut single = Worker::new(cfg, &single_counters);
        let tun0 = ids.interface("tun0").unwrap();
        let mut now = 1u64;
        let mut out = Vec::new();
        for (packets, second, jump) in frames {
            // 0: same second; 1: past TCP's transient timeout; 2: past UDP's.
            now += [0, 121, 601][jump as usize];
            let t = Timestamp::from_secs(now);
            let g = if second { &g2 } else { &g1 };
            let inputs: Vec<Input> = packets
                .iter()
                .map(|(p, dir, known)| Input {
                    sw_if_index: if *known { tun0 } else { tun0 + 1000 },
                    dir: *dir,
                    packet: *p,
                    len: 64,
                })
                .collect();
            framed.process(g, &inputs, t, &mut out);
            let one_by_one: Vec<Verdict> =
                inputs.iter().map(|i| single.process_one(g, i, t)).collect();
            proptest::prop_assert_eq!(&out, &one_by_one);
            proptest::prop_assert_eq!(framed.flows().len(), single.flows().len());
        }
        proptest::prop_assert_eq!(framed_counters.flows(), single_counters.flows());
        for dir in [Direction::Ingress, Direction::Egress] {
            proptest::prop_assert_eq!(
                framed_counters.interface(tun0, dir),
                single_counters.interface(tun0, dir)
            );
        }
        for rule in 0..16 {
            proptest::prop_assert_eq!(framed_counters.rule(rule), single_counters.rule(rule));
        }
    }
}
