//! The response types (their JSON Schema is the OpenAPI document's, derived with `utoipa`) and the
//! handlers of `/api/v1/…`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::History;
use super::cache::Served;
use super::params::{self, Cursor, Interval, ParamError};
use super::query::QueryError;

/// Candles of one symbol, oldest first.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Candles {
    /// The symbol, upper-case.
    pub symbol: String,
    /// The candle width.
    pub interval: Interval,
    /// The one source asked for; `null` when every source is merged.
    pub source: Option<String>,
    /// At most `limit` candles; buckets without trades are absent.
    pub candles: Vec<Candle>,
    /// Pass as `cursor` (same other parameters) for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One OHLCV candle. Decimals are strings, exact as stored.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Candle {
    /// Bucket start (UTC, aligned to the interval).
    pub time: DateTime<Utc>,
    /// Price of the first trade in the bucket: the open of its earliest stored sub-candle (1-minute up to
    /// 15m, 1-hour above); merged over sources, the mean of the sources' opens in that sub-candle.
    #[schema(example = "64012.5")]
    pub open: String,
    /// Highest price.
    pub high: String,
    /// Lowest price.
    pub low: String,
    /// Price of the last trade: the close of its latest sub-candle; merged, the mean of the sources' closes.
    pub close: String,
    /// Sum of the traded quantities.
    pub volume: String,
    /// Number of trades.
    pub trades: i64,
}

/// Trades of one symbol, by (time, source, trade id).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Trades {
    /// The symbol, upper-case.
    pub symbol: String,
    /// The one source asked for; `null` for all.
    pub source: Option<String>,
    /// At most `limit` trades.
    pub trades: Vec<Trade>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One stored trade.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Trade {
    /// Exchange time.
    pub time: DateTime<Utc>,
    /// Source that reported it.
    pub source: String,
    /// The exchange's trade id.
    pub trade_id: String,
    /// Price (exact decimal).
    pub price: String,
    /// Quantity (exact decimal).
    pub quantity: String,
    /// `buy` or `sell`, when the exchange says.
    pub side: Option<String>,
}

/// Ticks (price snapshots) of one symbol, by (time, source).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Ticks {
    /// The symbol, upper-case.
    pub symbol: String,
    /// The one source asked for; `null` for all.
    pub source: Option<String>,
    /// At most `limit` ticks.
    pub ticks: Vec<Tick>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One stored tick. Decimals are strings; fields a source does not give are `null`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Tick {
    /// Exchange time.
    pub time: DateTime<Utc>,
    /// Source that reported it.
    pub source: String,
    /// Last price.
    pub price: String,
    /// Best bid.
    pub bid: Option<String>,
    /// Best ask.
    pub ask: Option<String>,
    /// Traded volume over 24 hours.
    pub volume_24h: Option<String>,
    /// Market capitalisation.
    pub market_cap: Option<String>,
    /// Price change over 24 hours, in percent.
    pub change_24h_pct: Option<String>,
}

/// Every stored symbol.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Symbols {
    /// Sorted by symbol.
    pub symbols: Vec<SymbolInfo>,
}

/// One stored symbol.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct SymbolInfo {
    /// The symbol, upper-case.
    pub symbol: String,
    /// Time of its oldest stored trade or tick.
    pub first: DateTime<Utc>,
    /// Time of its newest stored trade or tick.
    pub last: DateTime<Utc>,
    /// Sources that stored any, sorted.
    pub sources: Vec<String>,
}

/// Why a request was not answered.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
    /// The query parameter at fault (400 only).
    pub parameter: Option<String>,
}

/// Query parameters of `/api/v1/candles` (parsed and bounded by `history::params`).
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CandleParams {
    /// Symbol, as listed by `/api/v1/symbols` (case-insensitive).
    symbol: String,
    /// Candle width.
    interval: Interval,
    /// First bucket (RFC 3339, rounded down to the interval). Default: `limit` intervals before `to`.
    from: Option<DateTime<Utc>>,
    /// End, excluded (RFC 3339, rounded up to the interval). Default: now. `to - from` is at most 7 days for
    /// 1m, 30 days for 5m and 15m, 365 for 1h, 730 for 4h, 1825 for 1d.
    to: Option<DateTime<Utc>>,
    /// Candles at most, 1 to 2000 (default 500).
    #[param(minimum = 1, maximum = 2000)]
    limit: Option<u32>,
    /// One source only (`synthetic`, `coingecko`, `coinmarketcap`, `kraken`, `binance`); default: all merged.
    source: Option<String>,
    /// `next` of the previous page.
    cursor: Option<String>,
}

