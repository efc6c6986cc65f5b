//! Standalone input end to end: manifests → the state Felix would build, through
//! capoctl and the agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{capoctl, scratch, seed_dir};

#[test]
fn seed_manifests_show_the_seed_view() {
    let dir = seed_dir();
    let (rc, out, err) = capoctl(&[
        "--resources",
        dir.to_str().unwrap(),
        "--node",
        "kind-worker2",
        "show",
        "--ifindex",
        "tun3=11",
        "capo",
        "interfaces",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains(
            "[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]
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
"
        ),
        "{out}"
    );
}

#[test]
fn every_seed_probe_gets_felix_verdict_from_manifests() {
    let scenario: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/felix/seed.scenario.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = seed_dir();
    for p in scenario["probes"].as_array().unwrap() {
        let mut args = vec![
            "trace".to_string(),
            "--resources".into(),
            dir.to_str().unwrap().into(),
            "--node".into(),
            "kind-worker2".into(),
            "--from".into(),
            p["src_ip"].as_str().unwrap().into(),
            "--to".into(),
            p["dst_ip"].as_str().unwrap().into(),
            "--proto".into(),
            p["proto"].as_str().unwrap().into(),
            "--json".into(),
        ];
        for (k, flag) in [
            ("sport", "--sport"),
            ("dport", "--dport"),
            ("icmp_type", "--icmp-type"),
            ("icmp_code", "--icmp-code"),
        ] {
            if let Some(v) = p[k].as_u64() {
                args.push(flag.into());
                args.push(v.to_string());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (rc, out, err) = capoctl(&args);
        assert_eq!(rc, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], p["expect"], "probe {p}: {out}");
    }
}

#[test]
fn trace_accepts_namespace_pod_names() {
    let dir = seed_dir();
    let d = dir.to_str().unwrap();
    let base = [
        "trace",
        "--resources",
        d,
        "--node",
        "kind-worker2",
        "--proto",
        "tcp",
        "--dport",
        "5978",
    ];
    let (rc, out, err) =
        capoctl(&[&base[..], &["--from", "default/ts1", "--to", "default/ts2"]].concat());
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("ALLOW\n"), "{out}");
    // IPv6 chosen by the other end.
    let (rc, out, _) = capoctl(
        &[
            &base[..],
            &["--from", "fd20::58fd:b191:5c13:9cc3", "--to", "default/ts2"],
        ]
        .concat(),
    );
    assert_eq!(rc, 0);
    assert!(out.starts_with("ALLOW\n"), "{out}");
    let (rc, _, err) = capoctl(
        &[
            &base[..],
            &["--from", "default/nope", "--to", "default/ts2"],
        ]
        .concat(),
    );
    assert_eq!(rc, 1);
    assert!(err.contains("no pod default/nope"), "{err}");
    let f =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/felix/seed.master.frames");
    let (rc, _, err) = capoctl(&[
        "trace",
        "--replay",
        f.to_str().unwrap(),
        "--from",
        "default/ts1",
        "--to",
        "11.0.0.67",
        "--proto",
        "tcp",
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("needs --resources"), "{err}");
}

#[test]
fn export_frames_replays_to_the_same_views() {
    let dir = seed_dir();
    let d = dir.to_str().unwrap();
    let out_dir = scratch("export");
    let frames = out_dir.join("seed.frames");
    let (rc, out, err) = capoctl(&[
        "--resources",
        d,
        "--node",
        "kind-worker2",
        "export-frames",
        frames.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("wrote 8 Felix messages"), "{out}");
    for view in ["interfaces", "ipsets", "rules"] {
        let (_, from_frames, _) =
            capoctl(&["replay", frames.to_str().unwrap(), "show", "capo", view]);
        let (_, from_manifests, _) = capoctl(&[
            "--resources",
            d,
            "--node",
            "kind-worker2",
            "show",
            "capo",
            view,
        ]);
        assert_eq!(from_frames, from_manifests, "{view}");
        assert!(!from_frames.is_empty());
    }
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn invalid_manifest_error_names_file_object_and_field() {
    let dir = scratch("invalid");
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: broken
  namespace: default
spec:
  podSelector: {}
  ingress:
    - ports:
        - protocol: TCP
          port: 99999
",
    )
    .unwrap();
    let (rc, _, err) = capoctl(&[
        "--resources",
        dir.to_str().unwrap(),
        "show",
        "capo",
        "rules",
    ]);
    assert_eq!(rc, 1);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("broken"), "{err}");
    assert!(err.contains("spec.ingress[0].ports[0].port"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn wait_for_log(log: &Path, needle: &str, count: usize) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!("{needle:?} not logged {count} times:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_watches_manifests_and_applies_changes() {
    let dir = scratch("watch");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for f in ["namespace.yaml", "nodes.yaml", "pods.yaml"] {
        std::fs::copy(seed_dir().join(f), manifests.join(f)).unwrap();
    }
    let log = dir.join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--resources",
            manifests.to_str().unwrap(),
            "--node",
            "kind-worker2",
            "--poll-interval",
            "50ms",
            "--api-socket",
            dir.join("api.sock").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(&log, "policy applied", 1);

    std::fs::copy(
        seed_dir().join("networkpolicy.yaml"),
        manifests.join("networkpolicy.yaml"),
    )
    .unwrap();
    let text = wait_for_log(&log, "policy applied", 2);
    assert!(
        text.contains("manifests changed; applying updates"),
        "{text}"
    );

    std::fs::write(manifests.join("zz-bad.yaml"), "kind: [unclosed").unwrap();
    let text = wait_for_log(&log, "keeping the current policy", 1);
    assert!(text.contains("zz-bad.yaml"), "{text}");

    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    while agent.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    if let Some(mut e) = agent.stderr.take() {
        e.read_to_string(&mut rest).ok();
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `capoctl trace` says when neighbour discovery is allowed before policy.
#[test]
fn trace_names_neighbour_discovery() {
    let seed = seed_dir();
    let args = |t: &'static str| {
        vec![
            "trace".to_string(),
            "--resources".into(),
            seed.display().to_string(),
            "--node".into(),
            "kind-worker2".into(),
            "--from".into(),
            "fd20::58fd:b191:5c13:9cc3".into(),
            "--to".into(),
            "fd20::1cc0:b1ac:ad47:e7c2".into(),
            "--proto".into(),
            "icmpv6".into(),
            "--icmp-type".into(),
            t.into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        capoctl(&a)
    };
    let (rc, out, err) = run(args("135"));
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("ALLOW"), "{out}");
    assert!(
        out.contains("ingress: allowed before policy: neighbour discovery (ICMPv6 type 135)"),
        "{out}"
    );
    let (_, out, _) = run(args("128"));
    assert!(out.starts_with("DENY"), "{out}");
}

/// `trace --proto` takes IANA names as iptables does, and `--family 6` picks pods'
/// IPv6 addresses.
#[test]
fn trace_takes_iana_protocol_names_and_a_family() {
    let seed = seed_dir();
    let seed = seed.to_str().unwrap();
    let base = [
        "--resources",
        seed,
        "--node",
        "kind-worker2",
        "trace",
        "--from",
        "default/ts1",
        "--to",
        "default/ts2",
    ];
    for name in ["gre", "esp", "ah", "ipip", "GRE", "47"] {
        let mut a = base.to_vec();
        a.extend(["--proto", name]);
        let (rc, out, err) = capoctl(&a);
        assert_eq!(rc, 0, "{name}: {err}");
        assert!(out.starts_with("DENY"), "{name}: {out}");
    }
    let mut a = base.to_vec();
    a.extend(["--proto", "nosuch"]);
    let (rc, _, err) = capoctl(&a);
    assert_ne!(rc, 0);
    assert!(
        err.contains("\"nosuch\" is not a protocol") && err.contains("IANA"),
        "{err}"
    );
    let mut a = base.to_vec();
    a.extend(["--proto", "tcp", "--dport", "5978", "--family", "6"]);
    let (rc, out, err) = capoctl(&a);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("ALLOW"), "{out}");
    // The family holds for both ends: an IPv4 address does not mix with --family 6.
    let (rc, _, err) = capoctl(&[
        "--resources",
        seed,
        "--node",
        "kind-worker2",
        "trace",
        "--from",
        "default/ts1",
        "--to",
        "11.0.0.67",
        "--proto",
        "tcp",
        "--family",
        "6",
    ]);
    assert_ne!(rc, 0);
    assert!(err.contains("11.0.0.67 is not an IPv6 address"), "{err}");
}

/// Without --node the node has no address: allow-from-host matches nothing and is not
/// printed (bare, `[rule#0;allow][]` would read as allow-all).
#[test]
fn without_a_node_allow_from_host_is_not_printed_as_allow_all() {
    let seed = seed_dir();
    let seed = seed.to_str().unwrap();
    let (rc, view, err) = capoctl(&["--resources", seed, "show", "capo", "interfaces"]);
    assert_eq!(rc, 0, "{err}");
    assert!(!view.contains("[policy#2]"), "{view}");
    assert!(!view.contains("[rule#0;allow][]"), "{view}");
    let (_, rules, _) = capoctl(&["--resources", seed, "show", "capo", "rules"]);
    assert!(!rules.contains("[rule#0;allow][]"), "{rules}");
    // With the node, the seed's policy#2 is there as before.
    let (_, view, _) = capoctl(&[
        "--resources",
        seed,
        "--node",
        "kind-worker2",
        "show",
        "capo",
        "interfaces",
    ]);
    assert!(view.contains("[policy#2]"), "{view}");
}

/// A FelixConfiguration value Felix would refuse is an error at load naming the file,
/// object and field; the agent applies nothing, keeps running, and applies the
/// manifests as soon as they are fixed, without a restart.
#[test]
fn an_invalid_felix_configuration_waits_for_a_fix() {
    let dir = scratch("felixcfg");
    let manifests = dir.join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    for f in [
        "namespace.yaml",
        "nodes.yaml",
        "pods.yaml",
        "networkpolicy.yaml",
    ] {
        std::fs::copy(seed_dir().join(f), manifests.join(f)).unwrap();
    }
    let felix = |proto: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\n\
             spec:\n  failsafeInboundHostPorts:\n    - {{protocol: \"{proto}\", port: 22}}\n"
        )
    };
    std::fs::write(manifests.join("felix.yaml"), felix("TCP x")).unwrap();
    let log = dir.join("agent.log");
    let api = dir.join("api.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--resources",
            manifests.to_str().unwrap(),
            "--node",
            "kind-worker2",
            "--poll-interval",
            "50ms",
            "--api-socket",
            api.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for_log(&log, "manifests are invalid: no policy applied", 1);
    assert!(
        text.contains("felix.yaml") && text.contains("failsafeInboundHostPorts[0]"),
        "{text}"
    );
    assert!(!text.contains("policy applied from manifests"), "{text}");
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent must keep running"
    );
    std::fs::write(manifests.join("felix.yaml"), felix("TCP")).unwrap();
    wait_for_log(&log, "policy applied from manifests", 1);
    let (rc, view, err) = common::capoctl(&[
        "--socket",
        api.to_str().unwrap(),
        "show",
        "capo",
        "interfaces",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(view.contains("rule#18"), "{view}");
    let _ = agent.kill();
    let _ = agent.wait();
    std::fs::remove_dir_all(&dir).ok();
}
