//! Standalone mode: the scraper and the gateway (and the consumer when a database is given) in one
//! process, with no cluster, broker or database needed. A newcomer's first command.
//!
//! It reads the same pipeline description as the operator — a CryptoPipeline manifest (`-f`), or a built-in
//! one (synthetic market, BTC/ETH/SOL) adjusted by flags — checks it as the apiserver would
//! ([`cryptoviz_crds::validate`]), and renders it with [`WorkerConfig::for_pipeline`], the function the
//! operator uses for the ConfigMap. The workers then run the cluster code paths (sources, normalisation,
//! dedup, alerts, the gateway hub): only the transport changes, an in-process [`MemoryBus`] instead of Kafka.
//!
//! - `--kafka <bootstrap>` produces to the real topics the rendered configuration names (created when missing
//!   with the partitions, replication and retention the pipeline declares) and the gateway tails the stream
//!   topic from the broker, exactly as in the cluster.
//! - `--timescale <url>` stores the raw feed with the consumer's decoder and database writer. The schema must
//!   exist: it is created by the operator's storage reconciliation, which standalone mode does not run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use cryptoviz_crds::config::{WorkerConfig, api_key_env};
use cryptoviz_crds::validate::{self, FieldError, ManifestError};
use cryptoviz_crds::{CryptoPipeline, CryptoPipelineSpec, SecretKeyRef, SourceKind, SourceSpec, TopicRole};
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use crate::bus::kafka::{KafkaPublisher, ProducerOptions, client_config};
use crate::bus::memory::{MemoryBus, RecvError, StartAt, Subscription};
use crate::bus::{OutRecord, PublishError, Publisher, Record};
use crate::consumer::batch::{self, Batch, Entry, Row};
use crate::consumer::metrics::{Metrics as ConsumerMetrics, ReasonLabels, TableLabels};
use crate::consumer::sink::Sink;
use crate::gateway::auth::Auth;
use crate::gateway::hub::Hub;
use crate::gateway::{self, Gateway};
use crate::scraper::{self, Scraper};
use cryptoviz_runtime::health::Health;

/// Records kept per topic on the in-process bus: the gateway's replay buffer fits, and a consumer pausing for
/// a database hiccup of a few seconds catches up without losing any.
const BUS_CAPACITY: usize = 65_536;
/// Name and namespace of the built-in pipeline (its topics are `default.standalone.raw` and so on).
const DEFAULT_NAME: &str = "standalone";
/// `spec.kafka.bootstrapServers` of the built-in pipeline: never dialled (the in-process bus replaces Kafka).
const IN_PROCESS: &str = "in-process";
/// How long the broker gets to answer topic creation before standalone mode gives up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the producer gets to deliver what it holds on shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff of the in-process consumer while the database fails: doubles from the first to the last value.
const DB_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(15));

/// Flags of `cryptoviz-worker standalone`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// A CryptoPipeline manifest (as applied to a cluster). Default: a synthetic market on BTC, ETH and SOL.
    #[arg(short = 'f', long = "file", value_name = "MANIFEST")]
    pub file: Option<PathBuf>,
    /// Symbols to follow, comma-separated (replaces the pipeline's), e.g. `BTC,ETH`.
    #[arg(long, value_delimiter = ',', value_name = "SYMBOLS")]
    pub symbols: Vec<String>,
    /// A source to scrape (repeatable; replaces the pipeline's sources): synthetic, coingecko, kraken,
    /// binance, coinmarketcap (key in CRYPTOVIZ_COINMARKETCAP_API_KEY).
    #[arg(long = "source", value_name = "KIND", value_parser = parse_source)]
    pub sources: Vec<SourceKind>,
    /// Ticks per second per symbol of the synthetic source.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Where the live page, `/stream`, `/metrics` and `/health` are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Use this Kafka cluster (`host:port[,…]`) instead of the in-process bus.
    #[arg(long, value_name = "BOOTSTRAP")]
    pub kafka: Option<String>,
    /// Store the raw feed in this TimescaleDB / PostgreSQL database (its schema must exist).
    #[arg(long, value_name = "URL")]
    pub timescale: Option<String>,
}

fn parse_source(s: &str) -> Result<SourceKind, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_ascii_lowercase()))
        .map_err(|_| format!("unknown source {s:?}: one of synthetic, coingecko, kraken, binance, coinmarketcap"))
}

