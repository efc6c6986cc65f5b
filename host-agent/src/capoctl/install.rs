//! Puts capo's files where another container finds them (VPP's plugin directory,
//! Felix's driver directory) from an image without a shell: each file is written
//! beside its destination and renamed over it, so a reader never sees half a file
//! and a running VPP keeps the copy it loaded.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a file could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The source could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The destination could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The source has no file name to install under.
    #[error("{0}: not a file name")]
    NoName(PathBuf),
}

/// Copies each of `files` into `dir` (created if missing) under its own name with
/// `mode`, atomically per file. Returns the paths written.
pub fn install(files: &[PathBuf], dir: &Path, mode: u32) -> Result<Vec<PathBuf>, InstallError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut written = Vec::with_capacity(files.len());
    for src in files {
        let name = src
            .file_name()
            .ok_or_else(|| InstallError::NoName(src.clone()))?;
        let bytes = std::fs::read(src).map_err(|source| InstallError::Read {
            path: src.clone(),
            source,
        })?;
        let dest = dir.join(name);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)
        })();
        if let Err(source) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(InstallError::Write { path: dest, source });
        }
        written.push(dest);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("capo-install-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replaces_the_destination_whole_with_the_mode_asked() {
        let d = scratch("replace");
        let src = d.join("libcapo_vpp_plugin.so");
        std::fs::write(&src, b"new plugin").unwrap();
        let to = d.join("plugins");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("libcapo_vpp_plugin.so"), b"old").unwrap();
        let out = install(std::slice::from_ref(&src), &to, 0o644).unwrap();
        assert_eq!(out, vec![to.join("libcapo_vpp_plugin.so")]);
        assert_eq!(std::fs::read(&out[0]).unwrap(), b"new plugin");
        let mode = std::fs::metadata(&out[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn creates_the_directory_and_names_a_missing_source() {
        let d = scratch("missing");
        let to = d.join("a/b");
        let err = install(&[d.join("absent")], &to, 0o755).unwrap_err();
        assert!(matches!(err, InstallError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(to.is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }
}
