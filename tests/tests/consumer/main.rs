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

/// The price the test's CHECK constraint makes the database refuse (valid by every value rule).
const REFUSED_PRICE: &str = "4242.4242";

/// A poison record: (key, payload), what its reason must say and, for a broken value rule, the field it must
/// name.
type Poison = ((String, Vec<u8>), &'static str, Option<&'static str>);

/// Every poison record of the test.
fn poison() -> Vec<Poison> {
    let t = "2024-03-25T08:45:00Z";
    let raw = |s: String| ("BTC".to_string(), s.into_bytes());
    let at = |time: &str| {
        raw(format!(
            r#"{{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1","exchange_time":"{time}","received_at":"{t}"}}"#
        ))
    };
    vec![
        (raw("not json".into()), "invalid message", None),
        (raw(String::new()), "empty payload", None),
        (
            raw(format!(
                r#"{{"type":"tick","source":"kraken","symbol":"BTC","quote":"USD","price":"1,5","exchange_time":"{t}","received_at":"{t}"}}"#
            )),
            "not a decimal",
            None,
        ),
        (
            raw(format!(
                r#"{{"type":"tick","v":2,"source":"kraken","symbol":"BTC","quote":"USD","price":"1","exchange_time":"{t}","received_at":"{t}"}}"#
            )),
            "unsupported schema version 2",
            None,
        ),
        (
            raw(format!(
                r#"{{"type":"alert","source":"kraken","symbol":"BTC","quote":"USD","from_price":"1","to_price":"2","change_pct":100.0,"window_ms":1000,"time":"{t}"}}"#
            )),
            "unexpected message type alert",
            None,
        ),
        // Valid JSON and valid decimals, each breaking one value rule (docs/messages.md, "Value rules").
        (tick(1_000_001, "-5"), "invalid value: price -5 must be greater than zero", Some("price")),
        (tick(1_000_002, "0"), "invalid value: price 0 must be greater than zero", Some("price")),
        (tick(1_000_003, "1e309"), "invalid value: price 1e309 has more than 20 integer digits", Some("price")),
        (
            tick(1_000_004, "0.0000000000000000000000000000001"),
            "invalid value: price 0.0000000000000000000000000000001 has more than 30 fraction digits",
            Some("price"),
        ),
        (trade(1_000_005, "1", "0"), "invalid value: quantity 0 must be greater than zero", Some("quantity")),
        (at("2064-03-25T08:45:00Z"), "invalid value: exchange_time", Some("exchange_time")),
        (at("1984-03-25T08:45:00Z"), "invalid value: exchange_time", Some("exchange_time")),
        // Valid by every rule, refused by a constraint on the table: only the database can refuse it.
        (tick(1_000_000, REFUSED_PRICE), "rejected by the database", None),
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
    records.extend(poison.iter().map(|(r, _, _)| r.clone()));
    let mut c = PgConnection::connect(db_url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE \"{}\".ticks ADD CONSTRAINT cv_test_refused CHECK (price <> {REFUSED_PRICE})",
        s.schema
    )))
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
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

    // Committed to the end: every dead letter this run writes is on the topic. Read all of them, not n.
    let letters = s.dead_letters();
    assert_eq!(letters.len(), poison.len(), "each poison record dead-lettered once: {letters:?}");
    for ((record, why, field), (headers, payload)) in poison.iter().zip(&letters) {
        assert_eq!(payload, &record.1, "the original payload is forwarded verbatim");
        let reason = headers.iter().find_map(|h| h.strip_prefix("cv-dlq-reason=")).unwrap_or_default();
        assert!(reason.contains(why), "reason {reason:?} should mention {why:?}");
        let named = headers.iter().find_map(|h| h.strip_prefix("cv-dlq-field="));
        assert_eq!(named, *field, "{headers:?}");
        assert!(headers.contains(&format!("cv-dlq-topic={}", s.cfg.kafka.raw_topic)), "{headers:?}");
        assert!(headers.iter().any(|h| h.starts_with("cv-dlq-partition=")), "{headers:?}");
        assert!(headers.iter().any(|h| h.starts_with("cv-dlq-offset=")), "{headers:?}");
    }

    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "ticks")]).await, Some(TICKS as f64));
    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "trades")]).await, Some(TRADES as f64));
    // Every good record was produced twice: each copy counted once, as written or as duplicate.
    assert_eq!(w.metric("cryptoviz_consumer_rows_duplicate_total", &[("table", "ticks")]).await, Some(TICKS as f64));
    assert_eq!(w.metric("cryptoviz_consumer_rows_duplicate_total", &[("table", "trades")]).await, Some(TRADES as f64));
    assert_eq!(w.metric("cryptoviz_consumer_dlq_messages_total", &[("reason", "invalid_message")]).await, Some(3.0));
    assert_eq!(w.metric("cryptoviz_consumer_dlq_messages_total", &[("reason", "invalid_value")]).await, Some(7.0));
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
async fn a_row_the_database_refuses_is_isolated_and_every_other_row_counted_once() {
    let s = Setup::new(TestEnv::get().postgres_url(), 1, 100, "500ms").await;
    let mut c = PgConnection::connect(&s.db_url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE \"{}\".ticks ADD CONSTRAINT cv_test_refused CHECK (price <> {REFUSED_PRICE})",
        s.schema
    )))
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    // 50 fresh ticks, one the database refuses, then the first 10 again: the refused row splits a batch of
    // fresh rows, which are stored one by one.
    let mut records: Vec<_> = (0..50).map(|i| tick(i, if i == 25 { REFUSED_PRICE } else { "7.5" })).collect();
    records.extend((0..10).map(|i| tick(i, "7.5")));
    s.produce(&records).await;
    let w = s.start();
    wait_for("offsets committed to the end of the raw topic", Duration::from_secs(60), || async {
        s.fully_committed().then_some(())
    })
    .await;
    assert_eq!(s.count("ticks").await, 49);
    assert_eq!(w.metric("cryptoviz_consumer_dlq_messages_total", &[("reason", "database_rejected")]).await, Some(1.0));
    assert_eq!(w.metric("cryptoviz_consumer_rows_written_total", &[("table", "ticks")]).await, Some(49.0));
    assert_eq!(w.metric("cryptoviz_consumer_rows_duplicate_total", &[("table", "ticks")]).await, Some(10.0));
    w.stop().await;
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
