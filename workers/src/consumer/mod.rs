//! Consumer mode: the raw topic → the pipeline's database, effectively once.
//!
//! - **Complete**: offsets are committed only after the database transaction committed (auto commit off), so a
//!   crash re-delivers what was not stored; malformed records go to the dead-letter topic, with the reason in
//!   headers, before their offsets are committed.
//! - **Exact**: the tables' natural keys are unique; a batch with only new keys is copied straight in, and one
//!   holding a stored key (a re-delivery) is written with `ON CONFLICT DO NOTHING` instead (see [`sink`]), so
//!   re-delivered records are no-ops.
//! - **Database down**: the batch is kept, the assigned partitions are paused (polling goes on, so the group
//!   membership stays alive) and the same batch is retried with exponential backoff; consumption resumes after it
//!   is stored.
//! - **Rebalance**: before partitions are revoked the pending batch is flushed and committed; if the database is
//!   down then, the revoked partitions' records are dropped uncommitted and their next owner reads them again.
//!   Offsets are only ever committed for partitions in the current assignment.
//!
//! The Kafka loop is synchronous (librdkafka's `BaseConsumer` on a blocking thread) because rebalance callbacks
//! run inside `poll` and must flush before returning; database calls are driven on the Tokio runtime from there.
//!
//! **Pipelined**: a full batch's transaction runs on the runtime while the loop reads and decodes the next one, so
//! decoding and the database overlap. At most one batch is in flight, and it is settled (dead letters, offsets)
//! before the next one starts, so offsets are still committed in order, only after their rows are stored. A write
//! that fails puts its batch back in front of the records read since, and the whole is retried as one.

pub mod batch;
pub mod copy;
pub mod metrics;
pub mod sink;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cryptoviz_crds::config::WorkerConfig;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use tokio::runtime::Handle;

use crate::bus::kafka::client_config;
use batch::{Batch, Entry, Rejection, Row};
use cryptoviz_runtime::health::{self as server, Health};
use metrics::{KindLabels, Metrics, PartitionLabels, ReasonLabels, TableLabels};
use sink::{CONNECT_PER_BATCH_ENV, Sink, SinkError, Written};

/// Dead-letter header: why the record was rejected.
pub const DLQ_REASON_HEADER: &str = "cv-dlq-reason";
/// Dead-letter header: the topic the record was read from.
pub const DLQ_TOPIC_HEADER: &str = "cv-dlq-topic";
/// Dead-letter header: its partition.
pub const DLQ_PARTITION_HEADER: &str = "cv-dlq-partition";
/// Dead-letter header: its offset.
pub const DLQ_OFFSET_HEADER: &str = "cv-dlq-offset";

/// Backoff of a failing flush: doubles from the first to the last value.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(15));
/// How long a revocation waits for the pending batch to be stored before dropping it uncommitted.
const REVOKE_FLUSH_BUDGET: Duration = Duration::from_secs(10);
/// Check the database this often while no batch flows (readiness).
const IDLE_PING: Duration = Duration::from_secs(10);
/// Longest single poll: how quickly a stop request is noticed.
const MAX_POLL: Duration = Duration::from_millis(200);
/// Longest single poll while a batch is being written: how late its offsets are committed once it is stored.
const MAX_POLL_WRITING: Duration = Duration::from_millis(5);

