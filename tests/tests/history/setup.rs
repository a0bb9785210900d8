//! A pipeline schema with a small market in it, and a gateway serving its history.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, DurationRound, SecondsFormat, Utc};
use cryptoviz_crds::{CryptoPipeline, CryptoPipelineSpec};
use cryptoviz_runtime::storage::{self, Mode};
use cryptoviz_tests::{TestEnv, binary, http, metrics, unique};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A time as the API writes it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A time as a query parameter.
pub fn q(t: DateTime<Utc>) -> String {
    rfc3339(t)
}

/// A pipeline's schema on one of the two databases.
pub struct Db {
    pub mode: Mode,
    pub url: String,
    pub pipeline: CryptoPipeline,
    /// Midnight (UTC) two days ago: every stored time is an offset from it.
    pub t0: DateTime<Utc>,
    /// Held for the test's length on the TimescaleDB test server, which answers one query at a time: the
    /// slow-query test's 4 s view would otherwise push the other tests' queries past the statement timeout.
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static TIMESCALE_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// BTC trades `(seconds after t0, source, id, price, quantity)`; the candles the tests expect are worked out
/// from these by hand.
const BTC_TRADES: &[(i64, &str, &str, &str, &str)] = &[
    (10, "kraken", "k1", "100", "1"),
    (50, "kraken", "k2", "105.0", "2"),
    (90, "kraken", "k3", "98", "0.5"),
    (299, "kraken", "k4", "101", "1.50"),
    (300, "kraken", "k5", "110", "1"),
    (4200, "kraken", "k6", "120", "3"),
    (18000, "kraken", "k7", "90", "1"),
    (120, "binance", "b1", "107", "1"),
    (7199, "binance", "b2", "115", "2"),
    (86400 + 1800, "binance", "b3", "130", "1"),
];

impl Db {
    /// A fresh schema (created by the runtime's storage code) holding the market of [`BTC_TRADES`], three
    /// ETH trades at one instant and three BTC ticks; candles refreshed on TimescaleDB.
    pub async fn with_market(mode: Mode) -> Db {
        let _serial = match mode {
            Mode::Timescale => Some(TIMESCALE_SERVER.lock().await),
            Mode::Plain => None,
        };
        let env = TestEnv::get();
        let url = match mode {
            Mode::Timescale => env.timescale_url(),
            Mode::Plain => env.postgres_url(),
        }
        .to_string();
        let yaml = "symbols: [BTC, ETH]\nsources: [{kind: synthetic}]\nkafka: {bootstrapServers: 'unused:9092'}\n\
                    timescale: {connectionSecretRef: {name: db, key: url}}\n";
        let spec: CryptoPipelineSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut pipeline = CryptoPipeline::new(&unique("hist"), spec);
        pipeline.metadata.namespace = Some("history-tests".into());
        let t0 = Utc::now().duration_trunc(Span::days(1)).unwrap() - Span::days(2);
        let db = Db { mode, url, pipeline, t0, _serial };
        let mut c = db.connect().await;
        assert_eq!(storage::reconcile(&db.pipeline, &mut c, &()).await.unwrap(), mode);
        let s = db.schema();
        for (dt, source, id, price, qty) in BTC_TRADES {
            db.trade(&mut c, "BTC", *dt, source, id, price, qty, None).await;
        }
        db.trade(&mut c, "ETH", 20, "kraken", "e1", "10.250", "5", Some("buy")).await;
        db.trade(&mut c, "ETH", 20, "kraken", "e2", "11", "0.001", Some("sell")).await;
        db.trade(&mut c, "ETH", 20, "binance", "e3", "12", "1", None).await;
        let ticks = format!(
            "INSERT INTO {s}.ticks (time, source, symbol, quote, price, bid, ask, volume_24h, market_cap, change_24h_pct, received_at) VALUES \
             ($1, 'synthetic', 'BTC', 'USD', 100.5, 100.4, 100.6, NULL, NULL, NULL, now()), \
             ($1, 'coingecko', 'BTC', 'USD', 100.70, NULL, NULL, 123456789.5, 2000000000000, -1.25, now()), \
             ($2, 'synthetic', 'BTC', 'USD', 100.6, NULL, NULL, NULL, NULL, NULL, now())"
        );
        sqlx::query(AssertSqlSafe(ticks)).bind(t0).bind(t0 + Span::seconds(10)).execute(&mut c).await.unwrap();
        db.refresh(&mut c).await;
        c.close().await.unwrap();
        db
    }

