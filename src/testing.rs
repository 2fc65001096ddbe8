//! Throw-away etcd clusters for tests, examples and benchmarks.
//!
//! This module is compiled only with the `test-support` feature. It launches real `etcd`
//! processes on loopback ports, each member with its own data directory inside a temporary
//! directory, and tears everything down when the [`EtcdCluster`] is dropped:
//!
//! * [`EtcdCluster::single`] starts a one-member cluster, [`EtcdCluster::three_node`] a
//!   three-member one; [`EtcdCluster::builder`] allows other sizes and extra `etcd` flags
//!   (for example `--auth-token`).
//! * Every constructor waits (bounded) until each member reports a leader, so a test can use
//!   the cluster right away.
//! * [`EtcdClusterBuilder::client_tls`] serves the client URLs over TLS (`https://`), with
//!   or without client certificate authentication (mutual TLS); the harness's own health
//!   checks and [`EtcdCluster::client`] then use TLS too.
//! * Members can be killed ([`EtcdCluster::kill`], SIGKILL), stopped gracefully
//!   ([`EtcdCluster::stop`], SIGTERM) and restarted on the same data directory and ports
//!   ([`EtcdCluster::restart`]), which is what failover tests need.
//!
//! The binary is taken from the `ETCD_BIN` environment variable if it is set, otherwise the
//! first `etcd` on `PATH` (see [`etcd_binary`]). The launch flags work with etcd 3.4 and 3.5.
//! Each member's stdout and stderr go to `<tempdir>/<member>.log`; when a member fails to start
//! the tail of that log is part of the returned [`TestingError`].
//!
//! Environment variables starting with `ETCD_` are removed from the members' environment,
//! because etcd would otherwise read them as configuration (and `ETCD_BIN` would make it warn).
//!
//! This module is Unix-only: it relies on the `kill` command for SIGTERM.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use darkrift_etcd::testing::EtcdCluster;
//!
//! let cluster = EtcdCluster::single().await?;
//! let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await?;
//! client.put("key", "value", None).await?;
//! // Dropping the cluster kills the etcd process and removes its data directory.
//! drop(cluster);
//! # Ok(())
//! # }
//! ```

mod grpc_proxy;
pub use grpc_proxy::{metric_sum, scrape, GrpcProxy};
mod proxy;
pub use proxy::{FaultProxy, Mode as ProxyMode, MAX_CONNECTIONS as PROXY_MAX_CONNECTIONS};

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, StatusResponse, TlsOptions};
use tempfile::TempDir;
use tracing::{debug, info, warn};

/// Environment variable naming the etcd binary to launch.
pub const ETCD_BIN_ENV: &str = "ETCD_BIN";

/// Default bound for a cluster (or a restarted member) to become healthy.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often health is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound for one status request to one member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`EtcdCluster::stop`] waits after SIGTERM before it falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times the builder retries with fresh ports when a port was taken by someone else.
const STARTUP_ATTEMPTS: u32 = 3;
/// How many ephemeral ports [`free_port`] tries before giving up.
const MAX_PORT_ATTEMPTS: usize = 256;
/// How much of a member's log is quoted in errors.
const LOG_TAIL_BYTES: u64 = 4096;
/// The log line etcd prints when a listen port is already taken.
const ADDR_IN_USE: &str = "address already in use";

/// Ports handed out by [`free_port`] in this process; never handed out again.
static HANDED_OUT_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Makes cluster tokens unique within the process.
static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);

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

    /// [`EtcdCluster::restart`] was called on a member that is still running.
    #[error("etcd member {index} is already running")]
    AlreadyRunning {
        /// The member index.
        index: usize,
    },

    /// [`EtcdCluster::wait_healthy`] was called while no member runs.
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
}

impl TestingError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Returns the etcd binary to launch.
///
/// The `ETCD_BIN` environment variable wins if it is set and not empty: either a path, or a
/// bare name that is looked up on `PATH`. Otherwise the first executable `etcd` on `PATH` is
/// used.
///
/// # Errors
///
/// [`TestingError::BinaryNotFound`] if `ETCD_BIN` does not name an executable file, or if it
/// is unset and no `etcd` is on `PATH`.
pub fn etcd_binary() -> Result<PathBuf, TestingError> {
    resolve_binary(
        std::env::var_os(ETCD_BIN_ENV),
        std::env::var_os("PATH").as_deref(),
    )
}

