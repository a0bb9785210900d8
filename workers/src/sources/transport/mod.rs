//! The network loops a source's format plugs into: [`rest::poll_loop`] for REST APIs and
//! [`ws::websocket_loop`] for streams. They own the robustness — reconnects with exponential backoff and
//! jitter, a watchdog for silent sockets, HTTP 429/5xx backoff honouring `Retry-After`, a rate limit on what
//! we send — and hand every payload, parsed by the source's function, to a [`Downstream`].

pub mod rest;
pub mod ws;

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::parsed::{Downstream, ParseError, Parsed};

/// Time limit for one HTTP request or WebSocket handshake.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Parse one payload, stamped with the time it arrived, and hand the outcome on. Returns true when the
/// source asked to reconnect.
pub fn deliver<P>(parse: &P, out: &dyn Downstream, payload: &[u8]) -> bool
where
    P: Fn(&[u8], DateTime<Utc>) -> Result<Parsed, ParseError>,
{
    let now = Utc::now();
    out.payload(now, payload.len(), parse(payload, now))
}