    /// The quoted schema.
    pub fn schema(&self) -> String {
        storage::quote_ident(&self.pipeline.schema_name())
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    async fn trade(
        &self,
        c: &mut PgConnection,
        symbol: &str,
        dt: i64,
        source: &str,
        id: &str,
        price: &str,
        qty: &str,
        side: Option<&str>,
    ) {
        let sql = format!(
            "INSERT INTO {}.trades (time, source, symbol, quote, trade_id, price, quantity, side, received_at) \
             VALUES ($1, $2, $3, 'USD', $4, $5::numeric, $6::numeric, $7, now())",
            self.schema()
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(self.t0 + Span::seconds(dt))
            .bind(source)
            .bind(symbol)
            .bind(id)
            .bind(price)
            .bind(qty)
            .bind(side)
            .execute(c)
            .await
            .unwrap();
    }

    /// Continuous aggregates are refreshed by a background job the test server never runs.
    async fn refresh(&self, c: &mut PgConnection) {
        if self.mode == Mode::Timescale {
            let s = self.schema();
            for view in ["candles_1m", "candles_1h"] {
                let sql = format!("CALL refresh_continuous_aggregate('{s}.{view}', NULL, NULL)");
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *c).await.unwrap();
            }
        }
    }

    /// A BTC trade a second ago (for the newest candles).
    pub async fn trade_now(&self) {
        let mut c = self.connect().await;
        let dt = (Utc::now() - Span::seconds(1) - self.t0).num_seconds();
        self.trade(&mut c, "BTC", dt, "kraken", "now", "150", "1", None).await;
        self.refresh(&mut c).await;
        c.close().await.unwrap();
    }

    /// Replace `ticks` by a view that sleeps `secs` before returning the rows.
    pub async fn make_ticks_slow(&self, secs: u32) {
        let s = self.schema();
        let mut c = self.connect().await;
        let sql = format!(
            "ALTER TABLE {s}.ticks RENAME TO ticks_data; \
             CREATE FUNCTION {s}.slow_ticks() RETURNS SETOF {s}.ticks_data LANGUAGE sql AS \
             $$ SELECT pg_sleep({secs}); SELECT * FROM {s}.ticks_data $$; \
             CREATE VIEW {s}.ticks AS SELECT * FROM {s}.slow_ticks()"
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }

    /// Drop the schema.
    pub async fn drop(self) {
        let mut c = self.connect().await;
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.pipeline.schema_name());
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
}

/// A running `cryptoviz-worker gateway` over the schema, killed on drop.
pub struct Gateway {
    _child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Start a gateway whose pipeline stores into `db`; `statement_timeout_ms` overrides the default.
    pub async fn start(db: &Db, statement_timeout_ms: Option<u64>) -> Gateway {
        let dir = std::env::temp_dir().join(unique("history-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "pipeline: {{namespace: history-tests, name: {name}}}\n\
             symbols: [BTC, ETH]\n\
             quote: USD\n\
             sources: []\n\
             kafka: {{bootstrapServers: '{bootstrap}', rawTopic: unused.raw, streamTopic: '{topic}', dlqTopic: unused.dlq}}\n\
             storage: {{urlEnv: TEST_HISTORY_DATABASE_URL, schema: '{schema}'}}\n\
             scraper: {{suppressUnchangedTicks: false}}\n\
             consumer: {{groupId: unused, batchSize: 100, flushIntervalMs: 1000}}\n\
             gateway: {{heartbeatIntervalMs: 1000, maxClients: 100, replayBuffer: 100}}\n\
             alerts: {{enabled: false, thresholdPercent: 1.0, windowMs: 60000}}\n",
            name = db.pipeline.metadata.name.as_deref().unwrap(),
            bootstrap = TestEnv::get().kafka_bootstrap(),
            topic = unique("history.stream"),
            schema = db.pipeline.schema_name(),
        );
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::from(binary::worker("gateway"));
        cmd.arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("CRYPTOVIZ_LOG_FORMAT")
            .env("NO_COLOR", "1")
            .env("TEST_HISTORY_DATABASE_URL", &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ms) = statement_timeout_ms {
            cmd.env("CRYPTOVIZ_HISTORY_STATEMENT_TIMEOUT_MS", ms.to_string());
        }
        let mut child = cmd.spawn().expect("spawn the gateway");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("gateway listening")) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("the gateway exited before listening");
        })
        .await
        .expect("the gateway listens within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gateway { _child: child, addr, _dir: TempDir(dir) }
    }

    /// GET a path: (status, body); status 0 when nothing answers.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http::get(&format!("{}{path}", self.addr)).await.unwrap_or_default()
    }

    /// Sum of the samples named `name` carrying every `(label, value)` in `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.get("/metrics").await.1, name, labels)
    }
}
