//! The watch's liveness timers: when a silent stream is asked for progress, when it is given
//! up, and when a busy stream's member is probed. A member that froze or answers seconds late
//! must not hold the view back, whether its stream is silent (the watchdog notices) or busy
//! (the probe does); see the module docs of [`super`].
//!
//! The decisions are pure functions of instants ([`next_alarm`], [`probe_due`]), unit-tested
//! below; [`Timers`] holds the instants and the one timer that acts on them.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What a watch knows about its stream's liveness, and the one timer acting on it.
pub(super) struct Timers {
    /// When the stream last delivered anything (or opened): silence is measured from here, a
    /// progress request after `progress_interval` of it, giving up after `idle_timeout`.
    pub(super) last_heard: Instant,
    /// When we asked for progress, while the answer has not come: an unanswered request gives
    /// up after one attempt timeout (the member froze or answers too late), well before the
    /// idle timeout would.
    pub(super) asked: Option<Instant>,
    /// When the member last proved it answers in time (a probe sent, an answer to our progress
    /// request, or the stream's opening): a busy stream's member is probed once per
    /// `progress_interval` from here.
    pub(super) probed: Instant,
    /// The watchdog's timer, kept from message to message: moving a pending timer later is an
    /// atomic update, where a new timer per message is registered with the runtime's timer
    /// wheel and removed again (a measurable share of a busy watcher's time).
    pub(super) watchdog: Pin<Box<Sleep>>,
}

/// What the watchdog does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alarm {
    /// The stream was silent for `progress_interval`: ask it for progress.
    Ask,
    /// Our progress request went unanswered for an attempt timeout: suspect the member and
    /// move the watch.
    Unanswered,
    /// The stream was silent for `idle_timeout`: recreate it.
    Idle,
}

/// When the watchdog fires next, and what it then does. One timer serves both instants of
/// [`crate::timing::watchdog`]: the earlier one that is still to come (a progress request is
/// asked once; after that only giving up is left).
pub(super) fn next_alarm(
    last_heard: Instant,
    asked: Option<Instant>,
    progress_interval: Duration,
    idle_timeout: Duration,
    attempt: Duration,
) -> (Instant, Alarm) {
    let (ask_at, give_up_at) =
        crate::timing::watchdog(last_heard, asked, progress_interval, idle_timeout, attempt);
    if asked.is_none() && ask_at < give_up_at {
        (ask_at, Alarm::Ask)
    } else if asked.is_some() {
        (give_up_at, Alarm::Unanswered)
    } else {
        (give_up_at, Alarm::Idle)
    }
}

/// True when a message heard at `heard` finds the member due for a probe: a progress interval
/// since it last proved itself, and another member to move the watch to (with one, a
/// suspicion could move it nowhere).
pub(super) fn probe_due(
    heard: Instant,
    probed: Instant,
    progress_interval: Duration,
    members: usize,
) -> bool {
    heard.saturating_duration_since(probed) >= progress_interval && members > 1
}

impl Timers {
    /// A stream opened `now`: heard and proved now, nothing asked, the watchdog set for the
    /// first progress request.
    pub(super) fn new(now: Instant, progress_interval: Duration) -> Self {
        Timers {
            last_heard: now,
            asked: None,
            probed: now,
            watchdog: Box::pin(tokio::time::sleep_until(now + progress_interval)),
        }
    }

    /// Sets the watchdog to the next alarm ([`next_alarm`]); returns what it does then.
    pub(super) fn arm(
        &mut self,
        progress_interval: Duration,
        idle_timeout: Duration,
        attempt: Duration,
    ) -> Alarm {
        let (due, alarm) = next_alarm(
            self.last_heard,
            self.asked,
            progress_interval,
            idle_timeout,
            attempt,
        );
        if self.watchdog.deadline() != due {
            self.watchdog.as_mut().reset(due);
        }
        alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRESS: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(15);
    const ATTEMPT: Duration = Duration::from_secs(2);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_silent_stream_is_asked_first_then_given_up_on_when_the_answer_is_late() {
        let t0 = Instant::now();
        assert_eq!(
            next_alarm(t0, None, PROGRESS, IDLE, ATTEMPT),
            (t0 + PROGRESS, Alarm::Ask)
        );
        // Asked at 5 s: one attempt timeout for the answer, not the idle timeout.
        let asked = t0 + PROGRESS;
        assert_eq!(
            next_alarm(t0, Some(asked), PROGRESS, IDLE, ATTEMPT),
            (asked + ATTEMPT, Alarm::Unanswered)
        );
        // Asked so late that the idle timeout comes first: still the unanswered request's
        // alarm (the member is suspected), at the idle instant.
        let late = t0 + secs(14);
        assert_eq!(
            next_alarm(t0, Some(late), PROGRESS, IDLE, ATTEMPT),
            (t0 + IDLE, Alarm::Unanswered)
        );
    }

    #[test]
    fn a_progress_interval_not_shorter_than_the_idle_timeout_never_asks() {
        let t0 = Instant::now();
        assert_eq!(
            next_alarm(t0, None, IDLE, IDLE, ATTEMPT),
            (t0 + IDLE, Alarm::Idle)
        );
        assert_eq!(
            next_alarm(t0, None, secs(20), IDLE, ATTEMPT),
            (t0 + IDLE, Alarm::Idle)
        );
    }

    #[test]
    fn a_member_is_probed_once_per_progress_interval_and_only_with_somewhere_to_go() {
        let t0 = Instant::now();
        assert!(!probe_due(t0 + secs(4), t0, PROGRESS, 3));
        assert!(probe_due(t0 + PROGRESS, t0, PROGRESS, 3));
        assert!(probe_due(t0 + secs(6), t0, PROGRESS, 2));
        assert!(!probe_due(t0 + secs(6), t0, PROGRESS, 1), "one member");
        // A clock that reads earlier than the last probe is no reason to probe.
        assert!(!probe_due(t0, t0 + secs(1), PROGRESS, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_follows_the_next_alarm() {
        let t0 = Instant::now();
        let mut timers = Timers::new(t0, PROGRESS);
        assert_eq!(timers.watchdog.deadline(), t0 + PROGRESS);
        assert_eq!(timers.arm(PROGRESS, IDLE, ATTEMPT), Alarm::Ask);
        timers.asked = Some(t0 + secs(5));
        assert_eq!(timers.arm(PROGRESS, IDLE, ATTEMPT), Alarm::Unanswered);
        assert_eq!(timers.watchdog.deadline(), t0 + secs(7));
    }
}
