//! One registration's life: claim an id, keep it, notice its loss, get it back.
//!
//! ```text
//!   allocate ──► Registered ──(lease lost: TTL 0, NotFound, deadline passed)──► Recovering
//!                   │  ▲                                                          │
//!                   │  └──────────── re-registered, same id (or a new one) ◄──────┤
//!                   │                                                             │
//!                   ├─(our key deleted by someone else)─► restore, guarded ───────┤ (lease gone too)
//!                   ├─(our key put off our lease / other value)─► put back, guarded │
//!                   │                                                             ▼
//!                   └─(deregister / drop)─► handed back to the connector        Stopped
//!                                                              (fail-stop policy: id taken)
//! ```
//!
//! The supervisor task owns the lease. Recovery retries forever with jittered exponential
//! backoff (an outage of any length ends in re-registration), always for the *same* id: DarkRift
//! peers key their tables by id, so keeping it keeps their connections meaningful. If another
//! server holds the id by then, [`IdTakenPolicy`] decides: stop (default) or take a new id.
//! Never two live holders: every write is a transaction that requires the slot to be free or
//! ours.
//!
//! Fencing: [`RegistrationStatus::is_registered`] is false from the instant the local lease
//! deadline passes (even before the keep-alive task notices) until re-registration succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alloc::{self, AllocHint, AllocOutcome, AllocRequest, IdSet};
use crate::client::{retrying, retrying_txn};
use crate::config::{ConnectorConfig, IdTakenPolicy, KeyRemovedPolicy};
use crate::error::{is_lease_not_found, Error, Result};
use crate::events::Event;
use crate::guard::{self, reregister::Reregistered, restore::Restored, Answer, Owner};
use crate::keys::KeyLayout;
use crate::lease::{LeaseSession, LeaseState};
use crate::metrics as m;
use crate::pool::Pool;
use crate::record::Registration;
use crate::timing;
use crate::watcher::{lock, OwnKey, SharedView};

/// Where a registration stands, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// Registered as `id`; the lease is confirmed until `deadline`.
    Registered {
        /// The id held.
        id: u16,
        /// Local lease deadline.
        deadline: Instant,
    },
    /// The lease was lost; re-registration of `id` is being retried.
    Recovering {
        /// The id being recovered.
        id: u16,
    },
    /// Given up for good (fail-stop policy): `id` is held by another server.
    Stopped {
        /// The id that was held.
        id: u16,
        /// Why.
        reason: String,
    },
}

impl RegistrationStatus {
    /// True while registered and the lease deadline has not passed (a fence: safe to act as
    /// the holder of the id).
    #[must_use]
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationStatus::Registered { deadline, .. } if *deadline > Instant::now())
    }

    /// The id held or being recovered.
    #[must_use]
    pub fn id(&self) -> u16 {
        match self {
            RegistrationStatus::Registered { id, .. }
            | RegistrationStatus::Recovering { id }
            | RegistrationStatus::Stopped { id, .. } => *id,
        }
    }
}

/// What the connector and its registrations share.
pub(crate) struct Ctx {
    pub(crate) pool: Pool,
    pub(crate) config: ConnectorConfig,
    pub(crate) layout: KeyLayout,
    pub(crate) shared: SharedView,
    /// The registration's own events (lease lost, re-registered, stopped). Unbounded on
    /// purpose: they are rare (one per loss), and the supervisor must never wait for a slow or
    /// absent consumer before recovering.
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) spread_seed: u64,
    pub(crate) requests: AtomicU64,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("prefix", &self.layout.prefix())
            .finish_non_exhaustive()
    }
}

/// An id held in etcd.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub(crate) id: u16,
    pub(crate) position: u64,
    pub(crate) server_key: String,
    pub(crate) create_revision: i64,
    /// The record as we last wrote it: what the key must hold (see [`Supervisor::restore`]).
    pub(crate) record: Vec<u8>,
}