/// A pipeline file or flags that do not describe a valid CryptoPipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read or is not YAML of the right shape.
    #[error("{file}: {message}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// Fields the apiserver would refuse, each with its path.
    #[error("{source_name} is not a valid CryptoPipeline:\n{}", list(.errors))]
    Invalid {
        /// The file, or `the flags`.
        source_name: String,
        /// What is wrong, field by field.
        errors: Vec<FieldError>,
    },
    /// A flag that does not apply to this pipeline.
    #[error("{0}")]
    Flag(String),
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// The built-in pipeline: a seeded synthetic market on BTC, ETH and SOL in USD.
pub fn default_pipeline() -> CryptoPipeline {
    let spec: CryptoPipelineSpec = serde_json::from_value(serde_json::json!({
        "symbols": ["BTC", "ETH", "SOL"],
        "sources": [{"kind": "synthetic"}],
        "kafka": {"bootstrapServers": IN_PROCESS},
    }))
    .expect("the built-in pipeline parses");
    let mut p = CryptoPipeline::new(DEFAULT_NAME, spec);
    p.metadata.namespace = Some("default".into());
    p
}

/// Read a CryptoPipeline manifest as it would be applied: header, unknown fields and the CRD's rules checked.
pub fn read_manifest(path: &Path) -> Result<CryptoPipeline, PipelineError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Unreadable { file: file.clone(), message: e.to_string() })?;
    validate::parse_manifest(&text).map_err(|e| match e {
        ManifestError::Unreadable(message) => PipelineError::Unreadable { file, message },
        ManifestError::Invalid(errors) => PipelineError::Invalid { source_name: file, errors },
    })
}

/// The pipeline standalone mode runs: the manifest (or the built-in one) with the flags applied, validated.
pub fn pipeline(opts: &Options) -> Result<CryptoPipeline, PipelineError> {
    let mut p = match &opts.file {
        Some(f) => read_manifest(f)?,
        None => default_pipeline(),
    };
    let s = &mut p.spec;
    if !opts.symbols.is_empty() {
        // Tickers are upper case on the wire; users type them either way.
        s.symbols = opts.symbols.iter().map(|x| x.trim().to_ascii_uppercase()).collect();
    }
    if !opts.sources.is_empty() {
        let old = std::mem::take(&mut s.sources);
        s.sources = opts
            .sources
            .iter()
            .map(|&kind| old.iter().find(|o| o.kind == kind).cloned().unwrap_or_else(|| source(kind)))
            .collect();
    }
    if let Some(rate) = opts.rate {
        let synthetic: Vec<_> = s.sources.iter_mut().filter(|x| x.kind == SourceKind::Synthetic).collect();
        if synthetic.is_empty() {
            return Err(PipelineError::Flag(
                "--rate applies to the synthetic source, which this pipeline has not".into(),
            ));
        }
        for x in synthetic {
            x.rate = Some(rate);
        }
    }
    if let Some(k) = &opts.kafka {
        s.kafka.bootstrap_servers = k.clone();
    }
    if opts.timescale.is_some() && s.timescale.is_none() {
        s.timescale = Some(
            serde_json::from_value(serde_json::json!({"connectionSecretRef": {"name": DEFAULT_NAME, "key": "url"}}))
                .expect("a timescale spec parses"),
        );
    }
    let errors = validate::validate(&p);
    if !errors.is_empty() {
        let source_name = opts.file.as_ref().map_or("the flags".into(), |f| format!("{} with the flags", f.display()));
        return Err(PipelineError::Invalid { source_name, errors });
    }
    Ok(p)
}

/// A source given by `--source`: API keys come from the variable the cluster would set from the Secret.
fn source(kind: SourceKind) -> SourceSpec {
    let key = match kind {
        SourceKind::Coinmarketcap => true,
        SourceKind::Coingecko => std::env::var_os(api_key_env(kind)).is_some(),
        _ => false,
    };
    SourceSpec {
        kind,
        poll_interval: None,
        api_key_secret_ref: key.then(|| SecretKeyRef { name: DEFAULT_NAME.into(), key: "api-key".into() }),
        base_url: None,
        rate: None,
        seed: None,
    }
}

/// Sends to Kafka, and the raw topic to the in-process bus too, for the in-process consumer.
struct Tee {
    kafka: Arc<KafkaPublisher>,
    local: Arc<MemoryBus>,
    raw: String,
}

impl Publisher for Tee {
    fn publish(&self, r: OutRecord<'_>) -> Result<(), PublishError> {
        self.kafka.publish(r)?;
        if r.topic == self.raw {
            self.local.publish(r)?;
        }
        Ok(())
    }

