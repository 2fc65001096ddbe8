//! etcd's own gRPC proxy (`etcd grpc-proxy start`, shipped in the etcd binary) in front of an
//! [`EtcdCluster`], for tests and benchmarks of the registry behind a proxy.
//!
//! The proxy coalesces identical watches (thousands of clients watching one prefix cost etcd
//! one watch per proxy) and keeps leases alive on its clients' behalf. A [`GrpcProxy`] runs
//! one proxy process on a free loopback port with its own temporary data directory and log
//! file, and a second free port for its `/metrics`. Proxies chain: a proxy's upstream can be
//! another proxy ([`GrpcProxy::start_upstream`]). The process is killed when the value is
//! dropped; [`GrpcProxy::kill`] and [`GrpcProxy::restart`] (same port) test proxy failures.
//!
//! Plaintext only: a cluster serving TLS is refused ([`TestingError::InvalidConfig`]).
//!
//! [`scrape`] and [`metric_sum`] read a Prometheus text endpoint (etcd serves one at
//! `<client URL>/metrics`, the proxy at [`GrpcProxy::metrics_url`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), darkrift_etcd_testing::TestingError> {
//! use darkrift_etcd_testing::{EtcdCluster, GrpcProxy};
//!
//! let etcd = EtcdCluster::single().await?;
//! let proxy = GrpcProxy::start(&etcd).await?;
//! // Point clients (a `ConnectorConfig`'s endpoints) at `proxy.endpoint()`.
//! let endpoints = vec![proxy.endpoint()];
//! # let _ = endpoints;
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::cluster::{
    log_tail, probe_status, ADDR_IN_USE, DEFAULT_STARTUP_TIMEOUT, POLL_INTERVAL, STARTUP_ATTEMPTS,
};
use crate::{free_port, EtcdCluster, TestingError};

/// Bound on one `/metrics` scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One `etcd grpc-proxy start` process on loopback, removed on drop.
#[derive(Debug)]
pub struct GrpcProxy {
    binary: PathBuf,
    upstream: Vec<String>,
    port: u16,
    metrics_port: u16,
    log_path: PathBuf,
    process: Option<Child>,
    /// Holds the data directory and the log; removed after `Drop::drop` killed the process.
    dir: TempDir,
}

impl GrpcProxy {
    /// Starts a proxy in front of every member of `cluster` (same etcd binary) and waits until
    /// a status request through it is answered by a member that sees a leader.
    ///
    /// # Errors
    ///
    /// [`TestingError::InvalidConfig`] if the cluster serves TLS; otherwise as
    /// [`GrpcProxy::start_upstream`].
    pub async fn start(cluster: &EtcdCluster) -> Result<Self, TestingError> {
        if cluster.tls().is_some() {
            return Err(TestingError::InvalidConfig(
                "the gRPC proxy launcher is plaintext only".into(),
            ));
        }
        Self::start_upstream(cluster.binary(), cluster.endpoints()).await
    }

