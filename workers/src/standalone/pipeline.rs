//! The pipeline standalone mode runs: a CryptoPipeline manifest (`-f`) or the built-in one, adjusted by flags,
//! and checked as the apiserver would ([`cryptoviz_crds::validate`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cryptoviz_crds::config::api_key_env;
use cryptoviz_crds::validate::{self, FieldError, ManifestError};
use cryptoviz_crds::{CryptoPipeline, CryptoPipelineSpec, SecretKeyRef, SourceKind, SourceSpec};

/// Name and namespace of the built-in pipeline (its topics are `default.standalone.raw` and so on).
pub const DEFAULT_NAME: &str = "standalone";
/// `spec.kafka.bootstrapServers` of the built-in pipeline: never dialled (the in-process bus replaces Kafka).
const IN_PROCESS: &str = "in-process";

/// Flags of `cryptoviz-worker standalone`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// A CryptoPipeline manifest (as applied to a cluster). Default: a synthetic market on BTC, ETH and SOL.
    #[arg(short = 'f', long = "file", value_name = "MANIFEST")]
    pub file: Option<PathBuf>,
    /// Symbols to follow, comma-separated (replaces the pipeline's), e.g. `BTC,ETH`.
    #[arg(long, value_delimiter = ',', value_name = "SYMBOLS")]
    pub symbols: Vec<String>,
    /// A source to scrape (repeatable; replaces the pipeline's sources): synthetic, coingecko, kraken,
    /// binance, coinmarketcap (key in CRYPTOVIZ_COINMARKETCAP_API_KEY).
    #[arg(long = "source", value_name = "KIND", value_parser = parse_source)]
    pub sources: Vec<SourceKind>,
    /// Ticks per second per symbol of the synthetic source.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Where the live page, `/stream`, `/metrics` and `/health` are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Use this Kafka cluster (`host:port[,…]`) instead of the in-process bus.
    #[arg(long, value_name = "BOOTSTRAP")]
    pub kafka: Option<String>,
    /// Store the raw feed in this TimescaleDB / PostgreSQL database: the pipeline's schema, tables, candles and
    /// retention are created or migrated first, with the operator's code (no cluster needed).
    #[arg(long, value_name = "URL")]
    pub timescale: Option<String>,
}

fn parse_source(s: &str) -> Result<SourceKind, String> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_ascii_lowercase()))
        .map_err(|_| format!("unknown source {s:?}: one of synthetic, coingecko, kraken, binance, coinmarketcap"))
}

/// A pipeline file or flags that do not describe a valid CryptoPipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The file could not be read or is not YAML of the right shape.
    #[error("{file}: {message}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// Fields the apiserver would refuse, each with its path.
    #[error("{source_name} is not a valid CryptoPipeline:\n{}", list(.errors))]
    Invalid {
        /// The file, or `the flags`.
        source_name: String,
        /// What is wrong, field by field.
        errors: Vec<FieldError>,
    },
    /// A flag that does not apply to this pipeline.
    #[error("{0}")]
    Flag(String),
}

fn list(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// The built-in pipeline: a seeded synthetic market on BTC, ETH and SOL in USD.
pub fn default_pipeline() -> CryptoPipeline {
    let spec: CryptoPipelineSpec = serde_json::from_value(serde_json::json!({
        "symbols": ["BTC", "ETH", "SOL"],
        "sources": [{"kind": "synthetic"}],
        "kafka": {"bootstrapServers": IN_PROCESS},
    }))
    .expect("the built-in pipeline parses");
    let mut p = CryptoPipeline::new(DEFAULT_NAME, spec);
    p.metadata.namespace = Some("default".into());
    p
}

/// Read a CryptoPipeline manifest as it would be applied: header, unknown fields and the CRD's rules checked.
pub fn read_manifest(path: &Path) -> Result<CryptoPipeline, PipelineError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Unreadable { file: file.clone(), message: e.to_string() })?;
    validate::parse_manifest(&text).map_err(|e| match e {
        ManifestError::Unreadable(message) => PipelineError::Unreadable { file, message },
        ManifestError::Invalid(errors) => PipelineError::Invalid { source_name: file, errors },
    })
}

