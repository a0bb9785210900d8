//! The value rules a message must meet before anything reads it further (docs/messages.md, "Value rules"):
//! a record that is valid JSON with valid decimals can still carry a price of `-5`, a tick priced `1e309`
//! (finite text, infinite as a float, 310 digits in `numeric`) or a time decades away. Pure: the clock is
//! passed in.

use chrono::{DateTime, Duration, TimeZone, Utc};
use cryptoviz_crds::validate::{is_quote, is_symbol};

use super::{Alert, Decimal, Message, Tick, Trade};

/// Most digits a stored decimal may have before its decimal point: every price, volume and market cap a
/// market has seen fits, and every value is finite as the `f64` the readers (candles, alerts) compute with.
pub const MAX_INTEGER_DIGITS: i64 = 20;
/// Most digits after the decimal point (as written, trailing zeros included, as `numeric` keeps them):
/// room for prices of tokens worth a billionth of a cent at full exchange precision.
pub const MAX_FRACTION_DIGITS: i64 = 30;
/// Most characters of a trade id (printable ASCII, no spaces).
pub const MAX_TRADE_ID_LEN: usize = 64;
/// How far ahead of the reader's clock a time may be (clocks of sources and hosts disagree by seconds, a
/// time zone mistake by hours; a day covers both).
pub const MAX_AHEAD: Duration = Duration::days(1);

/// The earliest time a message may carry: the first Bitcoin block (2009-01-03), before any market existed.
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2009, 1, 3, 0, 0, 0).single().expect("a valid date")
}

/// A field whose value breaks its rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct InvalidValue {
    /// The message field, as on the wire (`price`, `exchange_time`).
    pub field: &'static str,
    /// What is wrong, with the value (bounded: the value's text is cut at 40 characters).
    pub problem: String,
}

fn invalid(field: &'static str, problem: String) -> InvalidValue {
    InvalidValue { field, problem }
}

/// What a decimal must be, besides within the precision.
#[derive(Clone, Copy)]
enum Sign {
    /// Greater than zero (prices, quantities).
    Positive,
    /// Zero or more (volumes, market caps).
    NonNegative,
    /// -100 or more (a change in percent: a price cannot fall by more than all of it).
    Percent,
}

/// Digits before and after the point of a decimal's value as written, and whether it is zero or negative.
struct Shape {
    integer: i64,
    fraction: i64,
    zero: bool,
    negative: bool,
}

