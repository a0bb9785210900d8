//! The gateway under test: a real `cryptoviz-worker gateway` process on its own topic, a Kafka producer,
//! and a minimal HTTP/1.1 + SSE client (raw sockets, so a test can also be a client that never reads).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoviz_tests::{TestEnv, binary, http, metrics, unique, wait_for};
use hmac::{KeyInit, Mac};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long any single expected event may take.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", TestEnv::get().kafka_bootstrap());
    c
}

/// A stream topic of our own, with a producer.
#[derive(Clone)]
pub struct Topic {
    /// Its name.
    pub name: String,
    producer: FutureProducer,
}

impl Topic {
    /// Create a topic with `partitions` partitions.
    pub async fn create(partitions: i32) -> Topic {
        let name = unique("gateway.stream");
        let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let res =
            admin.create_topics(&[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))], &opts).await.unwrap();
        assert!(res[0].is_ok(), "create topic: {:?}", res[0]);
        let producer = kafka().set("linger.ms", "0").create().unwrap();
        Topic { name, producer }
    }

    /// Produce one message JSON to a partition, keyed by its symbol.
    pub async fn send(&self, partition: i32, symbol: &str, json: &str) {
        self.producer
            .send(FutureRecord::to(&self.name).key(symbol).payload(json).partition(partition), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// A tick (schema v1) as the scraper writes it.
pub fn tick(symbol: &str, price: &str) -> String {
    format!(
        r#"{{"type":"tick","v":1,"source":"synthetic","symbol":"{symbol}","quote":"USD","price":"{price}","change_24h_pct":"1.25","exchange_time":"{t}","received_at":"{t}"}}"#,
        t = now()
    )
}

/// A trade (schema v1).
pub fn trade(symbol: &str, trade_id: u64) -> String {
    format!(
        r#"{{"type":"trade","v":1,"source":"kraken","symbol":"{symbol}","quote":"USD","trade_id":"{trade_id}","price":"100.5","quantity":"0.01","side":"buy","exchange_time":"{t}","received_at":"{t}"}}"#,
        t = now()
    )
}

fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    // RFC 3339 without a date library: seconds since the epoch are enough for these tests' timestamps.
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Knobs for one gateway process.
pub struct Opts {
    /// `gateway.replayBuffer`.
    pub replay_buffer: u32,
    /// `gateway.maxClients`.
    pub max_clients: u32,
    /// `gateway.heartbeatIntervalMs`.
    pub heartbeat_ms: u64,
    /// HS256 key; turns auth on.
    pub jwt_key: Option<String>,
    /// RS256/ES256 public keys (PEM or JWKS); turns auth on.
    pub jwt_public_keys: Option<String>,
    /// `gateway.jwtAudience`.
    pub jwt_audience: Option<String>,
    /// `CRYPTOVIZ_GATEWAY_CLIENT_QUEUE`.
    pub client_queue: Option<u64>,
    /// `gateway.limits`, as a YAML flow mapping (`{maxClientsPerAddress: 2}`); the defaults when absent.
    pub limits: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            replay_buffer: 1000,
            max_clients: 100,
            heartbeat_ms: 1000,
            jwt_key: None,
            jwt_public_keys: None,
            jwt_audience: None,
            client_queue: None,
            limits: None,
        }
    }
}

