//! Kafka clients configured from the worker configuration: the one place connection settings are turned
//! into librdkafka properties (the operator uses the same `KafkaConfig::client_properties`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cryptoviz_crds::config::KafkaConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{OutRecord, PublishError, Publisher};

/// A librdkafka configuration for this pipeline's brokers, credentials read from the environment.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in kafka.client_properties(|var| std::env::var(var).ok()) {
        c.set(k, v);
    }
    c
}

/// Counters and histograms the Kafka producer updates from its delivery callbacks.
#[derive(Clone)]
pub struct ProducerMetrics {
    /// Records acknowledged by the broker.
    pub acked: Counter,
    /// Records the broker or librdkafka failed to deliver, by error code (bounded set).
    pub delivery_errors: Family<Vec<(&'static str, String)>, Counter>,
    /// Seconds from `publish` to the broker's acknowledgement.
    pub ack_latency: Histogram,
}

impl ProducerMetrics {
    /// Register every family in `registry`, a sub-registry carrying the caller's prefix (the scraper's is
    /// `cryptoviz_scraper_producer`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProducerMetrics {
            acked: Counter::default(),
            delivery_errors: Family::default(),
            // 0.5 ms .. ~16 s: the p99 target is 20 ms; the tail shows broker outages.
            ack_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        registry.register("acked", "Records acknowledged by Kafka", m.acked.clone());
        registry.register("delivery_errors", "Records Kafka failed to deliver, by error", m.delivery_errors.clone());
        registry.register(
            "ack_latency_seconds",
            "Time from publish to the broker's acknowledgement",
            m.ack_latency.clone(),
        );
        m
    }
}

/// Called with each record's publish→ack latency and whether it was delivered (benchmarks collect these).
pub type AckObserver = Arc<dyn Fn(Duration, bool) + Send + Sync>;

/// The librdkafka context: delivery reports into metrics, broker-down into the connected flag.
pub struct DeliveryContext {
    metrics: ProducerMetrics,
    connected: Arc<AtomicBool>,
    epoch: Instant,
    observer: Option<AckObserver>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.connected.store(false, Ordering::Relaxed);
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ProducerContext for DeliveryContext {
    /// Nanoseconds since `epoch` at publish: latency without an allocation per record.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: usize) {
        let latency = self.epoch.elapsed().saturating_sub(Duration::from_nanos(sent_at as u64));
        let ok = result.is_ok();
        match result {
            Ok(_) => {
                self.metrics.acked.inc();
                self.metrics.ack_latency.observe(latency.as_secs_f64());
                self.connected.store(true, Ordering::Relaxed);
            }
            Err((e, _)) => {
                let code = e.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_else(|| "other".into());
                self.metrics.delivery_errors.get_or_create(&vec![("error", code)]).inc();
            }
        }
        if let Some(observe) = &self.observer {
            observe(latency, ok);
        }
    }
}

/// Producer tuning: bounded buffering, idempotence, compression.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// At most this many records buffered (in flight or waiting): beyond it, publishes are refused and counted.
    pub max_buffered_messages: u32,
    /// At most this many KiB buffered.
    pub max_buffered_kbytes: u32,
    /// A record not acknowledged within this time is a counted delivery error (frees its buffer space).
    pub message_timeout: Duration,
    /// Batching delay: throughput against latency.
    pub linger: Duration,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            max_buffered_messages: 100_000,
            max_buffered_kbytes: 64 * 1024,
            message_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
        }
    }
}

/// A [`Publisher`] on an idempotent, lz4-compressing librdkafka producer with a bounded buffer.
pub struct KafkaPublisher {
    producer: ThreadedProducer<DeliveryContext>,
    connected: Arc<AtomicBool>,
    epoch: Instant,
}

impl KafkaPublisher {
    /// Create the producer (connects lazily; see [`KafkaPublisher::probe`]).
    pub fn new(
        kafka: &KafkaConfig,
        options: &ProducerOptions,
        metrics: ProducerMetrics,
        observer: Option<AckObserver>,
    ) -> Result<Self, KafkaError> {
        let mut cfg = client_config(kafka);
        cfg.set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            // Java clients' key hashing, so a symbol lands on the partition any other producer would pick.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", options.linger.as_millis().to_string())
            .set("queue.buffering.max.messages", options.max_buffered_messages.to_string())
            .set("queue.buffering.max.kbytes", options.max_buffered_kbytes.to_string())
            .set("message.timeout.ms", options.message_timeout.as_millis().to_string())
            // Topics are the operator's (or standalone --kafka's) to create. With librdkafka's producer default
            // (true) a broker that allows auto-creation would re-create a topic the finalizer just deleted.
            .set("allow.auto.create.topics", "false");
        let connected = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let context = DeliveryContext { metrics, connected: connected.clone(), epoch, observer };
        let producer = cfg.create_with_context(context)?;
        Ok(KafkaPublisher { producer, connected, epoch })
    }

    /// Ask the brokers for metadata (blocking, up to `timeout`) and record whether they answered.
    pub fn probe(&self, timeout: Duration) -> bool {
        let ok = self.producer.client().fetch_metadata(None, timeout).is_ok();
        self.connected.store(ok, Ordering::Relaxed);
        ok
    }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, r: OutRecord<'_>) -> Result<(), PublishError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in r.headers {
            headers = headers.insert(Header { key, value: Some(*value) });
        }
        let sent_at = self.epoch.elapsed().as_nanos() as usize;
        let record = BaseRecord::with_opaque_to(r.topic, sent_at).key(r.key).payload(r.payload).headers(headers);
        self.producer.send(record).map_err(|(e, _)| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => PublishError::QueueFull,
            _ => PublishError::Refused(e.to_string()),
        })
    }

    fn queue_depth(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, remaining = self.queue_depth(), "records not acknowledged at shutdown");
        }
    }
}
