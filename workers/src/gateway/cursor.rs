//! Event ids: per-partition positions, the same on every replica, so a client can resume anywhere.

use std::fmt::{self, Write as _};

/// The longest event id a client may send: ids the gateway renders stay far below it for any sane partition
/// count (a 64-partition id with 12-digit offsets is about 900 bytes).
pub const MAX_ID_LEN: usize = 1024;

/// Why a client's event id cannot be resumed from (each is a `reset` with this reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    /// Not `partition:offset` pairs.
    Unreadable,
    /// Longer than [`MAX_ID_LEN`].
    TooLong,
    /// Names a partition the topic does not have.
    UnknownPartition,
}

impl IdError {
    /// The `reason` of the `reset` event.
    pub fn reason(self) -> &'static str {
        match self {
            IdError::Unreadable | IdError::TooLong => "invalid_id",
            IdError::UnknownPartition => "unknown_partition",
        }
    }
}

/// Per-partition positions: `offsets[p]` is the last offset seen on partition `p` (-1: none yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub Vec<i64>);

impl Cursor {
    /// The offset for a partition (-1 when unknown).
    pub fn get(&self, partition: usize) -> i64 {
        self.0.get(partition).copied().unwrap_or(-1)
    }

    /// Parse an event id (`0:123,1:98`) against a topic of `partitions` partitions. Anything else is an
    /// [`IdError`], which the caller treats as a gap: the client is sent a `reset` and starts from now. The
    /// result never has more than `partitions` entries, whatever the id says, so nothing rendered from it
    /// grows with what a client sends.
    pub fn parse(s: &str, partitions: usize) -> Result<Cursor, IdError> {
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        let mut v = vec![-1; partitions];
        for pair in s.trim().split(',') {
            let (p, o) = pair.split_once(':').ok_or(IdError::Unreadable)?;
            let p: usize = p.parse().map_err(|_| IdError::Unreadable)?;
            let o: i64 = o.parse().map_err(|_| IdError::Unreadable)?;
            if o < -1 {
                return Err(IdError::Unreadable);
            }
            *v.get_mut(p).ok_or(IdError::UnknownPartition)? = o;
        }
        // Trailing partitions the id did not name stay at -1: an id from before the topic grew still covers
        // what it covered.
        Ok(Cursor(v))
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
        let c = Cursor::parse("0:12,2:7", 3).unwrap();
        assert_eq!(c, Cursor(vec![12, -1, 7]));
        assert_eq!(c.to_string(), "0:12,1:-1,2:7");
        assert_eq!(Cursor::parse("0:12", 3).unwrap(), Cursor(vec![12, -1, -1]), "a short id is padded");
        assert!(Cursor(vec![12, 0, 7]).dominates(&c));
        assert!(!Cursor(vec![13]).dominates(&c));
        assert_eq!(Cursor(vec![13]).max(&c), Cursor(vec![13, -1, 7]));
    }

    #[test]
    fn ids_the_topic_cannot_have_are_refused_without_allocating_for_them() {
        for (id, err) in [
            ("garbage", IdError::Unreadable),
            ("0:", IdError::Unreadable),
            ("0:-2", IdError::Unreadable),
            ("0:1,,1:2", IdError::Unreadable),
            ("-1:0", IdError::Unreadable),
            ("0:99999999999999999999", IdError::Unreadable),
            ("3:0", IdError::UnknownPartition),
            ("0:5,65535:0", IdError::UnknownPartition),
            ("0:5,65535:-1", IdError::UnknownPartition),
            ("99999999999999999999999:1", IdError::Unreadable),
        ] {
            assert_eq!(Cursor::parse(id, 3), Err(err), "{id}");
        }
        let long = (0..200).map(|p| format!("{p}:0")).collect::<Vec<_>>().join(",");
        assert!(long.len() > MAX_ID_LEN);
        assert_eq!(Cursor::parse(&long, 200), Err(IdError::TooLong));
        let fits = (0..64).map(|p| format!("{p}:999999999999")).collect::<Vec<_>>().join(",");
        assert!(fits.len() <= MAX_ID_LEN, "a 64-partition id fits");
        assert_eq!(Cursor::parse(&fits, 64).unwrap().0.len(), 64);
        assert_eq!(Cursor::parse("0:1", 0), Err(IdError::UnknownPartition), "nothing known yet");
        assert_eq!(IdError::TooLong.reason(), "invalid_id");
    }
}
