//! The consumer's Prometheus metrics: one struct, every family registered once under `cryptoviz_consumer`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: a table the consumer writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `ticks` or `trades`.
    pub table: &'static str,
}

/// Label set: a partition of the raw topic (bounded by the topic's partition count).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Partition number.
    pub partition: i32,
}

/// Label set: why a message went to the dead-letter topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Short reason (see [`super::batch::Rejection::label`]).
    pub reason: &'static str,
}

/// Label set: a kind of database error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// See [`super::sink::SinkError::kind`].
    pub kind: &'static str,
}

/// Every metric the consumer exports.
pub struct Metrics {
    /// Rows inserted, by table (conflicting re-deliveries are not counted).
    pub rows_written: Family<TableLabels, Counter>,
    /// Rows already present (re-delivered after a crash or rebalance), by table.
    pub rows_duplicate: Family<TableLabels, Counter>,
    /// Records per flushed batch.
    pub batch_size: Histogram,
    /// Time from the start of a flush to the Kafka commit (database transaction, DLQ, offsets).
    pub flush_duration: Histogram,
    /// Time from the Kafka record timestamp to the database commit, per row.
    pub end_to_end_latency: Histogram,
    /// Messages behind the head of the raw topic, per partition (librdkafka statistics).
    pub lag: Family<PartitionLabels, Gauge>,
    /// Messages sent to the dead-letter topic, by reason.
    pub dlq: Family<ReasonLabels, Counter>,
    /// Database errors, by kind.
    pub db_errors: Family<KindLabels, Counter>,
    /// Failed Kafka operations (offset commits, DLQ deliveries).
    pub kafka_errors: Family<KindLabels, Counter>,
    /// 1 while consumption is paused because the database is failing.
    pub paused: Gauge,
}

impl Metrics {
    /// Register every family into `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            rows_written: Family::default(),
            rows_duplicate: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            flush_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            end_to_end_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            lag: Family::default(),
            dlq: Family::default(),
            db_errors: Family::default(),
            kafka_errors: Family::default(),
            paused: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("cryptoviz_consumer");
        r.register("rows_written", "Rows inserted into the database, by table", m.rows_written.clone());
        r.register(
            "rows_duplicate",
            "Rows skipped because they were already stored (re-delivery), by table",
            m.rows_duplicate.clone(),
        );
        r.register("batch_size_records", "Kafka records per flushed batch", m.batch_size.clone());
        r.register(
            "flush_duration_seconds",
            "Time to flush one batch: database transaction, dead letters and offset commit",
            m.flush_duration.clone(),
        );
        r.register(
            "end_to_end_latency_seconds",
            "Time from the Kafka record timestamp to the database commit, per row",
            m.end_to_end_latency.clone(),
        );
        r.register("lag_messages", "Messages behind the head of the raw topic, per partition", m.lag.clone());
        r.register("dlq_messages", "Messages sent to the dead-letter topic, by reason", m.dlq.clone());
        r.register("database_errors", "Database errors by kind", m.db_errors.clone());
        r.register("kafka_errors", "Failed offset commits and dead-letter deliveries", m.kafka_errors.clone());
        r.register("paused", "1 while consumption is paused because the database is failing", m.paused.clone());
        m
    }
}
