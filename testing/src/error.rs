//! The harness's one error type: what failed, with the member's log tail where etcd itself
//! failed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the test harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// No usable etcd binary was found.
    #[error("no etcd binary found: {0}")]
    BinaryNotFound(String),

    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A member process exited while the harness expected it to run.
    #[error("etcd member {member} exited unexpectedly ({status}); tail of {}:\n{log_tail}", log.display())]
    MemberExited {
        /// Name of the member (`m0`, `m1`, ...).
        member: String,
        /// Exit status as reported by the OS.
        status: String,
        /// Path of the member's log file.
        log: PathBuf,
        /// Last lines of the member's log file.
        log_tail: String,
    },

    /// Members did not become healthy within the allowed time.
    #[error("etcd members [{members}] not healthy within {timeout:?}: {detail}\n{log_tails}")]
    Unhealthy {
        /// Names of the members that were still unhealthy.
        members: String,
        /// The bound that was exceeded.
        timeout: Duration,
        /// The last problem observed.
        detail: String,
        /// Last lines of the unhealthy members' logs.
        log_tails: String,
    },

    /// A member index was out of range.
    #[error("no etcd member with index {index} (the cluster has {len})")]
    NoSuchMember {
        /// The index that was asked for.
        index: usize,
        /// The number of members.
        len: usize,
    },

    /// [`EtcdCluster::restart`](crate::EtcdCluster::restart) was called on a member that is
    /// still running.
    #[error("etcd member {index} is already running")]
    AlreadyRunning {
        /// The member index.
        index: usize,
    },

    /// [`EtcdCluster::wait_healthy`](crate::EtcdCluster::wait_healthy) was called while no
    /// member runs.
    #[error("no etcd member is running")]
    NoRunningMembers,

    /// The builder was given an unusable configuration.
    #[error("invalid etcd cluster configuration: {0}")]
    InvalidConfig(String),

    /// Creating an etcd client failed.
    #[error("etcd client for {endpoints:?}: {source}")]
    Client {
        /// The endpoints the client was built for.
        endpoints: Vec<String>,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },

    /// A request to etcd failed, or its answer was not what the harness needs (a history
    /// replay that hit a compaction, say).
    #[error("etcd: {0}")]
    Etcd(String),

    /// etcd did not answer within the harness's bound.
    #[error("{what}: no answer within {bound:?}")]
    Timeout {
        /// What the harness was waiting for.
        what: &'static str,
        /// The bound that was exceeded.
        bound: Duration,
    },
}

impl TestingError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
