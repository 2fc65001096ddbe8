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
//! server holds the id by then, [`crate::IdTakenPolicy`] decides: stop (default) or take a new id.
//! Never two live holders: every write is a transaction that requires the slot to be free or
//! ours.
//!
//! Fencing: [`RegistrationStatus::is_registered`] is false from the instant the local lease
//! deadline passes (even before the keep-alive task notices) until re-registration succeeds.
//!
//! | file | job |
//! |---|---|
//! | `handle.rs` | one registration as the connector holds it: start (lease, claim, supervisor), deregister |
//! | `claim.rs` | claim an id: the allocation attempts, cursor repair |
//! | `supervisor.rs` | the loop while registered: lease deadline, integrity checks, guarded restore |
//! | `own_key.rs` | does what the watcher applied touch our key? (pure) |
//! | `recovery.rs` | the one retry loop that gets a lost registration back (`Recovering`) |
//! | `status.rs` | where a registration stands, the fence, and the lease it holds |
//!
//! Everything here belongs to one registration: its lease, its claim, its supervisor task,
//! its status (the one place its lease is published, for the eviction reports it files).
//! What registrations share (the pool, the view, the allocation hint) is
//! [`crate::shared::Shared`], so several registrations over one connection are several
//! [`Handle`]s, not several connectors.
//!
//! The supervisor learns of edits to its key by listening to what the watcher applies
//! (`view::Applied`); the watcher does not know it exists. Its lifecycle events are
//! sequenced into the event stream by `view::ViewReader::publish_lifecycle`, by the rule of
//! [`crate::events`].

use crate::events::Event;
use crate::lease::LeaseSession;
use crate::shared::Shared;

mod claim;
mod handle;
mod own_key;
mod public;
mod recovery;
mod resume;
mod status;
mod supervisor;

pub(crate) use handle::Handle;
pub use public::{RegisterOptions, RegistrationHandle};
pub use status::RegistrationStatus;
pub(crate) use status::StatusRx;

/// An id held in etcd.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub(crate) id: u16,
    pub(crate) position: u64,
    pub(crate) server_key: String,
    pub(crate) create_revision: i64,
    /// The record as we last wrote it: what the key must hold (see the supervisor's restore).
    pub(crate) record: Vec<u8>,
    /// What this registration was started with, kept across re-registrations.
    pub(crate) terms: Terms,
    /// The server key is written (peers were told). False while the id is only reserved:
    /// then `create_revision` is the slot's, and the own-key checks leave the (absent) server
    /// key alone (see `guard::reservation`).
    pub(crate) announced: bool,
}

/// A registration's own settings: what may differ between registrations over one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Terms {
    /// Its lease's TTL.
    pub(crate) lease_ttl: std::time::Duration,
    /// Announce at allocation (true), or reserve the id and announce later.
    pub(crate) announce: bool,
    /// The seed of its allocations' spread: registrations of one process started together
    /// must not all try the same first candidate.
    pub(crate) spread_seed: u64,
}

/// What deregistration needs, handed back by the supervisor.
#[derive(Debug)]
struct Held {
    pub(crate) claim: Claim,
    pub(crate) lease: LeaseSession,
}

/// Revokes a lease we no longer use; a failure only means it expires by itself.
async fn revoke_quietly(shared: &Shared, lease: LeaseSession) {
    if let Err(e) = lease
        .revoke(&shared.pool, shared.config.request_timeout)
        .await
    {
        tracing::debug!(error = %e, "revoking an unused lease failed; it expires");
    }
}

/// Stops registration `id` for good: the status says why, and so does
/// [`Event::RegistrationStopped`].
fn stop(shared: &Shared, status: &status::StatusTx, id: u16, reason: String) {
    status.stopped(id, reason.clone());
    shared
        .view
        .publish_lifecycle(|revision| Event::RegistrationStopped {
            id,
            reason,
            revision,
        });
}
