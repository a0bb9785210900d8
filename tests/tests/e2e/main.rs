//! End to end, the way a user runs the product: the operator (a local process) reconciles a CryptoPipeline
//! taken from `manifests/examples/`, and the workers run exactly as their pod specs say (command, args,
//! environment with Secrets resolved, mounted ConfigMap). Data must flow from the sources through Kafka into
//! TimescaleDB and out to an SSE client; a spec edit must reach every part; deletion must clean up.

use std::collections::HashSet;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::http;
use cryptoviz_tests::operator::{Operator, OperatorOptions, install_crd, namespace};
use cryptoviz_tests::podspec::{PodProcess, run_deployment};
use cryptoviz_tests::standins::fixture;
use cryptoviz_tests::standins::http::{HttpStandIn, Reply};
use cryptoviz_tests::{TestEnv, repo_root, unique, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message as _};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::io::AsyncBufReadExt;

const T: Duration = Duration::from_secs(120);
const COMPONENTS: [&str; 3] = ["scraper", "consumer", "gateway"];

/// The example manifest, edited as a user would for this cluster: our broker, a synthetic market beside a
/// CoinGecko source (served by the stand-in), a low alert threshold, and deletionPolicy Delete.
fn user_pipeline(coingecko_url: &str) -> CryptoPipeline {
    let text = std::fs::read_to_string(repo_root().join("manifests/examples/coingecko-kraken.yaml")).unwrap();
    let mut p: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let spec = &mut p["spec"];
    spec["sources"] = serde_json::json!([
        {"kind": "synthetic", "rate": 20, "seed": 7},
        {"kind": "coingecko", "pollInterval": "1s", "baseUrl": coingecko_url}
    ]);
    spec["kafka"]["bootstrapServers"] = TestEnv::get().kafka_bootstrap().into();
    spec["kafka"]["deletionPolicy"] = "Delete".into();
    spec["timescale"]["deletionPolicy"] = "Delete".into();
    spec["alerts"] = serde_json::json!({"thresholdPercent": 0.05, "window": "1m"});
    serde_json::from_value(p).unwrap()
}

async fn condition(api: &Api<CryptoPipeline>, name: &str, type_: &str) -> Option<(String, String)> {
    let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

/// Start the workers from their pod specs: the gateway first (it tails the stream topic from its end), and
/// once it is ready, an SSE client, then the consumer and the scraper. Returns the pods (gateway, consumer,
/// scraper) and the SSE reader.
async fn start_workers(client: &Client, ns: &str, name: &str) -> (Vec<PodProcess>, tokio::task::JoinHandle<()>) {
    let dir = TestEnv::get().state_dir().join("e2e-pods");
    std::fs::create_dir_all(&dir).unwrap();
    let gateway = run_deployment(client, ns, &format!("{name}-gateway"), &dir).await;
    wait_answers(&gateway, "/ready").await;
    let sse = tokio::spawn(sse_sees_update_and_alert(gateway.url.clone()));
    let mut pods = vec![gateway];
    for c in ["consumer", "scraper"] {
        pods.push(run_deployment(client, ns, &format!("{name}-{c}"), &dir).await);
    }
    for p in &pods {
        wait_answers(p, "/health").await;
    }
    (pods, sse)
}

/// Wait until a worker answers `path`; a worker that exits (a broken contract) or never answers fails the
/// test with its log.
async fn wait_answers(p: &PodProcess, path: &str) {
    let url = format!("{}{path}", p.url);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        assert!(p.running(), "a worker exited:\n{}", p.log_text());
        if http::body(&url).await.is_some() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered; the worker's log:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Consume a topic from the beginning until `done` says every expectation is met.
async fn consume_until(topic: &str, mut done: impl FnMut(&str, &serde_json::Value) -> bool) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", TestEnv::get().kafka_bootstrap())
        .set("group.id", unique("e2e-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out reading {topic}"))
            .unwrap();
        let key = std::str::from_utf8(m.key().unwrap_or_default()).unwrap().to_string();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        if done(&key, &v) {
            return;
        }
    }
}

async fn count(pool: &PgPool, sql: String) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await.unwrap()
}

