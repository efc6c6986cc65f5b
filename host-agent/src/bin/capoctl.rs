//! capoctl: capo's command line. Offline, it reads recorded Felix streams or
//! Kubernetes/Calico manifests: `replay` and `show` print the capo views, `trace`
//! follows a packet, `export-frames` writes manifests as Felix's frame stream, `demo`
//! runs the seed's walkthrough.

use std::path::PathBuf;
use std::process::ExitCode;

use capo_agent::inputs::manifests;
use capo_agent::views::{packet, parse_interface_index, trace_json, trace_text, View};
use capo_felix::frame::{Schema, DEFAULT_MAX_FRAME_LEN};

use capo_agent::api::client;
use capo_agent::inputs::replay::{replay_file, ReplayError, ReplayOptions, Replayed};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "capoctl", version, about = "capo's command line")]
struct Cli {
    /// Read Kubernetes/Calico manifests (files or directories) instead of a Felix stream.
    #[arg(long, global = true, value_name = "DIR")]
    resources: Vec<PathBuf>,
    /// With --resources: the local node (default: every pod is local).
    #[arg(long, global = true, value_name = "NAME")]
    node: Option<String>,
    /// The agent's API socket (commands that ask a running agent).
    #[arg(long, global = true, value_name = "PATH", default_value = capo_agent::api::DEFAULT_API_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct StreamArgs {
    /// Felix schema; by default detected from ConfigUpdate's CalicoVersion.
    #[arg(long, value_name = "v3.31|v3.32")]
    schema: Option<Schema>,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_LEN)]
    max_frame_len: u64,
    /// Fix an interface's sw_if_index (repeatable), e.g. `tun3=11`.
    #[arg(long = "ifindex", value_name = "NAME=INDEX", value_parser = parse_interface_index)]
    interface_indexes: Vec<(String, u32)>,
    /// Name of the host-facing interface in the views.
    #[arg(long, default_value = capo_policy::ids::DEFAULT_HOST_INTERFACE)]
    host_interface: String,
}

impl StreamArgs {
    fn options(&self) -> ReplayOptions {
        ReplayOptions {
            schema: self.schema,
            max_frame_len: self.max_frame_len,
            interface_indexes: self.interface_indexes.clone(),
            host_interface: self.host_interface.clone(),
        }
    }
}

/// A packet's protocol and L4 fields, as `trace` and `inject` take them.
#[derive(Args, Debug, Clone)]
struct L4Args {
    /// tcp, udp, sctp, icmp, icmpv6 or a protocol number.
    #[arg(long)]
    proto: String,
    /// Source port (default 0).
    #[arg(long)]
    sport: Option<u16>,
    /// Destination port (default 0).
    #[arg(long)]
    dport: Option<u16>,
    /// ICMP type (default: echo request).
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP code (default 0).
    #[arg(long, requires = "icmp_type")]
    icmp_code: Option<u8>,
}

