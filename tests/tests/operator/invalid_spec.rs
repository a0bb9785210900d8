use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{Operator, OperatorOptions, create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;

/// A spec the schema accepts but that is invalid at run time (compression starting after retention drops
/// the chunk: CEL cannot compare `60d` with `30d`) gets `Ready=False` with reason `InvalidSpec` naming the
/// field, in the status and in `kubectl get`'s columns, and a Warning event; nothing is applied.
#[tokio::test]
async fn an_invalid_at_run_time_spec_shows_invalid_spec_in_status_columns_and_events() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "invalid-spec").await;
    let op = Operator::start(OperatorOptions::watching(&ns)).await;
    let spec = serde_json::json!({"timescale": {
        "connectionSecretRef": {"name": "db", "key": "url"},
        "compressAfter": "60d", "retention": {"ticks": "90d", "trades": "30d"}}});
    create(&client, &ns, &pipeline("late-compression", spec)).await;

    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let ready = wait_for("Ready=False with InvalidSpec", Duration::from_secs(30), || async {
        let c = api.get("late-compression").await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.reason == "InvalidSpec").then_some(c)
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("spec.timescale.compressAfter") && ready.message.contains("retention.trades"),
        "{}",
        ready.message
    );

    // What `kubectl get cryptopipelines` prints: the server-side Table with the CRD's printer columns.
    let req =
        http::Request::get(format!("/apis/cryptoviz.io/v1alpha1/namespaces/{ns}/cryptopipelines/late-compression"))
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())
            .unwrap();
    let table: serde_json::Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    let cells = table["rows"][0]["cells"].as_array().unwrap();
    let cell = |name: &str| cells[columns.iter().position(|c| *c == name).unwrap()].as_str().unwrap().to_owned();
    assert_eq!((cell("Ready"), cell("Reason")), ("False".to_owned(), "InvalidSpec".to_owned()), "{table}");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = wait_for("a Warning event InvalidSpec", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("InvalidSpec"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.message.unwrap_or_default().contains("spec.timescale.compressAfter"));

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty(), "nothing is applied");
    assert!(op.metric_sum("cryptoviz_operator_reconcile_errors_total", &[("reason", "invalid_spec")]).await > 0.0);
}
