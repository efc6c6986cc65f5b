//! `capo-bench classify|offload|traffic|updates|vpp`: capo's benchmarks (`--help` for each).
//!
//! Prints one JSON object per engine and line with `--json`, a table otherwise;
//! progress goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use capo_bench::offload::{NicProfile, OffloadOptions, Replan};
use capo_bench::run::{classify, Options};
use capo_bench::traffic::TrafficOptions;
use capo_bench::updates::UpdatePath;
use capo_bench::workload::Kind;

/// A name that is not one of the choices.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not one of: {1}")]
struct UnknownName(String, std::borrow::Cow<'static, str>);

fn workload(s: &str) -> Result<Kind, UnknownName> {
    Kind::parse(s).ok_or_else(|| UnknownName(s.into(), "w-seed, w-k8s, w-large".into()))
}

fn cluster_workload(s: &str) -> Result<Kind, UnknownName> {
    workload(s)
        .ok()
        .filter(|k| *k != Kind::Seed)
        .ok_or_else(|| UnknownName(s.into(), "w-k8s, w-large".into()))
}

fn update_kind(s: &str) -> Result<&'static str, UnknownName> {
    capo_bench::updates::KINDS
        .into_iter()
        .find(|k| *k == s)
        .ok_or_else(|| UnknownName(s.into(), capo_bench::updates::KINDS.join(", ").into()))
}

/// `--engines`: which of `capo-bench vpp`'s engines to measure.
fn vpp_engine(s: &str) -> Result<String, UnknownName> {
    capo_bench::vpp::ENGINES
        .into_iter()
        .find(|e| *e == s)
        .map(String::from)
        .ok_or_else(|| UnknownName(s.into(), capo_bench::vpp::ENGINES.join(", ").into()))
}

/// `--path`: the update paths to time.
#[derive(Debug, Clone, Copy)]
enum UpdatePaths {
    One(UpdatePath),
    Both,
}

impl UpdatePaths {
    fn list(self) -> Vec<UpdatePath> {
        match self {
            UpdatePaths::One(p) => vec![p],
            UpdatePaths::Both => vec![UpdatePath::Builder, UpdatePath::Plugin],
        }
    }
}

fn update_paths(s: &str) -> Result<UpdatePaths, UnknownName> {
    match s {
        "builder" => Ok(UpdatePaths::One(UpdatePath::Builder)),
        "plugin" => Ok(UpdatePaths::One(UpdatePath::Plugin)),
        "both" => Ok(UpdatePaths::Both),
        _ => Err(UnknownName(s.into(), "builder, plugin, both".into())),
    }
}

fn nic(s: &str) -> Result<NicProfile, UnknownName> {
    NicProfile::parse(s).ok_or_else(|| UnknownName(s.into(), "mlx5, e810, cnxk".into()))
}

fn on_off(s: &str) -> Result<bool, UnknownName> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(UnknownName(s.into(), "on, off".into())),
    }
}

fn replan_mode(s: &str) -> Result<Replan, UnknownName> {
    Replan::parse(s).ok_or_else(|| UnknownName(s.into(), "incremental, full".into()))
}

