//! Kraken WebSocket v2 (`wss://ws.kraken.com/v2`): the `ticker` and `trade` channels.
//!
//! A `snapshot` precedes the `update`s and repeats recent trades on every (re)connect: the scraper's dedup
//! (by `trade_id`) makes each trade appear once. Prices are JSON numbers, read from their raw text so no
//! float touches them. BTC is `BTC/USD` in v2 (`XBT` was v1). `heartbeat` frames keep the watchdog fed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Source;
use super::parsed::{Downstream, ParseError, Parsed};
use super::transport::ws::{StreamPlan, websocket_loop};
use crate::message::{Decimal, Message, SCHEMA_VERSION, Side, Tick, Trade};

/// Public endpoint.
pub const DEFAULT_URL: &str = "wss://ws.kraken.com/v2";
/// Kraken sends a heartbeat every second: ten seconds of silence means the socket is dead.
pub const WATCHDOG: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(default)]
    channel: Option<&'a str>,
    #[serde(default)]
    method: Option<&'a str>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TickerData<'a> {
    symbol: &'a str,
    #[serde(borrow)]
    last: &'a RawValue,
    #[serde(default, borrow)]
    bid: Option<&'a RawValue>,
    #[serde(default, borrow)]
    ask: Option<&'a RawValue>,
    #[serde(default, borrow)]
    volume: Option<&'a RawValue>,
    #[serde(default, borrow)]
    change_pct: Option<&'a RawValue>,
    #[serde(default)]
    timestamp: Option<&'a str>,
}

#[derive(Deserialize)]
struct TradeData<'a> {
    symbol: &'a str,
    side: Side,
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    qty: &'a RawValue,
    trade_id: u64,
    timestamp: &'a str,
}

/// The Kraken source.
pub struct Kraken {
    url: String,
    pairs: Vec<String>,
}

impl Kraken {
    /// From the pipeline's symbols and this source's entry.
    pub fn new(cfg: &WorkerConfig, source: &SourceConfig) -> Self {
        let quote = cfg.quote.to_uppercase();
        Kraken {
            url: source.base_url.clone().unwrap_or_else(|| DEFAULT_URL.into()),
            pairs: cfg.symbols.iter().map(|s| format!("{}/{quote}", s.to_uppercase())).collect(),
        }
    }

    fn plan(&self) -> StreamPlan {
        let sub = |channel: &str| {
            serde_json::json!({"method": "subscribe", "params": {"channel": channel, "symbol": self.pairs}}).to_string()
        };
        StreamPlan {
            url: self.url.clone(),
            subscribe: vec![sub("ticker"), sub("trade")],
            watchdog: WATCHDOG,
            max_connection_age: None,
        }
    }
}

fn split_pair(pair: &str) -> Result<(&str, &str), ParseError> {
    pair.split_once('/').ok_or_else(|| ParseError::UnexpectedShape(format!("symbol {pair:?} is not BASE/QUOTE")))
}

fn optional(v: Option<&RawValue>) -> Result<Option<Decimal>, ParseError> {
    match v {
        Some(v) if v.get() != "null" => Ok(Some(Decimal::from_raw_json(v)?)),
        _ => Ok(None),
    }
}

