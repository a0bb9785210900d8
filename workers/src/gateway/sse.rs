//! `GET /stream`: one Server-Sent Events stream per client, reading the hub's shared frames.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use super::Gateway;
use super::hub::{ClientGuard, Cursor, Event, Hub};
use super::payload::Kind;

/// Set by the accept loop on every request: notified to close the connection of a client that fell behind.
#[derive(Clone)]
pub struct ConnKill(pub Arc<tokio::sync::Notify>);

/// Query parameters of `/stream`.
#[derive(Deserialize, Debug, Default)]
pub struct StreamQuery {
    /// Comma-separated symbols (all when absent).
    symbols: Option<String>,
    /// Comma-separated kinds: `tick`, `trade`, `alert` (all when absent).
    types: Option<String>,
    /// Resume point, for clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    /// Bearer token, for `EventSource`, which cannot set headers.
    access_token: Option<String>,
}

/// What a client asked for.
struct Filter {
    /// Upper-case symbols; `None` means all.
    symbols: Option<HashSet<Box<str>>>,
    /// Bit set of [`Kind`]s.
    kinds: u8,
}

impl Filter {
    fn matches(&self, ev: &Event) -> bool {
        self.kinds & ev.kind as u8 != 0 && self.symbols.as_ref().is_none_or(|s| s.contains(&ev.symbol))
    }
}

fn refuse(gw: &Gateway, status: StatusCode, reason: &'static str, msg: &str) -> Response {
    gw.hub.metrics.reject(reason);
    let mut r = (status, msg.to_owned()).into_response();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        StatusCode::UNAUTHORIZED => {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    r
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The `/stream` handler.
pub async fn stream(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    kill: Option<axum::Extension<ConnKill>>,
) -> Response {
    // Auth first: an unauthenticated client learns nothing, not even whether its filters parse.
    let mut allowed: Option<HashSet<Box<str>>> = None;
    if let Some(auth) = &gw.auth {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .or(q.access_token.as_deref());
        let Some(token) = bearer else {
            return refuse(&gw, StatusCode::UNAUTHORIZED, "unauthorized", "bearer token required\n");
        };
        match auth.verify(token, chrono::Utc::now().timestamp()) {
            Ok(grant) => allowed = grant.symbols.map(|s| s.into_iter().map(Into::into).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "refused a token");
                return refuse(&gw, StatusCode::UNAUTHORIZED, "unauthorized", &format!("{e}\n"));
            }
        }
    }

    let mut kinds = 0u8;
    match &q.types {
        None => kinds = Kind::Tick as u8 | Kind::Trade as u8 | Kind::Alert as u8,
        Some(t) => {
            for k in split_list(t) {
                let Some(k) = Kind::parse(k) else {
                    return (StatusCode::BAD_REQUEST, format!("unknown type {k:?}: use tick, trade, alert\n"))
                        .into_response();
                };
                kinds |= k as u8;
            }
        }
    }
    let requested: Option<HashSet<Box<str>>> =
        q.symbols.as_deref().map(|s| split_list(s).map(|s| s.to_uppercase().into()).collect());
    let symbols = match (requested, allowed) {
        (None, a) => a,
        (Some(r), None) => Some(r),
        (Some(r), Some(a)) => {
            let both: HashSet<_> = r.intersection(&a).cloned().collect();
            if both.len() < r.len() {
                return refuse(&gw, StatusCode::FORBIDDEN, "forbidden", "token does not grant these symbols\n");
            }
            Some(both)
        }
    };
    let filter = Filter { symbols, kinds };

    let Some(guard) = gw.hub.admit(kill.map(|k| k.0.0.clone())) else {
        return refuse(&gw, StatusCode::SERVICE_UNAVAILABLE, "max_clients", "too many clients, retry later\n");
    };

    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.last_event_id)
        .filter(|s| !s.trim().is_empty());
    let hub = gw.hub.clone();
    // Subscribe to wake-ups before reading the position, so nothing appended in between is missed.
    let seq_rx = hub.watch_seq();
    let sub = hub.subscribe(last_id.as_deref().map(Cursor::parse), &guard.slot);

    let retry = hub.opts.retry_ms;
    let mut greeting = VecDeque::new();
    let mut head = format!("retry: {retry}\n");
    if sub.gap {
        // The id moves the client's position to now, so the browser's next reconnect resumes from here.
        head.push_str(&format!(
            "id: {}\ndata: {{\"type\":\"reset\",\"data\":{{\"reason\":\"{}\",\"last_event_id\":{}}}}}\n\n",
            sub.current,
            if last_id.as_deref().and_then(Cursor::parse).is_some() { "gap" } else { "invalid_id" },
            serde_json::to_string(&last_id).expect("strings serialise"),
        ));
    }
    let prices: Vec<&[u8]> = sub
        .latest
        .iter()
        .filter(|(s, _)| filter.symbols.as_ref().is_none_or(|f| f.contains(s)))
        .map(|(_, b)| &b[..])
        .collect();
    // A fresh client gets the current id on the welcome; a resuming one keeps its own until it is sent newer
    // events, so ids never go backwards.
    if sub.floor.is_none() && !sub.gap && !sub.current.0.is_empty() {
        head.push_str(&format!("id: {}\n", sub.current));
    }
    head.push_str(&format!(
        "data: {{\"type\":\"welcome\",\"data\":{{\"resumed\":{},\"symbols\":{},\"types\":{},\"heartbeat_interval_ms\":{},\"prices\":[",
        sub.floor.is_some(),
        serde_json::to_string(&filter.symbols.as_ref().map(|s| {
            let mut v: Vec<_> = s.iter().collect();
            v.sort();
            v
        }))
        .expect("symbols serialise"),
        serde_json::to_string(
            &[Kind::Tick, Kind::Trade, Kind::Alert]
                .iter()
                .filter(|k| filter.kinds & **k as u8 != 0)
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
        )
        .expect("types serialise"),
        hub.opts.heartbeat.as_millis(),
    ));
    let mut head = head.into_bytes();
    for (i, p) in prices.iter().enumerate() {
        if i > 0 {
            head.push(b',');
        }
        head.extend_from_slice(p);
    }
    head.extend_from_slice(b"]}}\n\n");
    greeting.push_back(Bytes::from(head));

    let conn = Conn {
        hb_seen: hub.heartbeat_generation(),
        hub,
        filter,
        next: sub.next_seq,
        floor: sub.floor,
        batch: VecDeque::new(),
        seq_rx,
        greeting,
        done: false,
        guard,
    };
    let body = futures::stream::unfold(conn, |mut c| async move {
        let chunk = c.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), c))
    });
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// One client's position and filter; yields the frames to write.
struct Conn {
    hub: Arc<Hub>,
    filter: Filter,
    next: u64,
    floor: Option<Cursor>,
    batch: VecDeque<Arc<Event>>,
    seq_rx: watch::Receiver<u64>,
    /// Generation of the last heartbeat sent (or current at connect).
    hb_seen: u64,
    greeting: VecDeque<Bytes>,
    done: bool,
    guard: ClientGuard,
}

