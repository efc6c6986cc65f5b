//! The node's logic over plain byte buffers: one frame's packets in, one next node and
//! counter per packet out. The VPP node (`node.rs`) only borrows the buffers and hands
//! them here, so everything the node decides is tested without VPP.
//!
//! Per frame, the active generation is loaded once, so every packet of a frame is
//! judged by one generation. Per packet, in order:
//!
//! 1. The interface (rx on the unicast arcs, tx on the output arcs) must be policed by
//!    the active generation; otherwise the packet passes untouched.
//! 2. A NIC mark ([`crate::mark`], capo-offload's layout) from a generation software
//!    holds (active or previous): an allow is honoured without classification, a punt
//!    is classified in software. A mark of any other generation is counted ("NIC marks
//!    from an unknown generation") and the packet classified as if unmarked
//!    (DESIGN.md §4).
//! 3. Otherwise the packet is parsed from its IP header (`capo_classifier::parse_ip`)
//!    and joins the batch the thread's `capo_classifier::Worker` decides: flow table
//!    first (an allowed flow, or its reply, passes), else the compiled generation, in
//!    Calico's direction for the interface (`rx XOR invert_rx_tx` → egress); an allow
//!    opens a flow.
//!
//! Traced packets are decided one at a time, in frame order, so their trace can say
//! whether the flow table or policy decided, and which tier, policy and rule.

use capo_classifier::{
    parse_ipv4, parse_ipv6, reply_of, FlowStats, Input, ParsedPacket, Timestamp, MAX_BATCH,
};
use capo_policy::{Direction, Verdict};

use crate::generation::{Generation, GenerationCell, SwIfIndex, VppDir};
use crate::mark::{MarkKind, NicMarks};
use crate::trace::{How, TraceData};
use crate::worker::{FrameBufs, WorkerSlot};

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
    /// On a policed interface with no generation to classify it (startup.conf
    /// `capo { unclassified drop }`, the default).
    Unclassified,
}

/// The decision for one packet: 3 bytes, so a frame's decisions fit in a few cache
/// lines (trace records, 208 bytes each, are kept apart in [`FrameOut`]).
#[derive(Debug, Clone, Copy)]
pub struct PacketOut {
    /// Next node.
    pub next: Next,
    /// Set when `next` is [`Next::Drop`].
    pub drop: Option<DropReason>,
    /// How it was decided. The worker's decisions are told apart only for traced
    /// packets: for the others [`How::Classified`] covers flow-table hits too (the
    /// frame's [`BatchCounts::flow_hits`] counts them).
    pub how: How,
}

const _: () = assert!(std::mem::size_of::<PacketOut>() <= 3);

impl PacketOut {
    const fn allow(how: How) -> Self {
        PacketOut {
            next: Next::NextFeature,
            drop: None,
            how,
        }
    }

    const fn drop(reason: DropReason, how: How) -> Self {
        PacketOut {
            next: Next::Drop,
            drop: Some(reason),
            how,
        }
    }
}

/// A decision and, for a traced buffer, its trace record.
#[derive(Debug, Clone, Copy)]
pub struct Decided {
    /// The decision.
    pub out: PacketOut,
    /// The trace record (traced buffers only).
    pub trace: Option<TraceData>,
}

impl Decided {
    fn allow(how: How, trace: Option<TraceData>) -> Self {
        Decided {
            out: PacketOut::allow(how),
            trace,
        }
    }

    fn drop(reason: DropReason, how: How, trace: Option<TraceData>) -> Self {
        Decided {
            out: PacketOut::drop(reason, how),
            trace,
        }
    }
}

/// A frame's decisions, one per packet in frame order (the slice it derefs to), and
/// the traced packets' records beside them.
#[derive(Debug, Default)]
pub struct FrameOut {
    decisions: Vec<PacketOut>,
    /// `(position in the frame, record)`, in the order the packets were decided.
    traces: Vec<(usize, TraceData)>,
}

