//! capo-agent: takes policy from Felix over the unix socket CalicoVPP's
//! felix-api-proxy connects to (one connection at a time, each a fresh sync), or
//! from fds 3 and 4 when Felix starts it as its driver (`--felix-fds`), or from
//! Kubernetes/Calico manifests (`--resources DIR`, watched for changes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use capo_agent::api::{ApiOptions, TcpTls, DEFAULT_API_SOCKET};
use capo_agent::core::daemon::{Daemon, FelixOptions};
use capo_agent::inputs::felix_fds::serve_felix_fds;
use capo_agent::inputs::felix_socket::{
    bind_felix_socket, serve_felix_socket, DEFAULT_FELIX_SOCKET,
};
use capo_agent::inputs::manifest_poll::serve_manifests;
use capo_agent::process::logging::{self, LogFormat};
use capo_agent::process::signals::exit_on_signals;
use capo_agent::sinks::nic::{NicSpec, SimulatedNic};
use capo_agent::views::parse_interface_index;
use capo_felix::frame::{Schema, DEFAULT_MAX_FRAME_LEN};
use capo_policy::IdTable;
use clap::{CommandFactory, Parser};

#[derive(Parser, Debug)]
#[command(
    name = "capo-agent",
    version,
    about = "capo host agent: Calico policy from Felix",
    args_override_self = true
)]
struct Args {
    /// TOML file with the same settings as the flags (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket to accept Felix (felix-api-proxy) connections on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_FELIX_SOCKET)]
    felix_socket: PathBuf,
    /// Read Felix from fd 3 and report on fd 4 (as Felix's driver process).
    #[arg(long, conflicts_with = "felix_socket")]
    felix_fds: bool,
    /// Take policy from Kubernetes/Calico manifests (files or directories, watched
    /// for changes) instead of Felix.
    #[arg(long, value_name = "DIR", conflicts_with = "felix_fds")]
    resources: Vec<PathBuf>,
    /// With --resources: the local node (default: every pod is local).
    #[arg(long, value_name = "NAME", requires = "resources")]
    node: Option<String>,
    /// With --resources: how often to look for changed manifests.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: std::time::Duration,
    /// The software dataplane: `embedded` (in the agent) or `vpp:SOCKET` (the capo
    /// VPP plugin's control socket).
    #[arg(long, value_name = "embedded|vpp:SOCKET", default_value = "embedded")]
    dataplane: String,
    /// The NIC in front of the embedded dataplane: none (fallback-only),
    /// sim:mlx5|sim:e810|sim:cnxk[:CAPACITY] (simulated), or dpdk:PORT; with
    /// --dataplane vpp:SOCKET, vpp-flow[:CAPACITY] (the NIC share, flat marks, through
    /// VPP's flow layer).
    #[arg(long, value_name = "SPEC", default_value = "none")]
    nic: capo_agent::sinks::nic::NicSpec,
    /// With --nic vpp-flow: a VPP interface where traffic from outside the node
    /// arrives (an uplink); the NIC share goes on its hardware as well as on that of
    /// every policed interface (repeatable).
    #[arg(long = "vpp-uplink", value_name = "VPP-INTERFACE")]
    vpp_uplinks: Vec<String>,
    /// Felix schema; by default detected from ConfigUpdate's CalicoVersion.
    #[arg(long, value_name = "v3.31|v3.32")]
    schema: Option<Schema>,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_LEN)]
    max_frame_len: u64,
    /// Record each Felix connection's frames to FILE (for `capoctl replay`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Name of the host-facing interface in the views.
    #[arg(long, default_value = capo_policy::ids::DEFAULT_HOST_INTERFACE)]
    host_interface: String,
    /// Fix an interface's sw_if_index (repeatable), e.g. `tun3=11`.
    #[arg(long = "ifindex", value_name = "NAME=INDEX", value_parser = parse_interface_index)]
    interface_indexes: Vec<(String, u32)>,
    /// With --dataplane vpp: police an endpoint on a VPP interface (repeatable). The
    /// endpoint is a workload id (`default/ts2`), `workload/endpoint`
    /// (`default/ts2/eth0`), a host endpoint id, or an interface name; tried before
    /// the name and CalicoVPP (`vpp-tun-N`) bindings.
    #[arg(long = "bind", value_name = "ENDPOINT=VPP_INTERFACE", value_parser = capo_agent::sinks::vpp::parse_binding)]
    bindings: Vec<capo_proto::capo::dataplane::v1::InterfaceBinding>,
    /// On the Felix socket: how long a frame may take once it started (a Felix that
    /// stops mid-frame is disconnected; silence between frames is fine).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    felix_stall_timeout: std::time::Duration,
    /// How often to send Felix a ProcessStatusUpdate (e.g. `10s`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: std::time::Duration,
    /// Unix socket of the gRPC API (mode 0660).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Group owning the API socket (name or number).
    #[arg(long, value_name = "GROUP")]
    api_group: Option<String>,
    /// Also serve the API on TCP with mutual TLS (needs --tls-cert, --tls-key, --tls-client-ca).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key", "tls_client_ca"])]
    api_tcp: Option<std::net::SocketAddr>,
    /// Server certificate (PEM) for --api-tcp.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Server key (PEM) for --api-tcp.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM) for --api-tcp.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Accept the Inject API (tests and demos).
    #[arg(long)]
    enable_inject: bool,
    /// Serve Prometheus metrics over HTTP (default address 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = capo_agent::api::metrics::DEFAULT_METRICS_ADDR)]
    metrics: Option<std::net::SocketAddr>,
    /// Serve gRPC health alone, in plaintext, on ADDR (Kubernetes gRPC probes): the
    /// empty service is liveness, `capo.ready` is readiness (a generation in force,
    /// taken by every dataplane).
    #[arg(long, value_name = "ADDR")]
    health: Option<std::net::SocketAddr>,
    /// Do not serve the gRPC API.
    #[arg(long, conflicts_with_all = ["api_tcp", "enable_inject", "metrics", "health"])]
    no_api: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Removes a socket file on the way out (the process exits without unwinding).