/// [`etcd_binary`] with the environment passed in, so it can be tested without touching the
/// process environment.
fn resolve_binary(
    etcd_bin: Option<OsString>,
    path: Option<&OsStr>,
) -> Result<PathBuf, TestingError> {
    if let Some(value) = etcd_bin.filter(|v| !v.is_empty()) {
        let candidate = PathBuf::from(&value);
        if candidate.components().count() > 1 || candidate.is_absolute() {
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
            return Err(TestingError::BinaryNotFound(format!(
                "{ETCD_BIN_ENV}={} is not an executable file",
                candidate.display()
            )));
        }
        return search_path(&value, path).ok_or_else(|| {
            TestingError::BinaryNotFound(format!(
                "{ETCD_BIN_ENV}={} was not found on PATH",
                candidate.display()
            ))
        });
    }
    search_path(OsStr::new("etcd"), path).ok_or_else(|| {
        TestingError::BinaryNotFound(format!(
            "{ETCD_BIN_ENV} is not set and there is no executable `etcd` on PATH; install etcd \
             (e.g. `bash scripts/setup.sh`) or point {ETCD_BIN_ENV} at an etcd binary"
        ))
    })
}

fn search_path(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let path = path?;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Returns a loopback TCP port that is currently free.
///
/// The port is found by binding `127.0.0.1:0` and closing the listener again. A process-wide
/// set remembers every port handed out, so parallel tests in one process never get the same
/// port, even if the first user has not bound it yet. (Another process can still take the
/// port in between; [`EtcdClusterBuilder::build`] retries with fresh ports when etcd reports
/// `address already in use`.)
///
/// # Errors
///
/// Binding fails, or no not-yet-handed-out port was found after many attempts.
pub fn free_port() -> io::Result<u16> {
    // Held across the bind so two concurrent callers cannot race on the same port.
    let mut handed_out = HANDED_OUT_PORTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for _ in 0..MAX_PORT_ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        drop(listener);
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!(
            "no fresh loopback port after {MAX_PORT_ATTEMPTS} attempts ({} already handed out)",
            handed_out.len()
        ),
    ))
}

/// TLS material for the members' client URLs; see [`EtcdClusterBuilder::client_tls`].
///
/// All paths are PEM files. Peer traffic between members stays plaintext on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate that signed `cert` and, with `client_cert_auth`, the client
    /// certificates etcd accepts (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// Server certificate of every member (`--cert-file`); must be valid for `127.0.0.1`.
    pub cert: PathBuf,
    /// Key of `cert` (`--key-file`).
    pub key: PathBuf,
    /// Require a client certificate signed by `ca` (`--client-cert-auth`): mutual TLS.
    pub client_cert_auth: bool,
    /// Client certificate and key the harness uses for its own health checks and for
    /// [`EtcdCluster::client`]; required when `client_cert_auth` is set.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// etcd client options trusting `ca` and presenting `client_identity`, if any.
    ///
    /// # Errors
    ///
    /// [`TestingError::Io`] if a file cannot be read.
    pub fn connect_options(&self) -> Result<ConnectOptions, TestingError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|err| TestingError::io(format!("reading {}", path.display()), err))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.client_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(ConnectOptions::new().with_tls(tls))
    }

    fn member_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--cert-file".into(),
            self.cert.clone().into(),
            "--key-file".into(),
            self.key.clone().into(),
        ];
        if self.client_cert_auth {
            args.extend([
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                self.ca.clone().into(),
            ]);
        }
        args
    }
}

/// Whether a member joins a new cluster or rejoins one from its data directory.
#[derive(Debug, Clone, Copy)]
enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    fn as_flag(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }
}

