//! `cryptoviz-worker standalone --kafka` and the operator, given the same manifest, create the same topics.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use cryptoviz_tests::binary;
use cryptoviz_tests::operator::pipeline_json;
use cryptoviz_tests::{repo_root, unique, wait_for};
use rdkafka::admin::ResourceSpecifier;
use serde_json::json;

use crate::*;

const T: Duration = Duration::from_secs(60);

/// Every config of a topic with where the broker says it comes from: a key the creator set is
/// `DynamicTopic`, one left to the broker is `Default`, so a creator that omits a managed key differs even
/// when the broker's default has the same value.
async fn described(topic: &str) -> Option<(usize, BTreeMap<String, (Option<String>, String)>)> {
    let r = admin().describe_configs(&[ResourceSpecifier::Topic(topic)], &opts()).await.ok()?;
    let r = r.into_iter().next()?.ok()?;
    let configs = r.entries.into_iter().map(|e| (e.name, (e.value, format!("{:?}", e.source)))).collect();
    Some((partitions(topic)?, configs))
}

#[tokio::test]
async fn standalone_and_the_operator_create_the_same_topics_for_one_manifest() {
    let (client, ns, _op) = setup("topics-standalone", &[]).await;
    let name = unique("same");
    let manifest = pipeline_json(
        &name,
        json!({"gateway": {"enabled": false}, "kafka": {"topics": {
            "raw": {"partitions": 2, "retention": "2d", "config": {"segment.ms": "3600000"}},
            "dlq": {"retention": "30d"}
        }}}),
    );
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.json");
    // No namespace in the manifest: standalone runs it as `default`, the operator in the test namespace.
    std::fs::write(&file, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();

    let bootstrap = cryptoviz_tests::TestEnv::get().kafka_bootstrap().to_string();
    let mut sa = tokio::process::Command::new(binary::path("cryptoviz-worker"))
        .args(["standalone", "--listen", "127.0.0.1:0", "-f", file.to_str().unwrap(), "--kafka", &bootstrap])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let roles = ["raw", "stream", "dlq"];
    wait_for("standalone to create the pipeline's topics", T, || async {
        roles.iter().all(|r| partitions(&format!("default.{name}.{r}")).is_some()).then_some(())
    })
    .await;
    sa.kill().await.unwrap();

    create(&client, &ns, &serde_json::from_value(manifest).unwrap()).await;
    wait_topics(&client, &ns, &name, "True", "Provisioned", T).await;
    for role in roles {
        let (s, o) = (format!("default.{name}.{role}"), format!("{ns}.{name}.{role}"));
        let standalone = described(&s).await.unwrap_or_else(|| panic!("{s} described"));
        let operator = described(&o).await.unwrap_or_else(|| panic!("{o} described"));
        assert_eq!(standalone, operator, "{role}: standalone's {s} against the operator's {o}");
    }
    let (_, raw) = described(&format!("default.{name}.raw")).await.unwrap();
    assert_eq!(raw["retention.ms"].0.as_deref(), Some("172800000"));
    assert!(
        raw["cleanup.policy"].1.contains("Dynamic"),
        "a managed key is set explicitly: {:?}",
        raw["cleanup.policy"]
    );
    let _ = std::fs::remove_dir_all(dir);
    let admin = admin();
    let names: Vec<String> = roles.iter().map(|r| format!("default.{name}.{r}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &opts()).await;
}
