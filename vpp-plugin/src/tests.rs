//! End-to-end tests of the plugin's logic without VPP: the seed's Felix frames pushed as
//! generations, the views, the node's batch logic over plain byte buffers (against the
//! policy core's reference evaluator too), incremental compilation and its atomicity,
//! the control channel over a real unix socket.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use capo_classifier::{tcp_flags, FlowConfig, Timestamp};
use capo_felix::frame::{decode_to_dataplane_v3_32, FrameReader, FrameWriter};
use capo_policy::{Packet, Protocol, L4};
use capo_proto::capo::agent::v1::CountersRequest;
use capo_proto::capo::dataplane::v1::{
    from_plugin, to_plugin, Applied, FromPlugin, Hello, InterfaceBinding, ShowRequest, ToPlugin,
};
use capo_proto::felix::v3_32 as pb;
use prost::Message;

use crate::batch::{classify_batch, BatchCtx, DropReason, FrameOut, Next, PacketIn};
use crate::cli::Show;
use crate::config::{EstablishedFlows, PluginConfig};
use crate::control::{
    generation_chunks as chunked, generation_message, serve, ControlCore, FakeVpp,
};
use crate::generation::SwIfIndex;
use crate::mark::{gen_tag, Mark, MarkKind, NicMarks};
use crate::trace::How;
use crate::worker::WorkerSlot;
use crate::Plugin;

/// `pkt` from its IP header on, as VPP's ip arcs hand it over (TCP gets `flags`).
fn ip_bytes_with(pkt: &Packet, flags: u8) -> Vec<u8> {
    capo_classifier::build::frame(pkt, flags)[14..].to_vec()
}

fn ip_bytes(pkt: &Packet) -> Vec<u8> {
    ip_bytes_with(pkt, tcp_flags::SYN)
}

fn new_slot(mode: EstablishedFlows) -> WorkerSlot {
    WorkerSlot::new(FlowConfig {
        established_flows: mode,
        ..PluginConfig::default().flow_config()
    })
}

fn ctx<'a>(plugin: &'a Plugin, slot: &'a mut WorkerSlot, secs: u64) -> BatchCtx<'a> {
    BatchCtx {
        cell: &plugin.cell,
        slot,
        marks: NicMarks::default(),
        now: Timestamp::from_secs(secs),
        unclassified: plugin.config.unclassified,
        sample: plugin.workers.sampling(),
    }
}

const SEED_FRAMES: &[u8] = include_bytes!("../tests/fixtures/seed.master.frames");

/// The seed document's `sh capo interfaces` block for tun3.
const SEED_TUN3: &str = "\
[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]
  tx:
    [policy#2]
      tx:[rule#0;allow][src==172.18.0.2/32,src==fc00:f853:ccd:e793::2/128,]
    [policy#12]
      tx:[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]
  profiles:
    [policy#10]
      tx:[rule#15;allow][]
      rx:[rule#16;allow][]
    [policy#11]
";

fn seed_updates() -> Vec<pb::ToDataplane> {
    FrameReader::new(SEED_FRAMES)
        .map(|f| decode_to_dataplane_v3_32(&f.unwrap()).unwrap())
        .collect()
}

fn generation(id: u64, full: bool, base_id: u64, updates: Vec<pb::ToDataplane>) -> ToPlugin {
    generation_message(id, full, base_id, updates, false)
}

fn applied(reply: FromPlugin) -> Applied {
    match reply.msg {
        Some(from_plugin::Msg::Applied(a)) => a,
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn block(view: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in view.lines() {
        if line.starts_with('[') {
            inside = line.starts_with(&format!("[{name} "));
        }
        if inside {
            out += line;
            out.push('\n');
        }
    }
    out
}

fn seeded() -> (Plugin, ControlCore<FakeVpp>) {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 100));
    assert!(a.ok, "{}", a.error);
    (plugin, core)
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::TCP,
        l4: L4::Ports {
            src: sport,
            dst: dport,
        },
    }
}

#[test]
fn seed_generation_prints_the_seed_view() {
    let (plugin, core) = seeded();
    let view = plugin.show(Show::Interfaces, 100);
    assert!(view.starts_with("Interfaces with policies configured:\n"));
    assert_eq!(block(&view, "tun3"), SEED_TUN3, "{view}");
    assert!(plugin
        .show(Show::Ipsets, 100)
        .contains("[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,]\n"));
    assert!(plugin
        .show(Show::Policies { verbose: false }, 100)
        .contains("[policy#12] rx-rules:0 tx-rules:1\n"));
    // Both interfaces got the features, once.
    assert_eq!(
        core.context().commits,
        vec![(1, vec![SwIfIndex(1), SwIfIndex(11)], vec![])]
    );
}

#[test]
fn unknown_interfaces_are_reported_not_fatal() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tap0", 1)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(a.ok);
    assert_eq!(a.unknown_interfaces, vec!["tun3".to_string()]);
    let gens = plugin.show(Show::Generations, 5);
    assert!(gens.contains("unknown interfaces: tun3"), "{gens}");
}

#[test]
fn refused_generations_change_nothing() {
    let (plugin, mut core) = seeded();
    let before = plugin.show(Show::Interfaces, 0);
    // Not newer.
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(!a.ok && a.error.contains("not newer"), "{}", a.error);
    // Full without InSync.
    let mut no_sync = seed_updates();
    no_sync.pop();
    let a = applied(core.on_message(generation(2, true, 0, no_sync), 0));
    assert!(!a.ok && a.error.contains("InSync"), "{}", a.error);
    // Delta on the wrong base.
    let a = applied(core.on_message(generation(3, false, 7, vec![]), 0));
    assert!(
        !a.ok && a.error.contains("delta on generation 7"),
        "{}",
        a.error
    );
    // A delta that references an unknown IP set: refused by the policy core, with the
    // update's index.
    let bad = pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: "s:nope".into(),
                added_members: vec!["10.0.0.1/32".into()],
                removed_members: vec![],
            },
        )),
    };
    let a = applied(core.on_message(generation(4, false, 1, vec![bad]), 0));
    assert!(!a.ok && a.error.starts_with("updates[0]"), "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(plugin.show(Show::Interfaces, 0), before);
    let gens = plugin.show(Show::Generations, 0);
    assert!(gens.contains("generations applied: 1 refused: 4"), "{gens}");
}

#[test]
fn deltas_apply_on_the_active_generation() {
    let (plugin, mut core) = seeded();
    let ipset = seed_updates()
        .into_iter()
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap();
    let add = pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: ipset,
                added_members: vec!["11.0.0.197/32".into()],
                removed_members: vec![],
            },
        )),
    };
    let a = applied(core.on_message(generation(2, false, 1, vec![add]), 0));
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 2);
    assert!(plugin.show(Show::Ipsets, 0).contains("11.0.0.197/32,"));
    // The interfaces did not change: no feature churn.
    assert_eq!(core.context().commits.last(), Some(&(2, vec![], vec![])));
}

#[test]
fn node_batch_over_byte_buffers() {
    let (plugin, _core) = seeded();
    let mut slot = new_slot(EstablishedFlows::Keep);
    let mut ctx = ctx(&plugin, &mut slot, 10);
    let allowed = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let denied = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5979));
    let malformed = allowed[..22].to_vec();
    let p = |bytes, sw, traced| PacketIn {
        bytes,
        sw_if_index: SwIfIndex(sw),
        flow_id: 0,
        traced,
    };
    // Towards the pod: VPP tx on tun3 = Calico ingress.
    let frame = [
        p(&allowed, 11, true),
        p(&denied, 11, true),
        p(&malformed, 11, false),
        p(&denied, 99, false),
    ];
    let mut out = FrameOut::default();
    let c = classify_batch::<false, true>(&mut ctx, &frame, &mut out);
    assert_eq!(
        out.iter().map(|o| o.next).collect::<Vec<_>>(),
        [Next::NextFeature, Next::Drop, Next::Drop, Next::NextFeature]
    );
    assert_eq!(out[1].drop, Some(DropReason::Denied));
    assert_eq!(out[2].drop, Some(DropReason::Malformed));
    assert_eq!(
        (c.allowed, c.denied, c.malformed, c.not_policed),
        (1, 1, 1, 1)
    );
    let t0 = out.trace(0).unwrap().to_string();
    assert_eq!(
        t0,
        "capo: sw_if_index 11 tx generation 1 allow (classified): tier default: [policy#12] \
         [rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]"
    );
    let t1 = out.trace(1).unwrap().to_string();
    assert!(
        t1.contains("deny (classified): tier default: end of tier"),
        "{t1}"
    );

    // The pod's reply (VPP rx on tun3, Calico egress) hits the flow the request made.
    let reply = ip_bytes_with(
        &tcp("11.0.0.67", "11.0.0.196", 5978, 40000),
        tcp_flags::SYN | tcp_flags::ACK,
    );
    let c = classify_batch::<false, false>(&mut ctx, &[p(&reply, 11, true)], &mut out);
    assert_eq!((c.allowed, c.flow_hits), (1, 1));
    assert_eq!(out[0].how, How::FlowHit);
    assert!(out.trace(0).unwrap().to_string().contains("rule#18"));

    // NIC marks: an allow from a held generation skips classification even for a
    // packet policy denies; one from an unknown generation is counted and classified.
    // capo-offload's layout, as the NIC stamps it.
    let mark = |generation: u64, kind| {
        NicMarks::default()
            .encode(Mark {
                gen_tag: gen_tag(generation),
                kind,
                index: 3,
            })
            .unwrap()
    };
    // Three connections (a NIC allow leaves a flow, so each its own tuple).
    let denied_b = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40001, 5979));
    let denied_c = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40002, 5979));
    let frame = [
        PacketIn {
            flow_id: mark(1, MarkKind::Allow),
            ..p(&denied, 11, true)
        },
        PacketIn {
            flow_id: mark(3, MarkKind::Allow),
            ..p(&denied_b, 11, false)
        },
        // A punt from the held generation: software classifies it.
        PacketIn {
            flow_id: mark(1, MarkKind::Punt),
            ..p(&denied_c, 11, false)
        },
    ];
    let c = classify_batch::<false, true>(&mut ctx, &frame, &mut out);
    assert_eq!(out[0].next, Next::NextFeature);
    assert_eq!(out[0].how, How::NicAllow);
    assert!(out
        .trace(0)
        .unwrap()
        .to_string()
        .contains("NIC allow, generation tag 1, plan entry 3"));
    assert_eq!(out[1].next, Next::Drop);
    assert_eq!(out[2].next, Next::Drop);
    assert_eq!(
        (c.nic_accepted, c.nic_unknown_generation, c.denied),
        (1, 1, 2)
    );

    // With marks off, a mark is just a flow id: classified (a new connection; the
    // NIC-allowed one above is a flow now, and its packets are flow-table hits).
    ctx.marks = NicMarks::off();
    let denied_d = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40003, 5979));
    let fresh = [PacketIn {
        flow_id: mark(1, MarkKind::Allow),
        ..p(&denied_d, 11, false)
    }];
    let c = classify_batch::<false, true>(&mut ctx, &fresh, &mut out);
    assert_eq!((c.nic_accepted, c.denied), (0, 1));
    let c = classify_batch::<false, true>(&mut ctx, &frame[..1], &mut out);
    assert_eq!((c.nic_accepted, c.denied, c.flow_hits), (0, 0, 1));
}

