//! The history API's side of the database: a small pool, every query in a `READ ONLY` transaction with its
//! own `statement_timeout`, under a deadline, so a slow query ends as [`QueryError::Timeout`] (503) rather
//! than a hung request.
//!
//! Candles are read from the stored candles, never from raw rows: `candles_1m` for 1m, 5m and 15m,
//! `candles_1h` for 1h, 4h and 1d, re-bucketed with `time_bucket` on TimescaleDB and `date_bin` on plain
//! PostgreSQL (same origin, so the same buckets). Decimals travel as text (`trim_scale(x)::text`), exact.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_runtime::storage::{self, Mode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Postgres, Row, Transaction};
use tokio::sync::OnceCell;

use super::params::{CandlesQuery, Window};

/// Connections at most: the API shares the database with the consumer and the operator.
const POOL_SIZE: u32 = 2;
/// An unused connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a query may run (`statement_timeout`), unless [`STATEMENT_TIMEOUT_ENV`] says otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Environment variable overriding the statement timeout, in milliseconds (100..=60000).
pub const STATEMENT_TIMEOUT_ENV: &str = "CRYPTOVIZ_HISTORY_STATEMENT_TIMEOUT_MS";
/// How much longer than the statement timeout the whole request (connection, transaction, rows) may take
/// before it is answered 503 whatever the database does (a server that cannot cancel a statement).
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Symbols listed at most.
const MAX_SYMBOLS: i64 = 1000;

/// Why a query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database cancelled it: `statement_timeout` (SQLSTATE 57014).
    #[error("the query was cancelled after the statement timeout of {0:?}")]
    Timeout(Duration),
    /// No answer within the deadline (statement timeout plus a margin).
    #[error("no answer from the database within {0:?}")]
    Deadline(Duration),
    /// The database is unreachable, or the pipeline's tables do not exist yet.
    #[error("the database is unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Any other failure (a bug: logged, answered 500).
    #[error("query failed: {0}")]
    Failed(sqlx::Error),
}

impl QueryError {
    /// Bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Timeout(_) => "statement_timeout",
            QueryError::Deadline(_) => "deadline",
            QueryError::Unavailable(_) => "unavailable",
            QueryError::Failed(_) => "failed",
        }
    }

    fn of(e: sqlx::Error, timeout: Duration) -> QueryError {
        match &e {
            sqlx::Error::Database(d) => match d.code().as_deref() {
                Some("57014") => QueryError::Timeout(timeout),
                Some(c) if c.starts_with("08") || c.starts_with("57") || c.starts_with("53") => {
                    QueryError::Unavailable(e)
                }
                Some("42P01" | "3F000") => QueryError::Unavailable(e),
                _ => QueryError::Failed(e),
            },
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                QueryError::Unavailable(e)
            }
            _ => QueryError::Failed(e),
        }
    }
}

/// One candle as read.
#[derive(Debug, Clone, PartialEq)]
pub struct CandleRow {
    /// Bucket start.
    pub time: DateTime<Utc>,
    /// Open, high, low, close, volume as exact decimals.
    pub ohlcv: [String; 5],
    /// Trades in the bucket.
    pub trades: i64,
}

/// One trade as read.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeRow {
    /// Exchange time.
    pub time: DateTime<Utc>,
    /// Source.
    pub source: String,
    /// The exchange's id.
    pub trade_id: String,
    /// Price and quantity.
    pub price: String,
    /// Quantity.
    pub quantity: String,
    /// `buy`/`sell`, when known.
    pub side: Option<String>,
}

/// One tick as read.
#[derive(Debug, Clone, PartialEq)]
pub struct TickRow {
    /// Exchange time.
    pub time: DateTime<Utc>,
    /// Source.
    pub source: String,
    /// Price.
    pub price: String,
    /// Bid, ask, 24 h volume, market cap, 24 h change in percent, when the source gives them.
    pub extra: [Option<String>; 5],
}

