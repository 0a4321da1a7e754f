//! The served node (`prepaid serve`): a `Node` behind two listeners — the
//! gRPC API (`grpc.rs`, contract in `proto/prepaid.proto`) and the HTTP ops
//! side (`http.rs`: `/health`, `/metrics`, the JSON admin API) — with API
//! tokens (`auth.rs`), metrics (`metrics.rs`) and webhooks (`webhooks.rs`).
//!
//! Both listeners bound their open connections (`server.max_connections`):
//! a connection past the bound is closed as soon as it is accepted, so
//! thousands of idle clients cost file descriptors only up to the bound.
//! With `[tls]` both speak TLS only (rustls; gRPC negotiates `h2`).
//! Shutdown (SIGTERM, SIGINT, or the future given to `run`): stop accepting,
//! let calls in flight finish, stop the node (drain actors, sync, flush),
//! then return.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::config::NodeConfig;
use crate::node::Node;

pub mod auth;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod webhooks;

/// What both listeners share.
pub struct Api {
    /// Held weakly: a connection the server keeps (an idle client that
    /// never reads its GOAWAY) must not keep the node from stopping. Each
    /// call holds it for as long as it runs (`node()`).
    node: std::sync::Weak<Node>,
    pub cfg: NodeConfig,
    pub auth: auth::Auth,
    pub metrics: metrics::Metrics,
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
    /// Turns true when the server starts stopping: open `Authorize` streams
    /// stop reading, answer what they hold, and end.
    pub stopping: watch::Receiver<bool>,
    /// When the server started (uptime in /health and /metrics).
    pub started: std::time::Instant,
    /// Numbers the request ids the server makes up (see `request_id`).
    pub next_request: std::sync::atomic::AtomicU64,
}

impl Api {
    /// The node, for one call: `shutting_down` once the server let go of it.
    pub fn node(&self) -> Result<Arc<Node>, crate::error::Error> {
        self.node.upgrade().ok_or(crate::error::Error::ShuttingDown)
    }

    pub fn gauges(&self) -> metrics::Gauges {
        let w = self.webhooks.as_ref().map(|w| w.figures()).unwrap_or_default();
        let Ok(node) = self.node() else {
            return metrics::Gauges::default();
        };
        metrics::Gauges {
            resident_accounts: node.resident_accounts(),
            storage_failed: node.storage_failure().is_some(),
            storage_events: node.storage_events(),
            in_flight: node.in_flight(),
            node: node.stats(),
            webhook_backlog: w.backlog,
            webhook_delivered: w.delivered,
            webhook_failed_attempts: w.failed_attempts,
            webhook_dead_letters: w.dead_letters,
            uptime_seconds: self.started.elapsed().as_secs(),
            process: metrics::Process::read(),
            cluster: node.cluster_status().map(|groups| metrics::ClusterGauges {
                groups,
                forwarded: node.forwarded_count(),
                waiting: node.waiting_count(),
                map_version: node.shard_map().map_or(0, |m| m.version),
                moves_planned: node.shard_map().map_or(0, |m| m.moves.len() as u64),
            }),
        }
    }

    /// The caller's `x-request-id` when it is one (1 to 128 printable ASCII
    /// characters), else one made up here: the process id and a counter.
    /// Logs of the call carry it and the reply echoes it.
    pub fn request_id(&self, given: Option<&[u8]>) -> String {
        match given {
            Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) => {
                String::from_utf8_lossy(v).into_owned()
            }
            _ => {
                let n = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{:x}-{n:x}", std::process::id())
            }
        }
    }
}

/// An accepted connection, plain or TLS, that holds one of its listener's
/// connection permits.
pub struct Conn {
    stream: Stream,
    info: tonic::transport::server::TcpConnectInfo,
    _permit: OwnedSemaphorePermit,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

/// Longest a client may take over its TLS handshake before the connection
/// (and its permit) is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener that keeps at most `max` connections open, handshaking TLS
/// when given an acceptor. A task accepts; TLS handshakes run each in a task
/// of its own, so one slow client never holds up the next; ready
/// connections come out of `next`. The task stops when this is dropped.
pub struct Limited {
    ready: tokio::sync::mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Limited {
    pub fn new(listener: TcpListener, max: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Limited> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, Arc::new(Semaphore::new(max)), tls, tx));
        Ok(Limited { ready, local, task })
    }

