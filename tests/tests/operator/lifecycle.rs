use std::collections::BTreeMap;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{Operator, OperatorOptions, create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

const HASH: &str = "cryptoviz.io/config-hash";

async fn setup(prefix: &str) -> (Client, String, Operator) {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    let op = Operator::start(OperatorOptions::watching(&ns)).await;
    (client, ns, op)
}

async fn deployment(api: &Api<Deployment>, name: &str) -> Deployment {
    wait_for(&format!("Deployment {name}"), Duration::from_secs(30), || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

fn config_hash(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[HASH].clone()
}

async fn condition(api: &Api<CryptoPipeline>, name: &str, type_: &str) -> Option<(String, String)> {
    let p = api.get(name).await.ok()?;
    let c = p.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((c.status, c.reason))
}

/// Applying a pipeline creates its ConfigMap, Deployments and Service, owned by the pipeline, labelled, locked
/// down and carrying the config hash; and the pipeline becomes Ready once kwok makes the Deployments Available.
#[tokio::test]
async fn apply_creates_owned_locked_down_children_and_becomes_ready() {
    let (client, ns, _op) = setup("apply").await;
    let p = create(&client, &ns, &pipeline("markets", serde_json::json!({}))).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);

    for name in ["markets-scraper", "markets-gateway"] {
        let d = deployment(&deployments, name).await;
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("CryptoPipeline", p.uid().unwrap().as_str(), Some(true))
        );
        assert_eq!(d.labels()["cryptoviz.io/pipeline"], "markets");
        assert_eq!(d.labels()["app.kubernetes.io/managed-by"], "cryptoviz-operator");
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &vec!["ALL".to_string()]);
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        assert_eq!(config_hash(&d).len(), 32);
    }
    assert!(deployments.get_opt("markets-consumer").await.unwrap().is_none(), "no storage, no consumer");
    let cm = config_maps.get("markets-config").await.unwrap();
    assert!(cm.data.unwrap()["config.yaml"].contains(&format!("rawTopic: {ns}.markets.raw")));
    // The Service is applied right after the Deployments: wait for it rather than race the operator.
    wait_for("the gateway Service", Duration::from_secs(30), || async {
        services.get_opt("markets-gateway").await.ok().flatten()
    })
    .await;

    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    wait_for("Ready=True", Duration::from_secs(60), || async {
        (condition(&pipelines, "markets", "Ready").await? == ("True".into(), "AllComponentsReady".into())).then_some(())
    })
    .await;
    let status = pipelines.get("markets").await.unwrap().status.unwrap();
    for c in &status.conditions {
        if c.type_ != "Paused" {
            assert_eq!(c.status, "True", "{c:?}");
        }
        assert_eq!(c.observed_generation, p.metadata.generation);
    }
    assert_eq!(status.topics.unwrap().raw, format!("{ns}.markets.raw"));
    assert_eq!(status.gateway_url.unwrap(), format!("http://markets-gateway.{ns}.svc:8080"));
}

/// Editing the spec rewrites the ConfigMap and changes the pods' config hash, so the Deployment rolls out.
#[tokio::test]
async fn editing_the_spec_rolls_the_pods() {
    let (client, ns, _op) = setup("edit").await;
    create(&client, &ns, &pipeline("roll", serde_json::json!({}))).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let before = config_hash(&deployment(&deployments, "roll-scraper").await);
    // The ReplicaSet is kube-controller-manager's work, queued behind every other test's objects. Wait for the
    // first one before editing: a controller that first looks at the Deployment after the edit creates only
    // the new ReplicaSet, and there is no rollout to see (two CI runs under load failed that way).
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let scraper_sets = ListParams::default().labels("app.kubernetes.io/component=scraper");
    let set_hashes = || async {
        let rs = replicasets.list(&scraper_sets).await.ok()?;
        let hashes = rs.items.iter().filter_map(|r| {
            r.spec.as_ref()?.template.as_ref()?.metadata.as_ref()?.annotations.as_ref()?.get(HASH).cloned()
        });
        Some(hashes.collect::<Vec<_>>())
    };
    wait_for("the first ReplicaSet", Duration::from_secs(90), || async {
        set_hashes().await?.contains(&before).then_some(())
    })
    .await;

    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    pipelines
        .patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"symbols": ["BTC", "ETH", "SOL"]}})),
        )
        .await
        .unwrap();
    let after = wait_for("a new config hash on the scraper", Duration::from_secs(30), || async {
        let h = config_hash(&deployments.get("roll-scraper").await.ok()?);
        (h != before).then_some(h)
    })
    .await;
    assert_ne!(before, after);
    wait_for("a second ReplicaSet with the new config (the rollout)", Duration::from_secs(90), || async {
        let hashes = set_hashes().await?;
        (hashes.contains(&before) && hashes.contains(&after)).then_some(())
    })
    .await;
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cm.get("roll-config").await.unwrap().data.unwrap()["config.yaml"].contains("SOL"));
}

