//! A writer shard's copy of the hub's newest events.

use std::collections::VecDeque;
use std::sync::Arc;

use super::event::Event;
use super::hub::Hub;

/// The newest events as one reader (a writer shard) last copied them from the hub: most clients are live
/// and want exactly these, so they are served from here without taking the hub's lock or touching the
/// events' shared counts once per client.
pub struct Recent {
    /// Seq of `events[0]`.
    first: u64,
    events: VecDeque<Arc<Event>>,
    keep: usize,
}

impl Recent {
    /// Nothing yet; reads start at the hub's next event and keep the newest `keep`.
    pub fn new(hub: &Hub, keep: usize) -> Self {
        Recent { first: hub.published(), events: VecDeque::with_capacity(keep), keep }
    }

    /// Seq of the oldest event held.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Seq after the newest event held.
    pub fn end(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// The events from `seq` on (none when `seq` is not held).
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &Event> {
        let skip = seq.checked_sub(self.first).map_or(self.events.len(), |s| s as usize);
        self.events.iter().skip(skip).map(|e| &**e)
    }

    /// Copy in what the hub appended since the last call: one relaxed check when nothing was, one lock
    /// when something was.
    pub fn refresh(&mut self, hub: &Hub) {
        let head = hub.published();
        if head <= self.end() {
            return;
        }
        if head - self.end() >= self.keep as u64 {
            self.events.clear();
            self.first = head - self.keep as u64;
        }
        if hub.read(self.end(), self.keep, &mut self.events).is_err() {
            // Behind the ring (a stalled reader): start again at the newest; clients read the hub directly.
            self.events.clear();
            self.first = head;
        }
        while self.events.len() > self.keep {
            self.events.pop_front();
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::hub::tests::{hub, rec};

    #[test]
    fn recent_keeps_the_newest_events_and_skips_what_it_fell_behind() {
        let h = hub(100, 100);
        h.start_partitions(&[(0, 0)]);
        let mut r = Recent::new(&h, 4);
        r.refresh(&h);
        assert_eq!((r.first(), r.end()), (0, 0), "nothing yet");
        for o in 0..3 {
            h.ingest(&rec(0, o, "BTC"));
        }
        r.refresh(&h);
        let offsets = |r: &Recent, from| r.since(from).map(|e| e.offset).collect::<Vec<_>>();
        assert_eq!(offsets(&r, 0), [0, 1, 2]);
        assert_eq!(offsets(&r, 2), [2]);
        assert_eq!(offsets(&r, 3), Vec::<i64>::new());
        for o in 3..6 {
            h.ingest(&rec(0, o, "BTC"));
        }
        r.refresh(&h);
        assert_eq!((r.first(), r.end()), (2, 6), "the newest four");
        assert_eq!(offsets(&r, 0), Vec::<i64>::new(), "a seq no longer held gives nothing");
        assert_eq!(offsets(&r, 2), [2, 3, 4, 5]);
        for o in 6..20 {
            h.ingest(&rec(0, o, "BTC"));
        }
        r.refresh(&h);
        assert_eq!((r.first(), r.end()), (16, 20), "far behind: only the newest are copied");
        assert_eq!(offsets(&r, 16), [16, 17, 18, 19]);
    }
}
