//! `capo-bench traffic --export DIR`: the offload benchmark's traffic as files other
//! tools replay, so a TRex run, a VPP packet-generator run and the in-process
//! benchmarks see the same flows (same seed, same packets).
//!
//! The directory holds:
//!
//! - `flows.csv`: every segment of every connection, window by window, in the order
//!   the benchmark generates them (columns in [`FLOWS_HEADER`]). `verdict` is the
//!   reference evaluator's verdict of that packet on its own, as a node that sees only
//!   this packet judges it (for the wire side: the ingress policy of the local
//!   endpoint, since the requests of connections the endpoint opened never cross the
//!   wire a replay sends).
//! - `felix.frames`: the cluster's policy as the frame stream Felix writes to a
//!   dataplane driver (ConfigUpdate, the snapshot, InSync), for capo-agent's
//!   `--felix-socket`.
//! - `endpoints.csv`: the node's workload endpoints (`workload,interface,addresses`,
//!   addresses space-separated), to bind each to a dataplane interface.
//! - `meta.json`: the options it came from and, per window, the packets from the wire
//!   and how many of them the reference allows and denies.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use capo_policy::{trace, Verdict, L4};
use serde::Serialize;

use crate::traffic::{Opener, Traffic, TrafficOptions};
use crate::workload::Kind;

/// The columns of `flows.csv`.
pub const FLOWS_HEADER: &str = "window,connection,conversation,rank,opener,allowed,src,dst,proto,sport,dport,icmp_type,icmp_code,tcp_flags,from_wire,count,verdict";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Packets of one window, as `meta.json` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WindowTotals {
    /// Connections drawn.
    pub connections: usize,
    /// Packets from the wire.
    pub wire_packets: u64,
    /// Of those, allowed by the reference (each packet on its own).
    pub wire_allowed: u64,
    /// Of those, denied by the reference.
    pub wire_denied: u64,
    /// Packets the local endpoints send.
    pub local_packets: u64,
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportMeta {
    /// The workload (`w-k8s`, `w-large`).
    pub workload: &'static str,
    /// The traffic's seed.
    pub seed: u64,
    /// Zipf exponent of conversation popularity.
    pub zipf: f64,
    /// Conversations present from the first window.
    pub conversations: usize,
    /// Conversations arriving in each later window.
    pub new_per_window: usize,
    /// Connections drawn per window.
    pub connections_per_window: usize,
    /// Per window.
    pub windows: Vec<WindowTotals>,
}

fn verdict_word(allowed: bool) -> &'static str {
    if allowed {
        "allow"
    } else {
        "deny"
    }
}

fn opener_word(o: Opener) -> &'static str {
    match o {
        Opener::Peer => "peer",
        Opener::Local => "local",
    }
}

/// `flows.csv` and the window totals of `traffic`.
pub fn flows_csv(traffic: &Traffic) -> (String, Vec<WindowTotals>) {
    let mut csv = String::new();
    csv.push_str(FLOWS_HEADER);
    csv.push('\n');
    let mut totals = Vec::with_capacity(traffic.windows.len());
    for (w, window) in traffic.windows.iter().enumerate() {
        let mut t = WindowTotals {
            connections: window.connections.len(),
            ..WindowTotals::default()
        };
        for (c, conn) in window.connections.iter().enumerate() {
            let Some(conv) = traffic.conversations.get(conn.conversation) else {
                continue;
            };
            for s in &conn.segments {
                let p = s.probe.reference_packet();
                let allowed = trace(&traffic.state, &p).verdict == Verdict::Allow;
                let (sport, dport, icmp_type, icmp_code) = match p.l4 {
                    L4::Ports { src, dst } => (src, dst, String::new(), String::new()),
                    L4::Icmp { icmp_type, code } => (0, 0, icmp_type.to_string(), code.to_string()),
                    _ => (0, 0, String::new(), String::new()),
                };
                // Writing to a String cannot fail.
                let _ = writeln!(
                    csv,
                    "{w},{c},{},{},{},{},{},{},{},{sport},{dport},{icmp_type},{icmp_code},{},{},{},{}",
                    conn.conversation,
                    conv.rank,
                    opener_word(conv.opener),
                    verdict_word(conn.allowed),
                    p.src,
                    p.dst,
                    p.protocol.0,
                    s.probe.tcp_flags,
                    u8::from(s.from_wire),
                    s.count,
                    verdict_word(allowed),
                );
                if s.from_wire {
                    t.wire_packets += s.count;
                    if allowed {
                        t.wire_allowed += s.count;
                    } else {
                        t.wire_denied += s.count;
                    }
                } else {
                    t.local_packets += s.count;
                }
            }
        }
        totals.push(t);
    }
    (csv, totals)
}

