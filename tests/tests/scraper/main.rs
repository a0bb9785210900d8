//! The scraper binary against local stand-ins of each source (their documented formats from
//! `tests/fixtures/scraper/`, and the bad cases) and the real Kafka: what lands in the topics (keys,
//! partitions, exact decimals, dedup, alerts) and that nothing crashed (malformed payloads counted).
//!
//! Needs `cargo build -p cryptoviz-workers` first (`tests/run` builds the binaries).

mod binance;
mod coingecko;
mod coinmarketcap;
mod harness;
mod kraken;
mod synthetic;
