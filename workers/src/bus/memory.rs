//! The in-process bus for standalone mode: per topic, a bounded ring of recent records with monotonically
//! increasing offsets (partition 0), and live fan-out to subscribers. A subscriber that falls behind the
//! ring is told how many records it missed, never silently skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

use super::{OutRecord, PublishError, Publisher, Record};

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record still in the ring.
    Earliest,
    /// Only records published after subscribing.
    Latest,
    /// This offset (older than the ring: a [`RecvError::Lagged`] first, then the oldest kept).
    Offset(i64),
}

/// Why [`Subscription::recv`] returned no record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecvError {
    /// The subscriber fell behind: this many records were overwritten before it read them.
    #[error("lagged: missed {missed} records")]
    Lagged {
        /// How many records were missed.
        missed: u64,
    },
    /// The bus was dropped.
    #[error("bus closed")]
    Closed,
}

struct Log {
    records: VecDeque<Record>,
    next_offset: i64,
    live: broadcast::Sender<Record>,
}

/// A bounded in-process bus.
pub struct MemoryBus {
    capacity: usize,
    topics: Mutex<HashMap<String, Arc<Mutex<Log>>>>,
}

impl MemoryBus {
    /// A bus keeping `capacity` records per topic (also each subscriber's live buffer).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemoryBus { capacity: capacity.max(1), topics: Mutex::new(HashMap::new()) })
    }

    fn log(&self, topic: &str) -> Arc<Mutex<Log>> {
        let mut topics = self.topics.lock().expect("bus lock");
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Log {
                    records: VecDeque::with_capacity(self.capacity.min(4096)),
                    next_offset: 0,
                    live: broadcast::channel(self.capacity).0,
                }))
            })
            .clone()
    }

    /// Subscribe to a topic.
    pub fn subscribe(&self, topic: &str, start: StartAt) -> Subscription {
        let log = self.log(topic);
        // Under the log's lock: the backlog and the live receiver meet exactly, no record twice or lost.
        let log = log.lock().expect("log lock");
        let oldest = log.records.front().map_or(log.next_offset, |r| r.offset);
        let from = match start {
            StartAt::Earliest => oldest,
            StartAt::Latest => log.next_offset,
            StartAt::Offset(o) => o.min(log.next_offset),
        };
        let missed = (oldest - from).max(0) as u64;
        let backlog = log.records.iter().filter(|r| r.offset >= from).cloned().collect();
        Subscription { backlog, live: log.live.subscribe(), missed, next: from.max(oldest) }
    }

    /// The next offset that will be written to `topic`.
    pub fn end_offset(&self, topic: &str) -> i64 {
        self.log(topic).lock().expect("log lock").next_offset
    }
}

impl Publisher for MemoryBus {
    fn publish(&self, r: OutRecord<'_>) -> Result<(), PublishError> {
        let log = self.log(r.topic);
        let mut log = log.lock().expect("log lock");
        let record = Record {
            topic: r.topic.to_owned(),
            partition: 0,
            offset: log.next_offset,
            key: Some(Bytes::copy_from_slice(r.key)),
            payload: Bytes::copy_from_slice(r.payload),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        };
        log.next_offset += 1;
        if log.records.len() == self.capacity {
            log.records.pop_front();
        }
        log.records.push_back(record.clone());
        // No receivers is fine: the ring keeps the record for later subscribers.
        let _ = log.live.send(record);
        Ok(())
    }

    fn queue_depth(&self) -> usize {
        0
    }

    fn connected(&self) -> bool {
        true
    }

    fn flush(&self, _timeout: Duration) {}
}

/// One reader of one topic.
pub struct Subscription {
    backlog: VecDeque<Record>,
    live: broadcast::Receiver<Record>,
    missed: u64,
    next: i64,
}

impl Subscription {
    /// The next record, or how many were missed since the last call.
    pub async fn recv(&mut self) -> Result<Record, RecvError> {
        if self.missed > 0 {
            return Err(RecvError::Lagged { missed: std::mem::take(&mut self.missed) });
        }
        loop {
            let record = match self.backlog.pop_front() {
                Some(r) => r,
                None => match self.live.recv().await {
                    Ok(r) => r,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.next += n as i64;
                        return Err(RecvError::Lagged { missed: n });
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(RecvError::Closed),
                },
            };
            // The live channel may repeat records the backlog already gave (none by construction, but cheap).
            if record.offset < self.next {
                continue;
            }
            self.next = record.offset + 1;
            return Ok(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(bus: &MemoryBus, topic: &str, n: usize) {
        for i in 0..n {
            let payload = format!("{i}");
            let r = OutRecord { topic, key: b"BTC", payload: payload.as_bytes(), headers: &[] };
            bus.publish(r).unwrap();
        }
    }

    #[tokio::test]
    async fn offsets_increase_and_late_subscribers_replay_the_ring() {
        let bus = MemoryBus::new(4);
        publish(&bus, "t", 3);
        let mut sub = bus.subscribe("t", StartAt::Earliest);
        publish(&bus, "t", 1);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(sub.recv().await.unwrap().offset);
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert_eq!(bus.end_offset("t"), 4);
        assert_eq!(bus.end_offset("other"), 0);
    }

    #[tokio::test]
    async fn lagging_subscribers_are_told_how_much_they_missed() {
        let bus = MemoryBus::new(4);
        let mut sub = bus.subscribe("t", StartAt::Latest);
        publish(&bus, "t", 10);
        assert_eq!(sub.recv().await.unwrap_err(), RecvError::Lagged { missed: 6 });
        assert_eq!(sub.recv().await.unwrap().offset, 6);

        let mut old = bus.subscribe("t", StartAt::Offset(2));
        assert_eq!(old.recv().await.unwrap_err(), RecvError::Lagged { missed: 4 });
        assert_eq!(old.recv().await.unwrap().offset, 6);
    }
}
