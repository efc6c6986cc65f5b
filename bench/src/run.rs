//! The `capo-bench classify` measurements: every engine on the same packets.
//!
//! - `fast`: [`capo_classifier::Generation::classify`], first packet of each flow
//!   (no flow table), the whole packet list repeated until the time budget is spent.
//! - `production`: what the dataplanes run per frame of 256 wire-format packets —
//!   parse, flow lookup, classification of misses, flow insert, counters
//!   ([`capo_classifier::Worker::process`]) — for first packets (the flow table
//!   emptied at the start of each pass over the list) and for established flows
//!   (the allowed packets again, each a hit of the flow its first packet opened, as
//!   `capo-bench vpp` defines the phase). Row `path`: `production`.
//! - `node` (path `production`): the VPP plugin's node logic on the same packets
//!   ([`crate::node`]).
//! - `reference`: [`capo_policy::eval::evaluate_workload`], the specification.
//! - `linear`: the C plugin's algorithm ([`crate::linear`]).
//! - `rte_acl`: DPDK's classifier on the rules expanded ([`crate::acl`]).
//!
//! Slow engines are sampled: they run the packet list in order until their time
//! budget is spent (at least 50 packets), so W-large stays practical on 2 cores.
//! Compile time is one full [`capo_classifier::Builder::build`]; update p99 is over
//! single-member add/remove deltas applied with [`capo_classifier::Builder::apply`]
//! and published to a [`capo_classifier::GenerationCell`].

use std::hint::black_box;
use std::time::{Duration, Instant};

use capo_classifier::{Builder, GenerationCell, IfaceKind, Scratch};
use capo_policy::{eval, Cidr, Member, Update, Verdict};

use crate::linear::Linear;
pub use crate::measure::Row;
use crate::measure::{time_loop, time_sampled};
use crate::workload::{generate, Kind, Rng, Workload};

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Shorter budgets and fewer updates.
    pub quick: bool,
    /// Only the fast classifier (for profiling).
    pub fast_only: bool,
}

impl Options {
    pub(crate) fn budget(&self) -> Duration {
        if self.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(2000)
        }
    }

    fn updates(&self) -> usize {
        if self.quick {
            300
        } else {
            2000
        }
    }
}

/// What [`production`] measured.
#[derive(Debug, Clone, Copy)]
struct Production {
    /// ns per first packet.
    first: f64,
    /// ns per established packet.
    established: f64,
    /// First packets whose verdict differs from the fast path's.
    disagree: usize,
    /// Packets of the established phase (the allowed ones).
    established_packets: usize,
    /// Of those, flow-table hits in an untimed pass.
    established_hits: u64,
}

