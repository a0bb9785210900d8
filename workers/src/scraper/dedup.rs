//! Repeats withheld before producing: trades seen before (reconnect snapshots) and, optionally, ticks equal
//! to the previous one. Memory is bounded: a fixed number of recent trade ids per symbol.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::message::Tick;

/// Recent trade ids kept per symbol: several reconnect snapshots' worth (Kraken sends 50, Binance none).
pub const TRADE_IDS_PER_SYMBOL: usize = 10_000;

/// The most recent trade ids of one symbol: a ring of ids, oldest overwritten first, and a hash index of
/// ring slots. Each id is stored once, and once the ring is full a new id reuses the evicted id's buffer:
/// no allocation per trade (this runs for every trade of every source).
#[derive(Default)]
struct RecentIds {
    ring: Vec<String>,
    /// The slot overwritten next once the ring is full.
    oldest: usize,
    index: HashTable<usize>,
}

/// Trade dedup for one source: per symbol, the last [`TRADE_IDS_PER_SYMBOL`] ids.
pub struct TradeDedup {
    capacity: usize,
    hasher: DefaultHashBuilder,
    symbols: HashMap<String, RecentIds>,
}

impl TradeDedup {
    /// Keep `capacity` ids per symbol.
    pub fn new(capacity: usize) -> Self {
        TradeDedup { capacity: capacity.max(1), hasher: DefaultHashBuilder::default(), symbols: HashMap::new() }
    }

    /// True the first time a (symbol, id) is seen within the window; false for a repeat.
    pub fn first_sighting(&mut self, symbol: &str, trade_id: &str) -> bool {
        let RecentIds { ring, oldest, index } = match self.symbols.get_mut(symbol) {
            Some(r) => r,
            None => self.symbols.entry_ref(symbol).or_default(),
        };
        let hasher = &self.hasher;
        let hash = hasher.hash_one(trade_id);
        if index.find(hash, |&slot| ring[slot] == trade_id).is_some() {
            return false;
        }
        let slot = if ring.len() < self.capacity {
            ring.push(trade_id.to_owned());
            ring.len() - 1
        } else {
            let slot = *oldest;
            *oldest = (slot + 1) % self.capacity;
            if let Ok(entry) = index.find_entry(hasher.hash_one(&ring[slot]), |&s| s == slot) {
                entry.remove();
            }
            ring[slot].clear();
            ring[slot].push_str(trade_id);
            slot
        };
        index.insert_unique(hash, slot, |&s| hasher.hash_one(&ring[s]));
        true
    }
}

/// What makes two ticks "the same": everything but the times.
type TickValue = (
    String,
    crate::message::Decimal,
    Option<crate::message::Decimal>,
    Option<crate::message::Decimal>,
    Option<crate::message::Decimal>,
    Option<crate::message::Decimal>,
    Option<crate::message::Decimal>,
);

fn value(t: &Tick) -> TickValue {
    (
        t.quote.clone(),
        t.price.clone(),
        t.bid.clone(),
        t.ask.clone(),
        t.volume_24h.clone(),
        t.market_cap.clone(),
        t.change_24h_pct.clone(),
    )
}

/// Unchanged-tick suppression for one source (`scraper.suppressUnchangedTicks`).
#[derive(Default)]
pub struct TickFilter {
    last: HashMap<String, TickValue>,
}

impl TickFilter {
    /// True when the tick differs from the previous one of its symbol (and remember it).
    pub fn changed(&mut self, t: &Tick) -> bool {
        let v = value(t);
        match self.last.get_mut(&t.symbol) {
            Some(prev) if *prev == v => false,
            Some(prev) => {
                *prev = v;
                true
            }
            None => {
                self.last.insert(t.symbol.clone(), v);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Decimal;
    use chrono::Utc;
    use cryptoviz_crds::SourceKind;

    #[test]
    fn repeats_are_caught_within_the_window_and_memory_is_bounded() {
        let mut d = TradeDedup::new(3);
        assert!(d.first_sighting("BTC", "1"));
        assert!(!d.first_sighting("BTC", "1"));
        assert!(d.first_sighting("ETH", "1"), "ids are per symbol");
        for id in ["2", "3", "4"] {
            assert!(d.first_sighting("BTC", id));
        }
        // "1" was evicted: the window is bounded.
        assert!(d.first_sighting("BTC", "1"));
        assert_eq!(d.symbols["BTC"].ring.len(), 3);
        assert_eq!(d.symbols["BTC"].index.len(), 3);
        // The window now holds 3, 4, 1 (oldest first); slots are reused oldest first.
        assert!(!d.first_sighting("BTC", "4"));
        assert!(d.first_sighting("BTC", "5"));
        assert!(d.first_sighting("BTC", "3"), "evicted by 5");
        assert!(!d.first_sighting("BTC", "1"));
        assert!(!d.first_sighting("BTC", "5"));
        assert_eq!(d.symbols["BTC"].index.len(), 3);
    }

    #[test]
    fn unchanged_ticks_are_recognised_whatever_their_times() {
        let tick = |price: &str| Tick {
            v: 1,
            source: SourceKind::Coingecko,
            symbol: "BTC".into(),
            quote: "USD".into(),
            price: Decimal::parse(price).unwrap(),
            bid: None,
            ask: None,
            volume_24h: None,
            market_cap: None,
            change_24h_pct: None,
            exchange_time: Utc::now(),
            received_at: Utc::now(),
        };
        let mut f = TickFilter::default();
        assert!(f.changed(&tick("1.0")));
        assert!(!f.changed(&tick("1.0")));
        assert!(f.changed(&tick("1.00")), "a different text is a different value: exact decimals");
        assert!(f.changed(&tick("1.0")));
    }
}
