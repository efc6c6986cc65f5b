//! `capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]`
//! `capo-bench offload --workload w-k8s --nic mlx5|e810|cnxk --nic-capacity N [--zipf S] [--json]`
//!
//! Prints one JSON object per engine and line with `--json`, a table otherwise;
//! progress goes to stderr.

use std::process::ExitCode;

use capo_bench::run::{classify, Options};
use capo_bench::workload::Kind;

const USAGE: &str = "usage: capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]
       capo-bench offload --workload w-k8s|w-large --nic mlx5|e810|cnxk --nic-capacity N [--zipf S] [--json] [--oracle]";

fn offload(args: &[String]) -> ExitCode {
    let mut o = capo_bench::offload::OffloadOptions {
        kind: Kind::K8s,
        nic: capo_offload::bench::NicProfile::Mlx5,
        capacity: 4096,
        zipf: 1.1,
    };
    let (mut json, mut oracle) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let ok = match a.as_str() {
            "--json" => {
                json = true;
                true
            }
            "--oracle" => {
                oracle = true;
                true
            }
            "--workload" => it
                .next()
                .and_then(|w| Kind::parse(w))
                .map(|k| o.kind = k)
                .is_some(),
            "--nic" => it
                .next()
                .and_then(|n| capo_offload::bench::NicProfile::parse(n))
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
                .map(|z| o.zipf = z)
                .is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("capo-bench offload: bad argument {a:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    eprintln!(
        "offload: {:?} on {:?} with {} entries, zipf {}",
        o.kind, o.nic, o.capacity, o.zipf
    );
    let r = capo_bench::offload::run(&o);
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "hw_fraction {:.3} mismatches {} flow_mismatches {} plan_ms {:.1} rules_offloaded {} entries_used {} kept {:?}",
            r.hw_fraction, r.mismatches, r.flow_mismatches, r.plan_ms, r.rules_offloaded, r.entries_used, r.kept_by_reason
        );
    }
    if oracle {
        // The planner against an exhaustive search on a small workload.
        for (seed, capacity) in [(1, 8), (1, 12), (1, 16), (2, 12), (3, 12)] {
            let r = capo_offload::bench::oracle_compare(seed, capacity);
            let line = serde_json::json!({
                "oracle": true, "seed": seed, "capacity": capacity,
                "planner_hw_fraction": r.planner_hw_fraction, "oracle_hw_fraction": r.oracle_hw_fraction,
                "planner_mismatches": r.planner_mismatches, "oracle_mismatches": r.oracle_mismatches,
                "candidates": r.candidates,
            });
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("offload") {
        return offload(&args[1..]);
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
