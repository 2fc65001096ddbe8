//! Getting a registration back, by one retry loop for every way it is lost: the lease lost
//! (same id, fresh lease), or the id taken by another server (the [`IdTakenPolicy`]: stop, or
//! go on in the same loop with a new id).
//!
//! Every attempt is one guarded write ([`guard::reregister`], or the allocation transaction):
//! never two live holders. The loop retries forever with jittered exponential backoff (an
//! outage of any length ends in re-registration), waits for a health probe to pass, and
//! stops only when cancelled or by the fail-stop policy.
//!
//! Recovering is a state of its own ([`Recovering`]): it borrows what it needs of the
//! supervisor (the registration, the lost claim, the status, the cancellation) and hands back
//! the new claim and lease; the supervisor takes them over and goes on keeping them. So the
//! supervisor knows recovery, and recovery knows nothing of the supervisor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::StatusTx;
use super::{claim::allocate, revoke_quietly, stop, Claim};
use crate::alloc;
use crate::client::retrying_txn;
use crate::config::IdTakenPolicy;
use crate::guard::{self, reregister::Reregistered, Answer, Owner};
use crate::lease::LeaseSession;
use crate::record::Registration;
use crate::shared::Shared;
use crate::timing;

/// Why a recovery starts.
pub(super) enum Goal {
    /// The lease is lost: get the same id back.
    SameId,
    /// The id is held by another server (found while our lease lived): apply the policy.
    Taken(String),
}

/// How a recovery ended.
pub(super) enum Recovery {
    /// Registered again: the lease and the claim it holds, for the supervisor to keep.
    Done {
        lease: LeaseSession,
        claim: Claim,
    },
    Cancelled,
    /// Stopped for good (fail-stop policy).
    Stop,
}

enum Attempt {
    /// Registered again: the lease and the claim it holds.
    Done {
        lease: LeaseSession,
        claim: Claim,
    },
    Taken(String),
    Retry(String),
}

/// A registration being got back: what of its supervisor the retry loop reads.
pub(super) struct Recovering<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) registration: &'a Registration,
    /// The claim lost (its id is the one recovered first).
    pub(super) claim: &'a Claim,
    pub(super) status: &'a StatusTx,
    pub(super) cancel: &'a CancellationToken,
    /// Health verdicts gating re-registration, if a probe is set.
    pub(super) health: Option<&'a watch::Receiver<bool>>,
}

