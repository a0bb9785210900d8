//! The consumer loop, over any [`Transport`]: read into the pending batch, flush it when due, retry a failed
//! flush on its own schedule with the partitions paused, check the database while idle, and store what is
//! pending on the way out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::flush::Flusher;
use super::retry::{Retry, Transition};
use super::sink::Store;
use super::transport::{Commit, Transport};

/// Check the database this often while no batch flows (readiness).
const IDLE_PING: Duration = Duration::from_secs(10);
/// Longest single poll: how quickly a stop request is noticed.
const MAX_POLL: Duration = Duration::from_millis(200);
/// Longest single poll while a batch is being written: how late its offsets are committed once it is stored.
const MAX_POLL_WRITING: Duration = Duration::from_millis(5);

/// When a batch is flushed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records per batch.
    pub batch_size: usize,
    /// Longest time a record waits in a partial batch.
    pub interval: Duration,
}

impl Limits {
    /// The limits of a worker configuration (zero values are taken as one).
    pub fn of(cfg: &cryptoviz_crds::config::ConsumerConfig) -> Self {
        Limits {
            batch_size: cfg.batch_size.max(1) as usize,
            interval: Duration::from_millis(cfg.flush_interval_ms.max(1)),
        }
    }
}

/// Consume from `t` into `f` until `stop`, then store what is pending (what cannot be stored stays
/// uncommitted for the next run). Blocking: run it on a thread of its own.
pub fn drive<S: Store>(t: &impl Transport, f: &Flusher<S>, stop: &AtomicBool, limits: Limits) {
    let mut retry = Retry::default();
    let mut last_db_contact = Instant::now() - IDLE_PING;
    while !stop.load(Ordering::Relaxed) {
        let wake = retry.wake(f.pending().deadline(limits.interval));
        let max = if f.is_writing() { MAX_POLL_WRITING } else { MAX_POLL };
        let timeout = wake.map_or(max, |w| w.saturating_duration_since(Instant::now()).min(max));
        if let Some(entry) = t.poll(timeout) {
            f.pending().push(entry);
        }
        let due = retry.due(Instant::now(), f.pending().due(limits.batch_size, limits.interval));
        let outcome = if due {
            let mut pending = f.pending();
            // Retries are synchronous: nothing newer is written before the failed batch is stored.
            Some(if retry.is_retrying() { f.flush(t, &mut pending) } else { f.write(t, &mut pending) })
        } else if f.write_done() {
            Some(f.settle(t, &mut f.pending(), Commit::Async))
        } else {
            None
        };
        match outcome {
            Some(Ok(())) => {
                last_db_contact = Instant::now();
                if retry.succeeded() == Transition::Resume {
                    f.set_paused(t, false);
                    tracing::info!("batch stored after retries: consumption resumed");
                }
            }
            Some(Err(e)) => {
                if retry.failed(Instant::now()) == Transition::Pause {
                    let records = f.pending().len();
                    tracing::warn!(error = %e, records, "flush failed: pausing consumption and retrying");
                } else {
                    tracing::debug!(error = %e, "flush retry failed");
                }
                f.set_paused(t, true);
            }
            None if !retry.is_retrying()
                && !f.is_writing()
                && f.pending().is_empty()
                && last_db_contact.elapsed() >= IDLE_PING =>
            {
                f.ping();
                last_db_contact = Instant::now();
            }
            None => {}
        }
    }
    let mut pending = f.pending();
    for e in t.drain() {
        pending.push(e);
    }
    if let Err(e) = f.flush(t, &mut pending) {
        tracing::warn!(error = %e, records = pending.len(), "final flush failed; those records are not committed");
    }
    drop(pending);
    f.health.set_ready(false);
    f.rt.block_on(f.sink.close());
}

#[cfg(test)]
mod tests;