impl FrameOut {
    /// Room for `n` decisions.
    pub fn with_capacity(n: usize) -> Self {
        FrameOut {
            decisions: Vec::with_capacity(n),
            traces: Vec::new(),
        }
    }

    /// The trace record of the frame's `i`-th packet, if it was traced.
    pub fn trace(&self, i: usize) -> Option<&TraceData> {
        self.traces.iter().find(|(at, _)| *at == i).map(|(_, t)| t)
    }

    /// Every trace record, with the position of its packet in the frame.
    pub fn traces(&self) -> &[(usize, TraceData)] {
        &self.traces
    }

    /// Forgets every decision and record.
    pub fn clear(&mut self) {
        self.decisions.clear();
        self.traces.clear();
    }

    /// Appends the decision of the frame's next packet, `i`.
    pub fn push(&mut self, i: usize, d: Decided) {
        debug_assert_eq!(self.decisions.len(), i);
        self.decisions.push(d.out);
        self.keep_trace(i, d.trace);
    }

    /// Puts packet `i`'s decision over its placeholder.
    fn set(&mut self, i: usize, d: Decided) {
        if let Some(o) = self.decisions.get_mut(i) {
            *o = d.out;
        }
        self.keep_trace(i, d.trace);
    }

    fn keep_trace(&mut self, i: usize, trace: Option<TraceData>) {
        if let Some(t) = trace {
            self.traces.push((i, t));
        }
    }
}

impl std::ops::Deref for FrameOut {
    type Target = [PacketOut];

    fn deref(&self) -> &[PacketOut] {
        &self.decisions
    }
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
    /// Packets that met no generation (dropped, or passed with `unclassified pass`).
    pub unclassified: u64,
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
        self.unclassified += other.unclassified;
    }
}

/// What a frame is classified against.
#[derive(Debug)]
pub struct BatchCtx<'a> {
    /// The generations.
    pub cell: &'a GenerationCell,
    /// This thread's worker (flow table, counters).
    pub slot: &'a mut WorkerSlot,
    /// How `flow_id`s are read.
    pub marks: NicMarks,
    /// Now (monotonic).
    pub now: Timestamp,
    /// What happens to packets when there is no generation.
    pub unclassified: Unclassified,
    /// Sample the flows software decides ([`crate::worker::Workers::sampling`]).
    pub sample: bool,
}

/// What the node does with a packet it cannot classify: no generation yet, or (in the
/// node) no worker slot. startup.conf `capo { unclassified drop|pass }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unclassified {
    /// Drop and count it (fail closed; the default).
    #[default]
    Drop,
    /// Pass it on unpoliced (fail open).
    Pass,
}

/// The decision for a packet that cannot be classified.
pub fn unclassified(
    p: &PacketIn<'_>,
    dir: VppDir,
    policy: Unclassified,
    counts: &mut BatchCounts,
) -> Decided {
    counts.unclassified += 1;
    let trace = |verdict| {
        p.traced.then(|| {
            TraceData::new(
                p.sw_if_index.0,
                dir,
                0,
                verdict,
                How::Unclassified,
                "no generation",
            )
        })
    };
    match policy {
        Unclassified::Drop => Decided::drop(
            DropReason::Unclassified,
            How::Unclassified,
            trace(Verdict::Deny),
        ),
        Unclassified::Pass => {
            counts.allowed += 1;
            Decided::allow(How::Unclassified, trace(Verdict::Allow))
        }
    }
}

