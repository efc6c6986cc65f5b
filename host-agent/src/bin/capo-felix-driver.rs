//! capo as Felix's dataplane driver.
//!
//! Felix starts its driver with no arguments and its own environment: `ToDataplane`
//! frames arrive on fd 3, `FromDataplane` frames go to fd 4. Configuration comes
//! from environment variables:
//!
//! - `CAPO_FELIX_SCHEMA`: `v3.31` or `v3.32` (default: from `CalicoVersion`);
//! - `CAPO_MAX_FRAME_LEN`: frame length cap in bytes (default 64 MiB);
//! - `CAPO_RECORD`: record the stream to this file, for bug reports;
//! - `CAPO_STATUS_INTERVAL`: how often to send `ProcessStatusUpdate` (default `10s`);
//! - `CAPO_LOG`: log filter (default `info`); `CAPO_LOG_FORMAT`: `text` or `json`.
//!
//! It exits 0 when Felix closes fd 3, 1 on a protocol violation (Felix then
//! restarts and resends everything), and promptly on SIGTERM.
//!
//! In a CalicoVPP cluster it is a tee instead (see [`capo_agent::inputs::felix_tee`]): with
//! `CAPO_FORWARD_SOCKET` (CalicoVPP's Felix socket,
//! `/var/run/calico/felix-dataplane.sock`) and `CAPO_AGENT_SOCKET` (capo-agent's
//! `--felix-socket`), Felix's stream goes unchanged to CalicoVPP, whose answers go
//! back to Felix, and capo-agent is fed the policy beside it.

use std::process::ExitCode;

use std::sync::{Arc, Mutex};

use capo_agent::core::daemon::{Daemon, FelixOptions};
use capo_agent::inputs::felix_fds::serve_felix_fds;
use capo_agent::process::logging::{self, LogFormat};
use capo_agent::process::signals::exit_on_signals;
use capo_policy::IdTable;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An environment variable the driver cannot use.
#[derive(Debug, thiserror::Error)]
enum EnvError {
    #[error("CAPO_FELIX_SCHEMA: {0}")]
    Schema(String),
    #[error("CAPO_MAX_FRAME_LEN: {0:?} is not a number of bytes")]
    MaxFrameLen(String),
    #[error("CAPO_STATUS_INTERVAL: {value:?}: {error}")]
    StatusInterval {
        value: String,
        error: humantime::DurationError,
    },
    #[error("CAPO_STATUS_INTERVAL: must be more than zero")]
    ZeroStatusInterval,
}

fn options() -> Result<FelixOptions, EnvError> {
    let mut opts = FelixOptions::default();
    if let Some(s) = env("CAPO_FELIX_SCHEMA") {
        opts.schema = Some(s.parse().map_err(|e| EnvError::Schema(format!("{e}")))?);
    }
    if let Some(s) = env("CAPO_MAX_FRAME_LEN") {
        opts.max_frame_len = s.parse().map_err(|_| EnvError::MaxFrameLen(s))?;
    }
    opts.record = env("CAPO_RECORD").map(Into::into);
    if let Some(s) = env("CAPO_STATUS_INTERVAL") {
        opts.status_interval = humantime::parse_duration(&s)
            .map_err(|error| EnvError::StatusInterval { value: s, error })?;
        if opts.status_interval.is_zero() {
            return Err(EnvError::ZeroStatusInterval);
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    // Felix passes no arguments; `--version` is for people and image checks.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("capo-felix-driver {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // It may execute this binary again (capo_heap); Felix's fds 3 and 4 stay.
    let heap = capo_heap::huge_page_heap();
    let format = match env("CAPO_LOG_FORMAT").as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    logging::init(format, "info");
    tracing::info!("heap: {heap}");
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = exit_on_signals(|| {}) {
        tracing::warn!(error = %e, "cannot install signal handlers");
    }
    match (env("CAPO_FORWARD_SOCKET"), env("CAPO_AGENT_SOCKET")) {
        (Some(primary), Some(capo)) => return tee(opts, primary.into(), capo.into()),
        (None, None) => {}
        _ => {
            tracing::error!(
                "CAPO_FORWARD_SOCKET and CAPO_AGENT_SOCKET go together (the tee needs both)"
            );
            return ExitCode::from(2);
        }
    }
    tracing::info!(schema = ?opts.schema, "capo-felix-driver started by Felix");
    let daemon = Arc::new(Mutex::new(Daemon::new(opts, IdTable::default())));
    ExitCode::from(serve_felix_fds(&daemon, true))
}

/// Felix → CalicoVPP unchanged, and capo-agent fed beside it.
fn tee(opts: FelixOptions, primary: std::path::PathBuf, capo: std::path::PathBuf) -> ExitCode {
    use capo_agent::inputs::felix_fds::{open_felix_input, open_felix_output};
    use capo_agent::inputs::felix_tee::{self, TeeOptions};
    let input = match open_felix_input() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("fd 3 is not readable ({e}): the driver must be started by Felix");
            return ExitCode::from(2);
        }
    };
    let output = match open_felix_output() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("fd 4 is not writable ({e}): the driver must be started by Felix");
            return ExitCode::from(2);
        }
    };
    // As felix-api-proxy: ten tries a second apart, then Felix restarts us.
    let stream = match felix_tee::connect_with_retries(&primary, 10) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "exiting: Felix restarts the driver");
            return ExitCode::from(1);
        }
    };
    tracing::info!(calicovpp = %primary.display(), capo = %capo.display(), "capo-felix-driver started by Felix: teeing to CalicoVPP and capo-agent");
    let tee_opts = TeeOptions {
        primary,
        capo,
        schema: opts.schema,
        max_frame_len: opts.max_frame_len,
        capo_retry: std::time::Duration::from_secs(1),
        capo_queue: 4096,
    };
    match felix_tee::run(std::io::BufReader::new(input), output, stream, tee_opts) {
        Ok(()) => {
            tracing::info!("Felix closed fd 3: exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "exiting so that Felix restarts and resyncs");
            ExitCode::from(1)
        }
    }
}
