//! Read-only access to the policy in force for the API and metrics, without holding
//! what policy updates need.
//!
//! A reader takes the daemon's lock only to pick up a [`PolicySnapshot`] (copied at
//! most once per generation) and renders outside it. Work that scales with the policy
//! (a view's text, the numbered rules behind counters and the offload plan) is done
//! once per generation, one at a time, and shared: thirty clients asking for the same
//! view of a large node cost one rendering, and neither their number nor their speed
//! reaches the Felix stream or the dataplanes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use capo_policy::views::NumberedRule;
use capo_policy::Views;
use capo_proto::capo::agent::v1 as api;

use crate::core::daemon::{lock, PolicySnapshot, SharedDaemon};
use crate::sinks::embedded::lock_embedded;
use crate::views::View;

/// Readers' shared access to one daemon.
#[derive(Clone)]
pub struct Readers {
    daemon: SharedDaemon,
    cache: Arc<Mutex<Cache>>,
    /// One rendering at a time: the rest wait (without a thread) and find it cached.
    rendering: Arc<tokio::sync::Mutex<()>>,
}

/// What was rendered for one generation.
#[derive(Default)]
struct Cache {
    snapshot: Option<PolicySnapshot>,
    views: HashMap<View, Arc<String>>,
    numbered: Option<Arc<Vec<NumberedRule>>>,
}

impl Readers {
    /// Readers of `daemon`.
    pub fn new(daemon: SharedDaemon) -> Self {
        Readers {
            daemon,
            cache: Arc::new(Mutex::new(Cache::default())),
            rendering: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The daemon (for the few calls that are cheap under its lock).
    pub(crate) fn daemon(&self) -> &SharedDaemon {
        &self.daemon
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The policy in force (`None` before the first sync). Takes the daemon's lock
    /// briefly; the copy is made once per generation.
    pub(crate) fn snapshot(&self) -> Option<PolicySnapshot> {
        let snapshot = tokio::task::block_in_place(|| lock(&self.daemon).snapshot())?;
        let mut cache = self.cache();
        let current = cache
            .snapshot
            .as_ref()
            .map(|s| s.generation == snapshot.generation);
        if current != Some(true) {
            *cache = Cache {
                snapshot: Some(snapshot.clone()),
                ..Cache::default()
            };
        }
        Some(snapshot)
    }

    /// `view` of `snapshot`, rendered once per generation.
    pub(crate) async fn view(&self, snapshot: &PolicySnapshot, view: View) -> Arc<String> {
        self.shared(
            snapshot,
            |c| c.views.get(&view).cloned(),
            move |s| Arc::new(view.render(&s.state, &s.ids)),
            |c, text| {
                c.views.insert(view, Arc::clone(text));
            },
        )
        .await
    }

    /// The numbered rules of `snapshot` (behind counters and the offload plan),
    /// computed once per generation.
    pub(crate) async fn numbered_rules(&self, snapshot: &PolicySnapshot) -> Arc<Vec<NumberedRule>> {
        self.shared(
            snapshot,
            |c| c.numbered.clone(),
            |s| {
                Arc::new(
                    Views::new(&s.state, &s.ids)
                        .with_compact_sets()
                        .numbered_rules(),
                )
            },
            |c, rules| c.numbered = Some(Arc::clone(rules)),
        )
        .await
    }

    /// Looks `get` up in the cache of `snapshot`'s generation, else computes it with
    /// `make` (on a blocking thread, one computation at a time) and `put`s it there.
    async fn shared<T: Send + Sync + 'static>(
        &self,
        snapshot: &PolicySnapshot,
        get: impl Fn(&Cache) -> Option<Arc<T>>,
        make: impl FnOnce(&PolicySnapshot) -> Arc<T> + Send + 'static,
        put: impl FnOnce(&mut Cache, &Arc<T>),
    ) -> Arc<T> {
        let cached = |me: &Self| {
            let c = me.cache();
            let same = c
                .snapshot
                .as_ref()
                .is_some_and(|s| s.generation == snapshot.generation);
            if same {
                get(&c)
            } else {
                None
            }
        };
        if let Some(hit) = cached(self) {
            return hit;
        }
        let _turn = self.rendering.lock().await;
        if let Some(hit) = cached(self) {
            return hit;
        }
        let s = snapshot.clone();
        let made = match tokio::task::spawn_blocking(move || make(&s)).await {
            Ok(made) => made,
            // The rendering panicked: a bug, but not the API's end.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let mut c = self.cache();
        if c.snapshot
            .as_ref()
            .is_some_and(|s| s.generation == snapshot.generation)
        {
            put(&mut c, &made);
        }
        made
    }

    /// The counters of the embedded dataplane, computed outside the daemon's lock
    /// and holding the dataplane's only to read its atomics. `None` without a
    /// classifying dataplane or a policy.
    pub(crate) async fn embedded_counters(&self) -> Option<api::CountersReply> {
        let Some(embedded) = tokio::task::block_in_place(|| lock(&self.daemon).embedded()) else {
            // A dataplane the daemon owns alone (not shared with packet sources) can
            // only be read under the daemon's lock.
            return tokio::task::block_in_place(|| {
                let d = lock(&self.daemon);
                d.counters().map(|mut c| {
                    c.generation = d.generation();
                    c
                })
            });
        };
        let snapshot = self.snapshot()?;
        let numbered = self.numbered_rules(&snapshot).await;
        let reply = tokio::task::spawn_blocking(move || {
            let sources = lock_embedded(&embedded).counter_sources(&numbered);
            let mut reply = sources.reply(&numbered, &snapshot.state, &snapshot.ids);
            reply.generation = snapshot.generation;
            reply
        })
        .await;
        match reply {
            Ok(r) => Some(r),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The offload plan of the policy in force; without a NIC every rule is in
    /// software.
    pub(crate) async fn offload_plan(&self) -> Option<api::OffloadPlanReply> {
        let snapshot = self.snapshot()?;
        let (embedded, port, vpp) = tokio::task::block_in_place(|| {
            let d = lock(&self.daemon);
            (d.embedded(), d.port_report(), d.vpp())
        });
        if let Some(port) = port {
            return Some(port.reply(snapshot.generation));
        }
        if let Some(status) = vpp.map(|h| h.status()) {
            if let Some(capacity) = status.share_capacity {
                return Some(crate::sinks::vpp_share::plan_reply(
                    &status,
                    capacity,
                    snapshot.generation,
                ));
            }
        }
        let mut plan = match embedded {
            Some(e) => {
                let numbered = self.numbered_rules(&snapshot).await;
                tokio::task::block_in_place(|| lock_embedded(&e).plan_for(&numbered))
            }
            None => None,
        }
        .unwrap_or_else(|| api::OffloadPlanReply {
            nic: "none".into(),
            offload_available: false,
            ..Default::default()
        });
        plan.generation = snapshot.generation;
        Some(plan)
    }
}
