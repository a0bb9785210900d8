//! What the consumer holds between two flushes: decoded rows, rejected records and the offsets to commit,
//! per partition, so a revoked partition's records can be dropped uncommitted (its next owner re-reads them).
//! Pure: no I/O, unit-tested here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::message::{InvalidValue, Message, SCHEMA_VERSION, Side, Tick, Trade};

/// Why a record cannot be stored; sent with it to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a schema-v1 message (bad JSON, missing field, invalid decimal, empty payload).
    Invalid(String),
    /// A schema-v1 message with a field breaking its value rule (docs/messages.md, "Value rules").
    InvalidValue(InvalidValue),
    /// A schema version this consumer does not know.
    UnsupportedVersion(u8),
    /// A valid message of a kind the raw topic must not carry (alerts live on the stream topic).
    UnexpectedKind(&'static str),
    /// The database refused the row (e.g. a constraint added to the table).
    DatabaseRejected(String),
}

impl Rejection {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "invalid_message",
            Rejection::InvalidValue(_) => "invalid_value",
            Rejection::UnsupportedVersion(_) => "unsupported_version",
            Rejection::UnexpectedKind(_) => "unexpected_kind",
            Rejection::DatabaseRejected(_) => "database_rejected",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(e) => write!(f, "invalid message: {e}"),
            Rejection::InvalidValue(e) => write!(f, "invalid value: {e}"),
            Rejection::UnsupportedVersion(v) => {
                write!(f, "unsupported schema version {v} (this consumer reads {SCHEMA_VERSION})")
            }
            Rejection::UnexpectedKind(k) => write!(f, "unexpected message type {k} on the raw topic"),
            Rejection::DatabaseRejected(e) => write!(f, "rejected by the database: {e}"),
        }
    }
}

/// A decoded record's content.
#[derive(Clone, Debug)]
pub enum Row {
    /// Goes to `ticks`.
    Tick(Tick),
    /// Goes to `trades`.
    Trade(Trade),
    /// Goes to the dead-letter topic.
    Rejected(Rejection),
}

/// One Kafka record held in a batch, with its original bytes (forwarded verbatim to the dead-letter topic).
#[derive(Clone, Debug)]
pub struct Entry {
    /// Partition of the raw topic.
    pub partition: i32,
    /// Offset within it.
    pub offset: i64,
    /// Record timestamp, milliseconds since the epoch (for the end-to-end latency).
    pub timestamp_ms: Option<i64>,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original payload.
    pub payload: Vec<u8>,
    /// Decoded content.
    pub row: Row,
}

impl Entry {
    /// A record as read, decoded.
    pub fn read(
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    ) -> Self {
        let row = decode(Some(&payload));
        Entry { partition, offset, timestamp_ms, key, payload, row }
    }
}

impl Rejection {
    /// The message field a value rule refused, if that is why.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Rejection::InvalidValue(e) => Some(e.field),
            _ => None,
        }
    }
}

/// Decode one payload of the raw topic, and hold its values to their rules at the reader's clock.
pub fn decode(payload: Option<&[u8]>) -> Row {
    decode_at(payload, Utc::now())
}

/// [`decode`], judging times against `now`.
pub fn decode_at(payload: Option<&[u8]>, now: DateTime<Utc>) -> Row {
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return Row::Rejected(Rejection::Invalid("empty payload".into()));
    };
    match Message::from_json(payload) {
        Ok(Message::Tick(t)) if t.v != SCHEMA_VERSION => Row::Rejected(Rejection::UnsupportedVersion(t.v)),
        Ok(Message::Trade(t)) if t.v != SCHEMA_VERSION => Row::Rejected(Rejection::UnsupportedVersion(t.v)),
        Ok(Message::Tick(t)) => match t.check(now) {
            Ok(()) => Row::Tick(t),
            Err(e) => Row::Rejected(Rejection::InvalidValue(e)),
        },
        Ok(Message::Trade(t)) => match t.check(now) {
            Ok(()) => Row::Trade(t),
            Err(e) => Row::Rejected(Rejection::InvalidValue(e)),
        },
        Ok(m) => Row::Rejected(Rejection::UnexpectedKind(m.kind())),
        Err(e) => Row::Rejected(Rejection::Invalid(e.to_string())),
    }
}

