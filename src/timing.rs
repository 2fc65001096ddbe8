//! Every timing rule of the crate in one place: each backoff, clamp, deadline and period, with
//! why it has the value it has. No I/O here; the tasks that sleep read their durations from
//! these functions, and the unit tests below pin the rules down.
//!
//! | rule | value | used by |
//! |---|---|---|
//! | [`attempt_timeout`] | request timeout / 3, within 0.5–2 s | pool (every attempt), connect probe, keep-alive stall, watch watchdog |
//! | [`SUSPICION`] | 10 s | pool: how long a failed member is avoided |
//! | [`request_backoff`] | 20 ms doubling to 500 ms | unary retries once every member failed |
//! | [`recovery_bound`] / [`recovery_backoff`] | 100 ms doubling to TTL/2 (0.2–5 s) | watcher, re-registration |
//! | [`new_id_backoff`] | 100 ms doubling to 5 s | registration with a new id (policy `new-id`) |
//! | [`keep_alive_interval`] | TTL / 3 | keep-alive task |
//! | [`stall_bound`] | TTL / 4, at most the attempt timeout | keep-alive task |
//! | [`reopen_pause`] / [`next_reopen_delay`] | 50 ms doubling to TTL/3, at most ¼ of the time left | keep-alive task |
//! | [`integrity_check_period`] | TTL | registration supervisor |
//! | [`restore_bound`], [`RESTORE_RETRY`] | time left on the lease, at most the request timeout; 500 ms | registration supervisor |
//! | [`revoke_bound`] | request timeout, at most the TTL | deregistration, recovery |
//! | [`watchdog`] | progress request after silence; give up after idle timeout or an unanswered request | watcher |
//! | [`report_hold`] | eviction window doubling per re-report, at most 16 windows | reporter (anti-flap) |
//! | [`REPORT_SWEEP`] | 200 ms | reporter: withdrawing reports about registrations gone |
//!
//! Every backoff is jittered and stays within its bound jitter included
//! ([`crate::backoff::bounded`]).

use std::time::Duration;

use backon::BackoffBuilder;
use tokio::time::Instant;

use crate::backoff::{bounded, Delays};

/// How long a member that failed an attempt is avoided when another member is available: long
/// enough not to flap back to a frozen member between two of its failures, short enough that a
/// restarted member is used again soon.
pub(crate) const SUSPICION: Duration = Duration::from_secs(10);

/// The per-attempt bound for a request whose overall bound is `request_timeout`: a third of
/// it, between 0.5 s and 2 s. Short enough that a request whose first attempt lands on a
/// frozen member still has two more attempts on others within its own bound; long enough that
/// a healthy member under load (a leader election takes about one election timeout, 1 s by
/// default) is not abandoned for a normal pause.
#[must_use]
pub(crate) fn attempt_timeout(request_timeout: Duration) -> Duration {
    (request_timeout / 3).clamp(Duration::from_millis(500), Duration::from_secs(2))
}

/// The longest pause of [`request_backoff`].
pub(crate) const REQUEST_BACKOFF_BOUND: Duration = Duration::from_millis(500);

/// Pauses of a unary request once every member has failed recently: 20 ms doubling up to
/// 500 ms. Within one request's bound (a few seconds): an election or a restart is waited out
/// with a handful of attempts, not hundreds.
pub(crate) fn request_backoff() -> Delays {
    bounded(Duration::from_millis(20), REQUEST_BACKOFF_BOUND).build()
}

/// Pause between connect probes while every endpoint refuses.
pub(crate) const PROBE_RETRY: Duration = Duration::from_millis(100);

/// HTTP/2 keep-alive pings: a connection whose member stops answering them (a cut cable, a
/// frozen member) is closed after about 15 s even when no request is in flight. This is only
/// the transport's backstop: the pool's per-attempt timeouts and the streams' stall detection
/// (see [`crate::pool`]) react sooner. It is deliberately patient: a ping answered late by a
/// member that is merely slow must not tear down the keep-alive and watch streams on it (a
/// 2 s timeout did, with every member answering 2 s late).
pub(crate) const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`HTTP2_KEEPALIVE_INTERVAL`].
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first pause of every recovery backoff.
pub(crate) const RETRY_START: Duration = Duration::from_millis(100);

