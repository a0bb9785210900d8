//! Binance combined streams (`wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@ticker`).
//!
//! Frames are `{"stream": .., "data": {..}}`, numbers are strings, times milliseconds. Binance pings every
//! few minutes (tungstenite answers), disconnects every connection after 24 h (we reconnect proactively a
//! little earlier) and announces maintenance with a `serverShutdown` event (we reconnect at once). Limits
//! respected: ≤ 1024 streams per connection (one connection per chunk of symbols) and ≤ 5 messages a second
//! sent (we send none but pongs: the streams are in the URL).
//!
//! Binance has no USD market: a pipeline quoting USD reads the USDT pairs, and the messages say `USDT`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::Source;
use super::parsed::{Downstream, ParseError, Parsed};
use super::transport::ws::{StreamPlan, websocket_loop};
use crate::message::{Decimal, Message, SCHEMA_VERSION, Side, Tick, Trade};

/// Public endpoint.
pub const DEFAULT_BASE_URL: &str = "wss://stream.binance.com:9443";
/// Streams per connection at most (Binance allows 1024).
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;
/// Reconnect before Binance's forced disconnect at 24 h, at a time of our choosing.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(23 * 3600 + 30 * 60);
/// Tickers arrive every second: a minute of silence means the socket is dead.
pub const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Combined<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct EventType<'a> {
    #[serde(rename = "e")]
    event: &'a str,
}

#[derive(Deserialize)]
struct TradeEvent<'a> {
    #[serde(rename = "s")]
    symbol: &'a str,
    #[serde(rename = "t")]
    trade_id: u64,
    #[serde(rename = "p")]
    price: &'a str,
    #[serde(rename = "q")]
    quantity: &'a str,
    #[serde(rename = "T")]
    trade_time: i64,
    /// The buyer was the maker, so the seller took liquidity.
    #[serde(rename = "m")]
    buyer_is_maker: bool,
}

#[derive(Deserialize)]
struct TickerEvent<'a> {
    #[serde(rename = "E")]
    event_time: i64,
    #[serde(rename = "s")]
    symbol: &'a str,
    #[serde(rename = "c")]
    last: &'a str,
    #[serde(rename = "b")]
    bid: Option<&'a str>,
    #[serde(rename = "a")]
    ask: Option<&'a str>,
    #[serde(rename = "v")]
    volume: Option<&'a str>,
    #[serde(rename = "P")]
    change_pct: Option<&'a str>,
}

/// The fields of both event kinds we read, for a single pass over a frame (the common case). Where the two
/// kinds share a key its type is the loosest of the two; the typed structs above decide everything the
/// fast path does not accept (see [`Binance::parse_fast`]).
#[derive(Deserialize)]
struct AnyEvent<'a> {
    #[serde(rename = "e")]
    event: &'a str,
    #[serde(rename = "E")]
    event_time: Option<i64>,
    #[serde(rename = "s")]
    symbol: Option<&'a str>,
    #[serde(rename = "t")]
    trade_id: Option<u64>,
    /// The trade's price; the ticker's price change.
    #[serde(rename = "p")]
    price: Option<&'a str>,
    /// The trade's quantity; the ticker's quote volume.
    #[serde(rename = "q")]
    quantity: Option<&'a str>,
    #[serde(rename = "T")]
    trade_time: Option<i64>,
    #[serde(rename = "m")]
    buyer_is_maker: Option<bool>,
    #[serde(rename = "c")]
    last: Option<&'a str>,
    /// The ticker's best bid (older trade events carried a number here).
    #[serde(rename = "b", borrow)]
    bid: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "a", borrow)]
    ask: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "v")]
    volume: Option<&'a str>,
    #[serde(rename = "P")]
    change_pct: Option<&'a str>,
}

#[derive(Deserialize)]
struct CombinedEvent<'a> {
    #[serde(borrow)]
    data: AnyEvent<'a>,
}

