//! Binding capo's unix sockets (the agent's API and Felix sockets, the VPP plugin's
//! control socket) one way, hardened:
//!
//! - the socket is made in a private directory (0700) beside its path, given its mode
//!   and group there, then renamed into place: nobody can connect before the
//!   permissions hold (a plain `bind` then `chmod` leaves a window with the umask's);
//! - what is at the path is replaced only if it is a stale socket (no one accepts on
//!   it). A live socket (another instance), a regular file, a directory or a symlink is
//!   an error naming it, and is left as it was.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("capo-socket-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("api.sock");
//! let listener = capo_socket::bind(&path, 0o660, None).unwrap();
//! // A second bind while the first is served is refused and changes nothing.
//! assert!(capo_socket::bind(&path, 0o660, None).is_err());
//! drop(listener);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the staging directories of binds running at once in one process.
static STAGING: AtomicU64 = AtomicU64::new(0);

/// Binds a unix socket at `path` with permissions `mode` and, when given, group
/// `gid`, both set before anyone can connect. A stale socket left by a previous run
/// is replaced.
///
/// # Errors
///
/// `AlreadyExists` when something other than a socket is at `path` (a symlink
/// included), `AddrInUse` when a live socket is, or the I/O error of creating,
/// binding, `chmod`, `chown` or renaming.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replaced",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let private = dir.join(format!(
        ".capo-bind-{}-{}",
        std::process::id(),
        STAGING.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of a crashed run of the same pid; never followed if a symlink.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("capo-socket-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn mode_is_set_and_stale_sockets_are_replaced() {
        let d = dir("mode");
        let p = d.join("a.sock");
        let l = bind(&p, 0o600, None).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, left in place.
        let err = bind(&p, 0o600, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(l);
        // Stale (nobody accepts): replaced.
        let _l = bind(&p, 0o660, None).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // No staging directory is left behind.
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.sock")]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn files_directories_and_symlinks_are_never_replaced() {
        let d = dir("other");
        let file = d.join("file.sock");
        std::fs::write(&file, b"data").unwrap();
        let err = bind(&file, 0o600, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        std::fs::create_dir(d.join("dir.sock")).unwrap();
        assert!(bind(&d.join("dir.sock"), 0o600, None).is_err());
        assert!(d.join("dir.sock").is_dir());
        let link = d.join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(bind(&link, 0o600, None).is_err());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let _ = std::fs::remove_dir_all(&d);
    }
}
