//! What the operator observed: conditions, phase and provisioned names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

/// What the operator observed, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CryptoPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The one-word summary (see [`Phase`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One condition per concern (TopicsReady, StorageReady, MonitoringReady, ScraperReady, ConsumerReady,
    /// GatewayReady), Paused, and the aggregate Ready (True when every concern is True).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Kafka topics this pipeline created or adopted, with its UID. Only these are deleted with
    /// `kafka.deletionPolicy: Delete`; a pipeline that lost a `TopicConflict` records none and deletes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicsStatus>,
    /// The gateway's in-cluster URL (`http://<service>.<namespace>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// The database schema holding this pipeline's tables (see `spec.timescale.schema` for how it is chosen;
    /// a legacy `cv_<name>` recorded here is kept). The operator marks a schema it creates as this pipeline's
    /// (`COMMENT ON SCHEMA`, with the pipeline's UID); `timescale.deletionPolicy: Delete` drops only a schema
    /// with that mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// A one-word summary: `Ready` (every condition but Paused is True), `Progressing` (a worker is rolling out
/// or not yet observed), `Degraded` (a concern failed) or `Paused` (reconciliation is paused). Absent until
/// the first reconcile; a pipeline being deleted keeps its last phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Every condition but `Paused` is True.
    Ready,
    /// A worker Deployment is missing, rolling out, or has no status yet.
    Progressing,
    /// A concern failed (topics, storage, monitoring or a worker's pods).
    Degraded,
    /// Reconciliation is paused (`spec.paused` or the pause annotation).
    Paused,
}

impl Phase {
    /// The string written to the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "Ready",
            Phase::Progressing => "Progressing",
            Phase::Degraded => "Degraded",
            Phase::Paused => "Paused",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Provisioned topic names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicsStatus {
    /// The raw topic.
    pub raw: String,
    /// The stream topic.
    pub stream: String,
    /// The dead-letter topic.
    #[serde(default)]
    pub dlq: String,
    /// The UID of the pipeline that created or adopted these topics. The finalizer deletes them only when it is
    /// this pipeline's own UID (or absent, as written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<String>,
}
