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

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The manifest files under `path` (itself, if it is a file), sorted so
/// that loading is deterministic.
///
/// # Errors
/// [`Error::Io`] when a directory cannot be listed.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    collect(path, &mut files)?;
    files.sort();
    Ok(files)
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
                let text = std::fs::read_to_string(&file).map_err(io(&file))?;
                res.add_text(&file, &text)?;
            }
        }
        Ok(res)
    }
}
