//! The offload benchmark: its traffic model and its held-out measurement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::{HashMap, HashSet};

use capo_bench::offload::{
    evaluate, rules_changed, run, window_hits, NicProfile, OffloadOptions, Replan,
};
use capo_bench::traffic::{generate_traffic, Opener, Traffic, TrafficOptions, MAX_SYN_TRIES};
use capo_bench::workload::Kind;
use capo_offload::plan::{plan, HitCounters, PlanConfig};
use capo_offload::{lower, NicCaps};
use capo_policy::{Protocol, L4};

const SYN: u8 = 0x02;

fn small(seed: u64) -> Traffic {
    generate_traffic(Kind::K8s, &TrafficOptions::small(1.1, seed))
}

#[test]
fn same_seed_same_packets() {
    let (a, b) = (small(3), small(3));
    assert_eq!(a.conversations, b.conversations);
    assert_eq!(a.windows, b.windows);
    assert!(a.windows.iter().all(|w| w.wire_packets() > 0));
    assert_ne!(a.windows, small(4).windows, "the seed must matter");
}

#[test]
fn every_connection_has_a_new_source_port() {
    let t = small(1);
    let mut seen: HashMap<usize, HashSet<u16>> = HashMap::new();
    let mut connections = 0;
    for conn in t.windows.iter().flat_map(|w| &w.connections) {
        let first = conn.segments.first().expect("a connection has packets");
        let (L4::Ports { src, .. }, Protocol::TCP | Protocol::UDP) =
            (first.probe.packet.l4, first.probe.packet.protocol)
        else {
            continue;
        };
        connections += 1;
        assert!(
            seen.entry(conn.conversation).or_default().insert(src),
            "conversation {} reused source port {src}",
            conn.conversation
        );
    }
    assert!(connections > 100);
    // Conversations do repeat: the point is new ports on the same conversation.
    assert!(seen.values().any(|ports| ports.len() > 5));
}

#[test]
fn refused_tcp_only_retries_its_syn_at_most_six_times() {
    let t = small(2);
    let (mut refused, mut allowed) = (0, 0);
    for conn in t.windows.iter().flat_map(|w| &w.connections) {
        let c = &t.conversations[conn.conversation];
        if c.protocol != Protocol::TCP {
            continue;
        }
        let syns: u64 = conn
            .segments
            .iter()
            .filter(|s| s.probe.tcp_flags == SYN)
            .map(|s| s.count)
            .sum();
        if conn.allowed {
            allowed += 1;
            assert_eq!(syns, 1, "an established connection sends one SYN");
            assert!(conn.segments.iter().any(|s| !s.from_wire));
            assert!(conn.segments.iter().any(|s| s.from_wire));
        } else {
            refused += 1;
            assert_eq!(conn.segments.len(), 1, "only SYNs: {conn:?}");
            assert!((1..=MAX_SYN_TRIES).contains(&syns), "{syns} SYNs");
            assert_eq!(c.opener, Opener::Peer);
        }
    }
    assert!(refused > 0 && allowed > 0);
}

#[test]
fn allowed_connections_carry_most_packets() {
    let t = small(1);
    let (mut allowed, mut all) = (0, 0);
    for conn in t.windows.iter().flat_map(|w| &w.connections) {
        all += conn.wire_packets();
        if conn.allowed {
            allowed += conn.wire_packets();
        }
    }
    assert!(allowed * 2 > all, "{allowed} of {all}");
    // New peers arrive after the first window.
    assert!(t.conversations.iter().any(|c| c.arrives > 0));
}

