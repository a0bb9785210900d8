//! The history API (`/api/v1`) of a real `cryptoviz-worker gateway` over the TimescaleDB test server and
//! PostgreSQL 15 (plain mode): each test creates a pipeline's schema with the runtime's storage code,
//! inserts trades and ticks whose candles are worked out by hand below, and reads them back over HTTP.

mod setup;

use chrono::{DateTime, Duration as Span, Utc};
use cryptoviz_runtime::storage::Mode;
use serde_json::{Value, json};
use setup::{Db, Gateway, q};

/// What the endpoint answers at `path`: (status, JSON).
async fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let (status, body) = gw.get(path).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}")))
}

fn candle(t: DateTime<Utc>, o: &str, h: &str, l: &str, c: &str, v: &str, n: i64) -> Value {
    json!({"time": setup::rfc3339(t), "open": o, "high": h, "low": l, "close": c, "volume": v, "trades": n})
}

async fn candles_equal_the_hand_computed_ones(mode: Mode) {
    let db = Db::with_market(mode).await;
    let gw = Gateway::start(&db, None).await;
    let t0 = db.t0;
    let at = |s: i64| t0 + Span::seconds(s);
    let range = |to: DateTime<Utc>| format!("from={}&to={}", q(t0), q(to));

    // 1m of one source: each stored 1-minute candle as it is.
    let (s, v) = get(&gw, &format!("/api/v1/candles?symbol=btc&interval=1m&source=kraken&{}", range(at(600)))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["symbol"], &v["interval"], &v["source"], &v["next"]),
        (&json!("BTC"), &json!("1m"), &json!("kraken"), &Value::Null)
    );
    assert_eq!(
        v["candles"],
        json!([
            candle(at(0), "100", "105", "100", "105", "3", 2),
            candle(at(60), "98", "98", "98", "98", "0.5", 1),
            candle(at(240), "101", "101", "101", "101", "1.5", 1),
            candle(at(300), "110", "110", "110", "110", "1", 1),
        ])
    );
    // 5m merged: 00:00 covers kraken 00:00, 00:01, 00:04 and binance 00:02.
    let (_, v) = get(&gw, &format!("/api/v1/candles?symbol=BTC&interval=5m&{}", range(at(7200)))).await;
    assert_eq!(v["source"], Value::Null);
    assert_eq!(
        v["candles"],
        json!([
            candle(at(0), "100", "107", "98", "101", "6", 5),
            candle(at(300), "110", "110", "110", "110", "1", 1),
            candle(at(4200), "120", "120", "120", "120", "3", 1),
            // The trade at 01:59 falls in the 5-minute bucket that starts at 01:55.
            candle(at(6900), "115", "115", "115", "115", "2", 1),
        ])
    );
    // 1h merged: both sources traded in 00:00 and 01:00, so open and close are the sources' means.
    let (_, v) = get(&gw, &format!("/api/v1/candles?symbol=BTC&interval=1h&{}", range(at(2 * 86400)))).await;
    assert_eq!(
        v["candles"],
        json!([
            candle(at(0), "103.5", "110", "98", "108.5", "7", 6),
            candle(at(3600), "117.5", "120", "115", "117.5", "5", 2),
            candle(at(5 * 3600), "90", "90", "90", "90", "1", 1),
            candle(at(86400), "130", "130", "130", "130", "1", 1),
        ])
    );
    // 4h and 1d from candles_1h.
    let (_, v) = get(&gw, &format!("/api/v1/candles?symbol=BTC&interval=4h&{}", range(at(2 * 86400)))).await;
    assert_eq!(
        v["candles"],
        json!([
            candle(at(0), "103.5", "120", "98", "117.5", "12", 8),
            candle(at(4 * 3600), "90", "90", "90", "90", "1", 1),
            candle(at(86400), "130", "130", "130", "130", "1", 1),
        ])
    );
    let (_, v) = get(&gw, &format!("/api/v1/candles?symbol=BTC&interval=1d&{}", range(at(2 * 86400)))).await;
    assert_eq!(
        v["candles"],
        json!([
            // The 05:00 trade at 90 is the day's low as well as its close.
            candle(at(0), "103.5", "120", "90", "90", "13", 9),
            candle(at(86400), "130", "130", "130", "130", "1", 1)
        ])
    );
    let (_, v) = get(&gw, &format!("/api/v1/candles?symbol=BTC&interval=1d&source=kraken&{}", range(at(86400)))).await;
    assert_eq!(v["candles"], json!([candle(at(0), "100", "120", "90", "90", "10", 7)]));
    // `from` inside a bucket starts at that bucket; `to` inside one ends after it.
    let (_, v) = get(
        &gw,
        &format!("/api/v1/candles?symbol=BTC&interval=1h&source=binance&from={}&to={}", q(at(1800)), q(at(3700))),
    )
    .await;
    assert_eq!(
        v["candles"],
        json!([
            candle(at(0), "107", "107", "107", "107", "1", 1),
            candle(at(3600), "115", "115", "115", "115", "2", 1)
        ])
    );
    db.drop().await;
}

