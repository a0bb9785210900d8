//! The worker Deployments (scraper, consumer, gateway), the gateway's Service and price-move alerts.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

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
    /// Secret key holding an HS256 key: when set (or `authPublicKeysSecretRef` is), clients need a bearer
    /// JWT (`Authorization: Bearer`, or `?access_token=` for EventSource) signed with it; a token's
    /// `symbols` claim (`["BTC"]`, `["*"]` for all) limits what it may stream (403 beyond it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding public keys for RS256 / ES256 tokens: one PEM public key (RSA, or P-256 EC) or a
    /// JWKS document (`{"keys": [...]}`; a key with a `kid` is tried only for tokens naming it). Accepted
    /// alongside `authSecretRef`'s HS256 key. An unparsable document stops the gateway at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_public_keys_secret_ref: Option<SecretKeyRef>,
    /// When set, a token's `aud` must name this audience (tokens without `aud` are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub auth_audience: Option<String>,
    /// When set, a token's `iss` must be this issuer (tokens without `iss` are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub auth_issuer: Option<String>,
    /// Refuse tokens without `exp` (default). False accepts them; an `exp` that is present is always
    /// checked, and a stream is closed with a final `expired` event when its token's `exp` passes.
    #[serde(default = "default_true")]
    pub auth_require_exp: bool,
    /// The gateway's Service.
    #[serde(default)]
    pub service: GatewayServiceSpec,
    /// Connection limits every client meets, whatever it sends.
    #[serde(default)]
    pub limits: GatewayLimitsSpec,
}

/// Connection limits of the gateway, enforced on every connection and every path (`/stream` included).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayLimitsSpec {
    /// Concurrent `/stream` clients per client address and pod; more from one address are answered 503 with
    /// `Retry-After`. The address is the connection's peer, or the `X-Forwarded-For` client when the peer is
    /// one of `trustedProxies`.
    #[serde(default = "default_max_clients_per_address")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_clients_per_address: u32,
    /// CIDRs (`10.0.0.0/8`, `fd00::/8`, or one address) of the proxies and load balancers in front of the
    /// gateway. Only a peer in one of them is believed about `X-Forwarded-For`: the client is the rightmost
    /// address in it that is not itself a trusted proxy. Empty: the header is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 43)))]
    pub trusted_proxies: Vec<String>,
    /// How long a client has to send its whole request head once connected, e.g. `10s`; then the connection
    /// is closed without an answer.
    #[serde(default = "default_header_timeout")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub header_timeout: String,
    /// How long a connection may make no progress, e.g. `30s`: a `/stream` client whose socket stays full
    /// (it reads nothing) is disconnected after this long even when no events flow, and any other response
    /// not taken by then is abandoned. (A stream client is also disconnected as soon as it falls 1024 events
    /// behind.)
    #[serde(default = "default_idle_timeout")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(ms|s|m|h|d|w)([0-9]+(ms|s|m|h|d|w))*$"))]
    pub idle_timeout: String,
    /// Largest request head (request line and headers) in bytes; a larger one is answered 431.
    #[serde(default = "default_max_request_head_bytes")]
    #[schemars(range(min = 1024, max = 1048576))]
    pub max_request_head_bytes: u32,
}

impl Default for GatewayLimitsSpec {
    fn default() -> Self {
        Self {
            max_clients_per_address: default_max_clients_per_address(),
            trusted_proxies: Vec::new(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_request_head_bytes: default_max_request_head_bytes(),
        }
    }
}

fn default_max_clients_per_address() -> u32 {
    100
}
fn default_header_timeout() -> String {
    "10s".into()
}
fn default_idle_timeout() -> String {
    "30s".into()
}
fn default_max_request_head_bytes() -> u32 {
    16 * 1024
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
            auth_public_keys_secret_ref: None,
            auth_audience: None,
            auth_issuer: None,
            auth_require_exp: true,
            service: GatewayServiceSpec::default(),
            limits: GatewayLimitsSpec::default(),
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
