//! The agent's VPP channel against the plugin's control logic, in process, over a real
//! unix socket (the plugin's VPP glue is replaced by its `FakeVpp` context).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use capo_agent::sinks::vpp::{VppChannel, VppError};
use capo_proto::felix::v3_32 as pb;
use capo_vpp_plugin::cli::Show;
use capo_vpp_plugin::control::{bind_path, serve, FakeVpp};
use capo_vpp_plugin::{Plugin, PluginConfig};

mod common;

fn seed() -> Vec<pb::ToDataplane> {
    common::seed_messages()
}

/// Removes a test's socket directory when the test ends (the thread serving the
/// socket ends with the test process).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plugin serving `name` in a fresh temp dir; returns the plugin, the socket path
/// and the directory's cleanup.
fn plugin(name: &str) -> (Arc<Plugin>, PathBuf, Cleanup) {
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-{name}", std::process::id()));
    let path = dir.join("capo.sock");
    let listener = bind_path(&path, 0o660, None).unwrap();
    let plugin = Arc::new(Plugin::new(PluginConfig {
        socket: path.clone(),
        ..PluginConfig::default()
    }));
    let core = Arc::new(Mutex::new(
        plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)])),
    ));
    let reader = Arc::clone(&plugin);
    std::thread::spawn(move || serve(listener, core, reader, |_| {}));
    (plugin, path, Cleanup(dir))
}

fn ipset_delta(id: &str, add: &str) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: id.to_string(),
                added_members: vec![add.to_string()],
                removed_members: vec![],
            },
        )),
    }
}

fn seed_ipset() -> String {
    seed()
        .into_iter()
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap()
}

#[test]
fn full_then_delta_then_reconnect() {
    let (plugin, path, _dir) = plugin("sync");
    let mut ch = VppChannel::connect(&path).unwrap();
    assert_eq!(ch.active_generation(), 0);
    assert!(!ch.plugin_version().is_empty());

    // Full on connect; InSync is appended by the channel when missing.
    let mut snapshot = seed();
    snapshot.pop();
    let a = ch.push_full(1, snapshot).unwrap();
    assert!(a.ok, "{}", a.error);
    assert!(a.unknown_interfaces.is_empty());
    assert_eq!(ch.active_generation(), 1);
    let view = plugin.show(Show::Interfaces, 0);
    assert!(
        view.contains("[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]"),
        "{view}"
    );

    // A delta on the active generation.
    let a = ch
        .push_delta(2, 1, vec![ipset_delta(&seed_ipset(), "11.0.0.197/32")])
        .unwrap();
    assert!(a.ok, "{}", a.error);
    assert!(plugin.show(Show::Ipsets, 0).contains("11.0.0.197/32"));

    // A reconnecting agent learns the active generation and sends a delta on it.
    drop(ch);
    let mut ch = VppChannel::connect(&path).unwrap();
    assert_eq!(ch.active_generation(), 2);
    let a = ch
        .sync(
            3,
            2,
            vec![ipset_delta(&seed_ipset(), "11.0.0.198/32")],
            || panic!("no snapshot needed"),
        )
        .unwrap();
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 3);
    // The plugin compiled the full generation once and each delta incrementally.
    let gens = plugin.show(Show::Generations, 0);
    assert!(
        gens.contains("compiled: 2 incremental, 0 re-indexed, 1 from scratch"),
        "{gens}"
    );
}

#[test]
fn stale_base_falls_back_to_full() {
    let (plugin, path, _dir) = plugin("stale");
    let mut ch = VppChannel::connect(&path).unwrap();
    // The agent thinks the plugin holds 7; it holds nothing: full snapshot instead.
    let a = ch
        .sync(8, 7, vec![ipset_delta("s:x", "10.0.0.1/32")], seed)
        .unwrap();
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 8);
    // A refused delta (wrong base) is reported, not an error, and changes nothing.
    let a = ch.push_delta(9, 5, vec![]).unwrap();
    assert!(
        !a.ok && a.error.contains("delta on generation 5"),
        "{}",
        a.error
    );
    assert_eq!(ch.active_generation(), 8);
    assert_eq!(plugin.cell.active_id(), 8);
}

