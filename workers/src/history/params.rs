//! Every request parameter of the history API, parsed and bounded before any query runs. Pure: each
//! failure names its parameter, so the caller answers 400 with it.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use cryptoviz_crds::SourceKind;
use serde::{Deserialize, Serialize};

/// Points per response at most (`limit` above it is refused): one day of 1-minute candles fits.
pub const MAX_LIMIT: u32 = 2000;
/// Points per response when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 500;
/// Widest `from`..`to` of one trades or ticks request.
pub const MAX_RAW_RANGE: TimeDelta = TimeDelta::days(1);
/// `from` when absent on trades and ticks: this long before `to`.
pub const DEFAULT_RAW_RANGE: TimeDelta = TimeDelta::hours(1);
/// Longest accepted value of any parameter, in bytes.
const MAX_VALUE_LEN: usize = 256;

/// A parameter that cannot be served: answered 400 with its name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct ParamError {
    /// The query parameter at fault.
    pub parameter: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn bad(parameter: &'static str, message: impl Into<String>) -> ParamError {
    ParamError { parameter, message: message.into() }
}

/// A candle width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Interval {
    /// One minute.
    #[serde(rename = "1m")]
    M1,
    /// Five minutes.
    #[serde(rename = "5m")]
    M5,
    /// Fifteen minutes.
    #[serde(rename = "15m")]
    M15,
    /// One hour.
    #[serde(rename = "1h")]
    H1,
    /// Four hours.
    #[serde(rename = "4h")]
    H4,
    /// One day (UTC midnight to midnight).
    #[serde(rename = "1d")]
    D1,
}

impl Interval {
    /// Every interval, as spelled in `interval=`.
    pub const ALL: [(&'static str, Interval); 6] = [
        ("1m", Interval::M1),
        ("5m", Interval::M5),
        ("15m", Interval::M15),
        ("1h", Interval::H1),
        ("4h", Interval::H4),
        ("1d", Interval::D1),
    ];

    /// Its width.
    pub fn width(self) -> TimeDelta {
        match self {
            Interval::M1 => TimeDelta::minutes(1),
            Interval::M5 => TimeDelta::minutes(5),
            Interval::M15 => TimeDelta::minutes(15),
            Interval::H1 => TimeDelta::hours(1),
            Interval::H4 => TimeDelta::hours(4),
            Interval::D1 => TimeDelta::days(1),
        }
    }

    /// Widest `from`..`to` of one request: what bounds the rows a query aggregates (at most 43,800 stored
    /// candles per source, whatever the interval).
    pub fn max_range(self) -> TimeDelta {
        match self {
            Interval::M1 => TimeDelta::days(7),
            Interval::M5 | Interval::M15 => TimeDelta::days(30),
            Interval::H1 => TimeDelta::days(365),
            Interval::H4 => TimeDelta::days(730),
            Interval::D1 => TimeDelta::days(1825),
        }
    }

    /// The stored candles it is computed from: `candles_1m` up to 15 minutes, `candles_1h` above.
    pub fn table(self) -> &'static str {
        match self {
            Interval::M1 | Interval::M5 | Interval::M15 => "candles_1m",
            Interval::H1 | Interval::H4 | Interval::D1 => "candles_1h",
        }
    }

    /// Its width as a PostgreSQL interval literal.
    pub fn pg_interval(self) -> &'static str {
        match self {
            Interval::M1 => "1 minute",
            Interval::M5 => "5 minutes",
            Interval::M15 => "15 minutes",
            Interval::H1 => "1 hour",
            Interval::H4 => "4 hours",
            Interval::D1 => "1 day",
        }
    }

    /// `t` rounded down to a bucket start (buckets are aligned to the Unix epoch, i.e. UTC midnight).
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let w = self.width().num_microseconds().expect("fits");
        let us = t.timestamp_micros();
        DateTime::from_timestamp_micros(us - us.rem_euclid(w)).expect("in range")
    }

    /// `t` rounded up to a bucket start.
    pub fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let f = self.floor(t);
        if f == t { f } else { f + self.width() }
    }
}

/// Where a page starts: the key of its first row, handed out as `next` by the previous page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Time of the first row.
    pub t: DateTime<Utc>,
    /// Its source (trades and ticks; candles are keyed by time alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    /// Its trade id (trades).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Cursor {
    /// The opaque token (base64url of a small JSON object).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("serialises"))
    }

    fn decode(s: &str) -> Result<Cursor, ParamError> {
        let invalid = || bad("cursor", "not a cursor this API handed out (pass `next` of the previous page)");
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
        serde_json::from_slice(&bytes).map_err(|_| invalid())
    }
}

/// The raw query string as name → value, each name at most once and every name known to the endpoint.
pub struct Raw(HashMap<String, String>);

