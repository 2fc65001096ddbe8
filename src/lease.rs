//! One lease per registration, kept alive on its own task, with a local deadline.
//!
//! ```text
//!   grant ──► Alive { deadline } ──(ack with TTL > 0)──► Alive { deadline' }
//!                   │
//!                   ├─ ack with TTL 0, NotFound, or deadline passed ──► Lost { reason }
//!                   └─ cancelled (deregister / drop) ──► task ends; etcd expires or we revoke
//! ```
//!
//! The keep-alive is sent every TTL/3. The deadline is the *send* time of the oldest request
//! an acknowledgement answers, plus the TTL it returned: the latest instant at which etcd may
//! still consider the lease alive, measured on our own clock, so the lease is never believed
//! alive longer than etcd would keep it. The response stream is always drained (an undrained
//! stream stalls the HTTP/2 window and the keep-alive with it). When the stream breaks
//! (leader change, restart, network), it is reopened while the deadline has not passed.
//!
//! A stream can also go *silent* without breaking: its member froze (SIGSTOP, a stalled disk)
//! or answers seconds late. A keep-alive unanswered for `timing::stall_bound` (a quarter of the TTL,
//! at most the pool's attempt timeout) gets its member suspected and a stream opened on
//! another member, long before the deadline; a member suspected by any other request moves the
//! stream too (see the `pool` module). The stalled stream is not dropped while its replacement
//! opens: on a cluster that is merely slow (every member answering late, an overloaded host),
//! its late answer still renews the lease, and then it simply goes on.
//!
//! The keep-alive task itself is an explicit state machine (`Session`: gated on the health
//! probe, opening, streaming, ended); [`LeaseState`] is what it tells the registration.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::retrying;
use crate::error::{is_lease_not_found, Result};
use crate::pool::Pool;
use crate::timing;

/// What the keep-alive task believes about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Acknowledged; etcd keeps it at least until `deadline`.
    Alive {
        /// Our conservative estimate of the lease's expiry.
        deadline: Instant,
    },
    /// Gone: expired, revoked, or unconfirmed past its deadline.
    Lost {
        /// Why.
        reason: String,
    },
}

/// A granted lease and its keep-alive task.
#[derive(Debug)]
pub(crate) struct LeaseSession {
    id: i64,
    ttl: Duration,
    state: watch::Receiver<LeaseState>,
    cancel: CancellationToken,
}

impl LeaseSession {
    /// Grants a lease of `ttl` and starts keeping it alive; keep-alives are sent only while
    /// `gate` (a health verdict), if given, is true: an unhealthy server lets its lease expire.
    ///
    /// # Errors
    /// The grant request failed or timed out.
    pub(crate) async fn grant_gated(
        pool: &Pool,
        ttl: Duration,
        request_timeout: Duration,
        gate: Option<watch::Receiver<bool>>,
    ) -> Result<Self> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut sent = Instant::now();
        let resp = retrying(pool, "lease grant", request_timeout, |client| {
            sent = Instant::now();
            async move { client.lease_client().grant(ttl_secs, None).await }
        })
        .await?;
        let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        let (tx, rx) = watch::channel(LeaseState::Alive {
            deadline: sent + granted,
        });
        let cancel = CancellationToken::new();
        let task = KeepAlive {
            pool: pool.clone(),
            id: resp.id(),
            interval: timing::keep_alive_interval(ttl),
            stall: timing::stall_bound(granted, pool.attempt_timeout()),
            ttl: granted,
            state: tx,
            cancel: cancel.clone(),
            gate,
        };
        tokio::spawn(task.run());
        tracing::debug!(
            lease = format_args!("{:x}", resp.id()),
            ttl = resp.ttl(),
            "lease granted"
        );
        Ok(LeaseSession {
            id: resp.id(),
            ttl: granted,
            state: rx,
            cancel,
        })
    }

    /// The lease id.
    #[must_use]
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    #[must_use]
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current state.
    #[must_use]
    pub(crate) fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    #[must_use]
    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// Stops the keep-alive and revokes the lease, bounded by `timeout`. A lease that is
    /// already gone counts as revoked.
    ///
    /// # Errors
    /// The revoke failed for another reason or timed out; the lease then expires by itself
    /// within its TTL.
    pub(crate) async fn revoke(self, pool: &Pool, timeout: Duration) -> Result<()> {
        self.cancel.cancel();
        crate::client::revoke_lease(pool, self.id, timeout).await
    }
}