#[test]
fn held_out_plans_never_see_the_window_they_are_measured_on() {
    let t = small(1);
    let caps = NicCaps::mlx5(256);
    let program = lower(&t.state, &t.ids, 1);
    let mut fed: Vec<HitCounters> = Vec::new();
    let e = evaluate(&t, &caps, None, &mut |hits, _| {
        fed.push(hits.clone());
        plan(&t.state, &program, &caps, hits, &PlanConfig::default())
    });
    assert_eq!(fed.len(), t.windows.len());
    for (k, w) in t.windows.iter().enumerate() {
        assert_eq!(fed[k], window_hits(w), "plan {k} is fed window {k} only");
    }
    assert_eq!(e.held_out.len(), t.windows.len() - 1);
    for p in &e.held_out {
        assert_eq!(p.planned_on + 1, p.measured_on);
        // No TCP tuple the planner saw is a tuple of the measured window.
        let seen: HashSet<_> = fed[p.planned_on]
            .flows
            .iter()
            .filter(|f| f.packet.protocol == Protocol::TCP)
            .map(|f| f.packet)
            .collect();
        let later = window_hits(&t.windows[p.measured_on]);
        assert!(later
            .flows
            .iter()
            .filter(|f| f.packet.protocol == Protocol::TCP)
            .all(|f| !seen.contains(&f.packet)));
    }
    for p in &e.oracle {
        assert_eq!(p.planned_on, p.measured_on);
    }
    // Re-planning on new counters changes NIC rules; the same plan changes none.
    let (first, second) = (&e.plans[0].plan, &e.plans[1].plan);
    assert_eq!(rules_changed(first, first, caps.mark_bits), 0);
    assert!(rules_changed(first, second, caps.mark_bits) > 0);
    for p in e.held_out.iter().chain(&e.oracle).chain(&e.same_window) {
        assert_eq!(p.measured.mismatches, 0, "{p:?}");
        assert_eq!(p.measured.flow_mismatches, 0, "{p:?}");
        assert_eq!(p.measured.conflicts, 0, "{p:?}");
    }
}

#[test]
fn json_row_has_every_field_and_no_mismatches() {
    for nic in [NicProfile::Mlx5, NicProfile::E810] {
        let r = run(&OffloadOptions {
            kind: Kind::K8s,
            nic,
            capacity: 256,
            traffic: TrafficOptions::small(1.1, 1),
            replan: Replan::Full,
            stateless_drops: true,
            learned_drops: 16,
        });
        assert_eq!(r.mismatches, 0);
        assert_eq!(r.flow_mismatches, 0);
        let v = serde_json::to_value(&r).unwrap();
        let row = v.as_object().unwrap();
        for field in [
            "hw_fraction",
            "held_out_fraction",
            "oracle_fraction",
            "held_out_vs_oracle",
            "deny_drop_fraction",
            "mismatches",
            "flow_mismatches",
            "plan_ms",
            "replan_ms",
            "replan_mode",
            "stateless_drops",
            "learned_drops",
            "planned_deny_drop_fraction",
            "learned_per_window",
            "replans_in_place",
            "rules_changed",
            "entries_per_commit",
            "commit_peak_entries",
            "install_s_at_1k_per_s",
            "install_s_at_50k_per_s",
            "classifications_avoided",
            "rules_offloaded",
            "entries_used",
            "decided_entries",
            "cover_entries",
            "exact_flow_entries",
            "layers",
            "packets",
            "flows",
            "kept_by_reason",
            "same_priority_conflicts",
            "packet_share",
        ] {
            assert!(row.contains_key(field), "missing {field}");
        }
        let f = |k: &str| row[k].as_f64().unwrap();
        for k in ["hw_fraction", "held_out_fraction", "oracle_fraction"] {
            assert!((0.0..=1.0).contains(&f(k)), "{k} = {}", f(k));
        }
        assert!(f("packets") > 0.0);
        assert!(f("classifications_avoided") <= f("packets"));
        assert_eq!(row["replan_mode"], "full");
    }
}