/// What deregistration needs, handed back by the supervisor.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) claim: Claim,
    pub(crate) lease: LeaseSession,
}

/// Claims an id: one transaction per attempt, bounded (see [`crate::alloc`]).
pub(crate) async fn allocate(
    ctx: &Ctx,
    registration: &Registration,
    lease_id: i64,
) -> Result<Claim> {
    let params = ctx.config.alloc_params();
    let mut learned = IdSet::default();
    let mut cursor_seen = 0u64;
    for attempt in 0..ctx.config.max_alloc_attempts {
        let hint = {
            let shared = lock(&ctx.shared);
            let mut taken = learned.clone();
            for id in shared.view.ids() {
                taken.insert(id);
            }
            AllocHint {
                cursor: alloc::later_position(shared.cursor, cursor_seen),
                taken,
            }
        };
        let spread = splitmix(ctx.spread_seed.wrapping_add(u64::from(attempt)));
        let Some(candidate) = alloc::choose(&hint, params, spread) else {
            if !learned.is_empty() {
                // What we learnt from conflicts may be stale: start over from the view.
                learned = IdSet::default();
                continue;
            }
            return Err(exhausted_or_contention(ctx, attempt).await);
        };
        let record = registration.encode(candidate.id, candidate.position, alloc::now_unix_ms());
        let request = AllocRequest {
            layout: &ctx.layout,
            group: registration.group(),
            candidate,
            cursor: hint.cursor,
            record: record.clone(),
            lease_id,
            params,
        };
        metrics::counter!(m::ALLOC_TXNS).increment(1);
        let txn = alloc::build_txn(&request);
        let resp = counted_txn(ctx, "allocate id", &txn).await?;
        match alloc::read_answer(&ctx.layout, candidate, lease_id, &resp) {
            Ok(AllocOutcome::Won {
                revision,
                damaged_cursor,
            }) => {
                if let Some(damaged) = damaged_cursor {
                    repair_cursor(ctx, &damaged, candidate.position).await;
                }
                let mut shared = lock(&ctx.shared);
                shared.cursor = alloc::later_position(shared.cursor, candidate.position);
                return Ok(Claim {
                    id: candidate.id,
                    position: candidate.position,
                    server_key: ctx.layout.server_key(registration.group(), candidate.id),
                    create_revision: revision,
                    record,
                });
            }
            Ok(AllocOutcome::Lost { cursor, taken }) => {
                tracing::debug!(
                    attempt,
                    id = candidate.id,
                    cursor,
                    taken = taken.len(),
                    "id taken; retrying"
                );
                metrics::counter!(m::ALLOC_CONFLICTS).increment(1);
                cursor_seen = cursor_seen.max(cursor);
                learned.insert(candidate.id);
                for id in taken {
                    learned.insert(id);
                }
            }
            Err(why) => {
                return Err(Error::InvalidConfig(format!(
                    "allocator state under the prefix: {why}"
                )))
            }
        }
    }
    Err(Error::AllocationContention {
        attempts: ctx.config.max_alloc_attempts,
    })
}

/// Sends a transaction of the allocator, retrying transient errors, and counts every send in
/// [`Ctx::requests`] (a retry is one more request to etcd).
async fn counted_txn(
    ctx: &Ctx,
    op: &'static str,
    txn: &etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    retrying(&ctx.pool, op, ctx.config.request_timeout, |client| {
        // Counted per send: a transient error's retry is one more request to etcd.
        ctx.requests.fetch_add(1, Ordering::Relaxed);
        let txn = txn.clone();
        async move { client.kv_client().txn(txn).await }
    })
    .await
}

