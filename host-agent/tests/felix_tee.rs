//! capo-felix-driver as a tee in a CalicoVPP cluster: Felix's bytes reach CalicoVPP's
//! socket unchanged and CalicoVPP's answers reach Felix, while capo-agent is fed the
//! policy beside it, survives a restart of capo-agent (resynced from the tee's
//! state) and never disturbs CalicoVPP's connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capo_felix::frame::{decode_to_dataplane_v3_32, encode_frame, FrameReader};
use capo_proto::felix::v3_32 as pb;

mod common;
use common::{capoctl_at, fixture, scratch};

fn spawn_tee(status_file: &Path, primary: &Path, capo: &Path) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec \"$0\" 3<&0 4>\"{}\" 0</dev/null",
            status_file.display()
        ))
        .arg(env!("CARGO_BIN_EXE_capo-felix-driver"))
        .env("CAPO_FORWARD_SOCKET", primary)
        .env("CAPO_AGENT_SOCKET", capo)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn spawn_agent(dir: &Path, felix: &Path, api: &Path, log: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_capo-agent"))
        .args([
            "--felix-socket",
            felix.to_str().unwrap(),
            "--api-socket",
            api.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn an_ipset(frames: &[u8]) -> String {
    FrameReader::new(frames)
        .map(|f| decode_to_dataplane_v3_32(&f.unwrap()).unwrap())
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap()
}

fn member_added(set: &str, member: &str) -> Vec<u8> {
    encode_frame(&pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: set.to_string(),
                added_members: vec![member.to_string()],
                removed_members: Vec::new(),
            },
        )),
    })
}

fn ipsets_view(api: &Path) -> String {
    let (rc, out, _) = capoctl_at(api, &["show", "capo", "ipsets"]);
    if rc == 0 {
        out
    } else {
        String::new()
    }
}

#[test]
fn tee_feeds_calicovpp_unchanged_and_capo_beside_it() {
    let dir = scratch("tee");
    let primary_path = dir.join("felix-dataplane.sock");
    let capo_felix: PathBuf = dir.join("capo-felix.sock");
    let api = dir.join("agent.sock");
    let status = dir.join("status");

    // CalicoVPP's side: records every byte, answers with a frame of its own.
    let primary = UnixListener::bind(&primary_path).unwrap();
    let answer = b"\x03\x00\x00\x00\x00\x00\x00\x00abc".to_vec();
    let answer_sent = answer.clone();
    let calicovpp = std::thread::spawn(move || {
        let (mut conn, _) = primary.accept().unwrap();
        conn.write_all(&answer_sent).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        // A second connection would mean the tee reconnected (it must not).
        primary.set_nonblocking(true).unwrap();
        let again = primary.accept().is_ok();
        (got, again)
    });

    let mut agent = spawn_agent(&dir, &capo_felix, &api, "agent1.log");
    let mut tee = spawn_tee(&status, &primary_path, &capo_felix);
    let seed = std::fs::read(fixture("seed.master.frames")).unwrap();
    let set = an_ipset(&seed);
    let mut felix = tee.stdin.take().unwrap();
    let mut sent = seed.clone();
    felix.write_all(&seed).unwrap();
    wait_for(Duration::from_secs(20), "capo-agent in sync", || {
        let (rc, out, _) = capoctl_at(&api, &["generations"]);
        rc == 0 && out.contains(", in sync)")
    });
    // A change after the sync reaches capo.
    let first = member_added(&set, "10.66.0.1/32");
    felix.write_all(&first).unwrap();
    sent.extend_from_slice(&first);
    wait_for(Duration::from_secs(10), "the first change", || {
        ipsets_view(&api).contains("10.66.0.1/32")
    });

    // capo-agent dies and comes back: the tee resyncs it from its own state (no
    // Felix restart), and changes made meanwhile are there too.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let meanwhile = member_added(&set, "10.66.0.2/32");
    felix.write_all(&meanwhile).unwrap();
    sent.extend_from_slice(&meanwhile);
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_file(&api);
    let mut agent = spawn_agent(&dir, &capo_felix, &api, "agent2.log");
    wait_for(
        Duration::from_secs(20),
        "the restarted agent resynced",
        || {
            let v = ipsets_view(&api);
            v.contains("10.66.0.1/32") && v.contains("10.66.0.2/32")
        },
    );
    let after = member_added(&set, "10.66.0.3/32");
    felix.write_all(&after).unwrap();
    sent.extend_from_slice(&after);
    wait_for(Duration::from_secs(10), "a change after the resync", || {
        ipsets_view(&api).contains("10.66.0.3/32")
    });

    // Felix goes away: the tee exits 0; CalicoVPP got exactly Felix's bytes on one
    // connection, and Felix got exactly CalicoVPP's answer.
    drop(felix);
    let start = Instant::now();
    let st = loop {
        if let Some(st) = tee.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tee did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    tee.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(st.success(), "{log}");
    let (got, reconnected) = calicovpp.join().unwrap();
    assert!(
        got == sent,
        "CalicoVPP's bytes differ from Felix's ({} vs {})",
        got.len(),
        sent.len()
    );
    assert!(!reconnected, "the tee must keep one CalicoVPP connection");
    assert_eq!(std::fs::read(&status).unwrap(), answer);
    assert!(log.contains("capo-agent connected"), "{log}");
    let log2 = std::fs::read_to_string(dir.join("agent2.log")).unwrap();
    assert!(log2.contains("in sync with Felix"), "{log2}");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tee_needs_both_sockets() {
    let out = Command::new(env!("CARGO_BIN_EXE_capo-felix-driver"))
        .env("CAPO_FORWARD_SOCKET", "/nonexistent/felix-dataplane.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("go together"), "{err}");
}
