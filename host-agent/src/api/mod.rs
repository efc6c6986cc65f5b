//! The agent's gRPC API (tonic): counters, generations, offload plan, the capo
//! views, packet trace and (when enabled) packet injection; `grpc.health.v1` and
//! server reflection. Served on a unix socket (mode 0660, group configurable) and
//! optionally on TCP with mutual TLS. Runs on its own tokio runtime; it reads the
//! policy through [`crate::api::readers`], which holds the daemon's lock only to pick up
//! a snapshot, so no reader delays policy updates.

pub mod client;
pub mod metrics;
pub mod readers;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};

use capo_proto::capo::agent::v1 as api;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::readers::Readers;
use crate::core::daemon::{lock, SharedDaemon};
use crate::views::{packet, trace_json, trace_text, View};

/// The agent's API socket when none is given.
pub const DEFAULT_API_SOCKET: &str = "/var/run/capo/agent.sock";

/// Where and how to serve the API.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group owning the socket (name or number); the file mode is 0660.
    pub group: Option<String>,
    /// Also serve on TCP with mutual TLS.
    pub tcp: Option<TcpTls>,
    /// Accept Inject requests (tests and demos).
    pub inject: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<SocketAddr>,
    /// Serve `grpc.health.v1` alone, in plaintext, on this address: the target of
    /// Kubernetes' gRPC probes, which cannot reach a unix socket nor present a
    /// client certificate. Nothing but health is served there.
    pub health: Option<SocketAddr>,
}

/// The health service name whose status is `SERVING` once a generation is in force
/// and every dataplane took it (readiness); the empty name is the agent's liveness.
pub const READY_SERVICE: &str = "capo.ready";

/// TCP listener with mutual TLS.
#[derive(Debug, Clone)]
pub struct TcpTls {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound or set up.
    #[error("{path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The group does not exist.
    #[error("group {0:?} not found")]
    UnknownGroup(String),
    /// TLS material could not be read.
    #[error("{path}: {source}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The tokio runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// The TCP server failed to start.
    #[error("tcp: {0}")]
    Tcp(String),
    /// The metrics listener could not bind.
    #[error("metrics {0}: {1}")]
    Metrics(SocketAddr, std::io::Error),
    /// The health listener could not bind.
    #[error("health {0}: {1}")]
    Health(SocketAddr, std::io::Error),
}

/// Resolves a group name (from /etc/group) or number to a gid.
pub fn resolve_group(group: &str) -> Result<u32, ApiError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            let gid = f.next()?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| ApiError::UnknownGroup(group.to_string()))
}

