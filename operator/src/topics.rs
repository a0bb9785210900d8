//! Kafka topics reconciled from the spec through the admin API: observe (metadata + DescribeConfigs) →
//! diff → apply only what differs. Owns the `TopicsReady` condition and the topics' clean-up.
//!
//! librdkafka's calls block, and its admin futures resolve on librdkafka's own threads, so nothing here
//! stalls the reconciler's runtime: blocking metadata reads run on `spawn_blocking`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoviz_crds::config::{KAFKA_PASSWORD_ENV, KAFKA_USERNAME_ENV, WorkerConfig};
pub use cryptoviz_crds::topics::{DesiredTopic, desired_topics};
use cryptoviz_crds::{CryptoPipeline, TopicRole, TopicsStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication, TopicResult,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;

use crate::conditions::{ConditionType, KnownReason};
use crate::metrics::Metrics;
use crate::status::Check;

/// Condition type owned by this module.
pub const CONDITION: ConditionType = ConditionType::TopicsReady;
/// Timeout of one admin operation.
const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why topics could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The broker did not answer or refused the request.
    #[error("Kafka admin {operation} failed: {source}")]
    Admin {
        /// The admin operation.
        operation: &'static str,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A referenced Secret is missing or lacks a key.
    #[error("{0}")]
    Secret(String),
    /// The spec does not render into a worker configuration, so there are no client properties to connect with.
    #[error("invalid spec: {0}")]
    Config(#[from] cryptoviz_crds::config::RenderError),
    /// librdkafka refused a client property. Only the property is named: librdkafka's own text quotes the
    /// value, which may be a credential from a Secret.
    #[error("librdkafka refuses the client property {0} (its value is not shown)")]
    ClientProperty(String),
}

impl TopicsError {
    /// The `TopicsReady` reason for this error.
    pub fn reason(&self) -> KnownReason {
        match self {
            TopicsError::Admin { .. } => KnownReason::KafkaUnavailable,
            TopicsError::Secret(_) => KnownReason::SecretInvalid,
            TopicsError::Config(_) | TopicsError::ClientProperty(_) => KnownReason::ConfigInvalid,
        }
    }
}

/// The error of creating an admin client, with config values stripped (see [`TopicsError::ClientProperty`]).
fn connect_error(source: KafkaError) -> TopicsError {
    match source {
        KafkaError::ClientConfig(_, _, key, _) => TopicsError::ClientProperty(key),
        source => TopicsError::Admin { operation: "connect", source },
    }
}

/// A topic as the broker has it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveTopic {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of partition 0.
    pub replication_factor: i32,
    /// Every config value the broker reports, and whether it was set on the topic (dynamic).
    pub configs: HashMap<String, (String, bool)>,
}

/// What must change on the broker for one topic (pure).
#[derive(Debug, Default, PartialEq)]
pub struct TopicPlan {
    /// Create it.
    pub create: bool,
    /// Grow it to this many partitions.
    pub grow_partitions: Option<i32>,
    /// Managed keys whose live value differs: (key, desired value).
    pub config_changes: BTreeMap<String, String>,
    /// A change the broker cannot make; nothing is changed and the condition says why.
    pub refused: Option<(KnownReason, String)>,
}

/// Diff one desired topic against the live one.
pub fn plan(desired: &DesiredTopic, live: Option<&LiveTopic>) -> TopicPlan {
    let Some(live) = live else { return TopicPlan { create: true, ..Default::default() } };
    if live.partitions > desired.partitions {
        return TopicPlan {
            refused: Some((
                KnownReason::PartitionDecreaseRefused,
                format!(
                    "topic {} has {} partitions and the spec asks for {}: Kafka cannot remove partitions",
                    desired.name, live.partitions, desired.partitions
                ),
            )),
            ..Default::default()
        };
    }
    if live.replication_factor != desired.replication_factor {
        return TopicPlan {
            refused: Some((
                KnownReason::ReplicationFactorChangeRefused,
                format!(
                    "topic {} has replication factor {} and the spec asks for {}: reassign partitions by hand",
                    desired.name, live.replication_factor, desired.replication_factor
                ),
            )),
            ..Default::default()
        };
    }
    TopicPlan {
        create: false,
        grow_partitions: (live.partitions < desired.partitions).then_some(desired.partitions),
        config_changes: desired
            .configs
            .iter()
            .filter(|(k, v)| live.configs.get(*k).map(|(lv, _)| lv) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        refused: None,
    }
}

/// librdkafka keeps a topic object (partitions, queues, statistics: ~5 KiB) for every topic whose metadata a
/// client has fetched, for the client's lifetime. An admin client is replaced once it has looked up this many
/// distinct topics, so the operator's memory does not grow with the number of pipelines on one cluster.
const TOPICS_PER_CLIENT: usize = 512;

/// One cached admin client and the topics it has looked up.
struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    topics: HashSet<String>,
}

/// The topic reconciler: observes, diffs and applies a pipeline's topics through the Kafka admin API, with
/// admin clients cached per connection.
pub struct TopicAdmin {
    clients: Mutex<HashMap<String, Admin>>,
    metrics: Arc<Metrics>,
}

/// The result of reconciling one pipeline's topics.
pub struct TopicsOutcome {
    /// The TopicsReady verdict.
    pub check: Check,
    /// Names, once provisioned.
    pub status: Option<TopicsStatus>,
    /// Drift corrections made: (reason, message), worth a Normal event.
    pub changes: Vec<(String, String)>,
}

impl TopicAdmin {
    /// A topic reconciler recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        TopicAdmin { clients: Mutex::new(HashMap::new()), metrics }
    }

    /// The admin client for a pipeline's connection (credentials read from its Secrets).
    async fn client(
        &self,
        p: &CryptoPipeline,
        kube: &kube::Client,
    ) -> Result<Arc<AdminClient<DefaultClientContext>>, TopicsError> {
        let kafka = WorkerConfig::for_pipeline(p)?.kafka;
        let ns = p.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
        let mut creds = HashMap::new();
        if let Some(sasl) = &p.spec.kafka.sasl {
            creds.insert(KAFKA_USERNAME_ENV, secret_value(&secrets, &sasl.secret_name, "username").await?);
            creds.insert(KAFKA_PASSWORD_ENV, secret_value(&secrets, &sasl.secret_name, "password").await?);
        }
        let mut props = kafka.client_properties(|k| creds.get(k).cloned());
        // The operator reads the CA from the Secret; workers read the mounted file.
        props.retain(|(k, _)| k != "ssl.ca.location");
        if let Some(ca) = p.spec.kafka.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
            props.push(("ssl.ca.pem".into(), secret_value(&secrets, &ca.name, &ca.key).await?));
        }
        let key = props.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n");
        let names = TopicRole::ALL.map(|r| p.topic_name(r));
        let stale = {
            let mut clients = self.clients.lock().unwrap();
            match clients.get_mut(&key) {
                Some(a) if a.topics.len() < TOPICS_PER_CLIENT || names.iter().all(|n| a.topics.contains(n)) => {
                    a.topics.extend(names);
                    return Ok(a.client.clone());
                }
                // Operations in flight keep the old client alive until they finish.
                _ => clients.remove(&key),
            }
        };
        // Destroying a librdkafka client joins its threads: not on the async runtime.
        if let Some(old) = stale {
            tokio::task::spawn_blocking(move || drop(old));
        }
        let mut cfg = ClientConfig::new();
        for (k, v) in &props {
            cfg.set(k, v);
        }
        cfg.set("socket.timeout.ms", "10000");
        // A metadata request for a missing topic must never create it (librdkafka's default for a producer,
        // which an admin client is, lets the broker auto-create).
        cfg.set("allow.auto.create.topics", "false");
        let client: AdminClient<DefaultClientContext> = cfg.create().map_err(connect_error)?;
        let client = Arc::new(client);
        let topics = names.into_iter().collect();
        self.clients.lock().unwrap().insert(key, Admin { client: client.clone(), topics });
        Ok(client)
    }

    /// Observe, diff and apply one pipeline's topics. `claimed_elsewhere` holds topic names an older
    /// pipeline already claims on the same brokers.
    pub async fn reconcile(
        &self,
        p: &CryptoPipeline,
        kube: &kube::Client,
        claimed_elsewhere: &[String],
    ) -> TopicsOutcome {
        match self.try_reconcile(p, kube, claimed_elsewhere).await {
            Ok(o) => o,
            Err(e) => TopicsOutcome {
                check: Check::failed(CONDITION, e.reason(), e.to_string()),
                status: p.status.as_ref().and_then(|s| s.topics.clone()),
                changes: vec![],
            },
        }
    }

    async fn try_reconcile(
        &self,
        p: &CryptoPipeline,
        kube: &kube::Client,
        claimed_elsewhere: &[String],
    ) -> Result<TopicsOutcome, TopicsError> {
        let desired = desired_topics(p);
        if let Some(t) = desired.iter().find(|t| claimed_elsewhere.contains(&t.name)) {
            let msg = format!("topic {} is already used by another CryptoPipeline on the same brokers", t.name);
            return Ok(TopicsOutcome {
                check: Check::failed(CONDITION, KnownReason::TopicConflict, msg),
                status: None,
                changes: vec![],
            });
        }
        let client = self.client(p, kube).await?;
        let ours = owned_topics(p);
        let live = self.observe(&client, &desired).await?;

        // Refusals and conflicts: the first becomes the condition (a Warning event on transition).
        let mut warnings: Vec<(KnownReason, String)> = vec![];
        let mut changes = vec![];
        for t in &desired {
            let l = live.get(&t.name);
            let plan = plan(t, l);
            if let Some((reason, msg)) = &plan.refused {
                self.metrics.refused_changes.inc();
                warnings.push((*reason, msg.clone()));
                continue;
            }
            // A topic we did not create is adopted only when it already matches partitions and replication.
            if l.is_some() && !ours.contains(&t.name) && plan.grow_partitions.is_some() {
                let msg = format!("topic {} exists with other settings and was not created for this pipeline", t.name);
                warnings.push((KnownReason::TopicConflict, msg));
                continue;
            }
            if plan.create {
                self.create(&client, t).await?;
                changes
                    .push(("TopicCreated".into(), format!("created topic {} ({} partitions)", t.name, t.partitions)));
            }
            if let Some(n) = plan.grow_partitions {
                let r = client.create_partitions(&[NewPartitions::new(&t.name, n as usize)], &opts()).await;
                self.check_results("create_partitions", r)?;
                changes.push(("PartitionsIncreased".into(), format!("topic {} grown to {n} partitions", t.name)));
            }
            if !plan.config_changes.is_empty() {
                self.alter(&client, t, &plan.config_changes).await?;
                self.metrics.drift_corrections.inc();
                let keys: Vec<&str> = plan.config_changes.keys().map(String::as_str).collect();
                changes.push(("TopicConfigCorrected".into(), format!("topic {}: set {}", t.name, keys.join(", "))));
            }
        }
        let names = TopicsStatus {
            raw: p.topic_name(TopicRole::Raw),
            stream: p.topic_name(TopicRole::Stream),
            dlq: p.topic_name(TopicRole::Dlq),
            owner_uid: p.uid(),
        };
        // Only topics we created or adopted are recorded as ours: a conflicting one must never be adopted later.
        let status = if warnings.iter().any(|(r, _)| *r == KnownReason::TopicConflict) {
            p.status.as_ref().and_then(|s| s.topics.clone())
        } else {
            Some(names.clone())
        };
        let check = match warnings.first() {
            Some((reason, msg)) => Check::failed(CONDITION, *reason, msg.clone()),
            None => Check::ok(
                CONDITION,
                KnownReason::Provisioned,
                format!("topics {}, {} and {} match the spec", names.raw, names.stream, names.dlq),
            ),
        };
        Ok(TopicsOutcome { check, status, changes })
    }

    /// Read partitions, replication and configs of the desired topics that exist.
    async fn observe(
        &self,
        client: &Arc<AdminClient<DefaultClientContext>>,
        desired: &[DesiredTopic],
    ) -> Result<HashMap<String, LiveTopic>, TopicsError> {
        let names: Vec<String> = desired.iter().map(|t| t.name.clone()).collect();
        let c = client.clone();
        let md = tokio::task::spawn_blocking(move || {
            names
                .iter()
                .map(|n| c.inner().fetch_metadata(Some(n), OP_TIMEOUT).map(|md| (n.clone(), md)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .expect("metadata task")
        .map_err(|source| TopicsError::Admin { operation: "metadata", source });
        self.metrics.external("kafka", "metadata", md.is_ok());
        let mut live = HashMap::new();
        for (name, md) in md? {
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else { continue };
            if t.error().is_some_and(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
                continue;
            }
            if let Some(e) = t.error() {
                return Err(TopicsError::Admin {
                    operation: "metadata",
                    source: KafkaError::MetadataFetch(RDKafkaErrorCode::from(e)),
                });
            }
            let partitions = t.partitions().len() as i32;
            let replication_factor = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
            live.insert(name, LiveTopic { partitions, replication_factor, configs: HashMap::new() });
        }
        if !live.is_empty() {
            let names: Vec<String> = live.keys().cloned().collect();
            let specs: Vec<ResourceSpecifier> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
            let res = client.describe_configs(&specs, &opts()).await;
            self.metrics.external("kafka", "describe_configs", res.is_ok());
            for r in res.map_err(|source| TopicsError::Admin { operation: "describe_configs", source })? {
                let r = r.map_err(|code| TopicsError::Admin {
                    operation: "describe_configs",
                    source: KafkaError::AdminOp(code),
                })?;
                let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &r.specifier else { continue };
                if let Some(t) = live.get_mut(name) {
                    t.configs = r
                        .entries
                        .iter()
                        .filter_map(|e| {
                            e.value.clone().map(|v| (e.name.clone(), (v, e.source == ConfigSource::DynamicTopic)))
                        })
                        .collect();
                }
            }
        }
        Ok(live)
    }

    async fn create(&self, client: &AdminClient<DefaultClientContext>, t: &DesiredTopic) -> Result<(), TopicsError> {
        let mut nt = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor));
        for (k, v) in &t.configs {
            nt = nt.set(k, v);
        }
        let r = client.create_topics(&[nt], &opts()).await;
        self.check_results("create_topics", r)
    }

    /// Set only the drifted managed keys (IncrementalAlterConfigs): keys other tools set stay as they are.
    async fn alter(
        &self,
        client: &Arc<AdminClient<DefaultClientContext>>,
        t: &DesiredTopic,
        changes: &BTreeMap<String, String>,
    ) -> Result<(), TopicsError> {
        let c = client.clone();
        let topic = t.name.clone();
        let kv: Vec<(String, String)> = changes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let r = tokio::task::spawn_blocking(move || {
            crate::incremental_alter::set_topic_configs(c.inner(), &topic, &kv, OP_TIMEOUT)
        })
        .await
        .expect("alter task");
        self.metrics.external("kafka", "alter_configs", r.is_ok());
        r.map_err(|source| TopicsError::Admin { operation: "alter_configs", source })
    }

    fn check_results(&self, operation: &'static str, r: KafkaResult<Vec<TopicResult>>) -> Result<(), TopicsError> {
        let ok = matches!(&r, Ok(v) if v.iter().all(|r| r.is_ok() || matches!(r, Err((_, RDKafkaErrorCode::TopicAlreadyExists)))));
        self.metrics.external("kafka", operation, ok);
        for res in r.map_err(|source| TopicsError::Admin { operation, source })? {
            match res {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(TopicsError::Admin { operation, source: KafkaError::AdminOp(code) }),
            }
        }
        Ok(())
    }

    /// Delete the topics this pipeline owns (deletionPolicy Delete; see [`owned_topics`]). Missing topics are
    /// fine: clean-up is idempotent.
    pub async fn cleanup(&self, p: &CryptoPipeline, kube: &kube::Client) -> Result<(), TopicsError> {
        let names = owned_topics(p);
        if names.is_empty() {
            return Ok(());
        }
        let client = self.client(p, kube).await?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let r = client.delete_topics(&refs, &opts()).await;
        let ok = matches!(&r, Ok(v) if v.iter().all(|r| r.is_ok() || matches!(r, Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)))));
        self.metrics.external("kafka", "delete_topics", ok);
        for res in r.map_err(|source| TopicsError::Admin { operation: "delete_topics", source })? {
            match res {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(TopicsError::Admin { operation: "delete_topics", source: KafkaError::AdminOp(code) });
                }
            }
        }
        Ok(())
    }
}

