//! The history API: `/api/v1/…` on the gateway's public port, served when the pipeline has storage. Stored
//! candles, trades and ticks as JSON with cursor pagination, and the OpenAPI document generated from the
//! response types (`/api/v1/openapi.json`). API reference and semantics: `docs/history.md`.
//!
//! Bounded by design: every parameter is parsed and capped before a query runs ([`params`]: points per
//! response, time range per interval, a 400 naming the parameter); queries run on a pool of two
//! read-only connections, each in a `READ ONLY` transaction with its own `statement_timeout` and under a
//! deadline, answered 503 when they overrun ([`query`]); the requests every page makes on opening (the
//! newest candles, the symbol list) are shared for a few seconds ([`cache`]).

pub mod api;
pub mod cache;
pub mod params;
pub mod query;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use cryptoviz_crds::config::WorkerConfig;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use api::Reply;
use cache::{Cache, Served};
use params::ParamError;
use query::{DEFAULT_STATEMENT_TIMEOUT, Db, QueryError, STATEMENT_TIMEOUT_ENV};

/// How long the newest candles are shared between requests.
const NEWEST_TTL: Duration = Duration::from_secs(2);
/// How long the symbol list is shared (also what `symbol=` is checked against).
const SYMBOLS_TTL: Duration = Duration::from_secs(10);
/// Distinct cached requests at most.
const CACHE_KEYS: usize = 1024;

/// Label set of a history request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `symbols`, `candles`, `trades` or `ticks`.
    pub endpoint: &'static str,
    /// `ok`, `bad_request`, `statement_timeout`, `deadline`, `unavailable` or `failed`.
    pub outcome: &'static str,
    /// `true` when the answer was shared from the cache.
    pub cached: &'static str,
}

/// The history API's metrics, under `cryptoviz_history`.
pub struct Metrics {
    /// Requests answered, by endpoint, outcome and whether the cache served them.
    pub requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// Register every family once.
    pub fn new(registry: &mut Registry) -> Metrics {
        let r = registry.sub_registry_with_prefix("cryptoviz_history");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register("requests", "History API requests by endpoint, outcome and cache use", requests.clone());
        Metrics { requests }
    }
}

/// The history API's state.
pub struct History {
    db: Db,
    cache: Cache,
    symbols: Cache,
    metrics: Metrics,
}

impl History {
    /// The API over the pipeline's database, when it has storage (`None` otherwise). The database URL is
    /// read from the variable the configuration names (the same Secret as the consumer's); the statement
    /// timeout from [`STATEMENT_TIMEOUT_ENV`] (milliseconds, 100 to 60000), default 2 s.
    pub fn from_config(cfg: &WorkerConfig, registry: &mut Registry) -> anyhow::Result<Option<Arc<History>>> {
        let Some(storage) = &cfg.storage else { return Ok(None) };
        let url = std::env::var(&storage.url_env)
            .map_err(|_| anyhow::anyhow!("the database URL variable {} is not set", storage.url_env))?;
        History::new(&url, &storage.schema, registry).map(Some)
    }

    /// The API over `schema` of the database at `url` (standalone `--timescale`).
    pub fn new(url: &str, schema: &str, registry: &mut Registry) -> anyhow::Result<Arc<History>> {
        let timeout = match std::env::var(STATEMENT_TIMEOUT_ENV) {
            Err(_) => DEFAULT_STATEMENT_TIMEOUT,
            Ok(v) => match v.parse::<u64>() {
                Ok(ms @ 100..=60_000) => Duration::from_millis(ms),
                _ => anyhow::bail!("{STATEMENT_TIMEOUT_ENV}={v:?}: milliseconds from 100 to 60000"),
            },
        };
        let db = Db::new(url, schema, timeout)?;
        tracing::info!(schema, statement_timeout_ms = timeout.as_millis() as u64, "history API on");
        Ok(Arc::new(History {
            db,
            cache: Cache::new(NEWEST_TTL, CACHE_KEYS),
            symbols: Cache::new(SYMBOLS_TTL, 1),
            metrics: Metrics::new(registry),
        }))
    }

    /// The symbol list as JSON, shared for [`SYMBOLS_TTL`].
    async fn symbols(&self) -> Result<(Bytes, Served), QueryError> {
        self.symbols
            .get_or_fill("symbols".into(), async || {
                let rows = self.db.symbols().await?;
                let symbols = rows
                    .into_iter()
                    .map(|r| api::SymbolInfo { symbol: r.symbol, first: r.first, last: r.last, sources: r.sources })
                    .collect();
                Ok(api::json(&api::Symbols { symbols }))
            })
            .await
    }

    /// A 400 naming `symbol` unless it is stored.
    async fn known_symbol(&self, symbol: &str) -> Result<(), Reply> {
        let (bytes, _) = self.symbols().await?;
        let list: api::Symbols = serde_json::from_slice(&bytes).expect("our own JSON");
        if list.symbols.iter().any(|s| s.symbol == symbol) {
            return Ok(());
        }
        Err(Reply::Bad(ParamError {
            parameter: "symbol",
            message: format!("unknown symbol {symbol:?} (see /api/v1/symbols)"),
        }))
    }

    /// Count the request and answer it.
    fn answer(&self, endpoint: &'static str, result: Result<(Bytes, Served), Reply>) -> Reply {
        let (reply, cached) = match result {
            Ok((b, served)) => (Reply::Json(b), served == Served::Shared),
            Err(e) => (e, false),
        };
        let cached = if cached { "true" } else { "false" };
        self.metrics.requests.get_or_create(&RequestLabels { endpoint, outcome: reply.outcome(), cached }).inc();
        reply
    }
}

/// The routes of `/api/v1`.
pub fn router(h: Arc<History>) -> Router {
    Router::new()
        .route("/api/v1/symbols", get(api::symbols))
        .route("/api/v1/candles", get(api::candles))
        .route("/api/v1/trades", get(api::trades))
        .route("/api/v1/ticks", get(api::ticks))
        .route("/api/v1/openapi.json", get(api::openapi))
        .with_state(h)
}
