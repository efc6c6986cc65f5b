//! The benchmark's engines agree with the reference evaluator on the generated
//! workloads (multi-word programs, the batch path), and `capo-bench classify` reports
//! every engine, rte_acl included (measured with the `rte-acl` feature, a reason
//! without it).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use capo_bench::run::{classify, Options};
use capo_bench::workload::{generate, Kind};
use capo_classifier::{Builder, IfaceKind, Scratch, MAX_BATCH};
use capo_policy::eval;

#[test]
fn fast_batch_path_equals_reference_on_w_k8s() {
    let w = generate(Kind::K8s);
    let (state, ids) = w.state();
    let g = Builder::new().build(&state, &ids);
    let items: Vec<_> = w
        .packets
        .iter()
        .map(|(k, d, p)| {
            let i = g
                .interface_of(&IfaceKind::Workload(k.clone()))
                .expect("interface");
            (i, *d, *p)
        })
        .collect();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut checked = 0;
    // Every 5th packet against the reference (debug builds evaluate slowly).
    for (b, chunk) in items.chunks(MAX_BATCH).enumerate() {
        g.classify_batch(chunk, &mut scratch, &mut out);
        for (j, d) in out.iter().enumerate() {
            let n = b * MAX_BATCH + j;
            if n % 5 != 0 {
                continue;
            }
            let (key, dir, pkt) = &w.packets[n];
            let want = eval::evaluate_workload(&state, key, *dir, pkt).expect("reference");
            let got = d.expect("decision");
            assert_eq!(got.verdict, want.verdict, "packet {n}: {pkt:?}");
            assert_eq!(got.decider(), &want.decider, "packet {n}: {pkt:?}");
            checked += 1;
        }
    }
    assert!(checked >= 2000);
}

#[test]
fn classify_reports_every_engine_on_w_seed() {
    let mut logs = Vec::new();
    let rows = classify(
        Kind::Seed,
        Options {
            quick: true,
            fast_only: false,
        },
        &mut |l| logs.push(l.to_string()),
    );
    let engines: Vec<_> = rows.iter().map(|r| r.engine).collect();
    let mut want = vec![
        "fast",
        "production",
        "production",
        "node",
        "node",
        "reference",
        "linear",
        "rte_acl",
    ];
    if cfg!(feature = "rte-acl") {
        // rte_acl measured twice: one call per packet, and bursts by program.
        want.push("rte_acl");
    }
    assert_eq!(engines, want);
    // The frame pipeline: first packets with the fast path's verdicts, then the
    // allowed ones again, every one a flow-table hit.
    for (row, phase) in rows[1..3].iter().zip(["first", "established"]) {
        assert_eq!((row.path, row.phase), (Some("production"), Some(phase)));
        assert!(row.ns_per_packet.is_some_and(|ns| ns > 0.0));
    }
    let first = rows[1].note.clone().unwrap_or_default();
    assert!(first.contains("; 0 verdicts differ from fast"), "{first}");
    let established = rows[2].note.clone().unwrap_or_default();
    let counts: Vec<u64> = established
        .rsplit("; ")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        matches!(counts[..], [hits, packets] if hits == packets && packets > 0),
        "{established}"
    );
    // The VPP node's logic on the same packets, checked the same way.
    for (row, phase) in rows[3..5].iter().zip(["first", "established"]) {
        assert_eq!((row.path, row.phase), (Some("production"), Some(phase)));
        assert!(row.ns_per_packet.is_some_and(|ns| ns > 0.0));
        let note = row.note.clone().unwrap_or_default();
        assert!(note.ends_with("; 0 verdicts differ from fast"), "{note}");
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("reference:") && l.contains(" 0 verdict mismatches")),
        "{logs:?}"
    );
    let acl = &rows[7];
    let note = acl.note.clone().unwrap_or_default();
    if cfg!(feature = "rte-acl") {
        for (row, path) in rows[7..].iter().zip([None, Some("burst")]) {
            let note = row.note.clone().unwrap_or_default();
            assert_eq!(row.path, path, "{note}");
            assert!(row.ns_per_packet.is_some_and(|ns| ns > 0.0), "{note}");
            assert!(
                note.contains("; 0 verdict mismatches against fast"),
                "{note}"
            );
            assert!(note.contains("all 1 of 1 built"), "{note}");
        }
    } else {
        assert!(acl.ns_per_packet.is_none());
        assert!(note.starts_with("not measured"), "{note}");
    }
}
