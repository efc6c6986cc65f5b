//! The flow table (DESIGN.md §3.7) and the worker that uses it.
//!
//! - The first packet of a flow is classified; an allowed flow is recorded with the
//!   generation that allowed it. Later packets of the flow, and its replies (same
//!   interface, opposite direction, reversed tuple), pass without classification.
//! - Denied packets create no flow (as with the VPP ACL plugin): each is classified.
//! - `established_flows = keep` (Calico's behaviour): a flow keeps flowing across
//!   generations. `revalidate`: a flow from an older generation is re-decided on its
//!   next packet (the flow's first packet is classified again under the current
//!   generation); if denied now, the flow is removed and the packet dropped.
//! - Size is bounded. Idle timeouts as in VPP's ACL plugin by default (TCP
//!   established 24 h, TCP transient 120 s, UDP and every other protocol 600 s).
//!   Expired flows are removed when met and by [`Worker::expire`].
//! - When the table is full, [`FullPolicy::EvictLru`] (default) evicts a least
//!   recently used flow in second-chance order ([`FlowTable`]; counted as
//!   `evicted`); [`FullPolicy::Refuse`] creates no flow (counted as `refused`):
//!   the packet still gets its policy verdict, but its replies are then
//!   classified as packets of their own.
//!
//! Time is a parameter ([`Timestamp`]); nothing here reads a clock. Each worker owns
//! its table: no sharing, no locks.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use capo_policy::{Direction, Packet, Protocol, Verdict, L4};

use crate::counters::{Counters, FlowEvent, WorkerCounters};
use crate::generation::{Generation, GenerationId};
use crate::packet::{tcp_flags, ParsedPacket};
use crate::program::Scratch;

/// Nanoseconds since an epoch the caller chooses (monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From seconds.
    pub fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1_000_000_000))
    }
}

/// What happens to established flows when a new generation is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EstablishedFlows {
    /// They keep flowing (Calico's behaviour).
    #[default]
    Keep,
    /// Each is re-decided on its next packet.
    Revalidate,
}

/// What happens to a new allowed flow when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Evict a least recently used flow (second-chance order, [`FlowTable`]).
    #[default]
    EvictLru,
    /// Create no flow (the packet still gets its verdict).
    Refuse,
}

/// Flow-table configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// Most flows held per worker.
    pub capacity: usize,
    /// Idle timeout of established TCP flows, ns.
    pub tcp_established_ns: u64,
    /// Idle timeout of TCP flows being set up or torn down, ns.
    pub tcp_transient_ns: u64,
    /// Idle timeout of UDP and all other flows, ns.
    pub udp_ns: u64,
    /// Established flows across generations.
    pub established_flows: EstablishedFlows,
    /// Behaviour when full.
    pub on_full: FullPolicy,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            // VPP's ACL plugin default session limit.
            capacity: 500_000,
            tcp_established_ns: 24 * 3600 * 1_000_000_000,
            tcp_transient_ns: 120 * 1_000_000_000,
            udp_ns: 600 * 1_000_000_000,
            established_flows: EstablishedFlows::Keep,
            on_full: FullPolicy::EvictLru,
        }
    }
}

/// A flow's key: interface, protocol, and the two endpoints in canonical order.
/// Addresses are widened to 128 bits with their families beside them, so a key is
/// three 128-bit words: compared word by word, hashed with one to three multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    a: u128,
    b: u128,
    /// `a`'s port (bits 80..96), `b`'s (64..80), the interface (32..64), the
    /// protocol (8..16); bit 0: `a` is IPv6, bit 1: `b` is IPv6.
    rest: u128,
}

impl FlowKey {
    fn new(a: u128, b: u128, ports: u32, sw_if_index: u32, proto: u8, families: u8) -> Self {
        FlowKey {
            a,
            b,
            rest: u128::from(ports) << 64
                | u128::from(sw_if_index) << 32
                | u128::from(proto) << 8
                | u128::from(families),
        }
    }

    fn proto(&self) -> u8 {
        (self.rest >> 8) as u8
    }

    /// Both sides IPv4: the addresses are below 2^32.
    fn both_ipv4(&self) -> bool {
        self.rest & 0b11 == 0
    }

    /// What a removed flow's key becomes: bit 127 of `rest` is set in no packet's
    /// key, so a slot found before its flow was removed never matches.
    fn retire(&mut self) {
        self.rest |= 1 << 127;
    }
}

impl std::hash::Hash for FlowKey {
    /// 128-bit words, each a single multiply in the flow table's hasher: one for a
    /// key of two IPv4 sides, else all three.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.both_ipv4() {
            // The ports and the interface, with the protocol in the interface's top
            // byte (indexes stay below 2^24), beside the two addresses. Only the
            // hash's spread depends on that, not a lookup's result.
            let ports_iface = (self.rest >> 32) as u64 ^ u64::from(self.proto()) << 24;
            state.write_u128(self.a | self.b << 32 | u128::from(ports_iface) << 64);
            return;
        }
        state.write_u128(self.a);
        state.write_u128(self.b);
        state.write_u128(self.rest);
    }
}

/// An endpoint as the key orders it: family, address, port.
fn side(addr: IpAddr, port: u16) -> (u8, u128, u16) {
    match addr {
        IpAddr::V4(v4) => (0, u128::from(u32::from(v4)), port),
        IpAddr::V6(v6) => (1, u128::from(v6), port),
    }
}