#[test]
fn flows_software_decides_are_sampled_while_the_agent_asks() {
    use crate::control::Reader;
    let (plugin, _core) = seeded();
    let allowed = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let denied = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40001, 5979));
    let run = |plugin: &Plugin| {
        let mut guard = plugin.workers.for_thread(0).unwrap();
        let mut ctx = ctx(plugin, guard.slot().unwrap(), 10);
        let p = |bytes| PacketIn {
            bytes,
            sw_if_index: SwIfIndex(11),
            flow_id: 0,
            traced: false,
        };
        for bytes in [&allowed, &denied] {
            let frame: Vec<PacketIn<'_>> = (0..256).map(|_| p(bytes)).collect();
            let mut out = FrameOut::default();
            classify_batch::<false, true>(&mut ctx, &frame, &mut out);
        }
    };
    // Nobody asked: nothing is sampled, and the first request only turns it on.
    run(&plugin);
    assert!(!plugin.workers.sampling());
    assert!(plugin.flow_samples().flows.is_empty());
    assert!(plugin.workers.sampling());
    // About one packet in sixteen of those software decided (flow-table hits
    // included), at random gaps of 1 to 31.
    run(&plugin);
    let s = plugin.flow_samples();
    assert_eq!(s.sample_every, crate::worker::SAMPLE_EVERY);
    let mut got: Vec<(u32, u64, u32)> = s
        .flows
        .iter()
        .map(|f| (f.dst_port, f.packets, f.tcp_flags))
        .collect();
    got.sort();
    let syn = u32::from(capo_offload::flow::TCP_SYN);
    assert_eq!(got.len(), 2, "{s:?}");
    for ((port, packets, flags), want) in got.iter().zip([5978, 5979]) {
        assert_eq!((*port, *flags), (want, syn));
        // 256 packets with gaps of at most 31: at least 8 samples; about 16.
        assert!((8..=48).contains(packets), "{s:?}");
    }
    // The gaps run on across frames.
    for _ in 0..4 {
        run(&plugin);
    }
    let again: u64 = plugin.flow_samples().flows.iter().map(|f| f.packets).sum();
    assert!((96..=192).contains(&again), "{again} of 2048 packets");
    assert_eq!(s.flows[0].src, vec![11, 0, 0, 196]);
    // Taken: nothing until more packets.
    assert!(plugin.flow_samples().flows.is_empty());
    // Packets the NIC allowed reach the node with their mark and are counted too,
    // so the flows the share decides stay hot.
    let mark = NicMarks::default()
        .encode(crate::mark::Mark {
            gen_tag: crate::mark::gen_tag(plugin.cell.active_id()),
            kind: crate::mark::MarkKind::Allow,
            index: 3,
        })
        .unwrap();
    {
        let mut guard = plugin.workers.for_thread(0).unwrap();
        let mut ctx = ctx(&plugin, guard.slot().unwrap(), 10);
        let marked: Vec<PacketIn<'_>> = (0..64)
            .map(|_| PacketIn {
                bytes: &allowed,
                sw_if_index: SwIfIndex(11),
                flow_id: mark,
                traced: false,
            })
            .collect();
        let mut out = FrameOut::default();
        let c = classify_batch::<false, true>(&mut ctx, &marked, &mut out);
        assert_eq!(c.nic_accepted, 64);
    }
    let s = plugin.flow_samples();
    assert_eq!(s.flows.len(), 1, "{s:?}");
    assert_eq!(s.flows[0].dst_port, 5978);
    assert!((2..=16).contains(&s.flows[0].packets), "{s:?}");
    // The agent goes away: sampling stops.
    plugin.connection_closed();
    assert!(!plugin.workers.sampling());
    run(&plugin);
    assert!(plugin.flow_samples().flows.is_empty());
}

fn seed_ipset_id() -> String {
    seed_updates()
        .into_iter()
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap()
}

fn member_delta(added: &[&str], removed: &[&str]) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: seed_ipset_id(),
                added_members: added.iter().map(|m| m.to_string()).collect(),
                removed_members: removed.iter().map(|m| m.to_string()).collect(),
            },
        )),
    }
}

#[test]
fn revalidate_redecides_established_flows_on_a_new_generation() {
    let (plugin, mut core) = seeded();
    let req = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let pkt = [PacketIn {
        bytes: &req,
        sw_if_index: SwIfIndex(11),
        flow_id: 0,
        traced: false,
    }];
    let mut out = FrameOut::default();
    for (mode, new_member) in [
        (EstablishedFlows::Keep, "11.0.0.198/32"),
        (EstablishedFlows::Revalidate, "11.0.0.199/32"),
    ] {
        let mut slot = new_slot(mode);
        let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 0), &pkt, &mut out);
        assert_eq!((c.allowed, c.flow_hits), (1, 0));
        let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 0), &pkt, &mut out);
        assert_eq!(
            (c.allowed, c.flow_hits),
            (1, 1),
            "{mode:?}: same generation"
        );
        // A new generation that still allows the flow.
        let id = plugin.cell.active_id();
        let a = applied(core.on_message(
            generation(id + 1, false, id, vec![member_delta(&[new_member], &[])]),
            0,
        ));
        assert!(a.ok, "{}", a.error);
        let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 1), &pkt, &mut out);
        assert_eq!(c.allowed, 1);
        let expect_hit = mode == EstablishedFlows::Keep;
        assert_eq!(c.flow_hits == 1, expect_hit, "{mode:?}");
        // One that denies it: kept flows keep flowing, revalidated ones are dropped.
        let id = plugin.cell.active_id();
        let a = applied(core.on_message(
            generation(
                id + 1,
                false,
                id,
                vec![member_delta(&[], &["11.0.0.196/32"])],
            ),
            0,
        ));
        assert!(a.ok, "{}", a.error);
        let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 2), &pkt, &mut out);
        assert_eq!(c.allowed == 1, expect_hit, "{mode:?}");
        // Put the member back for the next mode.
        let id = plugin.cell.active_id();
        let a = applied(core.on_message(
            generation(
                id + 1,
                false,
                id,
                vec![member_delta(&["11.0.0.196/32"], &[])],
            ),
            0,
        ));
        assert!(a.ok, "{}", a.error);
    }
}

#[test]
fn fail_static_when_the_agent_leaves() {
    let (plugin, mut core) = seeded();
    let hello = ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "capo-agent 0.1.0".into(),
            ..Hello::default()
        })),
    };
    match core.on_message(hello, 50).msg {
        Some(from_plugin::Msg::Hello(h)) => assert_eq!(h.active_generation, 1),
        other => panic!("{other:?}"),
    }
    core.on_disconnect(60);
    assert_eq!(plugin.cell.active_id(), 1);
    let gens = plugin.show(Show::Generations, 90);
    assert!(gens.contains("active generation: 1"), "{gens}");
    assert!(
        gens.contains("agent: disconnected 30s ago; fail-static"),
        "{gens}"
    );
    assert!(gens.contains("[generation 1 full] applied"), "{gens}");
}

