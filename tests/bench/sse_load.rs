//! SSE gateway load generator: N concurrent clients on loopback, ticks produced through Kafka at a set rate.
//!
//! ```text
//! cargo run --release -p cryptoviz-tests --example sse_load -- \
//!     --gateway 127.0.0.1:8080 --gateway-pid <pid> --bootstrap 127.0.0.1:9092 --topic <stream topic> \
//!     --clients 1000 --rate 200 --seconds 20
//! ```
//!
//! Reports deliveries/s, end-to-end latency (the tick's `timestamp`, set at produce time, to receipt by a
//! sample of clients), and the gateway's CPU and RSS (from /proc) idle and under load. Run it with
//! `tests/bench/sse-load`, which builds, starts the gateway and raises the file-descriptor limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    gateway: String,
    pid: u32,
    bootstrap: String,
    topic: String,
    clients: usize,
    rate: u64,
    seconds: u64,
    /// Reader threads (each an epoll loop over its share of the clients).
    threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        gateway: "127.0.0.1:8080".into(),
        pid: 0,
        bootstrap: "127.0.0.1:9092".into(),
        topic: String::new(),
        clients: 1000,
        rate: 200,
        seconds: 20,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--gateway" => a.gateway = v,
            "--gateway-pid" => a.pid = v.parse().unwrap(),
            "--bootstrap" => a.bootstrap = v,
            "--topic" => a.topic = v,
            "--clients" => a.clients = v.parse().unwrap(),
            "--rate" => a.rate = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--threads" => a.threads = v.parse().unwrap(),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(!a.topic.is_empty() && a.pid != 0, "--topic and --gateway-pid are required");
    a
}

/// (utime + stime in clock ticks, RSS in KiB) of a process.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("gateway process");
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let cpu = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (cpu, rss)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One reader thread's tallies: deliveries and sampled latencies, touched by that thread only until the end.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    latencies: std::sync::Mutex<Vec<i64>>,
}

/// One client's connection and its partial last line.
struct Client {
    stream: mio::net::TcpStream,
    buf: Vec<u8>,
    kept: usize,
    sample: bool,
}

/// Connect `n` clients (blocking connects, one after the other), send each its request and hand it to one of
/// the reader threads. A client is a socket in an epoll set, not a task: the load generator's own cost per
/// delivery is the kernel's `read` and a line scan, so it takes as little of the shared cores as it can.
fn spawn_clients(addr: &str, n: usize, threads: usize) -> Vec<Arc<Tally>> {
    let mut sets: Vec<Vec<Client>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..n {
        let mut s = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        std::io::Write::write_all(
            &mut s,
            b"GET /stream?types=tick HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n",
        )
        .expect("request");
        s.set_nonblocking(true).expect("non-blocking");
        // Latency from 1 client in 50 keeps the load tool's own parsing small.
        sets[i % threads].push(Client {
            stream: mio::net::TcpStream::from_std(s),
            buf: vec![0u8; 4096],
            kept: 0,
            sample: i % 50 == 0,
        });
    }
    sets.into_iter()
        .map(|mut clients| {
            let tally = Arc::new(Tally::default());
            let t = tally.clone();
            let poll = mio::Poll::new().expect("epoll");
            for (i, c) in clients.iter_mut().enumerate() {
                poll.registry().register(&mut c.stream, mio::Token(i), mio::Interest::READABLE).expect("register");
            }
            std::thread::spawn(move || read_loop(poll, clients, &t));
            tally
        })
        .collect()
}

