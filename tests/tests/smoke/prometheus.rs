use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cryptoviz_tests::{TestEnv, unique, wait_for};

/// Prometheus scrapes an endpoint of ours (added through its file service discovery) and its query API
/// returns the value we export.
#[tokio::test]
async fn prometheus_scrapes_our_endpoint_and_answers_queries() {
    let env = TestEnv::get();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/metrics",
        get(|| async { "# TYPE cryptoviz_smoke_value gauge\ncryptoviz_smoke_value{kind=\"smoke\"} 42\n" }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let job = unique("smoke");
    let targets = std::path::PathBuf::from(env.var("CRYPTOVIZ_PROMETHEUS_TARGETS_DIR")).join(format!("{job}.json"));
    let doc = serde_json::json!([{"targets": [addr.to_string()], "labels": {"smoke_job": job}}]);
    std::fs::write(&targets, doc.to_string()).unwrap();

    let url = format!("{}/api/v1/query", env.prometheus_url());
    let query = format!("cryptoviz_smoke_value{{smoke_job=\"{job}\"}}");
    let value = wait_for("Prometheus to scrape our endpoint", Duration::from_secs(60), || async {
        let body = http_get_json(&url, &[("query", &query)]).await?;
        let v = body["data"]["result"][0]["value"][1].as_str()?.to_string();
        Some(v)
    })
    .await;
    assert_eq!(value, "42");
    std::fs::remove_file(&targets).unwrap();
}

/// A minimal HTTP GET with a query string, returning JSON (no HTTP client crate needed for a test).
async fn http_get_json(url: &str, params: &[(&str, &str)]) -> Option<serde_json::Value> {
    let out = tokio::process::Command::new("curl")
        .arg("-sfG")
        .arg(url)
        .args(params.iter().flat_map(|(k, v)| ["--data-urlencode".to_string(), format!("{k}={v}")]))
        .output()
        .await
        .ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}