/// The key of a packet, and whether its source is the key's `a` side.
#[inline(always)]
fn key_of(sw_if_index: u32, p: &ParsedPacket) -> (FlowKey, bool) {
    let (src_port, dst_port) = p.flow_ports;
    if let (IpAddr::V4(src), IpAddr::V4(dst)) = (p.packet.src, p.packet.dst) {
        // Both IPv4 (most packets): address and port as one integer order the sides
        // as `side` does, in one compare.
        let s = u64::from(u32::from(src)) << 16 | u64::from(src_port);
        let d = u64::from(u32::from(dst)) << 16 | u64::from(dst_port);
        let src_is_a = s <= d;
        let (a, b) = if src_is_a { (s, d) } else { (d, s) };
        return (
            FlowKey::new(
                u128::from(a >> 16),
                u128::from(b >> 16),
                (a as u32 & 0xffff) << 16 | (b as u32 & 0xffff),
                sw_if_index,
                p.packet.protocol.0,
                0,
            ),
            src_is_a,
        );
    }
    key_by_sides(sw_if_index, p)
}

/// [`key_of`] for every family: both sides as [`side`] orders them.
fn key_by_sides(sw_if_index: u32, p: &ParsedPacket) -> (FlowKey, bool) {
    let s = side(p.packet.src, p.flow_ports.0);
    let d = side(p.packet.dst, p.flow_ports.1);
    let src_is_a = s <= d;
    let (a, b) = if src_is_a { (s, d) } else { (d, s) };
    (
        FlowKey::new(
            a.1,
            b.1,
            u32::from(a.2) << 16 | u32::from(b.2),
            sw_if_index,
            p.packet.protocol.0,
            a.0 | b.0 << 1,
        ),
        src_is_a,
    )
}

/// A packet's key, which side its source is, and the key's hash, computed once per
/// packet ahead of its lookup.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    key: FlowKey,
    src_is_a: bool,
    hash: u32,
    /// The slot the batch's prefetch found first under `hash` ([`NIL`]: none), tried
    /// before the index: the lookup then reads the index only when that slot's flow
    /// has another key (a hash collision, or the slot changed hands since).
    candidate: u32,
}

/// Bits of [`Flow::state`].
mod state {
    /// The first packet's source is the key's `a` side.
    pub(super) const INIT_IS_A: u8 = 1;
    /// The first packet went in Calico's egress direction.
    pub(super) const FIRST_EGRESS: u8 = 1 << 1;
    /// A reply has been seen.
    pub(super) const REPLY_SEEN: u8 = 1 << 2;
    /// TCP: the handshake completed.
    pub(super) const ESTABLISHED: u8 = 1 << 3;
    /// TCP: FIN or RST seen.
    pub(super) const CLOSING: u8 = 1 << 4;
    /// Hit since it was last queued (the second-chance bit of eviction).
    pub(super) const REFERENCED: u8 = 1 << 5;
}

/// One flow. A hit reads and writes only the first cache line (key, last packet's
/// time, state); the second holds what revalidation and eviction use.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Flow {
    key: FlowKey,
    last_seen: u64,
    state: u8,
    generation: GenerationId,
    /// The first packet, as classified (for revalidation).
    first: Packet,
    prev: u32,
    next: u32,
}

impl Flow {
    fn has(&self, bit: u8) -> bool {
        self.state & bit != 0
    }