/// Puts a valid position over a damaged cursor that our allocation read (see
/// [`alloc::build_repair_txn`]). Best effort: the id is already ours, and whoever allocates
/// next finds the cursor still damaged and repairs it then.
async fn repair_cursor(ctx: &Ctx, damaged: &[u8], position: u64) {
    let txn = alloc::build_repair_txn(&ctx.layout, damaged, position);
    match counted_txn(ctx, "repair cursor", &txn).await {
        Ok(resp) if resp.succeeded() => {
            tracing::warn!(
                damaged = %String::from_utf8_lossy(damaged),
                position,
                "allocation cursor was damaged; repaired"
            );
        }
        // Someone else repaired or advanced it first: nothing of theirs was overwritten.
        Ok(_) => tracing::debug!(
            position,
            "damaged cursor already repaired by another server"
        ),
        Err(e) => tracing::warn!(error = %e, "repairing the damaged allocation cursor failed"),
    }
}

/// Every id looks taken: count the slots to tell a full space from a stale view.
async fn exhausted_or_contention(ctx: &Ctx, attempt: u32) -> Error {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let prefix = ctx.layout.slots_prefix();
    let count = retrying(
        &ctx.pool,
        "count slots",
        ctx.config.request_timeout,
        |client| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { client.kv_client().get(prefix, Some(options)).await }
        },
    );
    match count.await {
        Ok(resp) if resp.count() >= i64::from(ctx.config.id_space) => Error::IdSpaceExhausted {
            id_space: ctx.config.id_space,
        },
        Ok(_) => Error::AllocationContention {
            attempts: attempt + 1,
        },
        Err(e) => e,
    }
}

/// A well-mixed 64-bit hash (splitmix64), to derive each attempt's spread from the seed.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The running supervisor of one registration.
pub(crate) struct Supervisor {
    ctx: Arc<Ctx>,
    registration: Registration,
    claim: Claim,
    lease: Option<LeaseSession>,
    status: watch::Sender<RegistrationStatus>,
    own_gone: Arc<Notify>,
    cancel: CancellationToken,
    /// Health verdicts gating the keep-alive (and re-registration), if a probe is set.
    health: Option<watch::Receiver<bool>>,
}

/// Why the registered phase ended.
enum Ended {
    Cancelled,
    LeaseLost(String),
    Taken(String),
    /// Our key was removed and the policy says stop.
    Removed(String),
}

impl Supervisor {
    /// Starts supervising a fresh claim.
    pub(crate) fn spawn(
        ctx: Arc<Ctx>,
        registration: Registration,
        claim: Claim,
        lease: LeaseSession,
        cancel: CancellationToken,
        health: Option<watch::Receiver<bool>>,
    ) -> (
        watch::Receiver<RegistrationStatus>,
        tokio::task::JoinHandle<Option<Held>>,
    ) {
        let deadline = match lease.state() {
            LeaseState::Alive { deadline } => deadline,
            LeaseState::Lost { .. } => Instant::now(),
        };
        let (status, rx) = watch::channel(RegistrationStatus::Registered {
            id: claim.id,
            deadline,
        });
        let sup = Supervisor {
            ctx,
            registration,
            claim,
            lease: Some(lease),
            status,
            own_gone: Arc::new(Notify::new()),
            cancel,
            health,
        };
        sup.track_own_key();
        (rx, tokio::spawn(sup.run()))
    }

    fn track_own_key(&self) {
        lock(&self.ctx.shared).own = Some(OwnKey {
            key: self.claim.server_key.clone().into_bytes(),
            create_revision: self.claim.create_revision,
            lease: self.lease.as_ref().map_or(0, LeaseSession::id),
            record: self.claim.record.clone(),
            gone: self.own_gone.clone(),
        });
    }

    fn emit(&self, event: Event) {
        // No receiver left means nobody can consume events any more: nothing to deliver to.
        let _ = self.ctx.events.send(event);
    }

