//! Prometheus Operator integration: without the monitoring.coreos.com CRDs the operator creates no
//! PodMonitor and the pipeline stays Ready; with them, each pipeline gets a PodMonitor for its workers.
//! A binary of its own: it installs and removes a cluster-wide CRD.

use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{Operator, OperatorOptions, create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};

const CRD: &str = "podmonitors.monitoring.coreos.com";

fn podmonitors(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "podmonitors"))
}

async fn condition(api: &Api<CryptoPipeline>, name: &str, type_: &str) -> Option<(String, String)> {
    let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

/// A minimal stand-in for the Prometheus Operator's PodMonitor CRD (same group, version, kind and scope).
fn podmonitor_crd() -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD},
        "spec": {
            "group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor", "listKind": "PodMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn pod_monitors_follow_the_prometheus_operator_crds() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let _ = crds.delete(CRD, &DeleteParams::default()).await;
    wait_for("no PodMonitor CRD", Duration::from_secs(30), || async {
        crds.get_opt(CRD).await.ok()?.is_none().then_some(())
    })
    .await;

    // Without the CRDs: no PodMonitor, no error, Ready.
    let ns = namespace(&client, "monitoring").await;
    {
        let _op = Operator::start(OperatorOptions::watching(&ns)).await;
        create(&client, &ns, &pipeline("plain", serde_json::json!({}))).await;
        let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
        wait_for("Ready=True without the CRDs", Duration::from_secs(60), || async {
            (condition(&api, "plain", "Ready").await?.0 == "True").then_some(())
        })
        .await;
        assert_eq!(condition(&api, "plain", "MonitoringReady").await.unwrap(), ("True".into(), "NotRequired".into()));
    }

    // With the CRDs: a fresh operator creates a PodMonitor per pipeline, labelled as asked.
    crds.patch(CRD, &PatchParams::apply("cryptoviz-tests"), &Patch::Apply(&podmonitor_crd())).await.unwrap();
    wait_for("the PodMonitor API", Duration::from_secs(30), || async {
        podmonitors(&client, &ns).list(&Default::default()).await.ok().map(|_| ())
    })
    .await;
    let _op = Operator::start(OperatorOptions::watching(&ns)).await;
    let extra = serde_json::json!({"monitoring": {"labels": {"release": "kube-prometheus"}}});
    create(&client, &ns, &pipeline("watched", extra)).await;
    let pm = wait_for("a PodMonitor for the pipeline", Duration::from_secs(60), || async {
        podmonitors(&client, &ns).get_opt("watched-workers").await.ok().flatten()
    })
    .await;
    assert_eq!(pm.metadata.labels.as_ref().unwrap()["release"], "kube-prometheus");
    let endpoint = &pm.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "pipeline", "dashboards select on a `pipeline` label");
    assert_eq!(pm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "watched");
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    wait_for("MonitoringReady=True PodMonitorCreated and Ready", Duration::from_secs(60), || async {
        let m = condition(&api, "watched", "MonitoringReady").await?;
        let r = condition(&api, "watched", "Ready").await?;
        (m == ("True".into(), "PodMonitorCreated".into()) && r.0 == "True").then_some(())
    })
    .await;

    // Disabled: removed.
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"spec": {"monitoring": {"serviceMonitor": "disabled"}}})),
    )
    .await
    .unwrap();
    wait_for("the PodMonitor removed", Duration::from_secs(60), || async {
        podmonitors(&client, &ns).get_opt("watched-workers").await.ok()?.is_none().then_some(())
    })
    .await;
    crds.delete(CRD, &DeleteParams::default()).await.unwrap();
}
