//! Standalone mode through the real binary: `cryptoviz-worker standalone`, the newcomer's first command.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoviz_tests::browser::Browser;
use cryptoviz_tests::operator::free_port;
use cryptoviz_tests::process::{SIGINT, SIGTERM};
use cryptoviz_tests::{TestEnv, repo_root, unique, wait_for};
use cryptoviz_tests::{binary, http};
use cryptoviz_workers::message::Message;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The first live event must follow the first answer of `/health` within this.
const FIRST_EVENT_BUDGET: Duration = Duration::from_secs(2);
/// Start-up of a built binary (no compilation here): generous for a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `cryptoviz-worker standalone`, killed on drop.
struct Standalone {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    base: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn drain(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = into.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
}

impl Standalone {
    /// Start it with `args` on a free loopback port.
    fn start(args: &[&str]) -> Standalone {
        let port = free_port();
        let mut child = Command::new(binary::path("cryptoviz-worker"))
            .arg("standalone")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(repo_root())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("CRYPTOVIZ_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start cryptoviz-worker standalone");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        drain(child.stdout.take().unwrap(), Arc::clone(&stdout));
        drain(child.stderr.take().unwrap(), Arc::clone(&stderr));
        Standalone { child, base: format!("http://127.0.0.1:{port}"), stdout, stderr }
    }

