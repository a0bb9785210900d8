//! End to end: the operator reconciles a pipeline; the real scraper, consumer and gateway run on the
//! configuration it rendered, on the real Kafka and TimescaleDB; the real Prometheus scrapes all of them.
//! Every dashboard query and variable returns data, every alert expression is valid and names exported
//! metrics, and the rule file loads and evaluates cleanly in that Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_tests::operator::{Operator, OperatorOptions, create, free_port, install_crd, namespace, pipeline};
use cryptoviz_tests::standins::ws::{Step, WsStandIn};
use cryptoviz_tests::{TestEnv, binary, http, metrics, repo_root, unique, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, Secret};
use kube::Api;
use kube::api::PostParams;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{alert_rules, dashboards, exprs, metric_names, prom_get, query};

/// A worker process, killed on drop.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(mode: &str, config: &Path, env: &[(&str, &str)], log: &Path) -> Proc {
    let port = free_port();
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(binary::path("cryptoviz-worker"))
        .arg(mode)
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .envs(env.iter().copied())
        .env("RUST_LOG", "info,rdkafka=warn,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start cryptoviz-worker {mode}: {e}"));
    Proc { child, url: format!("http://127.0.0.1:{port}") }
}

/// A file in a Prometheus directory, removed on drop (then `after_remove` runs, e.g. a rules reload).
struct PromFile {
    path: PathBuf,
    reload: Option<String>,
}

impl PromFile {
    /// Write atomically: a temporary name Prometheus ignores, then rename.
    fn write(path: PathBuf, text: &str, reload: Option<String>) -> PromFile {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        PromFile { path, reload }
    }
}

impl Drop for PromFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(url) = &self.reload {
            let _ = Command::new("curl").args(["-s", "-X", "POST", url]).status();
        }
    }
}

async fn condition(api: &Api<CryptoPipeline>, name: &str, type_: &str) -> Option<String> {
    let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some(c.status)
}

fn tick(symbol: &str, price: f64) -> String {
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({"type": "tick", "v": 1, "source": "synthetic", "symbol": symbol, "quote": "USD",
           "price": format!("{price:.2}"), "exchange_time": t, "received_at": t})
    .to_string()
}

/// Send an SSE request on `stream` and return it without reading anything.
async fn sse_request(mut stream: tokio::net::TcpStream) -> tokio::net::TcpStream {
    stream.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    stream
}

