//! The gateway under hostile input: resume ids, filters and request heads a client controls are bounded, and
//! each is a `reset` or a `400`, never a crash nor a response that grows with what was sent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Client, Gateway, Opts, Topic, tick};

/// Send raw request bytes; what the gateway answered (everything it wrote until it closed, or 5 s).
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The event ids in a raw stream body.
fn ids(raw: &str) -> Vec<&str> {
    raw.lines().filter_map(|l| l.strip_prefix("id: ")).collect()
}

/// `Last-Event-ID: 0:5,65535:0` names a partition the topic lacks: the client is sent a `reset` and from then
/// on the same frames as a plain client, so its bytes over 3 s stay within 1.1× of a plain client's (before
/// the bound, every frame carried a 65,536-entry id: 130× the bytes).
#[tokio::test]
async fn the_amplification_request_gets_a_reset_and_no_more_bytes_than_a_plain_client() {
    let topic = Topic::create(3).await;
    let gw = Gateway::start(&topic, Opts::default()).await;
    let mut plain = Client::connect(&gw.addr, "/stream", &[]).await;
    let mut amplified = Client::connect(&gw.addr, "/stream", &[("Last-Event-ID", "0:5,65535:0")]).await;
    assert_eq!((plain.status, amplified.status), (200, 200));

    let window = Duration::from_secs(3);
    let producer = async {
        let symbols = ["BTC", "ETH", "SOL"];
        let start = tokio::time::Instant::now();
        let mut i = 0usize;
        while start.elapsed() < window {
            topic.send((i % 3) as i32, symbols[i % 3], &tick(symbols[i % 3], &format!("{}.25", 1000 + i))).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await; // the market's pace, not a wait on a condition
        }
        i
    };
    let (sent, plain_raw, amplified_raw) = tokio::join!(producer, plain.raw_for(window), amplified.raw_for(window));
    let (p, a) = (plain_raw.len(), amplified_raw.len());
    println!("over 3 s with {sent} events sent: plain client {p} bytes, Last-Event-ID 0:5,65535:0 client {a} bytes");

    let first = amplified_raw.split("\n\n").next().unwrap();
    assert!(first.contains(r#""type":"reset""#) && first.contains(r#""reason":"unknown_partition""#), "{first}");
    assert!(sent > 20 && plain_raw.matches("crypto_update").count() > 20, "events flowed: {plain_raw}");
    for id in ids(&amplified_raw) {
        assert_eq!(id.split(',').count(), 3, "every id names the topic's 3 partitions: {id}");
    }
    let ratio = a as f64 / p as f64;
    println!("ratio {ratio:.3}");
    assert!(ratio <= 1.1, "the amplified client received {ratio:.2}× the plain client's bytes ({a} vs {p})");
}

/// Oversized and malformed ids are a `reset`, oversized and malformed filters a `400` naming the parameter;
/// the gateway keeps serving through all of it.
#[tokio::test]
async fn oversized_and_malformed_ids_symbols_and_types_get_a_400_or_a_reset() {
    let topic = Topic::create(2).await;
    let gw = Gateway::start(&topic, Opts::default()).await;
    let long_id = (0..300).map(|p| format!("{}:{p}", p % 2)).collect::<Vec<_>>().join(",");
    // (path, headers, reason)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let resets: Vec<Case> = vec![
        ("/stream".into(), vec![("Last-Event-ID", long_id.as_str())], "invalid_id"),
        (format!("/stream?lastEventId={long_id}"), vec![], "invalid_id"),
        ("/stream?lastEventId=0:1,2:0".into(), vec![], "unknown_partition"),
        ("/stream?lastEventId=0:1,99999999999999999999:0".into(), vec![], "invalid_id"),
        ("/stream".into(), vec![("Last-Event-ID", "0:-7")], "invalid_id"),
        ("/stream".into(), vec![("Last-Event-ID", "1:0,1:0,1:0,x")], "invalid_id"),
    ];
    for (path, headers, reason) in &resets {
        let mut c = Client::connect(&gw.addr, path, headers).await;
        assert_eq!(c.status, 200, "{path}");
        let reset = c.next().await;
        assert_eq!((reset.kind(), reset.data["data"]["reason"].as_str()), ("reset", Some(*reason)), "{path}");
        let echoed = &reset.data["data"]["last_event_id"];
        assert!(echoed.is_null() || echoed.as_str().is_some_and(|s| s.len() <= 1024), "{echoed}");
        assert_eq!(reset.id.as_deref().map(|i| i.split(',').count()), Some(2), "the reset's id: the 2 partitions");
        assert_eq!(c.next().await.kind(), "welcome");
    }
    // A header that is not text.
    let answer = raw(&gw.addr, b"GET /stream HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 0:\xff\xfe\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains(r#""reason":"invalid_id""#), "{answer}");

    let many = (0..201).map(|i| format!("S{i}")).collect::<Vec<_>>().join(",");
    let long = "A,".repeat(3000);
    let refused = [
        (format!("/stream?symbols={many}"), "symbols: more than 200 items"),
        (format!("/stream?symbols={long}"), "symbols: longer than 4096 bytes"),
        ("/stream?symbols=BTC,%3Cscript%3E".into(), "symbols: \"<script>\" is not a ticker"),
        ("/stream?symbols=ABCDEFGHIJKLMNOPQRSTUVWXYZ".into(), "symbols: \"ABCDEFGHIJKLMNOP\" is not a ticker"),
        (format!("/stream?types={}", "tick,".repeat(40)), "types: longer than 64 bytes"),
        ("/stream?types=tick,bogus".into(), "types: \"bogus\" is not one of tick, trade, alert"),
    ];
    for (path, message) in &refused {
        let mut c = Client::connect(&gw.addr, path, &[]).await;
        assert_eq!(c.status, 400, "{path}");
        let body = c.body().await;
        assert!(body.starts_with(message), "{path}: {body}");
    }
    assert_eq!(gw.metric("cryptoviz_gateway_rejected_total", &[("reason", "bad_request")]).await, refused.len() as f64);

    // Still serving.
    let mut c = Client::connect(&gw.addr, "/stream?symbols=btc&types=tick", &[]).await;
    assert_eq!(c.next().await.kind(), "welcome");
    topic.send(1, "BTC", &tick("BTC", "7.5")).await;
    let ev = c.next().await;
    assert_eq!((ev.kind(), ev.id.as_deref().map(|i| i.split(',').count())), ("crypto_update", Some(2)));
}