/// The frame pipeline on the workload's packets as wire frames: ns per packet for
/// first packets and for established flows, and how many verdicts differ from the
/// fast path's one-packet classification.
fn production(
    w: &Workload,
    state: &capo_policy::State,
    ids: &capo_policy::IdTable,
    g: &capo_classifier::Generation,
    opts: Options,
) -> Option<Production> {
    use capo_classifier::{parse_ethernet, Counters, FlowConfig, Input, Timestamp, Worker};
    // (sw_if_index, direction, frame) of every packet on a policed interface.
    let frames: Vec<(u32, capo_policy::Direction, Vec<u8>)> = w
        .packets
        .iter()
        .filter_map(|(k, d, p)| {
            let wep = state.workloads().get(k)?;
            let idx = ids.interface(&wep.name)?;
            Some((idx, *d, first_frame(p)))
        })
        .collect();
    if frames.is_empty() {
        return None;
    }
    let batches: Vec<&[(u32, capo_policy::Direction, Vec<u8>)]> =
        frames.chunks(capo_classifier::MAX_BATCH).collect();
    let counters = Counters::new();
    let now = Timestamp::from_secs(1);
    let mut inputs: Vec<Input> = Vec::with_capacity(capo_classifier::MAX_BATCH);
    let mut verdicts = Vec::with_capacity(capo_classifier::MAX_BATCH);
    let mut run = |worker: &mut Worker,
                   batch: &[(u32, capo_policy::Direction, Vec<u8>)],
                   out: &mut Vec<Verdict>| {
        inputs.clear();
        for (idx, dir, f) in batch {
            if let Ok(packet) = parse_ethernet(f) {
                inputs.push(Input {
                    sw_if_index: *idx,
                    dir: *dir,
                    packet,
                    len: u32::try_from(f.len()).unwrap_or(u32::MAX),
                });
            }
        }
        worker.process(g, &inputs, now, out);
    };
    // Verdicts of one pass against the fast path, packet by packet; the allowed
    // packets are the established phase's.
    let mut scratch = Scratch::default();
    let mut worker = Worker::new(FlowConfig::default(), &counters);
    let mut disagree = 0;
    let mut allowed = Vec::new();
    for b in &batches {
        run(&mut worker, b, &mut verdicts);
        for (packet, v) in b.iter().zip(&verdicts) {
            let (idx, dir, f) = packet;
            let fast = parse_ethernet(f).ok().and_then(|p| {
                g.interface_by_sw_if_index(*idx)
                    .and_then(|i| g.classify(i, *dir, &p.packet, &mut scratch))
            });
            if fast.map(|d| d.verdict) != Some(*v) {
                disagree += 1;
            }
            if *v == Verdict::Allow {
                allowed.push(packet.clone());
            }
        }
    }
    let allowed_batches: Vec<&[(u32, capo_policy::Direction, Vec<u8>)]> =
        allowed.chunks(capo_classifier::MAX_BATCH).collect();
    // First packets: every pass starts from an empty table that keeps its
    // allocations, as a running worker's does; emptying it (each flow expiring, as
    // each eventually does) is timed with the pass. (A new worker per pass would
    // time the table's growth and a counter registration: once per worker's life.)
    let long_after = Timestamp::from_secs(1_000_000_000);
    let first = time_loop(opts.budget(), batches.len(), |k| {
        if k == 0 {
            worker.expire(long_after, usize::MAX);
        }
        if let Some(b) = batches.get(k) {
            run(&mut worker, b, &mut verdicts);
            black_box(verdicts.len());
        }
    });
    // Established: the first phase's last (whole) pass left every allowed flow in
    // the table; its packets come again, each a hit (counted in one untimed pass).
    let hits_before = counters.flows().hits;
    for b in &allowed_batches {
        run(&mut worker, b, &mut verdicts);
    }
    let established_hits = counters.flows().hits - hits_before;
    let established = time_loop(opts.budget(), allowed_batches.len().max(1), |k| {
        if let Some(b) = allowed_batches.get(k) {
            run(&mut worker, b, &mut verdicts);
            black_box(verdicts.len());
        }
    });
    Some(Production {
        first: first * batches.len() as f64 / frames.len() as f64,
        established: established * allowed_batches.len() as f64 / allowed.len().max(1) as f64,
        disagree,
        established_packets: allowed.len(),
        established_hits,
    })
}

/// A flow's first packet as an Ethernet frame (TCP's carries SYN).
pub(crate) fn first_frame(p: &capo_policy::Packet) -> Vec<u8> {
    let flags = if p.protocol == capo_policy::Protocol::TCP {
        capo_classifier::tcp_flags::SYN
    } else {
        0
    };
    capo_classifier::build::frame(p, flags)
}

/// The workload's packets on the interfaces `g` has, as the batch path takes them.
fn resolved(
    w: &Workload,
    g: &capo_classifier::Generation,
) -> Vec<(
    capo_classifier::IfaceId,
    capo_policy::Direction,
    capo_policy::Packet,
)> {
    w.packets
        .iter()
        .filter_map(|(k, d, p)| {
            g.interface_of(&IfaceKind::Workload(k.clone()))
                .map(|i| (i, *d, *p))
        })
        .collect()
}

