//! One registration as its connector holds it: started (a lease, a claimed id, a supervisor
//! task), followed (its status), ended (the guarded deregistration).
//!
//! A [`Handle`] is everything one registration owns; the connection and the view it uses
//! are [`Shared`]. Starting a second registration over the same `Shared` is a second handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::claim::allocate;
use super::status::StatusRx;
use super::supervisor::AnnounceRequest;
use super::supervisor::Supervisor;
use super::{Claim, Held, Terms};
use crate::client::retrying_txn;
use crate::error::Result;
use crate::guard::reservation::Reservation;
use crate::guard::{self, deregister::Deregistered, Answer, Owner};
use crate::health::{spawn_gate, HealthProbe};
use crate::lease::LeaseSession;
use crate::record::Registration;
use crate::shared::Shared;

/// A registration's supervisor task, and its status.
#[derive(Debug)]
pub(crate) struct Handle {
    status: StatusRx,
    /// Requests to announce, to the supervisor (the claim's only owner).
    announces: mpsc::Sender<AnnounceRequest>,
    cancel: CancellationToken,
    task: JoinHandle<Option<Held>>,
    /// Cancels the supervisor when the handle is dropped while registered, so the
    /// keep-alive stops and the lease expires (a crash, as peers see it).
    _stop: DropGuard,
}

impl Handle {
    /// Grants a lease of `lease_ttl` (gated by `probe`, polled at its interval, if any),
    /// claims an id with it and starts supervising the claim; returns the handle and the id
    /// claimed. The caller has validated
    /// `registration` and waited for the view's snapshot (it tells which ids are taken).
    ///
    /// # Errors
    /// [`crate::Error::IdSpaceExhausted`], [`crate::Error::AllocationContention`], or an etcd
    /// failure; the lease granted for a failed claim is revoked (or expires).
    ///
    /// `stop` abandons the start: before the lease is granted, nothing was written (a lease
    /// granted unheard expires with nothing on it); after, the lease is revoked, which deletes
    /// whatever the allocation may have written on it and nothing else. Either way
    /// [`crate::Error::Shutdown`].
    pub(crate) async fn start(
        shared: &Arc<Shared>,
        registration: Registration,
        probe: Option<(Arc<dyn HealthProbe>, Duration)>,
        terms: Terms,
        stop: &CancellationToken,
    ) -> Result<(Handle, u16)> {
        let cancel = CancellationToken::new();
        let gate = probe.map(|(probe, interval)| spawn_gate(probe, interval, cancel.child_token()));
        // A lease that expires between its grant and the allocation (an overloaded etcd
        // answering the allocation after the TTL) is not the caller's problem: grant another
        // and try again, a bounded number of times.
        let mut attempt = 0;
        let (lease, claim) = loop {
            attempt += 1;
            match grant_and_claim(shared, &registration, terms, gate.clone(), stop).await {
                Ok(held) => break held,
                Err(crate::Error::Etcd { source, .. })
                    if attempt < LEASE_EXPIRED_RETRIES
                        && crate::error::is_lease_not_found(&source) =>
                {
                    tracing::warn!(
                        attempt,
                        "our lease expired before the allocation landed; granting another"
                    );
                }
                Err(e) => {
                    cancel.cancel();
                    return Err(e);
                }
            }
        };
        tracing::info!(
            id = claim.id,
            group = registration.group(),
            host = registration.host(),
            port = registration.port(),
            revision = claim.create_revision,
            announced = claim.announced,
            "registered"
        );
        Ok(Self::supervise(
            shared,
            registration,
            claim,
            lease,
            cancel,
            gate,
        ))
    }

    /// Resumes the registration of `id` (see [`super::resume`]); returns the handle, the id,
    /// and whether its lease was adopted (no leave at its peers).
    ///
    /// # Errors
    /// [`crate::Error::IdTaken`], or an etcd failure.
    pub(crate) async fn resume(
        shared: &Arc<Shared>,
        registration: Registration,
        id: u16,
        probe: Option<(Arc<dyn HealthProbe>, Duration)>,
        terms: Terms,
    ) -> Result<(Handle, u16, bool)> {
        let cancel = CancellationToken::new();
        let gate = probe.map(|(probe, interval)| spawn_gate(probe, interval, cancel.child_token()));
        let resumed = super::resume::resume(shared, &registration, id, terms, gate.clone()).await;
        let (claim, lease, adopted) = match resumed {
            Ok(found) => found,
            Err(e) => {
                cancel.cancel();
                return Err(e);
            }
        };
        let (handle, id) = Self::supervise(shared, registration, claim, lease, cancel, gate);
        Ok((handle, id, adopted))
    }

