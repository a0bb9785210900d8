//! The normalised, versioned messages every source produces and every consumer reads (schema version 1).
//!
//! On the wire: JSON, one message per Kafka record, key = symbol (a symbol stays ordered on one partition),
//! headers `cv-type` and `cv-source`. Prices and quantities are [`Decimal`]s: the exchange's exact decimal
//! text, carried as a JSON string so no float rounding ever touches it. `docs/messages.schema.json` is
//! generated from these types (a test keeps it current).

use std::fmt;

mod rules;
pub use rules::{InvalidValue, MAX_AHEAD, MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS, MAX_TRADE_ID_LEN, earliest};

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// The schema version written in every message's `v` field.
pub const SCHEMA_VERSION: u8 = 1;

fn v1() -> u8 {
    SCHEMA_VERSION
}

/// An exact decimal number as the exchange wrote it (`"67187.33"`), validated, never converted to a float.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Decimal(String);

impl JsonSchema for Decimal {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Decimal".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$",
            "description": "An exact decimal number, as the exchange wrote it.",
        })
    }
}

/// Text that is not a decimal number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a decimal number: {0:?}")]
pub struct InvalidDecimal(pub String);

impl Decimal {
    /// Validate decimal text (`123`, `-0.5`, `1.2e-7`).
    pub fn parse(s: &str) -> Result<Self, InvalidDecimal> {
        let b = s.as_bytes();
        let mut i = 0;
        if b.first() == Some(&b'-') {
            i += 1;
        }
        let digits = |i: &mut usize| {
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > start
        };
        let mut ok = digits(&mut i);
        if ok && i < b.len() && b[i] == b'.' {
            i += 1;
            ok = digits(&mut i);
        }
        if ok && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            ok = digits(&mut i);
        }
        if ok && i == b.len() { Ok(Decimal(s.to_owned())) } else { Err(InvalidDecimal(s.to_owned())) }
    }

    /// The exact text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An approximation for arithmetic that tolerates it (alerts, candles on read). Never stored.
    pub fn to_f64(&self) -> f64 {
        self.0.parse().unwrap_or(f64::NAN)
    }

    /// From a JSON number's raw text (Kraken writes prices as JSON numbers) or a JSON string (Binance).
    pub fn from_raw_json(raw: &serde_json::value::RawValue) -> Result<Self, InvalidDecimal> {
        let t = raw.get();
        Decimal::parse(t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t))
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Decimal::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A time as chrono writes it (RFC 3339, UTC as `Z`, 0, 3, 6 or 9 fraction digits: as few as keep it exact),
/// without the formatting machinery: chrono's serializer was about a tenth of the scraper's cost per message.
/// Times chrono writes differently (years outside 0..=9999, leap seconds) are left to chrono.
fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let (date, time) = (t.date_naive(), t.time());
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&date.year()) || nanos >= 1_000_000_000 {
        return t.serialize(s);
    }
    let mut buf = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, date.year() as u32);
    put(5, 2, date.month());
    put(8, 2, date.day());
    put(11, 2, time.hour());
    put(14, 2, time.minute());
    put(17, 2, time.second());
    put(20, 9, nanos);
    let digits = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => 3,
        n if n % 1_000 == 0 => 6,
        _ => 9,
    };
    let len = if digits == 0 { 19 } else { 20 + digits };
    buf[len] = b'Z';
    s.serialize_str(std::str::from_utf8(&buf[..=len]).expect("ASCII digits"))
}

/// Which side took liquidity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The buyer was the taker.
    Buy,
    /// The seller was the taker.
    Sell,
}

/// A price snapshot for one symbol from one source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tick {
    /// Schema version.
    #[serde(default = "v1")]
    pub v: u8,
    /// Source that reported it.
    pub source: SourceKind,
    /// Base asset ticker (BTC).
    pub symbol: String,
    /// Quote currency (USD).
    pub quote: String,
    /// Last price.
    pub price: Decimal,
    /// Best bid, when the source reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid: Option<Decimal>,
    /// Best ask, when the source reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<Decimal>,
    /// Traded volume over 24 h, in the base asset (exchanges) or the quote (aggregators), as the source reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_24h: Option<Decimal>,
    /// Market capitalisation in the quote currency (aggregators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_cap: Option<Decimal>,
    /// Price change over 24 h, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_24h_pct: Option<Decimal>,
    /// When the source says the price was valid.
    #[serde(serialize_with = "rfc3339")]
    pub exchange_time: DateTime<Utc>,
    /// When we received it.
    #[serde(serialize_with = "rfc3339")]
    pub received_at: DateTime<Utc>,
}