/// Decides a frame's packets, in order, into `out` (cleared first); `IP6` picks the
/// family, `OUTPUT` the arc (false: ip4/ip6-unicast, rx; true: ip4/ip6-output, tx).
pub fn classify_batch<const IP6: bool, const OUTPUT: bool>(
    ctx: &mut BatchCtx<'_>,
    pkts: &[PacketIn<'_>],
    out: &mut FrameOut,
) -> BatchCounts {
    out.clear();
    let dir = if OUTPUT { VppDir::Tx } else { VppDir::Rx };
    let mut counts = BatchCounts::default();
    let Some(g) = ctx.cell.load() else {
        let policy = ctx.unclassified;
        for (i, p) in pkts.iter().enumerate() {
            out.push(i, unclassified(p, dir, policy, &mut counts));
        }
        return counts;
    };
    let held = ctx.cell.held_tags();
    let slot = &mut *ctx.slot;
    let mut frame = std::mem::take(&mut slot.frame);
    frame.inputs.clear();
    frame.at.clear();
    frame.admitted.clear();

    // 1. Everything decided without the classifier; the rest joins the batch.
    // Tracing is rare: a frame without traced packets skips the per-packet check.
    let mut any_traced = false;
    // While every packet joins the batch (most frames), the k-th input is the frame's
    // k-th packet: `at` stays empty and `out` is filled in order when the batch is
    // decided. The first packet decided here writes both out for the inputs before
    // it (`spread`).
    let mut dense = true;
    for (i, p) in pkts.iter().enumerate() {
        any_traced |= p.traced;
        let Some(calico_dir) = g.calico_dir(p.sw_if_index, dir) else {
            spread(&mut dense, &mut frame, out);
            out.push(i, pass(p, dir, g.id(), &mut counts));
            continue;
        };
        let trace = |verdict, how, line: &str| {
            p.traced
                .then(|| TraceData::new(p.sw_if_index.0, dir, g.id(), verdict, how, line))
        };
        if let Some(m) = ctx.marks.decode(p.flow_id) {
            if held.contains(m.gen_tag) {
                if m.kind == MarkKind::Allow {
                    counts.allowed += 1;
                    counts.nic_accepted += 1;
                    // The flow the NIC allowed is what Calico's conntrack would keep:
                    // its replies and later packets pass statefully in software
                    // (admitted below, as a batch, before anything is classified).
                    if let Ok(parsed) = parse_family::<IP6>(p.bytes) {
                        frame.admitted.push(Input {
                            sw_if_index: p.sw_if_index.0,
                            dir: calico_dir,
                            packet: parsed,
                            len: u32::try_from(p.bytes.len()).unwrap_or(u32::MAX),
                        });
                    }
                    spread(&mut dense, &mut frame, out);
                    let t = if p.traced {
                        let line = format!(
                            "NIC allow, generation tag {}, plan entry {}",
                            m.gen_tag, m.index
                        );
                        trace(Verdict::Allow, How::NicAllow, &line)
                    } else {
                        None
                    };
                    out.push(i, Decided::allow(How::NicAllow, t));
                    continue;
                }
                // A punt: the NIC leaves the packet to software.
            } else {
                counts.nic_unknown_generation += 1;
            }
        }
        let parsed = match parse_family::<IP6>(p.bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                counts.malformed += 1;
                spread(&mut dense, &mut frame, out);
                out.push(
                    i,
                    Decided::drop(
                        DropReason::Malformed,
                        How::Malformed,
                        trace(Verdict::Deny, How::Malformed, &e.to_string()),
                    ),
                );
                continue;
            }
        };
        frame.inputs.push(Input {
            sw_if_index: p.sw_if_index.0,
            dir: calico_dir,
            packet: parsed,
            len: u32::try_from(p.bytes.len()).unwrap_or(u32::MAX),
        });
        if !dense {
            frame.at.push(i);
            out.decisions.push(PLACEHOLDER);
        }
    }

    // The flows of what the NIC allowed; sampled too, so that what the share decides
    // stays in it.
    for run in frame.admitted.chunks(MAX_BATCH) {
        slot.worker.admit_batch(g.classifier(), run, ctx.now);
        if ctx.sample {
            slot.samples.record_run(run);
        }
    }

    // 2. The worker decides the batch in frame order: runs of untraced packets at
    //    once, traced packets one by one.
    if !frame.inputs.is_empty() {
        let hits_before = flow_hits(&slot.counters.flows());
        let at = |k: usize| {
            if dense {
                Some(k)
            } else {
                frame.at.get(k).copied()
            }
        };
        let traced =
            |k: usize| any_traced && at(k).and_then(|i| pkts.get(i)).is_some_and(|p| p.traced);
        let mut start = 0;
        while start < frame.inputs.len() {
            let traced_at = traced(start);
            if traced_at {
                if let (Some(input), Some(i)) = (frame.inputs.get(start), at(start)) {
                    let d = decide_traced(slot, &g, input, pkts.get(i), dir, ctx.now);
                    tally(&d.out, &mut counts);
                    put(out, dense, i, d);
                }
                start += 1;
                continue;
            }
            let mut end = start;
            while end < frame.inputs.len() && end - start < MAX_BATCH && !traced(end) {
                end += 1;
            }
            if let Some(run) = frame.inputs.get(start..end) {
                slot.worker
                    .process(g.classifier(), run, ctx.now, &mut frame.verdicts);
                if ctx.sample {
                    slot.samples.record_run(run);
                }
            }
            let mut decided = |v: &Verdict| {
                let o = match v {
                    Verdict::Allow => PacketOut::allow(How::Classified),
                    Verdict::Deny => PacketOut::drop(DropReason::Denied, How::Classified),
                };
                tally(&o, &mut counts);
                o
            };
            // One verdict per input of the run (`Worker::process`), in order.
            debug_assert_eq!(frame.verdicts.len(), end - start);
            if dense {
                out.decisions.extend(frame.verdicts.iter().map(decided));
            } else {
                let at = frame.at.get(start..end).unwrap_or_default();
                for (v, &i) in frame.verdicts.iter().zip(at) {
                    if let Some(slot_out) = out.decisions.get_mut(i) {
                        *slot_out = decided(v);
                    }
                }
            }
            start = end;
        }
        counts.flow_hits = flow_hits(&slot.counters.flows()).saturating_sub(hits_before);
    }
    slot.frame = frame;
    slot.worker.expire(ctx.now, EXPIRE_PER_FRAME);
    counts
}

