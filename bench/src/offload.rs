//! `capo-bench offload`: how much of W-k8s's traffic the NIC decides, on the same
//! W-k8s the classifier benchmarks use.
//!
//! The workload's ingress packets from remote sources (what arrives from the wire)
//! become flows with Zipf-distributed packet counts (rank `k` gets weight
//! `1/(k+1)^s`); an allowed TCP flow is a SYN then ACK-flagged packets, a refused one
//! only SYNs (its handshake never completes: the initiator retries its SYN, as in the
//! offload crate's own generator). The planner ranks by
//! those counts (synthetic hit counters), the plan is committed to a simulated NIC of
//! the chosen profile, and every packet's NIC-plus-software verdict is checked
//! against the reference evaluator (`capo_offload::bench::run_on`).

use capo_offload::bench::{run_on, NicProfile, OffloadBenchReport};
use capo_offload::verdict::{Fragment, Probe};
use capo_offload::workload::{Flow, Workload as OffloadWorkload, Zipf};
use capo_policy::{trace, Direction, Protocol, Verdict};

use crate::workload::{generate, Kind};

/// Packets replayed in total.
pub const PACKETS: u64 = 10_000_000;

/// The benchmark's settings.
#[derive(Debug, Clone, Copy)]
pub struct OffloadOptions {
    /// Workload.
    pub kind: Kind,
    /// NIC profile.
    pub nic: NicProfile,
    /// NIC entries.
    pub capacity: u32,
    /// Zipf exponent.
    pub zipf: f64,
}

/// The wire traffic of a generated workload, as the offload benchmark replays it.
pub fn wire_flows(kind: Kind, zipf: f64) -> OffloadWorkload {
    let w = generate(kind);
    let (state, ids) = w.state();
    let host = state.local_host_addrs();
    let packets: Vec<_> = w
        .packets
        .iter()
        .filter(|(_, dir, p)| {
            *dir == Direction::Ingress
                && state.workload_owning(&p.src).is_none()
                && !host.contains(&p.src)
        })
        .map(|(_, _, p)| *p)
        .collect();
    let z = Zipf::new(packets.len(), zipf);
    let flows = packets
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let n = ((PACKETS as f64) * z.weight(k)).round().max(1.0) as u64;
            let probe = |flags| Probe {
                packet: *p,
                tcp_flags: flags,
                fragment: Fragment::No,
            };
            let tcp = p.protocol == Protocol::TCP;
            // A TCP connection the policy refuses never completes its handshake: the
            // initiator only retries its SYN, it never sends ACK-flagged segments.
            let established = !tcp || trace(&state, p).verdict == Verdict::Allow;
            Flow {
                first: probe(if tcp { 0x02 } else { 0 }),
                rest: (n > 1 && established).then(|| probe(if tcp { 0x10 } else { 0 })),
                packets: n,
            }
        })
        .collect();
    OffloadWorkload { state, ids, flows }
}

/// Runs the benchmark.
pub fn run(o: &OffloadOptions) -> OffloadBenchReport {
    let w = wire_flows(o.kind, o.zipf);
    run_on(&w, &o.nic.caps(o.capacity))
}
