//! Scraper throughput and latency into a real Kafka: the synthetic market and a Binance-format replay at
//! full speed through the whole path (parse → dedup → alerts → serialise → produce to raw and stream),
//! beside a minimal rdkafka producer sending the same bytes (the limit): the Binance replay's own payloads.
//!
//! `CRYPTOVIZ_KAFKA_BOOTSTRAP=host:port cargo run --release -p cryptoviz-tests --example scraper_bench [messages]`
//!
//! Prints messages/s (normalised messages in; each is two records, raw and stream) and the p99 of
//! publish → broker ack. The full-speed runs measure queueing at saturation; a paced run drives the synthetic
//! market at `PACED_RATE` messages/s (default 50000) for 10 s: the latency of the path at a sustainable rate.
//! `SCRAPER_BENCH_PATHS=synthetic,paced,binance,binance-paced,discard,bare` picks paths (default all); `discard` is the
//! Binance replay into a publisher that drops every record: the scraper's own cost per message.
//! Publish happens in the same call that received the payload, so this is the receive → acked latency the
//! issue asks for, minus microseconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_workers::bus::kafka::{AckObserver, KafkaPublisher, ProducerMetrics, ProducerOptions, client_config};
use cryptoviz_workers::bus::{OutRecord, Publisher};
use cryptoviz_workers::scraper::{Metrics, Outlet};
use cryptoviz_workers::sources::Source;
use cryptoviz_workers::sources::binance::Binance;
use cryptoviz_workers::sources::synthetic::Market;
use cryptoviz_workers::sources::transport::deliver;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

struct Run {
    name: String,
    messages: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn print(&self) {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let pct =
            |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        println!(
            "{:<28} {:>9} msgs  {:>9.0} msgs/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} acks)",
            self.name,
            self.messages,
            self.messages as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            l.len()
        );
    }
}

fn config(bootstrap: &str, raw: &str, stream: &str) -> WorkerConfig {
    let yaml = format!(
        "pipeline: {{namespace: bench, name: scraper}}\nsymbols: [BTC, ETH, SOL, BNB]\nquote: USD\n\
         sources: [{{kind: binance}}]\n\
         kafka: {{bootstrapServers: '{bootstrap}', rawTopic: {raw}, streamTopic: {stream}, dlqTopic: {raw}.dlq}}\n\
         scraper: {{suppressUnchangedTicks: false}}\nconsumer: {{groupId: g, batchSize: 1, flushIntervalMs: 1}}\n\
         gateway: {{heartbeatIntervalMs: 1, maxClients: 1, replayBuffer: 1}}\n\
         alerts: {{enabled: true, thresholdPercent: 5.0, windowMs: 60000}}\n"
    );
    WorkerConfig::from_yaml(&yaml).expect("bench config")
}

/// A publisher whose acks are collected, and a way to wait until `n` records are acknowledged.
fn publisher(cfg: &WorkerConfig) -> (Arc<KafkaPublisher>, Arc<Mutex<Vec<Duration>>>) {
    let lat = Arc::new(Mutex::new(Vec::with_capacity(4_000_000)));
    let l = lat.clone();
    let observer: AckObserver = Arc::new(move |d, ok| {
        if ok {
            l.lock().unwrap().push(d);
        }
    });
    let metrics = ProducerMetrics::register(Registry::default().sub_registry_with_prefix("bench"));
    let options =
        ProducerOptions { max_buffered_messages: 1_000_000, max_buffered_kbytes: 1024 * 1024, ..Default::default() };
    (Arc::new(KafkaPublisher::new(&cfg.kafka, &options, metrics, Some(observer)).expect("producer")), lat)
}

fn finish(
    name: impl Into<String>,
    p: &KafkaPublisher,
    lat: Arc<Mutex<Vec<Duration>>>,
    messages: u64,
    start: Instant,
) -> Run {
    p.flush(Duration::from_secs(120));
    let elapsed = start.elapsed();
    let latencies = std::mem::take(&mut *lat.lock().unwrap());
    Run { name: name.into(), messages, elapsed, latencies }
}