#[test]
fn control_channel_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("capo-vpp-test-{}", std::process::id()));
    let path = dir.join("capo.sock");
    let listener = crate::control::bind_path(&path, 0o600, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let plugin = Arc::new(Plugin::new(PluginConfig::default()));
    let core = Arc::new(Mutex::new(
        plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)])),
    ));
    let server_core = Arc::clone(&core);
    let reader = Arc::clone(&plugin);
    std::thread::spawn(move || serve(listener, server_core, reader, |_| {}));

    {
        let stream = UnixStream::connect(&path).unwrap();
        let mut reader = FrameReader::new(stream.try_clone().unwrap());
        let mut writer = FrameWriter::new(stream);
        let mut ask = |m: ToPlugin| {
            writer.write_message(&m).unwrap();
            FromPlugin::decode(reader.read_frame().unwrap().unwrap().bytes.as_slice()).unwrap()
        };
        let hello = ask(ToPlugin {
            msg: Some(to_plugin::Msg::Hello(Hello {
                agent_version: "test".into(),
                ..Hello::default()
            })),
        });
        assert!(matches!(
            hello.msg,
            Some(from_plugin::Msg::Hello(ref h)) if h.active_generation == 0
        ));
        let a = applied(ask(generation(5, true, 0, seed_updates())));
        assert!(a.ok && a.generation == 5, "{a:?}");
        assert_eq!(plugin.cell.active_id(), 5);
        // Deltas: once a reply is written, the connection readies the state the
        // next delta starts from (from the third on, a retired snapshot is free).
        for id in 6..=9u64 {
            let member = format!("11.0.0.{}/32", 200 + id);
            let d = applied(ask(generation(
                id,
                false,
                id - 1,
                vec![member_delta(&[&member], &[])],
            )));
            assert!(d.ok, "{}", d.error);
        }
        let ready = plugin.status.lock().unwrap().compiled.ready_after_reply;
        assert!(ready >= 2, "{ready}");
        // Where each endpoint is policed comes back with the acknowledgement.
        let tun3 = a.interfaces.iter().find(|i| i.endpoint == "tun3").unwrap();
        assert_eq!((tun3.sw_if_index, tun3.how.as_str()), (11, "name"));
        // Views and counters are read over the channel, as vppctl prints them.
        let show = ask(ToPlugin {
            msg: Some(to_plugin::Msg::Show(ShowRequest {
                view: "interfaces".into(),
                verbose: false,
            })),
        });
        match show.msg {
            Some(from_plugin::Msg::Show(r)) => {
                assert_eq!(r.text, plugin.show(Show::Interfaces, 0));
                assert_eq!(r.generation, 9);
                assert!(r.error.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let bad = ask(ToPlugin {
            msg: Some(to_plugin::Msg::Show(ShowRequest {
                view: "everything".into(),
                verbose: false,
            })),
        });
        assert!(
            matches!(bad.msg, Some(from_plugin::Msg::Show(ref r)) if r.error.contains("usage"))
        );
        let counters = ask(ToPlugin {
            msg: Some(to_plugin::Msg::Counters(CountersRequest {})),
        });
        match counters.msg {
            Some(from_plugin::Msg::Counters(c)) => {
                assert_eq!(c.generation, 9);
                assert!(c.rules.iter().any(|r| r.rule_id == 18));
                assert!(c
                    .interfaces
                    .iter()
                    .any(|i| i.interface == "tun3" && i.sw_if_index == 11));
            }
            other => panic!("{other:?}"),
        }
    }

    // Garbage ends the connection, not the server; the generation stays.
    let mut raw = UnixStream::connect(&path).unwrap();
    std::io::Write::write_all(&mut raw, &[3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(buf.is_empty());
    assert_eq!(plugin.cell.active_id(), 9);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The whole view for the seed with tap0 = 1, tun3 = 11 (docs/operations.md shows it).
#[test]
fn seed_full_interfaces_view() {
    let (plugin, _core) = seeded();
    let expected = format!(
        "Interfaces with policies configured:\n\
         [tap0 sw_if_index=1 ]\n  tx:\n    [policy#0]\n      \
         tx:[rule#2;allow][src==[ipset#0;ip;11.0.0.67,fd20::1cc0:b1ac:ad47:e7c2,],]\n{SEED_TUN3}"
    );
    assert_eq!(plugin.show(Show::Interfaces, 0), expected);
}

/// The verdict the node gives one packet on tun3 going `OUTPUT` (tx: towards the pod),
/// in a frame of its own with a fresh flow table.
fn verdict_alone(plugin: &Plugin, bytes: &[u8]) -> Next {
    verdict_at(plugin, bytes, SwIfIndex(11))
}

/// The node's decision for `bytes` arriving alone on `sw_if_index` (a fresh flow table).
fn verdict_at(plugin: &Plugin, bytes: &[u8], sw_if_index: SwIfIndex) -> Next {
    let mut slot = new_slot(EstablishedFlows::Keep);
    let mut out = FrameOut::default();
    let pkt = [PacketIn {
        bytes,
        sw_if_index,
        flow_id: 0,
        traced: false,
    }];
    classify_batch::<false, true>(&mut ctx(plugin, &mut slot, 0), &pkt, &mut out);
    out[0].next
}

#[test]
fn deltas_compile_incrementally_and_reuse_retired_snapshots() {
    let (plugin, mut core) = seeded();
    let from = |a: &str| ip_bytes(&tcp(a, "11.0.0.67", 40000, 5978));
    assert_eq!(verdict_alone(&plugin, &from("11.0.0.201")), Next::Drop);
    for (i, id) in (2..=7u64).enumerate() {
        let member = format!("11.0.0.{}/32", 200 + i);
        let a = applied(core.on_message(
            generation(id, false, id - 1, vec![member_delta(&[&member], &[])]),
            0,
        ));
        assert!(a.ok, "{}", a.error);
        // The new member is allowed at once: the compiled generation has it.
        assert_eq!(
            verdict_alone(&plugin, &from(&format!("11.0.0.{}", 200 + i))),
            Next::NextFeature
        );
    }
    let s = plugin.status.lock().unwrap().compiled;
    assert_eq!((s.full, s.incremental), (1, 6), "{s:?}");
    // The full generation copies once for the compiler; the first two deltas find
    // no free retired snapshot (the cell still holds them) and take the copies made
    // in the background; every later one brings a retired snapshot forward.
    assert_eq!(
        (s.state_copies, s.replayed, s.background_copies),
        (1, 6, 2),
        "{s:?}"
    );
    let ipsets = plugin.show(Show::Ipsets, 0);
    for i in 0..6 {
        assert!(
            ipsets.contains(&format!("11.0.0.{}/32,", 200 + i)),
            "{ipsets}"
        );
    }
    let gens = plugin.show(Show::Generations, 0);
    assert!(
        gens.contains(
            "compiled: 6 incremental, 0 re-indexed, 1 from scratch; state copies: 1 \
             (replayed instead: 6, 2 of them from copies made in the background, 0 made \
             ready after a reply)"
        ),
        "{gens}"
    );
}

#[test]
fn a_refused_delta_leaves_views_and_classifier_untouched() {
    let (plugin, mut core) = seeded();
    let before = plugin.show(Show::Ipsets, 0);
    let from = ip_bytes(&tcp("11.0.0.250", "11.0.0.67", 40000, 5978));
    // The first update is valid, the second is not: nothing of the delta applies.
    let bad = pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: "s:nope".into(),
                added_members: vec!["10.0.0.1/32".into()],
                removed_members: vec![],
            },
        )),
    };
    let a = applied(core.on_message(
        generation(
            2,
            false,
            1,
            vec![member_delta(&["11.0.0.250/32"], &[]), bad],
        ),
        0,
    ));
    assert!(!a.ok && a.error.starts_with("updates[1]"), "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(plugin.show(Show::Ipsets, 0), before);
    assert_eq!(verdict_alone(&plugin, &from), Next::Drop);

    // VPP refuses the commit: the compiler is rebuilt from the active generation.
    core.context_mut().fail_commits = true;
    let a = applied(core.on_message(
        generation(3, false, 1, vec![member_delta(&["11.0.0.250/32"], &[])]),
        0,
    ));
    assert!(!a.ok && a.error.contains("VPP error"), "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(verdict_alone(&plugin, &from), Next::Drop);

    // The next delta builds on generation 1, without either refused delta's member.
    core.context_mut().fail_commits = false;
    let a = applied(core.on_message(
        generation(4, false, 1, vec![member_delta(&["11.0.0.251/32"], &[])]),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    assert_eq!(verdict_alone(&plugin, &from), Next::Drop);
    let other = ip_bytes(&tcp("11.0.0.251", "11.0.0.67", 40000, 5978));
    assert_eq!(verdict_alone(&plugin, &other), Next::NextFeature);
    let ipsets = plugin.show(Show::Ipsets, 0);
    assert!(!ipsets.contains("11.0.0.250/32"), "{ipsets}");
}

#[test]
fn previous_generation_marks_are_honoured_after_a_flip() {
    let (plugin, mut core) = seeded();
    let a = applied(core.on_message(
        generation(2, false, 1, vec![member_delta(&["11.0.0.199/32"], &[])]),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    // One connection per generation tag (a NIC allow leaves a flow).
    let denied: Vec<Vec<u8>> = (0..4)
        .map(|i| ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000 + i, 5979)))
        .collect();
    let marked = |generation: u64| PacketIn {
        bytes: &denied[generation as usize],
        sw_if_index: SwIfIndex(11),
        flow_id: NicMarks::default()
            .encode(Mark {
                gen_tag: gen_tag(generation),
                kind: MarkKind::Allow,
                index: 0,
            })
            .unwrap(),
        traced: false,
    };
    let mut slot = new_slot(EstablishedFlows::Keep);
    let mut out = FrameOut::default();
    let frame = [marked(1), marked(2), marked(3)];
    let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 0), &frame, &mut out);
    assert_eq!(
        out.iter().map(|o| o.next).collect::<Vec<_>>(),
        [Next::NextFeature, Next::NextFeature, Next::Drop]
    );
    assert_eq!((c.nic_accepted, c.nic_unknown_generation), (2, 1));
}

#[test]
fn rule_counters_are_shown_and_cleared() {
    let (plugin, _core) = seeded();
    let req = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let frame = [PacketIn {
        bytes: &req,
        sw_if_index: SwIfIndex(11),
        flow_id: 0,
        traced: false,
    }];
    let mut out = FrameOut::default();
    {
        let mut guard = plugin.workers.for_thread(0).unwrap();
        let slot = guard.slot().unwrap();
        let c = classify_batch::<false, true>(&mut ctx(&plugin, slot, 0), &frame, &mut out);
        plugin.counters.add(&c);
    }
    let shown = plugin.show(Show::Counters, 0);
    let len = req.len();
    assert!(
        shown.contains(&format!("[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],] packets 1 bytes {len}\n")),
        "{shown}"
    );
    assert!(shown.contains("allowed: 1 denied: 0"), "{shown}");
    assert!(plugin
        .show(Show::Flows { verbose: false }, 0)
        .starts_with("flows: 1\nthread 0: 1 flows\n"));
    plugin.clear_counters();
    let shown = plugin.show(Show::Counters, 0);
    assert!(shown.contains("] packets 0 bytes 0\n"), "{shown}");
    assert!(!shown.contains("packets 1 "), "{shown}");
    assert!(shown.contains("allowed: 0 denied: 0"), "{shown}");
    let flows = plugin.show(Show::Flows { verbose: true }, 0);
    assert!(flows.starts_with("flows: 0\n"), "{flows}");
    assert!(
        flows.contains("flow sampling for the NIC share: off\n"),
        "{flows}"
    );
    plugin.workers.set_sampling(true);
    let flows = plugin.show(Show::Flows { verbose: false }, 0);
    assert!(
        flows.contains("flow sampling for the NIC share: on"),
        "{flows}"
    );
}

mod reference {
    //! The node's batch verdicts equal the policy core's reference evaluator
    //! (`evaluate_workload` for the pod's interface, `evaluate_host` for the
    //! host-facing one) on the seed, for random frames, once the flow table's own
    //! allows (an earlier allowed packet of the same flow, or its reply) are modelled.

    use std::collections::HashMap;
    use std::net::IpAddr;

    use capo_classifier::parse_ip;
    use capo_policy::eval::{evaluate_host, evaluate_workload};
    use capo_policy::{Direction, Verdict};
    use proptest::prelude::*;

    use super::*;

    const ADDRS: &[&str] = &[
        "11.0.0.196",
        "11.0.0.67",
        "11.0.0.5",
        "172.18.0.2",
        "10.1.2.3",
        "fd20::58fd:b191:5c13:9cc3",
        "fd20::1cc0:b1ac:ad47:e7c2",
        "fc00:f853:ccd:e793::2",
        "2001:db8::1",
    ];
    const PORTS: &[u16] = &[0, 53, 5978, 5979, 40000];
    const PROTOS: &[u8] = &[6, 17, 132, 1, 58, 47];

    /// A packet: addresses of one family, a protocol, L4 fields (sometimes none: a
    /// later fragment).
    fn packet() -> impl Strategy<Value = Packet> {
        (
            0..ADDRS.len(),
            0..ADDRS.len(),
            0..PROTOS.len(),
            0..PORTS.len(),
            0..PORTS.len(),
            any::<u8>(),
            0u8..4,
        )
            .prop_map(|(s, d, pr, sp, dp, ty, frag)| {
                let src: IpAddr = ADDRS[s].parse().unwrap();
                let mut dst: IpAddr = ADDRS[d].parse().unwrap();
                if src.is_ipv4() != dst.is_ipv4() {
                    dst = src;
                }
                let protocol = Protocol(PROTOS[pr]);
                let l4 = if frag == 0 {
                    L4::None
                } else if protocol.has_ports() {
                    L4::Ports {
                        src: PORTS[sp],
                        dst: PORTS[dp],
                    }
                } else if protocol.is_icmp() {
                    L4::Icmp {
                        icmp_type: [0, 8, 3, 128, 129, ty][usize::from(ty % 6)],
                        code: ty % 3,
                    }
                } else {
                    L4::None
                };
                Packet {
                    src,
                    dst,
                    protocol,
                    l4,
                }
            })
    }

    /// The flow table's model: a flow is opened by an allowed classification; a packet
    /// belongs to it when it is on the same interface and either goes the same way or
    /// is the reverse going the other way.
    type FlowKey = (u32, u8, (IpAddr, u16), (IpAddr, u16));

    fn flow_key(sw: u32, p: &capo_classifier::ParsedPacket) -> (FlowKey, bool) {
        let s = (p.packet.src, p.flow_ports.0);
        let d = (p.packet.dst, p.flow_ports.1);
        let a_is_src = s <= d;
        let (a, b) = if a_is_src { (s, d) } else { (d, s) };
        ((sw, p.packet.protocol.0, a, b), a_is_src)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn batch_verdicts_equal_the_reference_evaluator(
            frame in prop::collection::vec(
                (packet(), 0usize..3, any::<bool>(), any::<bool>(), 0u8..10),
                1..48,
            ),
        ) {
            let (plugin, _core) = seeded();
            let g = plugin.cell.load().unwrap();
            let state = g.state();
            let tun3 = state
                .workloads()
                .iter()
                .find(|(_, w)| w.name == "tun3")
                .map(|(k, _)| k.clone())
                .unwrap();
            // Some packets are decided before the classifier's batch on a policed
            // interface: one in ten carries a NIC allow mark of the generation (its
            // flow is admitted), one in ten is cut short (malformed, dropped).
            let allow_mark = NicMarks::default()
                .encode(Mark { gen_tag: gen_tag(1), kind: MarkKind::Allow, index: 0 })
                .unwrap();
            // (bytes, sw_if_index, output arc, traced, packet, flow_id)
            let pkts: Vec<_> = frame
                .iter()
                .map(|(p, iface, output, traced, twist)| {
                    let sw = [11u32, 1, 7][*iface];
                    let mut bytes = ip_bytes(p);
                    if *twist == 1 {
                        bytes.truncate(22);
                    }
                    let flow_id = if *twist == 0 { allow_mark } else { 0 };
                    (bytes, sw, *output, *traced, *p, flow_id)
                })
                .collect();

            let mut slot = new_slot(EstablishedFlows::Keep);
            let mut flows: HashMap<FlowKey, (bool, Direction)> = HashMap::new();
            let mut out = FrameOut::default();
            for (bytes, sw, output, traced, p, flow_id) in &pkts {
                // Each packet in a frame of its own family and arc, in order; frames
                // of several packets are checked below against these verdicts.
                let dir_vpp_tx = *output;
                // tun3 and tap0 are not inverted: tx is Calico ingress.
                let dir = if dir_vpp_tx { Direction::Ingress } else { Direction::Egress };
                let reference = match sw {
                    11 => Some(evaluate_workload(state, &tun3, dir, p).unwrap().verdict),
                    1 => Some(evaluate_host(state, dir, p).verdict),
                    _ => None,
                };
                let expected = match parse_ip(bytes) {
                    _ if reference.is_none() => Verdict::Allow,
                    Err(_) => Verdict::Deny,
                    Ok(parsed) => {
                        prop_assert_eq!(parsed.packet, *p);
                        let (key, a_is_src) = flow_key(*sw, &parsed);
                        let in_flow = flows.get(&key).is_some_and(|(init_a, d)| {
                            (a_is_src == *init_a && dir == *d)
                                || (a_is_src != *init_a && dir != *d)
                        });
                        let verdict = match reference {
                            _ if in_flow || *flow_id != 0 => Verdict::Allow,
                            Some(v) => v,
                            None => Verdict::Allow,
                        };
                        if verdict == Verdict::Allow && !in_flow {
                            flows.insert(key, (a_is_src, dir));
                        }
                        verdict
                    }
                };
                let one = [PacketIn {
                    bytes,
                    sw_if_index: SwIfIndex(*sw),
                    flow_id: *flow_id,
                    traced: *traced,
                }];
                let mut c = ctx(&plugin, &mut slot, 0);
                let v6 = p.src.is_ipv6();
                match (v6, *output) {
                    (false, false) => classify_batch::<false, false>(&mut c, &one, &mut out),
                    (false, true) => classify_batch::<false, true>(&mut c, &one, &mut out),
                    (true, false) => classify_batch::<true, false>(&mut c, &one, &mut out),
                    (true, true) => classify_batch::<true, true>(&mut c, &one, &mut out),
                };
                let got = match out[0].next {
                    Next::NextFeature => Verdict::Allow,
                    Next::Drop => Verdict::Deny,
                };
                prop_assert_eq!(got, expected, "{:?} on {} {:?} mark {}", p, sw, dir, flow_id);
                if *traced && reference.is_some() {
                    let t = out.trace(0).unwrap().to_string();
                    prop_assert!(t.contains(if got == Verdict::Allow { " allow (" } else { " deny (" }), "{}", t);
                }
            }

            // The same packets as whole frames (one per family and arc, in order)
            // give the same verdicts as one at a time.
            let mut singles = new_slot(EstablishedFlows::Keep);
            let mut batched = new_slot(EstablishedFlows::Keep);
            for (v6, output) in [(false, false), (false, true), (true, false), (true, true)] {
                let frame: Vec<PacketIn<'_>> = pkts
                    .iter()
                    .filter(|(_, _, o, _, p, _)| p.src.is_ipv6() == v6 && *o == output)
                    .map(|(b, sw, _, t, _, flow_id)| PacketIn {
                        bytes: b,
                        sw_if_index: SwIfIndex(*sw),
                        flow_id: *flow_id,
                        traced: *t,
                    })
                    .collect();
                let run = |slot: &mut WorkerSlot, pkts: &[PacketIn<'_>], out: &mut FrameOut| {
                    let mut c = ctx(&plugin, slot, 0);
                    match (v6, output) {
                        (false, false) => classify_batch::<false, false>(&mut c, pkts, out),
                        (false, true) => classify_batch::<false, true>(&mut c, pkts, out),
                        (true, false) => classify_batch::<true, false>(&mut c, pkts, out),
                        (true, true) => classify_batch::<true, true>(&mut c, pkts, out),
                    }
                };
                // Each packet's next node, how it was decided, and whether it has a
                // trace record (traced packets only, in their own places).
                let seen = |out: &FrameOut, i: usize| (out[i].next, out[i].how, out.trace(i).is_some());
                // A frame admits the flows of the packets the NIC allowed first, then
                // decides the rest in order: one at a time in that order, each
                // compared in its own place.
                let order = (0..frame.len())
                    .filter(|&k| frame[k].flow_id != 0)
                    .chain((0..frame.len()).filter(|&k| frame[k].flow_id == 0));
                let mut one_by_one = vec![None; frame.len()];
                let mut counts = crate::batch::BatchCounts::default();
                for k in order {
                    let c = run(&mut singles, std::slice::from_ref(&frame[k]), &mut out);
                    counts.add(&c);
                    one_by_one[k] = Some(seen(&out, 0));
                }
                let one_by_one: Vec<_> = one_by_one.into_iter().flatten().collect();
                prop_assert_eq!(
                    one_by_one.iter().map(|s| s.2).collect::<Vec<_>>(),
                    frame.iter().map(|p| p.traced).collect::<Vec<_>>()
                );
                let c = run(&mut batched, &frame, &mut out);
                prop_assert_eq!((0..out.len()).map(|i| seen(&out, i)).collect::<Vec<_>>(), one_by_one);
                // One record per traced packet: the node writes each record it holds.
                prop_assert_eq!(out.traces().len(), frame.iter().filter(|p| p.traced).count());
                prop_assert_eq!(c, counts);
            }
        }
    }
}

fn hello(epoch: u64, bindings: &[(&str, &str)]) -> ToPlugin {
    ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "test".into(),
            epoch,
            interfaces_when_changed: false,
            interfaces_as_changes: false,
            bindings: bindings
                .iter()
                .map(|(e, v)| InterfaceBinding {
                    endpoint: e.to_string(),
                    vpp_interface: v.to_string(),
                })
                .collect(),
        })),
    }
}

