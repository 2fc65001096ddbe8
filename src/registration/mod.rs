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
//! | `claim.rs` | claim an id: the allocation attempts, cursor repair |
//! | `supervisor.rs` | the loop while registered: lease deadline, integrity checks, guarded restore |
//! | `own_key.rs` | does what the watcher applied touch our key? (pure) |
//! | `recovery.rs` | the one retry loop that gets a lost registration back |
//! | `status.rs` | where a registration stands, and the fence |
//!
//! The supervisor learns of edits to its key by listening to what the watcher applies
//! (`view::Applied`); the watcher does not know it exists. Its lifecycle events are
//! sequenced into the event stream by `view::ViewReader::publish_lifecycle`, by the rule of
//! [`crate::events`].

use std::sync::atomic::{AtomicI64, AtomicU64};

use crate::alloc::CursorHint;
use crate::config::ConnectorConfig;
use crate::keys::KeyLayout;
use crate::lease::LeaseSession;
use crate::pool::Pool;
use crate::view::ViewReader;

mod claim;
mod own_key;
mod recovery;
mod status;
mod supervisor;

pub(crate) use claim::allocate;
pub use status::RegistrationStatus;
pub(crate) use supervisor::Supervisor;

/// What the connector and its registrations share.
pub(crate) struct Ctx {
    pub(crate) pool: Pool,
    pub(crate) config: ConnectorConfig,
    pub(crate) layout: KeyLayout,
    /// The watcher's view (read only) and the entry of lifecycle events into its sequence.
    pub(crate) view: ViewReader,
    /// Where allocations start (see [`CursorHint`]).
    pub(crate) cursor: CursorHint,
    /// The lease of the registration being kept (0 when none): the reports this server files
    /// about unreachable peers are bound to it. Written by the supervisor only.
    pub(crate) own_lease: AtomicI64,
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
    /// The record as we last wrote it: what the key must hold (see the supervisor's restore).
    pub(crate) record: Vec<u8>,
}

/// What deregistration needs, handed back by the supervisor.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) claim: Claim,
    pub(crate) lease: LeaseSession,
}

/// Revokes a lease we no longer use; a failure only means it expires by itself.
async fn revoke_quietly(ctx: &Ctx, lease: LeaseSession) {
    if let Err(e) = lease.revoke(&ctx.pool, ctx.config.request_timeout).await {
        tracing::debug!(error = %e, "revoking an unused lease failed; it expires");
    }
}