/// Query parameters of `/api/v1/trades` and `/api/v1/ticks`.
#[derive(IntoParams, Deserialize)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RawParams {
    /// Symbol, as listed by `/api/v1/symbols` (case-insensitive).
    symbol: String,
    /// Start, included (RFC 3339). Default: one hour before `to`.
    from: Option<DateTime<Utc>>,
    /// End, excluded (RFC 3339). Default: now. `to - from` is at most one day.
    to: Option<DateTime<Utc>>,
    /// Rows at most, 1 to 2000 (default 500).
    #[param(minimum = 1, maximum = 2000)]
    limit: Option<u32>,
    /// One source only; default: all.
    source: Option<String>,
    /// `next` of the previous page.
    cursor: Option<String>,
}

/// The OpenAPI document of `/api/v1`, generated from the types above.
#[derive(OpenApi)]
#[openapi(
    info(title = "CryptoViz history API", description = "Stored candles, trades and ticks of a pipeline."),
    paths(symbols, candles, trades, ticks)
)]
pub struct ApiDoc;

/// An answer: JSON bytes, or an error with its status.
pub enum Reply {
    /// 200 with this JSON body.
    Json(Bytes),
    /// 400 naming the parameter.
    Bad(ParamError),
    /// 503 or 500.
    Query(QueryError),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Reply::Json(b) => return ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
            Reply::Bad(e) => {
                (StatusCode::BAD_REQUEST, ApiError { error: e.to_string(), parameter: Some(e.parameter.into()) })
            }
            Reply::Query(e) => {
                let status = match e {
                    QueryError::Failed(_) => {
                        tracing::error!(error = %e, "history query failed");
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, ApiError { error: e.to_string(), parameter: None })
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<ParamError> for Reply {
    fn from(e: ParamError) -> Self {
        Reply::Bad(e)
    }
}

impl From<QueryError> for Reply {
    fn from(e: QueryError) -> Self {
        Reply::Query(e)
    }
}

impl Reply {
    /// Bounded label for `cryptoviz_history_requests_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Reply::Json(_) => "ok",
            Reply::Bad(_) => "bad_request",
            Reply::Query(e) => e.kind(),
        }
    }
}

/// JSON bytes of a response.
pub(super) fn json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("serialises"))
}

/// Every stored symbol, its first and last time and its sources.
#[utoipa::path(get, path = "/api/v1/symbols", responses(
    (status = 200, body = Symbols), (status = 503, body = ApiError, description = "database slow or down")))]
pub async fn symbols(State(h): State<Arc<History>>) -> Reply {
    h.answer("symbols", h.symbols().await.map_err(Reply::from))
}

/// OHLCV candles of one symbol, merged over sources or of one source.
#[utoipa::path(get, path = "/api/v1/candles", params(CandleParams), responses(
    (status = 200, body = Candles), (status = 400, body = ApiError, description = "a parameter is invalid; `parameter` names it"),
    (status = 503, body = ApiError, description = "database slow or down")))]
pub async fn candles(State(h): State<Arc<History>>, RawQuery(q): RawQuery) -> Reply {
    let result = async {
        let q = params::candles(q.as_deref(), Utc::now())?;
        h.known_symbol(&q.window.symbol).await?;
        let key = q
            .window
            .newest
            .then(|| format!("candles {} {:?} {:?} {}", q.window.symbol, q.interval, q.window.source, q.window.limit));
        let fill = async || {
            let mut rows = h.db.candles(&q).await?;
            let next = page(&mut rows, q.window.limit, |r| Cursor { t: r.time, s: None, id: None });
            let candles = rows
                .into_iter()
                .map(|r| {
                    let [open, high, low, close, volume] = r.ohlcv;
                    Candle { time: r.time, open, high, low, close, volume, trades: r.trades }
                })
                .collect();
            Ok::<_, Reply>(json(&Candles {
                symbol: q.window.symbol.clone(),
                interval: q.interval,
                source: q.window.source.clone(),
                candles,
                next,
            }))
        };
        let (bytes, served) = match key {
            Some(k) => h.cache.get_or_fill(k, fill).await?,
            None => (fill().await?, Served::Queried),
        };
        Ok::<_, Reply>((bytes, served))
    };
    h.answer("candles", result.await)
}

