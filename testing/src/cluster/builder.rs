//! The cluster builder: size, extra flags, TLS, binary; starts the members and retries on
//! fresh ports when another process took one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{EtcdCluster, DEFAULT_STARTUP_TIMEOUT};
use crate::{etcd_binary, TestingError, TlsFiles};

/// How many times the builder retries with fresh ports when a port was taken by someone else.
pub(crate) const STARTUP_ATTEMPTS: u32 = 3;
/// The log line etcd prints when a listen port is already taken.
pub(crate) const ADDR_IN_USE: &str = "address already in use";

/// Builder for an [`EtcdCluster`]; get one from [`EtcdCluster::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), darkrift_etcd_testing::TestingError> {
/// use darkrift_etcd_testing::EtcdCluster;
///
/// let cluster = EtcdCluster::builder()
///     .members(3)
///     .extra_args(["--auth-token", "simple"])
///     .build()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct EtcdClusterBuilder {
    members: usize,
    extra_args: Vec<String>,
    tls: Option<TlsFiles>,
    startup_timeout: Duration,
    binary: Option<PathBuf>,
}

impl Default for EtcdClusterBuilder {
    fn default() -> Self {
        Self {
            members: 1,
            extra_args: Vec::new(),
            tls: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            binary: None,
        }
    }
}

impl EtcdClusterBuilder {
    /// Number of members (default 1; must be at least 1).
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// Appends flags passed to every member after the harness's own flags (a flag given twice
    /// takes the later value in etcd, so these can override the defaults).
    pub fn extra_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Appends one flag (or flag value); see [`extra_args`](Self::extra_args).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serves the client URLs over TLS (`https://127.0.0.1:PORT`) with these files; with
    /// `client_cert_auth` etcd also requires a client certificate (mutual TLS).
    pub fn client_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bound for the cluster to become healthy, also used by [`EtcdCluster::restart`]
    /// (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Runs this binary instead of the one [`etcd_binary`] finds.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Starts the members and waits until every one of them sees a leader.
    ///
    /// If a member fails because one of its ports was taken in the meantime (by another
    /// process), the cluster is torn down and started again on fresh ports, up to 3 times.
    ///
    /// # Errors
    ///
    /// * [`TestingError::InvalidConfig`] for zero members.
    /// * [`TestingError::BinaryNotFound`] if no binary was given and none is found.
    /// * [`TestingError::Io`] if the directory, a port or a process cannot be created.
    /// * [`TestingError::MemberExited`] or [`TestingError::Unhealthy`] if etcd does not come up,
    ///   with the tail of the member's log.
    pub async fn build(self) -> Result<EtcdCluster, TestingError> {
        if self.members == 0 {
            return Err(TestingError::InvalidConfig(
                "a cluster needs at least one member".into(),
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_auth && tls.client_identity.is_none() {
                return Err(TestingError::InvalidConfig(
                    "client_cert_auth needs a client_identity for the harness's health checks"
                        .into(),
                ));
            }
        }
        let binary = match self.binary {
            Some(binary) => binary,
            None => etcd_binary()?,
        };
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let mut cluster = EtcdCluster::launch(
                &binary,
                self.members,
                &self.extra_args,
                self.tls.as_ref(),
                self.startup_timeout,
            )?;
            match cluster.wait_healthy(self.startup_timeout).await {
                Ok(()) => {
                    cluster.startup_elapsed = started.elapsed();
                    info!(
                        binary = %binary.display(),
                        members = self.members,
                        endpoints = ?cluster.endpoints(),
                        elapsed = ?cluster.startup_elapsed,
                        "etcd cluster ready"
                    );
                    return Ok(cluster);
                }
                Err(err) if attempt < STARTUP_ATTEMPTS && cluster.any_log_contains(ADDR_IN_USE) => {
                    warn!(attempt, %err, "etcd port taken by another process; retrying on fresh ports");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_members_is_rejected() {
        let err = EtcdCluster::builder()
            .members(0)
            .binary("/nonexistent/etcd")
            .build()
            .await
            .expect_err("zero members");
        assert!(matches!(err, TestingError::InvalidConfig(_)), "{err}");
    }
}
