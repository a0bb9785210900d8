//! The worker configuration: the one format the operator renders into the pipeline's ConfigMap
//! (`config.yaml`), every worker mode reads, and standalone mode builds from a CryptoPipeline manifest.
//!
//! Secrets are never in it: it names the environment variables and files where the pod finds them
//! (set by `valueFrom.secretKeyRef` and Secret volumes), so the ConfigMap can be read by anyone.

use std::path::PathBuf;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::duration::{self, InvalidDuration};
use crate::{CryptoPipeline, SaslMechanism, SourceKind, TopicRole};

/// Key of the configuration inside the ConfigMap, and the file name it is mounted as.
pub const CONFIG_FILE: &str = "config.yaml";
/// Where the ConfigMap is mounted in worker pods.
pub const CONFIG_DIR: &str = "/etc/cryptoviz";
/// Environment variable holding the database URL.
pub const DATABASE_URL_ENV: &str = "CRYPTOVIZ_DATABASE_URL";
/// Environment variable holding the Kafka SASL username.
pub const KAFKA_USERNAME_ENV: &str = "CRYPTOVIZ_KAFKA_USERNAME";
/// Environment variable holding the Kafka SASL password.
pub const KAFKA_PASSWORD_ENV: &str = "CRYPTOVIZ_KAFKA_PASSWORD";
/// Environment variable holding the gateway's JWT HS256 key.
pub const GATEWAY_JWT_KEY_ENV: &str = "CRYPTOVIZ_GATEWAY_JWT_KEY";
/// Environment variable the gateway reads its RS256/ES256 public keys (PEM or JWKS) from.
pub const GATEWAY_JWT_PUBLIC_KEYS_ENV: &str = "CRYPTOVIZ_GATEWAY_JWT_PUBLIC_KEYS";
/// Where the Kafka CA bundle is mounted in worker pods.
pub const KAFKA_CA_DIR: &str = "/etc/cryptoviz/kafka-ca";
/// Port of every worker's HTTP server (health, metrics; the gateway's SSE too).
pub const WORKER_HTTP_PORT: u16 = 8080;

/// The environment variable holding a source's API key.
pub fn api_key_env(kind: SourceKind) -> String {
    format!("CRYPTOVIZ_{}_API_KEY", kind.as_str().to_uppercase())
}

/// Everything a worker needs to know, rendered from one CryptoPipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerConfig {
    /// Which pipeline this is (labels on metrics).
    pub pipeline: PipelineRef,
    /// Upper-case base tickers.
    pub symbols: Vec<String>,
    /// Quote currency.
    pub quote: String,
    /// Sources to scrape.
    pub sources: Vec<SourceConfig>,
    /// Kafka connection and topic names.
    pub kafka: KafkaConfig,
    /// Database; absent when the pipeline has no storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageConfig>,
    /// Scraper knobs.
    pub scraper: ScraperConfig,
    /// Consumer knobs.
    pub consumer: ConsumerConfig,
    /// Gateway knobs.
    pub gateway: GatewayConfig,
    /// Price-move alerts.
    pub alerts: AlertsConfig,
}

/// The owning pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineRef {
    /// Namespace of the CryptoPipeline.
    pub namespace: String,
    /// Name of the CryptoPipeline.
    pub name: String,
}

/// One source as a worker runs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    /// Which source.
    pub kind: SourceKind,
    /// Poll interval for REST sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Base URL override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key, when the source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Synthetic: ticks per second per symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Synthetic: seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Kafka as the workers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers.
    pub bootstrap_servers: String,
    /// Topic carrying everything.
    pub raw_topic: String,
    /// Topic the gateway streams.
    pub stream_topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// TLS: the CA file to trust (None with `tls: true` means the system roots).
    #[serde(default)]
    pub tls: bool,
    /// PEM CA bundle path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// SASL mechanism, credentials in [`KAFKA_USERNAME_ENV`] / [`KAFKA_PASSWORD_ENV`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
}

impl KafkaConfig {
    /// librdkafka client properties for this connection (credentials read from the environment).
    /// Shared by the operator's admin client and every worker, so both connect the same way.
    pub fn client_properties(&self, env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut props = vec![("bootstrap.servers".to_string(), self.bootstrap_servers.clone())];
        let protocol = match (self.tls, self.sasl_mechanism.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        props.push(("security.protocol".into(), protocol.into()));
        if let Some(ca) = &self.ca_file {
            props.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        if let Some(mech) = self.sasl_mechanism {
            props.push(("sasl.mechanism".into(), mech.as_str().into()));
            props.push(("sasl.username".into(), env(KAFKA_USERNAME_ENV).unwrap_or_default()));
            props.push(("sasl.password".into(), env(KAFKA_PASSWORD_ENV).unwrap_or_default()));
        }
        props
    }
}

/// The database as the workers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Environment variable holding the connection URL.
    pub url_env: String,
    /// Schema holding the pipeline's tables.
    pub schema: String,
}

/// Scraper knobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScraperConfig {
    /// Drop ticks equal to the previous one.
    pub suppress_unchanged_ticks: bool,
}

