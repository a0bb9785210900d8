//! The CRD as a chart template: it renders the generated CRD unchanged, `helm upgrade` updates it on the
//! apiserver, and `crds.keep` leaves it (and every pipeline) behind on uninstall.

use std::time::Duration;

use cryptoviz_tests::operator::{namespace, pipeline_json};
use cryptoviz_tests::{TestEnv, unique, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

use crate::support::*;

const GENERATED: &str = "crds/cryptopipeline.yaml";

/// The text of the rendered template `templates/<name>` in `helm template` output.
fn template_text(rendered: &str, name: &str) -> String {
    let marker = format!("# Source: cryptoviz-operator/templates/{name}\n");
    let start = rendered.find(&marker).unwrap_or_else(|| panic!("no {name} in the output")) + marker.len();
    let rest = &rendered[start..];
    rest[..rest.find("\n---\n").map_or(rest.len(), |i| i + 1)].to_string()
}

/// The CRD template renders the generated file byte for byte, plus only the chart's labels and the keep
/// annotation inside `metadata`; `crds.enabled=false` renders no CRD, `crds.keep=false` no annotation.
#[test]
fn the_crd_template_renders_the_generated_crd() {
    let generated = std::fs::read_to_string(cryptoviz_tests::repo_root().join(GENERATED)).unwrap();
    let body = generated.split_once("---\n").expect("the generated file has a header and ---").1;
    let rendered = helm_template(&chart(), "cryptoviz-system", &[]);
    let text = template_text(&rendered, "crds.yaml");
    // Remove the inserted lines (between `metadata:` and the `name:` the generator writes first).
    let (head, tail) = text.split_once("\nmetadata:\n").expect("metadata");
    let kept: Vec<&str> = tail.lines().skip_while(|l| !l.starts_with("  name: ")).collect();
    let stripped = format!("{head}\nmetadata:\n{}\n", kept.join("\n"));
    assert!(stripped == body, "templates/crds.yaml does not render {GENERATED} verbatim:\n{}", &text[..600]);

    let crd = one(&docs(&rendered), "CustomResourceDefinition").clone();
    let mut want: Value = docs(&generated).remove(0);
    assert_eq!(crd["metadata"]["annotations"], json!({"helm.sh/resource-policy": "keep"}));
    assert_eq!(crd["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    want["metadata"]["labels"] = crd["metadata"]["labels"].clone();
    want["metadata"]["annotations"] = crd["metadata"]["annotations"].clone();
    assert_eq!(crd, want, "the rendered CRD is the generated one with labels and annotations");

    let off = docs(&helm_template(&chart(), "cryptoviz-system", &["--set", "crds.enabled=false"]));
    assert!(of_kind(&off, "CustomResourceDefinition").is_empty());
    let unkept = docs(&helm_template(&chart(), "cryptoviz-system", &["--set", "crds.keep=false"]));
    assert!(one(&unkept, "CustomResourceDefinition")["metadata"]["annotations"].is_null());
}

/// A copy of the chart whose CRD is the generated one moved to the group `<tag>.cryptoviz.io` (the shared
/// cluster's `cryptoviz.io` CRD belongs to the other tests); `probe` adds a string field `spec.upgradeProbe`.
fn chart_copy(dir: &std::path::Path, group: &str, probe: bool) {
    if !dir.exists() {
        copy_dir(&chart(), dir);
    }
    let mut crd = std::fs::read_to_string(cryptoviz_tests::repo_root().join(GENERATED)).unwrap();
    crd = crd
        .replace("name: cryptopipelines.cryptoviz.io\n", &format!("name: cryptopipelines.{group}\n"))
        .replace("group: cryptoviz.io\n", &format!("group: {group}\n"));
    if probe {
        let anchor = "\n              paused:\n";
        assert!(crd.contains(anchor), "spec.paused moved: update the test's anchor");
        crd = crd.replacen(
            anchor,
            "\n              upgradeProbe:\n                type: string\n              paused:\n",
            1,
        );
    }
    std::fs::write(dir.join("files/crds/cryptopipeline.yaml"), crd).unwrap();
}

/// Whether the apiserver keeps `spec.upgradeProbe` of a pipeline created (dry run) in the test group.
async fn probe_is_served(client: &kube::Client, ns: &str, group: &str) -> bool {
    let gvk = GroupVersionKind::gvk(group, "v1alpha1", "CryptoPipeline");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "cryptopipelines"));
    let mut obj = pipeline_json(&unique("probe"), json!({"paused": true, "upgradeProbe": "served"}));
    obj["apiVersion"] = json!(format!("{group}/v1alpha1"));
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    let pp = PostParams { dry_run: true, ..Default::default() };
    match api.create(&pp, &obj).await {
        Ok(created) => created.data["spec"]["upgradeProbe"] == "served",
        Err(e) => panic!("dry-run create in {group}: {e}"),
    }
}

async fn established(api: &Api<CustomResourceDefinition>, name: &str) {
    wait_for("the CRD to be Established", Duration::from_secs(30), || async {
        let c = api.get_opt(name).await.ok()??;
        c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await;
}

/// `helm install`, then `helm upgrade` to a chart whose CRD gained a field: the apiserver prunes the field
/// before and serves it after. With `crds.keep` (the default) `helm uninstall` leaves the CRD; with
/// `crds.keep=false` it deletes it (the control).
#[tokio::test]
async fn helm_upgrade_updates_the_crd_and_keep_leaves_it() {
    let client = TestEnv::get().kube_client().await;
    let release_ns = namespace(&client, "pkg-crd").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // No operator pod (replicaCount=0): only the CRD matters here.
    let quiet = ["--set", "replicaCount=0,tests.enabled=false"];
    for keep in [true, false] {
        let tag = unique("crd");
        let group = format!("{tag}.cryptoviz.io");
        let name = format!("cryptopipelines.{group}");
        let dir = TestEnv::get().state_dir().join(unique("chart"));
        chart_copy(&dir, &group, false);
        let keep_arg = format!("crds.keep={keep}");
        let inst = Install::of_chart(&dir, &release_ns, &[quiet[0], quiet[1], "--set", &keep_arg]);
        established(&crds, &name).await;
        assert!(!probe_is_served(&client, &release_ns, &group).await, "before the upgrade the field is pruned");

        chart_copy(&dir, &group, true);
        inst.upgrade(&[quiet[0], quiet[1], "--set", &keep_arg]);
        let live = crds.get(&name).await.unwrap();
        let spec = serde_json::to_value(&live.spec.versions[0].schema).unwrap();
        assert_eq!(
            spec["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"],
            json!({"type": "string"}),
            "helm upgrade applied the changed CRD"
        );
        wait_for("the new field to be served", Duration::from_secs(30), || async {
            probe_is_served(&client, &release_ns, &group).await.then_some(())
        })
        .await;

        let out = inst.uninstall();
        if keep {
            assert!(out.contains("kept due to the resource policy"), "{out}");
            assert!(crds.get_opt(&name).await.unwrap().is_some(), "crds.keep leaves the CRD after uninstall");
            crds.delete(&name, &DeleteParams::default()).await.unwrap();
        } else {
            wait_for("crds.keep=false: uninstall deletes the CRD", Duration::from_secs(30), || async {
                crds.get_opt(&name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    delete_namespaces(&client, &[&release_ns]).await;
}
