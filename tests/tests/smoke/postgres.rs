use cryptoviz_tests::TestEnv;
use sqlx::postgres::PgPoolOptions;

/// The plain PostgreSQL 15 server answers, and is 15 without TimescaleDB (the plain-PostgreSQL mode's target).
#[tokio::test]
async fn postgres_15_answers_without_timescaledb() {
    let pool = PgPoolOptions::new().max_connections(2).connect(TestEnv::get().postgres_url()).await.unwrap();
    let version: i32 =
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&pool).await.unwrap();
    assert_eq!(version / 10000, 15);
    let sum: i64 = sqlx::query_scalar("SELECT $1::bigint + 1").bind(41_i64).fetch_one(&pool).await.unwrap();
    assert_eq!(sum, 42);
    let ts: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ts, 0);
}
