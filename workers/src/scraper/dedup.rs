//! Repeats withheld before producing: trades seen before (reconnect snapshots) and, optionally, ticks equal
//! to the previous one. Memory is bounded: a fixed number of recent trade ids per symbol.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::message::Tick;

/// Recent trade ids kept per symbol: several reconnect snapshots' worth (Kraken sends 50, Binance none).
pub const TRADE_IDS_PER_SYMBOL: usize = 10_000;

/// The most recent trade ids of one symbol, oldest evicted first.
#[derive(Default)]
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

/// Trade dedup for one source: per symbol, the last [`TRADE_IDS_PER_SYMBOL`] ids.
pub struct TradeDedup {
    capacity: usize,
    symbols: HashMap<String, RecentIds>,
}

impl TradeDedup {
    /// Keep `capacity` ids per symbol.
    pub fn new(capacity: usize) -> Self {
        TradeDedup { capacity: capacity.max(1), symbols: HashMap::new() }
    }

    /// True the first time a (symbol, id) is seen within the window; false for a repeat.
    pub fn first_sighting(&mut self, symbol: &str, trade_id: &str) -> bool {
        let recent = match self.symbols.get_mut(symbol) {
            Some(r) => r,
            None => self.symbols.entry(symbol.to_owned()).or_default(),
        };
        if recent.set.contains(trade_id) {
            return false;
        }
        if recent.order.len() == self.capacity
            && let Some(old) = recent.order.pop_front()
        {
            recent.set.remove(&old);
        }
        recent.set.insert(trade_id.to_owned());
        recent.order.push_back(trade_id.to_owned());
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
        assert_eq!(d.symbols["BTC"].order.len(), 3);
        assert_eq!(d.symbols["BTC"].set.len(), 3);
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
