//! The node's logic over plain byte buffers: one frame's packets in, one next node and
//! counter per packet out. The VPP node (`node.rs`) only borrows the buffers and hands
//! them here, so everything the node decides is tested without VPP.
//!
//! Per packet, in order:
//!
//! 1. The interface (rx on the unicast arcs, tx on the output arcs) must be policed by
//!    the active generation; otherwise the packet passes untouched.
//! 2. A NIC allow mark from a generation software holds (active or previous) is
//!    honoured without classification. A capo mark from any other generation is
//!    counted and the packet classified as if unmarked (DESIGN.md §4).
//! 3. A flow-table hit (an allowed flow, or its reply) passes.
//! 4. Otherwise the packet is parsed and classified in Calico's direction for the
//!    interface (`rx XOR invert_rx_tx` → egress); an allow is recorded in the flow table.
//!
//! The generation is loaded once per frame, so every packet of a frame is judged by one
//! generation.

use capo_policy::Verdict;

use crate::classify::parse_ip;
use crate::config::EstablishedFlows;
use crate::flow::{FlowKey, FlowTable};
use crate::generation::{Generation, GenerationCell, SwIfIndex, VppDir};
use crate::mark::Mark;
use crate::trace::{How, TraceData};

/// One packet as the node sees it.
#[derive(Debug, Clone, Copy)]
pub struct PacketIn<'a> {
    /// The bytes from the IP header on (the buffer's current data).
    pub bytes: &'a [u8],
    /// The interface: rx on the unicast arcs, tx on the output arcs.
    pub sw_if_index: SwIfIndex,
    /// The buffer's `flow_id` (a NIC mark, or 0).
    pub flow_id: u32,
    /// Whether the buffer is being traced.
    pub traced: bool,
}

/// Where a packet goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The `drop` node.
    Drop,
    /// The next feature on the arc.
    NextFeature,
}

/// Why a dropped packet was dropped (the buffer's error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Denied by policy.
    Denied,
    /// Could not be parsed.
    Malformed,
}

/// The decision for one packet.
#[derive(Debug, Clone, Copy)]
pub struct PacketOut {
    /// Next node.
    pub next: Next,
    /// Set when `next` is [`Next::Drop`].
    pub drop: Option<DropReason>,
    /// How it was decided.
    pub how: How,
    /// The trace record, for traced buffers.
    pub trace: Option<TraceData>,
}

/// Per-frame counts; the node adds them to its error counters once per frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Packets allowed (however decided).
    pub allowed: u64,
    /// Packets denied by policy.
    pub denied: u64,
    /// Packets allowed by the flow table.
    pub flow_hits: u64,
    /// Packets allowed by a NIC verdict.
    pub nic_accepted: u64,
    /// Packets carrying a capo mark of a generation software does not hold.
    pub nic_unknown_generation: u64,
    /// Packets that could not be parsed (dropped).
    pub malformed: u64,
    /// Packets on interfaces the active generation does not police (passed).
    pub not_policed: u64,
}

impl BatchCounts {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &BatchCounts) {
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.flow_hits += other.flow_hits;
        self.nic_accepted += other.nic_accepted;
        self.nic_unknown_generation += other.nic_unknown_generation;
        self.malformed += other.malformed;
        self.not_policed += other.not_policed;
    }
}

/// What a frame is classified against.
#[derive(Debug)]
pub struct BatchCtx<'a> {
    /// The generations.
    pub cell: &'a GenerationCell,
    /// This worker's flow table.
    pub flows: &'a mut FlowTable,
    /// Established flows across generations.
    pub mode: EstablishedFlows,
    /// Now, in seconds.
    pub now: u64,
}

