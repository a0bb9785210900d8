//! Writes batches into `<schema>.ticks` and `<schema>.trades`: one transaction per batch, and per table an
//! idempotent `INSERT … ON CONFLICT DO NOTHING`, so a re-delivered record (after a crash between the database
//! commit and the Kafka commit) is a no-op and every row is stored once.
//!
//! The rows reach the database by `COPY … FROM STDIN` in the binary format (see [`copy`]), several times
//! cheaper per row than bound arrays. A batch whose keys are all new (the common case) is copied straight into
//! its table; when a key is already stored (a redelivery after a crash, a source repeating itself), the table's
//! COPY fails with a unique violation, is rolled back to a savepoint, and the rows go through a session-private
//! staging table and one `INSERT … SELECT … ON CONFLICT DO NOTHING` instead — for this batch and the next
//! [`STAGING_AFTER_CONFLICT`], so a source that repeats itself does not pay for a failed COPY every time. Where
//! COPY is refused (SQLSTATE 0A000 — the WASM TimescaleDB test server), the sink switches for good to
//! `INSERT … SELECT FROM UNNEST(arrays)`, decimals as text parsed by the database. Either way decimals are exact,
//! never a float.
//!
//! Connections: the database may allow few sessions (the TimescaleDB test server has exactly one, and the
//! operator needs it too), so the consumer never holds more than one, and never keeps one idle for long: a pool
//! of at most one connection with a short idle timeout, or, with [`CONNECT_PER_BATCH_ENV`] set, a fresh connection
//! per batch, closed right after it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection};

use super::batch::{TickColumns, TradeColumns};
use super::copy::{self, CopyData, TICK_COLUMNS, TRADE_COLUMNS};

/// Set to `1`/`true` to open one connection per batch instead of keeping a pooled one.
pub const CONNECT_PER_BATCH_ENV: &str = "CRYPTOVIZ_CONSUMER_CONNECT_PER_BATCH";
/// A pooled connection unused this long is closed, so other clients of a single-session database get in.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a connection: a database that is down is noticed (and consumption paused) this fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a batch's transaction before it is retried.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// After a batch's keys conflicted, this many further batches go straight to staging.
pub const STAGING_AFTER_CONFLICT: u32 = 8;
/// PostgreSQL's unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Rows inserted by one batch (conflicting, already stored rows are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Into `ticks`.
    pub ticks: u64,
    /// Into `trades`.
    pub trades: u64,
}

/// A database failure, classified for retry decisions and metrics.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The statement or connection timed out.
    #[error("database timed out after {0:?}")]
    Timeout(Duration),
    /// The database or the connection failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl SinkError {
    /// Bounded label for `cryptoviz_consumer_database_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Timeout(_) => "timeout",
            SinkError::Sql(e) => match e {
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    "connection"
                }
                sqlx::Error::Database(d) => match d.code().as_deref() {
                    // The operator has not created the schema yet (or it was dropped).
                    Some("42P01" | "3F000") => "schema_missing",
                    Some(c) if c.starts_with("22") || c.starts_with("23") => "data",
                    Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => "unavailable",
                    _ => "query",
                },
                _ => "other",
            },
        }
    }

    /// The rows themselves are wrong (a data exception or constraint violation other than the key conflict we
    /// ignore): retrying the same batch can never succeed, the offending rows must be isolated.
    pub fn is_data_error(&self) -> bool {
        self.kind() == "data"
    }
}

enum Target {
    Pool(PgPool),
    PerBatch(Box<PgConnectOptions>),
}

/// The consumer's database writer.
pub struct Sink {
    target: Target,
    ticks_sql: String,
    trades_sql: String,
    /// COPY into staging works on this database (cleared on the first 0A000 refusal).
    copy: AtomicBool,
    /// Batches left to write through staging before a direct COPY is tried again.
    staging_left: AtomicU32,
    schema: String,
}

