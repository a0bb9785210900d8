//! The pipeline's database: schema, hypertables, OHLCV candles and retention/compression policies kept equal
//! to the spec. Observe (`timescaledb_information`) → diff → change only what differs; zero writes when equal.
//! Owns the `StorageReady` condition and the schema's clean-up.
//!
//! Without TimescaleDB (many managed PostgreSQL services lack it) the pipeline still works: plain tables with
//! the same keys, candles as views computed on read, and retention enforced here in bounded batches.

use std::sync::Arc;
use std::time::Duration;

use cryptoviz_crds::{CryptoPipeline, duration};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

use crate::metrics::Metrics;
use crate::status::Check;

/// Condition type owned by this module.
pub const CONDITION: &str = "StorageReady";
/// Rows deleted per statement in plain-PostgreSQL retention, and statements per reconcile at most.
const PLAIN_RETENTION_BATCH: i64 = 10_000;
const PLAIN_RETENTION_MAX_BATCHES: usize = 50;

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
    #[error("{context}: {source}")]
    Sql {
        /// What we were doing.
        context: String,
        /// The database's error.
        source: sqlx::Error,
    },
}

impl StorageError {
    fn reason(&self) -> &'static str {
        match self {
            StorageError::Secret(_) => "SecretInvalid",
            StorageError::Unreachable(_) => "DatabaseUnreachable",
            StorageError::Sql { source: sqlx::Error::Database(d), .. } if d.code().as_deref() == Some("42501") => {
                "PermissionDenied"
            }
            StorageError::Sql { .. } => "MigrationFailed",
        }
    }
}

fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StorageError {
    let context = context.into();
    move |source| StorageError::Sql { context, source }
}

/// Storage mode of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// TimescaleDB: hypertables, continuous aggregates, policies run by the database.
    Timescale,
    /// Plain PostgreSQL: tables, candle views, retention run by the operator.
    Plain,
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

/// One versioned migration: statements that are each safe to re-run.
struct Migration {
    version: i32,
    timescale: &'static [&'static str],
    plain: &'static [&'static str],
}

/// Schema migrations, applied in order under an advisory lock (two operator replicas never race).
/// `{s}` is the quoted schema name.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        timescale: &[
            TICKS_TABLE,
            TRADES_TABLE,
            "SELECT create_hypertable('{s}.ticks'::regclass, 'time', chunk_time_interval => interval '1 day', if_not_exists => true)",
            "SELECT create_hypertable('{s}.trades'::regclass, 'time', chunk_time_interval => interval '1 day', if_not_exists => true)",
        ],
        plain: &[
            TICKS_TABLE,
            TRADES_TABLE,
            "CREATE INDEX IF NOT EXISTS ticks_time ON {s}.ticks (time)",
            "CREATE INDEX IF NOT EXISTS trades_time ON {s}.trades (time)",
        ],
    },
    Migration {
        version: 2,
        timescale: &[
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.candles_1m WITH (timescaledb.continuous) AS \
             SELECT time_bucket(interval '1 minute', time) AS bucket, source, symbol, first(price, time) AS open, \
             max(price) AS high, min(price) AS low, last(price, time) AS close, sum(quantity) AS volume, count(*) AS trades \
             FROM {s}.trades GROUP BY bucket, source, symbol WITH NO DATA",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {s}.candles_1h WITH (timescaledb.continuous) AS \
             SELECT time_bucket(interval '1 hour', time) AS bucket, source, symbol, first(price, time) AS open, \
             max(price) AS high, min(price) AS low, last(price, time) AS close, sum(quantity) AS volume, count(*) AS trades \
             FROM {s}.trades GROUP BY bucket, source, symbol WITH NO DATA",
            "SELECT add_continuous_aggregate_policy('{s}.candles_1m', start_offset => interval '2 hours', \
             end_offset => interval '1 minute', schedule_interval => interval '1 minute', if_not_exists => true)",
            "SELECT add_continuous_aggregate_policy('{s}.candles_1h', start_offset => interval '3 days', \
             end_offset => interval '1 hour', schedule_interval => interval '30 minutes', if_not_exists => true)",
        ],
        plain: &[
            "CREATE OR REPLACE VIEW {s}.candles_1m AS SELECT date_trunc('minute', time) AS bucket, source, symbol, \
             (array_agg(price ORDER BY time, trade_id))[1] AS open, max(price) AS high, min(price) AS low, \
             (array_agg(price ORDER BY time DESC, trade_id DESC))[1] AS close, sum(quantity) AS volume, count(*) AS trades \
             FROM {s}.trades GROUP BY 1, 2, 3",
            "CREATE OR REPLACE VIEW {s}.candles_1h AS SELECT date_trunc('hour', time) AS bucket, source, symbol, \
             (array_agg(price ORDER BY time, trade_id))[1] AS open, max(price) AS high, min(price) AS low, \
             (array_agg(price ORDER BY time DESC, trade_id DESC))[1] AS close, sum(quantity) AS volume, count(*) AS trades \
             FROM {s}.trades GROUP BY 1, 2, 3",
        ],
    },
];

