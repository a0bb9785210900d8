//! The payloads of `COPY … FROM STDIN`: PostgreSQL's binary format, and its text format as the fallback.
//!
//! Binary is what the server parses fastest: timestamps travel as microseconds and decimals as base-10000
//! digits, so the server skips the text parsing of two timestamps and up to six numerics per row (a `psql`
//! binary COPY of the benchmark's rows is ~1.5× its CSV COPY on PostgreSQL 15). Decimals stay exact: the
//! digits are the exchange's decimal text regrouped, never a float, and the display scale is the one
//! PostgreSQL's own text input gives (tested against `numeric_send` below).
//!
//! A value binary cannot carry — a decimal whose exponent is beyond `numeric`'s 16-bit weight or scale — sends
//! that table's rows of the batch as text instead, so the database refuses it with its usual error
//! ("value overflows numeric format") and the row is isolated and dead-lettered as before.

use chrono::{DateTime, SecondsFormat, Utc};

use super::batch::{TickColumns, TradeColumns};

/// Columns of `ticks` in the order both encodings write them.
pub const TICK_COLUMNS: &str =
    "time, source, symbol, quote, price, bid, ask, volume_24h, market_cap, change_24h_pct, received_at";
/// Columns of `trades` in the order both encodings write them.
pub const TRADE_COLUMNS: &str = "time, source, symbol, quote, trade_id, price, quantity, side, received_at";

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `WITH (FORMAT binary)`.
    Binary,
    /// The default text format.
    Text,
}

/// One table's rows of a batch, ready for `COPY … FROM STDIN`.
#[derive(Debug)]
pub struct CopyData {
    /// The encoding of `bytes`.
    pub format: Format,
    /// The whole COPY stream (header and trailer included for binary).
    pub bytes: Vec<u8>,
}

impl CopyData {
    /// The COPY statement for this payload into `target` (`schema.table`).
    pub fn statement(&self, target: &str, columns: &str) -> String {
        match self.format {
            Format::Binary => format!("COPY {target} ({columns}) FROM STDIN WITH (FORMAT binary)"),
            Format::Text => format!("COPY {target} ({columns}) FROM STDIN"),
        }
    }
}

/// The ticks of a batch: binary unless one of their values cannot be encoded in it.
pub fn ticks(t: &TickColumns<'_>) -> CopyData {
    encode(t.time.len() * 140, |e| {
        for i in 0..t.time.len() {
            e.row(11);
            e.timestamptz(&t.time[i]);
            e.text(Some(t.source[i]));
            e.text(Some(t.symbol[i]));
            e.text(Some(t.quote[i]));
            e.numeric(Some(t.price[i]))?;
            e.numeric(t.bid[i])?;
            e.numeric(t.ask[i])?;
            e.numeric(t.volume_24h[i])?;
            e.numeric(t.market_cap[i])?;
            e.numeric(t.change_24h_pct[i])?;
            e.timestamptz(&t.received_at[i]);
        }
        Some(())
    })
}

/// The trades of a batch: binary unless one of their values cannot be encoded in it.
pub fn trades(t: &TradeColumns<'_>) -> CopyData {
    encode(t.time.len() * 120, |e| {
        for i in 0..t.time.len() {
            e.row(9);
            e.timestamptz(&t.time[i]);
            e.text(Some(t.source[i]));
            e.text(Some(t.symbol[i]));
            e.text(Some(t.quote[i]));
            e.text(Some(t.trade_id[i]));
            e.numeric(Some(t.price[i]))?;
            e.numeric(Some(t.quantity[i]))?;
            e.text(t.side[i]);
            e.timestamptz(&t.received_at[i]);
        }
        Some(())
    })
}

/// Write the rows once in binary; if a value does not fit, once more in text (which carries every value).
fn encode(capacity: usize, rows: impl Fn(&mut dyn Encoder) -> Option<()>) -> CopyData {
    let mut binary = Binary::new(capacity);
    if rows(&mut binary).is_some() {
        return CopyData { format: Format::Binary, bytes: binary.finish() };
    }
    let mut text = Text::new(capacity);
    rows(&mut text).expect("the text format carries every value");
    CopyData { format: Format::Text, bytes: text.finish() }
}

