//! One `capo_classifier::Worker` per VPP thread: its flow table (DESIGN.md §3.7) and
//! its counters.
//!
//! Each thread's worker has its own `capo_classifier::Counters` with exactly that one
//! worker registered, so the node can read its own flow-table statistics per frame
//! (flow-table hits for the node's error counters) without seeing other threads'
//! increments. `show capo counters|flows` sum every thread's counters on read.
//!
//! Workers never contend: a thread's slot is locked by that thread for a frame, and by
//! the main thread only for `show capo counters|flows` and `clear capo counters`.
//! `clear capo counters` replaces every worker with a fresh one, which also forgets
//! the flows (as VPP's ACL plugin does on `clear acl-plugin sessions`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use capo_classifier::{Counters, FlowConfig, FlowStats, Input, RuleCount, Scratch, Worker};
use capo_policy::{Packet, Verdict};

/// Most worker slots (VPP thread indexes beyond this share slots).
pub const MAX_THREADS: usize = 64;

/// One VPP thread's classification state.
#[derive(Debug)]
pub struct WorkerSlot {
    /// The flow table and the classification loop.
    pub worker: Worker,
    /// This worker's counters (only this worker is registered).
    pub counters: Counters,
    /// Scratch space for classifying traced packets again (to name the decider).
    pub scratch: Scratch,
    /// Per-frame buffers, reused (no allocation per frame once warm).
    pub(crate) frame: FrameBufs,
    /// Flows sampled for the NIC share's planning (while the agent asks for them).
    pub(crate) samples: Samples,
}

/// One packet in this many of those software decides is sampled.
pub const SAMPLE_EVERY: u32 = 16;

/// Most flows one thread holds between two requests; later new flows are not
/// sampled until the agent has taken these.
pub const MAX_SAMPLED_FLOWS: usize = 4096;

/// A thread's sampled flows: packets per flow, and the first sampled packet's TCP
/// flags. The gap between two sampled packets is random (1 to `2 ×`
/// [`SAMPLE_EVERY`]` - 1`, mean [`SAMPLE_EVERY`]): a fixed stride would keep picking
/// the same packet of connections that all look alike (it did: only the server's
/// FIN of every connection).
#[derive(Debug)]
pub(crate) struct Samples {
    flows: HashMap<Packet, (u64, u8)>,
    /// Packets to pass before the next sampled one (1: the next).
    next: u32,
    /// xorshift32 state.
    rng: u32,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            flows: HashMap::new(),
            next: SAMPLE_EVERY,
            rng: 0x9e37_79b9,
        }
    }
}

impl Samples {
    fn gap(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        1 + x % (2 * SAMPLE_EVERY - 1)
    }

    /// Counts a run of packets software decided; only the sampled ones are touched.
    pub(crate) fn record_run(&mut self, run: &[Input]) {
        let mut at = self.next as usize - 1;
        while let Some(input) = run.get(at) {
            self.keep(&input.packet.packet, input.packet.tcp_flags);
            at += self.gap() as usize;
        }
        self.next = u32::try_from(at - run.len() + 1).unwrap_or(1);
    }

    fn keep(&mut self, packet: &Packet, tcp_flags: u8) {
        if let Some(e) = self.flows.get_mut(packet) {
            e.0 += 1;
        } else if self.flows.len() < MAX_SAMPLED_FLOWS {
            self.flows.insert(*packet, (1, tcp_flags));
        }
    }
}

/// Per-frame buffers of the batch logic.
#[derive(Debug, Default)]
pub(crate) struct FrameBufs {
    /// The packets the classifier decides, in frame order.
    pub(crate) inputs: Vec<Input>,
    /// For each input: its position in the frame (empty while every packet of the
    /// frame joins the batch: the positions are then the inputs' own).
    pub(crate) at: Vec<usize>,
    /// Packets the NIC allowed (their flows are admitted as a batch).
    pub(crate) admitted: Vec<Input>,
    /// The classifier's verdicts.
    pub(crate) verdicts: Vec<Verdict>,
}

impl WorkerSlot {
    /// A fresh worker with an empty flow table and zero counters.
    pub fn new(cfg: FlowConfig) -> Self {
        let counters = Counters::new();
        WorkerSlot {
            worker: Worker::new(cfg, &counters),
            counters,
            scratch: Scratch::default(),
            frame: FrameBufs::default(),
            samples: Samples::default(),
        }
    }
}

/// Every thread's worker.
#[derive(Debug)]
pub struct Workers {
    cfg: FlowConfig,
    slots: Vec<Mutex<Option<WorkerSlot>>>,
    /// Whether the node samples flows (an agent asks for them).
    sampling: AtomicBool,
}