/// Events taken from the ring per lock.
const BATCH: usize = 64;

impl Conn {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.greeting.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            if self.hub.is_down() {
                self.done = true;
                let frame = format!(
                    "retry: {}\ndata: {{\"type\":\"shutdown\",\"data\":{{\"reason\":\"server shutting down, reconnect\"}}}}\n\n",
                    self.hub.opts.retry_ms
                );
                return Some(Bytes::from(frame));
            }
            while let Some(ev) = self.batch.pop_front() {
                self.guard.slot.pos.store(ev.seq + 1, Ordering::Relaxed);
                if !self.filter.matches(&ev) {
                    continue;
                }
                let frame = match &self.floor {
                    None => ev.frame.clone(),
                    Some(floor) if ev.offset <= floor.get(ev.partition) => continue,
                    Some(floor) if ev.cursor.dominates(floor) => {
                        // Caught up with the resume point: from here on the shared frames are monotonic.
                        self.floor = None;
                        ev.frame.clone()
                    }
                    Some(floor) => ev.frame_with_id(&ev.cursor.max(floor)),
                };
                let m = &self.hub.metrics;
                m.deliveries.inc();
                if ev.time_ms > 0 {
                    let lag = (chrono::Utc::now().timestamp_millis() - ev.time_ms).max(0);
                    m.latency.observe(lag as f64 / 1000.0);
                }
                return Some(frame);
            }
            match self.hub.read(self.next, BATCH, &mut self.batch) {
                Ok(n) => self.next = n,
                Err(_) => {
                    self.guard.drop_slow();
                    return None;
                }
            }
            if !self.batch.is_empty() {
                continue;
            }
            if let Some(beat) = self.hub.heartbeat_since(&mut self.hb_seen) {
                return Some(beat);
            }
            // Events, a heartbeat or shutdown: checked above on the way round.
            if self.seq_rx.changed().await.is_err() {
                return None;
            }
        }
    }
}
