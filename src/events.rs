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
    /// A server joined (or was present in the initial snapshot).
    Join {
        /// The server.
        server: ServerInfo,
        /// Revision at which its key was created (or the snapshot revision for servers found
        /// by a snapshot).
        revision: i64,
    },
    /// A server left: its key was deleted (deregistration, lease expiry, or eviction).
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
}

impl Event {
    /// The revision this event reflects.
    #[must_use]
    pub fn revision(&self) -> i64 {
        match self {
            Event::Join { revision, .. }
            | Event::Leave { revision, .. }
            | Event::Synced { revision } => *revision,
        }
    }
}
