//! Errors and warnings. Every error about a manifest names the file, the
//! object (kind, namespace, name) and the field path inside it, e.g.
//! `spec.ingress[0].ports[1].port`.

use std::fmt;
use std::path::PathBuf;

/// Which object an error or warning is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The manifest's `kind`, e.g. `NetworkPolicy`.
    pub kind: String,
    /// `metadata.namespace` for namespaced kinds.
    pub namespace: Option<String>,
    /// `metadata.name`, or `?` when the name itself is missing.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A manifest that cannot be turned into capo state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file is not valid YAML or JSON.
    #[error("{file}: document {document}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 0-based index of the document within a multi-document file.
        document: usize,
        /// The parser's message.
        message: String,
    },
    /// An object has a missing or invalid field.
    #[error("{file}: {object}: {field}: {reason}")]
    Invalid {
        /// The file the object came from.
        file: PathBuf,
        /// The object (boxed to keep `Result`s small).
        object: Box<ObjectRef>,
        /// Path of the offending field inside the object.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same object is defined twice.
    #[error("{file}: {object}: defined again (first in {first})")]
    Duplicate {
        /// Where the second definition is.
        file: PathBuf,
        /// The object.
        object: Box<ObjectRef>,
        /// Where the first definition is.
        first: PathBuf,
    },
}

/// Something skipped or assumed while loading; not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file concerned.
    pub file: PathBuf,
    /// The object concerned, when known.
    pub object: Option<ObjectRef>,
    /// What happened.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {o}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A field-level problem, before it is tied to a file and object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) reason: String,
}