/// One executed trade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Trade {
    /// Schema version.
    #[serde(default = "v1")]
    pub v: u8,
    /// Exchange it happened on.
    pub source: SourceKind,
    /// Base asset ticker.
    pub symbol: String,
    /// Quote currency.
    pub quote: String,
    /// The exchange's trade id (unique per source and symbol).
    pub trade_id: String,
    /// Price.
    pub price: Decimal,
    /// Quantity in the base asset.
    pub quantity: Decimal,
    /// Taker side, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    /// When the exchange executed it.
    #[serde(serialize_with = "rfc3339")]
    pub exchange_time: DateTime<Utc>,
    /// When we received it.
    #[serde(serialize_with = "rfc3339")]
    pub received_at: DateTime<Utc>,
}

/// A price move beyond the configured threshold within the configured window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// Schema version.
    #[serde(default = "v1")]
    pub v: u8,
    /// Source whose prices moved.
    pub source: SourceKind,
    /// Base asset ticker.
    pub symbol: String,
    /// Quote currency.
    pub quote: String,
    /// Price at the start of the window.
    pub from_price: Decimal,
    /// Price now.
    pub to_price: Decimal,
    /// Change in percent (signed).
    pub change_pct: f64,
    /// The window, in milliseconds.
    pub window_ms: u64,
    /// When the move was detected.
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
}

/// Any message on the raw or stream topic, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    /// A price snapshot.
    Tick(Tick),
    /// An executed trade.
    Trade(Trade),
    /// A price-move alert (stream topic only).
    Alert(Alert),
}

impl Message {
    /// `tick`, `trade` or `alert` (also the `cv-type` header).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Tick(_) => "tick",
            Message::Trade(_) => "trade",
            Message::Alert(_) => "alert",
        }
    }

    /// The Kafka key: the symbol.
    pub fn symbol(&self) -> &str {
        match self {
            Message::Tick(t) => &t.symbol,
            Message::Trade(t) => &t.symbol,
            Message::Alert(a) => &a.symbol,
        }
    }

    /// The source.
    pub fn source(&self) -> SourceKind {
        match self {
            Message::Tick(t) => t.source,
            Message::Trade(t) => t.source,
            Message::Alert(a) => a.source,
        }
    }

    /// Serialise to the wire format.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages always serialise")
    }

    /// Parse the wire format.
    ///
    /// The tag is read first and the body then straight into its type: the derived internally tagged
    /// deserializer buffers every field into an intermediate tree first, which doubled the consumer's
    /// decoding cost per record. Same result and errors as `serde_json::from_slice::<Message>`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let tag: Tag<'_> = serde_json::from_slice(bytes)?;
        match tag.kind.as_ref() {
            "tick" => serde_json::from_slice(bytes).map(Message::Tick),
            "trade" => serde_json::from_slice(bytes).map(Message::Trade),
            "alert" => serde_json::from_slice(bytes).map(Message::Alert),
            other => Err(serde::de::Error::unknown_variant(other, &["tick", "trade", "alert"])),
        }
    }
}

