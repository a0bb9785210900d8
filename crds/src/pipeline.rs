//! The `CryptoPipeline` custom resource: what a user asks for (spec) and what the operator saw (status).
//!
//! Every field's doc comment becomes `kubectl explain` text, and every validation here is enforced by the
//! apiserver (OpenAPI or CEL), so a bad spec is refused at apply time with the message written here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A crypto-market data pipeline: sources scraped into Kafka topics, stored in TimescaleDB and streamed
/// live to browsers over Server-Sent Events.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cryptoviz.io",
    version = "v1alpha1",
    kind = "CryptoPipeline",
    namespaced,
    shortname = "cpl",
    category = "cryptoviz",
    doc = "A crypto-market data pipeline: sources scraped into Kafka topics, stored in TimescaleDB and streamed live to browsers.",
    status = "CryptoPipelineStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Symbols","type":"string","jsonPath":".spec.symbols"}"#,
    printcolumn = r#"{"name":"Sources","type":"string","jsonPath":".spec.sources[*].kind"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CryptoPipelineSpec {
    /// Base assets to follow, as upper-case tickers (BTC, ETH, SOL). At least one, at most 200, no repeats.
    #[schemars(length(min = 1, max = 200), inner(regex(pattern = r"^[A-Z0-9]{1,15}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub symbols: Vec<String>,

    /// Quote currency prices are expressed in (ISO code, upper case).
    #[serde(default = "default_quote")]
    #[schemars(regex(pattern = r"^[A-Z]{3,5}$"))]
    pub quote: String,

    /// Where prices and trades come from. At least one; each kind at most once.
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(validation = Rule::new("self.all(s, self.filter(t, t.kind == s.kind).size() == 1)").message("each source kind may be listed only once"))]
    pub sources: Vec<SourceSpec>,

    /// The Kafka (or Redpanda) cluster the pipeline's topics live in.
    pub kafka: KafkaSpec,

    /// TimescaleDB (or plain PostgreSQL) storage for history. Omit to run without storage and without a consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<TimescaleSpec>,

    /// The scraper Deployment, which pulls from the sources and produces to Kafka.
    #[serde(default)]
    pub scraper: ScraperSpec,

    /// The consumer Deployment, which batches the raw topic into the database.
    #[serde(default)]
    pub consumer: ConsumerSpec,

    /// The SSE gateway (Deployment + Service) streaming live events to browsers.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// Price-move alerts emitted on the stream topic.
    #[serde(default)]
    pub alerts: AlertsSpec,

    /// Prometheus Operator integration.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Stop reconciling: while true the operator writes nothing (no children, no topics, no status but the
    /// Paused condition). The annotation `cryptoviz.io/pause-reconciliation: "true"` does the same.
    #[serde(default)]
    pub paused: bool,
}

fn default_quote() -> String {
    "USD".into()
}

/// One market-data source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind != 'coinmarketcap' || has(self.apiKeySecretRef)").message("coinmarketcap requires apiKeySecretRef: a Secret holding the CoinMarketCap API key"))]
pub struct SourceSpec {
    /// Which source: coingecko, coinmarketcap, kraken, binance or synthetic (a seeded random market, offline).
    pub kind: SourceKind,

    /// How often REST sources (coingecko, coinmarketcap) are polled, e.g. `30s`. Ignored by streaming sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub poll_interval: Option<String>,

    /// Secret key holding the source's API key (required for coinmarketcap, optional for coingecko).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// Override the source's base URL (REST) or WebSocket URL, e.g. for a proxy or a test server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(https?|wss?)://[^\s]+$"))]
    pub base_url: Option<String>,

    /// Synthetic source only: ticks per second per symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub rate: Option<u32>,

    /// Synthetic source only: random seed, so a run can be replayed exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The kind of a market-data source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// CoinGecko REST (`/api/v3/simple/price`).
    Coingecko,
    /// CoinMarketCap REST (`/v1/cryptocurrency/quotes/latest`), API key required.
    Coinmarketcap,
    /// Kraken WebSocket v2 (ticker and trade channels).
    Kraken,
    /// Binance combined WebSocket streams (trade and ticker).
    Binance,
    /// A seeded random-walk market: the offline default for demos, tests and load.
    Synthetic,
}

impl SourceKind {
    /// The lower-case name used on the wire, in metrics and in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Coingecko => "coingecko",
            SourceKind::Coinmarketcap => "coinmarketcap",
            SourceKind::Kraken => "kraken",
            SourceKind::Binance => "binance",
            SourceKind::Synthetic => "synthetic",
        }
    }
}

/// A key inside a Secret in the pipeline's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What happens to external state (topics, database schema) when the CryptoPipeline is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Keep topics and data (the default: nothing is lost by surprise).
    #[default]
    Retain,
    /// Remove them through the operator's finalizer.
    Delete,
}

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

    /// Retain (default) keeps the topics when the pipeline is deleted; Delete removes them.
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
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    /// Topic name override. Kafka's rules: letters, digits, `.`, `_`, `-`, at most 249 characters.
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

/// TimescaleDB (or plain PostgreSQL) storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimescaleSpec {
    /// Secret key holding the connection URL (`postgres://user:password@host:5432/db?sslmode=require`).
    pub connection_secret_ref: SecretKeyRef,

    /// Database schema for this pipeline's tables. Default: the pipeline's name with `-` replaced by `_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub schema: Option<String>,

    /// How long rows are kept, per table.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// Compress chunks older than this (TimescaleDB only), e.g. `7d`. Omit for no compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub compress_after: Option<String>,

    /// Retain (default) keeps the schema and its data when the pipeline is deleted; Delete drops the schema.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Retention per table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Tick (price) rows, default `90d`.
    #[serde(default = "default_ticks_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub ticks: String,
    /// Trade rows, default `30d`.
    #[serde(default = "default_trades_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub trades: String,
    /// OHLCV candles (1 minute and 1 hour), default `730d`.
    #[serde(default = "default_candles_retention")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub candles: String,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            ticks: default_ticks_retention(),
            trades: default_trades_retention(),
            candles: default_candles_retention(),
        }
    }
}