impl Source for Kraken {
    fn kind(&self) -> SourceKind {
        SourceKind::Kraken
    }

    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        let f: Frame = serde_json::from_slice(frame)?;
        if f.success == Some(false) {
            return Err(ParseError::Api { code: 0, message: f.error.unwrap_or_default() });
        }
        let (channel, data) = match (f.channel, f.data) {
            (Some(c @ ("ticker" | "trade")), Some(d)) => (c, d),
            (Some("ticker" | "trade"), None) => return Err(ParseError::UnexpectedShape("no data".into())),
            // heartbeat, status, subscription acknowledgements, pongs: liveness only.
            (Some(_), _) => return Ok(Parsed::default()),
            (None, _) if f.method.is_some() => return Ok(Parsed::default()),
            (None, _) => return Err(ParseError::UnexpectedShape("neither channel nor method".into())),
        };
        let mut out = Vec::new();
        if channel == "ticker" {
            for t in serde_json::from_str::<Vec<TickerData>>(data.get())? {
                let (base, quote) = split_pair(t.symbol)?;
                out.push(Message::Tick(Tick {
                    v: SCHEMA_VERSION,
                    source: SourceKind::Kraken,
                    symbol: base.to_owned(),
                    quote: quote.to_owned(),
                    price: Decimal::from_raw_json(t.last)?,
                    bid: optional(t.bid)?,
                    ask: optional(t.ask)?,
                    volume_24h: optional(t.volume)?,
                    market_cap: None,
                    change_24h_pct: optional(t.change_pct)?,
                    exchange_time: t
                        .timestamp
                        .map(super::parsed::time_from_rfc3339)
                        .transpose()?
                        .unwrap_or(received_at),
                    received_at,
                }));
            }
        } else {
            for t in serde_json::from_str::<Vec<TradeData>>(data.get())? {
                let (base, quote) = split_pair(t.symbol)?;
                out.push(Message::Trade(Trade {
                    v: SCHEMA_VERSION,
                    source: SourceKind::Kraken,
                    symbol: base.to_owned(),
                    quote: quote.to_owned(),
                    trade_id: t.trade_id.to_string(),
                    price: Decimal::from_raw_json(t.price)?,
                    quantity: Decimal::from_raw_json(t.qty)?,
                    side: Some(t.side),
                    exchange_time: super::parsed::time_from_rfc3339(t.timestamp)?,
                    received_at,
                }));
            }
        }
        Ok(out.into())
    }

    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()> {
        let plan = self.plan();
        websocket_loop(move |frame, at| self.parse(frame, at), plan, out).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;

    fn source() -> Kraken {
        let cfg = test_config(&["BTC", "ETH"]);
        Kraken::new(&cfg, &cfg.sources[0])
    }

    #[test]
    fn subscribes_with_v2_names() {
        let plan = source().plan();
        assert_eq!(
            plan.subscribe[0],
            r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"]}}"#
        );
        assert!(plan.subscribe[1].contains(r#""channel":"trade""#));
    }

    #[test]
    fn parses_trades_and_tickers_without_float_loss() {
        let s = source();
        let trade = br#"{"channel":"trade","type":"snapshot","data":[{"symbol":"BTC/USD","side":"sell","price":67187.330000000001,"qty":0.00012345,"ord_type":"market","trade_id":4665906,"timestamp":"2024-03-25T08:45:00.123456Z"}]}"#;
        let p = s.parse(trade, Utc::now()).unwrap();
        let Message::Trade(t) = &p.messages[0] else { panic!() };
        assert_eq!(
            (t.price.as_str(), t.quantity.as_str(), t.trade_id.as_str()),
            ("67187.330000000001", "0.00012345", "4665906")
        );
        assert_eq!(t.side, Some(Side::Sell));
        let ticker = br#"{"channel":"ticker","type":"update","data":[{"symbol":"ETH/USD","bid":3456.1,"bid_qty":1,"ask":3456.2,"ask_qty":2,"last":3456.15,"volume":1234.5,"vwap":3400,"low":3300,"high":3500,"change":10,"change_pct":0.29}]}"#;
        let Message::Tick(t) = &s.parse(ticker, Utc::now()).unwrap().messages[0] else { panic!() };
        assert_eq!(
            (t.symbol.as_str(), t.price.as_str(), t.bid.as_ref().unwrap().as_str()),
            ("ETH", "3456.15", "3456.1")
        );
    }

    #[test]
    fn control_frames_are_empty_and_errors_counted() {
        let s = source();
        for f in [
            &br#"{"channel":"heartbeat"}"#[..],
            br#"{"method":"subscribe","result":{"channel":"ticker"},"success":true}"#,
        ] {
            assert_eq!(s.parse(f, Utc::now()).unwrap(), Parsed::default());
        }
        let e = s.parse(br#"{"method":"subscribe","error":"Currency pair not supported","success":false}"#, Utc::now());
        assert_eq!(e.unwrap_err().reason(), "api_error");
        let e = s.parse(br#"{"channel":"trade","data":[{"symbol":"BTC/USD","price":"x"}]}"#, Utc::now());
        assert_eq!(e.unwrap_err().reason(), "unexpected_shape");
        assert_eq!(s.parse(br#"[1,2]"#, Utc::now()).unwrap_err().reason(), "unexpected_shape");
    }
}