    fn queue_depth(&self) -> usize {
        self.kafka.queue_depth()
    }

    fn connected(&self) -> bool {
        self.kafka.connected()
    }

    fn flush(&self, timeout: Duration) {
        self.kafka.flush(timeout);
    }
}

/// Create the pipeline's topics that are missing, as the pipeline declares them; existing ones are used as
/// they are (in a cluster the operator owns them).
async fn ensure_topics(p: &CryptoPipeline, cfg: &WorkerConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&cfg.kafka).create().context("creating the Kafka admin client")?;
    let specs: Vec<_> = TopicRole::ALL
        .iter()
        .map(|&role| {
            let t = p.topic_spec(role);
            let retention = cryptoviz_crds::duration::parse_millis(&t.retention).expect("validated").to_string();
            (p.topic_name(role), t.partitions, t.replication_factor, retention, t.config.clone())
        })
        .collect();
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, partitions, rf, retention, config)| {
            let mut t = NewTopic::new(name, *partitions, TopicReplication::Fixed(*rf)).set("retention.ms", retention);
            for (k, v) in config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let results = tokio::time::timeout(ADMIN_TIMEOUT + Duration::from_secs(1), admin.create_topics(&topics, &opts))
        .await
        .map_err(|_| {
            anyhow::anyhow!("Kafka at {} did not answer within {ADMIN_TIMEOUT:?}", cfg.kafka.bootstrap_servers)
        })?
        .with_context(|| format!("creating topics on {}", cfg.kafka.bootstrap_servers))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::info!(topic = %name, "topic exists"),
            Err((name, code)) => anyhow::bail!("creating topic {name} on {}: {code}", cfg.kafka.bootstrap_servers),
        }
    }
    Ok(())
}

/// Fail fast, with the remedy, when the database lacks the pipeline's tables.
async fn check_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("the database did not answer within 10 s"))?
        .context("connecting to the database")?;
    let (ticks, trades): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT to_regclass($1)::text, to_regclass($2)::text")
            .bind(format!("{schema}.ticks"))
            .bind(format!("{schema}.trades"))
            .fetch_one(&mut conn)
            .await
            .context("looking up the pipeline's tables")?;
    let _ = conn.close().await;
    if ticks.is_none() || trades.is_none() {
        anyhow::bail!(
            "the database has no {schema}.ticks / {schema}.trades tables: standalone mode does not create the \
             schema, the operator's storage reconciliation does (apply the pipeline with the operator once)"
        );
    }
    Ok(())
}

/// The in-process consumer: the raw feed from the bus, decoded and written with the consumer's own code
/// (batches, `ON CONFLICT DO NOTHING` inserts), until `stop`; the pending batch is flushed on the way out.
async fn consume(
    mut sub: Subscription,
    sink: Sink,
    metrics: ConsumerMetrics,
    batch_size: usize,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Batch::default();
    let mut backoff = DB_BACKOFF.0;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let wake = retry_at.or_else(|| batch.deadline(interval).map(tokio::time::Instant::from_std));
        tokio::select! {
            r = sub.recv(), if retry_at.is_none() => match r {
                Ok(rec) => batch.push(entry(&rec)),
                Err(RecvError::Lagged { missed }) => {
                    tracing::warn!(missed, "the consumer fell behind the in-process bus: records not stored");
                }
                Err(RecvError::Closed) => break,
            },
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let due = retry_at.map_or_else(|| batch.due(batch_size, interval), |t| tokio::time::Instant::now() >= t);
        if !due {
            continue;
        }
        match store(&sink, &metrics, &batch).await {
            Ok(()) => {
                batch = Batch::default();
                backoff = DB_BACKOFF.0;
                retry_at = None;
            }
            Err(()) => {
                retry_at = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(DB_BACKOFF.1);
            }
        }
    }
    // The sources stopped before `stop`: what is on the bus now is everything, so take it all in.
    while let Some(Ok(rec)) = futures::FutureExt::now_or_never(sub.recv()) {
        batch.push(entry(&rec));
    }
    if store(&sink, &metrics, &batch).await.is_err() {
        tracing::warn!(records = batch.len(), "final flush failed: those records are not stored");
    }
    sink.close().await;
}

fn entry(rec: &Record) -> Entry {
    Entry {
        partition: rec.partition,
        offset: rec.offset,
        timestamp_ms: Some(rec.timestamp_ms),
        key: rec.key.as_ref().map(|k| k.to_vec()),
        payload: rec.payload.to_vec(),
        row: batch::decode(Some(&rec.payload)),
    }
}

