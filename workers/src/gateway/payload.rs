//! What clients receive: the seeds' payload shape (`{"type":"crypto_update","data":{…}}`), rendered once per
//! event. Decimals are written as JSON numbers carrying the exchange's exact text (`67187.330000000001`),
//! so the seeds' JavaScript (`data.price.toFixed(2)`) keeps working and no float rounding happens on the
//! server; text that is not a valid JSON number stays a string.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::message::{Decimal, Message};

/// Event kinds a client can select with `types=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Price snapshots (`crypto_update`).
    Tick = 1,
    /// Executed trades (`trade`).
    Trade = 2,
    /// Price-move alerts (`alert`).
    Alert = 4,
}

impl Kind {
    /// Parse a `types=` entry.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tick" | "crypto_update" => Some(Kind::Tick),
            "trade" => Some(Kind::Trade),
            "alert" => Some(Kind::Alert),
            _ => None,
        }
    }

    /// The name used in `types=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tick => "tick",
            Kind::Trade => "trade",
            Kind::Alert => "alert",
        }
    }
}

/// A display name for well-known tickers (the seeds' `name` field); the ticker itself otherwise.
pub fn display_name(symbol: &str) -> &str {
    match symbol {
        "BTC" => "Bitcoin",
        "ETH" => "Ethereum",
        "SOL" => "Solana",
        "XRP" => "XRP",
        "ADA" => "Cardano",
        "DOGE" => "Dogecoin",
        "BNB" => "BNB",
        "DOT" => "Polkadot",
        "LTC" => "Litecoin",
        "AVAX" => "Avalanche",
        "LINK" => "Chainlink",
        "MATIC" => "Polygon",
        "USDT" => "Tether",
        "USDC" => "USD Coin",
        other => other,
    }
}

/// A decimal as a JSON number with its exact text, or a string when the text is not valid JSON
/// (a leading zero such as `007`).
fn num(d: &Decimal) -> Box<RawValue> {
    let s = d.as_str();
    let digits = s.strip_prefix('-').unwrap_or(s);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && digits.as_bytes()[1].is_ascii_digit();
    let text = if leading_zero { serde_json::to_string(s).expect("strings serialise") } else { s.to_owned() };
    RawValue::from_string(text).expect("a decimal is a JSON number or string")
}

fn opt(d: &Option<Decimal>) -> Option<Box<RawValue>> {
    d.as_ref().map(num)
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

#[derive(Serialize)]
struct CryptoUpdate<'a> {
    symbol: &'a str,
    name: &'a str,
    price: Box<RawValue>,
    percent_change_24h: Option<Box<RawValue>>,
    market_cap: Option<Box<RawValue>>,
    source: &'a str,
    timestamp: String,
    quote: &'a str,
    bid: Option<Box<RawValue>>,
    ask: Option<Box<RawValue>>,
    volume_24h: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct TradeData<'a> {
    symbol: &'a str,
    name: &'a str,
    price: Box<RawValue>,
    quantity: Box<RawValue>,
    side: Option<crate::message::Side>,
    trade_id: &'a str,
    source: &'a str,
    timestamp: String,
    quote: &'a str,
}

#[derive(Serialize)]
struct AlertData<'a> {
    symbol: &'a str,
    name: &'a str,
    from_price: Box<RawValue>,
    to_price: Box<RawValue>,
    change_pct: f64,
    window_ms: u64,
    source: &'a str,
    timestamp: String,
    quote: &'a str,
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The client JSON for a message, and the `data` object alone for ticks (kept as the symbol's latest
/// price for `welcome`).
pub fn render(msg: &Message) -> (Kind, String, Option<String>) {
    match msg {
        Message::Tick(t) => {
            let data = CryptoUpdate {
                symbol: &t.symbol,
                name: display_name(&t.symbol),
                price: num(&t.price),
                percent_change_24h: opt(&t.change_24h_pct),
                market_cap: opt(&t.market_cap),
                source: t.source.as_str(),
                timestamp: ts(&t.exchange_time),
                quote: &t.quote,
                bid: opt(&t.bid),
                ask: opt(&t.ask),
                volume_24h: opt(&t.volume_24h),
            };
            let data = enc(&data);
            (Kind::Tick, format!(r#"{{"type":"crypto_update","data":{data}}}"#), Some(data))
        }
        Message::Trade(t) => {
            let data = TradeData {
                symbol: &t.symbol,
                name: display_name(&t.symbol),
                price: num(&t.price),
                quantity: num(&t.quantity),
                side: t.side,
                trade_id: &t.trade_id,
                source: t.source.as_str(),
                timestamp: ts(&t.exchange_time),
                quote: &t.quote,
            };
            (Kind::Trade, enc(&Envelope { kind: "trade", data }), None)
        }
        Message::Alert(a) => {
            let data = AlertData {
                symbol: &a.symbol,
                name: display_name(&a.symbol),
                from_price: num(&a.from_price),
                to_price: num(&a.to_price),
                change_pct: a.change_pct,
                window_ms: a.window_ms,
                source: a.source.as_str(),
                timestamp: ts(&a.time),
                quote: &a.quote,
            };
            (Kind::Alert, enc(&Envelope { kind: "alert", data }), None)
        }
    }
}

fn enc<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("payloads always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{SCHEMA_VERSION, Tick};
    use chrono::DateTime;
    use cryptoviz_crds::SourceKind;

    #[test]
    fn ticks_keep_the_seeds_shape_with_exact_numbers() {
        let t = Message::Tick(Tick {
            v: SCHEMA_VERSION,
            source: SourceKind::Synthetic,
            symbol: "BTC".into(),
            quote: "USD".into(),
            price: Decimal::parse("67187.330000000001").unwrap(),
            bid: None,
            ask: None,
            volume_24h: None,
            market_cap: Some(Decimal::parse("007").unwrap()),
            change_24h_pct: Some(Decimal::parse("-1.5").unwrap()),
            exchange_time: DateTime::from_timestamp_millis(1_711_356_300_123).unwrap(),
            received_at: DateTime::from_timestamp_millis(1_711_356_300_200).unwrap(),
        });
        let (kind, json, data) = render(&t);
        assert_eq!(kind, Kind::Tick);
        assert!(json.contains(r#""price":67187.330000000001"#), "{json}");
        assert!(json.contains(r#""market_cap":"007""#), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "crypto_update");
        assert_eq!(v["data"]["name"], "Bitcoin");
        assert_eq!(v["data"]["percent_change_24h"], -1.5);
        assert_eq!(v["data"]["timestamp"], "2024-03-25T08:45:00.123Z");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&data.unwrap()).unwrap(), v["data"]);
    }
}
