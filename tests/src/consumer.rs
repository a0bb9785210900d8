//! The consumer under test as the cluster runs it: the real `cryptoviz-worker consumer` process, its configuration
//! rendered from a CryptoPipeline, its schema created by the operator's storage reconciler, its topics on the real
//! broker. Used by the consumer test binaries (`tests/consumer`, and the disruptive `consumer_crash` and
//! `consumer_db_restart`).

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::{TestEnv, binary, http, metrics, unique, wait_for};
use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_crds::{CryptoPipeline, CryptoPipelineSpec};
use cryptoviz_operator::metrics::Metrics;
use cryptoviz_operator::storage::Storage;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// One pipeline's consumer setup: topics, schema and the worker configuration file.
pub struct Setup {
    /// The rendered worker configuration.
    pub cfg: WorkerConfig,
    /// Where it is written.
    pub config_path: PathBuf,
    /// Database URL (never logged by the worker; the tests may print nothing of it either).
    pub db_url: String,
    /// The pipeline's schema.
    pub schema: String,
}

impl Setup {
    /// Topics (raw with `partitions`, DLQ with one) and the schema of a fresh pipeline on `db_url`.
    pub async fn new(db_url: &str, partitions: i32, batch_size: u32, flush_interval: &str) -> Setup {
        let env = TestEnv::get();
        let yaml = format!(
            "symbols: [BTC, ETH]\nsources: [{{kind: synthetic}}]\nkafka: {{bootstrapServers: '{}'}}\n\
             timescale: {{connectionSecretRef: {{name: db, key: url}}}}\n\
             consumer: {{batchSize: {batch_size}, flushInterval: {flush_interval}}}\n",
            env.kafka_bootstrap()
        );
        let spec: CryptoPipelineSpec = serde_saphyr::from_str(&yaml).unwrap();
        let mut p = CryptoPipeline::new(&unique("cons"), spec);
        p.metadata.namespace = Some("consumer-tests".into());
        let cfg = WorkerConfig::for_pipeline(&p).unwrap();

        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", env.kafka_bootstrap()).create().unwrap();
        let topics = [
            NewTopic::new(&cfg.kafka.raw_topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&cfg.kafka.dlq_topic, 1, TopicReplication::Fixed(1)),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        for r in admin.create_topics(&topics, &opts).await.unwrap() {
            r.unwrap();
        }

        let mut c = PgConnection::connect(db_url).await.unwrap();
        Storage::new(Metrics::new(&mut Registry::default())).reconcile_with(&p, &mut c).await.unwrap();
        c.close().await.unwrap();

        let dir = env.state_dir().join("consumer-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join(format!("{}.yaml", p.metadata.name.as_deref().unwrap()));
        std::fs::write(&config_path, cfg.to_yaml()).unwrap();
        Setup { schema: p.schema_name(), cfg, config_path, db_url: db_url.into() }
    }

    /// Start the consumer process.
    pub fn start(&self) -> Worker {
        Worker::start(self, &[])
    }

    /// Start the consumer process with extra environment variables (e.g. a test failpoint).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Worker {
        Worker::start(self, env)
    }

    /// Produce `(key, payload)` records to the raw topic, waiting for every acknowledgement.
    pub async fn produce(&self, records: &[(String, Vec<u8>)]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", TestEnv::get().kafka_bootstrap())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for chunk in records.chunks(5000) {
            let sends = chunk.iter().map(|(k, v)| {
                producer.send(FutureRecord::to(&self.cfg.kafka.raw_topic).key(k).payload(v), Duration::from_secs(30))
            });
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| e).unwrap();
            }
        }
    }

    /// Rows in one of the pipeline's tables.
    pub async fn count(&self, table: &str) -> i64 {
        let mut c = PgConnection::connect(&self.db_url).await.unwrap();
        let n = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM \"{}\".{table}", self.schema)))
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        n
    }

    /// Rows, or None when the database does not answer (it may be stopped on purpose).
    pub async fn try_count(&self, table: &str) -> Option<i64> {
        let mut c = PgConnection::connect(&self.db_url).await.ok()?;
        let n = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM \"{}\".{table}", self.schema)))
            .fetch_one(&mut c)
            .await
            .ok();
        let _ = c.close().await;
        n
    }

    /// The consumer group's committed offset equals the end of every raw partition (nothing left to re-read).
    /// A broker error (e.g. `NotCoordinator` while a fresh broker elects the group's coordinator) is "not
    /// yet": callers poll this in a wait.
    pub fn fully_committed(&self) -> bool {
        self.committed_to_end().unwrap_or(false)
    }

    fn committed_to_end(&self) -> Result<bool, rdkafka::error::KafkaError> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", TestEnv::get().kafka_bootstrap())
            .set("group.id", &self.cfg.consumer.group_id)
            .create()?;
        let md = c.fetch_metadata(Some(&self.cfg.kafka.raw_topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition(&self.cfg.kafka.raw_topic, p.id());
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
        for e in committed.elements() {
            let (_, high) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))?;
            let done = match e.offset() {
                Offset::Offset(o) => o == high,
                _ => high == 0,
            };
            if !done {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every record on the dead-letter topic, read up to its high watermark at the time of the call, however
    /// many that is: (headers as `name=value`, payload). Called once the raw topic is fully committed (a dead
    /// letter is acknowledged before its offset is committed), it is every dead letter the run wrote.
    pub fn dead_letters(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", TestEnv::get().kafka_bootstrap())
            .set("group.id", unique("dlq-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.cfg.kafka.dlq_topic, 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let (_, high) = c.fetch_watermarks(&self.cfg.kafka.dlq_topic, 0, Duration::from_secs(10)).unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while next < high {
            assert!(std::time::Instant::now() < deadline, "read {next} of {high} dead letters in 30 s");
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                next = m.offset() + 1;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| format!("{}={}", h.key, String::from_utf8_lossy(h.value.unwrap_or_default())))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((headers, m.payload().unwrap_or_default().to_vec()));
            }
        }
        out
    }
}