#[test]
fn unknown_interfaces_are_reported() {
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-unknown", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("capo.sock");
    let listener = bind_path(&path, 0o660, None).unwrap();
    let plugin = Arc::new(Plugin::new(PluginConfig::default()));
    let core = Arc::new(Mutex::new(
        plugin.control_core(FakeVpp::with(&[("tap0", 1)])),
    ));
    let reader = Arc::clone(&plugin);
    std::thread::spawn(move || serve(listener, core, reader, |_| {}));
    let mut ch = VppChannel::connect(&path).unwrap();
    let a = ch.push_full(1, seed()).unwrap();
    assert!(a.ok);
    assert_eq!(a.unknown_interfaces, vec!["tun3".to_string()]);
}

#[test]
fn fail_static_after_the_agent_leaves() {
    let (plugin, path, _dir) = plugin("failstatic");
    let mut ch = VppChannel::connect(&path).unwrap();
    assert!(ch.push_full(1, seed()).unwrap().ok);
    drop(ch);
    // The server notices the disconnect asynchronously.
    let mut gens = String::new();
    for _ in 0..100 {
        gens = plugin.show(Show::Generations, capo_vpp_plugin::control::unix_now());
        if gens.contains("fail-static") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gens.contains("active generation: 1"), "{gens}");
    assert!(gens.contains("fail-static"), "{gens}");
}

#[test]
fn connect_to_nothing_is_a_typed_error() {
    let err = VppChannel::connect("/nonexistent/capo.sock").unwrap_err();
    assert!(matches!(err, VppError::Connect { .. }), "{err}");
}