/// Binds the API socket with mode 0660 and the configured group, replacing a stale
/// socket file.
fn bind_socket(opts: &ApiOptions) -> Result<std::os::unix::net::UnixListener, ApiError> {
    let path = &opts.socket;
    let err = |source| ApiError::Socket {
        path: path.clone(),
        source,
    };
    let gid = opts.group.as_deref().map(resolve_group).transpose()?;
    let listener = capo_socket::bind(path, 0o660, gid).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// A running API; dropping it stops the servers and removes the socket file.
pub struct ApiHandle {
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
    health_addr: Option<SocketAddr>,
}

impl ApiHandle {
    /// The unix socket served.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where the plaintext health listener is bound, when there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts the API servers on a runtime thread of their own.
pub fn spawn(daemon: SharedDaemon, opts: ApiOptions) -> Result<ApiHandle, ApiError> {
    let listener = bind_socket(&opts)?;
    let tls = match &opts.tcp {
        Some(t) => Some((t.addr, tls_config(t)?)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("capo-api")
        .enable_all()
        .build()
        .map_err(ApiError::Runtime)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let socket = opts.socket.clone();
    let inject = opts.inject;
    let metrics = opts.metrics;
    // Bound here so that a busy port fails the start and the bound address (port 0
    // picks one) is known to the caller.
    let (health_listener, health_addr) = match opts.health {
        Some(addr) => {
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(|l| l.local_addr().map(|a| (l, a)))
                .map_err(|e| ApiError::Health(addr, e))?;
            (Some(bound.0), Some(bound.1))
        }
        None => (None, None),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ApiError>>();
    let thread = std::thread::Builder::new()
        .name("capo-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let uds = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ApiError::Runtime(e)));
                        return;
                    }
                };
                let mut tasks = Vec::new();
                let stop = wait_for(rx.clone());
                // One set of readers for every listener: a view rendered for one
                // client serves the others and the metrics scrape.
                let readers = Readers::new(daemon.clone());
                let router = router(readers.clone(), inject).await;
                tasks.push(tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                        tracing::error!(error = %e, "API server on the unix socket failed");
                    }
                }));
                if let Some((addr, tls)) = tls {
                    let stop = wait_for(rx.clone());
                    let builder = match tonic::transport::Server::builder().tls_config(tls) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(ApiError::Tcp(e.to_string())));
                            return;
                        }
                    };
                    let router = add_services(
                        builder.layer(decode_errors_layer()),
                        readers.clone(),
                        inject,
                    )
                    .await;
                    tasks.push(tokio::spawn(async move {
                        if let Err(e) = router.serve_with_shutdown(addr, stop).await {
                            tracing::error!(error = %e, "API server on TCP failed");
                        }
                    }));
                }
                if let Some(addr) = metrics {
                    let stop = wait_for(rx.clone());
                    let listener = match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(ApiError::Metrics(addr, e)));
                            return;
                        }
                    };
                    let r = readers.clone();
                    tasks.push(tokio::spawn(async move {
                        if let Err(e) = crate::api::metrics::serve(r, listener, stop).await {
                            tracing::error!(error = %e, "metrics listener failed");
                        }
                    }));
                }
                if let Some(listener) = health_listener {
                    let stop = wait_for(rx.clone());
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => tasks.push(tokio::spawn(serve_health(daemon.clone(), l, stop))),
                        Err(e) => {
                            let _ = ready_tx.send(Err(ApiError::Runtime(e)));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
        .map_err(ApiError::Runtime)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::Tcp("API thread ended during start-up".into())),
    }
    tracing::info!(socket = %socket.display(), "gRPC API listening");
    if let Some(addr) = health_addr {
        tracing::info!(%addr, "gRPC health (plaintext, health only) listening");
    }
    Ok(ApiHandle {
        shutdown: Some(tx),
        thread: Some(thread),
        socket,
        health_addr,
    })
}

/// Serves `grpc.health.v1` alone on `listener`: the empty service is `SERVING`
/// while the agent runs, [`READY_SERVICE`] follows [`crate::daemon::Daemon::ready`],
/// looked at every second.
async fn serve_health(
    daemon: SharedDaemon,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let watch = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut was_ready = None;
        loop {
            tick.tick().await;
            let d = daemon.clone();
            let ready = tokio::task::spawn_blocking(move || lock(&d).ready())
                .await
                .unwrap_or(false);
            if was_ready != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(READY_SERVICE, status).await;
                was_ready = Some(ready);
            }
        }
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    // Probes are short and stateless: at shutdown their connections are cut rather
    // than waited for, so a stuck prober cannot hold the agent up.
    tokio::select! {
        r = server => if let Err(e) = r {
            tracing::error!(error = %e, "health listener failed");
        },
        () = stop => {}
    }
    watch.abort();
}

async fn wait_for(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn tls_config(t: &TcpTls) -> Result<tonic::transport::ServerTlsConfig, ApiError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| ApiError::Tls {
            path: p.clone(),
            source,
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?);
    let ca = tonic::transport::Certificate::from_pem(read(&t.client_ca)?);
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(ca))
}

/// Maps a response whose status is tonic's answer to an undecodable request body
/// (`INTERNAL`, "failed to decode Protobuf message") to `INVALID_ARGUMENT`: the
/// caller sent a bad message, the agent did not fail.
fn invalid_argument_for_decode_errors<B>(
    mut res: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let h = res.headers_mut();
    let internal = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13");
    let decode = h
        .get("grpc-message")
        .is_some_and(|m| String::from_utf8_lossy(m.as_bytes()).contains("decode"));
    if internal && decode {
        h.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("3"),
        );
    }
    res
}

type DecodeErrorsLayer = tower::util::MapResponseLayer<
    fn(
        tonic::codegen::http::Response<tonic::body::Body>,
    ) -> tonic::codegen::http::Response<tonic::body::Body>,
>;

fn decode_errors_layer() -> DecodeErrorsLayer {
    tower::util::MapResponseLayer::new(invalid_argument_for_decode_errors)
}

async fn router(
    readers: Readers,
    inject: bool,
) -> tonic::transport::server::Router<
    tower::layer::util::Stack<DecodeErrorsLayer, tower::layer::util::Identity>,
> {
    add_services(
        tonic::transport::Server::builder().layer(decode_errors_layer()),
        readers,
        inject,
    )
    .await
}

