use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::TestEnv;
use cryptoviz_tests::operator::{install_crd, namespace, pipeline, pipeline_json};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};

/// Each invalid spec is refused by the apiserver at create time, with a message that names the problem.
#[tokio::test]
async fn invalid_specs_are_refused_with_a_clear_message() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "validation").await;
    // Raw JSON through a dynamic API: the typed client would refuse some of these before the apiserver sees them.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<CryptoPipeline>(&()));
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("no symbols", serde_json::json!({"symbols": []}), "spec.symbols"),
        ("lower-case symbol", serde_json::json!({"symbols": ["btc"]}), "spec.symbols[0]"),
        ("duplicate symbol", serde_json::json!({"symbols": ["BTC", "BTC"]}), "Duplicate value"),
        ("no sources", serde_json::json!({"sources": []}), "spec.sources"),
        ("unknown source", serde_json::json!({"sources": [{"kind": "ftx"}]}), "Unsupported value: \"ftx\""),
        (
            "same source twice",
            serde_json::json!({"sources": [{"kind": "kraken"}, {"kind": "kraken"}]}),
            "each source kind may be listed only once",
        ),
        (
            "coinmarketcap without key",
            serde_json::json!({"sources": [{"kind": "coinmarketcap"}]}),
            "coinmarketcap requires apiKeySecretRef",
        ),
        (
            "zero poll interval",
            serde_json::json!({"sources": [{"kind": "coingecko", "pollInterval": "0s"}]}),
            "pollInterval",
        ),
        (
            "unparseable duration",
            serde_json::json!({"sources": [{"kind": "coingecko", "pollInterval": "soon"}]}),
            "pollInterval",
        ),
        ("bad base URL", serde_json::json!({"sources": [{"kind": "binance", "baseUrl": "ftp://x"}]}), "baseUrl"),
        ("empty bootstrap", serde_json::json!({"kafka": {"bootstrapServers": ""}}), "bootstrapServers"),
        (
            "invalid topic name",
            serde_json::json!({"kafka": {"topics": {"raw": {"name": "has space"}}}}),
            "spec.kafka.topics.raw.name",
        ),
        (
            "topic named dot",
            serde_json::json!({"kafka": {"topics": {"raw": {"name": ".."}}}}),
            "a topic may not be named",
        ),
        (
            "same raw and stream topic",
            serde_json::json!({"kafka": {"topics": {"raw": {"name": "t"}, "stream": {"name": "t"}}}}),
            "different names",
        ),
        ("zero partitions", serde_json::json!({"kafka": {"topics": {"raw": {"partitions": 0}}}}), "partitions"),
        (
            "unknown SASL mechanism",
            serde_json::json!({"kafka": {"sasl": {"mechanism": "GSSAPI", "secretName": "s"}}}),
            "mechanism",
        ),
        ("negative replicas", serde_json::json!({"scraper": {"replicas": -1}}), "replicas"),
        ("zero batch size", serde_json::json!({"consumer": {"batchSize": 0}}), "batchSize"),
        ("bad service port", serde_json::json!({"gateway": {"service": {"port": 70000}}}), "port"),
        (
            "bad service type",
            serde_json::json!({"gateway": {"service": {"type": "ExternalName"}}}),
            "Unsupported value",
        ),
        (
            "alert threshold zero",
            serde_json::json!({"alerts": {"thresholdPercent": 0}}),
            "thresholdPercent must be in (0, 100]",
        ),
        (
            "bad schema name",
            serde_json::json!({"timescale": {"connectionSecretRef": {"name": "db", "key": "url"}, "schema": "Robert'); DROP"}}),
            "schema",
        ),
        (
            "bad monitoring mode",
            serde_json::json!({"monitoring": {"serviceMonitor": "sometimes"}}),
            "Unsupported value",
        ),
        ("bad quote", serde_json::json!({"quote": "usd"}), "quote"),
    ];
    let mut failures = vec![];
    for (i, (what, extra, expected)) in cases.iter().enumerate() {
        let p: DynamicObject = serde_json::from_value(pipeline_json(&format!("bad-{i}"), extra.clone())).unwrap();
        match api.create(&PostParams::default(), &p).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) => {
                if s.code != 422 || !s.message.contains(expected) {
                    failures.push(format!(
                        "{what}: got {} {:?}, expected a message containing {expected:?}",
                        s.code, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Transition rules: partitions may grow but not shrink; the replication factor and topic names are immutable.
#[tokio::test]
async fn partitions_only_grow_and_replication_is_immutable() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "transitions").await;
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let p = pipeline("grow", serde_json::json!({"kafka": {"topics": {"raw": {"partitions": 3}}}, "paused": true}));
    api.create(&PostParams::default(), &p).await.unwrap();
    let api = &api;
    let patch = |v: serde_json::Value| async move {
        api.patch("grow", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": v}))).await
    };
    patch(serde_json::json!({"kafka": {"topics": {"raw": {"partitions": 6}}}})).await.expect("growing is allowed");
    let err = patch(serde_json::json!({"kafka": {"topics": {"raw": {"partitions": 2}}}})).await.unwrap_err();
    assert!(err.to_string().contains("partitions may not decrease"), "{err}");
    let err = patch(serde_json::json!({"kafka": {"topics": {"raw": {"replicationFactor": 3}}}})).await.unwrap_err();
    assert!(err.to_string().contains("replicationFactor is immutable"), "{err}");
}

/// `self == oldSelf` on an optional field only fires when both versions have it: adding or removing a topic
/// name on a live pipeline (which would re-point it at another topic) is refused by the rule one level up,
/// with a message naming the field.
#[tokio::test]
async fn a_topic_name_cannot_be_added_or_removed() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "topic-names").await;
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let api = &api;
    let patch = |name: &'static str, v: serde_json::Value| async move {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": v}))).await
    };
    let refused = |err: kube::Error| {
        let text = err.to_string();
        assert!(text.contains("spec.kafka.topics.raw.name"), "the field is named: {text}");
        assert!(text.contains("may not be added or removed"), "{text}");
    };

    api.create(&PostParams::default(), &pipeline("unnamed", serde_json::json!({"paused": true}))).await.unwrap();
    let added = serde_json::json!({"kafka": {"topics": {"raw": {"name": "elsewhere.raw"}}}});
    refused(patch("unnamed", added).await.expect_err("adding a name is refused"));

    let named =
        pipeline("named", serde_json::json!({"paused": true, "kafka": {"topics": {"raw": {"name": "mine.raw"}}}}));
    api.create(&PostParams::default(), &named).await.unwrap();
    let removed = serde_json::json!({"kafka": {"topics": {"raw": {"name": null}}}});
    refused(patch("named", removed).await.expect_err("removing the name is refused"));
    // Other fields of the same topic still change, and the name stays.
    patch("named", serde_json::json!({"kafka": {"topics": {"raw": {"partitions": 6}}}}))
        .await
        .expect("growing is allowed");
    let live = api.get("named").await.unwrap();
    assert_eq!(live.spec.kafka.topics.raw.name.as_deref(), Some("mine.raw"));
}