fn hello_reply(reply: FromPlugin) -> capo_proto::capo::dataplane::v1::HelloReply {
    match reply.msg {
        Some(from_plugin::Msg::Hello(h)) => h,
        other => panic!("expected HelloReply, got {other:?}"),
    }
}

/// A policy that denies everything towards ts2 except TCP 5978 from ts1 (the seed),
/// then the same with 5979 instead: the two generations tell which one is in force.
fn seed_with_port(port: u16) -> Vec<pb::ToDataplane> {
    let mut msgs = seed_updates();
    for m in &mut msgs {
        if let Some(pb::to_dataplane::Payload::ActivePolicyUpdate(u)) = &mut m.payload {
            for r in u.policy.iter_mut().flat_map(|p| p.inbound_rules.iter_mut()) {
                for p in &mut r.dst_ports {
                    if p.first == 5978 {
                        p.first = i32::from(port);
                        p.last = i32::from(port);
                    }
                }
            }
        }
    }
    msgs
}

#[test]
fn work_after_the_reply_frees_released_generations_and_readies_the_next_state() {
    let (plugin, mut core) = seeded();
    core.after_reply();
    let from = |a: &str| ip_bytes(&tcp(a, "11.0.0.67", 40000, 5978));
    let first = Arc::downgrade(&plugin.cell.load().unwrap());
    for id in 2..=7u64 {
        let member = format!("11.0.0.{}/32", 200 + id);
        let a = applied(core.on_message(
            generation(id, false, id - 1, vec![member_delta(&[&member], &[])]),
            0,
        ));
        assert!(a.ok, "{}", a.error);
        if id == 3 {
            // This flip let go of generation 1: the core holds it until its reply
            // is written, then frees it.
            assert!(first.upgrade().is_some());
            core.after_reply();
            assert!(first.upgrade().is_none());
        } else {
            core.after_reply();
        }
        // Every member so far is allowed: each delta started from the state of the
        // generation before it.
        for m in 2..=id {
            let allowed = verdict_alone(&plugin, &from(&format!("11.0.0.{}", 200 + m)));
            assert_eq!(allowed, Next::NextFeature, "member {m} at {id}");
        }
    }
    let s = plugin.status.lock().unwrap().compiled;
    // From the third delta on, a retired snapshot is free after each reply, and
    // each delta found its state made ready from it. (The first two take the
    // copies made in the background after the full generation: ready after the
    // reply if the copier had finished by then, else waited for.)
    assert_eq!((s.replayed, s.state_copies), (6, 1), "{s:?}");
    assert!(s.ready_after_reply >= 4, "{s:?}");
}

