//! CoinMarketCap REST: `GET /v1/cryptocurrency/quotes/latest?symbol=BTC,ETH&convert=USD`, polled, with the
//! `X-CMC_PRO_API_KEY` header. `status.error_code` is checked before anything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Source;
use super::parsed::{Downstream, ParseError, Parsed};
use super::transport::rest::{PollPlan, poll_loop};
use crate::message::{Decimal, Message, SCHEMA_VERSION, Tick};

/// Public API base URL.
pub const DEFAULT_BASE_URL: &str = "https://pro-api.coinmarketcap.com";
/// Default poll interval (the basic plan allows 10 000 calls a month: one a minute fits).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    status: Status<'a>,
    #[serde(default, borrow)]
    data: Option<HashMap<&'a str, &'a RawValue>>,
}

#[derive(Deserialize)]
struct Status<'a> {
    error_code: i64,
    #[serde(default, borrow)]
    error_message: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Coin<'a> {
    #[serde(borrow)]
    quote: HashMap<&'a str, Quote<'a>>,
}

#[derive(Deserialize)]
struct Quote<'a> {
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(default, borrow)]
    volume_24h: Option<&'a RawValue>,
    #[serde(default, borrow)]
    percent_change_24h: Option<&'a RawValue>,
    #[serde(default, borrow)]
    market_cap: Option<&'a RawValue>,
    #[serde(default)]
    last_updated: Option<String>,
}

/// The CoinMarketCap source.
pub struct CoinMarketCap {
    quote: String,
    url: String,
    api_key: Option<String>,
    interval: Duration,
}

impl CoinMarketCap {
    /// From the pipeline's symbols and this source's entry.
    pub fn new(cfg: &WorkerConfig, source: &SourceConfig) -> Self {
        let base = source.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/');
        let symbols: Vec<String> = cfg.symbols.iter().map(|s| s.to_uppercase()).collect();
        let api_key = super::api_key(source);
        if api_key.is_none() {
            tracing::warn!("coinmarketcap: no API key in the environment; requests will be refused");
        }
        CoinMarketCap {
            quote: cfg.quote.to_uppercase(),
            url: format!(
                "{base}/v1/cryptocurrency/quotes/latest?symbol={}&convert={}",
                symbols.join(","),
                cfg.quote.to_uppercase()
            ),
            api_key,
            interval: source.poll_interval_ms.map_or(DEFAULT_POLL_INTERVAL, Duration::from_millis),
        }
    }

    fn plan(&self) -> PollPlan {
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key
            && let Ok(mut v) = HeaderValue::from_str(key)
        {
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-cmc_pro_api_key"), v);
        }
        headers.insert(reqwest::header::ACCEPT, HeaderValue::from_static("application/json"));
        PollPlan { url: self.url.clone(), headers, interval: self.interval }
    }
}

fn optional(v: Option<&RawValue>) -> Result<Option<Decimal>, ParseError> {
    match v {
        Some(v) if v.get() != "null" => Ok(Some(Decimal::from_raw_json(v)?)),
        _ => Ok(None),
    }
}

impl Source for CoinMarketCap {
    fn kind(&self) -> SourceKind {
        SourceKind::Coinmarketcap
    }

    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        let resp: Response = serde_json::from_slice(frame)?;
        if resp.status.error_code != 0 {
            return Err(ParseError::Api {
                code: resp.status.error_code,
                message: resp.status.error_message.unwrap_or_default().into_owned(),
            });
        }
        let data = resp.data.ok_or_else(|| ParseError::UnexpectedShape("no data".into()))?;
        let mut out = Vec::with_capacity(data.len());
        for (symbol, raw) in data {
            // v1 answers one object per symbol; v2 a list of candidates (the first is the main listing).
            let coin: Coin = match raw.get().trim_start().starts_with('[') {
                true => serde_json::from_str::<Vec<Coin>>(raw.get())?
                    .into_iter()
                    .next()
                    .ok_or_else(|| ParseError::UnexpectedShape(format!("{symbol}: empty list")))?,
                false => serde_json::from_str(raw.get())?,
            };
            let q = coin
                .quote
                .get(self.quote.as_str())
                .ok_or_else(|| ParseError::UnexpectedShape(format!("{symbol}: no {} quote", self.quote)))?;
            let exchange_time = match &q.last_updated {
                Some(t) => super::parsed::time_from_rfc3339(t)?,
                None => received_at,
            };
            out.push(Message::Tick(Tick {
                v: SCHEMA_VERSION,
                source: SourceKind::Coinmarketcap,
                symbol: symbol.to_uppercase(),
                quote: self.quote.clone(),
                price: Decimal::from_raw_json(q.price)?,
                bid: None,
                ask: None,
                volume_24h: optional(q.volume_24h)?,
                market_cap: optional(q.market_cap)?,
                change_24h_pct: optional(q.percent_change_24h)?,
                exchange_time,
                received_at,
            }));
        }
        // HashMap order is random; a stable order keeps replays and tests deterministic.
        out.sort_by(|a, b| a.symbol().cmp(b.symbol()));
        Ok(out.into())
    }

    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()> {
        let plan = self.plan();
        poll_loop(move |frame, at| self.parse(frame, at), plan, out).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;

    fn source() -> CoinMarketCap {
        let cfg = test_config(&["BTC", "ETH"]);
        CoinMarketCap::new(&cfg, &cfg.sources[0])
    }

    #[test]
    fn parses_quotes_exactly() {
        let body = br#"{"status":{"error_code":0,"error_message":null},"data":{"ETH":{"symbol":"ETH","quote":{"USD":{"price":3456.789012345678,"volume_24h":1.5e10,"percent_change_24h":-1.25,"market_cap":null,"last_updated":"2024-03-25T08:45:00.000Z"}}},"BTC":[{"symbol":"BTC","quote":{"USD":{"price":67187.33}}}]}}"#;
        let p = source().parse(body, Utc::now()).unwrap();
        let ticks: Vec<&Tick> =
            p.messages.iter().map(|m| if let Message::Tick(t) = m { t } else { panic!() }).collect();
        assert_eq!(ticks[0].symbol, "BTC");
        assert_eq!(ticks[0].price.as_str(), "67187.33");
        assert_eq!(ticks[1].price.as_str(), "3456.789012345678");
        assert_eq!(ticks[1].volume_24h.as_ref().unwrap().as_str(), "1.5e10");
        assert_eq!(ticks[1].market_cap, None);
        assert_eq!(ticks[1].exchange_time.to_rfc3339(), "2024-03-25T08:45:00+00:00");
    }

    #[test]
    fn error_status_is_an_api_error() {
        let body = br#"{"status":{"error_code":1002,"error_message":"API key missing."}}"#;
        let e = source().parse(body, Utc::now()).unwrap_err();
        assert_eq!(e.reason(), "api_error");
        assert!(e.to_string().contains("1002"));
    }
}
