//! Market-data sources, one module each behind the [`Source`] trait.
//!
//! Every source file holds only its format: the URL or subscription it asks for and a pure parser
//! (`bytes → messages`, unit-tested and fuzzed apart from the network) returning [`Parsed`] or a
//! [`ParseError`] ([`parsed`], a leaf). The network loops shared by a family live in [`transport`]: REST
//! polling and WebSocket streams, with their backoff, watchdog, `Retry-After` handling and rate limit. A
//! running source hands its output to a [`Downstream`] (the scraper's outlet), so nothing here imports the
//! scraper.

pub mod binance;
pub mod coingecko;
pub mod coinmarketcap;
pub mod kraken;
pub mod parsed;
pub mod synthetic;
pub mod transport;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::future::BoxFuture;

use parsed::{Downstream, ParseError, Parsed};

/// One market-data source.
pub trait Source: Send + Sync + 'static {
    /// Which source this is (the `source` label and the messages' `source` field).
    fn kind(&self) -> SourceKind;
    /// Parse one WebSocket frame or REST response body. Pure: no I/O, no clock but `received_at`.
    fn parse(&self, frame: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError>;
    /// Run until the task is aborted, handing what it parses and how its connection fares to `out`. Never
    /// returns an error: failures are counted, logged and retried.
    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()>;
}

/// The source a configuration entry describes.
pub fn build(cfg: &WorkerConfig, source: &SourceConfig) -> Arc<dyn Source> {
    match source.kind {
        SourceKind::Coingecko => Arc::new(coingecko::CoinGecko::new(cfg, source)),
        SourceKind::Coinmarketcap => Arc::new(coinmarketcap::CoinMarketCap::new(cfg, source)),
        SourceKind::Kraken => Arc::new(kraken::Kraken::new(cfg, source)),
        SourceKind::Binance => Arc::new(binance::Binance::new(cfg, source)),
        SourceKind::Synthetic => Arc::new(synthetic::Synthetic::new(cfg, source)),
    }
}

/// The API key a source's configuration names, read from the environment. Never logged.
pub fn api_key(source: &SourceConfig) -> Option<String> {
    source.api_key_env.as_deref().and_then(|var| std::env::var(var).ok()).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scraper::test_config;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// Seeds for the mutation test: the fixtures the integration tests serve, plus unit-test frames.
    const SEEDS: &[&str] = &[
        include_str!("../../../tests/fixtures/scraper/coingecko/prices.json"),
        include_str!("../../../tests/fixtures/scraper/coinmarketcap/quotes.json"),
        include_str!("../../../tests/fixtures/scraper/coinmarketcap/rate_limited.json"),
        include_str!("../../../tests/fixtures/scraper/kraken/connect1.jsonl"),
        include_str!("../../../tests/fixtures/scraper/kraken/connect3.jsonl"),
        include_str!("../../../tests/fixtures/scraper/binance/connect1.jsonl"),
        r#"{"type":"trade","v":1,"source":"synthetic","symbol":"BTC","quote":"USD","trade_id":"1","price":"1.5","quantity":"2","exchange_time":"2024-03-25T08:45:00Z","received_at":"2024-03-25T08:45:00Z"}"#,
    ];

    /// A fast, deterministic complement to the cargo-fuzz targets (`workers/fuzz`, run by `tests/fuzz`):
    /// 100 000 seeded mutations of real frames through every parser, on the stable toolchain. Any panic
    /// fails the test; errors are the expected outcome for most inputs.
    #[test]
    fn parsers_never_panic_on_mutated_frames() {
        let cfg = test_config(&["BTC", "ETH"]);
        let parsers: Vec<Arc<dyn Source>> = [
            SourceKind::Coingecko,
            SourceKind::Coinmarketcap,
            SourceKind::Kraken,
            SourceKind::Binance,
            SourceKind::Synthetic,
        ]
        .into_iter()
        .map(|kind| build(&cfg, &SourceConfig { kind, ..cfg.sources[0].clone() }))
        .collect();
        let frames: Vec<&[u8]> =
            SEEDS.iter().flat_map(|s| s.lines()).filter(|l| !l.starts_with('#')).map(str::as_bytes).collect();
        let alphabet = b"{}[]\":,.-+eE0123456789 truefalsnul\\\x00\xff";
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let now = Utc::now();
        let (mut ok, mut err) = (0u32, 0u32);
        for i in 0..100_000 {
            let mut f = frames[rng.random_range(0..frames.len())].to_vec();
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..=f.len());
                match rng.random_range(0..6) {
                    0 => f.truncate(at),
                    1 => f.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    2 if at < f.len() => f[at] = rng.random(),
                    3 if at < f.len() => {
                        let end = rng.random_range(at..=f.len());
                        f.drain(at..end);
                    }
                    4 => {
                        let other = frames[rng.random_range(0..frames.len())];
                        let from = rng.random_range(0..=other.len());
                        f.splice(at..at, other[from..].iter().copied().take(64));
                    }
                    _ if at < f.len() && f[at].is_ascii_digit() => f[at] = b"0123456789.-e"[rng.random_range(0..13)],
                    _ => {}
                }
            }
            match parsers[i % parsers.len()].parse(&f, now) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.reason().is_empty());
                    err += 1;
                }
            }
        }
        // Both outcomes are exercised: the mutations are neither all fatal nor all harmless.
        assert!(ok > 1_000 && err > 10_000, "ok {ok}, err {err}");
    }
}
