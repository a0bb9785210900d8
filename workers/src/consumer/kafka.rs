//! The consumer over Kafka: a `BaseConsumer` whose context holds the [`Flusher`], because librdkafka runs the
//! rebalance callbacks inside `poll` and they must flush before partitions are taken away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_runtime::backoff::Backoff;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};

use super::batch::{Batch, Entry, Row};
use super::flush::Flusher;
use super::metrics::{KindLabels, Metrics, PartitionLabels, ReasonLabels};
use super::retry;
use super::sink::Store;
use super::transport::{Commit, FlushError, Transport};
use super::{DLQ_FIELD_HEADER, DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER, DLQ_REASON_HEADER, DLQ_TOPIC_HEADER};
use crate::bus::kafka::client_config;

/// How long a revocation waits for the pending batch to be stored before dropping it uncommitted.
const REVOKE_FLUSH_BUDGET: Duration = Duration::from_secs(10);

/// The consumer's librdkafka context.
pub struct KafkaContext<S> {
    /// The pending batch and the database.
    pub flusher: Flusher<S>,
    producer: FutureProducer,
    raw_topic: String,
    dlq_topic: String,
}

/// The raw topic's consumer.
pub type KafkaConsumer<S> = BaseConsumer<KafkaContext<S>>;

/// A consumer of the raw topic in the configured group, subscribed, with offsets committed by hand.
pub fn subscribe<S: Store>(cfg: &WorkerConfig, flusher: Flusher<S>) -> anyhow::Result<KafkaConsumer<S>> {
    let ctx = KafkaContext {
        flusher,
        producer: dlq_producer(cfg)?,
        raw_topic: cfg.kafka.raw_topic.clone(),
        dlq_topic: cfg.kafka.dlq_topic.clone(),
    };
    let consumer: KafkaConsumer<S> =
        consumer_config(cfg).create_with_context(ctx).context("creating the Kafka consumer")?;
    consumer.subscribe(&[&cfg.kafka.raw_topic]).context("subscribing to the raw topic")?;
    Ok(consumer)
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

/// Leave the group now (the revocation callback finds nothing pending) rather than after the session timeout.
pub fn leave<S: Store>(consumer: KafkaConsumer<S>) {
    consumer.unsubscribe();
    drop(consumer);
}

impl<S: Store> Transport for KafkaConsumer<S> {
    fn poll(&self, timeout: Duration) -> Option<Entry> {
        match BaseConsumer::poll(self, timeout) {
            Some(Ok(m)) => Some(Entry::read(
                m.partition(),
                m.offset(),
                m.timestamp().to_millis(),
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                None
            }
            None => None,
        }
    }

    fn set_paused(&self, paused: bool) {
        if let Ok(assignment) = self.assignment() {
            let r = if paused { self.pause(&assignment) } else { self.resume(&assignment) };
            if let Err(e) = r {
                tracing::warn!(error = %e, paused, "pausing/resuming partitions failed");
            }
        }
    }

    fn commit(&self, next: &BTreeMap<i32, i64>, mode: Commit) -> Result<(), FlushError> {
        let raw = &self.context().raw_topic;
        let owned = self.assignment().map_err(|e| FlushError::Commit(e.to_string()))?;
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in next {
            // Never commit for a partition another member owns now: its position is not ours to move.
            if owned.find_partition(raw, partition).is_some() {
                tpl.add_partition_offset(raw, partition, Offset::Offset(next))
                    .map_err(|e| FlushError::Commit(e.to_string()))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let mode = match mode {
            Commit::Async => CommitMode::Async,
            Commit::Sync => CommitMode::Sync,
        };
        // Failures are counted in `commit_callback`, which librdkafka calls for every commit.
        Consumer::commit(self, &tpl, mode).map_err(|e| FlushError::Commit(e.to_string()))
    }

    fn dead_letter(&self, batch: &Batch, metrics: &Metrics) -> Result<(), FlushError> {
        let ctx = self.context();
        let mut deliveries = Vec::new();
        for e in batch.entries() {
            let Row::Rejected(reason) = &e.row else { continue };
            let (partition, offset) = (e.partition.to_string(), e.offset.to_string());
            let reason_text = reason.to_string();
            let mut headers = OwnedHeaders::new();
            if let Some(field) = reason.field() {
                headers = headers.insert(Header { key: DLQ_FIELD_HEADER, value: Some(field) });
            }
            let headers = headers
                .insert(Header { key: DLQ_REASON_HEADER, value: Some(reason_text.as_str()) })
                .insert(Header { key: DLQ_TOPIC_HEADER, value: Some(ctx.raw_topic.as_str()) })
                .insert(Header { key: DLQ_PARTITION_HEADER, value: Some(partition.as_str()) })
                .insert(Header { key: DLQ_OFFSET_HEADER, value: Some(offset.as_str()) });
            let mut record = FutureRecord::to(&ctx.dlq_topic).payload(&e.payload).headers(headers);
            if let Some(k) = &e.key {
                record = record.key(k);
            }
            deliveries.push((reason.label(), ctx.producer.send(record, Duration::from_secs(30))));
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        // Retries re-send every dead letter of the batch: the dead-letter topic is at-least-once.
        let results = ctx
            .flusher
            .rt
            .block_on(futures::future::join_all(deliveries.into_iter().map(|(l, f)| async move { (l, f.await) })));
        let mut failed = None;
        for (label, r) in results {
            match r {
                Ok(_) => {
                    tracing::warn!(reason = label, "record sent to the dead-letter topic");
                    metrics.dlq.get_or_create(&ReasonLabels { reason: label }).inc();
                }
                Err((e, _)) => failed = Some(e.to_string()),
            }
        }
        match failed {
            None => Ok(()),
            Some(e) => {
                metrics.kafka_errors.get_or_create(&KindLabels { kind: "dead_letter" }).inc();
                Err(FlushError::DeadLetter(e))
            }
        }
    }
}

impl<S: Store> KafkaContext<S> {
    /// Flush before partitions are taken away, within a budget; what cannot be stored in time is dropped
    /// uncommitted for the next owner.
    fn flush_before_revoke(&self, consumer: &KafkaConsumer<S>, revoked: &TopicPartitionList) {
        let f = &self.flusher;
        let mut pending = f.pending();
        let deadline = Instant::now() + REVOKE_FLUSH_BUDGET;
        let mut backoff = Backoff::new(retry::FIRST_DELAY, retry::MAX_DELAY);
        loop {
            let delay = backoff.next_delay();
            match f.flush(consumer, &mut pending) {
                Ok(()) => break,
                Err(e) if Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "flush before revocation failed; retrying");
                    // Inside librdkafka's rebalance callback: blocking here is what holds the revocation.
                    std::thread::sleep(delay);
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

impl<S: Store> ClientContext for KafkaContext<S> {
    fn stats(&self, stats: Statistics) {
        let Some(topic) = stats.topics.get(&self.raw_topic) else { return };
        for (&partition, p) in &topic.partitions {
            // -1: the internal UA partition, or a partition with no committed offset / no assignment yet.
            if partition >= 0 && p.consumer_lag >= 0 {
                self.flusher.metrics.lag.get_or_create(&PartitionLabels { partition }).set(p.consumer_lag);
            }
        }
    }
}

impl<S: Store> ConsumerContext for KafkaContext<S> {
    /// Every commit's result, synchronous or not (a failed synchronous one is also returned where it is made).
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.flusher.metrics.kafka_errors.get_or_create(&KindLabels { kind: "commit" }).inc();
            tracing::warn!(error = %e, "offset commit failed: the next batch of these partitions commits past it");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            tracing::info!(partitions = revoked.count(), "partitions revoked: flushing first");
            self.flush_before_revoke(consumer, revoked);
            for e in revoked.elements_for_topic(&self.raw_topic) {
                self.flusher.metrics.lag.remove(&PartitionLabels { partition: e.partition() });
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                // Still waiting for the database: newly assigned partitions wait too.
                if self.flusher.is_paused() {
                    let _ = consumer.pause(tpl);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
        let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(false);
        self.flusher.set_assigned(assigned);
        if assigned && !self.flusher.db_ok() {
            // Readiness needs both: learn the database's state now rather than at the first batch.
            self.flusher.ping();
        }
    }
}
