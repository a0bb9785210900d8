//! Where the consumer's records come from and where their offsets and dead letters go: Kafka in the cluster
//! ([`super::kafka`]), the in-process bus in standalone mode ([`super::memory`]). The batching, storing and
//! retry logic ([`super::flush`], [`super::drive`]) is the same over both.

use std::collections::BTreeMap;
use std::time::Duration;

use super::batch::Batch;
use super::metrics::Metrics;
use super::sink::SinkError;

/// How offsets are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Fire and forget, while consuming: the rows are stored, and a failed commit is superseded by the
    /// partition's next one.
    Async,
    /// Wait for the broker: before a revocation or a stop.
    Sync,
}

/// A source of records with offsets, as the consumer loop sees it.
pub trait Transport {
    /// The next record, waiting at most `timeout`; `None` if nothing arrived (or delivery is paused).
    fn poll(&self, timeout: Duration) -> Option<super::batch::Entry>;
    /// Stop or restart delivery from every assigned partition, keeping the group membership alive.
    fn set_paused(&self, paused: bool);
    /// Record that everything below `next` (per partition) is stored. Partitions no longer owned are skipped.
    fn commit(&self, next: &BTreeMap<i32, i64>, mode: Commit) -> Result<(), FlushError>;
    /// Hand on the batch's rejected records; `Ok` once every one of them is delivered.
    fn dead_letter(&self, batch: &Batch, metrics: &Metrics) -> Result<(), FlushError>;
    /// Records already delivered to this process but not yet polled, taken in when the loop stops (the
    /// in-process bus: the sources stopped first, so this is everything; Kafka: nothing, the next run reads
    /// them).
    fn drain(&self) -> Vec<super::batch::Entry> {
        Vec::new()
    }
}

/// Why a flush did not complete (the batch is kept and retried).
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The database write failed.
    #[error(transparent)]
    Database(#[from] SinkError),
    /// A rejected record could not be handed on.
    #[error("dead-letter delivery failed: {0}")]
    DeadLetter(String),
    /// The offsets could not be committed.
    #[error("offset commit failed: {0}")]
    Commit(String),
}
