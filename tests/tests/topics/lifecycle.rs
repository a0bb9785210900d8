use std::time::Duration;

use cryptoviz_tests::{TestEnv, wait_for};
use serde_json::json;

use crate::*;

const T: Duration = Duration::from_secs(60);

/// The three topics appear with the declared partitions and configs; a retention change in the spec is
/// altered on the broker.
#[tokio::test]
async fn topics_are_created_as_declared_and_follow_retention_changes() {
    let (client, ns, _op) = setup("topics-create", &[]).await;
    let spec = json!({"kafka": {"topics": {"raw": {"partitions": 4, "retention": "2d", "config": {"segment.ms": "3600000"}}}}});
    create(&client, &ns, &pipeline("p", spec)).await;
    wait_topics(&client, &ns, "p", "True", "Provisioned", T).await;
    let raw = format!("{ns}.p.raw");
    assert_eq!(partitions(&raw), Some(4));
    assert_eq!(partitions(&format!("{ns}.p.stream")), Some(3));
    assert_eq!(partitions(&format!("{ns}.p.dlq")), Some(3));
    let c = configs(&raw).await.unwrap();
    assert_eq!(c["retention.ms"], "172800000");
    assert_eq!(c["segment.ms"], "3600000");
    assert_eq!(c["cleanup.policy"], "delete");

    patch_spec(&client, &ns, "p", json!({"kafka": {"topics": {"raw": {"retention": "1d"}}}})).await;
    wait_for("retention.ms altered to 1 day", T, || async {
        (configs(&raw).await?["retention.ms"] == "86400000").then_some(())
    })
    .await;
    assert_eq!(configs(&raw).await.unwrap()["segment.ms"], "3600000", "other managed keys survive the alter");
}

/// A managed key changed out of band is put back on the next resync; a key we do not manage stays.
#[tokio::test]
async fn drift_in_a_managed_key_is_corrected_and_unmanaged_keys_are_left_alone() {
    let (client, ns, op) = setup("topics-drift", &[]).await;
    create(&client, &ns, &pipeline("d", json!({}))).await;
    wait_topics(&client, &ns, "d", "True", "Provisioned", T).await;
    let raw = format!("{ns}.d.raw");
    let before = op.metric_sum("cryptoviz_operator_topic_drift_corrections_total", &[]).await;

    // Another tool sets the whole dynamic config: our managed keys drift, and it adds max.compaction.lag.ms.
    alter_out_of_band(&raw, &[("retention.ms", "1234"), ("max.compaction.lag.ms", "7200000")]).await;
    wait_for("retention.ms corrected", T, || async {
        (configs(&raw).await?["retention.ms"] == "604800000").then_some(())
    })
    .await;
    let c = configs(&raw).await.unwrap();
    assert_eq!(c["max.compaction.lag.ms"], "7200000", "the unmanaged key set out of band stays");
    assert_eq!(c["cleanup.policy"], "delete");
    assert!(op.metric_sum("cryptoviz_operator_topic_drift_corrections_total", &[]).await > before);
    assert!(!events(&client, &ns, "TopicConfigCorrected").await.is_empty(), "a Normal event tells what was corrected");
}

