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
//! The loop is synchronous (librdkafka's `BaseConsumer` on a blocking thread) because rebalance callbacks run
//! inside `poll` and must flush before returning; database calls are driven on the Tokio runtime from there.
//!
//! Layout: [`drive`] is the loop and [`retry`] its retry schedule, [`flush`] stores a batch (pipelined, see
//! there), over a [`transport::Transport`] — [`kafka`] in the cluster, [`memory`] (the in-process bus) in
//! standalone mode — and a [`sink::Store`], the database writer [`sink::Sink`].

pub mod batch;
pub mod copy;
pub mod drive;
pub mod flush;
pub mod kafka;
pub mod memory;
pub mod metrics;
pub mod retry;
pub mod sink;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use cryptoviz_crds::config::WorkerConfig;
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;

use crate::bus::memory::Subscription;
use cryptoviz_runtime::health::{self as server, Health};
use drive::{Limits, drive};
use flush::Flusher;
use metrics::Metrics;
use sink::{CONNECT_PER_BATCH_ENV, Sink};

/// Dead-letter header: why the record was rejected.
pub const DLQ_REASON_HEADER: &str = "cv-dlq-reason";
/// Dead-letter header, on `invalid_value` dead letters only: the message field that broke its value rule.
pub const DLQ_FIELD_HEADER: &str = "cv-dlq-field";
/// Dead-letter header: the topic the record was read from.
pub const DLQ_TOPIC_HEADER: &str = "cv-dlq-topic";
/// Dead-letter header: its partition.
pub const DLQ_PARTITION_HEADER: &str = "cv-dlq-partition";
/// Dead-letter header: its offset.
pub const DLQ_OFFSET_HEADER: &str = "cv-dlq-offset";

/// Run the consumer until SIGTERM/SIGINT: serve health and metrics on `listen`, consume the raw topic into the
/// database named by `cfg.storage`.
pub async fn run(cfg: WorkerConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let storage = cfg.storage.clone().context("consumer mode needs storage: the pipeline has no spec.timescale")?;
    let url = std::env::var(&storage.url_env)
        .with_context(|| format!("the database URL variable {} is not set", storage.url_env))?;
    let per_batch = matches!(std::env::var(CONNECT_PER_BATCH_ENV).as_deref(), Ok("1" | "true"));
    let sink = Sink::new(&url, &storage.schema, per_batch)?;
    drop(url);
    tracing::info!(per_batch, "database writer ready");

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

    let mut worker = spawn_on_kafka(&cfg, sink, metrics, health, stop.clone())?;
    tokio::select! {
        r = &mut worker => r.context("consumer thread panicked")?,
        r = &mut server => {
            stop.store(true, Ordering::Relaxed);
            let _ = worker.await;
            return r.context("HTTP server panicked")?;
        }
    };
    let _ = stopped_tx.send(true);
    let _ = server.await;
    Ok(())
}

/// The consumer over Kafka, on a thread of its own until `stop`: subscribed to the raw topic in the configured
/// group, offsets committed after the rows are stored, rejected records to the dead-letter topic. Readiness
/// (partitions assigned and the database answering) goes to `health`.
pub fn spawn_on_kafka(
    cfg: &WorkerConfig,
    sink: Sink,
    metrics: Metrics,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // Not ready before the group assigns partitions.
    let flusher = Flusher::new(Handle::current(), Arc::new(sink), metrics, health, false);
    let consumer = kafka::subscribe(cfg, flusher)?;
    tracing::info!(topic = %cfg.kafka.raw_topic, group = %cfg.consumer.group_id, "consuming");
    let limits = Limits::of(&cfg.consumer);
    Ok(tokio::task::spawn_blocking(move || {
        drive(&consumer, &rdkafka::consumer::Consumer::context(&consumer).flusher, &stop, limits);
        kafka::leave(consumer);
    }))
}

/// The consumer over the in-process bus (standalone mode), on a thread of its own until `stop`: the same loop,
/// flush and database writer as [`run`]. Readiness goes to `health`.
pub fn spawn_on_bus(
    sub: Subscription,
    sink: Sink,
    metrics: Metrics,
    health: Arc<Health>,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let rt = Handle::current();
    let transport = memory::BusTransport::new(sub, rt.clone());
    let flusher = Flusher::new(rt, Arc::new(sink), metrics, health, true);
    tokio::task::spawn_blocking(move || drive(&transport, &flusher, &stop, limits))
}
