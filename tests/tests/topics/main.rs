//! Topics reconciled from the spec on the real Kafka broker: creation, drift correction, partition growth,
//! refused destructive changes, conflicts, deletion policies, SASL, and zero admin writes when nothing drifted.

use std::collections::HashMap;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
pub use cryptoviz_tests::operator::create;
use cryptoviz_tests::operator::{Operator, OperatorOptions, install_crd, namespace};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;

mod lifecycle;
mod standalone;

/// An admin client on the test broker.
pub fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", TestEnv::get().kafka_bootstrap()).create().unwrap()
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

/// Partition count of a topic, None when it does not exist.
pub fn partitions(topic: &str) -> Option<usize> {
    let md = admin().inner().fetch_metadata(Some(topic), Duration::from_secs(10)).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    (t.error().is_none()).then(|| t.partitions().len())
}

/// Every config value of a topic.
pub async fn configs(topic: &str) -> Option<HashMap<String, String>> {
    let r = admin().describe_configs(&[ResourceSpecifier::Topic(topic)], &opts()).await.ok()?;
    let r = r.into_iter().next()?.ok()?;
    Some(r.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect())
}

/// Set configs out of band, as another tool would (AlterConfigs sets the whole dynamic config).
pub async fn alter_out_of_band(topic: &str, kv: &[(&str, &str)]) {
    let mut ac = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in kv {
        ac = ac.set(k, v);
    }
    let r = admin().alter_configs(&[ac], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

/// Create a topic directly on the broker.
pub async fn precreate(topic: &str, partitions: i32) {
    let r =
        admin().create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

/// A pipeline with `extra` merged into a minimal spec (no gateway: these tests are about topics).
pub fn pipeline(name: &str, extra: serde_json::Value) -> CryptoPipeline {
    let mut spec = serde_json::json!({"symbols": ["BTC"], "gateway": {"enabled": false}});
    cryptoviz_tests::operator::merge(&mut spec, extra);
    cryptoviz_tests::operator::pipeline(name, spec)
}

/// A namespace, the CRD and an operator watching it with a short resync.
pub async fn setup(prefix: &str, extra_args: &[&str]) -> (Client, String, Operator) {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, prefix).await;
    let mut o = OperatorOptions::watching(&ns);
    o.resync = "2s".into();
    o.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    (client, ns, Operator::start(o).await)
}

/// Patch a pipeline's spec.
pub async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    Api::<CryptoPipeline>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": spec})))
        .await
        .unwrap();
}

/// Wait until TopicsReady has this status and reason; returns the message.
pub async fn wait_topics(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> String {
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("TopicsReady={status} {reason} on {name}"), timeout, || async {
        let c = api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "TopicsReady")?;
        (c.status == status && c.reason == reason).then_some(c.message)
    })
    .await
}

/// Events about a pipeline with this reason.
pub async fn events(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// Create a Secret with string data.
pub async fn secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let s: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>()
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.unwrap();
}

/// Delete a pipeline and wait until it is gone.
pub async fn delete_and_wait(client: &Client, ns: &str, name: &str, timeout: Duration) {
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(&format!("{name} to be deleted"), timeout, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}
