//! The pipeline's database: schema, hypertables, OHLCV candles and retention/compression policies kept equal
//! to the spec, with zero writes when they already are. One implementation for both callers: the operator's
//! storage reconciliation (which adds the connection Secret and the `StorageReady` condition) and
//! `cryptoviz-worker standalone --timescale`, so one command stores data without a cluster.
//!
//! Without TimescaleDB (many managed PostgreSQL services lack it) the pipeline still works: plain tables with
//! the same keys, candles as views computed on read, and retention enforced here in bounded batches.

mod lock;
mod migrations;
mod ownership;
mod policies;

use cryptoviz_crds::CryptoPipeline;
use sqlx::PgConnection;

pub use lock::LOCK_WAIT;
pub use migrations::latest_version;
pub use ownership::{Claim, Dropped, MARK_PREFIX, Owner, claim, drop_owned, marked_uid};
pub use policies::desired_retention;

/// Storage mode of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// TimescaleDB: hypertables, continuous aggregates, policies run by the database.
    Timescale,
    /// Plain PostgreSQL: tables, candle views, retention run by the caller.
    Plain,
}

/// Why the schema could not be brought to the spec.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A statement failed.
    #[error("{context}: {source}")]
    Sql {
        /// What we were doing.
        context: String,
        /// The database's error.
        source: sqlx::Error,
    },
    /// Another session held the schema's advisory lock for longer than [`LOCK_WAIT`].
    #[error("schema {schema} is locked by another session (waited {waited:?})")]
    Busy {
        /// The schema.
        schema: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
}

impl SchemaError {
    /// The condition reason: `PermissionDenied` when the role may not do it, `MigrationFailed` otherwise.
    pub fn reason(&self) -> &'static str {
        match self {
            SchemaError::Sql { source: sqlx::Error::Database(d), .. } if d.code().as_deref() == Some("42501") => {
                "PermissionDenied"
            }
            SchemaError::Sql { .. } | SchemaError::Busy { .. } => "MigrationFailed",
        }
    }
}

pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> SchemaError {
    let context = context.into();
    move |source| SchemaError::Sql { context, source }
}

/// Told of every change made to a database (the operator counts them as external operations).
pub trait Recorder: Send + Sync {
    /// One `operation` (e.g. `migrate`, `add_retention`) was attempted, and whether it succeeded.
    fn database(&self, operation: &'static str, ok: bool);
}

/// Records nothing (standalone mode has no operation metrics).
impl Recorder for () {
    fn database(&self, _: &'static str, _: bool) {}
}

/// Bring the pipeline's schema, candles and policies to the spec over an open connection; returns the mode
/// the database supports.
pub async fn reconcile(p: &CryptoPipeline, c: &mut PgConnection, rec: &dyn Recorder) -> Result<Mode, SchemaError> {
    let mode = detect_mode(c).await?;
    let schema = p.schema_name();
    let s = quote_ident(&schema);
    migrations::migrate(rec, c, &schema, &s, mode).await?;
    match mode {
        Mode::Timescale => {
            policies::sync_retention(rec, c, p, &schema, &s).await?;
            policies::sync_compression(rec, c, p, &schema, &s).await?;
        }
        Mode::Plain => policies::plain_retention(rec, c, p, &s).await?,
    }
    Ok(mode)
}

/// Quote an identifier (the schema name is already restricted by the CRD, this is defence in depth).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The mode of a database as it is, without changing anything: TimescaleDB when the extension is installed
/// (readers such as the history API, on a read-only connection).
pub async fn installed_mode(c: &mut PgConnection) -> Result<Mode, sqlx::Error> {
    let installed: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_optional(&mut *c)
            .await?;
    Ok(if installed.is_some() { Mode::Timescale } else { Mode::Plain })
}

async fn detect_mode(c: &mut PgConnection) -> Result<Mode, SchemaError> {
    if installed_mode(c).await.map_err(sql("detect TimescaleDB"))? == Mode::Timescale {
        return Ok(Mode::Timescale);
    }
    let available: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')")
            .fetch_one(&mut *c)
            .await
            .map_err(sql("detect TimescaleDB"))?;
    if available && sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS timescaledb").execute(&mut *c).await.is_ok() {
        return Ok(Mode::Timescale);
    }
    Ok(Mode::Plain)
}

pub(crate) async fn current_version(c: &mut PgConnection, schema: &str) -> Result<i32, SchemaError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass(format('%I.cryptoviz_migrations', $1::text)) IS NOT NULL")
            .bind(schema)
            .fetch_one(&mut *c)
            .await
            .map_err(sql("read schema version"))?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar::<_, Option<i32>>(sqlx::AssertSqlSafe(format!(
        "SELECT max(version) FROM {}.cryptoviz_migrations",
        quote_ident(schema)
    )))
    .fetch_one(&mut *c)
    .await
    .map(|v| v.unwrap_or(0))
    .map_err(sql("read schema version"))
}
