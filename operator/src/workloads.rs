//! The Kubernetes children of a pipeline, as pure functions of the spec: the worker ConfigMap, the scraper,
//! consumer and gateway Deployments, the gateway Service and PodDisruptionBudgets.
//!
//! Nothing here talks to the apiserver; `controller.rs` applies what these return. Each function reads like
//! the YAML a person would write, and is unit-tested without a cluster.

use std::collections::BTreeMap;

use cryptoviz_crds::config::{
    self, CONFIG_DIR, CONFIG_FILE, DATABASE_URL_ENV, GATEWAY_JWT_KEY_ENV, GATEWAY_JWT_PUBLIC_KEYS_ENV, KAFKA_CA_DIR,
    KAFKA_PASSWORD_ENV, KAFKA_USERNAME_ENV, WORKER_HTTP_PORT, WorkerConfig,
};
use cryptoviz_crds::{CryptoPipeline, PIPELINE_LABEL, SecretKeyRef, WorkloadSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Annotation on pod templates carrying the hash of the rendered configuration: a spec change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "cryptoviz.io/config-hash";
/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "cryptoviz-operator";
/// The `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "cryptoviz-operator";

/// The three worker components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// Sources into Kafka.
    Scraper,
    /// Kafka into the database.
    Consumer,
    /// Kafka to browsers.
    Gateway,
}

impl Component {
    /// Every component, in a stable order.
    pub const ALL: [Component; 3] = [Component::Scraper, Component::Consumer, Component::Gateway];

    /// The lower-case name: the worker subcommand, the label value and the name suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Scraper => "scraper",
            Component::Consumer => "consumer",
            Component::Gateway => "gateway",
        }
    }

    /// The status condition type this component owns.
    pub fn condition_type(self) -> crate::conditions::ConditionType {
        use crate::conditions::ConditionType;
        match self {
            Component::Scraper => ConditionType::ScraperReady,
            Component::Consumer => ConditionType::ConsumerReady,
            Component::Gateway => ConditionType::GatewayReady,
        }
    }

    /// Whether the pipeline asks for this component at all (the consumer needs storage; the gateway can be off).
    pub fn wanted(self, p: &CryptoPipeline) -> bool {
        match self {
            Component::Scraper => true,
            Component::Consumer => p.spec.timescale.is_some(),
            Component::Gateway => p.spec.gateway.enabled,
        }
    }

    fn workload(self, p: &CryptoPipeline) -> &WorkloadSpec {
        match self {
            Component::Scraper => &p.spec.scraper.workload,
            Component::Consumer => &p.spec.consumer.workload,
            Component::Gateway => &p.spec.gateway.workload,
        }
    }
}

/// Operator-wide settings that shape the children.
#[derive(Clone, Debug)]
pub struct WorkloadDefaults {
    /// The worker image used unless a pipeline overrides it.
    pub worker_image: String,
    /// Image pull policy for worker containers.
    pub image_pull_policy: String,
}

/// Name of a component's Deployment (and Service, PDB): `<pipeline>-<component>`.
pub fn child_name(p: &CryptoPipeline, c: Component) -> String {
    format!("{}-{}", p.name_any(), c.as_str())
}

/// Name of the pipeline's worker ConfigMap.
pub fn config_map_name(p: &CryptoPipeline) -> String {
    format!("{}-config", p.name_any())
}

/// Labels every child carries; `component` is None for the shared ConfigMap.
pub fn labels(p: &CryptoPipeline, component: Option<Component>) -> BTreeMap<String, String> {
    let mut l = selector_labels(p, component);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert("app.kubernetes.io/part-of".into(), "cryptoviz".into());
    l.insert(PIPELINE_LABEL.into(), p.name_any());
    l
}

/// The stable subset of [`labels`] used in selectors (selectors are immutable on Deployments).
pub fn selector_labels(p: &CryptoPipeline, component: Option<Component>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("app.kubernetes.io/name".into(), "cryptoviz".into());
    l.insert("app.kubernetes.io/instance".into(), p.name_any());
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".into(), c.as_str().into());
    }
    l
}

