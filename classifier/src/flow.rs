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
//! - When the table is full, [`FullPolicy::EvictLru`] (default) evicts the least
//!   recently used flow (counted as `evicted`); [`FullPolicy::Refuse`] creates no
//!   flow (counted as `refused`): the packet still gets its policy verdict, but its
//!   replies are then classified as packets of their own.
//!
//! Time is a parameter ([`Timestamp`]); nothing here reads a clock. Each worker owns
//! its table: no sharing, no locks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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
    /// Evict the least recently used flow.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    sw_if_index: u32,
    proto: u8,
    a: (IpAddr, u16),
    b: (IpAddr, u16),
}

/// The key of a packet, and whether its source is the key's `a` side.
fn key_of(sw_if_index: u32, p: &ParsedPacket) -> (FlowKey, bool) {
    let s = (p.packet.src, p.flow_ports.0);
    let d = (p.packet.dst, p.flow_ports.1);
    let src_is_a = s <= d;
    let (a, b) = if src_is_a { (s, d) } else { (d, s) };
    (
        FlowKey {
            sw_if_index,
            proto: p.packet.protocol.0,
            a,
            b,
        },
        src_is_a,
    )
}

#[derive(Debug, Clone)]
struct Flow {
    key: FlowKey,
    /// The first packet, as classified (for revalidation).
    first: Packet,
    first_dir: Direction,
    init_is_a: bool,
    generation: GenerationId,
    last_seen: u64,
    tcp_established: bool,
    tcp_closing: bool,
    reply_seen: bool,
    prev: u32,
    next: u32,
}

const NIL: u32 = u32::MAX;

/// FxHash-style hasher: the keys are not attacker-chosen in a way that matters
/// here (the table is bounded and evicts), and SipHash would cost more than the
/// classification it saves.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// A bounded flow table with LRU order (see the module doc).
#[derive(Debug)]
pub struct FlowTable {
    cfg: FlowConfig,
    map: HashMap<FlowKey, u32, BuildHasherDefault<FastHasher>>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
}

impl std::fmt::Debug for FastHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastHasher")
    }
}

/// What the flow table says about a packet.
enum Lookup {
    /// Part of a known allowed flow (slot), forward or reply.
    Hit(u32, bool),
    Miss,
}

