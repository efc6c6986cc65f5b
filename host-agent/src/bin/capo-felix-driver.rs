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

fn options() -> Result<FelixOptions, String> {
    let mut opts = FelixOptions::default();
    if let Some(s) = env("CAPO_FELIX_SCHEMA") {
        opts.schema = Some(s.parse().map_err(|e| format!("CAPO_FELIX_SCHEMA: {e}"))?);
    }
    if let Some(s) = env("CAPO_MAX_FRAME_LEN") {
        opts.max_frame_len = s
            .parse()
            .map_err(|_| format!("CAPO_MAX_FRAME_LEN: {s:?} is not a number of bytes"))?;
    }
    opts.record = env("CAPO_RECORD").map(Into::into);
    if let Some(s) = env("CAPO_STATUS_INTERVAL") {
        opts.status_interval = humantime::parse_duration(&s)
            .map_err(|e| format!("CAPO_STATUS_INTERVAL: {s:?}: {e}"))?;
        if opts.status_interval.is_zero() {
            return Err("CAPO_STATUS_INTERVAL: must be more than zero".into());
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let format = match env("CAPO_LOG_FORMAT").as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    logging::init(format, "info");
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
    tracing::info!(schema = ?opts.schema, "capo-felix-driver started by Felix");
    let daemon = Arc::new(Mutex::new(Daemon::new(opts, IdTable::default())));
    ExitCode::from(serve_felix_fds(&daemon, true))
}
