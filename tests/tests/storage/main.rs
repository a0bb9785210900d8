//! Storage reconciliation (`cryptoviz_operator::storage::Storage::reconcile_with`) against the real databases:
//! the TimescaleDB test server (hypertables, continuous aggregates, policies, `CALL run_job`) and PostgreSQL 15
//! (plain mode: tables, candle views, operator-run retention). Each test owns a schema named after a unique
//! pipeline, so the tests run in parallel on the shared servers.

use cryptoviz_crds::{CryptoPipeline, CryptoPipelineSpec};
use cryptoviz_operator::metrics::Metrics;
use cryptoviz_operator::storage::{Mode, Storage, latest_version};
use cryptoviz_tests::{TestEnv, repo_root, unique};
use cryptoviz_workers::consumer::batch::{Batch, Entry};
use cryptoviz_workers::consumer::sink::Sink;
use prometheus_client::registry::Registry;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

/// A pipeline with storage; `timescale` is the YAML of `spec.timescale` without the secret reference.
fn pipeline(timescale: &str) -> CryptoPipeline {
    let yaml = format!(
        "symbols: [BTC, ETH]\nsources: [{{kind: synthetic}}]\nkafka: {{bootstrapServers: 'unused:9092'}}\n\
         timescale: {{connectionSecretRef: {{name: db, key: url}}, {timescale}}}\n"
    );
    let spec: CryptoPipelineSpec = serde_saphyr::from_str(&yaml).unwrap();
    let mut p = CryptoPipeline::new(&unique("st"), spec);
    p.metadata.namespace = Some("storage-tests".into());
    // The apiserver gives every object a UID; the schema's owner mark is made from it.
    p.metadata.uid = Some(format!("uid-{}", p.metadata.name.as_deref().unwrap()));
    p
}

/// A reconciler and the text of its metrics (to tell whether it wrote anything).
struct Reconciler {
    storage: Storage,
    registry: Registry,
}

impl Reconciler {
    fn new() -> Self {
        let mut registry = Registry::default();
        let storage = Storage::new(Metrics::new(&mut registry));
        Reconciler { storage, registry }
    }

    async fn reconcile(&self, p: &CryptoPipeline, url: &str) -> Mode {
        let mut c = PgConnection::connect(url).await.unwrap();
        let mode = self.storage.reconcile_with(p, &mut c).await.unwrap();
        c.close().await.unwrap();
        mode
    }