#[derive(Parser)]
#[command(name = "capo-bench", version, about = "capo's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The traffic model's knobs, shared by the commands that generate traffic.
#[derive(clap::Args)]
struct TrafficArgs {
    /// Zipf exponent of conversation popularity.
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Seed of the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Every engine on the generated packets of each workload (all three by default).
    Classify {
        #[arg(long = "workload", value_parser = workload)]
        workloads: Vec<Kind>,
        /// Short budgets.
        #[arg(long)]
        quick: bool,
        /// Only the fast classifier.
        #[arg(long)]
        fast_only: bool,
        /// Instead of the engines: regenerate each workload with about these many
        /// rules per interface program (e.g. 70,1400) and measure the fast path and
        /// the production pipeline on each.
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rules_per_program: Vec<u32>,
        #[arg(long)]
        json: bool,
    },
    /// The offload split on a simulated NIC, trained on one window, measured on the next.
    Offload {
        #[arg(long, value_parser = cluster_workload, default_value = "w-k8s")]
        workload: Kind,
        #[arg(long, value_parser = nic, default_value = "mlx5")]
        nic: NicProfile,
        #[arg(long, default_value_t = 4096)]
        nic_capacity: u32,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Time windows (at least 2: plan on one, measure on the next).
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
        windows: Option<u32>,
        /// Windows after the first: `incremental` (from the installed plan, committed
        /// in place, as the agent re-plans an unchanged policy) or `full` (from
        /// scratch, a new generation each).
        #[arg(long, value_parser = replan_mode, default_value = "incremental")]
        replan: Replan,
        /// Denies of protocols other than TCP (UDP, SCTP, ICMP): `on` lets them go down
        /// as exact-flow drops sparing the flows software holds (the embedded
        /// dataplane's planner), `off` keeps them in software (a VPP plugin's or a
        /// DPDK port's planner).
        #[arg(long, value_parser = on_off, default_value = "on", action = clap::ArgAction::Set)]
        stateless_drops: bool,
        /// Drops learned between plans kept at once (0: none): software's first deny
        /// of a refused conversation installs an exact-flow drop at once, taken from
        /// the table the planner fills.
        #[arg(long, default_value_t = 256)]
        learned_drops: u32,
        #[arg(long)]
        json: bool,
    },
    /// The offload benchmark's traffic written out for TRex and VPP's packet generator.
    Traffic {
        #[arg(long, value_parser = cluster_workload, default_value = "w-k8s")]
        workload: Kind,
        /// The directory to write (created).
        #[arg(long)]
        export: PathBuf,
        /// The small size the tests use.
        #[arg(long)]
        small: bool,
        #[command(flatten)]
        traffic: TrafficArgs,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        windows: Option<u32>,
    },
    /// Every kind of policy update, timed while another thread classifies.
    Updates {
        #[arg(long, value_parser = cluster_workload, default_value = "w-k8s")]
        workload: Kind,
        /// Updates of each kind.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Which kinds of update, comma-separated (default: all of them).
        #[arg(long, value_delimiter = ',', value_parser = update_kind)]
        kinds: Vec<&'static str>,
        /// Through the classifier's builder (the embedded dataplane), the VPP
        /// plugin's control path (encoded generations, VPP stood in for), or both.
        #[arg(long, value_parser = update_paths, default_value = "builder")]
        path: UpdatePaths,
        #[arg(long)]
        json: bool,
    },
    /// capo's node, VPP's ACL plugin, upstream npol and plain forwarding, clocks per
    /// packet inside VPP.
    Vpp {
        #[arg(long, value_parser = cluster_workload, default_value = "w-k8s")]
        workload: Kind,
        /// Which window of the traffic.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Seed of the traffic.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runs of each phase (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Passes over the allowed packets in each established run (more than 1: the
        /// steady state of a busy dataplane, caches warm, rather than one pass right
        /// after the first packets).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat_established: u32,
        /// Only these engines, comma-separated (default: all of them; e.g. `capo` to
        /// compare two builds of the plugin quickly).
        #[arg(long, value_delimiter = ',', value_parser = vpp_engine)]
        engines: Vec<String>,
        /// An unpacked VPP with capo's plugin (scripts/vpp-setup.sh DIR).
        #[arg(long, env = "CAPO_VPP")]
        vpp: PathBuf,
        /// The capo-agent binary (default: beside this one).
        #[arg(long)]
        agent: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // First, as in the agent: the production paths' heap is on huge pages where the
    // kernel allows (it may execute this binary again).
    let heap = capo_heap::huge_page_heap();
    eprintln!("capo-bench: heap: {heap}");
    match Cli::parse().command {
        Command::Classify {
            workloads,
            quick,
            fast_only,
            rules_per_program,
            json,
        } => run_classify(
            workloads,
            Options { quick, fast_only },
            &rules_per_program,
            json,
        ),
        Command::Offload {
            workload,
            nic,
            nic_capacity,
            traffic,
            windows,
            replan,
            stateless_drops,
            learned_drops,
            json,
        } => {
            let mut t = TrafficOptions::standard(traffic.zipf, traffic.seed);
            if let Some(w) = windows {
                t.windows = w as usize;
            }
            run_offload(
                &OffloadOptions {
                    kind: workload,
                    nic,
                    capacity: nic_capacity,
                    traffic: t,
                    replan,
                    stateless_drops,
                    learned_drops,
                },
                json,
            )
        }
        Command::Traffic {
            workload,
            export,
            small,
            traffic,
            windows,
        } => {
            let mut t = if small {
                TrafficOptions::small(traffic.zipf, traffic.seed)
            } else {
                TrafficOptions::standard(traffic.zipf, traffic.seed)
            };
            if let Some(w) = windows {
                t.windows = w as usize;
            }
            run_traffic(workload, &t, &export)
        }
        Command::Updates {
            workload,
            count,
            kinds,
            path,
            json,
        } => {
            let kinds = if kinds.is_empty() {
                capo_bench::updates::KINDS.to_vec()
            } else {
                kinds
            };
            let mut rows = Vec::new();
            for p in path.list() {
                match capo_bench::updates::run(workload, count as usize, &kinds, p, &mut |l| {
                    eprintln!("{l}")
                }) {
                    Ok(r) => rows.extend(r),
                    Err(e) => {
                        eprintln!("capo-bench updates: the workload was refused: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            for r in &rows {
                if json {
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                    println!(
                        "{:<7} {:<18} applied {:>6} failed {:>6} p50 {:>8} µs p99 {:>8} µs max {:>8} µs",
                        r.engine,
                        r.update,
                        r.applied,
                        r.failed,
                        us(r.p50_us),
                        us(r.p99_us),
                        us(r.max_us)
                    );
                }
            }
            if rows.iter().any(|r| r.update != "rejected" && r.failed > 0) {
                eprintln!("capo-bench updates: some of the benchmark's own updates were refused");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Vpp {
            workload,
            window,
            seed,
            runs,
            repeat_established,
            engines,
            vpp,
            agent,
            json,
        } => {
            let agent = agent.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("capo-agent")))
                    .unwrap_or_else(|| "capo-agent".into())
            });
            run_vpp(
                &capo_bench::vpp::VppBenchOptions {
                    kind: workload,
                    window,
                    seed,
                    vpp_root: vpp,
                    agent,
                    runs: runs as usize,
                    repeat_established: repeat_established as usize,
                    engines,
                },
                json,
            )
        }
    }
}

fn run_classify(mut kinds: Vec<Kind>, options: Options, sweep: &[u32], json: bool) -> ExitCode {
    if kinds.is_empty() {
        kinds = if sweep.is_empty() {
            vec![Kind::Seed, Kind::K8s, Kind::Large]
        } else {
            vec![Kind::K8s]
        };
    }
    if !sweep.is_empty() && kinds.contains(&Kind::Seed) {
        eprintln!("capo-bench classify: --rules-per-program needs w-k8s or w-large (W-seed is hand-written)");
        return ExitCode::from(2);
    }
    let targets: Vec<usize> = sweep.iter().map(|&n| n as usize).collect();
    for kind in kinds {
        let rows = if targets.is_empty() {
            classify(kind, options, &mut |l| eprintln!("{l}"))
        } else {
            capo_bench::run::sweep(kind, &targets, options, &mut |l| eprintln!("{l}"))
        };
        for r in rows {
            if json {
                println!("{}", r.json());
            } else {
                let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
                println!(
                    "{:<10} {:<8} {}ns/pkt {:>10} Mpps {:>8} compile_ms {:>9} update_p99_us {:>8} B/member {:>6} {}",
                    r.engine,
                    r.workload,
                    r.rules_per_program
                        .map_or(String::new(), |n| format!("rules/program {n:>7.0} ")),
                    f(r.ns_per_packet),
                    f(r.mpps),
                    f(r.compile_ms),
                    f(r.update_p99_us),
                    f(r.bytes_per_member),
                    r.note.unwrap_or_default()
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn run_offload(o: &OffloadOptions, json: bool) -> ExitCode {
    eprintln!(
        "offload: {} on {} with {} entries, zipf {}, seed {}, {} windows",
        o.kind.name(),
        o.nic.name(),
        o.capacity,
        o.traffic.zipf,
        o.traffic.seed,
        o.traffic.windows
    );
    let r = capo_bench::offload::run(o);
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "held_out {:.3} oracle {:.3} same_window {:.3} deny_drop {:.3} mismatches {} flow_mismatches {} plan_ms {:.1} replan_ms {:.1} ({}) rules_changed {:.0} entries_used {}",
            r.held_out_fraction, r.oracle_fraction, r.hw_fraction, r.deny_drop_fraction, r.mismatches, r.flow_mismatches, r.plan_ms, r.replan_ms, r.replan_mode, r.rules_changed, r.entries_used
        );
    }
    ExitCode::SUCCESS
}

/// The offload benchmark's traffic written out (`capo_bench::export`).
fn run_traffic(kind: Kind, o: &TrafficOptions, dir: &std::path::Path) -> ExitCode {
    eprintln!(
        "traffic: {} with zipf {}, seed {}, {} windows of {} connections",
        kind.name(),
        o.zipf,
        o.seed,
        o.windows,
        o.connections_per_window
    );
    let t = capo_bench::traffic::generate_traffic(kind, o);
    match capo_bench::export::export(kind, o, &t, dir) {
        Ok(meta) => {
            for (i, w) in meta.windows.iter().enumerate() {
                eprintln!(
                    "window {i}: {} connections, {} packets from the wire ({} allowed, {} denied), {} sent by local endpoints",
                    w.connections, w.wire_packets, w.wire_allowed, w.wire_denied, w.local_packets
                );
            }
            eprintln!(
                "traffic: wrote {}/flows.csv, endpoints.csv, felix.frames, meta.json",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capo-bench traffic: {e}");
            ExitCode::FAILURE
        }
    }
}

/// capo's node and VPP forwarding inside VPP (`capo_bench::vpp`).
fn run_vpp(o: &capo_bench::vpp::VppBenchOptions, json: bool) -> ExitCode {
    for (what, path) in [
        (
            "VPP (set CAPO_VPP or --vpp: scripts/vpp-setup.sh DIR)",
            o.vpp_root.join("vpp/bin/vpp"),
        ),
        (
            "capo's plugin (scripts/vpp-setup.sh DIR builds it)",
            o.vpp_root.join("capo/libcapo_vpp_plugin.so"),
        ),
        ("capo-agent (--agent PATH)", o.agent.clone()),
    ] {
        if !path.exists() {
            eprintln!("capo-bench vpp: {what}: {} not found", path.display());
            return ExitCode::from(2);
        }
    }
    // Interrupted, the run would leave its VPP and capo-agent running.
    if let Err(e) = capo_bench::children::end_on_signals() {
        eprintln!("capo-bench vpp: cannot watch for signals ({e}): an interrupted run leaves VPP and capo-agent running");
    }
    match capo_bench::vpp::run(o, &mut |l| eprintln!("{l}")) {
        Ok(rows) => {
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    println!(
                        "{:<8} {:<12} clocks/packet {:>8.0} (policy nodes {:>6.0} at {:>5.1} a call, runs {:.0}..{:.0}) packets {:>6} memory {}{}",
                        r.engine,
                        r.phase,
                        r.clocks_per_packet,
                        r.policy_node_clocks_per_packet,
                        r.policy_vectors_per_call,
                        r.clocks_min,
                        r.clocks_max,
                        r.packets,
                        r.memory_bytes.zip(r.heap_bytes).map_or("-".to_string(), |(m, h)| format!(
                            "{} KiB resident, {} KiB heap",
                            m / 1024,
                            h / 1024
                        )),
                        r.capo_classify_clocks_per_packet.map_or(String::new(), |c| format!(
                            " (capo's classifier on the same tuples {c:.0}; {} verdicts differ from Calico's)",
                            r.verdicts_differing_from_calico.unwrap_or(0)
                        ))
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capo-bench vpp: {e}");
            ExitCode::FAILURE
        }
    }
}
