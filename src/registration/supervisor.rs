//! The supervisor loop: keeps one registration while its lease lives, repairs our key when
//! someone else deletes or edits it, and hands over to [`super::recovery`] when the lease is
//! lost or the id taken.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::own_key::{self, OwnKey};
use super::recovery::{Goal, Recovering, Recovery};
use super::status::{StatusRx, StatusTx};
use super::{Claim, Held};
use crate::client::retrying_txn;
use crate::config::KeyRemovedPolicy;
use crate::error::{is_lease_not_found, Error};
use crate::events::Event;
use crate::guard::reservation::{Announced, Reservation};
use crate::guard::{self, restore::Restored, Answer, Owner};
use crate::lease::{LeaseSession, LeaseState};
use crate::metrics as m;
use crate::record::Registration;
use crate::shared::Shared;
use crate::timing;
use crate::view::AppliedListener;

/// The running supervisor of one registration.
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    registration: Registration,
    claim: Claim,
    lease: Option<LeaseSession>,
    /// Where this registration stands, and the lease it holds: written here only.
    status: StatusTx,
    /// What the watcher applies to our key, to notice edits of it (`None` once the watcher
    /// is gone).
    applied: Option<AppliedListener>,
    /// Our key changed (a new id) after changes to it may have been applied unheard: the
    /// next own-key check runs at once, as after a missed announcement.
    key_unheard: bool,
    /// Our key as last written, for [`own_key::touched`].
    own: OwnKey,
    cancel: CancellationToken,
    /// Health verdicts gating the keep-alive (and re-registration), if a probe is set.
    health: Option<watch::Receiver<bool>>,
    /// Requests to announce a reserved registration (`None` while a phase has it out).
    announces: Option<mpsc::Receiver<AnnounceRequest>>,
}

/// A request to announce, and where to answer it.
pub(crate) type AnnounceRequest = oneshot::Sender<Result<(), Error>>;

/// How a recovery ended, for the supervisor.
enum Resumed {
    /// Registered again: the new claim and lease are kept.
    Registered,
    Cancelled,
    /// Stopped for good (fail-stop policy).
    Stop,
}

/// Why the registered phase ended.
enum Ended {
    Cancelled,
    LeaseLost(String),
    Taken(String),
    /// Our key was removed and the policy says stop.
    Removed(String),
}

enum Restore {
    Intact,
    /// Gone, and the policy forbids putting it back.
    Removed(String),
    Restored,
    LeaseGone(String),
    Taken(String),
    Failed(Error),
}

