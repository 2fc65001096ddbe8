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
//! at most the pool's attempt timeout) gets its member suspected and the stream reopened on
//! another member, long before the deadline; a member suspected by any other request moves the
//! stream too (see the `pool` module).

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
pub enum LeaseState {
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
pub struct LeaseSession {
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
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// True while acknowledged and before the local deadline.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        matches!(&*self.state.borrow(), LeaseState::Alive { deadline } if *deadline > Instant::now())
    }

    /// Stops the keep-alive and revokes the lease, bounded by `timeout`. A lease that is
    /// already gone counts as revoked.
    ///
    /// # Errors
    /// The revoke failed for another reason or timed out; the lease then expires by itself
    /// within its TTL.
    pub(crate) async fn revoke(self, pool: &Pool, timeout: Duration) -> Result<()> {
        self.cancel.cancel();
        let id = self.id;
        // A revoke is safe to repeat (a lease already gone counts as revoked), so it is
        // retried on another member like any request.
        let revoke = retrying(pool, "lease revoke", timeout, |client| async move {
            client.lease_client().revoke(id).await
        });
        match revoke.await {
            Ok(_) => Ok(()),
            Err(crate::Error::Etcd { source, .. }) if is_lease_not_found(&source) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseSession {
    /// Dropping stops the keep-alive: etcd expires the lease (and our keys) within its TTL.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

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

    async fn run(self) {
        let mut reopen_delay = timing::FIRST_REOPEN_DELAY;
        loop {
            let Some(deadline) = self.deadline() else {
                return;
            };
            // Opening the stream sends a keep-alive at once (etcd-client does): with a failing
            // health probe, wait for it to pass first, so a reopen cannot renew the lease.
            if let Some(gate) = &self.gate {
                let mut gate = gate.clone();
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => {
                        self.lost("keep-alive deadline passed while the health probe failed".into());
                        return;
                    }
                    // A gate whose sender is gone no longer gates anything.
                    _ = gate.wait_for(|healthy| *healthy) => {}
                }
            }
            // Opening the stream sends the first keep-alive: it must be answered within the
            // stall bound too, or the member is suspected and the next attempt goes elsewhere.
            let open_sent = Instant::now();
            let open = async {
                let picked = self.pool.pick().await.ok()?;
                let mut lease_client = picked.client.lease_client();
                let opened =
                    tokio::time::timeout(self.stall, lease_client.keep_alive(self.id)).await;
                Some((picked.member, opened))
            };
            let opened = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return;
                }
                r = open => r,
            };
            match opened {
                Some((member, Ok(Ok((keeper, stream))))) => {
                    reopen_delay = timing::FIRST_REOPEN_DELAY;
                    self.pool.confirm(member);
                    // etcd-client consumed the answer to the keep-alive the open sent, a TTL
                    // above 0 (it fails the open otherwise): the lease was renewed to its full
                    // TTL no earlier than the open was sent.
                    self.state.send_replace(LeaseState::Alive {
                        deadline: open_sent + self.ttl,
                    });
                    if self.stream(member, keeper, stream).await {
                        return;
                    }
                }
                Some((_, Ok(Err(e)))) if is_lease_not_found(&e) => {
                    self.lost(format!("etcd says the lease is gone: {e}"));
                    return;
                }
                Some((member, Ok(Err(e)))) => {
                    tracing::debug!(error = %e, "keep-alive stream could not be opened");
                    self.pool
                        .suspect(member, "keep-alive stream could not be opened");
                }
                Some((member, Err(_))) => {
                    tracing::debug!("keep-alive stream open unanswered; trying another member");
                    self.pool.suspect(member, "keep-alive unanswered");
                    // Another member may answer at once: no pause.
                    continue;
                }
                None => tracing::debug!("no etcd member for the keep-alive stream"),
            }
            // Reopen after a pause that doubles up to the keep-alive interval, but at most a
            // quarter of the time left before the deadline: attempts get denser as it nears,
            // so an etcd back just before it (a restart, an election) still saves the lease.
            let Some(deadline) = self.deadline() else {
                return;
            };
            let pause = timing::reopen_pause(
                reopen_delay,
                deadline.saturating_duration_since(Instant::now()),
            );
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            reopen_delay = timing::next_reopen_delay(reopen_delay, self.interval);
        }
    }

    /// Drives one keep-alive stream, on pool member `member`. Returns true when the task
    /// should end; false to reopen the stream (on another member, if this one is suspected).
    async fn stream(
        &self,
        member: usize,
        mut keeper: etcd_client::LeaseKeeper,
        mut stream: etcd_client::LeaseKeepAliveStream,
    ) -> bool {
        // Opening the stream sent one keep-alive (etcd-client does), already answered.
        let mut pending: VecDeque<Instant> = VecDeque::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut suspicions = self.pool.suspicions();
        suspicions.mark_unchanged();
        loop {
            let Some(deadline) = self.deadline() else {
                return true;
            };
            // The oldest unanswered keep-alive: unanswered for the stall bound, the member
            // is frozen or slow, whatever its TCP connection says.
            let stalled_at = pending.front().map(|sent| *sent + self.stall);
            tokio::select! {
                () = self.cancel.cancelled() => return true,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return true;
                }
                () = sleep_until_some(stalled_at) => {
                    tracing::info!(stall_ms = u64::try_from(self.stall.as_millis()).unwrap_or(u64::MAX), "keep-alive unanswered; moving the stream to another member");
                    self.pool.suspect(member, "keep-alive unanswered");
                    return false;
                }
                changed = suspicions.changed() => {
                    let suspected = *suspicions.borrow_and_update();
                    if changed.is_ok() && suspected.1 == member {
                        tracing::debug!("keep-alive member suspected by another request; moving the stream");
                        return false;
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
                            return false;
                        }
                        Err(_) => {
                            self.pool.suspect(member, "keep-alive send blocked");
                            return false;
                        }
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        let sent = pending.pop_front().unwrap_or_else(Instant::now);
                        if resp.ttl() <= 0 {
                            self.lost("etcd answered the keep-alive with TTL 0 (expired or revoked)".into());
                            return true;
                        }
                        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
                        let rtt = sent.elapsed();
                        metrics::histogram!(crate::metrics::KEEPALIVE_RTT).record(rtt.as_secs_f64());
                        tracing::trace!(rtt_ms = u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX), ttl = resp.ttl(), "keep-alive acknowledged");
                        self.state.send_replace(LeaseState::Alive { deadline: sent + ttl });
                    }
                    Ok(None) => {
                        tracing::debug!("keep-alive stream ended; reopening");
                        self.pool.suspect(member, "keep-alive stream ended");
                        return false;
                    }
                    Err(e) if is_lease_not_found(&e) => {
                        self.lost(format!("etcd says the lease is gone: {e}"));
                        return true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream failed; reopening");
                        self.pool.suspect(member, "keep-alive stream failed");
                        return false;
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