impl Drop for LeaseSession {
    /// Dropping stops the keep-alive: etcd expires the lease (and our keys) within its TTL.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One open keep-alive stream: its member, its two halves, and the send times of the
/// keep-alives it has not answered yet (oldest first).
struct Streaming {
    member: usize,
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
    pending: VecDeque<Instant>,
    /// When the last keep-alive went out (the open's own, for a new stream).
    last_sent: Instant,
}

/// The keep-alive task's states (the picture in the module docs is the lease's, as the
/// registration sees it; this is the session that keeps it):
///
/// ```text
///   Gated ──probe passes──► Opening ──a stream answers──► Streaming ──stream breaks──► Gated
///     │                        │                            │  ▲
///     └───── deadline passed, lease gone, cancelled ────────┴──┴─► Ended
///                                              (a hedge answers first: Streaming on it)
/// ```
enum Session {
    /// Waiting for the health probe to pass, if there is one: opening a stream sends a
    /// keep-alive at once, so an unhealthy server must not open one.
    Gated,
    /// Opening a stream: racing opens across members (see [`KeepAlive::open`]).
    Opening,
    /// Driving one stream (see [`KeepAlive::stream`]).
    Streaming(Box<Streaming>),
    /// Lost, or cancelled: the task ends.
    Ended,
}

/// The answer to opening a stream: the member, when the open's keep-alive went out, and the
/// stream (or why not; `Err(_)` when no answer came within the bound).
type Opened = (
    usize,
    Instant,
    std::result::Result<
        std::result::Result<
            (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream),
            etcd_client::Error,
        >,
        tokio::time::error::Elapsed,
    >,
);

/// Opens a keep-alive stream on pool member `member`; the open sends a keep-alive and waits
/// (at most `bound`, building the member's client included) for its answer. `None` when the
/// member's client could not be built.
async fn open_stream(pool: Pool, member: usize, id: i64, bound: Duration) -> Option<Opened> {
    let sent = Instant::now();
    let client = tokio::time::timeout(bound, pool.client(member))
        .await
        .ok()?
        .ok()?;
    let mut lease_client = client.lease_client();
    let left = bound.saturating_sub(sent.elapsed());
    let opened = tokio::time::timeout(left, lease_client.keep_alive(id)).await;
    Some((member, sent, opened))
}

/// An open in flight.
type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Opened>> + Send>>;

struct KeepAlive {
    gate: Option<watch::Receiver<bool>>,
    pool: Pool,
    id: i64,
    interval: Duration,
    stall: Duration,
    ttl: Duration,
    state: watch::Sender<LeaseState>,
    cancel: CancellationToken,
}

impl KeepAlive {
    fn deadline(&self) -> Option<Instant> {
        match &*self.state.borrow() {
            LeaseState::Alive { deadline } => Some(*deadline),
            LeaseState::Lost { .. } => None,
        }
    }

    fn lost(&self, reason: String) {
        tracing::warn!(lease = format_args!("{:x}", self.id), %reason, "lease lost");
        self.state.send_replace(LeaseState::Lost { reason });
    }

    /// A stream opened: etcd-client consumed the answer to the keep-alive the open sent, a
    /// TTL above 0 (it fails the open otherwise), so the lease was renewed to its full TTL no
    /// earlier than `sent`.
    fn opened(
        &self,
        member: usize,
        sent: Instant,
        keeper: etcd_client::LeaseKeeper,
        stream: etcd_client::LeaseKeepAliveStream,
    ) -> Streaming {
        self.pool.confirm(member);
        let deadline = sent + self.ttl;
        if self.deadline().is_some_and(|current| deadline > current) {
            self.state.send_replace(LeaseState::Alive { deadline });
        }
        Streaming {
            member,
            keeper,
            stream,
            pending: VecDeque::new(),
            last_sent: sent,
        }
    }

    async fn run(self) {
        let mut session = Session::Gated;
        loop {
            session = match session {
                Session::Gated => self.gated().await,
                Session::Opening => self.open().await,
                Session::Streaming(streaming) => self.stream(*streaming).await,
                Session::Ended => return,
            };
        }
    }

    /// Waits for the health probe (if any) to pass, within the deadline.
    async fn gated(&self) -> Session {
        let Some(deadline) = self.deadline() else {
            return Session::Ended;
        };
        let Some(gate) = &self.gate else {
            return Session::Opening;
        };
        let mut gate = gate.clone();
        tokio::select! {
            () = self.cancel.cancelled() => Session::Ended,
            () = tokio::time::sleep_until(deadline) => {
                self.lost("keep-alive deadline passed while the health probe failed".into());
                Session::Ended
            }
            // A gate whose sender is gone no longer gates anything.
            _ = gate.wait_for(|healthy| *healthy) => Session::Opening,
        }
    }

