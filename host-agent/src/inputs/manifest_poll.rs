//! Policy from manifests on disk, polled for changes.

use std::path::PathBuf;
use std::time::Duration;

use crate::core::daemon::{lock, SharedDaemon, Source};
use crate::inputs::felix_stream::feed;

/// Serves policy from manifests instead of Felix: the initial stream, then the
/// minimal updates for each change on disk, through the same session as Felix's
/// messages. Invalid manifests are logged (file, object, field) and change nothing:
/// the policy in force stays, and a fix on disk is applied at the next poll, also when
/// the first load is the invalid one (then there is no policy until it is fixed).
/// Never returns.
pub fn serve_manifests(
    paths: Vec<PathBuf>,
    node: Option<String>,
    poll: Duration,
    daemon: &SharedDaemon,
) -> ! {
    let mut last_error: Option<String> = None;
    let mut watcher = loop {
        match crate::inputs::manifests::Watcher::start(paths.clone(), node.clone()) {
            Ok((w, initial)) => {
                lock(daemon).begin(Source::Manifests);
                if feed(daemon, &initial) {
                    tracing::info!(generation = lock(daemon).generation(), paths = ?w.paths(), "policy applied from manifests; watching for changes");
                } else {
                    tracing::error!("the manifests' policy was refused; no policy applied");
                }
                break w;
            }
            Err(e) => {
                // The same error is logged once, not at every poll.
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!(error = %e, "manifests are invalid: no policy applied; waiting for them to be fixed");
                    last_error = Some(text);
                }
                std::thread::sleep(poll);
            }
        }
    };
    loop {
        std::thread::sleep(poll);
        match watcher.poll() {
            Ok(None) => {}
            Ok(Some(msgs)) if msgs.is_empty() => {
                tracing::info!("manifests changed; no policy change")
            }
            Ok(Some(msgs)) => {
                tracing::info!(updates = msgs.len(), "manifests changed; applying updates");
                if !feed(daemon, &msgs) {
                    // Cannot happen with valid manifests; start over from a full load.
                    match crate::inputs::manifests::Watcher::start(
                        watcher.paths().to_vec(),
                        node.clone(),
                    ) {
                        Ok((w, full)) => {
                            watcher = w;
                            lock(daemon).begin(Source::Manifests);
                            if !feed(daemon, &full) {
                                tracing::error!("the manifests' policy was refused; keeping the last in-sync policy");
                                continue;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "manifests are invalid; keeping the current policy");
                            continue;
                        }
                    }
                }
                tracing::info!(generation = lock(daemon).generation(), "policy applied");
            }
            Err(e) => {
                tracing::error!(error = %e, "manifests are invalid; keeping the current policy")
            }
        }
    }
}
