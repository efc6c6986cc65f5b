//! Reading manifests from disk as they are mounted in a pod: a ConfigMap volume's
//! `..data` layout, symlink loops, and files that must never be read (FIFOs,
//! devices), each a clear error or handled, never a hang.
// Test code: panicking on a broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use capo_resources::{manifest_files, Resources};

fn seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/seed")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capo-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The layout kubelet makes for a ConfigMap volume: the files in a timestamped
/// directory, `..data` pointing at it, and a symlink per key at the top.
fn configmap(dir: &Path) {
    let stamp = dir.join("..2026_12_03_08_00_00.123456789");
    std::fs::create_dir_all(&stamp).unwrap();
    for f in [
        "namespace.yaml",
        "nodes.yaml",
        "pods.yaml",
        "networkpolicy.yaml",
    ] {
        std::fs::copy(seed().join(f), stamp.join(f)).unwrap();
    }
    symlink("..2026_12_03_08_00_00.123456789", dir.join("..data")).unwrap();
    for f in [
        "namespace.yaml",
        "nodes.yaml",
        "pods.yaml",
        "networkpolicy.yaml",
    ] {
        symlink(format!("..data/{f}"), dir.join(f)).unwrap();
    }
}

#[test]
fn a_configmap_volume_loads_each_file_once() {
    let dir = scratch("configmap");
    configmap(&dir);
    let files = manifest_files(&dir).unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files.iter().all(|f| !f.to_string_lossy().contains("..")),
        "{files:?}"
    );
    let res = Resources::load(&[&dir]).unwrap();
    let direct = Resources::load(&[seed()]).unwrap();
    let (a, b) = (
        res.snapshot(&Default::default()),
        direct.snapshot(&Default::default()),
    );
    assert_eq!(a.policies().len(), 1);
    assert_eq!(a.to_felix_messages(), b.to_felix_messages());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn symlink_loops_end_and_duplicates_are_read_once() {
    let dir = scratch("loop");
    for f in ["namespace.yaml", "pods.yaml"] {
        std::fs::copy(seed().join(f), dir.join(f)).unwrap();
    }
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    symlink("..", dir.join("sub/up")).unwrap();
    symlink("../pods.yaml", dir.join("sub/again.yaml")).unwrap();
    let files = manifest_files(&dir).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    Resources::load(&[&dir]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fifos_and_devices_are_refused_not_read() {
    let dir = scratch("fifo");
    std::fs::copy(seed().join("pods.yaml"), dir.join("pods.yaml")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("stuck.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = Resources::load(&[&dir]).unwrap_err().to_string();
    assert!(
        err.contains("stuck.yaml") && err.contains("not a regular file"),
        "{err}"
    );
    std::fs::remove_file(dir.join("stuck.yaml")).unwrap();

    symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let err = Resources::load(&[&dir]).unwrap_err().to_string();
    assert!(
        err.contains("zero.yaml") && err.contains("not a regular file"),
        "{err}"
    );
    // Named directly, too.
    let err = Resources::load(&[Path::new("/dev/zero")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
