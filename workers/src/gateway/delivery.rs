//! What each client is sent of each event, decided without I/O.
//!
//! The hub's ring reads, the slow-client sweep ([`super::admission`]), each client's
//! [`super::sse::Conn`] and the writer shards ([`super::fanout`]) ask these functions and carry out the
//! answer (write a frame, queue the rest, drop a client). Nothing here locks, reads a clock or touches a
//! socket, so every situation is a row in a table test.

use std::collections::HashSet;
use std::io::ErrorKind;

use super::cursor::Cursor;
use super::event::Event;

/// What a client asked for.
#[derive(Debug, Default)]
pub struct Filter {
    /// Upper-case symbols; `None` means all.
    pub symbols: Option<HashSet<Box<str>>>,
    /// Bit set of [`super::payload::Kind`]s.
    pub kinds: u8,
}

impl Filter {
    /// True when the event's kind and symbol are both selected.
    pub fn matches(&self, ev: &Event) -> bool {
        self.kinds & ev.kind as u8 != 0 && self.symbols.as_ref().is_none_or(|s| s.contains(&ev.symbol))
    }
}

/// What one client gets of one event read from the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: the event is not in the client's filter.
    Filtered,
    /// Nothing: the event is at or below the client's resume point on its partition, so it has it already.
    Seen,
    /// The shared frame as it is.
    Shared,
    /// The shared frame; its id covers the client's resume point, so the client drops the resume point and
    /// is sent shared frames from here on.
    CaughtUp,
    /// The event's data under this id: the resume point is ahead of the hub's cursor on some partition, and
    /// an id never goes backwards.
    Reid(Cursor),
}

/// The decision for `ev`, for a client with `filter` and resume point `floor` (`None`: live).
pub fn decide(filter: &Filter, floor: Option<&Cursor>, ev: &Event) -> Decision {
    if !filter.matches(ev) {
        return Decision::Filtered;
    }
    match floor {
        None => Decision::Shared,
        Some(floor) if ev.offset <= floor.get(ev.partition) => Decision::Seen,
        Some(floor) if ev.cursor.dominates(floor) => Decision::CaughtUp,
        Some(floor) => Decision::Reid(ev.cursor.max(floor)),
    }
}

/// A client as a writer shard finds it when the hub's sequence changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Standing {
    /// Its stream has ended (shutdown sent, or dropped for lag).
    pub done: bool,
    /// It resumes from an id and has not caught up with it.
    pub resuming: bool,
    /// It has frames of its own pending: the greeting, or events read from the ring and not yet sent.
    pub pending: bool,
    /// The seq of the next event it is due.
    pub next: u64,
    /// The oldest seq the shard's copy of the newest events holds.
    pub recent_first: u64,
    /// The hub is shutting down (the shutdown event is due).
    pub down: bool,
    /// A heartbeat it has not been sent is published.
    pub heartbeat: bool,
}

/// Where a client's next frames come from.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The shard's copy of the newest events, written without taking the hub's lock.
    Recent,
    /// The client's own fill: greeting, shutdown, resume, heartbeat, or a read of the hub's ring.
    Fill,
}

/// Only a live client with nothing of its own to send, whose next event the shard still holds, is served
/// from the shard's copy.
pub fn route(s: Standing) -> Route {
    if s.done || s.resuming || s.pending || s.next < s.recent_first || s.down || s.heartbeat {
        Route::Fill
    } else {
        Route::Recent
    }
}

/// True when a reader at `from` has lost events: the ring (`first..next`) no longer holds `from`, or `from`
/// is more than `bound` events behind `next`. A client in this state is dropped as slow.
pub fn lagged(from: u64, first: u64, next: u64, bound: u64) -> bool {
    from < first || next.saturating_sub(from) > bound
}

/// True when a client whose socket filled up at `stalled` (`None`: not full) is more than `bound` events
/// behind `head`: the sweep drops it, since a full socket is never written to and the client cannot notice
/// by itself.
pub fn slow(stalled: Option<u64>, head: u64, bound: u64) -> bool {
    stalled.is_some_and(|pos| head.saturating_sub(pos) > bound)
}

/// True when a client whose socket has been full since `since` (`None`: not full) has been so for longer
/// than `idle` at `now` (all milliseconds on one clock): it reads nothing, and the sweep drops it even when
/// no events flow and it is behind by nothing.
pub fn stalled(since: Option<u64>, now: u64, idle: u64) -> bool {
    since.is_some_and(|t| now.saturating_sub(t) > idle)
}

