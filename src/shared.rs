//! What every registration of one process shares: one connection (the pool), one view of the
//! registry, one allocation hint.
//!
//! A connector is this shared part plus at most one registration today; nothing here knows
//! how many registrations use it, so several of them over one connection and one view (an
//! agent serving many game servers from one process) add registrations, not a second copy
//! of the watcher. What belongs to one registration (its lease, its claim, its supervision,
//! its status) lives in [`crate::registration`], owned by that registration's supervisor.

use std::sync::atomic::AtomicU64;

use crate::alloc::CursorHint;
use crate::config::ConnectorConfig;
use crate::keys::KeyLayout;
use crate::pool::Pool;
use crate::view::ViewReader;
use crate::watcher::Command;

/// The registry core shared by a connector and its registrations.
pub(crate) struct Shared {
    /// One client per etcd member.
    pub(crate) pool: Pool,
    /// The settings in force.
    pub(crate) config: ConnectorConfig,
    /// Where keys live.
    pub(crate) layout: KeyLayout,
    /// The watcher's view (read only) and the entry of lifecycle events into its sequence.
    pub(crate) view: ViewReader,
    /// Requests to the watcher (a resync, so the view holds at least what etcd held when it
    /// was asked).
    pub(crate) commands: tokio::sync::mpsc::Sender<Command>,
    /// Where allocations start (see [`CursorHint`]); every allocation of the process learns
    /// from and feeds the same hint.
    pub(crate) cursor: CursorHint,
    /// The seed of the allocations' spread over the candidates.
    pub(crate) spread_seed: u64,
    /// etcd requests sent by registrations (lease grants, allocation transactions).
    pub(crate) requests: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.layout.prefix())
            .finish_non_exhaustive()
    }
}
