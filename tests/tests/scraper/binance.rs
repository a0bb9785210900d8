use std::time::Duration;

use cryptoviz_tests::metrics;
use cryptoviz_tests::standins::frames;
use cryptoviz_tests::standins::ws::{Step, WsStandIn, send_all};
use serde_json::json;

use crate::harness::{Scraper, assert_key_partitions_stable, config, consume_until, of, topics};

/// Binance combined streams: the streams are in the URL, pings are answered, `serverShutdown` makes the
/// scraper reconnect, string prices stay exact, USD pipelines read USDT pairs, a repeated trade is produced
/// once and a frame with a number where a string belongs is counted.
#[tokio::test]
async fn combined_stream_answers_pings_and_reconnects_on_server_shutdown() {
    let mut first = vec![Step::PingAwaitPong];
    first.extend(send_all(frames("binance/connect1.jsonl")));
    let second = send_all(frames("binance/connect2.jsonl"));
    let standin = WsStandIn::start(vec![first, second]).await;

    let (raw, stream) = topics("scraper.binance").await;
    let sources = json!([{"kind": "binance", "baseUrl": standin.url()}]);
    let mut scraper = Scraper::start(&config(&["BTC", "ETH"], sources, &raw, &stream, false, None), &[]).await;

    let recs = consume_until(&[&raw, &stream], Duration::from_secs(60), |r| {
        of(r, &raw, "trade").iter().any(|t| t.payload["trade_id"] == "3515367120")
            && of(r, &raw, "trade").iter().any(|t| t.payload["trade_id"] == "1385447002")
            && of(r, &stream, "trade").len() >= 5
    })
    .await;
    assert_eq!(standin.paths()[0], "/stream?streams=btcusdt@trade/btcusdt@ticker/ethusdt@trade/ethusdt@ticker");
    assert!(standin.pongs() >= 1, "the ping was not answered");
    assert_eq!(standin.connections(), 2);

    let ids = |sym: &str| -> Vec<String> {
        of(&recs, &raw, "trade")
            .iter()
            .filter(|t| t.key == sym)
            .map(|t| t.payload["trade_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("BTC"), ["3515367117", "3515367119", "3515367120"]);
    assert_eq!(ids("ETH"), ["1385447001", "1385447002"]);
    let first_trade = of(&recs, &raw, "trade")[0];
    assert_eq!(first_trade.payload["price"], "67187.33000000");
    assert_eq!(first_trade.payload["quote"], "USDT");
    assert_eq!(first_trade.payload["side"], "sell", "buyer was maker: the seller took");
    assert_eq!(first_trade.payload["exchange_time"], "2024-03-25T08:45:00.123Z");
    let tick = of(&recs, &raw, "tick")[0];
    assert_eq!(
        (tick.payload["price"].as_str(), tick.payload["volume_24h"].as_str()),
        (Some("67187.33000000"), Some("12345.67890000"))
    );
    assert_eq!(of(&recs, &stream, "trade").len(), 5, "the stream topic carries the trades too");
    assert_key_partitions_stable(&recs);

    let text = scraper.get("/metrics").await.1;
    let m = |name: &'static str, reason: &'static str| {
        metrics::sum(&text, name, &[("source", "binance"), ("reason", reason)])
    };
    assert_eq!(m("cryptoviz_scraper_reconnects_total", "server_shutdown"), 1.0);
    assert_eq!(m("cryptoviz_scraper_messages_deduplicated_total", "duplicate_trade"), 1.0);
    assert_eq!(m("cryptoviz_scraper_messages_dropped_total", "unexpected_shape"), 1.0);
    scraper.assert_running();
}
