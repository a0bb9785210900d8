//! Running the operator against the test control plane: install the CRD, start the real
//! `cryptoviz-operator` binary as a process (killed on drop), read its metrics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cryptoviz_crds::CryptoPipeline;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

use crate::{TestEnv, http, metrics, repo_root, unique, wait_for};

/// Server-side apply the committed CRD (once per test binary) and wait until it is Established.
pub async fn install_crd(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let yaml = std::fs::read_to_string(repo_root().join("crds/cryptopipeline.yaml")).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        api.patch("cryptopipelines.cryptoviz.io", &PatchParams::apply("cryptoviz-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("the apiserver accepts the CRD");
        wait_for("the CRD to be Established", Duration::from_secs(30), || async {
            let c = api.get("cryptopipelines.cryptoviz.io").await.ok()?;
            c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
        })
        .await;
        // Discovery may lag Established by a moment: wait until the API answers.
        let pipelines: Api<CryptoPipeline> = Api::all(client.clone());
        wait_for("the cryptopipelines API to serve", Duration::from_secs(30), || async {
            pipelines.list(&Default::default()).await.ok().map(|_| ())
        })
        .await;
    })
    .await;
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
    name
}

/// A running operator process; killed when dropped.
pub struct Operator {
    child: Child,
    /// The binary it runs.
    pub binary: PathBuf,
    /// Base URL of its HTTP server.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
}

/// Options for [`Operator::start`].
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Namespaces to watch.
    pub namespaces: Vec<String>,
    /// Resync interval (`--resync-interval`).
    pub resync: String,
    /// Extra arguments.
    pub extra_args: Vec<String>,
    /// Identity (`--identity`).
    pub identity: Option<String>,
}

impl OperatorOptions {
    /// Watch one namespace with a long resync.
    pub fn watching(ns: &str) -> Self {
        OperatorOptions { namespaces: vec![ns.into()], resync: "5m".into(), extra_args: vec![], identity: None }
    }
}

impl Operator {
    /// Start `cryptoviz-operator` against the test control plane and wait for `/readyz`.
    pub async fn start(opts: OperatorOptions) -> Operator {
        let env = TestEnv::get();
        let port = free_port();
        let log = env.state_dir().join(format!("{}.operator.log", unique("op")));
        let out = std::fs::File::create(&log).unwrap();
        let bin = crate::binary::path("cryptoviz-operator");
        let mut cmd = Command::new(&bin);
        cmd.env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "info,cryptoviz_operator=debug,kube=warn")
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--resync-interval")
            .arg(&opts.resync)
            .arg("--log-format")
            .arg("json")
            .arg("--worker-image")
            .arg("ghcr.io/cryptoviz/cryptoviz:test");
        for ns in &opts.namespaces {
            cmd.arg("--watch-namespace").arg(ns);
        }
        if let Some(id) = &opts.identity {
            cmd.arg("--identity").arg(id);
        }
        cmd.args(&opts.extra_args).stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null());
        let child = cmd.spawn().expect("start cryptoviz-operator");
        let op = Operator { child, binary: bin, url: format!("http://127.0.0.1:{port}"), log };
        let url = format!("{}/readyz", op.url);
        wait_for("the operator's /readyz", Duration::from_secs(30), || async { http::body(&url).await.map(drop) })
            .await;
        op
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> String {
        http::body(&format!("{}/metrics", self.url)).await.expect("/metrics answers")
    }

    /// Sum of the samples named `name` carrying every `(label, value)` in `labels` (see [`metrics::sum`]).
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.metrics().await, name, labels)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGKILL and wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM (graceful shutdown) and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = crate::process::signal(self.child.id(), crate::process::SIGTERM);
        self.child.wait().unwrap()
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An unused TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal valid pipeline on the test broker, as JSON, with `extra` deep-merged into its spec.
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

/// The same pipeline, typed.
pub fn pipeline(name: &str, extra: serde_json::Value) -> CryptoPipeline {
    serde_json::from_value(pipeline_json(name, extra)).unwrap()
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
pub async fn create(client: &Client, ns: &str, p: &CryptoPipeline) -> CryptoPipeline {
    let api: Api<CryptoPipeline> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), p).await.expect("the apiserver accepts the pipeline")
}
