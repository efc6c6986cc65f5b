//! Standalone input: Kubernetes and Calico manifests turned into exactly the
//! messages Felix would send, then fed through the same decoder and state machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capo_proto::felix::v3_32 as pb;
use capo_resources::{manifest_files, Options, Resources, Snapshot};

use crate::inputs::replay::{replay_reader, ReplayOptions, Replayed};
use capo_felix::frame::encode_frames;

/// Loads manifests (files or directories) and computes what Felix on `node` would
/// hold (`None`: every pod is local).
pub fn load(paths: &[PathBuf], node: Option<&str>) -> Result<(Resources, Snapshot), String> {
    let res = Resources::load(paths).map_err(|e| e.to_string())?;
    for w in res.warnings() {
        tracing::warn!("{w}");
    }
    let snapshot = res.snapshot(&Options::for_node(node));
    Ok((res, snapshot))
}

/// Replays manifests as if Felix had sent them.
pub fn replay(
    paths: &[PathBuf],
    node: Option<&str>,
    opts: &ReplayOptions,
) -> Result<(Resources, Replayed), String> {
    let (res, snapshot) = load(paths, node)?;
    let msgs = snapshot.to_felix_messages();
    let r = replay_reader(encode_frames(&msgs).as_slice(), opts)
        .map_err(|e| format!("manifests: {e}"))?;
    Ok((res, r))
}

/// Resolves `NS/POD` to one of the pod's addresses (of `family_v6` when given), or
/// parses an IP address.
pub fn resolve(
    res: Option<&Resources>,
    s: &str,
    family_v6: Option<bool>,
) -> Result<IpAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    let Some((ns, pod)) = s.split_once('/') else {
        return Err(format!("{s:?} is neither an IP address nor NAMESPACE/POD"));
    };
    let res = res.ok_or_else(|| format!("{s:?}: NAMESPACE/POD needs --resources"))?;
    let ips = res
        .pod_ips(ns, pod)
        .ok_or_else(|| format!("no pod {ns}/{pod} in the manifests"))?;
    ips.iter()
        .find(|ip| family_v6.is_none_or(|v6| ip.is_ipv6() == v6))
        .copied()
        .ok_or_else(|| match family_v6 {
            Some(true) => format!("pod {ns}/{pod} has no IPv6 address"),
            Some(false) => format!("pod {ns}/{pod} has no IPv4 address"),
            None => format!("pod {ns}/{pod} has no address"),
        })
}

/// Resolves a trace's two ends. `family_v6` (`--family 4|6`) picks the family of
/// pods' addresses; without it, the first end that is an IP address fixes the family,
/// else IPv4 is preferred.
pub fn resolve_pair(
    res: Option<&Resources>,
    from: &str,
    to: &str,
    family_v6: Option<bool>,
) -> Result<(IpAddr, IpAddr), String> {
    let (from_ip, to_ip) = match (family_v6, from.parse::<IpAddr>(), to.parse::<IpAddr>()) {
        (Some(v6), _, _) => (resolve(res, from, Some(v6))?, resolve(res, to, Some(v6))?),
        (None, Ok(f), _) => (f, resolve(res, to, Some(f.is_ipv6()))?),
        (None, _, Ok(t)) => (resolve(res, from, Some(t.is_ipv6()))?, t),
        _ => {
            let f = resolve(res, from, Some(false)).or_else(|_| resolve(res, from, None))?;
            (f, resolve(res, to, Some(f.is_ipv6()))?)
        }
    };
    if let Some(v6) = family_v6 {
        for ip in [from_ip, to_ip] {
            if ip.is_ipv6() != v6 {
                return Err(format!(
                    "{ip} is not an IPv{} address (--family {})",
                    if v6 { 6 } else { 4 },
                    if v6 { 6 } else { 4 }
                ));
            }
        }
    }
    Ok((from_ip, to_ip))
}

/// Fingerprint of a manifest tree: each file's path, length and modification time.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The current fingerprint of `paths` (unreadable entries count as changes).
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for p in paths {
        match manifest_files(p) {
            Ok(files) => {
                for f in files {
                    let meta = std::fs::metadata(&f).ok();
                    out.push((
                        f,
                        meta.as_ref().map_or(0, |m| m.len()),
                        meta.and_then(|m| m.modified().ok()),
                    ));
                }
            }
            Err(_) => out.push((p.clone(), 0, None)),
        }
    }
    out.sort();
    out
}

/// Watches manifests and yields the minimal Felix updates for each change.
pub struct Watcher {
    paths: Vec<PathBuf>,
    node: Option<String>,
    current: Snapshot,
    seen: Fingerprint,
}

impl Watcher {
    /// Loads the manifests once; returns the watcher and the full initial stream.
    pub fn start(
        paths: Vec<PathBuf>,
        node: Option<String>,
    ) -> Result<(Self, Vec<pb::ToDataplane>), String> {
        let seen = fingerprint(&paths);
        let (_, current) = load(&paths, node.as_deref())?;
        let msgs = current.to_felix_messages();
        Ok((
            Watcher {
                paths,
                node,
                current,
                seen,
            },
            msgs,
        ))
    }

    /// The watched paths.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Checks for changes. `Ok(None)`: nothing changed on disk. `Ok(Some(msgs))`:
    /// the updates that take the state to the new manifests (possibly none).
    /// `Err`: the new manifests are invalid; the current state is kept.
    pub fn poll(&mut self) -> Result<Option<Vec<pb::ToDataplane>>, String> {
        let now = fingerprint(&self.paths);
        if now == self.seen {
            return Ok(None);
        }
        self.seen = now;
        let (_, next) = load(&self.paths, self.node.as_deref())?;
        let msgs = capo_resources::diff(&self.current, &next);
        self.current = next;
        Ok(Some(msgs))
    }
}

/// Writes Felix's frame stream for the manifests to `out`.
pub fn export_frames(paths: &[PathBuf], node: Option<&str>, out: &Path) -> Result<usize, String> {
    let (_, snapshot) = load(paths, node)?;
    let msgs = snapshot.to_felix_messages();
    std::fs::write(out, encode_frames(&msgs)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(msgs.len())
}