/// Flow-table sizes and statistics, summed over threads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSummary {
    /// `(thread, flows)` of threads holding flows.
    pub per_thread: Vec<(usize, usize)>,
    /// Statistics.
    pub stats: FlowStats,
}

impl Workers {
    /// Slots for [`MAX_THREADS`] threads; a worker is created on a thread's first frame.
    pub fn new(cfg: FlowConfig) -> Self {
        Workers {
            cfg,
            slots: (0..MAX_THREADS).map(|_| Mutex::new(None)).collect(),
            sampling: AtomicBool::new(false),
        }
    }

    /// Whether the node samples the flows software decides (read once per frame).
    #[inline]
    pub fn sampling(&self) -> bool {
        self.sampling.load(Ordering::Relaxed)
    }

    /// Turns sampling on or off; off forgets what was sampled.
    pub fn set_sampling(&self, on: bool) {
        self.sampling.store(on, Ordering::Relaxed);
        if !on {
            self.each(|_, s| s.samples = Samples::default());
        }
    }

    /// Every thread's sampled flows since the last call, merged: `(packet, TCP flags
    /// of its first sampled packet, sampled packets)`.
    pub fn take_samples(&self) -> Vec<(Packet, u8, u64)> {
        let mut merged: HashMap<Packet, (u64, u8)> = HashMap::new();
        self.each(|_, s| {
            for (p, (n, flags)) in std::mem::take(&mut s.samples.flows) {
                merged.entry(p).or_insert((0, flags)).0 += n;
            }
        });
        merged.into_iter().map(|(p, (n, f))| (p, f, n)).collect()
    }

    /// The flow-table configuration.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// The worker of VPP thread `thread_index` (uncontended for workers).
    pub fn for_thread(&self, thread_index: u16) -> Option<SlotGuard<'_>> {
        let m = self.slots.get(usize::from(thread_index) % MAX_THREADS)?;
        // A worker that panicked mid-frame leaves a table that is still memory-safe;
        // keep using it.
        let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
        if g.is_none() {
            *g = Some(WorkerSlot::new(self.cfg));
        }
        Some(SlotGuard(g))
    }

    fn each(&self, mut f: impl FnMut(usize, &mut WorkerSlot)) {
        for (i, m) in self.slots.iter().enumerate() {
            let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = g.as_mut() {
                f(i, s);
            }
        }
    }

    /// A rule's packets and bytes, summed over threads.
    pub fn rule(&self, rule_id: u32) -> RuleCount {
        let mut out = RuleCount::default();
        self.each(|_, s| {
            let c = s.counters.rule(rule_id);
            out.packets += c.packets;
            out.bytes += c.bytes;
        });
        out
    }

    /// An interface's verdicts in one (Calico) direction, summed over threads.
    pub fn interface(
        &self,
        sw_if_index: u32,
        dir: capo_policy::Direction,
    ) -> capo_classifier::VerdictCount {
        let mut out = capo_classifier::VerdictCount::default();
        self.each(|_, s| {
            let c = s.counters.interface(sw_if_index, dir);
            out.allow += c.allow;
            out.deny += c.deny;
            out.allow_bytes += c.allow_bytes;
            out.deny_bytes += c.deny_bytes;
        });
        out
    }

    /// Flow tables and their statistics.
    pub fn flows(&self) -> FlowSummary {
        let mut out = FlowSummary::default();
        self.each(|i, s| {
            let n = s.worker.flows().len();
            if n > 0 {
                out.per_thread.push((i, n));
            }
            let f = s.counters.flows();
            let FlowStats {
                hits,
                classified,
                created,
                expired,
                evicted,
                refused,
                revalidated,
                revalidate_denied,
                no_interface,
            } = f;
            let t = &mut out.stats;
            t.hits += hits;
            t.classified += classified;
            t.created += created;
            t.expired += expired;
            t.evicted += evicted;
            t.refused += refused;
            t.revalidated += revalidated;
            t.revalidate_denied += revalidate_denied;
            t.no_interface += no_interface;
        });
        out
    }

    /// Replaces every worker with a fresh one: counters zero, flows forgotten.
    pub fn clear(&self) {
        let cfg = self.cfg;
        self.each(|_, s| *s = WorkerSlot::new(cfg));
    }
}

/// A locked worker slot.
#[derive(Debug)]
pub struct SlotGuard<'a>(MutexGuard<'a, Option<WorkerSlot>>);

impl SlotGuard<'_> {
    /// The slot (always present once handed out).
    pub fn slot(&mut self) -> Option<&mut WorkerSlot> {
        self.0.as_mut()
    }
}
