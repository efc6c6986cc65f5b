//! `capo-bench vpp`: the production path measured inside VPP 26.06.
//!
//! The offload benchmark's traffic (one window of [`crate::traffic`], the connections'
//! first packets from the wire) is written as a pcap and sent by VPP's packet generator
//! into `pg0`; VPP routes each packet to its endpoint's interface (`pg1`...), where
//! capo's output node applies the endpoint's ingress policy. VPP's own per-node clocks
//! (`show runtime`) are summed over the nodes the packets cross, per packet:
//!
//! - `forward`: the same packets through VPP with no policy (capo's plugin loaded, no
//!   endpoint bound);
//! - `capo`, phase `first`: every packet a new flow, classified;
//! - `capo`, phase `established`: the allowed flows again, each a flow-table hit.
//!
//! The policy reaches the plugin as in production: capo-agent, fed the cluster's Felix
//! stream, commits it over the plugin's control socket. `memory_bytes` is the growth of
//! VPP's resident memory from before the agent connects to after the policy is in force.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capo_policy::{trace, Verdict, L4};
use serde::Serialize;

use crate::traffic::{generate_traffic, TrafficOptions};
use crate::workload::Kind;

/// pg0's MAC: the frames are addressed to it.
const PG0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// What to measure.
#[derive(Debug, Clone)]
pub struct VppBenchOptions {
    /// The workload.
    pub kind: Kind,
    /// Which window of the traffic.
    pub window: usize,
    /// The traffic's seed.
    pub seed: u64,
    /// An unpacked VPP with capo's plugin (`scripts/vpp-setup.sh DIR`).
    pub vpp_root: PathBuf,
    /// The capo-agent binary.
    pub agent: PathBuf,
    /// Times each phase is sent (the median is reported).
    pub runs: usize,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum VppBenchError {
    /// A file or process could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// VPP, the agent or the plugin did not do what was asked in time.
    #[error("{0}")]
    Stuck(String),
    /// The window has no packets from the wire.
    #[error("window {0} has no packets from the wire")]
    NoTraffic(usize),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VppBenchError {
    let what = what.into();
    move |source| VppBenchError::Io { what, source }
}

/// One result row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VppRow {
    /// `capo` or `forward`.
    pub engine: &'static str,
    /// `first` (new flows) or `established` (flow-table hits).
    pub phase: &'static str,
    /// VPP clocks per packet over every node the packets cross (the generator's
    /// input node excluded), median of the runs.
    pub clocks_per_packet: f64,
    /// Of those, capo's nodes.
    pub capo_node_clocks_per_packet: f64,
    /// Packets per call of capo's nodes (0 without policy).
    pub capo_vectors_per_call: f64,
    /// Smallest and largest of the runs.
    pub clocks_min: f64,
    /// Largest of the runs.
    pub clocks_max: f64,
    /// Packets per run.
    pub packets: u64,
    /// Runs.
    pub runs: usize,
    /// Growth of VPP's resident memory with the policy in force (capo rows).
    pub memory_bytes: Option<u64>,
    /// The workload.
    pub workload: &'static str,
}

/// The first packet from the wire of each connection in `window` (with its TCP
/// flags), and the traffic they come from.
fn first_packets(
    kind: Kind,
    window: usize,
    seed: u64,
) -> (Vec<(capo_policy::Packet, u8)>, crate::traffic::Traffic) {
    let t = generate_traffic(kind, &TrafficOptions::standard(1.1, seed));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    if let Some(w) = t.windows.get(window) {
        for conn in &w.connections {
            let Some(s) = conn.segments.iter().find(|s| s.from_wire) else {
                continue;
            };
            let p = s.probe.reference_packet();
            if seen.insert((p.src, p.dst, p.protocol, p.l4)) {
                out.push((p, s.probe.flags().unwrap_or(0)));
            }
        }
    }
    (out, t)
}

/// The packets of run `run`: each connection's next source port (the range's own
/// wrap), so every run's packets are new flows again (ICMP echo, without ports,
/// repeats its flow).
fn run_packets(
    packets: &[(capo_policy::Packet, u8)],
    run: usize,
) -> Vec<(capo_policy::Packet, u8)> {
    const FIRST: u32 = 32768;
    const COUNT: u32 = 28232;
    let shift = u32::try_from(run).unwrap_or(0) * 997;
    packets
        .iter()
        .map(|(p, flags)| {
            let mut p = *p;
            if let L4::Ports { src, dst } = p.l4 {
                let sport = FIRST + (u32::from(src).saturating_sub(FIRST) + shift) % COUNT;
                p.l4 = L4::Ports {
                    src: u16::try_from(sport).unwrap_or(src),
                    dst,
                };
            }
            (p, *flags)
        })
        .collect()
}

/// A frame VPP's ip4-input accepts: addressed to pg0, IPv4 header checksum set.
fn wire_frame(p: &capo_policy::Packet, tcp_flags: u8) -> Vec<u8> {
    let mut f = capo_classifier::build::frame(p, tcp_flags);
    f[0..6].copy_from_slice(&PG0_MAC);
    f[6..12].copy_from_slice(&SRC_MAC);
    if matches!(p.src, IpAddr::V4(_)) {
        let header = 14..34;
        f[24] = 0;
        f[25] = 0;
        let mut sum: u32 = f[header]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    f
}

/// Writes frames as a little-endian pcap (microsecond timestamps, Ethernet), one a
/// microsecond apart (VPP's pcap reader takes only its own byte order).
pub fn write_pcap(path: &Path, frames: &[&[u8]]) -> Result<(), VppBenchError> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::Endianness;
    let what = || format!("writing {}", path.display());
    let file = std::fs::File::create(path).map_err(io(what()))?;
    let header = PcapHeader {
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let pcap_err = |e: pcap_file::PcapError| VppBenchError::Io {
        what: what(),
        source: std::io::Error::other(e),
    };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(file), header).map_err(pcap_err)?;
    for (i, f) in frames.iter().enumerate() {
        let len = u32::try_from(f.len()).unwrap_or(u32::MAX);
        let at = Duration::from_micros(u64::try_from(i).unwrap_or(u64::MAX));
        w.write_packet(&PcapPacket::new(at, len, f))
            .map_err(pcap_err)?;
    }
    w.into_writer().flush().map_err(io(what()))
}

/// A node's line of `show runtime`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRuntime {
    /// The node.
    pub name: String,
    /// Its state (`active` for internal nodes that ran).
    pub state: String,
    /// Times it was called.
    pub calls: u64,
    /// Packets it handled.
    pub vectors: u64,
    /// Clocks per packet.
    pub clocks: f64,
}

