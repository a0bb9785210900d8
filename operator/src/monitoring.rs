//! Prometheus Operator integration: a PodMonitor per pipeline scraping every worker's `/metrics`, created when
//! the monitoring.coreos.com CRDs exist (`auto`) or when asked (`enabled`), never when `disabled`. Owns the
//! `MonitoringReady` condition.
//!
//! A PodMonitor rather than a ServiceMonitor: only the gateway has a Service, and every worker serves
//! `/metrics` on its `http` port. Each target carries the `pipeline` and `component` labels.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptoviz_crds::{CryptoPipeline, PodMonitorMode};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::conditions::{ConditionType, KnownReason};
use crate::metrics::Metrics;
use crate::status::Check;
use crate::workloads::{self, FIELD_MANAGER};

/// Condition type owned by this module.
pub const CONDITION: ConditionType = ConditionType::MonitoringReady;
const GROUP_VERSION: &str = "monitoring.coreos.com/v1";
/// How long a discovery answer is trusted (a CRD installed later is noticed within this time).
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// The PodMonitor reconciler, with a cached answer to "are the Prometheus Operator CRDs installed?".
pub struct Monitoring {
    crd_present: Mutex<Option<(Instant, bool)>>,
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// The PodMonitor a pipeline wants (pure).
pub fn pod_monitor(p: &CryptoPipeline) -> DynamicObject {
    let mut labels = workloads::labels(p, None);
    labels.extend(p.spec.monitoring.labels.clone());
    let owner = p.controller_owner_ref(&()).expect("a pipeline from the apiserver has a uid");
    serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION,
        "kind": "PodMonitor",
        "metadata": {
            "name": format!("{}-workers", p.name_any()),
            "namespace": p.namespace(),
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "selector": {"matchLabels": workloads::selector_labels(p, None)},
            // `pipeline` and `component` target labels, as the shipped dashboards and alerts expect
            // (podTargetLabels would name them cryptoviz_io_pipeline and app_kubernetes_io_component).
            "podMetricsEndpoints": [{
                "port": "http", "path": "/metrics", "interval": "30s",
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_cryptoviz_io_pipeline"], "targetLabel": "pipeline"},
                    {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "targetLabel": "component"},
                ],
            }],
        },
    }))
    .expect("valid PodMonitor")
}

impl Default for Monitoring {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitoring {
    /// A reconciler with an empty discovery cache.
    pub fn new() -> Self {
        Monitoring { crd_present: Mutex::new(None) }
    }

    async fn crds_installed(&self, client: &Client) -> Result<bool, kube::Error> {
        if let Some((at, present)) = *self.crd_present.lock().unwrap()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(present);
        }
        let present = match client.list_api_group_resources(GROUP_VERSION).await {
            Ok(list) => list.resources.iter().any(|r| r.name == "podmonitors"),
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e),
        };
        *self.crd_present.lock().unwrap() = Some((Instant::now(), present));
        Ok(present)
    }

    /// Create, update or remove the pipeline's PodMonitor; writes only when the live one differs.
    pub async fn reconcile(&self, p: &CryptoPipeline, client: &Client, metrics: &Metrics) -> Check {
        let mode = p.spec.monitoring.pod_monitor_mode();
        let field = p.spec.monitoring.pod_monitor_field();
        let installed = match self.crds_installed(client).await {
            Ok(i) => i,
            Err(e) => {
                return Check::failed(
                    CONDITION,
                    KnownReason::DiscoveryFailed,
                    format!("looking up monitoring.coreos.com: {e}"),
                );
            }
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &p.namespace().unwrap_or_default(), &resource());
        let name = format!("{}-workers", p.name_any());
        match (mode, installed) {
            (PodMonitorMode::Disabled, false) | (PodMonitorMode::Auto, false) => {
                let why = if mode == PodMonitorMode::Disabled {
                    format!("{field} is disabled")
                } else {
                    "the Prometheus Operator CRDs are not installed".into()
                };
                Check::ok(CONDITION, KnownReason::NotRequired, why)
            }
            (PodMonitorMode::Enabled, false) => Check::failed(
                CONDITION,
                KnownReason::PrometheusOperatorMissing,
                format!("{field} is enabled but the monitoring.coreos.com CRDs are not installed"),
            ),
            (PodMonitorMode::Disabled, true) => match api.get_opt(&name).await {
                Ok(Some(_)) => match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {
                        metrics.write("PodMonitor", "delete");
                        Check::ok(CONDITION, KnownReason::NotRequired, format!("{field} is disabled"))
                    }
                    Err(e) => Check::failed(
                        CONDITION,
                        KnownReason::PodMonitorFailed,
                        format!("deleting PodMonitor {name}: {e}"),
                    ),
                },
                Ok(None) => Check::ok(CONDITION, KnownReason::NotRequired, format!("{field} is disabled")),
                Err(e) => {
                    Check::failed(CONDITION, KnownReason::PodMonitorFailed, format!("reading PodMonitor {name}: {e}"))
                }
            },
            (_, true) => {
                let want = serde_json::to_value(pod_monitor(p)).unwrap();
                let live = api.get_opt(&name).await;
                match live {
                    Ok(Some(l)) if workloads::is_subset(&want, &serde_json::to_value(&l).unwrap()) => {}
                    Ok(_) => {
                        if let Err(e) =
                            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&want)).await
                        {
                            return Check::failed(
                                CONDITION,
                                KnownReason::PodMonitorFailed,
                                format!("applying PodMonitor {name}: {e}"),
                            );
                        }
                        metrics.write("PodMonitor", "apply");
                    }
                    Err(e) => {
                        return Check::failed(
                            CONDITION,
                            KnownReason::PodMonitorFailed,
                            format!("reading PodMonitor {name}: {e}"),
                        );
                    }
                }
                Check::ok(
                    CONDITION,
                    KnownReason::PodMonitorCreated,
                    format!("PodMonitor {name} scrapes every worker's /metrics"),
                )
            }
        }
    }
}