/// The rules-per-program sweep: `kind`'s cluster regenerated with more rules per
/// policy until its interface programs hold about each of `targets` rules on
/// average, and on each the fast path (batches of 256) and the production pipeline
/// (first packets), with the programs' memory per rule in the note. The rows carry
/// the measured `rules_per_program`.
pub fn sweep(kind: Kind, targets: &[usize], opts: Options, log: &mut dyn FnMut(&str)) -> Vec<Row> {
    let Some(base) = crate::workload::Shape::of(kind) else {
        log("sweep: W-seed is hand-written and has no shape to sweep");
        return Vec::new();
    };
    let base_rpp = {
        let w = generate(kind);
        w.rules_per_program(&w.state().0)
    };
    let mut rows = Vec::new();
    for &target in targets {
        let per_dir =
            ((base.rules_per_direction as f64 * target as f64 / base_rpp).round() as usize).max(1);
        let shape = crate::workload::Shape {
            rules_per_direction: per_dir,
            ..base
        };
        let w = crate::workload::generate_shaped(kind, shape);
        let (state, ids) = w.state();
        let rpp = w.rules_per_program(&state);
        let t = Instant::now();
        let mut builder = Builder::new();
        let g = builder.build(&state, &ids);
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let mem = g.memory();
        let inputs = resolved(&w, &g);
        let batches: Vec<&[_]> = inputs.chunks(capo_classifier::MAX_BATCH).collect();
        let mut scratch = Scratch::default();
        let mut out = Vec::with_capacity(capo_classifier::MAX_BATCH);
        let per_batch = time_loop(opts.budget(), batches.len(), |k| {
            if let Some(b) = batches.get(k) {
                g.classify_batch(b, &mut scratch, &mut out);
                black_box(out.len());
            }
        });
        let fast_ns = per_batch * batches.len() as f64 / inputs.len().max(1) as f64;
        let rules_total: usize = w.rules;
        let note = format!(
            "{per_dir} rules per policy and direction, {rules_total} rules; programs {} MiB ({:.0} bytes per rule of the programs)",
            mem.program_bytes >> 20,
            mem.program_bytes as f64 / (rpp * state.workloads().len() as f64 * 2.0).max(1.0)
        );
        log(&format!(
            "sweep: {} at {rpp:.0} rules per program: fast {fast_ns:.1} ns/packet; {note}",
            kind.name()
        ));
        let mut fast = Row::new("fast", kind.name()).timing(fast_ns);
        fast.compile_ms = Some(compile_ms);
        fast.rules_per_program = Some(rpp);
        fast.note = Some(note.clone());
        rows.push(fast);
        if let Some(Production {
            first, disagree, ..
        }) = production(&w, &state, &ids, &g, opts)
        {
            let mut p = Row::new("production", kind.name()).timing(first);
            p.path = Some("production");
            p.phase = Some("first");
            p.rules_per_program = Some(rpp);
            p.note = Some(format!(
                "first packets; frames of 256; {disagree} verdicts differ from fast; {note}"
            ));
            rows.push(p);
        }
    }
    rows
}