    /// Starts the supervisor of a claim held on `lease`.
    pub(crate) fn supervise(
        shared: &Arc<Shared>,
        registration: Registration,
        claim: Claim,
        lease: LeaseSession,
        cancel: CancellationToken,
        gate: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> (Handle, u16) {
        let id = claim.id;
        let (announces, requests) = mpsc::channel(4);
        let (status, task) = Supervisor::spawn(
            shared.clone(),
            registration,
            claim,
            lease,
            cancel.clone(),
            gate,
            requests,
        );
        let handle = Handle {
            announces,
            status,
            _stop: cancel.clone().drop_guard(),
            cancel,
            task,
        };
        (handle, id)
    }

    /// Announces a reserved registration (a no-op once announced); waits for the server key
    /// to be written.
    ///
    /// # Errors
    /// [`crate::Error::NotRegistered`] when the registration is over or its reservation was
    /// lost (it is then re-reserved, and announced once re-registered); an etcd failure.
    pub(crate) async fn announce(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.announces.send(reply).await.is_err() {
            return Err(crate::Error::NotRegistered);
        }
        answer.await.map_err(|_| crate::Error::NotRegistered)?
    }

    /// Where the registration stands (and, while registered, its id and lease).
    pub(crate) fn status(&self) -> &StatusRx {
        &self.status
    }

    /// Stops the supervisor, deletes our server and slot keys only if they are still the
    /// ones we created (guarded by their create revision: a stale handle never deletes a newer
    /// registration of the same id), then revokes the lease. The whole of it is bounded by
    /// one request timeout ([`crate::timing::revoke_bound`] of what the transaction left).
    ///
    /// # Errors
    /// An etcd failure (the lease then expires by itself).
    pub(crate) async fn deregister(self, shared: &Shared) -> Result<()> {
        self.cancel.cancel();
        let Ok(Some(held)) = self.task.await else {
            // Stopped by policy or recovering: nothing of ours is in etcd.
            return Ok(());
        };
        let Held { claim, lease } = held;
        if !claim.announced {
            return release(shared, &claim, lease).await;
        }
        let owner = Owner::new(
            &shared.layout,
            claim.id,
            claim.server_key.clone(),
            claim.create_revision,
            lease.id(),
        );
        let guard = guard::deregister::build(&owner);
        let cfg = &shared.config;
        // One request timeout for the whole of it (transaction and revoke), not one each: a
        // host stopping on SIGTERM has a grace period to fit in.
        let deadline = tokio::time::Instant::now() + cfg.request_timeout;
        // First the departing mark (our record again, flagged): watchers then know that the
        // leave which follows is a departure, not a lease lost and about to come back, and pass
        // it on without a grace. Best effort within half the bound: without it the leave is
        // only held back by that grace.
        if let Some(departing) = crate::record::mark_departing(&claim.record) {
            let mark = guard::deregister::mark_departing(&owner, departing);
            let bound = cfg.request_timeout / 2;
            if let Err(e) = retrying_txn(&shared.pool, "mark departing", bound, &mark).await {
                tracing::debug!(id = claim.id, error = %e, "marking our record departing failed");
            }
        }
        let deleted = retrying_txn(&shared.pool, "deregister", left(deadline), &guard).await;
        let timeout = crate::timing::revoke_bound(left(deadline), lease.ttl());
        let revoked = lease.revoke(&shared.pool, timeout).await;
        match guard::deregister::read(&Answer::from(&deleted?)) {
            Deregistered::Deleted => tracing::info!(id = claim.id, "deregistered"),
            Deregistered::NotOurs => tracing::warn!(
                id = claim.id,
                "our keys were already gone or re-created by another server; nothing deleted"
            ),
        }
        revoked
    }
}

/// How many leases a start grants, at most, when each expires before its allocation lands.
const LEASE_EXPIRED_RETRIES: u32 = 3;

/// Grants a lease and claims an id with it; the lease is revoked if the claim fails.
async fn grant_and_claim(
    shared: &Shared,
    registration: &Registration,
    terms: Terms,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    stop: &CancellationToken,
) -> Result<(LeaseSession, Claim)> {
    let cfg = &shared.config;
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let grant = LeaseSession::grant_gated(&shared.pool, terms.lease_ttl, cfg.request_timeout, gate);
    let lease = tokio::select! {
        biased;
        () = stop.cancelled() => Err(crate::Error::Shutdown),
        granted = grant => granted,
    }?;
    let allocated = tokio::select! {
        biased;
        () = stop.cancelled() => Err(crate::Error::Shutdown),
        claim = allocate(shared, registration, lease.id(), terms) => claim,
    };
    match allocated {
        Ok(claim) => Ok((lease, claim)),
        Err(e) => {
            // Guarded by being our lease: only what this start wrote is deleted.
            if let Err(revoke) = lease.revoke(&shared.pool, cfg.request_timeout).await {
                tracing::debug!(error = %revoke, "revoking the unused lease failed; it expires");
            }
            Err(e)
        }
    }
}

/// Gives a reservation never announced back: its slot, if still ours, then its lease.
async fn release(shared: &Shared, claim: &Claim, lease: LeaseSession) -> Result<()> {
    let reservation = Reservation {
        key: claim.server_key.clone(),
        slot: shared.layout.slot_key(claim.id),
        lease: lease.id(),
    };
    let cfg = &shared.config;
    let deadline = tokio::time::Instant::now() + cfg.request_timeout;
    let released = retrying_txn(
        &shared.pool,
        "release reservation",
        cfg.request_timeout,
        &guard::reservation::release(&reservation),
    )
    .await;
    let timeout = crate::timing::revoke_bound(left(deadline), lease.ttl());
    let revoked = lease.revoke(&shared.pool, timeout).await;
    released?;
    tracing::info!(id = claim.id, "reservation released");
    revoked
}

/// Time left until `deadline` (zero once past).
fn left(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}