fn remove(path: Option<PathBuf>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

fn main() -> ExitCode {
    // First: it may execute this binary again (capo_heap).
    let heap = capo_heap::huge_page_heap();
    let known: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let argv =
        match capo_agent::core::config::args_with_config(std::env::args_os().collect(), &known) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("capo-agent: {e}");
                return ExitCode::from(2);
            }
        };
    let args = Args::parse_from(argv);
    if args.felix_stall_timeout.is_zero() {
        eprintln!("capo-agent: --felix-stall-timeout must be more than zero");
        return ExitCode::from(2);
    }
    if args.status_interval.is_zero() {
        eprintln!("capo-agent: --status-interval must be more than zero");
        return ExitCode::from(2);
    }
    logging::init(args.log_format, "info");
    tracing::info!("heap: {heap}");
    let opts = FelixOptions {
        schema: args.schema,
        max_frame_len: args.max_frame_len,
        record: args.record.clone(),
        status_interval: args.status_interval,
        stall_timeout: args.felix_stall_timeout,
    };
    let mut ids = IdTable::new(&args.host_interface);
    for (name, idx) in &args.interface_indexes {
        ids.set_interface_index(name, *idx);
    }
    let mut d = Daemon::new(opts, ids);
    match args.dataplane.as_str() {
        "embedded" => {
            let embedded = match &args.nic {
                NicSpec::None => capo_agent::sinks::embedded::Embedded::new(),
                NicSpec::Sim { profile, capacity } => {
                    tracing::info!(profile = %profile, capacity, "simulated NIC in front of the embedded dataplane");
                    capo_agent::sinks::embedded::Embedded::with_nic(SimulatedNic::new(
                        profile, *capacity,
                    ))
                }
                NicSpec::Dpdk(_) => capo_agent::sinks::embedded::Embedded::new(),
                NicSpec::VppFlow { .. } => {
                    tracing::error!("--nic vpp-flow needs --dataplane vpp:SOCKET (VPP's flow layer programs the NIC)");
                    return ExitCode::from(2);
                }
            };
            let shared = Arc::new(Mutex::new(embedded));
            d.add_sink(Box::new(capo_agent::sinks::embedded::EmbeddedSink::new(
                shared,
            )));
        }
        other => match capo_agent::sinks::vpp::parse_dataplane_arg(other) {
            Some(path) => {
                let share = match args.nic {
                    NicSpec::VppFlow { capacity } => {
                        tracing::info!(capacity, uplinks = ?args.vpp_uplinks, "NIC share through VPP's flow layer");
                        Some(capo_agent::sinks::vpp::NicShareConfig {
                            capacity,
                            uplinks: args.vpp_uplinks.clone(),
                        })
                    }
                    NicSpec::None => None,
                    _ => {
                        tracing::warn!("--nic {}: with VPP, VPP's driver owns the NIC; use --nic vpp-flow to install the NIC share through VPP's flow layer", args.nic);
                        None
                    }
                };
                tracing::info!(socket = %path.display(), "software dataplane: the capo VPP plugin");
                d.add_sink(Box::new(capo_agent::sinks::vpp::VppSink::with_nic_share(
                    path,
                    args.bindings.clone(),
                    share,
                )));
            }
            None => {
                tracing::error!("--dataplane {other:?}: expected `embedded` or `vpp:SOCKET`");
                return ExitCode::from(2);
            }
        },
    }
    if !args.bindings.is_empty() && args.dataplane == "embedded" {
        tracing::warn!("--bind applies to --dataplane vpp:SOCKET; ignored");
    }
    let daemon = Arc::new(Mutex::new(d));
    if let (NicSpec::Dpdk(port), "embedded") = (&args.nic, args.dataplane.as_str()) {
        match capo_agent::inputs::dpdk_port::spawn(port, daemon.clone()) {
            Ok(report) => {
                tracing::warn!(port = %port, %report, "classifying the port's packets fallback-only: every rule in software")
            }
            Err(e) => {
                tracing::error!(port = %port, error = %e, "cannot use the DPDK port");
                return ExitCode::from(2);
            }
        }
    }
    let _api = if args.no_api {
        None
    } else {
        let tcp = match (
            args.api_tcp,
            &args.tls_cert,
            &args.tls_key,
            &args.tls_client_ca,
        ) {
            (Some(addr), Some(cert), Some(key), Some(ca)) => Some(TcpTls {
                addr,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
            }),
            _ => None,
        };
        let api_opts = ApiOptions {
            socket: args.api_socket.clone(),
            group: args.api_group.clone(),
            tcp,
            inject: args.enable_inject,
            metrics: args.metrics,
            health: args.health,
        };
        match capo_agent::api::spawn(daemon.clone(), api_opts) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the gRPC API");
                return ExitCode::from(2);
            }
        }
    };
    let api_socket = (!args.no_api).then(|| args.api_socket.clone());
    if !args.resources.is_empty() {
        let sock = api_socket.clone();
        if let Err(e) = exit_on_signals(move || remove(sock)) {
            tracing::warn!(error = %e, "cannot install signal handlers");
        }
        serve_manifests(args.resources, args.node, args.poll_interval, &daemon);
    }
    if args.felix_fds {
        let sock = api_socket.clone();
        if let Err(e) = exit_on_signals(move || remove(sock)) {
            tracing::warn!(error = %e, "cannot install signal handlers");
        }
        return ExitCode::from(serve_felix_fds(&daemon, false));
    }
    let listener = match bind_felix_socket(&args.felix_socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %args.felix_socket.display(), error = %e, "cannot listen for Felix");
            return ExitCode::from(2);
        }
    };
    let socket = args.felix_socket.clone();
    if let Err(e) = exit_on_signals(move || {
        let _ = std::fs::remove_file(&socket);
        remove(api_socket);
    }) {
        tracing::warn!(error = %e, "cannot install signal handlers");
    }
    tracing::info!(socket = %args.felix_socket.display(), "waiting for Felix");
    let err = serve_felix_socket(&listener, &daemon);
    tracing::error!(error = %err, "accepting Felix connections failed");
    ExitCode::FAILURE
}
