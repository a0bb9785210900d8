//! Packaging: the Helm chart and the kustomize trees install on the first try with least privilege.
//! Every rendered object goes through a real apiserver (server-side apply dry run), the chart is installed
//! for real, and the operator then runs under the chart's ServiceAccount (a TokenRequest token) until a
//! pipeline is Ready — with no authorization failure in its log. Tools: tests/env/tools/install.

mod access;
mod crds;
mod support;
mod values;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use cryptoviz_tests::operator::{create, install_crd, namespace, pipeline};
use cryptoviz_tests::{TestEnv, repo_root, unique, wait_for};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::*;

/// Namespace the chart is rendered for (created when missing: a dry run needs it to exist).
const RELEASE_NS: &str = "cryptoviz-system";

/// The example values files, sorted.
fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "the chart ships example values files: {v:?}");
    v
}

/// Every values set the chart is checked with: defaults, each example, and every toggle turned on.
fn values_sets() -> Vec<(String, Vec<String>)> {
    let mut sets = vec![("defaults".to_string(), vec![])];
    for e in examples() {
        sets.push((e.file_name().unwrap().to_string_lossy().into(), vec!["-f".into(), e.display().to_string()]));
    }
    sets.push((
        "every toggle".into(),
        vec![
            "--set".into(),
            "replicaCount=3,podDisruptionBudget.enabled=true,serviceMonitor.enabled=true,prometheusRule.enabled=true,\
             dashboards.enabled=true,networkPolicy.enabled=true,podDisruptionBudget.maxUnavailable=1,\
             networkPolicy.extraEgress[0].ports[0].port=9092,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef,\
             imagePullSecrets[0].name=regcred,nodeSelector.disk=ssd,tolerations[0].operator=Exists,logLevel=debug"
                .into(),
        ],
    ));
    sets
}

fn render(args: &[String]) -> Vec<Value> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docs(&helm_template(&chart(), RELEASE_NS, &args))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---- copies -------------------------------------------------------------------------------------------

