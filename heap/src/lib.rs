//! Transparent huge pages for the heap the classifier's programs and address
//! index live in.
//!
//! A first packet reads a few lines of a program and of the index chosen at
//! random among tens of MiB, so on 4 KiB pages most reads also miss the TLB.
//! glibc's malloc backs its heap with transparent huge pages when the tunable
//! `glibc.malloc.hugetlb=1` is set (glibc 2.35 and later; the kernel's THP mode
//! `madvise` or `always`). Tunables are read when the program is loaded, so a
//! binary started without it executes itself again with it added, first thing in
//! `main`, before any thread or file exists. The process keeps its id, arguments
//! and inherited descriptors (Felix's fds 3 and 4 included). `CAPO_HUGE_PAGES=off`
//! leaves the heap as it is.

use std::ffi::OsString;
use std::fmt;

mod glibc;

/// Set to `off` to keep the heap on the kernel's default pages.
pub const HUGE_PAGES_VAR: &str = "CAPO_HUGE_PAGES";
/// glibc's tunable: 1 asks for transparent huge pages (`madvise`) on the heap.
pub const TUNABLE: &str = "glibc.malloc.hugetlb";
/// The kernel's transparent huge page mode.
const THP_MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// The first glibc with [`TUNABLE`].
const FIRST_GLIBC: (u32, u32) = (2, 35);

/// What backs the heap, as decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapPages {
    /// glibc asks for transparent huge pages on its heap.
    Huge,
    /// The kernel gives every anonymous mapping transparent huge pages (THP
    /// `always`); nothing to ask for.
    KernelAlways,
    /// The kernel's default pages: the reason.
    Default(String),
}

impl fmt::Display for HeapPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeapPages::Huge => write!(f, "transparent huge pages ({TUNABLE}=1)"),
            HeapPages::KernelAlways => {
                write!(
                    f,
                    "transparent huge pages (the kernel's THP mode is always)"
                )
            }
            HeapPages::Default(why) => write!(f, "default pages: {why}"),
        }
    }
}

/// What the process found about itself at start.
#[derive(Debug, Clone)]
pub struct Start {
    /// [`HUGE_PAGES_VAR`].
    pub switch: Option<String>,
    /// `GLIBC_TUNABLES`.
    pub tunables: Option<String>,
    /// glibc's version (`gnu_get_libc_version`), none on another C library.
    pub glibc: Option<String>,
    /// The contents of the kernel's THP mode file, or why it could not be read.
    pub thp_mode: Result<String, String>,
}

/// What to do about the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Execute this binary again with `GLIBC_TUNABLES` set to this.
    Reexecute(String),
    /// Carry on: the heap is as it will stay.
    Keep(HeapPages),
}

/// The decision for a process that found `start` (pure: every input is in it).
pub fn decide(start: &Start) -> Decision {
    if start
        .switch
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("off"))
    {
        return Decision::Keep(HeapPages::Default(format!("{HUGE_PAGES_VAR}=off")));
    }
    let mode = match &start.thp_mode {
        Ok(text) => match selected_mode(text) {
            Some(mode) => mode,
            None => {
                return Decision::Keep(HeapPages::Default(format!(
                    "no THP mode selected in {THP_MODE_FILE}"
                )))
            }
        },
        Err(why) => return Decision::Keep(HeapPages::Default(why.clone())),
    };
    if mode == "never" {
        return Decision::Keep(HeapPages::Default(
            "the kernel's THP mode is never".to_string(),
        ));
    }
    if let Some(value) = start.tunables.as_deref().and_then(tunable_value) {
        // Set by whoever started us (or by our own re-execution): respected.
        return Decision::Keep(match value {
            "1" => HeapPages::Huge,
            _ if mode == "always" => HeapPages::KernelAlways,
            other => HeapPages::Default(format!("GLIBC_TUNABLES sets {TUNABLE}={other}")),
        });
    }
    if mode == "always" {
        return Decision::Keep(HeapPages::KernelAlways);
    }
    match start.glibc.as_deref() {
        None => Decision::Keep(HeapPages::Default("the C library is not glibc".to_string())),
        Some(v) if !at_least(v, FIRST_GLIBC) => Decision::Keep(HeapPages::Default(format!(
            "glibc {v} has no {TUNABLE} (2.35 and later)"
        ))),
        Some(_) => Decision::Reexecute(with_tunable(start.tunables.as_deref())),
    }
}

/// The mode in brackets (`always [madvise] never` → `madvise`).
fn selected_mode(text: &str) -> Option<&str> {
    let open = text.find('[')?;
    let close = open + text[open..].find(']')?;
    Some(&text[open + 1..close])
}

/// [`TUNABLE`]'s value in a `GLIBC_TUNABLES` string (`a=1:b=2`), the last one
/// set winning as in glibc.
fn tunable_value(tunables: &str) -> Option<&str> {
    tunables
        .rsplit(':')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == TUNABLE)
        .map(|(_, value)| value)
}

/// `GLIBC_TUNABLES` with [`TUNABLE`]`=1` added to what was there.
fn with_tunable(tunables: Option<&str>) -> String {
    match tunables.filter(|t| !t.is_empty()) {
        Some(t) => format!("{t}:{TUNABLE}=1"),
        None => format!("{TUNABLE}=1"),
    }
}

