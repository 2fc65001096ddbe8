//! Whether a registration's game server is still there, judged by its event stream.
//!
//! The agent cannot see the game server's process, but the server holds a connection to the
//! agent: its event stream. When that process dies (kill -9, a crash, an OOM kill) the kernel
//! closes its sockets and the stream ends at once: the agent deregisters it, and its peers hear
//! the leave in milliseconds instead of a lease TTL later. A client that reconnects on purpose
//! (a plugin reopening its stream) does so within the *reattach window*, and keeps its
//! registration. A registration whose stream never attaches (the client died between register
//! and attach, or never came back after an agent restart) is removed after the *attach bound*:
//! no phantom members.
//!
//! ```text
//!   register/resume ──► Unattached{since} ──attach──► Attached{stream} ──close──► Detached{since}
//!                            │                          ▲    │ attach (replaces)      │
//!                            │ since + attach_bound     │    └────────────┘           │ attach
//!                            ▼                          └─────────────────────────────┘
//!                        Deregister ◄────────────────────────── since + reattach_window
//! ```
//!
//! Pure: the caller keeps the clock and the streams; [`Fate::due`] says when to look again.

use std::time::Duration;

use tokio::time::Instant;

/// The bounds a fate is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// How long a registration may wait for its first stream (after register or resume).
    pub(crate) attach: Duration,
    /// How long a closed stream may take to come back.
    pub(crate) reattach: Duration,
}

/// Where a registration's stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attachment {
    /// No stream yet since `since` (registered or resumed then).
    Unattached { since: Instant },
    /// Stream number `stream` is open.
    Attached { stream: u64 },
    /// The last stream closed at `since`.
    Detached { since: Instant },
}

/// What to do about a registration now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep it; look again at `Some(instant)` (or when a stream opens or closes).
    Keep(Option<Instant>),
    /// Its server is gone: deregister it.
    Deregister,
}

/// One registration's fate.
#[derive(Debug, Clone)]
pub(crate) struct Fate {
    bounds: Bounds,
    attachment: Attachment,
    /// Streams attached so far; numbers the next one.
    streams: u64,
}

impl Fate {
    /// A registration made (or resumed) at `now`, with no stream yet.
    pub(crate) fn new(bounds: Bounds, now: Instant) -> Self {
        Fate {
            bounds,
            attachment: Attachment::Unattached { since: now },
            streams: 0,
        }
    }

    /// A stream opened: it replaces any stream before it. Returns its number, which the stream
    /// presents when it closes.
    pub(crate) fn attach(&mut self) -> u64 {
        self.streams = self.streams.wrapping_add(1);
        self.attachment = Attachment::Attached {
            stream: self.streams,
        };
        self.streams
    }

    /// Stream `stream` closed at `now`. A stream that was already replaced changes nothing.
    pub(crate) fn detach(&mut self, stream: u64, now: Instant) {
        if self.attachment == (Attachment::Attached { stream }) {
            self.attachment = Attachment::Detached { since: now };
        }
    }

    /// True while a stream is attached.
    #[cfg(test)]
    pub(crate) fn is_attached(&self) -> bool {
        matches!(self.attachment, Attachment::Attached { .. })
    }

    /// The verdict at `now`.
    pub(crate) fn judge(&self, now: Instant) -> Verdict {
        let due = match self.attachment {
            Attachment::Attached { .. } => return Verdict::Keep(None),
            Attachment::Unattached { since } => since + self.bounds.attach,
            Attachment::Detached { since } => since + self.bounds.reattach,
        };
        if now >= due {
            Verdict::Deregister
        } else {
            Verdict::Keep(Some(due))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        attach: Duration::from_secs(10),
        reattach: Duration::from_millis(150),
    };

    #[test]
    fn a_registration_never_attached_is_removed_after_the_attach_bound() {
        let t0 = Instant::now();
        let fate = Fate::new(BOUNDS, t0);
        assert_eq!(fate.judge(t0), Verdict::Keep(Some(t0 + BOUNDS.attach)));
        assert_eq!(
            fate.judge(t0 + BOUNDS.attach - Duration::from_millis(1)),
            Verdict::Keep(Some(t0 + BOUNDS.attach))
        );
        assert_eq!(fate.judge(t0 + BOUNDS.attach), Verdict::Deregister);
    }

    #[test]
    fn an_attached_stream_keeps_it_forever() {
        let t0 = Instant::now();
        let mut fate = Fate::new(BOUNDS, t0);
        fate.attach();
        assert!(fate.is_attached());
        assert_eq!(
            fate.judge(t0 + Duration::from_secs(3600)),
            Verdict::Keep(None)
        );
    }

    #[test]
    fn a_closed_stream_not_reattached_within_the_window_removes_it() {
        let t0 = Instant::now();
        let mut fate = Fate::new(BOUNDS, t0);
        let s = fate.attach();
        let closed = t0 + Duration::from_secs(60);
        fate.detach(s, closed);
        assert_eq!(
            fate.judge(closed + Duration::from_millis(149)),
            Verdict::Keep(Some(closed + BOUNDS.reattach))
        );
        assert_eq!(fate.judge(closed + BOUNDS.reattach), Verdict::Deregister);
    }

    #[test]
    fn a_deliberate_reconnect_within_the_window_keeps_it() {
        let t0 = Instant::now();
        let mut fate = Fate::new(BOUNDS, t0);
        let first = fate.attach();
        fate.detach(first, t0 + Duration::from_secs(1));
        fate.attach();
        assert_eq!(fate.judge(t0 + Duration::from_secs(5)), Verdict::Keep(None));
    }

    #[test]
    fn the_close_of_a_replaced_stream_does_not_detach_its_successor() {
        let t0 = Instant::now();
        let mut fate = Fate::new(BOUNDS, t0);
        let first = fate.attach();
        let second = fate.attach();
        assert_ne!(first, second);
        // The replaced stream ends after its successor opened (the agent closed it).
        fate.detach(first, t0 + Duration::from_secs(1));
        assert!(fate.is_attached());
        assert_eq!(fate.judge(t0 + Duration::from_secs(5)), Verdict::Keep(None));
        fate.detach(second, t0 + Duration::from_secs(6));
        assert!(!fate.is_attached());
    }
}
