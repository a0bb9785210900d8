//! `cryptoviz-operator`: reconciles CryptoPipelines into Kafka topics, database schema and worker Deployments.

use cryptoviz_operator::{controller, leader, metrics, workloads};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use cryptoviz_runtime::health::{self, Health};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info};

/// mimalloc rather than glibc malloc (for librdkafka's allocations too: `override`): at 1,000 pipelines glibc
/// kept ~25 MB of freed memory resident in its per-thread arenas (peak RSS 69 MiB against a 26 MB live
/// heap); see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kubernetes operator for CryptoViz pipelines. Every flag can also be set through its environment variable.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespaces to watch (repeat the flag, or comma-separate in the variable). None: the whole cluster.
    #[arg(long = "watch-namespace", env = "CRYPTOVIZ_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,

    /// Worker image used by pipelines that do not override it.
    #[arg(long, env = "CRYPTOVIZ_WORKER_IMAGE", default_value = concat!("ghcr.io/cryptoviz/cryptoviz:", env!("CARGO_PKG_VERSION")))]
    worker_image: String,

    /// Image pull policy of worker containers.
    #[arg(long, env = "CRYPTOVIZ_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,

    /// Address of the HTTP server (/metrics, /healthz and /readyz, also as /health and /ready).
    #[arg(long, env = "CRYPTOVIZ_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Periodic resync of every pipeline: how often topic and database drift is looked for (e.g. 5m).
    #[arg(long, env = "CRYPTOVIZ_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    resync_interval: Duration,

    /// How long a deleted pipeline's clean-up (workers, topics, schema) may take, from its deletion timestamp,
    /// before the finalizer is released with a CleanupAbandoned Warning event naming what was left.
    #[arg(long, env = "CRYPTOVIZ_FINALIZER_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    finalizer_timeout: Duration,

    /// The longest one reconcile may run before it is cancelled and retried with backoff.
    #[arg(long, env = "CRYPTOVIZ_RECONCILE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    reconcile_timeout: Duration,

    /// Reconciles in flight at once per watched scope: bounds memory and the load on the API server,
    /// the brokers and the databases when many pipelines change together.
    #[arg(long, env = "CRYPTOVIZ_MAX_CONCURRENT_RECONCILES", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,

    /// Elect a leader through a Lease, so several replicas can run.
    #[arg(long, env = "CRYPTOVIZ_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,

    /// Namespace of the leader Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Name of the leader Lease.
    #[arg(long, env = "CRYPTOVIZ_LEASE_NAME", default_value = "cryptoviz-operator")]
    lease_name: String,

    /// Lease duration (renewed every third of it).
    #[arg(long, env = "CRYPTOVIZ_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,

    /// This replica's identity in the Lease and in events (defaults to the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Log format: json (default, for production) or text.
    #[arg(long, env = "CRYPTOVIZ_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cryptoviz_crds::duration::parse(s).map_err(|e| e.to_string())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "text" {
        builder.init();
    } else {
        builder.json().with_current_span(true).with_span_list(false).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        format!("{}-{}", std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(), std::process::id())
    });

    let client =
        kube::Client::try_default().await.context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let web = Health::new();
    let app = health::router(registry, web.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tokio::spawn(health::serve_on(listener, app, std::future::pending()));

    // Shutdown on SIGTERM/SIGINT, or when leadership is lost.
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        health::shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    let leadership = if args.leader_elect {
        let cfg = leader::LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: args.lease_duration,
        };
        web.set_ready(true); // a standby is healthy and ready
        let mut stop = stop_rx.clone();
        let l = tokio::select! {
            l = leader::acquire(client.clone(), cfg) => l,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        Some(Arc::new(l))
    } else {
        None
    };
    metrics.leader.set(1);
    let lost = Arc::new(AtomicBool::new(false));
    if let Some(l) = leadership.clone() {
        let tx = stop_tx.clone();
        let lost = lost.clone();
        tokio::spawn(async move {
            l.keep().await;
            lost.store(true, Ordering::Relaxed);
            let _ = tx.send(true);
        });
    }

    let settings = controller::Settings {
        workloads: workloads::WorkloadDefaults {
            worker_image: args.worker_image.clone(),
            image_pull_policy: args.image_pull_policy.clone(),
        },
        resync: args.resync_interval,
        finalizer_timeout: args.finalizer_timeout,
        reconcile_timeout: args.reconcile_timeout,
        max_concurrent_reconciles: args.max_concurrent_reconciles,
    };
    let shared = controller::Shared::new(client, metrics.clone(), settings, identity);
    let scopes: Vec<Option<String>> = if args.watch_namespaces.is_empty() {
        vec![None]
    } else {
        args.watch_namespaces.iter().cloned().map(Some).collect()
    };
    info!(scopes = ?scopes, "starting controllers");
    web.set_ready(true);
    let controllers = scopes.into_iter().map(|ns| {
        let mut stop = stop_rx.clone();
        controller::run(shared.clone(), ns, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
    });
    futures::future::join_all(controllers).await;

    metrics.leader.set(0);
    if lost.load(Ordering::Relaxed) {
        error!("leadership lost: exiting so a fresh process can stand by");
        std::process::exit(1);
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    info!("stopped");
    Ok(())
}
