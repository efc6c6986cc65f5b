//! DPDK `rte_acl` as a peer engine (feature `rte-acl`, through the safe wrapper
//! `capo_offload::acl` over `dpdk-sys`).
//!
//! The fair comparison is one ACL context per interface program, as a VPP-style
//! dataplane would hold one per interface and direction. Each program is expanded
//! into segments of IPv4 5-tuple entries by [`crate::expand`], first match by
//! priority. Calico's control flow maps onto rte_acl's categories: one category per
//! segment, so one classify call returns the best match of every segment; the packet
//! then walks the segments in order (allow/deny decide, `pass` or no match moves on,
//! after the last segment the packet is dropped). A program `expand` cannot express
//! is counted and skipped, never approximated.
//!
//! Building is expensive (a context of a few thousand entries takes tens of
//! milliseconds), so contexts are built program by program until a build budget is
//! spent, and the packets of the built programs are measured; the note says how
//! many. W-large is not built at all: its rules expand to millions of entries and
//! rte_acl has no incremental update (a member change is a rebuild).

#[cfg(not(feature = "rte-acl"))]
use std::time::Duration;

use capo_policy::State;

use crate::measure::Row;
#[cfg(not(feature = "rte-acl"))]
use crate::workload::Kind;
use crate::workload::Workload;

/// Number of rte_acl entries the workload's rules expand to (every program's rules
/// × source members × destination members × port ranges), without building.
pub fn expanded_entries(w: &Workload, state: &State) -> u64 {
    let size = |ids: &[capo_policy::IpSetId], nets: usize| -> u64 {
        let n: usize = ids
            .iter()
            .filter_map(|i| state.ipsets().get(i))
            .map(|s| s.len())
            .sum::<usize>()
            + nets;
        n.max(1) as u64
    };
    let mut total = 0u64;
    for wep in state.workloads().values() {
        for dir in capo_policy::Direction::BOTH {
            for t in &wep.tiers {
                for k in t.policies(dir) {
                    if let Some(p) = state.policies().get(k) {
                        for r in p.rules(dir) {
                            let src = size(&r.src.ip_sets, r.src.nets.len());
                            let dst = size(&r.dst.ip_sets, r.dst.nets.len())
                                * size(&r.dst.named_port_sets, 0);
                            let ports =
                                (r.dst.ports.len().max(1) * r.src.ports.len().max(1)) as u64;
                            total += src * dst * ports;
                        }
                    }
                }
            }
        }
    }
    let _ = w;
    total
}

fn row(w: &Workload) -> Row {
    Row::new("rte_acl", w.kind.name())
}

/// Measures rte_acl on the workload, or says why it could not. `fast` holds the
/// fast classifier's verdict of every packet, to check rte_acl's against;
/// `fast_on(packets)` times the fast classifier on those packets only (ns/packet),
/// for the comparison on the programs rte_acl could build.
#[cfg(not(feature = "rte-acl"))]
pub fn measure(
    w: &Workload,
    state: &State,
    _budget: Duration,
    _fast: &[Option<capo_policy::Verdict>],
    _fast_on: &mut dyn FnMut(&[usize]) -> f64,
    log: &mut dyn FnMut(&str),
) -> Vec<Row> {
    let entries = expanded_entries(w, state);
    log(&format!("rte_acl: rules expand to {entries} entries"));
    let mut r = row(w);
    r.note = Some(match w.kind {
        Kind::Large => large_note(entries),
        _ => format!(
            "not measured: capo-bench built without the rte-acl feature (needs libdpdk-dev: cargo run -p capo-bench --features rte-acl); rules expand to {entries} entries"
        ),
    });
    vec![r]
}

fn large_note(entries: u64) -> String {
    format!(
        "not built: the rules expand to {entries} rte_acl entries, and rte_acl has no incremental update, so every member add/remove is a rebuild of the contexts using the set"
    )
}

#[cfg(feature = "rte-acl")]
pub use with_dpdk::measure;

