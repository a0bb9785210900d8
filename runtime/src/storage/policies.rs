//! Retention and compression policies kept equal to the spec: observe (`timescaledb_information.jobs`) →
//! diff → change only what differs. On plain PostgreSQL, retention is bounded batched deletes.

use cryptoviz_crds::{CryptoPipeline, duration};
use sqlx::{PgConnection, Row};

use super::{Recorder, SchemaError, sql};

/// Rows deleted per statement in plain-PostgreSQL retention, and statements per reconcile at most.
const PLAIN_RETENTION_BATCH: i64 = 10_000;
const PLAIN_RETENTION_MAX_BATCHES: usize = 50;

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

pub(crate) async fn sync_retention(
    rec: &dyn Recorder,
    c: &mut PgConnection,
    p: &CryptoPipeline,
    schema: &str,
    s: &str,
) -> Result<(), SchemaError> {
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
                rec.database("alter_retention", true);
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT add_retention_policy('{s}.{table}', drop_after => $1::interval)"
                )))
                .bind(&interval)
                .execute(&mut *c)
                .await
                .map_err(sql(format!("add retention to {table}")))?;
                rec.database("add_retention", true);
            }
        }
    }
    Ok(())
}

pub(crate) async fn sync_compression(
    rec: &dyn Recorder,
    c: &mut PgConnection,
    p: &CryptoPipeline,
    schema: &str,
    s: &str,
) -> Result<(), SchemaError> {
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
                rec.database("sync_compression", true);
            }
        }
    }
    Ok(())
}

/// Plain PostgreSQL: delete expired rows in bounded batches (a reconcile never holds long locks).
pub(crate) async fn plain_retention(
    rec: &dyn Recorder,
    c: &mut PgConnection,
    p: &CryptoPipeline,
    s: &str,
) -> Result<(), SchemaError> {
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
                rec.database("plain_retention", true);
            }
            if (n as i64) < PLAIN_RETENTION_BATCH {
                break;
            }
        }
    }
    Ok(())
}

/// The retention job of a table or continuous aggregate, and whether its interval equals `interval`.
async fn retention_job(
    c: &mut PgConnection,
    schema: &str,
    table: &str,
    interval: &str,
) -> Result<Option<(i32, bool)>, SchemaError> {
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