    fn first_dir(&self) -> Direction {
        if self.has(state::FIRST_EGRESS) {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

const NIL: u32 = u32::MAX;

/// Most queued flows the eviction walk gives a second chance before it evicts the
/// least recently queued one anyway (bounds the work of one insert).
const SECOND_CHANCES: usize = 32;

/// The flows' hash index: open addressing with linear probing, at most half full, so
/// every probe ends at an empty entry. An entry is the key's 32-bit hash (high half)
/// and its flow's slot plus one (low half); 0 is empty. The hash places the entry
/// (its low bits) and filters the probe, so only a likely match reads a flow; removal
/// shifts the entries behind back (no tombstones).
#[derive(Debug, Default)]
struct FlowIndex {
    entries: Vec<u64>,
}

impl FlowIndex {
    fn mask(&self) -> usize {
        self.entries.len().wrapping_sub(1)
    }

    fn home(&self, hash: u32) -> usize {
        hash as usize & self.mask()
    }

    fn entry(hash: u32, slot: u32) -> u64 {
        u64::from(hash) << 32 | (u64::from(slot) + 1)
    }

    /// Hints the CPU to fetch the entry `hash` starts at.
    fn prefetch(&self, hash: u32) {
        if let Some(e) = self.entries.get(self.home(hash)) {
            crate::prefetch::read(std::ptr::from_ref(e).cast());
        }
    }

    /// The slots whose entries carry `hash`, in probe order.
    #[cfg(test)]
    fn candidates(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let mask = self.mask();
        let start = self.home(hash);
        (0..self.entries.len())
            .map(move |k| start.wrapping_add(k) & mask)
            .map_while(move |i| self.entries.get(i).copied().filter(|&e| e != 0))
            .filter(move |&e| (e >> 32) as u32 == hash)
            .map(|e| (e as u32).wrapping_sub(1))
    }

    /// Adds `slot` under `hash`, growing so that the index stays at most half full
    /// with `len` entries.
    fn insert(&mut self, hash: u32, slot: u32, len: usize) {
        if len.saturating_mul(2) > self.entries.len() {
            let old = std::mem::replace(
                &mut self.entries,
                vec![0; len.saturating_mul(2).next_power_of_two().max(16)],
            );
            for e in old.into_iter().filter(|&e| e != 0) {
                self.place(e);
            }
        }
        self.place(Self::entry(hash, slot));
    }

    /// Puts entry `e` in the first empty place of its probe run.
    fn place(&mut self, e: u64) {
        let mask = self.mask();
        let mut i = self.home((e >> 32) as u32);
        while let Some(at) = self.entries.get_mut(i) {
            if *at == 0 {
                *at = e;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes `slot`'s entry (filed under `hash`), moving later entries of the probe
    /// run back into the hole.
    fn remove(&mut self, hash: u32, slot: u32) {
        let mask = self.mask();
        let target = Self::entry(hash, slot);
        let mut hole = self.home(hash);
        loop {
            match self.entries.get(hole) {
                Some(&e) if e == target => break,
                Some(&e) if e != 0 => hole = (hole + 1) & mask,
                _ => return,
            }
        }
        let mut j = (hole + 1) & mask;
        while let Some(&e) = self.entries.get(j) {
            if e == 0 {
                break;
            }
            let home = self.home((e >> 32) as u32);
            // The entry may fill the hole if the hole lies on its probe path, i.e. at
            // least as far from its home as its own position is.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                if let Some(h) = self.entries.get_mut(hole) {
                    *h = e;
                }
                hole = j;
            }
            j = (j + 1) & mask;
        }
        if let Some(h) = self.entries.get_mut(hole) {
            *h = 0;
        }
    }
}

/// A bounded flow table (see the module doc). Eviction is the second-chance
/// (CLOCK) approximation of least recently used: flows queue in the order they
/// were created or re-queued, a hit only sets the flow's reference bit, and the
/// eviction walk re-queues referenced flows (clearing the bit) until it meets one
/// that was not hit since it was queued. A hit thus writes only its own flow.
#[derive(Debug)]
pub struct FlowTable {
    cfg: FlowConfig,
    hasher: foldhash::fast::RandomState,
    index: FlowIndex,
    flows: Vec<Flow>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
}

/// What the flow table says about a packet.
enum Lookup {
    /// Part of a known allowed flow (slot), forward or reply.
    Hit(u32, bool),
    /// No flow for it; the slot of a flow with the same key the packet cannot use
    /// (opened in the other direction), which a new flow replaces.
    Miss(Option<u32>),
}

impl FlowTable {
    /// An empty table.
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            hasher: foldhash::fast::RandomState::default(),
            index: FlowIndex::default(),
            flows: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        // Every slot ever used is live or on the free list.
        self.flows.len() - self.free.len()
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// The 32 bits of `key`'s hash the index keeps: the high ones (foldhash mixes
    /// them best).
    fn hash(&self, key: &FlowKey) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    #[inline(always)]
    fn keyed(&self, sw_if_index: u32, p: &ParsedPacket) -> Keyed {
        let (key, src_is_a) = key_of(sw_if_index, p);
        Keyed {
            key,
            src_is_a,
            hash: self.hash(&key),
            candidate: NIL,
        }
    }

    fn flow(&self, slot: u32) -> Option<&Flow> {
        self.flows.get(slot as usize)
    }

    fn flow_mut(&mut self, slot: u32) -> Option<&mut Flow> {
        self.flows.get_mut(slot as usize)
    }

    /// The first slot, in probe order, whose entry carries `hash` and that `accept`
    /// takes. A loop written out, not an iterator chain: it runs twice a packet.
    #[inline(always)]
    fn probe(&self, hash: u32, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        let entries = &self.index.entries;
        let mask = self.index.mask();
        let mut i = self.index.home(hash);
        // The index is at most half full, so the probe meets an empty entry.
        loop {
            let e = *entries.get(i)?;
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == hash {
                let slot = (e as u32).wrapping_sub(1);
                if accept(slot) {
                    return Some(slot);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot of `k`'s flow. Keys are unique among the flows held, and a removed
    /// flow's key is retired, so a candidate slot holding `k`'s key is its flow.
    #[inline(always)]
    fn find(&self, k: &Keyed) -> Option<u32> {
        if self.flow(k.candidate).is_some_and(|f| f.key == k.key) {
            return Some(k.candidate);
        }
        self.probe(k.hash, |slot| {
            self.flow(slot).is_some_and(|f| f.key == k.key)
        })
    }

    /// Hints the CPU to fetch the flow looking up `k` will compare with, and keeps
    /// its slot as `k`'s candidate. Returns false when no index entry carries `k`'s
    /// hash: the packet is certainly no flow's, and the caller prefetches for its
    /// classification instead.
    fn prefetch_flow(&self, k: &mut Keyed) -> bool {
        let Some(slot) = self.probe(k.hash, |_| true) else {
            return false;
        };
        if let Some(f) = self.flow(slot) {
            crate::prefetch::read(std::ptr::from_ref(f).cast());
        }
        k.candidate = slot;
        true
    }

    fn timeout(&self, f: &Flow) -> u64 {
        if f.key.proto() == Protocol::TCP.0 {
            if f.has(state::ESTABLISHED) && !f.has(state::CLOSING) {
                self.cfg.tcp_established_ns
            } else {
                self.cfg.tcp_transient_ns
            }
        } else {
            self.cfg.udp_ns
        }
    }

    fn expired(&self, f: &Flow, now: u64) -> bool {
        now.saturating_sub(f.last_seen) > self.timeout(f)
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = match self.flow(slot) {
            Some(f) => (f.prev, f.next),
            None => return,
        };
        match self.flow_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.flow_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let head = self.head;
        if let Some(f) = self.flow_mut(slot) {
            f.prev = NIL;
            f.next = head;
        }
        match self.flow_mut(head) {
            Some(h) => h.prev = slot,
            None => self.tail = slot,
        }
        self.head = slot;
    }

    fn remove_slot(&mut self, slot: u32) {
        let Some(f) = self.flow(slot) else { return };
        let hash = self.hash(&f.key);
        self.unlink(slot);
        self.index.remove(hash, slot);
        if let Some(f) = self.flow_mut(slot) {
            f.key.retire();
        }
        self.free.push(slot);
    }

    #[inline(always)]
    fn lookup(&mut self, k: &Keyed, dir: Direction, now: u64, c: &WorkerCounters) -> Lookup {
        let Some(slot) = self.find(k) else {
            return Lookup::Miss(None);
        };
        let Some(f) = self.flow(slot) else {
            return Lookup::Miss(None);
        };
        if self.expired(f, now) {
            self.remove_slot(slot);
            c.flow(FlowEvent::Expired, 1);
            return Lookup::Miss(None);
        }
        let same_side = k.src_is_a == f.has(state::INIT_IS_A);
        let same_dir = dir == f.first_dir();
        if same_side == same_dir {
            // Both equal: the flow's own direction; both different: its reply.
            Lookup::Hit(slot, !same_side)
        } else {
            Lookup::Miss(Some(slot))
        }
    }

    #[inline(always)]
    fn touch(&mut self, slot: u32, reply: bool, flags: u8, now: u64) {
        if let Some(f) = self.flow_mut(slot) {
            f.last_seen = now;
            let mut s = f.state | state::REFERENCED;
            if reply {
                s |= state::REPLY_SEEN;
            }
            if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                s |= state::CLOSING;
            } else if s & state::REPLY_SEEN != 0
                && flags & tcp_flags::ACK != 0
                && flags & tcp_flags::SYN == 0
            {
                s |= state::ESTABLISHED;
            }
            f.state = s;
        }
    }

    /// The flow to make room with: the queue's tail after giving up to
    /// [`SECOND_CHANCES`] referenced, unexpired flows a second chance.
    fn victim(&mut self, now: u64) -> u32 {
        for _ in 0..SECOND_CHANCES {
            let tail = self.tail;
            let Some(f) = self.flow(tail) else { break };
            if !f.has(state::REFERENCED) || self.expired(f, now) {
                break;
            }
            if let Some(f) = self.flow_mut(tail) {
                f.state &= !state::REFERENCED;
            }
            self.unlink(tail);
            self.push_front(tail);
        }
        self.tail
    }

    /// Creates the flow of a packet [`Self::lookup`] missed; `stale` is the flow
    /// of the same key it reported, which the new flow replaces.
    fn insert(
        &mut self,
        k: &Keyed,
        stale: Option<u32>,
        first: &Input,
        generation: GenerationId,
        now: u64,
        c: &WorkerCounters,
    ) {
        if let Some(slot) = stale {
            self.remove_slot(slot);
        }
        if self.len() >= self.cfg.capacity {
            // An expired tail makes room under either policy; eviction looks past
            // referenced flows first.
            let evict = self.cfg.on_full == FullPolicy::EvictLru;
            let victim = if evict { self.victim(now) } else { self.tail };
            let expired = self.flow(victim).is_some_and(|f| self.expired(f, now));
            if expired || (evict && victim != NIL) {
                self.remove_slot(victim);
                let event = if expired {
                    FlowEvent::Expired
                } else {
                    FlowEvent::Evicted
                };
                c.flow(event, 1);
            } else {
                c.flow(FlowEvent::Refused, 1);
                return;
            }
        }
        let mut bits = 0;
        if k.src_is_a {
            bits |= state::INIT_IS_A;
        }
        if first.dir == Direction::Egress {
            bits |= state::FIRST_EGRESS;
        }
        if first.packet.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            bits |= state::CLOSING;
        }
        let flow = Flow {
            key: k.key,
            last_seen: now,
            state: bits,
            generation,
            first: first.packet.packet,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(f) = self.flows.get_mut(s as usize) {
                    *f = flow;
                }
                s
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.index.insert(k.hash, slot, self.len());
        self.push_front(slot);
        c.flow(FlowEvent::Created, 1);
    }

    /// The first packet of every flow held (expired ones not yet removed included),
    /// most recently queued first: what the offload planner must spare when the NIC
    /// drops without connection state.
    pub fn first_packets(&self) -> impl Iterator<Item = &Packet> + '_ {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            let f = self.flow(slot)?;
            slot = f.next;
            Some(&f.first)
        })
    }

    /// Removes up to `budget` expired flows from the least recently queued end;
    /// returns how many were removed.
    pub fn expire(&mut self, now: Timestamp, budget: usize, c: &WorkerCounters) -> usize {
        let mut removed = 0;
        let mut slot = self.tail;
        let mut looked = 0;
        while slot != NIL && looked < budget {
            looked += 1;
            let Some(f) = self.flow(slot) else { break };
            let prev = f.prev;
            if self.expired(f, now.0) {
                self.remove_slot(slot);
                removed += 1;
            }
            slot = prev;
        }
        c.flow(FlowEvent::Expired, removed as u64);
        removed
    }
}

/// One packet handed to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    /// The interface's `sw_if_index` (as the views and the VPP plugin number them).
    pub sw_if_index: u32,
    /// Calico direction relative to the interface's endpoint (ingress: towards it).
    pub dir: Direction,
    /// The parsed packet.
    pub packet: ParsedPacket,
    /// Frame length, for byte counters.
    pub len: u32,
}

/// The most packets [`Worker::process`] takes at once (a VPP frame).
pub const MAX_BATCH: usize = 256;

/// How far ahead the batch path prefetches index leaves.
const PREFETCH_AHEAD: usize = 4;

/// A worker: its flow table, counters and scratch space. One per thread.
#[derive(Debug)]
pub struct Worker {
    flows: FlowTable,
    counters: Arc<WorkerCounters>,
    scratch: Scratch,
    /// The batch's keys, computed ahead of their lookups.
    keyed: Vec<Keyed>,
}

impl Worker {
    /// A worker with its own flow table, registered with `counters`.
    pub fn new(cfg: FlowConfig, counters: &Counters) -> Self {
        Worker {
            flows: FlowTable::new(cfg),
            counters: counters.register_worker(),
            scratch: Scratch::default(),
            keyed: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// The worker's flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Removes up to `budget` expired flows.
    pub fn expire(&mut self, now: Timestamp, budget: usize) -> usize {
        self.flows.expire(now, budget, &self.counters)
    }

    /// Decides a batch (at most [`MAX_BATCH`] packets are taken; `out` receives
    /// one verdict per packet taken, in order). Load the generation once per batch.
    ///
    /// Two passes, as VPP's own nodes pipeline a frame: the first hashes every
    /// packet's flow key and prefetches its index entry; the second, a few packets
    /// ahead of the one it decides, prefetches the flow that entry names, or, when
    /// the entry is empty (a certain miss), the classifier's index leaves instead.
    pub fn process(
        &mut self,
        generation: &Generation,
        batch: &[Input],
        now: Timestamp,
        out: &mut Vec<Verdict>,
    ) {
        let batch = batch.get(..batch.len().min(MAX_BATCH)).unwrap_or(batch);
        out.clear();
        let mut keyed = self.key_batch(batch);
        for (i, input) in batch.iter().enumerate() {
            if let (Some(ahead), Some(ka)) = (
                batch.get(i + PREFETCH_AHEAD),
                keyed.get_mut(i + PREFETCH_AHEAD),
            ) {
                if !self.flows.prefetch_flow(ka) {
                    generation.prefetch(&ahead.packet.packet);
                }
            }
            if let Some(k) = keyed.get(i) {
                out.push(self.decide(generation, input, k, now.0));
            }
        }
        self.keyed = keyed;
    }

    /// Records a packet that was allowed without this worker classifying it (a NIC
    /// allow verdict of a generation software holds), so that the flow table holds
    /// what Calico's conntrack would: the flow's later packets and its replies are
    /// flow-table hits, whichever path decides them. A packet of a known flow
    /// refreshes it; otherwise the flow is created.
    pub fn admit(&mut self, generation: &Generation, input: &Input, now: Timestamp) {
        let k = self.flows.keyed(input.sw_if_index, &input.packet);
        self.admit_keyed(generation, input, &k, now.0);
    }

    /// [`Worker::admit`] for a batch (at most [`MAX_BATCH`] packets are taken), with
    /// [`Worker::process`]'s prefetching: the NIC allows a conversation's packets
    /// with a mark, and refreshing their flows one at a time would miss the cache on
    /// every one.
    pub fn admit_batch(&mut self, generation: &Generation, batch: &[Input], now: Timestamp) {
        let batch = batch.get(..batch.len().min(MAX_BATCH)).unwrap_or(batch);
        let mut keyed = self.key_batch(batch);
        for (i, input) in batch.iter().enumerate() {
            if let Some(ka) = keyed.get_mut(i + PREFETCH_AHEAD) {
                self.flows.prefetch_flow(ka);
            }
            if let Some(k) = keyed.get(i) {
                self.admit_keyed(generation, input, k, now.0);
            }
        }
        self.keyed = keyed;
    }

    /// Every packet's flow key, its index entry prefetched (in the worker's reused
    /// buffer: give it back with `self.keyed = keyed`).
    fn key_batch(&mut self, batch: &[Input]) -> Vec<Keyed> {
        let mut keyed = std::mem::take(&mut self.keyed);
        keyed.clear();
        for input in batch {
            let k = self.flows.keyed(input.sw_if_index, &input.packet);
            self.flows.index.prefetch(k.hash);
            keyed.push(k);
        }
        keyed
    }

    fn admit_keyed(&mut self, generation: &Generation, input: &Input, k: &Keyed, now: u64) {
        let c = &*self.counters;
        match self.flows.lookup(k, input.dir, now, c) {
            Lookup::Hit(slot, reply) => self.flows.touch(slot, reply, input.packet.tcp_flags, now),
            Lookup::Miss(stale) => self.flows.insert(k, stale, input, generation.id(), now, c),
        }
    }

    /// Decides one packet.
    pub fn process_one(
        &mut self,
        generation: &Generation,
        input: &Input,
        now: Timestamp,
    ) -> Verdict {
        let k = self.flows.keyed(input.sw_if_index, &input.packet);
        self.decide(generation, input, &k, now.0)
    }

    /// Decides one packet: a flow-table hit here, inlined into the frame loop (most
    /// packets of a busy link), the rest in [`Worker::classify_miss`].
    #[inline(always)]
    fn decide(&mut self, generation: &Generation, input: &Input, k: &Keyed, now: u64) -> Verdict {
        let c = &*self.counters;
        let stale = match self.flows.lookup(k, input.dir, now, c) {
            Lookup::Miss(stale) => stale,
            Lookup::Hit(slot, reply) => {
                if self.flows.cfg.established_flows == EstablishedFlows::Revalidate {
                    if let Some(v) = revalidate(
                        &mut self.flows,
                        &mut self.scratch,
                        c,
                        generation,
                        input,
                        slot,
                    ) {
                        return v;
                    }
                }
                self.flows.touch(slot, reply, input.packet.tcp_flags, now);
                c.flow(FlowEvent::Hit, 1);
                c.verdict(
                    input.sw_if_index,
                    input.dir,
                    Verdict::Allow,
                    u64::from(input.len),
                );
                return Verdict::Allow;
            }
        };
        self.classify_miss(generation, input, k, stale, now)
    }

    /// A packet no flow allows: classified, and an allowed one opens a flow
    /// (replacing `stale`, a flow of the same key it could not use).
    #[inline(never)]
    fn classify_miss(
        &mut self,
        generation: &Generation,
        input: &Input,
        k: &Keyed,
        stale: Option<u32>,
        now: u64,
    ) -> Verdict {
        let c = &*self.counters;
        let Input {
            sw_if_index,
            dir,
            packet,
            len,
        } = *input;
        c.flow(FlowEvent::Classified, 1);
        let Some(iface) = generation.interface_by_sw_if_index(sw_if_index) else {
            c.flow(FlowEvent::NoInterface, 1);
            return Verdict::Allow;
        };
        let Some(d) = generation.classify(iface, dir, &packet.packet, &mut self.scratch) else {
            c.flow(FlowEvent::NoInterface, 1);
            return Verdict::Allow;
        };
        if let Some(id) = d.rule_id {
            c.rule_hit(id, u64::from(len));
        }
        c.verdict(sw_if_index, dir, d.verdict, u64::from(len));
        if d.verdict == Verdict::Allow {
            self.flows.insert(k, stale, input, generation.id(), now, c);
        }
        d.verdict
    }
}

/// Re-decides a flow of an older generation by its first packet: `Some(Deny)`
/// (flow removed) when `generation` denies it now, else `None` (the flow now
/// belongs to `generation` and the packet is a hit).
fn revalidate(
    flows: &mut FlowTable,
    scratch: &mut Scratch,
    c: &WorkerCounters,
    generation: &Generation,
    input: &Input,
    slot: u32,
) -> Option<Verdict> {
    let f = flows.flow(slot)?;
    if f.generation == generation.id() {
        return None;
    }
    let (first, first_dir) = (f.first, f.first_dir());
    c.flow(FlowEvent::Revalidated, 1);
    let verdict = match generation.interface_by_sw_if_index(input.sw_if_index) {
        Some(iface) => generation
            .classify(iface, first_dir, &first, scratch)
            .map(|d| d.verdict)
            .unwrap_or(Verdict::Allow),
        None => Verdict::Allow,
    };
    if verdict == Verdict::Deny {
        flows.remove_slot(slot);
        c.flow(FlowEvent::RevalidateDenied, 1);
        c.verdict(
            input.sw_if_index,
            input.dir,
            Verdict::Deny,
            u64::from(input.len),
        );
        return Some(Verdict::Deny);
    }
    if let Some(f) = flows.flow_mut(slot) {
        f.generation = generation.id();
    }
    None
}

/// The reply to `p` (addresses and ports swapped; ICMP echo request ↔ reply).
pub fn reply_of(p: &ParsedPacket) -> ParsedPacket {
    let l4 = match p.packet.l4 {
        L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
        L4::Icmp { icmp_type, code } => L4::Icmp {
            icmp_type: match icmp_type {
                8 => 0,
                0 => 8,
                128 => 129,
                129 => 128,
                t => t,
            },
            code,
        },
        L4::None => L4::None,
    };
    let flags = if p.tcp_flags & tcp_flags::SYN != 0 {
        tcp_flags::SYN | tcp_flags::ACK
    } else {
        p.tcp_flags
    };
    ParsedPacket {
        packet: Packet {
            src: p.packet.dst,
            dst: p.packet.src,
            protocol: p.packet.protocol,
            l4,
        },
        tcp_flags: flags,
        flow_ports: (p.flow_ports.1, p.flow_ports.0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet, VecDeque};

    use capo_policy::L4;
    use proptest::prelude::*;

    use super::*;
    use crate::Counters;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The index finds exactly the slots filed and not removed, whatever the
        /// collisions (hashes from a small range share homes and tags), and stays
        /// at most half full.
        #[test]
        fn index_finds_what_was_filed(ops in prop::collection::vec((any::<bool>(), 0u32..48, any::<prop::sample::Index>()), 1..400)) {
            let mut index = FlowIndex::default();
            let mut filed: Vec<(u32, u32)> = Vec::new();
            let mut next_slot = 0u32;
            for (add, hash, pick) in ops {
                if add || filed.is_empty() {
                    index.insert(hash, next_slot, filed.len() + 1);
                    filed.push((hash, next_slot));
                    next_slot += 1;
                } else {
                    let (hash, slot) = filed.swap_remove(pick.index(filed.len()));
                    index.remove(hash, slot);
                }
                let used = index.entries.iter().filter(|&&e| e != 0).count();
                prop_assert_eq!(used, filed.len());
                prop_assert!(used * 2 <= index.entries.len());
                for &(hash, slot) in &filed {
                    prop_assert!(index.candidates(hash).any(|s| s == slot), "slot {} under {} lost", slot, hash);
                }
                let live: HashSet<u32> = filed.iter().map(|&(_, s)| s).collect();
                for hash in 0..48 {
                    for s in index.candidates(hash) {
                        prop_assert!(live.contains(&s) && filed.contains(&(hash, s)));
                    }
                }
            }
        }
    }

    /// The table as a map of tuples and a queue of keys: the semantics of the module
    /// doc, second-chance eviction included, written for clarity.
    #[derive(Default)]
    struct Model {
        flows: HashMap<ModelKey, ModelFlow>,
        /// Front: most recently queued.
        queue: VecDeque<ModelKey>,
        expired: u64,
        evicted: u64,
        refused: u64,
        created: u64,
    }

    type ModelKey = (u32, u8, (IpAddr, u16), (IpAddr, u16));

    #[derive(Clone)]
    struct ModelFlow {
        init_src: (IpAddr, u16),
        first_dir: Direction,
        last_seen: u64,
        reply_seen: bool,
        established: bool,
        closing: bool,
        referenced: bool,
    }

    fn model_key(sw_if_index: u32, p: &ParsedPacket) -> ModelKey {
        let s = (p.packet.src, p.flow_ports.0);
        let d = (p.packet.dst, p.flow_ports.1);
        (sw_if_index, p.packet.protocol.0, s.min(d), s.max(d))
    }

    impl Model {
        fn expired(cfg: &FlowConfig, key: &ModelKey, f: &ModelFlow, now: u64) -> bool {
            let timeout = if key.1 != Protocol::TCP.0 {
                cfg.udp_ns
            } else if f.established && !f.closing {
                cfg.tcp_established_ns
            } else {
                cfg.tcp_transient_ns
            };
            now.saturating_sub(f.last_seen) > timeout
        }

        fn remove(&mut self, key: &ModelKey) {
            self.flows.remove(key);
            self.queue.retain(|k| k != key);
        }

        /// `Some(reply)` on a hit; on a miss an allowed packet creates its flow.
        fn packet(
            &mut self,
            cfg: &FlowConfig,
            sw_if_index: u32,
            dir: Direction,
            p: &ParsedPacket,
            allowed: bool,
            now: u64,
        ) -> Option<bool> {
            let key = model_key(sw_if_index, p);
            if let Some(f) = self.flows.get(&key).cloned() {
                if Self::expired(cfg, &key, &f, now) {
                    self.remove(&key);
                    self.expired += 1;
                } else {
                    let src = (p.packet.src, p.flow_ports.0);
                    let forward = src == f.init_src && dir == f.first_dir;
                    let reply = src != f.init_src && dir != f.first_dir;
                    if forward || reply {
                        let f = self.flows.get_mut(&key)?;
                        f.last_seen = now;
                        f.referenced = true;
                        f.reply_seen |= reply;
                        if p.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                            f.closing = true;
                        } else if f.reply_seen
                            && p.tcp_flags & tcp_flags::ACK != 0
                            && p.tcp_flags & tcp_flags::SYN == 0
                        {
                            f.established = true;
                        }
                        return Some(reply);
                    }
                }
            }
            if allowed {
                self.insert(cfg, key, dir, p, now);
            }
            None
        }

        fn insert(
            &mut self,
            cfg: &FlowConfig,
            key: ModelKey,
            dir: Direction,
            p: &ParsedPacket,
            now: u64,
        ) {
            self.remove(&key);
            if self.flows.len() >= cfg.capacity {
                let tail_expired = self
                    .queue
                    .back()
                    .is_some_and(|k| Self::expired(cfg, k, &self.flows[k], now));
                if tail_expired {
                    let k = self.queue.pop_back().unwrap_or(key);
                    self.flows.remove(&k);
                    self.expired += 1;
                } else if cfg.on_full == FullPolicy::EvictLru && !self.queue.is_empty() {
                    for _ in 0..SECOND_CHANCES {
                        let Some(k) = self.queue.back().copied() else {
                            break;
                        };
                        let f = &self.flows[&k];
                        if !f.referenced || Self::expired(cfg, &k, f, now) {
                            break;
                        }
                        if let Some(f) = self.flows.get_mut(&k) {
                            f.referenced = false;
                        }
                        self.queue.pop_back();
                        self.queue.push_front(k);
                    }
                    if let Some(k) = self.queue.pop_back() {
                        let was_expired = Self::expired(cfg, &k, &self.flows[&k], now);
                        self.flows.remove(&k);
                        if was_expired {
                            self.expired += 1
                        } else {
                            self.evicted += 1
                        }
                    }
                } else {
                    self.refused += 1;
                    return;
                }
            }
            self.flows.insert(
                key,
                ModelFlow {
                    init_src: (p.packet.src, p.flow_ports.0),
                    first_dir: dir,
                    last_seen: now,
                    reply_seen: false,
                    established: false,
                    closing: p.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0,
                    referenced: false,
                },
            );
            self.queue.push_front(key);
            self.created += 1;
        }

        fn expire(&mut self, cfg: &FlowConfig, now: u64, budget: usize) -> usize {
            let walked: Vec<ModelKey> = self.queue.iter().rev().take(budget).copied().collect();
            let mut removed = 0;
            for k in walked {
                if Self::expired(cfg, &k, &self.flows[&k], now) {
                    self.remove(&k);
                    removed += 1;
                }
            }
            self.expired += removed as u64;
            removed
        }
    }

    fn input_of(sw_if_index: u32, dir: Direction, packet: &ParsedPacket) -> Input {
        Input {
            sw_if_index,
            dir,
            packet: *packet,
            len: 0,
        }
    }

    fn udp_or_tcp(tcp: bool, src_port: u16) -> ParsedPacket {
        ParsedPacket {
            packet: Packet {
                src: IpAddr::from([10, 0, 0, 9]),
                dst: IpAddr::from([10, 0, 0, 1]),
                protocol: if tcp { Protocol::TCP } else { Protocol::UDP },
                l4: L4::Ports {
                    src: src_port,
                    dst: 80,
                },
            },
            tcp_flags: if tcp { tcp_flags::ACK } else { 0 },
            flow_ports: (src_port, 80),
        }
    }

    proptest! {
        /// Two IPv4 sides take the one-compare path to the key every family's
        /// path gives: same sides, same order, same fields (equal addresses too,
        /// where only the ports order them).
        #[test]
        fn ipv4_keys_equal_the_keys_by_sides(
            src in any::<u32>(), dst in any::<u32>(), same_address in any::<bool>(),
            src_port in any::<u16>(), dst_port in any::<u16>(), same_port in any::<bool>(),
            proto in any::<u8>(), sw_if_index in any::<u32>(),
        ) {
            let dst = if same_address { src } else { dst };
            let dst_port = if same_port { src_port } else { dst_port };
            let p = ParsedPacket {
                packet: Packet {
                    src: IpAddr::from(src.to_be_bytes()),
                    dst: IpAddr::from(dst.to_be_bytes()),
                    protocol: Protocol(proto),
                    l4: L4::Ports { src: src_port, dst: dst_port },
                },
                tcp_flags: 0,
                flow_ports: (src_port, dst_port),
            };
            prop_assert_eq!(key_of(sw_if_index, &p), key_by_sides(sw_if_index, &p));
        }
    }

    /// The eviction walk gives a live, hit flow its second chance and takes an
    /// expired one it meets behind it (counted as expired), not the live flow.
    #[test]
    fn eviction_takes_an_expired_flow_before_a_live_one() {
        let cfg = FlowConfig {
            capacity: 2,
            tcp_transient_ns: 15,
            udp_ns: 30,
            ..FlowConfig::default()
        };
        let counters = Counters::new();
        let c = counters.register_worker();
        let mut table = FlowTable::new(cfg);
        let udp = udp_or_tcp(false, 1000);
        let tcp = udp_or_tcp(true, 1001);
        let packet = |table: &mut FlowTable, p: &ParsedPacket, now: u64| {
            let k = table.keyed(7, p);
            match table.lookup(&k, Direction::Ingress, now, &c) {
                Lookup::Hit(slot, reply) => {
                    table.touch(slot, reply, p.tcp_flags, now);
                    true
                }
                Lookup::Miss(stale) => {
                    table.insert(
                        &k,
                        stale,
                        &input_of(7, Direction::Ingress, p),
                        GenerationId(1),
                        now,
                        &c,
                    );
                    false
                }
            }
        };
        assert!(!packet(&mut table, &udp, 0));
        assert!(!packet(&mut table, &tcp, 1));
        assert!(packet(&mut table, &udp, 2));
        assert!(packet(&mut table, &tcp, 3));
        // At 20 the TCP flow (transient, last seen at 3) has expired, the UDP flow
        // (last seen at 2) has not.
        assert!(!packet(&mut table, &udp_or_tcp(false, 1002), 20));
        let f = counters.flows();
        assert_eq!((f.expired, f.evicted), (1, 0));
        assert!(packet(&mut table, &udp, 21), "the live flow was evicted");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Packet {
            sw_if_index: u32,
            egress: bool,
            packet: ParsedPacket,
            allowed: bool,
            advance: u64,
        },
        Expire {
            advance: u64,
            budget: usize,
        },
    }

    fn packet() -> impl Strategy<Value = ParsedPacket> {
        let addr = prop::sample::select(vec![
            "10.0.0.1".parse::<IpAddr>().ok(),
            "10.0.0.2".parse().ok(),
            "fd00::1".parse().ok(),
            // The same bits as 10.0.0.1 in the other family: a different endpoint.
            "::a00:1".parse().ok(),
        ]);
        let flags = prop::sample::select(vec![
            tcp_flags::SYN,
            tcp_flags::SYN | tcp_flags::ACK,
            tcp_flags::ACK,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::RST,
        ]);
        (addr.clone(), addr, 1u16..3, 1u16..3, any::<bool>(), flags).prop_map(
            |(s, d, sp, dp, tcp, flags)| {
                let (s, d) = (
                    s.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    d.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                );
                ParsedPacket {
                    packet: Packet {
                        src: s,
                        dst: d,
                        protocol: if tcp { Protocol::TCP } else { Protocol::UDP },
                        l4: L4::Ports { src: sp, dst: dp },
                    },
                    tcp_flags: if tcp { flags } else { 0 },
                    flow_ports: (sp, dp),
                }
            },
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (1u32..3, any::<bool>(), packet(), any::<bool>(), 0u64..12).prop_map(|(sw_if_index, egress, packet, allowed, advance)| Op::Packet { sw_if_index, egress, packet, allowed, advance }),
            1 => (0u64..40, 1usize..6).prop_map(|(advance, budget)| Op::Expire { advance, budget }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The table's hits, replies, flow count and counters equal the model's on
        /// any sequence of packets and expiry walks: small capacities (eviction,
        /// refusal), short timeouts, both families, both directions.
        #[test]
        fn table_equals_the_model(ops in prop::collection::vec(op(), 1..300), capacity in 1usize..12, evict in any::<bool>()) {
            let cfg = FlowConfig {
                capacity,
                tcp_established_ns: 60,
                tcp_transient_ns: 15,
                udp_ns: 30,
                established_flows: EstablishedFlows::Keep,
                on_full: if evict { FullPolicy::EvictLru } else { FullPolicy::Refuse },
            };
            let counters = Counters::new();
            let c = counters.register_worker();
            let mut table = FlowTable::new(cfg);
            let mut model = Model::default();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Packet { sw_if_index, egress, packet, allowed, advance } => {
                        now += advance;
                        let dir = if egress { Direction::Egress } else { Direction::Ingress };
                        let k = table.keyed(sw_if_index, &packet);
                        let got = match table.lookup(&k, dir, now, &c) {
                            Lookup::Hit(slot, reply) => {
                                table.touch(slot, reply, packet.tcp_flags, now);
                                Some(reply)
                            }
                            Lookup::Miss(stale) => {
                                if allowed {
                                    table.insert(&k, stale, &input_of(sw_if_index, dir, &packet), GenerationId(1), now, &c);
                                }
                                None
                            }
                        };
                        let want = model.packet(&cfg, sw_if_index, dir, &packet, allowed, now);
                        prop_assert_eq!(got, want);
                    }
                    Op::Expire { advance, budget } => {
                        now += advance;
                        let got = table.expire(Timestamp(now), budget, &c);
                        prop_assert_eq!(got, model.expire(&cfg, now, budget));
                    }
                }
                prop_assert_eq!(table.len(), model.flows.len());
                let f = counters.flows();
                prop_assert_eq!((f.created, f.expired, f.evicted, f.refused), (model.created, model.expired, model.evicted, model.refused));
            }
        }
    }
}
