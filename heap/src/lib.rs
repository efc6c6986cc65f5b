//! Transparent huge pages for the heap the classifier's programs and address
//! index live in.
//!
//! A first packet reads a few lines of a program and of the index chosen at
//! random among tens of MiB, so on 4 KiB pages most reads also miss the TLB.
//! glibc's malloc backs its heap with transparent huge pages when the tunable
//! `glibc.malloc.hugetlb=1` is set (glibc 2.35 and later; the kernel's THP mode
//! `madvise` or `always`). Tunables are read when the program is loaded, so a
//! binary started without it executes itself again with it added, first thing in
//! `main`, before any thread or file exists. The process keeps its id, name,
//! arguments and inherited descriptors (Felix's fds 3 and 4 included); once loaded
//! it puts `GLIBC_TUNABLES` back as it found it, so the processes it starts get the
//! environment it got. `CAPO_HUGE_PAGES=off` asks for nothing.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

mod glibc;
pub mod maps;

pub use maps::vm_flags_at;

/// Set to `off` to ask for nothing (a `GLIBC_TUNABLES` set by whoever started the
/// binary still applies).
pub const HUGE_PAGES_VAR: &str = "CAPO_HUGE_PAGES";
/// glibc's tunable: 1 asks for transparent huge pages (`madvise`) on the heap, 2
/// for hugetlbfs pages.
pub const TUNABLE: &str = "glibc.malloc.hugetlb";
/// Set on the re-execution to how the binary found `GLIBC_TUNABLES` (`+` and its
/// value, or `-` when unset), put back once glibc has read ours; while it is set, a
/// tunable the loader dropped is not asked for again.
pub const STARTED_WITH_VAR: &str = "CAPO_HEAP_STARTED_WITH_GLIBC_TUNABLES";
/// The kernel's transparent huge page mode.
const THP_MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// The first glibc with [`TUNABLE`].
const FIRST_GLIBC: (u32, u32) = (2, 35);

/// What backs the heap, as decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapPages {
    /// glibc backs its heap with huge pages: [`TUNABLE`]'s value (1 transparent,
    /// 2 hugetlbfs).
    Huge(String),
    /// The kernel gives every anonymous mapping transparent huge pages (THP
    /// `always`); nothing to ask for.
    KernelAlways,
    /// The kernel's default pages: the reason.
    Default(String),
}

impl fmt::Display for HeapPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeapPages::Huge(v) if v == "1" => {
                write!(f, "transparent huge pages ({TUNABLE}=1)")
            }
            HeapPages::Huge(v) => write!(f, "huge pages ({TUNABLE}={v})"),
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
    /// `GLIBC_TUNABLES`: unset, its text, or not UTF-8 (`Err`).
    pub tunables: Result<Option<String>, ()>,
    /// [`STARTED_WITH_VAR`]: set when this process is the re-execution.
    pub started_with: Option<String>,
    /// Secure-execution mode (`AT_SECURE`: setuid, file capabilities), where
    /// glibc ignores the tunable.
    pub secure: bool,
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
    let keep_default = |why: String| Decision::Keep(HeapPages::Default(why));
    match start.glibc.as_deref() {
        None => return keep_default("the C library is not glibc".to_string()),
        Some(v) if !at_least(v, FIRST_GLIBC) => {
            return keep_default(format!("glibc {v} has no {TUNABLE} (2.35 and later)"))
        }
        Some(_) => {}
    }
    let Ok(tunables) = start.tunables.as_ref() else {
        return keep_default("GLIBC_TUNABLES is not UTF-8; left as it is".to_string());
    };
    let mode = match &start.thp_mode {
        Ok(text) => selected_mode(text),
        Err(why) => Err(why.clone()),
    };
    if let Some(value) = tunables.as_deref().and_then(tunable_value) {
        // Set by whoever started us, or by our own re-execution: respected.
        return Decision::Keep(match (value, mode.as_deref()) {
            ("1", Ok("never")) => HeapPages::Default("the kernel's THP mode is never".to_string()),
            // glibc advises nothing then; the kernel backs the heap all the same.
            ("1", Ok("always")) => HeapPages::KernelAlways,
            ("1", Err(why)) => HeapPages::Default(why.clone()),
            ("1" | "2", _) => HeapPages::Huge(value.to_string()),
            (_, Ok("always")) => HeapPages::KernelAlways,
            (other, _) => HeapPages::Default(format!("GLIBC_TUNABLES sets {TUNABLE}={other}")),
        });
    }
    if start.started_with.is_some() {
        return keep_default(format!(
            "{TUNABLE} did not survive this binary's re-execution (the loader dropped it)"
        ));
    }
    if start
        .switch
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("off"))
    {
        return keep_default(format!("{HUGE_PAGES_VAR}=off"));
    }
    match mode.as_deref() {
        Err(why) => keep_default(why.clone()),
        Ok("never") => keep_default("the kernel's THP mode is never".to_string()),
        Ok("always") => Decision::Keep(HeapPages::KernelAlways),
        Ok(_) if start.secure => keep_default(
            "secure-execution mode (setuid or file capabilities): glibc ignores its tunables"
                .to_string(),
        ),
        Ok(_) => Decision::Reexecute(with_tunable(tunables.as_deref())),
    }
}