/// Parses `show runtime`: every node line (name, state, calls, vectors, suspends,
/// clocks, vectors per call; the state may be quoted words).
pub fn parse_runtime(text: &str) -> Vec<NodeRuntime> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 7 {
            continue;
        }
        let n = words.len();
        let nums = &words[n - 5..];
        let (Ok(vectors), Ok(clocks)) = (nums[1].parse::<u64>(), nums[3].parse::<f64>()) else {
            continue;
        };
        let Ok(calls) = nums[0].parse::<u64>() else {
            continue;
        };
        out.push(NodeRuntime {
            name: words[0].to_string(),
            state: words[1..n - 5].join(" ").trim_matches('"').to_string(),
            calls,
            vectors,
            clocks,
        });
    }
    out
}

/// What capo's nodes decided, from `show errors`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapoVerdicts {
    /// Packets allowed.
    pub allowed: u64,
    /// Packets denied by policy.
    pub denied: u64,
}

/// Sums capo's nodes' `packets allowed` and `packets denied by policy` counters.
pub fn capo_verdicts(errors: &str) -> CapoVerdicts {
    let mut v = CapoVerdicts::default();
    for line in errors.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(count), Some(node)) = (words.first(), words.get(1)) else {
            continue;
        };
        let (Ok(n), true) = (count.parse::<u64>(), node.starts_with("capo-")) else {
            continue;
        };
        if line.contains("packets allowed") {
            v.allowed += n;
        } else if line.contains("packets denied by policy") {
            v.denied += n;
        }
    }
    v
}

/// Packets per call of capo's nodes (how full the frames they get are).
pub fn capo_vectors_per_call(nodes: &[NodeRuntime]) -> f64 {
    let (calls, vectors) = nodes
        .iter()
        .filter(|n| n.name.starts_with("capo-") && n.state == "active")
        .fold((0, 0), |(c, v), n| (c + n.calls, v + n.vectors));
    if calls == 0 {
        0.0
    } else {
        vectors as f64 / calls as f64
    }
}