#[tokio::test]
async fn candles_equal_the_hand_computed_ones_on_timescaledb() {
    candles_equal_the_hand_computed_ones(Mode::Timescale).await;
}

#[tokio::test]
async fn candles_equal_the_hand_computed_ones_on_plain_postgresql() {
    candles_equal_the_hand_computed_ones(Mode::Plain).await;
}

async fn trades_ticks_and_symbols_are_served_as_stored(mode: Mode) {
    let db = Db::with_market(mode).await;
    let gw = Gateway::start(&db, None).await;
    let t0 = db.t0;
    let at = |s: i64| setup::rfc3339(t0 + Span::seconds(s));
    let (s, v) = get(&gw, "/api/v1/symbols").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"symbols": [
            {"symbol": "BTC", "first": at(0), "last": at(86400 + 1800), "sources": ["binance", "coingecko", "kraken", "synthetic"]},
            {"symbol": "ETH", "first": at(20), "last": at(20), "sources": ["binance", "kraken"]},
        ]})
    );
    let (s, v) = get(&gw, &format!("/api/v1/trades?symbol=ETH&from={}&to={}", q(t0), q(t0 + Span::hours(1)))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"symbol": "ETH", "source": null, "next": null, "trades": [
            {"time": at(20), "source": "binance", "trade_id": "e3", "price": "12", "quantity": "1", "side": null},
            {"time": at(20), "source": "kraken", "trade_id": "e1", "price": "10.25", "quantity": "5", "side": "buy"},
            {"time": at(20), "source": "kraken", "trade_id": "e2", "price": "11", "quantity": "0.001", "side": "sell"},
        ]})
    );
    let (_, v) = get(&gw, &format!("/api/v1/ticks?symbol=BTC&from={}&to={}", q(t0), q(t0 + Span::hours(1)))).await;
    assert_eq!(
        v["ticks"],
        json!([
            {"time": at(0), "source": "coingecko", "price": "100.7", "bid": null, "ask": null, "volume_24h": "123456789.5",
             "market_cap": "2000000000000", "change_24h_pct": "-1.25"},
            {"time": at(0), "source": "synthetic", "price": "100.5", "bid": "100.4", "ask": "100.6", "volume_24h": null,
             "market_cap": null, "change_24h_pct": null},
            {"time": at(10), "source": "synthetic", "price": "100.6", "bid": null, "ask": null, "volume_24h": null,
             "market_cap": null, "change_24h_pct": null},
        ])
    );
    let (_, v) =
        get(&gw, &format!("/api/v1/ticks?symbol=BTC&source=coingecko&from={}&to={}", q(t0), q(t0 + Span::hours(1))))
            .await;
    assert_eq!(v["ticks"].as_array().unwrap().len(), 1);
    db.drop().await;
}

#[tokio::test]
async fn trades_ticks_and_symbols_are_served_as_stored_on_timescaledb() {
    trades_ticks_and_symbols_are_served_as_stored(Mode::Timescale).await;
}

#[tokio::test]
async fn trades_ticks_and_symbols_are_served_as_stored_on_plain_postgresql() {
    trades_ticks_and_symbols_are_served_as_stored(Mode::Plain).await;
}

/// Every page of `path` (with `&limit=N`), following `next`; the rows of `key` concatenated.
async fn walk(gw: &Gateway, path: &str, key: &str, limit: u32) -> Vec<Value> {
    let (mut rows, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&limit={limit}&cursor={c}"),
            None => format!("{path}&limit={limit}"),
        };
        let (s, v) = get(gw, &url).await;
        assert_eq!(s, 200, "{url}: {v}");
        let page = v[key].as_array().unwrap();
        assert!(page.len() <= limit as usize);
        rows.extend(page.iter().cloned());
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        match v["next"].as_str() {
            Some(c) => {
                assert_eq!(page.len(), limit as usize, "only a full page has a next one");
                cursor = Some(c.to_string());
            }
            None => return rows,
        }
    }
}

