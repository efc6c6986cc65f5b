//! The Felix socket CalicoVPP's felix-api-proxy connects to: binding it, and serving
//! its connections one at a time.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::core::daemon::{lock, SharedDaemon, Source};
use crate::inputs::felix_stream::{serve_connection, ConnectionEnd};

/// The socket CalicoVPP's felix-api-proxy connects to.
pub const DEFAULT_FELIX_SOCKET: &str = "/var/run/calico/felix-dataplane.sock";

/// Binds the Felix socket (mode 0660), replacing a stale socket file left by a
/// previous run.
pub fn bind_felix_socket(path: &Path) -> std::io::Result<UnixListener> {
    capo_socket::bind(path, 0o660, None)
}

/// Accepts Felix connections, until accepting fails. One is served at a time, and a
/// new connection replaces the one being served (a Felix that restarted, while the
/// old connection still looks open, must not wait behind it). A connection whose
/// peer stops mid-frame for longer than the stall timeout is dropped.
pub fn serve_felix_socket(listener: &UnixListener, daemon: &SharedDaemon) -> std::io::Error {
    let stall = lock(daemon).options().stall_timeout;
    type Conn = (u64, std::os::unix::net::UnixStream);
    let (tx, rx) = std::sync::mpsc::channel::<Conn>();
    // The connection being served (numbered), so that a newer one can end it.
    let current: Arc<Mutex<Option<Conn>>> = Arc::new(Mutex::new(None));
    let serving = {
        let daemon = Arc::clone(daemon);
        let current = Arc::clone(&current);
        std::thread::Builder::new()
            .name("capo-felix".into())
            .spawn(move || {
                for (n, conn) in rx {
                    serve_felix_connection(&daemon, conn, stall);
                    let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                    if cur.as_ref().is_some_and(|(c, _)| *c == n) {
                        *cur = None;
                    }
                }
            })
    };
    if let Err(e) = serving {
        return e;
    }
    for n in 0u64.. {
        let (conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) => return e,
        };
        {
            let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, old)) = cur.take() {
                tracing::warn!("a new Felix connection replaces the current one");
                let _ = old.shutdown(std::net::Shutdown::Both);
            }
            *cur = conn.try_clone().ok().map(|c| (n, c));
        }
        if tx.send((n, conn)).is_err() {
            return std::io::Error::other("the Felix connection thread ended");
        }
    }
    std::io::Error::other("connection counter exhausted")
}

/// Serves one Felix socket connection to its end.
fn serve_felix_connection(
    daemon: &SharedDaemon,
    conn: std::os::unix::net::UnixStream,
    stall: Duration,
) {
    tracing::info!("Felix connected: starting a fresh sync");
    if let Err(e) = conn.set_read_timeout(Some(stall)) {
        tracing::warn!(error = %e, "cannot set the connection's stall timeout");
    }
    let output = match conn.try_clone() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot clone the connection for status reports");
            None
        }
    };
    match serve_connection(daemon, Source::FelixSocket, &conn, output) {
        ConnectionEnd::Eof => tracing::info!("Felix closed the connection"),
        ConnectionEnd::Resync(e) => {
            tracing::error!(error = %e, "dropping the Felix connection to force a resync")
        }
        ConnectionEnd::RecordSetup(e) => {
            tracing::error!(error = %e, "cannot create the recording file; closing the connection")
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let d = lock(daemon);
    if d.state().is_some() {
        tracing::info!(
            generation = d.generation(),
            "keeping the last in-sync policy until Felix reconnects"
        );
    }
}