/// What a packet joining the batch holds in `out` until the batch is decided.
const PLACEHOLDER: PacketOut = PacketOut::allow(How::Classified);

/// Ends a frame's dense run (every packet so far joined the batch): `at` and the
/// placeholders of the inputs so far are written out, so that the packet decided
/// next takes its own place in `out`.
fn spread(dense: &mut bool, frame: &mut FrameBufs, out: &mut FrameOut) {
    if std::mem::take(dense) {
        frame.at.extend(0..frame.inputs.len());
        out.decisions.resize(frame.inputs.len(), PLACEHOLDER);
    }
}

/// Puts a decided packet in its place: appended while the frame is dense (its
/// packets are decided in order), else over its placeholder.
fn put(out: &mut FrameOut, dense: bool, i: usize, d: Decided) {
    if dense {
        out.push(i, d);
    } else {
        out.set(i, d);
    }
}

/// Expired flows removed per frame, besides those met on lookup.
const EXPIRE_PER_FRAME: usize = 8;

/// Packets the flow table let through on its own: the classifier counts a flow that
/// `established-flows revalidate` re-decided and allowed as a hit too, but that packet
/// was decided by policy.
fn flow_hits(f: &FlowStats) -> u64 {
    f.hits
        .saturating_sub(f.revalidated.saturating_sub(f.revalidate_denied))
}

fn tally(o: &PacketOut, counts: &mut BatchCounts) {
    match o.next {
        Next::NextFeature => counts.allowed += 1,
        Next::Drop => counts.denied += 1,
    }
}

