//! The events a registry delivers, and the one contract every subscriber gets: membership as
//! Join / Leave (like tower's `discover::Change::{Insert, Remove}`), the marker that the initial
//! snapshot is complete, the view's freshness, and this server's own registration lifecycle, in
//! one sequence.
//!
//! # Order
//! Every event is *sequenced* at one point: the watcher applies a batch of etcd changes to the
//! view and sequences its joins and leaves in the same step (under the view's write lock); a
//! lifecycle event ([`Event::LeaseLost`], [`Event::Reregistered`],
//! [`Event::RegistrationStopped`]) is sequenced when it happens, under the same lock. Hence the
//! rule:
//!
//! > A lifecycle event comes after every membership event the view had applied when it
//! > happened, and before every later one. It carries the view's revision at that moment.
//!
//! Membership, [`Event::Synced`], [`Event::Stale`] and [`Event::Fresh`] carry the revision
//! they reflect, so [`Event::revision`] never decreases along a subscription. (A re-registration's
//! own create revision is the `create_revision` of [`Event::Reregistered`]; its join follows
//! once the watcher sees it.)
//!
//! ## With an interest (`watch_groups`)
//! A connector that watches only some groups ([`crate::ConnectorConfig::watch_groups`]) has one
//! watch per group on one stream. etcd keeps each watch's events in revision order, but not the
//! order *between* the watches of a stream while one of them catches up (after a reconnect,
//! say). So with an interest the order rule holds **per group**: the events of one group come
//! in revision order, and a server's joins and leaves (which are all in its group) are never
//! reordered; events of two groups may interleave out of revision order, and
//! [`Event::revision`] may then step back when the group changes. Everything else holds as
//! above: one snapshot at one revision for all the groups, then [`Event::Synced`]; joins and
//! leaves alternate per id; lifecycle events carry the furthest revision the view has applied.
//!
//! # Subscribers
//! [`crate::Connector::subscribe`] returns an [`EventStream`]; there may be any number, each with
//! its own queue of `event_queue` events. Publishing never waits for a subscriber: the watcher
//! and the keep-alive are never delayed by one, nor is one subscriber by another.
//!
//! - A subscription made before the initial snapshot receives its joins, then
//!   [`Event::Synced`], as they are applied. One made later starts with the current view: a
//!   join for every member, then [`Event::Synced`] (and [`Event::Stale`] if the view is stale),
//!   all at the view's revision.
//! - **Overflow.** The events of one batch (one etcd response, one snapshot) that find the
//!   queue empty are queued whole, however many: the consumer has kept up, and a catch-up
//!   would be as long. Otherwise a membership, synced or freshness event that finds the queue
//!   full is dropped and the subscription is marked *lagging*; while lagging it drops every later one
//!   too (lifecycle events are still queued: they are rare, at most one per lease loss, and
//!   bounded by [`LIFECYCLE_SLACK`] beyond the queue). Once its consumer has emptied the queue,
//!   the subscription receives a *catch-up* computed from the current view against what it
//!   has received so far: a leave for each server it holds that is gone or changed, a join
//!   for each server it lacks (or that changed), [`Event::Synced`] if it never got one, and
//!   [`Event::Stale`] / [`Event::Fresh`] if the freshness differs; all at the view's revision.
//!   Then it resumes in order. So a slow subscriber may miss intermediate states (a server
//!   that joined and left while it lagged), never the end state, and never sees two joins for
//!   an id without a leave between them. One exception to the order rule follows: a lifecycle
//!   event queued while the subscription lags comes *before* the catch-up, so before the
//!   membership events (dropped, then caught up) that the view had applied when it happened.
//!   A subscriber that keeps up is never in this case.
//!
//! # Layers
//! This module sits between the membership diff and the view: it reads `membership` (a change
//! becomes an [`Event`] here, in one place; a catch-up reads the members), and `view` uses it
//! (the view sequences events into each subscription's queue). It names no type of the view:
//! what a catch-up reads is a `ViewState` the view lends, and a lagging subscription reaches
//! the view through the `ViewSource` trait, which the view implements. So the dependencies run
//! one way: membership ← events ← view.

mod catch_up;
mod subscription;

pub(crate) use catch_up::ViewState;
pub use subscription::EventStream;
pub(crate) use subscription::{Slot, ViewSource};

/// What a new subscription starts with: the current view as joins, then [`Event::Synced`]
/// (nothing before the initial snapshot).
pub(crate) fn catch_up_from_nothing(view: ViewState<'_>) -> Vec<Event> {
    catch_up::catch_up(&catch_up::Received::default(), view)
}

/// How many lifecycle events a subscription queues beyond its capacity (see the module docs):
/// a consumer that reads nothing for a long time still gets the first ones up to this many;
/// later ones are dropped (and logged). [`crate::Connector::status`] always tells the current
/// state.
pub const LIFECYCLE_SLACK: usize = 64;