/// Disabling the gateway removes its Deployment and Service; adding storage adds the consumer.
#[tokio::test]
async fn children_follow_the_spec_both_ways() {
    let (client, ns, _op) = setup("toggle").await;
    create(&client, &ns, &pipeline("tog", serde_json::json!({}))).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    deployment(&deployments, "tog-gateway").await;

    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = serde_json::json!({"spec": {
        "gateway": {"enabled": false},
        "timescale": {"connectionSecretRef": {"name": "db", "key": "url"}},
        "consumer": {"replicas": 2}
    }});
    pipelines.patch("tog", &PatchParams::default(), &Patch::Merge(&spec)).await.unwrap();
    wait_for("the gateway Deployment and Service to be removed", Duration::from_secs(30), || async {
        let d = deployments.get_opt("tog-gateway").await.ok()?;
        let s = services.get_opt("tog-gateway").await.ok()?;
        (d.is_none() && s.is_none()).then_some(())
    })
    .await;
    let consumer = deployment(&deployments, "tog-consumer").await;
    let env = consumer.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let db = env.iter().find(|e| e.name == "CRYPTOVIZ_DATABASE_URL").expect("the database URL env var");
    assert!(db.value.is_none(), "the URL is passed by reference, never copied");
    assert_eq!(db.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "db");
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    wait_for("a PDB for the 2-replica consumer", Duration::from_secs(30), || async {
        pdbs.get_opt("tog-consumer").await.ok().flatten()
    })
    .await;
    // The storage Secret does not exist: StorageReady says so, in words a person can act on.
    wait_for("StorageReady=False SecretInvalid", Duration::from_secs(30), || async {
        let (s, r) = condition(&pipelines, "tog", "StorageReady").await?;
        (s == "False" && r == "SecretInvalid").then_some(())
    })
    .await;
}

/// Deleting the pipeline garbage-collects every child through owner references.
#[tokio::test]
async fn deleting_the_pipeline_garbage_collects_children() {
    let (client, ns, _op) = setup("delete").await;
    create(&client, &ns, &pipeline("gone", serde_json::json!({}))).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployment(&deployments, "gone-scraper").await;
    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    pipelines.delete("gone", &DeleteParams::background()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    wait_for("children garbage-collected", Duration::from_secs(60), || async {
        let d = deployments.list(&ListParams::default().labels("cryptoviz.io/pipeline=gone")).await.ok()?;
        let c = cms.list(&ListParams::default().labels("cryptoviz.io/pipeline=gone")).await.ok()?;
        let p = pipelines.get_opt("gone").await.ok()?;
        (d.items.is_empty() && c.items.is_empty() && p.is_none()).then_some(())
    })
    .await;
}

fn versions<K: kube::Resource>(items: &[K]) -> BTreeMap<String, String> {
    items.iter().map(|o| (o.meta().name.clone().unwrap(), o.meta().resource_version.clone().unwrap())).collect()
}

async fn child_versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=cryptoviz-operator");
    let mut v = versions(&Api::<Deployment>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items);
    v.extend(versions(&Api::<ConfigMap>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items));
    v.extend(versions(&Api::<Service>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items));
    v
}