/// Why a packet on an IP arc could not be parsed.
#[derive(Debug, thiserror::Error)]
enum ArcPacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {got} on the IPv{arc} arc")]
    OtherFamily { got: u8, arc: u8 },
    #[error(transparent)]
    Malformed(#[from] capo_classifier::ParseError),
}

/// Parses a packet of the arc's family from its IP header. Inlined into the frame
/// loop: the parsed packet is then built where it is used rather than copied out.
#[inline(always)]
fn parse_family<const IP6: bool>(bytes: &[u8]) -> Result<ParsedPacket, ArcPacketError> {
    let arc = if IP6 { 6 } else { 4 };
    match bytes.first().map(|b| b >> 4) {
        Some(v) if v == arc => Ok(if IP6 {
            parse_ipv6(bytes)?
        } else {
            parse_ipv4(bytes)?
        }),
        Some(got) => Err(ArcPacketError::OtherFamily { got, arc }),
        None => Err(ArcPacketError::Empty),
    }
}

/// Decides one traced packet and says how: the worker's flow statistics tell a
/// flow-table hit from a classification; classifying again names the decider.
fn decide_traced(
    slot: &mut WorkerSlot,
    g: &Generation,
    input: &Input,
    p: Option<&PacketIn<'_>>,
    dir: VppDir,
    now: Timestamp,
) -> Decided {
    let before = flow_hits(&slot.counters.flows());
    let verdict = slot.worker.process_one(g.classifier(), input, now);
    let hit = flow_hits(&slot.counters.flows()) > before;
    let iface = g.interface(SwIfIndex(input.sw_if_index));
    let classify = |slot: &mut WorkerSlot, d: Direction, pkt: &capo_policy::Packet| {
        let id = iface.and_then(|f| g.classifier_iface(f))?;
        let dec = g.classifier().classify(id, d, pkt, &mut slot.scratch)?;
        Some((dec.verdict, dec.rule_id, dec.decider()))
    };
    let line = |d: &capo_policy::Decider| g.views().decider_line(d);
    let (how, line) = if hit {
        // Which direction opened the flow is not recorded; a direction policy denies
        // cannot have opened it.
        let this = classify(slot, input.dir, &input.packet.packet);
        let reverse = classify(slot, opposite(input.dir), &reply_of(&input.packet).packet);
        let rule =
            |id: Option<u32>| id.map_or_else(|| "no rule".to_string(), |r| format!("rule#{r}"));
        let text = match (this, reverse) {
            (Some((Verdict::Allow, a, _)), Some((Verdict::Allow, b, _))) => format!(
                "established flow; generation {} allows this direction ({}) and the reverse ({})",
                g.id(),
                rule(a),
                rule(b)
            ),
            (Some((Verdict::Allow, _, d)), _) | (_, Some((Verdict::Allow, _, d))) => {
                format!("established flow, opened by: {}", line(d))
            }
            _ => format!(
                "established flow; generation {} allows neither direction",
                g.id()
            ),
        };
        (How::FlowHit, text)
    } else {
        let text = classify(slot, input.dir, &input.packet.packet).map_or_else(
            || "no program for the interface".to_string(),
            |(_, _, d)| line(d),
        );
        (How::Classified, text)
    };
    let trace = p.map(|p| TraceData::new(p.sw_if_index.0, dir, g.id(), verdict, how, &line));
    match verdict {
        Verdict::Allow => Decided::allow(how, trace),
        Verdict::Deny => Decided::drop(DropReason::Denied, how, trace),
    }
}

fn opposite(d: Direction) -> Direction {
    match d {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

fn pass(p: &PacketIn<'_>, dir: VppDir, generation: u64, counts: &mut BatchCounts) -> Decided {
    counts.not_policed += 1;
    Decided::allow(
        How::NotPoliced,
        p.traced.then(|| {
            TraceData::new(
                p.sw_if_index.0,
                dir,
                generation,
                Verdict::Allow,
                How::NotPoliced,
                "",
            )
        }),
    )
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
            unclassified: 0,
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
