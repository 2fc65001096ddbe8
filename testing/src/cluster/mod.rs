//! A running etcd cluster on loopback: its members, their endpoints and health.

mod builder;
mod faults;
mod member;

pub use builder::EtcdClusterBuilder;
pub(crate) use builder::{ADDR_IN_USE, STARTUP_ATTEMPTS};
pub(crate) use member::{log_tail, probe_status};

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::Client;
use tempfile::TempDir;
use tracing::{debug, warn};

use member::{ClusterState, Member};

use crate::{free_port, TestingError, TlsFiles};

/// Default bound for a cluster (or a restarted member) to become healthy.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often health is polled while waiting.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Makes cluster tokens unique within the process.
static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A set of etcd processes forming one cluster on loopback ports, removed on drop.
///
/// Members are numbered from 0 and named `m0`, `m1`, .... See the [crate docs](crate).
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