async fn pages_cover_the_range_without_gap_or_overlap(mode: Mode) {
    let db = Db::with_market(mode).await;
    let gw = Gateway::start(&db, None).await;
    let t0 = db.t0;
    let range = format!("from={}&to={}", q(t0), q(t0 + Span::days(2)));
    for (path, key) in [
        (format!("/api/v1/candles?symbol=BTC&interval=1m&{range}"), "candles"),
        (format!("/api/v1/candles?symbol=BTC&interval=1h&{range}"), "candles"),
        (
            format!("/api/v1/trades?symbol=BTC&{}", &range.replace(&q(t0 + Span::days(2)), &q(t0 + Span::days(1)))),
            "trades",
        ),
        (
            format!("/api/v1/trades?symbol=ETH&{}", &range.replace(&q(t0 + Span::days(2)), &q(t0 + Span::days(1)))),
            "trades",
        ),
        (
            format!("/api/v1/ticks?symbol=BTC&{}", &range.replace(&q(t0 + Span::days(2)), &q(t0 + Span::days(1)))),
            "ticks",
        ),
    ] {
        let (_, whole) = get(&gw, &format!("{path}&limit=2000")).await;
        let whole = whole[key].as_array().unwrap().clone();
        assert!(whole.len() >= 3, "{path}: {whole:?}");
        for limit in [1, 2, 3] {
            assert_eq!(walk(&gw, &path, key, limit).await, whole, "{path} in pages of {limit}");
        }
    }
    db.drop().await;
}

#[tokio::test]
async fn pages_cover_the_range_without_gap_or_overlap_on_timescaledb() {
    pages_cover_the_range_without_gap_or_overlap(Mode::Timescale).await;
}

#[tokio::test]
async fn pages_cover_the_range_without_gap_or_overlap_on_plain_postgresql() {
    pages_cover_the_range_without_gap_or_overlap(Mode::Plain).await;
}

