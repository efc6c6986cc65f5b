//! Errors of rte_flow operations, typed once at the FFI edge (offload.md §1.6, §6.5).

use core::fmt;

/// What `rte_flow_error.type` blamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorTarget {
    /// Nothing specific (`NONE`, `UNSPECIFIED`).
    Unspecified,
    /// A flow handle.
    Handle,
    /// The group attribute.
    AttrGroup,
    /// The priority attribute.
    AttrPriority,
    /// Another attribute.
    Attr,
    /// Pattern item number `n` (or the pattern as a whole).
    Item(Option<usize>),
    /// Action number `n` (or the actions as a whole).
    Action(Option<usize>),
    /// Device state.
    State,
}

/// The errno class of a failure, and what it means for capo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowErrorKind {
    /// `ENOSYS`: no rte_flow at all → no offload.
    NoSys,
    /// `ENOTSUP`: valid but unsupported → this rule stays in software.
    NotSup,
    /// `EINVAL`: invalid for this device → this rule stays in software.
    Invalid,
    /// `ENOMEM`: table full → shrink the offloaded set.
    NoMem,
    /// `EEXIST`: collision.
    Exists,
    /// `EBUSY`: retry later.
    Busy,
    /// `EIO`: device gone → software only.
    Io,
    /// Any other errno.
    Other(i32),
}

impl FlowErrorKind {
    /// Maps a (positive) errno, as `rte_errno` or a negated return value carries it.
    pub fn from_errno(errno: i32) -> Self {
        match errno.abs() {
            38 => FlowErrorKind::NoSys,
            95 => FlowErrorKind::NotSup,
            22 => FlowErrorKind::Invalid,
            12 => FlowErrorKind::NoMem,
            17 => FlowErrorKind::Exists,
            16 => FlowErrorKind::Busy,
            5 => FlowErrorKind::Io,
            other => FlowErrorKind::Other(other),
        }
    }

    /// The errno for this kind.
    pub fn errno(&self) -> i32 {
        match self {
            FlowErrorKind::NoSys => 38,
            FlowErrorKind::NotSup => 95,
            FlowErrorKind::Invalid => 22,
            FlowErrorKind::NoMem => 12,
            FlowErrorKind::Exists => 17,
            FlowErrorKind::Busy => 16,
            FlowErrorKind::Io => 5,
            FlowErrorKind::Other(e) => *e,
        }
    }

    /// The rule cannot be expressed on this device: keep it in software.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, FlowErrorKind::NotSup | FlowErrorKind::Invalid)
    }

    /// The device can no longer be used for offload.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FlowErrorKind::NoSys | FlowErrorKind::Io)
    }
}

/// A failed rte_flow operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowError {
    /// The errno class.
    pub kind: FlowErrorKind,
    /// What the PMD blamed.
    pub target: ErrorTarget,
    /// The PMD's static message (`rte_flow_error.message`), if it gave one.
    pub message: &'static str,
}

impl FlowError {
    /// An error of `kind` with no detail.
    pub fn new(kind: FlowErrorKind, message: &'static str) -> Self {
        FlowError {
            kind,
            target: ErrorTarget::Unspecified,
            message,
        }
    }
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rte_flow error {:?} (errno {}) on {:?}: {}",
            self.kind,
            self.kind.errno(),
            self.target,
            self.message
        )
    }
}

impl core::error::Error for FlowError {}