/// `endpoints.csv` of `traffic`'s node.
pub fn endpoints_csv(traffic: &Traffic) -> String {
    let mut csv = String::from("workload,interface,addresses\n");
    for (key, w) in traffic.state.workloads() {
        let addresses: Vec<String> = w.nets().map(ToString::to_string).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(csv, "{},{},{}", key.workload, w.name, addresses.join(" "));
    }
    csv
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let err = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// Writes `traffic` (generated for `kind` with `options`) into `dir`, creating it.
pub fn export(
    kind: Kind,
    options: &TrafficOptions,
    traffic: &Traffic,
    dir: &Path,
) -> Result<ExportMeta, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (csv, windows) = flows_csv(traffic);
    write(&dir.join("flows.csv"), csv.as_bytes())?;
    write(
        &dir.join("endpoints.csv"),
        endpoints_csv(traffic).as_bytes(),
    )?;
    let frames = capo_felix::frame::encode_frames(&capo_felix::encode::snapshot(&traffic.state));
    write(&dir.join("felix.frames"), &frames)?;
    let meta = ExportMeta {
        workload: kind.name(),
        seed: options.seed,
        zipf: options.zipf,
        conversations: options.conversations,
        new_per_window: options.new_per_window,
        connections_per_window: options.connections_per_window,
        windows,
    };
    let json = serde_json::to_string_pretty(&meta).unwrap_or_default();
    write(&dir.join("meta.json"), json.as_bytes())?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::generate_traffic;

    #[test]
    fn export_holds_every_wire_packet_and_the_reference_verdicts() {
        let o = TrafficOptions::small(1.1, 3);
        let t = generate_traffic(Kind::K8s, &o);
        let dir = std::env::temp_dir().join(format!("capo-export-{}", std::process::id()));
        let meta = export(Kind::K8s, &o, &t, &dir).unwrap();
        assert_eq!(meta.windows.len(), o.windows);
        let csv = std::fs::read_to_string(dir.join("flows.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(FLOWS_HEADER));
        let columns = FLOWS_HEADER.split(',').count();
        let (mut wire, mut allowed) = (vec![0u64; o.windows], vec![0u64; o.windows]);
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), columns, "{line}");
            let w: usize = f[0].parse().unwrap();
            let count: u64 = f[15].parse().unwrap();
            if f[14] == "1" {
                wire[w] += count;
                allowed[w] += count * u64::from(f[16] == "allow");
            }
        }
        for (w, window) in t.windows.iter().enumerate() {
            assert_eq!(wire[w], window.wire_packets());
            assert_eq!(meta.windows[w].wire_packets, wire[w]);
            assert_eq!(meta.windows[w].wire_allowed, allowed[w]);
            assert_eq!(
                meta.windows[w].wire_allowed + meta.windows[w].wire_denied,
                wire[w]
            );
            // Both verdicts occur: the replay's counts can tell them apart.
            assert!(meta.windows[w].wire_allowed > 0 && meta.windows[w].wire_denied > 0);
        }
        // Every wire packet is for an endpoint of the node.
        let endpoints = std::fs::read_to_string(dir.join("endpoints.csv")).unwrap();
        let local: Vec<&str> = endpoints
            .lines()
            .skip(1)
            .flat_map(|l| l.split(',').nth(2).unwrap().split(' '))
            .collect();
        for line in csv
            .lines()
            .skip(1)
            .filter(|l| l.split(',').nth(14) == Some("1"))
        {
            let dst = line.split(',').nth(7).unwrap();
            assert!(local.contains(&format!("{dst}/32").as_str()), "{line}");
        }
        // The policy stream reads back into the same state.
        let frames = std::fs::read(dir.join("felix.frames")).unwrap();
        let mut reader = capo_felix::frame::FrameReader::new(frames.as_slice());
        let mut session = capo_felix::session::Session::new(None);
        while let Some(frame) = reader.read_frame().unwrap() {
            session.on_frame(&frame).unwrap();
        }
        assert!(
            capo_felix::encode::snapshot(session.state()) == capo_felix::encode::snapshot(&t.state)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