impl FlowTable {
    /// An empty table.
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            map: HashMap::default(),
            flows: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    /// Number of flows held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    fn flow(&self, slot: u32) -> Option<&Flow> {
        self.flows.get(slot as usize)
    }

    fn flow_mut(&mut self, slot: u32) -> Option<&mut Flow> {
        self.flows.get_mut(slot as usize)
    }

    fn timeout(&self, f: &Flow) -> u64 {
        if f.key.proto == Protocol::TCP.0 {
            if f.tcp_established && !f.tcp_closing {
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
        self.unlink(slot);
        if let Some(f) = self.flow(slot) {
            let key = f.key;
            self.map.remove(&key);
        }
        self.free.push(slot);
    }

    fn lookup(
        &mut self,
        sw_if_index: u32,
        dir: Direction,
        p: &ParsedPacket,
        now: u64,
        c: &WorkerCounters,
    ) -> Lookup {
        let (key, src_is_a) = key_of(sw_if_index, p);
        let Some(&slot) = self.map.get(&key) else {
            return Lookup::Miss;
        };
        let Some(f) = self.flow(slot) else {
            return Lookup::Miss;
        };
        if self.expired(f, now) {
            self.remove_slot(slot);
            c.flow(FlowEvent::Expired, 1);
            return Lookup::Miss;
        }
        let forward = src_is_a == f.init_is_a && dir == f.first_dir;
        let reply = src_is_a != f.init_is_a && dir != f.first_dir;
        if forward || reply {
            Lookup::Hit(slot, reply)
        } else {
            Lookup::Miss
        }
    }

    fn touch(&mut self, slot: u32, reply: bool, flags: u8, now: u64) {
        if let Some(f) = self.flow_mut(slot) {
            f.last_seen = now;
            if reply {
                f.reply_seen = true;
            }
            if flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
                f.tcp_closing = true;
            } else if f.reply_seen && flags & tcp_flags::ACK != 0 && flags & tcp_flags::SYN == 0 {
                f.tcp_established = true;
            }
        }
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn insert(
        &mut self,
        sw_if_index: u32,
        dir: Direction,
        p: &ParsedPacket,
        generation: GenerationId,
        now: u64,
        c: &WorkerCounters,
    ) {
        let (key, src_is_a) = key_of(sw_if_index, p);
        if let Some(&slot) = self.map.get(&key) {
            // A stale flow with the same tuple (other direction, or expired): replace.
            self.remove_slot(slot);
        }
        if self.map.len() >= self.cfg.capacity {
            let tail = self.tail;
            let tail_expired = self.flow(tail).is_some_and(|f| self.expired(f, now));
            if tail_expired {
                self.remove_slot(tail);
                c.flow(FlowEvent::Expired, 1);
            } else {
                match self.cfg.on_full {
                    FullPolicy::EvictLru if tail != NIL => {
                        self.remove_slot(tail);
                        c.flow(FlowEvent::Evicted, 1);
                    }
                    _ => {
                        c.flow(FlowEvent::Refused, 1);
                        return;
                    }
                }
            }
        }
        let flow = Flow {
            key,
            first: p.packet,
            first_dir: dir,
            init_is_a: src_is_a,
            generation,
            last_seen: now,
            tcp_established: false,
            tcp_closing: p.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0,
            reply_seen: false,
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
        self.map.insert(key, slot);
        self.push_front(slot);
        c.flow(FlowEvent::Created, 1);
    }

    /// Removes up to `budget` expired flows from the least recently used end;
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
}

impl Worker {
    /// A worker with its own flow table, registered with `counters`.
    pub fn new(cfg: FlowConfig, counters: &Counters) -> Self {
        Worker {
            flows: FlowTable::new(cfg),
            counters: counters.register_worker(),
            scratch: Scratch::default(),
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
    pub fn process(
        &mut self,
        generation: &Generation,
        batch: &[Input],
        now: Timestamp,
        out: &mut Vec<Verdict>,
    ) {
        let batch = batch.get(..batch.len().min(MAX_BATCH)).unwrap_or(batch);
        out.clear();
        for (i, input) in batch.iter().enumerate() {
            if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                generation.prefetch(&ahead.packet.packet);
            }
            out.push(self.process_one(generation, input, now));
        }
    }

    /// Records a packet that was allowed without this worker classifying it (a NIC
    /// allow verdict of a generation software holds), so that the flow table holds
    /// what Calico's conntrack would: the flow's later packets and its replies are
    /// flow-table hits, whichever path decides them. A packet of a known flow
    /// refreshes it; otherwise the flow is created.
    pub fn admit(&mut self, generation: &Generation, input: &Input, now: Timestamp) {
        let c = &*self.counters;
        let now = now.0;
        let Input {
            sw_if_index,
            dir,
            packet,
            ..
        } = *input;
        match self.flows.lookup(sw_if_index, dir, &packet, now, c) {
            Lookup::Hit(slot, reply) => self.flows.touch(slot, reply, packet.tcp_flags, now),
            Lookup::Miss => self
                .flows
                .insert(sw_if_index, dir, &packet, generation.id(), now, c),
        }
    }

    /// Decides one packet.
    pub fn process_one(
        &mut self,
        generation: &Generation,
        input: &Input,
        now: Timestamp,
    ) -> Verdict {
        let c = &*self.counters;
        let now = now.0;
        let Input {
            sw_if_index,
            dir,
            packet,
            len,
        } = *input;
        if let Lookup::Hit(slot, reply) = self.flows.lookup(sw_if_index, dir, &packet, now, c) {
            let stale = self
                .flows
                .flow(slot)
                .is_some_and(|f| f.generation != generation.id());
            if stale && self.flows.cfg.established_flows == EstablishedFlows::Revalidate {
                let Some(f) = self.flows.flow(slot) else {
                    return Verdict::Deny;
                };
                let (first, first_dir) = (f.first, f.first_dir);
                c.flow(FlowEvent::Revalidated, 1);
                let verdict = match generation.interface_by_sw_if_index(sw_if_index) {
                    Some(iface) => generation
                        .classify(iface, first_dir, &first, &mut self.scratch)
                        .map(|d| d.verdict)
                        .unwrap_or(Verdict::Allow),
                    None => Verdict::Allow,
                };
                if verdict == Verdict::Deny {
                    self.flows.remove_slot(slot);
                    c.flow(FlowEvent::RevalidateDenied, 1);
                    c.verdict(sw_if_index, dir, Verdict::Deny, u64::from(len));
                    return Verdict::Deny;
                }
                if let Some(f) = self.flows.flow_mut(slot) {
                    f.generation = generation.id();
                }
            }
            self.flows.touch(slot, reply, packet.tcp_flags, now);
            c.flow(FlowEvent::Hit, 1);
            c.verdict(sw_if_index, dir, Verdict::Allow, u64::from(len));
            return Verdict::Allow;
        }
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
            self.flows
                .insert(sw_if_index, dir, &packet, generation.id(), now, c);
        }
        d.verdict
    }
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