/// Write one batch. Rejected records have no dead-letter topic in-process: they are counted and logged.
async fn store(sink: &Sink, metrics: &ConsumerMetrics, batch: &Batch) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    match sink.write(&batch.ticks(), &batch.trades()).await {
        Ok(written) => {
            let (ticks, trades, _) = batch.counts();
            for (table, n, total) in [("ticks", written.ticks, ticks), ("trades", written.trades, trades)] {
                metrics.rows_written.get_or_create(&TableLabels { table }).inc_by(n);
                metrics.rows_duplicate.get_or_create(&TableLabels { table }).inc_by(total as u64 - n);
            }
            for e in batch.entries() {
                if let Row::Rejected(reason) = &e.row {
                    metrics.dlq.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
                    tracing::warn!(offset = e.offset, %reason, "record rejected (no dead-letter topic in-process)");
                }
            }
            metrics.batch_size.observe(batch.len() as f64);
            metrics.flush_duration.observe(started.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) if e.is_data_error() => {
            // Retrying cannot succeed; the cluster consumer isolates the rows into its dead-letter topic.
            tracing::warn!(error = %e, records = batch.len(), "the database refused the batch: dropped");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, records = batch.len(), "storing the batch failed: retrying");
            metrics.db_errors.get_or_create(&crate::consumer::metrics::KindLabels { kind: e.kind() }).inc();
            Err(())
        }
    }
}

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

