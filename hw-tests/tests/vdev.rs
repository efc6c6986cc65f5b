//! The hardware suite (`harness = false`: the EAL starts once per process).
//!
//! `cargo test -p capo-hw-tests --features dpdk` runs it on vdev ports;
//! `CAPO_HW_PCI=0000:03:00.0` runs it on that NIC instead. Without the `dpdk` feature
//! it prints that it was skipped.

fn main() {
    let mut report = capo_hw_tests::Report::default();
    #[cfg(feature = "dpdk")]
    capo_hw_tests::suite::run(&mut report);
    #[cfg(not(feature = "dpdk"))]
    report.record(
        "hw-tests/*",
        capo_hw_tests::Outcome::Skip(
            "built without the `dpdk` feature (cargo test -p capo-hw-tests --features dpdk; needs libdpdk-dev)".into(),
        ),
    );
    report.summary();
    if report.failures() > 0 {
        std::process::exit(1);
    }
}
