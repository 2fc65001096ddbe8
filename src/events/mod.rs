//! The events a registry delivers: membership as Join / Leave, like tower's
//! `discover::Change::{Insert, Remove}`, plus the marker that the initial snapshot is complete.

use crate::record::ServerInfo;

/// One membership event.
///
/// # Contract
/// - Events come in etcd revision order; every event carries the etcd revision it reflects.
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
    },
    /// This server is registered again after a lease loss or the removal of its key.
    Reregistered {
        /// The id now held: the previous one, unless it was taken and the policy allows a
        /// new one.
        id: u16,
        /// The id held before.
        previous_id: u16,
        /// Create revision of the new registration.
        revision: i64,
    },
    /// This server's registration was stopped for good (the fail-stop policy): its id was
    /// taken by another server while it was away. The host should shut down.
    RegistrationStopped {
        /// The id that was held.
        id: u16,
        /// What happened.
        reason: String,
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

impl Event {
    /// The etcd revision this event reflects, for the events that have one.
    #[must_use]
    pub fn revision(&self) -> Option<i64> {
        match self {
            Event::Join { revision, .. }
            | Event::Leave { revision, .. }
            | Event::Synced { revision }
            | Event::Reregistered { revision, .. }
            | Event::Stale { revision }
            | Event::Fresh { revision } => Some(*revision),
            Event::LeaseLost { .. } | Event::RegistrationStopped { .. } => None,
        }
    }

    /// True for the membership events (joins and leaves).
    #[must_use]
    pub fn is_membership(&self) -> bool {
        matches!(self, Event::Join { .. } | Event::Leave { .. })
    }
}