const TICKS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {s}.ticks (\
    time timestamptz NOT NULL, source text NOT NULL, symbol text NOT NULL, quote text NOT NULL, \
    price numeric NOT NULL, bid numeric, ask numeric, volume_24h numeric, market_cap numeric, change_24h_pct numeric, \
    received_at timestamptz NOT NULL, PRIMARY KEY (time, source, symbol))";
const TRADES_TABLE: &str = "CREATE TABLE IF NOT EXISTS {s}.trades (\
    time timestamptz NOT NULL, source text NOT NULL, symbol text NOT NULL, quote text NOT NULL, trade_id text NOT NULL, \
    price numeric NOT NULL, quantity numeric NOT NULL, side text, received_at timestamptz NOT NULL, \
    PRIMARY KEY (time, source, symbol, trade_id))";

/// The newest schema version.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Quote an identifier (the schema name is already restricted by the CRD, this is defence in depth).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A policy as the spec wants it: (table or continuous aggregate, interval).
pub fn desired_retention(p: &CryptoPipeline) -> Vec<(&'static str, String)> {
    let Some(ts) = &p.spec.timescale else { return vec![] };
    let iv = |d: &str| duration::to_pg_interval(d).unwrap_or_else(|_| "90 days".into());
    vec![
        ("ticks", iv(&ts.retention.ticks)),
        ("trades", iv(&ts.retention.trades)),
        ("candles_1m", iv(&ts.retention.candles)),
        ("candles_1h", iv(&ts.retention.candles)),
    ]
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
            return StorageOutcome { check: Check::ok(CONDITION, "NotRequired", "no timescale storage is configured") };
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
                "TimescaleDB",
                format!("schema {} with hypertables, candles and policies matches the spec", p.schema_name()),
            ),
            Ok(Mode::Plain) => Check::ok(
                CONDITION,
                "PlainPostgreSQL",
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
        let mode = detect_mode(c).await?;
        let schema = p.schema_name();
        let s = quote_ident(&schema);
        self.migrate(c, &schema, &s, mode).await?;
        match mode {
            Mode::Timescale => {
                self.sync_retention(c, p, &schema, &s).await?;
                self.sync_compression(c, p, &schema, &s).await?;
            }
            Mode::Plain => self.plain_retention(c, p, &s).await?,
        }
        Ok(mode)
    }

    async fn migrate(&self, c: &mut PgConnection, schema: &str, s: &str, mode: Mode) -> Result<(), StorageError> {
        let current = current_version(c, schema).await?;
        if current >= latest_version() {
            return Ok(());
        }
        // Session advisory lock: continuous aggregates cannot be created inside a transaction block.
        let key = format!("cryptoviz:{schema}");
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(&key)
            .execute(&mut *c)
            .await
            .map_err(sql("advisory lock"))?;
        let result = async {
            // Another replica may have migrated while we waited for the lock.
            let current = current_version(c, schema).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE IF NOT EXISTS {s}.cryptoviz_migrations \
                 (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )))
            .execute(&mut *c)
            .await
            .map_err(sql("create schema"))?;
            for m in MIGRATIONS.iter().filter(|m| m.version > current) {
                let stmts = if mode == Mode::Timescale { m.timescale } else { m.plain };
                for stmt in stmts {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.replace("{s}", s)))
                        .execute(&mut *c)
                        .await
                        .map_err(sql(format!("migration {}", m.version)))?;
                }
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {s}.cryptoviz_migrations (version) VALUES ({}) ON CONFLICT DO NOTHING",
                    m.version
                )))
                .execute(&mut *c)
                .await
                .map_err(sql("record migration"))?;
                self.metrics.external("database", "migrate", true);
            }
            Ok(())
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(&key).execute(&mut *c).await;
        result
    }

    async fn sync_retention(
        &self,
        c: &mut PgConnection,
        p: &CryptoPipeline,
        schema: &str,
        s: &str,
    ) -> Result<(), StorageError> {
        for (table, interval) in desired_retention(p) {
            let live = retention_job(c, schema, table, &interval).await?;
            match live {
                Some((_, true)) => {}
                Some((job_id, false)) => {
                    // `config` is the job's own: read it from the jobs view in the same statement.
                    sqlx::query(
                        "SELECT alter_job(job_id, config => jsonb_set(config, '{drop_after}', to_jsonb($2::interval::text))) \
                         FROM timescaledb_information.jobs WHERE job_id = $1",
                    )
                        .bind(job_id)
                        .bind(&interval)
                        .execute(&mut *c)
                        .await
                        .map_err(sql(format!("alter retention of {table}")))?;
                    self.metrics.external("database", "alter_retention", true);
                }
                None => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT add_retention_policy('{s}.{table}', drop_after => $1::interval)"
                    )))
                    .bind(&interval)
                    .execute(&mut *c)
                    .await
                    .map_err(sql(format!("add retention to {table}")))?;
                    self.metrics.external("database", "add_retention", true);
                }
            }
        }
        Ok(())
    }

    async fn sync_compression(
        &self,
        c: &mut PgConnection,
        p: &CryptoPipeline,
        schema: &str,
        s: &str,
    ) -> Result<(), StorageError> {
        let want = p
            .spec
            .timescale
            .as_ref()
            .and_then(|t| t.compress_after.as_deref())
            .map(duration::to_pg_interval)
            .transpose()
            .ok()
            .flatten();
        for table in ["ticks", "trades"] {
            let live: Option<(i32, bool)> = sqlx::query(
                "SELECT job_id, (config->>'compress_after')::interval = $3::interval AS same FROM timescaledb_information.jobs \
                 WHERE proc_name = 'policy_compression' AND hypertable_schema = $1 AND hypertable_name = $2",
            )
            .bind(schema)
            .bind(table)
            .bind(want.clone().unwrap_or_else(|| "0".into()))
            .fetch_optional(&mut *c)
            .await
            .map_err(sql("read compression policies"))?
            .map(|r| (r.get::<i32, _>("job_id"), r.get::<Option<bool>, _>("same").unwrap_or(false)));
            match (&want, live) {
                (None, None) | (Some(_), Some((_, true))) => {}
                (None, Some(_)) => {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT remove_compression_policy('{s}.{table}', if_exists => true)"
                    )))
                    .execute(&mut *c)
                    .await
                    .map_err(sql(format!("remove compression of {table}")))?;
                }
                (Some(iv), live) => {
                    if let Some((job_id, _)) = live {
                        sqlx::query(
                            "SELECT alter_job(job_id, config => jsonb_set(config, '{compress_after}', to_jsonb($2::interval::text))) \
                             FROM timescaledb_information.jobs WHERE job_id = $1",
                        )
                            .bind(job_id)
                            .bind(iv)
                            .execute(&mut *c)
                            .await
                            .map_err(sql(format!("alter compression of {table}")))?;
                    } else {
                        let enabled: bool = sqlx::query_scalar(
                            "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2",
                        )
                        .bind(schema)
                        .bind(table)
                        .fetch_one(&mut *c)
                        .await
                        .map_err(sql("read hypertables"))?;
                        if !enabled {
                            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                                "ALTER TABLE {s}.{table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'source, symbol')"
                            )))
                            .execute(&mut *c)
                            .await
                            .map_err(sql(format!("enable compression on {table}")))?;
                        }
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "SELECT add_compression_policy('{s}.{table}', compress_after => $1::interval)"
                        )))
                        .bind(iv)
                        .execute(&mut *c)
                        .await
                        .map_err(sql(format!("add compression to {table}")))?;
                    }
                    self.metrics.external("database", "sync_compression", true);
                }
            }
        }
        Ok(())
    }

    /// Plain PostgreSQL: delete expired rows in bounded batches (a reconcile never holds long locks).
    async fn plain_retention(&self, c: &mut PgConnection, p: &CryptoPipeline, s: &str) -> Result<(), StorageError> {
        for (table, interval) in desired_retention(p).into_iter().filter(|(t, _)| !t.starts_with("candles")) {
            for _ in 0..PLAIN_RETENTION_MAX_BATCHES {
                let n = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {s}.{table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.{table} WHERE time < now() - $1::interval LIMIT {PLAIN_RETENTION_BATCH}))"
                )))
                .bind(&interval)
                .execute(&mut *c)
                .await
                .map_err(sql(format!("retention of {table}")))?
                .rows_affected();
                if n > 0 {
                    self.metrics.external("database", "plain_retention", true);
                }
                if (n as i64) < PLAIN_RETENTION_BATCH {
                    break;
                }
            }
        }
        Ok(())
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
        let s = quote_ident(&p.schema_name());
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {s} CASCADE")))
            .execute(c)
            .await
            .map_err(sql("drop schema"));
        self.metrics.external("database", "drop_schema", r.is_ok());
        r.map(|_| ())
    }
}