/// The chart's and the kustomize base's CRD are the generated one, and the chart's dashboards and rules are
/// exactly those in dashboards/ (Helm only packages files inside the chart).
#[test]
fn shipped_copies_equal_their_sources() {
    let crd = read("crds/cryptopipeline.yaml");
    for copy in ["charts/cryptoviz-operator/files/crds/cryptopipeline.yaml", "manifests/base/cryptopipeline.yaml"] {
        assert!(
            read(copy) == crd,
            "{copy} differs from crds/cryptopipeline.yaml: run `cargo run -q -p cryptoviz-crds --bin crdgen > \
             crds/cryptopipeline.yaml && charts/sync-assets`"
        );
    }
    let files = |dir: PathBuf, suffix: &str| -> BTreeSet<String> {
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (suffix, dest) in [(".json", "dashboards"), (".rules.yaml", "rules")] {
        let src = files(repo_root().join("dashboards"), suffix);
        let dst = files(chart().join(dest), if dest == "rules" { ".yaml" } else { suffix });
        assert_eq!(src, dst, "charts/cryptoviz-operator/{dest} is out of date: run charts/sync-assets");
        for f in &src {
            assert!(
                read(&format!("dashboards/{f}")) == read(&format!("charts/cryptoviz-operator/{dest}/{f}")),
                "charts/cryptoviz-operator/{dest}/{f} differs from dashboards/{f}: run charts/sync-assets"
            );
        }
    }
}

// ---- helm, offline --------------------------------------------------------------------------------------

/// `helm lint --strict` passes for the defaults and every example values file.
#[test]
fn helm_lint_strict_passes_for_defaults_and_every_example() {
    let out = run(helm().args(["lint", "--strict"]).arg(chart()));
    assert!(out.contains("0 chart(s) failed"), "{out}");
    for e in examples() {
        let out = run(helm().args(["lint", "--strict"]).arg(chart()).arg("-f").arg(&e));
        assert!(out.contains("0 chart(s) failed"), "{}: {out}", e.display());
    }
}

/// The dotted paths of values.yaml that carry a `# --` comment. Panics on a key that has neither such a
/// comment nor documented children (every value is documented; nested keys of a documented value are part
/// of its default).
fn documented_values(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut stack: Vec<(usize, String)> = vec![];
    let mut documented = false;
    let mut inside: Option<usize> = None; // indent of a documented key whose block we are in
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if inside.is_some_and(|d| indent > d) {
            continue;
        }
        inside = None;
        let t = line.trim();
        if t.starts_with("# --") {
            documented = true;
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        let Some((key, _)) = t.split_once(':') else { continue };
        if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || t.starts_with('-') {
            continue;
        }
        stack.retain(|(d, _)| *d < indent);
        let path = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect::<Vec<_>>().join(".");
        if documented {
            out.push(path);
            inside = Some(indent);
            documented = false;
        } else {
            let next_indent = lines.get(i + 1).map(|l| l.len() - l.trim_start().len()).unwrap_or(0);
            assert!(next_indent > indent, "values.yaml: `{path}` has no `# --` comment");
            stack.push((indent, key.to_string()));
        }
    }
    out
}

/// Every value is documented in values.yaml, listed in the chart README's table and known to the schema.
#[test]
fn every_value_is_documented() {
    let values = read("charts/cryptoviz-operator/values.yaml");
    let readme = read("charts/cryptoviz-operator/README.md");
    let schema: Value = serde_json::from_str(&read("charts/cryptoviz-operator/values.schema.json")).unwrap();
    let paths = documented_values(&values);
    assert!(paths.len() > 40, "{paths:?}");
    for p in &paths {
        assert!(readme.contains(&format!("| `{p}` |")), "charts/cryptoviz-operator/README.md lacks a row for `{p}`");
        let mut s = &schema;
        for k in p.split('.') {
            s = &s["properties"][k];
        }
        assert!(!s.is_null(), "values.schema.json does not describe `{p}`");
    }
}

/// values.schema.json is strict: a misspelt key, a wrong enum or a bad namespace name fails rendering.
#[test]
fn the_values_schema_rejects_mistakes() {
    for bad in [
        "imagePullPolicy=Always",          // top-level typo of image.pullPolicy
        "image.pullPolicy=Sometimes",      // not an enum value
        "rbac.podMonitor=true",            // singular: not a key
        "watchNamespaces[0]=Team_A",       // not a namespace name
        "resyncInterval=five minutes",     // not a duration
        "logFormat=xml",                   // json or text
        "serviceAccount.automount=false",  // automountServiceAccountToken
        "leaderElection.leaseDuration=15", // no unit
    ] {
        let err = run_failing(helm().args(["template", "x"]).arg(chart()).args(["--set", bad]));
        assert!(err.contains("schema") || err.contains("values don't meet"), "--set {bad}: {err}");
    }
}

/// The operator pod is locked down, runs the right image and flags, and leader election follows replicas.
#[test]
fn the_operator_deployment_is_locked_down_and_wired() {
    let objs = render(&[]);
    let d = one(&objs, "Deployment");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let chart_yaml: Value = serde_saphyr::from_str(&read("charts/cryptoviz-operator/Chart.yaml")).unwrap();
    let app = chart_yaml["appVersion"].as_str().unwrap();
    assert_eq!(c["image"], format!("ghcr.io/cryptoviz/cryptoviz:{app}"), "the tag defaults to appVersion");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&format!("--worker-image=ghcr.io/cryptoviz/cryptoviz:{app}").as_str()), "{args:?}");
    assert!(!args.contains(&"--leader-elect"), "one replica: no election");
    assert!(of_kind(&objs, "Role").is_empty(), "no Lease Role without election");
    assert_eq!(pod["serviceAccountName"], one(&objs, "ServiceAccount")["metadata"]["name"]);
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");

    // The metrics Service selects the pod and targets its port by name.
    let svc = one(&objs, "Service");
    let labels = d["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(labels.get(k), Some(v), "Service selector {k}");
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);

    // The helm test hook curls /readyz through that Service.
    let test_pod = one(&objs, "Pod");
    assert_eq!(test_pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let url = test_pod["spec"]["containers"][0]["args"].as_array().unwrap().last().unwrap().as_str().unwrap();
    assert_eq!(url, format!("http://{}.{RELEASE_NS}.svc:8080/readyz", svc["metadata"]["name"].as_str().unwrap()));

    // Two replicas elect a leader; the Lease Role is named after the lease.
    for set in [["--set", "replicaCount=2"], ["--set", "leaderElection.enabled=true"]] {
        let objs = render(&set.map(String::from));
        let c = &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.contains(&"--leader-elect") && args.contains(&"--lease-name=cryptoviz-operator"), "{args:?}");
        let role = one(&objs, "Role");
        assert_eq!(role["metadata"]["namespace"], RELEASE_NS);
        assert_eq!(role["rules"][1]["resourceNames"], json!(["cryptoviz-operator"]));
    }

    // Image overrides: the tag moves both images; a worker repository moves only the workers.
    let objs = render(&["--set".into(), "image.tag=9.9.9,workerImage.repository=registry.local/cv".into()]);
    let c = &one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/cryptoviz/cryptoviz:9.9.9");
    assert!(c["args"].as_array().unwrap().contains(&json!("--worker-image=registry.local/cv:9.9.9")));
}