/// What a non-blocking write of `total` bytes came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Everything was written.
    All,
    /// Only this many bytes: the rest stays queued.
    Part(usize),
    /// The socket is full: the client waits for it to drain (and is swept if it stays full too long).
    Full,
    /// Interrupted before anything was written: try again.
    Again,
    /// The socket failed: the client is dropped.
    Failed,
}

/// The outcome of a write of `total` bytes (`Err`: its error kind).
pub fn sent(r: Result<usize, ErrorKind>, total: usize) -> Sent {
    match r {
        Ok(n) if n == total => Sent::All,
        Ok(n) => Sent::Part(n),
        Err(ErrorKind::WouldBlock) => Sent::Full,
        Err(ErrorKind::Interrupted) => Sent::Again,
        Err(_) => Sent::Failed,
    }
}

/// After `n` bytes of frames of these `lens` were written: for each frame not entirely written, its index
/// and how many of its bytes were (0 for the frames after the first unfinished one).
pub fn unsent(lens: impl IntoIterator<Item = usize>, mut n: usize) -> impl Iterator<Item = (usize, usize)> {
    lens.into_iter().enumerate().filter_map(move |(i, len)| {
        if n >= len {
            n -= len;
            None
        } else {
            Some((i, std::mem::take(&mut n)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::payload::Kind;
    use bytes::Bytes;

    /// The cursor an id names, as long as its highest partition (ids of three partitions at most).
    fn cursor_of(id: &str) -> Cursor {
        let mut c = Cursor::parse(id, 3).unwrap();
        while c.0.last() == Some(&-1) {
            c.0.pop();
        }
        c
    }

    fn ev(partition: usize, offset: i64, cursor: &str, symbol: &str, kind: Kind) -> Event {
        Event {
            seq: 0,
            partition,
            offset,
            symbol: symbol.into(),
            kind,
            time_ms: 0,
            cursor: cursor_of(cursor),
            frame: Bytes::new(),
            body_start: 0,
        }
    }

    fn filter(symbols: Option<&[&str]>, kinds: &[Kind]) -> Filter {
        Filter {
            symbols: symbols.map(|s| s.iter().map(|&s| s.into()).collect()),
            kinds: kinds.iter().fold(0, |k, &x| k | x as u8),
        }
    }

    const ALL: &[Kind] = &[Kind::Tick, Kind::Trade, Kind::Alert];

    #[test]
    fn decisions_per_event() {
        // (situation, filter, resume point, event (partition, offset, cursor after it, symbol, kind), decision)
        let cases: &[(&str, Filter, Option<&str>, Event, Decision)] = &[
            ("live, everything", filter(None, ALL), None, ev(0, 5, "0:5", "BTC", Kind::Tick), Decision::Shared),
            (
                "live, another symbol",
                filter(Some(&["ETH"]), ALL),
                None,
                ev(0, 5, "0:5", "BTC", Kind::Tick),
                Decision::Filtered,
            ),
            (
                "live, the symbol asked for",
                filter(Some(&["BTC"]), ALL),
                None,
                ev(0, 5, "0:5", "BTC", Kind::Trade),
                Decision::Shared,
            ),
            (
                "live, another kind",
                filter(None, &[Kind::Trade]),
                None,
                ev(0, 5, "0:5", "BTC", Kind::Tick),
                Decision::Filtered,
            ),
            (
                "resuming, filtered before the resume point is looked at",
                filter(None, &[Kind::Alert]),
                Some("0:9"),
                ev(0, 5, "0:5", "BTC", Kind::Tick),
                Decision::Filtered,
            ),
            (
                "resuming, at the resume point",
                filter(None, ALL),
                Some("0:5,1:3"),
                ev(0, 5, "0:5,1:3", "BTC", Kind::Tick),
                Decision::Seen,
            ),
            (
                "resuming, below the resume point",
                filter(None, ALL),
                Some("0:5"),
                ev(0, 2, "0:2", "BTC", Kind::Tick),
                Decision::Seen,
            ),
            (
                "resuming, past it on every partition",
                filter(None, ALL),
                Some("0:5,1:3"),
                ev(0, 6, "0:6,1:3", "BTC", Kind::Tick),
                Decision::CaughtUp,
            ),
            (
                "resuming, past it here but behind on another partition",
                filter(None, ALL),
                Some("0:5,1:3"),
                ev(0, 6, "0:6,1:1", "BTC", Kind::Tick),
                Decision::Reid(Cursor(vec![6, 3])),
            ),
            (
                "resuming, the resume point knows a partition the hub has not seen",
                filter(None, ALL),
                Some("0:1,2:4"),
                ev(0, 2, "0:2,1:0", "BTC", Kind::Tick),
                Decision::Reid(Cursor(vec![2, 0, 4])),
            ),
            (
                "resuming, a partition the resume point does not name",
                filter(None, ALL),
                Some("0:5"),
                ev(1, 0, "0:5,1:0", "BTC", Kind::Tick),
                Decision::CaughtUp,
            ),
        ];
        for (situation, filter, floor, ev, want) in cases {
            let floor = floor.map(cursor_of);
            assert_eq!(&decide(filter, floor.as_ref(), ev), want, "{situation}");
        }
    }

    #[test]
    fn routes_per_wake_up() {
        let live = Standing { next: 10, recent_first: 8, ..Standing::default() };
        let cases: &[(&str, Standing, Route)] = &[
            ("live and held", live, Route::Recent),
            ("live at the oldest held", Standing { next: 8, ..live }, Route::Recent),
            ("live, ahead of what is held", Standing { next: 12, ..live }, Route::Recent),
            ("behind what the shard holds", Standing { next: 7, ..live }, Route::Fill),
            ("ended", Standing { done: true, ..live }, Route::Fill),
            ("resuming", Standing { resuming: true, ..live }, Route::Fill),
            ("greeting or a batch pending", Standing { pending: true, ..live }, Route::Fill),
            ("shutting down", Standing { down: true, ..live }, Route::Fill),
            ("a new heartbeat", Standing { heartbeat: true, ..live }, Route::Fill),
        ];
        for (situation, standing, want) in cases {
            assert_eq!(&route(*standing), want, "{situation}");
        }
    }

    #[test]
    fn lag_and_slowness() {
        // (situation, from, ring first, ring next, bound, lagged)
        let reads: &[(&str, u64, u64, u64, u64, bool)] = &[
            ("up to date", 10, 0, 10, 4, false),
            ("exactly at the bound", 6, 0, 10, 4, false),
            ("one past the bound", 5, 0, 10, 4, true),
            ("evicted from the ring", 3, 4, 6, 100, true),
            ("at the ring's oldest", 4, 4, 6, 100, false),
        ];
        for (situation, from, first, next, bound, want) in reads {
            assert_eq!(lagged(*from, *first, *next, *bound), *want, "{situation}");
        }
        // (situation, stalled at, head, bound, slow)
        let sweeps: &[(&str, Option<u64>, u64, u64, bool)] = &[
            ("draining: never slow", None, 1_000, 2, false),
            ("full, within the bound", Some(8), 10, 2, false),
            ("full, past the bound", Some(7), 10, 2, true),
            ("full, ahead of the head", Some(12), 10, 2, false),
        ];
        for (situation, stalled, head, bound, want) in sweeps {
            assert_eq!(slow(*stalled, *head, *bound), *want, "{situation}");
        }
        // (situation, full since, now, idle timeout, stalled)
        let idles: &[(&str, Option<u64>, u64, u64, bool)] = &[
            ("draining: never stalled", None, 1_000_000, 10, false),
            ("full, within the timeout", Some(100), 110, 10, false),
            ("full, past the timeout", Some(100), 111, 10, true),
            ("full since later than now (clock read before)", Some(200), 100, 10, false),
        ];
        for (situation, since, now, idle, want) in idles {
            assert_eq!(stalled(*since, *now, *idle), *want, "{situation}");
        }
    }

    #[test]
    fn writes_and_what_stays_queued() {
        let cases: &[(&str, Result<usize, ErrorKind>, Sent)] = &[
            ("all taken", Ok(30), Sent::All),
            ("part taken", Ok(12), Sent::Part(12)),
            ("none taken", Ok(0), Sent::Part(0)),
            ("socket full", Err(ErrorKind::WouldBlock), Sent::Full),
            ("interrupted", Err(ErrorKind::Interrupted), Sent::Again),
            ("peer reset", Err(ErrorKind::ConnectionReset), Sent::Failed),
            ("broken pipe", Err(ErrorKind::BrokenPipe), Sent::Failed),
        ];
        for (situation, r, want) in cases {
            assert_eq!(&sent(*r, 30), want, "{situation}");
        }
        let rest = |lens: &[usize], n| unsent(lens.iter().copied(), n).collect::<Vec<_>>();
        assert_eq!(rest(&[10, 10, 10], 30), []);
        assert_eq!(rest(&[10, 10, 10], 0), [(0, 0), (1, 0), (2, 0)]);
        assert_eq!(rest(&[10, 10, 10], 10), [(1, 0), (2, 0)], "a frame boundary");
        assert_eq!(rest(&[10, 10, 10], 14), [(1, 4), (2, 0)], "mid-frame");
    }
}
