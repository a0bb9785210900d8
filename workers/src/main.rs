//! `cryptoviz-worker`: one binary, one subcommand per worker mode.
//!
//! - `scraper`: sources → normalised messages → Kafka raw and stream topics
//! - `consumer`: Kafka raw topic → TimescaleDB / PostgreSQL, effectively once
//! - `gateway`: Kafka stream topic → Server-Sent Events to browsers
//! - `standalone`: scraper and gateway (and consumer with a database) in one process, no cluster needed
//! - `schema`: print the message JSON Schema

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cryptoviz_crds::config::WorkerConfig;

/// CryptoViz worker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Print the JSON Schema of the messages on the topics.
    Schema,
}

/// Read the worker configuration the operator rendered (mounted from the pipeline's ConfigMap).
pub fn load_config(path: &PathBuf) -> anyhow::Result<WorkerConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    WorkerConfig::from_yaml(&text).with_context(|| format!("parsing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Schema => {
            print!("{}", cryptoviz_workers::message::json_schema());
            Ok(())
        }
    }
}