#[test]
fn a_state_made_ready_for_one_run_is_not_taken_by_another() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    hello_reply(core.on_message(hello(100, &[]), 0));
    assert!(applied(core.on_message(generation(1, true, 0, seed_with_port(5978)), 0)).ok);
    assert!(applied(core.on_message(generation(2, false, 1, vec![]), 0)).ok);
    // Generation 2's state (port 5978) made ready for the next delta.
    core.after_reply();
    // Another run's generation 2 (port 5979), with no reply work between, then a
    // delta on it: that run's state, not the one made ready for the first run.
    core.on_disconnect(1);
    hello_reply(core.on_message(hello(200, &[]), 1));
    assert!(applied(core.on_message(generation(2, true, 0, seed_with_port(5979)), 1)).ok);
    let a = applied(core.on_message(generation(3, false, 2, vec![]), 1));
    assert!(a.ok, "{}", a.error);
    let rules = plugin.show(Show::Rules, 1);
    assert!(
        rules.contains("dst==5979") && !rules.contains("dst==5978"),
        "{rules}"
    );
    assert_eq!(plugin.status.lock().unwrap().compiled.ready_after_reply, 0);
}

#[test]
fn a_restarted_agent_replaces_the_policy_whatever_its_ids() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    // First run (epoch 100) pushes generations 1..3.
    assert_eq!(
        hello_reply(core.on_message(hello(100, &[]), 0)).active_generation,
        0
    );
    assert!(applied(core.on_message(generation(1, true, 0, seed_with_port(5978)), 0)).ok);
    assert!(applied(core.on_message(generation(2, false, 1, vec![]), 0)).ok);
    assert!(applied(core.on_message(generation(3, false, 2, vec![]), 0)).ok);
    core.on_disconnect(1);
    // Second run (epoch 200) numbers from 1 again: the plugin says it holds nothing
    // of this run, so the agent sends a full generation, which replaces.
    let h = hello_reply(core.on_message(hello(200, &[]), 2));
    assert_eq!((h.active_generation, h.active_epoch), (0, 100));
    let a = applied(core.on_message(generation(1, true, 0, seed_with_port(5979)), 2));
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    let rules = plugin.show(Show::Rules, 2);
    assert!(
        rules.contains("dst==5979") && !rules.contains("dst==5978"),
        "{rules}"
    );
    // A delta across runs is refused; one of this run applies.
    core.on_disconnect(3);
    let h = hello_reply(core.on_message(hello(200, &[]), 3));
    assert_eq!((h.active_generation, h.active_epoch), (1, 200));
    assert!(applied(core.on_message(generation(2, false, 1, vec![]), 3)).ok);
    // The old run coming back can never win, even with a larger id.
    core.on_disconnect(4);
    assert_eq!(
        hello_reply(core.on_message(hello(100, &[]), 4)).active_generation,
        0
    );
    let a = applied(core.on_message(generation(99, true, 0, seed_with_port(5978)), 4));
    assert!(!a.ok && a.error.contains("not newer"), "{}", a.error);
    let rules = plugin.show(Show::Rules, 4);
    assert!(rules.contains("dst==5979"), "{rules}");
    let gens = plugin.show(Show::Generations, 4);
    assert!(gens.contains("pushed by agent epoch 200"), "{gens}");
}

fn nic_share(
    generation: u64,
    rules: Vec<capo_proto::capo::dataplane::v1::FlowLayerRule>,
) -> ToPlugin {
    ToPlugin {
        msg: Some(to_plugin::Msg::NicShare(
            capo_proto::capo::dataplane::v1::NicShare {
                generation,
                rules,
                uplinks: vec!["tap0".into()],
            },
        )),
    }
}

fn share_applied(reply: FromPlugin) -> capo_proto::capo::dataplane::v1::NicShareApplied {
    match reply.msg {
        Some(from_plugin::Msg::NicShare(a)) => a,
        other => panic!("not NicShareApplied: {other:?}"),
    }
}

fn mark_rule(mark: u32) -> capo_proto::capo::dataplane::v1::FlowLayerRule {
    capo_proto::capo::dataplane::v1::FlowLayerRule {
        src_addr: vec![11, 0, 0, 196],
        src_mask: vec![255; 4],
        dst_addr: vec![11, 0, 0, 67],
        dst_mask: vec![255; 4],
        protocol: 6,
        protocol_exact: true,
        dst_port: 5978,
        dst_port_mask: 0xffff,
        action: capo_proto::capo::dataplane::v1::FlowLayerAction::Mark as i32,
        mark,
        ..Default::default()
    }
}

#[test]
fn a_nic_share_is_taken_for_the_held_generation_and_cleared_for_a_new_agent_run() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    hello_reply(core.on_message(hello(100, &[]), 0));
    // Before any generation: a share with rules is refused, an empty one is taken.
    let a = share_applied(core.on_message(nic_share(1, vec![mark_rule(0x40_0000)]), 0));
    assert_eq!(
        a.error,
        "the share was planned on generation 1, the plugin holds 0"
    );
    assert!(share_applied(core.on_message(nic_share(0, vec![]), 0))
        .error
        .is_empty());
    assert!(applied(core.on_message(generation(1, true, 0, seed_with_port(5978)), 0)).ok);
    let a = share_applied(core.on_message(nic_share(1, vec![mark_rule(0x40_0000)]), 0));
    assert!(a.error.is_empty(), "{}", a.error);
    assert_eq!(a.rules, 1);
    // The policed interface and the uplink.
    assert!(a.interfaces.iter().any(|i| i.sw_if_index == 11), "{a:?}");
    assert!(a.interfaces.iter().any(|i| i.interface == "tap0"), "{a:?}");
    // A bad rule refuses the whole share and changes nothing.
    let a = share_applied(core.on_message(nic_share(1, vec![mark_rule(0)]), 0));
    assert!(
        a.error.contains("rule 0: the action must be"),
        "{}",
        a.error
    );
    let shares = &core.context().shares;
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert_eq!(shares[1].rules.len(), 1);
    // The same run reconnecting keeps the share; another run clears it first.
    core.on_disconnect(1);
    hello_reply(core.on_message(hello(100, &[]), 1));
    assert_eq!(core.context().shares.len(), 2);
    core.on_disconnect(2);
    hello_reply(core.on_message(hello(200, &[]), 2));
    let shares = &core.context().shares;
    assert_eq!(shares.len(), 3);
    assert!(shares[2].rules.is_empty() && shares[2].targets.uplinks.is_empty());
}

#[test]
fn interfaces_that_appear_later_are_bound_and_policed() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tap0", 1)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert_eq!(a.unknown_interfaces, vec!["tun3".to_string()]);
    // Nothing changed in VPP: nothing to do.
    assert!(core.rebind(1).unwrap().is_empty());
    // The pod's interface appears.
    core.context_mut().create("tun3", 7);
    let changes = core.rebind(2).unwrap();
    assert_eq!(changes, vec!["tun3 -> tun3 sw_if_index 7".to_string()]);
    let g = plugin.cell.load().unwrap();
    assert_eq!(g.id(), 1, "the same generation, bound again");
    assert!(g.interface(SwIfIndex(7)).is_some());
    assert!(g.unknown_interfaces().is_empty());
    assert!(core.context().enabled.contains(&SwIfIndex(7)));
    // Policed for real: 5979 from ts1 is denied on its new index.
    let bytes = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5979));
    assert_eq!(verdict_at(&plugin, &bytes, SwIfIndex(7)), Next::Drop);
    // The views print the new index.
    assert!(plugin
        .show(Show::Interfaces, 2)
        .contains("[tun3 sw_if_index=7  addr=11.0.0.67"));
    let gens = plugin.show(Show::Generations, 3);
    assert!(
        gens.contains("bound again 1s ago: tun3 -> tun3 sw_if_index 7"),
        "{gens}"
    );
}

#[test]
fn a_recreated_interface_gets_its_features_back() {
    let (plugin, mut core) = seeded();
    assert!(core.context().enabled.contains(&SwIfIndex(11)));
    // VPP deletes the pod interface (clearing its features) and creates it again
    // with the same index.
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 11);
    assert!(!core.context().enabled.contains(&SwIfIndex(11)));
    let changes = core.rebind(5).unwrap();
    assert_eq!(
        changes,
        vec!["features restored on sw_if_index 11".to_string()]
    );
    assert!(core.context().enabled.contains(&SwIfIndex(11)));
    assert_eq!(plugin.cell.active_id(), 1);
    // Deleted for good: unbound, its index no longer policed.
    core.context_mut().delete("tun3");
    let changes = core.rebind(6).unwrap();
    assert_eq!(changes, vec!["tun3 unbound".to_string()]);
    let g = plugin.cell.load().unwrap();
    assert!(g.interface(SwIfIndex(11)).is_none());
    assert_eq!(g.unknown_interfaces(), ["tun3".to_string()]);
}