impl Supervisor {
    /// Starts supervising a fresh claim.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        registration: Registration,
        claim: Claim,
        lease: LeaseSession,
        cancel: CancellationToken,
        health: Option<watch::Receiver<bool>>,
        announces: mpsc::Receiver<AnnounceRequest>,
    ) -> (StatusRx, tokio::task::JoinHandle<Option<Held>>) {
        let deadline = match lease.state() {
            LeaseState::Alive { deadline } => deadline,
            LeaseState::Lost { .. } => Instant::now(),
        };
        let (status, rx) = StatusTx::new(claim.id, deadline, lease.id());
        // Listening starts before the task: nothing the watcher applies from here on is missed.
        let own = own_key(&claim, lease.id());
        let applied = Some(shared.view.applied_to(&own.key));
        let sup = Supervisor {
            shared,
            registration,
            claim,
            lease: Some(lease),
            status,
            applied,
            key_unheard: false,
            own,
            cancel,
            health,
            announces: Some(announces),
        };
        (rx, tokio::spawn(sup.run()))
    }

    /// Our key is now as `self.claim` and `self.lease` say.
    fn track_own_key(&mut self) {
        let lease = self.lease.as_ref().map_or(0, LeaseSession::id);
        self.own = own_key(&self.claim, lease);
        if let Some(applied) = self.applied.as_mut() {
            // Changes of the new key applied before now were announced to nobody here.
            self.key_unheard |= applied.listen_for(&self.own.key);
        }
    }

    /// Sequences a lifecycle event at the view's current revision (see [`crate::events`]).
    fn emit(&self, event: impl FnOnce(i64) -> Event) {
        self.shared.view.publish_lifecycle(event);
    }

    async fn run(mut self) -> Option<Held> {
        let held = self.supervise().await;
        // Nothing of ours is kept any more (or it is handed back for deregistration).
        self.status.released();
        held
    }

    /// Runs [`Recovering`] from the lease we hold (if any) towards `goal`; on success, keeps
    /// the new claim and lease.
    async fn recover(&mut self, goal: Goal) -> Resumed {
        let old = self.lease.take();
        let recovery = Recovering {
            shared: &self.shared,
            registration: &self.registration,
            claim: &self.claim,
            status: &self.status,
            cancel: &self.cancel,
            health: self.health.as_ref(),
        }
        .run(old, goal)
        .await;
        match recovery {
            Recovery::Done { lease, claim } => {
                let previous_id = self.claim.id;
                let (id, create_revision) = (claim.id, claim.create_revision);
                self.claim = claim;
                self.lease = Some(lease);
                self.track_own_key();
                metrics::counter!(m::REREGISTRATIONS).increment(1);
                self.emit(|revision| Event::Reregistered {
                    id,
                    previous_id,
                    create_revision,
                    revision,
                });
                Resumed::Registered
            }
            Recovery::Cancelled => Resumed::Cancelled,
            Recovery::Stop => Resumed::Stop,
        }
    }

    async fn supervise(&mut self) -> Option<Held> {
        loop {
            let ended = self.registered_phase().await;
            let reason = match ended {
                Ended::Cancelled => {
                    return self.lease.take().map(|lease| Held {
                        claim: self.claim.clone(),
                        lease,
                    });
                }
                Ended::LeaseLost(reason) => reason,
                Ended::Taken(reason) => {
                    // Our key was re-created by another server while our lease lived.
                    match self.recover(Goal::Taken(reason)).await {
                        Resumed::Registered => continue,
                        Resumed::Cancelled => return None,
                        Resumed::Stop => return self.stopped().await,
                    }
                }
                Ended::Removed(reason) => {
                    if let Some(old) = self.lease.take() {
                        super::revoke_quietly(&self.shared, old).await;
                    }
                    tracing::error!(id = self.claim.id, %reason, "registration stopped (key-removed policy)");
                    self.stop(reason);
                    return self.stopped().await;
                }
            };
            metrics::counter!(m::LEASE_LOST).increment(1);
            tracing::warn!(id = self.claim.id, %reason, "registration lost; re-registering");
            let id = self.claim.id;
            self.status.recovering(id);
            self.emit(|revision| Event::LeaseLost {
                id,
                reason,
                revision,
            });
            match self.recover(Goal::SameId).await {
                Resumed::Registered => {}
                Resumed::Cancelled => return None,
                Resumed::Stop => return self.stopped().await,
            }
        }
    }

    /// Stops for good: the status says why, and so does [`Event::RegistrationStopped`].
    fn stop(&self, reason: String) {
        super::stop(&self.shared, &self.status, self.claim.id, reason);
    }

    /// Waits for cancellation after a stop, keeping the status `Stopped`.
    async fn stopped(&mut self) -> Option<Held> {
        self.status.released();
        // Nothing to watch for any more: stop holding the watcher's announcements.
        self.applied = None;
        self.cancel.cancelled().await;
        None
    }

    /// The next announcement that touches our key (see [`own_key::touched`]); never, once the
    /// watcher is gone.
    async fn own_key_touched(&mut self) {
        if std::mem::take(&mut self.key_unheard) {
            return;
        }
        loop {
            let Some(applied) = self.applied.as_mut() else {
                return std::future::pending().await;
            };
            let touched = match applied.recv().await {
                Ok(applied) => {
                    let own = &self.own;
                    own_key::touched(own, &applied, || {
                        self.shared
                            .view
                            .read(|v| v.members.holds(&own.key, own.create_revision))
                    })
                }
                // Announcements were missed: any of them may have touched it.
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.applied = None;
                    false
                }
            };
            if touched {
                return;
            }
        }
    }

    /// Registered: mirror the lease deadline into the status until something ends it, and
    /// answer requests to announce.
    async fn registered_phase(&mut self) -> Ended {
        let mut announces = self.announces.take();
        let ended = self.registered_loop(&mut announces).await;
        self.announces = announces;
        ended
    }

    async fn registered_loop(
        &mut self,
        announces: &mut Option<mpsc::Receiver<AnnounceRequest>>,
    ) -> Ended {
        let Some(lease) = self.lease.as_ref() else {
            return Ended::LeaseLost("no lease".into());
        };
        let lease_id = lease.id();
        let mut lease_rx = lease.subscribe();
        // When to check that our slot and key are intact: once per TTL (the watch only sees
        // the server key; a deleted slot would let another server take our id), at once when
        // the watcher applied something that touched our key, soon again after a failure.
        let period = timing::integrity_check_period(self.claim.terms.lease_ttl);
        let mut check_at = Instant::now() + period;
        // Consecutive failed restore checks: the first is a warning, the retries of one outage
        // are not.
        let mut restore_failures = 0u32;
        loop {
            let state = lease_rx.borrow_and_update().clone();
            let deadline = match state {
                LeaseState::Alive { deadline } => deadline,
                LeaseState::Lost { reason } => return Ended::LeaseLost(reason),
            };
            self.status.registered(self.claim.id, deadline, lease_id);
            let cancel = self.cancel.clone();
            tokio::select! {
                () = tokio::time::sleep_until(check_at) => {}
                () = self.own_key_touched() => {}
                () = cancel.cancelled() => return Ended::Cancelled,
                Some(reply) = next_request(announces) => {
                    let answer = self.announce(lease_id).await;
                    let lost = answer.is_err();
                    // The requester may have stopped waiting: the announcement stands anyway.
                    let _ = reply.send(answer);
                    if lost {
                        return Ended::LeaseLost("our reservation was gone when we announced it".into());
                    }
                    continue;
                }
                changed = lease_rx.changed() => {
                    if changed.is_err() {
                        return Ended::LeaseLost("keep-alive task ended".into());
                    }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Ended::LeaseLost("lease deadline passed without a keep-alive acknowledgement".into());
                }
            }
            if !self.claim.announced {
                // A reservation has no server key to restore; its slot is checked by the
                // announcement's guard.
                check_at = Instant::now() + period;
                continue;
            }
            match self.restore().await {
                Restore::Intact | Restore::Restored => {
                    restore_failures = 0;
                    check_at = Instant::now() + period;
                }
                Restore::Removed(reason) => return Ended::Removed(reason),
                Restore::LeaseGone(reason) => return Ended::LeaseLost(reason),
                Restore::Taken(reason) => return Ended::Taken(reason),
                Restore::Failed(e) => {
                    if restore_failures == 0 {
                        tracing::warn!(error = %e, "restoring our key failed; will retry");
                    } else {
                        tracing::debug!(error = %e, failures = restore_failures + 1, "restoring our key failed again; will retry");
                    }
                    restore_failures = restore_failures.saturating_add(1);
                    check_at = Instant::now() + timing::RESTORE_RETRY;
                }
            }
        }
    }

    /// Checks that our server key and slot are intact and puts back whatever someone else
    /// deleted or edited, in one transaction guarded so that nothing of another registration
    /// is ever overwritten ([`guard::restore`] writes out its rules). The key-removed policy
    /// `stop` leaves a removal alone; an edit (our key put off our lease or with another
    /// value) is repaired whatever the policy: nothing was removed.
    async fn restore(&mut self) -> Restore {
        let Some(lease_id) = self.lease.as_ref().map(LeaseSession::id) else {
            return Restore::LeaseGone("no lease".into());
        };
        let c = &self.claim;
        let owner = Owner::new(
            &self.shared.layout,
            c.id,
            c.server_key.clone(),
            c.create_revision,
            lease_id,
        );
        let stop_if_removed = self.shared.config.on_key_removed == KeyRemovedPolicy::Stop;
        let txn = guard::restore::build(&owner, &c.record, !stop_if_removed);
        // Never outlive the lease deadline: past it, the lease-loss path takes over.
        let bound = match self.lease.as_ref().map(LeaseSession::state) {
            Some(LeaseState::Alive { deadline }) => {
                deadline.saturating_duration_since(Instant::now())
            }
            _ => Duration::ZERO,
        };
        let bound = timing::restore_bound(bound, self.shared.config.request_timeout);
        let resp = match retrying_txn(&self.shared.pool, "restore key", bound, &txn).await {
            Ok(resp) => resp,
            Err(Error::Etcd { source, .. }) if is_lease_not_found(&source) => {
                return Restore::LeaseGone(format!(
                    "our key was deleted and our lease is gone: {source}"
                ));
            }
            Err(e) => return Restore::Failed(e),
        };
        match guard::restore::read(&Answer::from(&resp)) {
            Restored::Intact => Restore::Intact,
            Restored::Record => {
                metrics::counter!(m::KEY_RESTORES).increment(1);
                tracing::warn!(
                    id = c.id,
                    "our server key was overwritten by someone else (off our lease, or another value); put back on our lease"
                );
                Restore::Restored
            }
            Restored::NotOurs if stop_if_removed => Restore::Removed(format!(
                "the registration of id {} was removed by someone else (evicted?)",
                c.id
            )),
            Restored::Slot => {
                metrics::counter!(m::KEY_RESTORES).increment(1);
                tracing::warn!(
                    id = c.id,
                    "our slot key was deleted by someone else; restored"
                );
                Restore::Restored
            }
            Restored::Key { revision } => {
                metrics::counter!(m::KEY_RESTORES).increment(1);
                tracing::warn!(
                    id = c.id,
                    "our server key was deleted by someone else; restored"
                );
                self.claim.create_revision = revision;
                self.track_own_key();
                Restore::Restored
            }
            Restored::NotOurs => Restore::Taken(format!("id {} was taken by another server", c.id)),
        }
    }
}