/// The pipeline standalone mode runs: the manifest (or the built-in one) with the flags applied, validated.
pub fn pipeline(opts: &Options) -> Result<CryptoPipeline, PipelineError> {
    let mut p = match &opts.file {
        Some(f) => read_manifest(f)?,
        None => default_pipeline(),
    };
    let s = &mut p.spec;
    if !opts.symbols.is_empty() {
        // Tickers are upper case on the wire; users type them either way.
        s.symbols = opts.symbols.iter().map(|x| x.trim().to_ascii_uppercase()).collect();
    }
    if !opts.sources.is_empty() {
        let old = std::mem::take(&mut s.sources);
        s.sources = opts
            .sources
            .iter()
            .map(|&kind| old.iter().find(|o| o.kind == kind).cloned().unwrap_or_else(|| source(kind)))
            .collect();
    }
    if let Some(rate) = opts.rate {
        let synthetic: Vec<_> = s.sources.iter_mut().filter(|x| x.kind == SourceKind::Synthetic).collect();
        if synthetic.is_empty() {
            return Err(PipelineError::Flag(
                "--rate applies to the synthetic source, which this pipeline has not".into(),
            ));
        }
        for x in synthetic {
            x.rate = Some(rate);
        }
    }
    if let Some(k) = &opts.kafka {
        s.kafka.bootstrap_servers = k.clone();
    }
    if opts.timescale.is_some() && s.timescale.is_none() {
        s.timescale = Some(
            serde_json::from_value(serde_json::json!({"connectionSecretRef": {"name": DEFAULT_NAME, "key": "url"}}))
                .expect("a timescale spec parses"),
        );
    }
    let errors = validate::validate(&p);
    if !errors.is_empty() {
        let source_name = opts.file.as_ref().map_or("the flags".into(), |f| format!("{} with the flags", f.display()));
        return Err(PipelineError::Invalid { source_name, errors });
    }
    Ok(p)
}

/// A source given by `--source`: API keys come from the variable the cluster would set from the Secret.
fn source(kind: SourceKind) -> SourceSpec {
    let key = match kind {
        SourceKind::Coinmarketcap => true,
        SourceKind::Coingecko => std::env::var_os(api_key_env(kind)).is_some(),
        _ => false,
    };
    SourceSpec {
        kind,
        poll_interval: None,
        api_key_secret_ref: key.then(|| SecretKeyRef { name: DEFAULT_NAME.into(), key: "api-key".into() }),
        base_url: None,
        rate: None,
        seed: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cryptoviz_crds::config::WorkerConfig;

    pub(crate) fn opts(args: &[&str]) -> Options {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            o: Options,
        }
        let mut argv = vec!["standalone"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().o
    }

    #[test]
    fn defaults_are_a_synthetic_market_on_three_symbols() {
        let p = pipeline(&opts(&[])).unwrap();
        let cfg = WorkerConfig::for_pipeline(&p).unwrap();
        assert_eq!(cfg.symbols, ["BTC", "ETH", "SOL"]);
        assert_eq!(cfg.sources.len(), 1);
        assert_eq!(cfg.sources[0].kind, SourceKind::Synthetic);
        assert_eq!(cfg.kafka.stream_topic, "default.standalone.stream");
        assert!(cfg.storage.is_none());
    }

    #[test]
    fn flags_replace_symbols_sources_and_rate() {
        let o = opts(&["--symbols", "btc,ETH", "--source", "synthetic", "--source", "Kraken", "--rate", "50"]);
        let cfg = WorkerConfig::for_pipeline(&pipeline(&o).unwrap()).unwrap();
        assert_eq!(cfg.symbols, ["BTC", "ETH"]);
        let kinds: Vec<_> = cfg.sources.iter().map(|s| (s.kind, s.rate)).collect();
        assert_eq!(kinds, [(SourceKind::Synthetic, Some(50)), (SourceKind::Kraken, None)]);
        let e = pipeline(&opts(&["--source", "kraken", "--rate", "5"])).unwrap_err();
        assert!(e.to_string().contains("--rate applies to the synthetic source"), "{e}");
        let e = pipeline(&opts(&["--symbols", "BTC,BTC"])).unwrap_err().to_string();
        assert!(e.contains("spec.symbols[1]: duplicate value \"BTC\""), "{e}");
        assert!(parse_source("bitstamp").is_err());
    }

    #[test]
    fn timescale_adds_storage_with_the_operators_schema_name() {
        let cfg = WorkerConfig::for_pipeline(&pipeline(&opts(&["--timescale", "postgres://x"])).unwrap()).unwrap();
        // The built-in pipeline is `default/standalone`: the operator's default schema name for it.
        assert_eq!(cfg.storage.unwrap().schema, "cv_default_standalone");
    }
}