/// A running `cryptoviz-worker gateway`, killed on drop.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Start a gateway on `topic` and wait until it is ready (caught up with the topic).
    pub async fn start(topic: &Topic, opts: Opts) -> Gateway {
        let dir = std::env::temp_dir().join(unique("gateway-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut jwt = String::new();
        if opts.jwt_key.is_some() {
            jwt.push_str(", jwtKeyEnv: TEST_GATEWAY_JWT_KEY");
        }
        if opts.jwt_public_keys.is_some() {
            jwt.push_str(", jwtPublicKeysEnv: TEST_GATEWAY_JWT_PUBLIC_KEYS");
        }
        if let Some(a) = &opts.jwt_audience {
            jwt.push_str(&format!(", jwtAudience: '{a}'"));
        }
        let limits = opts.limits.map(|l| format!(", limits: {l}")).unwrap_or_default();
        let config = format!(
            "pipeline: {{namespace: test, name: gateway}}\n\
             symbols: [BTC, ETH, SOL]\n\
             quote: USD\n\
             sources: []\n\
             kafka: {{bootstrapServers: '{bootstrap}', rawTopic: unused.raw, streamTopic: '{topic}', dlqTopic: unused.dlq}}\n\
             scraper: {{suppressUnchangedTicks: false}}\n\
             consumer: {{groupId: unused, batchSize: 100, flushIntervalMs: 1000}}\n\
             gateway: {{heartbeatIntervalMs: {hb}, maxClients: {max}, replayBuffer: {replay}{jwt}{limits}}}\n\
             alerts: {{enabled: false, thresholdPercent: 1.0, windowMs: 60000}}\n",
            bootstrap = TestEnv::get().kafka_bootstrap(),
            topic = topic.name,
            hb = opts.heartbeat_ms,
            max = opts.max_clients,
            replay = opts.replay_buffer,
        );
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::from(binary::worker("gateway"));
        cmd.arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            // The gateway's debug lines too, so a log grep sees what a verbose operator would.
            .env("RUST_LOG", "info,cryptoviz_workers::gateway=debug")
            .env_remove("CRYPTOVIZ_LOG_FORMAT")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(k) = &opts.jwt_key {
            cmd.env("TEST_GATEWAY_JWT_KEY", k);
        }
        if let Some(k) = &opts.jwt_public_keys {
            cmd.env("TEST_GATEWAY_JWT_PUBLIC_KEYS", k);
        }
        if let Some(q) = opts.client_queue {
            cmd.env("CRYPTOVIZ_GATEWAY_CLIENT_QUEUE", q.to_string());
        }
        let mut child = cmd.spawn().expect("spawn the gateway");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("addr=").nth(1).filter(|_| line.contains("gateway listening")) {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
            panic!("the gateway exited before listening");
        })
        .await
        .expect("the gateway listens within 30 s");
        // Keep draining stderr so the process never blocks on a full pipe, keeping the lines for `log`.
        let log = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    log.lock().unwrap().push(l);
                }
            }
        });
        let gw = Gateway { child, addr, log, _dir: TempDir(dir) };
        wait_for("the gateway to be ready", Duration::from_secs(30), || async {
            (gw.get("/ready").await.0 == 200).then_some(())
        })
        .await;
        gw
    }

    /// The gateway's log lines (stderr) so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// GET a path: (status, body); status 0 when nothing answers.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http::get(&format!("{}{path}", self.addr)).await.unwrap_or_default()
    }

    /// `/stats` as JSON.
    pub async fn stats(&self) -> Value {
        let (status, body) = self.get("/stats").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Wait until the gateway has read `n` records.
    pub async fn wait_received(&self, n: u64) {
        wait_for(&format!("{n} records received"), EVENT_TIMEOUT, || async {
            (self.stats().await["events_received"].as_u64() >= Some(n)).then_some(())
        })
        .await;
    }

    /// Sum of the samples named `name` carrying every `(label, value)` in `labels` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.get("/metrics").await.1, name, labels)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Wait for the process to exit.
    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exits within 30 s").unwrap()
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// `id:`, when the event had one.
    pub id: Option<String>,
    /// `retry:`, when the event had one.
    pub retry: Option<u64>,
    /// `data:` parsed as JSON.
    pub data: Value,
}

impl Sse {
    /// The payload's `type`.
    pub fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or("")
    }
}

/// An SSE client on a raw socket.
pub struct Client {
    /// HTTP status.
    pub status: u16,
    /// Response headers, lower-case names.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    chunk_left: usize,
    /// `content-length`, when given: the body ends after that many bytes, as it does for a browser.
    length_left: Option<usize>,
    buf: String,
}