/// A pod's interface created again under another index (CalicoVPP makes a new tap)
/// moves its endpoint: the classifier's interface tables are redrawn, no program is
/// compiled, and the endpoint is policed at the new index as it was at the old one.
#[test]
fn a_moved_interface_is_reindexed_not_compiled() {
    let (plugin, mut core) = seeded();
    let from = |a: &str, port: u16| ip_bytes(&tcp(a, "11.0.0.67", 40000, port));
    let probes = [
        from("11.0.0.196", 5978),
        from("11.0.0.196", 5979),
        from("11.0.0.9", 5978),
    ];
    let before: Vec<Next> = probes
        .iter()
        .map(|b| verdict_at(&plugin, b, SwIfIndex(11)))
        .collect();
    assert!(before.contains(&Next::Drop) && before.contains(&Next::NextFeature));
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 12);
    let changes = core.rebind(5).unwrap();
    assert_eq!(changes, vec!["tun3 -> tun3 sw_if_index 12".to_string()]);
    let s = plugin.status.lock().unwrap().compiled;
    assert_eq!((s.full, s.reindexed), (1, 1), "{s:?}");
    let after: Vec<Next> = probes
        .iter()
        .map(|b| verdict_at(&plugin, b, SwIfIndex(12)))
        .collect();
    assert_eq!(after, before);
    let g = plugin.cell.load().unwrap();
    assert!(g.interface(SwIfIndex(11)).is_none());
    assert!(core.context().enabled.contains(&SwIfIndex(12)));
    assert!(plugin
        .show(Show::Interfaces, 6)
        .contains("[tun3 sw_if_index=12  addr=11.0.0.67"));
    // The next delta compiles on the moved tables.
    let a = applied(core.on_message(
        generation(2, false, 1, vec![member_delta(&["11.0.0.9/32"], &[])]),
        7,
    ));
    assert!(a.ok, "{}", a.error);
    let s = plugin.status.lock().unwrap().compiled;
    assert_eq!((s.full, s.incremental, s.reindexed), (1, 1, 1), "{s:?}");
    let g = plugin.cell.load().unwrap();
    assert!(g.interface(SwIfIndex(12)).is_some() && g.interface(SwIfIndex(11)).is_none());
}

/// VPP gives a freed index to the next interface it creates. When one re-binding
/// sees both (tun3 deleted and created again at 12, a pod's tun9 created at 11, where
/// tun3 was), the index stays policed but its interface is new and has no features:
/// they are enabled, so tun9's packets reach capo's nodes.
#[test]
fn a_reused_index_gets_its_features_in_a_rebinding() {
    let (plugin, mut core) = seeded();
    let a = applied(core.on_message(
        generation(2, false, 1, vec![seed_workload("default/ts9", "tun9")]),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    assert!(a.unknown_interfaces.contains(&"tun9".to_string()), "{a:?}");
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 12);
    core.context_mut().create("tun9", 11);
    assert!(!core.context().enabled.contains(&SwIfIndex(11)));
    let changes = core.rebind(5).unwrap();
    assert!(
        changes.contains(&"tun9 -> tun9 sw_if_index 11".to_string()),
        "{changes:?}"
    );
    assert!(core.context().enabled.contains(&SwIfIndex(11)));
    assert!(core.context().enabled.contains(&SwIfIndex(12)));
    let g = plugin.cell.load().unwrap();
    assert_eq!(
        g.interface(SwIfIndex(11)).map(|i| i.name.as_str()),
        Some("tun9")
    );
}

/// The same in a delta: VPP deleted tun3's interface and gave its index to tun9's
/// before the rebinder ran; the delta that removes tun3's endpoint and adds tun9's
/// polices index 11 for another endpoint, and enables the features the new
/// interface lacks.
#[test]
fn a_reused_index_gets_its_features_in_a_delta() {
    let (plugin, mut core) = seeded();
    core.context_mut().delete("tun3");
    core.context_mut().create("tun9", 11);
    let gone = remove_workload("default/ts2", "tun3");
    let a = applied(core.on_message(
        generation(
            2,
            false,
            1,
            vec![gone, seed_workload("default/ts9", "tun9")],
        ),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    let g = plugin.cell.load().unwrap();
    assert_eq!(
        g.interface(SwIfIndex(11)).map(|i| i.name.as_str()),
        Some("tun9")
    );
    assert!(core.context().enabled.contains(&SwIfIndex(11)));
}

/// A delta binds the endpoints it changes by look-up; one the look-up misses
/// (VPP's parser does not read every name its listing gives) is bound against the
/// list of every interface, and `show capo generations` counts both.
#[test]
fn a_name_the_look_up_misses_is_bound_from_the_list() {
    let (plugin, mut core) = seeded();
    core.context_mut().create("tun9", 12);
    core.context_mut().create("host-eth0.100", 13);
    core.context_mut().unparsed.insert("host-eth0.100".into());
    let binds = |plugin: &Plugin| {
        let s = plugin.status.lock().unwrap().delta_binds;
        (s.looked_up, s.listed)
    };
    let a = applied(core.on_message(
        generation(2, false, 1, vec![seed_workload("default/ts9", "tun9")]),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    assert_eq!(binds(&plugin), (1, 0));
    let a = applied(core.on_message(
        generation(
            3,
            false,
            2,
            vec![seed_workload("default/ts8", "host-eth0.100")],
        ),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    assert_eq!(binds(&plugin), (1, 1));
    let g = plugin.cell.load().unwrap();
    for (idx, name) in [(12, "tun9"), (13, "host-eth0.100")] {
        assert_eq!(
            g.interface(SwIfIndex(idx)).map(|i| i.name.as_str()),
            Some(name)
        );
        assert!(core.context().enabled.contains(&SwIfIndex(idx)));
    }
    assert!(a.unknown_interfaces.is_empty(), "{a:?}");
}

#[test]
fn explicit_bindings_from_the_agent_are_used_and_shown() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[
        ("host-veth-ts2", 4),
        ("tap0", 1),
        ("tun3", 11),
    ]));
    core.on_message(hello(1, &[("default/ts2", "host-veth-ts2")]), 0);
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    let tun3 = a.interfaces.iter().find(|i| i.endpoint == "tun3").unwrap();
    assert_eq!(
        (
            tun3.vpp_interface.as_str(),
            tun3.sw_if_index,
            tun3.how.as_str()
        ),
        ("host-veth-ts2", 4, "explicit")
    );
    let view = plugin.show(Show::Interfaces, 0);
    assert!(
        view.contains("[host-veth-ts2 sw_if_index=4  addr=11.0.0.67"),
        "{view}"
    );
    assert!(!view.contains("sw_if_index=11"), "{view}");
}

#[test]
fn no_generation_means_dropped_unless_configured_to_pass() {
    let bytes = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let pkt = [PacketIn {
        bytes: &bytes,
        sw_if_index: SwIfIndex(11),
        flow_id: 0,
        traced: true,
    }];
    for (mode, want) in [
        (crate::batch::Unclassified::Drop, Next::Drop),
        (crate::batch::Unclassified::Pass, Next::NextFeature),
    ] {
        let plugin = Plugin::new(PluginConfig {
            unclassified: mode,
            ..PluginConfig::default()
        });
        let mut slot = new_slot(EstablishedFlows::Keep);
        let mut out = FrameOut::default();
        let counts = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 0), &pkt, &mut out);
        assert_eq!(out[0].next, want, "{mode:?}");
        assert_eq!(counts.unclassified, 1);
        assert_eq!(out[0].how, How::Unclassified);
        if want == Next::Drop {
            assert_eq!(out[0].drop, Some(DropReason::Unclassified));
        }
    }
}

#[test]
fn the_control_socket_never_replaces_what_is_not_a_stale_socket() {
    let dir = std::env::temp_dir().join(format!("capo-vpp-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("capo.sock");
    std::fs::write(&path, b"not a socket").unwrap();
    let cfg = PluginConfig {
        socket: path.clone(),
        ..PluginConfig::default()
    };
    assert!(crate::control::bind(&cfg).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
    // Another instance's live socket is not taken over either.
    let live = crate::control::bind(&cfg).unwrap();
    let err = crate::control::bind(&cfg).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seed with its policy applied to ts2's egress too (`policyTypes: [Ingress,
/// Egress]`, no egress rule): ts2 may send nothing but replies of allowed flows.
fn seed_isolating_egress() -> Vec<pb::ToDataplane> {
    let mut msgs = seed_updates();
    for m in &mut msgs {
        if let Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(u)) = &mut m.payload {
            for t in u.endpoint.iter_mut().flat_map(|e| e.tiers.iter_mut()) {
                t.egress_policies = t.ingress_policies.clone();
            }
        }
    }
    msgs
}

/// A connection the NIC allowed (its SYN never met software) leaves a flow as one
/// software allowed: the pod's reply, which its egress policy denies, passes.
#[test]
fn replies_of_connections_the_nic_allowed_pass() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_isolating_egress()), 0));
    assert!(a.ok, "{}", a.error);
    let mut slot = new_slot(EstablishedFlows::Keep);
    let mut out = FrameOut::default();
    let syn = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 41000, 5978));
    let reply = ip_bytes_with(
        &tcp("11.0.0.67", "11.0.0.196", 5978, 41000),
        tcp_flags::SYN | tcp_flags::ACK,
    );
    let rx = |bytes| PacketIn {
        bytes,
        sw_if_index: SwIfIndex(11),
        flow_id: 0,
        traced: false,
    };
    // Without a flow, ts2's reply meets its egress policy: denied.
    classify_batch::<false, false>(&mut ctx(&plugin, &mut slot, 0), &[rx(&reply)], &mut out);
    assert_eq!(out[0].next, Next::Drop);
    // The NIC allows the SYN (a mark of the active generation) ...
    let marked = PacketIn {
        bytes: &syn,
        sw_if_index: SwIfIndex(11),
        flow_id: NicMarks::default()
            .encode(Mark {
                gen_tag: gen_tag(1),
                kind: MarkKind::Allow,
                index: 0,
            })
            .unwrap(),
        traced: false,
    };
    let c = classify_batch::<false, true>(&mut ctx(&plugin, &mut slot, 0), &[marked], &mut out);
    assert_eq!((c.nic_accepted, out[0].next), (1, Next::NextFeature));
    // ... and the reply is a flow-table hit.
    let c =
        classify_batch::<false, false>(&mut ctx(&plugin, &mut slot, 0), &[rx(&reply)], &mut out);
    assert_eq!(out[0].next, Next::NextFeature);
    assert_eq!(c.flow_hits, 1);
}