impl Supervisor {
    /// Announces a reserved registration: writes its server key, guarded by the reservation
    /// ([`guard::reservation`]). From then on the registration is announced, across
    /// re-registrations too. A no-op once announced.
    async fn announce(&mut self, lease_id: i64) -> Result<(), Error> {
        self.claim.terms.announce = true;
        if self.claim.announced {
            return Ok(());
        }
        let c = &self.claim;
        let reservation = Reservation {
            key: c.server_key.clone(),
            slot: self.shared.layout.slot_key(c.id),
            lease: lease_id,
        };
        let txn = guard::reservation::announce(&reservation, &c.record);
        let resp = retrying_txn(
            &self.shared.pool,
            "announce",
            self.shared.config.request_timeout,
            &txn,
        )
        .await?;
        match guard::reservation::read_announce(&Answer::from(&resp), &reservation) {
            Announced::Created { revision } | Announced::Already { revision } => {
                tracing::info!(id = c.id, revision, "announced");
                self.claim.create_revision = revision;
                self.claim.announced = true;
                self.track_own_key();
                Ok(())
            }
            Announced::Lost => Err(Error::NotRegistered),
        }
    }
}

/// The next request on `requests`, if there is a channel; never otherwise.
async fn next_request<T>(requests: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Our key as a claim on `lease` wrote it.
fn own_key(claim: &Claim, lease: i64) -> OwnKey {
    OwnKey {
        key: claim.server_key.clone().into_bytes(),
        create_revision: claim.create_revision,
        lease,
        record: claim.record.clone(),
    }
}
