//! The consumer process against the real broker and databases: every good record stored exactly once with its
//! exact decimals, re-deliveries ignored, poison records dead-lettered with their reason and origin, offsets
//! committed to the end, readiness and metrics — on PostgreSQL 15 and on the TimescaleDB test server.
//! Disruptive scenarios (SIGKILL, database restart) are in their own binaries.

use std::time::Duration;

use cryptoviz_tests::consumer::{Setup, tick, trade};
use cryptoviz_tests::{TestEnv, wait_for};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TICKS: u64 = 300;
const TRADES: u64 = 200;

/// Poison records and the reason label each must be dead-lettered with.
fn poison() -> Vec<((String, Vec<u8>), &'static str)> {
    let t = "2024-03-25T08:45:00Z";
    let raw = |s: String| ("BTC".to_string(), s.into_bytes());
    vec![
        (raw("not json".into()), "invalid message"),
        (raw(String::new()), "empty payload"),
        (
            raw(format!(
                r#"{{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1,5","exchange_time":"{t}","received_at":"{t}"}}"#
            )),
            "not a decimal",
        ),
        (
            raw(format!(
                r#"{{"type":"tick","v":2,"source":"kraken","symbol":"BTC","quote":"USD","price":"1","exchange_time":"{t}","received_at":"{t}"}}"#
            )),
            "unsupported schema version 2",
        ),
        (
            raw(format!(
                r#"{{"type":"alert","source":"kraken","symbol":"BTC","quote":"USD","from_price":"1","to_price":"2","change_pct":100.0,"window_ms":1000,"time":"{t}"}}"#
            )),
            "unexpected message type alert",
        ),
        // Valid JSON and a valid decimal, beyond what `numeric` holds: only the database can refuse it.
        (tick(1_000_000, "1e999999"), "rejected by the database"),
    ]
}

async fn stores_everything_once_and_dead_letters_poison(db_url: &str) {
    let s = Setup::new(db_url, 3, 100, "200ms").await;
    let mut records = Vec::new();
    for i in 0..TICKS {
        records.push(tick(i, if i == 7 { "67187.330000000001" } else { "100.5" }));
    }
    for i in 0..TRADES {
        records.push(trade(i, "0.000000012345678901234567890", "1.5"));
    }
    // Every good record twice, as a retrying producer would: stored once all the same.
    let duplicates = records.clone();
    records.extend(duplicates);
    let poison = poison();
    records.extend(poison.iter().map(|(r, _)| r.clone()));
    s.produce(&records).await;

    let w = s.start();
    w.wait_ready().await;
    wait_for("every tick and trade stored", Duration::from_secs(60), || async {
        (s.count("ticks").await == TICKS as i64 && s.count("trades").await == TRADES as i64).then_some(())
    })
    .await;
    wait_for("offsets committed to the end of the raw topic", Duration::from_secs(30), || async {
        s.fully_committed().then_some(())
    })
    .await;
    // Committed to the end, and still exactly the good rows: nothing twice, nothing lost.
    assert_eq!(s.count("ticks").await, TICKS as i64);
    assert_eq!(s.count("trades").await, TRADES as i64);

    let mut c = PgConnection::connect(db_url).await.unwrap();
    let (price, bid): (String, Option<String>) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT price::text, bid::text FROM \"{}\".ticks WHERE time = '2024-03-25T08:45:00.007Z'",
        s.schema
    )))
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!((price.as_str(), bid), ("67187.330000000001", None));
    let prices: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT DISTINCT price::text FROM \"{}\".trades", s.schema)))
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(prices, ["0.000000012345678901234567890"]);
    c.close().await.unwrap();

    let letters = s.dead_letters(poison.len());
    assert_eq!(letters.len(), poison.len(), "dead letters: {letters:?}");
    for ((record, why), (headers, payload)) in poison.iter().zip(&letters) {
        assert_eq!(payload, &record.1, "the original payload is forwarded verbatim");
        let reason = headers.iter().find_map(|h| h.strip_prefix("cv-dlq-reason=")).unwrap_or_default();
        assert!(reason.contains(why), "reason {reason:?} should mention {why:?}");
        assert!(headers.contains(&format!("cv-dlq-topic={}", s.cfg.kafka.raw_topic)), "{headers:?}");
        assert!(headers.iter().any(|h| h.starts_with("cv-dlq-partition=")), "{headers:?}");
        assert!(headers.iter().any(|h| h.starts_with("cv-dlq-offset=")), "{headers:?}");
    }
    assert_eq!(letters.len(), poison.len(), "no dead letter twice");

    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "ticks")]).await, Some(TICKS as f64));
    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "trades")]).await, Some(TRADES as f64));
    assert_eq!(w.metric("cryptoviz_consumer_dlq_messages_total", &[("reason", "invalid_message")]).await, Some(3.0));
    assert_eq!(w.metric("cryptoviz_consumer_dlq_messages_total", &[("reason", "database_rejected")]).await, Some(1.0));
    assert_eq!(w.metric("cryptoviz_consumer_database_errors_total", &[("kind", "data")]).await, Some(1.0));
    let (_, metrics) = w.get("/metrics").await.unwrap();
    for family in ["cryptoviz_consumer_flush_duration_seconds_bucket", "cryptoviz_consumer_batch_size_records_bucket"] {
        assert!(metrics.contains(family), "{family} missing");
    }
    w.stop().await;
}

#[tokio::test]
async fn postgres_stores_every_record_once_with_exact_decimals_and_dead_letters_poison() {
    stores_everything_once_and_dead_letters_poison(TestEnv::get().postgres_url()).await;
}

#[tokio::test]
async fn timescale_stores_every_record_once_with_exact_decimals_and_dead_letters_poison() {
    stores_everything_once_and_dead_letters_poison(TestEnv::get().timescale_url()).await;
}

#[tokio::test]
async fn not_ready_until_the_schema_exists_then_catches_up() {
    // The operator has not created the schema yet: records wait in Kafka, the consumer retries, nothing is lost.
    let s = Setup::new(TestEnv::get().postgres_url(), 2, 50, "100ms").await;
    let mut c = PgConnection::connect(&s.db_url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("ALTER SCHEMA \"{0}\" RENAME TO \"{0}_later\"", s.schema)))
        .execute(&mut c)
        .await
        .unwrap();
    s.produce(&(0..120).map(|i| tick(i, "1.25")).collect::<Vec<_>>()).await;
    let w = s.start();
    wait_for("a schema_missing database error", Duration::from_secs(60), || async {
        w.metric("cryptoviz_consumer_database_errors_total", &[("kind", "schema_missing")]).await.filter(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(w.metric("cryptoviz_consumer_paused", &[]).await, Some(1.0));
    assert_eq!(w.get("/ready").await.map(|(s, _)| s), Some(503));
    sqlx::query(AssertSqlSafe(format!("ALTER SCHEMA \"{0}_later\" RENAME TO \"{0}\"", s.schema)))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    wait_for("all ticks stored once the schema exists", Duration::from_secs(60), || async {
        (s.count("ticks").await == 120).then_some(())
    })
    .await;
    w.wait_ready().await;
    assert_eq!(w.metric("cryptoviz_consumer_paused", &[]).await, Some(0.0));
    w.stop().await;
}