fn shape(d: &Decimal) -> Shape {
    let s = d.as_str();
    let (negative, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (mantissa, exp) = match s.find(['e', 'E']) {
        // Saturated: an exponent this large is out of range either way.
        Some(i) => {
            (&s[..i], s[i + 1..].parse::<i64>().unwrap_or(if s[i + 1..].starts_with('-') { -1 << 40 } else { 1 << 40 }))
        }
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let zero = !mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    // Significant digits before the point: the integer part without its leading zeros, moved by the exponent.
    let lead = int.bytes().chain(frac.bytes()).take_while(|b| *b == b'0').count() as i64;
    let point = int.len() as i64 + exp;
    let integer = if zero { 0 } else { (point - lead).max(0) };
    let fraction = (frac.len() as i64 - exp).max(0);
    Shape { integer, fraction, zero, negative }
}

fn shown(d: &Decimal) -> String {
    let s = d.as_str();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn decimal(field: &'static str, d: &Decimal, sign: Sign) -> Result<(), InvalidValue> {
    let s = shape(d);
    if s.integer > MAX_INTEGER_DIGITS {
        return Err(invalid(field, format!("{} has more than {MAX_INTEGER_DIGITS} integer digits", shown(d))));
    }
    if s.fraction > MAX_FRACTION_DIGITS {
        return Err(invalid(field, format!("{} has more than {MAX_FRACTION_DIGITS} fraction digits", shown(d))));
    }
    let ok = match sign {
        Sign::Positive => !s.zero && !s.negative,
        Sign::NonNegative => s.zero || !s.negative,
        Sign::Percent => s.zero || !s.negative || d.to_f64() >= -100.0,
    };
    if ok {
        return Ok(());
    }
    let want = match sign {
        Sign::Positive => "must be greater than zero",
        Sign::NonNegative => "must not be negative",
        Sign::Percent => "must not be below -100",
    };
    Err(invalid(field, format!("{} {want}", shown(d))))
}

fn optional(field: &'static str, d: Option<&Decimal>, sign: Sign) -> Result<(), InvalidValue> {
    d.map_or(Ok(()), |d| decimal(field, d, sign))
}

fn time(field: &'static str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), InvalidValue> {
    if t < earliest() {
        return Err(invalid(field, format!("{} is before 2009-01-03", t.to_rfc3339())));
    }
    if t > now + MAX_AHEAD {
        return Err(invalid(field, format!("{} is more than a day ahead of this reader's clock", t.to_rfc3339())));
    }
    Ok(())
}

fn names(symbol: &str, quote: &str) -> Result<(), InvalidValue> {
    let cut = |s: &str| s.chars().take(20).collect::<String>();
    if !is_symbol(symbol) {
        return Err(invalid("symbol", format!("{:?} must match ^[A-Z0-9]{{1,15}}$", cut(symbol))));
    }
    if !is_quote(quote) {
        return Err(invalid("quote", format!("{:?} must match ^[A-Z]{{3,5}}$", cut(quote))));
    }
    Ok(())
}

impl Tick {
    /// The first field breaking its value rule, judged at `now`.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), InvalidValue> {
        names(&self.symbol, &self.quote)?;
        decimal("price", &self.price, Sign::Positive)?;
        optional("bid", self.bid.as_ref(), Sign::Positive)?;
        optional("ask", self.ask.as_ref(), Sign::Positive)?;
        optional("volume_24h", self.volume_24h.as_ref(), Sign::NonNegative)?;
        optional("market_cap", self.market_cap.as_ref(), Sign::NonNegative)?;
        optional("change_24h_pct", self.change_24h_pct.as_ref(), Sign::Percent)?;
        time("exchange_time", self.exchange_time, now)?;
        time("received_at", self.received_at, now)
    }
}

impl Trade {
    /// The first field breaking its value rule, judged at `now`.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), InvalidValue> {
        names(&self.symbol, &self.quote)?;
        let id = &self.trade_id;
        if id.is_empty() || id.len() > MAX_TRADE_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
            let cut: String = id.chars().take(20).collect();
            return Err(invalid(
                "trade_id",
                format!("{cut:?} must be 1 to {MAX_TRADE_ID_LEN} printable ASCII characters without spaces"),
            ));
        }
        decimal("price", &self.price, Sign::Positive)?;
        decimal("quantity", &self.quantity, Sign::Positive)?;
        time("exchange_time", self.exchange_time, now)?;
        time("received_at", self.received_at, now)
    }
}

impl Alert {
    /// The first field breaking its value rule, judged at `now`.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), InvalidValue> {
        names(&self.symbol, &self.quote)?;
        decimal("from_price", &self.from_price, Sign::Positive)?;
        decimal("to_price", &self.to_price, Sign::Positive)?;
        if !self.change_pct.is_finite() || self.change_pct < -100.0 {
            return Err(invalid("change_pct", format!("{} must be a finite number of -100 or more", self.change_pct)));
        }
        time("time", self.time, now)
    }
}

