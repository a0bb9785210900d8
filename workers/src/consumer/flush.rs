//! Storing a batch: the database write, the rows it refuses, dead letters, then offsets — in that order, so an
//! offset is committed only once its record is stored or dead-lettered.
//!
//! **Pipelined**: a full batch's transaction runs on the runtime ([`Flusher::write`]) while the loop reads
//! and decodes the next one. At most one batch is in flight, and it is settled before the next one starts,
//! so offsets are committed in order. A write that fails puts its batch back in front of the records read
//! since, and the whole is retried as one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cryptoviz_runtime::health::Health;
use tokio::runtime::Handle;

use super::batch::{self, Batch, Rejection, Row};
use super::metrics::{KindLabels, Metrics, TableLabels};
use super::sink::{SinkError, Store, Written};
use super::transport::{Commit, FlushError, Transport};

/// Test builds only (ignored in release builds): abort the process right after the Nth batch's database
/// transaction commits, before its dead letters and its offset commit, so a crash test lands in the window
/// that makes the next run re-read stored rows.
pub const ABORT_AFTER_STORED_ENV: &str = "CRYPTOVIZ_CONSUMER_TEST_ABORT_AFTER_STORED_BATCHES";

/// The failpoint of [`ABORT_AFTER_STORED_ENV`]; compiled out of release builds.
fn abort_after_stored() {
    #[cfg(debug_assertions)]
    {
        use std::sync::atomic::AtomicU64;
        static STORED: AtomicU64 = AtomicU64::new(0);
        static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let limit = LIMIT.get_or_init(|| std::env::var(ABORT_AFTER_STORED_ENV).ok().and_then(|v| v.parse().ok()));
        if let Some(limit) = *limit
            && STORED.fetch_add(1, Ordering::SeqCst) + 1 >= limit
        {
            tracing::error!(
                batches = limit,
                "test failpoint: aborting after a database commit, before its offset commit"
            );
            std::process::abort();
        }
    }
}

/// A batch being written on the runtime; the task hands it back with the result.
struct Writing {
    started: Instant,
    task: tokio::task::JoinHandle<(Batch, Result<Written, SinkError>)>,
}

/// The pending batch and everything a flush needs. It is shared with the Kafka rebalance callbacks (which
/// librdkafka runs inside `poll`), so its state sits behind locks and atomics.
pub struct Flusher<S> {
    /// Runs the database calls (the loop itself is a blocking thread).
    pub rt: Handle,
    /// The database writer.
    pub sink: Arc<S>,
    /// The consumer's metrics.
    pub metrics: Metrics,
    /// Ready once partitions are assigned and the database answers.
    pub health: Arc<Health>,
    pending: Mutex<Batch>,
    writing: Mutex<Option<Writing>>,
    paused: AtomicBool,
    assigned: AtomicBool,
    db_ok: AtomicBool,
}

impl<S: Store> Flusher<S> {
    /// A flusher with nothing pending; `assigned`: whether records flow before any group assignment (the
    /// in-process bus has no group).
    pub fn new(rt: Handle, sink: Arc<S>, metrics: Metrics, health: Arc<Health>, assigned: bool) -> Self {
        Flusher {
            rt,
            sink,
            metrics,
            health,
            pending: Mutex::new(Batch::default()),
            writing: Mutex::new(None),
            paused: AtomicBool::new(false),
            assigned: AtomicBool::new(assigned),
            db_ok: AtomicBool::new(false),
        }
    }

    /// The records read since the last flush.
    pub fn pending(&self) -> MutexGuard<'_, Batch> {
        // A panic while holding the lock leaves a batch that is still valid data.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consumption is paused because the database fails.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// The database answered the last time it was asked.
    pub fn db_ok(&self) -> bool {
        self.db_ok.load(Ordering::Relaxed)
    }

    /// Record the database's state (readiness needs it and an assignment).
    pub fn set_db_ok(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
        self.health.set_ready(ok && self.assigned.load(Ordering::Relaxed));
    }