/// The mode in brackets (`always [madvise] never` → `madvise`).
fn selected_mode(text: &str) -> Result<String, String> {
    let open = text.find('[');
    let close = open.and_then(|o| text[o..].find(']').map(|c| o + c));
    match (open, close) {
        (Some(o), Some(c)) => Ok(text[o + 1..c].to_string()),
        _ => Err(format!("no THP mode selected in {THP_MODE_FILE}")),
    }
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
        tunables: match std::env::var("GLIBC_TUNABLES") {
            Ok(t) => Ok(Some(t)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(()),
        },
        started_with: std::env::var(STARTED_WITH_VAR).ok(),
        secure: glibc::secure_execution(),
        glibc: glibc::version(),
        thp_mode: std::fs::read_to_string(THP_MODE_FILE)
            .map_err(|e| format!("reading {THP_MODE_FILE}: {e}")),
    }
}

/// Set on the re-execution: how many times the binary has been started with the
/// tunable (see [`huge_page_heap`]).
pub const STARTS_VAR: &str = "CAPO_HEAP_STARTS";
/// Starts with the tunable before giving up on glibc applying it.
const MOST_STARTS: u32 = 10;
/// A block this large comes from a mapping of its own (glibc serves requests above
/// its largest mmap threshold, 32 MiB, with `mmap`), which glibc advises when it
/// applies the tunable. Reserved, never touched.
const PROBE_BYTES: usize = 33 << 20;

/// Puts the heap on transparent huge pages where it can, executing this binary
/// again when that takes glibc's tunable. Call it first in `main`, before any
/// thread starts; it returns only when the process carries on as it is (a failed
/// re-execution is reported in the result). Log the result once logging is up.
///
/// Some glibc releases (2.36, Debian 12's, among them; fixed upstream since) check
/// the kernel's THP mode by comparing a buffer they do not terminate, so a process
/// given the tunable fails to apply it by chance (about one start in three for a
/// debug build here). A process given the tunable (by its own re-execution or by
/// whoever started it) therefore checks that glibc advises its large blocks, and
/// starts again if not, ten times in all at most.
pub fn huge_page_heap() -> HeapPages {
    let start = observe();
    match decide(&start) {
        Decision::Reexecute(tunables) => {
            let found = found_as(start.tunables.ok().flatten().as_deref());
            reexecute(&tunables, &found, 1)
        }
        Decision::Keep(HeapPages::Huge(v))
            if v == "1" && glibc_advises_its_blocks() == Some(false) =>
        {
            let starts: u32 = std::env::var(STARTS_VAR)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            match &start.tunables {
                Ok(Some(tunables)) if starts < MOST_STARTS => {
                    // Set by whoever started us: found as it is, handed on as it was.
                    let found = start
                        .started_with
                        .clone()
                        .unwrap_or_else(|| found_as(Some(tunables)));
                    reexecute(tunables, &found, starts + 1)
                }
                _ => {
                    restore_environment(start.started_with.as_deref());
                    HeapPages::Default(format!(
                        "glibc did not apply {TUNABLE}=1 in {starts} starts (some releases fail to by chance)"
                    ))
                }
            }
        }
        Decision::Keep(pages) => {
            restore_environment(start.started_with.as_deref());
            pages
        }
    }
}