/// The text of a JSON string without escapes (Binance's numbers-as-strings never have any).
fn plain_str(raw: &serde_json::value::RawValue) -> Option<&str> {
    raw.get().strip_prefix('"')?.strip_suffix('"').filter(|s| !s.contains('\\'))
}

/// The Binance source.
pub struct Binance {
    base_url: String,
    /// Binance pair (`BTCUSDT`) → (base, quote).
    pairs: HashMap<String, (String, String)>,
    streams: Vec<String>,
}

impl Binance {
    /// From the pipeline's symbols and this source's entry.
    pub fn new(cfg: &WorkerConfig, source: &SourceConfig) -> Self {
        let quote = match cfg.quote.to_uppercase().as_str() {
            "USD" => "USDT".to_string(),
            q => q.to_string(),
        };
        let mut pairs = HashMap::new();
        let mut streams = Vec::new();
        for sym in &cfg.symbols {
            let pair = format!("{}{quote}", sym.to_uppercase());
            let lower = pair.to_lowercase();
            streams.push(format!("{lower}@trade"));
            streams.push(format!("{lower}@ticker"));
            pairs.insert(pair, (sym.to_uppercase(), quote.clone()));
        }
        Binance {
            base_url: source.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/').to_string(),
            pairs,
            streams,
        }
    }

    /// One plan per connection: the streams split into chunks Binance accepts.
    fn plans(&self) -> Vec<StreamPlan> {
        self.streams
            .chunks(MAX_STREAMS_PER_CONNECTION)
            .map(|chunk| StreamPlan {
                url: format!("{}/stream?streams={}", self.base_url, chunk.join("/")),
                subscribe: Vec::new(),
                watchdog: WATCHDOG,
                max_connection_age: Some(MAX_CONNECTION_AGE),
            })
            .collect()
    }

    fn pair(&self, symbol: &str) -> Result<&(String, String), ParseError> {
        self.pairs.get(symbol).ok_or_else(|| ParseError::UnexpectedShape(format!("unsubscribed symbol {symbol:?}")))
    }
}

impl Binance {
    /// A well-formed trade or ticker in a combined-stream frame, read in one pass; `None` for anything else
    /// (control events, bare events, bad input), which the typed path then parses or rejects with its reason.
    /// Parsing a frame once instead of three times (envelope, event type, event) was a quarter of the
    /// scraper's cost per message.
    fn parse_fast(&self, frame: &[u8], received_at: DateTime<Utc>) -> Option<Message> {
        let ev = serde_json::from_slice::<CombinedEvent>(frame).ok()?.data;
        let (base, quote) = self.pairs.get(ev.symbol?)?;
        let dec = |v: Option<&str>| v.map(Decimal::parse).transpose().ok();
        match ev.event {
            "trade" => Some(Message::Trade(Trade {
                v: SCHEMA_VERSION,
                source: SourceKind::Binance,
                symbol: base.clone(),
                quote: quote.clone(),
                trade_id: ev.trade_id?.to_string(),
                price: Decimal::parse(ev.price?).ok()?,
                quantity: Decimal::parse(ev.quantity?).ok()?,
                side: Some(if ev.buyer_is_maker? { Side::Sell } else { Side::Buy }),
                exchange_time: super::parsed::time_from_millis(ev.trade_time?).ok()?,
                received_at,
            })),
            "24hrTicker" => {
                let (bid, ask) = (ev.bid.map(plain_str), ev.ask.map(plain_str));
                if matches!(bid, Some(None)) || matches!(ask, Some(None)) {
                    return None;
                }
                Some(Message::Tick(Tick {
                    v: SCHEMA_VERSION,
                    source: SourceKind::Binance,
                    symbol: base.clone(),
                    quote: quote.clone(),
                    price: Decimal::parse(ev.last?).ok()?,
                    bid: dec(bid.flatten())?,
                    ask: dec(ask.flatten())?,
                    volume_24h: dec(ev.volume)?,
                    market_cap: None,
                    change_24h_pct: dec(ev.change_pct)?,
                    exchange_time: super::parsed::time_from_millis(ev.event_time?).ok()?,
                    received_at,
                }))
            }
            _ => None,
        }
    }

