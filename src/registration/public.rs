//! Registrations a host holds by handle: many over one connector (the agent's case), each
//! with its own lease, id, health gate and fate.
//!
//! [`crate::Connector::register_server`] keeps the one registration DarkRift's
//! `RegisterServer` asks for; [`crate::Connector::register`] hands out a
//! [`RegistrationHandle`] per call instead, over the same connection, watch and view.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Handle, RegistrationStatus, StatusRx};
use crate::error::Result;
use crate::health::HealthProbe;
use crate::shared::Shared;

/// How [`crate::Connector::register`] registers.
#[derive(Clone, Default)]
pub struct RegisterOptions {
    /// The lease's TTL (default: the connector's `lease_ttl`). Whole seconds, at least 1.
    pub lease_ttl: Option<Duration>,
    /// Reserve the id without telling peers: only the allocator's slot is written, and the
    /// server key (what peers watch) follows on [`RegistrationHandle::announce`]. For servers
    /// that learn their id before they can serve (DarkRift asks for it before its listeners
    /// start). Default: announce at once.
    pub reserve: bool,
    /// Keep-alives only while this probe passes (polled every second).
    pub health_probe: Option<Arc<dyn HealthProbe>>,
    /// Resume the registration of this id: its record's owner token hash must be the one of
    /// the [`crate::Registration`] given (see `Registration::with_owner_token_hash`). Its lease
    /// is adopted if still alive (no leave, no join); the id is registered again if free; else
    /// [`crate::Error::IdTaken`].
    pub resume: Option<u16>,
}

impl std::fmt::Debug for RegisterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterOptions")
            .field("lease_ttl", &self.lease_ttl)
            .field("reserve", &self.reserve)
            .field("health_probe", &self.health_probe.is_some())
            .field("resume", &self.resume)
            .finish()
    }
}

/// One registration made by [`crate::Connector::register`]. Dropping it stops its keep-alive
/// (its lease expires: a crash, as peers see it); [`RegistrationHandle::deregister`] removes
/// it at once.
#[derive(Debug)]
pub struct RegistrationHandle {
    shared: Arc<Shared>,
    handle: tokio::sync::Mutex<Option<Handle>>,
    status: StatusRx,
    announced: AtomicBool,
    resumed: bool,
}

impl RegistrationHandle {
    pub(crate) fn new(shared: Arc<Shared>, handle: Handle, announced: bool, resumed: bool) -> Self {
        RegistrationHandle {
            shared,
            status: handle.status().clone(),
            handle: tokio::sync::Mutex::new(Some(handle)),
            announced: AtomicBool::new(announced),
            resumed,
        }
    }

    /// The status channels (for the connector's reporter identity).
    pub(crate) fn status_rx(&self) -> &StatusRx {
        &self.status
    }

    /// The id held (or being recovered).
    #[must_use]
    pub fn id(&self) -> u16 {
        self.status.status().borrow().id()
    }

    /// The etcd lease the registration holds now; `None` while it holds none (its lease was
    /// lost and it is recovering, or it stopped or was deregistered). A re-registration after
    /// a lost lease holds a new one.
    #[must_use]
    pub fn lease_id(&self) -> Option<i64> {
        Some(self.status.lease()).filter(|lease| *lease != 0)
    }

    /// Where the registration stands.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.status()
    }

    /// True once peers were told (at once, or after [`RegistrationHandle::announce`]).
    #[must_use]
    pub fn is_announced(&self) -> bool {
        self.announced.load(Ordering::Acquire)
    }

    /// True when this registration was resumed on the lease it already had (no leave, no
    /// join at its peers).
    #[must_use]
    pub fn adopted(&self) -> bool {
        self.resumed
    }

    /// Announces a reserved registration: writes its server key, guarded by the reservation.
    /// A no-op once announced.
    ///
    /// # Errors
    /// [`crate::Error::NotRegistered`] once deregistered, or when the reservation was lost (it
    /// is reserved again by itself and announced once back); an etcd failure.
    pub async fn announce(&self) -> Result<()> {
        if self.is_announced() {
            return Ok(());
        }
        let guard = self.handle.lock().await;
        let Some(handle) = guard.as_ref() else {
            return Err(crate::Error::NotRegistered);
        };
        handle.announce().await?;
        self.announced.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes the registration (guarded by its lease and create revision) and revokes its
    /// lease, bounded by the request timeout. Calling it again is a no-op.
    ///
    /// # Errors
    /// An etcd failure (the lease then expires by itself).
    pub async fn deregister(&self) -> Result<()> {
        let taken = self.handle.lock().await.take();
        match taken {
            Some(handle) => handle.deregister(&self.shared).await,
            None => Ok(()),
        }
    }
}