/// Whether glibc version `v` (`2.36`) is at least `min`.
fn at_least(v: &str, min: (u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Reads what [`decide`] needs from the environment and the kernel.
pub fn observe() -> Start {
    Start {
        switch: std::env::var(HUGE_PAGES_VAR).ok(),
        tunables: std::env::var("GLIBC_TUNABLES").ok(),
        glibc: glibc::version(),
        thp_mode: std::fs::read_to_string(THP_MODE_FILE)
            .map_err(|e| format!("reading {THP_MODE_FILE}: {e}")),
    }
}

/// Puts the heap on transparent huge pages where it can, executing this binary
/// again when that takes glibc's tunable. Call it first in `main`, before any
/// thread starts; it returns only when the process carries on as it is (a failed
/// re-execution is reported in the result). Log the result once logging is up.
pub fn huge_page_heap() -> HeapPages {
    match decide(&observe()) {
        Decision::Keep(pages) => pages,
        Decision::Reexecute(tunables) => reexecute(&tunables),
    }
}

fn reexecute(tunables: &str) -> HeapPages {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| OsString::from("capo"));
    // /proc/self/exe is this very file even when the path was relative, a link,
    // or has been replaced on disk since.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    HeapPages::Default(format!(
        "executing /proc/self/exe again with {TUNABLE}=1 failed: {err}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(thp: &str) -> Start {
        Start {
            switch: None,
            tunables: None,
            glibc: Some("2.36".to_string()),
            thp_mode: Ok(format!("{thp}\n")),
        }
    }

    #[test]
    fn madvise_mode_without_the_tunable_reexecutes_with_it_added() {
        let s = start("always [madvise] never");
        assert_eq!(
            decide(&s),
            Decision::Reexecute("glibc.malloc.hugetlb=1".to_string())
        );
        let others = Start {
            tunables: Some("glibc.malloc.arena_max=2".to_string()),
            ..s
        };
        assert_eq!(
            decide(&others),
            Decision::Reexecute("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1".to_string())
        );
    }

    #[test]
    fn the_tunable_once_set_is_kept_so_the_reexecution_happens_once() {
        let s = Start {
            tunables: Some(with_tunable(None)),
            ..start("always [madvise] never")
        };
        assert_eq!(decide(&s), Decision::Keep(HeapPages::Huge));
        // Whoever started us chose otherwise: respected, the last setting winning.
        let zero = Start {
            tunables: Some("glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0".to_string()),
            ..s.clone()
        };
        assert_eq!(
            decide(&zero),
            Decision::Keep(HeapPages::Default(
                "GLIBC_TUNABLES sets glibc.malloc.hugetlb=0".to_string()
            ))
        );
        let always = Start {
            thp_mode: Ok("[always] madvise never".to_string()),
            ..zero
        };
        assert_eq!(decide(&always), Decision::Keep(HeapPages::KernelAlways));
    }

    #[test]
    fn nothing_to_ask_for_or_no_way_to_ask_keeps_the_process() {
        assert_eq!(
            decide(&start("[always] madvise never")),
            Decision::Keep(HeapPages::KernelAlways)
        );
        assert_eq!(
            decide(&start("always madvise [never]")),
            Decision::Keep(HeapPages::Default(
                "the kernel's THP mode is never".to_string()
            ))
        );
        let old = Start {
            glibc: Some("2.31".to_string()),
            ..start("always [madvise] never")
        };
        assert!(
            matches!(decide(&old), Decision::Keep(HeapPages::Default(w)) if w.contains("2.31"))
        );
        let musl = Start {
            glibc: None,
            ..start("always [madvise] never")
        };
        assert!(matches!(
            decide(&musl),
            Decision::Keep(HeapPages::Default(_))
        ));
        let unreadable = Start {
            thp_mode: Err("reading it: no such file".to_string()),
            ..start("")
        };
        assert_eq!(
            decide(&unreadable),
            Decision::Keep(HeapPages::Default("reading it: no such file".to_string()))
        );
        assert!(matches!(
            decide(&start("no brackets here")),
            Decision::Keep(HeapPages::Default(_))
        ));
    }

    #[test]
    fn the_switch_turns_it_off_whatever_else_holds() {
        let s = Start {
            switch: Some("OFF".to_string()),
            ..start("always [madvise] never")
        };
        assert_eq!(
            decide(&s),
            Decision::Keep(HeapPages::Default("CAPO_HUGE_PAGES=off".to_string()))
        );
        let on = Start {
            switch: Some("on".to_string()),
            ..s
        };
        assert!(matches!(decide(&on), Decision::Reexecute(_)));
    }

    #[test]
    fn glibc_versions_compare_by_number() {
        assert!(at_least("2.35", (2, 35)));
        assert!(at_least("2.40", (2, 35)));
        assert!(at_least("3.0", (2, 35)));
        assert!(!at_least("2.9", (2, 35)));
        assert!(!at_least("2.34", (2, 35)));
        assert!(!at_least("unknown", (2, 35)));
    }
}