#[tokio::test]
async fn every_dashboard_query_and_alert_rule_works_against_the_real_processes() {
    let env = TestEnv::get();
    let prom = env.prometheus_url().to_string();
    let client = env.kube_client().await;
    install_crd(&client).await;

    // ---- the operator reconciles one pipeline (topics, schema) and fails on another (a quota refuses its writes)
    let ns = namespace(&client, "obs").await;
    let refused_ns = namespace(&client, "obs-quota").await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "db"}, "stringData": {"url": env.timescale_url()}}))
            .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
    let quota: ResourceQuota = serde_json::from_value(json!({"metadata": {"name": "nothing"}, "spec": {"hard": {
        "configmaps": "0", "services": "0", "count/deployments.apps": "0"}}}))
    .unwrap();
    Api::<ResourceQuota>::namespaced(client.clone(), &refused_ns).create(&PostParams::default(), &quota).await.unwrap();
    let mut opts = OperatorOptions::watching(&ns);
    opts.namespaces.push(refused_ns.clone());
    opts.resync = "20s".into();
    let operator = Operator::start(opts).await;
    // Two sources: the synthetic market, and Kraken's WebSocket protocol from a stand-in sending heartbeats (the
    // synthetic source has no payloads, so it sets neither payloads_received nor last_message_timestamp_seconds).
    let heartbeat = Step::Every(Duration::from_millis(500), r#"{"channel":"heartbeat"}"#.into());
    let kraken = WsStandIn::start(vec![vec![heartbeat]]).await;
    let spec = json!({
        "sources": [{"kind": "synthetic", "rate": 50, "seed": 8}, {"kind": "kraken", "baseUrl": kraken.url()}],
        "timescale": {"connectionSecretRef": {"name": "db", "key": "url"}},
        "consumer": {"batchSize": 200, "flushInterval": "200ms"},
        "gateway": {"maxClients": 2},
    });
    create(&client, &ns, &pipeline("obs", spec)).await;
    create(&client, &refused_ns, &pipeline("refused", json!({}))).await;
    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    wait_for("TopicsReady and StorageReady", Duration::from_secs(120), || async {
        let t = condition(&pipelines, "obs", "TopicsReady").await?;
        let s = condition(&pipelines, "obs", "StorageReady").await?;
        (t == "True" && s == "True").then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let rendered = cms.get("obs-config").await.unwrap().data.unwrap()["config.yaml"].clone();
    let cfg = WorkerConfig::from_yaml(&rendered).expect("the operator's rendered config parses");

    // ---- the workers, on the operator's configuration; plus a scraper replica that cannot reach Kafka
    let dir = env.state_dir().join(unique("observability"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, cfg.to_yaml()).unwrap();
    let mut broken = cfg.clone();
    broken.kafka.bootstrap_servers = "127.0.0.1:1".into();
    broken.sources.truncate(1);
    broken.sources[0].rate = Some(5000);
    let broken_config = dir.join("broken.yaml");
    std::fs::write(&broken_config, broken.to_yaml()).unwrap();
    let db_env = cfg.storage.as_ref().expect("storage configured").url_env.clone();
    let scraper = start_worker("scraper", &config, &[], &dir.join("scraper.log"));
    let broken_scraper = start_worker("scraper", &broken_config, &[], &dir.join("broken-scraper.log"));
    let consumer = start_worker("consumer", &config, &[(&db_env, env.timescale_url())], &dir.join("consumer.log"));
    // The gateway reads the database too (the history API), as its pod spec gives it.
    let gateway = start_worker(
        "gateway",
        &config,
        &[("CRYPTOVIZ_GATEWAY_CLIENT_QUEUE", "16"), (&db_env, env.timescale_url())],
        &dir.join("gateway.log"),
    );
    let workers = [("scraper", &scraper), ("scraper", &broken_scraper), ("consumer", &consumer), ("gateway", &gateway)];
    for (name, w) in workers {
        let url = format!("{}/metrics", w.url);
        wait_for(&format!("{name} /metrics"), Duration::from_secs(30), || http::body(&url)).await;
    }

    // ---- Prometheus scrapes them: targets labelled as a PodMonitor with the documented relabelling labels them
    let op_ns = format!("{ns}-system");
    let mut targets: Vec<Value> = workers
        .iter()
        .map(|(component, w)| {
            json!({"targets": [w.url.trim_start_matches("http://")], "labels": {
                "namespace": ns, "pipeline": "obs", "job": format!("{ns}/obs-workers"), "component": component}})
        })
        .collect();
    targets.push(json!({"targets": [operator.url.trim_start_matches("http://")],
                        "labels": {"namespace": op_ns, "job": "cryptoviz-operator"}}));
    let job = unique("observability");
    let _targets = PromFile::write(
        PathBuf::from(env.var("CRYPTOVIZ_PROMETHEUS_TARGETS_DIR")).join(format!("{job}.json")),
        &Value::Array(targets).to_string(),
        None,
    );
    let up_query = format!(r#"up{{namespace=~"{ns}|{op_ns}"}}"#);
    wait_for("every target up in Prometheus", Duration::from_secs(60), || async {
        let r = query(&prom, &up_query).await.ok()?;
        (r.len() == 5 && r.iter().all(|s| s["value"][1] == "1")).then_some(())
    })
    .await;

    // ---- provoke what only exists once it happens
    // A record the consumer cannot parse goes to the dead-letter topic.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", env.kafka_bootstrap()).set("linger.ms", "0").create().unwrap();
    producer
        .send(FutureRecord::to(&cfg.kafka.raw_topic).key("BTC").payload("this is not JSON"), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    // Gateway: a client that reads, one that never reads (tiny receive window), and one beyond maxClients = 2.
    let gw_addr = gateway.url.trim_start_matches("http://").to_string();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let slow = sse_request(sock.connect(gw_addr.parse().unwrap()).await.unwrap()).await;
    let fast = sse_request(tokio::net::TcpStream::connect(&gw_addr).await.unwrap()).await;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(fast.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let gw_metrics = format!("{}/metrics", gateway.url);
    wait_for("two SSE clients", Duration::from_secs(20), || async {
        (metrics::sum(&http::body(&gw_metrics).await?, "cryptoviz_gateway_clients", &[]) == 2.0).then_some(())
    })
    .await;
    let third = sse_request(tokio::net::TcpStream::connect(&gw_addr).await.unwrap()).await;
    let mut status = String::new();
    BufReader::new(third).read_line(&mut status).await.unwrap();
    assert!(status.contains(" 503 "), "a client beyond maxClients is refused: {status}");
    // A burst on the stream topic fills the slow client's queue: the gateway drops it.
    let burst = (0..3000).map(|i| {
        let sym = ["BTC", "ETH"][i % 2];
        let payload = tick(sym, 100.0 + i as f64);
        let p = producer.clone();
        let topic = cfg.kafka.stream_topic.clone();
        async move {
            p.send(FutureRecord::to(&topic).key(sym).payload(&payload), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(burst).await {
        r.unwrap();
    }
    wait_for("the gateway to drop the slow client", Duration::from_secs(60), || async {
        let m = http::body(&gw_metrics).await?;
        (metrics::sum(&m, "cryptoviz_gateway_clients_dropped_total", &[("reason", "slow")]) >= 1.0).then_some(())
    })
    .await;
    drop(slow);
    let cons_metrics = format!("{}/metrics", consumer.url);
    wait_for("a dead letter and rows written", Duration::from_secs(60), || async {
        let m = http::body(&cons_metrics).await?;
        (metrics::sum(&m, "cryptoviz_consumer_dlq_messages_total", &[]) >= 1.0
            && metrics::sum(&m, "cryptoviz_consumer_rows_written_total", &[]) > 0.0
            && metrics::sum(&m, "cryptoviz_consumer_lag_messages", &[]) >= 0.0
            && m.contains("cryptoviz_consumer_lag_messages{"))
        .then_some(())
    })
    .await;
    wait_for("reconcile errors in the quota-bound namespace", Duration::from_secs(60), || async {
        (operator.metric_sum("cryptoviz_operator_reconcile_errors_total", &[("reason", "kube_api")]).await > 0.0)
            .then_some(())
    })
    .await;
    // Records the broker-less replica buffered time out after the producer's 30 s message timeout.
    let broken_metrics = format!("{}/metrics", broken_scraper.url);
    wait_for("delivery errors and drops from the broker-less scraper", Duration::from_secs(120), || async {
        let m = http::body(&broken_metrics).await?;
        (metrics::sum(&m, "cryptoviz_scraper_producer_delivery_errors_total", &[]) > 0.0
            && metrics::sum(&m, "cryptoviz_scraper_messages_dropped_total", &[("reason", "queue_full")]) > 0.0)
            .then_some(())
    })
    .await;

    // ---- what the processes export
    let mut exported = BTreeSet::new();
    for url in [&scraper.url, &broken_scraper.url, &consumer.url, &gateway.url, &operator.url] {
        let text = http::body(&format!("{url}/metrics")).await.expect("/metrics");
        exported.extend(metrics::parse(&text).into_iter().map(|s| s.name));
    }
    exported.insert("up".to_string());

    // ---- every dashboard query returns data for this pipeline; every metric it names is exported
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, d) in dashboards() {
        let namespace = if file.contains("operator") { &op_ns } else { &ns };
        for (title, e) in exprs(&d) {
            for m in metric_names(&e) {
                if !exported.contains(&m) {
                    problems.push(format!("{file}: {title}: {m} is exported by no process"));
                }
            }
            let q = e.replace("$namespace", namespace).replace("$pipeline", "obs").replace("$__rate_interval", "1m");
            pending.insert(format!("{file}: {title}: {q}"), q);
        }
        // Variables resolve to this pipeline.
        for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
            let def = v["definition"].as_str().unwrap().replace("$namespace", namespace);
            let inner = def.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap();
            let (selector, label) = inner.rsplit_once(", ").unwrap();
            let want = if v["name"] == "pipeline" { "obs" } else { namespace.as_str() };
            let path = format!("/api/v1/label/{label}/values");
            let got = wait_for(&format!("{file}: ${} to list {want}", v["name"]), Duration::from_secs(30), || async {
                let body = prom_get(&prom, &path, &[("match[]", selector)]).await?;
                let values = body["data"].as_array()?.clone();
                values.iter().any(|x| x == want).then_some(values)
            })
            .await;
            assert!(!got.is_empty());
        }
    }
    // Rate windows need a minute of samples: poll every query until it has data, up to a deadline.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut errors = BTreeMap::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut done = Vec::new();
        for (what, q) in &pending {
            match query(&prom, q).await {
                Ok(r) if !r.is_empty() => done.push(what.clone()),
                Ok(_) => {}
                Err(e) => {
                    errors.insert(what.clone(), e);
                }
            }
        }
        for w in done {
            pending.remove(&w);
            errors.remove(&w);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    problems.extend(pending.keys().map(|w| format!("no data: {w} ({})", errors.get(w).map_or("empty", |e| e))));

    // ---- alert rules: valid PromQL on this Prometheus, naming only exported metrics
    for r in alert_rules() {
        let name = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().unwrap();
        for m in metric_names(expr) {
            if !exported.contains(&m) {
                problems.push(format!("alert {name}: {m} is exported by no process"));
            }
        }
        if let Err(e) = query(&prom, expr).await {
            problems.push(format!("alert {name}: {e}"));
        }
    }
    // The not-ready alert's selector sees this pipeline under its own namespace, whatever the target's namespace.
    let not_ready = alert_rules().into_iter().find(|r| r["alert"] == "CryptoVizPipelineNotReady").unwrap();
    let selector = not_ready["expr"].as_str().unwrap().trim_end().strip_suffix("== 0").expect("`… == 0`").to_string();
    let seen = wait_for("the pipeline's readiness under its namespace", Duration::from_secs(60), || async {
        let r = query(&prom, &selector).await.ok()?;
        r.into_iter().find(|s| s["metric"]["namespace"] == ns.as_str() && s["metric"]["pipeline"] == "obs")
    })
    .await;
    assert!(seen["value"][1] == "1" || seen["value"][1] == "0");

    // ---- the rule file loads into this Prometheus and every rule evaluates without error
    let rules_file = PathBuf::from(env.var("CRYPTOVIZ_PROMETHEUS_RULES_DIR")).join(format!("{job}.yml"));
    let text = std::fs::read_to_string(repo_root().join("dashboards/alerts.rules.yaml")).unwrap();
    let reload = format!("{prom}/-/reload");
    let _rules = PromFile::write(rules_file.clone(), &text, Some(reload.clone()));
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", &reload]).output();
    let code = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    assert_eq!(code, "200", "Prometheus refused to load dashboards/alerts.rules.yaml");
    let file = rules_file.to_string_lossy().into_owned();
    let loaded = wait_for("every rule evaluated", Duration::from_secs(30), || async {
        let body = prom_get(&prom, "/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .filter(|g| g["file"] == file.as_str())
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (rules.len() == alert_rules().len() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    })
    .await;
    for r in &loaded {
        if r["health"] != "ok" {
            problems.push(format!("alert {} does not evaluate: {}", r["name"], r["lastError"]));
        }
    }

    drop(reader);
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
