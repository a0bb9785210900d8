//! Helpers of the packaging tests: the pinned tools, rendering, server-side dry runs, ServiceAccount
//! kubeconfigs and an operator process running under a chart's identity.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cryptoviz_tests::operator::free_port;
use cryptoviz_tests::{TestEnv, binary, http, repo_root, unique, wait_for};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// Field manager of everything these tests apply.
pub const MANAGER: &str = "cryptoviz-packaging-tests";

/// A binary installed by `tests/env/tools/install` (fixed path under CRYPTOVIZ_CACHE).
pub fn tool(name: &str) -> PathBuf {
    let cache = std::env::var("CRYPTOVIZ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/cryptoviz"));
    let p = cache.join("tools/bin").join(name);
    assert!(p.exists(), "{} is missing: run tests/env/tools/install (tests/run does)", p.display());
    p
}

/// Run a command; its stdout on success, a panic with stderr otherwise.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run a command expected to fail; its stderr.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} succeeded but must fail:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo_root().join("charts/cryptoviz-operator")
}

/// `helm` with the admin kubeconfig and a private cache/config (no user state involved).
pub fn helm() -> Command {
    let env = TestEnv::get();
    let home = env.state_dir().join("helm");
    let mut c = Command::new(tool("helm"));
    c.env("KUBECONFIG", env.kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    c
}

/// `helm template` of `chart_dir` in namespace `ns` with extra arguments (the CRD is a template: `crds.enabled`).
pub fn helm_template(chart_dir: &Path, ns: &str, args: &[&str]) -> String {
    run(helm().args(["template", "cryptoviz"]).arg(chart_dir).args(["--namespace", ns]).args(args))
}

/// The documents of a multi-document YAML stream, empty ones dropped.
pub fn docs(yaml: &str) -> Vec<Value> {
    let all: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("parse YAML: {e}\n{yaml}"));
    all.into_iter().filter(|d| d.is_object()).collect()
}

/// `kind/name` of an object.
pub fn id(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?"))
}