/// One stored symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRow {
    /// The symbol.
    pub symbol: String,
    /// Oldest stored trade or tick.
    pub first: DateTime<Utc>,
    /// Newest stored trade or tick.
    pub last: DateTime<Utc>,
    /// Sources that stored any, sorted.
    pub sources: Vec<String>,
}

/// The pipeline's database, read-only.
pub struct Db {
    pool: PgPool,
    schema: String,
    mode: OnceCell<Mode>,
    timeout: Duration,
}

impl Db {
    /// A reader of `schema` at `url`; connects lazily (a database down at start-up is a 503, not a crash).
    /// Errors never contain the URL (it holds the password).
    pub fn new(url: &str, schema: &str, timeout: Duration) -> anyhow::Result<Db> {
        let opts: PgConnectOptions =
            url.parse().map_err(|_| anyhow::anyhow!("the database URL is not a valid postgres:// URL"))?;
        let opts = opts
            .application_name("cryptoviz-gateway-history")
            // Set per transaction as well (BEGIN READ ONLY, SET LOCAL): poolers may ignore startup options.
            .options([("default_transaction_read_only", "on".to_string()), ("statement_timeout", ms(timeout))])
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, timeout);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .idle_timeout(IDLE_TIMEOUT)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        Ok(Db { pool, schema: storage::quote_ident(schema), mode: OnceCell::new(), timeout })
    }

    /// The statement timeout in force.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A read-only transaction with the statement timeout set for it alone.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN READ ONLY").await?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(ms(self.timeout))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// `work` (a transaction from [`Db::begin`]) under the deadline.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, QueryError> {
        let deadline = self.timeout + ACQUIRE_TIMEOUT + DEADLINE_MARGIN;
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r.map_err(|e| QueryError::of(e, self.timeout)),
            Err(_) => Err(QueryError::Deadline(deadline)),
        }
    }

    /// TimescaleDB or plain PostgreSQL, read once.
    async fn mode(&self) -> Result<Mode, QueryError> {
        self.mode
            .get_or_try_init(|| {
                self.bounded(async {
                    let mut tx = self.begin().await?;
                    let mode = storage::installed_mode(&mut tx).await?;
                    tx.commit().await?;
                    Ok(mode)
                })
            })
            .await
            .copied()
    }

    /// Candles of one symbol, oldest first, at most `limit + 1` (the extra one tells there is a next page).
    pub async fn candles(&self, q: &CandlesQuery) -> Result<Vec<CandleRow>, QueryError> {
        let iv = q.interval.pg_interval();
        let bucket = match self.mode().await? {
            Mode::Timescale => format!("time_bucket(interval '{iv}', bucket)"),
            Mode::Plain => format!("date_bin(interval '{iv}', bucket, timestamptz '2000-01-03 00:00:00+00')"),
        };
        // Per candle: the sub-candles (one per stored bucket and source) it covers; open is the mean of the
        // opens of its earliest sub-bucket, close the mean of the closes of its latest (one source: exactly
        // that source's), high the max, low the min, volume and trades the sums.
        let sql = format!(
            "SELECT t, trim_scale(avg(open) FILTER (WHERE bucket = fb))::text, trim_scale(max(high))::text, \
             trim_scale(min(low))::text, trim_scale(avg(close) FILTER (WHERE bucket = lb))::text, \
             trim_scale(sum(volume))::text, sum(trades)::int8 FROM ( \
             SELECT {bucket} AS t, bucket, open, high, low, close, volume, trades, \
             min(bucket) OVER w AS fb, max(bucket) OVER w AS lb \
             FROM {s}.{table} WHERE symbol = $1 AND ($2::text IS NULL OR source = $2) \
             AND bucket >= $3 AND bucket < $4 WINDOW w AS (PARTITION BY {bucket})) sub \
             GROUP BY t ORDER BY t LIMIT $5",
            s = self.schema,
            table = q.interval.table(),
        );
        let w = &q.window;
        let start = w.cursor.as_ref().map_or(w.from, |c| c.t.max(w.from));
        self.bounded(async {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(&w.symbol)
                .bind(&w.source)
                .bind(start)
                .bind(w.to)
                .bind(i64::from(w.limit) + 1)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    Ok(CandleRow {
                        time: r.try_get(0)?,
                        ohlcv: [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?],
                        trades: r.try_get(6)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Trades of one symbol by (time, source, trade id), at most `limit + 1`.
    pub async fn trades(&self, w: &Window) -> Result<Vec<TradeRow>, QueryError> {
        let sql = format!(
            "SELECT time, source, trade_id, trim_scale(price)::text, trim_scale(quantity)::text, side \
             FROM {s}.trades WHERE symbol = $1 AND ($2::text IS NULL OR source = $2) AND time >= $3 AND time < $4 \
             AND ($5::timestamptz IS NULL OR (time, source, trade_id) >= ($5, $6::text, $7::text)) \
             ORDER BY time, source, trade_id LIMIT $8",
            s = self.schema
        );
        let c = w.cursor.as_ref();
        self.bounded(async {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(&w.symbol)
                .bind(&w.source)
                .bind(w.from)
                .bind(w.to)
                .bind(c.map(|c| c.t))
                .bind(c.map(|c| c.s.clone().unwrap_or_default()))
                .bind(c.map(|c| c.id.clone().unwrap_or_default()))
                .bind(i64::from(w.limit) + 1)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    Ok(TradeRow {
                        time: r.try_get(0)?,
                        source: r.try_get(1)?,
                        trade_id: r.try_get(2)?,
                        price: r.try_get(3)?,
                        quantity: r.try_get(4)?,
                        side: r.try_get(5)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Ticks of one symbol by (time, source), at most `limit + 1`.
    pub async fn ticks(&self, w: &Window) -> Result<Vec<TickRow>, QueryError> {
        let sql = format!(
            "SELECT time, source, trim_scale(price)::text, trim_scale(bid)::text, trim_scale(ask)::text, \
             trim_scale(volume_24h)::text, trim_scale(market_cap)::text, trim_scale(change_24h_pct)::text \
             FROM {s}.ticks WHERE symbol = $1 AND ($2::text IS NULL OR source = $2) AND time >= $3 AND time < $4 \
             AND ($5::timestamptz IS NULL OR (time, source) >= ($5, $6::text)) ORDER BY time, source LIMIT $7",
            s = self.schema
        );
        let c = w.cursor.as_ref();
        self.bounded(async {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(&w.symbol)
                .bind(&w.source)
                .bind(w.from)
                .bind(w.to)
                .bind(c.map(|c| c.t))
                .bind(c.map(|c| c.s.clone().unwrap_or_default()))
                .bind(i64::from(w.limit) + 1)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    Ok(TickRow {
                        time: r.try_get(0)?,
                        source: r.try_get(1)?,
                        price: r.try_get(2)?,
                        extra: [r.try_get(3)?, r.try_get(4)?, r.try_get(5)?, r.try_get(6)?, r.try_get(7)?],
                    })
                })
                .collect()
        })
        .await
    }

    /// Every stored symbol with its oldest and newest trade or tick and its sources.
    pub async fn symbols(&self) -> Result<Vec<SymbolRow>, QueryError> {
        let sql = format!(
            "SELECT symbol, min(first), max(last), array_agg(DISTINCT source ORDER BY source) FROM ( \
             SELECT symbol, source, min(time) AS first, max(time) AS last FROM {s}.trades GROUP BY 1, 2 \
             UNION ALL SELECT symbol, source, min(time), max(time) FROM {s}.ticks GROUP BY 1, 2) x \
             GROUP BY symbol ORDER BY symbol LIMIT {MAX_SYMBOLS}",
            s = self.schema
        );
        self.bounded(async {
            let mut tx = self.begin().await?;
            let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| {
                    Ok(SymbolRow {
                        symbol: r.try_get(0)?,
                        first: r.try_get(1)?,
                        last: r.try_get(2)?,
                        sources: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
