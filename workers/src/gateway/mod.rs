//! The SSE gateway: the stream topic fanned out to browsers as Server-Sent Events.
//!
//! - [`hub`]: the transport-independent core (the replay ring, ingest, subscriptions, heartbeats),
//!   fed by any `Stream<Item = bus::Record>`; [`cursor`]: event ids; [`event`]: one framed event;
//!   [`admission`]: connected clients and the slow-client sweep; [`stats`]: `/stats` and heartbeats.
//! - [`delivery`]: what each client is sent of each event, and when it is dropped, as pure functions.
//! - [`kafka`]: the Kafka tail — every replica reads every partition (`assign`, no consumer group).
//! - [`sse`]: `GET /stream` admission and each client's frames; [`payload`]: what clients receive;
//!   [`auth`]: optional JWTs (HS256, RS256, ES256); [`params`]: the bounded filter parameters; [`limits`]: connection
//!   limits and who a client is (its peer, or what a trusted proxy forwards).
//! - [`handoff`] and [`fanout`]: stream connections are taken off the HTTP server and written by one
//!   shard per core, so an event costs one `writev` per client and nothing else; [`recent`]: a shard's
//!   copy of the newest events.
//!
//! The gateway runs its own accept loop rather than [`cryptoviz_runtime::health::serve`]: it reads each connection's
//! first request itself to hand stream connections over, and it closes the connection of a client whose
//! socket stopped draining. Event format, ids and resume: `docs/gateway.md`.

pub mod admission;
pub mod auth;
pub mod cursor;
pub mod delivery;
pub mod event;
pub mod fanout;
pub mod handoff;
pub mod hub;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod payload;
pub mod recent;
pub mod sse;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use cryptoviz_crds::config::WorkerConfig;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_service::Service as _;

use self::auth::Auth;
use self::hub::{Hub, HubOptions};
use self::metrics::Metrics;
use cryptoviz_runtime::health::Health;

/// The live page, self-contained (no CDN, no external fetch).
const PAGE: &str = include_str!("page.html");

/// How long connections get to finish after the shutdown event before they are closed.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Kernel send buffer per connection (Linux doubles it).
const SEND_BUFFER: usize = 32 * 1024;

/// Pending connections the kernel holds for the accept loop (capped by `net.core.somaxconn`). A restart or
/// a network blip brings every browser back within seconds; with a short queue the overflow's SYNs are
/// dropped and those clients wait a second or more for a retransmit.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind the gateway's listener with room for a reconnect storm: 4096 pending connections
/// (`net.core.somaxconn` caps it).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    let listener = socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        })
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    Ok(listener)
}

/// Environment variable overriding how many events a client may fall behind before it is disconnected.
pub const CLIENT_QUEUE_ENV: &str = "CRYPTOVIZ_GATEWAY_CLIENT_QUEUE";

/// State shared by the gateway's handlers.
pub struct Gateway {
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// Token verification, when auth is on.
    pub auth: Option<Auth>,
}

/// Hub options from the worker configuration.
pub fn hub_options(cfg: &WorkerConfig) -> anyhow::Result<HubOptions> {
    let client_queue = match std::env::var(CLIENT_QUEUE_ENV) {
        Ok(v) => v.parse().map_err(|e| anyhow::anyhow!("{CLIENT_QUEUE_ENV}={v:?}: {e}"))?,
        Err(_) => HubOptions::DEFAULT_CLIENT_QUEUE,
    };
    Ok(HubOptions {
        replay_buffer: cfg.gateway.replay_buffer as usize,
        client_queue,
        heartbeat: Duration::from_millis(cfg.gateway.heartbeat_interval_ms.max(100)),
        retry_ms: 1000,
        max_clients: cfg.gateway.max_clients,
        limits: limits::Limits::from_config(&cfg.gateway.limits)?,
    })
}

/// The gateway's routes (`/`, `/stream`, `/stats`) merged with `/health`, `/ready`, `/metrics` and `api`
/// (the history API, when the pipeline has storage), behind the CORS allow-list.
pub fn router(
    gw: Arc<Gateway>,
    registry: Registry,
    health: Arc<Health>,
    cors_origins: &[String],
    api: Option<Router>,
) -> Router {
    let own = Router::new()
        .route("/", get(page))
        .route("/stream", get(sse::stream))
        .route("/stats", get(stats))
        .with_state(gw);
    let app = own.merge(cryptoviz_runtime::health::router(registry, health)).merge(api.unwrap_or_default());
    if cors_origins.is_empty() {
        return app;
    }
    let origins = if cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    app.layer(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION, header::HeaderName::from_static("last-event-id")]),
    )
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn stats(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    axum::Json(gw.hub.stats())
}