async fn every_bad_parameter_gets_a_400_naming_it(mode: Mode) {
    let db = Db::with_market(mode).await;
    let gw = Gateway::start(&db, None).await;
    let (from, to) = (q(db.t0), q(db.t0 + Span::hours(1)));
    let cases = [
        ("/api/v1/candles?symbol=BTC&interval=2m".to_string(), "interval"),
        ("/api/v1/candles?symbol=BTC".to_string(), "interval"),
        (format!("/api/v1/candles?symbol=BTC&interval=1m&from={to}&to={from}"), "from"),
        (format!("/api/v1/trades?symbol=BTC&from={to}&to={from}"), "from"),
        ("/api/v1/candles?symbol=DOGE&interval=1m".to_string(), "symbol"),
        ("/api/v1/ticks?symbol=DOGE".to_string(), "symbol"),
        ("/api/v1/candles?symbol=BTC&interval=1m&limit=2001".to_string(), "limit"),
        ("/api/v1/trades?symbol=BTC&limit=100000".to_string(), "limit"),
        ("/api/v1/candles?symbol=BTC%27%3B%20DROP%20TABLE%20trades%3B--&interval=1m".to_string(), "symbol"),
        ("/api/v1/trades?symbol=BTC%27%20OR%20%271%27%3D%271".to_string(), "symbol"),
        ("/api/v1/trades?symbol=BTC&source=kraken%27%20OR%201%3D1".to_string(), "source"),
        ("/api/v1/candles?symbol=BTC&interval=1m%3B%20SELECT%20pg_sleep(10)".to_string(), "interval"),
        ("/api/v1/trades?symbol=BTC&from=1%20OR%201%3D1".to_string(), "from"),
        ("/api/v1/trades?symbol=BTC&cursor=%27%3B--".to_string(), "cursor"),
        ("/api/v1/candles?symbol=BTC&interval=1m&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z".to_string(), "to"),
        ("/api/v1/trades?symbol=BTC&sort=time".to_string(), "query"),
    ];
    for (path, parameter) in cases {
        let (s, v) = get(&gw, &path).await;
        assert_eq!((s, v["parameter"].as_str()), (400, Some(parameter)), "{path}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(&format!("{parameter}: ")), "{path}: {v}");
    }
    // Nothing was dropped or changed: the same answer as before.
    let (s, v) = get(&gw, &format!("/api/v1/trades?symbol=ETH&from={from}&to={to}")).await;
    assert_eq!((s, v["trades"].as_array().map(Vec::len)), (200, Some(3)));
    db.drop().await;
}

#[tokio::test]
async fn every_bad_parameter_gets_a_400_naming_it_on_timescaledb() {
    every_bad_parameter_gets_a_400_naming_it(Mode::Timescale).await;
}

#[tokio::test]
async fn every_bad_parameter_gets_a_400_naming_it_on_plain_postgresql() {
    every_bad_parameter_gets_a_400_naming_it(Mode::Plain).await;
}

/// The symbol list of a schema whose `ticks` is a view that sleeps 4 s: the statement timeout (300 ms)
/// answers 503. PostgreSQL cancels the statement itself (SQLSTATE 57014); the TimescaleDB test server
/// cannot interrupt a running statement (its README), so there the deadline answers.
async fn a_slow_query_is_cut_by_the_statement_timeout_and_answers_503(mode: Mode) {
    let db = Db::with_market(mode).await;
    db.make_ticks_slow(4).await;
    let gw = Gateway::start(&db, Some(300)).await;
    let started = std::time::Instant::now();
    let (s, v) = get(&gw, "/api/v1/symbols").await;
    let took = started.elapsed();
    assert_eq!(s, 503, "{v}");
    assert!(took < std::time::Duration::from_millis(3900), "answered after {took:?}, the sleep is 4 s");
    let error = v["error"].as_str().unwrap();
    if mode == Mode::Plain {
        assert!(error.contains("statement timeout of 300ms"), "{error}");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    } else {
        assert!(error.contains("no answer from the database within"), "{error}");
    }
    assert_eq!(gw.metric("cryptoviz_history_requests_total", &[("endpoint", "symbols"), ("outcome", "ok")]).await, 0.0);
    let outcome = if mode == Mode::Plain { "statement_timeout" } else { "deadline" };
    assert_eq!(
        gw.metric("cryptoviz_history_requests_total", &[("endpoint", "symbols"), ("outcome", outcome)]).await,
        1.0
    );
    db.drop().await;
}

#[tokio::test]
async fn a_slow_query_is_cut_by_the_statement_timeout_and_answers_503_on_timescaledb() {
    a_slow_query_is_cut_by_the_statement_timeout_and_answers_503(Mode::Timescale).await;
}

#[tokio::test]
async fn a_slow_query_is_cut_by_the_statement_timeout_and_answers_503_on_plain_postgresql() {
    a_slow_query_is_cut_by_the_statement_timeout_and_answers_503(Mode::Plain).await;
}

/// Concurrent page openings (the newest candles, no `from`/`to`) share one query.
#[tokio::test]
async fn identical_requests_for_the_newest_candles_share_one_query() {
    let db = Db::with_market(Mode::Plain).await;
    db.trade_now().await;
    let gw = Gateway::start(&db, None).await;
    let bodies =
        futures::future::join_all((0..20).map(|_| gw.get("/api/v1/candles?symbol=BTC&interval=1m&limit=5"))).await;
    for (s, b) in &bodies {
        assert_eq!(*s, 200, "{b}");
        assert_eq!(b, &bodies[0].1);
    }
    let v: Value = serde_json::from_str(&bodies[0].1).unwrap();
    assert_eq!(v["candles"].as_array().unwrap().len(), 1, "{v}");
    let name = "cryptoviz_history_requests_total";
    let queried = gw.metric(name, &[("endpoint", "candles"), ("cached", "false")]).await;
    let shared = gw.metric(name, &[("endpoint", "candles"), ("cached", "true")]).await;
    assert_eq!((queried, shared), (1.0, 19.0));
    db.drop().await;
}

/// The OpenAPI document validates, and real responses of every endpoint (and an error) match its schemas.
#[tokio::test]
async fn the_openapi_document_validates_and_describes_the_responses() {
    let db = Db::with_market(Mode::Timescale).await;
    let gw = Gateway::start(&db, None).await;
    let range = format!("from={}&to={}", q(db.t0), q(db.t0 + Span::days(1)));
    let dir = std::env::temp_dir().join(cryptoviz_tests::unique("openapi"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = Vec::new();
    let (s, spec) = gw.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    std::fs::write(dir.join("openapi.json"), &spec).unwrap();
    args.push(dir.join("openapi.json"));
    let mut pairs = Vec::new();
    for (schema, path) in [
        ("Symbols", "/api/v1/symbols".to_string()),
        ("Candles", format!("/api/v1/candles?symbol=BTC&interval=1h&{range}&limit=2")),
        ("Candles", format!("/api/v1/candles?symbol=BTC&interval=1m&source=kraken&{range}")),
        ("Trades", format!("/api/v1/trades?symbol=ETH&{range}&limit=2")),
        ("Ticks", format!("/api/v1/ticks?symbol=BTC&{range}")),
        ("ApiError", "/api/v1/candles?symbol=BTC&interval=7m".to_string()),
    ] {
        let (_, body) = gw.get(&path).await;
        let file = dir.join(format!("{}.json", pairs.len()));
        std::fs::write(&file, &body).unwrap();
        pairs.push((schema, file));
    }
    let mut cmd = std::process::Command::new(cryptoviz_tests::repo_root().join("tests/env/tools/openapi-validate"));
    cmd.arg(&args[0]);
    for (schema, file) in &pairs {
        cmd.arg(schema).arg(file);
    }
    let out = cmd.output().expect("run tests/env/tools/openapi-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" matches ").count(), pairs.len(), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    db.drop().await;
}
