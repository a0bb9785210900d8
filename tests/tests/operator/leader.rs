use std::time::Duration;

use cryptoviz_tests::operator::{Operator, OperatorOptions, create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

/// Two operator processes: one holds the Lease and reconciles; when it is killed, the other takes over.
#[tokio::test]
async fn one_leader_and_the_standby_takes_over() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "leader").await;
    let opts = |id: &str| {
        let mut o = OperatorOptions::watching(&ns);
        o.identity = Some(id.into());
        o.extra_args = vec![
            "--leader-elect".into(),
            "--lease-namespace".into(),
            ns.clone(),
            "--lease-duration".into(),
            "3s".into(),
        ];
        o
    };
    let mut a = Operator::start(opts("op-a")).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = || async { leases.get_opt("cryptoviz-operator").await.ok().flatten()?.spec?.holder_identity };
    wait_for("op-a to lead", Duration::from_secs(30), || async { (holder().await? == "op-a").then_some(()) }).await;
    let b = Operator::start(opts("op-b")).await;
    assert_eq!(b.metric_sum("cryptoviz_operator_leader", &[]).await, 0.0, "the standby does not lead");
    assert_eq!(a.metric_sum("cryptoviz_operator_leader", &[]).await, 1.0);

    create(&client, &ns, &pipeline("led", serde_json::json!({}))).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("the leader to reconcile", Duration::from_secs(30), || async {
        deployments.get_opt("led-scraper").await.ok().flatten()
    })
    .await;
    assert_eq!(b.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await, 0.0, "the standby reconciled");

    a.kill();
    wait_for("op-b to take over the lease", Duration::from_secs(30), || async {
        (holder().await? == "op-b").then_some(())
    })
    .await;
    wait_for("op-b to reconcile", Duration::from_secs(30), || async {
        (b.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await > 0.0).then_some(())
    })
    .await;
    assert_eq!(b.metric_sum("cryptoviz_operator_leader", &[]).await, 1.0);
}
