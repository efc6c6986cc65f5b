//! Temporary experiment: compute floor of the fast path (warm caches).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use capo_bench::workload::{generate, Kind};
use capo_classifier::{Builder, IfaceKind, Scratch};
use std::hint::black_box;
use std::time::Instant;
fn main() {
    let w = generate(Kind::K8s);
    let (state, ids) = w.state();
    let g = Builder::new().build(&state, &ids);
    let inputs: Vec<_> = w.packets.iter().filter_map(|(k, d, p)| g.interface_of(&IfaceKind::Workload(k.clone())).map(|i| (i, *d, *p))).collect();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let run = |name: &str, items: &Vec<_>, scratch: &mut Scratch, out: &mut Vec<_>| {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_millis() < 1000 {
            for b in items.chunks(256) { g.classify_batch(b, scratch, out); black_box(out.len()); n += b.len(); }
        }
        println!("{name}: {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    };
    if std::env::args().count() > 1 { let same: Vec<_> = inputs.iter().take(64).cycle().take(10000).cloned().collect(); loop { run("64", &same, &mut scratch, &mut out); } }
    run("all", &inputs, &mut scratch, &mut out);
    let one_prog: Vec<_> = inputs.iter().map(|(_, d, p)| (inputs[0].0, *d, *p)).collect();
    run("one iface", &one_prog, &mut scratch, &mut out);
    let same: Vec<_> = inputs.iter().take(64).cycle().take(10000).cloned().collect();
    run("64 pkts", &same, &mut scratch, &mut out);
}