/// Consumer knobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Kafka consumer group.
    pub group_id: String,
    /// Rows per transaction at most.
    pub batch_size: u32,
    /// Flush a partial batch after this many milliseconds.
    pub flush_interval_ms: u64,
}

/// Gateway knobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Concurrent clients at most.
    pub max_clients: u32,
    /// Events kept for resuming clients.
    pub replay_buffer: u32,
    /// Allowed CORS origins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    /// Environment variable holding the HS256 JWT key, when HS256 auth is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_key_env: Option<String>,
    /// Environment variable holding RS256/ES256 public keys (PEM or JWKS), when that auth is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_keys_env: Option<String>,
    /// Audience a token's `aud` must name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Issuer a token's `iss` must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Refuse tokens without `exp`.
    #[serde(default = "yes")]
    pub jwt_require_exp: bool,
    /// Connection limits (`spec.gateway.limits`).
    #[serde(default)]
    pub limits: GatewayLimits,
}

/// Connection limits of the gateway (`spec.gateway.limits`, durations in milliseconds); a field left out
/// takes the CRD's default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewayLimits {
    /// Concurrent stream clients per client address.
    pub max_clients_per_address: u32,
    /// CIDRs of proxies believed about `X-Forwarded-For`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Time to send the request head.
    pub header_timeout_ms: u64,
    /// Time a connection may make no progress.
    pub idle_timeout_ms: u64,
    /// Largest request head.
    pub max_request_head_bytes: u32,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_clients_per_address: 100,
            trusted_proxies: Vec::new(),
            header_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_request_head_bytes: 16 * 1024,
        }
    }
}

fn yes() -> bool {
    true
}

/// Alert knobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertsConfig {
    /// Emit alerts.
    pub enabled: bool,
    /// Threshold in percent.
    pub threshold_percent: f64,
    /// Window in milliseconds.
    pub window_ms: u64,
}

/// A pipeline that cannot be rendered (only durations can fail: the schema checked everything else,
/// but standalone mode reads files the apiserver never saw).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A duration field does not parse.
    #[error("{field}: {source}")]
    Duration {
        /// JSON path of the field.
        field: &'static str,
        /// Why.
        source: InvalidDuration,
    },
}

fn ms(field: &'static str, s: &str) -> Result<u64, RenderError> {
    duration::parse_millis(s).map_err(|source| RenderError::Duration { field, source })
}

