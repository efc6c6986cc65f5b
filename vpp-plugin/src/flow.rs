//! The flow table: policy decides the first packet of a flow; later packets of an
//! allowed flow, and its replies, are allowed from here (DESIGN.md §3.7).
//!
//! Keys are the interface plus the 5-tuple with its two endpoints in a fixed order, so
//! a reply finds the entry its request made. Only allows are kept (a denied flow has no
//! connection to keep; its packets are re-decided, as with the ACL plugin). Each entry
//! remembers the generation that allowed it: with `established-flows keep` it stays
//! valid across generations (Calico's behaviour), with `revalidate` an entry from an
//! older generation is ignored and the packet re-decided.
//!
//! One table per worker (VPP thread), so workers never contend; the main thread locks
//! a table only for `show capo flows` and `clear capo counters`. Time is a parameter
//! (seconds), not read here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::classify::Parsed;
use crate::config::EstablishedFlows;
use crate::generation::SwIfIndex;

/// Seconds a flow may stay idle before it is forgotten.
pub const IDLE_TIMEOUT_SECS: u64 = 300;

/// Most worker tables (VPP thread indexes beyond this share tables).
pub const MAX_TABLES: usize = 64;

/// A flow, direction-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The interface.
    pub sw_if_index: SwIfIndex,
    /// IP protocol.
    pub protocol: u8,
    /// The lower endpoint.
    pub lo: (IpAddr, u16),
    /// The higher endpoint.
    pub hi: (IpAddr, u16),
}

impl FlowKey {
    /// The key of a parsed packet on an interface.
    pub fn new(sw_if_index: SwIfIndex, p: &Parsed) -> Self {
        let a = (p.packet.src, p.flow_ports.0);
        let b = (p.packet.dst, p.flow_ports.1);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        FlowKey {
            sw_if_index,
            protocol: p.packet.protocol.0,
            lo,
            hi,
        }
    }
}

/// What the table knows about an allowed flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// The generation that allowed the first packet.
    pub generation: u64,
    /// The views' `rule#` that allowed it, when a rule did.
    pub rule_id: Option<u32>,
    /// Packets seen (the first included).
    pub packets: u64,
    /// Last packet, in seconds.
    pub last_seen: u64,
}

/// One worker's flows.
#[derive(Debug)]
pub struct FlowTable {
    map: HashMap<FlowKey, FlowEntry>,
    capacity: usize,
}

impl FlowTable {
    /// An empty table holding at most `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        FlowTable {
            map: HashMap::new(),
            capacity,
        }
    }

    /// The entry that lets this packet through, if any; counts the packet.
    pub fn hit(
        &mut self,
        key: &FlowKey,
        now: u64,
        active_generation: u64,
        mode: EstablishedFlows,
    ) -> Option<FlowEntry> {
        let e = self.map.get_mut(key)?;
        let stale = now.saturating_sub(e.last_seen) > IDLE_TIMEOUT_SECS
            || (mode == EstablishedFlows::Revalidate && e.generation != active_generation);
        if stale {
            self.map.remove(key);
            return None;
        }
        e.packets += 1;
        e.last_seen = now;
        Some(*e)
    }

    /// Records an allowed flow. When the table is full, idle flows are swept first; if
    /// it is still full the flow is not recorded (its packets are classified again).
    pub fn insert(&mut self, key: FlowKey, generation: u64, rule_id: Option<u32>, now: u64) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.map
                .retain(|_, e| now.saturating_sub(e.last_seen) <= IDLE_TIMEOUT_SECS);
            if self.map.len() >= self.capacity {
                return;
            }
        }
        self.map.insert(
            key,
            FlowEntry {
                generation,
                rule_id,
                packets: 1,
                last_seen: now,
            },
        );
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forgets every flow.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// The flows, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.map.iter()
    }
}

/// The per-worker tables.
#[derive(Debug)]
pub struct FlowTables {
    tables: Vec<Mutex<FlowTable>>,
}

impl FlowTables {
    /// [`MAX_TABLES`] tables of `capacity` flows each.
    pub fn new(capacity: usize) -> Self {
        FlowTables {
            tables: (0..MAX_TABLES)
                .map(|_| Mutex::new(FlowTable::new(capacity)))
                .collect(),
        }
    }

    /// The table of VPP thread `thread_index` (uncontended for workers).
    pub fn for_thread(&self, thread_index: u16) -> Option<MutexGuard<'_, FlowTable>> {
        let t = self.tables.get(usize::from(thread_index) % MAX_TABLES)?;
        // A worker that panicked mid-update cannot corrupt a HashMap's memory safety;
        // keep using the table.
        Some(t.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Visits every table (main thread: `show capo flows`, `clear capo counters`).
    pub fn each(&self, mut f: impl FnMut(usize, &mut FlowTable)) {
        for (i, t) in self.tables.iter().enumerate() {
            let mut g = t.lock().unwrap_or_else(PoisonError::into_inner);
            f(i, &mut g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{build::ip_bytes, parse_ip};
    use capo_policy::{Packet, Protocol, L4};

    fn parsed(src: &str, dst: &str, sport: u16, dport: u16) -> Parsed {
        let p = Packet {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: Protocol(6),
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        };
        parse_ip(&ip_bytes(&p), false).unwrap()
    }

    #[test]
    fn replies_share_the_request_key() {
        let req = FlowKey::new(
            SwIfIndex(11),
            &parsed("11.0.0.196", "11.0.0.67", 40000, 5978),
        );
        let rep = FlowKey::new(
            SwIfIndex(11),
            &parsed("11.0.0.67", "11.0.0.196", 5978, 40000),
        );
        assert_eq!(req, rep);
        let other_if = FlowKey::new(
            SwIfIndex(12),
            &parsed("11.0.0.67", "11.0.0.196", 5978, 40000),
        );
        assert_ne!(req, other_if);
    }

    #[test]
    fn keep_and_revalidate() {
        let k = FlowKey::new(SwIfIndex(1), &parsed("10.0.0.1", "10.0.0.2", 1, 2));
        let mut t = FlowTable::new(8);
        assert!(t.hit(&k, 0, 1, EstablishedFlows::Keep).is_none());
        t.insert(k, 1, Some(18), 0);
        assert_eq!(t.hit(&k, 1, 2, EstablishedFlows::Keep).unwrap().packets, 2);
        assert!(t.hit(&k, 2, 2, EstablishedFlows::Revalidate).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn idle_flows_expire_and_full_tables_refuse() {
        let mut t = FlowTable::new(1);
        let a = FlowKey::new(SwIfIndex(1), &parsed("10.0.0.1", "10.0.0.2", 1, 2));
        let b = FlowKey::new(SwIfIndex(1), &parsed("10.0.0.1", "10.0.0.3", 1, 2));
        t.insert(a, 1, None, 0);
        t.insert(b, 1, None, 10);
        assert_eq!(t.len(), 1);
        assert!(t.hit(&b, 10, 1, EstablishedFlows::Keep).is_none());
        t.insert(b, 1, None, 10 + IDLE_TIMEOUT_SECS + 1);
        assert!(t
            .hit(&b, 10 + IDLE_TIMEOUT_SECS + 1, 1, EstablishedFlows::Keep)
            .is_some());
        assert!(t
            .hit(&a, 10 + IDLE_TIMEOUT_SECS + 1, 1, EstablishedFlows::Keep)
            .is_none());
    }
}
