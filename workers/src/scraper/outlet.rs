//! The hand-over from a source to the bus: [`Outlet`], one per source.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::WorkerConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::alerts::AlertDetector;
use super::dedup::{TRADE_IDS_PER_SYMBOL, TickFilter, TradeDedup};
use super::health::SourceStatus;
use super::metrics::{Metrics, ReasonLabels, RoleLabels, SourceLabels};
use crate::bus::{OutRecord, Publisher};
use crate::message::{Alert, Message, SCHEMA_VERSION};
use crate::sources::parsed::{Downstream, ParseError, Parsed};

/// Topic names by role.
#[derive(Clone, Debug)]
pub struct TopicNames {
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

/// One source's way to the bus: it counts what the source parsed, withholds repeated trades and
/// unchanged ticks, derives price-move alerts and hands each record to the [`Publisher`] (raw and stream
/// topics; alerts on the stream topic only). Shared by the source's connections.
pub struct Outlet {
    kind: SourceKind,
    metrics: Arc<Metrics>,
    /// This source's series of the metrics updated for every message, looked up once: a family lookup
    /// takes a lock and hashes the labels, several times per message otherwise.
    hot: HotMetrics,
    publisher: Arc<dyn Publisher>,
    topics: TopicNames,
    status: Arc<SourceStatus>,
    processor: Mutex<Processor>,
}

impl Outlet {
    /// The outlet for one source, and the status it keeps up to date.
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
        let outlet = Outlet {
            kind,
            hot: HotMetrics::new(&metrics, kind.as_str()),
            metrics,
            publisher,
            topics: TopicNames { raw: cfg.kafka.raw_topic.clone(), stream: cfg.kafka.stream_topic.clone() },
            status: status.clone(),
            processor: Mutex::new(processor),
        };
        (outlet, status)
    }

    fn source(&self) -> SourceLabels {
        SourceLabels { source: self.kind.as_str() }
    }

    fn reason(&self, reason: &'static str) -> ReasonLabels {
        ReasonLabels { source: self.kind.as_str(), reason }
    }

    /// Count messages obtained (for the synthetic source, which has no payloads, this is also what keeps
    /// its last-message age fresh: the NoData alert and the age panel read it).
    pub fn received(&self, n: u64) {
        let hot = &self.hot;
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
            let mut p = self.processor.lock().expect("processor lock");
            for msg in messages {
                let keep = match &msg {
                    Message::Trade(t) => p.trades.first_sighting(&t.symbol, &t.trade_id),
                    Message::Tick(t) => p.ticks.as_mut().is_none_or(|f| f.changed(t)),
                    Message::Alert(_) => true,
                };
                if !keep {
                    let why = if matches!(msg, Message::Trade(_)) { "duplicate_trade" } else { "unchanged_tick" };
                    self.metrics.deduplicated.get_or_create(&self.reason(why)).inc();
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
                                source: self.kind,
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
            [("cv-type", msg.kind().as_bytes()), ("cv-source", self.kind.as_str().as_bytes())];
        let hot = &self.hot;
        let mut roles: [Option<(&str, &Counter)>; 2] = [
            Some((self.topics.raw.as_str(), &hot.produced_raw)),
            Some((self.topics.stream.as_str(), &hot.produced_stream)),
        ];
        if let Message::Alert(_) = msg {
            // Alerts are derived, not market data: the stream topic only.
            roles[0] = None;
            self.metrics.alerts.get_or_create(&self.source()).inc();
        }
        for (topic, produced) in roles.into_iter().flatten() {
            let record = OutRecord { topic, key: msg.symbol().as_bytes(), payload: &payload, headers: &headers };
            match self.publisher.publish(record) {
                Ok(()) => {
                    produced.inc();
                }
                Err(e) => {
                    self.metrics.dropped.get_or_create(&self.reason(e.reason())).inc();
                    tracing::debug!(error = %e, topic, "record dropped");
                }
            }
        }
    }
}

impl Downstream for Outlet {
    /// Counts the payload, then emits its messages; a payload that did not parse is counted and skipped.
    fn payload(&self, received_at: DateTime<Utc>, bytes: usize, parsed: Result<Parsed, ParseError>) -> bool {
        let hot = &self.hot;
        hot.payloads_received.inc();
        hot.last_message.set(received_at.timestamp_millis() as f64 / 1000.0);
        match parsed {
            Ok(parsed) => {
                hot.received.inc_by(parsed.messages.len() as u64);
                self.emit(parsed.messages);
                parsed.reconnect
            }
            Err(e) => {
                self.metrics.dropped.get_or_create(&self.reason(e.reason())).inc();
                tracing::warn!(reason = e.reason(), error = %e, bytes, "payload skipped");
                false
            }
        }
    }

    fn generated(&self, messages: Vec<Message>) {
        self.received(messages.len() as u64);
        self.emit(messages);
    }

    fn set_up(&self, up: bool) {
        self.status.set_up(up);
        self.metrics.source_up.get_or_create(&self.source()).set(i64::from(up));
    }

    fn reconnecting(&self, reason: &'static str) {
        self.metrics.reconnects.get_or_create(&self.reason(reason)).inc();
    }

    fn request_failed(&self, reason: &'static str) {
        self.metrics.request_errors.get_or_create(&self.reason(reason)).inc();
        self.set_up(false);
    }

    fn observe_request(&self, took: Duration) {
        self.metrics.request_duration.get_or_create(&self.source()).observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::{MemoryBus, StartAt};
    use crate::message::{Decimal, Trade};
    use crate::scraper::test_config;
    use prometheus_client::registry::Registry;

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
    async fn outlet_dedups_alerts_once_and_routes_by_role() {
        let cfg = test_config(&["BTC"]);
        let bus = MemoryBus::new(100);
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let (outlet, _) = Outlet::new(SourceKind::Kraken, &cfg, bus.clone(), metrics.clone());
        outlet.emit(vec![trade("1", "100", 0), trade("2", "101", 1000)]);
        // A reconnect snapshot repeats both, then a 6% jump and a further rise.
        outlet.emit(vec![
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
}
