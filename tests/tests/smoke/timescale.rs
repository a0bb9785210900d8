use cryptoviz_tests::{TestEnv, unique};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Row};

/// A hypertable with a retention policy shows up in timescaledb_information.jobs, and running the job by
/// hand (the test server never runs background jobs) drops the chunks older than the policy.
#[tokio::test]
async fn retention_policy_is_listed_and_run_job_drops_old_chunks() {
    // One connection: the test server is a single PGlite session.
    let pool = PgPoolOptions::new().max_connections(1).connect(TestEnv::get().timescale_url()).await.unwrap();
    let schema = unique("smoke_ts").replace('-', "_");
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&pool).await.unwrap();
    let table = format!("{schema}.ticks");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (time timestamptz NOT NULL, symbol text NOT NULL, price numeric NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("SELECT create_hypertable($1::regclass, 'time', chunk_time_interval => interval '1 day')")
        .bind(&table)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} SELECT now() - (d || ' days')::interval, 'BTC', 100 + d FROM generate_series(0, 20) d"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let job_id: i32 = sqlx::query_scalar("SELECT add_retention_policy($1::regclass, interval '7 days')")
        .bind(&table)
        .fetch_one(&pool)
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT proc_name, config->>'drop_after' AS drop_after FROM timescaledb_information.jobs \
         WHERE job_id = $1 AND hypertable_schema = $2 AND hypertable_name = 'ticks'",
    )
    .bind(job_id)
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("proc_name"), "policy_retention");
    assert_eq!(row.get::<String, _>("drop_after"), "7 days");

    let chunks_before: i64 = sqlx::query_scalar("SELECT count(*) FROM show_chunks($1::regclass)")
        .bind(&table)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("CALL run_job({job_id})"))).execute(&pool).await.unwrap();
    let chunks_after: i64 = sqlx::query_scalar("SELECT count(*) FROM show_chunks($1::regclass)")
        .bind(&table)
        .fetch_one(&pool)
        .await
        .unwrap();
    let oldest_days: f64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT extract(epoch from now() - min(time))::float8 / 86400 FROM {table}"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(chunks_after < chunks_before, "chunks {chunks_before} -> {chunks_after}");
    assert!(oldest_days < 9.0, "rows older than the policy remain: {oldest_days} days");

    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&pool).await.unwrap();
}