    /// The first moment `/health` answers 200, polled every 10 ms (a deadline, not a sleep).
    async fn health(&mut self) -> Instant {
        let url = format!("{}/health", self.base);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http::get(&url).await.is_some_and(|(status, _)| status == 200) {
                return Instant::now();
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("standalone exited ({exit}) before /health answered:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "/health did not answer within {START_TIMEOUT:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Wait until the process has printed `needle` (its output is read by another thread, so what it
    /// printed before /health answered may not have been collected yet).
    async fn printed(&self, needle: &str) {
        let what = format!("standalone to print {needle:?}");
        cryptoviz_tests::wait_for(&what, START_TIMEOUT, || async { self.stdout().contains(needle).then_some(()) }).await
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn get(&self, path: &str) -> String {
        http::body(&format!("{}{path}", self.base)).await.unwrap_or_else(|| panic!("GET {path} answers 2xx"))
    }

    /// Send `signal` (SIGINT is Ctrl-C) and wait for the exit status (30 s at most).
    async fn stop(&mut self, signal: i32) -> ExitStatus {
        cryptoviz_tests::process::signal(self.child.id().expect("running"), signal).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("standalone exits within 30 s of signal {signal}"))
            .unwrap()
    }
}

/// `curl -N` on `/stream`: one parsed `data:` object per event (curl de-chunks for us).
struct Stream {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _curl: Child,
}

impl Stream {
    fn open(base: &str) -> Stream {
        let mut curl = Command::new("curl")
            .args(["-sN", "--max-time", "120", &format!("{base}/stream")])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run curl");
        Stream { lines: BufReader::new(curl.stdout.take().unwrap()).lines(), _curl: curl }
    }

    /// The next event's data, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        while let Some(line) = self.lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(data).expect("events are JSON"));
            }
        }
        None
    }

    /// The next market event (`crypto_update` or `trade`) before `deadline`.
    async fn next_market(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, async {
            loop {
                let ev = self.next().await.expect("the stream ended before a market event");
                if matches!(ev["type"].as_str(), Some("crypto_update" | "trade")) {
                    return ev;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no market event on /stream before the deadline"))
    }
}

fn write_manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The default command serves `/stream` with live market events within 2 s of `/health` first answering,
/// prints where to look, exposes the scraper's and the gateway's metrics, and stops cleanly on Ctrl-C
/// (clients are told, the process exits 0).
#[tokio::test]
async fn default_command_streams_events_within_two_seconds_and_stops_on_ctrl_c() {
    let mut sa = Standalone::start(&[]);
    let t0 = sa.health().await;
    let mut stream = Stream::open(&sa.base);
    let ev = stream.next_market(t0 + FIRST_EVENT_BUDGET).await;
    let first = t0.elapsed();
    eprintln!("first market event {first:?} after /health answered");
    assert!(first <= FIRST_EVENT_BUDGET, "first event after {first:?}");
    let symbol = ev["data"]["symbol"].as_str().unwrap();
    assert!(["BTC", "ETH", "SOL"].contains(&symbol), "a default symbol: {ev}");
    assert_eq!(ev["data"]["source"], "synthetic");

    let banner = sa.stdout();
    for want in [
        format!("live page  {}/", sa.base),
        format!("curl -N {}/stream", sa.base),
        format!("metrics    {}/metrics", sa.base),
        "transport  in-process bus (no broker)".into(),
        "symbols    BTC, ETH, SOL (quote USD)".into(),
    ] {
        assert!(banner.contains(&want), "{want:?} in the banner:\n{banner}");
    }
    let metrics = sa.get("/metrics").await;
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert!(sample(r#"cryptoviz_scraper_messages_produced_total{source="synthetic",role="stream"}"#) > 0.0);
    assert!(sample("cryptoviz_gateway_events_received_total") > 0.0);
    wait_for("/ready", Duration::from_secs(10), || async {
        http::body(&format!("{}/ready", sa.base)).await.map(|_| ())
    })
    .await;

    let exit = sa.stop(SIGINT).await;
    assert!(exit.success(), "clean exit on Ctrl-C: {exit}\n{}", sa.stderr());
    let mut last = None;
    while let Some(ev) = stream.next().await {
        last = Some(ev);
    }
    assert_eq!(last.expect("events until the end")["type"], "shutdown", "clients are told before the end");
    assert!(sa.stderr().contains("stopped"), "{}", sa.stderr());
}

/// The example manifest the operator would apply runs as it is: its pipeline, its symbols, its source.
#[tokio::test]
async fn example_synthetic_manifest_runs_as_is() {
    let mut sa = Standalone::start(&["-f", "manifests/examples/synthetic.yaml"]);
    let t0 = sa.health().await;
    sa.printed("pipeline default/synthetic").await;
    let mut stream = Stream::open(&sa.base);
    let mut seen = BTreeSet::new();
    let deadline = t0 + Duration::from_secs(10);
    while seen.len() < 3 {
        let ev = stream.next_market(deadline).await;
        seen.insert(ev["data"]["symbol"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, BTreeSet::from(["BTC".into(), "ETH".into(), "SOL".into()]));
    let exit = sa.stop(SIGTERM).await;
    assert!(exit.success(), "{exit}");
}

/// A manifest the apiserver would refuse is refused here too, before anything starts: each error names
/// its field path, on stderr, and the exit status is non-zero.
#[tokio::test]
async fn invalid_pipeline_file_names_the_field_paths_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(unique("standalone-bad"));
    let file = write_manifest(
        &dir,
        "bad.yaml",
        "apiVersion: cryptoviz.io/v1alpha1\nkind: CryptoPipeline\nmetadata: {name: bad}\n\
         spec:\n  symbols: [BTC, eth]\n  sources:\n    - kind: coingecko\n      pollInterval: soon\n\
         \x20 kafka: {bootstrapServers: 'k:9092'}\n  gatway: {maxClients: 5}\n",
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(binary::path("cryptoviz-worker"))
            .args(["standalone", "-f"])
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("refused within 30 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "non-zero exit; stderr:\n{stderr}");
    for want in [
        format!("{} is not a valid CryptoPipeline", file.display()),
        r#"spec.sources[0].pollInterval: invalid duration "soon""#.into(),
        r#"spec.symbols[1]: "eth" must match ^[A-Z0-9]{1,15}$"#.into(),
        "spec.gatway: unknown field".into(),
    ] {
        assert!(stderr.contains(&want), "{want:?} in stderr:\n{stderr}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "no banner for a refused pipeline");
    let _ = std::fs::remove_dir_all(dir);
}

/// The live page in headless Chromium fills its table with the synthetic market's prices; a screenshot is
/// kept in tests/artifacts/standalone.png.
#[tokio::test]
async fn live_page_shows_prices_in_headless_chromium() {
    let mut sa = Standalone::start(&[]);
    sa.health().await;
    let html = sa.get("/").await;
    assert!(html.contains("<tbody id=\"prices\">"), "the live page");

    let artifacts = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("standalone.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{}/", sa.base);
    let dom_browser = Browser::open(&["--dump-dom"], &url);
    let shot_browser = Browser::open(&[&format!("--screenshot={}", shot.display())], &url);
    let stats = |body: String| serde_json::from_str::<Value>(&body).unwrap();
    let before = stats(sa.get("/stats").await)["deliveries"].as_u64().unwrap();
    wait_for("both pages streaming live updates", Duration::from_secs(60), || async {
        let s = stats(sa.get("/stats").await);
        (s["clients"] == 2 && s["deliveries"].as_u64().unwrap() >= before + 20).then_some(())
    })
    .await;
    // Ending the streams lets the pages go idle, and Chromium report.
    assert!(sa.stop(SIGTERM).await.success());
    let dom = dom_browser.finish().await;
    shot_browser.finish().await;

    for sym in ["BTC", "ETH", "SOL"] {
        let marker = format!(r#"data-symbol="{sym}">"#);
        let price = dom
            .match_indices(&marker)
            .find_map(|(i, _)| {
                let tag = &dom[dom[..i].rfind('<')?..i];
                if !tag.starts_with("<td class=\"price") {
                    return None;
                }
                let at = i + marker.len();
                Some(dom[at..at + dom[at..].find('<')?].to_string())
            })
            .unwrap_or_else(|| panic!("no {sym} price cell in the DOM:\n{dom}"));
        let value: f64 = price.parse().unwrap_or_else(|_| panic!("{sym} price {price:?} is a number"));
        assert!(value > 0.0, "{sym} price {value}");
    }
    assert!(dom.contains("<polyline"), "sparklines drawn");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot written");
}

/// With `--kafka`, the same pipeline produces to the real topics the rendered configuration names
/// (created with the declared partitions), records are keyed by symbol and parse as messages, and the
/// gateway streams them back from the broker.
#[tokio::test]
async fn with_kafka_messages_reach_the_real_topics() {
    let bootstrap = TestEnv::get().kafka_bootstrap().to_string();
    let name = unique("standalone");
    let dir = std::env::temp_dir().join(&name);
    let file = write_manifest(
        &dir,
        "p.yaml",
        &format!(
            "apiVersion: cryptoviz.io/v1alpha1\nkind: CryptoPipeline\nmetadata: {{name: {name}}}\n\
             spec: {{symbols: [BTC, ETH], sources: [{{kind: synthetic, seed: 7}}], \
             kafka: {{bootstrapServers: 'redpanda.invalid:9092', topics: {{raw: {{partitions: 2}}}}}}}}\n"
        ),
    );
    let mut sa = Standalone::start(&["-f", file.to_str().unwrap(), "--kafka", &bootstrap]);
    let t0 = sa.health().await;
    let (raw, stream_topic) = (format!("default.{name}.raw"), format!("default.{name}.stream"));
    sa.printed(&format!("topics {raw}, {stream_topic}")).await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique("standalone-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(&raw), Duration::from_secs(10)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 2, "raw created with the declared partitions");
    let md = consumer.fetch_metadata(Some(&stream_topic), Duration::from_secs(10)).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3, "stream created with the default partitions");
    consumer.subscribe(&[&raw, &stream_topic]).unwrap();
    let mut counts = std::collections::HashMap::<String, usize>::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while counts.get(&raw).copied().unwrap_or(0) < 20 || counts.get(&stream_topic).copied().unwrap_or(0) < 20 {
            let m = consumer.recv().await.expect("consume");
            let msg = Message::from_json(m.payload().unwrap()).expect("payloads are messages");
            assert_eq!(m.key(), Some(msg.symbol().as_bytes()), "keyed by symbol");
            let kinds: &[&str] = if m.topic() == raw { &["tick", "trade"] } else { &["tick", "trade", "alert"] };
            assert!(kinds.contains(&msg.kind()), "{} on {}", msg.kind(), m.topic());
            let source = m.headers().and_then(|h| h.iter().find(|h| h.key == "cv-source")).and_then(|h| h.value);
            assert_eq!(source, Some(&b"synthetic"[..]));
            *counts.entry(m.topic().to_string()).or_default() += 1;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("20 records on each topic within 30 s, got {counts:?}"));

    // The gateway tails the stream topic from the broker, as in the cluster.
    let mut stream = Stream::open(&sa.base);
    let ev = stream.next_market(Instant::now().max(t0) + Duration::from_secs(10)).await;
    assert!(["BTC", "ETH"].contains(&ev["data"]["symbol"].as_str().unwrap()), "{ev}");
    let exit = sa.stop(SIGTERM).await;
    assert!(exit.success(), "{exit}\n{}", sa.stderr());
    let _ = std::fs::remove_dir_all(dir);
}

/// With `--timescale` on an empty PostgreSQL 15 database and no operator anywhere, standalone creates the
/// pipeline's schema itself (the operator's storage code) and the consumer stores the raw feed; the last batch
/// is flushed on shutdown, and a second start finds the schema current.
#[tokio::test]
async fn with_timescale_an_empty_database_stores_the_raw_feed() {
    let admin_url = TestEnv::get().postgres_url().to_string();
    let name = unique("standalone-db");
    // A manifest without a namespace is in `default`: the schema is cv_<namespace>_<name>.
    let schema = format!("cv_default_{}", name.replace('-', "_"));
    let database = schema.clone();
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{database}\""))).execute(&mut admin).await.unwrap();
    let url = with_database(&admin_url, &database);
    let dir = std::env::temp_dir().join(&name);
    let file = write_manifest(
        &dir,
        "p.yaml",
        &format!(
            "apiVersion: cryptoviz.io/v1alpha1\nkind: CryptoPipeline\nmetadata: {{name: {name}}}\n\
             spec: {{symbols: [BTC], sources: [{{kind: synthetic, rate: 20}}], kafka: {{bootstrapServers: 'k:9092'}}, \
             timescale: {{connectionSecretRef: {{name: db, key: url}}}}, consumer: {{flushInterval: 200ms}}}}\n"
        ),
    );
    let p = cryptoviz_crds::validate::parse_manifest(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(p.schema_name(), schema);
    let mut db = PgConnection::connect(&url).await.unwrap();
    let tables = async |db: &mut PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = $1")
            .bind(&schema)
            .fetch_one(db)
            .await
            .unwrap()
    };
    assert_eq!(tables(&mut db).await, 0, "the database starts empty");

    let mut sa = Standalone::start(&["-f", file.to_str().unwrap(), "--timescale", &url]);
    sa.health().await;
    sa.printed(&format!("consumer into schema {schema}")).await;
    let count = async |db: &mut PgConnection, table: &str| -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM \"{schema}\".{table}")))
            .fetch_one(db)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut db, "ticks").await < 10 || count(&mut db, "trades").await < 10 {
        assert!(Instant::now() < deadline, "10 ticks and 10 trades stored within 20 s:\n{}", sa.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = sa.stop(SIGTERM).await;
    assert!(exit.success(), "{exit}\n{}", sa.stderr());
    // The last batch is flushed on the way out: nothing stored is lost, and more may have arrived.
    let rows = count(&mut db, "ticks").await + count(&mut db, "trades").await;
    assert!(rows >= 20, "{rows} rows");
    // Started again on the same database: the schema is found current and storing goes on.
    let mut again = Standalone::start(&["-f", file.to_str().unwrap(), "--timescale", &url]);
    again.health().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut db, "ticks").await + count(&mut db, "trades").await <= rows {
        assert!(Instant::now() < deadline, "more rows stored after a restart:\n{}", again.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = again.stop(SIGTERM).await;
    assert!(exit.success(), "{exit}\n{}", again.stderr());
    db.close().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE \"{database}\" WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `url` with its database replaced (the path of a `postgres://` URL; query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map(|i| i + 3).unwrap();
    let path_start = base[authority_end..].find('/').map_or(base.len(), |i| authority_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
