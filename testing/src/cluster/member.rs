//! One etcd member (name, ports, directories, its process while it runs), the bounded status
//! probe and the log tail quoted in errors.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, StatusResponse};

use crate::{TestingError, TlsFiles};

/// Bound for one status request to one member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of a member's log is quoted in errors.
const LOG_TAIL_BYTES: u64 = 4096;

/// Whether a member joins a new cluster or rejoins one from its data directory.
#[derive(Debug, Clone, Copy)]
pub(super) enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    pub(super) fn as_flag(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }
}

/// One etcd member: fixed name, ports and directories; a process while it runs.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) name: String,
    /// `http` or, with [`EtcdClusterBuilder::client_tls`], `https`.
    pub(super) client_scheme: &'static str,
    pub(super) client_port: u16,
    pub(super) peer_port: u16,
    pub(super) data_dir: PathBuf,
    pub(super) log_path: PathBuf,
    /// `None` before the first start and after kill/stop. Behind a mutex so `&self` methods can
    /// notice (and reap) a process that exited on its own.
    pub(super) process: Mutex<Option<Child>>,
}

impl Member {
    pub(super) fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    pub(super) fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub(super) fn process(&self) -> MutexGuard<'_, Option<Child>> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn process_mut(&mut self) -> &mut Option<Child> {
        self.process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `Ok(Some(pid))` while running, `Ok(None)` if never started or killed/stopped on purpose,
    /// and [`TestingError::MemberExited`] if the process exited on its own.
    pub(super) fn check_running(&self) -> Result<Option<u32>, TestingError> {
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

    pub(super) fn is_running(&self) -> bool {
        matches!(self.check_running(), Ok(Some(_)))
    }
}

/// One bounded status request to one member.
pub(crate) async fn probe_status(
    endpoint: &str,
    tls: Option<&TlsFiles>,
) -> Result<StatusResponse, String> {
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
pub(crate) fn log_tail(path: &Path) -> String {
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
    use tempfile::TempDir;

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
}
