//! Standalone mode: the scraper and the gateway (and the consumer when a database is given) in one
//! process, with no cluster, broker or database needed. A newcomer's first command.
//!
//! It reads the same pipeline description as the operator — a CryptoPipeline manifest (`-f`), or a built-in
//! one (synthetic market, BTC/ETH/SOL) adjusted by flags — checks it as the apiserver would
//! ([`cryptoviz_crds::validate`]), and renders it with [`WorkerConfig::for_pipeline`], the function the
//! operator uses for the ConfigMap. This module only wires the modes together: the scraper, the gateway hub
//! and the consumer loop are the cluster's own, over an in-process [`MemoryBus`] instead of Kafka.
//!
//! - `--kafka <bootstrap>` creates the pipeline's topics exactly as the operator does
//!   ([`cryptoviz_crds::topics::desired_topics`]) when they are missing, produces to them, tails the stream
//!   topic for the gateway and (with `--timescale`) consumes the raw topic in the pipeline's consumer group,
//!   dead-letter topic included — as in the cluster.
//! - `--timescale <url>` creates or migrates the pipeline's schema with the operator's storage code
//!   ([`cryptoviz_runtime::storage`]) and stores the raw feed with the consumer.

mod banner;
mod pipeline;
mod provision;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_runtime::health::Health;
use prometheus_client::registry::Registry;

pub use pipeline::{Options, PipelineError, default_pipeline, pipeline, read_manifest};

use crate::bus::Publisher;
use crate::bus::Record;
use crate::bus::kafka::{KafkaPublisher, ProducerOptions};
use crate::bus::memory::{MemoryBus, RecvError, StartAt, Subscription};
use crate::consumer::{self, drive::Limits, metrics::Metrics as ConsumerMetrics, sink::Sink};
use crate::gateway::auth::Auth;
use crate::gateway::hub::Hub;
use crate::gateway::{self, Gateway};
use crate::scraper::health::Monitor;
use crate::scraper::{self, Scraper};

/// Records kept per topic on the in-process bus: the gateway's replay buffer fits, and a consumer pausing for
/// a database hiccup of a few seconds catches up without losing any.
const BUS_CAPACITY: usize = 65_536;
/// How long the producer gets to deliver what it holds on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between health assessments (the scraper mode's is 1 s).
const MONITOR_TICK: Duration = Duration::from_millis(250);

/// The in-process stream topic as the gateway hub's input.
fn bus_records(sub: Subscription) -> impl futures::Stream<Item = Record> {
    futures::stream::unfold(sub, |mut sub| async move {
        loop {
            match sub.recv().await {
                Ok(r) => return Some((r, sub)),
                Err(RecvError::Lagged { missed }) => tracing::warn!(missed, "the gateway fell behind the bus"),
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// Run standalone mode until Ctrl-C or SIGTERM: then the gateway tells its clients and drains, the sources
/// stop, the producer flushes and the consumer stores its last batch.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let p = pipeline(&opts)?;
    let cfg = WorkerConfig::for_pipeline(&p)?;

    let mut registry = Registry::default();
    let scraper_metrics = Arc::new(scraper::Metrics::register(&mut registry));
    let hub = Hub::new(gateway::hub_options(&cfg)?, Arc::new(gateway::metrics::Metrics::new(&mut registry)));
    let auth = Auth::from_config(&cfg.gateway)?;
    let health = Health::new();
    let listener = gateway::bind(opts.listen)?;
    let addr = listener.local_addr()?;

    // Provisioned before anything runs, as the operator does before it starts the workers.
    let reconciler = match &opts.timescale {
        Some(url) => {
            provision::prepare_schema(&p, url).await?;
            let (p, url) = (p.clone(), url.clone());
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(provision::RECONCILE_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    if let Err(e) = provision::prepare_schema(&p, &url).await {
                        tracing::warn!(error = %format!("{e:#}"), "reconciling the schema failed");
                    }
                }
            }))
        }
        None => None,
    };
    if opts.kafka.is_some() {
        provision::create_topics(&p, &cfg).await?;
    }

    // The sources' output and the gateway's input: the bus, or the broker.
    let bus = MemoryBus::new(BUS_CAPACITY);
    let tail_health = Health::new();
    let (publisher, kafka): (Arc<dyn Publisher>, Option<Arc<KafkaPublisher>>) = match &opts.kafka {
        None => {
            hub.start_partitions(&[(0, bus.end_offset(&cfg.kafka.stream_topic))]);
            let records = bus_records(bus.subscribe(&cfg.kafka.stream_topic, StartAt::Earliest));
            let h = hub.clone();
            tokio::spawn(async move { h.feed(records).await });
            tail_health.set_ready(true);
            (bus.clone(), None)
        }
        Some(_) => {
            let k = Arc::new(KafkaPublisher::new(
                &cfg.kafka,
                &ProducerOptions::default(),
                scraper_metrics.producer.clone(),
                None,
            )?);
            let (c, h, th) = (cfg.clone(), hub.clone(), tail_health.clone());
            tokio::spawn(async move {
                if let Err(e) = gateway::kafka::tail(c, h, th.clone()).await {
                    tracing::error!(error = %e, "the Kafka tail stopped");
                    th.set_live(false);
                }
            });
            (k.clone(), Some(k))
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let consumer_health = Health::new();
    let consumer = match &opts.timescale {
        Some(url) => {
            let storage = cfg.storage.clone().expect("--timescale adds storage to the pipeline");
            let sink = Sink::new(url, &storage.schema, false)?;
            let metrics = ConsumerMetrics::new(&mut registry);
            let (h, s) = (consumer_health.clone(), stop.clone());
            Some(match &opts.kafka {
                None => {
                    let sub = bus.subscribe(&cfg.kafka.raw_topic, StartAt::Earliest);
                    consumer::spawn_on_bus(sub, sink, metrics, h, Limits::of(&cfg.consumer), s)
                }
                Some(_) => consumer::spawn_on_kafka(&cfg, sink, metrics, h, s)?,
            })
        }
        None => {
            consumer_health.set_ready(true);
            None
        }
    };
    tokio::spawn(hub.clone().housekeeping());
    let scraper = Scraper::start(&cfg, publisher.clone(), scraper_metrics.clone());

    let monitor = tokio::spawn(
        Monitor {
            statuses: scraper.statuses.clone(),
            publisher: publisher.clone(),
            kafka: kafka.clone(),
            others: vec![tail_health.clone(), consumer_health.clone()],
            metrics: scraper_metrics.clone(),
            health: health.clone(),
            tick: MONITOR_TICK,
        }
        .run(),
    );

    let gw = Arc::new(Gateway { hub: hub.clone(), auth });
    // The history API over the same database as the consumer, when storing.
    let api = match (&opts.timescale, &cfg.storage) {
        (Some(url), Some(storage)) => {
            Some(crate::history::router(crate::history::History::new(url, &storage.schema, &mut registry)?))
        }
        _ => None,
    };
    let app = gateway::router(gw, registry, health, &cfg.gateway.cors_origins, api);
    print!("{}", banner::banner(&p, &cfg, &opts, addr));
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let served = gateway::serve(listener, app, hub, cryptoviz_runtime::health::shutdown_signal()).await;
    tracing::info!("stopping: sources, producer flush, consumer");
    monitor.abort();
    if let Some(r) = reconciler {
        r.abort();
    }
    scraper.stop();
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(FLUSH_TIMEOUT)).await?;
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = consumer {
        let _ = c.await;
    }
    tracing::info!("stopped");
    served
}