#[test]
fn chunks_of_a_generation_apply_together_when_the_last_arrives() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    let h = hello_reply(core.on_message(hello(1, &[]), 0));
    assert_eq!(h.max_chunk_bytes, (64 << 20) - (64 << 10));
    assert_eq!(h.max_generation_bytes, 1 << 30);
    let updates = seed_updates();
    let n = updates.len();
    let mut chunks = chunked(1, true, 0, updates, 3);
    assert!(chunks.len() >= 3, "{n} updates");
    let last = chunks.pop().unwrap();
    for (i, c) in chunks.into_iter().enumerate() {
        match core.on_message(c, 0).msg {
            Some(from_plugin::Msg::Chunk(r)) => {
                assert_eq!((r.generation, r.chunks), (1, i as u64 + 1));
                assert!(r.bytes > 0);
            }
            other => panic!("expected ChunkReceived, got {other:?}"),
        }
        // Nothing applies before the last chunk.
        assert_eq!(plugin.cell.active_id(), 0);
        assert!(core.context().commits.is_empty());
    }
    let a = applied(core.on_message(last, 0));
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(block(&plugin.show(Show::Interfaces, 0), "tun3"), SEED_TUN3);
}

#[test]
fn an_unfinished_chunked_generation_is_dropped_and_changes_nothing() {
    let (plugin, mut core) = seeded();
    let before = plugin.show(Show::Interfaces, 0);
    let mut chunks = chunked(2, true, 0, seed_with_port(5979), 4);
    // The agent reconnects midway: what was held is dropped, so the last chunk alone
    // is an incomplete full generation.
    let last = chunks.pop().unwrap();
    let first = chunks.remove(0);
    assert!(matches!(
        core.on_message(first, 0).msg,
        Some(from_plugin::Msg::Chunk(_))
    ));
    core.on_disconnect(0);
    let a = applied(core.on_message(last, 0));
    assert!(!a.ok, "the tail of a dropped generation must not apply");
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(plugin.show(Show::Interfaces, 0), before);

    // A chunk of another generation also drops what is held.
    let mut chunks = chunked(3, true, 0, seed_with_port(5979), 4);
    let last3 = chunks.pop().unwrap();
    assert!(matches!(
        core.on_message(chunks.remove(0), 0).msg,
        Some(from_plugin::Msg::Chunk(_))
    ));
    let a = applied(core.on_message(generation(4, true, 0, seed_with_port(5979)), 0));
    assert!(a.ok, "{}", a.error);
    let a = applied(core.on_message(last3, 0));
    assert!(!a.ok);
    assert_eq!(plugin.cell.active_id(), 4);
}

#[test]
fn a_generation_over_the_cap_is_refused_naming_it() {
    let plugin = Plugin::new(PluginConfig {
        max_frame_bytes: 1 << 20,
        max_generation_bytes: 1 << 20,
        ..PluginConfig::default()
    });
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(a.ok, "{}", a.error);
    let before = plugin.show(Show::Ipsets, 0);
    // 2 MiB of members in 4 chunks: the third passes the cap.
    let members: Vec<String> = (0..160_000u32)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let deltas: Vec<pb::ToDataplane> = members
        .chunks(40_000)
        .map(|m| member_delta(&m.iter().map(String::as_str).collect::<Vec<_>>(), &[]))
        .collect();
    let msgs = chunked(2, false, 1, deltas, 1);
    let mut refusal = None;
    for m in msgs {
        if let Some(from_plugin::Msg::Applied(a)) = core.on_message(m, 0).msg {
            refusal = Some(a);
            break;
        }
    }
    let a = refusal.expect("an answer");
    assert!(!a.ok);
    assert!(a.error.contains("the cap is 1048576 bytes"), "{}", a.error);
    assert!(a.error.contains("max-generation-mb"), "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    assert_eq!(plugin.show(Show::Ipsets, 0), before);
    let gens = plugin.show(Show::Generations, 0);
    assert!(gens.contains("the cap is"), "{gens}");
}

#[test]
fn saved_control_fuzz_corpus_changes_nothing_it_does_not_apply() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../host-agent/fuzz/corpus/plugin_control");
    let mut files = 0;
    let mut applied = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        applied += crate::fuzzing::control_core(&data)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files += 1;
    }
    assert!(files >= 10, "{files} inputs");
    // Some inputs are valid generations: the check covers applying too.
    assert!(applied >= 4, "{applied} applied");
}

/// A delta that changes no endpoint keeps the active generation's interface table:
/// VPP is not asked again (the rebinder keeps that table in step with VPP), so a
/// change the rebinder has not seen yet waits for it. A delta that updates an
/// endpoint binds again.
#[test]
fn deltas_without_endpoint_changes_keep_the_interface_table() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tap0", 1), ("tun3", 7)]));
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(a.ok, "{}", a.error);
    let first = plugin.cell.load().unwrap();
    // VPP recreates tun3 under another index; the rebinder has not run yet.
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 9);
    let a = applied(core.on_message(
        generation(2, false, 1, vec![member_delta(&["11.0.0.200/32"], &[])]),
        0,
    ));
    assert!(a.ok, "{}", a.error);
    let g = plugin.cell.load().unwrap();
    assert_eq!(g.id(), 2);
    assert!(g.shares_interfaces_with(&first));
    assert!(g.interface(SwIfIndex(7)).is_some() && g.interface(SwIfIndex(9)).is_none());
    // The delta is in force on the kept table: the new member reaches tun3's port.
    let bytes = ip_bytes(&tcp("11.0.0.200", "11.0.0.67", 40000, 5978));
    assert_eq!(verdict_at(&plugin, &bytes, SwIfIndex(7)), Next::NextFeature);
    // An endpoint update in a delta binds again and finds the new index.
    let workload = seed_updates()
        .into_iter()
        .find(|u| {
            matches!(
                u.payload,
                Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(_))
            )
        })
        .unwrap();
    let a = applied(core.on_message(generation(3, false, 2, vec![workload]), 0));
    assert!(a.ok, "{}", a.error);
    let g = plugin.cell.load().unwrap();
    assert!(!g.shares_interfaces_with(&first));
    assert!(g.interface(SwIfIndex(9)).is_some() && g.interface(SwIfIndex(7)).is_none());
}

/// An agent that keeps the interfaces it was sent gets them once per table: left out
/// (and said unchanged) while deltas keep the table, sent again when a rebinding
/// changes it and on a new connection. An agent that does not ask gets them always.
#[test]
fn interfaces_are_sent_when_changed_to_agents_that_keep_them() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tap0", 1), ("tun3", 7)]));
    let keeping = |epoch| ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "test".into(),
            epoch,
            interfaces_when_changed: true,
            ..Hello::default()
        })),
    };
    core.on_message(keeping(1), 0);
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(
        a.ok && !a.interfaces_unchanged && a.interfaces.len() == 2,
        "{a:?}"
    );
    let delta = |id| {
        generation(
            id,
            false,
            id - 1,
            vec![member_delta(&["11.0.0.200/32"], &[])],
        )
    };
    let a = applied(core.on_message(delta(2), 0));
    assert!(
        a.ok && a.interfaces_unchanged && a.interfaces.is_empty(),
        "{a:?}"
    );
    // VPP moves tun3; the rebinder republishes; the next reply carries the move.
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 9);
    assert!(!core.rebind(1).unwrap().is_empty());
    let a = applied(core.on_message(delta(3), 0));
    assert!(!a.interfaces_unchanged, "{a:?}");
    assert!(
        a.interfaces
            .iter()
            .any(|i| i.endpoint == "tun3" && i.sw_if_index == 9),
        "{a:?}"
    );
    let a = applied(core.on_message(delta(4), 0));
    assert!(a.interfaces_unchanged, "{a:?}");
    // A new connection starts over.
    core.on_disconnect(5);
    core.on_message(keeping(1), 5);
    let a = applied(core.on_message(delta(5), 5));
    assert!(!a.interfaces_unchanged && a.interfaces.len() == 2, "{a:?}");
    // An agent that does not keep them gets them every time.
    core.on_message(hello(1, &[]), 6);
    for id in 6..8 {
        let a = applied(core.on_message(delta(id), 6));
        assert!(!a.interfaces_unchanged && a.interfaces.len() == 2, "{a:?}");
    }
}

