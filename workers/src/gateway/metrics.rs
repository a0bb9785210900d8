//! The gateway's Prometheus metrics: one struct, every family registered once under `cryptoviz_gateway`
//! and shared by the hub and every connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Why a client was disconnected or refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Dropped: `slow`, `stalled`. Refused: `max_clients`, `per_address`, `unauthorized`, `forbidden`,
    /// `bad_request`.
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
    pub latency: Latency,
}

impl Metrics {
    /// Create every family and register it in `registry` under the `cryptoviz_gateway` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            clients: Gauge::default(),
            events_received: Counter::default(),
            deliveries: Counter::default(),
            clients_dropped: Family::default(),
            rejected: Family::default(),
            latency: Latency::default(),
        };
        let r = registry.sub_registry_with_prefix("cryptoviz_gateway");
        r.register("clients", "Connected SSE clients", m.clients.clone());
        r.register("events_received", "Records read from the stream topic", m.events_received.clone());
        r.register("deliveries", "Events handed to client connections", m.deliveries.clone());
        r.register("clients_dropped", "Clients disconnected by the gateway", m.clients_dropped.clone());
        r.register("rejected", "Connections refused", m.rejected.clone());
        r.register("latency_seconds", "Event time to hand-off to the client connection", m.latency.clone());
        m
    }

    /// Add what a writer shard counted since its last flush, and start its tally again.
    pub fn flush(&self, t: &mut Tally) {
        if t.deliveries == 0 {
            return;
        }
        self.deliveries.inc_by(t.deliveries);
        let l = &self.latency.0;
        for (b, n) in l.buckets.iter().zip(t.buckets) {
            if n > 0 {
                b.fetch_add(n, Ordering::Relaxed);
            }
        }
        l.sum_ms.fetch_add(t.sum_ms, Ordering::Relaxed);
        *t = Tally::default();
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
        ["slow", "stalled"].iter().map(|r| self.clients_dropped.get_or_create(&Reason { reason: r }).get()).sum()
    }

    /// Total refused connections over every reason.
    pub fn rejected_total(&self) -> u64 {
        ["max_clients", "per_address", "unauthorized", "forbidden", "bad_request"]
            .iter()
            .map(|r| self.rejected.get_or_create(&Reason { reason: r }).get())
            .sum()
    }
}

/// Upper bounds of the latency buckets in milliseconds: 1 ms … ~16 s, doubling (then +Inf).
const LATENCY_BOUNDS_MS: usize = 15;

/// Event time to hand-off, as a Prometheus histogram that writer shards add to in bulk.
///
/// `prometheus_client`'s `Histogram` takes a lock per observation; at hundreds of thousands of deliveries
/// a second, from every shard at once, that lock and its cache line cost more than the delivery. Shards
/// count into a [`Tally`] of their own and add it here once per pass.
#[derive(Clone, Debug, Default)]
pub struct Latency(Arc<LatencyInner>);

#[derive(Debug, Default)]
struct LatencyInner {
    /// Per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS_MS + 1],
    sum_ms: AtomicU64,
}

impl Latency {
    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let le = if i < LATENCY_BOUNDS_MS { (1u64 << i) as f64 / 1000.0 } else { f64::INFINITY };
                (le, b.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Deliveries and their latencies as one writer shard counts them between flushes ([`Metrics::flush`]):
/// plain integers, no shared cache line touched per delivery.
#[derive(Debug, Default)]
pub struct Tally {
    deliveries: u64,
    buckets: [u64; LATENCY_BOUNDS_MS + 1],
    sum_ms: u64,
}

impl Tally {
    /// One event handed to a client: `time_ms` is the event time (0: unknown, not observed), `now_ms` the
    /// hand-off, both milliseconds since the epoch.
    pub fn deliver(&mut self, time_ms: i64, now_ms: i64) {
        self.deliveries += 1;
        if time_ms > 0 {
            let ms = (now_ms - time_ms).max(0) as u64;
            // The first bound 2^i ms at or above `ms`.
            let i = if ms <= 1 { 0 } else { (64 - (ms - 1).leading_zeros()) as usize };
            self.buckets[i.min(LATENCY_BOUNDS_MS)] += 1;
            self.sum_ms += ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_match_the_bounds_and_encode_as_a_histogram() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let mut t = Tally::default();
        for ms in [0, 1, 2, 3, 4, 5, 1000, 16_384, 16_385, 100_000] {
            t.deliver(1_000_000 - ms, 1_000_000);
        }
        t.deliver(0, 1_000_000); // no event time: counted as a delivery, not observed
        m.flush(&mut t);
        m.flush(&mut t); // an empty tally adds nothing
        assert_eq!(m.deliveries.get(), 11);
        assert_eq!(m.latency.count(), 10);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |prefix: &str| {
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in {text}")).to_owned()
        };
        // Cumulative: 0 and 1 ms are <= 1 ms; 2 <= 2 ms; 3 and 4 <= 4 ms; 5 <= 8 ms; 1000 <= 1.024 s.
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"0.001\"}").ends_with(" 2"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"0.002\"}").ends_with(" 3"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"0.004\"}").ends_with(" 5"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"0.008\"}").ends_with(" 6"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"1.024\"}").ends_with(" 7"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"16.384\"}").ends_with(" 8"));
        assert!(line("cryptoviz_gateway_latency_seconds_bucket{le=\"+Inf\"}").ends_with(" 10"));
        assert!(line("cryptoviz_gateway_latency_seconds_count").ends_with(" 10"));
        assert!(line("cryptoviz_gateway_latency_seconds_sum").ends_with(" 133.784"));
    }

    #[test]
    fn exported_names_stay_those_the_dashboards_alerts_and_tests_use() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        // One sample of every labelled family, so that its sample lines are exported too.
        m.dropped("slow");
        m.reject("max_clients");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut families: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
        families.sort();
        assert_eq!(
            families,
            [
                "cryptoviz_gateway_clients",
                "cryptoviz_gateway_clients_dropped",
                "cryptoviz_gateway_deliveries",
                "cryptoviz_gateway_events_received",
                "cryptoviz_gateway_latency_seconds",
                "cryptoviz_gateway_rejected",
            ]
        );
        let mut samples: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(['{', ' ']).next().unwrap()).collect();
        samples.sort();
        samples.dedup();
        assert_eq!(
            samples,
            [
                "cryptoviz_gateway_clients",
                "cryptoviz_gateway_clients_dropped_total",
                "cryptoviz_gateway_deliveries_total",
                "cryptoviz_gateway_events_received_total",
                "cryptoviz_gateway_latency_seconds_bucket",
                "cryptoviz_gateway_latency_seconds_count",
                "cryptoviz_gateway_latency_seconds_sum",
                "cryptoviz_gateway_rejected_total",
            ]
        );
        assert!(text.contains("cryptoviz_gateway_clients_dropped_total{reason=\"slow\"} 1"), "{text}");
        assert!(text.contains("cryptoviz_gateway_rejected_total{reason=\"max_clients\"} 1"), "{text}");
    }
}