/// How [`STARTED_WITH_VAR`] records `GLIBC_TUNABLES` as the binary found it.
fn found_as(tunables: Option<&str>) -> String {
    tunables.map_or_else(|| "-".to_string(), |t| format!("+{t}"))
}

/// `GLIBC_TUNABLES` as [`STARTED_WITH_VAR`] recorded it (none: unset).
fn as_found(recorded: &str) -> Option<&str> {
    recorded.strip_prefix('+')
}

/// In the re-executed process, once the loader has read the tunables: the
/// processes this one starts get the environment it was started with.
fn restore_environment(started_with: Option<&str>) {
    let Some(recorded) = started_with else {
        return;
    };
    std::env::remove_var(STARTED_WITH_VAR);
    std::env::remove_var(STARTS_VAR);
    match as_found(recorded) {
        Some(tunables) => std::env::set_var("GLIBC_TUNABLES", tunables),
        None => std::env::remove_var("GLIBC_TUNABLES"),
    }
}

/// Whether glibc advises its large blocks for transparent huge pages: the mapping
/// of a fresh one carries the `hg` flag in `/proc/self/smaps`. None when that
/// cannot be read (no check, so no re-execution on its account).
fn glibc_advises_its_blocks() -> Option<bool> {
    let probe = vec![0_u8; PROBE_BYTES];
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let flags = vm_flags_at(&smaps, probe.as_ptr() as usize)?;
    Some(flags.split_whitespace().any(|f| f == "hg"))
}

