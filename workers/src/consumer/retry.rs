//! When a failed flush is tried again: the consumer's retry state, apart from its I/O.
//!
//! A failed batch is retried on its own schedule (jittered exponential backoff), not when the next batch falls
//! due; the partitions stay paused from the first failure to the first success, so nothing newer is read past
//! the batch the database has not taken.

use std::time::{Duration, Instant};

use cryptoviz_runtime::backoff::Backoff;

/// First delay after a failed flush.
pub const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(15);

/// What the loop does about the partitions after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// No change.
    Stay,
    /// The first failure: pause the partitions.
    Pause,
    /// The first success after failures: resume them.
    Resume,
}

/// The retry schedule of the pending batch.
#[derive(Debug)]
pub struct Retry {
    backoff: Backoff,
    at: Option<Instant>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new(Backoff::new(FIRST_DELAY, MAX_DELAY))
    }
}

impl Retry {
    /// A schedule drawing its delays from `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Retry { backoff, at: None }
    }

    /// A failed batch waits for its retry.
    pub fn is_retrying(&self) -> bool {
        self.at.is_some()
    }

    /// When the loop must wake next: the retry time, else when the pending batch falls due.
    pub fn wake(&self, batch_deadline: Option<Instant>) -> Option<Instant> {
        self.at.or(batch_deadline)
    }

    /// Whether to flush now: while retrying only at the retry time (however full the batch), else when the
    /// batch is due.
    pub fn due(&self, now: Instant, batch_due: bool) -> bool {
        match self.at {
            Some(t) => now >= t,
            None => batch_due,
        }
    }

    /// The flush succeeded.
    pub fn succeeded(&mut self) -> Transition {
        self.backoff.reset();
        match self.at.take() {
            Some(_) => Transition::Resume,
            None => Transition::Stay,
        }
    }

    /// The flush failed at `now`: schedule the next attempt.
    pub fn failed(&mut self, now: Instant) -> Transition {
        let first = self.at.is_none();
        self.at = Some(now + self.backoff.next_delay());
        if first { Transition::Pause } else { Transition::Stay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> Retry {
        Retry::new(Backoff::seeded(FIRST_DELAY, MAX_DELAY, 7))
    }

    #[test]
    fn a_failure_pauses_once_and_retries_on_its_own_schedule() {
        let mut r = retry();
        let t0 = Instant::now();
        assert!(!r.is_retrying());
        assert!(r.due(t0, true), "a due batch flushes at once");
        assert!(!r.due(t0, false));

        assert_eq!(r.failed(t0), Transition::Pause);
        let at = r.wake(Some(t0)).unwrap();
        assert!(at >= t0 + FIRST_DELAY / 2 && at <= t0 + FIRST_DELAY, "{:?}", at - t0);
        assert_eq!(r.wake(None), Some(at), "the retry time wins over the batch deadline");
        assert!(!r.due(t0, true), "a full batch does not jump its retry time");
        assert!(r.due(at, false));

        assert_eq!(r.failed(at), Transition::Stay, "already paused");
        let second = r.wake(None).unwrap() - at;
        assert!(second >= FIRST_DELAY && second <= FIRST_DELAY * 2, "the delay doubles: {second:?}");
    }

    #[test]
    fn success_resumes_once_and_starts_the_backoff_again() {
        let mut r = retry();
        let t0 = Instant::now();
        assert_eq!(r.succeeded(), Transition::Stay);
        for _ in 0..10 {
            r.failed(t0);
        }
        assert!(r.wake(None).unwrap() - t0 <= MAX_DELAY, "capped");
        assert_eq!(r.succeeded(), Transition::Resume);
        assert!(!r.is_retrying());
        assert_eq!(r.wake(None), None);
        r.failed(t0);
        assert!(r.wake(None).unwrap() - t0 <= FIRST_DELAY, "the backoff started again");
    }
}
