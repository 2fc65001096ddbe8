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

use std::collections::VecDeque;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{bounded, retrying};
use crate::error::{is_lease_not_found, Result};

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
    /// Grants a lease of `ttl` and starts keeping it alive.
    ///
    /// # Errors
    /// The grant request failed or timed out.
    pub async fn grant(client: &Client, ttl: Duration, request_timeout: Duration) -> Result<Self> {
        Self::grant_gated(client, ttl, request_timeout, None).await
    }

    /// Like [`LeaseSession::grant`], but keep-alives are sent only while `gate` (a health
    /// verdict) is true: an unhealthy server lets its lease expire.
    ///
    /// # Errors
    /// The grant request failed or timed out.
    pub async fn grant_gated(
        client: &Client,
        ttl: Duration,
        request_timeout: Duration,
        gate: Option<watch::Receiver<bool>>,
    ) -> Result<Self> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client.lease_client();
        let mut sent = Instant::now();
        let resp = retrying(client, "lease grant", request_timeout, || {
            let mut lease = lease.clone();
            sent = Instant::now();
            async move { lease.grant(ttl_secs, None).await }
        })
        .await?;
        let granted = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0));
        let (tx, rx) = watch::channel(LeaseState::Alive {
            deadline: sent + granted,
        });
        let cancel = CancellationToken::new();
        let task = KeepAlive {
            client: client.clone(),
            id: resp.id(),
            interval: (ttl / 3).max(Duration::from_millis(100)),
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
    pub async fn revoke(self, client: &Client, timeout: Duration) -> Result<()> {
        self.cancel.cancel();
        let mut lease = client.lease_client();
        match bounded("lease revoke", timeout, lease.revoke(self.id)).await {
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

/// The shortest pause between two attempts to reopen the keep-alive stream.
const MIN_REOPEN_PAUSE: Duration = Duration::from_millis(20);

/// The pause before the next attempt to reopen the keep-alive stream: the backoff `delay`,
/// but at most a quarter of the time `left` before the local deadline.
fn reopen_pause(delay: Duration, left: Duration) -> Duration {
    delay.min(left / 4).max(MIN_REOPEN_PAUSE)
}

struct KeepAlive {
    gate: Option<watch::Receiver<bool>>,
    client: Client,
    id: i64,
    interval: Duration,
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
        let mut reopen_delay = Duration::from_millis(50);
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
            let mut lease_client = self.client.lease_client();
            let opened = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return;
                }
                r = lease_client.keep_alive(self.id) => r,
            };
            match opened {
                Ok((keeper, stream)) => {
                    reopen_delay = Duration::from_millis(50);
                    if self.stream(keeper, stream).await {
                        return;
                    }
                }
                Err(e) if is_lease_not_found(&e) => {
                    self.lost(format!("etcd says the lease is gone: {e}"));
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "keep-alive stream could not be opened"),
            }
            // Reopen after a pause that doubles up to the keep-alive interval, but at most a
            // quarter of the time left before the deadline: attempts get denser as it nears,
            // so an etcd back just before it (a restart, an election) still saves the lease.
            let Some(deadline) = self.deadline() else {
                return;
            };
            let pause = reopen_pause(
                reopen_delay,
                deadline.saturating_duration_since(Instant::now()),
            );
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            reopen_delay = (reopen_delay * 2).min(self.interval);
        }
    }

    /// Drives one keep-alive stream. Returns true when the task should end.
    async fn stream(
        &self,
        mut keeper: etcd_client::LeaseKeeper,
        mut stream: etcd_client::LeaseKeepAliveStream,
    ) -> bool {
        let mut pending: VecDeque<Instant> = VecDeque::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(deadline) = self.deadline() else {
                return true;
            };
            tokio::select! {
                () = self.cancel.cancelled() => return true,
                () = tokio::time::sleep_until(deadline) => {
                    self.lost("keep-alive deadline passed without an acknowledgement".into());
                    return true;
                }
                _ = tick.tick() => {
                    if self.gate.as_ref().is_some_and(|g| !*g.borrow()) {
                        tracing::debug!("health probe failing: keep-alive withheld");
                        continue;
                    }
                    let now = Instant::now();
                    if let Err(e) = keeper.keep_alive().await {
                        tracing::debug!(error = %e, "keep-alive send failed; reopening");
                        return false;
                    }
                    pending.push_back(now);
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
                        tracing::trace!(rtt_ms = rtt.as_millis() as u64, ttl = resp.ttl(), "keep-alive acknowledged");
                        self.state.send_replace(LeaseState::Alive { deadline: sent + ttl });
                    }
                    Ok(None) => {
                        tracing::debug!("keep-alive stream ended; reopening");
                        return false;
                    }
                    Err(e) if is_lease_not_found(&e) => {
                        self.lost(format!("etcd says the lease is gone: {e}"));
                        return true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "keep-alive stream failed; reopening");
                        return false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_attempts_get_denser_as_the_deadline_nears() {
        let delay = Duration::from_secs(2);
        assert_eq!(reopen_pause(delay, Duration::from_secs(20)), delay);
        assert_eq!(
            reopen_pause(delay, Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            reopen_pause(delay, Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(reopen_pause(delay, Duration::ZERO), MIN_REOPEN_PAUSE);
    }
}
