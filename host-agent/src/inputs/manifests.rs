//! Standalone input: Kubernetes and Calico manifests turned into exactly the
//! messages Felix would send, then fed through the same decoder and state machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use capo_proto::felix::v3_32 as pb;
use capo_resources::{manifest_files, Options, Resources, Snapshot};

use crate::inputs::felix_stream::StreamError;
use crate::inputs::replay::{replay_reader, ReplayOptions, Replayed};
use capo_felix::frame::encode_frames;

/// Why manifests could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// They do not load (a file, an object or a field is invalid).
    #[error(transparent)]
    Load(#[from] capo_resources::Error),
    /// Their Felix stream was refused.
    #[error("manifests: {0}")]
    Replay(StreamError),
    /// The frames could not be written.
    #[error("{}: {source}", .path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why a trace's end could not be resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Neither form.
    #[error("{0:?} is neither an IP address nor NAMESPACE/POD")]
    NotAnEndpoint(String),
    /// A pod named without manifests to find it in.
    #[error("{0:?}: NAMESPACE/POD needs --resources")]
    NeedsResources(String),
    /// No such pod (`NAMESPACE/POD`).
    #[error("no pod {0} in the manifests")]
    NoPod(String),
    /// The pod has no address (of the family, `IPv4 ` or `IPv6 `, when given).
    #[error("pod {pod} has no {family}address")]
    NoAddress {
        /// `NAMESPACE/POD`.
        pod: String,
        /// The family asked for, with a trailing space, or empty.
        family: &'static str,
    },
    /// An address of the other family than `--family`.
    #[error("{ip} is not an IPv{version} address (--family {version})")]
    WrongFamily {
        /// The address.
        ip: IpAddr,
        /// 4 or 6.
        version: u8,
    },
}

/// Loads manifests (files or directories) and computes what Felix on `node` would
/// hold (`None`: every pod is local).
pub fn load(paths: &[PathBuf], node: Option<&str>) -> Result<(Resources, Snapshot), ManifestError> {
    let res = Resources::load(paths)?;
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
) -> Result<(Resources, Replayed), ManifestError> {
    let (res, snapshot) = load(paths, node)?;
    let msgs = snapshot.to_felix_messages();
    let r = replay_reader(encode_frames(&msgs).as_slice(), opts).map_err(ManifestError::Replay)?;
    Ok((res, r))
}

/// Resolves `NS/POD` to one of the pod's addresses (of `family_v6` when given), or
/// parses an IP address.
pub fn resolve(
    res: Option<&Resources>,
    s: &str,
    family_v6: Option<bool>,
) -> Result<IpAddr, ResolveError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip);
    }
    let Some((ns, pod)) = s.split_once('/') else {
        return Err(ResolveError::NotAnEndpoint(s.to_string()));
    };
    let res = res.ok_or_else(|| ResolveError::NeedsResources(s.to_string()))?;
    let ips = res
        .pod_ips(ns, pod)
        .ok_or_else(|| ResolveError::NoPod(format!("{ns}/{pod}")))?;
    ips.iter()
        .find(|ip| family_v6.is_none_or(|v6| ip.is_ipv6() == v6))
        .copied()
        .ok_or_else(|| ResolveError::NoAddress {
            pod: format!("{ns}/{pod}"),
            family: match family_v6 {
                Some(true) => "IPv6 ",
                Some(false) => "IPv4 ",
                None => "",
            },
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
) -> Result<(IpAddr, IpAddr), ResolveError> {
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
                return Err(ResolveError::WrongFamily {
                    ip,
                    version: if v6 { 6 } else { 4 },
                });
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
    ) -> Result<(Self, Vec<pb::ToDataplane>), ManifestError> {
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
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Checks for changes. `Ok(None)`: nothing changed on disk. `Ok(Some(msgs))`:
    /// the updates that take the state to the new manifests (possibly none).
    /// `Err`: the new manifests are invalid; the current state is kept.
    pub(crate) fn poll(&mut self) -> Result<Option<Vec<pb::ToDataplane>>, ManifestError> {
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
pub fn export_frames(
    paths: &[PathBuf],
    node: Option<&str>,
    out: &Path,
) -> Result<usize, ManifestError> {
    let (_, snapshot) = load(paths, node)?;
    let msgs = snapshot.to_felix_messages();
    std::fs::write(out, encode_frames(&msgs)).map_err(|source| ManifestError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(msgs.len())
}