impl WorkerConfig {
    /// Render the worker configuration for a pipeline.
    pub fn for_pipeline(p: &CryptoPipeline) -> Result<Self, RenderError> {
        let spec = &p.spec;
        let namespace = p.namespace().unwrap_or_else(|| "default".into());
        let name = p.name_any();
        let sources = spec
            .sources
            .iter()
            .map(|s| {
                Ok(SourceConfig {
                    kind: s.kind,
                    poll_interval_ms: s
                        .poll_interval
                        .as_deref()
                        .map(|d| ms("spec.sources[].pollInterval", d))
                        .transpose()?,
                    base_url: s.base_url.clone(),
                    api_key_env: s.api_key_secret_ref.as_ref().map(|_| api_key_env(s.kind)),
                    rate: s.rate,
                    seed: s.seed,
                })
            })
            .collect::<Result<Vec<_>, RenderError>>()?;
        Ok(WorkerConfig {
            pipeline: PipelineRef { namespace: namespace.clone(), name: name.clone() },
            symbols: spec.symbols.clone(),
            quote: spec.quote.clone(),
            sources,
            kafka: KafkaConfig {
                bootstrap_servers: spec.kafka.bootstrap_servers.clone(),
                raw_topic: p.topic_name(TopicRole::Raw),
                stream_topic: p.topic_name(TopicRole::Stream),
                dlq_topic: p.topic_name(TopicRole::Dlq),
                tls: spec.kafka.tls.is_some(),
                ca_file: spec
                    .kafka
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_secret_ref.as_ref())
                    .map(|r| PathBuf::from(KAFKA_CA_DIR).join(&r.key)),
                sasl_mechanism: spec.kafka.sasl.as_ref().map(|s| s.mechanism),
            },
            storage: spec
                .timescale
                .as_ref()
                .map(|_| StorageConfig { url_env: DATABASE_URL_ENV.into(), schema: p.schema_name() }),
            scraper: ScraperConfig { suppress_unchanged_ticks: spec.scraper.suppress_unchanged_ticks },
            consumer: ConsumerConfig {
                group_id: format!("cryptoviz.{namespace}.{name}.consumer"),
                batch_size: spec.consumer.batch_size,
                flush_interval_ms: ms("spec.consumer.flushInterval", &spec.consumer.flush_interval)?,
            },
            gateway: GatewayConfig {
                heartbeat_interval_ms: ms("spec.gateway.heartbeatInterval", &spec.gateway.heartbeat_interval)?,
                max_clients: spec.gateway.max_clients,
                replay_buffer: spec.gateway.replay_buffer,
                cors_origins: spec.gateway.cors_origins.clone(),
                jwt_key_env: spec.gateway.auth_secret_ref.as_ref().map(|_| GATEWAY_JWT_KEY_ENV.into()),
                jwt_public_keys_env: spec
                    .gateway
                    .auth_public_keys_secret_ref
                    .as_ref()
                    .map(|_| GATEWAY_JWT_PUBLIC_KEYS_ENV.into()),
                jwt_audience: spec.gateway.auth_audience.clone(),
                jwt_issuer: spec.gateway.auth_issuer.clone(),
                jwt_require_exp: spec.gateway.auth_require_exp,
                limits: {
                    let l = &spec.gateway.limits;
                    GatewayLimits {
                        max_clients_per_address: l.max_clients_per_address,
                        trusted_proxies: l.trusted_proxies.clone(),
                        header_timeout_ms: ms("spec.gateway.limits.headerTimeout", &l.header_timeout)?,
                        idle_timeout_ms: ms("spec.gateway.limits.idleTimeout", &l.idle_timeout)?,
                        max_request_head_bytes: l.max_request_head_bytes,
                    }
                },
            },
            alerts: AlertsConfig {
                enabled: spec.alerts.enabled,
                threshold_percent: spec.alerts.threshold_percent,
                window_ms: ms("spec.alerts.window", &spec.alerts.window)?,
            },
        })
    }

    /// The YAML document stored in the ConfigMap. Deterministic, so its hash only changes with the spec.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("WorkerConfig always serialises")
    }

    /// Parse the YAML document a worker finds at `CONFIG_DIR/CONFIG_FILE`.
    pub fn from_yaml(s: &str) -> Result<Self, serde_saphyr::Error> {
        serde_saphyr::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CryptoPipelineSpec;

    fn pipeline(yaml: &str) -> CryptoPipeline {
        let spec: CryptoPipelineSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut p = CryptoPipeline::new("btc-live", spec);
        p.metadata.namespace = Some("markets".into());
        p
    }

    #[test]
    fn renders_defaults_and_round_trips() {
        let p = pipeline("symbols: [BTC, ETH]\nsources: [{kind: synthetic}]\nkafka: {bootstrapServers: 'k:9092'}\n");
        let c = WorkerConfig::for_pipeline(&p).unwrap();
        assert_eq!(c.kafka.raw_topic, "markets.btc-live.raw");
        assert_eq!(c.kafka.stream_topic, "markets.btc-live.stream");
        assert_eq!(c.consumer.flush_interval_ms, 1000);
        assert_eq!(c.gateway.heartbeat_interval_ms, 15_000);
        assert!(c.storage.is_none());
        assert_eq!(WorkerConfig::from_yaml(&c.to_yaml()).unwrap(), c);
    }

    #[test]
    fn secrets_are_named_never_copied() {
        let p = pipeline(
            "symbols: [BTC]\nsources: [{kind: coinmarketcap, apiKeySecretRef: {name: cmc, key: token}}]\n\
             kafka: {bootstrapServers: 'k:9092', sasl: {mechanism: SCRAM-SHA-512, secretName: kafka-user},\n\
             tls: {caSecretRef: {name: ca, key: ca.crt}}}\n\
             timescale: {connectionSecretRef: {name: db, key: url}}\n",
        );
        let c = WorkerConfig::for_pipeline(&p).unwrap();
        let yaml = c.to_yaml();
        assert!(yaml.contains("CRYPTOVIZ_COINMARKETCAP_API_KEY"));
        assert_eq!(c.kafka.ca_file.as_deref(), Some(std::path::Path::new("/etc/cryptoviz/kafka-ca/ca.crt")));
        assert_eq!(c.storage.unwrap().schema, "cv_markets_btc_live");
        let props = c.kafka.client_properties(|k| Some(format!("<{k}>")));
        assert!(props.contains(&("security.protocol".into(), "sasl_ssl".into())));
        assert!(props.contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into())));
        assert!(props.contains(&("sasl.password".into(), "<CRYPTOVIZ_KAFKA_PASSWORD>".into())));
    }
}