impl Client {
    /// `GET path` with extra headers.
    pub async fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::on(stream, path, headers).await
    }

    /// Send the request on an already connected socket and read the response head.
    pub async fn on(mut stream: TcpStream, path: &str, headers: &[(&str, &str)]) -> Client {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let mut hs = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            hs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let chunked = hs.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let length_left = hs.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok());
        Client { status, headers: hs, reader, chunked, chunk_left: 0, length_left, buf: String::new() }
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Read body bytes (de-chunked); `None` at the end of the body or the connection.
    async fn read_some(&mut self) -> Option<String> {
        if self.chunked && self.chunk_left == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.ok()? == 0 {
                return None;
            }
            if size.trim().is_empty() {
                // The CRLF after the previous chunk.
                size.clear();
                if self.reader.read_line(&mut size).await.ok()? == 0 {
                    return None;
                }
            }
            self.chunk_left = usize::from_str_radix(size.trim(), 16).ok()?;
            if self.chunk_left == 0 {
                return None;
            }
        }
        let mut want = if self.chunked { self.chunk_left.min(64 * 1024) } else { 64 * 1024 };
        if let Some(left) = self.length_left {
            if left == 0 {
                return None;
            }
            want = want.min(left);
        }
        let mut buf = vec![0u8; want];
        let n = self.reader.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if self.chunked {
            self.chunk_left -= n;
        }
        if let Some(left) = &mut self.length_left {
            *left -= n;
        }
        Some(String::from_utf8(buf[..n].to_vec()).expect("utf-8 events"))
    }

    /// The next event (heartbeats included); `None` when the stream ends.
    pub async fn next_any(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut retry, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        retry = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Sse { id, retry, data: serde_json::from_str(&data).expect("data is JSON") });
            }
            let more = self.read_some().await?;
            self.buf.push_str(&more);
        }
    }

    /// The next event that is not a heartbeat, within [`EVENT_TIMEOUT`].
    pub async fn next(&mut self) -> Sse {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            loop {
                let ev = self.next_any().await.expect("the stream ended");
                if ev.kind() != "heartbeat" {
                    return ev;
                }
            }
        })
        .await
        .expect("an event within the timeout")
    }

    /// The body as it arrives for `d` (or until it ends, if sooner), raw: what a client pays for in bytes.
    pub async fn raw_for(&mut self, d: Duration) -> String {
        let mut raw = std::mem::take(&mut self.buf);
        let _ = tokio::time::timeout(d, async {
            while let Some(more) = self.read_some().await {
                raw.push_str(&more);
            }
        })
        .await;
        raw
    }

    /// The whole body of a response that is not a stream, within [`EVENT_TIMEOUT`].
    pub async fn body(&mut self) -> String {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            let mut b = std::mem::take(&mut self.buf);
            while let Some(more) = self.read_some().await {
                b.push_str(&more);
            }
            b
        })
        .await
        .expect("the body ends within the timeout")
    }

    /// Read until the stream ends, within [`EVENT_TIMEOUT`]; the events seen on the way.
    pub async fn until_end(&mut self) -> Vec<Sse> {
        tokio::time::timeout(EVENT_TIMEOUT, async {
            let mut v = Vec::new();
            while let Some(ev) = self.next_any().await {
                v.push(ev);
            }
            v
        })
        .await
        .expect("the stream ends within the timeout")
    }
}

/// An HS256 JWT, signed independently of the gateway's code.
pub fn jwt(key: &str, claims: &Value) -> String {
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// Parse an event id into per-partition offsets.
pub fn cursor(id: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for pair in id.split(',') {
        let (p, o) = pair.split_once(':').expect("partition:offset");
        let p: usize = p.parse().unwrap();
        if v.len() <= p {
            v.resize(p + 1, -1);
        }
        v[p] = o.parse().unwrap();
    }
    v
}
