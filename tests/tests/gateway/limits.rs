//! Connection limits (`spec.gateway.limits`) against the real gateway binary: the per-address cap, the
//! eviction of a client that reads nothing, the header timeout and the request-head cap, on `/stream` and on
//! the other paths.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cryptoviz_tests::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{Client, Gateway, Opts, Topic, tick};

/// A connection to the gateway from the loopback address `from` (any of 127.0.0.0/8 is local on Linux).
async fn connect_from(gw: &Gateway, from: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(gw.addr.parse::<SocketAddr>().unwrap()).await.expect("connect")
}

/// Connection N+1 from one address gets 503 with `Retry-After`; another address still connects, and so does a
/// client a trusted proxy forwards for, while `X-Forwarded-For` from an untrusted peer changes nothing.
#[tokio::test]
async fn the_per_address_cap_refuses_one_address_while_others_still_connect() {
    let topic = Topic::create(1).await;
    let limits = Some("{maxClientsPerAddress: 2, trustedProxies: ['127.0.0.3/32']}");
    let gw = Gateway::start(&topic, Opts { limits, ..Opts::default() }).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::on(connect_from(&gw, "127.0.0.1").await, "/stream", &[]).await;
        assert_eq!(c.status, 200);
        assert_eq!(c.next().await.kind(), "welcome");
        held.push(c);
    }
    let refused = Client::on(connect_from(&gw, "127.0.0.1").await, "/stream", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("5"));
    // A forged header from an untrusted peer is ignored: still 127.0.0.1's third.
    let forged = [("X-Forwarded-For", "198.51.100.9")];
    assert_eq!(Client::on(connect_from(&gw, "127.0.0.1").await, "/stream", &forged).await.status, 503);

    let mut other = Client::on(connect_from(&gw, "127.0.0.2").await, "/stream", &[]).await;
    assert_eq!(other.status, 200, "another address connects");
    assert_eq!(other.next().await.kind(), "welcome");

    // Through the trusted proxy 127.0.0.3: each forwarded client has its own cap.
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    for _ in 0..2 {
        let c = Client::on(connect_from(&gw, "127.0.0.3").await, "/stream", &xff("203.0.113.1")).await;
        assert_eq!(c.status, 200);
        held.push(c);
    }
    let c = Client::on(connect_from(&gw, "127.0.0.3").await, "/stream", &xff("203.0.113.1")).await;
    assert_eq!(c.status, 503, "the forwarded client's third");
    let c = Client::on(connect_from(&gw, "127.0.0.3").await, "/stream", &xff("203.0.113.2")).await;
    assert_eq!(c.status, 200, "another forwarded client");
    held.push(c);
    assert_eq!(gw.metric("cryptoviz_gateway_rejected_total", &[("reason", "per_address")]).await, 3.0);
    assert_eq!(gw.stats().await["clients"], 6);
}

/// A client that never reads is disconnected after `idleTimeout` with no events flowing at all: it is
/// behind by nothing, so only the time its socket stayed full counts. (A welcome with 400 prices fills the
/// buffers between it and the gateway at once.)
#[tokio::test]
async fn a_client_that_never_reads_is_evicted_within_the_idle_timeout_with_no_events_flowing() {
    let topic = Topic::create(1).await;
    for i in 0..400 {
        topic.send(0, &format!("X{i}"), &tick(&format!("X{i}"), "1.5")).await;
    }
    let gw = Gateway::start(&topic, Opts { limits: Some("{idleTimeoutMs: 2000}"), ..Opts::default() }).await;
    gw.wait_received(400).await;

    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let connected = Instant::now();
    let stalled = sock.connect(gw.addr.parse().unwrap()).await.unwrap();
    let stalled = Client::on(stalled, "/stream", &[]).await;
    assert_eq!(stalled.status, 200);
    let dropped = || async { gw.metric("cryptoviz_gateway_clients_dropped_total", &[("reason", "stalled")]).await };
    wait_for("the never-reading client evicted", Duration::from_secs(15), || async {
        (dropped().await == 1.0).then_some(())
    })
    .await;
    let after = connected.elapsed();
    println!("a never-reading client was evicted {after:?} after connecting (idleTimeout 2s)");
    assert!(after >= Duration::from_secs(2), "not before the idle timeout: {after:?}");
    assert_eq!(gw.stats().await["events_received"], 400, "no events flowed");
    assert_eq!(gw.metric("cryptoviz_gateway_clients_dropped_total", &[("reason", "slow")]).await, 0.0);
    wait_for("its slot freed", Duration::from_secs(10), || async { (gw.stats().await["clients"] == 0).then_some(()) })
        .await;

    // A reading client on the same gateway stays.
    let mut reader = Client::connect(&gw.addr, "/stream", &[]).await;
    assert_eq!(reader.next().await.kind(), "welcome");
    let beats = reader.raw_for(Duration::from_secs(4)).await;
    assert!(beats.contains("heartbeat"), "{beats}");
    assert_eq!(dropped().await, 1.0, "a client that reads is never stalled");
}

/// Sends `head` one byte a second; how long until the gateway closed the connection (`None`: still open
/// after 15 s).
async fn slow_head(gw: &Gateway, head: &'static [u8]) -> Option<Duration> {
    let (mut rd, mut wr) = TcpStream::connect(&gw.addr).await.unwrap().into_split();
    let start = Instant::now();
    let writer = async move {
        for b in head.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await; // the attacker's pace
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    tokio::select! {
        d = closed => Some(d),
        _ = writer => None,
        _ = tokio::time::sleep(Duration::from_secs(15)) => None,
    }
}

/// A request head sent one byte a second is cut off by `headerTimeout`, on `/stream` (whose head the
/// gateway reads itself) and on `/stats`; a head over `maxRequestHeadBytes` gets 431 on both.
#[tokio::test]
async fn a_head_sent_one_byte_a_second_is_closed_by_the_header_timeout_on_every_path() {
    let topic = Topic::create(1).await;
    let limits = Some("{headerTimeoutMs: 2000, maxRequestHeadBytes: 4096}");
    let gw = Gateway::start(&topic, Opts { limits, ..Opts::default() }).await;
    for head in [
        &b"GET /stream HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        b"GET /stats HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let path = String::from_utf8_lossy(&head[..12]).into_owned();
        let closed = slow_head(&gw, head).await;
        println!("{path}: a byte-a-second head closed after {closed:?} (headerTimeout 2s)");
        let closed = closed.unwrap_or_else(|| panic!("{path}: still open after 15 s"));
        assert!(closed >= Duration::from_millis(1900) && closed < Duration::from_secs(6), "{path}: {closed:?}");
    }
    let big = "a".repeat(8192);
    for path in ["/stream", "/stats"] {
        let c = Client::connect(&gw.addr, path, &[("X-Big", &big)]).await;
        assert_eq!(c.status, 431, "{path}");
    }
    // Still serving.
    let mut c = Client::connect(&gw.addr, "/stream", &[]).await;
    assert_eq!(c.next().await.kind(), "welcome");
}