/// Run the consumer until SIGTERM/SIGINT: serve health and metrics on `listen`, consume the raw topic into the
/// database named by `cfg.storage`.
pub async fn run(cfg: WorkerConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let storage = cfg.storage.clone().context("consumer mode needs storage: the pipeline has no spec.timescale")?;
    let url = std::env::var(&storage.url_env)
        .with_context(|| format!("the database URL variable {} is not set", storage.url_env))?;
    let per_batch = matches!(std::env::var(CONNECT_PER_BATCH_ENV).as_deref(), Ok("1" | "true"));
    let sink = Arc::new(Sink::new(&url, &storage.schema, per_batch)?);
    drop(url);

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let health = Health::new();
    let stop = Arc::new(AtomicBool::new(false));

    let (stopped_tx, mut stopped_rx) = tokio::sync::watch::channel(false);
    let app = server::router(registry, health.clone());
    let mut server = tokio::spawn(server::serve(listen, app, async move {
        let _ = stopped_rx.wait_for(|s| *s).await;
    }));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            cryptoviz_runtime::health::shutdown_signal().await;
            tracing::info!("stopping: flushing the pending batch");
            stop.store(true, Ordering::Relaxed);
        }
    });

    let ctx = Flusher {
        rt: Handle::current(),
        sink,
        producer: dlq_producer(&cfg)?,
        raw_topic: cfg.kafka.raw_topic.clone(),
        dlq_topic: cfg.kafka.dlq_topic.clone(),
        metrics,
        health,
        pending: Mutex::new(Batch::default()),
        writing: Mutex::new(None),
        paused: AtomicBool::new(false),
        assigned: AtomicBool::new(false),
        db_ok: AtomicBool::new(false),
    };
    let consumer: BaseConsumer<Flusher> =
        consumer_config(&cfg).create_with_context(ctx).context("creating the Kafka consumer")?;
    consumer.subscribe(&[&cfg.kafka.raw_topic]).context("subscribing to the raw topic")?;
    tracing::info!(topic = %cfg.kafka.raw_topic, group = %cfg.consumer.group_id, per_batch, "consuming");

    let limits =
        (cfg.consumer.batch_size.max(1) as usize, Duration::from_millis(cfg.consumer.flush_interval_ms.max(1)));
    let mut worker = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || consume(consumer, &stop, limits.0, limits.1)
    });
    let result = tokio::select! {
        r = &mut worker => r.context("consumer thread panicked")?,
        r = &mut server => {
            stop.store(true, Ordering::Relaxed);
            let _ = worker.await;
            return r.context("HTTP server panicked")?;
        }
    };
    let _ = stopped_tx.send(true);
    let _ = server.await;
    result
}

fn consumer_config(cfg: &WorkerConfig) -> ClientConfig {
    let mut c = client_config(&cfg.kafka);
    c.set("group.id", &cfg.consumer.group_id)
        .set("client.id", "cryptoviz-consumer")
        // Offsets are committed by hand, after the database commit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A crashed consumer's partitions move to a live one after 10 s rather than the default 45 s.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        // The scraper's transactions (if any) are never read half-done.
        .set("isolation.level", "read_committed")
        // Prefetch: librdkafka keeps this many records per partition ready (default 100,000, which with small
        // records hits the 64 MB queue cap), and once a cap is hit it waits `fetch.queue.backoff.ms` (default
        // 1 s) before fetching that partition again — long enough for a fast consumer to run dry. Measured
        // with tests/bench/consumer: the drain rose from 113k to 196k rows/s (see docs/benchmarks.md).
        .set("queued.min.messages", "20000")
        .set("fetch.queue.backoff.ms", "10")
        .set("statistics.interval.ms", "5000");
    c
}

fn dlq_producer(cfg: &WorkerConfig) -> anyhow::Result<FutureProducer> {
    client_config(&cfg.kafka)
        .set("client.id", "cryptoviz-consumer-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the dead-letter producer")
}