async fn detect_mode(c: &mut PgConnection) -> Result<Mode, StorageError> {
    let installed: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_optional(&mut *c)
            .await
            .map_err(sql("detect TimescaleDB"))?;
    if installed.is_some() {
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

async fn current_version(c: &mut PgConnection, schema: &str) -> Result<i32, StorageError> {
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

/// The retention job of a table or continuous aggregate, and whether its interval equals `interval`.
async fn retention_job(
    c: &mut PgConnection,
    schema: &str,
    table: &str,
    interval: &str,
) -> Result<Option<(i32, bool)>, StorageError> {
    sqlx::query(
        "SELECT j.job_id, (j.config->>'drop_after')::interval = $3::interval AS same \
         FROM timescaledb_information.jobs j \
         LEFT JOIN timescaledb_information.continuous_aggregates ca \
           ON ca.materialization_hypertable_schema = j.hypertable_schema \
          AND ca.materialization_hypertable_name = j.hypertable_name \
         WHERE j.proc_name = 'policy_retention' \
           AND ((j.hypertable_schema = $1 AND j.hypertable_name = $2) OR (ca.view_schema = $1 AND ca.view_name = $2))",
    )
    .bind(schema)
    .bind(table)
    .bind(interval)
    .fetch_optional(&mut *c)
    .await
    .map(|r| r.map(|r| (r.get::<i32, _>("job_id"), r.get::<Option<bool>, _>("same").unwrap_or(false))))
    .map_err(sql("read retention policies"))
}