fn owner_reference(p: &CryptoPipeline) -> Value {
    serde_json::to_value(p.controller_owner_ref(&()).expect("a pipeline from the apiserver has a uid")).unwrap()
}

fn metadata(p: &CryptoPipeline, name: String, component: Option<Component>) -> Value {
    json!({
        "name": name,
        "namespace": p.namespace(),
        "labels": labels(p, component),
        "ownerReferences": [owner_reference(p)],
    })
}

/// Hex SHA-256 of the rendered worker configuration.
pub fn config_hash(rendered: &str) -> String {
    let digest = Sha256::digest(rendered.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The worker ConfigMap holding `config.yaml`.
pub fn config_map(p: &CryptoPipeline, rendered: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(p, config_map_name(p), None),
        "data": { CONFIG_FILE: rendered },
    }))
    .expect("valid ConfigMap")
}

fn secret_env(name: &str, r: &SecretKeyRef) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}})
}

/// Environment variables of a component's container: only references to Secrets, never their values.
fn env(p: &CryptoPipeline, c: Component, cfg: &WorkerConfig) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "RUST_LOG", "value": "info"}),
        json!({"name": "CRYPTOVIZ_LOG_FORMAT", "value": "json"}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if let Some(sasl) = &p.spec.kafka.sasl {
        let r = |key: &str| SecretKeyRef { name: sasl.secret_name.clone(), key: key.into() };
        env.push(secret_env(KAFKA_USERNAME_ENV, &r("username")));
        env.push(secret_env(KAFKA_PASSWORD_ENV, &r("password")));
    }
    match c {
        Component::Scraper => {
            for (src, rendered) in p.spec.sources.iter().zip(&cfg.sources) {
                if let (Some(r), Some(var)) = (&src.api_key_secret_ref, &rendered.api_key_env) {
                    env.push(secret_env(var, r));
                }
            }
        }
        Component::Consumer => {
            if let Some(ts) = &p.spec.timescale {
                env.push(secret_env(DATABASE_URL_ENV, &ts.connection_secret_ref));
            }
        }
        Component::Gateway => {
            if let Some(r) = &p.spec.gateway.auth_secret_ref {
                env.push(secret_env(GATEWAY_JWT_KEY_ENV, r));
            }
            if let Some(r) = &p.spec.gateway.auth_public_keys_secret_ref {
                env.push(secret_env(GATEWAY_JWT_PUBLIC_KEYS_ENV, r));
            }
            // The history API (`/api/v1`) reads the same database as the consumer.
            if let Some(ts) = &p.spec.timescale {
                env.push(secret_env(DATABASE_URL_ENV, &ts.connection_secret_ref));
            }
        }
    }
    env
}

