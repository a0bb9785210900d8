//! What every fuzz target checks: a parser of outside input never panics, and whatever it accepts survives
//! the wire format (what a source emits is exactly what the consumer and the gateway will read back).

use std::sync::{Arc, OnceLock};

use chrono::Utc;
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use cryptoviz_workers::message::Message;
use cryptoviz_workers::sources::{self, Source};

fn config() -> &'static WorkerConfig {
    static CONFIG: OnceLock<WorkerConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        WorkerConfig::from_yaml(
            "pipeline: {namespace: fuzz, name: p}\nsymbols: [BTC, ETH, SOL]\nquote: USD\nsources: [{kind: synthetic}]\n\
             kafka: {bootstrapServers: 'k:9092', rawTopic: r, streamTopic: s, dlqTopic: d}\n\
             scraper: {suppressUnchangedTicks: true}\nconsumer: {groupId: g, batchSize: 1, flushIntervalMs: 1}\n\
             gateway: {heartbeatIntervalMs: 1, maxClients: 1, replayBuffer: 1}\n\
             alerts: {enabled: true, thresholdPercent: 5.0, windowMs: 60000}\n",
        )
        .expect("fuzz config")
    })
}

/// Feed one payload to a source's parser.
pub fn source_payload(kind: SourceKind, payload: &[u8]) {
    static SOURCES: OnceLock<Vec<(SourceKind, Arc<dyn Source>)>> = OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        let cfg = config();
        [SourceKind::Binance, SourceKind::Kraken, SourceKind::Coingecko, SourceKind::Coinmarketcap]
            .into_iter()
            .map(|kind| (kind, sources::build(cfg, &SourceConfig { kind, ..cfg.sources[0].clone() })))
            .collect()
    });
    let source = &sources.iter().find(|(k, _)| *k == kind).expect("a fuzzed source").1;
    if let Ok(parsed) = source.parse(payload, Utc::now()) {
        for m in parsed.messages {
            round_trips(&m);
        }
    } // An error is the expected outcome for most inputs: counted and skipped by the scraper.
}

/// Feed one record payload to the wire-format decoder (the consumer's and the gateway's input).
pub fn record(payload: &[u8]) {
    if let Ok(m) = Message::from_json(payload) {
        round_trips(&m);
    }
}

fn round_trips(m: &Message) {
    let wire = m.to_json();
    let back = Message::from_json(&wire).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&wire)));
    assert_eq!(&back, m, "changed on the wire");
}