/// Read the gateway's SSE stream until a `crypto_update` and an `alert` have arrived.
async fn sse_sees_update_and_alert(gateway: String) {
    let mut child = tokio::process::Command::new("curl")
        .args(["-sN", &format!("{gateway}/stream?symbols=BTC,ETH,SOL,ADA")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = HashSet::new();
    let mut ids = 0;
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("id:") {
                ids += 1;
            }
            if let Some(data) = line.strip_prefix("data: ") {
                let v: serde_json::Value = serde_json::from_str(data).unwrap();
                seen.insert(v["type"].as_str().unwrap().to_string());
                if seen.contains("crypto_update") && seen.contains("alert") {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(T, read).await.unwrap_or_else(|_| panic!("SSE saw only {seen:?}"));
    assert!(ids > 0, "events carry ids");
}

#[tokio::test]
async fn a_pipeline_applied_like_a_user_streams_real_data_end_to_end() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "e2e").await;
    let mut opts = OperatorOptions::watching(&ns);
    opts.resync = "3s".into();
    let _operator = Operator::start(opts).await;
    // CoinGecko's prices hold for 20 polls, then move by more than the alert threshold (the last reply repeats).
    let mut replies = vec![Reply::json(fixture("coingecko/prices.json")); 20];
    replies.push(Reply::json(fixture("coingecko/prices_moved.json")));
    let coingecko = HttpStandIn::start(replies).await;

    // 1. The Secret and the pipeline, as a user applies them.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "timescale"}, "stringData": {"url": env.timescale_url()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let p = pipelines.create(&PostParams::default(), &user_pipeline(&coingecko.url())).await.unwrap();
    let name = "markets";
    assert_eq!(p.metadata.name.as_deref(), Some(name));

    // 2. Topics, schema and Deployments exist.
    wait_for("TopicsReady and StorageReady", T, || async {
        let t = condition(&pipelines, name, "TopicsReady").await?;
        let s = condition(&pipelines, name, "StorageReady").await?;
        (t.0 == "True" && s == ("True".into(), "TimescaleDB".into())).then_some(())
    })
    .await;
    let status = pipelines.get(name).await.unwrap().status.unwrap();
    let topics = status.topics.clone().unwrap();
    let schema = status.schema.clone().unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for c in COMPONENTS {
        wait_for(&format!("the {c} Deployment"), T, || async {
            deployments.get_opt(&format!("{name}-{c}")).await.ok().flatten()
        })
        .await;
    }

    // 3. The workers, exactly as their pod specs say.
    let (pods, sse) = start_workers(&client, &ns, name).await;

    // 4. Data flows: Kafka, TimescaleDB, SSE; every worker answers; the pipeline is Ready.
    let mut kinds = HashSet::new();
    consume_until(&topics.raw, |key, v| {
        assert_eq!(key, v["symbol"].as_str().unwrap(), "records are keyed by symbol");
        kinds.insert((v["type"].as_str().unwrap().to_string(), v["source"].as_str().unwrap().to_string()));
        ["tick", "trade"].iter().all(|t| kinds.contains(&(t.to_string(), "synthetic".into())))
            && kinds.contains(&("tick".into(), "coingecko".into()))
    })
    .await;
    let db = PgPoolOptions::new().max_connections(2).connect(env.timescale_url()).await.unwrap();
    wait_for("ticks and trades in TimescaleDB", T, || async {
        let ticks = count(&db, format!("SELECT count(*) FROM {schema}.ticks")).await;
        let trades = count(&db, format!("SELECT count(*) FROM {schema}.trades")).await;
        (ticks > 0 && trades > 0).then_some(())
    })
    .await;
    wait_for("the CoinGecko tick stored once, exact", T, || async {
        let price: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT price::text FROM {schema}.ticks WHERE source = 'coingecko' AND symbol = 'BTC' AND time = to_timestamp(1711356300)"
        )))
        .fetch_optional(&db)
        .await
        .ok()?;
        (price? == "67187.33").then_some(())
    })
    .await;
    sqlx::query(AssertSqlSafe(format!("CALL refresh_continuous_aggregate('{schema}.candles_1m', NULL, NULL)")))
        .execute(&db)
        .await
        .unwrap();
    assert!(
        count(&db, format!("SELECT count(*) FROM {schema}.candles_1m")).await > 0,
        "candles computed from the trades"
    );
    sse.await.expect("the SSE client saw a crypto_update and an alert");
    for p in &pods {
        assert!(http::body(&format!("{}/metrics", p.url)).await.unwrap().contains("# TYPE"), "{} /metrics", p.url);
        assert!(http::body(&format!("{}/health", p.url)).await.is_some());
    }
    wait_for("Ready=True with every condition True", T, || async {
        let s = pipelines.get(name).await.ok()?.status?;
        s.conditions.iter().all(|c| (c.type_ == "Paused") != (c.status == "True")).then_some(())
    })
    .await;

    // 5. Edit the spec: a new symbol and a new retention reach Kafka, TimescaleDB and the workers.
    let patch = serde_json::json!({"spec": {"symbols": ["BTC", "ETH", "SOL", "ADA", "DOT"], "timescale": {"retention": {"ticks": "20d"}}}});
    pipelines.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let old_hash = pods[0].config_hash.clone();
    wait_for("a rollout (new config hash) on every worker", T, || async {
        for c in COMPONENTS {
            let d = deployments.get(&format!("{name}-{c}")).await.ok()?;
            let h = d.spec?.template.metadata?.annotations?.get("cryptoviz.io/config-hash")?.clone();
            if h == old_hash {
                return None;
            }
        }
        Some(())
    })
    .await;
    for p in &pods {
        assert!(p.running(), "a worker died: {}", p.log_text());
    }
    drop(pods); // a rollout replaces the pods
    let (pods, _sse) = start_workers(&client, &ns, name).await;
    assert_ne!(pods[0].config_hash, old_hash);
    consume_until(&topics.raw, |_, v| v["symbol"] == "DOT").await;
    wait_for("the ticks retention policy at 20 days", T, || async {
        let drop_after: String = sqlx::query_scalar(
            "SELECT config->>'drop_after' FROM timescaledb_information.jobs \
             WHERE proc_name = 'policy_retention' AND hypertable_schema = $1 AND hypertable_name = 'ticks'",
        )
        .bind(&schema)
        .fetch_one(&db)
        .await
        .ok()?;
        (drop_after == "20 days").then_some(())
    })
    .await;
    wait_for("DOT rows in TimescaleDB", T, || async {
        (count(&db, format!("SELECT count(*) FROM {schema}.ticks WHERE symbol = 'DOT'")).await > 0).then_some(())
    })
    .await;
    drop(pods);

    // 6. Delete with deletionPolicy Delete: topics and schema removed, finalizer released.
    pipelines.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for("the pipeline gone (finalizer released)", T, || async {
        pipelines.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", env.kafka_bootstrap()).create().unwrap();
    wait_for("the topics deleted", T, || async {
        let md = admin.inner().fetch_metadata(None, Duration::from_secs(10)).ok()?;
        (!md.topics().iter().any(|t| t.name() == topics.raw || t.name() == topics.stream)).then_some(())
    })
    .await;
    let schemas =
        count(&db, format!("SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{schema}'")).await;
    assert_eq!(schemas, 0, "the schema is dropped");
}
