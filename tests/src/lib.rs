//! Support for the integration tests: the endpoints of the real servers `tests/env/up` started, and
//! waiting on conditions with a deadline (never a fixed sleep).
//!
//! A missing server is a test failure, never a skip: every accessor panics with what is missing and how
//! to start it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod binary;
pub mod browser;
pub mod consumer;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod podspec;
pub mod process;
pub mod standins;
use std::time::{Duration, Instant};

/// Endpoints of the running test environment, read from `$CRYPTOVIZ_STATE/env`.
#[derive(Debug)]
pub struct TestEnv {
    vars: HashMap<String, String>,
    state_dir: PathBuf,
}

impl TestEnv {
    /// The environment of this test run (read once per test binary).
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let state_dir = std::env::var("CRYPTOVIZ_STATE").map(PathBuf::from).unwrap_or_else(|_| {
                let home = std::env::var("HOME").expect("HOME");
                PathBuf::from(home).join(".cache/cryptoviz/state/dev")
            });
            let file = state_dir.join("env");
            let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                panic!(
                    "no test environment at {}: {e}. Start it with `tests/env/up` (or run `tests/run`).",
                    file.display()
                )
            });
            TestEnv { vars: parse_env_file(&text), state_dir }
        })
    }

    /// A published endpoint; panics naming the component when it is missing.
    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!("{key} is not in {}/env: is its server started? (`tests/env/up`)", self.state_dir.display())
        })
    }

    /// The state directory of this run.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(self.var("CRYPTOVIZ_KUBECONFIG"))
    }

    /// A kube client with admin rights on the test control plane.
    pub async fn kube_client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kubeconfig config");
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// `host:port` of the plaintext Kafka listener.
    pub fn kafka_bootstrap(&self) -> &str {
        self.var("CRYPTOVIZ_KAFKA_BOOTSTRAP")
    }

    /// URL of the TimescaleDB test server.
    pub fn timescale_url(&self) -> &str {
        self.var("CRYPTOVIZ_TIMESCALE_URL")
    }

    /// URL of the PostgreSQL 15 server.
    pub fn postgres_url(&self) -> &str {
        self.var("CRYPTOVIZ_POSTGRES_URL")
    }

    /// Base URL of Prometheus.
    pub fn prometheus_url(&self) -> &str {
        self.var("CRYPTOVIZ_PROMETHEUS_URL")
    }

    /// Run `tests/env/<component>/<action>` (start or stop) against this state dir, e.g. to stop the broker
    /// mid-test and start it again on the same port.
    pub fn component(&self, component: &str, action: &str) {
        let script = repo_root().join("tests/env").join(component).join(action);
        let status = std::process::Command::new(&script)
            .env("CRYPTOVIZ_STATE", &self.state_dir)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
    }
}

fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches(['"', '\'']).to_string()))
        .collect()
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// A name unique to this test process, for namespaces, topics and schemas that must not collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_export_lines() {
        let v = parse_env_file("export A=1\nexport B=\"x=y\"\n# comment\nC=3\n");
        assert_eq!(v["A"], "1");
        assert_eq!(v["B"], "x=y");
        assert!(!v.contains_key("C"));
    }
}
