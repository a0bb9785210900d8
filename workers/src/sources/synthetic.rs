//! A seeded random-walk market: the offline default for demos, tests and load.
//!
//! Every event moves one symbol's price by a small random step and yields a tick and a trade. With the same
//! seed and symbols the sequence of prices, quantities and sides is identical on every run (times are the
//! clock's). `rate` is ticks per second per symbol (each with one trade).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cryptoviz_crds::SourceKind;
use cryptoviz_crds::config::{SourceConfig, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::Source;
use super::parsed::{Downstream, ParseError, Parsed};
use crate::message::{Decimal, Message, SCHEMA_VERSION, Side, Tick, Trade};

/// Default ticks per second per symbol.
pub const DEFAULT_RATE: u32 = 10;
/// Default seed.
pub const DEFAULT_SEED: u64 = 42;
/// How often the generator wakes up; events due in between are emitted together.
const STEP: Duration = Duration::from_millis(10);

/// Starting prices, so demos look like the real market.
fn start_price(symbol: &str) -> f64 {
    match symbol {
        "BTC" => 67_000.0,
        "ETH" => 3_500.0,
        "SOL" => 150.0,
        "BNB" => 580.0,
        _ => 100.0,
    }
}

/// The deterministic market model, apart from the clock.
pub struct Market {
    rng: StdRng,
    quote: String,
    /// (symbol, price in cents, next trade id).
    symbols: Vec<(String, i64, u64)>,
    next: usize,
}

impl Market {
    /// A market over `symbols`, seeded.
    pub fn new(symbols: &[String], quote: &str, seed: u64) -> Self {
        Market {
            rng: StdRng::seed_from_u64(seed),
            quote: quote.to_uppercase(),
            symbols: symbols
                .iter()
                .map(|s| (s.to_uppercase(), (start_price(&s.to_uppercase()) * 100.0) as i64, 1))
                .collect(),
            next: 0,
        }
    }

    /// The next event: one symbol (round robin) steps and trades. Empty when there are no symbols.
    pub fn step(&mut self, now: DateTime<Utc>) -> Vec<Message> {
        if self.symbols.is_empty() {
            return Vec::new();
        }
        let i = self.next;
        self.next = (self.next + 1) % self.symbols.len();
        // Integer cents: the decimal text is exact and the walk never drifts below one cent.
        let step_bp: i64 = self.rng.random_range(-10..=10);
        let qty_units: u64 = self.rng.random_range(1..=100_000);
        let side = if self.rng.random_bool(0.5) { Side::Buy } else { Side::Sell };
        let (symbol, cents, trade_id) = &mut self.symbols[i];
        *cents = (*cents + *cents * step_bp / 10_000).max(1);
        let price = Decimal::parse(&format!("{}.{:02}", *cents / 100, *cents % 100)).expect("formatted decimal");
        let id = *trade_id;
        *trade_id += 1;
        vec![
            Message::Tick(Tick {
                v: SCHEMA_VERSION,
                source: SourceKind::Synthetic,
                symbol: symbol.clone(),
                quote: self.quote.clone(),
                price: price.clone(),
                bid: None,
                ask: None,
                volume_24h: None,
                market_cap: None,
                change_24h_pct: None,
                exchange_time: now,
                received_at: now,
            }),
            Message::Trade(Trade {
                v: SCHEMA_VERSION,
                source: SourceKind::Synthetic,
                symbol: symbol.clone(),
                quote: self.quote.clone(),
                trade_id: id.to_string(),
                price,
                quantity: Decimal::parse(&format!("0.{qty_units:05}")).expect("formatted decimal"),
                side: Some(side),
                exchange_time: now,
                received_at: now,
            }),
        ]
    }
}

/// The synthetic source.
pub struct Synthetic {
    symbols: Vec<String>,
    quote: String,
    rate: u32,
    seed: u64,
}

impl Synthetic {
    /// From the pipeline's symbols and this source's entry.
    pub fn new(cfg: &WorkerConfig, source: &SourceConfig) -> Self {
        Synthetic {
            symbols: cfg.symbols.clone(),
            quote: cfg.quote.clone(),
            rate: source.rate.unwrap_or(DEFAULT_RATE).max(1),
            seed: source.seed.unwrap_or(DEFAULT_SEED),
        }
    }
}

impl Source for Synthetic {
    fn kind(&self) -> SourceKind {
        SourceKind::Synthetic
    }

    /// Synthetic frames are our own messages (a recorded stream replayed): one JSON message per frame.
    fn parse(&self, frame: &[u8], _received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
        Ok(vec![Message::from_json(frame)?].into())
    }

    fn run(self: Arc<Self>, out: Arc<dyn Downstream>) -> BoxFuture<'static, ()> {
        async move {
            let mut market = Market::new(&self.symbols, &self.quote, self.seed);
            let per_second = f64::from(self.rate) * self.symbols.len() as f64;
            let start = tokio::time::Instant::now();
            let mut emitted: u64 = 0;
            let mut ticker = tokio::time::interval(STEP);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            out.set_up(true);
            loop {
                ticker.tick().await;
                // Catch up on what is due, so the rate holds whatever the timer's granularity.
                let due = (start.elapsed().as_secs_f64() * per_second) as u64;
                let now = Utc::now();
                let mut batch = Vec::with_capacity(((due - emitted) * 2) as usize);
                while emitted < due {
                    batch.extend(market.step(now));
                    emitted += 1;
                }
                out.generated(batch);
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_market() {
        let syms = vec!["BTC".to_string(), "ETH".to_string()];
        let now = Utc::now();
        let run = |seed| (0..100).flat_map(|_| Market::new(&syms, "usd", seed).step(now)).collect::<Vec<_>>();
        let walk = |seed| {
            let mut m = Market::new(&syms, "usd", seed);
            (0..1000).flat_map(|_| m.step(now)).collect::<Vec<_>>()
        };
        assert_eq!(walk(7), walk(7));
        assert_ne!(walk(7), walk(8));
        assert_eq!(run(1).len(), 200);
        let w = walk(7);
        let Message::Tick(t) = &w[0] else { panic!() };
        assert_eq!((t.symbol.as_str(), t.quote.as_str()), ("BTC", "USD"));
        assert!(w.iter().all(|m| m.symbol() == "BTC" || m.symbol() == "ETH"));
    }
}