impl Message {
    /// The first field breaking its value rule, judged at `now` (see [`Tick::check`]).
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), InvalidValue> {
        match self {
            Message::Tick(t) => t.check(now),
            Message::Trade(t) => t.check(now),
            Message::Alert(a) => a.check(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-03-25T09:00:00Z").unwrap().to_utc()
    }

    fn trade(price: &str, quantity: &str, at: &str) -> Trade {
        let t = DateTime::parse_from_rfc3339(at).unwrap().to_utc();
        Trade {
            v: 1,
            source: cryptoviz_crds::SourceKind::Kraken,
            symbol: "BTC".into(),
            quote: "USD".into(),
            trade_id: "42".into(),
            price: Decimal::parse(price).unwrap(),
            quantity: Decimal::parse(quantity).unwrap(),
            side: None,
            exchange_time: t,
            received_at: t,
        }
    }

    const AT: &str = "2024-03-25T08:45:00Z";

    #[test]
    fn realistic_values_pass() {
        for price in ["67187.330000000001", "0.000000012345678901234567890", "1.5e10", "12345678901234567890", "1e-30"]
        {
            assert_eq!(trade(price, "0.001", AT).check(now()), Ok(()), "{price}");
        }
        assert_eq!(trade("1", "1", "2009-01-03T00:00:00Z").check(now()), Ok(()));
        assert_eq!(trade("1", "1", "2024-03-26T08:59:59Z").check(now()), Ok(()), "less than a day ahead");
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let cases = [
            (trade("-5", "1", AT), "price", "greater than zero"),
            (trade("0", "1", AT), "price", "greater than zero"),
            (trade("-0.0", "1", AT), "price", "greater than zero"),
            (trade("0e5", "1", AT), "price", "greater than zero"),
            (trade("1e309", "1", AT), "price", "integer digits"),
            (trade("123456789012345678901", "1", AT), "price", "integer digits"),
            (trade("1e20", "1", AT), "price", "integer digits"),
            (trade("1e99999999999999999999", "1", AT), "price", "integer digits"),
            (trade("0.0000000000000000000000000000001", "1", AT), "price", "fraction digits"),
            (trade("1e-31", "1", AT), "price", "fraction digits"),
            (trade("1e-99999999999999999999", "1", AT), "price", "fraction digits"),
            (trade("1", "-0.5", AT), "quantity", "greater than zero"),
            (trade("1", "1", "1970-01-01T00:00:00Z"), "exchange_time", "before 2009"),
            (trade("1", "1", "2090-01-01T00:00:00Z"), "exchange_time", "a day ahead"),
        ];
        for (t, field, why) in cases {
            let e = t.check(now()).expect_err(&format!("{t:?}"));
            assert_eq!(e.field, field, "{e}");
            assert!(e.problem.contains(why), "{e}");
        }
    }

    #[test]
    fn names_and_ids_keep_their_patterns() {
        let mut t = trade("1", "1", AT);
        t.symbol = "btc".into();
        assert_eq!(t.check(now()).unwrap_err().field, "symbol");
        t.symbol = "BTC".into();
        t.quote = "US".into();
        assert_eq!(t.check(now()).unwrap_err().field, "quote");
        t.quote = "USDT".into();
        for id in ["", "a b", "x\u{0}", &"9".repeat(65)] {
            t.trade_id = id.into();
            assert_eq!(t.check(now()).unwrap_err().field, "trade_id", "{id:?}");
        }
    }

    #[test]
    fn tick_rules_cover_its_optional_fields() {
        let at = DateTime::parse_from_rfc3339(AT).unwrap().to_utc();
        let d = |s: &str| Some(Decimal::parse(s).unwrap());
        let mut t = Tick {
            v: 1,
            source: cryptoviz_crds::SourceKind::Coingecko,
            symbol: "ETH".into(),
            quote: "USD".into(),
            price: Decimal::parse("3300.5").unwrap(),
            bid: None,
            ask: None,
            volume_24h: d("0"),
            market_cap: d("1317802988326.25"),
            change_24h_pct: d("-99.5"),
            exchange_time: at,
            received_at: at,
        };
        assert_eq!(t.check(now()), Ok(()));
        t.change_24h_pct = d("-100.5");
        assert_eq!(t.check(now()).unwrap_err().field, "change_24h_pct");
        t.change_24h_pct = None;
        t.volume_24h = d("-1");
        assert_eq!(t.check(now()).unwrap_err().field, "volume_24h");
        t.volume_24h = None;
        t.ask = d("0");
        assert_eq!(t.check(now()).unwrap_err().field, "ask");
        t.ask = None;
        t.received_at = at + Duration::days(365 * 40);
        assert_eq!(t.check(now()).unwrap_err().field, "received_at");
    }
}