/// A component's Deployment.
pub fn deployment(
    p: &CryptoPipeline,
    c: Component,
    cfg: &WorkerConfig,
    hash: &str,
    d: &WorkloadDefaults,
) -> Deployment {
    let w = c.workload(p);
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": config_map_name(p)}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}),
    ];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if let Some(ca) = p.spec.kafka.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        volumes.push(
            json!({"name": "kafka-ca", "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": ca.key}]}}),
        );
        mounts.push(json!({"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": true}));
    }
    let mut container = json!({
        "name": c.as_str(),
        "image": w.image.clone().unwrap_or_else(|| d.worker_image.clone()),
        "imagePullPolicy": d.image_pull_policy,
        "args": [c.as_str(), "--config", format!("{CONFIG_DIR}/{CONFIG_FILE}")],
        "env": env(p, c, cfg),
        "ports": [{"name": "http", "containerPort": WORKER_HTTP_PORT, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    });
    if let Some(r) = &w.resources {
        container["resources"] = serde_json::to_value(r).unwrap();
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(p, child_name(p, c), Some(c)),
        "spec": {
            "replicas": w.replicas,
            "selector": {"matchLabels": selector_labels(p, Some(c))},
            "template": {
                "metadata": {
                    "labels": labels(p, Some(c)),
                    "annotations": {CONFIG_HASH_ANNOTATION: hash},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }))
    .expect("valid Deployment")
}

/// The gateway's Service.
pub fn gateway_service(p: &CryptoPipeline) -> Service {
    let svc = &p.spec.gateway.service;
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(p, child_name(p, Component::Gateway), Some(Component::Gateway)),
        "spec": {
            "type": svc.type_.as_str(),
            "selector": selector_labels(p, Some(Component::Gateway)),
            "ports": [{"name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }))
    .expect("valid Service")
}

/// The gateway's in-cluster URL, reported in status.
pub fn gateway_url(p: &CryptoPipeline) -> String {
    format!(
        "http://{}.{}.svc:{}",
        child_name(p, Component::Gateway),
        p.namespace().unwrap_or_default(),
        p.spec.gateway.service.port
    )
}

/// A PodDisruptionBudget for a component that runs more than one replica (None otherwise).
pub fn pod_disruption_budget(p: &CryptoPipeline, c: Component) -> Option<PodDisruptionBudget> {
    (c.wanted(p) && c.workload(p).replicas > 1).then(|| {
        serde_json::from_value(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(p, child_name(p, c), Some(c)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(p, Some(c))}},
        }))
        .expect("valid PodDisruptionBudget")
    })
}

/// Everything the pipeline wants in Kubernetes right now.
pub struct Desired {
    /// The worker ConfigMap.
    pub config_map: ConfigMap,
    /// Deployments of the wanted components.
    pub deployments: Vec<(Component, Deployment)>,
    /// The gateway Service when the gateway is wanted.
    pub service: Option<Service>,
    /// PDBs of the components with more than one replica.
    pub pdbs: Vec<(Component, PodDisruptionBudget)>,
}

/// Render everything a pipeline wants.
pub fn desired(p: &CryptoPipeline, d: &WorkloadDefaults) -> Result<Desired, config::RenderError> {
    let config = WorkerConfig::for_pipeline(p)?;
    let rendered = config.to_yaml();
    let hash = config_hash(&rendered);
    let deployments =
        Component::ALL.into_iter().filter(|c| c.wanted(p)).map(|c| (c, deployment(p, c, &config, &hash, d))).collect();
    let pdbs = Component::ALL.into_iter().filter_map(|c| pod_disruption_budget(p, c).map(|pdb| (c, pdb))).collect();
    Ok(Desired {
        config_map: config_map(p, &rendered),
        service: Component::Gateway.wanted(p).then(|| gateway_service(p)),
        deployments,
        pdbs,
    })
}

/// True when every field `desired` sets has the same value in `live` (fields the apiserver defaulted, or
/// other managers own, are ignored). Used to skip applies that would change nothing.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            d.iter().all(|(k, dv)| dv.is_null() || l.get(k).is_some_and(|lv| is_subset(dv, lv)))
        }
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoviz_crds::CryptoPipelineSpec;

    fn pipeline(yaml: &str) -> CryptoPipeline {
        let spec: CryptoPipelineSpec = serde_saphyr_like(yaml);
        let mut p = CryptoPipeline::new("demo", spec);
        p.metadata.namespace = Some("markets".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn serde_saphyr_like(yaml: &str) -> CryptoPipelineSpec {
        // The crds crate re-parses YAML in its own tests; JSON is enough here.
        serde_json::from_str(yaml).unwrap()
    }

    fn defaults() -> WorkloadDefaults {
        WorkloadDefaults {
            worker_image: "ghcr.io/cryptoviz/worker:test".into(),
            image_pull_policy: "IfNotPresent".into(),
        }
    }

    const BASIC: &str = r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"k:9092"}}"#;

    #[test]
    fn pods_are_locked_down_and_carry_the_config_hash() {
        let p = pipeline(BASIC);
        let d = desired(&p, &defaults()).unwrap();
        let (_, dep) = &d.deployments[0];
        let v = serde_json::to_value(dep).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(c["args"][0], "scraper");
        let rendered = &d.config_map.data.as_ref().unwrap()[CONFIG_FILE];
        assert_eq!(
            v["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
            config_hash(rendered).as_str()
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["metadata"]["labels"][PIPELINE_LABEL], "demo");
    }

    #[test]
    fn consumer_only_with_storage_gateway_only_when_enabled_pdb_only_above_one_replica() {
        let p = pipeline(BASIC);
        let d = desired(&p, &defaults()).unwrap();
        let comps: Vec<_> = d.deployments.iter().map(|(c, _)| *c).collect();
        assert_eq!(comps, vec![Component::Scraper, Component::Gateway]);
        assert!(d.pdbs.is_empty());

        let p = pipeline(
            r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"k:9092"},
                "timescale":{"connectionSecretRef":{"name":"db","key":"url"}},
                "gateway":{"enabled":false},"scraper":{"replicas":2}}"#,
        );
        let d = desired(&p, &defaults()).unwrap();
        let comps: Vec<_> = d.deployments.iter().map(|(c, _)| *c).collect();
        assert_eq!(comps, vec![Component::Scraper, Component::Consumer]);
        assert!(d.service.is_none());
        assert_eq!(d.pdbs.len(), 1);
    }

    #[test]
    fn the_gateway_gets_the_database_secret_only_when_the_pipeline_has_storage() {
        let db_env = |p: &CryptoPipeline| {
            let d = desired(p, &defaults()).unwrap();
            let (_, gw) = d.deployments.iter().find(|(c, _)| *c == Component::Gateway).unwrap();
            let v = serde_json::to_value(gw).unwrap();
            v["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == DATABASE_URL_ENV)
                .cloned()
        };
        assert_eq!(db_env(&pipeline(BASIC)), None);
        let p = pipeline(
            r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"k:9092"},
                "timescale":{"connectionSecretRef":{"name":"db","key":"url"}}}"#,
        );
        assert_eq!(
            db_env(&p),
            Some(json!({"name": DATABASE_URL_ENV, "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}))
        );
    }

    #[test]
    fn secrets_are_passed_by_reference_only() {
        let p = pipeline(
            r#"{"symbols":["BTC"],"sources":[{"kind":"coinmarketcap","apiKeySecretRef":{"name":"cmc","key":"k"}}],
                "kafka":{"bootstrapServers":"k:9092","sasl":{"mechanism":"PLAIN","secretName":"kafka"}}}"#,
        );
        let d = desired(&p, &defaults()).unwrap();
        let v = serde_json::to_value(&d.deployments[0].1).unwrap();
        let env = v["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        for e in env
            .iter()
            .filter(|e| e["name"].as_str().unwrap().starts_with("CRYPTOVIZ_") && e["name"] != "CRYPTOVIZ_LOG_FORMAT")
        {
            assert!(e.get("value").is_none(), "{e}");
            assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{e}");
        }
        assert!(env.iter().any(|e| e["name"] == "CRYPTOVIZ_COINMARKETCAP_API_KEY"));
    }

    #[test]
    fn a_spec_change_changes_the_hash() {
        let hash = |p: &CryptoPipeline| {
            let d = desired(p, &defaults()).unwrap();
            d.deployments[0].1.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
                [CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let a = hash(&pipeline(BASIC));
        let b = hash(&pipeline(&BASIC.replace("BTC", "ETH")));
        assert_ne!(a, b);
    }

    #[test]
    fn subset_ignores_server_defaults_but_sees_changes() {
        let desired = json!({"spec": {"replicas": 1, "template": {"x": [1, 2]}}});
        let live = json!({"spec": {"replicas": 1, "progressDeadlineSeconds": 600, "template": {"x": [1, 2]}}});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&json!({"spec": {"replicas": 2}}), &live));
        assert!(!is_subset(&json!({"spec": {"template": {"x": [1]}}}), &live));
    }
}
