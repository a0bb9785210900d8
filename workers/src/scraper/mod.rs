//! The scraper: sources → normalised messages → dedup, tick suppression, alerts → the raw and stream topics.
//!
//! Each source runs in its own task with a [`Sink`] that parses its payloads, withholds repeats, detects
//! alerts and hands records to a [`Publisher`] (Kafka here, the in-process bus in standalone mode). Nothing
//! in the path blocks on the broker: a full producer buffer is a counted drop.

pub mod alerts;
pub mod dedup;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::WorkerConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::bus::kafka::{KafkaPublisher, ProducerOptions};
use crate::bus::{OutRecord, Publisher};
use crate::message::{Alert, Message, SCHEMA_VERSION};
use crate::sources::{self, Source};
use alerts::AlertDetector;
use cryptoviz_runtime::health::{self as server, Health};
use dedup::{TRADE_IDS_PER_SYMBOL, TickFilter, TradeDedup};
pub use metrics::Metrics;
use metrics::{ReasonLabels, RoleLabels, SourceLabels};

/// Liveness fails when every source has been down this long: a restart may help (DNS, stuck sockets).
pub const ALL_DOWN_LIMIT: Duration = Duration::from_secs(300);
/// Delay between source starts, so a restart does not hit every API in the same instant.
pub const STAGGER: Duration = Duration::from_millis(500);

/// Whether a source is delivering, and since when it is not.
#[derive(Debug)]
pub struct SourceStatus {
    /// Which source.
    pub kind: SourceKind,
    up: AtomicBool,
    /// Milliseconds since the epoch of the last up→down change (or start).
    down_since_ms: AtomicI64,
}

impl SourceStatus {
    fn new(kind: SourceKind) -> Self {
        SourceStatus { kind, up: AtomicBool::new(false), down_since_ms: AtomicI64::new(Utc::now().timestamp_millis()) }
    }

    /// Whether the source is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How long the source has been down (zero when up).
    pub fn down_for(&self, now_ms: i64) -> Duration {
        if self.is_up() {
            return Duration::ZERO;
        }
        Duration::from_millis((now_ms - self.down_since_ms.load(Ordering::Relaxed)).max(0) as u64)
    }
}

/// (live, ready) from the sources' states and the producer's connection.
pub fn assess_health(statuses: &[Arc<SourceStatus>], producer_connected: bool, now_ms: i64) -> (bool, bool) {
    let any_up = statuses.iter().any(|s| s.is_up());
    let all_down_too_long = !statuses.is_empty() && statuses.iter().all(|s| s.down_for(now_ms) > ALL_DOWN_LIMIT);
    (!all_down_too_long, producer_connected && any_up)
}

/// Topic names by role.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Everything: ticks and trades.
    pub raw: String,
    /// What the live gateway needs: ticks, trades and alerts.
    pub stream: String,
}

/// The per-source processing state: dedup, tick suppression, alerts. Pure, apart from the clock for alerts.
struct Processor {
    trades: TradeDedup,
    ticks: Option<TickFilter>,
    alerts: Option<(AlertDetector, u64)>,
}

/// One source's per-message series (handles share the family's series).
struct HotMetrics {
    payloads_received: Counter,
    received: Counter,
    last_message: Gauge<f64, AtomicU64>,
    produced_raw: Counter,
    produced_stream: Counter,
}

impl HotMetrics {
    fn new(m: &Metrics, source: &'static str) -> Self {
        let role = |role| m.produced.get_or_create(&RoleLabels { source, role }).clone();
        HotMetrics {
            payloads_received: m.payloads_received.get_or_create(&SourceLabels { source }).clone(),
            received: m.received.get_or_create(&SourceLabels { source }).clone(),
            last_message: m.last_message.get_or_create(&SourceLabels { source }).clone(),
            produced_raw: role("raw"),
            produced_stream: role("stream"),
        }
    }
}

/// Where a source hands its payloads and messages. Cheap to clone (one per connection).
#[derive(Clone)]
pub struct Sink(Arc<SinkInner>);

struct SinkInner {
    kind: SourceKind,
    metrics: Arc<Metrics>,
    /// This source's series of the metrics updated for every message, looked up once: a family lookup
    /// takes a lock and hashes the labels, several times per message otherwise.
    hot: HotMetrics,
    publisher: Arc<dyn Publisher>,
    topics: Topics,
    status: Arc<SourceStatus>,
    processor: Mutex<Processor>,
}