/// One etcd member: fixed name, ports and directories; a process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    /// `http` or, with [`EtcdClusterBuilder::client_tls`], `https`.
    client_scheme: &'static str,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// `None` before the first start and after kill/stop. Behind a mutex so `&self` methods can
    /// notice (and reap) a process that exited on its own.
    process: Mutex<Option<Child>>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn process(&self) -> MutexGuard<'_, Option<Child>> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn process_mut(&mut self) -> &mut Option<Child> {
        self.process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `Ok(Some(pid))` while running, `Ok(None)` if never started or killed/stopped on purpose,
    /// and [`TestingError::MemberExited`] if the process exited on its own.
    fn check_running(&self) -> Result<Option<u32>, TestingError> {
        let mut process = self.process();
        let Some(child) = process.as_mut() else {
            return Ok(None);
        };
        match child.try_wait() {
            Ok(None) => Ok(Some(child.id())),
            Ok(Some(status)) => Err(TestingError::MemberExited {
                member: self.name.clone(),
                status: status.to_string(),
                log: self.log_path.clone(),
                log_tail: log_tail(&self.log_path),
            }),
            Err(err) => Err(TestingError::io(
                format!("checking etcd member {} (pid {})", self.name, child.id()),
                err,
            )),
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.check_running(), Ok(Some(_)))
    }
}

