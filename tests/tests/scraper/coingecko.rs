use std::time::Duration;

use cryptoviz_tests::metrics;
use cryptoviz_tests::standins::fixture;
use cryptoviz_tests::standins::http::{HttpStandIn, Reply};
use cryptoviz_tests::wait_for;
use serde_json::json;

use crate::harness::{Scraper, assert_key_partitions_stable, config, consume_until, of, topics};

const KEY: &str = "cg-demo-secret-7f3a9";

/// CoinGecko polled through a 429 with Retry-After, a 500, a truncated body and wrong types: good bodies
/// land on the raw topic with exact decimals, the unchanged repeat is suppressed, the 6 % move raises one
/// alert, bad bodies are counted, the key is sent and never logged, and the process keeps running.
#[tokio::test]
async fn rest_source_survives_rate_limits_errors_and_bad_bodies_and_alerts_once() {
    let standin = HttpStandIn::start(vec![
        Reply::json(fixture("coingecko/prices.json")),
        Reply::status(429).header("Retry-After", "2"),
        Reply::status(500),
        Reply::json(fixture("coingecko/truncated.json")),
        Reply::json(fixture("coingecko/wrong_types.json")),
        Reply::json(fixture("coingecko/prices.json")),
        Reply::json(fixture("coingecko/prices_moved.json")),
    ])
    .await;
    let (raw, stream) = topics("scraper.cg").await;
    let sources =
        json!([{"kind": "coingecko", "baseUrl": standin.url(), "pollIntervalMs": 1000, "apiKeyEnv": "CV_TEST_CG_KEY"}]);
    let cfg = config(&["BTC", "ETH", "DOGE2"], sources, &raw, &stream, true, Some((5.0, 600_000)));
    let mut scraper = Scraper::start(&cfg, &[("CV_TEST_CG_KEY", KEY)]).await;

    // The whole script served, and the last reply repeated once (an unchanged tick to suppress).
    wait_for("the script to be served", Duration::from_secs(60), || async {
        (standin.requests().len() >= 8).then_some(())
    })
    .await;
    scraper.wait_metric("cryptoviz_scraper_messages_deduplicated_total", &[("reason", "unchanged_tick")], 4.0).await;

    let recs = consume_until(&[&raw, &stream], Duration::from_secs(30), |r| {
        of(r, &raw, "tick").len() >= 3 && !of(r, &stream, "alert").is_empty()
    })
    .await;
    let btc: Vec<_> = of(&recs, &raw, "tick").into_iter().filter(|r| r.key == "BTC").collect();
    let prices: Vec<&str> = btc.iter().map(|r| r.payload["price"].as_str().unwrap()).collect();
    assert_eq!(prices, ["67187.33", "71500.01"], "one tick per distinct price");
    assert_eq!(btc[0].payload["market_cap"], "1317802988326.25");
    assert_eq!(btc[0].payload["exchange_time"], "2024-03-25T08:45:00Z");
    assert_eq!(btc[0].headers["cv-type"], "tick");
    assert_eq!(btc[0].headers["cv-source"], "coingecko");
    let eth: Vec<_> = of(&recs, &raw, "tick").into_iter().filter(|r| r.key == "ETH").collect();
    assert_eq!(eth.len(), 1, "ETH never changed");
    assert_eq!(eth[0].payload["price"], "3456.789012345678");
    let alerts = of(&recs, &stream, "alert");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(
        (alerts[0].payload["from_price"].as_str(), alerts[0].payload["to_price"].as_str()),
        (Some("67187.33"), Some("71500.01"))
    );
    assert!(of(&recs, &raw, "alert").is_empty(), "alerts go to the stream topic only");
    assert_eq!(of(&recs, &stream, "tick").len(), 3, "ticks go to the stream topic too");
    assert_key_partitions_stable(&recs);

    let text = scraper.get("/metrics").await.1;
    let m = |reason: &'static str| {
        metrics::sum(&text, "cryptoviz_scraper_messages_dropped_total", &[("source", "coingecko"), ("reason", reason)])
    };
    assert_eq!(m("malformed_json"), 1.0);
    assert_eq!(m("invalid_number"), 1.0);
    let e = |reason: &'static str| {
        metrics::sum(&text, "cryptoviz_scraper_request_errors_total", &[("source", "coingecko"), ("reason", reason)])
    };
    assert_eq!(e("rate_limited"), 1.0);
    assert_eq!(e("server_error"), 1.0);

    let reqs = standin.requests();
    assert!(reqs[0].uri.contains("ids=bitcoin,ethereum&vs_currencies=usd&include_market_cap=true"), "{}", reqs[0].uri);
    assert!(reqs.iter().all(|r| r.headers.get("x-cg-demo-api-key").map(String::as_str) == Some(KEY)));
    let after_429 = reqs[2].at - reqs[1].at;
    assert!(after_429 >= Duration::from_millis(1900), "Retry-After: 2 was not honoured: {after_429:?}");
    let log = scraper.log();
    assert!(log.contains("DOGE2"), "the unknown symbol is reported");
    assert!(!log.contains(KEY), "the API key must never be logged");
    scraper.assert_running();
}
