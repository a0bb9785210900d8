//! `GET /stream`: one Server-Sent Events stream per client, reading the hub's shared frames.
//!
//! The handler checks the request (auth, filters, admission) and builds the client's [`Conn`]; the response
//! carries it as a [`Handoff`] and no body. The gateway's accept loop then writes the response head itself
//! and gives the socket and the `Conn` to a writer shard ([`super::fanout`]), which writes every client's
//! frames without a task or an HTTP connection per client.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::Gateway;
use super::admission::{ClientGuard, Refused};
use super::cursor::{Cursor, MAX_ID_LEN};
use super::delivery::{self, Decision, Filter, Route, Standing};
use super::event::Event;
use super::hub::Hub;
use super::metrics::Tally;
use super::params;
use super::payload::Kind;
use super::recent::Recent;

/// Set by the accept loop on every request: notified to close the connection of a client that fell behind.
#[derive(Clone)]
pub struct ConnKill(pub Arc<tokio::sync::Notify>);

/// Set by the accept loop on every request: the connection's peer address.
#[derive(Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The extension on a `/stream` response that admitted a client: the client's stream, for the accept loop
/// to hand to a writer shard. (A response extension must be `Clone`; the `Conn` is taken once.)
#[derive(Clone)]
pub struct Handoff(pub Arc<Mutex<Option<Conn>>>);

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

