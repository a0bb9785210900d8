//! Values beyond the operator Deployment: the chart as an umbrella chart's dependency, the operator's
//! PodDisruptionBudget and its own NetworkPolicy.

use std::process::Command;

use cryptoviz_tests::{TestEnv, unique};
use serde_json::{Value, json};

use crate::support::*;

/// An umbrella chart that depends on this chart (`file://`, `condition: cryptoviz-operator.enabled`) with
/// `global` values renders it when enabled and leaves it out when not: the schema accepts the `enabled` and
/// `global` keys a parent chart sets (cert-manager#7334).
#[test]
fn an_umbrella_chart_renders_the_chart_as_a_dependency() {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    let dir = TestEnv::get().state_dir().join(unique("umbrella"));
    std::fs::create_dir_all(&dir).unwrap();
    let umbrella = json!({
        "apiVersion": "v2", "name": "umbrella", "version": "0.0.1",
        "dependencies": [{
            "name": "cryptoviz-operator", "version": chart_yaml["version"],
            "repository": format!("file://{}", chart().display()),
            "condition": "cryptoviz-operator.enabled",
        }],
    });
    std::fs::write(dir.join("Chart.yaml"), serde_json::to_string(&umbrella).unwrap()).unwrap();
    std::fs::write(
        dir.join("values.yaml"),
        "global:\n  imageRegistry: registry.local\ncryptoviz-operator:\n  enabled: false\n  replicaCount: 2\n",
    )
    .unwrap();
    run(helm().args(["dependency", "build"]).arg(&dir));
    let template = |set: &str| -> Vec<Value> {
        let mut c: Command = helm();
        c.args(["template", "u"]).arg(&dir).args(["--namespace", "cryptoviz-system", "--set", set]);
        docs(&run(&mut c))
    };
    let on = template("cryptoviz-operator.enabled=true");
    let d = one(&on, "Deployment");
    assert_eq!(d["spec"]["replicas"], 2, "the parent's values reach the chart");
    assert_eq!(one(&on, "CustomResourceDefinition")["metadata"]["name"], "cryptopipelines.cryptoviz.io");
    let off = template("cryptoviz-operator.enabled=false");
    assert!(of_kind(&off, "Deployment").is_empty(), "the condition turns the chart off");
    // The schema still refuses a misspelt key under the dependency.
    let mut c = helm();
    c.args(["template", "u"])
        .arg(&dir)
        .args(["--set", "cryptoviz-operator.enabled=true,cryptoviz-operator.replicas=2"]);
    let err = run_failing(&mut c);
    assert!(err.contains("replicas"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The operator's PDB holds `minAvailable` by default and `maxUnavailable` instead when that is set.
#[test]
fn the_pdb_takes_max_unavailable_instead_of_min_available() {
    let pdb =
        |set: &str| one(&docs(&helm_template(&chart(), "ns", &["--set", set])), "PodDisruptionBudget")["spec"].clone();
    let spec = pdb("podDisruptionBudget.enabled=true");
    assert_eq!((spec["minAvailable"].clone(), spec.get("maxUnavailable")), (json!(1), None));
    let spec = pdb("podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=1");
    assert_eq!((spec.get("minAvailable"), spec["maxUnavailable"].clone()), (None, json!(1)));
    let spec = pdb("podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=50%");
    assert_eq!(spec["maxUnavailable"], "50%");
    let err = run_failing(
        helm().args(["template", "x"]).arg(chart()).args(["--set", "podDisruptionBudget.maxUnavailable=half"]),
    );
    assert!(err.contains("maxUnavailable"), "{err}");
}

/// The operator's NetworkPolicy (off by default) selects exactly the operator pods, admits only the
/// metrics port from `metricsFrom` (and the helm test Pod), and lets out the API server ports, DNS and
/// `extraEgress`. The test apiserver accepts it (dry run in the packaging test above) but enforces nothing:
/// NetworkPolicy is the CNI's job.
#[test]
fn the_operator_network_policy_opens_only_what_it_needs() {
    assert!(of_kind(&docs(&helm_template(&chart(), "ns", &[])), "NetworkPolicy").is_empty(), "off by default");
    let objs = docs(&helm_template(
        &chart(),
        "ns",
        &[
            "--set",
            "networkPolicy.enabled=true,networkPolicy.apiServerTo[0].ipBlock.cidr=10.0.0.1/32,\
             networkPolicy.extraEgress[0].ports[0].port=9092",
        ],
    ));
    let np = one(&objs, "NetworkPolicy");
    let d = one(&objs, "Deployment");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"], d["spec"]["selector"]["matchLabels"]);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "one ingress rule: {ingress:?}");
    let port = &d["spec"]["template"]["spec"]["containers"][0]["ports"][0];
    assert_eq!(ingress[0]["ports"], json!([{"protocol": "TCP", "port": port["name"]}]));
    let from = ingress[0]["from"].as_array().unwrap();
    assert_eq!(
        from[0],
        json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}})
    );
    let test_pod = one(&objs, "Pod");
    for (k, v) in from[1]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&test_pod["metadata"]["labels"][k], v, "the helm test Pod is admitted ({k})");
    }
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[0],
        json!({"ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
               "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]})
    );
    assert_eq!(egress[1]["ports"], json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]));
    assert_eq!(egress[2], json!({"ports": [{"port": 9092}]}));
    assert_eq!(egress.len(), 3);
    // Without DNS, metrics peers or the test Pod: no DNS rule, and no ingress rule at all (a rule without
    // peers would admit every source).
    let objs = docs(&helm_template(
        &chart(),
        "ns",
        &[
            "--set",
            "networkPolicy.enabled=true,networkPolicy.dns=false,tests.enabled=false",
            "--set-json",
            "networkPolicy.metricsFrom=[]",
        ],
    ));
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["egress"].as_array().unwrap().len(), 1);
    assert_eq!(np["spec"]["ingress"], json!([]));
}