    /// Database operations counted so far (every write the reconciler makes is counted, reads are not).
    fn database_writes(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("cryptoviz_operator_external_calls") && l.contains("database"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn cleanup(&self, p: &CryptoPipeline, url: &str) {
        let mut c = PgConnection::connect(url).await.unwrap();
        self.storage.cleanup_with(p, &mut c).await.unwrap();
        c.close().await.unwrap();
    }
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

/// `(job_id, drop_after)` of the retention policy of a table or continuous aggregate.
async fn retention_job(c: &mut PgConnection, schema: &str, table: &str) -> Option<(i32, String)> {
    sqlx::query(
        "SELECT j.job_id, j.config->>'drop_after' AS drop_after FROM timescaledb_information.jobs j \
         LEFT JOIN timescaledb_information.continuous_aggregates ca \
           ON ca.materialization_hypertable_schema = j.hypertable_schema AND ca.materialization_hypertable_name = j.hypertable_name \
         WHERE j.proc_name = 'policy_retention' \
           AND ((j.hypertable_schema = $1 AND j.hypertable_name = $2) OR (ca.view_schema = $1 AND ca.view_name = $2))",
    )
    .bind(schema)
    .bind(table)
    .fetch_optional(c)
    .await
    .unwrap()
    .map(|r| (r.get("job_id"), r.get("drop_after")))
}

/// Every job of the schema's tables and aggregates, as comparable text.
async fn jobs(c: &mut PgConnection, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('%s %s %s %s %s', j.job_id, j.proc_name, j.hypertable_name, j.schedule_interval, j.config) \
         FROM timescaledb_information.jobs j \
         WHERE j.hypertable_schema = $1 OR j.hypertable_name IN ( \
           SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates WHERE view_schema = $1) \
         ORDER BY j.job_id",
    )
    .bind(schema)
    .fetch_all(c)
    .await
    .unwrap()
}

async fn interval_equals(c: &mut PgConnection, a: &str, b: &str) -> bool {
    sqlx::query_scalar("SELECT $1::interval = $2::interval").bind(a).bind(b).fetch_one(c).await.unwrap()
}

#[tokio::test]
async fn timescale_schema_and_policies_are_created_and_visible() {
    let url = TestEnv::get().timescale_url();
    let p = pipeline("retention: {ticks: 14d, trades: 7d, candles: 365d}, compressAfter: 2d");
    let schema = p.schema_name();
    let r = Reconciler::new();
    assert_eq!(r.reconcile(&p, url).await, Mode::Timescale);

    let mut c = connect(url).await;
    let hypertables: Vec<String> = sqlx::query_scalar(
        "SELECT hypertable_name::text FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(hypertables, ["ticks", "trades"]);
    let caggs: Vec<String> = sqlx::query_scalar(
        "SELECT view_name::text FROM timescaledb_information.continuous_aggregates WHERE view_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(caggs, ["candles_1h", "candles_1m"]);
    for (table, want) in
        [("ticks", "14 days"), ("trades", "7 days"), ("candles_1m", "365 days"), ("candles_1h", "365 days")]
    {
        let (_, drop_after) =
            retention_job(&mut c, &schema, table).await.unwrap_or_else(|| panic!("no retention job on {table}"));
        assert!(interval_equals(&mut c, &drop_after, want).await, "{table}: drop_after {drop_after}, want {want}");
    }
    let compression: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s %s', hypertable_name, config->>'compress_after') FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_compression' AND hypertable_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(compression, ["ticks 2 days", "trades 2 days"]);
    let refresh: Vec<String> = sqlx::query_scalar(
        "SELECT hypertable_name::text FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(refresh, ["candles_1h", "candles_1m"]);
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

#[tokio::test]
async fn changing_retention_in_the_spec_alters_the_existing_policy() {
    let url = TestEnv::get().timescale_url();
    let mut p = pipeline("retention: {ticks: 90d, trades: 30d}, compressAfter: 2d");
    let schema = p.schema_name();
    let r = Reconciler::new();
    r.reconcile(&p, url).await;
    let mut c = connect(url).await;
    let (ticks_job, before) = retention_job(&mut c, &schema, "ticks").await.unwrap();
    assert!(interval_equals(&mut c, &before, "90 days").await, "{before}");
    let (trades_job, _) = retention_job(&mut c, &schema, "trades").await.unwrap();

    p.spec.timescale.as_mut().unwrap().retention.ticks = "7d".into();
    p.spec.timescale.as_mut().unwrap().retention.candles = "400d".into();
    p.spec.timescale.as_mut().unwrap().compress_after = Some("5d".into());
    r.reconcile(&p, url).await;
    let (job, after) = retention_job(&mut c, &schema, "ticks").await.unwrap();
    assert_eq!(job, ticks_job, "the policy is altered in place, not replaced");
    assert!(interval_equals(&mut c, &after, "7 days").await, "ticks drop_after after the edit: {after}");
    let (job, trades_after) = retention_job(&mut c, &schema, "trades").await.unwrap();
    assert_eq!(job, trades_job);
    assert!(interval_equals(&mut c, &trades_after, "30 days").await, "trades untouched: {trades_after}");
    let (_, candles) = retention_job(&mut c, &schema, "candles_1h").await.unwrap();
    assert!(interval_equals(&mut c, &candles, "400 days").await, "{candles}");
    let compress: Vec<String> = sqlx::query_scalar(
        "SELECT config->>'compress_after' FROM timescaledb_information.jobs \
         WHERE proc_name = 'policy_compression' AND hypertable_schema = $1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(compress, ["5 days", "5 days"]);
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

#[tokio::test]
async fn running_the_retention_job_drops_old_chunks_and_keeps_recent_rows() {
    let url = TestEnv::get().timescale_url();
    let p = pipeline("retention: {ticks: 7d}");
    let schema = p.schema_name();
    let r = Reconciler::new();
    r.reconcile(&p, url).await;
    let mut c = connect(url).await;
    // One tick per day, 0 to 20 days old (one-day chunks).
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".ticks (time, source, symbol, quote, price, received_at) \
         SELECT now() - d * interval '1 day', 'synthetic', 'BTC', 'USD', 100 + d, now() FROM generate_series(0, 20) d"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let chunks = format!("SELECT count(*) FROM show_chunks('\"{schema}\".ticks')");
    let before: i64 = sqlx::query_scalar(AssertSqlSafe(chunks.clone())).fetch_one(&mut c).await.unwrap();
    let (job, _) = retention_job(&mut c, &schema, "ticks").await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CALL run_job({job})"))).execute(&mut c).await.unwrap();
    let after: i64 = sqlx::query_scalar(AssertSqlSafe(chunks)).fetch_one(&mut c).await.unwrap();
    assert!(after < before, "chunks {before} -> {after}");
    let (old, recent): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE time < now() - interval '8 days'), \
                count(*) FILTER (WHERE time > now() - interval '6 days 12 hours') FROM \"{schema}\".ticks"
    )))
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(old, 0, "rows older than the policy remain");
    assert_eq!(recent, 7, "rows younger than the policy were dropped");
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

/// The fixture trades, written through the consumer's sink (decimals bound as text, cast to numeric).
async fn store_fixture_trades(url: &str, schema: &str) {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/consumer/candle_trades.jsonl")).unwrap();
    let mut b = Batch::default();
    for (i, line) in text.lines().enumerate() {
        b.push(Entry::read(0, i as i64, None, None, line.into()));
    }
    assert_eq!(b.counts(), (0, 8, 0));
    let sink = Sink::new(url, schema, true).unwrap();
    let written = sink.write(&b.ticks(), &b.trades()).await.unwrap();
    assert_eq!(written.trades, 8);
    // Written twice: the second time is a no-op (idempotent insert).
    assert_eq!(sink.write(&b.ticks(), &b.trades()).await.unwrap().trades, 0);
}

/// The hand-computed candles of the fixture, per resolution.
fn expected_candles(resolution: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/consumer/candles.csv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&format!("{resolution},")))
        .map(str::to_owned)
        .collect()
}

async fn candles(c: &mut PgConnection, schema: &str, view: &str) -> Vec<String> {
    // Text of each numeric: exact, scale included (a float anywhere would show).
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT concat_ws(',', to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00', source, symbol, \
         open::text, high::text, low::text, close::text, volume::text, trades::text) \
         FROM \"{schema}\".{view} ORDER BY bucket, source, symbol"
    )))
    .fetch_all(c)
    .await
    .unwrap()
}

#[tokio::test]
async fn timescale_candles_equal_the_hand_computed_ohlcv() {
    let url = TestEnv::get().timescale_url();
    let p = pipeline("retention: {candles: 3650d, trades: 3650d}");
    let schema = p.schema_name();
    let r = Reconciler::new();
    r.reconcile(&p, url).await;
    store_fixture_trades(url, &schema).await;
    let mut c = connect(url).await;
    for view in ["candles_1m", "candles_1h"] {
        sqlx::query(AssertSqlSafe(format!("CALL refresh_continuous_aggregate('\"{schema}\".{view}', NULL, NULL)")))
            .execute(&mut c)
            .await
            .unwrap();
    }
    assert_eq!(candles(&mut c, &schema, "candles_1m").await, expected_candles("1m"));
    assert_eq!(candles(&mut c, &schema, "candles_1h").await, expected_candles("1h"));
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

#[tokio::test]
async fn plain_postgres_candle_views_equal_the_hand_computed_ohlcv() {
    let url = TestEnv::get().postgres_url();
    let p = pipeline("retention: {candles: 3650d, trades: 3650d}");
    let schema = p.schema_name();
    let r = Reconciler::new();
    assert_eq!(r.reconcile(&p, url).await, Mode::Plain);
    store_fixture_trades(url, &schema).await;
    let mut c = connect(url).await;
    assert_eq!(candles(&mut c, &schema, "candles_1m").await, expected_candles("1m"));
    assert_eq!(candles(&mut c, &schema, "candles_1h").await, expected_candles("1h"));
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

#[tokio::test]
async fn a_resync_with_nothing_changed_writes_nothing() {
    let url = TestEnv::get().timescale_url();
    let p = pipeline("retention: {ticks: 30d, trades: 10d, candles: 100d}, compressAfter: 3d");
    let schema = p.schema_name();
    let r = Reconciler::new();
    r.reconcile(&p, url).await;
    let mut c = connect(url).await;
    let migrations =
        format!("SELECT format('%s %s', version, applied_at) FROM \"{schema}\".cryptoviz_migrations ORDER BY 1");
    let jobs_before = jobs(&mut c, &schema).await;
    let migrations_before: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(migrations.clone())).fetch_all(&mut c).await.unwrap();
    assert_eq!(jobs_before.len(), 8, "4 retention + 2 compression + 2 refresh jobs: {jobs_before:#?}");
    assert_eq!(migrations_before.len(), latest_version() as usize);
    let writes_before = r.database_writes();
    assert!(writes_before.contains("migrate"), "the first reconcile is counted: {writes_before}");

    for _ in 0..2 {
        assert_eq!(r.reconcile(&p, url).await, Mode::Timescale);
    }
    assert_eq!(jobs(&mut c, &schema).await, jobs_before, "jobs changed");
    let migrations_after: Vec<String> = sqlx::query_scalar(AssertSqlSafe(migrations)).fetch_all(&mut c).await.unwrap();
    assert_eq!(migrations_after, migrations_before, "migrations re-applied");
    assert_eq!(r.database_writes(), writes_before, "the resync wrote to the database");
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}

#[tokio::test]
async fn plain_postgres_mode_deletes_only_expired_rows() {
    let url = TestEnv::get().postgres_url();
    let p = pipeline("retention: {ticks: 7d, trades: 30d}");
    let schema = p.schema_name();
    let r = Reconciler::new();
    assert_eq!(r.reconcile(&p, url).await, Mode::Plain);
    let mut c = connect(url).await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s %s', c.relname, c.relkind) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'v') ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(kinds, ["candles_1h v", "candles_1m v", "cryptoviz_migrations r", "ticks r", "trades r"]);
    // Ticks 0 to 20 days (and an hour) old; trades 10 and 40 days old.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".ticks (time, source, symbol, quote, price, received_at) \
         SELECT now() - d * interval '1 day' - interval '1 hour', 'synthetic', 'BTC', 'USD', 100 + d, now() FROM generate_series(0, 20) d; \
         INSERT INTO \"{schema}\".trades (time, source, symbol, quote, trade_id, price, quantity, received_at) VALUES \
         (now() - interval '10 days', 'kraken', 'BTC', 'USD', 'young', 1, 1, now()), \
         (now() - interval '40 days', 'kraken', 'BTC', 'USD', 'old', 1, 1, now())"
    )))
    .execute(&mut c)
    .await
    .unwrap();

    assert_eq!(r.reconcile(&p, url).await, Mode::Plain);
    let ticks: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT (price - 100)::int FROM \"{schema}\".ticks ORDER BY time DESC"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(ticks, (0..=6).collect::<Vec<_>>(), "only ticks older than 7 days are deleted");
    let trades: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!("SELECT trade_id FROM \"{schema}\".trades")))
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(trades, ["young"]);
    c.close().await.unwrap();
    r.cleanup(&p, url).await;
}