    /// Opens a stream. Opens race: one goes to the chosen member; if it has not answered
    /// within the stall bound, that member is suspected and another open goes to the next,
    /// the first still running. Whichever answers first wins, so a member that is down (its
    /// connect may hang) costs one stall bound and a cluster that is merely slow still
    /// answers. Each open may run until the deadline.
    async fn open(&self) -> Session {
        // Refusals are retried after a pause that starts here and doubles (see below).
        let mut reopen_delay = timing::FIRST_REOPEN_DELAY;
        let mut opens: futures::stream::FuturesUnordered<Opening> =
            futures::stream::FuturesUnordered::new();
        let mut next_open = Instant::now();
        let mut last_member: Option<usize> = None;
        loop {
            let Some(deadline) = self.deadline() else {
                return Session::Ended;
            };
            let can_open = opens.len() < self.pool.len().max(1);
            tokio::select! {
                () = self.cancel.cancelled() => return Session::Ended,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return Session::Ended;
                }
                () = tokio::time::sleep_until(next_open), if can_open => {
                    if let Some(member) = last_member {
                        if !opens.is_empty() {
                            self.pool.suspect(member, "keep-alive unanswered");
                        }
                    }
                    let member = self.pool.choose();
                    let bound = deadline.saturating_duration_since(Instant::now());
                    opens.push(Box::pin(open_stream(self.pool.clone(), member, self.id, bound)));
                    last_member = Some(member);
                    next_open = Instant::now() + self.stall;
                }
                Some(opened) = futures::StreamExt::next(&mut opens), if !opens.is_empty() => {
                    match opened {
                        Some((member, sent, Ok(Ok((keeper, stream))))) => {
                            let streaming = self.opened(member, sent, keeper, stream);
                            return Session::Streaming(Box::new(streaming));
                        }
                        Some((_, _, Ok(Err(e)))) if is_lease_not_found(&e) => {
                            self.lost(format!("etcd says the lease is gone: {e}"));
                            return Session::Ended;
                        }
                        Some((member, _, Ok(Err(e)))) => {
                            tracing::debug!(error = %e, "keep-alive stream could not be opened");
                            self.pool.suspect(member, "keep-alive stream could not be opened");
                            // A refusal is quick: try the next member after a pause that
                            // doubles up to the keep-alive interval, but at most a quarter
                            // of the time left, so attempts get denser as the deadline
                            // nears and an etcd back just before it still saves the lease.
                            let pause = timing::reopen_pause(
                                reopen_delay,
                                deadline.saturating_duration_since(Instant::now()),
                            );
                            reopen_delay = timing::next_reopen_delay(reopen_delay, self.interval);
                            next_open = next_open.min(Instant::now() + pause);
                        }
                        Some((member, _, Err(_))) => {
                            self.pool.suspect(member, "keep-alive unanswered");
                        }
                        None => {
                            tracing::debug!("no etcd client for the keep-alive stream");
                            next_open = next_open.min(Instant::now() + timing::MIN_REOPEN_PAUSE);
                        }
                    }
                }
            }
        }
    }

