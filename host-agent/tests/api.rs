//! The agent's gRPC API through a real client over its unix socket, and capoctl's
//! commands that use it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capo_proto::capo::agent::v1 as api;

mod common;
use common::{capoctl_at as capoctl, seed_dir};

struct Agent {
    child: Child,
    dir: PathBuf,
    api: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str, extra: &[&str]) -> Agent {
    start_with(name, &seed_dir(), extra)
}

/// [`start`] on other manifests.
fn start_with(name: &str, seed: &std::path::Path, extra: &[&str]) -> Agent {
    let dir = std::env::temp_dir().join(format!("capo-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let api = dir.join("agent.sock");
    let mut args = vec![
        "--resources".to_string(),
        seed.to_str().unwrap().into(),
        "--node".into(),
        "kind-worker2".into(),
        "--api-socket".into(),
        api.to_str().unwrap().into(),
        "--ifindex".into(),
        "tun3=11".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent { child, dir, api };
    let start = Instant::now();
    // Ready once the API answers with a generation.
    loop {
        let (rc, out, _) = capoctl(&agent.api, &["generations"]);
        if rc == 0 && out.contains(", in sync)") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent not ready: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

/// The agent asks for transparent huge pages for its heap where the kernel and C
/// library allow, by executing itself again with glibc's tunable first thing: the
/// same process (the tunable is in its environment), logging once, serving as ever.
#[test]
fn the_agent_asks_for_huge_pages_for_its_heap_and_says_so_once() {
    // The agent inherits this process's environment and kernel.
    let expected = capo_heap::decide(&capo_heap::observe());
    let agent = start("heap", &[]);
    let log = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", agent.child.id())).unwrap();
    let tunables = environ
        .split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(log.matches("heap: ").count(), 1, "{log}");
    match expected {
        capo_heap::Decision::Reexecute(want) => {
            assert_eq!(tunables.as_deref(), Some(want.as_str()));
            assert!(
                log.contains("heap: transparent huge pages (glibc.malloc.hugetlb=1)"),
                "{log}"
            );
        }
        capo_heap::Decision::Keep(pages) => {
            eprintln!(
                "nothing to ask for on this machine ({pages}): checked that the agent says so"
            );
            assert!(log.contains(&format!("heap: {pages}")), "{log}");
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn views_generations_trace_and_offload_through_capoctl() {
    let a = start("capoctl", &[]);
    let (rc, out, err) = capoctl(&a.api, &["show", "capo", "interfaces"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]"),
        "{out}"
    );
    assert!(
        out.contains("tx:[rule#18;allow][proto==TCP,dst==5978,"),
        "{out}"
    );

    let (rc, out, _) = capoctl(&a.api, &["generations", "--json"]);
    assert_eq!(rc, 0);
    let g: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(g["source"], "manifests");
    assert_eq!(g["in_sync"], true);
    assert!(g["active"].as_u64().unwrap() >= 1);
    assert_eq!(g["history"][0]["outcome"], "committed");

    let (rc, out, _) = capoctl(
        &a.api,
        &[
            "trace",
            "--from",
            "11.0.0.196",
            "--to",
            "11.0.0.67",
            "--proto",
            "tcp",
            "--dport",
            "5978",
        ],
    );
    assert_eq!(rc, 0);
    assert!(out.starts_with("ALLOW\n"), "{out}");
    let (rc, out, _) = capoctl(
        &a.api,
        &[
            "trace",
            "--from",
            "11.0.0.196",
            "--to",
            "11.0.0.67",
            "--proto",
            "tcp",
            "--dport",
            "5979",
            "--json",
        ],
    );
    assert_eq!(rc, 0);
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["verdict"], "deny");

    let (rc, out, _) = capoctl(&a.api, &["offload"]);
    assert_eq!(rc, 0);
    assert!(out.contains("fallback-only"), "{out}");
}

#[test]
fn bad_requests_name_the_field() {
    let a = start("bad", &[]);
    rt().block_on(async {
        let ch = capo_agent::api::connect(&a.api).await.unwrap();
        let mut trace = api::trace_client::TraceClient::new(ch.clone());
        let e = trace
            .trace(api::TraceRequest {
                from: "not-an-ip".into(),
                to: "11.0.0.67".into(),
                protocol: "tcp".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("from:"), "{}", e.message());
        let e = trace
            .trace(api::TraceRequest {
                from: "11.0.0.196".into(),
                to: "11.0.0.67".into(),
                protocol: "tcp".into(),
                dst_port: Some(70000),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("dst_port:"), "{}", e.message());
        let e = trace
            .trace(api::TraceRequest {
                from: "11.0.0.196".into(),
                to: "11.0.0.67".into(),
                protocol: "carrier-pigeon".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("protocol:"), "{}", e.message());

        let mut views = api::views_client::ViewsClient::new(ch.clone());
        let e = views
            .get(api::ViewRequest {
                view: 0,
                verbose: false,
                with_lines: false,
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("view:"), "{}", e.message());

        let mut counters = api::counters_client::CountersClient::new(ch.clone());
        let e = counters
            .watch(api::WatchCountersRequest { interval_ms: 5 })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("interval_ms:"), "{}", e.message());

        // Inject is off unless enabled.
        let mut inject = api::inject_client::InjectClient::new(ch.clone());
        let e = inject
            .inject(api::InjectRequest {
                interface: "tun3".into(),
                direction: "ingress".into(),
                frames: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);

        // Health.
        let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}

#[test]
fn socket_is_mode_0660_and_refuses_other_users() {
    let a = start("perm", &[]);
    let mode = std::fs::metadata(&a.api).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // Only root can switch to another user to try the socket.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let runuser = Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists();
    if !is_root || !runuser {
        eprintln!("SKIP socket_is_mode_0660_and_refuses_other_users: needs root and runuser to try the socket as another user");
        return;
    }
    // `nobody` can reach the directory but not the socket.
    std::fs::set_permissions(&a.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_capoctl"))
        .arg("--socket")
        .arg(&a.api)
        .arg("generations")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("permission denied"), "{err}");
}

#[test]
fn prometheus_metrics_on_loopback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let a = start("metrics", &["--metrics", &addr, "--nic", "sim:mlx5"]);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("capo_active_generation "), "{body}");
    assert!(body.contains("capo_in_sync 1"), "{body}");
    assert!(
        body.contains("capo_commit_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("capo_nic_table_entries_used"), "{body}");
    assert!(
        body.contains("capo_nic_commits_total{kind=\"new-generation\"} 1"),
        "{body}"
    );
    drop(a);
}

#[test]
fn config_file_settings_with_flags_overriding() {
    let dir = std::env::temp_dir().join(format!("capo-api-{}-config", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seed = seed_dir();
    let from_file = dir.join("from-file.sock");
    let from_cli = dir.join("from-cli.sock");
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "resources = [{:?}]\nnode = \"kind-worker2\"\napi_socket = {:?}\n[ifindex]\ntun3 = 11\n",
            seed.to_str().unwrap(),
            from_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--api-socket")
        .arg(&from_cli)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let out = loop {
        let (rc, out, _) = capoctl(&from_cli, &["show", "capo", "interfaces"]);
        if rc == 0 {
            break out;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "agent not ready");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        out.contains("[tun3 sw_if_index=11  addr=11.0.0.67"),
        "{out}"
    );
    assert!(!from_file.exists(), "the flag overrides the file");

    // A bad key is refused with the file and key named.
    std::fs::write(&cfg, "no_such = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml") && err.contains("no_such"),
        "{err}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn frame(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let pkt = capo_policy::Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: capo_policy::Protocol::TCP,
        l4: capo_policy::L4::Ports {
            src: 40000,
            dst: dport,
        },
    };
    capo_classifier::build::frame(&pkt, capo_classifier::tcp_flags::SYN)
}

#[test]
fn injected_packets_move_the_counters() {
    let a = start("inject", &["--enable-inject"]);
    rt().block_on(async {
        let ch = capo_agent::api::connect(&a.api).await.unwrap();
        let mut inject = api::inject_client::InjectClient::new(ch.clone());
        let allowed = vec![frame("11.0.0.196", "11.0.0.67", 5978); 3];
        let r = inject
            .inject(api::InjectRequest {
                interface: "tun3".into(),
                direction: "ingress".into(),
                frames: allowed,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.allowed, r.denied), (3, 0));
        let r = inject
            .inject(api::InjectRequest {
                interface: "tun3".into(),
                direction: "ingress".into(),
                frames: vec![
                    frame("11.0.0.196", "11.0.0.67", 5979),
                    frame("11.0.0.5", "11.0.0.67", 5978),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.allowed, r.denied), (0, 2));
        assert_eq!(r.verdicts, vec!["deny", "deny"]);

        // Bad requests name the field.
        let e = inject
            .inject(api::InjectRequest {
                interface: "tun3".into(),
                direction: "sideways".into(),
                frames: vec![],
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("direction:"), "{}", e.message());
        let e = inject
            .inject(api::InjectRequest {
                interface: "tun3".into(),
                direction: "ingress".into(),
                frames: vec![vec![1, 2, 3]],
            })
            .await
            .unwrap_err();
        assert!(e.message().starts_with("frames[0]:"), "{}", e.message());

        let mut counters = api::counters_client::CountersClient::new(ch);
        let c = counters
            .get(api::CountersRequest {})
            .await
            .unwrap()
            .into_inner();
        let rule18 = c
            .rules
            .iter()
            .find(|r| r.rule_id == 18)
            .expect("rule#18 listed");
        // The first packet decides; the two others hit the flow table.
        assert_eq!(rule18.software_packets, 1, "{rule18:?}");
        let end_of_tier = c.rules.iter().find(|r| r.rule_id == 17).unwrap();
        assert_eq!(end_of_tier.software_packets, 2);
        let tun3_in = c
            .interfaces
            .iter()
            .find(|i| i.interface == "tun3" && i.direction == "ingress")
            .unwrap();
        assert_eq!((tun3_in.allowed_packets, tun3_in.denied_packets), (3, 2));
        let t = c.totals.unwrap();
        assert_eq!(
            (t.packets, t.allowed, t.denied, t.flow_table_hits),
            (5, 3, 2, 2)
        );
    });
    let (rc, out, _) = capoctl(&a.api, &["counters"]);
    assert_eq!(rc, 0);
    assert!(
        out.contains("totals: packets=5 allowed=3 denied=2"),
        "{out}"
    );
}

fn frame_from(sport: u16, dport: u16) -> Vec<u8> {
    let pkt = capo_policy::Packet {
        src: "11.0.0.196".parse().unwrap(),
        dst: "11.0.0.67".parse().unwrap(),
        protocol: capo_policy::Protocol::TCP,
        l4: capo_policy::L4::Ports {
            src: sport,
            dst: dport,
        },
    };
    capo_classifier::build::frame(&pkt, capo_classifier::tcp_flags::SYN)
}

#[test]
fn simulated_nic_takes_hot_flows_and_counters_add_up() {
    let a = start("nic", &["--enable-inject", "--nic", "sim:mlx5"]);
    rt().block_on(async {
        let ch = capo_agent::api::connect(&a.api).await.unwrap();
        let inject = api::inject_client::InjectClient::new(ch.clone());
        let send = |frames: Vec<Vec<u8>>| {
            let req = api::InjectRequest {
                interface: "tun3".into(),
                direction: "ingress".into(),
                frames,
            };
            let mut c = inject.clone();
            async move { c.inject(req).await.unwrap().into_inner() }
        };
        // Cold: software decides the first connection of each kind.
        let r = send(vec![frame_from(40000, 5978), frame_from(40001, 5979)]).await;
        assert_eq!((r.allowed, r.denied, r.nic_decided), (1, 1, 0));
        // Hot now: new connections (new source ports) are decided by the NIC.
        let r = send((0..10).map(|i| frame_from(41000 + i, 5978)).collect()).await;
        assert_eq!((r.allowed, r.denied, r.nic_decided), (10, 0, 10));
        let r = send((0..5).map(|i| frame_from(42000 + i, 5979)).collect()).await;
        assert_eq!((r.allowed, r.denied, r.nic_decided), (0, 5, 5));
        // The first flow again: an exact-flow entry in the NIC, credited to its rule.
        let r = send(vec![frame_from(40000, 5978); 5]).await;
        assert_eq!((r.allowed, r.denied, r.nic_decided), (5, 0, 5));

        let mut counters = api::counters_client::CountersClient::new(ch.clone());
        let c = counters
            .get(api::CountersRequest {})
            .await
            .unwrap()
            .into_inner();
        let r18 = c.rules.iter().find(|r| r.rule_id == 18).unwrap();
        let r17 = c.rules.iter().find(|r| r.rule_id == 17).unwrap();
        // NIC and software counters add up to the packets sent for each rule.
        assert_eq!(r18.software_packets + r18.nic_packets, 16, "{r18:?}");
        assert_eq!(r17.software_packets + r17.nic_packets, 6, "{r17:?}");
        assert_eq!(r18.nic_packets, 15);
        assert_eq!(r18.placement, api::Placement::Nic as i32);
        let t = c.totals.unwrap();
        assert_eq!((t.packets, t.nic_decided, t.software_decided), (22, 20, 2));

        let mut offload = api::offload_client::OffloadClient::new(ch.clone());
        let p = offload
            .get_plan(api::OffloadPlanRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(p.offload_available);
        assert!(p.nic.starts_with("sim:mlx5"));
        assert!(p.entries_used > 0 && p.entries_used <= p.entries_capacity);
        let r16 = p.rules.iter().find(|r| r.rule_id == 16).unwrap();
        assert_eq!(r16.placement, api::Placement::Software as i32);
        assert!(!r16.reason.is_empty());
        // The first plan went in as a generation; the re-plans on new flows (the
        // policy unchanged) in place, and the NIC kept deciding across them.
        let last = p.last_commit.clone().unwrap();
        assert_eq!(last.kind, "in-place", "{last:?}");
        assert_eq!(last.new_generation_total, 1, "{last:?}");
        assert!(last.in_place_total >= 1, "{last:?}");
        assert!(last.kept > 0 && last.refusal.is_empty(), "{last:?}");
        let (rc, text, _) = capoctl(&a.api, &["offload"]);
        assert_eq!(rc, 0);
        assert!(
            text.contains("last commit: in place (NIC generation 1)"),
            "{text}"
        );

        let mut trace = api::trace_client::TraceClient::new(ch);
        let t = trace
            .trace(api::TraceRequest {
                from: "11.0.0.196".into(),
                to: "11.0.0.67".into(),
                protocol: "tcp".into(),
                dst_port: Some(5978),
                src_port: Some(43000),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.verdict, "allow");
        assert_eq!(t.steps[0].decided_in, "nic");
        assert!(t.text.contains("[decided in nic]"), "{}", t.text);
    });
}

/// A pcap file holding `frames` (classic format, Ethernet link type).
fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    use pcap_file::pcap::{PcapPacket, PcapWriter};
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    for f in frames {
        w.write_packet(&PcapPacket::new(Duration::ZERO, f.len() as u32, f))
            .unwrap();
    }
    w.into_writer()
}

#[test]
fn dpdk_port_packets_are_classified_fallback_only() {
    let dir = std::env::temp_dir().join(format!("capo-api-{}-dpdk", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rx = dir.join("in.pcap");
    std::fs::write(
        &rx,
        pcap(&[
            frame("11.0.0.196", "11.0.0.67", 5978),
            frame("11.0.0.196", "11.0.0.67", 5979),
            frame("11.0.0.5", "11.0.0.67", 5978),
        ]),
    )
    .unwrap();
    let port = format!(
        "dpdk:net_pcap0,rx_pcap={},tx_pcap={}",
        rx.display(),
        dir.join("out.pcap").display()
    );
    let api_sock = dir.join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--resources",
            seed_dir().to_str().unwrap(),
            "--node",
            "kind-worker2",
        ])
        .arg("--nic")
        .arg(&port)
        .arg("--api-socket")
        .arg(&api_sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            // Built without DPDK: a clear refusal.
            let log = std::fs::read_to_string(dir.join("log")).unwrap();
            assert_eq!(st.code(), Some(2), "{log}");
            assert!(log.contains("built without DPDK support"), "{log}");
            let dpdk_build = cfg!(feature = "dpdk");
            assert!(!dpdk_build, "a dpdk build must run: {log}");
            break;
        }
        let (rc, out, _) = capoctl(&api_sock, &["counters", "--json"]);
        if rc == 0 {
            let dpdk_build = cfg!(feature = "dpdk");
            assert!(dpdk_build, "only a dpdk build can open the port");
            let c: serde_json::Value = serde_json::from_str(&out).unwrap();
            // Before the first generation the reply has no interfaces yet.
            let tun3 = c["interfaces"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|i| i["interface"] == "tun3" && i["direction"] == "ingress")
                })
                .cloned()
                .unwrap_or_default();
            if !tun3.is_null()
                && tun3["allowed_packets"].as_u64().unwrap()
                    + tun3["denied_packets"].as_u64().unwrap()
                    == 3
            {
                assert_eq!(tun3["allowed_packets"], 1, "{out}");
                assert_eq!(tun3["denied_packets"], 2, "{out}");
                let log = std::fs::read_to_string(dir.join("log")).unwrap();
                assert!(log.contains("fallback-only"), "{log}");
                let (_, plan, _) = capoctl(&api_sock, &["offload"]);
                assert!(plan.contains("fallback-only"), "{plan}");
                // The port and its probe, not "none": net_pcap has no rte_flow, so
                // the DROP canary is refused and nothing else is tried.
                assert!(plan.contains("nic dpdk:net_pcap0"), "{plan}");
                assert!(
                    plan.contains("the port's probe found no usable rte_flow"),
                    "{plan}"
                );
                let (_, json, _) = capoctl(&api_sock, &["offload", "--json"]);
                let j: serde_json::Value = serde_json::from_str(&json).unwrap();
                let probe = j["probe"].as_array().unwrap();
                assert_eq!(probe[0]["capability"], "drop", "{json}");
                assert_eq!(probe[0]["result"], "refused", "{json}");
                assert!(
                    probe[1..].iter().all(|f| f["result"] == "skipped"),
                    "{json}"
                );
                assert_eq!(j["offload_available"], false, "{json}");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "the port's packets were not classified: {out}\n{}",
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn api_socket_group_and_refusal_to_replace_a_regular_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("capo-api-{}-group", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A regular file where the socket should go is not removed.
    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args(["--resources", seed_dir().to_str().unwrap()])
        .arg("--api-socket")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // The group owns the socket (changing it needs root: the `daemon` group exists on
    // Debian).
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let gid = std::fs::read_to_string("/etc/group").ok().and_then(|g| {
        g.lines()
            .find(|l| l.starts_with("daemon:"))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|n| n.parse::<u32>().ok())
    });
    let (true, Some(gid)) = (is_root, gid) else {
        eprintln!("SKIP api socket group: needs root and a `daemon` group");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let sock = dir.join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--resources",
            seed_dir().to_str().unwrap(),
            "--api-group",
            "daemon",
        ])
        .arg("--api-socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o777, 0o660);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seed with `policyTypes: [Ingress, Egress]` and `--nic sim:mlx5`: once the NIC
/// allows new connections itself, their replies (which ts2's egress policy denies)
/// still pass, because a NIC allow leaves a flow as a software allow does.
#[test]
fn replies_of_nic_allowed_connections_pass() {
    let manifests = std::env::temp_dir().join(format!("capo-api-{}-egress-m", std::process::id()));
    let _ = std::fs::remove_dir_all(&manifests);
    std::fs::create_dir_all(&manifests).unwrap();
    for f in ["namespace.yaml", "nodes.yaml", "pods.yaml"] {
        std::fs::copy(seed_dir().join(f), manifests.join(f)).unwrap();
    }
    let np = std::fs::read_to_string(seed_dir().join("networkpolicy.yaml"))
        .unwrap()
        .replace("    - Ingress\n", "    - Ingress\n    - Egress\n");
    assert!(np.contains("- Egress"), "{np}");
    std::fs::write(manifests.join("networkpolicy.yaml"), np).unwrap();
    let a = start_with(
        "egress",
        &manifests,
        &["--enable-inject", "--nic", "sim:mlx5"],
    );
    let reply_to = |sport: u16| {
        let pkt = capo_policy::Packet {
            src: "11.0.0.67".parse().unwrap(),
            dst: "11.0.0.196".parse().unwrap(),
            protocol: capo_policy::Protocol::TCP,
            l4: capo_policy::L4::Ports {
                src: 5978,
                dst: sport,
            },
        };
        capo_classifier::build::frame(
            &pkt,
            capo_classifier::tcp_flags::SYN | capo_classifier::tcp_flags::ACK,
        )
    };
    rt().block_on(async {
        let ch = capo_agent::api::connect(&a.api).await.unwrap();
        let inject = api::inject_client::InjectClient::new(ch);
        let send = |dir: &str, frames: Vec<Vec<u8>>| {
            let req = api::InjectRequest {
                interface: "tun3".into(),
                direction: dir.into(),
                frames,
            };
            let mut c = inject.clone();
            async move { c.inject(req).await.unwrap().into_inner() }
        };
        // ts2 may not open connections (egress isolated, no egress rule).
        let r = send("egress", vec![reply_to(39999)]).await;
        assert_eq!((r.allowed, r.denied), (0, 1));
        // The first connection: software decides, and the NIC is planned from it.
        let r = send("ingress", vec![frame_from(40000, 5978)]).await;
        assert_eq!((r.allowed, r.nic_decided), (1, 0));
        let r = send("egress", vec![reply_to(40000)]).await;
        assert_eq!((r.allowed, r.denied), (1, 0), "software's flow");
        // A second connection: the NIC decides it; its reply passes too.
        let r = send("ingress", vec![frame_from(41000, 5978)]).await;
        assert_eq!((r.allowed, r.nic_decided), (1, 1));
        let r = send("egress", vec![reply_to(41000)]).await;
        assert_eq!(
            (r.allowed, r.denied),
            (1, 0),
            "the NIC-allowed connection's reply"
        );
    });
    drop(a);
    let _ = std::fs::remove_dir_all(&manifests);
}

/// A request body that is not the method's message is the caller's error:
/// `INVALID_ARGUMENT`, as docs/operations.md says, not `INTERNAL`.
#[test]
fn undecodable_requests_are_invalid_argument() {
    /// `TraceRequest` has a string at tag 1; a varint there does not decode.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotATraceRequest {
        #[prost(uint64, tag = "1")]
        from: u64,
    }
    let a = start("badbody", &[]);
    rt().block_on(async {
        let ch = capo_agent::api::connect(&a.api).await.unwrap();
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let codec: tonic_prost::ProstCodec<NotATraceRequest, api::TraceReply> =
            tonic_prost::ProstCodec::default();
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/capo.agent.v1.Trace/Trace");
        let err = grpc
            .unary(
                tonic::Request::new(NotATraceRequest { from: 7 }),
                path,
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("decode"), "{err:?}");
    });
    drop(a);
}

#[test]
fn running_agents_plan_as_testpmd_commands() {
    let agent = start("testpmd", &["--nic", "sim:mlx5:4096"]);
    let (rc, out, err) = capoctl(&agent.api, &["offload", "--testpmd", "--port", "3"]);
    assert_eq!(rc, 0, "{err}");
    let commands: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!commands.is_empty(), "{out}");
    assert!(
        commands.iter().all(|c| c.starts_with("flow create 3 ")),
        "{out}"
    );
    // The plan's rules in a generation group, then the dispatcher into it.
    assert!(
        commands
            .last()
            .is_some_and(|c| c.contains("group 0 ") && c.contains("actions jump group 1 / end")),
        "{out}"
    );
    // Without a NIC there is no plan to print.
    let plain = start("testpmd-none", &[]);
    let (rc, out, err) = capoctl(&plain.api, &["offload", "--testpmd"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("no NIC plan"), "{out}");
}
