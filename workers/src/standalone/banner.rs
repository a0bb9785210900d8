//! What the user reads first: where to look, and what runs.

use std::net::SocketAddr;

use cryptoviz_crds::config::WorkerConfig;
use cryptoviz_crds::{CryptoPipeline, SourceKind};

use super::pipeline::{DEFAULT_NAME, Options};

/// What the user reads first: where to look, and what runs.
pub fn banner(p: &CryptoPipeline, cfg: &WorkerConfig, opts: &Options, addr: SocketAddr) -> String {
    let sources: Vec<String> = cfg
        .sources
        .iter()
        .map(|s| match (s.kind, s.rate) {
            (SourceKind::Synthetic, r) => {
                format!("synthetic ({}/s per symbol)", r.unwrap_or(crate::sources::synthetic::DEFAULT_RATE))
            }
            (k, _) => k.as_str().to_string(),
        })
        .collect();
    let transport = match &opts.kafka {
        None => "in-process bus (no broker)".to_string(),
        Some(k) => format!("Kafka {k}: topics {}, {}", cfg.kafka.raw_topic, cfg.kafka.stream_topic),
    };
    let storage = match (&cfg.storage, &opts.timescale) {
        (Some(s), Some(_)) => format!("consumer into schema {}", s.schema),
        (Some(_), None) => "off (the pipeline declares timescale: pass --timescale <url> to store)".into(),
        (None, _) => "off (--timescale <url> to store)".into(),
    };
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let name = p.metadata.name.as_deref().unwrap_or(DEFAULT_NAME);
    format!(
        "\nCryptoViz standalone — pipeline {ns}/{name}\n\
         \x20 symbols    {symbols} (quote {quote})\n\
         \x20 sources    {sources}\n\
         \x20 transport  {transport}\n\
         \x20 storage    {storage}\n\
         \n\
         \x20 live page  http://{addr}/\n\
         \x20 stream     curl -N http://{addr}/stream\n\
         \x20 metrics    http://{addr}/metrics\n\
         \n\
         Ctrl-C to stop.\n",
        symbols = cfg.symbols.join(", "),
        quote = cfg.quote,
        sources = sources.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standalone::pipeline::{pipeline, tests::opts};

    #[test]
    fn the_banner_names_every_url() {
        let o = opts(&[]);
        let p = pipeline(&o).unwrap();
        let cfg = WorkerConfig::for_pipeline(&p).unwrap();
        let b = banner(&p, &cfg, &o, "127.0.0.1:8080".parse().unwrap());
        for want in
            ["http://127.0.0.1:8080/\n", "curl -N http://127.0.0.1:8080/stream", "http://127.0.0.1:8080/metrics"]
        {
            assert!(b.contains(want), "{want} in {b}");
        }
    }
}
