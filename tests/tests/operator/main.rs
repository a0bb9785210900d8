//! The operator against the real control plane (kwok runs the pods): children, rollouts, deletion,
//! validation at apply time, pause, zero-write resyncs, readiness and leader election.

mod leader;
mod lifecycle;
mod validation;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::TestEnv;
use kube::Api;
use kube::api::PostParams;

/// A minimal valid pipeline on the test broker.
pub fn pipeline(name: &str, extra: serde_json::Value) -> CryptoPipeline {
    serde_json::from_value(pipeline_json(name, extra)).unwrap()
}

/// The same pipeline as raw JSON, with `extra` deep-merged into its spec.
pub fn pipeline_json(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "symbols": ["BTC", "ETH"],
        "sources": [{"kind": "synthetic"}],
        "kafka": {"bootstrapServers": TestEnv::get().kafka_bootstrap()},
    });
    merge(&mut spec, extra);
    serde_json::json!({
        "apiVersion": "cryptoviz.io/v1alpha1", "kind": "CryptoPipeline",
        "metadata": {"name": name}, "spec": spec
    })
}

/// Deep-merge `extra` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Create a pipeline in `ns`.
pub async fn create(client: &kube::Client, ns: &str, p: &CryptoPipeline) -> CryptoPipeline {
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), p).await.expect("the apiserver accepts the pipeline")
}