/// The fields of one COPY format, written row by row in column order.
trait Encoder {
    /// Start a row of `fields` fields.
    fn row(&mut self, fields: i16);
    fn timestamptz(&mut self, t: &DateTime<Utc>);
    fn text(&mut self, v: Option<&str>);
    /// `None` when this format cannot carry the decimal.
    fn numeric(&mut self, v: Option<&str>) -> Option<()>;
}

/// A binary COPY stream being written.
struct Binary {
    buf: Vec<u8>,
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// `numeric`'s largest display scale.
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;

impl Binary {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 21);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Binary { buf }
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

impl Encoder for Binary {
    fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    fn text(&mut self, v: Option<&str>) {
        match v {
            None => self.null(),
            Some(s) => {
                self.buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    fn timestamptz(&mut self, t: &DateTime<Utc>) {
        // Whole microseconds, as the text format's `Micros` precision sends them.
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&(t.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
    }

    /// `None` when the decimal does not fit `numeric`'s binary header (the caller falls back to text).
    fn numeric(&mut self, v: Option<&str>) -> Option<()> {
        match v {
            None => {
                self.null();
                Some(())
            }
            Some(s) => push_numeric(&mut self.buf, s),
        }
    }
}

/// Append one `numeric` field (length, then `numeric_send`'s layout: ndigits, weight, sign, dscale, base-10000
/// digits) for decimal text such as `-67187.33` or `2.5E+3`.
fn push_numeric(buf: &mut Vec<u8>, s: &str) -> Option<()> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()? as i64),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let (int, frac) = (int.as_bytes(), frac.as_bytes());
    if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    // As PostgreSQL's text input: the scale is the fraction's digits minus the exponent.
    let dscale = (frac.len() as i64 - exponent).max(0);
    if dscale > NUMERIC_DSCALE_MAX {
        return None;
    }
    let digit = |k: usize| if k < int.len() { int[k] - b'0' } else { frac[k - int.len()] - b'0' };
    let n = int.len() + frac.len();
    let first = (0..n).find(|&k| digit(k) != 0);
    let Some(first) = first else {
        // Zero: no digits, positive, weight 0.
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(&(dscale as u16).to_be_bytes());
        return Some(());
    };
    let last = (0..n).rev().find(|&k| digit(k) != 0).expect("a non-zero digit exists");
    // Digits before the decimal point, counted from the first significant digit.
    let point = int.len() as i64 + exponent - first as i64;
    // Align the groups of four on the decimal point.
    let pad = (4 - point.rem_euclid(4)) % 4;
    let significant = (last - first + 1) as i64;
    let groups = (pad + significant + 3) / 4;
    let weight = (point + pad) / 4 - 1;
    if groups > i16::MAX as i64 || weight > i16::MAX as i64 || weight < i16::MIN as i64 {
        return None;
    }
    buf.extend_from_slice(&((8 + 2 * groups) as i32).to_be_bytes());
    buf.extend_from_slice(&(groups as i16).to_be_bytes());
    buf.extend_from_slice(&(weight as i16).to_be_bytes());
    buf.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
    buf.extend_from_slice(&(dscale as u16).to_be_bytes());
    for g in 0..groups {
        let mut value = 0u16;
        for j in 0..4 {
            // Position within the significant digits, left padding counted.
            let k = g * 4 + j - pad;
            let d = if (0..significant).contains(&k) { digit(first + k as usize) } else { 0 };
            value = value * 10 + d as u16;
        }
        buf.extend_from_slice(&value.to_be_bytes());
    }
    Some(())
}

/// A text COPY stream being written: tab-separated fields, one line per row.
struct Text {
    buf: Vec<u8>,
    /// Fields still to write in the current row (the last one ends the line).
    left: i16,
}

impl Text {
    fn new(capacity: usize) -> Self {
        Text { buf: Vec::with_capacity(capacity), left: 0 }
    }

    /// One field: `\N` for NULL, backslash escapes for the characters that delimit.
    fn field(&mut self, v: Option<&str>) {
        match v {
            None => self.buf.extend_from_slice(b"\\N"),
            Some(v) => {
                for b in v.bytes() {
                    match b {
                        b'\\' => self.buf.extend_from_slice(b"\\\\"),
                        b'\t' => self.buf.extend_from_slice(b"\\t"),
                        b'\n' => self.buf.extend_from_slice(b"\\n"),
                        b'\r' => self.buf.extend_from_slice(b"\\r"),
                        _ => self.buf.push(b),
                    }
                }
            }
        }
        self.left -= 1;
        self.buf.push(if self.left == 0 { b'\n' } else { b'\t' });
    }

    fn finish(self) -> Vec<u8> {
        self.buf
    }
}

impl Encoder for Text {
    fn row(&mut self, fields: i16) {
        self.left = fields;
    }

    fn timestamptz(&mut self, t: &DateTime<Utc>) {
        self.field(Some(&t.to_rfc3339_opts(SecondsFormat::Micros, true)));
    }

    fn text(&mut self, v: Option<&str>) {
        self.field(v);
    }

    fn numeric(&mut self, v: Option<&str>) -> Option<()> {
        self.field(v);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn numerics_encode_as_postgres_numeric_send_does() {
        // Expected: `SELECT encode(numeric_send('<text>'::numeric), 'hex')` on PostgreSQL 15.
        let cases = [
            ("0", "0000000000000000"),
            ("-0", "0000000000000000"),
            ("0.00", "0000000000000002"),
            ("1", "00010000000000000001"),
            ("-1.5", "000200004000000100011388"),
            ("100.5", "000200000000000100641388"),
            ("67187.33", "000300010000000200061c130ce4"),
            ("67187.330000000001", "000500010000000c00061c130ce400000001"),
            ("0.000000012345678901234567890", "0006fffe0000001b000109291a85007b11d722c4"),
            ("1e-7", "0001fffe00000007000a"),
            ("2.5E+3", "000100000000000009c4"),
            ("-2.5e+3", "000100004000000009c4"),
            ("12345678", "000200010000000004d2162e"),
            ("0.0001", "0001ffff000000040001"),
            ("10000", "00010001000000000001"),
            ("1.23e4", "0002000100000000000108fc"),
            ("00012.50", "0002000000000002000c1388"),
            ("9999.9999", "0002000000000004270f270f"),
            ("1e20", "00010005000000000001"),
            ("5e-20", "0001fffb000000140005"),
        ];
        for (text, want) in cases {
            let mut buf = Vec::new();
            push_numeric(&mut buf, text).unwrap_or_else(|| panic!("{text} should encode"));
            let len = i32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len, buf.len() - 4, "{text}: field length");
            assert_eq!(hex(&buf[4..]), want, "{text}");
        }
    }

    #[test]
    fn numerics_beyond_the_binary_header_are_left_to_the_text_format() {
        for text in ["1e999999", "1e-20000", "1e99999999999"] {
            assert_eq!(push_numeric(&mut Vec::new(), text), None, "{text}");
        }
        let mut t = TickColumns::default();
        let tick: crate::message::Tick = serde_json::from_str(
            r#"{"source":"kraken","symbol":"BTC","quote":"USD","price":"1e999999",
                "exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#,
        )
        .unwrap();
        t.push(&tick);
        let data = ticks(&t);
        assert_eq!(data.format, Format::Text);
        assert!(data.statement("s.ticks", TICK_COLUMNS).ends_with("FROM STDIN"));
    }

    #[test]
    fn binary_rows_have_the_header_fields_and_trailer() {
        let tick: crate::message::Tick = serde_json::from_str(
            r#"{"source":"kraken","symbol":"BTC","quote":"USD","price":"1.5","bid":"1.4",
                "exchange_time":"2000-01-01T00:00:01.000002Z","received_at":"2000-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let mut t = TickColumns::default();
        t.push(&tick);
        let data = ticks(&t);
        assert_eq!(data.format, Format::Binary);
        assert!(data.statement("s.ticks", TICK_COLUMNS).ends_with("WITH (FORMAT binary)"));
        let b = &data.bytes;
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[19..21], &11i16.to_be_bytes(), "field count");
        assert_eq!(&b[21..25], &8i32.to_be_bytes());
        assert_eq!(&b[25..33], &1_000_002i64.to_be_bytes(), "microseconds since 2000-01-01");
        assert_eq!(&b[b.len() - 2..], &(-1i16).to_be_bytes(), "trailer");
        assert_eq!(&b[b.len() - 14..b.len() - 2], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0], "received_at = the epoch");
    }

    #[test]
    fn copy_text_escapes_delimiters_and_writes_nulls() {
        let mut text = Text::new(0);
        text.row(2);
        text.text(Some("a\tb\\c\nd"));
        text.text(None);
        assert_eq!(text.finish(), b"a\\tb\\\\c\\nd\t\\N\n");
    }
}
