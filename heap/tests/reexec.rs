//! The re-execution for real: this test runs its own binary, which executes itself
//! again with the tunable, and reports what the second incarnation found.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const OUT_VAR: &str = "CAPO_HEAP_TEST_OUT";
const TEST: &str = "the_binary_executes_itself_again_and_hands_on_the_environment_it_got";

#[test]
fn the_binary_executes_itself_again_and_hands_on_the_environment_it_got() {
    if let Some(out) = std::env::var_os(OUT_VAR) {
        // The child, in its first incarnation (which executes itself again and never
        // comes back here) or its second.
        let pages = capo_heap::huge_page_heap();
        // glibc serves a block this large from a mapping of its own, which it advises
        // for transparent huge pages when the tunable took (the `hg` flag).
        let block = vec![1_u8; 64 << 20];
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let flags = capo_heap::vm_flags_at(&smaps, block.as_ptr() as usize).unwrap_or_default();
        let report = [
            format!("pages={pages}"),
            format!("pid={}", std::process::id()),
            format!(
                "comm={}",
                std::fs::read_to_string("/proc/self/comm").unwrap().trim()
            ),
            format!("flags={flags}"),
            format!(
                "now={}",
                std::env::var("GLIBC_TUNABLES").unwrap_or_default()
            ),
            format!(
                "marker={}",
                std::env::var_os(capo_heap::STARTED_WITH_VAR).is_some()
                    || std::env::var_os(capo_heap::STARTS_VAR).is_some()
            ),
        ];
        std::fs::write(out, report.join("\n")).unwrap();
        return;
    }
    // Started without the tunable (the binary asks for it), and with it set by
    // whoever started the binary (the binary checks that glibc applied it).
    for started in ["glibc.malloc.arena_max=4", "glibc.malloc.hugetlb=1"] {
        run_child(started);
    }
}

/// Runs this test's binary as a child started with `GLIBC_TUNABLES=started` and
/// checks what it reported.
fn run_child(started: &str) {
    let expected = capo_heap::decide(&capo_heap::Start {
        switch: None,
        tunables: Ok(Some(started.to_string())),
        started_with: None,
        ..capo_heap::observe()
    });
    let out = std::env::temp_dir().join(format!("capo-heap-reexec-{}", std::process::id()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--test-threads", "1"])
        .env(OUT_VAR, &out)
        .env("GLIBC_TUNABLES", started)
        .env_remove("CAPO_HUGE_PAGES")
        .env_remove(capo_heap::STARTED_WITH_VAR)
        .env_remove(capo_heap::STARTS_VAR)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let report = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .to_string()
    };
    // One process all along, under its own name, the environment handed on as it came.
    assert_eq!(field("pid"), pid.to_string(), "{report}");
    assert_eq!(field("now"), started, "{report}");
    assert_eq!(field("marker"), "false", "{report}");
    let exe = std::env::current_exe().unwrap();
    let comm: String = exe
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    assert_eq!(field("comm"), comm, "{report}");
    match expected {
        capo_heap::Decision::Reexecute(_)
        | capo_heap::Decision::Keep(capo_heap::HeapPages::Huge(_)) => {
            // glibc read the tunable: its large blocks are advised for huge pages. Or,
            // about once in a thousand runs of a binary glibc 2.36 fails half the
            // time, it failed in all ten starts and the binary says so.
            let advised = field("flags").split_whitespace().any(|f| f == "hg");
            if advised {
                assert_eq!(
                    field("pages"),
                    "transparent huge pages (glibc.malloc.hugetlb=1)",
                    "{report}"
                );
            } else {
                assert!(
                    field("pages").starts_with(
                        "default pages: glibc did not apply glibc.malloc.hugetlb=1 in 10 starts"
                    ),
                    "{report}"
                );
            }
        }
        capo_heap::Decision::Keep(pages) => {
            eprintln!("nothing to ask for on this machine ({pages}): checked that the binary says so and carries on");
            assert_eq!(field("pages"), pages.to_string(), "{report}");
        }
    }
}