/// RBAC: only the verbs and resources the operator uses, never a wildcard; the same rules as the kustomize
/// base; Roles (no cluster-wide workload or Secret access) in watch-namespace mode.
#[test]
fn rbac_is_least_privilege() {
    fn rules_of(o: &Value) -> &Value {
        &o["rules"]
    }
    fn no_wildcards(objs: &[Value]) {
        for o in objs.iter().filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole") {
            for r in o["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for v in r[field].as_array().map(Vec::as_slice).unwrap_or_default() {
                        assert!(!v.as_str().unwrap().contains('*'), "{}: wildcard in {field}: {r}", id(o));
                    }
                }
            }
        }
    }
    // The operator's own roles: not the aggregated ones for people (tests/tests/packaging/access.rs).
    fn operator_cluster_roles(objs: &[Value]) -> Vec<&Value> {
        of_kind(objs, "ClusterRole")
            .into_iter()
            .filter(|r| {
                r["metadata"]["labels"].as_object().is_none_or(|l| !l.keys().any(|k| k.contains("aggregate-to-")))
            })
            .collect()
    }
    let objs = render(&[]);
    no_wildcards(&objs);
    let roles = operator_cluster_roles(&objs);
    assert_eq!(roles.len(), 1, "one ClusterRole: {:?}", roles.iter().map(|r| id(r)).collect::<Vec<_>>());
    let main = roles[0];
    let rules = rules_of(main).as_array().unwrap();
    let find = |group: &str, resource: &str| -> BTreeSet<String> {
        rules
            .iter()
            .filter(|r| r["apiGroups"].as_array().unwrap().contains(&json!(group)))
            .filter(|r| r["resources"].as_array().unwrap().contains(&json!(resource)))
            .flat_map(|r| r["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(find("", "secrets"), set(&["get"]), "Secrets are read by name, never listed");
    assert_eq!(find("cryptoviz.io", "cryptopipelines"), set(&["get", "list", "watch", "patch"]));
    assert_eq!(find("cryptoviz.io", "cryptopipelines/status"), set(&["patch"]));
    assert_eq!(find("cryptoviz.io", "cryptopipelines/finalizers"), set(&["update"]));
    assert_eq!(find("events.k8s.io", "events"), set(&["create", "patch"]));
    // Pods are only listed, to wait for a deleted pipeline's workers to be gone before its topics go.
    assert_eq!(find("", "pods"), set(&["list"]), "pods: list only");
    assert!(find("", "namespaces").is_empty());
    assert_eq!(find("monitoring.coreos.com", "podmonitors"), set(&["get", "create", "patch", "delete"]));
    assert!(find("apiextensions.k8s.io", "customresourcedefinitions").is_empty(), "discovery needs no CRD access");

    // The kustomize base grants exactly the same.
    let base = docs(&read("manifests/base/rbac.yaml"));
    let base_main = base.iter().find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "cryptoviz-operator");
    assert_eq!(rules_of(base_main.unwrap()), rules_of(main), "manifests/base/rbac.yaml and the chart disagree");
    assert_eq!(operator_cluster_roles(&base).len(), 1);

    // Without PodMonitors, nothing of monitoring.coreos.com.
    let objs = render(&["--set".into(), "rbac.podMonitors=false".into()]);
    assert_eq!(operator_cluster_roles(&objs).len(), 1);
    let rbac: Vec<&Value> = objs.iter().filter(|o| o["apiVersion"] == "rbac.authorization.k8s.io/v1").collect();
    assert!(!serde_json::to_string(&rbac).unwrap().contains("monitoring.coreos.com"));

    // Watch-namespace mode: a Role and RoleBinding per namespace with the same rules, no ClusterRole.
    let objs = render(&["-f".into(), chart().join("examples/watch-namespaces.yaml").display().to_string()]);
    no_wildcards(&objs);
    assert!(operator_cluster_roles(&objs).is_empty() && of_kind(&objs, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&objs, "Role");
    let nss: BTreeSet<&str> = roles.iter().map(|r| r["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(nss, BTreeSet::from(["markets", "research"]));
    let want: Vec<Value> = rules
        .iter()
        .filter(|r| !r["apiGroups"].as_array().unwrap().contains(&json!("monitoring.coreos.com")))
        .cloned()
        .collect();
    for r in &roles {
        assert_eq!(r["rules"], json!(want), "{}", id(r));
    }
    for b in of_kind(&objs, "RoleBinding") {
        assert_eq!(b["subjects"][0]["namespace"], RELEASE_NS);
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
    }
}

/// Dashboards become ConfigMaps for the Grafana sidecar and rule files one PrometheusRule, when the chart
/// holds such files (checked on a copy of the chart with one of each); without files the toggles render nothing.
#[tokio::test]
async fn dashboards_and_alert_rules_render_from_chart_files() {
    let toggles = ["--set".to_string(), "dashboards.enabled=true,prometheusRule.enabled=true".to_string()];
    let shipped = std::fs::read_dir(chart().join("dashboards"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
        .count();
    let objs = render(&toggles);
    let cms = of_kind(&objs, "ConfigMap");
    assert_eq!(cms.len(), shipped, "one ConfigMap per shipped dashboard");

    let copy = TestEnv::get().state_dir().join(unique("chart"));
    copy_dir(&chart(), &copy);
    let dashboard = r#"{"title": "CryptoViz test", "uid": "cv-test", "panels": []}"#;
    std::fs::write(copy.join("dashboards/zz-test_board.json"), dashboard).unwrap();
    std::fs::write(
        copy.join("rules/zz-test.rules.yaml"),
        "groups:\n- name: cryptoviz-test\n  rules:\n  - alert: CryptoVizTest\n    expr: up == 0\n    for: 5m\n",
    )
    .unwrap();
    let args: Vec<&str> = toggles.iter().map(String::as_str).collect();
    let objs = docs(&helm_template(&copy, RELEASE_NS, &args));
    let cm = of_kind(&objs, "ConfigMap")
        .into_iter()
        .find(|c| c["data"].get("zz-test_board.json").is_some())
        .expect("a ConfigMap for the test dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "CryptoViz");
    assert_eq!(cm["data"]["zz-test_board.json"], dashboard);
    assert!(cm["metadata"]["name"].as_str().unwrap().ends_with("-dashboard-zz-test-board"));
    let rule = one(&objs, "PrometheusRule");
    check_monitoring_object(rule);
    assert!(rule["spec"]["groups"].as_array().unwrap().iter().any(|g| g["name"] == "cryptoviz-test"));
    let client = TestEnv::get().kube_client().await;
    dry_run_apply(&client, std::slice::from_ref(cm)).await;
    std::fs::remove_dir_all(&copy).unwrap();
}

// ---- the apiserver accepts everything -----------------------------------------------------------------

/// Every object the chart renders — defaults, each example, every toggle — passes a server-side apply dry
/// run (schema, defaulting, admission); Prometheus Operator objects, whose CRDs the test cluster lacks on
/// purpose, are checked for shape.
#[tokio::test]
async fn every_rendered_chart_object_is_accepted_by_the_apiserver() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    for (name, args) in values_sets() {
        let objs = render(&args);
        let accepted = dry_run_apply(&client, &objs).await;
        for kind in ["CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"] {
            assert!(accepted.iter().any(|a| a.starts_with(&format!("{kind}/"))), "{name}: no {kind} in {accepted:?}");
        }
        let monitoring: Vec<&Value> = objs.iter().filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1").collect();
        monitoring.iter().for_each(|o| check_monitoring_object(o));
        assert_eq!(accepted.len() + monitoring.len(), objs.len(), "{name}");
        if name == "every toggle" {
            assert!(monitoring.iter().any(|o| o["kind"] == "ServiceMonitor"), "{name}: the ServiceMonitor renders");
            assert!(accepted.iter().any(|a| a.starts_with("PodDisruptionBudget/")), "{name}: {accepted:?}");
        }
    }
}

/// `kustomize build manifests/` (what `kubectl apply -k manifests/`, Argo CD and Flux apply) and the
/// example pipelines, with their Secret templates, pass a server-side dry run — the pipelines through the
/// CRD's schema and CEL rules. The Argo CD ConfigMap patch is a valid ConfigMap too.
#[tokio::test]
async fn kustomize_trees_are_accepted_by_the_apiserver() {
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let build = |dir: &str| docs(&run(Command::new(tool("kustomize")).arg("build").arg(repo_root().join(dir))));

    let base = build("manifests");
    let accepted = dry_run_apply(&client, &base).await;
    let kinds: BTreeSet<&str> = base.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, BTreeSet::from(want));
    assert_eq!(accepted.len(), base.len());
    let d = one(&base, "Deployment");
    assert_eq!(d["metadata"]["namespace"], "cryptoviz-system");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/cryptoviz/cryptoviz:0.1.0");
    let crd = one(&base, "CustomResourceDefinition");
    let generated: Value = docs(&read("crds/cryptopipeline.yaml")).remove(0);
    // kustomize re-emits `1.0` as `1`: compare numbers as numbers.
    assert_eq!(numbers_as_f64(&crd["spec"]), numbers_as_f64(&generated["spec"]), "the base applies the generated CRD");

    let examples = build("manifests/examples");
    let accepted = dry_run_apply(&client, &examples).await;
    let pipelines: BTreeSet<&str> = accepted.iter().filter_map(|a| a.strip_prefix("CryptoPipeline/")).collect();
    assert_eq!(pipelines, BTreeSet::from(["markets", "secure", "synthetic"]));
    assert_eq!(accepted.len(), examples.len());

    dry_run_apply(&client, &docs(&read("manifests/argocd/argocd-cm-patch.yaml"))).await;
}

/// The value with every number as a float, so `1` and `1.0` compare equal.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), numbers_as_f64(v))).collect()),
        v => v.clone(),
    }
}

// ---- Argo CD health -------------------------------------------------------------------------------------

/// A Lua table literal for a JSON value (strings escaped through JSON, which Lua reads the same way for ASCII).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).unwrap(),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{}] = {}", serde_json::to_string(k).unwrap(), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn health(obj: Value) -> (String, String) {
    let script = format!(
        "local obj = {}\nlocal hs = (function()\n{}\nend)()\nio.write(hs.status, \"\\t\", hs.message)\n",
        lua(&obj),
        read("manifests/argocd/health.lua")
    );
    let path = TestEnv::get().state_dir().join(format!("{}.lua", unique("health")));
    std::fs::write(&path, script).unwrap();
    let out = run(Command::new("lua5.1").arg(&path));
    std::fs::remove_file(&path).unwrap();
    let (s, m) = out.split_once('\t').expect("status\\tmessage");
    (s.to_string(), m.to_string())
}

fn cond(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} is {status}: {reason}")})
}

/// The shipped Lua maps the operator's conditions to Argo CD health as docs/gitops.md says, and the
/// argocd-cm patch embeds exactly that Lua.
#[test]
fn argocd_health_check_follows_the_conditions() {
    let with = |generation: i64, observed: i64, phase: &str, conds: Vec<Value>| {
        json!({"metadata": {"generation": generation},
               "status": {"observedGeneration": observed, "phase": phase, "conditions": conds}})
    };
    let cases = [
        (json!({"metadata": {"generation": 1}}), "Progressing"),
        (
            with(1, 1, "Ready", vec![cond("TopicsReady", "True", "Ok"), cond("Ready", "True", "AllComponentsReady")]),
            "Healthy",
        ),
        (with(2, 1, "Ready", vec![cond("Ready", "True", "AllComponentsReady")]), "Progressing"),
        (with(1, 1, "Progressing", vec![cond("Ready", "False", "ScraperNotReady")]), "Progressing"),
        (with(1, 1, "Progressing", vec![cond("TopicsReady", "False", "Creating")]), "Progressing"),
        (with(1, 1, "Degraded", vec![cond("Ready", "False", "BrokerUnreachable")]), "Degraded"),
        (
            with(
                1,
                1,
                "Paused",
                vec![cond("Paused", "True", "ReconciliationPaused"), cond("Ready", "False", "ReconciliationPaused")],
            ),
            "Suspended",
        ),
        (
            with(
                1,
                1,
                "Ready",
                vec![cond("Paused", "False", "NotPaused"), cond("Ready", "True", "AllComponentsReady")],
            ),
            "Healthy",
        ),
    ];
    for (obj, want) in cases {
        let (status, message) = health(obj.clone());
        assert_eq!(status, want, "{obj}: {message}");
        assert!(!message.is_empty());
    }
    let (_, m) = health(with(1, 1, "Degraded", vec![cond("Ready", "False", "BrokerUnreachable")]));
    assert_eq!(m, "Ready is False: BrokerUnreachable", "Degraded carries the Ready message");

    let patch = docs(&read("manifests/argocd/argocd-cm-patch.yaml")).remove(0);
    let embedded = patch["data"]["resource.customizations.health.cryptoviz.io_CryptoPipeline"].as_str().unwrap();
    assert_eq!(embedded, read("manifests/argocd/health.lua"), "argocd-cm-patch.yaml embeds health.lua verbatim");
}

// ---- installed for real, operator under the chart's identity ------------------------------------------

/// Ask the apiserver whether the ServiceAccount may do something (SubjectAccessReview, as admin).
async fn can(client: &Client, user: &str, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
    // `resource#name` asks about one object (rules limited by resourceNames).
    let (resource, name) = match resource.split_once('#') {
        Some((r, n)) => (r, Some(n.to_string())),
        None => (resource, None),
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                name,
                namespace: ns.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &sar).await.expect("SubjectAccessReview").status.expect("status").allowed
}

/// The operator runs below take turns: a cluster-wide operator also reconciles the watch-namespace test's
/// pipeline, which would then prove nothing about the namespaced RBAC. Held for a test's whole body.
static OPERATOR_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the user may GET a non-resource path (API discovery).
async fn can_get_path(client: &Client, user: &str, path: &str) -> bool {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
            non_resource_attributes: Some(NonResourceAttributes { path: Some(path.into()), verb: Some("get".into()) }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    api.create(&PostParams::default(), &sar).await.expect("SubjectAccessReview").status.expect("status").allowed
}

/// Lines of the operator log where the apiserver's authorizer refused the operator's ServiceAccount
/// (`... is forbidden: User "system:serviceaccount:<ns>:<sa>" cannot <verb> resource ...`). Other 403s are
/// not about RBAC and are expected on a shared cluster that a cluster-wide operator sees whole: admission
/// refusals such as another test's ResourceQuota ("forbidden: exceeded quota") or a namespace being deleted.
fn rbac_failures(op: &OperatorProcess) -> Vec<String> {
    op.forbidden_lines()
        .into_iter()
        .filter(|l| l.contains("system:serviceaccount:") && l.contains(" cannot "))
        .collect()
}

/// A pipeline (gateway on, synthetic source, the test broker, topics deleted with the pipeline, plus
/// `extra`) reaches Ready=True under the operator, its Ready event is published, and its deletion completes
/// (the finalizer path: topic deletion, finalizer patch).
async fn prove_pipeline_lifecycle(client: &Client, ns: &str, op: &OperatorProcess, extra: Value) {
    let mut spec = json!({"gateway": {"enabled": true}, "kafka": {"deletionPolicy": "Delete"}});
    cryptoviz_tests::operator::merge(&mut spec, extra);
    let p = pipeline("feed", spec);
    create(client, ns, &p).await;
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), ns);
    // The closure gives up a little before wait_for would, returning the last Ready message for the panic
    // (e.g. worker pods Pending because the shared kwok node is full is not an RBAC failure).
    let give_up = std::time::Instant::now() + Duration::from_secs(120);
    let outcome = wait_for("Ready=True under the chart's RBAC", Duration::from_secs(130), || async {
        let ready =
            api.get("feed").await.ok().and_then(|p| p.status?.conditions.into_iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => Some(Ok(())),
            last if std::time::Instant::now() >= give_up => Some(Err(format!("{last:?}"))),
            _ => None,
        }
    })
    .await;
    if let Err(last) = outcome {
        panic!("no Ready=True within 120s under the chart's RBAC; last Ready: {last}; log: {}", op.log.display());
    }
    let live = api.get("feed").await.unwrap();
    assert!(
        live.finalizers().iter().any(|f| f.starts_with("cryptoviz.io")),
        "finalizer added: {:?}",
        live.finalizers()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for("the operator's Ready event", Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Ready") && e.reporting_controller.as_deref() == Some("cryptoviz-operator")
            })
            .then_some(())
    })
    .await;
    api.delete("feed", &DeleteParams::default()).await.unwrap();
    wait_for("the pipeline's finalizer to be released", Duration::from_secs(60), || async {
        api.get_opt("feed").await.ok()?.is_none().then_some(())
    })
    .await;
    let failures = rbac_failures(op);
    assert!(failures.is_empty(), "authorization failures in {}:\n{}", op.log.display(), failures.join("\n"));
}

