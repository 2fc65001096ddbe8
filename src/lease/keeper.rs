//! The keep-alive task: one stream, any number of leases, as an explicit state machine.
//!
//! ```text
//!   Idle ──a lease may send (ungated)──► Opening ──an open answers──► Streaming ──breaks──► Idle
//!    ▲                                      │                          │   ▲
//!    └──────── no lease left, or every one gated and no open in flight ┘   │
//!                                                           (a hedge answers first: Streaming on it)
//!   every state ── last hub handle dropped ──► Ended
//! ```
//!
//! In every state each lease keeps its own deadline: one passing loses that lease alone, as
//! does an answer with TTL 0. The stream is the only thing shared, so the rules that concern
//! it (open, stall, move to another member) look at the lease that is most at risk: the
//! stream is suspected when *any* lease's oldest keep-alive is unanswered for that lease's
//! stall bound, and an open sends its keep-alive for the ungated lease whose deadline is
//! nearest.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::hub::Command;
use super::kept::Kept;
use super::source::{Answer, KeepAliveStream, LeaseSource, OpenError};
use super::LeaseState;
use crate::timing;

/// The task's states (see the module docs).
pub(super) enum Link<St> {
    /// No stream: no lease, or none that may send.
    Idle,
    /// Opening a stream: racing opens across members (see [`Keeper::open`]).
    Opening,
    /// Driving one stream (see [`Keeper::stream`]).
    Streaming(Box<Streaming<St>>),
    /// Every handle is gone: the task ends.
    Ended,
}

/// One open stream and its member.
pub(super) struct Streaming<St> {
    member: usize,
    stream: St,
}

/// The answer to an open: its member, the lease its keep-alive was for, when it went out,
/// and the stream (`Err(_)` when no answer came within the bound).
struct Opened<St> {
    member: usize,
    id: i64,
    sent: Instant,
    result: Result<Result<St, OpenError>, tokio::time::error::Elapsed>,
}

/// An open in flight.
type Open<St> = Pin<Box<dyn Future<Output = Opened<St>> + Send>>;

/// A wait for a lease's gate to change: its id and what happened.
type GateWait = Pin<Box<dyn Future<Output = (i64, Woke)> + Send>>;

/// How a wait on a gate ended.
enum Woke {
    /// The verdict changed: the receiver, to wait again.
    Changed(watch::Receiver<bool>),
    /// The gate's sender is gone.
    Closed,
    /// The lease left the task (the id may be kept again since, by a new entry).
    Gone,
}

/// The lease an open is for: the ungated one nearest its deadline.
#[derive(Debug, Clone, Copy)]
struct Urgent {
    id: i64,
    deadline: Instant,
    interval: Duration,
    stall: Duration,
}

/// The keep-alive task of one hub.
pub(super) struct Keeper<S: LeaseSource> {
    source: Arc<S>,
    leases: BTreeMap<i64, Kept>,
    commands: mpsc::UnboundedReceiver<Command>,
    gates: FuturesUnordered<GateWait>,
}

impl<S: LeaseSource> Keeper<S> {
    /// A task over `source`, told what to keep through `commands`.
    pub(super) fn new(source: Arc<S>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        Keeper {
            source,
            leases: BTreeMap::new(),
            commands,
            gates: FuturesUnordered::new(),
        }
    }

    /// Runs until every handle of the hub is dropped.
    pub(super) async fn run(mut self) {
        let mut link = Link::Idle;
        loop {
            link = match link {
                Link::Idle => self.idle().await,
                Link::Opening => self.open().await,
                Link::Streaming(streaming) => self.stream(*streaming).await,
                Link::Ended => return,
            };
        }
    }

    /// Applies a command; false when the channel closed (every handle dropped).
    fn apply(&mut self, command: Option<Command>) -> bool {
        match command {
            None => return false,
            Some(Command::Add(lease, state)) => {
                let id = lease.id;
                let kept = Kept::new(lease, state);
                if let Some(gate) = kept.gate.clone() {
                    self.gates.push(gate_wait(id, gate, kept.gone.clone()));
                }
                tracing::debug!(lease = format_args!("{id:x}"), "keep-alive started");
                if let Some(old) = self.leases.insert(id, kept) {
                    old.gone.cancel();
                }
            }
            Some(Command::Remove(id)) => {
                if let Some(kept) = self.leases.remove(&id) {
                    kept.gone.cancel();
                    tracing::debug!(lease = format_args!("{id:x}"), "keep-alive stopped");
                }
            }
        }
        true
    }

