use std::time::Duration;

use cryptoviz_tests::metrics;
use cryptoviz_tests::standins::fixture;
use cryptoviz_tests::standins::http::{HttpStandIn, Reply};
use serde_json::json;

use crate::harness::{Scraper, config, consume_until, of, topics};

const KEY: &str = "cmc-secret-0b1c2d";

/// CoinMarketCap: an HTTP 429 and a 200 carrying `status.error_code` are counted (not published); then
/// the quotes land with exact prices, and the key travels in `X-CMC_PRO_API_KEY`.
#[tokio::test]
async fn error_status_is_counted_and_quotes_are_exact() {
    let standin = HttpStandIn::start(vec![
        Reply { status: 429, ..Reply::json(fixture("coinmarketcap/rate_limited.json")) }.header("Retry-After", "1"),
        Reply::json(fixture("coinmarketcap/rate_limited.json")),
        Reply::json(fixture("coinmarketcap/quotes.json")),
    ])
    .await;
    let (raw, stream) = topics("scraper.cmc").await;
    let sources = json!([{"kind": "coinmarketcap", "baseUrl": standin.url(), "pollIntervalMs": 1000, "apiKeyEnv": "CV_TEST_CMC_KEY"}]);
    let scraper =
        Scraper::start(&config(&["BTC", "ETH"], sources, &raw, &stream, false, None), &[("CV_TEST_CMC_KEY", KEY)])
            .await;

    let recs = consume_until(&[&raw], Duration::from_secs(60), |r| of(r, &raw, "tick").len() >= 2).await;
    let btc = recs.iter().find(|r| r.key == "BTC").unwrap();
    assert_eq!(btc.payload["price"], "67187.33123456789");
    assert_eq!(btc.payload["change_24h_pct"], "3.637");
    assert_eq!(btc.payload["exchange_time"], "2024-03-25T08:45:00Z");
    assert_eq!(btc.headers["cv-source"], "coinmarketcap");

    let text = scraper.get("/metrics").await.1;
    let m = |name: &'static str, reason: &'static str| {
        metrics::sum(&text, name, &[("source", "coinmarketcap"), ("reason", reason)])
    };
    assert_eq!(m("cryptoviz_scraper_messages_dropped_total", "api_error"), 1.0);
    assert_eq!(m("cryptoviz_scraper_request_errors_total", "rate_limited"), 1.0);
    let reqs = standin.requests();
    assert!(reqs[0].uri.ends_with("/v1/cryptocurrency/quotes/latest?symbol=BTC,ETH&convert=USD"), "{}", reqs[0].uri);
    assert_eq!(reqs[0].headers.get("x-cmc_pro_api_key").map(String::as_str), Some(KEY));
    assert!(!scraper.log().contains(KEY));
}
