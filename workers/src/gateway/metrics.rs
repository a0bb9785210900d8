//! The gateway's Prometheus metrics, registered once and shared by the hub and every connection.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a client was disconnected or refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `slow`, `max_clients`, `unauthorized`, `forbidden`.
    pub reason: &'static str,
}

/// Every gateway metric.
pub struct Metrics {
    /// Connected SSE clients.
    pub clients: Gauge,
    /// Records read from the stream topic.
    pub events_received: Counter,
    /// Events handed to a client connection (one per event per client).
    pub deliveries: Counter,
    /// Clients disconnected by the gateway, by reason.
    pub clients_dropped: Family<Reason, Counter>,
    /// Connections refused, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Event time (Kafka record timestamp) to hand-off to the client's connection.
    pub latency: Histogram,
}

impl Metrics {
    /// Create and register every family in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            clients: Gauge::default(),
            events_received: Counter::default(),
            deliveries: Counter::default(),
            clients_dropped: Family::default(),
            rejected: Family::default(),
            // 1 ms … ~16 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        };
        registry.register("cryptoviz_gateway_clients", "Connected SSE clients", m.clients.clone());
        registry.register(
            "cryptoviz_gateway_events_received",
            "Records read from the stream topic",
            m.events_received.clone(),
        );
        registry.register("cryptoviz_gateway_deliveries", "Events handed to client connections", m.deliveries.clone());
        registry.register(
            "cryptoviz_gateway_clients_dropped",
            "Clients disconnected by the gateway",
            m.clients_dropped.clone(),
        );
        registry.register("cryptoviz_gateway_rejected", "Connections refused", m.rejected.clone());
        registry.register(
            "cryptoviz_gateway_latency_seconds",
            "Event time to hand-off to the client connection",
            m.latency.clone(),
        );
        m
    }

    /// Count a dropped client.
    pub fn dropped(&self, reason: &'static str) {
        self.clients_dropped.get_or_create(&Reason { reason }).inc();
    }

    /// Count a refused connection.
    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    /// Total dropped clients over every reason.
    pub fn dropped_total(&self) -> u64 {
        ["slow"].iter().map(|r| self.clients_dropped.get_or_create(&Reason { reason: r }).get()).sum()
    }

    /// Total refused connections over every reason.
    pub fn rejected_total(&self) -> u64 {
        ["max_clients", "unauthorized", "forbidden"]
            .iter()
            .map(|r| self.rejected.get_or_create(&Reason { reason: r }).get())
            .sum()
    }
}
