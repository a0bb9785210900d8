//! REST polling: one request per interval, counted, backing off on refusals and honouring `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cryptoviz_runtime::backoff::Backoff;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{REQUEST_TIMEOUT, deliver};
use crate::sources::parsed::{Downstream, ParseError, Parsed};

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

/// The wait a `Retry-After` header asks for (seconds or an HTTP date), capped at `cap`.
pub fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v).ok()?.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
    };
    Some(d.min(cap))
}

/// Poll a REST endpoint forever: parse each 2xx body; back off on 429 (honouring `Retry-After`), 5xx and
/// transport errors; count everything.
pub async fn poll_loop<P>(parse: P, plan: PollPlan, out: Arc<dyn Downstream>)
where
    P: Fn(&[u8], DateTime<Utc>) -> Result<Parsed, ParseError> + Send + Sync + 'static,
{
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
                out.request_failed(if e.is_timeout() { "timeout" } else { "transport" });
                tracing::warn!(error = %e.without_url(), "request failed");
                backoff.next_delay()
            }
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await;
                out.observe_request(started.elapsed());
                match body {
                    Err(e) => {
                        out.request_failed("transport");
                        tracing::warn!(error = %e.without_url(), "reading the response failed");
                        backoff.next_delay()
                    }
                    Ok(_) if status.as_u16() == 429 => {
                        out.request_failed("rate_limited");
                        let wait = retry_after(&headers, MAX_RETRY_AFTER).unwrap_or_else(|| backoff.next_delay());
                        tracing::warn!(?wait, "rate limited");
                        wait
                    }
                    Ok(_) if status.is_server_error() => {
                        out.request_failed("server_error");
                        let wait = retry_after(&headers, MAX_RETRY_AFTER).unwrap_or_else(|| backoff.next_delay());
                        tracing::warn!(%status, ?wait, "server error");
                        wait
                    }
                    Ok(_) if !status.is_success() => {
                        // 401/403 (bad key), 404 (bad base URL): retrying fast will not help.
                        out.request_failed("client_error");
                        tracing::warn!(%status, "request refused");
                        backoff.next_delay()
                    }
                    Ok(body) => {
                        deliver(&parse, out.as_ref(), &body);
                        out.set_up(true);
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

#[cfg(test)]
mod tests {
    use super::*;

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