/// The agent binary with `--dataplane vpp:SOCKET`: the plugin gets the manifests'
/// policy, then an update as a delta, and catches up after it was away.
#[test]
fn agent_binary_pushes_generations_to_the_plugin() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let (plugin, path, _dir) = plugin("agent");
    let dir = path.parent().unwrap().to_path_buf();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let seed_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed");
    for f in ["namespace.yaml", "nodes.yaml", "pods.yaml"] {
        std::fs::copy(seed_dir.join(f), manifests.join(f)).unwrap();
    }
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--resources",
            manifests.to_str().unwrap(),
            "--node",
            "kind-worker2",
        ])
        .args(["--poll-interval", "50ms", "--no-api"])
        .arg(format!("--dataplane=vpp:{}", path.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| {
        let start = Instant::now();
        loop {
            let view = plugin.show(Show::Interfaces, 0);
            if view.contains(needle) {
                return view;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{needle:?} never shown:\n{view}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Profiles only, then the NetworkPolicy arrives as updates.
    wait_for("[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]\n  profiles:");
    std::fs::copy(
        seed_dir.join("networkpolicy.yaml"),
        manifests.join("networkpolicy.yaml"),
    )
    .unwrap();
    let view = wait_for("tx:[rule#18;allow][proto==TCP,dst==5978,");
    assert!(view.contains("[policy#2]"), "{view}");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plugin that accepts the connection and never answers must delay only the VPP
/// sink: Felix's updates go on being applied, the daemon's lock stays free, the
/// embedded dataplane beside it follows every generation, and the generation is
/// reported pending, not applied.
#[test]
fn a_plugin_that_never_answers_stalls_nothing_else() {
    use capo_agent::core::daemon::{Daemon, FelixOptions};
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-mute", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("capo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Accepts, reads nothing, answers nothing.
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(conns);
    });
    drop(held);
    let vpp = capo_agent::sinks::vpp::VppSink::new(path.clone(), Vec::new());
    let handle = vpp.handle();
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    d.add_sink(Box::new(vpp));
    d.add_sink(Box::new(capo_agent::sinks::embedded::EmbeddedSink::new(
        Arc::new(Mutex::new(capo_agent::sinks::embedded::Embedded::new())),
    )));
    let daemon = Arc::new(Mutex::new(d));
    let started = Instant::now();
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &seed()));
    let ipset = seed_ipset();
    for i in 0..50u32 {
        let member = format!("10.9.{}.{}/32", i / 250, i % 250 + 1);
        assert!(capo_agent::inputs::felix_stream::feed(
            &daemon,
            &[ipset_delta(&ipset, &member)]
        ));
        // The daemon is never held across the plugin's silence.
        assert!(daemon.try_lock().is_ok(), "daemon locked after update {i}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "51 generations took {elapsed:?} with a silent plugin"
    );
    let d = daemon.lock().unwrap();
    assert_eq!(d.generation(), 51);
    // The embedded dataplane beside it answers (its counters), unhindered.
    assert!(d.counters().is_some());
    let status = handle.status();
    assert_eq!(status.wanted, 51);
    assert_eq!(status.confirmed, 0, "nothing was acknowledged");
    assert!(
        status.outcome(51).starts_with("pending"),
        "{}",
        status.outcome(51)
    );
    drop(d);
    // An API read of VPP's views fails in bounded time instead of hanging.
    let t = Instant::now();
    assert!(handle.show("interfaces", false).is_err());
    assert!(t.elapsed() < capo_agent::sinks::vpp::REQUEST_TIMEOUT + Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A generation the plugin refuses is reported refused (never applied) and retried
/// until the plugin takes it; then it is reported applied.
#[test]
fn a_refused_generation_is_reported_and_retried() {
    use capo_agent::core::daemon::{Daemon, FelixOptions};
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-retry", std::process::id()));
    let path = dir.join("capo.sock");
    let listener = bind_path(&path, 0o660, None).unwrap();
    let plugin = Arc::new(Plugin::new(PluginConfig::default()));
    let mut fake = FakeVpp::with(&[("tun3", 11), ("tap0", 1)]);
    fake.fail_commits = true;
    let core = Arc::new(Mutex::new(plugin.control_core(fake)));
    let (server_core, reader) = (Arc::clone(&core), Arc::clone(&plugin));
    std::thread::spawn(move || serve(listener, server_core, reader, |_| {}));

    let vpp = capo_agent::sinks::vpp::VppSink::new(path.clone(), Vec::new());
    let handle = vpp.handle();
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    d.add_sink(Box::new(vpp));
    let daemon = Arc::new(Mutex::new(d));
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &seed()));
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the refusal", &|| handle.status().last_error.is_some());
    let status = handle.status();
    assert_eq!(status.confirmed, 0);
    let outcome = status.outcome(1);
    assert!(
        outcome.contains("refused by the VPP plugin") && outcome.contains("retrying"),
        "{outcome}"
    );
    assert_eq!(plugin.cell.active_id(), 0, "nothing applied");
    // VPP takes it now: the retry (after 1 s, then 2 s, …) applies it.
    core.lock().unwrap().context_mut().fail_commits = false;
    wait("the retry", &|| handle.status().confirmed == 1);
    assert_eq!(plugin.cell.active_id(), 1);
    assert!(handle.status().outcome(1).starts_with("applied"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn ipset_update(id: &str, members: Vec<String>) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetUpdate(pb::IpSetUpdate {
            id: id.to_string(),
            members,
            r#type: pb::ip_set_update::IpSetType::Ip as i32,
        })),
    }
}

/// `n` distinct /32 members, different for each `set`.
fn members(set: u32, n: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(((set + 1) << 24) | i)))
        .collect()
}