impl L4Args {
    fn packet(
        &self,
        from: std::net::IpAddr,
        to: std::net::IpAddr,
    ) -> Result<capo_policy::Packet, capo_agent::views::ArgError> {
        packet(
            from,
            to,
            &self.proto,
            self.sport,
            self.dport,
            self.icmp_type,
            self.icmp_code,
        )
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a recorded Felix stream and print the capo views.
    Replay {
        /// File of Felix frames (8-byte little-endian length + ToDataplane).
        file: PathBuf,
        #[command(flatten)]
        stream: StreamArgs,
        /// `show capo interfaces|ipsets|policies [verbose]|rules`; all four when omitted.
        #[arg(trailing_var_arg = true, value_name = "VIEW")]
        view: Vec<String>,
    },
    /// Print a capo view: of the running agent, or of manifests with --resources.
    Show {
        #[command(flatten)]
        stream: StreamArgs,
        /// `capo interfaces|ipsets|policies [verbose]|rules`.
        #[arg(trailing_var_arg = true, required = true, value_name = "VIEW")]
        view: Vec<String>,
    },
    /// Follow a packet through the node's policy and print the verdict and deciders.
    Trace {
        /// File of Felix frames (or use --resources).
        #[arg(long, value_name = "FILE")]
        replay: Option<PathBuf>,
        #[command(flatten)]
        stream: StreamArgs,
        /// Source: an IP address, or NAMESPACE/POD with --resources.
        #[arg(long)]
        from: String,
        /// Destination: an IP address, or NAMESPACE/POD with --resources.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        l4: L4Args,
        /// The address family of NAMESPACE/POD ends: 4 or 6 (default: the family of an
        /// end given as an address, else 4).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["4", "6"]))]
        family: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The running agent's counters: per rule, per interface and direction, totals.
    Counters {
        /// Print a new snapshot every --interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// Interval for --watch.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// JSON (one object per snapshot) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hand packets to the running agent's embedded dataplane (it must run with
    /// --enable-inject); prints the verdicts.
    Inject {
        /// The interface the packets arrive at.
        #[arg(long)]
        interface: String,
        /// `ingress` (towards the interface's endpoint) or `egress` (from it).
        #[arg(long)]
        direction: String,
        /// Source address.
        #[arg(long)]
        from: std::net::IpAddr,
        /// Destination address.
        #[arg(long)]
        to: std::net::IpAddr,
        #[command(flatten)]
        l4: L4Args,
        /// How many copies (the first decides, the rest hit the flow table).
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// The running agent's generations: active id, commit history, what is pending.
    Generations {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The running agent's offload plan: where each rule lives and why.
    Offload {
        /// JSON instead of text.
        #[arg(long, conflicts_with = "testpmd")]
        json: bool,
        /// Print the plan as DPDK testpmd `flow create` commands (to replay by hand on
        /// a NIC): the running agent's plan, or with --resources the plan of the
        /// manifests for the --nic profile.
        #[arg(long)]
        testpmd: bool,
        /// The DPDK port the testpmd commands name.
        #[arg(long, default_value_t = 0, requires = "testpmd")]
        port: u16,
        /// With --resources: the NIC profile to plan for, `PROFILE[:ENTRIES]`
        /// (mlx5, e810, cnxk).
        #[arg(long, value_name = "PROFILE[:ENTRIES]", default_value = "mlx5:4096")]
        nic: String,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Write the Felix frame stream equivalent to the manifests (`--resources`).
    ExportFrames {
        /// Output file.
        out: PathBuf,
    },
    /// The seed's walkthrough: two pods, a NetworkPolicy, the netcat test.
    Demo,
    /// Hand every interface back to VPP: push an empty policy to capo's VPP plugin
    /// as a new agent run, so that capo polices nothing (removing capo without
    /// restarting VPP). Stop capo-agent first: a running agent takes over again.
    VppRelease {
        /// The plugin's control socket (startup.conf `capo { socket … }`).
        #[arg(long, value_name = "PATH", default_value = "/var/run/vpp/capo.sock")]
        plugin_socket: PathBuf,
    },
    /// Copy files into a directory atomically (each written beside its destination
    /// and renamed over it): how an init container without a shell puts the VPP
    /// plugin or Felix's driver where VPP or Felix finds it.
    Install {
        /// Destination directory (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// File mode (octal).
        #[arg(long, default_value = "0755", value_parser = parse_mode)]
        mode: u32,
        /// Files to install.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// A `--mode` that is not an octal file mode.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an octal file mode such as 0755")]
struct ModeError(String);

fn parse_mode(s: &str) -> Result<u32, ModeError> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ModeError(s.to_string()))
}

fn load(file: &std::path::Path, stream: &StreamArgs) -> Result<Replayed, ReplayError> {
    let r = replay_file(file, &stream.options())?;
    if !r.in_sync {
        eprintln!(
            "warning: {}: the stream ends before InSync ({} frames): showing the partial snapshot",
            file.display(),
            r.stats.frames
        );
    }
    Ok(r)
}

fn render_views(r: &Replayed, views: &[View]) -> String {
    let mut out = String::new();
    for (i, v) in views.iter().enumerate() {
        if views.len() > 1 {
            if i > 0 {
                out.push('\n');
            }
            out += &format!("vpp# {}\n", v.command());
        }
        out += &v.render(&r.state, &r.ids);
    }
    out
}

fn run(cli: Cli) -> Result<String, Box<dyn std::error::Error>> {
    let node = cli.node.as_deref();
    let resources = &cli.resources;
    match cli.command {
        Command::Show { stream, view } => {
            let v = View::parse(&view)?;
            if resources.is_empty() {
                return Ok(client::show(&cli.socket, v)?);
            }
            let (_, r) = manifests::replay(resources, node, &stream.options())?;
            Ok(render_views(&r, &[v]))
        }
        Command::Counters {
            watch,
            interval,
            json,
        } => Ok(client::counters(
            &cli.socket,
            watch.then_some(interval),
            json,
        )?),
        Command::Generations { json } => Ok(client::generations(&cli.socket, json)?),
        Command::Inject {
            interface,
            direction,
            from,
            to,
            l4,
            count,
        } => {
            let pkt = l4.packet(from, to)?;
            let syn = if pkt.protocol == capo_policy::Protocol::TCP {
                capo_classifier::tcp_flags::SYN
            } else {
                0
            };
            let frame = capo_classifier::build::frame(&pkt, syn);
            const MAX_COUNT: u32 = 65_536;
            if count == 0 || count > MAX_COUNT {
                return Err(format!("--count: {count} is not within 1..={MAX_COUNT}").into());
            }
            let frames = vec![frame; count as usize];
            Ok(client::inject(&cli.socket, &interface, &direction, frames)?)
        }
        Command::Offload {
            json,
            testpmd,
            port,
            nic,
            stream,
        } => {
            if resources.is_empty() {
                return Ok(client::offload(&cli.socket, json, testpmd.then_some(port))?);
            }
            if !testpmd {
                return Err("offload with --resources prints --testpmd commands; the running agent's plan: without --resources".into());
            }
            // The agent's own `--nic sim:…` grammar, so profiles and defaults agree.
            let (profile, capacity) = match format!("sim:{nic}").parse()? {
                capo_agent::sinks::nic::NicSpec::Sim { profile, capacity } => (profile, capacity),
                other => return Err(format!("--nic {nic}: {other} is not a NIC profile").into()),
            };
            let (_, r) = manifests::replay(resources, node, &stream.options())?;
            let mut sim = capo_agent::sinks::nic::SimulatedNic::new(&profile, capacity);
            let _ = sim.commit(&r.state, &r.ids, 1);
            Ok(client::testpmd_text(
                &format!("{profile} ({capacity} entries, manifests, no traffic seen)"),
                1,
                &sim.testpmd_script(port),
            ))
        }
        Command::ExportFrames { out } => {
            if resources.is_empty() {
                return Err("export-frames needs --resources DIR".into());
            }
            let n = manifests::export_frames(resources, node, &out)?;
            Ok(format!("wrote {n} Felix messages to {}\n", out.display()))
        }
        Command::Replay { file, stream, view } => {
            let views = if view.is_empty() {
                View::ALL.to_vec()
            } else {
                vec![View::parse(&view)?]
            };
            Ok(render_views(&load(&file, &stream)?, &views))
        }
        Command::Trace {
            replay,
            stream,
            from,
            to,
            l4,
            family,
            json,
        } => {
            let (res, r) = match (replay, resources.is_empty()) {
                (Some(file), true) => (None, load(&file, &stream)?),
                (None, false) => {
                    let (res, r) = manifests::replay(resources, node, &stream.options())?;
                    (Some(res), r)
                }
                (None, true) => {
                    let req = capo_proto::capo::agent::v1::TraceRequest {
                        from,
                        to,
                        protocol: l4.proto,
                        src_port: l4.sport.map(u32::from),
                        dst_port: l4.dport.map(u32::from),
                        icmp_type: l4.icmp_type.map(u32::from),
                        icmp_code: l4.icmp_code.map(u32::from),
                    };
                    return Ok(client::trace(&cli.socket, req, json)?);
                }
                _ => {
                    return Err(
                        "trace takes at most one of --replay FILE and --resources DIR".into(),
                    )
                }
            };
            let family_v6 = family.as_deref().map(|f| f == "6");
            let (from, to) = manifests::resolve_pair(res.as_ref(), &from, &to, family_v6)?;
            let pkt = l4.packet(from, to)?;
            let t = capo_policy::trace(&r.state, &pkt);
            if json {
                Ok(trace_json(&t, &r.state, &r.ids).to_string() + "\n")
            } else {
                Ok(trace_text(&t, &r.state, &r.ids))
            }
        }
        Command::Demo => Ok(capo_agent::capoctl::demo::run()?),
        Command::VppRelease { plugin_socket } => {
            let (version, before) = capo_agent::sinks::vpp::release(&plugin_socket)?;
            Ok(format!(
                "capo's VPP plugin {version} at {}: released {before} interface(s); capo polices nothing until an agent connects\n",
                plugin_socket.display()
            ))
        }
        Command::Install { to, mode, files } => {
            let written = capo_agent::capoctl::install::install(&files, &to, mode)?;
            Ok(written
                .iter()
                .map(|p| format!("installed {}\n", p.display()))
                .collect())
        }
    }
}

fn main() -> ExitCode {
    // Warnings (skipped manifests, rules capo cannot enforce) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capoctl: {e}");
            ExitCode::FAILURE
        }
    }
}