impl Sink {
    /// A writer into `schema` of the database at `url`. Connects lazily: a database that is down at start-up
    /// is retried like any other failure. The error never contains the URL (it holds the password).
    pub fn new(url: &str, schema: &str, per_batch: bool) -> anyhow::Result<Self> {
        let opts: PgConnectOptions =
            url.parse().map_err(|_| anyhow::anyhow!("the database URL is not a valid postgres:// URL"))?;
        let opts = opts
            .application_name("cryptoviz-consumer")
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
        let target = if per_batch {
            Target::PerBatch(Box::new(opts))
        } else {
            Target::Pool(
                PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .idle_timeout(IDLE_TIMEOUT)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_lazy_with(opts),
            )
        };
        let s = format!("\"{}\"", schema.replace('"', "\"\""));
        Ok(Sink {
            target,
            ticks_sql: format!(
                "INSERT INTO {s}.ticks (time, source, symbol, quote, price, bid, ask, volume_24h, market_cap, \
                 change_24h_pct, received_at) \
                 SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[]::numeric[], \
                 $6::text[]::numeric[], $7::text[]::numeric[], $8::text[]::numeric[], $9::text[]::numeric[], \
                 $10::text[]::numeric[], $11::timestamptz[]) \
                 ON CONFLICT DO NOTHING"
            ),
            trades_sql: format!(
                "INSERT INTO {s}.trades (time, source, symbol, quote, trade_id, price, quantity, side, received_at) \
                 SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[]::numeric[], $7::text[]::numeric[], $8::text[], $9::timestamptz[]) \
                 ON CONFLICT DO NOTHING"
            ),
            copy: AtomicBool::new(true),
            staging_left: AtomicU32::new(0),
            schema: s,
        })
    }