/// Felix's ceiling reaches the plugin: five IP sets of `MaxIpsetSize` (1,048,576)
/// members, one of them the seed's (so the policy uses it), are one ~80 MB generation,
/// more than a frame; it goes in chunks and is applied whole.
#[test]
fn felix_sized_ip_sets_reach_the_plugin_in_chunks() {
    const MAX_IPSET_SIZE: u32 = 1 << 20;
    let (plugin, path, _dir) = plugin("felixsize");
    let mut ch = VppChannel::connect(&path).unwrap();
    let seed_set = seed_ipset();
    let mut updates = Vec::new();
    for m in seed() {
        match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) if u.id == seed_set => {
                let mut all = u.members.clone();
                all.extend(members(0, MAX_IPSET_SIZE - u.members.len() as u32));
                updates.push(ipset_update(&u.id, all));
                for set in 1..5 {
                    updates.push(ipset_update(
                        &format!("s:big{set}"),
                        members(set, MAX_IPSET_SIZE),
                    ));
                }
            }
            _ => updates.push(m),
        }
    }
    let bytes: usize = updates.iter().map(prost::Message::encoded_len).sum();
    assert!(
        bytes as u64 > capo_felix::frame::DEFAULT_MAX_FRAME_LEN,
        "{bytes} bytes"
    );
    let a = ch.push_full(1, updates).unwrap();
    assert!(a.ok, "{}", a.error);
    let active = plugin.cell.load().unwrap();
    let sets = active.state().ipsets();
    assert_eq!(sets.len(), 5);
    assert!(sets.values().all(|s| s.len() == MAX_IPSET_SIZE as usize));
    let view = plugin.show(Show::Interfaces, 0);
    assert!(view.contains("[tun3 sw_if_index=11"), "{view}");
    // A delta on it still goes as a delta.
    let a = ch
        .push_delta(2, 1, vec![ipset_delta(&seed_set, "11.0.0.197/32")])
        .unwrap();
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 2);
}

/// A plugin with small caps: chunks follow its frame cap, and a generation over its
/// generation cap is refused by the agent before sending, naming the cap.
#[test]
fn chunks_follow_the_plugins_caps() {
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-caps", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("capo.sock");
    let listener = bind_path(&path, 0o660, None).unwrap();
    let plugin = Arc::new(Plugin::new(PluginConfig {
        max_frame_bytes: 1 << 20,
        max_generation_bytes: 8 << 20,
        ..PluginConfig::default()
    }));
    let core = Arc::new(Mutex::new(
        plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)])),
    ));
    let reader = Arc::clone(&plugin);
    std::thread::spawn(move || serve(listener, core, reader, |_| {}));
    let mut ch = VppChannel::connect(&path).unwrap();
    let mut updates = seed();
    // ~2.8 MB: three times the frame cap.
    updates.insert(0, ipset_update("s:extra", members(1, 200_000)));
    let a = ch.push_full(1, updates.clone()).unwrap();
    assert!(a.ok, "{}", a.error);
    assert_eq!(plugin.cell.active_id(), 1);
    // ~14 MB: over the 8 MiB generation cap.
    updates[0] = ipset_update("s:extra", members(1, 1_000_000));
    let err = ch.push_full(2, updates).unwrap_err();
    assert!(
        matches!(err, VppError::TooLarge { cap: 8388608, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("max-generation-mb"), "{err}");
    assert_eq!(plugin.cell.active_id(), 1);
}

/// The agent asks to be sent the policed interfaces only when they change, and only
/// what changed: after a delta that leaves them (the plugin says "unchanged"), its
/// status still lists them; after an endpoint leaves, it lists the others.
#[test]
fn the_agent_keeps_the_interfaces_across_deltas() {
    use capo_agent::core::daemon::{Daemon, FelixOptions};
    use std::time::{Duration, Instant};
    let (plugin, path, _dir) = plugin("keeps-interfaces");
    let vpp = capo_agent::sinks::vpp::VppSink::new(path.clone(), Vec::new());
    let handle = vpp.handle();
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    d.add_sink(Box::new(vpp));
    let daemon = Arc::new(Mutex::new(d));
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let policed = || {
        let mut names: Vec<String> = handle
            .status()
            .interfaces
            .iter()
            .map(|i| format!("{}={}", i.endpoint, i.sw_if_index))
            .collect();
        names.sort();
        names
    };
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &seed()));
    wait("the full generation", &|| handle.status().confirmed >= 1);
    let first = policed();
    assert_eq!(first, ["tap0=1", "tun3=11"]);
    let confirmed = handle.status().confirmed;
    assert!(capo_agent::inputs::felix_stream::feed(
        &daemon,
        &[ipset_delta(&seed_ipset(), "11.0.0.199/32")]
    ));
    wait("the delta", &|| handle.status().confirmed > confirmed);
    assert!(plugin.show(Show::Ipsets, 0).contains("11.0.0.199/32"));
    assert_eq!(policed(), first);
    // The seed's endpoint leaves (the plugin sends it as gone): the agent's list
    // loses it.
    let removal = seed()
        .into_iter()
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::WorkloadEndpointUpdate(u)) => Some(pb::ToDataplane {
                sequence_number: 0,
                payload: Some(pb::to_dataplane::Payload::WorkloadEndpointRemove(
                    pb::WorkloadEndpointRemove { id: u.id },
                )),
            }),
            _ => None,
        })
        .unwrap();
    let confirmed = handle.status().confirmed;
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &[removal]));
    wait("the removal", &|| handle.status().confirmed > confirmed);
    assert_eq!(policed(), ["tap0=1"]);
}