#[cfg(feature = "rte-acl")]
mod with_dpdk {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    use capo_offload::acl::{
        ipv4_5tuple_rule, AclBuilder, AclContext, AclRule, Ipv4Key, IPV4_5TUPLE,
    };
    use capo_offload::dpdk::eal::Eal;
    use capo_policy::{Direction, Packet, State, Verdict, WorkloadKey, L4};

    use super::{expanded_entries, large_note, row};
    use crate::expand::Act;
    use crate::measure::Row;
    use crate::workload::{Kind, Workload};

    /// One interface program as rte_acl runs it.
    struct AclProgram {
        ctx: AclContext<5>,
        /// Categories classified (1 or a multiple of 4).
        categories: u32,
        /// Number of segments (categories in use), in evaluation order.
        segments: usize,
        /// Userdata - 1 → action.
        acts: Vec<Act>,
        entries: usize,
    }

    /// Why a program has no rte_acl context.
    #[derive(Debug, thiserror::Error)]
    enum Unexpressible {
        #[error(transparent)]
        Expand(#[from] crate::expand::Unexpressible),
        #[error("{0} segments, rte_acl has 16 categories")]
        Segments(usize),
        #[error("more entries than rte_acl counts")]
        TooManyEntries,
        #[error(transparent)]
        Acl(#[from] capo_offload::acl::AclError),
    }

    /// Builds one program's context; `Err` names what could not be expressed.
    fn build_program(
        eal: &Eal,
        state: &State,
        key: &WorkloadKey,
        dir: Direction,
    ) -> Result<AclProgram, Unexpressible> {
        let segs = crate::expand::segments(state, key, dir)?;
        let nseg = segs.len().max(1);
        if nseg > 16 {
            return Err(Unexpressible::Segments(nseg));
        }
        let categories = if nseg == 1 {
            1
        } else {
            nseg.div_ceil(4) as u32 * 4
        };
        let mut acts = Vec::new();
        let mut rules: Vec<AclRule<5>> = Vec::new();
        let mut seq = 0i32;
        for (c, seg) in segs.iter().enumerate() {
            for (act, entries) in seg {
                acts.push(*act);
                let userdata = acts.len() as u32;
                for (proto, s, d, sp, dp) in entries {
                    seq += 1;
                    let mut r = ipv4_5tuple_rule(
                        (1 << 28) - seq,
                        userdata,
                        *proto,
                        (s.0.to_be_bytes(), s.1),
                        (d.0.to_be_bytes(), d.1),
                        *sp,
                        *dp,
                    );
                    r.category_mask = 1 << c;
                    rules.push(r);
                }
            }
        }
        if rules.is_empty() {
            // rte_acl refuses to build an empty context: one entry no packet matches
            // (protocol 255 from 255.255.255.255/32).
            acts.push(Act::Pass);
            rules.push(ipv4_5tuple_rule(
                1,
                acts.len() as u32,
                Some(255),
                ([255; 4], 32),
                ([255; 4], 32),
                (0, 0),
                (0, 0),
            ));
        }
        let n = u32::try_from(rules.len()).map_err(|_| Unexpressible::TooManyEntries)?;
        let mut b = AclBuilder::new(eal, "capo-bench", IPV4_5TUPLE, n)?;
        b.add(&rules)?;
        let ctx = b.build(categories)?;
        Ok(AclProgram {
            ctx,
            categories,
            segments: segs.len(),
            acts,
            entries: rules.len(),
        })
    }

    fn key_of(pkt: &Packet) -> Option<Ipv4Key> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (pkt.src, pkt.dst) else {
            return None;
        };
        let (sp, dp) = match pkt.l4 {
            L4::Ports { src, dst } => (src, dst),
            L4::Icmp { icmp_type, code } => (u16::from(icmp_type), u16::from(code)),
            L4::None => (0, 0),
        };
        Some(Ipv4Key::new(pkt.protocol.0, s.octets(), d.octets(), sp, dp))
    }