/// Read every ready socket until it would block; count events by their `id:` lines.
fn read_loop(mut poll: mio::Poll, mut clients: Vec<Client>, tally: &Tally) {
    let mut events = mio::Events::with_capacity(1024);
    let mut latencies = Vec::new();
    loop {
        if poll.poll(&mut events, Some(Duration::from_millis(100))).is_err() {
            continue;
        }
        let mut delivered = 0;
        for ev in &events {
            let c = &mut clients[ev.token().0];
            loop {
                if c.kept == c.buf.len() {
                    c.buf.resize(c.buf.len() * 2, 0);
                }
                let n = match std::io::Read::read(&mut c.stream, &mut c.buf[c.kept..]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let recv_ms = if c.sample { now_ms() } else { 0 };
                let data = &c.buf[..c.kept + n];
                let mut line_start = 0;
                for nl in memchr::memchr_iter(b'\n', data) {
                    let line = &data[line_start..nl];
                    if line.starts_with(b"id: ") {
                        delivered += 1;
                    } else if c.sample
                        && line.starts_with(b"data: {\"type\":\"crypto_update\"")
                        && let Some(t) = find_timestamp(line)
                    {
                        latencies.push(recv_ms - t);
                    }
                    line_start = nl + 1;
                }
                c.kept = data.len() - line_start;
                c.buf.copy_within(line_start..line_start + c.kept, 0);
                if n < c.buf.len() - c.kept {
                    break; // a short read: the socket is drained (edge-triggered, no need to read WouldBlock)
                }
            }
        }
        if delivered > 0 {
            tally.deliveries.fetch_add(delivered, Ordering::Relaxed);
        }
        if !latencies.is_empty() {
            tally.latencies.lock().unwrap().append(&mut latencies);
        }
    }
}

fn find_timestamp(line: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(line).ok()?;
    let at = s.find("\"timestamp\":\"")? + 13;
    let end = s[at..].find('"')? + at;
    chrono::DateTime::parse_from_rfc3339(&s[at..end]).ok().map(|t| t.timestamp_millis())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// CPU time (user + system, clock ticks) of this process so far.
fn own_cpu() -> u64 {
    proc_usage(std::process::id()).0
}

// The runtime only produces and polls `/stats`: the clients have their own threads.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let tck = 100.0; // USER_HZ
    let (_, rss0) = proc_usage(a.pid);
    let tallies = spawn_clients(&a.gateway, a.clients, a.threads);
    let deliveries = || tallies.iter().map(|t| t.deliveries.load(Ordering::Relaxed)).sum::<u64>();
    let take_latencies =
        || tallies.iter().flat_map(|t| std::mem::take(&mut *t.latencies.lock().unwrap())).collect::<Vec<_>>();
    // Wait for every client to be connected (the gateway's own count).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = http_get(&a.gateway, "/stats").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["clients"].as_u64() >= Some(a.clients as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "clients did not all connect: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, rss_idle) = proc_usage(a.pid);
    println!(
        "connected {} clients: gateway RSS {} KiB -> {} KiB ({:.1} KiB per idle connection)",
        a.clients,
        rss0,
        rss_idle,
        (rss_idle.saturating_sub(rss0)) as f64 / a.clients as f64
    );

    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &a.bootstrap).set("linger.ms", "1").create().expect("producer");
    let symbols = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "BNB", "DOT", "LTC", "AVAX"];
    let (cpu0, _) = proc_usage(a.pid);
    let own0 = own_cpu();
    let d0 = deliveries();
    take_latencies();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(a.seconds) {
        let s = symbols[sent as usize % symbols.len()];
        let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let payload = format!(
            r#"{{"type":"tick","v":1,"source":"synthetic","symbol":"{s}","quote":"USD","price":"{}.5","exchange_time":"{t}","received_at":"{t}"}}"#,
            60_000 + sent % 1000
        );
        let _ = producer.send_result(FutureRecord::to(&a.topic).key(s).payload(&payload));
        sent += 1;
        next += interval;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
    }
    // Until the last event has reached every client (or 5 s have passed, which shows as missing
    // deliveries): the rate is over the time it took to deliver what was produced.
    let expected = sent * a.clients as u64;
    let tail = Instant::now();
    while deliveries() - d0 < expected && tail.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (cpu1, rss_load) = proc_usage(a.pid);
    let own1 = own_cpu();
    let d = deliveries() - d0;
    let mut l = take_latencies();
    l.sort_unstable();
    println!("produced {sent} events at {} /s for {:.1} s", a.rate, secs);
    println!("deliveries: {d} of {expected} ({:.0} /s; offered {} /s)", d as f64 / secs, a.rate as usize * a.clients);
    println!(
        "latency (event time -> client receipt, {} samples): p50 {} ms, p99 {} ms, max {} ms",
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(-1)
    );
    println!(
        "gateway CPU {:.0} % of one core; RSS under load {} KiB; load generator CPU {:.0} % of one core",
        (cpu1 - cpu0) as f64 / tck / secs * 100.0,
        rss_load,
        (own1 - own0) as f64 / tck / secs * 100.0
    );
    println!("gateway stats: {}", http_get(&a.gateway, "/stats").await);
    std::process::exit(0);
}

async fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else { return String::new() };
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes()).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}
