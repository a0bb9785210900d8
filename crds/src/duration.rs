//! Durations as users write them in a CryptoPipeline: `500ms`, `30s`, `5m`, `1h30m`, `90d`, `2w`.
//!
//! The CRD schema refuses anything [`DURATION_PATTERN`] does not match, so the operator and the
//! workers only ever parse strings the apiserver has already accepted.

use std::time::Duration;

/// The OpenAPI pattern for a positive duration: one or more `<number><unit>` groups, the first non-zero.
pub const DURATION_PATTERN: &str = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$";

/// A duration string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected e.g. 500ms, 30s, 5m, 1h30m, 90d, 2w")]
pub struct InvalidDuration(pub String);

/// Parse a duration such as `1h30m` or `90d`. Zero is refused: every duration in the API is positive.
pub fn parse(s: &str) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration(s.to_owned());
    let mut total: u128 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.as_bytes().first() {
                Some(b's') => (1_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b'h') => (3_600_000, 1),
                Some(b'd') => (86_400_000, 1),
                Some(b'w') => (604_800_000, 1),
                _ => return Err(err()),
            }
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(unit_ms).ok_or_else(err)?).ok_or_else(err)?;
    }
    if total == 0 || total > u64::MAX as u128 {
        return Err(err());
    }
    Ok(Duration::from_millis(total as u64))
}

/// Milliseconds of a duration string, for Kafka's `retention.ms` and friends.
pub fn parse_millis(s: &str) -> Result<u64, InvalidDuration> {
    parse(s).map(|d| d.as_millis() as u64)
}

/// A PostgreSQL interval literal for the same duration (`'7776000000 milliseconds'`), exact.
pub fn to_pg_interval(s: &str) -> Result<String, InvalidDuration> {
    parse_millis(s).map(|ms| {
        if ms % 86_400_000 == 0 {
            format!("{} days", ms / 86_400_000)
        } else if ms % 1000 == 0 {
            format!("{} seconds", ms / 1000)
        } else {
            format!("{ms} milliseconds")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86400));
    }

    #[test]
    fn refuses_zero_empty_and_garbage() {
        for bad in ["", "0s", "10", "s", "1x", "-1s", "1.5h", "1h 30m", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn pg_interval_is_exact() {
        assert_eq!(to_pg_interval("90d").unwrap(), "90 days");
        assert_eq!(to_pg_interval("1h").unwrap(), "3600 seconds");
        assert_eq!(to_pg_interval("1500ms").unwrap(), "1500 milliseconds");
    }
}