/// Once Ready, a resync with nothing changed writes nothing: no child, no status, no apply counted.
#[tokio::test]
async fn a_resync_with_nothing_changed_makes_zero_writes() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "noop").await;
    let mut opts = OperatorOptions::watching(&ns);
    opts.resync = "1s".into();
    let op = Operator::start(opts).await;
    create(&client, &ns, &pipeline("calm", serde_json::json!({}))).await;
    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    wait_for("Ready=True", Duration::from_secs(60), || async {
        (condition(&pipelines, "calm", "Ready").await?.0 == "True").then_some(())
    })
    .await;
    let reconciles = |m: String| cryptoviz_tests::metrics::sum(&m, "cryptoviz_operator_reconciliations_total", &[]);
    // Let in-flight events settle: wait until several resyncs pass with no write in between.
    let (children, pipeline_rv, writes, seen) =
        wait_for("a quiet period of 3 resyncs", Duration::from_secs(60), || async {
            let w0 = op.metric_sum("cryptoviz_operator_api_writes_total", &[]).await;
            let r0 = reconciles(op.metrics().await);
            let c0 = child_versions(&client, &ns).await;
            let p0 = pipelines.get("calm").await.ok()?.resource_version();
            wait_for("3 more reconciles", Duration::from_secs(20), || async {
                (reconciles(op.metrics().await) >= r0 + 3.0).then_some(())
            })
            .await;
            let w1 = op.metric_sum("cryptoviz_operator_api_writes_total", &[]).await;
            (w1 == w0).then_some((c0, p0, w1, r0))
        })
        .await;
    // Now the assertion proper: more resyncs, still nothing written.
    wait_for("5 more resyncs", Duration::from_secs(30), || async {
        (reconciles(op.metrics().await) >= seen + 8.0).then_some(())
    })
    .await;
    assert_eq!(
        op.metric_sum("cryptoviz_operator_api_writes_total", &[]).await,
        writes,
        "API writes during no-op resyncs"
    );
    assert_eq!(child_versions(&client, &ns).await, children, "children were rewritten");
    assert_eq!(pipelines.get("calm").await.unwrap().resource_version(), pipeline_rv, "the status was rewritten");
}

/// A paused pipeline gets no writes at all but the Paused condition; unpausing resumes.
#[tokio::test]
async fn a_paused_pipeline_gets_no_writes() {
    let (client, ns, op) = setup("pause").await;
    let pipelines: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    create(&client, &ns, &pipeline("still", serde_json::json!({"paused": true}))).await;
    wait_for("Paused=True", Duration::from_secs(30), || async {
        (condition(&pipelines, "still", "Paused").await? == ("True".into(), "ReconciliationPaused".into()))
            .then_some(())
    })
    .await;
    assert!(child_versions(&client, &ns).await.is_empty(), "no children while paused");
    assert_eq!(op.metric_sum("cryptoviz_operator_api_writes_total", &[("kind", "Deployment")]).await, 0.0);

    // The annotation pauses too: unpause the spec but set the annotation.
    let reconciles = op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await;
    let patch = serde_json::json!({"metadata": {"annotations": {"cryptoviz.io/pause-reconciliation": "true"}}, "spec": {"paused": false}});
    pipelines.patch("still", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("a reconcile of the edit", Duration::from_secs(30), || async {
        (op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await > reconciles).then_some(())
    })
    .await;
    assert!(child_versions(&client, &ns).await.is_empty(), "no children while the annotation pauses");

    let patch = serde_json::json!({"metadata": {"annotations": {"cryptoviz.io/pause-reconciliation": null}}});
    pipelines.patch("still", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployment(&deployments, "still-scraper").await;
    wait_for("Paused=False", Duration::from_secs(30), || async {
        (condition(&pipelines, "still", "Paused").await?.0 == "False").then_some(())
    })
    .await;
}