/// A set of etcd processes forming one cluster on loopback ports, removed on drop.
///
/// Members are numbered from 0 and named `m0`, `m1`, .... See the [module docs](self).
///
/// Dropping the cluster SIGKILLs every member that still runs, waits for it to exit and
/// removes the temporary directory holding the data directories and logs.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    token: String,
    initial_cluster: String,
    extra_args: Vec<String>,
    tls: Option<TlsFiles>,
    startup_timeout: Duration,
    startup_elapsed: Duration,
    members: Vec<Member>,
    /// Holds every member's data directory and log. Removed when dropped, which happens after
    /// `Drop::drop` has killed the processes.
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts a one-member cluster and waits (at most 30 s) until it serves requests.
    ///
    /// # Errors
    ///
    /// See [`EtcdClusterBuilder::build`].
    pub async fn single() -> Result<Self, TestingError> {
        Self::builder().members(1).build().await
    }

    /// Starts a three-member cluster and waits (at most 30 s) until every member sees a leader.
    ///
    /// # Errors
    ///
    /// See [`EtcdClusterBuilder::build`].
    pub async fn three_node() -> Result<Self, TestingError> {
        Self::builder().members(3).build().await
    }

    /// Returns a builder for other cluster sizes, extra etcd flags or another binary.
    pub fn builder() -> EtcdClusterBuilder {
        EtcdClusterBuilder::default()
    }

    /// Number of members (running or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a built cluster).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members (`http://127.0.0.1:PORT`, `https://` with TLS), in member
    /// order, running or not.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of member `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`, like slice indexing.
    #[must_use]
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// The etcd binary the members run.
    #[must_use]
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The temporary directory holding data directories and logs (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Data directory of member `i`, or `None` if there is no such member.
    #[must_use]
    pub fn data_dir(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(|m| m.data_dir.as_path())
    }

    /// Log file (stdout and stderr) of member `i`, or `None` if there is no such member.
    #[must_use]
    pub fn log_path(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(|m| m.log_path.as_path())
    }

    /// How long the initial start took, from spawning the processes until all were healthy.
    #[must_use]
    pub fn startup_elapsed(&self) -> Duration {
        self.startup_elapsed
    }

    /// OS process id of member `i` while it runs; `None` if it does not run or does not exist.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.check_running().ok().flatten()
    }

    /// Whether member `i` exists and its process is running.
    #[must_use]
    pub fn is_running(&self, i: usize) -> bool {
        self.members.get(i).is_some_and(Member::is_running)
    }

    /// The TLS material the members serve with, if [`EtcdClusterBuilder::client_tls`] was set.
    #[must_use]
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Connects an [`etcd_client::Client`] to all members' endpoints (over TLS, with the
    /// harness's client identity, when the cluster serves TLS).
    ///
    /// # Errors
    ///
    /// [`TestingError::Client`] if the client cannot be created.
    pub async fn client(&self) -> Result<Client, TestingError> {
        let endpoints = self.endpoints();
        let options = self
            .tls
            .as_ref()
            .map(TlsFiles::connect_options)
            .transpose()?;
        Client::connect(&endpoints, options)
            .await
            .map_err(|source| TestingError::Client { endpoints, source })
    }

    /// Waits until every running member answers a status request and reports a leader.
    ///
    /// Members that were killed or stopped on purpose are skipped. Polls every 50 ms, each
    /// request bounded by 2 s, the whole wait by `timeout`.
    ///
    /// # Errors
    ///
    /// * [`TestingError::MemberExited`] as soon as a member process exits on its own.
    /// * [`TestingError::Unhealthy`] when `timeout` passes, with the last problem seen and the
    ///   tails of the unhealthy members' logs.
    /// * [`TestingError::NoRunningMembers`] if no member runs.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), TestingError> {
        let mut running = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if member.check_running()?.is_some() {
                running.push(i);
            }
        }
        if running.is_empty() {
            return Err(TestingError::NoRunningMembers);
        }
        self.wait_members_healthy(&running, timeout).await
    }

    /// Waits until member `i` answers a status request and reports a leader.
    ///
    /// # Errors
    ///
    /// [`TestingError::NoSuchMember`], otherwise as [`EtcdCluster::wait_healthy`] (a member
    /// that is not running counts as exited).
    pub async fn wait_member_healthy(
        &self,
        i: usize,
        timeout: Duration,
    ) -> Result<(), TestingError> {
        self.member(i)?;
        self.wait_members_healthy(&[i], timeout).await
    }

    /// Index of the member that currently is the raft leader, if a running member says it is.
    ///
    /// Asks every running member for its status and returns the first one whose own member id
    /// equals the leader id it reports. `None` while there is no leader (e.g. during an
    /// election) or no member answers.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if !member.is_running() {
                continue;
            }
            match probe_status(&member.client_url(), self.tls.as_ref()).await {
                Ok(status) => {
                    let own_id = status.header().map(etcd_client::ResponseHeader::member_id);
                    if status.leader() != 0 && own_id == Some(status.leader()) {
                        return Some(i);
                    }
                }
                Err(problem) => debug!(member = %member.name, %problem, "status probe failed"),
            }
        }
        None
    }

    /// Kills member `i` with SIGKILL and waits until it has exited.
    ///
    /// Does nothing if the member is not running.
    ///
    /// # Errors
    ///
    /// [`TestingError::NoSuchMember`], or [`TestingError::Io`] if signalling or waiting fails.
    pub fn kill(&mut self, i: usize) -> Result<(), TestingError> {
        let member = self.member_mut(i)?;
        let name = member.name.clone();
        let Some(mut child) = member.process_mut().take() else {
            return Ok(());
        };
        let pid = child.id();
        child.kill().map_err(|err| {
            TestingError::io(format!("SIGKILL etcd member {name} (pid {pid})"), err)
        })?;
        let status = child.wait().map_err(|err| {
            TestingError::io(format!("waiting for etcd member {name} (pid {pid})"), err)
        })?;
        info!(member = %name, pid, %status, "killed etcd member");
        Ok(())
    }

    /// Freezes member `i` with SIGSTOP: its process stays, its sockets stay open and the
    /// kernel keeps accepting connections for it, but it answers nothing (a stalled disk, a
    /// paused VM, a long GC pause). [`EtcdCluster::thaw`] resumes it; dropping the cluster
    /// kills it frozen or not.
    ///
    /// # Errors
    ///
    /// [`TestingError::NoSuchMember`], or [`TestingError::Io`] if the member does not run or
    /// cannot be signalled.
    pub fn freeze(&mut self, i: usize) -> Result<(), TestingError> {
        self.signal(i, "-STOP")
    }

    /// Resumes member `i` after [`EtcdCluster::freeze`] (SIGCONT).
    ///
    /// # Errors
    ///
    /// As [`EtcdCluster::freeze`].
    pub fn thaw(&mut self, i: usize) -> Result<(), TestingError> {
        self.signal(i, "-CONT")
    }

    fn signal(&mut self, i: usize, signal: &str) -> Result<(), TestingError> {
        let name = self.member(i)?.name.clone();
        let pid = self.pid(i).ok_or_else(|| {
            TestingError::io(
                format!("signalling etcd member {name}"),
                io::Error::new(io::ErrorKind::NotFound, "the member does not run"),
            )
        })?;
        // The child is not reaped (it runs), so its pid cannot have been reused.
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|err| TestingError::io(format!("kill {signal} {name} (pid {pid})"), err))?;
        if !status.success() {
            return Err(TestingError::io(
                format!("kill {signal} {name} (pid {pid})"),
                io::Error::other(format!("kill exited with {status}")),
            ));
        }
        info!(member = %name, pid, signal, "signalled etcd member");
        Ok(())
    }

    /// Stops member `i` gracefully: SIGTERM, then waits for it to exit.
    ///
    /// If it has not exited after 10 s it is killed with SIGKILL. Does nothing if the member
    /// is not running. This blocks the calling thread while waiting.
    ///
    /// # Errors
    ///
    /// [`TestingError::NoSuchMember`], or [`TestingError::Io`] if signalling or waiting fails.
    pub fn stop(&mut self, i: usize) -> Result<(), TestingError> {
        let member = self.member_mut(i)?;
        let name = member.name.clone();
        let Some(mut child) = member.process_mut().take() else {
            return Ok(());
        };
        let pid = child.id();
        let io_err = |what: &str, err| {
            TestingError::io(format!("{what} etcd member {name} (pid {pid})"), err)
        };

        if child
            .try_wait()
            .map_err(|err| io_err("checking", err))?
            .is_none()
        {
            // The child is not reaped yet, so its pid cannot have been reused by another process.
            let term = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match term {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    warn!(member = %name, pid, %status, "`kill -TERM` failed; process may have exited");
                }
                Err(err) => warn!(member = %name, pid, %err, "could not run `kill -TERM`"),
            }
        }

        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|err| io_err("waiting for", err))? {
                info!(member = %name, pid, %status, "stopped etcd member");
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(member = %name, pid, "etcd member ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL");
                child.kill().map_err(|err| io_err("SIGKILL", err))?;
                let status = child.wait().map_err(|err| io_err("waiting for", err))?;
                info!(member = %name, pid, %status, "killed etcd member after SIGTERM timeout");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts member `i` again after [`kill`](Self::kill) or [`stop`](Self::stop), with the
    /// same data directory and ports and `--initial-cluster-state existing`, then waits (bounded
    /// by the startup timeout, 30 s by default) until it answers and sees a leader.
    ///
    /// A member whose process exited on its own may be restarted too.
    ///
    /// # Errors
    ///
    /// [`TestingError::NoSuchMember`], [`TestingError::AlreadyRunning`], an error spawning the
    /// process, or the errors of [`EtcdCluster::wait_member_healthy`].
    pub async fn restart(&mut self, i: usize) -> Result<(), TestingError> {
        if self.member(i)?.is_running() {
            return Err(TestingError::AlreadyRunning { index: i });
        }
        let child = self.spawn_member(i, ClusterState::Existing)?;
        let pid = child.id();
        *self.member_mut(i)?.process_mut() = Some(child);
        let started = Instant::now();
        self.wait_members_healthy(&[i], self.startup_timeout)
            .await?;
        info!(member = i, pid, elapsed = ?started.elapsed(), "restarted etcd member");
        Ok(())
    }

    fn member(&self, i: usize) -> Result<&Member, TestingError> {
        let len = self.members.len();
        self.members
            .get(i)
            .ok_or(TestingError::NoSuchMember { index: i, len })
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member, TestingError> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(TestingError::NoSuchMember { index: i, len })
    }

    /// Creates the directory layout and spawns every member; does not wait for health.
    fn launch(
        binary: &Path,
        members: usize,
        extra_args: &[String],
        tls: Option<&TlsFiles>,
        startup_timeout: Duration,
    ) -> Result<Self, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("darkrift-etcd-")
            .tempdir()
            .map_err(|err| TestingError::io("creating temporary directory for etcd", err))?;
        let mut planned = Vec::with_capacity(members);
        for n in 0..members {
            let name = format!("m{n}");
            let port = |what: &str| {
                free_port().map_err(|err| {
                    TestingError::io(format!("allocating {what} port for {name}"), err)
                })
            };
            planned.push(Member {
                client_scheme: if tls.is_some() { "https" } else { "http" },
                client_port: port("client")?,
                peer_port: port("peer")?,
                // Created by etcd itself, with the 0700 permissions it insists on.
                data_dir: dir.path().join(&name),
                log_path: dir.path().join(format!("{name}.log")),
                process: Mutex::new(None),
                name,
            });
        }
        let initial_cluster = planned
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let token = format!(
            "darkrift-test-{}-{}-{nanos}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed)
        );

        // Built before spawning so that an error part-way drops (and kills) what was started.
        let mut cluster = Self {
            binary: binary.to_path_buf(),
            token,
            initial_cluster,
            extra_args: extra_args.to_vec(),
            tls: tls.cloned(),
            startup_timeout,
            startup_elapsed: Duration::ZERO,
            members: planned,
            dir,
        };
        for i in 0..members {
            let child = cluster.spawn_member(i, ClusterState::New)?;
            *cluster.member_mut(i)?.process_mut() = Some(child);
        }
        Ok(cluster)
    }

    fn spawn_member(&self, i: usize, state: ClusterState) -> Result<Child, TestingError> {
        let member = self.member(i)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(|err| {
                TestingError::io(format!("opening {}", member.log_path.display()), err)
            })?;
        // A marker line, so a restarted member's log shows where each run begins.
        writeln!(
            log,
            "=== darkrift-etcd testing: starting {} (initial-cluster-state {}) ===",
            member.name,
            state.as_flag()
        )
        .map_err(|err| TestingError::io(format!("writing {}", member.log_path.display()), err))?;
        let log_err = log.try_clone().map_err(|err| {
            TestingError::io(
                format!("duplicating handle of {}", member.log_path.display()),
                err,
            )
        })?;

        let client_url = member.client_url();
        let peer_url = member.peer_url();
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state.as_flag()])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // zap is the only logger of 3.5 and an option of 3.4 (whose default, capnslog,
            // prints a deprecation warning); both accept `--log-level`.
            .args(["--logger", "zap", "--log-level", "error"])
            .args(self.tls.iter().flat_map(TlsFiles::member_args))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"ETCD_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().map_err(|err| {
            TestingError::io(
                format!(
                    "spawning {} for member {}",
                    self.binary.display(),
                    member.name
                ),
                err,
            )
        })?;
        debug!(member = %member.name, pid = child.id(), client = %client_url, peer = %peer_url, state = state.as_flag(), "spawned etcd member");
        Ok(child)
    }

    async fn wait_members_healthy(
        &self,
        indices: &[usize],
        timeout: Duration,
    ) -> Result<(), TestingError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut pending = indices.to_vec();
        let mut last_problem = String::from("no status request answered yet");
        loop {
            let mut still_pending = Vec::new();
            for &i in &pending {
                let member = self.member(i)?;
                if member.check_running()?.is_none() {
                    return Err(TestingError::MemberExited {
                        member: member.name.clone(),
                        status: "not running (killed or stopped)".to_owned(),
                        log: member.log_path.clone(),
                        log_tail: log_tail(&member.log_path),
                    });
                }
                match probe_status(&member.client_url(), self.tls.as_ref()).await {
                    Ok(status) if status.leader() != 0 => {}
                    Ok(_) => {
                        last_problem = format!("{} answers but has no leader", member.name);
                        still_pending.push(i);
                    }
                    Err(problem) => {
                        last_problem = format!("{}: {problem}", member.name);
                        still_pending.push(i);
                    }
                }
            }
            pending = still_pending;
            if pending.is_empty() {
                debug!(members = ?indices, elapsed = ?started.elapsed(), "etcd members healthy");
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .filter_map(|&i| self.members.get(i))
                    .map(|m| m.name.as_str())
                    .collect();
                let log_tails = pending
                    .iter()
                    .filter_map(|&i| self.members.get(i))
                    .map(|m| {
                        format!(
                            "--- tail of {}:\n{}",
                            m.log_path.display(),
                            log_tail(&m.log_path)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(TestingError::Unhealthy {
                    members: names.join(", "),
                    timeout,
                    detail: last_problem,
                    log_tails,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn any_log_contains(&self, needle: &str) -> bool {
        self.members.iter().any(|m| {
            std::fs::read(&m.log_path)
                .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let name = member.name.clone();
            let Some(mut child) = member.process_mut().take() else {
                continue;
            };
            let pid = child.id();
            // Succeeds (and does nothing) if the process already exited.
            if let Err(err) = child.kill() {
                warn!(member = %name, pid, %err, "could not SIGKILL etcd member");
            }
            match child.wait() {
                Ok(status) => debug!(member = %name, pid, %status, "etcd member gone"),
                Err(err) => warn!(member = %name, pid, %err, "could not wait for etcd member"),
            }
        }
        debug!(dir = %self.dir.path().display(), "removing etcd cluster directory");
    }
}

/// Builder for an [`EtcdCluster`]; get one from [`EtcdCluster::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), darkrift_etcd::testing::TestingError> {
/// use darkrift_etcd::testing::EtcdCluster;
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

/// One bounded status request to one member.
async fn probe_status(endpoint: &str, tls: Option<&TlsFiles>) -> Result<StatusResponse, String> {
    let base = match tls {
        Some(tls) => tls.connect_options().map_err(|err| err.to_string())?,
        None => ConnectOptions::new(),
    };
    let options = base
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT);
    let request = async {
        let mut client = Client::connect([endpoint], Some(options)).await?;
        client.status().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, request).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("status request timed out after {PROBE_TIMEOUT:?}")),
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log file, starting at a line boundary.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > 0 {
            if let Some(newline) = text.find('\n') {
                text.drain(..=newline);
            }
        }
        Ok(text)
    };
    read().unwrap_or_else(|err| format!("<could not read {}: {err}>", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn fake_executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write fake binary");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod fake binary");
        path
    }

    #[test]
    fn free_port_never_repeats() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let port = free_port().expect("free port");
            assert_ne!(port, 0);
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn free_port_never_repeats_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..50)
                        .map(|_| free_port().expect("free port"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for handle in handles {
            for port in handle.join().expect("thread") {
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }

    #[test]
    fn etcd_bin_path_wins_over_path() {
        let dir = TempDir::new().expect("tempdir");
        let on_path = fake_executable(dir.path(), "etcd");
        let other = fake_executable(dir.path(), "etcd-3.4");
        let path = OsString::from(dir.path());
        let found = resolve_binary(Some(other.clone().into()), Some(&path)).expect("resolve");
        assert_eq!(found, other);
        let found = resolve_binary(None, Some(&path)).expect("resolve");
        assert_eq!(found, on_path);
        // Empty means unset.
        let found = resolve_binary(Some(OsString::new()), Some(&path)).expect("resolve");
        assert_eq!(found, on_path);
        // A bare name is looked up on PATH.
        let found = resolve_binary(Some("etcd-3.4".into()), Some(&path)).expect("resolve");
        assert_eq!(found, other);
    }

    #[test]
    fn missing_binaries_are_reported() {
        let dir = TempDir::new().expect("tempdir");
        let not_executable = dir.path().join("etcd");
        std::fs::write(&not_executable, "").expect("write");
        let path = OsString::from(dir.path());
        let err = resolve_binary(None, Some(&path)).expect_err("not executable");
        assert!(matches!(err, TestingError::BinaryNotFound(_)), "{err}");
        let err =
            resolve_binary(Some(dir.path().join("nope").into()), Some(&path)).expect_err("missing");
        assert!(err.to_string().contains("ETCD_BIN="), "{err}");
        let err = resolve_binary(None, None).expect_err("no PATH");
        assert!(matches!(err, TestingError::BinaryNotFound(_)), "{err}");
    }

    #[test]
    fn log_tail_starts_at_a_line() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("log");
        let line = "x".repeat(99);
        let text: String = format!("{line}\n").repeat(100);
        std::fs::write(&path, &text).expect("write");
        let tail = log_tail(&path);
        assert!(tail.len() <= usize::try_from(LOG_TAIL_BYTES).unwrap());
        assert!(tail.lines().all(|l| l == line), "partial line in tail");
        assert!(log_tail(&dir.path().join("missing")).starts_with("<could not read"));
    }

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