    /// A gate changed: wait for its next change, if its lease is still kept. A gate whose
    /// sender is gone no longer gates anything.
    fn rearm(&mut self, (id, woke): (i64, Woke)) {
        let Some(kept) = self.leases.get_mut(&id) else {
            return;
        };
        match woke {
            Woke::Changed(gate) => self.gates.push(gate_wait(id, gate, kept.gone.clone())),
            Woke::Closed => kept.gate = None,
            Woke::Gone => {}
        }
    }

    /// Drops the leases nobody holds any more (their owner is gone without a `Remove`).
    fn prune(&mut self) {
        self.leases.retain(|_, kept| {
            let keep = !kept.abandoned();
            if !keep {
                kept.gone.cancel();
            }
            keep
        });
    }

    /// Loses lease `id`: reports it and stops keeping it.
    fn lose(&mut self, id: i64, reason: String) {
        if let Some(kept) = self.leases.remove(&id) {
            tracing::warn!(lease = format_args!("{id:x}"), %reason, "lease lost");
            kept.gone.cancel();
            kept.state.send_replace(LeaseState::Lost { reason });
        }
    }

    /// The nearest deadline of any kept lease.
    fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|kept| kept.deadline).min()
    }

    /// Loses every lease whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<(i64, bool)> = self
            .leases
            .iter()
            .filter(|(_, kept)| kept.deadline <= now)
            .map(|(id, kept)| (*id, kept.gated()))
            .collect();
        for (id, gated) in expired {
            let reason = if gated {
                "keep-alive deadline passed while the health probe failed"
            } else {
                "keep-alive deadline passed without an acknowledgement"
            };
            self.lose(id, reason.into());
        }
    }

    /// The ungated lease nearest its deadline: the one an open's keep-alive is for.
    fn urgent(&self) -> Option<Urgent> {
        self.leases
            .iter()
            .filter(|(_, kept)| !kept.gated())
            .min_by_key(|(_, kept)| kept.deadline)
            .map(|(&id, kept)| Urgent {
                id,
                deadline: kept.deadline,
                interval: kept.interval,
                stall: kept.stall,
            })
    }

    /// Opens a stream on `member` with a keep-alive for lease `id`, waiting at most `bound`.
    fn open_on(&self, member: usize, id: i64, bound: Duration) -> Open<S::Stream> {
        let source = self.source.clone();
        Box::pin(async move {
            let sent = Instant::now();
            let result = tokio::time::timeout(bound, source.open(member, id)).await;
            Opened {
                member,
                id,
                sent,
                result,
            }
        })
    }

    /// A stream opened on `member` with a keep-alive for `id` sent at `sent`: etcd answered it
    /// with a TTL above 0 (the source fails the open otherwise), so that lease was renewed to
    /// its full TTL no earlier than `sent`. Every other lease with keep-alives unanswered on
    /// the previous stream is sent one at once (those will not be answered now); the rest keep
    /// their schedule.
    fn opened(
        &mut self,
        member: usize,
        id: i64,
        sent: Instant,
        stream: S::Stream,
    ) -> Link<S::Stream> {
        self.source.confirm(member);
        let now = Instant::now();
        for (&lease, kept) in &mut self.leases {
            if lease == id {
                kept.renew(sent + kept.ttl);
                kept.next_send = sent + kept.interval;
            } else if !kept.pending.is_empty() {
                kept.next_send = now;
            }
            kept.pending.clear();
        }
        Link::Streaming(Box::new(Streaming { member, stream }))
    }

    /// No stream: waits until a lease may send (its probe passes), within the deadlines.
    async fn idle(&mut self) -> Link<S::Stream> {
        loop {
            self.prune();
            if self.urgent().is_some() {
                return Link::Opening;
            }
            let deadline = self.next_deadline();
            // Biased: membership first (a lease removed is not sent for), then the deadlines.
            tokio::select! {
                biased;
                command = self.commands.recv() => if !self.apply(command) {
                    return Link::Ended;
                },
                () = sleep_until_some(deadline) => self.expire(),
                Some(woke) = self.gates.next(), if !self.gates.is_empty() => self.rearm(woke),
            }
        }
    }

    /// Opens a stream. Opens race: one goes to the chosen member; if it has not answered
    /// within the stall bound, that member is suspected and another open goes to the next,
    /// the first still running. Whichever answers first wins, so a member that is down (its
    /// connect may hang) costs one stall bound and a cluster that is merely slow still
    /// answers. Each open may run until its lease's deadline.
    async fn open(&mut self) -> Link<S::Stream> {
        // Refusals are retried after a pause that starts here and doubles (see below).
        let mut reopen_delay = timing::FIRST_REOPEN_DELAY;
        let mut opens: FuturesUnordered<Open<S::Stream>> = FuturesUnordered::new();
        let mut next_open = Instant::now();
        let mut last_member: Option<usize> = None;
        loop {
            self.prune();
            let urgent = self.urgent();
            if self.leases.is_empty() || (urgent.is_none() && opens.is_empty()) {
                return Link::Idle;
            }
            let deadline = self.next_deadline();
            let can_open = urgent.is_some() && opens.len() < self.source.members().max(1);
            // Biased: membership first (a lease removed is not sent for), then the deadlines.
            tokio::select! {
                biased;
                command = self.commands.recv() => if !self.apply(command) {
                    return Link::Ended;
                },
                () = sleep_until_some(deadline) => self.expire(),
                Some(woke) = self.gates.next(), if !self.gates.is_empty() => self.rearm(woke),
                () = tokio::time::sleep_until(next_open), if can_open => {
                    if let (Some(member), false) = (last_member, opens.is_empty()) {
                        self.source.suspect(member, "keep-alive unanswered");
                    }
                    if let Some(urgent) = urgent {
                        let member = self.source.choose();
                        let bound = urgent.deadline.saturating_duration_since(Instant::now());
                        opens.push(self.open_on(member, urgent.id, bound));
                        last_member = Some(member);
                        next_open = Instant::now() + urgent.stall;
                    }
                }
                Some(opened) = opens.next(), if !opens.is_empty() => match opened.result {
                    Ok(Ok(stream)) => {
                        return self.opened(opened.member, opened.id, opened.sent, stream);
                    }
                    Ok(Err(OpenError::LeaseGone(e))) => {
                        // That lease is gone, not the member: open again at once for the
                        // others (the loop returns to Idle if none is left).
                        self.lose(opened.id, format!("etcd says the lease is gone: {e}"));
                        if opens.is_empty() {
                            last_member = None;
                            next_open = Instant::now();
                        }
                    }
                    Ok(Err(OpenError::Failed(e))) => {
                        tracing::debug!(error = %e, "keep-alive stream could not be opened");
                        self.source.suspect(opened.member, "keep-alive stream could not be opened");
                        // A refusal is quick: try the next member after a pause that doubles
                        // up to the keep-alive interval, but at most a quarter of the time
                        // left, so attempts get denser as the deadline nears and an etcd back
                        // just before it still saves the lease.
                        let now = Instant::now();
                        let (left, interval) = urgent.map_or((Duration::ZERO, timing::FIRST_REOPEN_DELAY), |u| {
                            (u.deadline.saturating_duration_since(now), u.interval)
                        });
                        let pause = timing::reopen_pause(reopen_delay, left);
                        reopen_delay = timing::next_reopen_delay(reopen_delay, interval);
                        next_open = next_open.min(now + pause);
                    }
                    Ok(Err(OpenError::NoClient)) => {
                        tracing::debug!("no etcd client for the keep-alive stream");
                        next_open = next_open.min(Instant::now() + timing::MIN_REOPEN_PAUSE);
                    }
                    Err(_) => self.source.suspect(opened.member, "keep-alive unanswered"),
                },
            }
        }
    }

    /// The oldest unanswered keep-alive that has gone unanswered longest relative to its
    /// lease's stall bound: when the stream counts as stalled, and that lease.
    fn stalled_at(&self) -> Option<(Instant, i64)> {
        self.leases
            .iter()
            .filter_map(|(&id, kept)| kept.pending.front().map(|sent| (*sent + kept.stall, id)))
            .min()
    }

    /// When the next keep-alive of any lease is due.
    fn next_due(&self) -> Option<Instant> {
        self.leases.values().map(|kept| kept.next_send).min()
    }

    /// Sends the keep-alives that are due (withholding those of gated leases). `Some(Idle)`
    /// when the stream could not take one: the member is suspected and the stream given up.
    async fn send_due(&mut self, member: usize, stream: &mut S::Stream) -> Option<Link<S::Stream>> {
        let now = Instant::now();
        let due: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, kept)| kept.next_send <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let Some(kept) = self.leases.get_mut(&id) else {
                continue;
            };
            // Due again an interval from now, sent or not (a late tick is not caught up).
            kept.next_send = now + kept.interval;
            if kept.gated() {
                tracing::debug!(
                    lease = format_args!("{id:x}"),
                    "health probe failing: keep-alive withheld"
                );
                continue;
            }
            let stall = kept.stall;
            let sent = Instant::now();
            // The send itself can block on a stalled connection's flow-control window.
            match tokio::time::timeout(stall, stream.send(id)).await {
                Ok(Ok(())) => {
                    if let Some(kept) = self.leases.get_mut(&id) {
                        kept.pending.push_back(sent);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "keep-alive send failed; reopening");
                    self.source.suspect(member, "keep-alive send failed");
                    return Some(Link::Idle);
                }
                Err(_) => {
                    self.source.suspect(member, "keep-alive send blocked");
                    return Some(Link::Idle);
                }
            }
        }
        None
    }

    /// Applies one answer: renews its lease's deadline from the send time of the oldest
    /// keep-alive for it that it answers (never moving it back), or loses the lease on TTL 0.
    /// An answer for a lease no longer kept (removed, or already lost) changes nothing.
    fn acknowledged(&mut self, answer: Answer) {
        let Some(kept) = self.leases.get_mut(&answer.id) else {
            return;
        };
        let sent = kept.pending.pop_front().unwrap_or_else(Instant::now);
        if answer.ttl <= 0 {
            self.lose(
                answer.id,
                "etcd answered the keep-alive with TTL 0 (expired or revoked)".into(),
            );
            return;
        }
        let ttl = Duration::from_secs(u64::try_from(answer.ttl).unwrap_or(0));
        let rtt = sent.elapsed();
        metrics::histogram!(crate::metrics::KEEPALIVE_RTT).record(rtt.as_secs_f64());
        tracing::trace!(
            lease = format_args!("{:x}", answer.id),
            rtt_ms = u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX),
            ttl = answer.ttl,
            "keep-alive acknowledged"
        );
        kept.renew(sent + ttl);
    }

    /// Drives one keep-alive stream: each lease's keep-alive every interval, every answer
    /// drained (an undrained stream stalls the HTTP/2 window and every keep-alive with it).
    ///
    /// When a lease's oldest keep-alive goes unanswered for its stall bound (or another request
    /// suspects this member), a stream is opened on another member *while this one keeps
    /// going*: a member that is merely slow (an overloaded cluster, every member late) still
    /// renews the leases with its late answers, and whichever stream answers first wins. An
    /// answer here drops the hedge; the hedge opening first replaces this stream.
    async fn stream(&mut self, streaming: Streaming<S::Stream>) -> Link<S::Stream> {
        let Streaming { member, mut stream } = streaming;
        let mut suspicions = self.source.suspicions();
        suspicions.mark_unchanged();
        // A suspicion channel that closed has nothing more to say (and would be ready forever).
        let mut suspicions_open = true;
        let mut hedge: Option<Open<S::Stream>> = None;
        loop {
            self.prune();
            if self.leases.is_empty() {
                // The last lease left: the stream closes with it.
                return Link::Idle;
            }
            let deadline = self.next_deadline();
            let stalled = self.stalled_at();
            let due = self.next_due();
            let hedging = hedge.is_some();
            let hedged = async {
                match hedge.as_mut() {
                    Some(open) => open.await,
                    None => std::future::pending().await,
                }
            };
            // Biased: membership first (a lease removed is not sent for), then the deadlines.
            tokio::select! {
                biased;
                command = self.commands.recv() => if !self.apply(command) {
                    return Link::Ended;
                },
                () = sleep_until_some(deadline) => self.expire(),
                Some(woke) = self.gates.next(), if !self.gates.is_empty() => self.rearm(woke),
                () = sleep_until_some(stalled.map(|(at, _)| at)), if !hedging => {
                    tracing::info!(member, "keep-alive unanswered; opening a stream on another member too");
                    self.source.suspect(member, "keep-alive unanswered");
                    let stalled_lease = stalled.map(|(_, id)| id);
                    if let Some((id, bound)) = self.hedge_for(stalled_lease) {
                        let other = self.source.choose();
                        hedge = Some(self.open_on(other, id, bound));
                    }
                }
                changed = suspicions.changed(), if !hedging && suspicions_open => {
                    let suspected = *suspicions.borrow_and_update();
                    suspicions_open = changed.is_ok();
                    if suspicions_open && suspected.1 == member && self.source.members() > 1 {
                        tracing::debug!("keep-alive member suspected by another request; opening a stream on another member too");
                        if let Some((id, bound)) = self.hedge_for(None) {
                            let other = self.source.choose();
                            hedge = Some(self.open_on(other, id, bound));
                        }
                    }
                }
                opened = hedged => {
                    hedge = None;
                    match opened.result {
                        Ok(Ok(new)) => {
                            tracing::debug!("the stream on another member answered first; moving there");
                            return self.opened(opened.member, opened.id, opened.sent, new);
                        }
                        Ok(Err(OpenError::LeaseGone(e))) => {
                            self.lose(opened.id, format!("etcd says the lease is gone: {e}"));
                        }
                        // That member failed too; if this stream still stalls, the next stall
                        // check (at once) tries another.
                        Ok(Err(OpenError::Failed(_))) | Err(_) => {
                            self.source.suspect(opened.member, "keep-alive unanswered");
                        }
                        Ok(Err(OpenError::NoClient)) => {}
                    }
                }
                () = sleep_until_some(due) => {
                    if let Some(link) = self.send_due(member, &mut stream).await {
                        return link;
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(answer)) => {
                        self.acknowledged(answer);
                        if hedge.take().is_some() {
                            tracing::debug!("the stalled keep-alive stream answered late; keeping it");
                            self.source.confirm(member);
                        }
                    }
                    Ok(None) => {
                        tracing::debug!("keep-alive stream ended; reopening");
                        self.source.suspect(member, "keep-alive stream ended");
                        return Link::Idle;
                    }
                    // A lease etcd does not know is answered with TTL 0, not an error: an
                    // error is the stream's, whatever it says, and the reopen's keep-alives
                    // tell which leases are gone.
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream failed; reopening");
                        self.source.suspect(member, "keep-alive stream failed");
                        return Link::Idle;
                    }
                }
            }
        }
    }

    /// The lease a hedge's open is for and its bound: the most urgent ungated lease (else
    /// `stalled`, which was sendable a moment ago), bounded by the stall bound of the lease
    /// that stalled (else its own).
    fn hedge_for(&self, stalled: Option<i64>) -> Option<(i64, Duration)> {
        let stall = stalled
            .and_then(|id| self.leases.get(&id))
            .map(|kept| kept.stall);
        match self.urgent() {
            Some(urgent) => Some((urgent.id, stall.unwrap_or(urgent.stall))),
            None => stalled.zip(stall),
        }
    }
}

/// Waits for `gate` to change, or for its lease to leave the task (`gone`).
fn gate_wait(id: i64, mut gate: watch::Receiver<bool>, gone: CancellationToken) -> GateWait {
    Box::pin(async move {
        tokio::select! {
            () = gone.cancelled() => (id, Woke::Gone),
            changed = gate.changed() => match changed {
                Ok(()) => (id, Woke::Changed(gate)),
                Err(_) => (id, Woke::Closed),
            },
        }
    })
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