/// Decides a frame's packets, in order, into `out` (cleared first); `IP6` picks the
/// family, `OUTPUT` the arc (false: ip4/ip6-unicast, rx; true: ip4/ip6-output, tx).
pub fn classify_batch<const IP6: bool, const OUTPUT: bool>(
    ctx: &mut BatchCtx<'_>,
    pkts: &[PacketIn<'_>],
    out: &mut Vec<PacketOut>,
) -> BatchCounts {
    out.clear();
    let dir = if OUTPUT { VppDir::Tx } else { VppDir::Rx };
    let mut counts = BatchCounts::default();
    let generation = ctx.cell.load();
    for p in pkts {
        let o = match generation.as_deref() {
            Some(g) => one::<IP6>(ctx, g, dir, p, &mut counts),
            None => pass(p, dir, 0, &mut counts),
        };
        out.push(o);
    }
    counts
}

fn pass(p: &PacketIn<'_>, dir: VppDir, generation: u64, counts: &mut BatchCounts) -> PacketOut {
    counts.not_policed += 1;
    PacketOut {
        next: Next::NextFeature,
        drop: None,
        how: How::NotPoliced,
        trace: p.traced.then(|| {
            TraceData::new(
                p.sw_if_index.0,
                dir,
                generation,
                Verdict::Allow,
                How::NotPoliced,
                "",
            )
        }),
    }
}

fn one<const IP6: bool>(
    ctx: &mut BatchCtx<'_>,
    g: &Generation,
    dir: VppDir,
    p: &PacketIn<'_>,
    counts: &mut BatchCounts,
) -> PacketOut {
    let Some(iface) = g.interface(p.sw_if_index) else {
        return pass(p, dir, g.id(), counts);
    };
    let trace = |verdict, how, line: &str| {
        p.traced
            .then(|| TraceData::new(p.sw_if_index.0, dir, g.id(), verdict, how, line))
    };

    match Mark::decode(p.flow_id) {
        Mark::Allow { tag, class } if ctx.cell.holds_tag(tag) => {
            counts.allowed += 1;
            counts.nic_accepted += 1;
            return PacketOut {
                next: Next::NextFeature,
                drop: None,
                how: How::NicAllow,
                trace: trace(
                    Verdict::Allow,
                    How::NicAllow,
                    &format!("NIC allow, generation tag {tag}, rule class {class}"),
                ),
            };
        }
        Mark::Allow { tag, .. } | Mark::Punt { tag } if !ctx.cell.holds_tag(tag) => {
            counts.nic_unknown_generation += 1;
        }
        _ => {}
    }

    let parsed = match parse_ip(p.bytes, IP6) {
        Ok(parsed) => parsed,
        Err(e) => {
            counts.malformed += 1;
            return PacketOut {
                next: Next::Drop,
                drop: Some(DropReason::Malformed),
                how: How::Malformed,
                trace: trace(Verdict::Deny, How::Malformed, &e.to_string()),
            };
        }
    };
    let key = FlowKey::new(p.sw_if_index, &parsed);
    if let Some(e) = ctx.flows.hit(&key, ctx.now, g.id(), ctx.mode) {
        counts.allowed += 1;
        counts.flow_hits += 1;
        return PacketOut {
            next: Next::NextFeature,
            drop: None,
            how: How::FlowHit,
            trace: trace(Verdict::Allow, How::FlowHit, &flow_line(&e)),
        };
    }

    let outcome = g
        .classifier()
        .classify(&iface.kind, iface.calico_dir(dir), &parsed.packet);
    let line = || g.views().decider_line(&outcome.decider);
    match outcome.verdict {
        Verdict::Allow => {
            counts.allowed += 1;
            ctx.flows
                .insert(key, g.id(), rule_id(g, &outcome.decider), ctx.now);
            PacketOut {
                next: Next::NextFeature,
                drop: None,
                how: How::Classified,
                trace: p.traced.then(|| {
                    TraceData::new(
                        p.sw_if_index.0,
                        dir,
                        g.id(),
                        Verdict::Allow,
                        How::Classified,
                        &line(),
                    )
                }),
            }
        }
        Verdict::Deny => {
            counts.denied += 1;
            PacketOut {
                next: Next::Drop,
                drop: Some(DropReason::Denied),
                how: How::Classified,
                trace: p.traced.then(|| {
                    TraceData::new(
                        p.sw_if_index.0,
                        dir,
                        g.id(),
                        Verdict::Deny,
                        How::Classified,
                        &line(),
                    )
                }),
            }
        }
    }
}

fn flow_line(e: &crate::flow::FlowEntry) -> String {
    match e.rule_id {
        Some(r) => format!("allowed flow (rule#{r}, generation {})", e.generation),
        None => format!("allowed flow (generation {})", e.generation),
    }
}

/// The views' `rule#` of a decider that is a policy or profile rule.
fn rule_id(g: &Generation, d: &capo_policy::Decider) -> Option<u32> {
    use capo_policy::views::PolicyRef;
    use capo_policy::Decider;
    match d {
        Decider::PolicyRule {
            policy,
            direction,
            index,
            ..
        } => g
            .ids()
            .rule(&PolicyRef::Policy(policy.clone()), *direction, *index),
        Decider::ProfileRule {
            profile,
            direction,
            index,
        } => g
            .ids()
            .rule(&PolicyRef::Profile(profile.clone()), *direction, *index),
        Decider::EndOfTier { tier } => g.ids().tier_rule(tier),
        _ => None,
    }
}

/// The plugin's own running totals (VPP's node error counters hold the same numbers per
/// node; these are what `clear capo counters` resets and `show capo flows` prints).
#[derive(Debug, Default)]
pub struct Counters {
    allowed: std::sync::atomic::AtomicU64,
    denied: std::sync::atomic::AtomicU64,
    flow_hits: std::sync::atomic::AtomicU64,
    nic_accepted: std::sync::atomic::AtomicU64,
    nic_unknown_generation: std::sync::atomic::AtomicU64,
    malformed: std::sync::atomic::AtomicU64,
}

impl Counters {
    /// Adds one frame's counts.
    pub fn add(&self, c: &BatchCounts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.allowed.fetch_add(c.allowed, Relaxed);
        self.denied.fetch_add(c.denied, Relaxed);
        self.flow_hits.fetch_add(c.flow_hits, Relaxed);
        self.nic_accepted.fetch_add(c.nic_accepted, Relaxed);
        self.nic_unknown_generation
            .fetch_add(c.nic_unknown_generation, Relaxed);
        self.malformed.fetch_add(c.malformed, Relaxed);
    }

    /// The totals.
    pub fn snapshot(&self) -> BatchCounts {
        use std::sync::atomic::Ordering::Relaxed;
        BatchCounts {
            allowed: self.allowed.load(Relaxed),
            denied: self.denied.load(Relaxed),
            flow_hits: self.flow_hits.load(Relaxed),
            nic_accepted: self.nic_accepted.load(Relaxed),
            nic_unknown_generation: self.nic_unknown_generation.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            not_policed: 0,
        }
    }

    /// Resets every total.
    pub fn clear(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for c in [
            &self.allowed,
            &self.denied,
            &self.flow_hits,
            &self.nic_accepted,
            &self.nic_unknown_generation,
            &self.malformed,
        ] {
            c.store(0, Relaxed);
        }
    }
}