impl Raw {
    /// Split a query string; unknown, repeated or oversized parameters are refused.
    pub fn parse(query: Option<&str>, known: &[&'static str]) -> Result<Raw, ParamError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            let Some(name) = known.iter().find(|n| **n == k) else {
                return Err(bad(
                    "query",
                    format!("unknown parameter {:?} (known: {})", truncate(&k), known.join(", ")),
                ));
            };
            if v.len() > MAX_VALUE_LEN {
                return Err(bad(name, format!("longer than {MAX_VALUE_LEN} bytes")));
            }
            if map.insert(k, v).is_some() {
                return Err(bad(name, "given more than once"));
            }
        }
        Ok(Raw(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The common parameters of candles, trades and ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Upper-case symbol.
    pub symbol: String,
    /// One source, or all of them merged.
    pub source: Option<String>,
    /// First time included.
    pub from: DateTime<Utc>,
    /// First time excluded.
    pub to: DateTime<Utc>,
    /// Rows at most.
    pub limit: u32,
    /// Where this page starts, when it is not the first.
    pub cursor: Option<Cursor>,
    /// Neither `from`, `to` nor `cursor` was given: the newest rows, which may be served from the cache.
    pub newest: bool,
}

/// A candles request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandlesQuery {
    /// Candle width.
    pub interval: Interval,
    /// Symbol, source, bounds (`from` rounded down and `to` up to the interval), limit.
    pub window: Window,
}

/// Parameters of `GET /api/v1/candles`.
pub const CANDLE_PARAMS: &[&str] = &["symbol", "interval", "from", "to", "limit", "source", "cursor"];
/// Parameters of `GET /api/v1/trades` and `/api/v1/ticks`.
pub const RAW_PARAMS: &[&str] = &["symbol", "from", "to", "limit", "source", "cursor"];

/// Parse a candles request; `now` is the default `to`.
pub fn candles(q: Option<&str>, now: DateTime<Utc>) -> Result<CandlesQuery, ParamError> {
    let raw = Raw::parse(q, CANDLE_PARAMS)?;
    let interval = match raw.get("interval") {
        None => return Err(bad("interval", "required (one of 1m, 5m, 15m, 1h, 4h, 1d)")),
        Some(v) => Interval::ALL
            .iter()
            .find(|(n, _)| *n == v)
            .map(|(_, i)| *i)
            .ok_or_else(|| bad("interval", format!("{:?} is not one of 1m, 5m, 15m, 1h, 4h, 1d", truncate(v))))?,
    };
    let limit = limit(&raw)?;
    let default_range = interval.width() * limit as i32;
    let mut window = window(&raw, now, limit, default_range, interval.max_range())?;
    window.from = interval.floor(window.from);
    window.to = interval.ceil(window.to);
    if let Some(c) = &mut window.cursor {
        c.t = interval.floor(c.t);
    }
    Ok(CandlesQuery { interval, window })
}

/// Parse a trades or ticks request; `now` is the default `to`.
pub fn raw(q: Option<&str>, now: DateTime<Utc>) -> Result<Window, ParamError> {
    let raw = Raw::parse(q, RAW_PARAMS)?;
    let limit = limit(&raw)?;
    window(&raw, now, limit, DEFAULT_RAW_RANGE, MAX_RAW_RANGE)
}

fn limit(raw: &Raw) -> Result<u32, ParamError> {
    let Some(v) = raw.get("limit") else { return Ok(DEFAULT_LIMIT) };
    let n: u32 = v.parse().map_err(|_| bad("limit", format!("{:?} is not a whole number", truncate(v))))?;
    if n == 0 || n > MAX_LIMIT {
        return Err(bad("limit", format!("{n} is outside 1..={MAX_LIMIT}")));
    }
    Ok(n)
}

fn time(raw: &Raw, name: &'static str) -> Result<Option<DateTime<Utc>>, ParamError> {
    raw.get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                bad(name, format!("{:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z", truncate(v)))
            })
        })
        .transpose()
}

fn window(
    raw: &Raw,
    now: DateTime<Utc>,
    limit: u32,
    default_range: TimeDelta,
    max_range: TimeDelta,
) -> Result<Window, ParamError> {
    let symbol = symbol(raw.get("symbol"))?;
    let source = raw.get("source").map(source).transpose()?;
    let (from, to) = (time(raw, "from")?, time(raw, "to")?);
    let cursor = raw.get("cursor").map(Cursor::decode).transpose()?;
    let newest = from.is_none() && to.is_none() && cursor.is_none();
    let to = to.unwrap_or(now);
    let from = from.unwrap_or_else(|| to - default_range.min(max_range));
    if from > to {
        return Err(bad("from", format!("{} is after to ({})", from.to_rfc3339(), to.to_rfc3339())));
    }
    if to - from > max_range {
        return Err(bad("to", format!("the range from..to is wider than {} days", max_range.num_days())));
    }
    if let Some(c) = &cursor
        && (c.t < from || c.t > to)
    {
        return Err(bad("cursor", "outside from..to"));
    }
    Ok(Window { symbol, source, from, to, limit, cursor, newest })
}

/// A symbol as stored: 1–16 ASCII letters or digits, upper-cased.
pub fn symbol(v: Option<&str>) -> Result<String, ParamError> {
    let v = v.ok_or_else(|| bad("symbol", "required"))?;
    if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad("symbol", format!("{:?} is not 1–16 letters or digits", truncate(v))));
    }
    Ok(v.to_ascii_uppercase())
}

