//! The HTTP server every CryptoViz binary runs for its probes and its metrics: `/health` (liveness),
//! `/ready` (readiness) and `/metrics` (Prometheus text), plus the binary's own routes merged in.
//!
//! `/healthz` and `/readyz` answer the same as `/health` and `/ready`: the operator's probes and its
//! `helm test` have always used the Kubernetes-style names, the workers' the short ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Health as the probes see it. Each binary flips these as its state changes.
#[derive(Debug, Default)]
pub struct Health {
    /// Liveness: false when the process should be restarted (e.g. every source down too long).
    pub live: AtomicBool,
    /// Readiness: false until the binary can do its job (connected, caught up, leading).
    pub ready: AtomicBool,
}

impl Health {
    /// Live, not yet ready.
    pub fn new() -> Arc<Self> {
        let h = Health::default();
        h.live.store(true, Ordering::Relaxed);
        Arc::new(h)
    }

    /// Set readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Set liveness.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Current liveness.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Current readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

struct Shared {
    registry: Registry,
    health: Arc<Health>,
}

/// The routes every binary serves; merge its own router into it.
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    let shared = Arc::new(Shared { registry, health });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(live))
        .route("/healthz", get(live))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn live(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.health.is_live() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "unhealthy") }
}

async fn ready(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.health.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

/// Bind `addr` and serve `app` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    serve_on(listener, app, shutdown).await
}

/// Serve `app` on a listener already bound (so a bind error is reported before anything starts).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /health, /ready, /metrics");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C: every binary's cue to shut down gracefully.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        } => {}
    }
}