/// The JSON Schema of [`Message`], as committed in `docs/messages.schema.json`.
pub fn json_schema() -> String {
    let mut s = serde_json::to_string_pretty(&schemars::schema_for!(Message)).expect("schema serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (target `message`): a float the parser read one unit in the last place off, so
    /// the message changed on its way through a topic. serde_json's `float_roundtrip` reads floats exactly.
    #[test]
    fn long_floats_survive_the_wire_unchanged() {
        let payload = br#"{"type":"alert","v":1,"source":"synthetic","symbol":"EH","quote":"USD","from_price":"3300.5","to_price":"3470.25","change_pct":88888888888888888888888888888888888888888888888888888888888888888888888888888888888885.14,"window_ms":60000,"time":"2024-03-25T08:45:01Z"}"#;
        let m = Message::from_json(payload).unwrap();
        assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn times_are_written_exactly_as_chrono_writes_them() {
        #[derive(Serialize)]
        struct Ours(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);
        let base = DateTime::parse_from_rfc3339("2024-03-25T08:45:00Z").unwrap().to_utc();
        let mut times = vec![base, DateTime::UNIX_EPOCH, DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
        for nanos in [1, 999, 1_000, 120_000, 123_000_000, 100_000_000, 999_999_999, 123_456_789, 5_000_001] {
            times.push(base + chrono::Duration::nanoseconds(nanos));
        }
        for days in [-800_000, -1, 1, 59, 366, 3_000_000] {
            times.push(base + chrono::Duration::days(days) + chrono::Duration::milliseconds(days.abs() % 1000));
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_milli_opt(23, 59, 59, 1_500).unwrap();
        times.push(leap.and_utc());
        times.push(Utc::now());
        for t in times {
            assert_eq!(serde_json::to_string(&Ours(t)).unwrap(), serde_json::to_string(&t).unwrap(), "{t:?}");
        }
    }

    #[test]
    fn decimals_keep_their_exact_text() {
        for ok in ["0", "67187.33", "-1.5", "0.000000012345678901234567890", "1e-7", "2.5E+3"] {
            assert_eq!(Decimal::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-", "1.", ".5", "1e", "NaN", "1,5", "0x10", " 1"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?}");
        }
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str("67187.330000000001").unwrap();
        assert_eq!(Decimal::from_raw_json(&raw).unwrap().as_str(), "67187.330000000001");
    }

    #[test]
    fn messages_round_trip_with_type_tag_and_version() {
        let t = Message::Trade(Trade {
            v: SCHEMA_VERSION,
            source: SourceKind::Kraken,
            symbol: "BTC".into(),
            quote: "USD".into(),
            trade_id: "42".into(),
            price: Decimal::parse("67187.330000000001").unwrap(),
            quantity: Decimal::parse("0.001").unwrap(),
            side: Some(Side::Buy),
            exchange_time: DateTime::from_timestamp_millis(1_711_356_300_123).unwrap(),
            received_at: DateTime::from_timestamp_millis(1_711_356_300_200).unwrap(),
        });
        let json = t.to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["type"], "trade");
        assert_eq!(v["v"], 1);
        assert_eq!(v["price"], "67187.330000000001");
        assert_eq!(Message::from_json(&json).unwrap(), t);
    }

    #[test]
    fn from_json_agrees_with_the_derived_deserializer() {
        let cases = [
            r#"{"type":"tick","v":1,"source":"kraken","symbol":"BTC","quote":"USD","price":"1.5","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00.1Z"}"#,
            r#"{"v":1,"source":"binance","symbol":"ETH","quote":"USD","trade_id":"7","price":"2","quantity":"0.1","side":"sell","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z","type":"trade"}"#,
            r#"{"type":"tick","v":1,"source":"kraken","symbol":"BTC","quote":"USD","price":"1,5","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#,
            r#"{"type":"candle","v":1}"#,
            r#"{"v":1,"symbol":"BTC"}"#,
            r#"{"type":7}"#,
            r#"[1,2]"#,
            r#"{"type":"tick""#,
        ];
        for json in cases {
            let fast = Message::from_json(json.as_bytes());
            let derived = serde_json::from_str::<Message>(json);
            assert_eq!(fast.is_ok(), derived.is_ok(), "{json}: {fast:?} vs {derived:?}");
            match (fast, derived) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.classify(), b.classify(), "{json}: {a} vs {b}"),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn committed_schema_matches_the_types() {
        let committed = include_str!("../../docs/messages.schema.json");
        assert!(
            committed == json_schema(),
            "docs/messages.schema.json is stale: run `cargo run -p cryptoviz-workers -- schema > docs/messages.schema.json`"
        );
    }
}
