//! One lease as the keep-alive task keeps it: its deadline, its renewal schedule, the send
//! times of its unanswered keep-alives, its health gate, and where its state is reported.
//! Shared nothing with the other leases of the stream but the stream itself.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::NewLease;
use super::LeaseState;

/// One kept lease.
#[derive(Debug)]
pub(super) struct Kept {
    /// The TTL etcd granted: what an open (whose answer etcd-client consumes) renews it to.
    pub(super) ttl: Duration,
    /// How often it is renewed.
    pub(super) interval: Duration,
    /// How long a keep-alive for it may go unanswered before the stream's member is suspected.
    pub(super) stall: Duration,
    /// The latest instant etcd may still keep it, on our clock; mirrors `state`.
    pub(super) deadline: Instant,
    /// When its next keep-alive is due.
    pub(super) next_send: Instant,
    /// Send times of its keep-alives on the current stream not answered yet, oldest first.
    pub(super) pending: VecDeque<Instant>,
    /// The health verdict it is gated on, if any.
    pub(super) gate: Option<watch::Receiver<bool>>,
    /// Where its state goes.
    pub(super) state: watch::Sender<LeaseState>,
    /// Cancelled when it leaves the task: ends the wait on its gate.
    pub(super) gone: CancellationToken,
}

impl Kept {
    /// A newly added lease reporting to `state`.
    pub(super) fn new(lease: NewLease, state: watch::Sender<LeaseState>) -> Self {
        Kept {
            ttl: lease.ttl,
            interval: lease.interval,
            stall: lease.stall,
            deadline: lease.granted_at + lease.ttl,
            next_send: lease.granted_at + lease.interval,
            pending: VecDeque::new(),
            gate: lease.gate,
            state,
            gone: CancellationToken::new(),
        }
    }

    /// True while its health probe fails: no keep-alive may go out for it.
    pub(super) fn gated(&self) -> bool {
        self.gate.as_ref().is_some_and(|gate| !*gate.borrow())
    }

    /// Moves the deadline to `deadline` if that is later (never back: an answer to an older
    /// request says less than the one already applied).
    pub(super) fn renew(&mut self, deadline: Instant) {
        if deadline > self.deadline {
            self.deadline = deadline;
            self.state.send_replace(LeaseState::Alive { deadline });
        }
    }

    /// Nobody holds its state any more (its owner is gone without removing it).
    pub(super) fn abandoned(&self) -> bool {
        self.state.is_closed()
    }
}
