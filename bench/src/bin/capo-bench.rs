//! `capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]`
//! `capo-bench offload --workload w-k8s --nic mlx5|e810|cnxk --nic-capacity N [--zipf S] [--seed N] [--windows N] [--json]`
//! `capo-bench traffic --workload w-k8s|w-large --export DIR [--small] [--zipf S] [--seed N] [--windows N]`
//! `capo-bench vpp --workload w-k8s|w-large [--window N] [--seed N] [--runs N] [--vpp DIR] [--agent PATH] [--json]`
//!
//! Prints one JSON object per engine and line with `--json`, a table otherwise;
//! progress goes to stderr.

use std::process::ExitCode;

use capo_bench::offload::{NicProfile, OffloadOptions};
use capo_bench::run::{classify, Options};
use capo_bench::traffic::TrafficOptions;
use capo_bench::workload::Kind;

const USAGE: &str = "usage: capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]
       capo-bench offload --workload w-k8s|w-large --nic mlx5|e810|cnxk --nic-capacity N [--zipf S] [--seed N] [--windows N] [--json]
       capo-bench traffic --workload w-k8s|w-large --export DIR [--small] [--zipf S] [--seed N] [--windows N]
       capo-bench vpp --workload w-k8s|w-large [--window N] [--seed N] [--runs N] [--vpp DIR] [--agent PATH] [--json]";

