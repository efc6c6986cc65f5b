//! What every engine's measurement shares: the result row (one JSON line) and the
//! CPU-time loops that fill it.

use std::time::{Duration, Instant};

/// One engine's result: the fields of one JSON line (`None` prints as `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `fast`, `reference`, `linear`, `rte_acl`.
    pub engine: &'static str,
    /// `w-seed`, `w-k8s`, `w-large`.
    pub workload: &'static str,
    /// Nanoseconds per packet (first packet of a flow).
    pub ns_per_packet: Option<f64>,
    /// Million packets per second on one core.
    pub mpps: Option<f64>,
    /// Full compile (build) time.
    pub compile_ms: Option<f64>,
    /// p99 of one IP-set member add/remove, microseconds.
    pub update_p99_us: Option<f64>,
    /// Index memory per IP-set member.
    pub bytes_per_member: Option<f64>,
    /// Why a field is null, or what was sampled.
    pub note: Option<String>,
    /// `production` for the frame pipeline the dataplanes run.
    pub path: Option<&'static str>,
    /// `first` or `established` (production rows).
    pub phase: Option<&'static str>,
    /// Mean rules per interface program (rows of the rules-per-program sweep).
    pub rules_per_program: Option<f64>,
}

impl Row {
    pub(crate) fn new(engine: &'static str, workload: &'static str) -> Self {
        Row {
            engine,
            workload,
            ns_per_packet: None,
            mpps: None,
            compile_ms: None,
            update_p99_us: None,
            bytes_per_member: None,
            note: None,
            path: None,
            phase: None,
            rules_per_program: None,
        }
    }

    pub(crate) fn timing(mut self, ns: f64) -> Self {
        self.ns_per_packet = Some(ns);
        self.mpps = Some(if ns > 0.0 { 1e3 / ns } else { 0.0 });
        self
    }

    /// The row as one JSON object.
    pub fn json(&self) -> String {
        let r = |x: Option<f64>| x.map(|v| (v * 1000.0).round() / 1000.0);
        let mut v = serde_json::json!({
            "engine": self.engine,
            "workload": self.workload,
            "ns_per_packet": r(self.ns_per_packet),
            "mpps": r(self.mpps),
            "compile_ms": r(self.compile_ms),
            "update_p99_us": r(self.update_p99_us),
            "bytes_per_member": r(self.bytes_per_member),
        });
        if let (Some(obj), Some(rpp)) = (v.as_object_mut(), self.rules_per_program) {
            obj.insert("rules_per_program".into(), serde_json::json!(r(Some(rpp))));
        }
        if let Some(obj) = v.as_object_mut() {
            for (field, value) in [
                ("note", self.note.clone()),
                ("path", self.path.map(str::to_string)),
                ("phase", self.phase.map(str::to_string)),
            ] {
                if let Some(value) = value {
                    obj.insert(field.into(), serde_json::Value::String(value));
                }
            }
        }
        v.to_string()
    }
}

/// This process's resident memory (`VmRSS`), 0 when unreadable.
pub fn resident_bytes() -> u64 {
    resident_bytes_of("self")
}

/// A process's resident memory (`VmRSS` of `/proc/PID/status`; `self` for this
/// one), 0 when unreadable.
pub fn resident_bytes_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `f(i)` over `0..n` repeatedly until `budget` is spent; ns per call, in
/// this thread's CPU time (the benchmark machine is shared: wall time would count
/// other tenants' time slices).
pub(crate) fn time_loop(budget: Duration, n: usize, mut f: impl FnMut(usize)) -> f64 {
    if n == 0 {
        return 0.0;
    }
    for i in 0..n {
        f(i);
    }
    let t = Instant::now();
    let c = crate::cpu::thread_time();
    let mut calls = 0u64;
    while t.elapsed() < budget {
        for i in 0..n {
            f(i);
        }
        calls += n as u64;
    }
    (crate::cpu::thread_time() - c).as_nanos() as f64 / calls.max(1) as f64
}

/// Runs `f(i)` for `i` in order until `budget` is spent (at least 50, at most `n`).
pub(crate) fn time_sampled(budget: Duration, n: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    let c = crate::cpu::thread_time();
    let mut i = 0;
    while i < n && (i < 50 || t.elapsed() < budget) {
        f(i);
        i += 1;
    }
    (crate::cpu::thread_time() - c).as_nanos() as f64 / i.max(1) as f64
}