    impl AclProgram {
        fn verdict(&self, key: &Ipv4Key, results: &mut [u32; 16]) -> Option<Verdict> {
            self.ctx
                .classify(&[key.as_bytes()], &mut results[..], self.categories)
                .ok()?;
            // No match in a segment: a tier without end-of-tier drop (a tier with one
            // has a catch-all entry), the internal rule or a profile: carry on.
            for c in 0..self.segments {
                match results.get(c).copied().unwrap_or(0) {
                    0 => {}
                    u => match self.acts.get(u as usize - 1) {
                        Some(Act::Allow) => return Some(Verdict::Allow),
                        Some(Act::Deny) => return Some(Verdict::Deny),
                        Some(Act::Pass) | None => {}
                    },
                }
            }
            Some(Verdict::Deny)
        }
    }

    /// Measures rte_acl on the workload, or says why it could not. `fast` holds the
    /// fast classifier's verdict of every packet, to check rte_acl's against.
    pub fn measure(
        w: &Workload,
        state: &State,
        budget: Duration,
        fast: &[Option<Verdict>],
        fast_on: &mut dyn FnMut(&[usize]) -> f64,
        log: &mut dyn FnMut(&str),
    ) -> Vec<Row> {
        let entries = expanded_entries(w, state);
        log(&format!("rte_acl: rules expand to {entries} entries"));
        let mut r = row(w);
        if w.kind == Kind::Large {
            r.note = Some(large_note(entries));
            return vec![r];
        }
        // The EAL as tests and CI run it (no hugepages, no PCI), with room for the
        // contexts in its heap.
        let mut args = Eal::test_args(&format!("capo-bench-{}", std::process::id()), &[]);
        if let Some(i) = args.iter().position(|a| a == "-m") {
            if let Some(m) = args.get_mut(i + 1) {
                *m = "4096".into();
            }
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let eal = match Eal::init(&argv) {
            Ok(e) => e,
            Err(e) => {
                r.note = Some(format!("not measured: EAL init failed: {e}"));
                return vec![r];
            }
        };
        // Every program's context, in packet order: build time and the process's
        // resident growth (the EAL runs without hugepages, so its memory is ordinary
        // pages, resident once DPDK writes them).
        let rss_before = crate::measure::resident_bytes();
        let mut progs: HashMap<(WorkloadKey, Direction), Option<AclProgram>> = HashMap::new();
        let mut unsupported = 0usize;
        let mut first_err = None;
        let mut build_time = Duration::ZERO;
        let mut built = 0usize;
        let mut built_entries = 0usize;
        let programs: std::collections::HashSet<(&WorkloadKey, Direction)> =
            w.packets.iter().map(|(k, d, _)| (k, *d)).collect();
        for (k, d, _) in &w.packets {
            let id = (k.clone(), *d);
            if progs.contains_key(&id) {
                continue;
            }
            let b = Instant::now();
            let p = match build_program(eal, state, k, *d) {
                Ok(p) => {
                    build_time += b.elapsed();
                    built += 1;
                    built_entries += p.entries;
                    if built % 100 == 0 {
                        log(&format!(
                            "rte_acl: {built} of {} contexts built ({:.1} s)",
                            programs.len(),
                            build_time.as_secs_f64()
                        ));
                    }
                    Some(p)
                }
                Err(e) => {
                    unsupported += 1;
                    first_err.get_or_insert(e);
                    None
                }
            };
            progs.insert(id, p);
        }
        let acl_memory = crate::measure::resident_bytes().saturating_sub(rss_before);
        // The packets of the built programs, with the fast path's verdicts.
        let mut items = Vec::new();
        let mut idx = Vec::new();
        for (i, ((k, d, p), f)) in w.packets.iter().zip(fast).enumerate() {
            if let (Some(Some(prog)), Some(key)) = (progs.get(&(k.clone(), *d)), key_of(p)) {
                items.push((prog, key, *f));
                idx.push(i);
            }
        }
        if items.is_empty() {
            r.note = Some(format!(
                "not measured: no context built ({unsupported} programs unsupported: {})",
                first_err.map(|e| e.to_string()).unwrap_or_default()
            ));
            return vec![r];
        }
        let mut results = [0u32; 16];
        let mut mismatches = 0usize;
        for (prog, key, f) in &items {
            let v = prog.verdict(key, &mut results);
            if v != *f {
                mismatches += 1;
            }
        }
        let ns = crate::measure::time_loop(budget, items.len(), |i| {
            if let Some((prog, key, _)) = items.get(i) {
                std::hint::black_box(prog.verdict(key, &mut results));
            }
        });
        // Bursts: the same packets grouped by program, up to CLASSIFY_BURST keys per
        // rte_acl_classify call (what a dataplane holding one context per interface
        // can do with a frame sorted by interface).
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by_key(|i| {
            items
                .get(*i)
                .map(|(p, _, _)| std::ptr::from_ref(*p) as usize)
        });
        let mut bursts: Vec<(&AclProgram, Vec<&Ipv4Key>)> = Vec::new();
        for i in order {
            let Some((prog, key, _)) = items.get(i) else {
                continue;
            };
            match bursts.last_mut() {
                Some((p, keys))
                    if std::ptr::eq(*p, *prog)
                        && keys.len() < capo_offload::acl::CLASSIFY_BURST =>
                {
                    keys.push(key)
                }
                _ => bursts.push((prog, vec![key])),
            }
        }
        let burst_keys: Vec<(&AclProgram, Vec<&[u8]>)> = bursts
            .iter()
            .map(|(p, keys)| (*p, keys.iter().map(|k| k.as_bytes()).collect()))
            .collect();
        let mut burst_results = vec![0u32; capo_offload::acl::CLASSIFY_BURST * 16];
        let per_burst = crate::measure::time_loop(budget, burst_keys.len(), |i| {
            if let Some((prog, keys)) = burst_keys.get(i) {
                let _ = prog.ctx.classify(keys, &mut burst_results, prog.categories);
                std::hint::black_box(burst_results[0]);
            }
        });
        let burst_ns = per_burst * burst_keys.len() as f64 / items.len().max(1) as f64;
        let fast_same = fast_on(&idx);
        log(&format!(
            "rte_acl: {built} contexts built ({built_entries} entries) in {:.0} ms, {} packets, {mismatches} verdict mismatches against fast",
            build_time.as_secs_f64() * 1e3,
            items.len()
        ));
        r = r.timing(ns);
        r.compile_ms = Some(build_time.as_secs_f64() * 1e3);
        let unsupported_note = if unsupported > 0 {
            format!(
                "; {unsupported} programs unsupported: {}",
                first_err.map(|e| e.to_string()).unwrap_or_default()
            )
        } else {
            String::new()
        };
        let common = format!(
            "one context per interface program, all {built} of {} built ({built_entries} entries, {:.1} s, {:.0} MiB resident growth; compile_ms is all of them), {} of {} packets measured; fast on the same packets: {fast_same:.1} ns/packet; {mismatches} verdict mismatches against fast{unsupported_note}",
            programs.len(),
            build_time.as_secs_f64(),
            acl_memory as f64 / f64::from(1u32 << 20),
            items.len(),
            w.packets.len(),
        );
        r.note = Some(format!("one rte_acl_classify call per packet; {common}"));
        let mut burst = row(w).timing(burst_ns);
        burst.path = Some("burst");
        burst.compile_ms = r.compile_ms;
        burst.note = Some(format!(
            "packets grouped by program, up to {} per rte_acl_classify call ({} calls, {:.1} packets a call); {common}",
            capo_offload::acl::CLASSIFY_BURST,
            burst_keys.len(),
            items.len() as f64 / burst_keys.len().max(1) as f64
        ));
        vec![r, burst]
    }
}
