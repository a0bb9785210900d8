//! The `CryptoPipeline` custom resource: what a user asks for (spec) and what the operator saw (status).
//!
//! Every field's doc comment becomes `kubectl explain` text, and every validation here is enforced by the
//! apiserver (OpenAPI or CEL), so a bad spec is refused at apply time with the message written here.

mod kafka;
mod monitoring;
mod status;
mod storage;
mod workloads;

pub use kafka::*;
pub use monitoring::*;
pub use status::*;
pub use storage::*;
pub use workloads::*;

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

#[cfg(test)]
mod tests;
