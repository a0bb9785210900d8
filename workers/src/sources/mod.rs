//! Market-data sources, one module each behind the [`Source`] trait.
//!
//! Every source splits into a pure parser (`bytes → messages`, unit-tested and fuzzed apart from the network)
//! and a transport loop shared by its family: [`poll_loop`] for REST APIs, [`websocket_loop`] for streams.
//! The loops own the robustness: reconnects with exponential backoff and jitter, a watchdog for silent
//! sockets, HTTP 429/5xx backoff honouring `Retry-After`, and a rate limit on what we send.

pub mod binance;
pub mod coingecko;
pub mod coinmarketcap;
pub mod kraken;
pub mod synthetic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio_tungstenite::tungstenite;

pub use cryptoviz_runtime::backoff::Backoff;

use crate::message::{InvalidDecimal, Message};
use crate::scraper::Sink;

/// Why a payload was skipped. Each is counted by source and [`ParseError::reason`], never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or cut short.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not the documented shape (wrong types, missing fields).
    #[error("unexpected shape: {0}")]
    UnexpectedShape(String),
    /// A price or quantity that is not a decimal number.
    #[error(transparent)]
    InvalidNumber(#[from] InvalidDecimal),
    /// A timestamp out of range or unparsable.
    #[error("invalid time: {0}")]
    InvalidTime(String),
    /// The source answered with an error document.
    #[error("source error {code}: {message}")]
    Api {
        /// The source's error code.
        code: i64,
        /// The source's message.
        message: String,
    },
}

impl ParseError {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::MalformedJson(_) => "malformed_json",
            ParseError::UnexpectedShape(_) => "unexpected_shape",
            ParseError::InvalidNumber(_) => "invalid_number",
            ParseError::InvalidTime(_) => "invalid_time",
            ParseError::Api { .. } => "api_error",
        }
    }
}

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> Self {
        match e.classify() {
            serde_json::error::Category::Data => ParseError::UnexpectedShape(e.to_string()),
            _ => ParseError::MalformedJson(e.to_string()),
        }
    }
}

/// What one frame or response body held.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Normalised messages.
    pub messages: Vec<Message>,
    /// The source announced it is going away (Binance `serverShutdown`): reconnect now.
    pub reconnect: bool,
}

impl From<Vec<Message>> for Parsed {
    fn from(messages: Vec<Message>) -> Self {
        Parsed { messages, reconnect: false }
    }
}

/// One market-data source.
pub trait Source: Send + Sync + 'static {
    /// Which source this is (the `source` label and the messages' `source` field).
    fn kind(&self) -> SourceKind;
    /// Parse one WebSocket frame or REST response body. Pure: no I/O, no clock but `received_at`.
    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError>;
    /// Run until the task is aborted, handing messages to `sink`. Never returns an error: failures are
    /// counted, logged and retried.
    fn run(self: Arc<Self>, sink: Sink) -> BoxFuture<'static, ()>;
}

/// The source a configuration entry describes.
pub fn build(cfg: &WorkerConfig, source: &SourceConfig) -> Arc<dyn Source> {
    match source.kind {
        SourceKind::Coingecko => Arc::new(coingecko::CoinGecko::new(cfg, source)),
        SourceKind::Coinmarketcap => Arc::new(coinmarketcap::CoinMarketCap::new(cfg, source)),
        SourceKind::Kraken => Arc::new(kraken::Kraken::new(cfg, source)),
        SourceKind::Binance => Arc::new(binance::Binance::new(cfg, source)),
        SourceKind::Synthetic => Arc::new(synthetic::Synthetic::new(cfg, source)),
    }
}

/// The API key a source's configuration names, read from the environment. Never logged.
pub fn api_key(source: &SourceConfig) -> Option<String> {
    source.api_key_env.as_deref().and_then(|var| std::env::var(var).ok()).filter(|k| !k.is_empty())
}

/// Milliseconds since the epoch to a time, or why not.
pub(crate) fn time_from_millis(ms: i64) -> Result<DateTime<Utc>, ParseError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| ParseError::InvalidTime(ms.to_string()))
}

/// RFC 3339 text to a time, or why not.
pub(crate) fn time_from_rfc3339(s: &str) -> Result<DateTime<Utc>, ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| ParseError::InvalidTime(s.into()))
}