/// (clocks per packet over the active nodes, of which capo's nodes) for `packets`.
pub fn clocks_per_packet(nodes: &[NodeRuntime], packets: u64) -> (f64, f64) {
    let packets = packets.max(1) as f64;
    let mut total = 0.0;
    let mut capo = 0.0;
    for n in nodes
        .iter()
        .filter(|n| n.state == "active" && n.vectors > 0)
    {
        let c = n.clocks * n.vectors as f64;
        total += c;
        if n.name.starts_with("capo-") {
            capo += c;
        }
    }
    (total / packets, capo / packets)
}

struct Vpp {
    root: PathBuf,
    run: PathBuf,
    child: Child,
}

impl Vpp {
    fn start(root: &Path, run: &Path) -> Result<Vpp, VppBenchError> {
        let rt = run.display();
        let plugins = root.join("vpp/lib/x86_64-linux-gnu/vpp_plugins");
        let conf = format!(
            "unix {{ nodaemon cli-listen {rt}/cli.sock log {rt}/vpp.log runtime-dir {rt} poll-sleep-usec 100 }}\n\
             api-segment {{ prefix capobench{pid} }}\n\
             socksvr {{ socket-name {rt}/api.sock }}\n\
             statseg {{ socket-name {rt}/stats.sock page-size 4k size 32m }}\n\
             memory {{ main-heap-size 2G main-heap-page-size 4k }}\n\
             buffers {{ buffers-per-numa 65536 page-size 4k }}\n\
             plugins {{ path {plugins}:{capo} plugin dpdk_plugin.so {{ disable }} }}\n\
             capo {{ socket {rt}/capo.sock }}\n",
            pid = std::process::id(),
            plugins = plugins.display(),
            capo = root.join("capo").display(),
        );
        std::fs::write(run.join("startup.conf"), conf).map_err(io("writing startup.conf"))?;
        let out = std::fs::File::create(run.join("vpp.out")).map_err(io("vpp.out"))?;
        let err = out.try_clone().map_err(io("vpp.out"))?;
        let child = Command::new(root.join("vpp/bin/vpp"))
            .arg("-c")
            .arg(run.join("startup.conf"))
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!(
                "starting {}",
                root.join("vpp/bin/vpp").display()
            )))?;
        let vpp = Vpp {
            root: root.to_path_buf(),
            run: run.to_path_buf(),
            child,
        };
        vpp.wait(Duration::from_secs(30), "VPP's CLI", || {
            vpp.ctl("show version").is_ok_and(|v| v.contains("vpp"))
        })?;
        Ok(vpp)
    }

    fn wait(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), VppBenchError> {
        let start = Instant::now();
        while !ready() {
            if start.elapsed() > limit {
                return Err(VppBenchError::Stuck(format!(
                    "timed out after {limit:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn ctl(&self, cmd: &str) -> Result<String, VppBenchError> {
        let out = Command::new(self.root.join("vpp/bin/vppctl"))
            .arg("-s")
            .arg(self.run.join("cli.sock"))
            .args(cmd.split_whitespace())
            .output()
            .map_err(io("vppctl"))?;
        if !out.status.success() {
            return Err(VppBenchError::Stuck(format!("vppctl {cmd}: failed")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"))
    }

    fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Sends the pcap's frames into pg0 once; VPP's runtime counters of that send, and
    /// what capo's nodes allowed and denied in it.
    fn send(
        &self,
        pcap: &Path,
        packets: usize,
        name: &str,
    ) -> Result<(Vec<NodeRuntime>, CapoVerdicts), VppBenchError> {
        self.ctl("clear runtime")?;
        self.ctl("clear errors")?;
        self.ctl(&format!(
            "packet-generator new name {name} limit {packets} node ethernet-input interface pg0 pcap {}",
            pcap.display()
        ))?;
        self.ctl(&format!("packet-generator enable-stream {name}"))?;
        self.wait(Duration::from_secs(60), "the packet generator", || {
            self.ctl("show packet-generator").is_ok_and(|s| {
                s.lines()
                    .any(|l| l.split_whitespace().take(2).eq([name, "No"]))
            })
        })?;
        let runtime = self.ctl("show runtime")?;
        let errors = self.ctl("show errors")?;
        self.ctl(&format!("packet-generator delete {name}"))?;
        Ok((parse_runtime(&runtime), capo_verdicts(&errors)))
    }
}

impl Drop for Vpp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mid = v.get(v.len() / 2).copied().unwrap_or(0.0);
    (
        mid,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// Runs the benchmark; `log` gets progress lines.
pub fn run(o: &VppBenchOptions, log: &mut dyn FnMut(&str)) -> Result<Vec<VppRow>, VppBenchError> {
    let run_dir = std::env::temp_dir().join(format!("capo-bench-vpp-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    let result = run_in(o, &run_dir, log);
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

fn run_in(
    o: &VppBenchOptions,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<VppRow>, VppBenchError> {
    log(&format!(
        "vpp: generating {} traffic, window {}",
        o.kind.name(),
        o.window
    ));
    let (packets, traffic) = first_packets(o.kind, o.window, o.seed);
    if packets.is_empty() {
        return Err(VppBenchError::NoTraffic(o.window));
    }
    let runs = o.runs.max(1);
    // Per run: the first packets (new flows), and the allowed ones again (flow hits).
    let mut pcaps = Vec::with_capacity(runs);
    for r in 0..runs {
        let these = run_packets(&packets, r);
        let first: Vec<Vec<u8>> = these.iter().map(|(p, f)| wire_frame(p, *f)).collect();
        let established: Vec<Vec<u8>> = these
            .iter()
            .filter(|(p, _)| trace(&traffic.state, p).verdict == Verdict::Allow)
            .map(|(p, f)| wire_frame(p, *f))
            .collect();
        let first_pcap = dir.join(format!("first{r}.pcap"));
        let established_pcap = dir.join(format!("established{r}.pcap"));
        write_pcap(
            &first_pcap,
            &first.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        )?;
        write_pcap(
            &established_pcap,
            &established.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        )?;
        pcaps.push((
            (first_pcap, first.len()),
            (established_pcap, established.len()),
        ));
    }
    log(&format!(
        "vpp: {} first packets per run ({} allowed), {runs} runs",
        pcaps[0].0 .1, pcaps[0].1 .1
    ));

    let vpp = Vpp::start(&o.vpp_root, dir)?;
    vpp.ctl("create packet-generator interface pg0")?;
    vpp.ctl("set interface mac address pg0 02:00:00:00:00:02")?;
    vpp.ctl("set interface ip address pg0 192.0.2.1/24")?;
    vpp.ctl("set interface state pg0 up")?;
    // One interface per destination endpoint, routed.
    let destinations: BTreeSet<IpAddr> = packets.iter().map(|(p, _)| p.dst).collect();
    let mut binds = Vec::new();
    let mut names = Vec::new();
    for (k, dst) in destinations.iter().enumerate() {
        let k = k + 1;
        let Some((_, wep)) = traffic.state.workload_owning(dst) else {
            continue;
        };
        let name = format!("pg{k}");
        vpp.ctl(&format!("create packet-generator interface {name}"))?;
        vpp.ctl(&format!("set interface unnumbered {name} use pg0"))?;
        vpp.ctl(&format!("set interface state {name} up"))?;
        vpp.ctl(&format!("ip route add {dst}/32 via {name}"))?;
        vpp.ctl(&format!(
            "set ip neighbor {name} {dst} 02:00:00:00:{:02x}:{:02x}",
            k >> 8,
            k & 0xff
        ))?;
        binds.push(format!("--bind={}={name}", wep.name));
        names.push(name);
    }
    log(&format!("vpp: {} endpoint interfaces", names.len()));

    let mut rows = Vec::new();
    // Each run sends its own first packets, then its allowed ones again.
    let mut measure = |engine: &'static str,
                       memory: Option<u64>,
                       log: &mut dyn FnMut(&str)|
     -> Result<(), VppBenchError> {
        for (phase, established) in [("first", false), ("established", true)] {
            let mut totals = Vec::new();
            let mut capo = Vec::new();
            let mut per_call = Vec::new();
            let mut packets = 0;
            for (r, (first, again)) in pcaps.iter().enumerate() {
                // The first packets make the flows the established phase hits.
                let (pcap, n) = if established { again } else { first };
                if established {
                    vpp.send(&first.0, first.1, &format!("w{r}"))?;
                }
                let (nodes, verdicts) = vpp.send(pcap, *n, &format!("{}{r}", &phase[..1]))?;
                // The measurement is of capo judging every packet as the reference
                // does (or, without policy, of capo not being on the path).
                let want = match (engine, established) {
                    ("forward", _) => CapoVerdicts::default(),
                    (_, false) => CapoVerdicts {
                        allowed: again.1 as u64,
                        denied: (first.1 - again.1) as u64,
                    },
                    (_, true) => CapoVerdicts {
                        allowed: again.1 as u64,
                        denied: 0,
                    },
                };
                if verdicts != want {
                    return Err(VppBenchError::Stuck(format!(
                        "{engine} {phase} run {r}: capo's nodes counted {verdicts:?}, the reference {want:?}"
                    )));
                }
                let (t, c) = clocks_per_packet(&nodes, *n as u64);
                totals.push(t);
                capo.push(c);
                per_call.push(capo_vectors_per_call(&nodes));
                packets = *n as u64;
            }
            let (mid, lo, hi) = median(totals);
            let (capo_mid, _, _) = median(capo);
            let (per_call, _, _) = median(per_call);
            log(&format!(
                "vpp: {engine} {phase}: {mid:.0} clocks/packet (capo's nodes {capo_mid:.0}), {lo:.0}..{hi:.0} over {runs} runs"
            ));
            rows.push(VppRow {
                engine,
                phase,
                clocks_per_packet: mid,
                capo_node_clocks_per_packet: capo_mid,
                capo_vectors_per_call: per_call,
                clocks_min: lo,
                clocks_max: hi,
                packets,
                runs,
                memory_bytes: memory,
                workload: o.kind.name(),
            });
        }
        Ok(())
    };

    // Without policy: nothing is bound, capo's nodes are not on the path.
    measure("forward", None, log)?;

    // The policy, as production commits it.
    let before = vpp.rss_bytes();
    let felix = dir.join("felix.sock");
    let agent_log = std::fs::File::create(dir.join("agent.log")).map_err(io("agent.log"))?;
    let mut agent = Command::new(&o.agent)
        .arg("--felix-socket")
        .arg(&felix)
        .arg(format!(
            "--dataplane=vpp:{}",
            dir.join("capo.sock").display()
        ))
        .arg("--api-socket")
        .arg(dir.join("agent.sock"))
        .args(&binds)
        .stdout(Stdio::null())
        .stderr(agent_log)
        .spawn()
        .map_err(io(format!("starting {}", o.agent.display())))?;
    let policy = (|| {
        let start = Instant::now();
        let mut conn = loop {
            match std::os::unix::net::UnixStream::connect(&felix) {
                Ok(c) => break c,
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(io("connecting to the agent's Felix socket")(e)),
            }
        };
        let frames =
            capo_felix::frame::encode_frames(&capo_felix::encode::snapshot(&traffic.state));
        conn.write_all(&frames)
            .map_err(io("writing the Felix stream"))?;
        log("vpp: policy sent to capo-agent; waiting for the plugin to police every endpoint");
        vpp.wait(
            Duration::from_secs(300),
            "capo to police every endpoint",
            || {
                vpp.ctl("show capo generations").is_ok_and(|g| {
                    names
                        .iter()
                        .all(|n| g.contains(&format!(" on {n} sw_if_index=")))
                })
            },
        )?;
        Ok(conn)
    })();
    let result = policy.and_then(|_conn| {
        let memory = vpp.rss_bytes().saturating_sub(before);
        measure("capo", Some(memory), log)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    result?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_lines_with_quoted_states_and_packet_clocks() {
        let text = "\
Time 4.1, 10.000000 sec internal node vector rate 0.00 loops/sec 4146.38
             Name                 State         Calls          Vectors        Suspends      Packet-Clocks   Vectors/Call
acl-plugin-fa-cleaner-process \"event wait\"               0               0               1          2.39e4            0.00
capo-ip4-out                     active               14            3528               0          1.50e2          252.00
ip4-lookup                       active               14            3528               0          4.00e1          252.00
pg-input                        polling               20            3528               0          1.00e3            0.00
";
        let nodes = parse_runtime(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].state, "event wait");
        let (total, capo) = clocks_per_packet(&nodes, 3528);
        assert!((total - 190.0).abs() < 1e-9, "{total}");
        assert!((capo - 150.0).abs() < 1e-9, "{capo}");
        assert!((capo_vectors_per_call(&nodes) - 252.0).abs() < 1e-9);
    }

    #[test]
    fn frames_carry_a_valid_ipv4_checksum() {
        let p = capo_policy::Packet {
            src: "10.0.61.39".parse().unwrap(),
            dst: "10.0.0.75".parse().unwrap(),
            protocol: capo_policy::Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: 80,
            },
        };
        let f = wire_frame(&p, 0x02);
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff);
        assert_eq!(&f[0..6], &PG0_MAC);
    }
}
