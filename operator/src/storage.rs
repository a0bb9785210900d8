//! The pipeline's database as the operator reconciles it: the connection from the pipeline's Secret, the
//! schema brought to the spec with [`cryptoviz_runtime::storage`] (shared with standalone mode), and the
//! `StorageReady` condition. Owns the schema's clean-up.
//!
//! A schema is used only once claimed: created with this pipeline's owner mark, or already carrying it (see
//! [`cryptoviz_runtime::storage::claim`]); another pipeline's schema is `SchemaConflict`. Every statement runs
//! under the connection's `statement_timeout` and `lock_timeout`, so no reconcile or clean-up waits on the
//! database for ever.

use std::sync::Arc;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_runtime::storage::{Claim, Dropped, Owner};
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
    /// The schema belongs to another pipeline, or exists without the operator's mark.
    #[error("{0}")]
    Conflict(String),
}

/// The longest any one statement of the operator may run (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a statement waits for a table or schema lock (`lock_timeout`), e.g. behind a consumer's insert.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl StorageError {
    fn reason(&self) -> Reason {
        match self {
            StorageError::Secret(_) => KnownReason::SecretInvalid.into(),
            StorageError::Unreachable(_) => KnownReason::DatabaseUnreachable.into(),
            StorageError::Schema(e) => Reason::parse(e.reason()),
            StorageError::Conflict(_) => KnownReason::SchemaConflict.into(),
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
        let timeouts = [
            ("statement_timeout", format!("{}ms", STATEMENT_TIMEOUT.as_millis())),
            ("lock_timeout", format!("{}ms", LOCK_TIMEOUT.as_millis())),
        ];
        let opts = opts
            .application_name("cryptoviz-operator")
            .options(timeouts)
            .log_statements(tracing::log::LevelFilter::Debug);
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

    /// Claim the schema, then reconcile it, its candles and policies over an open connection (what `reconcile`
    /// does once connected).
    pub async fn reconcile_with(&self, p: &CryptoPipeline, c: &mut PgConnection) -> Result<Mode, StorageError> {
        let schema = p.schema_name();
        let (uid, ns, name) = (p.uid().unwrap_or_default(), p.namespace().unwrap_or_default(), p.name_any());
        let owner = Owner { uid: &uid, namespace: &ns, name: &name };
        // A schema this pipeline recorded before owner marks existed is its own: it is marked, not refused.
        let recorded = p.status.as_ref().and_then(|s| s.schema.as_deref()) == Some(schema.as_str());
        match cryptoviz_runtime::storage::claim(c, &*self.metrics, &schema, &owner, recorded).await? {
            Claim::Ours => {}
            Claim::Taken(mark) => return Err(StorageError::Conflict(taken(&schema, mark))),
        }
        Ok(cryptoviz_runtime::storage::reconcile(p, c, &*self.metrics).await?)
    }

    /// Drop the pipeline's schema (deletionPolicy Delete) when it carries this pipeline's mark. Idempotent.
    pub async fn cleanup(&self, p: &CryptoPipeline, kube: &kube::Client) -> Result<Dropped, StorageError> {
        let mut c = self.connect(p, kube).await?;
        let r = self.cleanup_with(p, &mut c).await;
        let _ = c.close().await;
        r
    }

    /// Drop the pipeline's schema over an open connection, only when it carries this pipeline's mark.
    pub async fn cleanup_with(&self, p: &CryptoPipeline, c: &mut PgConnection) -> Result<Dropped, StorageError> {
        let uid = p.uid().unwrap_or_default();
        Ok(cryptoviz_runtime::storage::drop_owned(c, &*self.metrics, &p.schema_name(), &uid).await?)
    }
}

/// The `SchemaConflict` message: whose the schema is, never more than its mark says.
fn taken(schema: &str, mark: Option<String>) -> String {
    match mark {
        Some(m) => {
            format!("schema {schema} belongs to another CryptoPipeline ({m}): set timescale.schema to another name")
        }
        None => format!(
            "schema {schema} exists and was not created for this pipeline (no owner mark): set timescale.schema \
             to another name, or mark it with COMMENT ON SCHEMA {schema} IS '{}<uid>'",
            cryptoviz_runtime::storage::MARK_PREFIX
        ),
    }
}
