//! Price-move alerts: a move beyond `thresholdPercent` within `windowMs` emits one alert per crossing.
//!
//! Per symbol, monotonic deques keep the window's minimum and maximum (amortised O(1) per price). The move
//! is the larger of (price − min)/min and (price − max)/max; an alert fires when it crosses the threshold
//! and re-arms only once the move falls back inside it.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::message::Decimal;

/// Entries kept per deque at most: a bound for prices that rise (or fall) without pause at a high rate.
const MAX_ENTRIES: usize = 4096;

/// A detected move.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The window's extreme the move is measured from.
    pub from: Decimal,
    /// Signed change in percent.
    pub change_pct: f64,
}

#[derive(Default)]
struct Window {
    mins: VecDeque<(i64, f64, Decimal)>,
    maxs: VecDeque<(i64, f64, Decimal)>,
    latest_ms: i64,
    alerted: bool,
}

/// Alert detection for one source.
pub struct AlertDetector {
    threshold_pct: f64,
    window_ms: i64,
    symbols: HashMap<String, Window>,
}

impl AlertDetector {
    /// Alert on moves of at least `threshold_pct` percent within `window_ms` milliseconds.
    pub fn new(threshold_pct: f64, window_ms: u64) -> Self {
        AlertDetector { threshold_pct, window_ms: window_ms as i64, symbols: HashMap::new() }
    }

    /// Feed a price at `time_ms`; returns the move when this price crosses the threshold.
    pub fn observe(&mut self, symbol: &str, time_ms: i64, price: &Decimal) -> Option<Move> {
        let p = price.to_f64();
        if !p.is_finite() || p <= 0.0 {
            return None;
        }
        let w = match self.symbols.get_mut(symbol) {
            Some(w) => w,
            None => self.symbols.entry(symbol.to_owned()).or_default(),
        };
        // Times can step back a little (two feeds of one source); the window follows the latest.
        w.latest_ms = w.latest_ms.max(time_ms);
        let horizon = w.latest_ms - self.window_ms;
        for dq in [&mut w.mins, &mut w.maxs] {
            while dq.front().is_some_and(|e| e.0 < horizon) || dq.len() >= MAX_ENTRIES {
                dq.pop_front();
            }
        }
        while w.mins.back().is_some_and(|e| e.1 >= p) {
            w.mins.pop_back();
        }
        w.mins.push_back((time_ms, p, price.clone()));
        while w.maxs.back().is_some_and(|e| e.1 <= p) {
            w.maxs.pop_back();
        }
        w.maxs.push_back((time_ms, p, price.clone()));
        let (lo, hi) = (w.mins.front()?, w.maxs.front()?);
        let up = (p - lo.1) / lo.1 * 100.0;
        let down = (p - hi.1) / hi.1 * 100.0;
        let (from, change_pct) = if up >= -down { (&lo.2, up) } else { (&hi.2, down) };
        if change_pct.abs() >= self.threshold_pct {
            if !w.alerted {
                w.alerted = true;
                return Some(Move { from: from.clone(), change_pct });
            }
        } else {
            w.alerted = false;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn one_alert_per_crossing() {
        let mut a = AlertDetector::new(5.0, 60_000);
        assert_eq!(a.observe("BTC", 0, &d("100")), None);
        assert_eq!(a.observe("BTC", 1_000, &d("104")), None);
        let m = a.observe("BTC", 2_000, &d("105.5")).expect("crossed +5%");
        assert_eq!(m.from.as_str(), "100");
        assert!((m.change_pct - 5.5).abs() < 1e-9);
        assert_eq!(a.observe("BTC", 3_000, &d("107")), None, "still beyond: no repeat");
        assert_eq!(a.observe("ETH", 3_000, &d("107")), None, "per symbol");
        assert_eq!(a.observe("BTC", 4_000, &d("103")), None, "back inside re-arms");
        let m = a.observe("BTC", 5_000, &d("101.5")).expect("falls 5.1% from the 107 high");
        assert_eq!(m.from.as_str(), "107");
        assert!(m.change_pct < -5.0);
    }

    #[test]
    fn moves_older_than_the_window_do_not_count() {
        let mut a = AlertDetector::new(5.0, 1_000);
        assert_eq!(a.observe("BTC", 0, &d("100")), None);
        assert_eq!(a.observe("BTC", 5_000, &d("110")), None, "100 is outside the window");
        assert_eq!(a.observe("BTC", 5_500, &d("0")), None, "nonsense prices are ignored");
    }
}