/// Default install (cluster-wide ClusterRole): the operator running as the chart's ServiceAccount gets a
/// pipeline to Ready and back out, with no authorization failure; and the account can do nothing more
/// than the operator needs.
#[tokio::test]
async fn helm_install_cluster_wide_rbac_suffices_for_the_operator() {
    let _turn = OPERATOR_TURN.lock().await;
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let release_ns = namespace(&client, "pkg-rel").await;
    let ns = namespace(&client, "pkg-cw").await;
    let inst = Install::new(&release_ns, &[]);
    let user = inst.user();
    for (verb, group, res, allowed) in [
        ("list", "cryptoviz.io", "cryptopipelines", true),
        ("patch", "cryptoviz.io", "cryptopipelines/status", true),
        ("update", "cryptoviz.io", "cryptopipelines/finalizers", true),
        ("watch", "apps", "deployments", true),
        ("get", "", "secrets", true),
        ("list", "", "secrets", false),
        ("delete", "cryptoviz.io", "cryptopipelines", false),
        ("create", "", "pods", false),
        ("update", "cryptoviz.io", "cryptopipelines/status", false),
        ("create", "coordination.k8s.io", "leases", false),
        ("create", "monitoring.coreos.com", "podmonitors", true),
        ("list", "monitoring.coreos.com", "podmonitors", false),
        ("create", "monitoring.coreos.com", "servicemonitors", false),
        ("get", "apiextensions.k8s.io", "customresourcedefinitions", false),
    ] {
        let ns_arg = if verb == "list" || verb == "watch" { None } else { Some(ns.as_str()) };
        assert_eq!(can(&client, &user, verb, group, res, ns_arg).await, allowed, "{verb} {group}/{res}");
    }
    // The operator finds the Prometheus Operator's CRDs through discovery, which needs no rule of ours.
    assert!(can_get_path(&client, &user, "/apis/monitoring.coreos.com/v1").await);
    let kubeconfig = service_account_kubeconfig(&client, &release_ns, &inst.service_account()).await;
    let op = OperatorProcess::start(&kubeconfig, &[], &[]).await;
    prove_pipeline_lifecycle(&client, &ns, &op, json!({})).await;
    drop(inst);
    delete_namespaces(&client, &[&release_ns, &ns]).await;
}

