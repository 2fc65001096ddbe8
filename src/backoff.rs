//! Jittered exponential backoff whose every delay, jitter included, stays within a bound.
//!
//! backon's jitter adds a random 0–100 % of the current delay on top of it, so a backoff built
//! with `with_max_delay(b).with_jitter()` sleeps up to almost `2 b` (a watcher documented as
//! "at most TTL/2" was seen waiting 9.9 s at TTL 10). Every retry loop of the crate builds its
//! delays here instead: the exponential part is capped at half the bound, so that the jitter
//! still spreads retries over `(b/2, b]` once the delay has grown, and each delay is clamped
//! to the bound as well (backon computes the jitter in `f32`, whose rounding could otherwise
//! overshoot by a few nanoseconds).
//!
//! Public for hosts' own retry loops with the same promise (the mesh server's dialler uses it
//! with a retry budget, [`Bounded::with_max_times`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Builds jittered exponential delays starting near `min` and never longer than `bound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded {
    min: Duration,
    bound: Duration,
    max_times: Option<usize>,
}

/// Delays starting at `min` (plus jitter), doubling, each at most `bound`, without end.
/// A `min` above half the bound is lowered to it: the first delay is jittered too.
#[must_use]
pub fn bounded(min: Duration, bound: Duration) -> Bounded {
    Bounded {
        min,
        bound,
        max_times: None,
    }
}

impl Bounded {
    /// Stops after `times` delays (a retry budget).
    #[must_use]
    pub fn with_max_times(mut self, times: usize) -> Self {
        self.max_times = Some(times);
        self
    }
}

impl BackoffBuilder for Bounded {
    type Backoff = Delays;

    fn build(self) -> Delays {
        let half = self.bound / 2;
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min.min(half))
            .with_max_delay(half)
            .with_jitter();
        let builder = match self.max_times {
            Some(times) => builder.with_max_times(times),
            None => builder.without_max_times(),
        };
        Delays {
            inner: builder.build(),
            bound: self.bound,
        }
    }
}

/// The delays of a [`Bounded`] backoff.
#[derive(Debug)]
pub struct Delays {
    inner: ExponentialBackoff,
    bound: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.inner.next().map(|delay| delay.min(self.bound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_delay_exceeds_the_bound_jitter_included() {
        for bound_ms in [1u64, 3, 200, 500, 999, 1000, 5000, 7001] {
            let bound = Duration::from_millis(bound_ms);
            let mut longest = Duration::ZERO;
            for _ in 0..200 {
                for delay in bounded(Duration::from_millis(100), bound).build().take(30) {
                    assert!(delay <= bound, "{delay:?} > {bound:?}");
                    longest = longest.max(delay);
                }
            }
            // The jitter is still there: grown delays spread above half the bound.
            assert!(longest > bound / 2, "bound {bound:?}: longest {longest:?}");
        }
    }

    #[test]
    fn a_budget_ends_the_delays() {
        let delays = bounded(Duration::from_millis(1), Duration::from_millis(8)).with_max_times(4);
        assert_eq!(delays.build().count(), 4);
    }
}
