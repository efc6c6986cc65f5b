//! capo-agent: takes policy from Felix over the unix socket CalicoVPP's
//! felix-api-proxy connects to (one connection at a time, each a fresh sync), or
//! from fds 3 and 4 when Felix starts it as its driver (`--felix-fds`), or from
//! Kubernetes/Calico manifests (`--resources DIR`, watched for changes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use capo_agent::cli::parse_interface_index;
use capo_agent::daemon::{
    bind_felix_socket, exit_on_signals, serve_connection, serve_felix_socket, serve_manifests,
    ConnectionEnd, Daemon, FelixOptions, Source, DEFAULT_FELIX_SOCKET,
};
use capo_agent::felix::frame::{Schema, DEFAULT_MAX_FRAME_LEN};
use capo_agent::logging::{self, LogFormat};
use capo_policy::IdTable;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "capo-agent",
    version,
    about = "capo host agent: Calico policy from Felix"
)]
struct Args {
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
    #[arg(long, default_value = capo_policy::views::DEFAULT_HOST_INTERFACE)]
    host_interface: String,
    /// Fix an interface's sw_if_index (repeatable), e.g. `tun3=11`.
    #[arg(long = "ifindex", value_name = "NAME=INDEX", value_parser = parse_interface_index)]
    interface_indexes: Vec<(String, u32)>,
    /// How often to send Felix a ProcessStatusUpdate (e.g. `10s`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: std::time::Duration,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "info");
    let opts = FelixOptions {
        schema: args.schema,
        max_frame_len: args.max_frame_len,
        record: args.record.clone(),
        status_interval: args.status_interval,
    };
    let mut ids = IdTable::new(&args.host_interface);
    for (name, idx) in &args.interface_indexes {
        ids.set_interface_index(name, *idx);
    }
    let daemon = Arc::new(Mutex::new(Daemon::new(opts, ids)));
    if !args.resources.is_empty() {
        if let Err(e) = exit_on_signals(|| {}) {
            tracing::warn!(error = %e, "cannot install signal handlers");
        }
        let err = serve_manifests(args.resources, args.node, args.poll_interval, &daemon);
        if let Err(e) = err {
            tracing::error!(error = %e, "cannot load the manifests");
        }
        return ExitCode::from(2);
    }
    if args.felix_fds {
        let input = match std::fs::File::open("/dev/fd/3") {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "--felix-fds: fd 3 is not readable");
                return ExitCode::from(2);
            }
        };
        let output = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/fd/4")
            .ok();
        if let Err(e) = exit_on_signals(|| {}) {
            tracing::warn!(error = %e, "cannot install signal handlers");
        }
        return match serve_connection(
            &daemon,
            Source::FelixFds,
            std::io::BufReader::new(input),
            output,
        ) {
            ConnectionEnd::Eof => ExitCode::SUCCESS,
            ConnectionEnd::Resync(e) => {
                tracing::error!(error = %e, "protocol violation: exiting so that Felix resyncs");
                ExitCode::FAILURE
            }
            ConnectionEnd::RecordSetup(e) => {
                tracing::error!(error = %e, "--record: cannot create the recording file");
                ExitCode::FAILURE
            }
        };
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
    }) {
        tracing::warn!(error = %e, "cannot install signal handlers");
    }
    tracing::info!(socket = %args.felix_socket.display(), "waiting for Felix");
    let err = serve_felix_socket(&listener, &daemon);
    tracing::error!(error = %err, "accepting Felix connections failed");
    ExitCode::FAILURE
}