async fn add_services<L: Clone>(
    mut builder: tonic::transport::Server<L>,
    readers: Readers,
    inject: bool,
) -> tonic::transport::server::Router<L> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let svc = Api {
        daemon: readers.daemon().clone(),
        readers,
        inject,
    };
    let mut router = builder
        .add_service(health)
        .add_service(api::counters_server::CountersServer::new(svc.clone()))
        .add_service(api::generations_server::GenerationsServer::new(svc.clone()))
        .add_service(api::offload_server::OffloadServer::new(svc.clone()))
        .add_service(api::views_server::ViewsServer::new(svc.clone()))
        .add_service(api::trace_server::TraceServer::new(svc.clone()))
        .add_service(api::inject_server::InjectServer::new(svc));
    match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(capo_proto::CAPO_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(reflection) => router = router.add_service(reflection),
        Err(e) => tracing::warn!(error = %e, "gRPC reflection unavailable"),
    }
    router
}

#[derive(Clone)]
struct Api {
    daemon: SharedDaemon,
    readers: Readers,
    inject: bool,
}

fn no_policy() -> Status {
    Status::failed_precondition("no policy yet: the agent has not been in sync with its source")
}

impl Api {
    /// Locks the daemon from an async handler: waiting for the lock (held by the
    /// policy source between frames, or by a slow dataplane) must not stall this
    /// runtime's other requests.
    fn locked(&self) -> std::sync::MutexGuard<'_, crate::core::daemon::Daemon> {
        tokio::task::block_in_place(|| lock(&self.daemon))
    }

    async fn counters(&self) -> Result<api::CountersReply, Status> {
        // With VPP the counters are VPP's, read over the control channel (outside the
        // daemon's lock).
        let vpp = self.locked().vpp();
        if let Some(h) = vpp {
            return tokio::task::block_in_place(|| h.counters())
                .map_err(|e| Status::unavailable(e.to_string()));
        }
        match self.readers.embedded_counters().await {
            Some(c) => Ok(c),
            None => Ok(api::CountersReply {
                generation: self.locked().generation(),
                ..Default::default()
            }),
        }
    }
}

