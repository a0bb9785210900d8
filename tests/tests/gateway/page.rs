//! The live page in a real browser: headless Chromium loads `/`, and prices arriving over SSE are rendered.

use std::time::Duration;

use cryptoviz_tests::browser::Browser;
use cryptoviz_tests::{repo_root, wait_for};

use crate::harness::{Gateway, Opts, Topic, tick};

/// The page opens an EventSource and fills the table: each symbol's price cell shows the latest price,
/// with a sparkline; a screenshot is kept in tests/artifacts/gateway.png.
#[tokio::test]
async fn live_page_shows_prices_arriving_in_headless_chromium() {
    let topic = Topic::create(1).await;
    let gw = Gateway::start(&topic, Opts::default()).await;
    let (status, html) = gw.get("/").await;
    assert_eq!(status, 200);
    // The SVG namespace is a name, not a fetch.
    let html = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page fetches nothing external");

    // Keep prices flowing while the browser is open: it must render what arrives, not only the welcome.
    let feeder = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                topic.send(0, "BTC", &tick("BTC", &format!("{}.25", 67_000 + i))).await;
                topic.send(0, "ETH", &tick("ETH", &format!("{}.5", 3_000 + i))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    gw.wait_received(4).await;

    let url = format!("http://{}/", gw.addr);
    let artifacts = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("gateway.png");
    let _ = std::fs::remove_file(&shot);
    let dom_browser = Browser::open(&["--dump-dom"], &url);
    let shot_browser = Browser::open(&[&format!("--screenshot={}", shot.display())], &url);
    // Both pages connected and have been sent live updates (beyond the welcome)...
    let before = gw.stats().await["deliveries"].as_u64().unwrap();
    wait_for("both pages streaming", Duration::from_secs(60), || async {
        let s = gw.stats().await;
        (s["clients"] == 2 && s["deliveries"].as_u64().unwrap() >= before + 8).then_some(())
    })
    .await;
    feeder.abort();
    // ...then the gateway shuts down gracefully: the streams end, the pages go idle, Chromium reports.
    cryptoviz_tests::process::signal(gw.pid(), cryptoviz_tests::process::SIGTERM).unwrap();
    let dom = dom_browser.finish().await;
    shot_browser.finish().await;

    // The text of the `<td class="price…" data-symbol="SYM">` cell (the row has the attribute too).
    let cell = |sym: &str| {
        let marker = format!(r#"data-symbol="{sym}">"#);
        dom.match_indices(&marker).find_map(|(i, _)| {
            let tag = &dom[dom[..i].rfind('<')?..i];
            if !tag.starts_with("<td class=\"price") {
                return None;
            }
            let at = i + marker.len();
            Some(dom[at..at + dom[at..].find('<')?].to_string())
        })
    };
    let btc = cell("BTC").unwrap_or_else(|| panic!("no BTC price cell in the DOM:\n{dom}"));
    assert!(btc.starts_with("670") && btc.ends_with(".25"), "BTC price rendered: {btc:?}");
    let eth = cell("ETH").expect("an ETH price cell");
    assert!(eth.starts_with("30") && eth.ends_with(".5"), "ETH price rendered: {eth:?}");
    assert!(dom.contains("<polyline"), "sparklines drawn");
    // After the shutdown event the page shows it is reconnecting.
    assert!(dom.contains(r#"id="state" class="connecting""#), "connection state shown");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot written");
}