/// Measures every engine on one workload. `log` receives progress lines.
pub fn classify(kind: Kind, opts: Options, log: &mut dyn FnMut(&str)) -> Vec<Row> {
    let t = Instant::now();
    let w = generate(kind);
    let (state, ids) = w.state();
    log(&format!(
        "{}: {} rules, {} members, {} packets; generated in {:.1}s",
        kind.name(),
        w.rules,
        w.members,
        w.packets.len(),
        t.elapsed().as_secs_f64()
    ));
    let name = kind.name();
    let mut rows = Vec::new();

    // Fast classifier.
    let t = Instant::now();
    let mut builder = Builder::new();
    let g = builder.build(&state, &ids);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let inputs = resolved(&w, &g);
    let mut scratch = Scratch::default();
    // Verdicts of the batch path (the one timed), per packet of the workload, and a
    // check that it agrees with the one-packet path.
    let batches: Vec<&[_]> = inputs.chunks(capo_classifier::MAX_BATCH).collect();
    let mut out = Vec::with_capacity(capo_classifier::MAX_BATCH);
    let mut batch_verdicts = Vec::with_capacity(inputs.len());
    for b in &batches {
        g.classify_batch(b, &mut scratch, &mut out);
        batch_verdicts.extend(out.iter().map(|d| d.map(|d| d.verdict)));
    }
    let single_disagree = inputs
        .iter()
        .zip(&batch_verdicts)
        .filter(|((i, d, p), v)| g.classify(*i, *d, p, &mut scratch).map(|x| x.verdict) != **v)
        .count();
    if single_disagree > 0 {
        log(&format!(
            "fast: {single_disagree} packets where the batch and one-packet paths disagree"
        ));
    }
    let mut bv = batch_verdicts.into_iter();
    let fast_verdicts: Vec<Option<Verdict>> = w
        .packets
        .iter()
        .map(|(k, _, _)| {
            g.interface_of(&IfaceKind::Workload(k.clone()))
                .and_then(|_| bv.next().flatten())
        })
        .collect();
    let per_batch = time_loop(opts.budget(), batches.len(), |k| {
        if let Some(b) = batches.get(k) {
            g.classify_batch(b, &mut scratch, &mut out);
            black_box(out.len());
        }
    });
    let ns = per_batch * batches.len() as f64 / inputs.len().max(1) as f64;
    let mem = g.memory();
    let mut fast = Row::new("fast", name).timing(ns);
    fast.compile_ms = Some(compile_ms);
    fast.bytes_per_member = Some(mem.index_bytes as f64 / mem.members.max(1) as f64);
    log(&format!(
        "fast: index {} MiB, programs {} MiB, {} members",
        mem.index_bytes >> 20,
        mem.program_bytes >> 20,
        mem.members
    ));
    let mut production_rows = Vec::new();
    if let Some(p) = production(&w, &state, &ids, &g, opts) {
        let disagree = p.disagree;
        if disagree > 0 {
            log(&format!(
                "production: {disagree} packets where the frame pipeline and the fast path disagree"
            ));
        }
        let frames = capo_classifier::MAX_BATCH;
        for (phase, ns, note) in [
            (
                "first",
                p.first,
                format!("first packets; frames of {frames}; {disagree} verdicts differ from fast"),
            ),
            (
                "established",
                p.established,
                format!(
                    "established packets (the allowed ones again); frames of {frames}; {} of {} flow-table hits",
                    p.established_hits, p.established_packets
                ),
            ),
        ] {
            let mut row = Row::new("production", name).timing(ns);
            row.path = Some("production");
            row.note = Some(note);
            row.phase = Some(phase);
            production_rows.push(row);
        }
    }
    if let Some(n) = crate::node::node_logic(&w, &state, &ids, &g, opts) {
        log(&format!(
            "node: the plugin's node logic: first {:.1} ns/packet, established {:.1} ns/packet ({} of {} allowed; {} verdicts differ from fast)",
            n.first, n.established, n.allowed, n.packets, n.disagree
        ));
        for (phase, ns) in [("first", n.first), ("established", n.established)] {
            let mut row = Row::new("node", name).timing(ns);
            row.path = Some("production");
            row.phase = Some(phase);
            row.note = Some(format!(
                "capo_vpp_plugin::classify_batch per arc and frame of {}, IP-header buffers; {} of {} packets allowed; {} verdicts differ from fast",
                capo_classifier::MAX_BATCH,
                n.allowed,
                n.packets,
                n.disagree
            ));
            production_rows.push(row);
        }
    }
    // rte_acl now, while the generation is held: it is compared with the fast path
    // on the same packets (it may only build some programs' contexts).
    let acl_row = (!opts.fast_only).then(|| {
        let by_packet: Vec<
            Option<(
                capo_classifier::IfaceId,
                capo_policy::Direction,
                capo_policy::Packet,
            )>,
        > = w
            .packets
            .iter()
            .map(|(k, d, p)| {
                g.interface_of(&IfaceKind::Workload(k.clone()))
                    .map(|i| (i, *d, *p))
            })
            .collect();
        let mut fast_on = |idx: &[usize]| -> f64 {
            let items: Vec<_> = idx
                .iter()
                .filter_map(|i| by_packet.get(*i).copied().flatten())
                .collect();
            let batches: Vec<&[_]> = items.chunks(capo_classifier::MAX_BATCH).collect();
            let mut out = Vec::with_capacity(capo_classifier::MAX_BATCH);
            let per_batch = time_loop(opts.budget(), batches.len(), |k| {
                if let Some(b) = batches.get(k) {
                    g.classify_batch(b, &mut scratch, &mut out);
                    black_box(out.len());
                }
            });
            per_batch * batches.len() as f64 / items.len().max(1) as f64
        };
        crate::acl::measure(&w, &state, opts.budget(), &fast_verdicts, &mut fast_on, log)
    });
    drop(g);
    fast.update_p99_us = Some(update_p99(
        &w,
        state.clone(),
        ids.clone(),
        &mut builder,
        opts,
    ));
    rows.push(fast);
    rows.extend(production_rows);
    if opts.fast_only {
        return rows;
    }

    // Reference evaluator (sampled), with an agreement check against the fast path.
    let mut mismatches = 0usize;
    let mut k = 0usize;
    let ns = time_sampled(opts.budget(), w.packets.len(), |i| {
        if let Some((key, d, p)) = w.packets.get(i) {
            let o = eval::evaluate_workload(&state, key, *d, p);
            if let (Some(o), Some(Some(f))) = (o, fast_verdicts.get(i)) {
                if o.verdict != *f {
                    mismatches += 1;
                }
            }
            k += 1;
        }
    });
    log(&format!(
        "reference: {k} packets sampled, {mismatches} verdict mismatches against fast"
    ));
    let mut reference = Row::new("reference", name).timing(ns);
    reference.note = Some(format!("sampled {k} of {} packets", w.packets.len()));
    rows.push(reference);

    // The C plugin's linear algorithm (sampled).
    let t = Instant::now();
    let linear = Linear::build(&state);
    let linear_ms = t.elapsed().as_secs_f64() * 1e3;
    // Interfaces resolved up front, as the plugin indexes by sw_if_index.
    let ifaces: Vec<_> = w
        .packets
        .iter()
        .map(|(key, _, _)| linear.interface(key))
        .collect();
    let mut k = 0usize;
    let ns = time_sampled(opts.budget(), w.packets.len(), |i| {
        if let (Some((_, d, p)), Some(iface)) = (w.packets.get(i), ifaces.get(i)) {
            black_box(linear.evaluate(*iface, *d, p));
            k += 1;
        }
    });
    let mut lin = Row::new("linear", name).timing(ns);
    lin.compile_ms = Some(linear_ms);
    lin.note = Some(format!("sampled {k} of {} packets", w.packets.len()));
    rows.push(lin);

    // rte_acl.
    rows.extend(acl_row.into_iter().flatten());
    rows
}

