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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capo_policy::{trace, Verdict, L4};
use serde::Serialize;

use crate::children::{OwnedChild, ScratchDir};
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
    /// Passes over the allowed packets in each run of the established phase (1: once,
    /// right after their first packets).
    pub repeat_established: usize,
    /// The engines to measure (all of [`ENGINES`] when empty).
    pub engines: Vec<String>,
}

/// Every engine `capo-bench vpp` measures, in the order it measures them.
pub const ENGINES: [&str; 5] = ["forward", "acl", "capo", "capo-nic", "npol"];

impl VppBenchOptions {
    fn wants(&self, engine: &str) -> bool {
        self.engines.is_empty() || self.engines.iter().any(|e| e == engine)
    }
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
    /// Of those, the policy engine's nodes (capo's, or the ACL plugin's).
    pub policy_node_clocks_per_packet: f64,
    /// Packets per call of the policy engine's nodes (0 without policy).
    pub policy_vectors_per_call: f64,
    /// Smallest and largest of the runs.
    pub clocks_min: f64,
    /// Largest of the runs.
    pub clocks_max: f64,
    /// Packets per run.
    pub packets: u64,
    /// Runs.
    pub runs: usize,
    /// Passes over the packets per run (the established phase's `--repeat-established`;
    /// 1 otherwise).
    pub repeat: usize,
    /// Growth of VPP's resident memory with the policy in force (policy rows).
    pub memory_bytes: Option<u64>,
    /// Growth of VPP's main heap in use (`show memory main-heap`) with the policy in
    /// force: what the engine holds there (capo's Rust allocations included: VPP
    /// takes over malloc), as resident growth misses memory VPP had already touched
    /// and freed. Memory outside the heap (the ACL plugin's hash tables and counters)
    /// shows only in `memory_bytes`.
    pub heap_bytes: Option<u64>,
    /// The workload.
    pub workload: &'static str,
    /// npol rows: capo's classifier on the same tuples, inside the same VPP
    /// (`capo bench npol`), TSC clocks per tuple.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capo_classify_clocks_per_packet: Option<f64>,
    /// npol rows: tuples where npol's verdict differs from Calico's (its semantics:
    /// no tiers, `pass` to the profiles; capo's differ on none, or the run fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdicts_differing_from_calico: Option<u64>,
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
    node_verdicts(
        errors,
        "capo-",
        &["packets allowed"],
        &["packets denied by policy"],
    )
}

/// The allowed and denied packet counts of `show errors` lines whose node starts
/// with `node_prefix`, by the reasons that mean each.
fn node_verdicts(
    errors: &str,
    node_prefix: &str,
    allowed: &[&str],
    denied: &[&str],
) -> CapoVerdicts {
    let mut v = CapoVerdicts::default();
    for line in errors.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(count), Some(node)) = (words.first(), words.get(1)) else {
            continue;
        };
        let (Ok(n), true) = (count.parse::<u64>(), node.starts_with(node_prefix)) else {
            continue;
        };
        if allowed.iter().any(|r| line.contains(r)) {
            v.allowed += n;
        } else if denied.iter().any(|r| line.contains(r)) {
            v.denied += n;
        }
    }
    v
}

/// Whether a graph node is a policy engine's: capo's or the ACL plugin's. The
/// emulated NIC of `capo test flow-emulation` stands for hardware: not counted.
fn is_policy_node(name: &str) -> bool {
    (name.starts_with("capo-") && name != FLOW_EMULATOR) || name.starts_with("acl-plugin-")
}

/// The node of `capo test flow-emulation`.
const FLOW_EMULATOR: &str = "capo-flow-emulator";

/// NIC-share entries for the `capo-nic` engine (`--nic vpp-flow:N`).
const NIC_SHARE_CAPACITY: u32 = 4096;

/// The policy a capo-agent is fed, and the VPP interfaces it must police.
struct Policed<'a> {
    state: &'a capo_policy::State,
    names: &'a [String],
}