/// An agent that applies changes gets the whole list once per connection, then
/// only the endpoints that are new or moved and the names that left: applied in
/// turn to the list it holds, they give the active generation's table after every
/// generation, a rebinding's move included.
#[test]
fn interfaces_are_sent_as_changes_to_agents_that_apply_them() {
    let plugin = Plugin::new(PluginConfig::default());
    let mut core = plugin.control_core(FakeVpp::with(&[("tap0", 1), ("tun3", 7), ("tun9", 19)]));
    let applying = ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "test".into(),
            epoch: 1,
            interfaces_when_changed: true,
            interfaces_as_changes: true,
            ..Hello::default()
        })),
    };
    core.on_message(applying.clone(), 0);
    // The agent's side: endpoint → VPP index, as the replies say.
    let mut held: std::collections::BTreeMap<String, u32> = Default::default();
    let mut follow = |a: &Applied| {
        if !a.interfaces_changes && !a.interfaces_unchanged {
            held.clear();
        }
        for name in &a.interfaces_gone {
            held.remove(name);
        }
        for i in &a.interfaces {
            held.insert(i.endpoint.clone(), i.sw_if_index);
        }
        held.clone()
    };
    let table = |plugin: &Plugin| -> std::collections::BTreeMap<String, u32> {
        let g = plugin.cell.load().unwrap();
        g.interfaces()
            .iter()
            .map(|i| (i.name.clone(), i.sw_if_index.0))
            .collect()
    };
    let a = applied(core.on_message(generation(1, true, 0, seed_updates()), 0));
    assert!(
        a.ok && !a.interfaces_changes && a.interfaces.len() == 2,
        "{a:?}"
    );
    assert_eq!(follow(&a), table(&plugin));
    // A new endpoint: only it.
    let a = applied(core.on_message(
        generation(2, false, 1, vec![seed_workload("default/ts9", "tun9")]),
        0,
    ));
    assert!(a.ok && a.interfaces_changes, "{a:?}");
    assert_eq!(
        a.interfaces
            .iter()
            .map(|i| i.endpoint.as_str())
            .collect::<Vec<_>>(),
        ["tun9"]
    );
    assert!(a.interfaces_gone.is_empty(), "{a:?}");
    assert_eq!(follow(&a), table(&plugin));
    // Nothing moved: said unchanged.
    let a = applied(core.on_message(
        generation(3, false, 2, vec![member_delta(&["11.0.0.200/32"], &[])]),
        0,
    ));
    assert!(a.interfaces_unchanged && a.interfaces.is_empty(), "{a:?}");
    // VPP moves tun3; the rebinder republishes; the next reply carries the move.
    core.context_mut().delete("tun3");
    core.context_mut().create("tun3", 9);
    assert!(!core.rebind(1).unwrap().is_empty());
    // A refusal in between carries no interfaces (the agent takes none from it),
    // so the move is still sent with the next generation applied.
    let refused = applied(core.on_message(
        generation(4, false, 1, vec![member_delta(&["11.0.0.201/32"], &[])]),
        0,
    ));
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused.interfaces.is_empty()
            && !refused.interfaces_changes
            && !refused.interfaces_unchanged,
        "{refused:?}"
    );
    let a = applied(core.on_message(
        generation(4, false, 3, vec![member_delta(&["11.0.0.201/32"], &[])]),
        0,
    ));
    assert!(a.interfaces_changes, "{a:?}");
    assert_eq!(
        a.interfaces
            .iter()
            .map(|i| (i.endpoint.as_str(), i.sw_if_index))
            .collect::<Vec<_>>(),
        [("tun3", 9)]
    );
    assert_eq!(follow(&a), table(&plugin));
    // The endpoint leaves: its name only.
    let gone = remove_workload("default/ts9", "tun9");
    let a = applied(core.on_message(generation(5, false, 4, vec![gone]), 0));
    assert!(a.interfaces_changes && a.interfaces.is_empty(), "{a:?}");
    assert_eq!(a.interfaces_gone, ["tun9"]);
    assert_eq!(follow(&a), table(&plugin));
    // A new connection gets the whole list again, then changes.
    core.on_disconnect(6);
    core.on_message(applying, 6);
    let a = applied(core.on_message(
        generation(6, false, 5, vec![member_delta(&["11.0.0.202/32"], &[])]),
        6,
    ));
    assert!(!a.interfaces_changes && a.interfaces.len() == 2, "{a:?}");
    assert_eq!(follow(&a), table(&plugin));
    let a = applied(core.on_message(
        generation(7, false, 6, vec![seed_workload("default/ts9", "tun9")]),
        6,
    ));
    assert!(a.interfaces_changes && a.interfaces.len() == 1, "{a:?}");
    assert_eq!(follow(&a), table(&plugin));
}

/// A generation's bindings build its interface table again as it is.
#[test]
fn a_generations_bindings_build_its_interface_table_again() {
    let (plugin, _core) = seeded();
    let g = plugin.cell.load().unwrap();
    let again = crate::generation::Generation::build(
        g.id(),
        Arc::clone(g.snapshot()),
        Arc::clone(g.classifier_arc()),
        &g.bindings(),
    );
    let table = |g: &crate::generation::Generation| {
        g.interfaces()
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.vpp_name.clone(),
                    i.sw_if_index,
                    g.classifier_iface(i),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&again), table(&g));
    assert_eq!(again.unknown_interfaces(), g.unknown_interfaces());
    assert!(table(&g)
        .iter()
        .any(|(n, _, sw, _)| n == "tun3" && *sw == SwIfIndex(11)));
}

/// A seed workload endpoint, renamed `name` (a new endpoint when `workload` differs
/// from the seed's).
/// Felix's removal of the endpoint [`seed_workload`] makes.
fn remove_workload(workload: &str, name: &str) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::WorkloadEndpointRemove(
            pb::WorkloadEndpointRemove {
                id: match seed_workload(workload, name).payload {
                    Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(u)) => u.id,
                    _ => None,
                },
            },
        )),
    }
}

fn seed_workload(workload: &str, name: &str) -> pb::ToDataplane {
    let mut m = seed_updates()
        .into_iter()
        .find(|m| {
            matches!(
                m.payload,
                Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(_))
            )
        })
        .unwrap();
    if let Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(u)) = &mut m.payload {
        if let Some(id) = &mut u.id {
            id.workload_id = workload.to_string();
        }
        if let Some(e) = &mut u.endpoint {
            e.name = name.to_string();
        }
    }
    m
}

/// Endpoint deltas edit the builder's interface list in place: the cell holds the
/// active and the previous generation, so after the first changes each reply's
/// work finds the copy of two generations back free and brings it forward, and
/// the next delta edits it; at most the first two copy the list.
#[test]
fn endpoint_deltas_edit_a_spare_interface_list() {
    let (plugin, mut core) = seeded();
    core.after_reply();
    let before = core.builder().unwrap().interface_list_changes();
    for id in 2..=13u64 {
        let msg = if id % 2 == 0 {
            seed_workload("k8s/added", "tun9")
        } else {
            remove_workload("k8s/added", "tun9")
        };
        let a = applied(core.on_message(generation(id, false, id - 1, vec![msg]), 0));
        assert!(a.ok, "{}", a.error);
        core.after_reply();
        let shown = plugin.show(Show::Interfaces, 1);
        assert_eq!(shown.contains("tun9"), id % 2 == 0, "{id}: {shown}");
    }
    let after = core.builder().unwrap().interface_list_changes();
    let on_spare = after.on_spare.saturating_sub(before.on_spare);
    let copied = after.copied.saturating_sub(before.copied);
    let settled = after.settled.saturating_sub(before.settled);
    assert_eq!(on_spare + copied, 12, "one change a delta: {after:?}");
    assert!(copied <= 2, "{after:?}");
    assert!(settled >= 9, "brought forward after the replies: {after:?}");
}

/// A delta that adds, renames or removes endpoints binds only those: every other
/// endpoint keeps the very entry the generation before had, and the table is the
/// one binding every endpoint again gives.
#[test]
fn endpoint_deltas_bind_only_the_endpoints_they_change() {
    let (plugin, mut core) = seeded();
    for (name, index) in [("tun9", 19), ("tun5", 15), ("tun4", 14)] {
        core.context_mut()
            .interfaces
            .insert(name.into(), SwIfIndex(index));
    }
    let table = |g: &crate::generation::Generation| {
        let rows = g
            .interfaces()
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    i.vpp_name.clone(),
                    i.sw_if_index,
                    i.kind.clone(),
                    g.classifier_iface(i),
                )
            })
            .collect::<Vec<_>>();
        (rows, g.unknown_interfaces().to_vec())
    };
    // What binding every endpoint of `g`'s state gives.
    let bound_again = |core: &mut ControlCore<FakeVpp>, g: &crate::generation::Generation| {
        let policed = crate::generation::policed_interfaces(g.state(), "tap0");
        let vpp = crate::control::VppContext::interfaces(core.context_mut()).unwrap();
        let resolved =
            crate::binding::bind(policed.iter().map(|(n, k, _)| (n.as_str(), k)), &[], &vpp);
        crate::generation::Generation::build(
            g.id(),
            Arc::clone(g.snapshot()),
            Arc::clone(g.classifier_arc()),
            &resolved,
        )
    };
    let shared =
        |a: &crate::generation::Generation, b: &crate::generation::Generation, name: &str| {
            let find = |g: &crate::generation::Generation| {
                g.interfaces()
                    .iter()
                    .find(|i| i.name == name)
                    .cloned()
                    .unwrap()
            };
            Arc::ptr_eq(&find(a), &find(b))
        };
    let g1 = plugin.cell.load().unwrap();
    let steps = [
        // Two new endpoints: one VPP has, one it does not.
        vec![
            seed_workload("default/ts9", "tun9"),
            seed_workload("default/ts8", "tun8"),
        ],
        // One removed.
        vec![remove_workload("default/ts9", "tun9")],
        // The unknown one renamed to the interface VPP has.
        vec![seed_workload("default/ts8", "tun9")],
        // Two more after it, then it leaves and comes back (last in the state
        // then).
        vec![
            seed_workload("default/ts5", "tun5"),
            seed_workload("default/ts4", "tun4"),
        ],
        // One sent again as it is: bound again where it was, so nothing to tell.
        vec![seed_workload("default/ts5", "tun5")],
        vec![remove_workload("default/ts8", "tun9")],
        vec![seed_workload("default/ts8", "tun9")],
    ];
    let mut before = g1;
    for (k, updates) in steps.into_iter().enumerate() {
        let id = k as u64 + 2;
        let a = applied(core.on_message(generation(id, false, id - 1, updates), 0));
        assert!(a.ok, "{}", a.error);
        let g = plugin.cell.load().unwrap();
        assert_eq!(table(&g), table(&bound_again(&mut core, &g)), "step {id}");
        // tun3's endpoint did not change: its entry is the one before.
        assert!(shared(&before, &g, "tun3"), "step {id}");
        // What an agent is told: the delta's record, as walking both tables says.
        let seen = crate::generation::InterfacesSeen::of(&before);
        let told = |c: crate::generation::InterfaceChanges<'_>| {
            let changed: Vec<_> = c
                .changed
                .iter()
                .map(|i| (i.name.clone(), i.vpp_name.clone(), i.sw_if_index))
                .collect();
            (changed, c.gone)
        };
        let (by_delta, by_walk) = (
            seen.changes(&g).map(told),
            seen.changes_by_walk(&g).map(told),
        );
        assert_eq!(by_delta, by_walk, "step {id}");
        // An endpoint sent again as it was: nothing to tell.
        if id == 6 {
            assert_eq!(by_delta, Some((Vec::new(), Vec::new())), "step {id}");
        }
        // What VPP's features follow: the delta's record, as comparing the two
        // tables whole says.
        let indexes = g.index_changes_from(&before);
        assert!(indexes.is_some(), "step {id}");
        assert_eq!(
            indexes,
            Some(crate::control::index_changes(Some(&before), &g)),
            "step {id}"
        );
        before = g;
    }
    let g = plugin.cell.load().unwrap();
    assert_eq!(
        g.interface(SwIfIndex(19)).map(|i| i.name.as_str()),
        Some("tun9")
    );
    assert!(
        g.unknown_interfaces().is_empty(),
        "{:?}",
        g.unknown_interfaces()
    );
    let s = plugin.status.lock().unwrap().compiled;
    assert_eq!((s.full, s.incremental), (1, 7), "{s:?}");
    // The single removals, re-adding and sending again took their places from the
    // changed entries alone; two new endpoints at once, and a name VPP lacked
    // before, walked every endpoint.
    let binds = plugin.status.lock().unwrap().delta_binds;
    assert_eq!(binds.planned, 4, "{binds:?}");
}