/// p99 of single-member add/remove deltas (state apply + index update + publish).
fn update_p99(
    w: &Workload,
    mut state: capo_policy::State,
    mut ids: capo_policy::IdTable,
    builder: &mut Builder,
    opts: Options,
) -> f64 {
    let Some(first) = builder.current().cloned() else {
        return f64::NAN;
    };
    let cell = GenerationCell::new(first);
    let mut rng = Rng::new(99);
    let mut samples = Vec::with_capacity(opts.updates());
    let mut added: Vec<(capo_policy::IpSetId, Member)> = Vec::new();
    for i in 0..opts.updates() {
        let update = if i % 2 == 0 || added.is_empty() {
            let set = w
                .selector_sets
                .get(rng.below(w.selector_sets.len()))
                .cloned();
            let Some(set) = set else { break };
            let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x6400_0000u32 + i as u32));
            let m = Member::Net(Cidr::host(addr));
            added.push((set.clone(), m));
            Update::IpSetDelta {
                id: set,
                added: vec![m],
                removed: vec![],
            }
        } else {
            let (set, m) = added.swap_remove(rng.below(added.len()));
            Update::IpSetDelta {
                id: set,
                added: vec![],
                removed: vec![m],
            }
        };
        let t = Instant::now();
        // Only applied updates are timed: a refusal is no update (the benchmark's own
        // deltas are valid, so none is expected; `capo-bench updates` counts them).
        if let Ok(g) = builder.apply(&mut state, &mut ids, update) {
            cell.publish(g);
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = (samples.len() * 99 / 100).min(samples.len().saturating_sub(1));
    samples.get(idx).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep reaches about the requested rules per program and its production
    /// rows agree with the fast path on every packet.
    #[test]
    fn sweep_reaches_the_requested_sizes() {
        let opts = Options {
            quick: true,
            fast_only: true,
        };
        let rows = sweep(Kind::K8s, &[70, 280], opts, &mut |_| {});
        assert_eq!(rows.len(), 4);
        for (row, want) in rows.iter().zip([70.0, 70.0, 280.0, 280.0]) {
            let got = row.rules_per_program.unwrap();
            assert!(
                (got - want).abs() / want < 0.15,
                "{got} rules per program for {want}"
            );
            assert!(row.ns_per_packet.is_some_and(|ns| ns > 0.0));
        }
        let production: Vec<_> = rows.iter().filter(|r| r.engine == "production").collect();
        assert_eq!(production.len(), 2);
        for r in production {
            assert!(
                r.note
                    .as_deref()
                    .unwrap_or("")
                    .contains(" 0 verdicts differ from fast"),
                "{r:?}"
            );
        }
        assert!(sweep(Kind::Seed, &[70], opts, &mut |_| {}).is_empty());
    }

    /// The established phase sends the allowed packets again, and each is a hit of
    /// the flow its first packet opened.
    #[test]
    fn established_phase_is_the_allowed_packets_all_hits() {
        let w = generate(Kind::Seed);
        let (state, ids) = w.state();
        let g = Builder::new().build(&state, &ids);
        let opts = Options {
            quick: true,
            fast_only: true,
        };
        let p = production(&w, &state, &ids, &g, opts).unwrap();
        assert_eq!(p.disagree, 0);
        assert!(p.established_packets > 0);
        assert!(p.established_packets < w.packets.len());
        assert_eq!(p.established_hits, p.established_packets as u64);
        assert!(p.established > 0.0 && p.first > 0.0);
    }
}