/// Drive `step` (emits messages, returns how many) at `rate` messages/s for 10 s: the latency of a path below
/// saturation, not its queue's. A new producer's first records wait for the connection, metadata and its
/// idempotent producer id (~0.4 s), which a running scraper pays once at start-up: one warm-up step is
/// flushed first and not counted.
fn paced(
    name: String,
    rate: u64,
    p: &KafkaPublisher,
    lat: Arc<Mutex<Vec<Duration>>>,
    mut step: impl FnMut() -> u64,
) -> Run {
    step();
    p.flush(Duration::from_secs(30));
    lat.lock().unwrap().clear();
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(10) {
        // Catch up to the schedule, then wait for the next millisecond.
        while sent < (start.elapsed().as_secs_f64() * rate as f64) as u64 {
            sent += step();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    finish(name, p, lat, sent, start)
}

/// Publish without ever spinning forever: a full buffer means wait for acks (the bench wants no drops).
fn publish_all(p: &dyn Publisher, r: OutRecord<'_>) {
    while p.publish(r).is_err() {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether a path is to run: `SCRAPER_BENCH_PATHS=binance,discard` runs those two (default: all).
fn wanted(path: &str) -> bool {
    std::env::var("SCRAPER_BENCH_PATHS").map_or(true, |p| p.split(',').any(|w| w.trim() == path))
}

/// A publisher that accepts and forgets every record: the scraper path without librdkafka.
struct Discard;

impl Publisher for Discard {
    fn publish(&self, r: OutRecord<'_>) -> Result<(), cryptoviz_workers::bus::PublishError> {
        std::hint::black_box(r);
        Ok(())
    }
    fn queue_depth(&self) -> usize {
        0
    }
    fn connected(&self) -> bool {
        true
    }
    fn flush(&self, _: Duration) {}
}

/// The worker binary's allocator (see `src/main.rs`), so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let bootstrap = std::env::var("CRYPTOVIZ_KAFKA_BOOTSTRAP").expect("set CRYPTOVIZ_KAFKA_BOOTSTRAP");
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let suffix = std::process::id();
    let (raw, stream) = (format!("bench.scraper.raw.{suffix}"), format!("bench.scraper.stream.{suffix}"));
    let cfg = config(&bootstrap, &raw, &stream);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = client_config(&cfg.kafka).create().unwrap();
        let topics =
            [NewTopic::new(&raw, 3, TopicReplication::Fixed(1)), NewTopic::new(&stream, 3, TopicReplication::Fixed(1))];
        admin.create_topics(&topics, &AdminOptions::new()).await.unwrap();
    });
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    // The outlet is synchronous; it only needs to be called. Everything runs on this one thread (+ librdkafka's).
    let mut runs = Vec::new();

    // 1. Synthetic market → outlet → Kafka.
    if wanted("synthetic") {
        let (p, lat) = publisher(&cfg);
        let (outlet, _) = Outlet::new(SourceKind::Synthetic, &cfg, p.clone(), metrics.clone());
        let mut market = Market::new(&cfg.symbols, &cfg.quote, 1);
        let start = Instant::now();
        let mut sent = 0;
        while sent < n {
            let batch = market.step(Utc::now());
            sent += batch.len() as u64;
            while p.queue_depth() > 900_000 {
                std::thread::sleep(Duration::from_micros(200));
            }
            outlet.emit(batch);
        }
        runs.push(finish("synthetic → sink → kafka", &p, lat, sent, start));
    }

    // 1b. The same path paced below saturation: its latency, not the queue's.
    let rate: u64 = std::env::var("PACED_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(50_000);
    if wanted("paced") {
        let (p, lat) = publisher(&cfg);
        let (outlet, _) = Outlet::new(SourceKind::Synthetic, &cfg, p.clone(), metrics.clone());
        let mut market = Market::new(&cfg.symbols, &cfg.quote, 2);
        runs.push(paced(format!("synthetic paced {rate}/s"), rate, &p, lat, || {
            let batch = market.step(Utc::now());
            let n = batch.len() as u64;
            outlet.emit(batch);
            n
        }));
    }

    // 2. Binance frames → parse → outlet → Kafka (trade ids unique so dedup passes everything).
    let frames: Vec<String> = (0..n)
        .map(|i| {
            let sym = ["BTC", "ETH", "SOL", "BNB"][(i % 4) as usize];
            format!(
                r#"{{"stream":"{l}usdt@trade","data":{{"e":"trade","E":1711356300124,"s":"{sym}USDT","t":{i},"p":"67187.{:08}","q":"0.00150000","T":1711356300123,"m":true,"M":true}}}}"#,
                i % 100_000_000,
                l = sym.to_lowercase()
            )
        })
        .collect();
    if wanted("binance") {
        let (p, lat) = publisher(&cfg);
        let source = Binance::new(&cfg, &cfg.sources[0]);
        let (outlet, _) = Outlet::new(SourceKind::Binance, &cfg, p.clone(), metrics.clone());
        let start = Instant::now();
        for f in &frames {
            while p.queue_depth() > 900_000 {
                std::thread::sleep(Duration::from_micros(200));
            }
            deliver(&|f, at| source.parse(f, at), &outlet, f.as_bytes());
        }
        runs.push(finish("binance replay → kafka", &p, lat, n, start));
    }

    // 2a. The Binance replay paced like 1b (frames reused in a cycle: ids repeat only far beyond dedup's window).
    if wanted("binance-paced") {
        let (p, lat) = publisher(&cfg);
        let source = Binance::new(&cfg, &cfg.sources[0]);
        let (outlet, _) = Outlet::new(SourceKind::Binance, &cfg, p.clone(), metrics.clone());
        let mut next = frames.iter().cycle();
        runs.push(paced(format!("binance paced {rate}/s"), rate, &p, lat, || {
            deliver(&|f, at| source.parse(f, at), &outlet, next.next().expect("frames").as_bytes());
            1
        }));
    }

    // 2b. The same frames with no producer at all: what the scraper's own code costs per message.
    if wanted("discard") {
        let source = Binance::new(&cfg, &cfg.sources[0]);
        let (outlet, _) = Outlet::new(SourceKind::Binance, &cfg, Arc::new(Discard), metrics.clone());
        let start = Instant::now();
        for f in &frames {
            deliver(&|f, at| source.parse(f, at), &outlet, f.as_bytes());
        }
        runs.push(Run {
            name: "binance replay, no producer".into(),
            messages: n,
            elapsed: start.elapsed(),
            latencies: Vec::new(),
        });
    }

    // 3. The limit: the bytes the Binance replay produced (its payloads, made before the clock starts),
    // straight into the producer, two records per message.
    if wanted("bare") {
        let source = Binance::new(&cfg, &cfg.sources[0]);
        let payloads: Vec<(String, Vec<u8>)> = frames
            .iter()
            .flat_map(|f| source.parse(f.as_bytes(), Utc::now()).expect("bench frame").messages)
            .map(|m| (m.symbol().to_owned(), m.to_json()))
            .collect();
        drop(frames);
        let (p, lat) = publisher(&cfg);
        let headers: [(&str, &[u8]); 2] = [("cv-type", b"trade"), ("cv-source", b"binance")];
        let start = Instant::now();
        for (key, payload) in &payloads {
            for topic in [&raw, &stream] {
                publish_all(p.as_ref(), OutRecord { topic, key: key.as_bytes(), payload, headers: &headers });
            }
        }
        runs.push(finish("raw rdkafka (same bytes)", &p, lat, n, start));
    }

    println!("\n{n} messages each (2 records per message: raw + stream), one thread producing:");
    for r in &runs {
        r.print();
    }
    let dropped: u64 = ["queue_full", "refused"]
        .iter()
        .flat_map(|reason| {
            ["synthetic", "binance"].map(|source| {
                metrics
                    .dropped
                    .get_or_create(&cryptoviz_workers::scraper::metrics::ReasonLabels { source, reason })
                    .get()
            })
        })
        .sum();
    println!("dropped by the scraper path: {dropped}");
}