    /// Record whether partitions are assigned.
    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
        self.health.set_ready(assigned && self.db_ok());
    }

    /// Count a database error by kind.
    pub fn db_error(&self, e: &SinkError) {
        self.metrics.db_errors.get_or_create(&KindLabels { kind: e.kind() }).inc();
    }

    /// Ask the database whether it answers, and record it.
    pub fn ping(&self) {
        let ok = self.rt.block_on(self.sink.ping());
        if let Err(e) = &ok {
            self.db_error(e);
        }
        self.set_db_ok(ok.is_ok());
    }

    /// Pause or resume the transport's partitions (once per change).
    pub fn set_paused(&self, t: &impl Transport, paused: bool) {
        if self.paused.swap(paused, Ordering::Relaxed) == paused {
            return;
        }
        self.metrics.paused.set(paused as i64);
        t.set_paused(paused);
    }

    /// Store the batch, dead-letter its rejected records, commit its offsets; on success the batch is emptied.
    /// On failure it is kept as it is, to be retried.
    pub fn flush(&self, t: &impl Transport, batch: &mut Batch) -> Result<(), FlushError> {
        self.settle(t, batch, Commit::Sync)?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        if !batch.stored {
            let first = self.rt.block_on(self.sink.write(&batch.ticks(), &batch.trades()));
            self.stored(batch, first)?;
        }
        t.dead_letter(batch, &self.metrics)?;
        t.commit(&batch.commit_offsets(), Commit::Sync)?;
        self.observe(batch, started);
        *batch = Batch::default();
        Ok(())
    }

    fn writing(&self) -> MutexGuard<'_, Option<Writing>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch's transaction is running.
    pub fn is_writing(&self) -> bool {
        self.writing().is_some()
    }

    /// The running transaction has finished (it can be settled without waiting).
    pub fn write_done(&self) -> bool {
        self.writing().as_ref().is_some_and(|w| w.task.is_finished())
    }

    /// Settle the previous write, then start writing `pending` on the runtime and return at once.
    pub fn write(&self, t: &impl Transport, pending: &mut Batch) -> Result<(), FlushError> {
        self.settle(t, pending, Commit::Async)?;
        if pending.is_empty() || pending.stored {
            // Stored already (only its dead letters or offsets failed): finish it here.
            return self.flush(t, pending);
        }
        let batch = std::mem::take(pending);
        let sink = self.sink.clone();
        let task = self.rt.spawn(async move {
            let r = sink.write(&batch.ticks(), &batch.trades()).await;
            (batch, r)
        });
        *self.writing() = Some(Writing { started: Instant::now(), task });
        Ok(())
    }

    /// Wait for the batch in flight, if any, and finish it: isolate refused rows, dead letters, offsets. On
    /// failure it goes back in front of `pending` (the records read since), to be retried as one batch.
    pub fn settle(&self, t: &impl Transport, pending: &mut Batch, mode: Commit) -> Result<(), FlushError> {
        let Some(w) = self.writing().take() else { return Ok(()) };
        let (mut batch, first) = match self.rt.block_on(w.task) {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let r = self
            .stored(&mut batch, first)
            .and_then(|()| t.dead_letter(&batch, &self.metrics))
            .and_then(|()| t.commit(&batch.commit_offsets(), mode));
        match r {
            Ok(()) => {
                self.observe(&batch, w.started);
                Ok(())
            }
            Err(e) => {
                batch.append(std::mem::take(pending));
                *pending = batch;
                Err(e)
            }
        }
    }

    /// Metrics of a batch stored and committed.
    fn observe(&self, batch: &Batch, started: Instant) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for e in batch.entries() {
            if let (Some(ts), Row::Tick(_) | Row::Trade(_)) = (e.timestamp_ms, &e.row) {
                self.metrics.end_to_end_latency.observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics.flush_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Account for the batch's first write attempt; when the database refused it, its rows are written one by
    /// one, the refused ones dead-lettered. Each row the batch holds is counted once: as written, or as a
    /// duplicate when it was stored already.
    fn stored(&self, batch: &mut Batch, first: Result<Written, SinkError>) -> Result<(), FlushError> {
        let written = match first {
            Ok(w) => w,
            Err(e) if e.is_data_error() => {
                self.db_error(&e);
                tracing::warn!(error = %e, "the database refused the batch: isolating the offending rows");
                self.isolate_refused_rows(batch)?
            }
            Err(e) => {
                self.db_error(&e);
                self.set_db_ok(false);
                return Err(e.into());
            }
        };
        self.set_db_ok(true);
        abort_after_stored();
        let (ticks, trades, _) = batch.counts();
        for (table, n, total) in [("ticks", written.ticks, ticks), ("trades", written.trades, trades)] {
            self.metrics.rows_written.get_or_create(&TableLabels { table }).inc_by(n);
            self.metrics.rows_duplicate.get_or_create(&TableLabels { table }).inc_by(total as u64 - n);
        }
        batch.stored = true;
        Ok(())
    }

    /// Write each row alone (rare: only after the database refused a batch) and turn the rows it refuses into
    /// dead letters, so one bad value never blocks the partition. Returns the rows inserted: the good rows are
    /// stored by now, and writing the batch again would only find them present. A failure on the way leaves
    /// the rows written so far stored but uncounted; the retried batch counts them as duplicates, so each row
    /// is still counted once.
    fn isolate_refused_rows(&self, batch: &mut Batch) -> Result<Written, FlushError> {
        let mut written = Written::default();
        for i in 0..batch.len() {
            let (mut ticks, mut trades) = (batch::TickColumns::default(), batch::TradeColumns::default());
            match &batch.entries()[i].row {
                Row::Tick(t) => ticks.push(t),
                Row::Trade(t) => trades.push(t),
                Row::Rejected(_) => continue,
            }
            match self.rt.block_on(self.sink.write(&ticks, &trades)) {
                Ok(w) => {
                    written.ticks += w.ticks;
                    written.trades += w.trades;
                }
                Err(e) if e.is_data_error() => batch.reject(i, Rejection::DatabaseRejected(e.to_string())),
                Err(e) => {
                    self.db_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(written)
    }
}