    /// Any frame, with the typed structs: control events, bare events, and the reason a bad frame is bad.
    fn parse_typed(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        // Combined-stream frames wrap the event; control events may come bare.
        let data = match serde_json::from_slice::<Combined>(frame) {
            Ok(c) => c.data.get().as_bytes(),
            Err(e) if e.is_data() => frame,
            Err(e) => return Err(e.into()),
        };
        let ev: EventType = serde_json::from_slice(data)?;
        let msg = match ev.event {
            "trade" => {
                let t: TradeEvent = serde_json::from_slice(data)?;
                let (base, quote) = self.pair(t.symbol)?;
                Message::Trade(Trade {
                    v: SCHEMA_VERSION,
                    source: SourceKind::Binance,
                    symbol: base.clone(),
                    quote: quote.clone(),
                    trade_id: t.trade_id.to_string(),
                    price: Decimal::parse(t.price)?,
                    quantity: Decimal::parse(t.quantity)?,
                    side: Some(if t.buyer_is_maker { Side::Sell } else { Side::Buy }),
                    exchange_time: super::parsed::time_from_millis(t.trade_time)?,
                    received_at,
                })
            }
            "24hrTicker" => {
                let t: TickerEvent = serde_json::from_slice(data)?;
                let (base, quote) = self.pair(t.symbol)?;
                let opt = |v: Option<&str>| v.map(Decimal::parse).transpose();
                Message::Tick(Tick {
                    v: SCHEMA_VERSION,
                    source: SourceKind::Binance,
                    symbol: base.clone(),
                    quote: quote.clone(),
                    price: Decimal::parse(t.last)?,
                    bid: opt(t.bid)?,
                    ask: opt(t.ask)?,
                    volume_24h: opt(t.volume)?,
                    market_cap: None,
                    change_24h_pct: opt(t.change_pct)?,
                    exchange_time: super::parsed::time_from_millis(t.event_time)?,
                    received_at,
                })
            }
            "serverShutdown" => return Ok(Parsed { messages: Vec::new(), reconnect: true }),
            other => return Err(ParseError::UnexpectedShape(format!("event {other:?}"))),
        };
        Ok(vec![msg].into())
    }
}