/// Records read since the last flush.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    started: Option<Instant>,
    /// The database transaction of these entries committed (a retry then only redoes dead letters and offsets).
    pub stored: bool,
}

impl Batch {
    /// Add one record.
    pub fn push(&mut self, entry: Entry) {
        self.started.get_or_insert_with(Instant::now);
        self.stored = false;
        self.entries.push(entry);
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Full, or its oldest record has waited `interval`.
    pub fn due(&self, max_records: usize, interval: Duration) -> bool {
        self.entries.len() >= max_records || self.started.is_some_and(|s| s.elapsed() >= interval)
    }

    /// When a partial batch falls due.
    pub fn deadline(&self, interval: Duration) -> Option<Instant> {
        self.started.map(|s| s + interval)
    }

    /// The entries, in read order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Mark one stored row as refused by the database: it goes to the dead-letter topic instead.
    pub fn reject(&mut self, index: usize, reason: Rejection) {
        self.entries[index].row = Row::Rejected(reason);
        self.stored = false;
    }

    /// The offsets to commit once this batch is stored: per partition, one past the highest offset read.
    pub fn commit_offsets(&self) -> BTreeMap<i32, i64> {
        let mut o = BTreeMap::new();
        for e in &self.entries {
            let next = o.entry(e.partition).or_insert(e.offset + 1);
            *next = (*next).max(e.offset + 1);
        }
        o
    }

    /// Put `newer` (records read after these) behind this batch's records, into one batch: a batch whose write
    /// failed is retried together with what was read meanwhile, and their offsets are committed together.
    pub fn append(&mut self, newer: Batch) {
        if newer.is_empty() {
            return;
        }
        self.started = match (self.started, newer.started) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The newer records are not in the database yet.
        self.stored = false;
        self.entries.extend(newer.entries);
    }

    /// Drop the records of partitions no longer owned (uncommitted: their next owner reads them again).
    /// Returns how many were dropped.
    pub fn drop_partitions(&mut self, revoked: impl Fn(i32) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !revoked(e.partition));
        if self.entries.is_empty() {
            self.started = None;
        }
        before - self.entries.len()
    }

    /// Column arrays of the ticks, for one `INSERT … SELECT FROM UNNEST`.
    pub fn ticks(&self) -> TickColumns<'_> {
        let mut c = TickColumns::default();
        for e in &self.entries {
            if let Row::Tick(t) = &e.row {
                c.push(t);
            }
        }
        c
    }

    /// Column arrays of the trades.
    pub fn trades(&self) -> TradeColumns<'_> {
        let mut c = TradeColumns::default();
        for e in &self.entries {
            if let Row::Trade(t) = &e.row {
                c.push(t);
            }
        }
        c
    }

    /// Rows held per kind: (ticks, trades, rejected).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.entries.iter().fold((0, 0, 0), |(a, b, c), e| match e.row {
            Row::Tick(_) => (a + 1, b, c),
            Row::Trade(_) => (a, b + 1, c),
            Row::Rejected(_) => (a, b, c + 1),
        })
    }
}

/// `ticks` columns; decimals as their exact text (cast to `numeric` by the database).
#[derive(Debug, Default)]
pub struct TickColumns<'a> {
    /// Exchange time (column `time`).
    pub time: Vec<DateTime<Utc>>,
    /// Source name.
    pub source: Vec<&'a str>,
    /// Base ticker.
    pub symbol: Vec<&'a str>,
    /// Quote currency.
    pub quote: Vec<&'a str>,
    /// Price.
    pub price: Vec<&'a str>,
    /// Best bid.
    pub bid: Vec<Option<&'a str>>,
    /// Best ask.
    pub ask: Vec<Option<&'a str>>,
    /// 24 h volume.
    pub volume_24h: Vec<Option<&'a str>>,
    /// Market capitalisation.
    pub market_cap: Vec<Option<&'a str>>,
    /// 24 h change in percent.
    pub change_24h_pct: Vec<Option<&'a str>>,
    /// When the scraper received it.
    pub received_at: Vec<DateTime<Utc>>,
}

