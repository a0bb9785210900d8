//! The scraper: sources → normalised messages → dedup, tick suppression, alerts → the raw and stream topics.
//!
//! Each source runs in its own task and hands what it parses to its [`Outlet`], which withholds repeats,
//! detects alerts and hands records to a [`Publisher`] (Kafka here, the in-process bus in standalone mode).
//! Nothing in the path blocks on the broker: a full producer buffer is a counted drop. [`health`] turns the
//! sources' states into liveness and readiness.

pub mod alerts;
pub mod dedup;
pub mod health;
pub mod metrics;
pub mod outlet;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_runtime::health::{self as server, Health};
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::bus::Publisher;
use crate::bus::kafka::{KafkaPublisher, ProducerOptions};
use crate::sources::{self, parsed::Downstream};
use health::{Monitor, SourceStatus};
pub use metrics::Metrics;
pub use outlet::{Outlet, TopicNames};

/// Delay between source starts, so a restart does not hit every API in the same instant.
pub const STAGGER: Duration = Duration::from_millis(500);
/// Time between health assessments in the scraper mode.
const MONITOR_TICK: Duration = Duration::from_secs(1);

/// Running sources.
pub struct Scraper {
    /// Each source's status, for health.
    pub statuses: Vec<Arc<SourceStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Scraper {
    /// Start every configured source (staggered), publishing through `publisher`. Used by the cluster mode
    /// with Kafka and by standalone mode with the in-process bus.
    pub fn start(cfg: &WorkerConfig, publisher: Arc<dyn Publisher>, metrics: Arc<Metrics>) -> Self {
        let mut statuses = Vec::new();
        let mut tasks = Vec::new();
        for (i, sc) in cfg.sources.iter().enumerate() {
            let source = sources::build(cfg, sc);
            let (outlet, status) = Outlet::new(source.kind(), cfg, publisher.clone(), metrics.clone());
            let out: Arc<dyn Downstream> = Arc::new(outlet);
            statuses.push(status);
            let delay = STAGGER * i as u32;
            let span = tracing::info_span!("source", source = source.kind().as_str());
            tasks.push(tokio::spawn(
                async move {
                    tokio::time::sleep(delay).await;
                    tracing::info!("starting");
                    source.run(out).await;
                }
                .instrument(span),
            ));
        }
        Scraper { statuses, tasks }
    }

    /// Stop every source.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Run the scraper mode: sources into Kafka, `/health`, `/ready` and `/metrics` on `listen`.
pub async fn run(cfg: WorkerConfig, listen: SocketAddr) -> anyhow::Result<()> {
    // One crypto provider for reqwest and tungstenite (ring: no cmake needed). Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let publisher =
        Arc::new(KafkaPublisher::new(&cfg.kafka, &ProducerOptions::default(), metrics.producer.clone(), None)?);
    let health = Health::new();
    let scraper = Scraper::start(&cfg, publisher.clone(), metrics.clone());
    tracing::info!(sources = cfg.sources.len(), symbols = ?cfg.symbols, raw = %cfg.kafka.raw_topic, stream = %cfg.kafka.stream_topic, "scraper started");

    let monitor = tokio::spawn(
        Monitor {
            statuses: scraper.statuses.clone(),
            publisher: publisher.clone(),
            kafka: Some(publisher.clone()),
            others: Vec::new(),
            metrics: metrics.clone(),
            health: health.clone(),
            tick: MONITOR_TICK,
        }
        .run(),
    );

    let served = server::serve(listen, server::router(registry, health), server::shutdown_signal()).await;
    tracing::info!("shutting down");
    monitor.abort();
    scraper.stop();
    tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(10))).await?;
    served
}

/// A configuration for unit tests: the given symbols in USD, one synthetic source, unchanged ticks
/// suppressed, alerts on for a 5 % move within a minute.
#[cfg(test)]
pub(crate) fn test_config(symbols: &[&str]) -> WorkerConfig {
    let yaml = format!(
        "pipeline: {{namespace: ns, name: p}}\nsymbols: [{}]\nquote: USD\nsources: [{{kind: synthetic}}]\n\
         kafka: {{bootstrapServers: 'k:9092', rawTopic: r, streamTopic: s, dlqTopic: d}}\n\
         scraper: {{suppressUnchangedTicks: true}}\n\
         consumer: {{groupId: g, batchSize: 1, flushIntervalMs: 1}}\n\
         gateway: {{heartbeatIntervalMs: 1, maxClients: 1, replayBuffer: 1}}\n\
         alerts: {{enabled: true, thresholdPercent: 5.0, windowMs: 60000}}\n",
        symbols.join(", ")
    );
    WorkerConfig::from_yaml(&yaml).expect("test config")
}