/// The consumer process.
pub struct Worker {
    child: Child,
    /// Port of its HTTP server.
    pub port: u16,
}

impl Worker {
    fn start(s: &Setup, env: &[(&str, &str)]) -> Worker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = binary::worker("consumer")
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&s.config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CRYPTOVIZ_DATABASE_URL", &s.db_url)
            .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
            .spawn()
            .unwrap();
        Worker { child, port }
    }

    /// SIGKILL: no flush, no commit, no goodbye to the group.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait (at most `within`) for the process to end by itself; its exit status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("the consumer to exit by itself", within, || {
            let r = child.try_wait().unwrap();
            async move { r }
        })
        .await
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        crate::process::signal(self.child.id(), crate::process::SIGTERM).unwrap();
        let child = &mut self.child;
        let status = wait_for("the consumer to exit after SIGTERM", Duration::from_secs(30), || {
            let r = child.try_wait().unwrap();
            async move { r }
        })
        .await;
        assert!(status.success(), "the consumer exited with {status}");
    }

    /// GET a path of its HTTP server: (status, body); None while it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http::get(&format!("127.0.0.1:{}{path}", self.port)).await
    }

    /// Sum of the samples named `name` carrying every `(label, value)` in `labels` (0 when absent); None
    /// while the server does not answer.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        Some(metrics::sum(&body, name, labels))
    }

    /// Wait until /ready says 200.
    pub async fn wait_ready(&self) {
        wait_for("the consumer to be ready", Duration::from_secs(60), || async {
            self.get("/ready").await.filter(|(s, _)| *s == 200).map(drop)
        })
        .await;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A schema-v1 tick as the scraper writes it; `i` makes it unique (exchange time `i` ms after a fixed instant).
pub fn tick(i: u64, price: &str) -> (String, Vec<u8>) {
    let t = chrono::DateTime::from_timestamp_millis(1_711_356_300_000 + i as i64).unwrap();
    let symbol = if i.is_multiple_of(2) { "BTC" } else { "ETH" };
    let json = serde_json::json!({
        "type": "tick", "v": 1, "source": "synthetic", "symbol": symbol, "quote": "USD", "price": price,
        "exchange_time": t, "received_at": t,
    });
    (symbol.to_string(), serde_json::to_vec(&json).unwrap())
}

/// A schema-v1 trade; `i` is its trade id.
pub fn trade(i: u64, price: &str, quantity: &str) -> (String, Vec<u8>) {
    let t = chrono::DateTime::from_timestamp_millis(1_711_356_300_000 + (i / 10) as i64).unwrap();
    let json = serde_json::json!({
        "type": "trade", "v": 1, "source": "kraken", "symbol": "BTC", "quote": "USD", "trade_id": i.to_string(),
        "price": price, "quantity": quantity, "side": "buy", "exchange_time": t, "received_at": t,
    });
    ("BTC".to_string(), serde_json::to_vec(&json).unwrap())
}
