//! The operator's Prometheus metrics: one registry, every family registered once.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set: the outcome of one reconciliation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Label set: an error reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The error's metric label (see `Error::metric_label`).
    pub reason: &'static str,
}

/// Label set: one write to the Kubernetes API.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Object kind written.
    pub kind: &'static str,
    /// `apply`, `delete`, `patch_status`, `patch_finalizers`, `event`.
    pub verb: &'static str,
}

/// Label set: one call to an external system (Kafka admin, database).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExternalLabels {
    /// `kafka` or `database`.
    pub system: &'static str,
    /// Operation, e.g. `create_topics`, `alter_configs`, `describe`.
    pub operation: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Label set: one pipeline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// Namespace of the CryptoPipeline.
    pub namespace: String,
    /// Name of the CryptoPipeline.
    pub pipeline: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    /// Reconciliations by result.
    pub reconciliations: Family<ResultLabels, Counter>,
    /// Reconcile errors by reason.
    pub errors: Family<ReasonLabels, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Pipelines currently managed.
    pub pipelines: Gauge,
    /// Writes to the Kubernetes API.
    pub api_writes: Family<WriteLabels, Counter>,
    /// Calls to Kafka and the database.
    pub external_calls: Family<ExternalLabels, Counter>,
    /// Topic configuration drift corrected.
    pub drift_corrections: Counter,
    /// Destructive changes refused (partition decrease, replication change).
    pub refused_changes: Counter,
    /// Leader of its lease (1) or standby (0).
    pub leader: Gauge,
    /// 1 when a pipeline's Ready condition is True, 0 otherwise (one series per pipeline, removed on deletion).
    pub pipeline_ready: Family<PipelineLabels, Gauge>,
}

impl Metrics {
    /// Register every family into `registry` under the `cryptoviz_operator` prefix.
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics {
            reconciliations: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            pipelines: Gauge::default(),
            api_writes: Family::default(),
            external_calls: Family::default(),
            drift_corrections: Counter::default(),
            refused_changes: Counter::default(),
            leader: Gauge::default(),
            pipeline_ready: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("cryptoviz_operator");
        r.register("reconciliations", "Reconciliations of CryptoPipelines by result", m.reconciliations.clone());
        r.register("reconcile_errors", "Reconcile errors by reason", m.errors.clone());
        r.register("reconcile_duration_seconds", "Time spent in one reconciliation", m.duration.clone());
        r.register("pipelines", "CryptoPipelines managed by this operator", m.pipelines.clone());
        r.register("api_writes", "Writes to the Kubernetes API by kind and verb", m.api_writes.clone());
        r.register(
            "external_calls",
            "Calls to Kafka admin and the database by operation and outcome",
            m.external_calls.clone(),
        );
        r.register(
            "topic_drift_corrections",
            "Topic configs corrected because they drifted from the spec",
            m.drift_corrections.clone(),
        );
        r.register(
            "refused_changes",
            "Destructive changes refused (partition decrease, replication change)",
            m.refused_changes.clone(),
        );
        r.register("leader", "1 when this replica holds the leader lease", m.leader.clone());
        r.register("pipeline_ready", "1 when the pipeline's Ready condition is True", m.pipeline_ready.clone());
        Arc::new(m)
    }

    /// Count one API write.
    pub fn write(&self, kind: &'static str, verb: &'static str) {
        self.api_writes.get_or_create(&WriteLabels { kind, verb }).inc();
    }

    /// Count one external call.
    pub fn external(&self, system: &'static str, operation: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.external_calls.get_or_create(&ExternalLabels { system, operation, outcome }).inc();
    }

    /// Start timing a reconciliation; the guard records the duration when dropped.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { start: Instant::now(), metrics: self }
    }
}

/// Records a reconciliation's duration when dropped.
pub struct ReconcileTimer<'a> {
    start: Instant,
    metrics: &'a Metrics,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.observe(self.start.elapsed().as_secs_f64());
    }
}
