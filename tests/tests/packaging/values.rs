//! Values beyond the operator Deployment: the chart as an umbrella chart's dependency.

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