    /// COPY the batch into its tables in one transaction: straight in when its keys are new, else through
    /// staging and an idempotent INSERT (see the module docs).
    async fn write_copy(
        &self,
        c: &mut PgConnection,
        ticks: &TickColumns<'_>,
        trades: &TradeColumns<'_>,
    ) -> Result<Written, SinkError> {
        let s = &self.schema;
        let mut tx = c.begin().await?;
        let mut written = Written::default();
        let tables: [(&str, &str, Option<CopyData>); 2] = [
            ("ticks", TICK_COLUMNS, (!ticks.is_empty()).then(|| copy::ticks(ticks))),
            ("trades", TRADE_COLUMNS, (!trades.is_empty()).then(|| copy::trades(trades))),
        ];
        let mut direct = self.staging_left.load(Ordering::Relaxed) == 0;
        if !direct {
            self.staging_left.fetch_sub(1, Ordering::Relaxed);
        }
        for (table, columns, data) in tables {
            let Some(data) = data else { continue };
            let mut stored = None;
            if direct {
                sqlx::raw_sql("SAVEPOINT cv_direct").execute(&mut *tx).await?;
                let copied = async {
                    let mut copy = tx.copy_in_raw(&data.statement(&format!("{s}.{table}"), columns)).await?;
                    copy.send(data.bytes.as_slice()).await?;
                    copy.finish().await
                }
                .await;
                match copied {
                    Ok(n) => {
                        sqlx::raw_sql("RELEASE SAVEPOINT cv_direct").execute(&mut *tx).await?;
                        stored = Some(n);
                    }
                    Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                        tracing::debug!(table, "keys already stored: this batch goes through staging");
                        sqlx::raw_sql("ROLLBACK TO SAVEPOINT cv_direct").execute(&mut *tx).await?;
                        self.staging_left.store(STAGING_AFTER_CONFLICT, Ordering::Relaxed);
                        direct = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let n = match stored {
                Some(n) => n,
                None => {
                    // Temporary, so concurrent consumers never share it; emptied by every commit.
                    sqlx::raw_sql(AssertSqlSafe(format!(
                        "CREATE TEMP TABLE IF NOT EXISTS cv_stage_{table} (LIKE {s}.{table}) ON COMMIT DELETE ROWS"
                    )))
                    .execute(&mut *tx)
                    .await?;
                    let mut copy =
                        tx.copy_in_raw(&data.statement(&format!("pg_temp.cv_stage_{table}"), columns)).await?;
                    copy.send(data.bytes).await?;
                    copy.finish().await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {s}.{table} ({columns}) SELECT {columns} FROM pg_temp.cv_stage_{table} \
                         ON CONFLICT DO NOTHING"
                    )))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
            };
            if table == "ticks" {
                written.ticks = n;
            } else {
                written.trades = n;
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Store ticks and trades in one transaction.
    pub async fn write(&self, ticks: &TickColumns<'_>, trades: &TradeColumns<'_>) -> Result<Written, SinkError> {
        if ticks.is_empty() && trades.is_empty() {
            return Ok(Written::default());
        }
        let work = async {
            match &self.target {
                Target::Pool(pool) => {
                    let mut c = pool.acquire().await?;
                    self.write_with(&mut c, ticks, trades).await
                }
                Target::PerBatch(opts) => {
                    let mut c = PgConnection::connect_with(opts).await?;
                    let r = self.write_with(&mut c, ticks, trades).await;
                    let _ = c.close().await;
                    r
                }
            }
        };
        tokio::time::timeout(STATEMENT_TIMEOUT, work).await.map_err(|_| SinkError::Timeout(STATEMENT_TIMEOUT))?
    }

    async fn write_with(
        &self,
        c: &mut PgConnection,
        ticks: &TickColumns<'_>,
        trades: &TradeColumns<'_>,
    ) -> Result<Written, SinkError> {
        if self.copy.load(Ordering::Relaxed) {
            match self.write_copy(c, ticks, trades).await {
                Err(SinkError::Sql(sqlx::Error::Database(d))) if d.code().as_deref() == Some("0A000") => {
                    tracing::info!("this database refuses COPY FROM STDIN: writing with INSERT … UNNEST from now on");
                    self.copy.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let mut tx = c.begin().await?;
        let mut written = Written::default();
        if !ticks.is_empty() {
            written.ticks = sqlx::query(AssertSqlSafe(self.ticks_sql.as_str()))
                .bind(&ticks.time)
                .bind(&ticks.source)
                .bind(&ticks.symbol)
                .bind(&ticks.quote)
                .bind(&ticks.price)
                .bind(&ticks.bid)
                .bind(&ticks.ask)
                .bind(&ticks.volume_24h)
                .bind(&ticks.market_cap)
                .bind(&ticks.change_24h_pct)
                .bind(&ticks.received_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !trades.is_empty() {
            written.trades = sqlx::query(AssertSqlSafe(self.trades_sql.as_str()))
                .bind(&trades.time)
                .bind(&trades.source)
                .bind(&trades.symbol)
                .bind(&trades.quote)
                .bind(&trades.trade_id)
                .bind(&trades.price)
                .bind(&trades.quantity)
                .bind(&trades.side)
                .bind(&trades.received_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Check the database answers (readiness while no batch is flowing).
    pub async fn ping(&self) -> Result<(), SinkError> {
        let work = async {
            match &self.target {
                Target::Pool(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
                Target::PerBatch(opts) => {
                    let c = PgConnection::connect_with(opts).await?;
                    c.close().await
                }
            }
        };
        Ok(tokio::time::timeout(STATEMENT_TIMEOUT, work).await.map_err(|_| SinkError::Timeout(STATEMENT_TIMEOUT))??)
    }

    /// Close the pooled connection.
    pub async fn close(&self) {
        if let Target::Pool(pool) = &self.target {
            pool.close().await;
        }
    }
}

/// What the consumer's flush needs from a database writer: [`Sink`] in every mode, a fake in the flush and
/// loop unit tests (which exercise retries and commits without a database).
pub trait Store: Send + Sync + 'static {
    /// Store ticks and trades in one transaction; rows already stored are not counted.
    fn write(
        &self,
        ticks: &TickColumns<'_>,
        trades: &TradeColumns<'_>,
    ) -> impl Future<Output = Result<Written, SinkError>> + Send;
    /// Check the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Release connections.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

impl Store for Sink {
    fn write(
        &self,
        ticks: &TickColumns<'_>,
        trades: &TradeColumns<'_>,
    ) -> impl Future<Output = Result<Written, SinkError>> + Send {
        Sink::write(self, ticks, trades)
    }

    fn ping(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        Sink::ping(self)
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        Sink::close(self)
    }
}
