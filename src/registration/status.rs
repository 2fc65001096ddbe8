//! Where a registration stands, and the fence: what a host may rely on before acting as the
//! holder of its id.

use tokio::sync::watch;
use tokio::time::Instant;

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

/// A registration's standing as its supervisor publishes it: the public
/// [`RegistrationStatus`] and, while registered, the lease the registration holds (0
/// otherwise). The supervisor is the only writer; its readers are the connector's
/// [`Connector::status`](crate::Connector::status) and the eviction reports this server files
/// about its peers (a report must die with the registration that filed it, so it is bound to
/// that lease).
///
/// Two channels because [`RegistrationStatus`] is public and its variants' fields are part of
/// the API; they are written together, the lease first when registering and last when
/// leaving, so a reader that sees `Registered` sees its lease.
#[derive(Debug)]
pub(crate) struct StatusTx {
    status: watch::Sender<RegistrationStatus>,
    lease: watch::Sender<i64>,
}

/// The reading side of a [`StatusTx`]; cloned freely.
#[derive(Debug, Clone)]
pub(crate) struct StatusRx {
    status: watch::Receiver<RegistrationStatus>,
    lease: watch::Receiver<i64>,
}

impl StatusTx {
    /// A registration that holds `id` on `lease`, confirmed until `deadline`.
    pub(crate) fn new(id: u16, deadline: Instant, lease: i64) -> (Self, StatusRx) {
        let (status, status_rx) = watch::channel(RegistrationStatus::Registered { id, deadline });
        let (lease, lease_rx) = watch::channel(lease);
        (
            StatusTx { status, lease },
            StatusRx {
                status: status_rx,
                lease: lease_rx,
            },
        )
    }

    /// Registered as `id` on `lease`, confirmed until `deadline`.
    pub(crate) fn registered(&self, id: u16, deadline: Instant, lease: i64) {
        self.lease.send_replace(lease);
        self.status
            .send_replace(RegistrationStatus::Registered { id, deadline });
    }

    /// The lease was lost (or the id taken): `id` is being recovered.
    pub(crate) fn recovering(&self, id: u16) {
        self.status
            .send_replace(RegistrationStatus::Recovering { id });
    }

    /// Given up for good.
    pub(crate) fn stopped(&self, id: u16, reason: String) {
        self.status
            .send_replace(RegistrationStatus::Stopped { id, reason });
        self.released();
    }

    /// Nothing of ours is kept any more (stopped, or handed back for deregistration).
    pub(crate) fn released(&self) {
        self.lease.send_replace(0);
    }
}

impl StatusRx {
    /// The public status channel (await `changed()` to follow it).
    pub(crate) fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// The lease held now (0 when none: recovering, stopped or released).
    pub(crate) fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// False once the registration is over for good (deregistered, dropped or stopped).
    pub(crate) fn is_live(&self) -> bool {
        self.lease.has_changed().is_ok()
            && !matches!(*self.status.borrow(), RegistrationStatus::Stopped { .. })
    }

    /// Our id and lease while registered and within the lease deadline (the fence); `None`
    /// otherwise.
    pub(crate) fn held(&self) -> Option<(u16, i64)> {
        let status = self.status.borrow();
        match &*status {
            RegistrationStatus::Registered { id, .. } if status.is_registered() => {
                let lease = *self.lease.borrow();
                (lease != 0).then_some((*id, lease))
            }
            _ => None,
        }
    }
}