/// The longest pause of a recovery (watcher, re-registration), jitter included: half a lease
/// TTL, between 0.2 s and 5 s. After an outage a watcher sees etcd again, and a server is
/// registered again, within about half a TTL of etcd answering; never so fast that a dead
/// etcd is hammered.
#[must_use]
pub(crate) fn recovery_bound(lease_ttl: Duration) -> Duration {
    (lease_ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// The delays of a recovery: from [`RETRY_START`], doubling, each within
/// [`recovery_bound`]; without end (a recovery retries for as long as it takes).
pub(crate) fn recovery_backoff(lease_ttl: Duration) -> Delays {
    recovery_backoff_within(recovery_bound(lease_ttl))
}

/// [`recovery_backoff`] for an already computed bound.
pub(crate) fn recovery_backoff_within(bound: Duration) -> Delays {
    bounded(RETRY_START, bound).build()
}

/// The delays between attempts to register with a new id once ours was taken (policy
/// `new-id`): from [`RETRY_START`] doubling to 5 s. Not tied to the TTL: the server is not
/// registered meanwhile, and each attempt is a grant and an allocation.
pub(crate) fn new_id_backoff() -> Delays {
    bounded(RETRY_START, Duration::from_secs(5)).build()
}

/// How often the keep-alive task renews: a third of the TTL (at least 100 ms), so two
/// renewals can be lost or late before the lease is at risk.
#[must_use]
pub(crate) fn keep_alive_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// How long a keep-alive may go unanswered before its stream is given up as stalled and
/// reopened on another member: a quarter of the TTL, at most the pool's `attempt` timeout, at
/// least 100 ms. With the keep-alive sent every TTL/3, a member that freezes right after an
/// acknowledgement is left at TTL/3 + TTL/4 (7/12 of the TTL), leaving 5/12 of it for the
/// reopen, a leader election included; etcd answers a healthy keep-alive in milliseconds.
#[must_use]
pub(crate) fn stall_bound(ttl: Duration, attempt: Duration) -> Duration {
    (ttl / 4).min(attempt).max(Duration::from_millis(100))
}

/// The first pause before reopening a broken keep-alive stream (doubling after each failure,
/// see [`next_reopen_delay`]).
pub(crate) const FIRST_REOPEN_DELAY: Duration = Duration::from_millis(50);

/// The shortest pause between two attempts to reopen the keep-alive stream.
pub(crate) const MIN_REOPEN_PAUSE: Duration = Duration::from_millis(20);

/// The reopen delay after another failure: doubled, at most the keep-alive `interval`.
#[must_use]
pub(crate) fn next_reopen_delay(delay: Duration, interval: Duration) -> Duration {
    (delay * 2).min(interval)
}

/// The pause before the next attempt to reopen the keep-alive stream: the backoff `delay`,
/// but at most a quarter of the time `left` before the local deadline, so attempts get
/// denser as it nears and an etcd back just before it (a restart, an election) still saves
/// the lease.
#[must_use]
pub(crate) fn reopen_pause(delay: Duration, left: Duration) -> Duration {
    delay.min(left / 4).max(MIN_REOPEN_PAUSE)
}

/// How often a registration checks that its slot and key are intact: once per TTL. The watch
/// sees only the server key; a slot deleted behind our back would let another server take our
/// id, so it must be noticed well before a newcomer is likely to pick it.
#[must_use]
pub(crate) fn integrity_check_period(lease_ttl: Duration) -> Duration {
    lease_ttl
}

/// Pause before a failed restore is tried again (the restore itself is bounded by
/// [`restore_bound`]).
pub(crate) const RESTORE_RETRY: Duration = Duration::from_millis(500);

/// The bound of one restore: the time `left` before the lease deadline (past it, the
/// lease-loss path takes over), at most the request timeout, at least 50 ms.
#[must_use]
pub(crate) fn restore_bound(left: Duration, request_timeout: Duration) -> Duration {
    left.min(request_timeout).max(Duration::from_millis(50))
}

/// The bound of a lease revoke on deregistration or after a loss: the request timeout, but at
/// most the TTL (past it the lease is gone anyway), at least 100 ms.
#[must_use]
pub(crate) fn revoke_bound(request_timeout: Duration, ttl: Duration) -> Duration {
    request_timeout.min(ttl).max(Duration::from_millis(100))
}

/// The watch watchdog's two instants: when to ask a silent stream for progress, and when to
/// give it up.
///
/// A stream silent for `progress_interval` since `last_heard` is asked for progress. An answer
/// (or any message) proves the member alive; none within the `attempt` timeout of the request
/// (`asked`) means the member froze or answers too late: it is suspected and the watch
/// reopened on another member. A stream silent for `idle_timeout` is recreated anyway.
#[must_use]
pub(crate) fn watchdog(
    last_heard: Instant,
    asked: Option<Instant>,
    progress_interval: Duration,
    idle_timeout: Duration,
    attempt: Duration,
) -> (Instant, Instant) {
    let ask_at = last_heard + progress_interval;
    let give_up_at = last_heard + idle_timeout;
    let give_up_at = asked.map_or(give_up_at, |asked| give_up_at.min(asked + attempt));
    (ask_at, give_up_at)
}

/// How many times [`report_hold`] doubles: at most 16 windows.
pub(crate) const REPORT_HOLD_DOUBLINGS: u32 = 4;

/// After reporting one registration of an id, how long a reporter waits (since that report)
/// before it reports a *newer* registration of the same id: one eviction `window`, doubled per
/// consecutive re-report (`strikes`), at most 16 windows. A healthy server evicted by mistake
/// is back with the same id within a second, under a new create revision; reporters whose dial
/// still fails (a partition between them and it, a port that refuses while the process lives)
/// would evict it again at every dial round. Held, they answer as with eviction off, so the id
/// falls back to its lease TTL for that time, and repeated evictions of one id space out
/// exponentially instead of flapping.
#[must_use]
pub(crate) fn report_hold(window: Duration, strikes: u32) -> Duration {
    window.saturating_mul(1 << strikes.min(REPORT_HOLD_DOUBLINGS))
}

/// How often a reporter looks for reports it filed about registrations that have left its
/// view since, to withdraw them: a local check of the view (no etcd request unless one is
/// due), so a report outlives its registration by about this much.
pub(crate) const REPORT_SWEEP: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn attempt_timeout_is_a_third_of_the_request_timeout_within_bounds() {
        assert_eq!(attempt_timeout(S(3)), S(1));
        assert_eq!(attempt_timeout(MS(600)), MS(500));
        assert_eq!(attempt_timeout(S(30)), S(2));
        // Three attempts fit in the request's bound from 1.5 s on.
        for request in [1500, 3000, 5000, 6000] {
            assert!(attempt_timeout(MS(request)) * 3 <= MS(request));
        }
    }

    #[test]
    fn recovery_is_back_within_half_a_ttl_and_never_faster_than_200_ms() {
        assert_eq!(recovery_bound(S(10)), S(5));
        assert_eq!(recovery_bound(S(4)), S(2));
        assert_eq!(recovery_bound(S(60)), S(5));
        assert_eq!(recovery_bound(MS(300)), MS(200));
        for ttl in [1, 2, 5, 10, 60] {
            for delay in recovery_backoff(S(ttl)).take(40) {
                assert!(delay <= recovery_bound(S(ttl)), "{ttl}: {delay:?}");
            }
        }
    }

    #[test]
    fn backoffs_stay_within_their_bounds_and_never_end() {
        assert_eq!(request_backoff().take(100).count(), 100);
        assert!(request_backoff()
            .take(100)
            .all(|d| d <= REQUEST_BACKOFF_BOUND));
        assert_eq!(new_id_backoff().take(100).count(), 100);
        assert!(new_id_backoff().take(100).all(|d| d <= S(5)));
    }

    #[test]
    fn the_keep_alive_renews_three_times_a_ttl() {
        assert_eq!(keep_alive_interval(S(9)), S(3));
        assert_eq!(keep_alive_interval(MS(150)), MS(100));
    }

    #[test]
    fn a_stalled_keep_alive_is_given_up_well_before_the_lease_ends() {
        let attempt = MS(1666);
        assert_eq!(stall_bound(S(5), attempt), MS(1250));
        assert_eq!(stall_bound(S(10), attempt), attempt);
        assert_eq!(stall_bound(S(1), MS(50)), MS(100));
        // Frozen right after an acknowledgement: the next keep-alive goes out a third of the
        // TTL later and is given up a stall bound after that, with time left to reopen.
        for ttl in [5, 10, 30, 60] {
            let ttl = S(ttl);
            let given_up = keep_alive_interval(ttl) + stall_bound(ttl, attempt);
            assert!(given_up <= ttl * 7 / 12, "{ttl:?}: {given_up:?}");
        }
    }

    #[test]
    fn reopen_attempts_get_denser_as_the_deadline_nears() {
        let delay = S(2);
        assert_eq!(reopen_pause(delay, S(20)), delay);
        assert_eq!(reopen_pause(delay, S(4)), S(1));
        assert_eq!(reopen_pause(delay, MS(400)), MS(100));
        assert_eq!(reopen_pause(delay, Duration::ZERO), MIN_REOPEN_PAUSE);
        // The delay doubles up to the keep-alive interval.
        let mut d = FIRST_REOPEN_DELAY;
        for _ in 0..10 {
            d = next_reopen_delay(d, S(3));
        }
        assert_eq!(d, S(3));
        assert_eq!(next_reopen_delay(FIRST_REOPEN_DELAY, S(3)), MS(100));
    }

    #[test]
    fn the_integrity_check_runs_once_per_ttl() {
        assert_eq!(integrity_check_period(S(10)), S(10));
    }

    #[test]
    fn a_restore_never_outlives_the_lease_and_a_revoke_never_the_ttl() {
        assert_eq!(restore_bound(S(3), S(5)), S(3));
        assert_eq!(restore_bound(S(30), S(5)), S(5));
        assert_eq!(restore_bound(Duration::ZERO, S(5)), MS(50));
        assert_eq!(revoke_bound(S(5), S(2)), S(2));
        assert_eq!(revoke_bound(S(5), S(10)), S(5));
        assert_eq!(revoke_bound(MS(10), S(10)), MS(100));
    }

    #[test]
    fn the_watchdog_asks_after_silence_and_gives_up_on_an_unanswered_request() {
        let t0 = Instant::now();
        let (ask, give_up) = watchdog(t0, None, S(5), S(15), S(1));
        assert_eq!((ask, give_up), (t0 + S(5), t0 + S(15)));
        // Asked at t0 + 5 s: no answer within the attempt timeout gives up at t0 + 6 s.
        let (_, give_up) = watchdog(t0, Some(t0 + S(5)), S(5), S(15), S(1));
        assert_eq!(give_up, t0 + S(6));
        // The idle timeout still wins when it comes first.
        let (_, give_up) = watchdog(t0, Some(t0 + S(5)), S(5), MS(5500), S(1));
        assert_eq!(give_up, t0 + MS(5500));
    }

    #[test]
    fn the_report_hold_doubles_from_one_window_to_sixteen() {
        assert_eq!(report_hold(S(30), 0), S(30));
        assert_eq!(report_hold(S(30), 1), S(60));
        assert_eq!(report_hold(S(30), 3), S(240));
        assert_eq!(report_hold(S(30), 4), S(480));
        assert_eq!(report_hold(S(30), 40), S(480));
    }
}
