//! Helpers shared by the agent's integration tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Felix fixture (frames and scenario) copied from the seed's streams.
pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/felix")
        .join(name)
}

/// The seed's Felix stream (`seed.master.frames`), decoded.
pub(crate) fn seed_messages() -> Vec<capo_proto::felix::v3_32::ToDataplane> {
    let bytes = std::fs::read(fixture("seed.master.frames")).unwrap();
    capo_felix::frame::FrameReader::new(bytes.as_slice())
        .map(|f| capo_felix::frame::decode_to_dataplane_v3_32(&f.unwrap()).unwrap())
        .collect()
}

/// `examples/seed`: the seed's manifests.
pub(crate) fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed")
}

/// A fresh scratch directory for one test.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capo-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs capoctl: exit code, stdout, stderr.
pub(crate) fn capoctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capoctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs capoctl against a running agent's socket.
pub(crate) fn capoctl_at(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    capoctl(&all)
}

/// The seed document's `sh capo interfaces` block for tun3 after the NetworkPolicy,
/// line for line.
pub(crate) const SEED_TUN3_AFTER: &str = "\
[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]
  tx:
    [policy#2]
      tx:[rule#0;allow][src==172.18.0.2/32,src==fc00:f853:ccd:e793::2/128,]
    [policy#12]
      tx:[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]
  profiles:
    [policy#10]
      tx:[rule#15;allow][]
      rx:[rule#16;allow][]
    [policy#11]
";
pub(crate) mod vpp_rig;