fn source(v: &str) -> Result<String, ParamError> {
    let kinds = [
        SourceKind::Synthetic,
        SourceKind::Coingecko,
        SourceKind::Coinmarketcap,
        SourceKind::Kraken,
        SourceKind::Binance,
    ];
    kinds.iter().map(|k| k.as_str()).find(|k| *k == v).map(str::to_string).ok_or_else(|| {
        let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
        bad("source", format!("{:?} is not one of {}", truncate(v), names.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-03-01T10:07:30Z".parse().unwrap()
    }

    fn err(r: Result<impl std::fmt::Debug, ParamError>) -> &'static str {
        r.expect_err("refused").parameter
    }

    #[test]
    fn candles_defaults_round_the_window_to_the_interval() {
        let q = candles(Some("symbol=btc&interval=5m&limit=10"), now()).unwrap();
        assert_eq!(q.interval, Interval::M5);
        assert_eq!(q.window.symbol, "BTC");
        assert_eq!(q.window.to, "2026-03-01T10:10:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(q.window.from, "2026-03-01T09:15:00Z".parse::<DateTime<Utc>>().unwrap());
        assert!(q.window.newest);
        let q = candles(Some("symbol=ETH&interval=4h&from=2026-02-27T05:00:00%2B01:00&to=2026-02-28T00:00:00Z"), now())
            .unwrap();
        assert_eq!(q.window.from, "2026-02-27T04:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert!(!q.window.newest);
        assert_eq!(q.window.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        let c = |q: &str| err(candles(Some(q), now()));
        assert_eq!(c("interval=1m"), "symbol");
        assert_eq!(c("symbol=BTC"), "interval");
        assert_eq!(c("symbol=BTC&interval=2m"), "interval");
        assert_eq!(c("symbol=BTC';DROP TABLE trades;--&interval=1m"), "symbol");
        assert_eq!(c("symbol=BTC%27%20OR%201%3D1&interval=1m"), "symbol");
        assert_eq!(c("symbol=BTC&interval=1m&limit=2001"), "limit");
        assert_eq!(c("symbol=BTC&interval=1m&limit=0"), "limit");
        assert_eq!(c("symbol=BTC&interval=1m&limit=-1"), "limit");
        assert_eq!(c("symbol=BTC&interval=1m&from=yesterday"), "from");
        assert_eq!(c("symbol=BTC&interval=1m&from=2026-03-01T10:00:00Z&to=2026-03-01T09:00:00Z"), "from");
        assert_eq!(c("symbol=BTC&interval=1m&from=2026-02-01T00:00:00Z&to=2026-02-09T00:00:00Z"), "to");
        assert_eq!(c("symbol=BTC&interval=1m&source=ftx"), "source");
        assert_eq!(c("symbol=BTC&interval=1m&cursor=abc"), "cursor");
        assert_eq!(c("symbol=BTC&interval=1m&symbol=ETH"), "symbol");
        assert_eq!(c("symbol=BTC&interval=1m&order=desc"), "query");
        assert_eq!(c(&format!("symbol=BTC&interval=1m&source={}", "x".repeat(300))), "source");
        assert_eq!(err(raw(Some("symbol=BTC&from=2026-02-01T00:00:00Z&to=2026-02-03T00:00:00Z"), now())), "to");
        assert_eq!(err(raw(Some("symbol=BTC&interval=1m"), now())), "query");
        // A whole week of 1m and five years of 1d are served.
        assert!(
            candles(Some("symbol=BTC&interval=1m&from=2026-02-01T00:00:00Z&to=2026-02-08T00:00:00Z"), now()).is_ok()
        );
        assert!(
            candles(Some("symbol=BTC&interval=1d&from=2021-03-02T00:00:00Z&to=2026-03-01T00:00:00Z"), now()).is_ok()
        );
    }

    #[test]
    fn a_cursor_round_trips_and_must_lie_inside_the_window() {
        let c = Cursor { t: "2026-03-01T09:30:00Z".parse().unwrap(), s: Some("kraken".into()), id: Some("7".into()) };
        let w = raw(Some(&format!("symbol=BTC&cursor={}", c.encode())), now()).unwrap();
        assert_eq!(w.cursor, Some(c.clone()));
        assert!(!w.newest);
        let late = Cursor { t: "2026-03-01T11:00:00Z".parse().unwrap(), ..c };
        assert_eq!(err(raw(Some(&format!("symbol=BTC&cursor={}", late.encode())), now())), "cursor");
    }

    #[test]
    fn buckets_are_aligned_to_utc_midnight() {
        let t: DateTime<Utc> = "2026-03-01T22:59:59.5Z".parse().unwrap();
        assert_eq!(Interval::H4.floor(t), "2026-03-01T20:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(Interval::D1.ceil(t), "2026-03-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(Interval::M15.ceil(Interval::M15.floor(t)), Interval::M15.floor(t));
    }
}
