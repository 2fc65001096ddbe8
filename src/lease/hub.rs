//! The keep-alive hub: the handle through which leases join and leave the one keep-alive task
//! of a pool. The task itself is [`super::keeper`]; this is what the rest of the crate holds.
//!
//! One hub per pool (see [`crate::pool::Pool::keep_alive_hub`]), so every lease granted
//! through a connection shares one keep-alive stream: an agent keeping hundreds of
//! registrations holds one stream, not hundreds. Each lease keeps its own deadline, schedule,
//! health gate and fate; the hub only shares the stream and the member it is on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::keeper::Keeper;
use super::source::LeaseSource;
use super::LeaseState;

/// A lease to keep alive, as granted.
#[derive(Debug)]
pub(crate) struct NewLease {
    /// Its id.
    pub(crate) id: i64,
    /// The TTL etcd granted.
    pub(crate) ttl: Duration,
    /// How often to renew it ([`crate::timing::keep_alive_interval`]).
    pub(crate) interval: Duration,
    /// How long a keep-alive may go unanswered before its member is suspected
    /// ([`crate::timing::stall_bound`]).
    pub(crate) stall: Duration,
    /// When the grant request went out: etcd keeps the lease at least until this plus the
    /// TTL, and the first keep-alive is due an interval after it.
    pub(crate) granted_at: Instant,
    /// Keep-alives are sent only while this (a health verdict) is true, if given: an unhealthy
    /// server lets its lease expire.
    pub(crate) gate: Option<watch::Receiver<bool>>,
}

/// What the hub's task is told.
#[derive(Debug)]
pub(crate) enum Command {
    /// Keep this lease alive, reporting to this sender.
    Add(NewLease, watch::Sender<LeaseState>),
    /// Stop keeping this lease alive (revoked, or its owner dropped it).
    Remove(i64),
}

/// The handle of one keep-alive task keeping any number of leases on one stream. Dropping the
/// last handle ends the task (and closes its stream).
#[derive(Debug)]
pub(crate) struct KeepAliveHub {
    commands: mpsc::UnboundedSender<Command>,
}

impl KeepAliveHub {
    /// Starts a hub keeping its leases over `source`.
    pub(crate) fn start<S: LeaseSource>(source: S) -> Arc<Self> {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(Keeper::new(Arc::new(source), rx).run());
        Arc::new(KeepAliveHub { commands })
    }

    /// Starts keeping `lease` alive; the receiver sees its state (alive until its grant's
    /// deadline at first).
    pub(crate) fn add(&self, lease: NewLease) -> watch::Receiver<LeaseState> {
        let (tx, rx) = watch::channel(LeaseState::Alive {
            deadline: lease.granted_at + lease.ttl,
        });
        if let Err(mpsc::error::SendError(Command::Add(_, tx))) =
            self.commands.send(Command::Add(lease, tx))
        {
            // The task is gone (it ends only when every handle is dropped, so only after a
            // panic or with its runtime): nothing keeps this lease, and its owner must know.
            tx.send_replace(LeaseState::Lost {
                reason: "the keep-alive task has stopped".into(),
            });
        }
        rx
    }

    /// True while its task runs (it ends when every handle is dropped, or with its runtime).
    pub(crate) fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Stops keeping lease `id` alive (nothing if it is not kept).
    pub(crate) fn remove(&self, id: i64) {
        // A task that is gone keeps nothing: nothing to stop.
        let _ = self.commands.send(Command::Remove(id));
    }
}
