//! Readers of the API cannot stall policy updates: with clients pulling the largest
//! views and watching counters in a loop, Felix updates commit as fast as without
//! them, and every reader still gets answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capo_agent::api::{self, ApiOptions};
use capo_agent::core::daemon::{Daemon, FelixOptions, SharedDaemon};
use capo_agent::inputs::felix_stream::feed;
use capo_proto::capo::agent::v1 as pb_api;
use capo_proto::felix::v3_32 as pb;

mod common;

fn seed() -> Vec<pb::ToDataplane> {
    common::seed_messages()
}

/// The seed with `copies` more copies of each of its policies, all in the tiers of
/// every endpoint: a node whose views are large and slow to render.
fn large_node(copies: usize) -> Vec<pb::ToDataplane> {
    use pb::to_dataplane::Payload as P;
    let msgs = seed();
    let policies: Vec<(pb::PolicyId, pb::Policy)> = msgs
        .iter()
        .filter_map(|m| match &m.payload {
            Some(P::ActivePolicyUpdate(u)) => Some((u.id.clone()?, u.policy.clone()?)),
            _ => None,
        })
        .collect();
    let copy_id = |id: &pb::PolicyId, i: usize| pb::PolicyId {
        name: format!("{}-copy{i}", id.name),
        ..id.clone()
    };
    let mut out = Vec::new();
    let mut copied = false;
    for m in msgs {
        // The copies go before the first endpoint that refers to them.
        if !copied && matches!(m.payload, Some(P::WorkloadEndpointUpdate(_))) {
            copied = true;
            for i in 0..copies {
                for (id, policy) in &policies {
                    out.push(pb::ToDataplane {
                        sequence_number: 0,
                        payload: Some(P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
                            id: Some(copy_id(id, i)),
                            policy: Some(policy.clone()),
                        })),
                    });
                }
            }
        }
        let m = match m.payload {
            Some(P::WorkloadEndpointUpdate(mut u)) => {
                if let Some(ep) = u.endpoint.as_mut() {
                    for tier in &mut ep.tiers {
                        for list in [&mut tier.ingress_policies, &mut tier.egress_policies] {
                            let originals = list.clone();
                            for i in 0..copies {
                                list.extend(originals.iter().map(|id| copy_id(id, i)));
                            }
                        }
                    }
                }
                pb::ToDataplane {
                    payload: Some(P::WorkloadEndpointUpdate(u)),
                    ..m
                }
            }
            payload => pb::ToDataplane { payload, ..m },
        };
        out.push(m);
    }
    out
}

fn member_added(set: &str, i: u32) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: 0,
        payload: Some(pb::to_dataplane::Payload::IpsetDeltaUpdate(
            pb::IpSetDeltaUpdate {
                id: set.to_string(),
                added_members: vec![format!("10.77.{}.{}/32", i / 250, i % 250 + 1)],
                removed_members: Vec::new(),
            },
        )),
    }
}

/// Commits `n` member updates `gap` apart; returns each one's time to commit
/// (waiting for the daemon included), sorted.
fn update_latencies(
    daemon: &SharedDaemon,
    set: &str,
    from: u32,
    n: u32,
    gap: Duration,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in from..from + n {
        let t = Instant::now();
        assert!(feed(daemon, &[member_added(set, i)]));
        out.push(t.elapsed());
        std::thread::sleep(gap);
    }
    out.sort();
    out
}

#[test]
fn readers_do_not_delay_policy_updates() {
    let dir = common::scratch("readers");
    let socket: PathBuf = dir.join("agent.sock");
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    // As capo-agent runs it: the embedded dataplane shared with packet sources.
    let embedded = Arc::new(Mutex::new(capo_agent::sinks::embedded::Embedded::new()));
    d.add_sink(Box::new(capo_agent::sinks::embedded::EmbeddedSink::new(
        embedded,
    )));
    let daemon: SharedDaemon = Arc::new(Mutex::new(d));
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    assert!(feed(&daemon, &large_node(400)));
    let set = seed()
        .into_iter()
        .find_map(|m| match m.payload {
            Some(pb::to_dataplane::Payload::IpsetUpdate(u)) => Some(u.id),
            _ => None,
        })
        .unwrap();
    let _api = api::spawn(
        Arc::clone(&daemon),
        ApiOptions {
            socket: socket.clone(),
            group: None,
            tcp: None,
            inject: false,
            metrics: None,
            health: None,
        },
    )
    .unwrap();

    let gap = Duration::from_millis(100);
    let quiet = update_latencies(&daemon, &set, 0, 15, gap);

    // 30 clients pulling views in a loop and 50 watching counters every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let views_answered = Arc::new(AtomicU64::new(0));
    let watch_answered = Arc::new(AtomicU64::new(0));
    let clients = {
        let (stop, views_answered, watch_answered, socket) = (
            Arc::clone(&stop),
            Arc::clone(&views_answered),
            Arc::clone(&watch_answered),
            socket.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for c in 0..30 {
                    let (stop, answered) = (Arc::clone(&stop), Arc::clone(&views_answered));
                    let channel = api::connect(&socket).await.unwrap();
                    tasks.push(tokio::spawn(async move {
                        let mut views = pb_api::views_client::ViewsClient::new(channel)
                            .max_decoding_message_size(1 << 30);
                        let kinds = [
                            (pb_api::ViewKind::Policies, true),
                            (pb_api::ViewKind::Rules, false),
                            (pb_api::ViewKind::Interfaces, false),
                        ];
                        let mut i = c;
                        while !stop.load(Ordering::Relaxed) {
                            let (kind, verbose) = kinds[i % kinds.len()];
                            i += 1;
                            let r = views
                                .get(pb_api::ViewRequest {
                                    view: kind as i32,
                                    verbose,
                                    with_lines: false,
                                })
                                .await
                                .unwrap()
                                .into_inner();
                            assert!(!r.text.is_empty());
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for _ in 0..50 {
                    let (stop, answered) = (Arc::clone(&stop), Arc::clone(&watch_answered));
                    let channel = api::connect(&socket).await.unwrap();
                    tasks.push(tokio::spawn(async move {
                        let mut counters = pb_api::counters_client::CountersClient::new(channel)
                            .max_decoding_message_size(1 << 30);
                        let mut stream = counters
                            .watch(pb_api::WatchCountersRequest { interval_ms: 100 })
                            .await
                            .unwrap()
                            .into_inner();
                        while !stop.load(Ordering::Relaxed) {
                            let c = stream.message().await.unwrap().unwrap();
                            assert!(!c.rules.is_empty());
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
        })
    };
    // Let the readers get going before measuring.
    let t = Instant::now();
    while views_answered.load(Ordering::Relaxed) < 30 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "views never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = update_latencies(&daemon, &set, 100, 15, gap);
    let (views_during, watch_during) = (
        views_answered.load(Ordering::Relaxed),
        watch_answered.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();

    let median = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "update latency: quiet median {:?} max {:?}; with readers median {:?} max {:?}; \
         {views_during} views and {watch_during} counter ticks answered",
        median(&quiet),
        quiet[quiet.len() - 1],
        median(&busy),
        busy[busy.len() - 1],
    );
    assert!(watch_during > 0, "the watchers got no counters");
    // Unchanged: within a small allowance of the quiet median for CPU shared with
    // the readers on a small machine (rendering under the daemon's lock made it
    // seconds).
    let allowance = median(&quiet) * 3 + Duration::from_millis(100);
    assert!(
        median(&busy) <= allowance,
        "updates slowed by readers: median {:?} vs {:?} quiet",
        median(&busy),
        median(&quiet)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
