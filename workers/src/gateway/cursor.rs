//! Event ids: per-partition positions, the same on every replica, so a client can resume anywhere.

use std::fmt::{self, Write as _};

/// Per-partition positions: `offsets[p]` is the last offset seen on partition `p` (-1: none yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub Vec<i64>);

impl Cursor {
    /// The offset for a partition (-1 when unknown).
    pub fn get(&self, partition: usize) -> i64 {
        self.0.get(partition).copied().unwrap_or(-1)
    }

    /// Parse an event id (`0:123,1:98`). `None` for anything else, which the caller treats as a gap.
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut v = Vec::new();
        for pair in s.trim().split(',') {
            let (p, o) = pair.split_once(':')?;
            let p: usize = p.parse().ok()?;
            let o: i64 = o.parse().ok()?;
            // Partition counts are small; refuse ids that would make us allocate absurdly.
            if p >= 65_536 || o < -1 {
                return None;
            }
            if v.len() <= p {
                v.resize(p + 1, -1);
            }
            v[p] = o;
        }
        Some(Cursor(v))
    }

    /// True when every component is at least `other`'s.
    pub fn dominates(&self, other: &Cursor) -> bool {
        (0..self.0.len().max(other.0.len())).all(|p| self.get(p) >= other.get(p))
    }

    /// Component-wise maximum.
    pub fn max(&self, other: &Cursor) -> Cursor {
        Cursor((0..self.0.len().max(other.0.len())).map(|p| self.get(p).max(other.get(p))).collect())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (p, o) in self.0.iter().enumerate() {
            if p > 0 {
                f.write_char(',')?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_compare() {
        let c = Cursor::parse("0:12,2:7").unwrap();
        assert_eq!(c, Cursor(vec![12, -1, 7]));
        assert_eq!(c.to_string(), "0:12,1:-1,2:7");
        assert!(Cursor::parse("garbage").is_none());
        assert!(Cursor::parse("99999999:1").is_none());
        assert!(Cursor(vec![12, 0, 7]).dominates(&c));
        assert!(!Cursor(vec![13]).dominates(&c));
        assert_eq!(Cursor(vec![13]).max(&c), Cursor(vec![13, -1, 7]));
    }
}