impl Sink {
    /// A sink for one source.
    pub fn new(
        kind: SourceKind,
        cfg: &WorkerConfig,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
    ) -> (Self, Arc<SourceStatus>) {
        let status = Arc::new(SourceStatus::new(kind));
        let processor = Processor {
            trades: TradeDedup::new(TRADE_IDS_PER_SYMBOL),
            ticks: cfg.scraper.suppress_unchanged_ticks.then(TickFilter::default),
            alerts: cfg.alerts.enabled.then(|| {
                (AlertDetector::new(cfg.alerts.threshold_percent, cfg.alerts.window_ms), cfg.alerts.window_ms)
            }),
        };
        let inner = SinkInner {
            kind,
            hot: HotMetrics::new(&metrics, kind.as_str()),
            metrics,
            publisher,
            topics: Topics { raw: cfg.kafka.raw_topic.clone(), stream: cfg.kafka.stream_topic.clone() },
            status: status.clone(),
            processor: Mutex::new(processor),
        };
        (Sink(Arc::new(inner)), status)
    }

    fn source(&self) -> SourceLabels {
        SourceLabels { source: self.0.kind.as_str() }
    }

    fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels { source: self.0.kind.as_str(), reason }
    }

    /// Parse one payload and emit its messages; a bad payload is counted and skipped. Returns true when
    /// the source asked to reconnect.
    pub fn frame(&self, source: &dyn Source, payload: &[u8]) -> bool {
        let now = Utc::now();
        let hot = &self.0.hot;
        hot.payloads_received.inc();
        hot.last_message.set(now.timestamp_millis() as f64 / 1000.0);
        match source.parse(payload, now) {
            Ok(parsed) => {
                hot.received.inc_by(parsed.messages.len() as u64);
                self.emit(parsed.messages);
                parsed.reconnect
            }
            Err(e) => {
                self.0.metrics.dropped.get_or_create(&self.reason(e.reason())).inc();
                tracing::warn!(reason = e.reason(), error = %e, bytes = payload.len(), "payload skipped");
                false
            }
        }
    }

    /// Count messages obtained (for the synthetic source, which has no payloads, this is also what keeps
    /// its last-message age fresh: the NoData alert and the age panel read it).
    pub fn received(&self, n: u64) {
        let hot = &self.0.hot;
        hot.received.inc_by(n);
        if n > 0 {
            hot.last_message.set(Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Dedup, suppress, detect alerts and publish.
    pub fn emit(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(messages.len());
        {
            let mut p = self.0.processor.lock().expect("processor lock");
            for msg in messages {
                let keep = match &msg {
                    Message::Trade(t) => p.trades.first_sighting(&t.symbol, &t.trade_id),
                    Message::Tick(t) => p.ticks.as_mut().is_none_or(|f| f.changed(t)),
                    Message::Alert(_) => true,
                };
                if !keep {
                    let why = if matches!(msg, Message::Trade(_)) { "duplicate_trade" } else { "unchanged_tick" };
                    self.0.metrics.deduplicated.get_or_create(&self.reason(why)).inc();
                    continue;
                }
                let price = match &msg {
                    Message::Trade(t) => Some((&t.price, t.exchange_time, &t.quote)),
                    Message::Tick(t) => Some((&t.price, t.exchange_time, &t.quote)),
                    Message::Alert(_) => None,
                };
                let alert = match (&mut p.alerts, price) {
                    (Some((detector, window_ms)), Some((price, time, quote))) => {
                        detector.observe(msg.symbol(), time.timestamp_millis(), price).map(|mv| {
                            Message::Alert(Alert {
                                v: SCHEMA_VERSION,
                                source: self.0.kind,
                                symbol: msg.symbol().to_owned(),
                                quote: quote.clone(),
                                from_price: mv.from,
                                to_price: price.clone(),
                                change_pct: mv.change_pct,
                                window_ms: *window_ms,
                                time: Utc::now(),
                            })
                        })
                    }
                    _ => None,
                };
                out.push(msg);
                out.extend(alert);
            }
        }
        for msg in &out {
            self.publish(msg);
        }
    }

    fn publish(&self, msg: &Message) {
        let payload = msg.to_json();
        let headers: [(&str, &[u8]); 2] =
            [("cv-type", msg.kind().as_bytes()), ("cv-source", self.0.kind.as_str().as_bytes())];
        let hot = &self.0.hot;
        let mut roles: [Option<(&str, &Counter)>; 2] = [
            Some((self.0.topics.raw.as_str(), &hot.produced_raw)),
            Some((self.0.topics.stream.as_str(), &hot.produced_stream)),
        ];
        if let Message::Alert(_) = msg {
            // Alerts are derived, not market data: the stream topic only.
            roles[0] = None;
            self.0.metrics.alerts.get_or_create(&self.source()).inc();
        }
        for (topic, produced) in roles.into_iter().flatten() {
            let record = OutRecord { topic, key: msg.symbol().as_bytes(), payload: &payload, headers: &headers };
            match self.0.publisher.publish(record) {
                Ok(()) => {
                    produced.inc();
                }
                Err(e) => {
                    self.0.metrics.dropped.get_or_create(&self.reason(e.reason())).inc();
                    tracing::debug!(error = %e, topic, "record dropped");
                }
            }
        }
    }

    /// The source delivers (or stopped).
    pub fn set_up(&self, up: bool) {
        let s = &self.0.status;
        if s.up.swap(up, Ordering::Relaxed) && !up {
            s.down_since_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
        self.0.metrics.source_up.get_or_create(&self.source()).set(i64::from(up));
    }

    /// A stream connection ended and will be re-established.
    pub fn reconnecting(&self, reason: &'static str) {
        self.0.metrics.reconnects.get_or_create(&self.reason(reason)).inc();
    }

    /// A request or connection attempt failed.
    pub fn request_failed(&self, reason: &'static str) {
        self.0.metrics.request_errors.get_or_create(&self.reason(reason)).inc();
        self.set_up(false);
    }

    /// A request or handshake completed in `d`.
    pub fn observe_request(&self, d: Duration) {
        self.0.metrics.request_duration.get_or_create(&self.source()).observe(d.as_secs_f64());
    }
}

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
            let (sink, status) = Sink::new(source.kind(), cfg, publisher.clone(), metrics.clone());
            statuses.push(status);
            let delay = STAGGER * i as u32;
            let span = tracing::info_span!("source", source = source.kind().as_str());
            tasks.push(tokio::spawn(
                async move {
                    tokio::time::sleep(delay).await;
                    tracing::info!("starting");
                    source.run(sink).await;
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

    let monitor = {
        let (publisher, health, metrics, statuses) =
            (publisher.clone(), health.clone(), metrics.clone(), scraper.statuses.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                // Metadata requests block: off the runtime's threads, every 5 s or while disconnected.
                if n.is_multiple_of(5) || !publisher.connected() {
                    let p = publisher.clone();
                    let _ = tokio::task::spawn_blocking(move || p.probe(Duration::from_secs(2))).await;
                }
                n += 1;
                metrics.queue_depth.set(publisher.queue_depth() as i64);
                let (live, ready) = assess_health(&statuses, publisher.connected(), Utc::now().timestamp_millis());
                health.set_live(live);
                health.set_ready(ready);
            }
        })
    };

    let served = server::serve(listen, server::router(registry, health), server::shutdown_signal()).await;
    tracing::info!("shutting down");
    monitor.abort();
    scraper.stop();
    tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(10))).await?;
    served
}

/// A configuration for unit tests: the given symbols in USD, one synthetic source, alerts off.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::{MemoryBus, StartAt};
    use crate::message::{Decimal, Trade};

    fn trade(id: &str, price: &str, ms: i64) -> Message {
        Message::Trade(Trade {
            v: 1,
            source: SourceKind::Kraken,
            symbol: "BTC".into(),
            quote: "USD".into(),
            trade_id: id.into(),
            price: Decimal::parse(price).unwrap(),
            quantity: Decimal::parse("1").unwrap(),
            side: None,
            exchange_time: chrono::DateTime::from_timestamp_millis(ms).unwrap(),
            received_at: Utc::now(),
        })
    }

    #[tokio::test]
    async fn sink_dedups_alerts_once_and_routes_by_role() {
        let cfg = test_config(&["BTC"]);
        let bus = MemoryBus::new(100);
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let (sink, _) = Sink::new(SourceKind::Kraken, &cfg, bus.clone(), metrics.clone());
        sink.emit(vec![trade("1", "100", 0), trade("2", "101", 1000)]);
        // A reconnect snapshot repeats both, then a 6% jump and a further rise.
        sink.emit(vec![
            trade("1", "100", 0),
            trade("2", "101", 1000),
            trade("3", "106", 2000),
            trade("4", "107", 3000),
        ]);
        assert_eq!(bus.end_offset("r"), 4, "four distinct trades on raw");
        assert_eq!(bus.end_offset("s"), 5, "and one alert on stream");
        let mut sub = bus.subscribe("s", StartAt::Earliest);
        let mut kinds = Vec::new();
        for _ in 0..5 {
            let r = sub.recv().await.unwrap();
            assert_eq!(r.key.as_deref(), Some(&b"BTC"[..]));
            kinds.push(Message::from_json(&r.payload).unwrap().kind());
        }
        assert_eq!(kinds, ["trade", "trade", "trade", "alert", "trade"]);
        let dup = metrics.deduplicated.get_or_create(&ReasonLabels { source: "kraken", reason: "duplicate_trade" });
        assert_eq!(dup.get(), 2);
    }

    #[test]
    fn health_needs_a_source_up_and_the_producer() {
        let a = Arc::new(SourceStatus::new(SourceKind::Kraken));
        let now = Utc::now().timestamp_millis();
        assert_eq!(assess_health(std::slice::from_ref(&a), true, now), (true, false));
        a.up.store(true, Ordering::Relaxed);
        assert_eq!(assess_health(std::slice::from_ref(&a), true, now), (true, true));
        assert_eq!(assess_health(std::slice::from_ref(&a), false, now), (true, false));
        a.up.store(false, Ordering::Relaxed);
        let later = now + ALL_DOWN_LIMIT.as_millis() as i64 + 1000;
        assert_eq!(assess_health(std::slice::from_ref(&a), true, later), (false, false));
    }
}