    /// The next connection within the bound (past it they are closed).
    pub async fn next(&mut self) -> (Conn, SocketAddr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it never does while this lives).
            None => std::future::pending().await,
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ready: tokio::sync::mpsc::Sender<(Conn, SocketAddr)>,
) {
    use tonic::transport::server::Connected;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: wait
            // a little rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = stream.connect_info();
        match &tls {
            None => {
                let conn = Conn { stream: Stream::Plain(stream), info, _permit: permit };
                if ready.send((conn, addr)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let conn = Conn { stream: Stream::Tls(Box::new(tls)), info, _permit: permit };
                            let _ = ready.send((conn, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("the gRPC server failed: {0}")]
    Grpc(String),
    #[error("{0}")]
    Start(String),
}

/// Where a running server listens.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Serves `node` until `shutdown` completes, then stops the node cleanly.
/// `on_bound` hears the addresses once both listeners are open (port 0 in
/// the configuration picks a free port).
pub async fn run(
    cfg: NodeConfig,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    // Nothing may fail after the node started without stopping it first: a
    // node dropped while its writer and RocksDB run takes the process down
    // with it (a failed bind used to crash with memory corruption).
    let grace = std::time::Duration::from_millis(cfg.server.shutdown_grace_ms);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::wire::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Start(format!("gRPC reflection: {e}")));
    let tls = match cfg.tls.enabled() {
        true => crate::tls::Acceptors::new(&cfg.tls.cert_file, &cfg.tls.key_file)
            .map(Some)
            .map_err(|e| ServeError::Start(format!("TLS: {e}"))),
        false => Ok(None),
    };
    let (reflection, tls, (grpc_listener, http_listener, bound)) = match (reflection, tls, bind(&cfg).await) {
        (Ok(reflection), Ok(tls), Ok(bound)) => (reflection, tls, bound),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    let (grpc_tls, http_tls) = match tls {
        Some(a) => (Some(a.grpc), Some(a.http)),
        None => (None, None),
    };
    let limited = |listener, tls| {
        Limited::new(listener, cfg.server.max_connections, tls).map_err(|e| ServeError::Start(e.to_string()))
    };
    let (mut grpc_limited, http_limited) = match (limited(grpc_listener, grpc_tls), limited(http_listener, http_tls)) {
        (Ok(g), Ok(h)) => (g, h),
        (Err(e), _) | (_, Err(e)) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    let data_dir = match cfg.node.data_dir.as_os_str().is_empty() {
        true => "ephemeral (a temporary directory removed at stop)".to_string(),
        false => cfg.node.data_dir.display().to_string(),
    };
    tracing::info!(
        version = crate::VERSION,
        grpc = %bound.grpc,
        http = %bound.http,
        tls = cfg.tls.enabled(),
        data_dir = %data_dir,
        durability = ?cfg.node.durability,
        gateway = %gateway_summary(&cfg.recharge),
        webhooks = cfg.webhooks.urls.len(),
        tokens = cfg.server.tokens.len(),
        "serving"
    );
    let node = Arc::new(node);
    let webhooks = match webhooks::Webhooks::start(&cfg, &node) {
        Ok(w) => w,
        Err(e) => {
            let _ = stop_node(node, grace).await;
            return Err(ServeError::Start(e.to_string()));
        }
    };
    // Clustered: the node link is served beside the ledger (its calls carry
    // the cluster secret, not an API token). A group's append carries up
    // to `max_payload_entries` group commits.
    let link = node.link_service().map(|link| {
        crate::cluster::link::pb::node_link_server::NodeLinkServer::new(link)
            .max_decoding_message_size(crate::cluster::link::LINK_MESSAGE_BYTES)
            .max_encoding_message_size(crate::cluster::link::LINK_MESSAGE_BYTES)
    });
    // One signal for both listeners and every stream.
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = Arc::new(Api {
        node: Arc::downgrade(&node),
        auth: auth::Auth::new(&cfg.server.tokens),
        metrics: metrics::Metrics::default(),
        webhooks: webhooks.clone(),
        cfg: cfg.clone(),
        stopping: stop_rx.clone(),
        started: std::time::Instant::now(),
        next_request: std::sync::atomic::AtomicU64::new(1),
    });

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // `wait_for` would hold a guard across the await; `changed` does not.
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    };

    // gRPC: accepted connections flow through a channel from the bounded
    // listener.
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    let accept_stop = stopped(stop_rx.clone());
    let acceptor = tokio::spawn(async move {
        tokio::pin!(accept_stop);
        loop {
            tokio::select! {
                (conn, _) = grpc_limited.next() => {
                    if conn_tx.send(Ok(conn)).await.is_err() {
                        break;
                    }
                }
                _ = &mut accept_stop => break,
            }
        }
    });
    let max = cfg.server.max_message_bytes;
    let service = crate::wire::pb::ledger_server::LedgerServer::new(grpc::LedgerService(Arc::clone(&api)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max.max(64 * 1024 * 1024));
    // gRPC health checking (`grpc.health.v1`: the Ledger service and ""
    // follow storage, as /health does) and reflection (grpcurl), both
    // without a token, as probes need.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_watch = tokio::spawn(watch_health(Arc::clone(&api), reporter, stop_rx.clone()));
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(cfg.server.max_streams_per_connection))
        .add_service(grpc::Door { inner: service, api: Arc::clone(&api) })
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(link)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(conn_rx), stopped(stop_rx.clone()));

    let app = http::router(Arc::clone(&api));
    let http_server = axum::serve(http_limited, app).with_graceful_shutdown(stopped(stop_rx.clone()));

    on_bound(bound);
    // Calls in flight get `shutdown_grace_ms` to finish once stopping starts;
    // then connections still open (a client that never reads) are dropped.
    let mut servers = Box::pin(async { tokio::join!(grpc, http_server.into_future()) });
    let deadline = stopped(stop_rx.clone());
    let results = tokio::select! {
        results = &mut servers => Some(results),
        _ = async { deadline.await; tokio::time::sleep(grace).await } => None,
    };
    drop(servers);
    acceptor.abort();
    health_watch.abort();
    if let Some(w) = &webhooks {
        w.stop().await;
    }
    let backlog = webhooks.as_ref().map_or(0, |w| w.figures().backlog);
    let (requests, refused) = api.metrics.totals();
    let uptime_seconds = api.started.elapsed().as_secs();
    drop(api);
    drop(webhooks);
    // Every call is answered and every task let go of the node: stop it.
    let clean = stop_node(node, grace).await;
    tracing::info!(uptime_seconds, requests, refused, webhook_backlog = backlog, final_sync = clean, "server stopped");
    if let Some((grpc_result, http_result)) = results {
        grpc_result.map_err(|e| ServeError::Grpc(e.to_string()))?;
        http_result.map_err(|e| ServeError::Start(e.to_string()))?;
    }
    Ok(())
}

/// The service name gRPC health checks ask for (besides "", the server).
pub const GRPC_SERVICE: &str = "prepaid.v1.Ledger";

/// Keeps gRPC health in step with the node: SERVING while storage works,
/// NOT_SERVING while it is failed (writes refused) and once stopping starts.
async fn watch_health(api: Arc<Api>, reporter: tonic_health::server::HealthReporter, mut stop: watch::Receiver<bool>) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let stopping = *stop.borrow();
        let serving = !stopping && api.node().is_ok_and(|node| node.storage_failure().is_none());
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(GRPC_SERVICE, status).await;
            last = Some(status);
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Both listeners, or why not.
async fn bind(cfg: &NodeConfig) -> Result<(TcpListener, TcpListener, Bound), ServeError> {
    let bind =
        |addr: String| async move { TcpListener::bind(&addr).await.map_err(|error| ServeError::Bind { addr, error }) };
    let grpc_listener = bind(cfg.server.grpc_addr.clone()).await?;
    let http_listener = bind(cfg.server.http_addr.clone()).await?;
    let bound = Bound {
        grpc: grpc_listener.local_addr().map_err(|e| ServeError::Start(e.to_string()))?,
        http: http_listener.local_addr().map_err(|e| ServeError::Start(e.to_string()))?,
    };
    Ok((grpc_listener, http_listener, bound))
}

/// The gateway, for the start-up log: its scheme, host and port only (a
/// URL may carry credentials in its user part or query).
fn gateway_summary(r: &crate::config::RechargeSettings) -> String {
    if r.simulated_gateway {
        return "simulated (charges nothing, always succeeds)".into();
    }
    match crate::httpc::parse_url(&r.gateway_url) {
        Ok(uri) => {
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", uri.scheme_str().unwrap_or("http"), uri.host().unwrap_or(""))
        }
        Err(_) => "none".into(),
    }
}

/// Stops the node once nothing else holds it. A stream's last batch may
/// still hold it briefly; waits up to `grace`. Whether it stopped with its
/// final sync.
async fn stop_node(node: Arc<Node>, grace: std::time::Duration) -> bool {
    let mut node = node;
    let mut waited = std::time::Duration::ZERO;
    loop {
        match Arc::try_unwrap(node) {
            Ok(n) => {
                n.shutdown().await;
                return true;
            }
            Err(n) if waited < grace => {
                node = n;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                waited += std::time::Duration::from_millis(5);
            }
            Err(_) => {
                // Acknowledged writes are durable already (sync mode, and
                // money in always); what async mode held unsynced is lost
                // as in a crash.
                tracing::warn!("the node is still in use after the grace period; stopping without its final sync");
                return false;
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that comes right
/// after start (before the server polls it) must drain, not kill.
pub fn termination() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
}
