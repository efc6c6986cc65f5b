//! `capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]`
//!
//! Prints one JSON object per engine and line with `--json`, a table otherwise;
//! progress goes to stderr.

use std::process::ExitCode;

use capo_bench::run::{classify, Options};
use capo_bench::workload::Kind;

const USAGE: &str = "usage: capo-bench classify --workload w-seed|w-k8s|w-large [--quick] [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
