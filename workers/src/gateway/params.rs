//! The filter parameters a client sends to `/stream` (`symbols`, `types`), read without I/O and bounded:
//! each has a length and a count limit, and anything outside them is a [`ParamError`] naming the parameter,
//! which the handler answers with a 400. The resume id (`Last-Event-ID`, `lastEventId`) is bounded apart,
//! by [`super::cursor::Cursor::parse`]: an id the gateway cannot resume from is a `reset`, not an error, so
//! a browser's automatic reconnect keeps working.

use std::collections::HashSet;
use std::fmt;

use super::payload::Kind;

/// Symbols one client may ask for: the pipeline itself follows at most 200 (`spec.symbols`).
pub const MAX_SYMBOLS: usize = 200;
/// The longest symbol: `spec.symbols` are 1-15 upper-case letters and digits.
pub const MAX_SYMBOL_LEN: usize = 15;
/// The longest `symbols` value: every symbol at its longest, with separators and some spaces.
pub const MAX_SYMBOLS_LEN: usize = 4096;
/// The longest `types` value: each kind named a few times over is still far below it.
pub const MAX_TYPES_LEN: usize = 64;

/// How much of a refused item its 400 echoes: the message stays short whatever was sent.
pub const ECHO_CHARS: usize = 16;

/// A parameter outside its limits; its `Display` is the body of the 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// The value is longer than `max` bytes.
    TooLong { param: &'static str, max: usize },
    /// The value lists more than `max` items.
    TooMany { param: &'static str, max: usize },
    /// An item is not one the parameter accepts (`value`: its first [`ECHO_CHARS`] characters).
    Invalid { param: &'static str, value: String, expected: &'static str },
}

impl ParamError {
    /// The parameter the error is about.
    pub fn param(&self) -> &'static str {
        match self {
            ParamError::TooLong { param, .. }
            | ParamError::TooMany { param, .. }
            | ParamError::Invalid { param, .. } => param,
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::TooLong { param, max } => write!(f, "{param}: longer than {max} bytes"),
            ParamError::TooMany { param, max } => write!(f, "{param}: more than {max} items"),
            ParamError::Invalid { param, value, expected } => write!(f, "{param}: {value:?} is not {expected}"),
        }
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The upper-cased symbols of a `symbols` value (comma-separated tickers).
pub fn symbols(raw: &str) -> Result<HashSet<Box<str>>, ParamError> {
    const P: &str = "symbols";
    if raw.len() > MAX_SYMBOLS_LEN {
        return Err(ParamError::TooLong { param: P, max: MAX_SYMBOLS_LEN });
    }
    let mut out = HashSet::new();
    for s in split_list(raw) {
        if s.len() > MAX_SYMBOL_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ParamError::Invalid {
                param: P,
                value: s.chars().take(ECHO_CHARS).collect(),
                expected: "a ticker of 1-15 letters and digits",
            });
        }
        out.insert(s.to_ascii_uppercase().into());
        if out.len() > MAX_SYMBOLS {
            return Err(ParamError::TooMany { param: P, max: MAX_SYMBOLS });
        }
    }
    Ok(out)
}

/// The bit set of [`Kind`]s of a `types` value (`None`: all kinds).
pub fn kinds(raw: Option<&str>) -> Result<u8, ParamError> {
    const P: &str = "types";
    let Some(raw) = raw else { return Ok(Kind::Tick as u8 | Kind::Trade as u8 | Kind::Alert as u8) };
    if raw.len() > MAX_TYPES_LEN {
        return Err(ParamError::TooLong { param: P, max: MAX_TYPES_LEN });
    }
    split_list(raw).try_fold(0, |kinds, k| match Kind::parse(k) {
        Some(k) => Ok(kinds | k as u8),
        None => Err(ParamError::Invalid {
            param: P,
            value: k.chars().take(ECHO_CHARS).collect(),
            expected: "one of tick, trade, alert",
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_upper_cased_and_bounded() {
        let s = symbols(" btc, ETH,,sol ,btc").unwrap();
        assert_eq!(s, ["BTC", "ETH", "SOL"].into_iter().map(Box::from).collect());
        assert_eq!(symbols("").unwrap().len(), 0);
        let e = symbols(&"A,".repeat(3000)).unwrap_err();
        assert_eq!((e.param(), e.to_string().as_str()), ("symbols", "symbols: longer than 4096 bytes"));
        let many = (0..201).map(|i| format!("S{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(symbols(&many), Err(ParamError::TooMany { param: "symbols", max: 200 }));
        let at_most = (0..200).map(|i| format!("S{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(symbols(&at_most).unwrap().len(), 200);
        for bad in ["BTC/USD", "<script>", "ÄÖÜ", "A234567890123456"] {
            let e = symbols(bad).unwrap_err();
            assert_eq!(e.param(), "symbols", "{bad}");
            assert!(e.to_string().len() < 100, "the message stays short: {e}");
        }
    }

    #[test]
    fn types_name_known_kinds_within_their_limit() {
        assert_eq!(kinds(None).unwrap(), Kind::Tick as u8 | Kind::Trade as u8 | Kind::Alert as u8);
        assert_eq!(kinds(Some("trade, alert")).unwrap(), Kind::Trade as u8 | Kind::Alert as u8);
        assert_eq!(kinds(Some("")).unwrap(), 0);
        assert_eq!(
            kinds(Some("tick,bogus")).unwrap_err().to_string(),
            "types: \"bogus\" is not one of tick, trade, alert"
        );
        assert_eq!(kinds(Some(&"tick,".repeat(20))), Err(ParamError::TooLong { param: "types", max: 64 }));
        // Found by the stream_params fuzz target: control characters escape to several bytes each.
        let e = kinds(Some(&"\u{12}".repeat(60))).unwrap_err().to_string();
        assert!(e.len() <= 256, "{e}");
    }
}
