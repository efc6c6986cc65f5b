//! capo's hardware test suite: the DPDK offload backend on EAL vdev ports (`net_null`,
//! `net_ring`, `net_tap` when the machine allows it), or on a real NIC named by
//! `CAPO_HW_PCI=<pci address>`.
//!
//! The suite runs as one process (the EAL starts once per process), from the `vdev`
//! test target (`harness = false`). Each case prints `PASS`, `FAIL` or `SKIP <why>`;
//! a resource that is absent (no DPDK build, no root, no `/dev/net/tun`, no
//! hugepages for a real NIC) is a printed SKIP, never a silent pass.
//!
//! ```
//! use capo_hw_tests::Outcome;
//!
//! // A case that cannot run says why; it never counts as a pass.
//! let skipped = Outcome::Skip("no /dev/net/tun".into());
//! assert_ne!(skipped, Outcome::Pass);
//! ```
#![warn(missing_docs)]

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It could not run here; why.
    Skip(String),
    /// It failed; why.
    Fail(String),
}

/// Collects and prints case results.
#[derive(Debug, Default)]
pub struct Report {
    /// (case, outcome) in run order.
    pub cases: Vec<(String, Outcome)>,
}

impl Report {
    /// Records and prints one case.
    pub fn record(&mut self, name: &str, outcome: Outcome) {
        match &outcome {
            Outcome::Pass => println!("PASS {name}"),
            Outcome::Skip(why) => println!("SKIP {name}: {why}"),
            Outcome::Fail(why) => println!("FAIL {name}: {why}"),
        }
        self.cases.push((name.to_string(), outcome));
    }

    /// Failed cases.
    pub fn failures(&self) -> usize {
        self.cases
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
            .count()
    }

    /// Prints the totals.
    pub fn summary(&self) {
        let skipped = self
            .cases
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Skip(_)))
            .count();
        println!(
            "hw-tests: {} passed, {} failed, {} skipped",
            self.cases.len() - skipped - self.failures(),
            self.failures(),
            skipped
        );
    }
}

/// Whether the process runs as root (tap devices and hugepages need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Free 2 MiB hugepages, from `/proc/meminfo`.
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[cfg(feature = "dpdk")]
pub mod suite;
