//! Run a Deployment's pod spec as a local process, the way a kubelet would run it — the end-to-end test's
//! way of proving the operator's rendering and the workers agree.
//!
//! What is honoured exactly: the container's command and args (the image's entrypoint is
//! `cryptoviz-worker`), every environment variable (`value`, `valueFrom.secretKeyRef`,
//! `valueFrom.configMapKeyRef`, `valueFrom.fieldRef` for the pod's name and namespace), and every volume
//! mount (ConfigMap, Secret and emptyDir volumes are written to a temporary directory and bind-mounted at
//! their mount paths in a private mount namespace, so `/etc/cryptoviz/config.yaml` is really there).
//! The one difference: pods each have their own network namespace and all listen on 8080; local processes
//! share loopback, so each gets `CRYPTOVIZ_LISTEN=127.0.0.1:<free port>` on top of its pod environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::binary;
use crate::operator::free_port;
use crate::unique;

/// A worker process started from a pod spec; killed (with its process group) when dropped.
pub struct PodProcess {
    child: std::sync::Mutex<Child>,
    /// Base URL of its HTTP server.
    pub url: String,
    /// The pod template's config hash when it was started (a rollout changes it).
    pub config_hash: String,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
    root: PathBuf,
}

impl PodProcess {
    /// Whether the process is still running.
    pub fn running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = crate::process::signal_group(child.id(), crate::process::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Start the first container of Deployment `name` in `ns` as a local process.
pub async fn run_deployment(client: &Client, ns: &str, name: &str, work_dir: &Path) -> PodProcess {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns).get(name).await.expect("the Deployment exists");
    let template = deployment.spec.expect("spec").template;
    let config_hash = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("cryptoviz.io/config-hash"))
        .cloned()
        .unwrap_or_default();
    let pod = template.spec.expect("pod spec");
    let c = &pod.containers[0];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pod_name = format!("{name}-local");

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(from) = &e.value_from {
            if let Some(r) = &from.secret_key_ref {
                let s = secrets.get(&r.name).await.unwrap_or_else(|e| panic!("Secret {} for {}: {e}", r.name, c.name));
                let bytes = s
                    .data
                    .unwrap_or_default()
                    .get(&r.key)
                    .unwrap_or_else(|| panic!("Secret {} has no key {}", r.name, r.key))
                    .0
                    .clone();
                String::from_utf8(bytes).unwrap()
            } else if let Some(r) = &from.config_map_key_ref {
                let cm = config_maps.get(&r.name).await.unwrap();
                cm.data.unwrap_or_default()[&r.key].clone()
            } else if let Some(f) = &from.field_ref {
                match f.field_path.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => ns.to_string(),
                    other => panic!("fieldRef {other} is not supported by the local runner"),
                }
            } else {
                panic!("unsupported valueFrom on {}", e.name)
            }
        } else {
            String::new()
        };
        env.insert(e.name.clone(), value);
    }
    let port = free_port();
    env.insert("CRYPTOVIZ_LISTEN".into(), format!("127.0.0.1:{port}"));

    // Volumes → files under `root`, one directory per mount.
    let root = work_dir.join(unique(&format!("pod-{name}")));
    let mut binds: Vec<(PathBuf, String)> = vec![];
    for m in c.volume_mounts.iter().flatten() {
        let vol = pod.volumes.iter().flatten().find(|v| v.name == m.name).expect("mount names a volume");
        let src = root.join(m.name.as_str());
        std::fs::create_dir_all(&src).unwrap();
        if let Some(cm) = &vol.config_map {
            let data = config_maps.get(&cm.name).await.unwrap().data.unwrap_or_default();
            for (k, v) in data {
                std::fs::write(src.join(k), v).unwrap();
            }
        } else if let Some(s) = &vol.secret {
            let secret_name = s.secret_name.clone().expect("secretName");
            let data = secrets.get(&secret_name).await.unwrap().data.unwrap_or_default();
            let items: Vec<(String, String)> = match &s.items {
                Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                std::fs::write(src.join(path), &data[&key].0).unwrap();
            }
        } else if vol.empty_dir.is_none() {
            panic!("volume {} has a kind the local runner does not support", vol.name);
        }
        binds.push((src, m.mount_path.clone()));
    }
    // Nested mounts after their parents, and /tmp last (mounting it hides the sources under /tmp).
    binds.sort_by_key(|(_, p)| (p == "/tmp" || p.starts_with("/tmp/"), p.len()));
    // The image's entrypoint is the worker binary. Open it before mounting: the binary may live under /tmp
    // (a CI checkout), which the pod's emptyDir then covers; the kernel runs it from the open descriptor.
    let mut script =
        format!("set -e\nexec 9< {}\n", shell_quote(&binary::path("cryptoviz-worker").display().to_string()));
    for (src, path) in &binds {
        script.push_str(&format!(
            "mkdir -p {p} && mount --bind {s} {p}\n",
            p = shell_quote(path),
            s = shell_quote(&src.display().to_string())
        ));
    }
    assert!(c.command.is_none(), "the local runner runs the image's entrypoint (cryptoviz-worker) only");
    let mut argv: Vec<String> = vec!["/proc/self/fd/9".into()];
    argv.extend(c.args.clone().unwrap_or_default());
    script.push_str(&format!("exec {}\n", argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")));

    let log = work_dir.join(format!("{}.log", unique(name)));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("start the pod's process");
    PodProcess { child: std::sync::Mutex::new(child), url: format!("http://127.0.0.1:{port}"), config_hash, log, root }
}