fn default_ticks_retention() -> String {
    "90d".into()
}
fn default_trades_retention() -> String {
    "30d".into()
}
fn default_candles_retention() -> String {
    "730d".into()
}

/// Settings shared by every worker Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Number of pods. 0 stops the worker without deleting its configuration.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// CPU and memory requests and limits for the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container image override. Default: the operator's own worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self { replicas: default_replicas(), resources: None, image: None }
    }
}

fn default_replicas() -> i32 {
    1
}

/// The scraper worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScraperSpec {
    /// Replicas, resources and image.
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Do not produce a tick whose price, volume and change equal the previous one for the same source and symbol.
    #[serde(default)]
    pub suppress_unchanged_ticks: bool,
}

/// The consumer worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Replicas, resources and image.
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Rows per database transaction at most. A full batch is written only while a backlog is drained (live
    /// traffic is flushed by `flushInterval` long before); larger batches amortise each transaction's cost —
    /// 20000 drains ~1.4× faster than 5000 (docs/benchmarks.md) for ~15 MB more memory per batch in flight.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 100000))]
    pub batch_size: u32,
    /// Flush a partial batch after this long, e.g. `1s`.
    #[serde(default = "default_flush_interval")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub flush_interval: String,
}

impl Default for ConsumerSpec {
    fn default() -> Self {
        Self {
            workload: WorkloadSpec::default(),
            batch_size: default_batch_size(),
            flush_interval: default_flush_interval(),
        }
    }
}

fn default_batch_size() -> u32 {
    20000
}
fn default_flush_interval() -> String {
    "1s".into()
}

/// The SSE gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Run the gateway. When false its Deployment and Service are removed.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Replicas, resources and image.
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Interval between heartbeat events on idle streams, e.g. `15s`.
    #[serde(default = "default_heartbeat")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub heartbeat_interval: String,
    /// Concurrent SSE clients per pod; more are answered 503.
    #[serde(default = "default_max_clients")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_clients: u32,
    /// Events kept per pod for clients resuming with Last-Event-ID.
    #[serde(default = "default_replay_buffer")]
    #[schemars(range(min = 0, max = 1000000))]
    pub replay_buffer: u32,
    /// Browser origins allowed by CORS (`https://app.example.com`). Empty: same origin only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    /// Secret key holding an HS256 key: when set, clients need a bearer JWT signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// The gateway's Service.
    #[serde(default)]
    pub service: GatewayServiceSpec,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            workload: WorkloadSpec::default(),
            heartbeat_interval: default_heartbeat(),
            max_clients: default_max_clients(),
            replay_buffer: default_replay_buffer(),
            cors_origins: Vec::new(),
            auth_secret_ref: None,
            service: GatewayServiceSpec::default(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_heartbeat() -> String {
    "15s".into()
}
fn default_max_clients() -> u32 {
    10000
}
fn default_replay_buffer() -> u32 {
    10000
}

/// The gateway's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port.
    #[serde(default = "default_gateway_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for GatewayServiceSpec {
    fn default() -> Self {
        Self { type_: ServiceType::default(), port: default_gateway_port() }
    }
}

fn default_gateway_port() -> i32 {
    8080
}

/// A Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Price-move alerts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsSpec {
    /// Emit alerts at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Alert when a symbol's price moves by more than this many percent within `window`.
    #[serde(default = "default_threshold")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 100.0").message("thresholdPercent must be in (0, 100]"))]
    pub threshold_percent: f64,
    /// The window the move is measured over, e.g. `5m`.
    #[serde(default = "default_alert_window")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub window: String,
}

impl Default for AlertsSpec {
    fn default() -> Self {
        Self { enabled: true, threshold_percent: default_threshold(), window: default_alert_window() }
    }
}

fn default_threshold() -> f64 {
    5.0
}
fn default_alert_window() -> String {
    "5m".into()
}

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
    /// The Kafka topics provisioned for this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicsStatus>,
    /// The gateway's in-cluster URL (`http://<service>.<namespace>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// The database schema holding this pipeline's tables.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitoring(json: &str) -> MonitoringSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pod_monitor_and_its_deprecated_alias_both_set_the_mode() {
        assert_eq!(monitoring("{}").pod_monitor_mode(), PodMonitorMode::Auto);
        assert_eq!(monitoring(r#"{"podMonitor":"disabled"}"#).pod_monitor_mode(), PodMonitorMode::Disabled);
        let old = monitoring(r#"{"serviceMonitor":"enabled"}"#);
        assert_eq!(old.pod_monitor_mode(), PodMonitorMode::Enabled);
        assert_eq!(old.pod_monitor_field(), "monitoring.serviceMonitor");
        let both = monitoring(r#"{"podMonitor":"disabled","serviceMonitor":"auto"}"#);
        assert_eq!(both.pod_monitor_mode(), PodMonitorMode::Disabled, "podMonitor wins");
        assert_eq!(both.pod_monitor_field(), "monitoring.podMonitor");
    }

    #[test]
    fn the_deprecated_spelling_is_written_back_as_read() {
        let old = monitoring(r#"{"serviceMonitor":"disabled"}"#);
        assert_eq!(serde_json::to_value(&old).unwrap(), serde_json::json!({"serviceMonitor": "disabled"}));
    }

    #[test]
    fn phase_serialises_as_its_name() {
        for phase in [Phase::Ready, Phase::Progressing, Phase::Degraded, Phase::Paused] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }
}