/// Watch-namespace install with leader election: Roles only in the watched namespace, a Lease Role in the
/// release namespace; the operator (as the chart's ServiceAccount) wins the Lease and gets a pipeline to
/// Ready and back out with no authorization failure — and has no access outside its namespace.
#[tokio::test]
async fn helm_install_watch_namespace_rbac_suffices_for_the_operator() {
    let _turn = OPERATOR_TURN.lock().await;
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let release_ns = namespace(&client, "pkg-rel").await;
    let ns = namespace(&client, "pkg-wn").await;
    let other = namespace(&client, "pkg-other").await;
    let set = format!("watchNamespaces[0]={ns},leaderElection.enabled=true");
    let inst = Install::new(&release_ns, &["--set", &set]);
    let user = inst.user();
    assert!(can(&client, &user, "list", "cryptoviz.io", "cryptopipelines", Some(&ns)).await);
    assert!(can(&client, &user, "get", "", "secrets", Some(&ns)).await);
    assert!(!can(&client, &user, "list", "cryptoviz.io", "cryptopipelines", None).await, "no cluster-wide list");
    assert!(!can(&client, &user, "get", "", "secrets", Some(&other)).await, "no Secrets elsewhere");
    assert!(!can(&client, &user, "create", "apps", "deployments", Some(&other)).await);
    assert!(can(&client, &user, "update", "coordination.k8s.io", "leases#cryptoviz-operator", Some(&release_ns)).await);
    assert!(can(&client, &user, "create", "coordination.k8s.io", "leases", Some(&release_ns)).await);
    assert!(!can(&client, &user, "update", "coordination.k8s.io", "leases#another-lease", Some(&release_ns)).await);
    assert!(!can(&client, &user, "update", "coordination.k8s.io", "leases#cryptoviz-operator", Some(&ns)).await);

    let kubeconfig = service_account_kubeconfig(&client, &release_ns, &inst.service_account()).await;
    let extra: Vec<String> = ["--leader-elect", "--lease-namespace", &release_ns, "--lease-name", "cryptoviz-operator"]
        .map(String::from)
        .to_vec();
    let op = OperatorProcess::start(&kubeconfig, std::slice::from_ref(&ns), &extra).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_ns);
    wait_for("the operator to hold the Lease", Duration::from_secs(30), || async {
        let l = leases.get_opt("cryptoviz-operator").await.ok()??;
        l.spec?.holder_identity.filter(|h| !h.is_empty()).map(|_| ())
    })
    .await;
    // Through the SASL listener: the operator reads the credentials Secret itself (secrets: get).
    let env = TestEnv::get();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kafka-sasl"},
        "stringData": {"username": env.var("CRYPTOVIZ_KAFKA_SASL_USER"), "password": env.var("CRYPTOVIZ_KAFKA_SASL_PASSWORD")},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await.unwrap();
    let sasl = json!({"kafka": {"bootstrapServers": env.var("CRYPTOVIZ_KAFKA_SASL_BOOTSTRAP"),
                                "sasl": {"mechanism": "SCRAM-SHA-512", "secretName": "kafka-sasl"}}});
    prove_pipeline_lifecycle(&client, &ns, &op, sasl).await;
    drop(inst);
    delete_namespaces(&client, &[&release_ns, &ns, &other]).await;
}

/// The control for the two tests above: with the chart's RBAC turned off the same operator is refused,
/// and the log check catches it (so a missing rule cannot pass unnoticed).
#[tokio::test]
async fn without_the_chart_rbac_the_operator_is_forbidden() {
    let _turn = OPERATOR_TURN.lock().await;
    let client = TestEnv::get().kube_client().await;
    install_crd(&client).await;
    let release_ns = namespace(&client, "pkg-rel").await;
    let ns = namespace(&client, "pkg-norbac").await;
    let set = format!("watchNamespaces[0]={ns},rbac.create=false");
    let inst = Install::new(&release_ns, &["--set", &set]);
    assert!(!can(&client, &inst.user(), "list", "cryptoviz.io", "cryptopipelines", Some(&ns)).await);
    let kubeconfig = service_account_kubeconfig(&client, &release_ns, &inst.service_account()).await;
    let op = OperatorProcess::start(&kubeconfig, std::slice::from_ref(&ns), &[]).await;
    wait_for("an authorization failure in the operator's log", Duration::from_secs(60), || async {
        (!rbac_failures(&op).is_empty()).then_some(())
    })
    .await;
    drop(inst);
    delete_namespaces(&client, &[&release_ns, &ns]).await;
}
