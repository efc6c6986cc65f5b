//! The processes `capo-bench` starts (VPP, capo-agent) and its scratch directory end
//! with it. Dropping an [`OwnedChild`] ends its process, and dropping a [`ScratchDir`]
//! removes it, on every return path; a SIGINT, SIGTERM or SIGHUP ends the benchmark
//! without running `Drop`, so [`end_on_signals`] does both first instead of leaving
//! a VPP, an agent and their files behind.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Every child process not yet ended.
static LIVE: Mutex<Vec<Arc<Mutex<Child>>>> = Mutex::new(Vec::new());

/// Every scratch directory not yet removed.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Kills and reaps a child (nothing happens to one already reaped).
fn end(child: &Mutex<Child>) {
    let mut c = lock(child);
    let _ = c.kill();
    let _ = c.wait();
}

/// A child process that is ended (killed and reaped) when dropped, or when the
/// benchmark is interrupted.
#[derive(Debug)]
pub struct OwnedChild(Arc<Mutex<Child>>);

impl OwnedChild {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = Arc::new(Mutex::new(cmd.spawn()?));
        lock(&LIVE).push(Arc::clone(&child));
        Ok(OwnedChild(child))
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        lock(&self.0).id()
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        end(&self.0);
        lock(&LIVE).retain(|c| !Arc::ptr_eq(c, &self.0));
    }
}

/// A directory removed with everything in it when dropped, or when the benchmark is
/// interrupted.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `path` (and its parents).
    pub fn create(path: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        lock(&DIRS).push(path.clone());
        Ok(ScratchDir(path))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        lock(&DIRS).retain(|d| d != &self.0);
    }
}

/// Ends every live child, then removes every scratch directory (the children may be
/// writing there); how many children there were.
pub fn end_all() -> usize {
    let live = std::mem::take(&mut *lock(&LIVE));
    for c in &live {
        end(c);
    }
    for d in std::mem::take(&mut *lock(&DIRS)) {
        let _ = std::fs::remove_dir_all(d);
    }
    live.len()
}

/// On SIGINT, SIGTERM or SIGHUP: ends every live child, then exits with 128 + the
/// signal's number, as a shell reports a process a signal ended.
pub fn end_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("capo-bench-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let ended = end_all();
                eprintln!("capo-bench: signal {signal}: ended {ended} child process(es)");
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn running(c: &OwnedChild) -> bool {
        matches!(lock(&c.0).try_wait(), Ok(None))
    }

    fn sleeper() -> OwnedChild {
        OwnedChild::spawn(Command::new("sleep").arg("600")).unwrap()
    }

    /// What the signal handler runs: every live child ended and every scratch
    /// directory removed, whoever holds them; a dropped child is ended and forgotten.
    #[test]
    fn live_children_end_on_request_and_on_drop() {
        let (a, b) = (sleeper(), sleeper());
        let dir = ScratchDir::create(
            std::env::temp_dir().join(format!("capo-bench-children-{}", std::process::id())),
        )
        .unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        assert!(running(&a) && running(&b));
        assert!(end_all() >= 2);
        assert!(!running(&a) && !running(&b));
        assert!(!dir.path().exists());
        let c = sleeper();
        let id = c.id();
        assert!(running(&c));
        drop(c);
        assert!(!lock(&LIVE).iter().any(|l| lock(l).id() == id));
        // Reaped, not a zombie: its pid names no sleep of ours any more.
        let stat = std::fs::read_to_string(format!("/proc/{id}/stat")).unwrap_or_default();
        assert!(!stat.contains("(sleep)"), "{stat}");
    }
}
