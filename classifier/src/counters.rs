//! Counters: per rule (packets, bytes), per interface and direction (packets and bytes
//! allowed and denied),
//! and flow-table statistics.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer, so increments
//! are a relaxed load and store (no locked instruction). Readers sum every worker's
//! counters on demand ([`Counters`]). Rule counters are keyed by the views' stable
//! `rule#`, interface counters by `sw_if_index`, so they survive generations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use capo_policy::{Direction, Verdict};

const CHUNK: usize = 4096;
const CHUNKS: usize = 4096;

/// One chunk of `N`-counter entries, allocated on first use.
type Chunk<const N: usize> = OnceLock<Box<[[AtomicU64; N]]>>;

/// A lazily allocated array of `N`-counter entries indexed by a small integer.
#[derive(Debug)]
struct Table<const N: usize> {
    chunks: Box<[Chunk<N>]>,
    /// Increments whose key was beyond the table.
    overflow: AtomicU64,
}

impl<const N: usize> Table<N> {
    fn new() -> Self {
        Table {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            overflow: AtomicU64::new(0),
        }
    }

    #[inline]
    fn bump(&self, key: usize, by: [u64; N]) {
        let Some(chunk) = self.chunks.get(key / CHUNK) else {
            add(&self.overflow, 1);
            return;
        };
        let chunk = chunk.get_or_init(|| {
            (0..CHUNK)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect()
        });
        if let Some(entry) = chunk.get(key % CHUNK) {
            for (c, n) in entry.iter().zip(by) {
                add(c, n);
            }
        }
    }

    fn read(&self, key: usize) -> [u64; N] {
        self.chunks
            .get(key / CHUNK)
            .and_then(|c| c.get())
            .and_then(|c| c.get(key % CHUNK))
            .map(|e| std::array::from_fn(|i| e[i].load(Ordering::Relaxed)))
            .unwrap_or([0; N])
    }
}

/// Single-writer increment: no read-modify-write instruction needed.
#[inline]
fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// Flow-table statistics (summed over workers by [`Counters::flows`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets that matched a flow (either direction).
    pub hits: u64,
    /// Packets classified by policy (no flow, or a flow not usable for them).
    pub classified: u64,
    /// Flows created.
    pub created: u64,
    /// Flows removed because their timeout passed.
    pub expired: u64,
    /// Flows evicted (least recently used) to make room when the table was full.
    pub evicted: u64,
    /// Allowed packets that could not create a flow because the table was full and
    /// eviction is disabled ([`crate::FullPolicy::Refuse`]).
    pub refused: u64,
    /// Flows re-decided under a newer generation (`established_flows = revalidate`).
    pub revalidated: u64,
    /// Re-decided flows that the newer generation denies (removed, packet dropped).
    pub revalidate_denied: u64,
    /// Packets on interfaces the generation has no program for (passed).
    pub no_interface: u64,
}

const F_FIELDS: usize = 9;

/// One worker's counters (single writer: the worker).
#[derive(Debug)]
pub struct WorkerCounters {
    /// Packets and bytes per rule.
    rules: Table<2>,
    /// Packets allowed and denied, then their bytes, per interface and direction.
    ifaces: Table<4>,
    flows: [AtomicU64; F_FIELDS],
}

/// Which flow statistic to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FlowEvent {
    Hit = 0,
    Classified = 1,
    Created = 2,
    Expired = 3,
    Evicted = 4,
    Refused = 5,
    Revalidated = 6,
    RevalidateDenied = 7,
    NoInterface = 8,
}

impl WorkerCounters {
    fn new() -> Self {
        WorkerCounters {
            rules: Table::new(),
            ifaces: Table::new(),
            flows: Default::default(),
        }
    }

    /// Counts one packet of `bytes` decided by `rule_id`.
    #[inline]
    pub fn rule_hit(&self, rule_id: u32, bytes: u64) {
        self.rules.bump(rule_id as usize, [1, bytes]);
    }

    /// Counts one verdict on a packet of `bytes` on an interface and direction.
    #[inline]
    pub fn verdict(&self, sw_if_index: u32, dir: Direction, verdict: Verdict, bytes: u64) {
        let key = sw_if_index as usize * 2 + usize::from(dir == Direction::Egress);
        match verdict {
            Verdict::Allow => self.ifaces.bump(key, [1, 0, bytes, 0]),
            Verdict::Deny => self.ifaces.bump(key, [0, 1, 0, bytes]),
        }
    }

    #[inline]
    pub(crate) fn flow(&self, ev: FlowEvent, n: u64) {
        if let Some(c) = self.flows.get(ev as usize) {
            add(c, n);
        }
    }
}

/// Every worker's counters, summed on read.
#[derive(Debug, Default)]
pub struct Counters {
    workers: Mutex<Vec<Arc<WorkerCounters>>>,
}

/// A rule's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCount {
    /// Packets decided by the rule.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// An interface direction's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCount {
    /// Packets allowed.
    pub allow: u64,
    /// Packets denied.
    pub deny: u64,
    /// Bytes of the packets allowed.
    pub allow_bytes: u64,
    /// Bytes of the packets denied.
    pub deny_bytes: u64,
}

impl VerdictCount {
    /// Counts one packet of `bytes` with its verdict.
    pub fn add(&mut self, verdict: Verdict, bytes: u64) {
        match verdict {
            Verdict::Allow => {
                self.allow += 1;
                self.allow_bytes += bytes;
            }
            Verdict::Deny => {
                self.deny += 1;
                self.deny_bytes += bytes;
            }
        }
    }
}

impl Counters {
    /// No workers yet.
    pub fn new() -> Self {
        Counters::default()
    }

    /// Counters for a new worker (the worker keeps the `Arc` and writes to it).
    pub fn register_worker(&self) -> Arc<WorkerCounters> {
        let w = Arc::new(WorkerCounters::new());
        if let Ok(mut ws) = self.workers.lock() {
            ws.push(w.clone());
        }
        w
    }

    fn each(&self, f: impl FnMut(&WorkerCounters)) {
        if let Ok(ws) = self.workers.lock() {
            ws.iter().map(|w| &**w).for_each(f);
        }
    }

    /// Totals of `rule#rule_id`.
    pub fn rule(&self, rule_id: u32) -> RuleCount {
        let mut out = RuleCount::default();
        self.each(|w| {
            let [p, b] = w.rules.read(rule_id as usize);
            out.packets += p;
            out.bytes += b;
        });
        out
    }

    /// Totals of an interface direction.
    pub fn interface(&self, sw_if_index: u32, dir: Direction) -> VerdictCount {
        let key = sw_if_index as usize * 2 + usize::from(dir == Direction::Egress);
        let mut out = VerdictCount::default();
        self.each(|w| {
            let [a, d, ab, db] = w.ifaces.read(key);
            out.allow += a;
            out.deny += d;
            out.allow_bytes += ab;
            out.deny_bytes += db;
        });
        out
    }

    /// Flow-table statistics.
    pub fn flows(&self) -> FlowStats {
        let mut f = [0u64; F_FIELDS];
        self.each(|w| {
            for (acc, c) in f.iter_mut().zip(&w.flows) {
                *acc += c.load(Ordering::Relaxed);
            }
        });
        let [hits, classified, created, expired, evicted, refused, revalidated, revalidate_denied, no_interface] =
            f;
        FlowStats {
            hits,
            classified,
            created,
            expired,
            evicted,
            refused,
            revalidated,
            revalidate_denied,
            no_interface,
        }
    }
}
