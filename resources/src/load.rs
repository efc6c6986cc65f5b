//! The only I/O in this crate: reading manifest files and directories.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::resources::Resources;

/// File name endings that are read as manifests.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The largest manifest file read (a bigger one is an error, not a stall).
pub(crate) const MAX_FILE_LEN: u64 = 64 << 20;

fn refused(path: &Path, why: String) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Walks `dir` (already canonical) into `out`. Entries named `..*` are skipped: a
/// Kubernetes ConfigMap or Secret volume keeps its files in `..<timestamp>/`, behind
/// `..data`, and shows each through a symlink at the top. Directories are entered
/// once each (by real path), so symlink loops end.
fn collect(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen_dirs: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<(), Error> {
    if !seen_dirs.insert(dir.to_path_buf()) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if entry.file_name().to_string_lossy().starts_with("..") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling one is an error naming it.
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            let real = std::fs::canonicalize(&path).map_err(io(&path))?;
            collect(&real, out, seen_dirs)?;
        } else if is_manifest(&path) {
            if !meta.is_file() {
                return Err(refused(
                    &path,
                    "not a regular file (a FIFO, socket or device is never read)".into(),
                ));
            }
            out.push(path);
        }
    }
    Ok(())
}

/// The manifest files under `path` (itself, if it is a file), sorted so
/// that loading is deterministic; each real file once, however many symlinks lead
/// to it.
///
/// # Errors
/// [`Error::Io`] when a directory cannot be listed, or a manifest is not a regular
/// file.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        if !meta.is_file() {
            return Err(refused(
                path,
                "not a regular file or directory (a FIFO, socket or device is never read)".into(),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let real = std::fs::canonicalize(path).map_err(io(path))?;
    collect(&real, &mut files, &mut std::collections::BTreeSet::new())?;
    files.sort();
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = Vec::new();
    for f in files {
        let real = std::fs::canonicalize(&f).map_err(io(&f))?;
        if seen.insert(real) {
            unique.push(f);
        }
    }
    Ok(unique)
}

/// Reads a manifest file: a regular file of at most [`MAX_FILE_LEN`] bytes.
///
/// # Errors
/// [`Error::Io`] naming the file when it cannot be read, is not a regular file, is
/// too large or is not UTF-8.
pub(crate) fn read_manifest(file: &Path) -> Result<String, Error> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(io(file))?;
    let meta = f.metadata().map_err(io(file))?;
    if !meta.is_file() {
        return Err(refused(file, "not a regular file".into()));
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io(file))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(refused(
            file,
            format!("larger than {MAX_FILE_LEN} bytes: not read as a manifest"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| refused(file, format!("not UTF-8: {e}")))
}

impl Resources {
    /// Loads every manifest under each path (files, or directories read
    /// recursively for `*.yaml`, `*.yml` and `*.json`).
    ///
    /// # Errors
    /// [`Error::Io`] for unreadable paths, otherwise as
    /// [`Resources::add_text`].
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self, Error> {
        let mut res = Resources::new();
        for p in paths {
            for file in manifest_files(p.as_ref())? {
                let text = read_manifest(&file)?;
                res.add_text(&file, &text)?;
            }
        }
        Ok(res)
    }
}
