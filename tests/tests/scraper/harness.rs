//! Running the real scraper binary against stand-ins and the real Kafka, and reading what it produced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cryptoviz_tests::{TestEnv, binary, http, metrics, unique, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};

fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", TestEnv::get().kafka_bootstrap());
    c
}

/// A raw and a stream topic of their own, three partitions each (so key → partition is observable).
pub async fn topics(prefix: &str) -> (String, String) {
    let (raw, stream) = (unique(&format!("{prefix}.raw")), unique(&format!("{prefix}.stream")));
    let admin: AdminClient<DefaultClientContext> = kafka().create().expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new =
        [NewTopic::new(&raw, 3, TopicReplication::Fixed(1)), NewTopic::new(&stream, 3, TopicReplication::Fixed(1))];
    for r in admin.create_topics(&new, &opts).await.expect("create topics") {
        r.expect("topic created");
    }
    (raw, stream)
}

/// A worker configuration (JSON is YAML) for these sources and topics.
pub fn config(
    symbols: &[&str],
    sources: Value,
    raw: &str,
    stream: &str,
    suppress: bool,
    alerts: Option<(f64, u64)>,
) -> String {
    let (enabled, threshold, window) = alerts.map_or((false, 5.0, 60_000), |(t, w)| (true, t, w));
    json!({
        "pipeline": {"namespace": "test", "name": "scraper"},
        "symbols": symbols,
        "quote": "USD",
        "sources": sources,
        "kafka": {"bootstrapServers": TestEnv::get().kafka_bootstrap(), "rawTopic": raw, "streamTopic": stream, "dlqTopic": format!("{raw}.dlq")},
        "scraper": {"suppressUnchangedTicks": suppress},
        "consumer": {"groupId": "unused", "batchSize": 100, "flushIntervalMs": 1000},
        "gateway": {"heartbeatIntervalMs": 15000, "maxClients": 10, "replayBuffer": 10},
        "alerts": {"enabled": enabled, "thresholdPercent": threshold, "windowMs": window},
    })
    .to_string()
}

/// The `cryptoviz-worker scraper` process; killed when dropped.
pub struct Scraper {
    child: Child,
    /// Base URL of its health and metrics server.
    pub url: String,
    log: PathBuf,
}

impl Scraper {
    /// Start the binary with this configuration and extra environment; wait until it serves HTTP.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique("cv-scraper"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.yaml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("scraper.log");
        let child = binary::worker("scraper")
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0"])
            .env("CRYPTOVIZ_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,cryptoviz_workers=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the scraper");
        let log2 = log.clone();
        let addr = wait_for("the scraper to serve HTTP", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log2).unwrap_or_default();
            async move {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find_map(|v| v["fields"]["addr"].as_str().map(String::from))
            }
        })
        .await;
        Scraper { child, url: format!("http://{addr}"), log }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panic unless the process is still running (nothing crashed it).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the scraper exited ({status}); log:\n{}", self.log());
        }
    }

    /// GET a path; (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http::get(&format!("{}{path}", self.url)).await.expect("the scraper answers HTTP")
    }

    /// Sum of the series of metric `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.get("/metrics").await.1, name, labels)
    }

    /// Wait until a metric reaches at least `min`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], min: f64) {
        wait_for(&format!("{name}{labels:?} >= {min}"), Duration::from_secs(60), || async {
            (self.metric(name, labels).await >= min).then_some(())
        })
        .await
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record as the tests see it.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Key as text.
    pub key: String,
    /// Payload as JSON.
    pub payload: Value,
    /// Headers as text.
    pub headers: HashMap<String, String>,
}

/// Read `topics` from the beginning until `done` holds for everything read so far, or panic after `timeout`.
pub async fn consume_until(topics: &[&str], timeout: Duration, done: impl Fn(&[Rec]) -> bool) -> Vec<Rec> {
    let consumer: StreamConsumer = kafka()
        .set("group.id", unique("scraper-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(topics).expect("subscribe");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        if done(&out) {
            return out;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} reading {topics:?}; got {} records: {out:#?}", out.len());
        }
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await else { continue };
        let msg = match msg {
            Ok(m) => m,
            // A topic created a moment ago may not be in the consumer's metadata yet.
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => continue,
            Err(e) => panic!("kafka receive: {e}"),
        };
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Rec {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            key: String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned(),
            payload: serde_json::from_slice(msg.payload().unwrap_or_default()).expect("payload is JSON"),
            headers,
        });
    }
}

/// Every key is always on the same partition (per topic).
pub fn assert_key_partitions_stable(recs: &[Rec]) {
    let mut seen: HashMap<(&str, &str), i32> = HashMap::new();
    for r in recs {
        let p = *seen.entry((&r.topic, &r.key)).or_insert(r.partition);
        assert_eq!(p, r.partition, "key {} moved partitions on {}", r.key, r.topic);
    }
}

/// Records of one topic and type.
pub fn of<'a>(recs: &'a [Rec], topic: &str, kind: &str) -> Vec<&'a Rec> {
    recs.iter().filter(|r| r.topic == topic && r.payload["type"] == kind).collect()
}