#[tonic::async_trait]
impl api::counters_server::Counters for Api {
    async fn get(
        &self,
        _req: Request<api::CountersRequest>,
    ) -> Result<Response<api::CountersReply>, Status> {
        Ok(Response::new(self.counters().await?))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<api::CountersReply, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<api::WatchCountersRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ms = match req.get_ref().interval_ms {
            0 => 1000,
            n if n < 100 => {
                return Err(Status::invalid_argument(
                    "interval_ms: must be at least 100 (or 0 for the default 1000)",
                ))
            }
            n => n,
        };
        let me = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ms)));
            loop {
                tick.tick().await;
                if tx.send(me.counters().await).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[tonic::async_trait]
impl api::generations_server::Generations for Api {
    async fn get(
        &self,
        _req: Request<api::GenerationsRequest>,
    ) -> Result<Response<api::GenerationsReply>, Status> {
        let d = self.locked();
        let vpp = d.vpp().map(|h| h.status());
        let history = d
            .history()
            .map(|c| api::Commit {
                generation: c.generation,
                started_unix_ms: c
                    .started
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                duration_us: c.duration.as_micros() as u64,
                outcome: match &vpp {
                    // Committed only once the plugin acknowledged it.
                    Some(v) if v.confirmed >= c.generation => "committed".to_string(),
                    Some(v)
                        if v.last_error
                            .as_ref()
                            .is_some_and(|(g, _)| *g >= c.generation) =>
                    {
                        "refused".to_string()
                    }
                    Some(_) => "pending".to_string(),
                    None => c.outcome.to_string(),
                },
                detail: match &vpp {
                    Some(v) => format!("vpp: {}", v.outcome(c.generation)),
                    None => c.detail.clone(),
                },
                nic_group: 0,
            })
            .collect();
        Ok(Response::new(api::GenerationsReply {
            active: d.generation(),
            history,
            pending_updates: u32::try_from(d.pending_updates()).unwrap_or(u32::MAX),
            source: d.source().as_str().to_string(),
            in_sync: d.in_sync(),
            warnings: d.warnings(),
        }))
    }
}

#[tonic::async_trait]
impl api::offload_server::Offload for Api {
    async fn get_plan(
        &self,
        req: Request<api::OffloadPlanRequest>,
    ) -> Result<Response<api::OffloadPlanReply>, Status> {
        let mut plan = self.readers.offload_plan().await.ok_or_else(no_policy)?;
        let r = req.get_ref();
        if r.testpmd {
            let port = u16::try_from(r.port)
                .map_err(|_| Status::invalid_argument("port: a DPDK port id (0..=65535)"))?;
            let embedded = self.locked().embedded();
            if let Some(e) = embedded {
                let script = tokio::task::block_in_place(|| {
                    crate::sinks::embedded::lock_embedded(&e).testpmd_script(port)
                });
                plan.testpmd_commands = script.unwrap_or_default();
            }
        }
        Ok(Response::new(plan))
    }
}

#[tonic::async_trait]
impl api::views_server::Views for Api {
    async fn get(
        &self,
        req: Request<api::ViewRequest>,
    ) -> Result<Response<api::ViewReply>, Status> {
        let r = req.get_ref();
        let view = match api::ViewKind::try_from(r.view) {
            Ok(api::ViewKind::Interfaces) => View::Interfaces,
            Ok(api::ViewKind::Ipsets) => View::Ipsets,
            Ok(api::ViewKind::Policies) => View::Policies { verbose: r.verbose },
            Ok(api::ViewKind::Rules) => View::Rules,
            _ => {
                return Err(Status::invalid_argument(
                    "view: one of INTERFACES, IPSETS, POLICIES, RULES",
                ))
            }
        };
        let vpp = self.locked().vpp();
        if let Some(h) = vpp {
            // With VPP the views are VPP's (its interface names and sw_if_index).
            let (name, verbose) = match view {
                View::Interfaces => ("interfaces", false),
                View::Ipsets => ("ipsets", false),
                View::Policies { verbose } => ("policies", verbose),
                View::Rules => ("rules", false),
            };
            let reply = tokio::task::block_in_place(|| h.show(name, verbose))
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let lines = view_lines(&reply.text, r.with_lines);
            return Ok(Response::new(api::ViewReply {
                text: reply.text,
                generation: reply.generation,
                lines,
            }));
        }
        let snapshot = self.readers.snapshot().ok_or_else(no_policy)?;
        let text = self.readers.view(&snapshot, view).await;
        let lines = view_lines(&text, r.with_lines);
        Ok(Response::new(api::ViewReply {
            text: text.as_ref().clone(),
            generation: snapshot.generation,
            lines,
        }))
    }
}

/// The view as lines, when the caller asked for them (the text is sent either way).
fn view_lines(text: &str, wanted: bool) -> Vec<api::ViewLine> {
    if !wanted {
        return Vec::new();
    }
    text.lines()
        .map(|l| api::ViewLine {
            text: l.to_string(),
        })
        .collect()
}

fn port(v: Option<u32>, field: &str) -> Result<Option<u16>, Status> {
    v.map(|p| {
        u16::try_from(p)
            .map_err(|_| Status::invalid_argument(format!("{field}: {p} is not a port")))
    })
    .transpose()
}

fn byte(v: Option<u32>, field: &str) -> Result<Option<u8>, Status> {
    v.map(|p| {
        u8::try_from(p)
            .map_err(|_| Status::invalid_argument(format!("{field}: {p} is not 0..=255")))
    })
    .transpose()
}

#[tonic::async_trait]
impl api::trace_server::Trace for Api {
    async fn trace(
        &self,
        req: Request<api::TraceRequest>,
    ) -> Result<Response<api::TraceReply>, Status> {
        let r = req.get_ref();
        let from: IpAddr = r.from.parse().map_err(|_| {
            Status::invalid_argument(format!("from: {:?} is not an IP address", r.from))
        })?;
        let to: IpAddr = r.to.parse().map_err(|_| {
            Status::invalid_argument(format!("to: {:?} is not an IP address", r.to))
        })?;
        let pkt = packet(
            from,
            to,
            &r.protocol,
            port(r.src_port, "src_port")?,
            port(r.dst_port, "dst_port")?,
            byte(r.icmp_type, "icmp_type")?,
            byte(r.icmp_code, "icmp_code")?,
        )
        .map_err(|e| Status::invalid_argument(api_field_names(&e.to_string())))?;
        let snapshot = self.readers.snapshot().ok_or_else(no_policy)?;
        let embedded = self.locked().embedded();
        let decided_in = |interface: &str, dir, pkt: &capo_policy::Packet| {
            embedded
                .as_ref()
                .and_then(|e| {
                    crate::sinks::embedded::lock_embedded(e).decided_where(interface, dir, pkt)
                })
                .unwrap_or("software")
        };
        let (state, ids) = (snapshot.state.as_ref(), snapshot.ids.as_ref());
        let t = capo_policy::trace(state, &pkt);
        let views = capo_policy::Views::new(state, ids);
        let steps: Vec<api::TraceStep> = t
            .steps
            .iter()
            .map(|s| {
                let (interface, direction) = match &s.at {
                    capo_policy::eval::CheckPoint::Workload {
                        interface,
                        direction,
                        ..
                    }
                    | capo_policy::eval::CheckPoint::Forward {
                        interface,
                        direction,
                        ..
                    } => (interface.clone(), *direction),
                    capo_policy::eval::CheckPoint::Host { direction } => {
                        (ids.host_interface().to_string(), *direction)
                    }
                };
                api::TraceStep {
                    decided_in: decided_in(&interface, direction, &pkt).to_string(),
                    interface,
                    direction: direction.to_string(),
                    verdict: verdict_str(s.outcome.verdict).to_string(),
                    decider: views.decider_line(&s.outcome.decider),
                }
            })
            .collect();
        // capoctl's text, with where each step is decided.
        let mut text = String::new();
        let mut step_lines = steps.iter();
        for line in trace_text(&t, state, ids).lines() {
            text += line;
            // Step lines are indented by two; "logged by" lines by four.
            let is_step =
                line.starts_with("  ") && !line.starts_with("    ") && !t.steps.is_empty();
            if is_step {
                if let Some(step) = step_lines.next() {
                    text += &format!(" [decided in {}]", step.decided_in);
                }
            }
            text.push('\n');
        }
        Ok(Response::new(api::TraceReply {
            verdict: verdict_str(t.verdict).to_string(),
            steps,
            generation: snapshot.generation,
            text,
            json: trace_json(&t, state, ids).to_string(),
        }))
    }
}

/// capoctl's argument names in a message, as the request's field names.
fn api_field_names(msg: &str) -> String {
    [
        ("--proto", "protocol"),
        ("--sport", "src_port"),
        ("--dport", "dst_port"),
        ("--icmp-type", "icmp_type"),
        ("--icmp-code", "icmp_code"),
        ("--from", "from"),
        ("--to", "to"),
    ]
    .iter()
    .fold(msg.to_string(), |m, (flag, field)| m.replace(flag, field))
}

fn verdict_str(v: capo_policy::Verdict) -> &'static str {
    match v {
        capo_policy::Verdict::Allow => "allow",
        capo_policy::Verdict::Deny => "deny",
    }
}

