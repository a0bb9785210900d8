use std::collections::HashMap;
use std::time::Duration;

use cryptoviz_tests::wait_for;
use serde_json::json;

use crate::harness::{Scraper, assert_key_partitions_stable, config, consume_until, of};

/// The synthetic market fills both topics: key = symbol on one partition, per-symbol order kept (trade ids
/// increase), headers set, and the worker reports ready and healthy.
#[tokio::test]
async fn synthetic_market_fills_both_topics_keyed_by_symbol_in_order() {
    let (raw, stream) = crate::harness::topics("scraper.synth").await;
    let sources = json!([{"kind": "synthetic", "rate": 20, "seed": 7}]);
    let scraper = Scraper::start(&config(&["BTC", "ETH", "SOL"], sources, &raw, &stream, false, None), &[]).await;

    let recs = consume_until(&[&raw, &stream], Duration::from_secs(60), |r| {
        ["BTC", "ETH", "SOL"].iter().all(|s| of(r, &stream, "trade").iter().filter(|t| t.key == *s).count() >= 20)
    })
    .await;
    assert_key_partitions_stable(&recs);
    let mut last: HashMap<&str, u64> = HashMap::new();
    for t in of(&recs, &raw, "trade") {
        assert_eq!(t.key, t.payload["symbol"].as_str().unwrap());
        assert_eq!((t.headers["cv-type"].as_str(), t.headers["cv-source"].as_str()), ("trade", "synthetic"));
        let id: u64 = t.payload["trade_id"].as_str().unwrap().parse().unwrap();
        let prev = last.insert(&t.key, id).unwrap_or(0);
        assert_eq!(id, prev + 1, "{}: trades out of order or missing", t.key);
    }
    assert_eq!(last.len(), 3);
    assert_eq!(scraper.get("/ready").await.0, 200);
    assert_eq!(scraper.get("/health").await.0, 200);
    assert!(
        scraper.metric("cryptoviz_scraper_messages_produced_total", &[("source", "synthetic"), ("role", "raw")]).await
            > 0.0
    );
    assert_eq!(scraper.metric("cryptoviz_scraper_source_up", &[("source", "synthetic")]).await, 1.0);
}

/// With no broker at all, the producer's buffer fills to its bound and further records are counted drops:
/// memory stays bounded, the process keeps running and reports not ready.
#[tokio::test]
async fn broker_down_means_a_bounded_buffer_then_counted_drops() {
    let sources = json!([{"kind": "synthetic", "rate": 20000, "seed": 1}]);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&config(&["BTC", "ETH"], sources, "down.raw", "down.stream", false, None)).unwrap();
    // Nothing listens on port 1.
    cfg["kafka"]["bootstrapServers"] = json!("127.0.0.1:1");
    let mut scraper = Scraper::start(&cfg.to_string(), &[]).await;

    scraper
        .wait_metric(
            "cryptoviz_scraper_messages_dropped_total",
            &[("source", "synthetic"), ("reason", "queue_full")],
            1000.0,
        )
        .await;
    let depth = scraper.metric("cryptoviz_scraper_producer_queue_depth", &[]).await;
    assert!(depth <= 100_000.0, "buffer beyond its bound: {depth}");
    let produced = scraper.metric("cryptoviz_scraper_messages_produced_total", &[]).await;
    assert!(produced <= 100_000.0 + 1.0, "accepted more than the buffer holds: {produced}");
    wait_for("/ready to say 503", Duration::from_secs(30), || async {
        (scraper.get("/ready").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(scraper.get("/health").await.0, 200, "a down broker is not a reason to restart");
    scraper.assert_running();
}
