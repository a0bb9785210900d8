//! Prometheus Operator integration (the PodMonitor and its deprecated `serviceMonitor` alias).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Prometheus Operator integration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `auto` (default): create a PodMonitor scraping every worker's `/metrics` when the monitoring.coreos.com
    /// CRDs exist; `enabled`: always (an error if the CRDs are missing); `disabled`: never. Wins over the
    /// deprecated `serviceMonitor` when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mode_schema")]
    pub pod_monitor: Option<PodMonitorMode>,
    /// Deprecated: the old name of `podMonitor` (the operator has always created a PodMonitor, not a
    /// ServiceMonitor). Still read when `podMonitor` is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mode_schema")]
    pub service_monitor: Option<PodMonitorMode>,
    /// Extra labels on the PodMonitor, e.g. the `release` label your Prometheus selects on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl MonitoringSpec {
    /// The mode in force: `podMonitor`, else the deprecated `serviceMonitor`, else `auto`. Both may be set
    /// (objects stored before `podMonitor` existed carry a defaulted `serviceMonitor: auto`), so the new name
    /// wins rather than being refused.
    pub fn pod_monitor_mode(&self) -> PodMonitorMode {
        self.pod_monitor.or(self.service_monitor).unwrap_or_default()
    }

    /// The field the mode in force came from, for messages: `monitoring.podMonitor` or the deprecated one.
    pub fn pod_monitor_field(&self) -> &'static str {
        if self.pod_monitor.is_none() && self.service_monitor.is_some() {
            "monitoring.serviceMonitor"
        } else {
            "monitoring.podMonitor"
        }
    }
}

// The schema of both mode fields, written out so each is described by its own doc comment: with the type's
// schema, kube's rewrite of `Option<PodMonitorMode>` would give both the enum's description.
fn mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["auto", "enabled", "disabled"], "nullable": true})
}

/// Whether a PodMonitor is created.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PodMonitorMode {
    /// When the Prometheus Operator's CRDs are installed.
    #[default]
    Auto,
    /// Always.
    Enabled,
    /// Never.
    Disabled,
}
