//! What every fuzz target checks: a parser of outside input never panics, and whatever it accepts survives
//! the wire format (what a source emits is exactly what the consumer and the gateway will read back).

use std::sync::{Arc, OnceLock};

use chrono::Utc;
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use cryptoviz_workers::gateway::cursor::{Cursor, MAX_ID_LEN};
use cryptoviz_workers::gateway::params;
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

/// Feed one `/stream` request's client-controlled values to the gateway's parameter parsing: the first byte
/// is the topic's partition count, the rest `symbols`, `types` and the resume id separated by `&`. Whatever
/// is accepted stays within the documented bounds.
pub fn stream_params(input: &[u8]) {
    let Some((&partitions, rest)) = input.split_first() else { return };
    let partitions = usize::from(partitions);
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '&');
    let (symbols, types, id) = (parts.next(), parts.next(), parts.next());
    if let Some(Ok(s)) = symbols.map(params::symbols) {
        assert!(s.len() <= params::MAX_SYMBOLS, "{} symbols accepted", s.len());
        for sym in &s {
            assert!(!sym.is_empty() && sym.len() <= params::MAX_SYMBOL_LEN, "{sym:?}");
            assert!(sym.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()), "{sym:?}");
        }
    } else if let Some(Err(e)) = symbols.map(params::symbols) {
        assert!(e.to_string().starts_with("symbols: ") && e.to_string().len() <= 256, "{e}");
    }
    if let Err(e) = params::kinds(types) {
        assert!(e.to_string().starts_with("types: "), "{e}");
        // At most 16 echoed characters, each escaped to at most 10 (`\u{10ffff}`).
        assert!(e.to_string().len() <= 256, "a short message: {e}");
    }
    if let Some(Ok(c)) = id.map(|id| Cursor::parse(id, partitions)) {
        assert!(id.is_some_and(|id| id.len() <= MAX_ID_LEN));
        assert_eq!(c.0.len(), partitions, "a cursor names the topic's partitions only");
        assert!(c.0.iter().all(|&o| o >= -1));
        let rendered = c.to_string();
        if rendered.len() <= MAX_ID_LEN {
            assert_eq!(Cursor::parse(&rendered, partitions), Ok(c.clone()), "ids round-trip: {rendered}");
        }
    }
}

fn round_trips(m: &Message) {
    let wire = m.to_json();
    let back = Message::from_json(&wire).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&wire)));
    assert_eq!(&back, m, "changed on the wire");
}