/// The topics this pipeline owns: those `status.topics` records as created or adopted by its UID (a record
/// without a UID, written before UIDs were recorded, counts as its own; one with another UID does not). A
/// pipeline that lost a `TopicConflict` records none, so the spec's names are never enough to delete a topic.
pub fn owned_topics(p: &CryptoPipeline) -> Vec<String> {
    let Some(t) = p.status.as_ref().and_then(|s| s.topics.as_ref()) else { return vec![] };
    if t.owner_uid.as_ref().is_some_and(|u| Some(u) != p.uid().as_ref()) {
        return vec![];
    }
    [&t.raw, &t.stream, &t.dlq].into_iter().filter(|n| !n.is_empty()).cloned().collect()
}

fn opts() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(OP_TIMEOUT)).operation_timeout(Some(OP_TIMEOUT))
}

async fn secret_value(secrets: &Api<Secret>, name: &str, key: &str) -> Result<String, TopicsError> {
    let s = secrets
        .get_opt(name)
        .await
        .map_err(|e| TopicsError::Secret(format!("reading Secret {name}: {e}")))?
        .ok_or_else(|| TopicsError::Secret(format!("Secret {name} does not exist")))?;
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| TopicsError::Secret(format!("Secret {name} has no key {key}")))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| TopicsError::Secret(format!("Secret {name} key {key} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_client_property_is_named_without_its_value() {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", "127.0.0.1:9").set("security.protocol", "hunter2-secret");
        let Err(raw) = cfg.create::<AdminClient<DefaultClientContext>>() else {
            panic!("librdkafka refuses the value")
        };
        assert!(raw.to_string().contains("hunter2-secret"), "librdkafka quotes the value: {raw}");
        let e = connect_error(raw);
        assert_eq!(e.reason(), KnownReason::ConfigInvalid);
        let text = e.to_string();
        assert!(text.contains("security.protocol") && !text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn an_admin_client_is_replaced_after_enough_distinct_topics() {
        // librdkafka connects lazily and no Secret is read without SASL/TLS: no broker or apiserver needed.
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let topics = TopicAdmin::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
        let spec = r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic"}],"kafka":{"bootstrapServers":"127.0.0.1:9"}}"#;
        let pipeline = |i: usize| {
            let mut p = CryptoPipeline::new(&format!("p{i}"), serde_json::from_str(spec).unwrap());
            p.metadata.namespace = Some("ns".into());
            p
        };
        let first = topics.client(&pipeline(0), &kube).await.unwrap();
        let per_pipeline = TopicRole::ALL.len();
        for i in 1..TOPICS_PER_CLIENT / per_pipeline + 1 {
            assert!(Arc::ptr_eq(&first, &topics.client(&pipeline(i), &kube).await.unwrap()), "pipeline {i}");
        }
        // The same topics again never rotate the client; new ones past the bound do.
        assert!(Arc::ptr_eq(&first, &topics.client(&pipeline(0), &kube).await.unwrap()));
        let next = topics.client(&pipeline(100_000), &kube).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &next));
        assert!(Arc::ptr_eq(&next, &topics.client(&pipeline(100_000), &kube).await.unwrap()));
    }

    #[tokio::test]
    async fn a_spec_that_does_not_render_is_config_invalid_not_secret_invalid() {
        let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let topics = TopicAdmin::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
        let spec = r#"{"symbols":["BTC"],"sources":[{"kind":"synthetic","pollInterval":"soon"}],
                       "kafka":{"bootstrapServers":"127.0.0.1:9"}}"#;
        let mut p = CryptoPipeline::new("p", serde_json::from_str(spec).unwrap());
        p.metadata.namespace = Some("ns".into());
        let outcome = topics.reconcile(&p, &kube, &[]).await;
        assert_eq!(outcome.check.reason, KnownReason::ConfigInvalid);
        assert!(outcome.check.message.contains("pollInterval"), "{}", outcome.check.message);
    }

    fn desired() -> DesiredTopic {
        DesiredTopic {
            role: TopicRole::Raw,
            name: "ns.p.raw".into(),
            partitions: 3,
            replication_factor: 1,
            configs: BTreeMap::from([
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "delete".into()),
            ]),
        }
    }

    fn live(partitions: i32, rf: i32, retention: &str) -> LiveTopic {
        LiveTopic {
            partitions,
            replication_factor: rf,
            configs: HashMap::from([
                ("retention.ms".into(), (retention.into(), true)),
                ("cleanup.policy".into(), ("delete".into(), false)),
                ("segment.bytes".into(), ("1234".into(), true)),
            ]),
        }
    }

    #[test]
    fn missing_topic_is_created() {
        assert!(plan(&desired(), None).create);
    }

    #[test]
    fn matching_topic_needs_nothing() {
        assert_eq!(plan(&desired(), Some(&live(3, 1, "1000"))), TopicPlan::default());
    }

    #[test]
    fn drift_in_a_managed_key_only_is_corrected() {
        let p = plan(&desired(), Some(&live(3, 1, "5")));
        assert_eq!(p.config_changes, BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]));
        assert!(!p.config_changes.contains_key("segment.bytes"));
    }

    #[test]
    fn partitions_grow_but_never_shrink_and_replication_is_fixed() {
        assert_eq!(plan(&desired(), Some(&live(2, 1, "1000"))).grow_partitions, Some(3));
        assert_eq!(
            plan(&desired(), Some(&live(5, 1, "1000"))).refused.unwrap().0,
            KnownReason::PartitionDecreaseRefused
        );
        assert_eq!(
            plan(&desired(), Some(&live(3, 2, "1000"))).refused.unwrap().0,
            KnownReason::ReplicationFactorChangeRefused
        );
    }
}