    async fn run(mut self) -> Option<Held> {
        loop {
            let ended = self.registered_phase().await;
            let reason = match ended {
                Ended::Cancelled => {
                    lock(&self.ctx.shared).own = None;
                    return self.lease.take().map(|lease| Held {
                        claim: self.claim.clone(),
                        lease,
                    });
                }
                Ended::LeaseLost(reason) => reason,
                Ended::Taken(reason) => {
                    // Our key was re-created by another server while our lease lived.
                    match self.on_taken(reason).await {
                        Some(()) => continue,
                        None => return self.stopped().await,
                    }
                }
                Ended::Removed(reason) => {
                    if let Some(old) = self.lease.take() {
                        revoke_quietly(&self.ctx, old).await;
                    }
                    tracing::error!(id = self.claim.id, %reason, "registration stopped (key-removed policy)");
                    let id = self.claim.id;
                    self.status.send_replace(RegistrationStatus::Stopped {
                        id,
                        reason: reason.clone(),
                    });
                    self.emit(Event::RegistrationStopped { id, reason });
                    return self.stopped().await;
                }
            };
            metrics::counter!(m::LEASE_LOST).increment(1);
            tracing::warn!(id = self.claim.id, %reason, "registration lost; re-registering");
            self.status
                .send_replace(RegistrationStatus::Recovering { id: self.claim.id });
            self.emit(Event::LeaseLost {
                id: self.claim.id,
                reason,
            });
            match self.recover().await {
                Recovery::Done => {}
                Recovery::Cancelled => {
                    lock(&self.ctx.shared).own = None;
                    return None;
                }
                Recovery::Stop => return self.stopped().await,
            }
        }
    }

    /// Waits for cancellation after a fail-stop, keeping the status `Stopped`.
    async fn stopped(self) -> Option<Held> {
        lock(&self.ctx.shared).own = None;
        self.cancel.cancelled().await;
        None
    }

