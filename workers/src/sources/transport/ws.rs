//! WebSocket streams: connect, subscribe at a bounded rate, read with a watchdog, reconnect with backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cryptoviz_runtime::backoff::Backoff;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;

use super::{REQUEST_TIMEOUT, deliver};
use crate::sources::parsed::{Downstream, ParseError, Parsed};

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

/// At most one action per `interval`: paces the frames we send on a socket (subscriptions).
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
pub async fn websocket_loop<P>(parse: P, plan: StreamPlan, out: Arc<dyn Downstream>)
where
    P: Fn(&[u8], DateTime<Utc>) -> Result<Parsed, ParseError> + Send + Sync + 'static,
{
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        let started = Instant::now();
        let connected =
            tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(plan.url.as_str())).await;
        let mut ws = match connected {
            Ok(Ok((ws, _response))) => {
                out.observe_request(started.elapsed());
                ws
            }
            Ok(Err(e)) => {
                out.request_failed("connect");
                tracing::warn!(error = %e, "connect failed");
                out.set_up(false);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => {
                out.request_failed("timeout");
                tracing::warn!("connect timed out");
                out.set_up(false);
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
                        out.set_up(true);
                        backoff.reset();
                    }
                    if deliver(&parse, out.as_ref(), frame) {
                        reason = "server_shutdown";
                        break;
                    }
                }
            }
        }
        // Best effort: the server may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        out.set_up(false);
        out.reconnecting(reason);
        tracing::warn!(reason, "disconnected; reconnecting");
        let wait = if reason == "max_age" { Duration::ZERO } else { backoff.next_delay() };
        tokio::time::sleep(wait).await;
    }
}