/// `capo-bench vpp`: capo's node and VPP forwarding, clocks per packet inside VPP
/// (`capo_bench::vpp`). `--vpp` defaults to `$CAPO_VPP`, `--agent` to the capo-agent
/// beside this binary.
fn vpp(args: &[String]) -> ExitCode {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let mut o = capo_bench::vpp::VppBenchOptions {
        kind: Kind::K8s,
        window: 1,
        seed: 1,
        vpp_root: std::env::var_os("CAPO_VPP")
            .map(Into::into)
            .unwrap_or_default(),
        agent: exe_dir.join("capo-agent"),
        runs: 5,
    };
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let ok = match a.as_str() {
            "--json" => {
                json = true;
                true
            }
            "--workload" => it
                .next()
                .and_then(|w| Kind::parse(w))
                .filter(|k| *k != Kind::Seed)
                .map(|k| o.kind = k)
                .is_some(),
            "--window" => it
                .next()
                .and_then(|w| w.parse().ok())
                .map(|w| o.window = w)
                .is_some(),
            "--seed" => it
                .next()
                .and_then(|s| s.parse().ok())
                .map(|s| o.seed = s)
                .is_some(),
            "--runs" => it
                .next()
                .and_then(|r| r.parse().ok())
                .filter(|r| *r >= 1)
                .map(|r| o.runs = r)
                .is_some(),
            "--vpp" => it.next().map(|d| o.vpp_root = d.into()).is_some(),
            "--agent" => it.next().map(|p| o.agent = p.into()).is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("capo-bench vpp: bad argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    for (what, path) in [
        (
            "VPP (set CAPO_VPP or --vpp: scripts/vpp-setup.sh DIR)",
            o.vpp_root.join("vpp/bin/vpp"),
        ),
        (
            "capo's plugin (scripts/vpp-setup.sh DIR builds it)",
            o.vpp_root.join("capo/libcapo_vpp_plugin.so"),
        ),
        ("capo-agent (--agent PATH)", o.agent.clone()),
    ] {
        if !path.exists() {
            eprintln!("capo-bench vpp: {what}: {} not found", path.display());
            return ExitCode::from(2);
        }
    }
    match capo_bench::vpp::run(&o, &mut |l| eprintln!("{l}")) {
        Ok(rows) => {
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    println!(
                        "{:<8} {:<12} clocks/packet {:>8.0} (capo's nodes {:>6.0} at {:>5.1} a call, runs {:.0}..{:.0}) packets {:>6} memory {}",
                        r.engine,
                        r.phase,
                        r.clocks_per_packet,
                        r.capo_node_clocks_per_packet,
                        r.capo_vectors_per_call,
                        r.clocks_min,
                        r.clocks_max,
                        r.packets,
                        r.memory_bytes.map_or("-".to_string(), |m| format!("{} KiB", m / 1024))
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capo-bench vpp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `capo-bench traffic`: the offload benchmark's traffic written out for TRex and
/// VPP's packet generator (`capo_bench::export`).
fn traffic(args: &[String]) -> ExitCode {
    let mut kind = Kind::K8s;
    let mut small = false;
    let (mut zipf, mut seed, mut windows) = (1.1, 1, None);
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let ok = match a.as_str() {
            "--small" => {
                small = true;
                true
            }
            "--workload" => it
                .next()
                .and_then(|w| Kind::parse(w))
                .filter(|k| *k != Kind::Seed)
                .map(|k| kind = k)
                .is_some(),
            "--export" => it.next().map(|d| dir = Some(d.clone())).is_some(),
            "--zipf" => it
                .next()
                .and_then(|z| z.parse().ok())
                .map(|z| zipf = z)
                .is_some(),
            "--seed" => it
                .next()
                .and_then(|s| s.parse().ok())
                .map(|s| seed = s)
                .is_some(),
            "--windows" => it
                .next()
                .and_then(|w| w.parse().ok())
                .filter(|w| *w >= 1)
                .map(|w| windows = Some(w))
                .is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("capo-bench traffic: bad argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(dir) = dir else {
        eprintln!("capo-bench traffic: --export DIR is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut o = if small {
        TrafficOptions::small(zipf, seed)
    } else {
        TrafficOptions::standard(zipf, seed)
    };
    if let Some(w) = windows {
        o.windows = w;
    }
    eprintln!(
        "traffic: {} with zipf {}, seed {}, {} windows of {} connections",
        kind.name(),
        o.zipf,
        o.seed,
        o.windows,
        o.connections_per_window
    );
    let t = capo_bench::traffic::generate_traffic(kind, &o);
    match capo_bench::export::export(kind, &o, &t, std::path::Path::new(&dir)) {
        Ok(meta) => {
            for (i, w) in meta.windows.iter().enumerate() {
                eprintln!(
                    "window {i}: {} connections, {} packets from the wire ({} allowed, {} denied), {} sent by local endpoints",
                    w.connections, w.wire_packets, w.wire_allowed, w.wire_denied, w.local_packets
                );
            }
            eprintln!("traffic: wrote {dir}/flows.csv, endpoints.csv, felix.frames, meta.json");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capo-bench traffic: {e}");
            ExitCode::FAILURE
        }
    }
}

fn offload(args: &[String]) -> ExitCode {
    let mut o = OffloadOptions {
        kind: Kind::K8s,
        nic: NicProfile::Mlx5,
        capacity: 4096,
        traffic: TrafficOptions::standard(1.1, 1),
    };
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let ok = match a.as_str() {
            "--json" => {
                json = true;
                true
            }
            "--workload" => it
                .next()
                .and_then(|w| Kind::parse(w))
                .map(|k| o.kind = k)
                .is_some(),
            "--nic" => it
                .next()
                .and_then(|n| NicProfile::parse(n))
                .map(|n| o.nic = n)
                .is_some(),
            "--nic-capacity" => it
                .next()
                .and_then(|c| c.parse().ok())
                .map(|c| o.capacity = c)
                .is_some(),
            "--zipf" => it
                .next()
                .and_then(|z| z.parse().ok())
                .map(|z| o.traffic.zipf = z)
                .is_some(),
            "--seed" => it
                .next()
                .and_then(|s| s.parse().ok())
                .map(|s| o.traffic.seed = s)
                .is_some(),
            "--windows" => it
                .next()
                .and_then(|w| w.parse().ok())
                .filter(|w| *w >= 2)
                .map(|w| o.traffic.windows = w)
                .is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("capo-bench offload: bad argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    eprintln!(
        "offload: {} on {} with {} entries, zipf {}, seed {}, {} windows",
        o.kind.name(),
        o.nic.name(),
        o.capacity,
        o.traffic.zipf,
        o.traffic.seed,
        o.traffic.windows
    );
    let r = capo_bench::offload::run(&o);
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "held_out {:.3} oracle {:.3} same_window {:.3} deny_drop {:.3} mismatches {} flow_mismatches {} plan_ms {:.1} replan_ms {:.1} ({}) rules_changed {:.0} entries_used {}",
            r.held_out_fraction, r.oracle_fraction, r.hw_fraction, r.deny_drop_fraction, r.mismatches, r.flow_mismatches, r.plan_ms, r.replan_ms, r.replan_mode, r.rules_changed, r.entries_used
        );
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("offload") {
        return offload(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("traffic") {
        return traffic(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("vpp") {
        return vpp(&args[1..]);
    }
    if args.first().map(String::as_str) != Some("classify") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut kinds = Vec::new();
    let mut quick = false;
    let mut json = false;
    let mut fast_only = false;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--fast-only" => fast_only = true,
            "--workload" => match it.next().and_then(|w| Kind::parse(w)) {
                Some(k) => kinds.push(k),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if kinds.is_empty() {
        kinds = vec![Kind::Seed, Kind::K8s, Kind::Large];
    }
    for kind in kinds {
        let rows = classify(kind, Options { quick, fast_only }, &mut |l| {
            eprintln!("{l}")
        });
        for r in rows {
            if json {
                println!("{}", r.json());
            } else {
                let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
                println!(
                    "{:<10} {:<8} ns/pkt {:>10} Mpps {:>8} compile_ms {:>9} update_p99_us {:>8} B/member {:>6} {}",
                    r.engine,
                    r.workload,
                    f(r.ns_per_packet),
                    f(r.mpps),
                    f(r.compile_ms),
                    f(r.update_p99_us),
                    f(r.bytes_per_member),
                    r.note.unwrap_or_default()
                );
            }
        }
    }
    ExitCode::SUCCESS
}