/// `n` packets of the flow 11.0.0.196:40000 → 11.0.0.67:`dport` (TCP), towards the
/// seed's pod on tun3, through the plugin's node logic (sampled when the agent asks).
fn traffic_to_ts2(plugin: &Plugin, dport: u16, n: usize) {
    use capo_vpp_plugin::{classify_batch, BatchCtx, FrameOut, PacketIn, SwIfIndex};
    let pkt = capo_policy::Packet {
        src: "11.0.0.196".parse().unwrap(),
        dst: "11.0.0.67".parse().unwrap(),
        protocol: capo_policy::Protocol::TCP,
        l4: capo_policy::eval::L4::Ports {
            src: 40000,
            dst: dport,
        },
    };
    let bytes = capo_classifier::build::frame(&pkt, 0x10)[14..].to_vec();
    let mut guard = plugin.workers.for_thread(0).unwrap();
    let mut ctx = BatchCtx {
        cell: &plugin.cell,
        slot: guard.slot().unwrap(),
        marks: capo_vpp_plugin::mark::NicMarks::default(),
        now: capo_classifier::Timestamp::from_secs(1),
        unclassified: capo_vpp_plugin::batch::Unclassified::Drop,
        sample: plugin.workers.sampling(),
    };
    let frame: Vec<PacketIn<'_>> = (0..n)
        .map(|_| PacketIn {
            bytes: &bytes,
            sw_if_index: SwIfIndex(11),
            flow_id: 0,
            traced: false,
        })
        .collect();
    for chunk in frame.chunks(64) {
        let mut out = FrameOut::default();
        classify_batch::<false, true>(&mut ctx, chunk, &mut out);
    }
}