/// Starts capo-agent on the plugin in `dir` with its own Felix socket (`tag` names
/// its files), sends it the policy as Felix would and waits until the plugin polices
/// every interface. Returns the agent and the Felix connection (kept open: closing
/// it is a Felix restart).
fn start_agent(
    o: &VppBenchOptions,
    vpp: &Vpp,
    dir: &Path,
    (tag, args): (&str, &[String]),
    policy: &Policed<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(OwnedChild, std::os::unix::net::UnixStream), VppBenchError> {
    let Policed { state, names } = *policy;
    let felix = dir.join(format!("felix-{tag}.sock"));
    let log_name = format!("agent-{tag}.log");
    let agent_log = std::fs::File::create(dir.join(&log_name)).map_err(io(log_name))?;
    let agent = OwnedChild::spawn(
        Command::new(&o.agent)
            .arg("--felix-socket")
            .arg(&felix)
            .arg(format!(
                "--dataplane=vpp:{}",
                dir.join("capo.sock").display()
            ))
            .arg("--api-socket")
            .arg(dir.join(format!("agent-{tag}.sock")))
            .args(args)
            .stdout(Stdio::null())
            .stderr(agent_log),
    )
    .map_err(io(format!("starting {}", o.agent.display())))?;
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
    let frames = capo_felix::frame::encode_frames(&capo_felix::encode::snapshot(state));
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
    Ok((agent, conn))
}

/// Packets per call of the policy nodes (how full the frames they get are).
pub fn policy_vectors_per_call(nodes: &[NodeRuntime]) -> f64 {
    let (calls, vectors) = nodes
        .iter()
        .filter(|n| is_policy_node(&n.name) && n.state == "active")
        .fold((0, 0), |(c, v), n| (c + n.calls, v + n.vectors));
    if calls == 0 {
        0.0
    } else {
        vectors as f64 / calls as f64
    }
}

/// Each active node's clocks per sent packet, the costliest first (`name clocks, ...`).
pub fn node_breakdown(nodes: &[NodeRuntime], packets: u64) -> String {
    let packets = packets.max(1) as f64;
    let mut per: Vec<(&str, f64)> = nodes
        .iter()
        .filter(|n| n.state == "active" && n.vectors > 0)
        .map(|n| (n.name.as_str(), n.clocks * n.vectors as f64 / packets))
        .collect();
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    // The per-interface output and tx nodes (one pair per endpoint) summed.
    let (interfaces, mut named): (Vec<_>, Vec<_>) = per
        .into_iter()
        .partition(|(name, _)| is_per_interface_node(name));
    if !interfaces.is_empty() {
        named.push(("pgN-output+pgN-tx", interfaces.iter().map(|(_, c)| c).sum()));
    }
    named
        .iter()
        .map(|(name, c)| format!("{name} {c:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A packet-generator interface's own output or tx node (`pg12-output`, `pg3-tx`).
fn is_per_interface_node(name: &str) -> bool {
    name.strip_prefix("pg")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(n, node)| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && matches!(node, "output" | "tx")
        })
}

/// (clocks per packet over the active nodes, of which the policy nodes) for `packets`.
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
        if is_policy_node(&n.name) {
            capo += c;
        }
    }
    (total / packets, capo / packets)
}

/// An endpoint's routed address, its key and the `pgN` standing for it.
type Route = (IpAddr, capo_policy::WorkloadKey, String);

/// A VPP with pg0 and one routed interface per destination endpoint.
struct Rig {
    vpp: Vpp,
    routes: Vec<Route>,
    names: Vec<String>,
    /// The agent's `--bind` arguments for the interfaces.
    binds: Vec<String>,
}

struct Vpp {
    root: PathBuf,
    run: PathBuf,
    /// Ended when the rig is dropped.
    child: OwnedChild,
}

