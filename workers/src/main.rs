//! `cryptoviz-worker`: one binary, one subcommand per worker mode.
//!
//! - `scraper`: sources → normalised messages → Kafka raw and stream topics
//! - `consumer`: Kafka raw topic → TimescaleDB / PostgreSQL, effectively once
//! - `gateway`: Kafka stream topic → Server-Sent Events to browsers
//! - `standalone`: scraper and gateway (and consumer with a database) in one process, no cluster needed
//! - `schema`: print the message JSON Schema
//!
//! Cluster modes read the configuration the operator renders (`--config /etc/cryptoviz/config.yaml`) and
//! serve `/health`, `/ready` and `/metrics` on `--listen` (default `0.0.0.0:8080`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cryptoviz_crds::config::WorkerConfig;

/// CryptoViz worker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// Options every cluster mode takes.
#[derive(Args, Debug)]
struct Common {
    /// The worker configuration rendered by the operator.
    #[arg(long, env = "CRYPTOVIZ_CONFIG", default_value = "/etc/cryptoviz/config.yaml")]
    config: PathBuf,
    /// Address of the HTTP server (health, metrics; the gateway's streams too).
    #[arg(long, env = "CRYPTOVIZ_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Print the JSON Schema of the messages on the topics.
    Schema,
    /// Kafka stream topic → Server-Sent Events to browsers.
    Gateway(Common),
    /// Sources → normalised messages → Kafka raw and stream topics.
    Scraper(Common),
    /// Kafka raw topic → TimescaleDB / PostgreSQL, effectively once.
    Consumer(Common),
    /// Scraper and gateway (and consumer with --timescale) in one process: no cluster, broker or database.
    Standalone(cryptoviz_workers::standalone::Options),
}

/// Read the worker configuration the operator rendered (mounted from the pipeline's ConfigMap).
fn load_config(path: &PathBuf) -> anyhow::Result<WorkerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    WorkerConfig::from_yaml(&text).with_context(|| format!("parsing {}", path.display()))
}

/// mimalloc for every allocation, librdkafka's included (`override`): with glibc malloc, records allocated by
/// the producing thread and freed by librdkafka's threads kept that thread in `_int_malloc` and
/// `malloc_consolidate` 70 % of its time; the scraper's throughput roughly doubled (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Schema => {
            print!("{}", cryptoviz_workers::message::json_schema());
            Ok(())
        }
        Mode::Gateway(c) => {
            cryptoviz_workers::telemetry::init();
            cryptoviz_workers::gateway::run(load_config(&c.config)?, c.listen).await
        }
        Mode::Scraper(c) => {
            cryptoviz_workers::telemetry::init();
            cryptoviz_workers::scraper::run(load_config(&c.config)?, c.listen).await
        }
        Mode::Consumer(c) => {
            cryptoviz_workers::telemetry::init();
            cryptoviz_workers::consumer::run(load_config(&c.config)?, c.listen).await
        }
        Mode::Standalone(o) => {
            cryptoviz_workers::telemetry::init();
            cryptoviz_workers::standalone::run(o).await
        }
    }
}
