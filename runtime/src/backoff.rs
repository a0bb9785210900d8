//! The one backoff every retry loop uses (sources' reconnects, the consumer's database retries, the
//! operator's per-object requeues).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Exponential backoff with jitter: after `n` failures wait a random time in `[d/2, d]`,
/// `d = min(max, base·2ⁿ)`, so many clients retrying after one outage do not arrive together.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: StdRng,
}

impl Backoff {
    /// Start at `base`, never wait longer than `max`. Seeded from the clock, so two processes started
    /// together still draw different delays.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Self::seeded(base, max, seed as u64 ^ u64::from(std::process::id()).rotate_left(32))
    }

    /// A backoff with a fixed seed (tests, reproducible runs).
    pub fn seeded(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff { base, max, failures: 0, rng: StdRng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt (and count a failure).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.base.saturating_mul(1u32 << self.failures.min(16)).min(self.max);
        self.failures = self.failures.saturating_add(1);
        d.mul_f64(self.rng.random_range(0.5..=1.0))
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: start again from `base`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A random delay in `[0, max)`, for staggering starts.
    pub fn jitter(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.rng.random_range(0.0..1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100), "{d:?}");
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800), "{d:?}");
        assert!(d.iter().all(|x| *x <= Duration::from_secs(1)), "{d:?}");
        assert_eq!(b.failures(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_differs_between_backoffs() {
        // Two retry loops that failed at the same moment draw different delays: real jitter, not a
        // function of the attempt count.
        let mut a = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(60), 1);
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(60), 2);
        let da: Vec<_> = (0..5).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
    }
}
