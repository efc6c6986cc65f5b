//! The binaries as Felix runs them: the driver on fds 3 and 4, the agent on the
//! felix-api-proxy socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capo_felix::frame::FrameReader;
use capo_proto::felix::v3_32 as pb;
use prost::Message;

mod common;
use common::{fixture, scratch};

/// Starts the driver the way Felix does: no arguments, frames on fd 3, status on
/// fd 4. bash moves stdin to fd 3 and a file to fd 4.
fn spawn_driver(status_file: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "exec \"$0\" 3<&0 4>\"{}\" 0</dev/null",
            status_file.display()
        ))
        .arg(env!("CARGO_BIN_EXE_capo-felix-driver"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut s).ok();
    }
    s
}

fn status_frames(bytes: &[u8]) -> usize {
    FrameReader::new(bytes)
        .map(|f| {
            let f = f.unwrap();
            let m = pb::FromDataplane::decode(f.bytes.as_slice()).unwrap();
            assert!(matches!(
                m.payload,
                Some(pb::from_dataplane::Payload::ProcessStatusUpdate(_))
            ));
        })
        .count()
}

#[test]
fn driver_syncs_from_fd3_reports_on_fd4_and_exits_on_eof() {
    let dir = scratch("eof");
    let status = dir.join("status");
    let record = dir.join("record.frames");
    let mut child = spawn_driver(
        &status,
        &[
            ("CAPO_RECORD", record.to_str().unwrap()),
            ("CAPO_STATUS_INTERVAL", "50ms"),
        ],
    );
    let frames = std::fs::read(fixture("seed.master.frames")).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&frames).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(stdin); // Felix goes away: EOF on fd 3.
    let st =
        wait_with_timeout(&mut child, Duration::from_secs(10)).expect("driver did not exit on EOF");
    let log = stderr_of(&mut child);
    assert!(st.success(), "{log}");
    assert!(log.contains("in sync with Felix"), "{log}");
    assert!(status_frames(&std::fs::read(&status).unwrap()) >= 1);
    // The recording is byte for byte what Felix wrote.
    assert_eq!(std::fs::read(&record).unwrap(), frames);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn driver_exits_nonzero_on_a_protocol_violation() {
    let dir = scratch("violation");
    let mut child = spawn_driver(&dir.join("status"), &[]);
    let mut bytes = std::fs::read(fixture("seed.master.frames")).unwrap();
    let bad = pb::ToDataplane {
        sequence_number: 8,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: "s:nobody-sent-this".into(),
                added_members: vec!["10.1.1.1/32".into()],
                removed_members: vec![],
            },
        )),
    };
    bytes.extend(capo_felix::frame::encode_frame(&bad));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes).unwrap();
    let st = wait_with_timeout(&mut child, Duration::from_secs(10)).expect("driver did not exit");
    let log = stderr_of(&mut child);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("s:nobody-sent-this") && log.contains("frame 8"),
        "{log}"
    );
    drop(stdin);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn driver_exits_within_4s_of_sigterm() {
    let dir = scratch("sigterm");
    let mut child = spawn_driver(&dir.join("status"), &[]);
    let _stdin = child.stdin.take().unwrap(); // kept open: the driver blocks reading
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let rc = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(rc.success());
    let st = wait_with_timeout(&mut child, Duration::from_secs(4))
        .expect("still running 4 s after SIGTERM");
    assert!(st.success(), "{}", stderr_of(&mut child));
    assert!(start.elapsed() < Duration::from_secs(4));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn driver_without_felix_fds_says_so() {
    // fds 3 and 4 closed explicitly: a test runner may hold others there.
    let out = Command::new("bash")
        .arg("-c")
        .arg("exec \"$0\" 3<&- 4>&-")
        .arg(env!("CARGO_BIN_EXE_capo-felix-driver"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be started by Felix"), "{err}");
}

fn connect(path: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("cannot connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn agent_serves_one_felix_connection_after_another() {
    let dir = scratch("socket");
    let sock = dir.join("felix-dataplane.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--felix-socket",
            sock.to_str().unwrap(),
            "--status-interval",
            "50ms",
            "--api-socket",
            dir.join("api.sock").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let frames = std::fs::read(fixture("seed.master.frames")).unwrap();

    // First connection: a full sync; status frames come back on the socket.
    let mut c = connect(&sock);
    c.write_all(&frames).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = [0u8; 8];
    c.read_exact(&mut header).unwrap();
    let len = u64::from_le_bytes(header) as usize;
    let mut body = vec![0; len];
    c.read_exact(&mut body).unwrap();
    let m = pb::FromDataplane::decode(body.as_slice()).unwrap();
    assert!(matches!(
        m.payload,
        Some(pb::from_dataplane::Payload::ProcessStatusUpdate(_))
    ));
    drop(c);

    // Second connection: a violation makes the agent drop it (resync).
    let mut c = connect(&sock);
    let mut bad = frames.clone();
    bad.extend(capo_felix::frame::encode_frame(&pb::ToDataplane {
        sequence_number: 8,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: "s:unknown".into(),
                ..Default::default()
            },
        )),
    }));
    c.write_all(&bad).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    // The agent closes its side: reading reaches EOF (after any status frames).
    let read = c.read_to_end(&mut sink);
    assert!(read.is_ok(), "connection not closed by the agent: {read:?}");
    drop(c);

    // Third connection still works.
    let mut c = connect(&sock);
    c.write_all(&frames).unwrap();
    c.read_exact(&mut header).unwrap();
    drop(c);

    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let st = wait_with_timeout(&mut agent, Duration::from_secs(4)).expect("agent ignored SIGTERM");
    let log = stderr_of(&mut agent);
    assert!(st.success(), "{log}");
    assert!(
        log.contains("dropping the Felix connection to force a resync"),
        "{log}"
    );
    assert!(log.matches("in sync with Felix").count() >= 2, "{log}");
    assert!(!sock.exists(), "socket file removed on shutdown");
    std::fs::remove_dir_all(&dir).ok();
}

/// A Felix connection that stops mid-frame is dropped after the stall timeout; one
/// that is merely idle between frames is kept; and a new connection replaces the one
/// being served, so a dead peer never holds the socket.
#[test]
fn stalled_felix_connections_are_dropped_and_new_ones_replace_old() {
    let dir = scratch("stall");
    let sock = dir.join("felix-dataplane.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--felix-socket",
            sock.to_str().unwrap(),
            "--felix-stall-timeout",
            "1s",
            "--status-interval",
            "10s",
            "--no-api",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let frames = std::fs::read(fixture("seed.master.frames")).unwrap();

    // Idle between frames (a whole sync, then silence past the stall timeout): kept.
    let mut idle = connect(&sock);
    idle.write_all(&frames).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    idle.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    match idle.read(&mut buf) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        Ok(n) => assert!(n > 0, "an idle connection was closed"),
    }

    // A new connection replaces it (the old one is closed by the agent) ...
    let mut stuck = connect(&sock);
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    assert!(
        idle.read_to_end(&mut rest).is_ok(),
        "old connection not closed"
    );
    // ... and stops mid-frame: half a header, then nothing. Dropped within ~1 s.
    stuck.write_all(&frames[..4]).unwrap();
    let t = Instant::now();
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    assert!(
        stuck.read_to_end(&mut rest).is_ok(),
        "stalled connection not dropped"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The next Felix is served.
    let mut c = connect(&sock);
    c.write_all(&frames).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(300));

    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let st = wait_with_timeout(&mut agent, Duration::from_secs(4)).expect("agent ignored SIGTERM");
    let log = stderr_of(&mut agent);
    assert!(st.success(), "{log}");
    assert!(
        log.contains("a new Felix connection replaces the current one"),
        "{log}"
    );
    assert!(
        log.contains("the peer stalled after 4 of 8 header bytes"),
        "{log}"
    );
    assert!(log.matches("in sync with Felix").count() >= 2, "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A large node: a view of more than tonic's default 4 MiB reaches capoctl whole
/// (the reply carries the text once; capoctl accepts large replies).
#[test]
fn views_larger_than_four_mib_reach_capoctl() {
    let dir = scratch("bigview");
    let sock = dir.join("felix-dataplane.sock");
    let api_sock = dir.join("api.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--felix-socket",
            sock.to_str().unwrap(),
            "--api-socket",
            api_sock.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seed = std::fs::read(fixture("seed.master.frames")).unwrap();
    let ipset = FrameReader::new(seed.as_slice())
        .map(|f| pb::ToDataplane::decode(f.unwrap().bytes.as_slice()).unwrap())
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap();
    // 300,000 members: `show capo ipsets` prints each, about 4.5 MB in all.
    let members: Vec<String> = (0..300_000u32)
        .map(|i| format!("10.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect();
    let mut frames = seed.clone();
    frames.extend(capo_felix::frame::encode_frame(&pb::ToDataplane {
        sequence_number: 100,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: ipset,
                added_members: members,
                removed_members: vec![],
            },
        )),
    }));
    let mut c = connect(&sock);
    c.write_all(&frames).unwrap();
    let start = Instant::now();
    let out = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_capoctl"))
            .args([
                "--socket",
                api_sock.to_str().unwrap(),
                "show",
                "capo",
                "ipsets",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("10.4.147.223/32") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no full view: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.len() > 4 << 20, "{} bytes", out.len());
    drop(c);
    let _ = agent.kill();
    let _ = agent.wait();
    std::fs::remove_dir_all(&dir).ok();
}