impl<'a> TickColumns<'a> {
    /// Append one tick.
    pub fn push(&mut self, t: &'a Tick) {
        self.time.push(t.exchange_time);
        self.source.push(t.source.as_str());
        self.symbol.push(&t.symbol);
        self.quote.push(&t.quote);
        self.price.push(t.price.as_str());
        self.bid.push(t.bid.as_ref().map(|d| d.as_str()));
        self.ask.push(t.ask.as_ref().map(|d| d.as_str()));
        self.volume_24h.push(t.volume_24h.as_ref().map(|d| d.as_str()));
        self.market_cap.push(t.market_cap.as_ref().map(|d| d.as_str()));
        self.change_24h_pct.push(t.change_24h_pct.as_ref().map(|d| d.as_str()));
        self.received_at.push(t.received_at);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.time.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
}

/// `trades` columns.
#[derive(Debug, Default)]
pub struct TradeColumns<'a> {
    /// Exchange time (column `time`).
    pub time: Vec<DateTime<Utc>>,
    /// Source name.
    pub source: Vec<&'a str>,
    /// Base ticker.
    pub symbol: Vec<&'a str>,
    /// Quote currency.
    pub quote: Vec<&'a str>,
    /// The exchange's trade id.
    pub trade_id: Vec<&'a str>,
    /// Price.
    pub price: Vec<&'a str>,
    /// Quantity.
    pub quantity: Vec<&'a str>,
    /// `buy`, `sell` or NULL.
    pub side: Vec<Option<&'static str>>,
    /// When the scraper received it.
    pub received_at: Vec<DateTime<Utc>>,
}

impl<'a> TradeColumns<'a> {
    /// Append one trade.
    pub fn push(&mut self, t: &'a Trade) {
        self.time.push(t.exchange_time);
        self.source.push(t.source.as_str());
        self.symbol.push(&t.symbol);
        self.quote.push(&t.quote);
        self.trade_id.push(&t.trade_id);
        self.price.push(t.price.as_str());
        self.quantity.push(t.quantity.as_str());
        self.side.push(t.side.map(|s| match s {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }));
        self.received_at.push(t.received_at);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.time.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: i32, offset: i64, payload: &str) -> Entry {
        Entry::read(partition, offset, None, None, payload.into())
    }

    const TICK: &str = r#"{"type":"tick","v":1,"source":"kraken","symbol":"BTC","quote":"USD","price":"67187.330000000001","bid":"67187.3","exchange_time":"2024-03-25T08:45:00.123Z","received_at":"2024-03-25T08:45:00.200Z"}"#;
    const TRADE: &str = r#"{"type":"trade","source":"binance","symbol":"ETH","quote":"USD","trade_id":"9","price":"3300.1","quantity":"0.5","side":"sell","exchange_time":"2024-03-25T08:45:01Z","received_at":"2024-03-25T08:45:01Z"}"#;