/// What the user reads first: where to look, and what runs.
fn banner(p: &CryptoPipeline, cfg: &WorkerConfig, opts: &Options, addr: SocketAddr) -> String {
    let sources: Vec<String> = cfg
        .sources
        .iter()
        .map(|s| match (s.kind, s.rate) {
            (SourceKind::Synthetic, r) => {
                format!("synthetic ({}/s per symbol)", r.unwrap_or(crate::sources::synthetic::DEFAULT_RATE))
            }
            (k, _) => k.as_str().to_string(),
        })
        .collect();
    let transport = match &opts.kafka {
        None => "in-process bus (no broker)".to_string(),
        Some(k) => format!("Kafka {k}: topics {}, {}", cfg.kafka.raw_topic, cfg.kafka.stream_topic),
    };
    let storage = match (&cfg.storage, &opts.timescale) {
        (Some(s), Some(_)) => format!("consumer into schema {}", s.schema),
        (Some(_), None) => "off (the pipeline declares timescale: pass --timescale <url> to store)".into(),
        (None, _) => "off (--timescale <url> to store)".into(),
    };
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let name = p.metadata.name.as_deref().unwrap_or(DEFAULT_NAME);
    format!(
        "\nCryptoViz standalone — pipeline {ns}/{name}\n\
         \x20 symbols    {symbols} (quote {quote})\n\
         \x20 sources    {sources}\n\
         \x20 transport  {transport}\n\
         \x20 storage    {storage}\n\
         \n\
         \x20 live page  http://{addr}/\n\
         \x20 stream     curl -N http://{addr}/stream\n\
         \x20 metrics    http://{addr}/metrics\n\
         \n\
         Ctrl-C to stop.\n",
        symbols = cfg.symbols.join(", "),
        quote = cfg.quote,
        sources = sources.join(", "),
    )
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
    let auth = Auth::from_env(cfg.gateway.jwt_key_env.as_deref())?;
    let health = Health::new();
    let listener = gateway::bind(opts.listen)?;
    let addr = listener.local_addr()?;

    let bus = MemoryBus::new(BUS_CAPACITY);
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer = match &opts.timescale {
        Some(url) => {
            let storage = cfg.storage.clone().expect("--timescale adds storage to the pipeline");
            check_schema(url, &storage.schema).await?;
            let sink = Sink::new(url, &storage.schema, false)?;
            let metrics = ConsumerMetrics::new(&mut registry);
            let sub = bus.subscribe(&cfg.kafka.raw_topic, StartAt::Earliest);
            let (size, interval) =
                (cfg.consumer.batch_size.max(1) as usize, Duration::from_millis(cfg.consumer.flush_interval_ms.max(1)));
            Some(tokio::spawn(consume(sub, sink, metrics, size, interval, stop_rx.clone())))
        }
        None => None,
    };

    // The gateway's input: the stream topic, from the bus or from the broker.
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
            ensure_topics(&p, &cfg).await?;
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
            let publisher: Arc<dyn Publisher> = if consumer.is_some() {
                Arc::new(Tee { kafka: k.clone(), local: bus.clone(), raw: cfg.kafka.raw_topic.clone() })
            } else {
                k.clone()
            };
            (publisher, Some(k))
        }
    };
    tokio::spawn(hub.clone().housekeeping());
    let scraper = Scraper::start(&cfg, publisher.clone(), scraper_metrics.clone());

    let monitor = {
        let (publisher, health, tail_health, kafka) =
            (publisher.clone(), health.clone(), tail_health.clone(), kafka.clone());
        let (metrics, statuses) = (scraper_metrics.clone(), scraper.statuses.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                // Metadata requests block: off the runtime's threads, every 5 s or while disconnected.
                if let Some(k) = &kafka
                    && (n.is_multiple_of(20) || !k.connected())
                {
                    let k = k.clone();
                    let _ = tokio::task::spawn_blocking(move || k.probe(Duration::from_secs(2))).await;
                }
                n += 1;
                metrics.queue_depth.set(publisher.queue_depth() as i64);
                let (live, ready) =
                    scraper::assess_health(&statuses, publisher.connected(), Utc::now().timestamp_millis());
                health.set_live(live && tail_health.live.load(std::sync::atomic::Ordering::Relaxed));
                health.set_ready(ready && tail_health.ready.load(std::sync::atomic::Ordering::Relaxed));
            }
        })
    };

    let gw = Arc::new(Gateway { hub: hub.clone(), auth });
    let app = gateway::router(gw, registry, health, &cfg.gateway.cors_origins);
    print!("{}", banner(&p, &cfg, &opts, addr));
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let served = gateway::serve(listener, app, hub, cryptoviz_runtime::health::shutdown_signal()).await;
    tracing::info!("stopping: sources, producer flush, consumer");
    monitor.abort();
    scraper.stop();
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || p.flush(FLUSH_TIMEOUT)).await?;
    let _ = stop_tx.send(true);
    if let Some(c) = consumer {
        let _ = c.await;
    }
    tracing::info!("stopped");
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            o: Options,
        }
        let mut argv = vec!["standalone"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().o
    }

    #[test]
    fn defaults_are_a_synthetic_market_on_three_symbols() {
        let p = pipeline(&opts(&[])).unwrap();
        let cfg = WorkerConfig::for_pipeline(&p).unwrap();
        assert_eq!(cfg.symbols, ["BTC", "ETH", "SOL"]);
        assert_eq!(cfg.sources.len(), 1);
        assert_eq!(cfg.sources[0].kind, SourceKind::Synthetic);
        assert_eq!(cfg.kafka.stream_topic, "default.standalone.stream");
        assert!(cfg.storage.is_none());
    }

    #[test]
    fn flags_replace_symbols_sources_and_rate() {
        let o = opts(&["--symbols", "btc,ETH", "--source", "synthetic", "--source", "Kraken", "--rate", "50"]);
        let cfg = WorkerConfig::for_pipeline(&pipeline(&o).unwrap()).unwrap();
        assert_eq!(cfg.symbols, ["BTC", "ETH"]);
        let kinds: Vec<_> = cfg.sources.iter().map(|s| (s.kind, s.rate)).collect();
        assert_eq!(kinds, [(SourceKind::Synthetic, Some(50)), (SourceKind::Kraken, None)]);
        let e = pipeline(&opts(&["--source", "kraken", "--rate", "5"])).unwrap_err();
        assert!(e.to_string().contains("--rate applies to the synthetic source"), "{e}");
        let e = pipeline(&opts(&["--symbols", "BTC,BTC"])).unwrap_err().to_string();
        assert!(e.contains("spec.symbols[1]: duplicate value \"BTC\""), "{e}");
        assert!(parse_source("bitstamp").is_err());
    }

    #[test]
    fn timescale_adds_storage_with_the_operators_schema_name() {
        let cfg = WorkerConfig::for_pipeline(&pipeline(&opts(&["--timescale", "postgres://x"])).unwrap()).unwrap();
        assert_eq!(cfg.storage.unwrap().schema, "cv_standalone");
    }

    #[test]
    fn the_banner_names_every_url() {
        let o = opts(&[]);
        let p = pipeline(&o).unwrap();
        let cfg = WorkerConfig::for_pipeline(&p).unwrap();
        let b = banner(&p, &cfg, &o, "127.0.0.1:8080".parse().unwrap());
        for want in
            ["http://127.0.0.1:8080/\n", "curl -N http://127.0.0.1:8080/stream", "http://127.0.0.1:8080/metrics"]
        {
            assert!(b.contains(want), "{want} in {b}");
        }
    }
}