impl Source for Binance {
    fn kind(&self) -> SourceKind {
        SourceKind::Binance
    }

    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        match self.parse_fast(frame, received_at) {
            Some(msg) => Ok(vec![msg].into()),
            None => self.parse_typed(frame, received_at),
        }
    }

    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()> {
        let plans = self.plans();
        let tasks: Vec<_> = plans
            .into_iter()
            .map(|plan| {
                let source = self.clone();
                websocket_loop(move |frame, at| source.parse(frame, at), plan, out.clone())
            })
            .collect();
        async move {
            futures::future::join_all(tasks).await;
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;

    fn source(symbols: &[&str]) -> Binance {
        let cfg = test_config(symbols);
        Binance::new(&cfg, &cfg.sources[0])
    }

    #[test]
    fn combined_stream_urls_respect_the_stream_limit() {
        let plans = source(&["BTC", "ETH"]).plans();
        assert_eq!(plans.len(), 1);
        assert!(plans[0].url.ends_with("/stream?streams=btcusdt@trade/btcusdt@ticker/ethusdt@trade/ethusdt@ticker"));
        let many: Vec<String> = (0..600).map(|i| format!("C{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(source(&many).plans().len(), 2);
    }

    #[test]
    fn parses_trades_and_tickers_exactly() {
        let s = source(&["BTC"]);
        let f = br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1711356300124,"s":"BTCUSDT","t":3515367117,"p":"67187.33000000","q":"0.00150000","T":1711356300123,"m":true,"M":true}}"#;
        let Message::Trade(t) = &s.parse(f, Utc::now()).unwrap().messages[0] else { panic!() };
        assert_eq!((t.symbol.as_str(), t.quote.as_str()), ("BTC", "USDT"));
        assert_eq!((t.price.as_str(), t.quantity.as_str()), ("67187.33000000", "0.00150000"));
        assert_eq!((t.side, t.exchange_time.timestamp_millis()), (Some(Side::Sell), 1_711_356_300_123));
        let f = br#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1711356300124,"s":"BTCUSDT","p":"100.0","P":"0.150","w":"1","c":"67190.01","Q":"1","b":"67190.00","B":"1","a":"67190.02","A":"1","o":"1","h":"1","l":"1","v":"12345.678","q":"1"}}"#;
        let Message::Tick(t) = &s.parse(f, Utc::now()).unwrap().messages[0] else { panic!() };
        assert_eq!((t.price.as_str(), t.change_24h_pct.as_ref().unwrap().as_str()), ("67190.01", "0.150"));
    }

    #[test]
    fn server_shutdown_asks_for_a_reconnect_and_bad_frames_are_errors() {
        let s = source(&["BTC"]);
        assert!(s.parse(br#"{"e":"serverShutdown","E":1711356300124}"#, Utc::now()).unwrap().reconnect);
        assert!(s.parse(br#"{"stream":"x","data":{"e":"serverShutdown","E":1}}"#, Utc::now()).unwrap().reconnect);
        let reason = |f: &[u8]| s.parse(f, Utc::now()).unwrap_err().reason();
        assert_eq!(reason(br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":67187.3,"q":"1","T":1,"m":true}}"#), "unexpected_shape");
        assert_eq!(reason(br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1,5","q":"1","T":1,"m":true}}"#), "invalid_number");
        assert_eq!(reason(br#"{"stream":"btcusdt@trade","data":{"e":"tra"#), "malformed_json");
    }

    #[test]
    fn the_one_pass_path_agrees_with_the_typed_path_or_defers_to_it() {
        let s = source(&["BTC"]);
        let now = Utc::now();
        let taken = [
            &br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1711356300124,"s":"BTCUSDT","t":3515367117,"p":"67187.33000000","q":"0.00150000","T":1711356300123,"m":false,"M":true}}"#[..],
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","b":88,"a":50,"T":1711356300123,"m":true}}"#,
            br#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1711356300124,"s":"BTCUSDT","p":"100.0","P":"0.150","c":"67190.01","b":"67190.00","a":"67190.02","v":"12345.678","q":"1","n":5}}"#,
            br#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1711356300124,"s":"BTCUSDT","c":"67190.01"}}"#,
        ];
        for f in taken {
            let fast = s.parse_fast(f, now).unwrap_or_else(|| panic!("one pass: {}", String::from_utf8_lossy(f)));
            assert_eq!(vec![fast], s.parse_typed(f, now).unwrap().messages);
        }
        let deferred = [
            &br#"{"e":"serverShutdown","E":1711356300124}"#[..],
            br#"{"stream":"x","data":{"e":"serverShutdown","E":1}}"#,
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":67187.3,"q":"1","T":1,"m":true}}"#,
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1,5","q":"1","T":1,"m":true}}"#,
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"ETHUSDT","t":1,"p":"1","q":"1","T":1,"m":true}}"#,
            br#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","t":1,"p":"1","q":"1","T":1}}"#,
            br#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1,"s":"BTCUSDT","c":"1","b":"1\u0030"}}"#,
            br#"{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1,"s":"BTCUSDT","c":"1","b":1}}"#,
            br#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT"}}"#,
            br#"{"stream":"btcusdt@trade","data":{"e":"tra"#,
        ];
        for f in deferred {
            assert_eq!(s.parse_fast(f, now), None, "{}", String::from_utf8_lossy(f));
        }
    }
}