impl Recovering<'_> {
    /// Revokes the old lease (best effort), then retries until registered again: the same id,
    /// or a new one once the policy allows it.
    pub(super) async fn run(&self, old: Option<LeaseSession>, goal: Goal) -> Recovery {
        let shared = self.shared;
        let previous_id = self.claim.id;
        let old_lease_id = old.as_ref().map_or(0, LeaseSession::id);
        if let Some(old) = old {
            let bound = timing::revoke_bound(shared.config.request_timeout, old.ttl());
            if let Err(e) = old.revoke(&shared.pool, bound).await {
                tracing::debug!(error = %e, "revoking the lost lease failed (best effort)");
            }
        }
        // Half a TTL at most, jitter included: back within about a TTL of etcd answering again.
        let mut backoff = timing::recovery_backoff(self.claim.terms.lease_ttl);
        let mut same_id = true;
        if let Goal::Taken(reason) = goal {
            if !self.on_taken(reason) {
                return Recovery::Stop;
            }
            same_id = false;
            backoff = timing::new_id_backoff();
        }
        loop {
            if self.cancel.is_cancelled() {
                return Recovery::Cancelled;
            }
            let cancel = self.cancel.clone();
            if let Some(mut health) = self.health.cloned() {
                // An unhealthy server stays out until its probe passes again.
                tokio::select! {
                    () = cancel.cancelled() => return Recovery::Cancelled,
                    _ = health.wait_for(|healthy| *healthy) => {}
                }
            }
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Recovery::Cancelled,
                a = self.attempt(same_id, old_lease_id) => a,
            };
            match attempt {
                Attempt::Done { lease, claim } => {
                    let create_revision = claim.create_revision;
                    if same_id {
                        tracing::info!(
                            id = claim.id,
                            revision = create_revision,
                            "re-registered with the same id"
                        );
                    } else {
                        tracing::warn!(
                            old_id = previous_id,
                            new_id = claim.id,
                            "id was taken; registered with a new id"
                        );
                    }
                    return Recovery::Done { lease, claim };
                }
                Attempt::Taken(reason) => {
                    if !self.on_taken(reason) {
                        return Recovery::Stop;
                    }
                    same_id = false;
                    backoff = timing::new_id_backoff();
                }
                Attempt::Retry(why) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    if same_id {
                        tracing::debug!(%why, delay_ms, "re-registration failed; retrying");
                    } else {
                        tracing::warn!(error = %why, delay_ms, "registering with a new id failed; retrying");
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return Recovery::Cancelled,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The id is held by another server: the policy says whether to go on with a new id
    /// (`true`) or stop for good (`false`, with the status and event saying why).
    fn on_taken(&self, reason: String) -> bool {
        let id = self.claim.id;
        match self.shared.config.on_id_taken {
            IdTakenPolicy::FailStop => {
                tracing::error!(id, %reason, "registration stopped (fail-stop policy)");
                stop(self.shared, self.status, id, reason);
                false
            }
            IdTakenPolicy::NewId => {
                tracing::info!(id, %reason, "id taken; registering with a new id");
                self.status.recovering(id);
                true
            }
        }
    }

    /// One try: our id with a fresh lease, or any free id.
    async fn attempt(&self, same_id: bool, old_lease_id: i64) -> Attempt {
        if same_id {
            self.reregister_same_id(old_lease_id).await
        } else {
            self.register_new_id().await
        }
    }

    /// One try at a new id with a fresh lease (policy `new-id`, once ours is taken).
    async fn register_new_id(&self) -> Attempt {
        let shared = self.shared;
        let lease = match LeaseSession::grant_gated(
            &shared.pool,
            self.claim.terms.lease_ttl,
            shared.config.request_timeout,
            self.health.cloned(),
        )
        .await
        {
            Ok(lease) => lease,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        // A new id is announced if the lost one was, or was asked to be: a reservation
        // stays a reservation.
        let terms = self.claim.terms;
        match allocate(shared, self.registration, lease.id(), terms).await {
            Ok(claim) => Attempt::Done { lease, claim },
            Err(e) => {
                revoke_quietly(shared, lease).await;
                Attempt::Retry(e.to_string())
            }
        }
    }

    /// One try at getting our id back with a fresh lease.
    async fn reregister_same_id(&self, old_lease_id: i64) -> Attempt {
        let shared = self.shared;
        let gate = self.health.cloned();
        let lease = match LeaseSession::grant_gated(
            &shared.pool,
            self.claim.terms.lease_ttl,
            shared.config.request_timeout,
            gate,
        )
        .await
        {
            Ok(lease) => lease,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let c = self.claim;
        let record = self
            .registration
            .encode(c.id, c.position, alloc::now_unix_ms());
        // The keys are created anew: no create revision to guard on.
        let owner = Owner::new(&shared.layout, c.id, c.server_key.clone(), 0, lease.id());
        let txn = guard::reregister::build(&owner, &record, c.terms.announce);
        let resp = match retrying_txn(
            &shared.pool,
            "re-register",
            shared.config.request_timeout,
            &txn,
        )
        .await
        {
            Ok(resp) => resp,
            Err(e) => {
                revoke_quietly(shared, lease).await;
                return Attempt::Retry(e.to_string());
            }
        };
        // Our old lease (its revoke did not get through yet) is not "taken".
        match guard::reregister::read(&Answer::from(&resp), lease.id(), old_lease_id) {
            Reregistered::Done { revision } => Attempt::Done {
                lease,
                claim: Claim {
                    create_revision: revision,
                    record,
                    announced: c.terms.announce,
                    ..c.clone()
                },
            },
            Reregistered::OldLeaseHolds => {
                revoke_quietly(shared, lease).await;
                // Best effort: the next attempt finds out whether it got through.
                let _ = crate::client::revoke_lease(
                    &shared.pool,
                    old_lease_id,
                    shared.config.request_timeout,
                )
                .await;
                Attempt::Retry("our old keys are still there; revoking the old lease again".into())
            }
            Reregistered::Taken => {
                revoke_quietly(shared, lease).await;
                Attempt::Taken(format!(
                    "id {} was taken by another server while this one was away",
                    c.id
                ))
            }
        }
    }
}
