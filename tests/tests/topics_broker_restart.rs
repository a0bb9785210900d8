//! The broker goes away and comes back: TopicsReady turns False with the reason, then True again, and the
//! operator neither crashes nor spins. A binary of its own: it stops the shared broker, so nothing else may
//! run beside it.

use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{Operator, OperatorOptions, create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, wait_for};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

const HOT_LOOP_WINDOW: Duration = Duration::from_secs(20);

/// Stops the shared broker; starts it again when dropped, even if the test fails.
struct BrokerStopped(&'static TestEnv);

impl BrokerStopped {
    fn new(env: &'static TestEnv) -> Self {
        env.component("kafka", "stop");
        BrokerStopped(env)
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        self.0.component("kafka", "start");
    }
}

async fn topics_condition(api: &Api<CryptoPipeline>, name: &str) -> Option<(String, String)> {
    let c = topics_ready(api, name).await?;
    Some((c.status, c.reason))
}

async fn topics_ready(api: &Api<CryptoPipeline>, name: &str) -> Option<Condition> {
    api.get(name).await.ok()?.status?.conditions.into_iter().find(|c| c.type_ == "TopicsReady")
}

#[tokio::test]
async fn broker_down_is_reported_then_recovered_without_a_hot_loop() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    install_crd(&client).await;
    let ns = namespace(&client, "broker-restart").await;
    let mut opts = OperatorOptions::watching(&ns);
    opts.resync = "2s".into();
    let op = Operator::start(opts).await;
    create(&client, &ns, &pipeline("p", serde_json::json!({"gateway": {"enabled": false}}))).await;
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), &ns);
    let t = Duration::from_secs(90);
    wait_for("TopicsReady=True", t, || async { (topics_condition(&api, "p").await?.0 == "True").then_some(()) }).await;

    let down_since = {
        let _down = BrokerStopped::new(env);
        let down = wait_for("TopicsReady=False KafkaUnavailable", t, || async {
            let c = topics_ready(&api, "p").await?;
            (c.status == "False" && c.reason == "KafkaUnavailable").then_some(c.last_transition_time)
        })
        .await;
        // While the broker is down, retries back off: count reconciles over a fixed observation window
        // (a measurement, not a wait): a hot loop would make hundreds.
        let r0 = op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await;
        tokio::time::sleep(HOT_LOOP_WINDOW).await;
        let r1 = op.metric_sum("cryptoviz_operator_reconciliations_total", &[]).await;
        assert!(r1 - r0 <= 12.0, "{} reconciles in {HOT_LOOP_WINDOW:?} with the broker down", r1 - r0);
        down
    };
    // Recovery, not only restraint: the condition turns True again in a new transition, and reconciles go on
    // succeeding (every resync, 2 s) after it — an operator stuck in its backoff or its watch would fail here.
    let up = wait_for("TopicsReady=True after the broker is back", Duration::from_secs(180), || async {
        let c = topics_ready(&api, "p").await?;
        (c.status == "True" && c.reason == "Provisioned").then_some(c.last_transition_time)
    })
    .await;
    assert!(up.0 > down_since.0, "TopicsReady turned True again ({up:?}) after it turned False ({down_since:?})");
    let ok = || op.metric_sum("cryptoviz_operator_reconciliations_total", &[("result", "ok")]);
    let ok0 = ok().await;
    wait_for("successful reconciles to resume after the recovery", Duration::from_secs(60), || async {
        (ok().await >= ok0 + 3.0).then_some(())
    })
    .await;
    assert_eq!(topics_condition(&api, "p").await, Some(("True".into(), "Provisioned".into())), "and it stays True");
    let ready =
        api.get("p").await.unwrap().status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
}