#[tonic::async_trait]
impl api::inject_server::Inject for Api {
    async fn inject(
        &self,
        req: Request<api::InjectRequest>,
    ) -> Result<Response<api::InjectReply>, Status> {
        if !self.inject {
            return Err(Status::permission_denied(
                "inject is off: start capo-agent with --enable-inject",
            ));
        }
        let r = req.into_inner();
        let direction = match r.direction.as_str() {
            "ingress" => capo_policy::Direction::Ingress,
            "egress" => capo_policy::Direction::Egress,
            other => {
                return Err(Status::invalid_argument(format!(
                    "direction: {other:?} is not ingress or egress"
                )))
            }
        };
        if r.interface.is_empty() {
            return Err(Status::invalid_argument("interface: required"));
        }
        let embedded = {
            let d = self.locked();
            if d.state().is_none() {
                return Err(no_policy());
            }
            d.embedded()
        };
        let result = match embedded {
            // The packets wait for the embedded dataplane only, not the daemon.
            Some(e) => tokio::task::block_in_place(|| {
                crate::sinks::embedded::lock_embedded(&e).inject(&r.interface, direction, &r.frames)
            }),
            None => self.locked().inject(&r.interface, direction, &r.frames),
        };
        result
            .map(Response::new)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

/// Why a client could not connect to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint could not be built.
    #[error("{0}")]
    Endpoint(tonic::transport::Error),
    /// The socket did not answer.
    #[error("{}: {chain}", .socket.display())]
    Socket {
        /// The agent's socket.
        socket: PathBuf,
        /// The error and its sources.
        chain: String,
    },
}

/// A client connected to the agent's unix socket.
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel, ConnectError> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://capo-agent")
        .map_err(ConnectError::Endpoint)?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::Socket {
            socket: socket.to_path_buf(),
            chain: error_chain(&e),
        })
}

/// An error and its sources, `a: b: c` (tonic's transport errors hide the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s += ": ";
            s += &msg;
        }
        cur = c.source();
    }
    s
}