    #[test]
    fn malformed_payloads_are_rejected_with_a_reason() {
        let cases = [
            (None, "invalid_message"),
            (Some(&b""[..]), "invalid_message"),
            (Some(&b"not json"[..]), "invalid_message"),
            (Some(br#"{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1,5","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "invalid_message"),
            (Some(br#"{"type":"tick","v":2,"source":"kraken","symbol":"BTC","quote":"USD","price":"1","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "unsupported_version"),
            (Some(br#"{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"-5","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "invalid_value"),
            (Some(br#"{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1e309","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "invalid_value"),
            (Some(br#"{"type":"trade","source":"kraken","symbol":"BTC","quote":"USD","trade_id":"1","price":"1","quantity":"0","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "invalid_value"),
            (Some(br#"{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1","exchange_time":"2064-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#), "invalid_value"),
            (Some(br#"{"type":"alert","source":"kraken","symbol":"BTC","quote":"USD","from_price":"1","to_price":"2","change_pct":100.0,"window_ms":1000,"time":"2024-03-25T08:45:00Z"}"#), "unexpected_kind"),
        ];
        for (payload, label) in cases {
            match decode(payload) {
                Row::Rejected(r) => assert_eq!(r.label(), label, "{payload:?}: {r}"),
                other => panic!("{payload:?} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_value_rule_is_rejected_naming_the_field() {
        let now = DateTime::parse_from_rfc3339("2024-03-25T09:00:00Z").unwrap().to_utc();
        assert!(matches!(decode_at(Some(TICK.as_bytes()), now), Row::Tick(_)));
        let cases = [
            (TICK.replace(r#""price":"67187.330000000001""#, r#""price":"-5""#), "price"),
            (TICK.replace(r#""bid":"67187.3""#, r#""bid":"0.0000000000000000000000000000001""#), "bid"),
            (TRADE.replace(r#""quantity":"0.5""#, r#""quantity":"0""#), "quantity"),
            (TRADE.replace("2024-03-25T08:45:01Z", "1999-03-25T08:45:01Z"), "exchange_time"),
        ];
        for (payload, field) in cases {
            match decode_at(Some(payload.as_bytes()), now) {
                Row::Rejected(r) => {
                    assert_eq!((r.label(), r.field()), ("invalid_value", Some(field)), "{payload}: {r}");
                    assert!(r.to_string().starts_with(&format!("invalid value: {field} ")), "{r}");
                }
                other => panic!("{payload} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn columns_keep_exact_decimal_text_and_nulls() {
        let mut b = Batch::default();
        b.push(entry(0, 5, TICK));
        b.push(entry(1, 7, TRADE));
        b.push(entry(1, 8, "garbage"));
        let ticks = b.ticks();
        assert_eq!(ticks.len(), 1);
        assert_eq!(ticks.price, ["67187.330000000001"]);
        assert_eq!(ticks.bid, [Some("67187.3")]);
        assert_eq!(ticks.ask, [None]);
        assert_eq!(ticks.source, ["kraken"]);
        let trades = b.trades();
        assert_eq!((trades.trade_id.as_slice(), trades.side.as_slice()), (&["9"][..], &[Some("sell")][..]));
        assert_eq!(b.counts(), (1, 1, 1));
    }

    #[test]
    fn commit_offsets_are_one_past_the_highest_per_partition() {
        let mut b = Batch::default();
        for (p, o) in [(0, 10), (1, 3), (0, 11), (0, 9)] {
            b.push(entry(p, o, TICK));
        }
        assert_eq!(b.commit_offsets(), BTreeMap::from([(0, 12), (1, 4)]));
    }

    #[test]
    fn revoked_partitions_are_dropped_and_the_rest_kept() {
        let mut b = Batch::default();
        for (p, o) in [(0, 1), (1, 1), (2, 1), (1, 2)] {
            b.push(entry(p, o, TICK));
        }
        assert_eq!(b.drop_partitions(|p| p == 1), 2);
        assert_eq!(b.commit_offsets(), BTreeMap::from([(0, 2), (2, 2)]));
        assert_eq!(b.drop_partitions(|_| true), 2);
        assert!(b.is_empty() && b.deadline(Duration::from_secs(1)).is_none());
    }

    #[test]
    fn an_appended_batch_keeps_read_order_and_is_stored_again() {
        let mut older = Batch::default();
        older.push(entry(0, 5, "x"));
        older.stored = true;
        let mut newer = Batch::default();
        newer.push(entry(0, 6, "y"));
        newer.push(entry(1, 2, "z"));
        older.append(newer);
        assert_eq!(older.entries().iter().map(|e| e.offset).collect::<Vec<_>>(), [5, 6, 2]);
        assert!(!older.stored, "the newer rows still have to be written");
        assert_eq!(older.commit_offsets(), BTreeMap::from([(0, 7), (1, 3)]));
        older.stored = true;
        older.append(Batch::default());
        assert!(older.stored, "appending nothing changes nothing");
    }

    #[test]
    fn a_batch_falls_due_by_size_or_by_age() {
        let mut b = Batch::default();
        assert!(!b.due(2, Duration::ZERO));
        b.push(entry(0, 0, TICK));
        assert!(!b.due(2, Duration::from_secs(3600)));
        assert!(b.due(2, Duration::ZERO));
        b.push(entry(0, 1, TICK));
        assert!(b.due(2, Duration::from_secs(3600)));
    }
}