/// Partitions grow with the spec; a topic that already has more partitions than declared is not touched and
/// the pipeline says why, with a Warning event.
#[tokio::test]
async fn partitions_grow_and_a_decrease_is_refused_with_a_condition() {
    let (client, ns, op) = setup("topics-parts", &[]).await;
    create(&client, &ns, &pipeline("g", json!({}))).await;
    wait_topics(&client, &ns, "g", "True", "Provisioned", T).await;
    patch_spec(&client, &ns, "g", json!({"kafka": {"topics": {"stream": {"partitions": 5}}}})).await;
    wait_for("stream grown to 5 partitions", T, || async {
        (partitions(&format!("{ns}.g.stream"))? == 5).then_some(())
    })
    .await;

    // The CRD refuses a decrease (see the operator tests); force one past it with a pre-created topic.
    precreate(&format!("{ns}.h.raw"), 6).await;
    create(&client, &ns, &pipeline("h", json!({"kafka": {"topics": {"raw": {"partitions": 2}}}}))).await;
    let msg = wait_topics(&client, &ns, "h", "False", "PartitionDecreaseRefused", T).await;
    assert!(msg.contains("has 6 partitions and the spec asks for 2"), "{msg}");
    assert_eq!(partitions(&format!("{ns}.h.raw")), Some(6), "nothing was changed");
    assert!(op.metric_sum("cryptoviz_operator_refused_changes_total", &[]).await >= 1.0);
    wait_for("a Warning event", T, || async {
        let ev = events(&client, &ns, "PartitionDecreaseRefused").await;
        ev.iter().any(|e| e.type_.as_deref() == Some("Warning")).then_some(())
    })
    .await;
    let api: kube::Api<cryptoviz_crds::CryptoPipeline> = kube::Api::namespaced(client.clone(), &ns);
    let ready =
        api.get("h").await.unwrap().status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "PartitionDecreaseRefused"));
}

/// A topic that exists with other settings is not adopted; two pipelines claiming one topic: the later one
/// gets the conflict.
#[tokio::test]
async fn foreign_topics_and_double_claims_are_conflicts() {
    let (client, ns, _op) = setup("topics-conflict", &[]).await;
    let shared = format!("{ns}.shared");
    create(&client, &ns, &pipeline("first", json!({"kafka": {"topics": {"raw": {"name": shared}}}}))).await;
    wait_topics(&client, &ns, "first", "True", "Provisioned", T).await;
    create(&client, &ns, &pipeline("second", json!({"kafka": {"topics": {"raw": {"name": shared}}}}))).await;
    let msg = wait_topics(&client, &ns, "second", "False", "TopicConflict", T).await;
    assert!(msg.contains(&shared), "{msg}");

    precreate(&format!("{ns}.foreign.raw"), 1).await;
    create(&client, &ns, &pipeline("foreign", json!({}))).await;
    wait_topics(&client, &ns, "foreign", "False", "TopicConflict", T).await;
    assert_eq!(partitions(&format!("{ns}.foreign.raw")), Some(1), "a foreign topic is not changed");

    // A pre-existing topic that matches the spec is adopted.
    precreate(&format!("{ns}.adopt.raw"), 3).await;
    create(&client, &ns, &pipeline("adopt", json!({}))).await;
    wait_topics(&client, &ns, "adopt", "True", "Provisioned", T).await;
    assert_eq!(configs(&format!("{ns}.adopt.raw")).await.unwrap()["retention.ms"], "604800000");
}

/// deletionPolicy Retain keeps topics and data; Delete removes them through the finalizer.
#[tokio::test]
async fn deletion_follows_the_policy() {
    let (client, ns, _op) = setup("topics-delete", &[]).await;
    create(&client, &ns, &pipeline("keep", json!({}))).await;
    create(&client, &ns, &pipeline("drop", json!({"kafka": {"deletionPolicy": "Delete"}}))).await;
    wait_topics(&client, &ns, "keep", "True", "Provisioned", T).await;
    wait_topics(&client, &ns, "drop", "True", "Provisioned", T).await;
    delete_and_wait(&client, &ns, "keep", T).await;
    delete_and_wait(&client, &ns, "drop", T).await;
    assert_eq!(partitions(&format!("{ns}.keep.raw")), Some(3), "Retain keeps the topic");
    wait_for("the Delete pipeline's topics to be gone", T, || async {
        let gone = ["raw", "stream", "dlq"].iter().all(|r| partitions(&format!("{ns}.drop.{r}")).is_none());
        gone.then_some(())
    })
    .await;
}