/// Incremental re-plans (the default) commit in place where the device has groups:
/// the same plans as from scratch, renumbered, so the same fractions; a commit
/// creates only the rules new to the table instead of the whole plan, and the
/// held-out checks still find no mismatch.
#[test]
fn incremental_replans_commit_in_place_and_create_less() {
    let opts = |nic, replan| OffloadOptions {
        kind: Kind::K8s,
        nic,
        capacity: 256,
        traffic: TrafficOptions::small(1.1, 1),
        replan,
        stateless_drops: true,
        learned_drops: 0,
    };
    let full = run(&opts(NicProfile::Mlx5, Replan::Full));
    let inc = run(&opts(NicProfile::Mlx5, Replan::Incremental));
    assert_eq!(inc.replan_mode, "incremental");
    assert_eq!(full.replans_in_place, 0);
    assert_eq!(inc.replans_in_place, inc.windows - 1);
    assert_eq!((inc.mismatches, inc.flow_mismatches), (0, 0));
    assert_eq!(inc.same_priority_conflicts, 0);
    assert_eq!(inc.held_out_fraction, full.held_out_fraction);
    assert_eq!(inc.rules_changed, full.rules_changed);
    assert!(inc.rules_changed > 0.0);
    assert!(
        inc.entries_per_commit < full.entries_per_commit,
        "{} rules created in place, {} as a new generation",
        inc.entries_per_commit,
        full.entries_per_commit
    );
    assert!(inc.commit_peak_entries < full.commit_peak_entries);
    // Without groups every commit already changes only the difference.
    let e810 = run(&opts(NicProfile::E810, Replan::Incremental));
    assert_eq!(e810.replans_in_place, 0);
}

/// W-k8s's small traffic on a simulated mlx5 of 256 entries, re-planned in place.
fn small_mlx5(stateless_drops: bool, learned_drops: u32) -> OffloadOptions {
    OffloadOptions {
        kind: Kind::K8s,
        nic: NicProfile::Mlx5,
        capacity: 256,
        traffic: TrafficOptions::small(1.1, 1),
        replan: Replan::Incremental,
        stateless_drops,
        learned_drops,
    }
}

/// Denies of UDP and ICMP go down as exact-flow drops when the planner may spare
/// the flows software holds: more denied packets are dropped in hardware than with
/// them kept in software, and no connection gets a wrong verdict either way.
#[test]
fn stateless_drops_drop_more_denied_packets_and_break_no_flow() {
    let opts = |stateless_drops| small_mlx5(stateless_drops, 0);
    let off = run(&opts(false));
    let on = run(&opts(true));
    for r in [&off, &on] {
        assert_eq!((r.mismatches, r.flow_mismatches), (0, 0));
    }
    assert!(!off.stateless_drops && on.stateless_drops);
    assert!(
        on.deny_drop_fraction > off.deny_drop_fraction,
        "denied packets dropped in hardware: {} with stateless drops, {} without",
        on.deny_drop_fraction,
        off.deny_drop_fraction
    );
}

/// Drops learned between plans: software's first deny of a refused conversation
/// installs a drop its next packets meet. More denied packets are dropped in
/// hardware than by the plans alone (which the report gives beside it, equal to a
/// run that learns nothing), and no connection gets a wrong verdict.
#[test]
fn learned_drops_drop_what_the_plans_left_to_software_and_break_no_flow() {
    let opts = small_mlx5;
    for stateless in [false, true] {
        let none = run(&opts(stateless, 0));
        // The same table: the plans of the learning run are made for 32 fewer entries.
        let learned = run(&opts(stateless, 32));
        for r in [&none, &learned] {
            assert_eq!((r.mismatches, r.flow_mismatches), (0, 0));
            assert_eq!(r.same_priority_conflicts, 0);
        }
        assert_eq!(none.learned_per_window, 0.0);
        assert_eq!(none.planned_deny_drop_fraction, none.deny_drop_fraction);
        assert!(learned.learned_per_window > 0.0);
        assert!(
            learned.deny_drop_fraction > learned.planned_deny_drop_fraction,
            "stateless {stateless}: {} with learned drops, {} by the plans",
            learned.deny_drop_fraction,
            learned.planned_deny_drop_fraction
        );
        assert!(learned.entries_used + 32 <= 256, "{}", learned.entries_used);
    }
}
