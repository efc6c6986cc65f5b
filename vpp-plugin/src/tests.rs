//! End-to-end tests of the plugin's logic without VPP: the seed's Felix frames pushed as
//! generations, the views, the node's batch logic over plain byte buffers, the control
//! channel over a real unix socket.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use capo_felix::frame::{decode_to_dataplane_v3_32, FrameReader, FrameWriter};
use capo_policy::{Packet, Protocol, L4};
use capo_proto::capo::dataplane::v1::{
    from_plugin, to_plugin, Applied, FromPlugin, Generation as PbGeneration, Hello, ToPlugin,
};
use capo_proto::felix::v3_32 as pb;
use prost::Message;

use crate::batch::{classify_batch, BatchCtx, DropReason, Next, PacketIn};
use crate::classify::build::ip_bytes;
use crate::cli::Show;
use crate::config::{EstablishedFlows, PluginConfig};
use crate::control::{serve, ControlCore, FakeVpp};
use crate::flow::FlowTable;
use crate::generation::SwIfIndex;
use crate::mark::{tag_of, Mark};
use crate::trace::How;
use crate::Plugin;

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
    ToPlugin {
        msg: Some(to_plugin::Msg::Generation(PbGeneration {
            id,
            full,
            base_id,
            updates,
        })),
    }
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
    let mut flows = FlowTable::new(1024);
    let mut ctx = BatchCtx {
        cell: &plugin.cell,
        flows: &mut flows,
        mode: EstablishedFlows::Keep,
        now: 10,
    };
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
    let mut out = Vec::new();
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
    let t0 = out[0].trace.unwrap().to_string();
    assert_eq!(
        t0,
        "capo: sw_if_index 11 tx generation 1 allow (classified): tier default: [policy#12] \
         [rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]"
    );
    let t1 = out[1].trace.unwrap().to_string();
    assert!(
        t1.contains("deny (classified): tier default: end of tier"),
        "{t1}"
    );

    // The pod's reply (VPP rx on tun3, Calico egress) hits the flow the request made.
    let reply = ip_bytes(&tcp("11.0.0.67", "11.0.0.196", 5978, 40000));
    let c = classify_batch::<false, false>(&mut ctx, &[p(&reply, 11, true)], &mut out);
    assert_eq!((c.allowed, c.flow_hits), (1, 1));
    assert_eq!(out[0].how, How::FlowHit);
    assert!(out[0].trace.unwrap().to_string().contains("rule#18"));

    // NIC marks: an allow from a held generation skips classification even for a
    // packet policy denies; one from an unknown generation is counted and classified.
    let held = Mark::Allow {
        tag: tag_of(1),
        class: 0,
    }
    .encode();
    let unknown = Mark::Allow { tag: 9, class: 0 }.encode();
    let frame = [
        PacketIn {
            flow_id: held,
            ..p(&denied, 11, false)
        },
        PacketIn {
            flow_id: unknown,
            ..p(&denied, 11, false)
        },
    ];
    let c = classify_batch::<false, true>(&mut ctx, &frame, &mut out);
    assert_eq!(out[0].next, Next::NextFeature);
    assert_eq!(out[1].next, Next::Drop);
    assert_eq!(
        (c.nic_accepted, c.nic_unknown_generation, c.denied),
        (1, 1, 1)
    );
}

#[test]
fn revalidate_redecides_established_flows_on_a_new_generation() {
    let (plugin, mut core) = seeded();
    let mut flows = FlowTable::new(16);
    let req = ip_bytes(&tcp("11.0.0.196", "11.0.0.67", 40000, 5978));
    let pkt = [PacketIn {
        bytes: &req,
        sw_if_index: SwIfIndex(11),
        flow_id: 0,
        traced: false,
    }];
    let mut out = Vec::new();
    for mode in [EstablishedFlows::Keep, EstablishedFlows::Revalidate] {
        flows.clear();
        let mut ctx = BatchCtx {
            cell: &plugin.cell,
            flows: &mut flows,
            mode,
            now: 0,
        };
        classify_batch::<false, true>(&mut ctx, &pkt, &mut out);
        let id = plugin.cell.active_id();
        // A new generation without the policy: the tier is gone, profiles allow.
        let remove = pb::ToDataplane {
            sequence_number: 0,
            payload: Some(pb::to_dataplane::Payload::ActivePolicyRemove(
                pb::ActivePolicyRemove {
                    id: seed_updates().into_iter().find_map(|m| match m.payload {
                        Some(pb::to_dataplane::Payload::ActivePolicyUpdate(u)) => u.id,
                        _ => None,
                    }),
                },
            )),
        };
        let a = applied(core.on_message(generation(id + 1, false, id, vec![remove]), 0));
        // Removing a policy still referenced by the endpoint's tier is a violation in
        // the policy core; either way the flow table's behaviour is what is tested.
        let mut ctx = BatchCtx {
            cell: &plugin.cell,
            flows: &mut flows,
            mode,
            now: 1,
        };
        let c = classify_batch::<false, true>(&mut ctx, &pkt, &mut out);
        let expect_hit = mode == EstablishedFlows::Keep || !a.ok;
        assert_eq!(c.flow_hits == 1, expect_hit, "{mode:?} {a:?}");
    }
}

#[test]
fn fail_static_when_the_agent_leaves() {
    let (plugin, mut core) = seeded();
    let hello = ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "capo-agent 0.1.0".into(),
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
    let plugin = Plugin::new(PluginConfig::default());
    let core = Arc::new(Mutex::new(
        plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)])),
    ));
    let server_core = Arc::clone(&core);
    std::thread::spawn(move || serve(listener, server_core, |_| {}));

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
            })),
        });
        assert!(matches!(
            hello.msg,
            Some(from_plugin::Msg::Hello(ref h)) if h.active_generation == 0
        ));
        let a = applied(ask(generation(5, true, 0, seed_updates())));
        assert!(a.ok && a.generation == 5, "{a:?}");
        assert_eq!(plugin.cell.active_id(), 5);
    }

    // Garbage ends the connection, not the server; the generation stays.
    let mut raw = UnixStream::connect(&path).unwrap();
    std::io::Write::write_all(&mut raw, &[3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(buf.is_empty());
    assert_eq!(plugin.cell.active_id(), 5);
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
