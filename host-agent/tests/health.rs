//! The plaintext health listener Kubernetes probes: liveness at once, readiness
//! only once a generation is in force and the dataplane took it, and nothing but
//! health served there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capo_agent::api::{self, ApiOptions, READY_SERVICE};
use capo_agent::core::daemon::{Daemon, FelixOptions, SharedDaemon};
use capo_agent::inputs::felix_stream::feed;
use capo_proto::felix::v3_32 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;

fn seed() -> Vec<pb::ToDataplane> {
    common::seed_messages()
}

async fn status(addr: std::net::SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[test]
fn liveness_at_once_readiness_after_the_first_generation() {
    let dir = common::scratch("health");
    let mut d = Daemon::new(FelixOptions::default(), capo_policy::IdTable::new("tap0"));
    let embedded = Arc::new(Mutex::new(capo_agent::sinks::embedded::Embedded::new()));
    d.add_sink(Box::new(capo_agent::sinks::embedded::EmbeddedSink::new(
        embedded,
    )));
    let daemon: SharedDaemon = Arc::new(Mutex::new(d));
    let handle = api::spawn(
        Arc::clone(&daemon),
        ApiOptions {
            socket: dir.join("agent.sock"),
            group: None,
            tcp: None,
            inject: false,
            metrics: None,
            health: Some("127.0.0.1:0".parse().unwrap()),
        },
    )
    .unwrap();
    let addr = handle.health_addr().expect("bound health address");
    assert_ne!(addr.port(), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            status(addr, "").await.unwrap(),
            ServingStatus::Serving as i32
        );
        // No policy yet: alive, not ready.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            status(addr, READY_SERVICE).await.unwrap(),
            ServingStatus::NotServing as i32
        );
        // Only health is served on this listener: the API's services are absent.
        let mut views = capo_proto::capo::agent::v1::views_client::ViewsClient::connect(format!(
            "http://{addr}"
        ))
        .await
        .unwrap();
        let err = views
            .get(capo_proto::capo::agent::v1::ViewRequest {
                view: capo_proto::capo::agent::v1::ViewKind::Interfaces as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    });
    assert!(feed(&daemon, &seed()));
    rt.block_on(async {
        let start = Instant::now();
        loop {
            if status(addr, READY_SERVICE).await.unwrap() == ServingStatus::Serving as i32 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not ready after the seed was committed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(rt);
    drop(handle);
    let _ = std::fs::remove_dir_all(&dir);
}
