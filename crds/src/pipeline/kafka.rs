//! Kafka connection, security and the pipeline's topics.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{DeletionPolicy, SecretKeyRef};

/// Kafka connection and topics.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated bootstrap servers, e.g. `redpanda-0.redpanda:9092,redpanda-1.redpanda:9092`.
    #[schemars(length(min = 1), regex(pattern = r"^[^,\s]+(,[^,\s]+)*$"))]
    pub bootstrap_servers: String,

    /// TLS to the brokers. Omit for plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,

    /// SASL authentication. Omit for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,

    /// The pipeline's topics.
    #[serde(default)]
    pub topics: TopicsSpec,

    /// Retain (default) keeps the topics when the pipeline is deleted. Delete removes them, after the worker
    /// Deployments are gone (so no producer writes on), and only the topics `status.topics` records as created
    /// or adopted by this pipeline's UID: topics lost to another pipeline in a `TopicConflict` stay. A deletion
    /// that cannot finish within the operator's finalizer timeout (brokers unreachable, Secret gone) is
    /// abandoned with a `CleanupAbandoned` Warning event naming the topics left behind; the annotation
    /// `cryptoviz.io/skip-cleanup: "true"` skips all clean-up.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// TLS settings for Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTls {
    /// Secret key holding the PEM CA bundle that signed the brokers' certificates. Omit to use the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// SASL settings for Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSasl {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: SaslMechanism,
    /// Name of a Secret with the keys `username` and `password`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A SASL mechanism supported by Kafka and Redpanda.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SaslMechanism {
    /// Username and password in clear over the (preferably TLS) connection.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and Kafka use.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The pipeline's topics: `raw` carries everything (the consumer's input), `stream` what the live gateway needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.raw) || !has(self.stream) || !has(self.raw.name) || !has(self.stream.name) || self.raw.name != self.stream.name").message("the raw and stream topics must have different names"))]
pub struct TopicsSpec {
    /// Every normalised message (ticks and trades). Default name `<namespace>.<pipeline>.raw`.
    #[serde(default)]
    pub raw: TopicSpec,
    /// What the live gateway streams (ticks, trades, alerts). Default name `<namespace>.<pipeline>.stream`.
    #[serde(default)]
    pub stream: TopicSpec,
    /// Dead letters: messages the consumer could not store, with the reason in headers.
    /// Default name `<namespace>.<pipeline>.dlq`.
    #[serde(default)]
    pub dlq: TopicSpec,
}

/// One Kafka topic as declared.
///
/// The name is fixed at creation: `self == oldSelf` on `name` only fires when both versions have one, so the
/// rule at this level also refuses adding or removing it (either would re-point the pipeline at another topic
/// and orphan the old one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) == has(oldSelf.name)").message("a topic name may not be added or removed after creation: create a new pipeline to move to a new topic").field_path(".name"))]
pub struct TopicSpec {
    /// Topic name override, fixed at creation: it may not be changed, added or removed afterwards.
    /// Kafka's rules: letters, digits, `.`, `_`, `-`, at most 249 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..'").message("a topic may not be named '.' or '..'"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("a topic name is immutable: create a new pipeline to move to a new topic"))]
    pub name: Option<String>,

    /// Number of partitions. May grow, never shrink (Kafka cannot remove partitions).
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("partitions may not decrease: Kafka cannot remove partitions"))]
    pub partitions: i32,

    /// Replication factor. Immutable once created.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replicationFactor is immutable"))]
    pub replication_factor: i32,

    /// How long the broker keeps messages (`retention.ms`), e.g. `7d`.
    #[serde(default = "default_topic_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub retention: String,

    /// Extra topic configs (e.g. `min.insync.replicas: "2"`). Managed keys set here are kept equal on the broker;
    /// keys not listed are left alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z0-9.]+$'))").message("topic config keys are lower-case words separated by dots"))]
    pub config: BTreeMap<String, String>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            name: None,
            partitions: default_partitions(),
            replication_factor: default_replication(),
            retention: default_topic_retention(),
            config: BTreeMap::new(),
        }
    }
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_topic_retention() -> String {
    "7d".into()
}