/// Serve `app` on `listener` until `shutdown` resolves; then tell every client to reconnect (the hub's
/// shutdown event), let connections drain for a few seconds, and close the rest.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    hub: Arc<Hub>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let mut shutdown = std::pin::pin!(shutdown);
    let (drain_tx, drain_rx) = watch::channel(false);
    // Each connection holds a sender; `recv` returns `None` once all of them are gone.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let fanout = fanout::Fanout::start(hub.clone())?;
    let limits = hub.opts.limits.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A small kernel send buffer bounds memory per client and makes a stalled reader visible (its
        // position stops) after kilobytes rather than megabytes of autotuned buffer.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        let app = app.clone();
        let mut drain = drain_rx.clone();
        let done = done_tx.clone();
        let fanout = fanout.clone();
        let (max_head, header_timeout, idle_timeout) = (limits.max_head, limits.header_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            let _done = done;
            let mut stream = stream;
            let kill = Arc::new(Notify::new());
            let conn_kill = sse::ConnKill(kill.clone());
            let pre = match handoff::read_first(&mut stream, max_head, header_timeout).await {
                None => return,
                Some(handoff::First::TooLarge) => return handoff::refuse_head(stream).await,
                Some(handoff::First::Other(pre)) => pre,
                Some(handoff::First::Stream(mut req)) => {
                    req.extensions_mut().insert(conn_kill);
                    req.extensions_mut().insert(sse::Peer(peer));
                    let Ok(resp) = app.clone().call(*req).await;
                    let conn = resp.extensions().get::<sse::Handoff>().and_then(|h| h.0.lock().ok()?.take());
                    match conn {
                        Some(conn) => fanout.run(stream, handoff::stream_head(&resp), conn, kill).await,
                        None => handoff::write_response(stream, resp).await,
                    }
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(conn_kill.clone());
                req.extensions_mut().insert(sse::Peer(peer));
                app.clone().call(req)
            });
            // One request per connection: a `/stream` request must be the first on its connection to be
            // handed over, and the other routes are cheap to reconnect to.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(max_head.max(8192))
                .serve_connection(TokioIo::new(handoff::Rewind::new(pre, stream)), svc);
            let mut conn = std::pin::pin!(conn);
            // The head is in; a response not taken within the idle timeout is abandoned.
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(idle_timeout) => return,
                _ = kill.notified() => return,
                _ = drain.wait_for(|d| *d) => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = kill.notified() => {}
                _ = tokio::time::sleep(DRAIN_GRACE) => {}
            }
        });
    }
    drop(listener);
    hub.shutdown();
    let _ = drain_tx.send(true);
    drop(done_tx);
    let _ = tokio::time::timeout(DRAIN_GRACE * 2, done_rx.recv()).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Gateway mode: tail the stream topic from Kafka and serve SSE on `listen` until SIGTERM.
pub async fn run(cfg: WorkerConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let auth = Auth::from_config(&cfg.gateway)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let hub = Hub::new(hub_options(&cfg)?, metrics);
    let health = Health::new();
    let gw = Arc::new(Gateway { hub: hub.clone(), auth });
    let api = crate::history::History::from_config(&cfg, &mut registry)?.map(crate::history::router);
    let app = router(gw, registry, health.clone(), &cfg.gateway.cors_origins, api);
    let listener = bind(listen)?;

    let tail = tokio::spawn({
        let (hub, health) = (hub.clone(), health.clone());
        async move {
            if let Err(e) = kafka::tail(cfg, hub, health.clone()).await {
                // Unusable Kafka settings: report unhealthy so the pod restarts with the error in its log.
                tracing::error!(error = %e, "the Kafka tail stopped");
                health.set_ready(false);
                health.set_live(false);
            }
        }
    });
    tokio::spawn(hub.clone().housekeeping());
    let served = serve(listener, app, hub, cryptoviz_runtime::health::shutdown_signal()).await;
    tail.abort();
    served
}
