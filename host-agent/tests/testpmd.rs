//! `capoctl offload --testpmd` prints commands that DPDK's testpmd (Debian's
//! dpdk-dev, 22.11) parses: each command is fed to a real testpmd on a `net_null` port,
//! where a command that parses fails in the PMD ("Function not implemented": net_null
//! has no flow support) and one that does not parse is "Bad arguments". The two are
//! told apart per command, and a deliberately broken command proves the check can
//! fail. Skipped, with the reason, without dpdk-testpmd or where its EAL cannot start
//! (required in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::{capoctl, seed_dir};

const TESTPMD: &str = "dpdk-testpmd";

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Parsed, then refused by the PMD.
    PmdRefused(String),
    /// Parsed and created.
    Created,
    /// Not parsed.
    BadArguments,
    /// Neither: testpmd said something else.
    Other(String),
}

/// Runs testpmd interactively on a `net_null` port with `commands` on stdin; `None`
/// with the reason when it cannot run here.
fn run_testpmd(commands: &[String]) -> Result<Vec<(String, Outcome)>, String> {
    // One file for stdout and stderr: testpmd echoes commands on one and the PMD's
    // complaints on the other, and the transcript needs both in order.
    let transcript = std::env::temp_dir().join(format!("capo-testpmd-{}.log", std::process::id()));
    let file = std::fs::File::create(&transcript).unwrap();
    let mut child = match Command::new(TESTPMD)
        .args([
            "--no-huge",
            "-m",
            "1024",
            "--no-pci",
            "--vdev",
            "net_null0",
            "-l",
            "0,1",
            "--file-prefix",
            &format!("capo-testpmd-{}", std::process::id()),
            "--",
            "-i",
            "--total-num-mbufs=2048",
        ])
        .stdin(Stdio::piped())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Err(format!(
                "{TESTPMD} cannot run ({e}): install Debian's dpdk-dev"
            ))
        }
    };
    {
        let mut stdin = child.stdin.take().unwrap();
        for c in commands {
            writeln!(stdin, "{c}").unwrap();
        }
        writeln!(stdin, "quit").unwrap();
    }
    child.wait().unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&transcript).unwrap()).into_owned();
    let _ = std::fs::remove_file(&transcript);
    if !text.contains("testpmd> ") {
        return Err(format!(
            "{TESTPMD} did not reach its prompt (EAL): {}",
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    // Each prompt echoes the command, then what testpmd answered, up to the next one.
    let mut results = Vec::new();
    for chunk in text.split("testpmd> ").skip(1) {
        let mut lines = chunk.lines();
        let cmd = lines.next().unwrap_or("").trim().to_string();
        if cmd.is_empty() || cmd == "quit" {
            continue;
        }
        let answer: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        let joined = answer.join(" | ");
        let outcome = if answer.iter().any(|l| l.contains("Bad arguments")) {
            Outcome::BadArguments
        } else if let Some(l) = answer.iter().find(|l| l.contains("Caught PMD error")) {
            Outcome::PmdRefused(l.to_string())
        } else if answer.iter().any(|l| l.contains("created")) {
            Outcome::Created
        } else {
            Outcome::Other(joined)
        };
        results.push((cmd, outcome));
    }
    Ok(results)
}

fn script(profile: &str) -> Vec<String> {
    let (rc, out, err) = capoctl(&[
        "--resources",
        seed_dir().to_str().unwrap(),
        "--node",
        "kind-worker2",
        "offload",
        "--testpmd",
        "--nic",
        profile,
    ]);
    assert_eq!(rc, 0, "{err}");
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn testpmd_parses_every_planned_command() {
    let mut commands = Vec::new();
    for profile in ["mlx5:4096", "e810:4096", "cnxk:4096"] {
        let s = script(profile);
        // The drop-only profiles may have nothing to install for the seed.
        assert!(
            !s.is_empty() || profile != "mlx5:4096",
            "{profile}: no command"
        );
        commands.extend(s);
    }
    // Every item and action kind capo emits, including ranges and IPv6 masks.
    commands.push(
        "flow create 0 group 1 priority 3 ingress pattern eth type spec 0x800 type mask 0xffff / \
         ipv4 src spec 10.0.0.0 src mask 255.255.255.0 proto spec 0x6 proto mask 0xff / \
         tcp dst spec 8000 dst last 8080 dst mask 65535 flags spec 0x2 flags mask 0x12 / \
         end actions mark id 4194309 / count identifier 7 / rss queues 0 end / end"
            .into(),
    );
    commands.push(
        "flow create 0 group 0 priority 0 ingress pattern eth / ipv6 dst spec fd00::1 \
         dst mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff has_frag_ext spec 0 has_frag_ext mask 1 / \
         udp dst spec 53 dst mask 65535 / end actions drop / end"
            .into(),
    );
    commands.push(
        "flow create 0 group 0 priority 0 ingress pattern eth / ipv6 / icmp6 type spec 128 \
         type mask 0xff code spec 0 code mask 0xff / end actions queue index 0 / end"
            .into(),
    );
    // The check must be able to fail: a command testpmd cannot parse.
    let broken =
        "flow create 0 ingress pattern eth / ipv4 src spec 10.0.0 / end actions drop / end";
    commands.push(broken.into());
    let results = match run_testpmd(&commands) {
        Ok(r) => r,
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    assert_eq!(results.len(), commands.len(), "{results:#?}");
    for ((sent, (echoed, outcome)), i) in commands.iter().zip(&results).zip(0..) {
        assert_eq!(
            sent.split_whitespace().collect::<Vec<_>>(),
            echoed.split_whitespace().collect::<Vec<_>>()
        );
        if i == commands.len() - 1 {
            assert_eq!(
                *outcome,
                Outcome::BadArguments,
                "the broken command must not parse"
            );
            continue;
        }
        match outcome {
            // Parsed: net_null refuses every rule in the PMD (ENOSYS).
            Outcome::PmdRefused(why) => {
                assert!(why.contains("Function not implemented"), "{sent}: {why}")
            }
            other => panic!("{sent}: {other:?}"),
        }
    }
}