fn consume(
    consumer: BaseConsumer<Flusher>,
    stop: &AtomicBool,
    batch_size: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let ctx = consumer.context();
    let mut backoff = BACKOFF.0;
    let mut retry_at: Option<Instant> = None;
    let mut last_db_contact = Instant::now() - IDLE_PING;
    while !stop.load(Ordering::Relaxed) {
        let wake = retry_at.or_else(|| ctx.pending().deadline(interval));
        let max = if ctx.is_writing() { MAX_POLL_WRITING } else { MAX_POLL };
        let timeout = wake.map_or(max, |w| w.saturating_duration_since(Instant::now()).min(max));
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let entry = Entry {
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    row: batch::decode(m.payload()),
                };
                ctx.pending().push(entry);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
            None => {}
        }
        let due = match retry_at {
            Some(t) => Instant::now() >= t,
            None => ctx.pending().due(batch_size, interval),
        };
        let outcome = if due {
            let mut pending = ctx.pending();
            // Retries are synchronous: nothing newer is written before the failed batch is stored.
            Some(if retry_at.is_some() {
                ctx.flush(&consumer, &mut pending)
            } else {
                ctx.write(&consumer, &mut pending)
            })
        } else if ctx.write_done() {
            Some(ctx.settle(&consumer, &mut ctx.pending(), CommitMode::Async))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            match outcome {
                Ok(()) => {
                    last_db_contact = Instant::now();
                    if retry_at.take().is_some() {
                        ctx.set_paused(&consumer, false);
                        tracing::info!("batch stored after retries: consumption resumed");
                    }
                    backoff = BACKOFF.0;
                }
                Err(e) => {
                    if retry_at.is_none() {
                        let records = ctx.pending().len();
                        tracing::warn!(error = %e, records, "flush failed: pausing consumption and retrying");
                    } else {
                        tracing::debug!(error = %e, "flush retry failed");
                    }
                    ctx.set_paused(&consumer, true);
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        } else if retry_at.is_none()
            && !ctx.is_writing()
            && ctx.pending().is_empty()
            && last_db_contact.elapsed() >= IDLE_PING
        {
            let ok = ctx.rt.block_on(ctx.sink.ping());
            if let Err(e) = &ok {
                ctx.db_error(e);
            }
            ctx.set_db_ok(ok.is_ok());
            last_db_contact = Instant::now();
        }
    }
    // Stopping: one last attempt to store what is pending; anything not stored stays uncommitted for the next run.
    let mut pending = ctx.pending();
    if let Err(e) = ctx.flush(&consumer, &mut pending) {
        tracing::warn!(error = %e, records = pending.len(), "final flush failed; those records will be read again");
    }
    drop(pending);
    ctx.health.set_ready(false);
    ctx.rt.block_on(ctx.sink.close());
    // Leave the group now (the revocation callback finds nothing pending) rather than after the session timeout.
    consumer.unsubscribe();
    drop(consumer);
    Ok(())
}

/// Why a flush did not complete (the batch is kept and retried).
#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Database(#[from] SinkError),
    #[error("dead-letter delivery failed: {0}")]
    DeadLetter(String),
    #[error("offset commit failed: {0}")]
    Commit(rdkafka::error::KafkaError),
}

/// A batch being written on the runtime; the task hands it back with the result.
struct Writing {
    started: Instant,
    task: tokio::task::JoinHandle<(Batch, Result<Written, SinkError>)>,
}

/// The consumer's context: owns the pending batch and everything a flush needs, so the rebalance callbacks
/// (which librdkafka runs inside `poll`) can flush too.
struct Flusher {
    rt: Handle,
    sink: Arc<Sink>,
    producer: FutureProducer,
    raw_topic: String,
    dlq_topic: String,
    metrics: Metrics,
    health: Arc<Health>,
    pending: Mutex<Batch>,
    /// The batch whose transaction is running, if any.
    writing: Mutex<Option<Writing>>,
    paused: AtomicBool,
    assigned: AtomicBool,
    db_ok: AtomicBool,
}

