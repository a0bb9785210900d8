//! Whether the sources deliver, and the loop that turns that (with the producer's connection and, in
//! standalone mode, the other parts' health) into the process's liveness and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use cryptoviz_crds::SourceKind;
use cryptoviz_runtime::health::Health;

use super::metrics::Metrics;
use crate::bus::Publisher;
use crate::bus::kafka::KafkaPublisher;

/// Liveness fails when every source has been down this long: a restart may help (DNS, stuck sockets).
pub const ALL_DOWN_LIMIT: Duration = Duration::from_secs(300);
/// How often the monitor asks the broker for metadata while connected (every tick while not).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Longest a metadata probe may block.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub(super) fn new(kind: SourceKind) -> Self {
        SourceStatus { kind, up: AtomicBool::new(false), down_since_ms: AtomicI64::new(Utc::now().timestamp_millis()) }
    }

    /// Whether the source is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record that the source delivers (or stopped); an up→down change restarts the down time.
    pub(super) fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) && !up {
            self.down_since_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
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

/// What the health monitor watches and where it reports. [`Monitor::run`] is the one loop for the scraper
/// mode and standalone mode.
pub struct Monitor {
    /// Each source's status.
    pub statuses: Vec<Arc<SourceStatus>>,
    /// What the sources publish through: its queue depth is exported, its connection gates readiness.
    pub publisher: Arc<dyn Publisher>,
    /// The Kafka producer behind `publisher`, if any: probed every [`PROBE_EVERY`], and every tick while
    /// disconnected, so that `connected` recovers.
    pub kafka: Option<Arc<KafkaPublisher>>,
    /// Other parts of the process whose liveness and readiness the reported ones also require.
    pub others: Vec<Arc<Health>>,
    /// Where the queue depth goes.
    pub metrics: Arc<Metrics>,
    /// What the probes read.
    pub health: Arc<Health>,
    /// Time between assessments.
    pub tick: Duration,
}

impl Monitor {
    /// Assess every `tick` until the task is aborted.
    pub async fn run(self) {
        let probe_every = (PROBE_EVERY.as_millis() / self.tick.as_millis().max(1)).max(1) as u64;
        let mut tick = tokio::time::interval(self.tick);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            // Metadata requests block: off the runtime's threads.
            if let Some(k) = &self.kafka
                && (n.is_multiple_of(probe_every) || !k.connected())
            {
                let k = k.clone();
                let _ = tokio::task::spawn_blocking(move || k.probe(PROBE_TIMEOUT)).await;
            }
            n += 1;
            self.metrics.queue_depth.set(self.publisher.queue_depth() as i64);
            let (live, ready) =
                assess_health(&self.statuses, self.publisher.connected(), Utc::now().timestamp_millis());
            self.health.set_live(live && self.others.iter().all(|h| h.is_live()));
            self.health.set_ready(ready && self.others.iter().all(|h| h.is_ready()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