/// An unreachable broker: TopicsReady=False KafkaUnavailable, and deleting a Delete-policy pipeline is not
/// blocked forever: the finalizer is released after the timeout with a Warning event.
#[tokio::test]
async fn an_unreachable_broker_is_reported_and_never_blocks_deletion() {
    let (client, ns, _op) = setup("topics-down", &["--finalizer-timeout", "3s"]).await;
    let spec = json!({"kafka": {"bootstrapServers": "127.0.0.1:1", "deletionPolicy": "Delete"}});
    create(&client, &ns, &pipeline("nobroker", spec)).await;
    let msg = wait_topics(&client, &ns, "nobroker", "False", "KafkaUnavailable", Duration::from_secs(90)).await;
    assert!(msg.contains("Kafka admin"), "{msg}");
    delete_and_wait(&client, &ns, "nobroker", Duration::from_secs(120)).await;
    assert!(!events(&client, &ns, "CleanupAbandoned").await.is_empty(), "a Warning says the clean-up was abandoned");
}

/// Once provisioned, resyncs with no drift send no create or alter requests to the broker.
#[tokio::test]
async fn a_resync_without_drift_sends_no_admin_writes() {
    let (client, ns, op) = setup("topics-noop", &[]).await;
    create(&client, &ns, &pipeline("calm", json!({}))).await;
    wait_topics(&client, &ns, "calm", "True", "Provisioned", T).await;
    let writes = || async {
        let m = op.metrics().await;
        ["create_topics", "alter_configs", "create_partitions", "delete_topics"]
            .iter()
            .map(|o| cryptoviz_tests::metrics::sum(&m, "cryptoviz_operator_external_calls_total", &[("operation", o)]))
            .sum::<f64>()
    };
    let describes = || async {
        op.metric_sum("cryptoviz_operator_external_calls_total", &[("operation", "describe_configs")]).await
    };
    // Start counting once a resync has seen the topics after they were provisioned: right after creation the
    // broker may still describe a new topic's configs as they were before (one CI run saw an alter there).
    let d = describes().await;
    wait_for("a resync after provisioning", T, || async { (describes().await >= d + 1.0).then_some(()) }).await;
    let w0 = writes().await;
    let d0 = describes().await;
    wait_for("3 resyncs observing the topics", T, || async { (describes().await >= d0 + 3.0).then_some(()) }).await;
    assert_eq!(writes().await, w0, "no admin writes while nothing drifted");
}

/// SASL/SCRAM-SHA-512 against the broker's SASL listener, credentials from a Secret; a wrong password is
/// reported, and the password never appears in the operator's log or the status.
#[tokio::test]
async fn sasl_scram_credentials_come_from_a_secret_and_are_never_logged() {
    let env = TestEnv::get();
    let (client, ns, op) = setup("topics-sasl", &[]).await;
    let user = env.var("CRYPTOVIZ_KAFKA_SASL_USER");
    let password = env.var("CRYPTOVIZ_KAFKA_SASL_PASSWORD");
    secret(&client, &ns, "kafka-user", &[("username", user), ("password", password)]).await;
    secret(&client, &ns, "kafka-wrong", &[("username", user), ("password", "not-the-password-42")]).await;
    let sasl = |secret: &str| json!({"kafka": {"bootstrapServers": env.var("CRYPTOVIZ_KAFKA_SASL_BOOTSTRAP"), "sasl": {"mechanism": "SCRAM-SHA-512", "secretName": secret}}});
    create(&client, &ns, &pipeline("scram", sasl("kafka-user"))).await;
    create(&client, &ns, &pipeline("wrong", sasl("kafka-wrong"))).await;
    wait_topics(&client, &ns, "scram", "True", "Provisioned", T).await;
    assert_eq!(partitions(&format!("{ns}.scram.raw")), Some(3));
    let msg = wait_topics(&client, &ns, "wrong", "False", "KafkaUnavailable", Duration::from_secs(90)).await;
    assert!(!msg.contains("not-the-password-42"));
    let log = op.log_text();
    assert!(!log.contains(password) && !log.contains("not-the-password-42"), "a password reached the operator's log");
}