/// With a NIC share (`--nic vpp-flow`): each generation's share follows the
/// generation, and before a new generation is pushed the old share leaves the NIC
/// (an empty share, while the plugin still holds the old generation).
#[test]
fn the_nic_share_follows_each_generation_the_old_one_out_first() {
    use capo_agent::core::daemon::{Daemon, FelixOptions};
    use capo_agent::sinks::vpp::{NicShareConfig, VppSink};
    use std::time::{Duration, Instant};
    let dir = std::env::temp_dir().join(format!("capo-agent-vpp-{}-share", std::process::id()));
    let path = dir.join("capo.sock");
    let listener = bind_path(&path, 0o660, None).unwrap();
    let plugin = Arc::new(Plugin::new(PluginConfig::default()));
    let core = Arc::new(Mutex::new(plugin.control_core(FakeVpp::with(&[
        ("tun3", 11),
        ("tap0", 1),
        ("uplink0", 3),
    ]))));
    let (server_core, reader) = (Arc::clone(&core), Arc::clone(&plugin));
    std::thread::spawn(move || serve(listener, server_core, reader, |_| {}));

    let share = NicShareConfig {
        capacity: 64,
        uplinks: vec!["uplink0".into(), "eth9".into()],
    };
    let vpp = VppSink::with_nic_share(path.clone(), Vec::new(), Some(share));
    let handle = vpp.handle();
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    d.add_sink(Box::new(vpp));
    let daemon = Arc::new(Mutex::new(d));
    let shares = || core.lock().unwrap().context().shares.clone();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                shares()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let seed = seed();
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &seed));
    // Before any traffic: an empty share; the agent's first read turns sampling on.
    wait("generation 1's first share", &|| {
        shares().iter().any(|s| s.generation == 1)
    });
    assert!(shares().iter().all(|s| s.rules.is_empty()));
    wait("sampling", &|| plugin.workers.sampling());
    // Traffic to 5978 (allowed) and 5980 (denied now, allowed by generation 2).
    traffic_to_ts2(&plugin, 5978, 320);
    traffic_to_ts2(&plugin, 5980, 320);
    wait("generation 1's share from the samples", &|| {
        shares()
            .iter()
            .any(|s| s.generation == 1 && !s.rules.is_empty())
    });
    let first = shares()
        .into_iter()
        .find(|s| s.generation == 1 && !s.rules.is_empty())
        .unwrap();
    // The sampled flow makes the seed's allow of TCP 5978 from ts1 hot, its IPv4
    // member (the IPv6 one saw no traffic): one mark, after the generation was
    // published, to the policed interface and the known uplink.
    assert_eq!(first.rules.len(), 1, "{first:?}");
    assert_eq!(first.rules[0].dst_port, (5978, 0xffff));
    assert_eq!(first.after_commits, 1);
    assert_eq!(first.targets.uplinks, vec!["uplink0", "eth9"]);
    assert!(first
        .targets
        .policed
        .contains(&capo_vpp_plugin::SwIfIndex(11)));
    let marks: Vec<u32> = first
        .rules
        .iter()
        .map(|r| match r.action {
            capo_vpp_plugin::share::FlowAction::Mark(m) => m,
            capo_vpp_plugin::share::FlowAction::Drop => panic!("a drop: {r:?}"),
        })
        .collect();
    for m in &marks {
        let mark = capo_vpp_plugin::mark::NicMarks::default()
            .decode(*m)
            .unwrap();
        assert_eq!(mark.gen_tag, capo_vpp_plugin::mark::gen_tag(1));
    }
    // The empty first share already set generation 1: wait for the sampled one's
    // acknowledgement (the plugin holds it before the agent's status says so).
    wait("the status", &|| {
        let s = handle.status();
        s.share_generation == 1 && s.share_rules == 1
    });
    let status = handle.status();
    assert_eq!(status.share_rules, 1);
    // Every policed interface and the known uplink report; `eth9` is unknown.
    assert!(
        status.flow_layer.iter().any(|i| i.interface == "uplink0"),
        "{status:?}"
    );

    // The allowed port changes: generation 2.
    let mut update = seed
        .iter()
        .find(|m| {
            matches!(
                m.payload,
                Some(pb::to_dataplane::Payload::ActivePolicyUpdate(_))
            )
        })
        .unwrap()
        .clone();
    if let Some(pb::to_dataplane::Payload::ActivePolicyUpdate(u)) = update.payload.as_mut() {
        for r in &mut u.policy.as_mut().unwrap().inbound_rules {
            for p in &mut r.dst_ports {
                if p.first == 5978 {
                    (p.first, p.last) = (5980, 5980);
                }
            }
        }
    }
    assert!(capo_agent::inputs::felix_stream::feed(&daemon, &[update]));
    wait("generation 2's share", &|| {
        shares().iter().any(|s| s.generation == 2)
    });
    let all = shares();
    let second = all.iter().position(|s| s.generation == 2).unwrap();
    let held = all.iter().position(|s| !s.rules.is_empty()).unwrap();
    // Between the last share with marks and generation 2's: an empty share of
    // generation 1, while the plugin still held generation 1 (one commit so far).
    let withdrawal = all[held..second]
        .iter()
        .rev()
        .find(|s| s.rules.is_empty())
        .unwrap_or_else(|| panic!("no withdrawal before generation 2: {all:?}"));
    assert_eq!((withdrawal.generation, withdrawal.after_commits), (1, 1));
    assert_eq!(all[second].after_commits, 2);
    assert_eq!(all[second].rules.len(), 1, "{all:?}");
    assert_eq!(all[second].rules[0].dst_port, (5980, 0xffff));
    assert!(all[second].rules.iter().all(|r| !first.rules.contains(r)));
    let _ = std::fs::remove_dir_all(&dir);
}