    /// Starts a proxy of `binary` in front of `upstream` (etcd members or other proxies,
    /// `http://127.0.0.1:PORT`) and waits (at most 30 s) until it answers.
    ///
    /// # Errors
    ///
    /// * [`TestingError::Io`] if the directory, a port or the process cannot be created.
    /// * [`TestingError::MemberExited`] (member `grpc-proxy`) if the process exits, or
    ///   [`TestingError::Unhealthy`] if it does not answer in time; both quote its log.
    pub async fn start_upstream(
        binary: &Path,
        upstream: Vec<String>,
    ) -> Result<Self, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("darkrift-grpc-proxy-")
            .tempdir()
            .map_err(|err| TestingError::io("creating temporary directory for grpc-proxy", err))?;
        let mut proxy = GrpcProxy {
            binary: binary.to_path_buf(),
            upstream,
            port: 0,
            metrics_port: 0,
            log_path: dir.path().join("grpc-proxy.log"),
            process: None,
            dir,
        };
        let mut attempt = 1;
        loop {
            let port = |what: &str| {
                free_port().map_err(|err| {
                    TestingError::io(format!("allocating the grpc-proxy {what} port"), err)
                })
            };
            proxy.port = port("client")?;
            proxy.metrics_port = port("metrics")?;
            match proxy.spawn_and_wait().await {
                Ok(()) => return Ok(proxy),
                Err(err) if attempt < STARTUP_ATTEMPTS && proxy.log_contains(ADDR_IN_USE) => {
                    warn!(attempt, %err, "grpc-proxy port taken by another process; retrying");
                    proxy.kill()?;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts `n` proxies, each in front of every member of `cluster`.
    ///
    /// # Errors
    ///
    /// As [`GrpcProxy::start`]; the proxies already started are stopped.
    pub async fn start_n(cluster: &EtcdCluster, n: usize) -> Result<Vec<Self>, TestingError> {
        let mut proxies = Vec::with_capacity(n);
        for _ in 0..n {
            proxies.push(Self::start(cluster).await?);
        }
        Ok(proxies)
    }

    /// The client URL clients connect to (`http://127.0.0.1:PORT`).
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's own Prometheus endpoint (`http://127.0.0.1:PORT/metrics`).
    #[must_use]
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// The endpoints this proxy forwards to.
    #[must_use]
    pub fn upstream(&self) -> &[String] {
        &self.upstream
    }

    /// The proxy's log file (stdout and stderr, appended across restarts).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// OS process id while the proxy runs; `None` after [`GrpcProxy::kill`] or if it exited.
    #[must_use]
    pub fn pid(&mut self) -> Option<u32> {
        let child = self.process.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// Kills the proxy (SIGKILL) and waits until it has exited; nothing if it does not run.
    /// Every client stream through it breaks at once.
    ///
    /// # Errors
    ///
    /// [`TestingError::Io`] if signalling or waiting fails.
    pub fn kill(&mut self) -> Result<(), TestingError> {
        let Some(mut child) = self.process.take() else {
            return Ok(());
        };
        let pid = child.id();
        child
            .kill()
            .map_err(|err| TestingError::io(format!("SIGKILL grpc-proxy (pid {pid})"), err))?;
        let status = child
            .wait()
            .map_err(|err| TestingError::io(format!("waiting for grpc-proxy (pid {pid})"), err))?;
        info!(pid, %status, "killed grpc-proxy");
        Ok(())
    }

    /// Starts the proxy again on the same ports after [`GrpcProxy::kill`] and waits until it
    /// answers.
    ///
    /// # Errors
    ///
    /// As [`GrpcProxy::start_upstream`] (a port taken meanwhile is not retried: clients know
    /// this one).
    pub async fn restart(&mut self) -> Result<(), TestingError> {
        self.kill()?;
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> Result<(), TestingError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| TestingError::io(format!("opening {}", self.log_path.display()), err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| TestingError::io("cloning the grpc-proxy log handle", err))?;
        let listen = format!("127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.binary);
        command
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={}", self.upstream.join(",")))
            .arg(format!("--listen-addr={listen}"))
            .arg(format!("--advertise-client-url={listen}"))
            .arg(format!(
                "--metrics-addr=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // etcd reads ETCD_* variables as flags (ETCD_BIN would make it warn).
            .env_clear()
            .envs(
                std::env::vars_os()
                    .filter(|(key, _)| !key.as_encoded_bytes().starts_with(b"ETCD_")),
            );
        let child = command.spawn().map_err(|err| {
            TestingError::io(
                format!("spawning {} grpc-proxy", self.binary.display()),
                err,
            )
        })?;
        debug!(pid = child.id(), %listen, upstream = ?self.upstream, "spawned grpc-proxy");
        self.process = Some(child);
        self.wait_ready(DEFAULT_STARTUP_TIMEOUT).await
    }

    /// Polls a status request through the proxy until a member behind it reports a leader.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), TestingError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.process.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.process = None;
                    return Err(TestingError::MemberExited {
                        member: "grpc-proxy".into(),
                        status: status.to_string(),
                        log: self.log_path.clone(),
                        log_tail: log_tail(&self.log_path),
                    });
                }
            }
            let problem = match probe_status(&self.endpoint(), None).await {
                Ok(status) if status.leader() != 0 => {
                    debug!(endpoint = %self.endpoint(), elapsed = ?started.elapsed(), "grpc-proxy ready");
                    return Ok(());
                }
                Ok(_) => "answers but its members have no leader".into(),
                Err(problem) => problem,
            };
            if started.elapsed() >= timeout {
                return Err(TestingError::Unhealthy {
                    members: "grpc-proxy".into(),
                    timeout,
                    detail: problem,
                    log_tails: log_tail(&self.log_path),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn log_contains(&self, needle: &str) -> bool {
        std::fs::read(&self.log_path)
            .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        if let Err(err) = self.kill() {
            warn!(%err, "could not kill grpc-proxy");
        }
    }
}

/// Reads a Prometheus text endpoint (`http://127.0.0.1:PORT/metrics`) with one plain
/// HTTP/1.0 request, bounded by 5 s.
///
/// # Errors
///
/// A URL that is not `http://host:port/path`, a connection or read failure, a timeout, or a
/// status other than 200.
pub async fn scrape(url: &str) -> io::Result<String> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("not http://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&bytes).into_owned())
    };
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, request)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{url}: no answer")))??;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no HTTP header"))?;
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::other(format!(
            "{url}: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(body.to_owned())
}

/// The sum of every sample of metric `name` (whatever its labels) whose label set contains
/// every `label="value"` pair of `labels`, in a Prometheus text exposition; 0 if none.
#[must_use]
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_set) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|(k, v)| label_set.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_matching_samples() {
        let text = "# HELP x\n# TYPE x counter\n\
                    grpc_server_started_total{grpc_method=\"Watch\",grpc_type=\"bidi_stream\"} 3\n\
                    grpc_server_started_total{grpc_method=\"Range\",grpc_type=\"unary\"} 5\n\
                    process_cpu_seconds_total 1.5\n\
                    process_cpu_seconds_total_other 9\n";
        assert!((metric_sum(text, "process_cpu_seconds_total", &[]) - 1.5).abs() < 1e-9);
        assert!((metric_sum(text, "grpc_server_started_total", &[]) - 8.0).abs() < 1e-9);
        let watch = metric_sum(
            text,
            "grpc_server_started_total",
            &[("grpc_method", "Watch")],
        );
        assert!((watch - 3.0).abs() < 1e-9);
        assert!(metric_sum(text, "missing", &[]).abs() < 1e-9);
    }
}
