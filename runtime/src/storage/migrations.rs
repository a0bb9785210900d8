//! Versioned schema migrations: each statement is safe to re-run, and they are applied in order under an
//! advisory lock (`lock.rs`), so two operator replicas (or the operator and a standalone worker) never race.

use sqlx::PgConnection;

use super::lock::{Scope, lock, unlock};
use super::{Mode, Recorder, SchemaError, current_version, sql};

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

pub(crate) async fn migrate(
    rec: &dyn Recorder,
    c: &mut PgConnection,
    schema: &str,
    s: &str,
    mode: Mode,
) -> Result<(), SchemaError> {
    let current = current_version(c, schema).await?;
    if current >= latest_version() {
        return Ok(());
    }
    // Session advisory lock: continuous aggregates cannot be created inside a transaction block.
    lock(c, schema, Scope::Session).await?;
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
            rec.database("migrate", true);
        }
        Ok(())
    }
    .await;
    unlock(c, schema).await;
    result
}
