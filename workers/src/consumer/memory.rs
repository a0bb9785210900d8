//! The consumer over the in-process bus (standalone mode): no group, no offsets to commit (a restart starts
//! from an empty bus), and no dead-letter topic — rejected records are counted and logged.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::runtime::Handle;

use super::batch::{Batch, Entry, Row};
use super::metrics::{Metrics, ReasonLabels};
use super::transport::{Commit, FlushError, Transport};
use crate::bus::Record;
use crate::bus::memory::{RecvError, Subscription};

/// A subscription to the raw topic on the in-process bus, read from the consumer's thread.
pub struct BusTransport {
    sub: Mutex<Subscription>,
    rt: Handle,
    paused: AtomicBool,
}

impl BusTransport {
    /// Read `sub`, waiting on the runtime `rt`.
    pub fn new(sub: Subscription, rt: Handle) -> Self {
        BusTransport { sub: Mutex::new(sub), rt, paused: AtomicBool::new(false) }
    }

    fn sub(&self) -> std::sync::MutexGuard<'_, Subscription> {
        self.sub.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn entry(rec: Record) -> Entry {
    Entry::read(rec.partition, rec.offset, Some(rec.timestamp_ms), rec.key.map(|k| k.to_vec()), rec.payload.to_vec())
}

impl Transport for BusTransport {
    fn poll(&self, timeout: Duration) -> Option<Entry> {
        if self.paused.load(Ordering::Relaxed) {
            // Paused: records wait in the bus's ring (a database outage longer than the ring holds loses the
            // oldest, which the next read reports).
            self.rt.block_on(tokio::time::sleep(timeout));
            return None;
        }
        let mut sub = self.sub();
        match self.rt.block_on(tokio::time::timeout(timeout, sub.recv())) {
            Ok(Ok(rec)) => Some(entry(rec)),
            Ok(Err(RecvError::Lagged { missed })) => {
                tracing::warn!(missed, "the consumer fell behind the in-process bus: records not stored");
                None
            }
            Ok(Err(RecvError::Closed)) => {
                drop(sub);
                self.rt.block_on(tokio::time::sleep(timeout));
                None
            }
            Err(_) => None,
        }
    }

    fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    fn commit(&self, _next: &BTreeMap<i32, i64>, _mode: Commit) -> Result<(), FlushError> {
        Ok(())
    }

    fn dead_letter(&self, batch: &Batch, metrics: &Metrics) -> Result<(), FlushError> {
        for e in batch.entries() {
            if let Row::Rejected(reason) = &e.row {
                metrics.dlq.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
                tracing::warn!(offset = e.offset, %reason, "record rejected (no dead-letter topic in-process)");
            }
        }
        Ok(())
    }

    fn drain(&self) -> Vec<Entry> {
        let mut sub = self.sub();
        let mut out = Vec::new();
        while let Some(Ok(rec)) = sub.recv().now_or_never() {
            out.push(entry(rec));
        }
        out
    }
}
