//! DPDK `rte_acl` as a peer engine.
//!
//! Not built yet in this tree: the safe rte_acl wrapper (`capo_offload::acl`) is being
//! written alongside; until it lands, this engine prints a JSON line that says so
//! (never skipped silently). The expansion it will measure: per interface program,
//! each rule × its source members × destination members × port ranges, as 5-tuple
//! entries with first-match priorities.

use std::time::Duration;

use capo_policy::State;

use crate::run::Row;
use crate::workload::{Kind, Workload};

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

/// Measures rte_acl on the workload, or says why it could not.
pub fn measure(w: &Workload, state: &State, _budget: Duration, log: &mut dyn FnMut(&str)) -> Row {
    let entries = expanded_entries(w, state);
    log(&format!("rte_acl: rules expand to {entries} entries"));
    let mut row = Row {
        engine: "rte_acl",
        workload: w.kind.name(),
        ns_per_packet: None,
        mpps: None,
        compile_ms: None,
        update_p99_us: None,
        bytes_per_member: None,
        note: None,
    };
    row.note = Some(match w.kind {
        Kind::Large => format!(
            "not built: the rules expand to {entries} rte_acl entries (DPDK measured 3.8 s and ~1 GB for 50,000 here); no incremental update"
        ),
        _ => format!(
            "not measured: rte_acl engine not available in this build (needs the safe rte_acl wrapper over dpdk-sys); rules expand to {entries} entries"
        ),
    });
    row
}