    /// Registered: mirror the lease deadline into the status until something ends it.
    async fn registered_phase(&mut self) -> Ended {
        let Some(lease) = self.lease.as_ref() else {
            return Ended::LeaseLost("no lease".into());
        };
        let mut lease_rx = lease.subscribe();
        let mut last_check = Instant::now();
        // Consecutive failed restore checks: the first is a warning, the retries of one outage
        // are not.
        let mut restore_failures = 0u32;
        loop {
            let state = lease_rx.borrow_and_update().clone();
            let deadline = match state {
                LeaseState::Alive { deadline } => deadline,
                LeaseState::Lost { reason } => return Ended::LeaseLost(reason),
            };
            self.status.send_replace(RegistrationStatus::Registered {
                id: self.claim.id,
                deadline,
            });
            let check_at = last_check + timing::integrity_check_period(self.ctx.config.lease_ttl);
            tokio::select! {
                // Once per TTL, check that our slot and key are intact (the watch only sees the
                // server key; a deleted slot would let another server take our id).
                () = tokio::time::sleep_until(check_at) => {
                    last_check = Instant::now();
                    self.own_gone.notify_one();
                }
                () = self.cancel.cancelled() => return Ended::Cancelled,
                changed = lease_rx.changed() => if changed.is_err() {
                    return Ended::LeaseLost("keep-alive task ended".into());
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Ended::LeaseLost("lease deadline passed without a keep-alive acknowledgement".into());
                }
                () = self.own_gone.notified() => match self.restore().await {
                    Restore::Intact | Restore::Restored => restore_failures = 0,
                    Restore::Removed(reason) => return Ended::Removed(reason),
                    Restore::LeaseGone(reason) => return Ended::LeaseLost(reason),
                    Restore::Taken(reason) => return Ended::Taken(reason),
                    Restore::Failed(e) => {
                        // Try again soon: re-arm the notification.
                        if restore_failures == 0 {
                            tracing::warn!(error = %e, "restoring our key failed; will retry");
                        } else {
                            tracing::debug!(error = %e, failures = restore_failures + 1, "restoring our key failed again; will retry");
                        }
                        restore_failures = restore_failures.saturating_add(1);
                        let gone = self.own_gone.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(timing::RESTORE_RETRY).await;
                            gone.notify_one();
                        });
                    }
                },
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
        let owner = Owner {
            key: c.server_key.clone(),
            slot: self.ctx.layout.slot_key(c.id),
            create_revision: c.create_revision,
            lease: lease_id,
        };
        let stop_if_removed = self.ctx.config.on_key_removed == KeyRemovedPolicy::Stop;
        let txn = guard::restore::build(&owner, &c.record, !stop_if_removed);
        // Never outlive the lease deadline: past it, the lease-loss path takes over.
        let bound = match self.lease.as_ref().map(LeaseSession::state) {
            Some(LeaseState::Alive { deadline }) => {
                deadline.saturating_duration_since(Instant::now())
            }
            _ => Duration::ZERO,
        };
        let bound = timing::restore_bound(bound, self.ctx.config.request_timeout);
        let resp = match retrying_txn(&self.ctx.pool, "restore key", bound, &txn).await {
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

    /// Recovering: revoke the old lease (best effort), then re-register the same id forever
    /// with jittered exponential backoff.
    async fn recover(&mut self) -> Recovery {
        let ctx = self.ctx.clone();
        let old_lease_id = self.lease.as_ref().map_or(0, LeaseSession::id);
        if let Some(old) = self.lease.take() {
            let bound = timing::revoke_bound(ctx.config.request_timeout, old.ttl());
            if let Err(e) = old.revoke(&ctx.pool, bound).await {
                tracing::debug!(error = %e, "revoking the lost lease failed (best effort)");
            }
        }
        // Half a TTL at most, jitter included: back within about a TTL of etcd answering again.
        let mut backoff = timing::recovery_backoff(ctx.config.lease_ttl);
        loop {
            if self.cancel.is_cancelled() {
                return Recovery::Cancelled;
            }
            let cancel = self.cancel.clone();
            if let Some(mut health) = self.health.clone() {
                // An unhealthy server stays out until its probe passes again.
                tokio::select! {
                    () = cancel.cancelled() => return Recovery::Cancelled,
                    _ = health.wait_for(|healthy| *healthy) => {}
                }
            }
            let attempt = tokio::select! {
                () = cancel.cancelled() => return Recovery::Cancelled,
                a = self.reregister_same_id(old_lease_id) => a,
            };
            match attempt {
                Attempt::Done(lease, revision, record) => {
                    let previous_id = self.claim.id;
                    self.claim.create_revision = revision;
                    self.claim.record = record;
                    self.lease = Some(lease);
                    self.track_own_key();
                    metrics::counter!(m::REREGISTRATIONS).increment(1);
                    tracing::info!(
                        id = self.claim.id,
                        revision,
                        "re-registered with the same id"
                    );
                    self.emit(Event::Reregistered {
                        id: self.claim.id,
                        previous_id,
                        revision,
                    });
                    return Recovery::Done;
                }
                Attempt::Taken(reason) => {
                    return match self.on_taken(reason).await {
                        Some(()) => Recovery::Done,
                        None => Recovery::Stop,
                    };
                }
                Attempt::Retry(why) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tracing::debug!(%why, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "re-registration failed; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => return Recovery::Cancelled,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One try at getting our id back with a fresh lease.
    async fn reregister_same_id(&mut self, old_lease_id: i64) -> Attempt {
        let ctx = self.ctx.clone();
        let gate = self.health.clone();
        let lease = match LeaseSession::grant_gated(
            &ctx.pool,
            ctx.config.lease_ttl,
            ctx.config.request_timeout,
            gate,
        )
        .await
        {
            Ok(lease) => lease,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let c = &self.claim;
        let record = self
            .registration
            .encode(c.id, c.position, alloc::now_unix_ms());
        let owner = Owner {
            key: c.server_key.clone(),
            slot: ctx.layout.slot_key(c.id),
            create_revision: 0,
            lease: lease.id(),
        };
        let txn = guard::reregister::build(&owner, &record);
        let resp =
            match retrying_txn(&ctx.pool, "re-register", ctx.config.request_timeout, &txn).await {
                Ok(resp) => resp,
                Err(e) => {
                    revoke_quietly(&ctx, lease).await;
                    return Attempt::Retry(e.to_string());
                }
            };
        // Our old lease (its revoke did not get through yet) is not "taken".
        match guard::reregister::read(&Answer::from(&resp), lease.id(), old_lease_id) {
            Reregistered::Done { revision } => Attempt::Done(lease, revision, record),
            Reregistered::OldLeaseHolds => {
                revoke_quietly(&ctx, lease).await;
                // Best effort: the next attempt finds out whether it got through.
                let _ = crate::client::revoke_lease(
                    &ctx.pool,
                    old_lease_id,
                    ctx.config.request_timeout,
                )
                .await;
                Attempt::Retry("our old keys are still there; revoking the old lease again".into())
            }
            Reregistered::Taken => {
                revoke_quietly(&ctx, lease).await;
                Attempt::Taken(format!(
                    "id {} was taken by another server while this one was away",
                    c.id
                ))
            }
        }
    }

    /// The id is held by another server: apply the policy. `Some` when registered again.
    async fn on_taken(&mut self, reason: String) -> Option<()> {
        let old_id = self.claim.id;
        if let Some(old) = self.lease.take() {
            revoke_quietly(&self.ctx, old).await;
        }
        match self.ctx.config.on_id_taken {
            IdTakenPolicy::FailStop => {
                tracing::error!(id = old_id, %reason, "registration stopped (fail-stop policy)");
                self.status.send_replace(RegistrationStatus::Stopped {
                    id: old_id,
                    reason: reason.clone(),
                });
                self.emit(Event::RegistrationStopped { id: old_id, reason });
                None
            }
            IdTakenPolicy::NewId => {
                self.status
                    .send_replace(RegistrationStatus::Recovering { id: old_id });
                let ctx = self.ctx.clone();
                let mut backoff = timing::new_id_backoff();
                loop {
                    let attempt = async {
                        let gate = self.health.clone();
                        let lease = LeaseSession::grant_gated(
                            &ctx.pool,
                            ctx.config.lease_ttl,
                            ctx.config.request_timeout,
                            gate,
                        )
                        .await?;
                        match allocate(&ctx, &self.registration, lease.id()).await {
                            Ok(claim) => Ok((lease, claim)),
                            Err(e) => {
                                revoke_quietly(&ctx, lease).await;
                                Err(e)
                            }
                        }
                    };
                    let result = tokio::select! {
                        () = self.cancel.cancelled() => return None,
                        r = attempt => r,
                    };
                    match result {
                        Ok((lease, claim)) => {
                            let revision = claim.create_revision;
                            tracing::warn!(
                                old_id,
                                new_id = claim.id,
                                "id was taken; registered with a new id"
                            );
                            self.claim = claim;
                            self.lease = Some(lease);
                            self.track_own_key();
                            metrics::counter!(m::REREGISTRATIONS).increment(1);
                            self.emit(Event::Reregistered {
                                id: self.claim.id,
                                previous_id: old_id,
                                revision,
                            });
                            return Some(());
                        }
                        Err(e) => {
                            let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                            tracing::warn!(error = %e, "registering with a new id failed; retrying");
                            tokio::select! {
                                () = self.cancel.cancelled() => return None,
                                () = tokio::time::sleep(delay) => {}
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn revoke_quietly(ctx: &Ctx, lease: LeaseSession) {
    if let Err(e) = lease.revoke(&ctx.pool, ctx.config.request_timeout).await {
        tracing::debug!(error = %e, "revoking an unused lease failed; it expires");
    }
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

enum Recovery {
    Done,
    Cancelled,
    Stop,
}

enum Attempt {
    /// Registered again: the lease, the create revision and the record written.
    Done(LeaseSession, i64, Vec<u8>),
    Taken(String),
    Retry(String),
}
