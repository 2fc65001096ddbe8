//! Where a registration stands, and the fence: what a host may rely on before acting as the
//! holder of its id.

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