impl Vpp {
    fn start(root: &Path, run: &Path) -> Result<Vpp, VppBenchError> {
        let rt = run.display();
        let plugins = root.join("vpp/lib/x86_64-linux-gnu/vpp_plugins");
        let conf = format!(
            "unix {{ nodaemon cli-listen {rt}/cli.sock log {rt}/vpp.log runtime-dir {rt} poll-sleep-usec 100 }}\n\
             api-segment {{ prefix capobench{pid} }}\n\
             socksvr {{ socket-name {rt}/api.sock }}\n\
             statseg {{ socket-name {rt}/stats.sock page-size 4k size 1g }}\n\
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
        let child = OwnedChild::spawn(
            Command::new(root.join("vpp/bin/vpp"))
                .arg("-c")
                .arg(run.join("startup.conf"))
                .stdout(out)
                .stderr(err),
        )
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

    /// Bytes in use in VPP's main heap.
    fn heap_used(&self) -> Result<u64, VppBenchError> {
        let out = self.ctl("show memory main-heap")?;
        heap_used_bytes(&out).ok_or_else(|| {
            VppBenchError::Stuck(format!("show memory main-heap: no `used:` in {out}"))
        })
    }

    /// What capo's plugin said about VPP's main heap's pages at start.
    fn heap_advice(&self) -> String {
        std::fs::read_to_string(self.run.join("vpp.out"))
            .ok()
            .and_then(|out| {
                out.lines()
                    .find(|l| l.starts_with("capo: ") && l.contains("main heap"))
                    .map(|l| l.trim_start_matches("capo: ").to_string())
            })
            .unwrap_or_else(|| "capo's plugin said nothing about the main heap".to_string())
    }

    fn rss_bytes(&self) -> u64 {
        crate::measure::resident_bytes_of(&self.child.id().to_string())
    }

    /// Sends the pcap's frames into pg0 once; VPP's runtime counters and error counters
    /// (`show errors`) of that send.
    fn send(
        &self,
        pcap: &Path,
        packets: usize,
        name: &str,
    ) -> Result<(Vec<NodeRuntime>, String), VppBenchError> {
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
        Ok((parse_runtime(&runtime), errors))
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
    let scratch = ScratchDir::create(run_dir.clone())
        .map_err(io(format!("creating {}", run_dir.display())))?;
    run_in(o, scratch.path(), log)
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
    let repeat = o.repeat_established.max(1);
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

    // A fresh VPP per engine pair, so each memory figure is its own: pg0 in, one
    // routed pgN per destination endpoint.
    let rig = |name: &str, log: &mut dyn FnMut(&str)| -> Result<Rig, VppBenchError> {
        let run = dir.join(name);
        std::fs::create_dir_all(&run).map_err(io(format!("creating {}", run.display())))?;
        let vpp = Vpp::start(&o.vpp_root, &run)?;
        // capo's plugin is loaded in every VPP of the run, so the peers' tables in the
        // main heap are on the pages it chose for capo's.
        log(&format!("vpp: {name}: {}", vpp.heap_advice()));
        vpp.ctl("create packet-generator interface pg0")?;
        vpp.ctl("set interface mac address pg0 02:00:00:00:00:02")?;
        vpp.ctl("set interface ip address pg0 192.0.2.1/24")?;
        vpp.ctl("set interface state pg0 up")?;
        // One interface per destination endpoint, routed.
        let destinations: BTreeSet<IpAddr> = packets.iter().map(|(p, _)| p.dst).collect();
        let mut binds = Vec::new();
        let mut names = Vec::new();
        let mut routes = Vec::new();
        for (k, dst) in destinations.iter().enumerate() {
            let k = k + 1;
            let Some((key, wep)) = traffic.state.workload_owning(dst) else {
                continue;
            };
            routes.push((*dst, key.clone(), format!("pg{k}")));
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
        Ok(Rig {
            vpp,
            routes,
            names,
            binds,
        })
    };

    let mut rows = Vec::new();
    // Each run sends its own first packets, then its allowed ones again.
    let mut measure = |vpp: &Vpp,
                       engine: &'static str,
                       memory: Option<(u64, u64)>,
                       log: &mut dyn FnMut(&str)|
     -> Result<(), VppBenchError> {
        for (phase, established) in [("first", false), ("established", true)] {
            let mut totals = Vec::new();
            let mut capo = Vec::new();
            let mut per_call = Vec::new();
            let mut packets = 0;
            // The established phase may send its packets several times over in one
            // stream: every pass hits the same flows, the caches warm as in a busy
            // dataplane (the first phase cannot repeat: its packets would be hits).
            let rep = if established { repeat } else { 1 };
            for (r, (first, again)) in pcaps.iter().enumerate() {
                // The first packets make the flows the established phase hits.
                let (pcap, n) = if established { again } else { first };
                if established {
                    vpp.send(&first.0, first.1, &format!("w{r}"))?;
                }
                let sent = *n * rep;
                let (nodes, errors) = vpp.send(pcap, sent, &format!("{}{r}", &phase[..1]))?;
                let verdicts = match engine {
                    "acl" => acl_verdicts(&errors),
                    _ => capo_verdicts(&errors),
                };
                // The measurement is of the engine judging every packet as the
                // reference does (or, without policy, of no engine on the path).
                let want = match (engine, established) {
                    ("forward", _) => CapoVerdicts::default(),
                    (_, false) => CapoVerdicts {
                        allowed: again.1 as u64,
                        denied: (first.1 - again.1) as u64,
                    },
                    (_, true) => CapoVerdicts {
                        allowed: sent as u64,
                        denied: 0,
                    },
                };
                if verdicts != want {
                    return Err(VppBenchError::Stuck(format!(
                        "{engine} {phase} run {r}: the policy nodes counted {verdicts:?}, the reference {want:?}"
                    )));
                }
                let (t, c) = clocks_per_packet(&nodes, sent as u64);
                if r + 1 == pcaps.len() {
                    log(&format!(
                        "vpp: {engine} {phase} run {r} by node: {}",
                        node_breakdown(&nodes, sent as u64)
                    ));
                }
                totals.push(t);
                capo.push(c);
                per_call.push(policy_vectors_per_call(&nodes));
                packets = sent as u64;
            }
            let (mid, lo, hi) = median(totals);
            let (capo_mid, _, _) = median(capo);
            let (per_call, _, _) = median(per_call);
            log(&format!(
                "vpp: {engine} {phase}: {mid:.0} clocks/packet (policy nodes {capo_mid:.0}), {lo:.0}..{hi:.0} over {runs} runs{}",
                if rep > 1 {
                    format!(", {rep} passes over the allowed packets per run")
                } else {
                    String::new()
                }
            ));
            rows.push(VppRow {
                engine,
                phase,
                clocks_per_packet: mid,
                policy_node_clocks_per_packet: capo_mid,
                policy_vectors_per_call: per_call,
                clocks_min: lo,
                clocks_max: hi,
                packets,
                runs,
                repeat: rep,
                memory_bytes: memory.map(|m| m.0),
                heap_bytes: memory.map(|m| m.1),
                workload: o.kind.name(),
                capo_classify_clocks_per_packet: None,
                verdicts_differing_from_calico: None,
            });
        }
        Ok(())
    };

    // VPP 1: without policy (nothing bound, no policy node on the path), then VPP's
    // ACL plugin with the same policy expanded into ACLs.
    if o.wants("forward") || o.wants("acl") {
        let Rig { vpp, routes, .. } = rig("vpp-acl", log)?;
        if o.wants("forward") {
            measure(&vpp, "forward", None, log)?;
        }
        if o.wants("acl") {
            let mut api =
                crate::vppapi::ApiClient::connect(&dir.join("vpp-acl/api.sock"), "capo-bench")
                    .map_err(|e| VppBenchError::Stuck(e.to_string()))?;
            let before = (vpp.rss_bytes(), vpp.heap_used()?);
            acl_peer(&vpp, &mut api, &traffic.state, &routes, log)?;
            let memory = (
                vpp.rss_bytes().saturating_sub(before.0),
                vpp.heap_used()?.saturating_sub(before.1),
            );
            measure(&vpp, "acl", Some(memory), log)?;
        }
    }
    if !(o.wants("capo") || o.wants("capo-nic") || o.wants("npol")) {
        return Ok(rows);
    }

    // VPP 2: capo, then npol beside it.
    let Rig {
        vpp,
        routes,
        names,
        binds,
    } = rig("vpp-capo", log)?;
    let dir = &dir.join("vpp-capo");

    // The policy, as production commits it.
    let policed = Policed {
        state: &traffic.state,
        names: &names,
    };
    // npol's row times capo's classifier beside npol's, so capo's policy goes in
    // for npol too (the plugin keeps it after the agent leaves).
    if o.wants("capo") || !o.wants("capo-nic") {
        let before = (vpp.rss_bytes(), vpp.heap_used()?);
        let (agent, conn) = start_agent(o, &vpp, dir, ("sw", &binds), &policed, log)?;
        let memory = (
            vpp.rss_bytes().saturating_sub(before.0),
            vpp.heap_used()?.saturating_sub(before.1),
        );
        if o.wants("capo") {
            measure(&vpp, "capo", Some(memory), log)?;
        }
        drop((agent, conn));
    }
    if o.wants("capo-nic") {
        capo_nic(o, &vpp, dir, &binds, &policed, &mut measure, log)?;
    }

    // npol on the same VPP, same interfaces, same first packets (run 0's).
    if o.wants("npol") {
        let tuples = run_packets(&packets, 0);
        let npol = npol_peer(&vpp, o, dir, &traffic.state, &tuples, &routes, log)?;
        rows.push(npol);
    }
    Ok(rows)
}

/// Measures one engine's phases on a VPP (the closure `run_in` builds).
type Measure<'a> = dyn FnMut(&Vpp, &'static str, Option<(u64, u64)>, &mut dyn FnMut(&str)) -> Result<(), VppBenchError>
    + 'a;

/// capo with its NIC share through VPP's flow layer (the `capo-nic` engine).
fn capo_nic(
    o: &VppBenchOptions,
    vpp: &Vpp,
    dir: &Path,
    binds: &[String],
    policed: &Policed<'_>,
    measure: &mut Measure<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(), VppBenchError> {
    // capo with its NIC share through VPP's flow layer: pg has no flow support, so
    // pg0 (where every packet enters) runs under `capo test flow-emulation`, which
    // marks and drops as a NIC would before VPP sees the frame. Its node stands for
    // hardware and is not counted as policy.
    vpp.ctl("capo test flow-emulation pg0")?;
    let mut args = binds.to_vec();
    args.extend([
        format!("--nic=vpp-flow:{NIC_SHARE_CAPACITY}"),
        "--vpp-uplink=pg0".into(),
    ]);
    let (agent, conn) = start_agent(o, vpp, dir, ("nic", &args), policed, log)?;
    vpp.wait(Duration::from_secs(120), "the NIC share on pg0", || {
        vpp.ctl("show capo offload").is_ok_and(|t| {
            t.lines()
                .any(|l| l.contains("uplink pg0 ") && l.contains("share rules installed"))
        })
    })?;
    // The share is planned from sampled traffic: train it on the next window's first
    // packets (other connections of the same conversations), never on the measured
    // window's.
    let (train, _) = first_packets(o.kind, o.window + 1, o.seed);
    if train.is_empty() {
        log("vpp: no training window: the NIC share is planned without samples");
    } else {
        // The agent's first read of the samples turns the plugin's sampling on.
        vpp.wait(Duration::from_secs(30), "capo's flow sampling", || {
            vpp.ctl("show capo flows")
                .is_ok_and(|t| t.contains("flow sampling for the NIC share: on"))
        })?;
        let frames: Vec<Vec<u8>> = train.iter().map(|(p, f)| wire_frame(p, *f)).collect();
        let pcap = dir.join("train.pcap");
        write_pcap(&pcap, &frames.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        vpp.send(&pcap, frames.len(), "train")?;
        let agent_log = dir.join("agent-nic.log");
        vpp.wait(
            Duration::from_secs(60),
            "a NIC share planned from the training window's samples",
            || {
                std::fs::read_to_string(&agent_log).is_ok_and(|t| {
                    t.lines().any(|l| {
                        l.contains("NIC share planned")
                            && l.split("sampled_flows=")
                                .nth(1)
                                .and_then(|r| r.split_whitespace().next())
                                .and_then(|n| n.parse::<u64>().ok())
                                .is_some_and(|n| n > 0)
                    })
                })
            },
        )?;
        // The plan is logged before its share is sent.
        std::thread::sleep(Duration::from_secs(2));
        log(&format!(
            "vpp: trained the NIC share on window {} ({} first packets)",
            o.window + 1,
            frames.len()
        ));
    }
    let offload = vpp.ctl("show capo offload")?;
    log(&format!(
        "vpp: NIC share: {}",
        offload
            .lines()
            .filter(|l| l.contains("NIC share:")
                || l.contains("uplink pg0 ")
                || l.contains("emulated NIC"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ")
    ));
    measure(vpp, "capo-nic", None, log)?;
    let totals = vpp.ctl("show capo counters")?;
    log(&format!(
        "vpp: capo-nic totals: {}",
        totals
            .lines()
            .find(|l| l.contains("NIC verdicts accepted"))
            .unwrap_or("none")
            .trim()
    ));
    drop((agent, conn));

    Ok(())
}

/// What the ACL plugin's output nodes allowed (sessions added by `permit+reflect`,
/// packets of existing sessions) and denied, from `show errors`.
pub fn acl_verdicts(errors: &str) -> CapoVerdicts {
    node_verdicts(
        errors,
        "acl-plugin-out-",
        &["new sessions added", "existing session packets"],
        &["ACL deny packets"],
    )
}

/// Loads the policy into VPP's ACL plugin: per endpoint interface, its ingress
/// program as the output ACL and its egress program as the input ACL, each flattened
/// into one first-match list ([`crate::expand::flatten`]); allow is `permit+reflect`
/// (a session, as capo's flow table).
fn acl_peer(
    vpp: &Vpp,
    api: &mut crate::vppapi::ApiClient,
    state: &capo_policy::State,
    routes: &[Route],
    log: &mut dyn FnMut(&str),
) -> Result<(), VppBenchError> {
    let index = sw_if_indexes(&vpp.ctl("show interface")?);
    let t = Instant::now();
    let mut entries = 0usize;
    let mut done = Vec::new();
    for (_, key, name) in routes {
        let Some(sw) = index.get(name) else {
            return Err(VppBenchError::Stuck(format!("VPP has no interface {name}")));
        };
        let mut acls = [0u32; 2];
        for (slot, dir) in [
            capo_policy::Direction::Egress,
            capo_policy::Direction::Ingress,
        ]
        .into_iter()
        .enumerate()
        {
            let segs = crate::expand::segments(state, key, dir)
                .map_err(|e| VppBenchError::Stuck(format!("ACL plugin: {key:?} {dir:?}: {e}")))?;
            let aces = crate::expand::flatten(&segs);
            entries += aces.len();
            acls[slot] = crate::acl_plugin::add_acl(api, &aces)
                .map_err(|e| VppBenchError::Stuck(format!("ACL plugin: {e}")))?;
        }
        crate::acl_plugin::set_interface(api, *sw, acls[0], acls[1])
            .map_err(|e| VppBenchError::Stuck(format!("ACL plugin: {e}")))?;
        done.push(*sw);
    }
    log(&format!(
        "acl: {} interfaces, {entries} ACL rules (both directions), loaded in {:.1} s",
        done.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The `used:` figure of `show memory main-heap` (`used: 188.27M,`) in bytes.
fn heap_used_bytes(show: &str) -> Option<u64> {
    let word = show
        .split("used:")
        .nth(1)?
        .split([',', '\n'])
        .next()?
        .trim();
    let (num, unit) = word.split_at(
        word.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(word.len()),
    );
    let scale: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1024.0,
        "m" | "M" => 1024.0 * 1024.0,
        "g" | "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * scale) as u64)
}

/// Each name's `sw_if_index`, from `show interface`.
fn sw_if_indexes(show: &str) -> std::collections::HashMap<String, u32> {
    show.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// npol, loaded with the same policy through its API, times `npol_match_func` on the
/// first packets' 5-tuples inside VPP (`capo bench npol`, which also times capo's
/// classifier on them); the verdicts are checked: npol's against the linear model of
/// its semantics, capo's against the reference.
fn npol_peer(
    vpp: &Vpp,
    o: &VppBenchOptions,
    dir: &Path,
    state: &capo_policy::State,
    tuples: &[(capo_policy::Packet, u8)],
    routes: &[Route],
    log: &mut dyn FnMut(&str),
) -> Result<VppRow, VppBenchError> {
    let index = sw_if_indexes(&vpp.ctl("show interface")?);
    let mut by_dst = std::collections::HashMap::new();
    let mut keyed = Vec::new();
    for (dst, key, name) in routes {
        let Some(sw) = index.get(name) else {
            return Err(VppBenchError::Stuck(format!("VPP has no interface {name}")));
        };
        by_dst.insert(*dst, *sw);
        keyed.push((key.clone(), *sw));
    }
    let mut client = crate::vppapi::ApiClient::connect(&dir.join("api.sock"), "capo-bench-npol")
        .map_err(|e| VppBenchError::Stuck(e.to_string()))?;
    let before = (vpp.rss_bytes(), vpp.heap_used()?);
    let t = Instant::now();
    let loaded = crate::npol::load(&mut client, state, &keyed, log)
        .map_err(|e| VppBenchError::Stuck(format!("loading npol: {e}")))?;
    let memory = (
        vpp.rss_bytes().saturating_sub(before.0),
        vpp.heap_used()?.saturating_sub(before.1),
    );
    log(&format!(
        "npol: loaded in {:.1} s, VPP's main heap grew {} KiB",
        t.elapsed().as_secs_f64(),
        memory.1 / 1024
    ));
    if loaded.interfaces != keyed.len() {
        return Err(VppBenchError::Stuck(format!(
            "npol: {} of {} interfaces configured",
            loaded.interfaces,
            keyed.len()
        )));
    }
    // The tuples: each first packet on its endpoint's interface, VPP tx (ingress).
    let mut text = String::new();
    let mut judged = Vec::new();
    for (p, _) in tuples {
        let Some(sw) = by_dst.get(&p.dst) else {
            continue;
        };
        let (sport, dport) = match p.l4 {
            L4::Ports { src, dst } => (src, dst),
            L4::Icmp { icmp_type, code } => (u16::from(icmp_type), u16::from(code)),
            L4::None => (0, 0),
        };
        text.push_str(&format!(
            "{sw} tx {} {} {sport} {} {dport}\n",
            p.protocol.0, p.src, p.dst
        ));
        judged.push(*p);
    }
    let tuple_file = dir.join("tuples.txt");
    let verdict_file = dir.join("verdicts.txt");
    std::fs::write(&tuple_file, text).map_err(io("writing the tuple file"))?;
    let out = vpp.ctl(&format!(
        "capo bench npol {} repeat {} verdicts {}",
        tuple_file.display(),
        o.runs.max(1),
        verdict_file.display()
    ))?;
    let report = parse_npol_bench(&out)
        .ok_or_else(|| VppBenchError::Stuck(format!("capo bench npol said: {out}")))?;
    let verdicts = std::fs::read_to_string(&verdict_file).map_err(io("reading the verdicts"))?;
    let linear = crate::linear::Linear::build(state);
    let (mut npol_vs_model, mut capo_vs_reference, mut npol_vs_calico) = (0u64, 0u64, 0u64);
    let word = |v: Verdict| if v == Verdict::Allow { "allow" } else { "deny" };
    let mut lines = verdicts.lines();
    for p in &judged {
        let Some(line) = lines.next() else {
            return Err(VppBenchError::Stuck(
                "capo bench npol wrote too few verdicts".into(),
            ));
        };
        let (npol, capo) = line.split_once(' ').unwrap_or((line, ""));
        let key = state.workload_owning(&p.dst).map(|(k, _)| k.clone());
        let model = linear.evaluate(
            key.as_ref().and_then(|k| linear.interface(k)),
            capo_policy::Direction::Ingress,
            p,
        );
        let calico = trace(state, p).verdict;
        npol_vs_model += u64::from(npol != word(model));
        capo_vs_reference += u64::from(capo != word(calico));
        npol_vs_calico += u64::from(npol != word(calico));
    }
    if npol_vs_model != 0 || capo_vs_reference != 0 {
        return Err(VppBenchError::Stuck(format!(
            "capo bench npol: npol differs from the model of its semantics on {npol_vs_model} tuples, capo from the reference on {capo_vs_reference}"
        )));
    }
    log(&format!(
        "vpp: npol_match_func {:.0} clocks/tuple ({:.0}..{:.0}), capo's classifier {:.0}, on {} tuples; npol's verdict differs from Calico's on {npol_vs_calico}",
        report.0[0], report.0[1], report.0[2], report.1, judged.len()
    ));
    Ok(VppRow {
        engine: "npol",
        phase: "first",
        clocks_per_packet: report.0[0],
        policy_node_clocks_per_packet: report.0[0],
        policy_vectors_per_call: 0.0,
        clocks_min: report.0[1],
        clocks_max: report.0[2],
        packets: judged.len() as u64,
        runs: o.runs.max(1),
        repeat: 1,
        memory_bytes: Some(memory.0),
        heap_bytes: Some(memory.1),
        workload: o.kind.name(),
        capo_classify_clocks_per_packet: Some(report.1),
        verdicts_differing_from_calico: Some(npol_vs_calico),
    })
}

/// From `capo bench npol`'s output: npol's clocks per tuple (median, min, max) and
/// capo's (median).
fn parse_npol_bench(out: &str) -> Option<([f64; 3], f64)> {
    let field = |engine: &str, name: &str| -> Option<f64> {
        let line = out.lines().find(|l| l.starts_with(engine))?;
        let mut w = line.split_whitespace();
        w.find(|x| *x == name)?;
        w.next()?.parse().ok()
    };
    let npol = "npol_match_func:";
    Some((
        [
            field(npol, "clocks-per-tuple")?,
            field(npol, "min")?,
            field(npol, "max")?,
        ],
        field("capo-classify:", "clocks-per-tuple")?,
    ))
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
        assert!((policy_vectors_per_call(&nodes) - 252.0).abs() < 1e-9);
        assert_eq!(
            node_breakdown(&nodes, 3528),
            "capo-ip4-out 150, ip4-lookup 40"
        );
        let per_interface = parse_runtime(
            "pg12-output active 2 100 0 3.00e1 50.00\npg12-tx active 2 100 0 1.00e1 50.00\n\
             pg3-tx active 1 50 0 2.00e1 50.00\npg-input polling 2 150 0 5.00e1 0.00\n\
             ip4-rewrite active 3 150 0 4.00e1 50.00\n",
        );
        assert_eq!(
            node_breakdown(&per_interface, 150),
            "ip4-rewrite 40, pgN-output+pgN-tx 33"
        );
    }

    #[test]
    fn npol_bench_output_and_interface_indexes_parse() {
        let out = "npol_match_func: tuples 7 passes 5 clocks-per-tuple 1234.5 min 1200.0 max 1300.5 allowed 3 denied 4\n\
                   capo-classify: tuples 7 passes 5 clocks-per-tuple 88.0 min 80.0 max 90.0 allowed 3 denied 4\n";
        assert_eq!(
            parse_npol_bench(out),
            Some(([1234.5, 1200.0, 1300.5], 88.0))
        );
        assert_eq!(parse_npol_bench("capo: not started"), None);
        let show = "              Name               Idx    State  MTU (L3/IP4/IP6/MPLS)\n\
                    local0                            0     down          0/0/0/0\n\
                    pg1                               3      up          9000/0/0/0\n";
        let heap = "    total: 1.00G, used: 32.77M, free: 991.23M, trimmable: 991.15M\n";
        assert_eq!(
            heap_used_bytes(heap),
            Some((32.77 * 1024.0 * 1024.0) as u64)
        );
        assert_eq!(heap_used_bytes("used: 12k,"), Some(12 * 1024));
        assert_eq!(heap_used_bytes("nothing"), None);
        let idx = sw_if_indexes(show);
        assert_eq!(idx.get("pg1"), Some(&3));
        assert_eq!(idx.get("local0"), Some(&0));
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
