//! Leases: one per registration, all of a pool's kept alive on one stream, each with its own
//! local deadline.
//!
//! ```text
//!   grant ──► Alive { deadline } ──(ack with TTL > 0)──► Alive { deadline' }
//!                   │
//!                   ├─ ack with TTL 0, NotFound, or deadline passed ──► Lost { reason }
//!                   └─ revoked or dropped ──► no longer kept; etcd expires it or we revoke
//! ```
//!
//! Each lease's keep-alive is sent every TTL/3. Its deadline is the *send* time of the oldest
//! request an acknowledgement answers, plus the TTL it returned: the latest instant at which
//! etcd may still consider the lease alive, measured on our own clock, so the lease is never
//! believed alive longer than etcd would keep it. The response stream is always drained (an
//! undrained stream stalls the HTTP/2 window and the keep-alive with it). When the stream
//! breaks (leader change, restart, network), it is reopened while a deadline has not passed.
//!
//! A stream can also go *silent* without breaking: its member froze (SIGSTOP, a stalled disk)
//! or answers seconds late. A keep-alive unanswered for `timing::stall_bound` (a quarter of
//! the TTL, at most the pool's attempt timeout) gets its member suspected and a stream opened
//! on another member, long before the deadline; a member suspected by any other request moves
//! the stream too (see the `pool` module). The stalled stream is not dropped while its
//! replacement opens: on a cluster that is merely slow (every member answering late, an
//! overloaded host), its late answer still renews the lease, and then it simply goes on.
//!
//! **Why one stream for many leases.** etcd's `LeaseKeepAlive` is a bidirectional stream whose
//! requests may name any lease and whose answers name theirs. A process keeping many
//! registrations (an agent serving hundreds) would otherwise hold a stream, and on every
//! member change a reopen, per lease. So a pool has one [`KeepAliveHub`]: a task keeping any
//! number of leases on one stream (one stream per pool whatever the number of leases, two
//! while a stalled one is hedged). What is shared is only the stream and its member; each
//! lease keeps its own deadline, schedule, health gate and fate (one lease lost by TTL 0
//! leaves the others on the stream).
//!
//! Files: `source.rs` (what the task needs from etcd, as a trait, and the etcd-client
//! implementation sending any lease's keep-alive on one stream), `hub.rs` (the handle leases
//! join and leave through), `kept.rs` (one lease's bookkeeping), `keeper.rs` (the task's state
//! machine: idle, opening, streaming, ended), `tests.rs` (the machine over a scripted source,
//! on a paused clock).

mod hub;
mod keeper;
mod kept;
mod source;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use hub::KeepAliveHub;
use hub::NewLease;
use source::PoolLeases;

use crate::client::retrying;
use crate::error::Result;
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

/// A granted lease, kept alive by its pool's hub while this lives.
#[derive(Debug)]
pub(crate) struct LeaseSession {
    id: i64,
    ttl: Duration,
    state: watch::Receiver<LeaseState>,
    hub: Arc<KeepAliveHub>,
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
        let hub = pool.keep_alive_hub(|| KeepAliveHub::start(PoolLeases { pool: pool.clone() }));
        let state = hub.add(NewLease {
            id: resp.id(),
            ttl: granted,
            interval: timing::keep_alive_interval(ttl),
            stall: timing::stall_bound(granted, pool.attempt_timeout()),
            granted_at: sent,
            gate,
        });
        tracing::debug!(
            lease = format_args!("{:x}", resp.id()),
            ttl = resp.ttl(),
            "lease granted"
        );
        Ok(LeaseSession {
            id: resp.id(),
            ttl: granted,
            state,
            hub,
        })
    }

    /// Takes over an existing lease `id` (granted with `ttl`, `remaining` left now, as etcd's
    /// `TimeToLive` said) and keeps it alive: a restarted agent resuming a registration whose
    /// lease outlived its previous keeper. The local deadline starts from `remaining`, never
    /// later than etcd's.
    pub(crate) fn adopt(
        pool: &Pool,
        id: i64,
        ttl: Duration,
        remaining: Duration,
        gate: Option<watch::Receiver<bool>>,
    ) -> Self {
        let now = Instant::now();
        // Granted (as far as the deadline rule goes) `ttl - remaining` ago.
        let granted_at = now
            .checked_sub(ttl.saturating_sub(remaining))
            .unwrap_or(now);
        let hub = pool.keep_alive_hub(|| KeepAliveHub::start(PoolLeases { pool: pool.clone() }));
        let state = hub.add(NewLease {
            id,
            ttl,
            interval: timing::keep_alive_interval(ttl),
            stall: timing::stall_bound(ttl, pool.attempt_timeout()),
            granted_at,
            gate,
        });
        tracing::debug!(lease = format_args!("{id:x}"), ?remaining, "lease adopted");
        LeaseSession {
            id,
            ttl,
            state,
            hub,
        }
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
        self.hub.remove(self.id);
        crate::client::revoke_lease(pool, self.id, timeout).await
    }
}

impl Drop for LeaseSession {
    /// Dropping stops the keep-alive: etcd expires the lease (and our keys) within its TTL.
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}
