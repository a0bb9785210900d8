//! Operator at scale: apply N CryptoPipelines (default 1000) to the test control plane and report the time
//! until every child exists, the time until every pipeline is Ready, reconciles per second, API writes per
//! no-op resync (target 0) and the operator's peak RSS (target ≤ 64 MiB).
//!
//! Needs the test environment (`tests/env/up k8s kafka`) and a built operator; it uses the release binary
//! when `target/release/cryptoviz-operator` exists:
//!
//! ```sh
//! cargo build --release -p cryptoviz-operator
//! PIPELINES=1000 cargo bench -p cryptoviz-tests --bench operator_scale
//! ```

use std::time::{Duration, Instant};

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{Operator, OperatorOptions, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, repo_root, wait_for};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, PostParams};

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("PIPELINES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let env = TestEnv::get();
    let client = env.kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "bench").await;
    if std::env::var_os("CRYPTOVIZ_PROFILE").is_none() && repo_root().join("target/release/cryptoviz-operator").exists()
    {
        // SAFETY: no other thread reads the environment yet.
        unsafe { std::env::set_var("CRYPTOVIZ_PROFILE", "release") };
    }
    let mut opts = OperatorOptions::watching(&ns);
    opts.resync = "60s".into();
    let op = Operator::start(opts).await;
    println!("operator binary: {}", op.binary.display());

    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                // One partition per topic keeps 3 × N topics within what one test broker holds.
                let spec = serde_json::json!({"kafka": {"deletionPolicy": "Delete", "topics": {
                    "raw": {"partitions": 1}, "stream": {"partitions": 1}, "dlq": {"partitions": 1}}}});
                api.create(&PostParams::default(), &pipeline(&format!("p{i:04}"), spec)).await.unwrap();
            }
        })
        .await;
    let applied = t0.elapsed();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=cryptoviz-operator");
    wait_for("every child to exist", Duration::from_secs(1800), || async {
        let d = deployments.list_metadata(&lp).await.ok()?.items.len();
        let c = config_maps.list_metadata(&lp).await.ok()?.items.len();
        (d >= 2 * n && c >= n).then_some(())
    })
    .await;
    let children = t0.elapsed();
    wait_for("every pipeline to be Ready", Duration::from_secs(1800), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let ready = list.items.iter().filter(|p| {
            p.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        (ready.count() == n).then_some(())
    })
    .await;
    let ready = t0.elapsed();
    let reconciles = op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await;
    let rate = reconciles / ready.as_secs_f64();

    // No-op resyncs: wait until every pipeline has been resynced at least once more, count the writes.
    let writes0 = op.metric_sum("cryptoviz_operator_api_writes_total", &[]).await;
    let r0 = op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await;
    wait_for("a full round of resyncs", Duration::from_secs(600), || async {
        (op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await >= r0 + n as f64).then_some(())
    })
    .await;
    let writes = op.metric_sum("cryptoviz_operator_api_writes_total", &[]).await - writes0;
    let rss = peak_rss_kib(op.pid());

    println!("pipelines                      {n}");
    println!("all applied                    {:.1} s", applied.as_secs_f64());
    println!("every child exists             {:.1} s", children.as_secs_f64());
    println!("every pipeline Ready           {:.1} s", ready.as_secs_f64());
    println!("reconciles per second          {rate:.1} ({reconciles} reconciles until all Ready)");
    println!("API writes per no-op resync    {:.3} ({writes} writes over {n} resyncs)", writes / n as f64);
    println!("operator peak RSS              {:.1} MiB", rss as f64 / 1024.0);

    // Clean up: the finalizers delete the topics.
    let _ = api.delete_collection(&Default::default(), &ListParams::default()).await;
    wait_for("pipelines deleted", Duration::from_secs(1800), || async {
        api.list_metadata(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
}
