//! Felix's driver process: the stream on fds 3 and 4.

use crate::core::daemon::SharedDaemon;
use crate::core::daemon::Source;
use crate::inputs::felix_stream::{serve_connection, ConnectionEnd};

/// Felix's stream to the driver (fd 3). Re-opening through /dev/fd gives an owned
/// file for Felix's pipe without taking ownership of a raw descriptor.
pub fn open_felix_input() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/dev/fd/3")
}

/// The driver's reports to Felix (fd 4), opened as [`open_felix_input`] is.
pub fn open_felix_output() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).open("/dev/fd/4")
}

/// Serves Felix on fds 3 and 4, as Felix's driver process. Returns the exit code:
/// 0 when Felix closes fd 3, 1 on a protocol violation (Felix then restarts and
/// resyncs) or a recording that cannot be created, 2 when fd 3 (or, with
/// `require_fd4`, fd 4) cannot be opened.
pub fn serve_felix_fds(daemon: &SharedDaemon, require_fd4: bool) -> u8 {
    let input = match open_felix_input() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("fd 3 is not readable ({e}): the driver must be started by Felix");
            return 2;
        }
    };
    let output = match open_felix_output() {
        Ok(f) => Some(f),
        Err(e) if require_fd4 => {
            tracing::error!("fd 4 is not writable ({e}): the driver must be started by Felix");
            return 2;
        }
        Err(e) => {
            tracing::warn!(error = %e, "fd 4 is not writable; no status reports to Felix");
            None
        }
    };
    match serve_connection(
        daemon,
        Source::FelixFds,
        std::io::BufReader::new(input),
        output,
    ) {
        ConnectionEnd::Eof => {
            tracing::info!("Felix closed fd 3: exiting");
            0
        }
        ConnectionEnd::Resync(e) => {
            tracing::error!(error = %e, "protocol violation: exiting so that Felix restarts and resyncs");
            1
        }
        ConnectionEnd::RecordSetup(e) => {
            tracing::error!(error = %e, "cannot create the recording file");
            1
        }
    }
}