/// The `/stream` handler.
pub async fn stream(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    kill: Option<axum::Extension<ConnKill>>,
    peer: Option<axum::Extension<Peer>>,
) -> Response {
    // Auth first: an unauthenticated client learns nothing, not even whether its filters parse.
    let mut allowed: Option<HashSet<Box<str>>> = None;
    let mut expires_ms = None;
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
        match auth.verify(token) {
            Ok(grant) => {
                allowed = grant.symbols.map(|s| s.into_iter().map(Into::into).collect());
                expires_ms = grant.expires_at.map(|s| s.saturating_mul(1000));
            }
            Err(e) => {
                // The reason and the redacted path only: the token itself is never logged.
                tracing::debug!(path = %super::auth::loggable(&uri), error = %e, "refused a token");
                return refuse(&gw, StatusCode::UNAUTHORIZED, "unauthorized", &format!("{e}\n"));
            }
        }
    }

    let (kinds, requested) = match params::kinds(q.types.as_deref())
        .and_then(|k| Ok((k, q.symbols.as_deref().map(params::symbols).transpose()?)))
    {
        Ok(parsed) => parsed,
        Err(e) => {
            gw.hub.metrics.reject("bad_request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
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

    let peer = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0.0.ip());
    let forwarded = headers.get_all("x-forwarded-for").into_iter().filter_map(|v| v.to_str().ok());
    let address = gw.hub.opts.limits.client_address(peer, forwarded);
    let guard = match gw.hub.admit(kill.map(|k| k.0.0.clone()), address) {
        Ok(guard) => guard,
        Err(Refused::MaxClients) => {
            return refuse(&gw, StatusCode::SERVICE_UNAVAILABLE, "max_clients", "too many clients, retry later\n");
        }
        Err(Refused::PerAddress) => {
            return refuse(
                &gw,
                StatusCode::SERVICE_UNAVAILABLE,
                "per_address",
                "too many clients from this address, retry later\n",
            );
        }
    };

    // A header that is not text is an unreadable id too (a reset), not a fresh start.
    let last_id = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or(q.last_event_id)
        .filter(|s| !s.trim().is_empty());
    let hub = gw.hub.clone();
    let sub = hub.subscribe(last_id.as_deref());

    let retry = hub.opts.retry_ms;
    let mut greeting = VecDeque::new();
    let mut head = format!("retry: {retry}\n");
    if let Some(reason) = sub.reset {
        // The id moves the client's position to now, so the browser's next reconnect resumes from here. The
        // client's id is echoed only when it is within the bound: the reset never grows with what was sent.
        let echo = last_id.filter(|id| id.len() <= MAX_ID_LEN);
        head.push_str(&format!(
            "id: {}\ndata: {{\"type\":\"reset\",\"data\":{{\"reason\":\"{reason}\",\"last_event_id\":{}}}}}\n\n",
            sub.current,
            serde_json::to_string(&echo).expect("strings serialise"),
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
    if sub.floor.is_none() && sub.reset.is_none() && !sub.current.0.is_empty() {
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
        caught_up: false,
        greeting,
        done: false,
        expires_ms,
        guard,
    };
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
        ],
        Body::empty(),
    )
        .into_response();
    r.extensions_mut().insert(Handoff(Arc::new(Mutex::new(Some(conn)))));
    r
}

/// What [`Conn::fill`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// Frames were added.
    Frames,
    /// Nothing to send until the hub's sequence changes.
    Idle,
    /// The stream is over (shutdown sent, or the client fell behind its bound): close after what is queued.
    End,
}

/// One client's position and filter; produces the frames to write.
pub struct Conn {
    hub: Arc<Hub>,
    filter: Filter,
    next: u64,
    floor: Option<Cursor>,
    batch: VecDeque<Arc<Event>>,
    /// The last ring read found everything there was: once its frames are written, this client is up to
    /// date until the hub's sequence changes again.
    caught_up: bool,
    /// Generation of the last heartbeat sent (or current at connect).
    hb_seen: u64,
    greeting: VecDeque<Bytes>,
    done: bool,
    /// The token's `exp` in milliseconds: past it the stream ends with an `expired` event.
    expires_ms: Option<i64>,
    guard: ClientGuard,
}

/// Events taken from the ring per lock.
const BATCH: usize = 64;

impl Conn {
    /// True when what [`Conn::fill`] last gave is all there is until the hub's sequence changes: the writer
    /// can stop there instead of reading the ring again (anything appended since wakes it anyway).
    pub fn caught_up(&self) -> bool {
        self.caught_up && self.batch.is_empty() && self.greeting.is_empty()
    }

    /// The steady state, served from a shard's copy of the newest events: when this client is live (no
    /// resume floor, nothing of its own to send: greeting, heartbeat, shutdown) and `recent` holds where it
    /// is, give each event due to it to `each`, move past them and return true. False when the client
    /// needs [`Conn::fill`] instead.
    pub fn due<'a>(
        &mut self,
        recent: &'a Recent,
        now_ms: i64,
        tally: &mut Tally,
        mut each: impl FnMut(&'a Event),
    ) -> bool {
        if self.expired(now_ms) {
            return false;
        }
        let standing = Standing {
            done: self.done,
            resuming: self.floor.is_some(),
            pending: !self.greeting.is_empty() || !self.batch.is_empty(),
            next: self.next,
            recent_first: recent.first(),
            down: self.hub.is_down(),
            heartbeat: self.hub.heartbeat_generation() != self.hb_seen,
        };
        if delivery::route(standing) == Route::Fill {
            return false;
        }
        let end = recent.end();
        if self.next >= end {
            return true;
        }
        for ev in recent.since(self.next) {
            if delivery::decide(&self.filter, None, ev) == Decision::Shared {
                each(ev);
                tally.deliver(ev.time_ms, now_ms);
            }
        }
        self.next = end;
        true
    }

    /// The client's token has expired (and the final event is not yet queued).
    fn expired(&self, now_ms: i64) -> bool {
        !self.done && self.expires_ms.is_some_and(|exp| now_ms >= exp)
    }

    /// The client's socket is full (`true`) or draining again: the hub's sweep drops a client that stays
    /// full while it falls further behind than its bound.
    pub fn stalled(&self, full: bool) {
        self.guard.slot.stalled_at(full.then_some(self.next));
    }

    /// Append the frames due to this client (up to one ring read's worth) to `out`; `now_ms` is the time of
    /// the hand-off, for the latency `tally` counts.
    pub fn fill(&mut self, now_ms: i64, tally: &mut Tally, out: &mut VecDeque<Bytes>) -> Fill {
        let before = out.len();
        out.extend(self.greeting.drain(..));
        if self.done {
            return if out.len() > before { Fill::Frames } else { Fill::End };
        }
        if self.expired(now_ms) {
            // Checked at every event and heartbeat: the stream ends within a heartbeat interval of `exp`.
            self.done = true;
            self.caught_up = false;
            out.push_back(Bytes::from_static(
                b"data: {\"type\":\"expired\",\"data\":{\"reason\":\"token expired, reconnect with a new token\"}}\n\n",
            ));
            return Fill::Frames;
        }
        if self.hub.is_down() {
            self.done = true;
            self.caught_up = false;
            out.push_back(Bytes::from(format!(
                "retry: {}\ndata: {{\"type\":\"shutdown\",\"data\":{{\"reason\":\"server shutting down, reconnect\"}}}}\n\n",
                self.hub.opts.retry_ms
            )));
            return Fill::Frames;
        }
        loop {
            while let Some(ev) = self.batch.pop_front() {
                let frame = match delivery::decide(&self.filter, self.floor.as_ref(), &ev) {
                    Decision::Filtered | Decision::Seen => continue,
                    Decision::Shared => ev.frame.clone(),
                    Decision::CaughtUp => {
                        // From here on the shared frames are monotonic for this client.
                        self.floor = None;
                        ev.frame.clone()
                    }
                    Decision::Reid(id) => ev.frame_with_id(&id),
                };
                out.push_back(frame);
                tally.deliver(ev.time_ms, now_ms);
            }
            if out.len() > before {
                return Fill::Frames;
            }
            match self.hub.read(self.next, BATCH, &mut self.batch) {
                Ok(n) => {
                    self.next = n;
                    self.caught_up = self.batch.len() < BATCH;
                }
                Err(_) => {
                    self.guard.drop_slow();
                    self.done = true;
                    return Fill::End;
                }
            }
            if self.batch.is_empty() {
                break;
            }
        }
        match self.hub.heartbeat_since(&mut self.hb_seen) {
            Some(beat) => {
                out.push_back(beat);
                Fill::Frames
            }
            None => Fill::Idle,
        }
    }
}
