//! The seed scenario end to end: Felix's own frames (both schemas) → views identical
//! to the seed document, and every probe of the scenario gets Felix's verdict.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use capo_agent::inputs::replay::{replay_file, ReplayOptions};
use capo_agent::views::{packet, View};
use capo_policy::{trace, Verdict};

mod common;
use common::{capoctl, fixture, SEED_TUN3_AFTER};

fn seed_options() -> ReplayOptions {
    ReplayOptions {
        interface_indexes: vec![("tun3".into(), 11)],
        ..ReplayOptions::default()
    }
}

fn tun3_block(interfaces: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in interfaces.lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[tun3 ");
        }
        if inside {
            out += line;
            out.push('\n');
        }
    }
    out
}

#[test]
fn seed_frames_of_both_schemas_give_the_seed_view() {
    for (file, schema) in [
        ("seed.master.frames", "v3.32"),
        ("seed.v3.31.frames", "v3.31"),
    ] {
        let r = replay_file(&fixture(file), &seed_options()).unwrap();
        assert!(r.in_sync, "{file}: InSync not reached");
        assert_eq!(r.schema.to_string(), schema, "{file}: schema detection");
        let view = View::Interfaces.render(&r.state, &r.ids);
        assert!(view.starts_with("Interfaces with policies configured:\n"));
        assert_eq!(tun3_block(&view), SEED_TUN3_AFTER, "{file}");
        let ipsets = View::Ipsets.render(&r.state, &r.ids);
        assert!(ipsets.contains("[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,]\n"));
        let policies = View::Policies { verbose: false }.render(&r.state, &r.ids);
        assert!(
            policies.contains("[policy#12] rx-rules:0 tx-rules:1\n"),
            "{policies}"
        );
        assert!(policies.contains("[policy#10] rx-rules:1 tx-rules:1\n"));
    }
}

#[test]
fn every_scenario_probe_gets_felix_verdict() {
    let scenario: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("seed.scenario.json")).unwrap())
            .unwrap();
    let probes = scenario["probes"].as_array().unwrap();
    assert!(probes.len() >= 10);
    for file in ["seed.master.frames", "seed.v3.31.frames"] {
        let r = replay_file(&fixture(file), &seed_options()).unwrap();
        for p in probes {
            let num = |k: &str| p[k].as_u64();
            let pkt = packet(
                p["src_ip"].as_str().unwrap().parse().unwrap(),
                p["dst_ip"].as_str().unwrap().parse().unwrap(),
                p["proto"].as_str().unwrap(),
                num("sport").map(|v| v as u16),
                num("dport").map(|v| v as u16),
                num("icmp_type").map(|v| v as u8),
                num("icmp_code").map(|v| v as u8),
            )
            .unwrap();
            let expect = match p["expect"].as_str().unwrap() {
                "allow" => Verdict::Allow,
                _ => Verdict::Deny,
            };
            let t = trace(&r.state, &pkt);
            assert_eq!(t.verdict, expect, "{file}: probe {p}\ntrace: {t:?}");
        }
    }
}

#[test]
fn capoctl_replay_prints_the_named_view() {
    let f = fixture("seed.master.frames");
    let (rc, out, err) = capoctl(&[
        "replay",
        f.to_str().unwrap(),
        "--ifindex",
        "tun3=11",
        "show",
        "capo",
        "interfaces",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(tun3_block(&out), SEED_TUN3_AFTER);
    assert!(
        !out.contains("vpp#"),
        "a single view prints without a heading"
    );

    let (rc, out, _) = capoctl(&["replay", f.to_str().unwrap()]);
    assert_eq!(rc, 0);
    for v in View::ALL {
        assert!(out.contains(&format!("vpp# {}\n", v.command())), "{out}");
    }
}

#[test]
fn capoctl_trace_text_and_json() {
    let f = fixture("seed.v3.31.frames");
    let f = f.to_str().unwrap();
    let base = [
        "trace",
        "--replay",
        f,
        "--from",
        "11.0.0.196",
        "--to",
        "11.0.0.67",
        "--proto",
        "tcp",
    ];
    let (rc, out, err) = capoctl(&[&base[..], &["--dport", "5978"]].concat());
    assert_eq!(rc, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ALLOW"));
    let step = lines.next().unwrap();
    assert!(step.contains("tun3"), "{step}");
    assert!(step.contains("ingress"), "{step}");
    assert!(
        step.contains("[policy#12] [rule#18;allow][proto==TCP,dst==5978,"),
        "{step}"
    );

    let (rc, out, _) = capoctl(&[&base[..], &["--dport", "5979", "--json"]].concat());
    assert_eq!(rc, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["steps"][0]["interface"], "tun3");
    assert_eq!(v["steps"][0]["outcome"]["decider"]["kind"], "end-of-tier");
    assert!(v["steps"][0]["rule"]
        .as_str()
        .unwrap()
        .contains("[rule#17;deny][]"));
}

#[test]
fn capoctl_demo_walks_through_the_seed() {
    let (rc, out, err) = capoctl(&["demo"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains(SEED_TUN3_AFTER), "{out}");
    // Before the policy: profiles only.
    assert!(out.contains(
        "[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]\n  profiles:\n"
    ));
}

#[test]
fn bad_input_gets_an_error_naming_file_and_frame() {
    let dir = std::env::temp_dir().join(format!("capo-seed-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(fixture("seed.master.frames")).unwrap();

    // Truncated in the middle of a frame body.
    let cut = dir.join("truncated.frames");
    std::fs::write(&cut, &good[..good.len() - 3]).unwrap();
    let (rc, _, err) = capoctl(&["replay", cut.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(err.contains("truncated.frames"), "{err}");
    assert!(err.contains("frame 7"), "{err}");

    // Garbage after the config frame.
    let first_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize + 8;
    let mut garbage = good[..first_len].to_vec();
    garbage.extend_from_slice(&5u64.to_le_bytes());
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
    let g = dir.join("garbage.frames");
    std::fs::write(&g, &garbage).unwrap();
    let (rc, _, err) = capoctl(&["replay", g.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("garbage.frames") && err.contains("frame 1"),
        "{err}"
    );

    // Oversize against a small cap.
    let (rc, _, err) = capoctl(&["replay", cut.to_str().unwrap(), "--max-frame-len", "100"]);
    assert_eq!(rc, 1);
    assert!(err.contains("frame 0"), "{err}");

    // Unknown view.
    let (rc, _, err) = capoctl(&["replay", cut.to_str().unwrap(), "show", "capo", "flows"]);
    assert_eq!(rc, 1);
    assert!(err.contains("unknown view"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
