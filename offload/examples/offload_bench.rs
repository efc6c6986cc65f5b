//! Runs the offload benchmark: `cargo run --release -p capo-offload --example
//! offload_bench -- [w-k8s|small] [mlx5|e810|cnxk] [capacity] [zipf] [seed]`, and the
//! oracle comparison with `oracle [capacity] [seed]`. Prints JSON.

use capo_offload::bench::{
    oracle_compare, run_offload_bench, NicProfile, OffloadBenchConfig, WorkloadKind,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    if arg(0) == Some("oracle") {
        let cap = arg(1).and_then(|s| s.parse().ok()).unwrap_or(12);
        let seed = arg(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        let r = oracle_compare(seed, cap);
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
        return;
    }
    let mut cfg = OffloadBenchConfig::default();
    if let Some(w) = arg(0).and_then(WorkloadKind::parse) {
        cfg.workload = w;
    }
    if let Some(n) = arg(1).and_then(NicProfile::parse) {
        cfg.nic = n;
    }
    if let Some(c) = arg(2).and_then(|s| s.parse().ok()) {
        cfg.capacity = c;
    }
    if let Some(z) = arg(3).and_then(|s| s.parse().ok()) {
        cfg.zipf = z;
    }
    if let Some(s) = arg(4).and_then(|s| s.parse().ok()) {
        cfg.seed = s;
    }
    let r = run_offload_bench(&cfg);
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
}