/// The objects of `kind`.
pub fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind`.
pub fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let v = of_kind(objs, kind);
    assert_eq!(v.len(), 1, "exactly one {kind} expected, got {:?}", v.iter().map(|o| id(o)).collect::<Vec<_>>());
    v[0]
}

/// Groups the test control plane does not serve on purpose (no Prometheus Operator: installing its CRDs would
/// change what the operator's `serviceMonitor: auto` does in every other test). Objects of these groups are
/// checked by [`check_monitoring_object`] instead.
pub const UNSERVED_GROUPS: &[&str] = &["monitoring.coreos.com"];

/// Make sure every namespace the objects live in exists (Namespace objects are applied for real, others
/// created empty): a dry run cannot create the namespace the next object needs.
pub async fn ensure_namespaces(client: &Client, objs: &[Value]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for o in objs.iter().filter(|o| o["kind"] == "Namespace" && o["apiVersion"] == "v1") {
        let ns: Namespace = serde_json::from_value(o.clone()).unwrap();
        api.patch(&ns.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&ns)).await.unwrap();
    }
    let names: BTreeSet<&str> = objs.iter().filter_map(|o| o["metadata"]["namespace"].as_str()).collect();
    for n in names {
        if api.get_opt(n).await.unwrap().is_none() {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create namespace {n}: {e}"),
            }
        }
    }
}

/// Server-side apply every object with dryRun=All: the apiserver runs defaulting, schema and CEL validation and
/// admission, and stores nothing. Returns the ids accepted. Panics naming every rejected object.
pub async fn dry_run_apply(client: &Client, objs: &[Value]) -> Vec<String> {
    ensure_namespaces(client, objs).await;
    // Only the groups the objects use: other tests create and delete CRDs of their own groups meanwhile,
    // and a group that vanishes between listing and querying fails a whole-cluster discovery.
    let groups: BTreeSet<&str> =
        objs.iter().map(|o| o["apiVersion"].as_str().unwrap().rsplit_once('/').map_or("", |(g, _)| g)).collect();
    let groups: Vec<&str> = groups.into_iter().collect();
    let discovery = Discovery::new(client.clone()).filter(&groups).run().await.expect("discovery");
    let mut accepted = vec![];
    let mut rejected = vec![];
    for o in objs {
        let (group, version) = match o["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), o["apiVersion"].as_str().unwrap().to_string()),
        };
        if UNSERVED_GROUPS.contains(&group.as_str()) {
            continue;
        }
        let gvk = GroupVersionKind::gvk(&group, &version, o["kind"].as_str().unwrap());
        let Some((ar, caps)) = discovery.resolve_gvk(&gvk) else {
            rejected.push(format!("{}: {gvk:?} is not served", id(o)));
            continue;
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let Some(ns) = o["metadata"]["namespace"].as_str() else {
                    rejected.push(format!("{}: namespaced but has no metadata.namespace", id(o)));
                    continue;
                };
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let mut pp = PatchParams::apply(MANAGER).force();
        pp.dry_run = true;
        match api.patch(o["metadata"]["name"].as_str().unwrap(), &pp, &Patch::Apply(o)).await {
            Ok(_) => accepted.push(id(o)),
            Err(e) => rejected.push(format!("{}: {e}", id(o))),
        }
    }
    assert!(rejected.is_empty(), "the apiserver rejected:\n{}", rejected.join("\n"));
    accepted
}

/// What the apiserver cannot check (its CRDs are absent here): the Prometheus Operator objects have the
/// shape the Prometheus Operator's CRDs require.
pub fn check_monitoring_object(o: &Value) {
    assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1", "{}", id(o));
    assert!(o["metadata"]["namespace"].is_string(), "{}", id(o));
    match o["kind"].as_str().unwrap() {
        "ServiceMonitor" => {
            assert!(o["spec"]["selector"]["matchLabels"].as_object().is_some_and(|m| !m.is_empty()), "{o}");
            let eps = o["spec"]["endpoints"].as_array().expect("endpoints");
            assert!(!eps.is_empty() && eps.iter().all(|e| e["port"].is_string()), "{o}");
        }
        "PrometheusRule" => {
            let groups = o["spec"]["groups"].as_array().expect("groups");
            assert!(!groups.is_empty(), "{o}");
            for g in groups {
                assert!(g["name"].is_string(), "{g}");
                for r in g["rules"].as_array().expect("rules") {
                    assert!(r["expr"].is_string() && (r["alert"].is_string() || r["record"].is_string()), "{r}");
                }
            }
        }
        k => panic!("unexpected monitoring kind {k}"),
    }
}

/// A kubeconfig (JSON, which is YAML) for `sa` in `ns`: the admin kubeconfig's cluster with a bound token from
/// the TokenRequest API. Written to a file in the state dir.
pub async fn service_account_kubeconfig(client: &Client, ns: &str, sa: &str) -> PathBuf {
    let env = TestEnv::get();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    let token = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .expect("token status")
        .token;
    let admin: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(env.kubeconfig()).unwrap()).expect("admin kubeconfig");
    let mut cluster = admin["clusters"][0]["cluster"].clone();
    // Relative CA paths resolve against the admin kubeconfig's directory.
    if let Some(ca) = cluster["certificate-authority"].as_str() {
        let ca = env.kubeconfig().parent().unwrap().join(ca);
        cluster["certificate-authority"] = json!(ca);
    }
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": sa, "namespace": ns}}],
        "current-context": "sa",
    });
    let path = env.state_dir().join(format!("{}.kubeconfig", unique("sa")));
    std::fs::write(&path, serde_json::to_string_pretty(&kc).unwrap()).unwrap();
    path
}

/// `cryptoviz-operator` running with a given kubeconfig (the chart ServiceAccount's identity); killed on drop.
pub struct OperatorProcess {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Start the operator with `kubeconfig`, watching `namespaces` (none: the whole cluster), and wait for
    /// /readyz. The worker image is the one the other operator tests use, so a cluster-wide instance writes
    /// exactly what their operators write.
    pub async fn start(kubeconfig: &Path, namespaces: &[String], extra: &[String]) -> OperatorProcess {
        let env = TestEnv::get();
        let port = free_port();
        let log = env.state_dir().join(format!("{}.operator.log", unique("pkg-op")));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(binary::path("cryptoviz-operator"));
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,cryptoviz_operator=debug,kube=warn")
            .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--log-format", "json"])
            .args(["--resync-interval", "5m", "--worker-image", "ghcr.io/cryptoviz/cryptoviz:test"]);
        for ns in namespaces {
            cmd.args(["--watch-namespace", ns]);
        }
        cmd.args(extra).stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null());
        let child = cmd.spawn().expect("start cryptoviz-operator");
        let op = OperatorProcess { child, log };
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_for("the operator's /readyz", Duration::from_secs(30), || async { http::body(&url).await.map(|_| ()) })
            .await;
        op
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines mentioning an authorization failure.
    pub fn forbidden_lines(&self) -> Vec<String> {
        self.log_text().lines().filter(|l| l.to_lowercase().contains("forbidden")).map(String::from).collect()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy a directory tree (regular files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Delete the namespaces a passing test made (a failing one leaves them for inspection).
pub async fn delete_namespaces(client: &Client, names: &[&str]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for n in names {
        api.delete(n, &DeleteParams::background()).await.unwrap();
    }
}

/// A Helm release of the chart (or of a copy of it), uninstalled on drop.
pub struct Install {
    /// The release name.
    pub release: String,
    /// Its namespace.
    pub release_ns: String,
    chart: PathBuf,
}

impl Install {
    /// `helm install` of the chart into a new namespace, without the CRD (`crds.enabled=false`): the shared
    /// test cluster has one `cryptopipelines.cryptoviz.io`, applied by the tests (`install_crd`), which no
    /// release may own. Without `--wait`: the operator under test runs as a local process, and the chart's
    /// own pod only competes for the shared kwok node's pod slots (its validity is proven by the dry runs);
    /// the install itself must go through the apiserver completely.
    pub fn new(release_ns: &str, args: &[&str]) -> Install {
        let mut all = vec!["--set", "crds.enabled=false"];
        all.extend_from_slice(args);
        Install::of_chart(&chart(), release_ns, &all)
    }

    /// `helm install` of the chart in `chart_dir` with exactly `args`.
    pub fn of_chart(chart_dir: &Path, release_ns: &str, args: &[&str]) -> Install {
        // Built before installing, so a failed install is uninstalled too.
        let inst = Install { release: unique("cv"), release_ns: release_ns.into(), chart: chart_dir.into() };
        let out =
            run(helm().args(["install", &inst.release]).arg(chart_dir).args(["--namespace", release_ns]).args(args));
        assert!(out.contains("STATUS: deployed"), "{out}");
        inst
    }

    /// `helm upgrade` of the release to the chart in its directory as it is now, with `args`.
    pub fn upgrade(&self, args: &[&str]) -> String {
        let out = run(helm()
            .args(["upgrade", &self.release])
            .arg(&self.chart)
            .args(["--namespace", &self.release_ns])
            .args(args));
        assert!(out.contains("STATUS: deployed"), "{out}");
        out
    }

    /// `helm uninstall`, waiting for the deletions; its output.
    pub fn uninstall(self) -> String {
        let out = run(helm().args(["uninstall", &self.release, "--namespace", &self.release_ns, "--wait"]));
        std::mem::forget(self);
        out
    }

    /// The chart's ServiceAccount.
    pub fn service_account(&self) -> String {
        format!("{}-cryptoviz-operator", self.release)
    }

    /// The ServiceAccount's user name.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.release_ns, self.service_account())
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // Cluster-scoped RBAC must not pile up in the shared control plane.
        let _ = helm().args(["uninstall", &self.release, "--namespace", &self.release_ns, "--wait"]).output();
    }
}

/// A client acting as `user` (member of `system:authenticated`) through impersonation by the admin.
pub async fn impersonating(user: &str) -> Client {
    let env = TestEnv::get();
    let kc = kube::config::Kubeconfig::read_from(env.kubeconfig()).expect("read kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig config");
    cfg.auth_info.impersonate = Some(user.into());
    cfg.auth_info.impersonate_groups = Some(vec!["system:authenticated".into()]);
    Client::try_from(cfg).expect("kube client")
}
