//! Criterion benches: the fast classifier (batch path), the reference evaluator and
//! the C plugin's linear algorithm on W-seed and W-k8s; packet parsing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use capo_bench::linear::Linear;
use capo_bench::workload::{generate, Kind};
use capo_classifier::{build, parse_ethernet, Builder, IfaceKind, Scratch};
use capo_policy::eval;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn classify(c: &mut Criterion) {
    for kind in [Kind::Seed, Kind::K8s] {
        let w = generate(kind);
        let (state, ids) = w.state();
        let g = Builder::new().build(&state, &ids);
        let items: Vec<_> = w
            .packets
            .iter()
            .filter_map(|(k, d, p)| {
                g.interface_of(&IfaceKind::Workload(k.clone()))
                    .map(|i| (i, *d, *p))
            })
            .take(256)
            .collect();
        let mut group = c.benchmark_group(format!("classify/{}", kind.name()));
        group.throughput(Throughput::Elements(items.len() as u64));
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        group.bench_function("fast", |b| {
            b.iter(|| {
                g.classify_batch(&items, &mut scratch, &mut out);
                black_box(out.len())
            })
        });
        let sample: Vec<_> = w.packets.iter().take(16).cloned().collect();
        group.throughput(Throughput::Elements(sample.len() as u64));
        group.bench_function("reference", |b| {
            b.iter(|| {
                for (k, d, p) in &sample {
                    black_box(eval::evaluate_workload(&state, k, *d, p));
                }
            })
        });
        let linear = Linear::build(&state);
        let resolved: Vec<_> = sample
            .iter()
            .map(|(k, d, p)| (linear.interface(k), *d, p))
            .collect();
        group.bench_function("linear", |b| {
            b.iter(|| {
                for (i, d, p) in &resolved {
                    black_box(linear.evaluate(*i, *d, p));
                }
            })
        });
        group.finish();
    }
}

fn parse(c: &mut Criterion) {
    let w = generate(Kind::Seed);
    let frames: Vec<Vec<u8>> = w
        .packets
        .iter()
        .take(64)
        .map(|(_, _, p)| build::frame(p, 0x02))
        .collect();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("ethernet_ipv4_tcp", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(parse_ethernet(f).ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, classify, parse);
criterion_main!(benches);
