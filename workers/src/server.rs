//! The HTTP server every worker mode runs on [`WORKER_HTTP_PORT`](cryptoviz_crds::config::WORKER_HTTP_PORT):
//! `/health` (liveness), `/ready` (readiness) and `/metrics` (Prometheus), plus the mode's own routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Health as the probes see it. Modes flip these as their state changes.
#[derive(Default)]
pub struct Health {
    /// Liveness: false when the process should be restarted (e.g. every source down too long).
    pub live: AtomicBool,
    /// Readiness: false until the mode can do its job (connected, caught up).
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
}

struct Shared {
    registry: Registry,
    health: Arc<Health>,
}

/// The routes every mode serves; merge the mode's own router into it.
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    let shared = Arc::new(Shared { registry, health });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health_handler))
        .route("/ready", get(ready_handler))
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

async fn health_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.health.live.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    }
}

async fn ready_handler(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Bind and serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /health, /ready, /metrics");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C: every mode's cue to shut down gracefully.
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