use crate::membership::MemberChange;
use crate::record::ServerInfo;

/// One membership event.
///
/// # Contract
/// - Events come in revision order ([`Event::revision`] never decreases; with `watch_groups`,
///   within each group), lifecycle events placed by the rule of the [module docs](self).
/// - For a given id, joins and leaves alternate: never two joins without a leave between them,
///   never a leave for an id that has not joined.
/// - Every live server of the watched range is joined exactly once before [`Event::Synced`],
///   this server included.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A server joined (or was present in the initial snapshot): its key became the holder
    /// of its id, or its record was edited in place (after the [`Event::Leave`] of the old
    /// record; see `membership` for the rules).
    Join {
        /// The server.
        server: ServerInfo,
        /// Revision of the change that made it a member (or the snapshot revision for
        /// servers found by a snapshot).
        revision: i64,
    },
    /// A server left: its key was deleted (deregistration, lease expiry, or eviction), or it
    /// stopped being the holder of its id (lease stripped, record malformed or edited in
    /// place, an earlier key claiming the id).
    Leave {
        /// Its id.
        id: u16,
        /// Its group.
        group: String,
        /// Revision of the deletion (or of the snapshot that found it gone).
        revision: i64,
        /// Its owner marked it departing before deleting it: a deregistration, not a lost
        /// lease or an eviction. A layer that holds leaves back for a short grace (a lost lease
        /// whose holder is back at once, see `cluster::ClusterCore`) passes this one on at once.
        departing: bool,
    },
    /// The initial snapshot has been delivered: the view now mirrors etcd at `revision`.
    Synced {
        /// Revision of the snapshot.
        revision: i64,
    },
    /// This server's lease is lost (expired, revoked, or unconfirmed past its local deadline):
    /// peers see (or will see) its leave. The connector re-registers by itself.
    LeaseLost {
        /// The id that was held.
        id: u16,
        /// Why the lease is considered lost.
        reason: String,
        /// The view's revision when the loss was noticed (its place in the sequence).
        revision: i64,
    },
    /// This server is registered again after a lease loss or the removal of its key.
    Reregistered {
        /// The id now held: the previous one, unless it was taken and the policy allows a
        /// new one.
        id: u16,
        /// The id held before.
        previous_id: u16,
        /// Create revision of the new registration (the revision of its coming join).
        create_revision: i64,
        /// The view's revision when it happened (its place in the sequence).
        revision: i64,
    },
    /// This server's registration was stopped for good (the fail-stop policy): its id was
    /// taken by another server while it was away. The host should shut down.
    RegistrationStopped {
        /// The id that was held.
        id: u16,
        /// What happened.
        reason: String,
        /// The view's revision when it happened (its place in the sequence).
        revision: i64,
    },
    /// The view may be out of date: etcd cannot be read. It keeps its last state (nothing is
    /// evicted) until [`Event::Fresh`].
    Stale {
        /// The last revision the view reflects.
        revision: i64,
    },
    /// The view is current again after [`Event::Stale`]; any joins and leaves missed meanwhile
    /// were delivered before this event.
    Fresh {
        /// The revision the view now reflects.
        revision: i64,
    },
}

/// The one place a membership change becomes an event: an insert is a join, a remove a leave,
/// at the change's revision. Hidden: the membership module is internal (public only with the
/// hidden `__internals` feature).
#[doc(hidden)]
impl From<MemberChange> for Event {
    #[inline]
    fn from(change: MemberChange) -> Self {
        match change {
            MemberChange::Insert { server, revision } => Event::Join { server, revision },
            MemberChange::Remove {
                id,
                group,
                revision,
                departing,
            } => Event::Leave {
                id,
                group,
                departing,
                revision,
            },
        }
    }
}

impl Event {
    /// The revision this event is sequenced at: the etcd revision a membership, synced or
    /// freshness event reflects, or the view's revision when a lifecycle event happened. Never
    /// decreases along one subscription.
    #[must_use]
    pub fn revision(&self) -> i64 {
        match self {
            Event::Join { revision, .. }
            | Event::Leave { revision, .. }
            | Event::Synced { revision }
            | Event::LeaseLost { revision, .. }
            | Event::Reregistered { revision, .. }
            | Event::RegistrationStopped { revision, .. }
            | Event::Stale { revision }
            | Event::Fresh { revision } => *revision,
        }
    }

    /// True for this server's registration lifecycle events ([`Event::LeaseLost`],
    /// [`Event::Reregistered`], [`Event::RegistrationStopped`]): the ones a lagging
    /// subscription still queues.
    #[must_use]
    pub fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            Event::LeaseLost { .. }
                | Event::Reregistered { .. }
                | Event::RegistrationStopped { .. }
        )
    }

    /// True for the membership events (joins and leaves).
    #[must_use]
    pub fn is_membership(&self) -> bool {
        matches!(self, Event::Join { .. } | Event::Leave { .. })
    }
}
