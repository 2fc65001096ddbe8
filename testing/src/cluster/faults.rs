//! Faults injected into a running cluster: kill, freeze and thaw, stop, restart.

use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::member::ClusterState;
use super::EtcdCluster;
use crate::TestingError;

/// How long [`EtcdCluster::stop`] waits after SIGTERM before it falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl EtcdCluster {
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
}