/// Stored trades of one symbol.
#[utoipa::path(get, path = "/api/v1/trades", params(RawParams), responses(
    (status = 200, body = Trades), (status = 400, body = ApiError, description = "a parameter is invalid; `parameter` names it"),
    (status = 503, body = ApiError, description = "database slow or down")))]
pub async fn trades(State(h): State<Arc<History>>, RawQuery(q): RawQuery) -> Reply {
    let result = async {
        let w = params::raw(q.as_deref(), Utc::now())?;
        h.known_symbol(&w.symbol).await?;
        let mut rows = h.db.trades(&w).await?;
        let next =
            page(&mut rows, w.limit, |r| Cursor { t: r.time, s: Some(r.source.clone()), id: Some(r.trade_id.clone()) });
        let trades = rows
            .into_iter()
            .map(|r| Trade {
                time: r.time,
                source: r.source,
                trade_id: r.trade_id,
                price: r.price,
                quantity: r.quantity,
                side: r.side,
            })
            .collect();
        Ok::<_, Reply>((json(&Trades { symbol: w.symbol, source: w.source, trades, next }), Served::Queried))
    };
    h.answer("trades", result.await)
}

/// Stored ticks of one symbol.
#[utoipa::path(get, path = "/api/v1/ticks", params(RawParams), responses(
    (status = 200, body = Ticks), (status = 400, body = ApiError, description = "a parameter is invalid; `parameter` names it"),
    (status = 503, body = ApiError, description = "database slow or down")))]
pub async fn ticks(State(h): State<Arc<History>>, RawQuery(q): RawQuery) -> Reply {
    let result = async {
        let w = params::raw(q.as_deref(), Utc::now())?;
        h.known_symbol(&w.symbol).await?;
        let mut rows = h.db.ticks(&w).await?;
        let next = page(&mut rows, w.limit, |r| Cursor { t: r.time, s: Some(r.source.clone()), id: None });
        let ticks = rows
            .into_iter()
            .map(|r| {
                let [bid, ask, volume_24h, market_cap, change_24h_pct] = r.extra;
                Tick {
                    time: r.time,
                    source: r.source,
                    price: r.price,
                    bid,
                    ask,
                    volume_24h,
                    market_cap,
                    change_24h_pct,
                }
            })
            .collect();
        Ok::<_, Reply>((json(&Ticks { symbol: w.symbol, source: w.source, ticks, next }), Served::Queried))
    };
    h.answer("ticks", result.await)
}

/// Keep the first `limit` rows; the cursor of the one after, when there is one.
fn page<R>(rows: &mut Vec<R>, limit: u32, key: impl Fn(&R) -> Cursor) -> Option<String> {
    let next = rows.get(limit as usize).map(|r| key(r).encode());
    rows.truncate(limit as usize);
    next
}

/// `/api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::openapi().to_json().expect("serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented parameters are the parsed ones.
    #[test]
    fn the_openapi_document_names_exactly_the_parsed_parameters() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let names = |path: &str| -> Vec<String> {
            let mut v: Vec<String> = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .map(|a| a.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        let sorted = |s: &[&str]| {
            let mut v: Vec<String> = s.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(names("/api/v1/candles"), sorted(params::CANDLE_PARAMS));
        assert_eq!(names("/api/v1/trades"), sorted(params::RAW_PARAMS));
        assert_eq!(names("/api/v1/ticks"), sorted(params::RAW_PARAMS));
        assert!(names("/api/v1/symbols").is_empty());
        let intervals = &doc["components"]["schemas"]["Interval"]["enum"];
        let want: Vec<&str> = Interval::ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(intervals, &serde_json::json!(want));
    }
}
