use std::time::Duration;

use cryptoviz_tests::{TestEnv, unique, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
            }
        }
    }))
    .unwrap()
}

/// The controller-manager creates the ReplicaSet, kwok runs the Pod, the Deployment becomes Available,
/// and deleting the Deployment garbage-collects what it owned.
#[tokio::test]
async fn deployment_becomes_available_and_dependants_are_garbage_collected() {
    let client = TestEnv::get().kube_client().await;
    let ns = unique("smoke-k8s");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap())
        .await
        .unwrap();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let d = deployments.create(&PostParams::default(), &deployment("web")).await.unwrap();

    let rs = wait_for("a ReplicaSet owned by the Deployment", Duration::from_secs(60), || async {
        replicasets.list(&ListParams::default()).await.ok()?.items.into_iter().find(|rs| {
            rs.owner_references().iter().any(|o| o.uid == d.uid().unwrap_or_default() && o.controller == Some(true))
        })
    })
    .await;

    wait_for("a Ready Pod (kwok)", Duration::from_secs(60), || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .find(|p| {
                p.owner_references().iter().any(|o| o.uid == rs.uid().unwrap_or_default())
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|_| ())
    })
    .await;

    wait_for("the Deployment to be Available", Duration::from_secs(60), || async {
        let d = deployments.get("web").await.ok()?;
        let conds = d.status?.conditions?;
        conds.iter().any(|c| c.type_ == "Available" && c.status == "True").then_some(())
    })
    .await;

    deployments.delete("web", &DeleteParams::background()).await.unwrap();
    wait_for("the garbage collector to remove the ReplicaSet and Pods", Duration::from_secs(60), || async {
        let rs_left = replicasets.list(&ListParams::default()).await.ok()?.items.len();
        let pods_left = pods.list(&ListParams::default()).await.ok()?.items.len();
        (rs_left == 0 && pods_left == 0).then_some(())
    })
    .await;

    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}