fn reexecute(tunables: &str, started_with: &str, starts: u32) -> HeapPages {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| OsString::from("capo"));
    let rest: Vec<OsString> = args.collect();
    // The binary's own path first: the kernel names a process after the file it
    // executes, and /proc/self/exe would name it `exe`. /proc/self/exe when that
    // path is gone (the binary replaced on disk since).
    let mut failures = Vec::new();
    for exe in [
        std::env::current_exe().ok(),
        Some(PathBuf::from("/proc/self/exe")),
    ]
    .into_iter()
    .flatten()
    {
        let err = std::process::Command::new(&exe)
            .arg0(&argv0)
            .args(&rest)
            .env("GLIBC_TUNABLES", tunables)
            .env(STARTED_WITH_VAR, started_with)
            .env(STARTS_VAR, starts.to_string())
            .exec();
        failures.push(format!("{}: {err}", exe.display()));
    }
    // A re-executed process that could not go on again puts back what it found.
    restore_environment(Some(started_with).filter(|_| starts > 1));
    HeapPages::Default(format!(
        "executing this binary again with {TUNABLE}=1 failed: {}",
        failures.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(thp: &str) -> Start {
        Start {
            switch: None,
            tunables: Ok(None),
            started_with: None,
            secure: false,
            glibc: Some("2.36".to_string()),
            thp_mode: Ok(format!("{thp}\n")),
        }
    }

    fn default_because(why: &str) -> Decision {
        Decision::Keep(HeapPages::Default(why.to_string()))
    }

    #[test]
    fn madvise_mode_without_the_tunable_reexecutes_with_it_added() {
        let s = start("always [madvise] never");
        assert_eq!(
            decide(&s),
            Decision::Reexecute("glibc.malloc.hugetlb=1".to_string())
        );
        let others = Start {
            tunables: Ok(Some("glibc.malloc.arena_max=2".to_string())),
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
            tunables: Ok(Some(with_tunable(None))),
            started_with: Some("-".to_string()),
            ..start("always [madvise] never")
        };
        assert_eq!(decide(&s), Decision::Keep(HeapPages::Huge("1".to_string())));
        // The loader dropped it (secure-execution mode): never a second time.
        let dropped = Start {
            tunables: Ok(None),
            ..s.clone()
        };
        assert!(matches!(
            decide(&dropped),
            Decision::Keep(HeapPages::Default(w)) if w.contains("did not survive")
        ));
        // Whoever started us chose otherwise: respected, the last setting winning.
        let zero = Start {
            tunables: Ok(Some(
                "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0".to_string(),
            )),
            started_with: None,
            ..s.clone()
        };
        assert_eq!(
            decide(&zero),
            default_because("GLIBC_TUNABLES sets glibc.malloc.hugetlb=0")
        );
        let always = Start {
            thp_mode: Ok("[always] madvise never".to_string()),
            ..zero
        };
        assert_eq!(decide(&always), Decision::Keep(HeapPages::KernelAlways));
        let one_always = Start {
            tunables: Ok(Some("glibc.malloc.hugetlb=1".to_string())),
            ..always
        };
        assert_eq!(decide(&one_always), Decision::Keep(HeapPages::KernelAlways));
        // hugetlbfs pages need no THP; transparent ones do.
        let two = Start {
            tunables: Ok(Some("glibc.malloc.hugetlb=2".to_string())),
            ..start("always madvise [never]")
        };
        assert_eq!(
            decide(&two),
            Decision::Keep(HeapPages::Huge("2".to_string()))
        );
        let one_never = Start {
            tunables: Ok(Some("glibc.malloc.hugetlb=1".to_string())),
            ..two
        };
        assert_eq!(
            decide(&one_never),
            default_because("the kernel's THP mode is never")
        );
    }

    #[test]
    fn nothing_to_ask_for_or_no_way_to_ask_keeps_the_process() {
        assert_eq!(
            decide(&start("[always] madvise never")),
            Decision::Keep(HeapPages::KernelAlways)
        );
        assert_eq!(
            decide(&start("always madvise [never]")),
            default_because("the kernel's THP mode is never")
        );
        let old = Start {
            glibc: Some("2.31".to_string()),
            tunables: Ok(Some("glibc.malloc.hugetlb=1".to_string())),
            ..start("always [madvise] never")
        };
        assert!(
            matches!(decide(&old), Decision::Keep(HeapPages::Default(w)) if w.contains("2.31"))
        );
        let musl = Start {
            glibc: None,
            ..start("always [madvise] never")
        };
        assert_eq!(decide(&musl), default_because("the C library is not glibc"));
        let secure = Start {
            secure: true,
            ..start("always [madvise] never")
        };
        assert!(matches!(
            decide(&secure),
            Decision::Keep(HeapPages::Default(w)) if w.contains("secure-execution")
        ));
        let unreadable = Start {
            thp_mode: Err("reading it: no such file".to_string()),
            ..start("")
        };
        assert_eq!(
            decide(&unreadable),
            default_because("reading it: no such file")
        );
        assert!(matches!(
            decide(&start("no brackets here")),
            Decision::Keep(HeapPages::Default(w)) if w.contains("no THP mode")
        ));
        let not_utf8 = Start {
            tunables: Err(()),
            ..start("always [madvise] never")
        };
        assert!(matches!(
            decide(&not_utf8),
            Decision::Keep(HeapPages::Default(w)) if w.contains("not UTF-8")
        ));
    }

    #[test]
    fn the_switch_asks_for_nothing_but_keeps_what_was_set() {
        let s = Start {
            switch: Some("OFF".to_string()),
            ..start("always [madvise] never")
        };
        assert_eq!(decide(&s), default_because("CAPO_HUGE_PAGES=off"));
        let set = Start {
            tunables: Ok(Some("glibc.malloc.hugetlb=1".to_string())),
            ..s.clone()
        };
        assert_eq!(
            decide(&set),
            Decision::Keep(HeapPages::Huge("1".to_string()))
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

    #[test]
    fn the_tunables_found_are_recorded_set_or_unset() {
        assert_eq!(found_as(None), "-");
        assert_eq!(as_found(&found_as(None)), None);
        assert_eq!(as_found(&found_as(Some(""))), Some(""));
        assert_eq!(
            as_found(&found_as(Some("glibc.malloc.arena_max=4"))),
            Some("glibc.malloc.arena_max=4")
        );
    }

    #[test]
    fn the_log_line_names_the_pages() {
        assert_eq!(
            HeapPages::Huge("1".to_string()).to_string(),
            "transparent huge pages (glibc.malloc.hugetlb=1)"
        );
        assert_eq!(
            HeapPages::Huge("2".to_string()).to_string(),
            "huge pages (glibc.malloc.hugetlb=2)"
        );
    }
}