/// At most one action per `interval`: the per-source limit on requests and on messages we send.
pub struct RateLimiter {
    interval: Duration,
    next: Option<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` actions per second.
    pub fn per_second(per_second: f64) -> Self {
        RateLimiter { interval: Duration::from_secs_f64(1.0 / per_second), next: None }
    }

    /// Wait until the next action is allowed.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.interval);
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The wait a `Retry-After` header asks for (seconds or an HTTP date), capped at `cap`.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v).ok()?.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
    };
    Some(d.min(cap))
}

/// How a REST source is polled.
pub struct PollPlan {
    /// Full request URL.
    pub url: String,
    /// Request headers (API keys marked sensitive so they never appear in debug output).
    pub headers: HeaderMap,
    /// Time between polls.
    pub interval: Duration,
}

/// The shortest poll interval a REST source accepts: the free tiers allow about 30 requests a minute, and
/// one per second keeps a misconfigured pipeline from getting its key banned.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// Time limit for one HTTP request or WebSocket handshake.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll a REST endpoint forever: parse each 2xx body; back off on 429 (honouring `Retry-After`), 5xx and
/// transport errors; count everything.
pub async fn poll_loop(source: Arc<dyn Source>, plan: PollPlan, sink: Sink) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client");
            return;
        }
    };
    let interval = plan.interval.max(MIN_POLL_INTERVAL);
    let mut backoff = Backoff::new(interval, Duration::from_secs(300));
    loop {
        let started = Instant::now();
        let result = client.get(&plan.url).headers(plan.headers.clone()).send().await;
        let wait = match result {
            Err(e) => {
                sink.request_failed(if e.is_timeout() { "timeout" } else { "transport" });
                tracing::warn!(error = %e.without_url(), "request failed");
                backoff.next_delay()
            }
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await;
                sink.observe_request(started.elapsed());
                match body {
                    Err(e) => {
                        sink.request_failed("transport");
                        tracing::warn!(error = %e.without_url(), "reading the response failed");
                        backoff.next_delay()
                    }
                    Ok(_) if status.as_u16() == 429 => {
                        sink.request_failed("rate_limited");
                        let wait = retry_after(&headers, MAX_RETRY_AFTER).unwrap_or_else(|| backoff.next_delay());
                        tracing::warn!(?wait, "rate limited");
                        wait
                    }
                    Ok(_) if status.is_server_error() => {
                        sink.request_failed("server_error");
                        let wait = retry_after(&headers, MAX_RETRY_AFTER).unwrap_or_else(|| backoff.next_delay());
                        tracing::warn!(%status, ?wait, "server error");
                        wait
                    }
                    Ok(_) if !status.is_success() => {
                        // 401/403 (bad key), 404 (bad base URL): retrying fast will not help.
                        sink.request_failed("client_error");
                        tracing::warn!(%status, "request refused");
                        backoff.next_delay()
                    }
                    Ok(body) => {
                        sink.frame(source.as_ref(), &body);
                        sink.set_up(true);
                        backoff.reset();
                        interval
                    }
                }
            }
        };
        // The interval counts from the request's start, so polling does not drift with latency.
        tokio::time::sleep_until((started + wait.max(interval)).into()).await;
    }
}

/// How a WebSocket source connects.
pub struct StreamPlan {
    /// URL to connect to.
    pub url: String,
    /// Text frames to send after connecting (subscriptions), at most [`OUTGOING_PER_SECOND`].
    pub subscribe: Vec<String>,
    /// Reconnect when nothing at all arrives for this long.
    pub watchdog: Duration,
    /// Reconnect proactively after this long (before the server's forced disconnect).
    pub max_connection_age: Option<Duration>,
}

/// Messages per second we send on a socket: Binance closes connections that send more than 5.
pub const OUTGOING_PER_SECOND: f64 = 4.0;

/// Why a connection ended, a bounded label for the reconnect counter.
fn end_reason(e: &tungstenite::Error) -> &'static str {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed",
        tungstenite::Error::Io(_) => "io",
        tungstenite::Error::Protocol(_) => "protocol",
        _ => "error",
    }
}

/// Keep a WebSocket subscription alive forever: connect, subscribe, read with a watchdog, and reconnect
/// with backoff whenever it ends (error, close, silence, `serverShutdown`, maximum age).
pub async fn websocket_loop(source: Arc<dyn Source>, plan: StreamPlan, sink: Sink) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        let started = Instant::now();
        let connected =
            tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(plan.url.as_str())).await;
        let mut ws = match connected {
            Ok(Ok((ws, _response))) => {
                sink.observe_request(started.elapsed());
                ws
            }
            Ok(Err(e)) => {
                sink.request_failed("connect");
                tracing::warn!(error = %e, "connect failed");
                sink.set_up(false);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                sink.request_failed("timeout");
                tracing::warn!("connect timed out");
                sink.set_up(false);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        tracing::info!("connected");
        let mut limiter = RateLimiter::per_second(OUTGOING_PER_SECOND);
        let mut reason = "closed";
        for msg in &plan.subscribe {
            limiter.acquire().await;
            if let Err(e) = ws.send(tungstenite::Message::text(msg.as_str())).await {
                reason = end_reason(&e);
                break;
            }
        }
        let age_limit = plan.max_connection_age.map(|a| tokio::time::Instant::now() + a);
        let mut got_data = false;
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(plan.watchdog, ws.next()) => n,
                _ = async { match age_limit { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    reason = "max_age";
                    break;
                }
            };
            match next {
                Err(_) => {
                    reason = "watchdog";
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    reason = end_reason(&e);
                    break;
                }
                Ok(Some(Ok(msg))) => {
                    let frame: &[u8] = match &msg {
                        tungstenite::Message::Text(t) => t.as_bytes(),
                        tungstenite::Message::Binary(b) => b,
                        // tungstenite queues the pong itself and sends it with the next read.
                        tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
                        tungstenite::Message::Close(_) => break,
                        tungstenite::Message::Frame(_) => continue,
                    };
                    if !got_data {
                        got_data = true;
                        sink.set_up(true);
                        backoff.reset();
                    }
                    if sink.frame(source.as_ref(), frame) {
                        reason = "server_shutdown";
                        break;
                    }
                }
            }
        }
        // Best effort: the server may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        sink.set_up(false);
        sink.reconnecting(reason);
        tracing::warn!(reason, "disconnected; reconnecting");
        let wait = if reason == "max_age" { Duration::ZERO } else { backoff.next_delay() };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Seeds for the mutation test: the fixtures the integration tests serve, plus unit-test frames.
    const SEEDS: &[&str] = &[
        include_str!("../../../tests/fixtures/scraper/coingecko/prices.json"),
        include_str!("../../../tests/fixtures/scraper/coinmarketcap/quotes.json"),
        include_str!("../../../tests/fixtures/scraper/coinmarketcap/rate_limited.json"),
        include_str!("../../../tests/fixtures/scraper/kraken/connect1.jsonl"),
        include_str!("../../../tests/fixtures/scraper/kraken/connect3.jsonl"),
        include_str!("../../../tests/fixtures/scraper/binance/connect1.jsonl"),
        r#"{"type":"trade","v":1,"source":"synthetic","symbol":"BTC","quote":"USD","trade_id":"1","price":"1.5","quantity":"2","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#,
    ];

    /// A fast, deterministic complement to the cargo-fuzz targets (`workers/fuzz`, run by `tests/fuzz`):
    /// 100 000 seeded mutations of real frames through every parser, on the stable toolchain. Any panic
    /// fails the test; errors are the expected outcome for most inputs.
    #[test]
    fn parsers_never_panic_on_mutated_frames() {
        let cfg = test_config(&["BTC", "ETH"]);
        let parsers: Vec<Arc<dyn Source>> = [
            SourceKind::Coingecko,
            SourceKind::Coinmarketcap,
            SourceKind::Kraken,
            SourceKind::Binance,
            SourceKind::Synthetic,
        ]
        .into_iter()
        .map(|kind| build(&cfg, &SourceConfig { kind, ..cfg.sources[0].clone() }))
        .collect();
        let frames: Vec<&[u8]> =
            SEEDS.iter().flat_map(|s| s.lines()).filter(|l| !l.starts_with('#')).map(str::as_bytes).collect();
        let alphabet = b"{}[]\":,.-+eE0123456789 truefalsnul\\\x00\xff";
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let now = Utc::now();
        let (mut ok, mut err) = (0u32, 0u32);
        for i in 0..100_000 {
            let mut f = frames[rng.random_range(0..frames.len())].to_vec();
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..=f.len());
                match rng.random_range(0..6) {
                    0 => f.truncate(at),
                    1 => f.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    2 if at < f.len() => f[at] = rng.random(),
                    3 if at < f.len() => {
                        let end = rng.random_range(at..=f.len());
                        f.drain(at..end);
                    }
                    4 => {
                        let other = frames[rng.random_range(0..frames.len())];
                        let from = rng.random_range(0..=other.len());
                        f.splice(at..at, other[from..].iter().copied().take(64));
                    }
                    _ if at < f.len() && f[at].is_ascii_digit() => f[at] = b"0123456789.-e"[rng.random_range(0..13)],
                    _ => {}
                }
            }
            match parsers[i % parsers.len()].parse(&f, now) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.reason().is_empty());
                    err += 1;
                }
            }
        }
        // Both outcomes are exercised: the mutations are neither all fatal nor all harmless.
        assert!(ok > 1_000 && err > 10_000, "ok {ok}, err {err}");
    }

    #[test]
    fn retry_after_takes_seconds_or_dates_and_is_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, Duration::from_secs(60)), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&h, Duration::from_secs(5)), Some(Duration::from_secs(5)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h, Duration::from_secs(60)).unwrap();
        assert!(d > Duration::from_secs(27) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, Duration::from_secs(60)), None);
    }
}
