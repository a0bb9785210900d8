//! What standalone mode provisions itself, with the operator's own definitions: the pipeline's topics on
//! the broker (`--kafka`) and its schema in the database (`--timescale`). In a cluster the operator does both.

use std::time::Duration;

use anyhow::Context as _;
use cryptoviz_crds::CryptoPipeline;
use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_crds::topics::desired_topics;
use cryptoviz_runtime::storage::{self, Mode};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::Connection as _;

use crate::bus::kafka::client_config;

/// How long the broker gets to answer topic creation before standalone mode gives up.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the database gets to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the schema is reconciled again while running: on plain PostgreSQL that is what enforces
/// retention (TimescaleDB runs its own policies).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Create the pipeline's missing topics exactly as the operator does (partitions, replication and every
/// managed config: retention, cleanup policy, compression, message size, the user's `config`). Existing
/// topics are used as they are: in a cluster the operator owns them.
pub async fn create_topics(p: &CryptoPipeline, cfg: &WorkerConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&cfg.kafka).create().context("creating the Kafka admin client")?;
    let desired = desired_topics(p);
    let topics: Vec<NewTopic<'_>> = desired
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor)),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let bootstrap = &cfg.kafka.bootstrap_servers;
    let results = tokio::time::timeout(ADMIN_TIMEOUT + Duration::from_secs(1), admin.create_topics(&topics, &opts))
        .await
        .map_err(|_| anyhow::anyhow!("Kafka at {bootstrap} did not answer within {ADMIN_TIMEOUT:?}"))?
        .with_context(|| format!("creating topics on {bootstrap}"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::info!(topic = %name, "topic exists"),
            Err((name, code)) => anyhow::bail!("creating topic {name} on {bootstrap}: {code}"),
        }
    }
    Ok(())
}

/// Create or migrate the pipeline's schema (tables, candles, retention and compression) with the
/// operator's storage code; returns the mode the database supports.
pub async fn prepare_schema(p: &CryptoPipeline, url: &str) -> anyhow::Result<Mode> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| anyhow::anyhow!("the database did not answer within {CONNECT_TIMEOUT:?}"))?
        .context("connecting to the database")?;
    let mode = storage::reconcile(p, &mut conn, &()).await;
    let _ = conn.close().await;
    let mode = mode.with_context(|| format!("preparing schema {}", p.schema_name()))?;
    tracing::info!(schema = %p.schema_name(), ?mode, "schema ready");
    Ok(mode)
}
