use std::time::Duration;

use cryptoviz_tests::standins::frames;
use cryptoviz_tests::standins::ws::{Step, WsStandIn, send_all};
use serde_json::json;

use crate::harness::{Scraper, assert_key_partitions_stable, config, consume_until, of, topics};

/// Kraken v2 through a cut mid-stream and a silent socket: the scraper subscribes with v2 names,
/// reconnects (the watchdog catches the silence), the repeated snapshots produce each trade exactly once,
/// JSON-number prices keep every digit, and the malformed frames are counted.
#[tokio::test]
async fn stream_reconnects_after_cuts_and_silence_and_produces_each_trade_once() {
    let subscribed = Step::AwaitTexts(2);
    let mut first = vec![subscribed.clone()];
    first.extend(send_all(frames("kraken/connect1.jsonl")));
    first.push(Step::Disconnect);
    // The second connection delivers, then falls silent (no heartbeats): only the watchdog can notice.
    let mut second = vec![subscribed.clone()];
    second.extend(send_all(frames("kraken/connect2.jsonl")));
    let mut third = vec![subscribed];
    third.extend(send_all(frames("kraken/connect3.jsonl")));
    third.push(Step::Every(Duration::from_millis(500), r#"{"channel":"heartbeat"}"#.into()));
    let standin = WsStandIn::start(vec![first, second, third]).await;

    let (raw, stream) = topics("scraper.kraken").await;
    let sources = json!([{"kind": "kraken", "baseUrl": standin.url()}]);
    let mut scraper = Scraper::start(&config(&["BTC"], sources, &raw, &stream, false, None), &[]).await;

    let recs = consume_until(&[&raw], Duration::from_secs(60), |r| {
        of(r, &raw, "trade").iter().any(|t| t.payload["trade_id"] == "1006")
    })
    .await;
    scraper
        .wait_metric(
            "cryptoviz_scraper_messages_deduplicated_total",
            &[("source", "kraken"), ("reason", "duplicate_trade")],
            5.0,
        )
        .await;

    let trades = of(&recs, &raw, "trade");
    let ids: Vec<&str> = trades.iter().map(|t| t.payload["trade_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1001", "1002", "1003", "1004", "1005", "1006"], "each trade once, in order");
    assert_eq!(trades[0].payload["price"], "67187.330000000001");
    assert_eq!(trades[0].payload["quantity"], "0.00012345");
    assert_eq!(trades[0].payload["side"], "buy");
    assert_eq!(trades[5].payload["price"], "67200.000000000001");
    assert!(trades.iter().all(|t| t.key == "BTC" && t.payload["quote"] == "USD" && t.headers["cv-source"] == "kraken"));
    let tick = of(&recs, &raw, "tick")[0];
    assert_eq!(
        (tick.payload["price"].as_str(), tick.payload["bid"].as_str()),
        (Some("67187.330000000001"), Some("67187.3"))
    );
    assert_key_partitions_stable(&recs);

    let subs: Vec<serde_json::Value> =
        standin.received().iter().filter(|(c, _)| *c == 1).map(|(_, t)| serde_json::from_str(t).unwrap()).collect();
    assert_eq!(subs[0], json!({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}}));
    assert_eq!(subs[1], json!({"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}}));
    assert!(standin.connections() >= 3);

    let count = |name: &'static str, labels: Vec<(&'static str, &'static str)>| {
        let s = &scraper;
        async move { s.metric(name, &labels).await }
    };
    assert_eq!(count("cryptoviz_scraper_messages_deduplicated_total", vec![("reason", "duplicate_trade")]).await, 5.0);
    assert!(
        count("cryptoviz_scraper_reconnects_total", vec![("source", "kraken"), ("reason", "watchdog")]).await >= 1.0
    );
    assert!(count("cryptoviz_scraper_reconnects_total", vec![("source", "kraken")]).await >= 2.0);
    assert_eq!(count("cryptoviz_scraper_messages_dropped_total", vec![("reason", "malformed_json")]).await, 1.0);
    assert_eq!(count("cryptoviz_scraper_messages_dropped_total", vec![("reason", "unexpected_shape")]).await, 1.0);
    assert_eq!(count("cryptoviz_scraper_source_up", vec![("source", "kraken")]).await, 1.0);
    scraper.assert_running();
}
