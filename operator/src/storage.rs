//! The pipeline's database as the operator reconciles it: the connection from the pipeline's Secret, the
//! schema brought to the spec with [`cryptoviz_runtime::storage`] (shared with standalone mode), and the
//! `StorageReady` condition. Owns the schema's clean-up.

use std::sync::Arc;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
pub use cryptoviz_runtime::storage::{Mode, SchemaError, desired_retention, latest_version};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::conditions::{ConditionType, KnownReason, Reason};
use crate::metrics::Metrics;
use crate::status::Check;

/// Condition type owned by this module.
pub const CONDITION: ConditionType = ConditionType::StorageReady;

/// Why storage could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The connection Secret is missing or invalid.
    #[error("{0}")]
    Secret(String),
    /// The database did not answer.
    #[error("database unreachable: {0}")]
    Unreachable(sqlx::Error),
    /// A statement failed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl StorageError {
    fn reason(&self) -> Reason {
        match self {
            StorageError::Secret(_) => KnownReason::SecretInvalid.into(),
            StorageError::Unreachable(_) => KnownReason::DatabaseUnreachable.into(),
            StorageError::Schema(e) => Reason::parse(e.reason()),
        }
    }
}

/// The outcome of reconciling one pipeline's storage.
pub struct StorageOutcome {
    /// The StorageReady verdict.
    pub check: Check,
}

/// The storage reconciler.
pub struct Storage {
    metrics: Arc<Metrics>,
}

/// Database changes count as the operator's external operations.
impl cryptoviz_runtime::storage::Recorder for Metrics {
    fn database(&self, operation: &'static str, ok: bool) {
        self.external("database", operation, ok);
    }
}

impl Storage {
    /// A storage reconciler recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Storage { metrics }
    }

    async fn connect(&self, p: &CryptoPipeline, kube: &kube::Client) -> Result<PgConnection, StorageError> {
        let ts = p.spec.timescale.as_ref().expect("storage is configured");
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), &p.namespace().unwrap_or_default());
        let r = &ts.connection_secret_ref;
        let secret = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| StorageError::Secret(format!("reading Secret {}: {e}", r.name)))?
            .ok_or_else(|| StorageError::Secret(format!("Secret {} does not exist", r.name)))?;
        let url = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| StorageError::Secret(format!("Secret {} has no UTF-8 key {}", r.name, r.key)))?;
        // Never echo the URL: it carries the password.
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|_| StorageError::Secret(format!("Secret {} key {} is not a postgres:// URL", r.name, r.key)))?;
        let opts = opts.application_name("cryptoviz-operator").log_statements(tracing::log::LevelFilter::Debug);
        // One short-lived connection per reconcile: policies change rarely, and the database may allow few.
        let c = tokio::time::timeout(Duration::from_secs(15), PgConnection::connect_with(&opts))
            .await
            .map_err(|_| StorageError::Unreachable(sqlx::Error::PoolTimedOut))?
            .map_err(StorageError::Unreachable);
        self.metrics.external("database", "connect", c.is_ok());
        c
    }

    /// Reconcile one pipeline's storage.
    pub async fn reconcile(&self, p: &CryptoPipeline, kube: &kube::Client) -> StorageOutcome {
        if p.spec.timescale.is_none() {
            return StorageOutcome {
                check: Check::ok(CONDITION, KnownReason::NotRequired, "no timescale storage is configured"),
            };
        }
        let result = async {
            let mut c = self.connect(p, kube).await?;
            let r = self.reconcile_with(p, &mut c).await;
            let _ = c.close().await;
            r
        }
        .await;
        let check = match result {
            Ok(Mode::Timescale) => Check::ok(
                CONDITION,
                KnownReason::TimescaleDb,
                format!("schema {} with hypertables, candles and policies matches the spec", p.schema_name()),
            ),
            Ok(Mode::Plain) => Check::ok(
                CONDITION,
                KnownReason::PlainPostgreSql,
                format!(
                    "TimescaleDB is not available: schema {} uses plain tables, candle views and operator-run retention",
                    p.schema_name()
                ),
            ),
            Err(e) => Check::failed(CONDITION, e.reason(), e.to_string()),
        };
        StorageOutcome { check }
    }

    /// Reconcile schema, candles and policies over an open connection (what `reconcile` does once connected).
    pub async fn reconcile_with(&self, p: &CryptoPipeline, c: &mut PgConnection) -> Result<Mode, StorageError> {
        Ok(cryptoviz_runtime::storage::reconcile(p, c, &*self.metrics).await?)
    }

    /// Drop the pipeline's schema (deletionPolicy Delete). Idempotent.
    pub async fn cleanup(&self, p: &CryptoPipeline, kube: &kube::Client) -> Result<(), StorageError> {
        let mut c = self.connect(p, kube).await?;
        let r = self.cleanup_with(p, &mut c).await;
        let _ = c.close().await;
        r
    }

    /// Drop the pipeline's schema over an open connection.
    pub async fn cleanup_with(&self, p: &CryptoPipeline, c: &mut PgConnection) -> Result<(), StorageError> {
        Ok(cryptoviz_runtime::storage::drop_schema(p, c, &*self.metrics).await?)
    }
}
