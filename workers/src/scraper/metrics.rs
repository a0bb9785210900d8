//! The scraper's metrics: one struct, every family registered once under `cryptoviz_scraper` (the producer's
//! under `cryptoviz_scraper_producer`). Every label set is bounded: sources and reasons are fixed lists.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::bus::kafka::ProducerMetrics;

/// `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Source name.
    pub source: &'static str,
}

/// `{source, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Source name.
    pub source: &'static str,
    /// Why (a fixed list per metric).
    pub reason: &'static str,
}

/// `{source, role}`: the topic's role (`raw` or `stream`) rather than its name, to keep labels bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// Source name.
    pub source: &'static str,
    /// `raw` or `stream`.
    pub role: &'static str,
}

/// Every scraper metric.
pub struct Metrics {
    /// Payloads (WebSocket frames, response bodies) received.
    pub payloads_received: Family<SourceLabels, Counter>,
    /// Normalised messages parsed from payloads (or generated), before dedup.
    pub received: Family<SourceLabels, Counter>,
    /// Records accepted by the producer, by topic role.
    pub produced: Family<RoleLabels, Counter>,
    /// Payloads or messages lost, by reason (parse errors, producer queue full, refused).
    pub dropped: Family<ReasonLabels, Counter>,
    /// Messages withheld on purpose: `duplicate_trade`, `unchanged_tick`.
    pub deduplicated: Family<ReasonLabels, Counter>,
    /// Alerts emitted.
    pub alerts: Family<SourceLabels, Counter>,
    /// 1 while the source delivers, 0 otherwise.
    pub source_up: Family<SourceLabels, Gauge>,
    /// Reconnects, by why the connection ended.
    pub reconnects: Family<ReasonLabels, Counter>,
    /// Failed requests and connection attempts, by reason.
    pub request_errors: Family<ReasonLabels, Counter>,
    /// Duration of REST requests and WebSocket handshakes.
    pub request_duration: Family<SourceLabels, Histogram>,
    /// Unix time of the last payload per source (age = `time() - value`).
    pub last_message: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// Records in the producer's buffer, not yet acknowledged.
    pub queue_depth: Gauge,
    /// Delivery reports.
    pub producer: ProducerMetrics,
}

impl Metrics {
    /// Register every family in `registry`, under `cryptoviz_scraper`.
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("cryptoviz_scraper");
        let m = Metrics {
            payloads_received: Family::default(),
            received: Family::default(),
            produced: Family::default(),
            dropped: Family::default(),
            deduplicated: Family::default(),
            alerts: Family::default(),
            source_up: Family::default(),
            reconnects: Family::default(),
            request_errors: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12))),
            last_message: Family::default(),
            queue_depth: Gauge::default(),
            producer: ProducerMetrics::register(r.sub_registry_with_prefix("producer")),
        };
        r.register("payloads_received", "Payloads received", m.payloads_received.clone());
        r.register("messages_received", "Messages parsed, before dedup", m.received.clone());
        r.register("messages_produced", "Records handed to the producer", m.produced.clone());
        r.register("messages_dropped", "Payloads or messages lost, by reason", m.dropped.clone());
        r.register("messages_deduplicated", "Messages withheld as repeats", m.deduplicated.clone());
        r.register("alerts", "Price-move alerts emitted", m.alerts.clone());
        r.register("source_up", "Whether the source delivers", m.source_up.clone());
        r.register("reconnects", "Stream reconnects, by cause", m.reconnects.clone());
        r.register("request_errors", "Failed requests, by reason", m.request_errors.clone());
        r.register(
            "request_duration_seconds",
            "REST request and WebSocket handshake duration",
            m.request_duration.clone(),
        );
        r.register(
            "last_message_timestamp_seconds",
            "Unix time of the last payload from the source",
            m.last_message.clone(),
        );
        r.register("producer_queue_depth", "Records not yet acknowledged", m.queue_depth.clone());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    /// The names Prometheus stores, as the dashboards, the alert rules and the integration tests query them.
    #[test]
    fn exports_exactly_the_documented_names() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        // A family without a series exports nothing: one series each.
        let (source, reason) = ("kraken", "closed");
        let _ = m.payloads_received.get_or_create(&SourceLabels { source });
        let _ = m.received.get_or_create(&SourceLabels { source });
        let _ = m.produced.get_or_create(&RoleLabels { source, role: "raw" });
        let _ = m.dropped.get_or_create(&ReasonLabels { source, reason });
        let _ = m.deduplicated.get_or_create(&ReasonLabels { source, reason });
        let _ = m.alerts.get_or_create(&SourceLabels { source });
        let _ = m.source_up.get_or_create(&SourceLabels { source });
        let _ = m.reconnects.get_or_create(&ReasonLabels { source, reason });
        let _ = m.request_errors.get_or_create(&ReasonLabels { source, reason });
        let _ = m.request_duration.get_or_create(&SourceLabels { source });
        let _ = m.last_message.get_or_create(&SourceLabels { source });
        let _ = m.producer.delivery_errors.get_or_create(&vec![("code", "timeout".to_owned())]);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| match l.split_once(' ') {
                Some((name, "counter")) => format!("{name}_total"),
                Some((name, _)) => name.to_owned(),
                None => panic!("a TYPE line without a type: {l}"),
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "cryptoviz_scraper_alerts_total",
                "cryptoviz_scraper_last_message_timestamp_seconds",
                "cryptoviz_scraper_messages_deduplicated_total",
                "cryptoviz_scraper_messages_dropped_total",
                "cryptoviz_scraper_messages_produced_total",
                "cryptoviz_scraper_messages_received_total",
                "cryptoviz_scraper_payloads_received_total",
                "cryptoviz_scraper_producer_ack_latency_seconds",
                "cryptoviz_scraper_producer_acked_total",
                "cryptoviz_scraper_producer_delivery_errors_total",
                "cryptoviz_scraper_producer_queue_depth",
                "cryptoviz_scraper_reconnects_total",
                "cryptoviz_scraper_request_duration_seconds",
                "cryptoviz_scraper_request_errors_total",
                "cryptoviz_scraper_source_up",
            ]
        );
    }
}