impl Flusher {
    fn pending(&self) -> MutexGuard<'_, Batch> {
        // A panic while holding the lock leaves a batch that is still valid data.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_db_ok(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
        self.health.set_ready(ok && self.assigned.load(Ordering::Relaxed));
    }

    fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Relaxed);
        self.health.set_ready(assigned && self.db_ok.load(Ordering::Relaxed));
    }

    fn db_error(&self, e: &SinkError) {
        self.metrics.db_errors.get_or_create(&KindLabels { kind: e.kind() }).inc();
    }

    fn set_paused(&self, consumer: &BaseConsumer<Self>, paused: bool) {
        if self.paused.swap(paused, Ordering::Relaxed) == paused {
            return;
        }
        self.metrics.paused.set(paused as i64);
        if let Ok(assignment) = consumer.assignment() {
            let r = if paused { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
            if let Err(e) = r {
                tracing::warn!(error = %e, paused, "pausing/resuming partitions failed");
            }
        }
    }

    /// Store the batch, dead-letter its rejected records, commit its offsets; on success the batch is emptied.
    /// On failure it is kept as it is, to be retried.
    fn flush(&self, consumer: &BaseConsumer<Self>, batch: &mut Batch) -> Result<(), FlushError> {
        self.settle(consumer, batch, CommitMode::Sync)?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        if !batch.stored {
            let first = self.rt.block_on(self.sink.write(&batch.ticks(), &batch.trades()));
            self.stored(batch, first)?;
        }
        self.dead_letter(batch)?;
        self.commit(consumer, batch, CommitMode::Sync)?;
        self.observe(batch, started);
        *batch = Batch::default();
        Ok(())
    }

    fn writing(&self) -> MutexGuard<'_, Option<Writing>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch's transaction is running.
    fn is_writing(&self) -> bool {
        self.writing().is_some()
    }

    /// The running transaction has finished (it can be settled without waiting).
    fn write_done(&self) -> bool {
        self.writing().as_ref().is_some_and(|w| w.task.is_finished())
    }

    /// Settle the previous write, then start writing `pending` on the runtime and return at once.
    fn write(&self, consumer: &BaseConsumer<Self>, pending: &mut Batch) -> Result<(), FlushError> {
        self.settle(consumer, pending, CommitMode::Async)?;
        if pending.is_empty() || pending.stored {
            // Stored already (only its dead letters or offsets failed): finish it here.
            return self.flush(consumer, pending);
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
    ///
    /// `mode`: while consuming, offsets are committed asynchronously — the rows are already stored, librdkafka
    /// sends commits in order, and a commit that fails is superseded by the partition's next one (until then a
    /// restart re-reads rows that are no-ops). Before a revocation or a stop, they are committed synchronously.
    fn settle(&self, consumer: &BaseConsumer<Self>, pending: &mut Batch, mode: CommitMode) -> Result<(), FlushError> {
        let Some(w) = self.writing().take() else { return Ok(()) };
        let (mut batch, first) = match self.rt.block_on(w.task) {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let r = self
            .stored(&mut batch, first)
            .and_then(|()| self.dead_letter(&batch))
            .and_then(|()| self.commit(consumer, &batch, mode));
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

    /// Account for the batch's first write attempt; rows the database refused are isolated and the rest
    /// written again.
    fn stored(&self, batch: &mut Batch, first: Result<Written, SinkError>) -> Result<(), FlushError> {
        let written = match first {
            Ok(w) => w,
            Err(e) if e.is_data_error() => {
                self.db_error(&e);
                tracing::warn!(error = %e, "the database refused the batch: isolating the offending rows");
                self.isolate_refused_rows(batch)?;
                self.rt.block_on(self.sink.write(&batch.ticks(), &batch.trades())).inspect_err(|e| self.db_error(e))?
            }
            Err(e) => {
                self.db_error(&e);
                self.set_db_ok(false);
                return Err(e.into());
            }
        };
        self.set_db_ok(true);
        let (ticks, trades, _) = batch.counts();
        for (table, n, total) in [("ticks", written.ticks, ticks), ("trades", written.trades, trades)] {
            self.metrics.rows_written.get_or_create(&TableLabels { table }).inc_by(n);
            self.metrics.rows_duplicate.get_or_create(&TableLabels { table }).inc_by(total as u64 - n);
        }
        batch.stored = true;
        Ok(())
    }

    /// Write each row alone (rare: only after the database refused a batch) and turn the rows it refuses into
    /// dead letters, so one bad value never blocks the partition.
    fn isolate_refused_rows(&self, batch: &mut Batch) -> Result<(), FlushError> {
        for i in 0..batch.len() {
            let (mut ticks, mut trades) = (batch::TickColumns::default(), batch::TradeColumns::default());
            match &batch.entries()[i].row {
                Row::Tick(t) => ticks.push(t),
                Row::Trade(t) => trades.push(t),
                Row::Rejected(_) => continue,
            }
            match self.rt.block_on(self.sink.write(&ticks, &trades)) {
                Ok(_) => {}
                Err(e) if e.is_data_error() => batch.reject(i, Rejection::DatabaseRejected(e.to_string())),
                Err(e) => {
                    self.db_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn dead_letter(&self, batch: &Batch) -> Result<(), FlushError> {
        let mut deliveries = Vec::new();
        for e in batch.entries() {
            let Row::Rejected(reason) = &e.row else { continue };
            let (partition, offset) = (e.partition.to_string(), e.offset.to_string());
            let reason_text = reason.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: DLQ_REASON_HEADER, value: Some(reason_text.as_str()) })
                .insert(Header { key: DLQ_TOPIC_HEADER, value: Some(self.raw_topic.as_str()) })
                .insert(Header { key: DLQ_PARTITION_HEADER, value: Some(partition.as_str()) })
                .insert(Header { key: DLQ_OFFSET_HEADER, value: Some(offset.as_str()) });
            let mut record = FutureRecord::to(&self.dlq_topic).payload(&e.payload).headers(headers);
            if let Some(k) = &e.key {
                record = record.key(k);
            }
            deliveries.push((reason.label(), self.producer.send(record, Duration::from_secs(30))));
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        // Retries re-send every dead letter of the batch: the dead-letter topic is at-least-once.
        let results = self
            .rt
            .block_on(futures::future::join_all(deliveries.into_iter().map(|(l, f)| async move { (l, f.await) })));
        let mut failed = None;
        for (label, r) in results {
            match r {
                Ok(_) => {
                    tracing::warn!(reason = label, "record sent to the dead-letter topic");
                    self.metrics.dlq.get_or_create(&ReasonLabels { reason: label }).inc();
                }
                Err((e, _)) => failed = Some(e.to_string()),
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => {
                self.metrics.kafka_errors.get_or_create(&KindLabels { kind: "dead_letter" }).inc();
                Err(FlushError::DeadLetter(e))
            }
        }
    }

    fn commit(&self, consumer: &BaseConsumer<Self>, batch: &Batch, mode: CommitMode) -> Result<(), FlushError> {
        let owned = consumer.assignment().map_err(FlushError::Commit)?;
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in batch.commit_offsets() {
            // Never commit for a partition another member owns now: its position is not ours to move.
            if owned.find_partition(&self.raw_topic, partition).is_some() {
                tpl.add_partition_offset(&self.raw_topic, partition, Offset::Offset(next))
                    .map_err(FlushError::Commit)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // Failures are counted in `commit_callback`, which librdkafka calls for every commit.
        consumer.commit(&tpl, mode).map_err(FlushError::Commit)
    }

    /// Flush before partitions are taken away, within a budget; what cannot be stored in time is dropped
    /// uncommitted for the next owner.
    fn flush_before_revoke(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let mut pending = self.pending();
        let deadline = Instant::now() + REVOKE_FLUSH_BUDGET;
        let mut delay = BACKOFF.0;
        loop {
            match self.flush(consumer, &mut pending) {
                Ok(()) => break,
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "flush before revocation failed; retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => {
                    let n = pending.drop_partitions(|p| revoked.find_partition(&self.raw_topic, p).is_some());
                    tracing::warn!(error = %e, dropped = n, "could not store before revocation: records left uncommitted for the next owner");
                    break;
                }
            }
        }
    }
}

impl ClientContext for Flusher {
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.raw_topic) else { return };
        for (&partition, p) in &topic.partitions {
            // -1: the internal UA partition, or a partition with no committed offset / no assignment yet.
            if partition >= 0 && p.consumer_lag >= 0 {
                self.metrics.lag.get_or_create(&PartitionLabels { partition }).set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Flusher {
    /// Every commit's result, synchronous or not (a failed synchronous one is also returned where it is made).
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.metrics.kafka_errors.get_or_create(&KindLabels { kind: "commit" }).inc();
            tracing::warn!(error = %e, "offset commit failed: the next batch of these partitions commits past it");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            tracing::info!(partitions = revoked.count(), "partitions revoked: flushing first");
            self.flush_before_revoke(consumer, revoked);
            for e in revoked.elements_for_topic(&self.raw_topic) {
                self.metrics.lag.remove(&PartitionLabels { partition: e.partition() });
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                // Still waiting for the database: newly assigned partitions wait too.
                if self.paused.load(Ordering::Relaxed) {
                    let _ = consumer.pause(tpl);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
        self.set_assigned(assigned);
        if assigned && !self.db_ok.load(Ordering::Relaxed) {
            // Readiness needs both: learn the database's state now rather than at the first batch.
            let ok = self.rt.block_on(self.sink.ping());
            self.set_db_ok(ok.is_ok());
        }
    }
}