    /// Applies one acknowledgement: renews the local deadline from the send time of the
    /// oldest keep-alive it answers (never moving it back). Returns false when it says the
    /// lease is gone, or the lease was already given up (then the task ends).
    fn acknowledged(
        &self,
        pending: &mut VecDeque<Instant>,
        resp: &etcd_client::LeaseKeepAliveResponse,
    ) -> bool {
        let sent = pending.pop_front().unwrap_or_else(Instant::now);
        if resp.ttl() <= 0 {
            self.lost("etcd answered the keep-alive with TTL 0 (expired or revoked)".into());
            return false;
        }
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        let rtt = sent.elapsed();
        metrics::histogram!(crate::metrics::KEEPALIVE_RTT).record(rtt.as_secs_f64());
        tracing::trace!(
            rtt_ms = u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX),
            ttl = resp.ttl(),
            "keep-alive acknowledged"
        );
        let deadline = sent + ttl;
        match self.deadline() {
            // Lost is final for this session: the supervisor re-registers.
            None => return false,
            Some(current) if deadline <= current => {}
            Some(_) => {
                self.state.send_replace(LeaseState::Alive { deadline });
            }
        }
        true
    }

    /// Drives one keep-alive stream: a keep-alive every interval, every answer drained.
    ///
    /// When the oldest keep-alive goes unanswered for the stall bound (or another request
    /// suspects this member), a stream is opened on another member *while this one keeps
    /// going*: a member that is merely slow (an overloaded cluster, every member late) still
    /// renews the lease with its late answers, and whichever stream answers first wins. An
    /// answer here drops the hedge; the hedge opening first replaces this stream.
    async fn stream(&self, streaming: Streaming) -> Session {
        let Streaming {
            member,
            mut keeper,
            mut stream,
            mut pending,
            last_sent,
        } = streaming;
        // The next keep-alive is due an interval after the last one (a new stream's open sent
        // one, which etcd-client consumed), at once if overdue.
        let mut tick = tokio::time::interval_at(last_sent + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut suspicions = self.pool.suspicions();
        suspicions.mark_unchanged();
        let mut hedge: Option<Opening> = None;
        loop {
            let Some(deadline) = self.deadline() else {
                return Session::Ended;
            };
            // The oldest unanswered keep-alive: unanswered for the stall bound, the member
            // is frozen or slow, whatever its TCP connection says.
            let stalled_at = pending.front().map(|sent| *sent + self.stall);
            let hedging = hedge.is_some();
            let hedged = async {
                match hedge.as_mut() {
                    Some(open) => open.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => return Session::Ended,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return Session::Ended;
                }
                () = sleep_until_some(stalled_at), if !hedging => {
                    tracing::info!(stall_ms = u64::try_from(self.stall.as_millis()).unwrap_or(u64::MAX), "keep-alive unanswered; opening a stream on another member too");
                    self.pool.suspect(member, "keep-alive unanswered");
                    let other = self.pool.choose();
                    hedge = Some(Box::pin(open_stream(self.pool.clone(), other, self.id, self.stall)));
                }
                changed = suspicions.changed(), if !hedging => {
                    let suspected = *suspicions.borrow_and_update();
                    if changed.is_ok() && suspected.1 == member && self.pool.len() > 1 {
                        tracing::debug!("keep-alive member suspected by another request; opening a stream on another member too");
                        let other = self.pool.choose();
                        hedge = Some(Box::pin(open_stream(self.pool.clone(), other, self.id, self.stall)));
                    }
                }
                opened = hedged => {
                    hedge = None;
                    match opened {
                        Some((other, sent, Ok(Ok((keeper, stream))))) => {
                            tracing::debug!("the stream on another member answered first; moving there");
                            return Session::Streaming(Box::new(self.opened(other, sent, keeper, stream)));
                        }
                        Some((_, _, Ok(Err(e)))) if is_lease_not_found(&e) => {
                            self.lost(format!("etcd says the lease is gone: {e}"));
                            return Session::Ended;
                        }
                        // That member failed too; if this stream still stalls, the next stall
                        // check (at once) tries another.
                        Some((other, _, _)) => self.pool.suspect(other, "keep-alive unanswered"),
                        None => {}
                    }
                }
                _ = tick.tick() => {
                    if self.gate.as_ref().is_some_and(|g| !*g.borrow()) {
                        tracing::debug!("health probe failing: keep-alive withheld");
                        continue;
                    }
                    let now = Instant::now();
                    // The send itself can block on a stalled connection's flow-control window.
                    match tokio::time::timeout(self.stall, keeper.keep_alive()).await {
                        Ok(Ok(())) => pending.push_back(now),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "keep-alive send failed; reopening");
                            self.pool.suspect(member, "keep-alive send failed");
                            return Session::Gated;
                        }
                        Err(_) => {
                            self.pool.suspect(member, "keep-alive send blocked");
                            return Session::Gated;
                        }
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if !self.acknowledged(&mut pending, &resp) {
                            return Session::Ended;
                        }
                        if hedge.take().is_some() {
                            tracing::debug!("the stalled keep-alive stream answered late; keeping it");
                            self.pool.confirm(member);
                        }
                    }
                    Ok(None) => {
                        tracing::debug!("keep-alive stream ended; reopening");
                        self.pool.suspect(member, "keep-alive stream ended");
                        return Session::Gated;
                    }
                    Err(e) if is_lease_not_found(&e) => {
                        self.lost(format!("etcd says the lease is gone: {e}"));
                        return Session::Ended;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream failed; reopening");
                        self.pool.suspect(member, "keep-alive stream failed");
                        return Session::Gated;
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
