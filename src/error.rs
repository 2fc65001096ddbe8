//! Errors, one variant per phase, each saying whether a retry can help.
//!
//! Validation errors ([`Error::InvalidRegistration`], [`Error::InvalidConfig`]) are raised
//! before anything is sent to etcd, so a caller that sees one knows nothing was written.

use std::time::Duration;

use crate::record::RecordError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in darkrift-etcd.
///
/// # Retryable errors
/// [`Error::is_retryable`] is true for [`Error::Unreachable`], [`Error::Timeout`],
/// [`Error::AllocationContention`] and [`Error::Etcd`] with a transient cause (a transport
/// error, a broken stream, or the gRPC codes etcd uses for "try again"): the same call may
/// succeed later. Everything else is a permanent answer: bad input or settings, TLS or
/// credentials refused, id space exhausted, a call that does not fit the connector's state
/// (already registered, not registered, events taken, shut down). Each variant's doc says
/// which it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registration input (group, host, port, properties) was rejected; nothing was written.
    /// Not retryable.
    #[error("invalid registration: {0}")]
    InvalidRegistration(#[from] RecordError),

    /// [`crate::Connector::register_server`] was asked to register in a group this connector
    /// does not watch ([`crate::ConnectorConfig::watch_groups`]): it could not see its own
    /// key, nor a peer that removes or takes it. Nothing was written. Not retryable.
    #[error("group {group:?} is not among the watched groups {watched:?}; add it to watch_groups")]
    GroupNotWatched {
        /// The group asked for.
        group: String,
        /// The groups this connector watches.
        watched: Vec<String>,
    },

    /// The configuration was rejected before connecting (or a setting could not be read).
    /// Not retryable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// No etcd endpoint answered within the connect timeout. Retryable.
    #[error("etcd unreachable at {endpoints} (no answer within {timeout:?}): {reason}")]
    Unreachable {
        /// The endpoints that were tried, comma-separated.
        endpoints: String,
        /// The connect timeout that elapsed or the bound that applied.
        timeout: Duration,
        /// What the client library reported, if anything.
        reason: String,
    },

    /// The TLS handshake with etcd failed: an untrusted or mismatched server certificate
    /// (wrong CA, wrong host name), or etcd refused our client certificate (or its absence).
    /// Never followed by a plaintext attempt. Not retryable.
    #[error("TLS to etcd at {endpoints} failed: {reason}")]
    Tls {
        /// The endpoints that were tried, comma-separated.
        endpoints: String,
        /// What the TLS layer reported.
        reason: String,
    },

    /// etcd refused our credentials: a wrong user or password, a user without permission on
    /// the registry's keys, or no credentials where etcd requires them. Not retryable.
    #[error("etcd authentication as user {user:?} failed: {reason}")]
    Auth {
        /// The user name, empty when none was configured (the password is never part of an
        /// error).
        user: String,
        /// What etcd answered.
        reason: String,
    },

    /// An etcd request, or a wait on etcd (the initial snapshot, the resync after a connection
    /// failure), did not complete within its bound. Retryable.
    #[error("etcd request `{op}` timed out after {timeout:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The bound that elapsed.
        timeout: Duration,
    },

    /// etcd (or the transport to it) returned an error. Retryable when transient (see the
    /// type's docs).
    #[error("etcd request `{op}` failed: {source}")]
    Etcd {
        /// The operation that failed.
        op: &'static str,
        /// The client library's error.
        #[source]
        source: etcd_client::Error,
    },

    /// Every id of the configured id space is held by a live server. Not retryable (a retry
    /// helps only once a server leaves).
    #[error("no free server id: all {id_space} ids of the id space are held by live servers")]
    IdSpaceExhausted {
        /// Size of the id space (ids `1..=id_space`).
        id_space: u16,
    },

    /// Allocation kept losing races and gave up after the configured number of attempts.
    /// Retryable: the races end.
    #[error("id allocation gave up after {attempts} conflicting attempts")]
    AllocationContention {
        /// How many transactions were tried.
        attempts: u32,
    },

    /// This connector already holds a registration; deregister first. Not retryable.
    #[error("this connector is already registered as server {id}")]
    AlreadyRegistered {
        /// The id currently held.
        id: u16,
    },

    /// A registration could not be resumed with its id: another server holds it (the owner
    /// token in its record is not ours, or its lease outlived the wait). Not retryable:
    /// taking back one's own id is the only id a resume asks for.
    #[error("server id {id} is held by another server")]
    IdTaken {
        /// The id asked for.
        id: u16,
    },

    /// The call needs a registration and there is none. Not retryable.
    #[error("this connector is not registered")]
    NotRegistered,

    /// The connector, or its watcher task, is shut down. Not retryable.
    #[error("the connector is shut down")]
    Shutdown,

    /// The blocking facade could not start its tokio runtime (threads could not be spawned).
    /// Not retryable.
    #[error("cannot start the tokio runtime of the blocking connector: {0}")]
    Runtime(#[source] std::io::Error),
}

impl Error {
    /// Wraps an etcd-client error with the operation it came from.
    pub(crate) fn etcd(op: &'static str, source: etcd_client::Error) -> Self {
        Error::Etcd { op, source }
    }

    /// True when retrying the same call later may succeed: [`Error::Unreachable`],
    /// [`Error::Timeout`], [`Error::AllocationContention`], and [`Error::Etcd`] with a
    /// transient cause (see the type's docs).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::AllocationContention { .. } => true,
            Error::Etcd { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

/// Classifies an etcd-client error: transport failures and the gRPC codes etcd uses for
/// "try again" (unavailable, deadline, leader changes, resource exhaustion) are transient.
pub(crate) fn is_transient(err: &etcd_client::Error) -> bool {
    use tonic::Code;
    match err {
        // The transport, and etcd-client's stream errors (a watch or keep-alive stream that
        // broke): another attempt may well work.
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::LeaseKeepAliveError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
        ),
        _ => false,
    }
}

/// True when the error says the lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::NotFound || status.message().contains("lease not found")
        }
        // etcd-client's `keep_alive()` turns a first answer with TTL 0 into this.
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_retryable_matches_each_variants_doc() {
        let transient = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader"));
        let permanent =
            etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("not allowed"));
        let retryable = [
            Error::Unreachable {
                endpoints: String::new(),
                timeout: Duration::ZERO,
                reason: String::new(),
            },
            Error::Timeout {
                op: "x",
                timeout: Duration::ZERO,
            },
            Error::AllocationContention { attempts: 3 },
            Error::etcd("x", transient),
            Error::etcd("x", etcd_client::Error::WatchError("broken".into())),
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e:?}");
        }
        let permanent = [
            Error::InvalidConfig(String::new()),
            Error::Tls {
                endpoints: String::new(),
                reason: String::new(),
            },
            Error::Auth {
                user: String::new(),
                reason: String::new(),
            },
            Error::etcd("x", permanent),
            Error::IdSpaceExhausted { id_space: 3 },
            Error::AlreadyRegistered { id: 1 },
            Error::NotRegistered,
            Error::Shutdown,
            Error::Runtime(std::io::Error::other("no threads")),
        ];
        for e in &permanent {
            assert!(!e.is_retryable(), "{e:?}");
        }
    }
}
