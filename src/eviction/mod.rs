//! Peer-reported eviction: what a server does when DarkRift cannot reach a peer
//! (`HandleConnectionFailure`), and how enough such reports end the peer's registration
//! before its lease would.
//!
//! **Why.** A crashed server leaves when its lease expires, a TTL later. A server that lives
//! on but cannot be reached (a wedged process, a dead port) keeps its lease alive forever.
//! Its peers are the ones who notice: each that fails to reach it files a report, and when
//! enough distinct live servers did, within a window, its registration is deleted.
//!
//! **The protocol.** One round trip files our report and reads every report about the peer
//! ([`crate::guard::report`]): the report names the peer's registration (its create
//! revision), so reports about an earlier registration of the same id never count against a
//! new one; it lives on our lease, so it dies with us. Once `min_reporters` distinct reports on
//! a lease and within the window are there, one guarded transaction evicts exactly that
//! registration and its reports ([`crate::guard::evict`]). A report whose peer left some other
//! way is withdrawn by the sweep. A server that reported an earlier registration of an id
//! does not report the newer one for a while (the anti-flap hold, [`reporter`]): a healthy
//! server evicted by mistake is back at once, and would otherwise be evicted again and again.
//! With eviction off, or while we are not registered (a report must die with its reporter),
//! the peer's key is only re-read.
//!
//! | file | job |
//! |---|---|
//! | `decide.rs` | the decisions, pure: whether to file, what a tally calls for |
//! | `reporter.rs` | the memory, pure: reports filed (for withdrawal), the anti-flap hold |
//! | `io.rs` | the thin I/O: the connection failure, the filing, the eviction, the sweep |
//!
//! **One reporter per process.** [`Reports`] is the reporter's memory and it is shared: the
//! connector holds one, and several registrations of one process would file through the
//! same one, under one id and lease of theirs, so that they count as one reporter (K
//! distinct reporters must be K processes, not K registrations of one confused host).

mod decide;
mod io;
mod reporter;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::config::EvictionConfig;
use crate::shared::Shared;

pub(crate) use io::connection_failure;
use reporter::Reporter;

/// What [`Connector::handle_connection_failure`](crate::Connector::handle_connection_failure)
/// found out about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Its registration is still in etcd: the failure is between us and it, not a departure.
    Registered,
    /// Its registration is gone; its leave has been delivered (or is about to be, in order).
    Gone,
    /// Enough live servers reported it unreachable (eviction is on): its registration was
    /// deleted, guarded by its create revision, and its leave follows.
    Evicted,
    /// The id is not a member of our view (never joined, or already left).
    Unknown,
}

/// The reports one process files, with eviction on: the settings, and the reporter's memory
/// shared by its registrations and its sweep.
#[derive(Debug, Clone)]
pub(crate) struct Reports {
    config: EvictionConfig,
    reporter: Arc<Mutex<Reporter>>,
}

impl Reports {
    /// With eviction on (`shared.config.eviction`), the reporter's memory and its sweep task,
    /// which runs until `stop`; `None` with eviction off.
    pub(crate) fn start(shared: &Arc<Shared>, stop: CancellationToken) -> Option<Self> {
        let config = shared.config.eviction.clone()?;
        let reports = Reports {
            reporter: Arc::new(Mutex::new(Reporter::new(config.window))),
            config,
        };
        tokio::spawn(io::sweep(shared.clone(), reports.clone(), stop));
        Some(reports)
    }

    /// The reporter's memory; a panic elsewhere while holding it leaves it usable (every
    /// change to it is one map operation).
    fn lock(&self) -> MutexGuard<'_, Reporter> {
        self.reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
