//! The harness of `cli/tests/darkrift.rs`: real DarkRift 2.11.0 servers (mono, the plugin in
//! `darkrift/`) registered through real `darkrift-etcd agent` processes on a real etcd.
//!
//! * [`darkrift`] builds the plugin and the host once per test binary run (`darkrift/build.sh`,
//!   DarkRift from `DARKRIFT_DIR` or from the fixture `shared/third_party/darkrift` found by
//!   walking up from this crate). Without mono or DarkRift it returns `None` after printing why
//!   (the test then skips), except under `CI=true`, where it panics: CI must run these tests.
//! * [`Proc`] is a process whose stdout and stderr lines are kept with the instant they were
//!   read; tests await lines ([`Log::wait`]) with a bound instead of sleeping. Dropping a
//!   [`Proc`] SIGKILLs it by its pid and reaps it; a panicking test prints every process's log.
//! * [`Agent`] and [`Server`] start the agent and a DarkRift server (`DarkRiftHost.exe` with
//!   `Server.config` and `Cluster.config`, built by `build.sh` from `darkrift/config/`).
#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use darkrift_etcd_testing::{free_port, EtcdCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The CLI binary (the agent is its `agent` command).
pub const CLI: &str = env!("CARGO_BIN_EXE_darkrift-etcd");
/// The lease TTL of every registration in these tests.
pub const TTL: Duration = Duration::from_secs(5);
/// Bound for one process to start (mono's start-up on two busy cores).
pub const START: Duration = Duration::from_secs(60);
/// Bound for a cluster event (a join, a leave, a link) that needs no lease to expire.
pub const EVENT: Duration = Duration::from_secs(30);

// ---- environment and build -------------------------------------------------------------------

/// What the build produced: `DarkRiftHost.exe`, `Plugins/DarkRift.Etcd.dll`, DarkRift's DLLs
/// and the configs, in one directory.
#[derive(Debug)]
pub struct Built {
    pub dir: PathBuf,
}

static BUILT: OnceLock<Option<Built>> = OnceLock::new();

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// `shared/third_party/darkrift` in this directory or one above it (CI has it at the same
/// place relative to the repository as the development machines), or `$DARKRIFT_SRC`.
fn darkrift_source() -> Option<PathBuf> {
    if let Some(src) = std::env::var_os("DARKRIFT_SRC") {
        let src = PathBuf::from(src);
        if src.join("build.sh").is_file() {
            return Some(src);
        }
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join("shared/third_party/darkrift");
        if candidate.join("build.sh").is_file() {
            return Some(candidate);
        }
        dir = d.parent();
    }
    None
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (prints why, returns `None`) when mono or DarkRift is missing, except under
/// `CI=true`, where that is a failure.
fn unavailable(why: &str) -> Option<Built> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the DarkRift tests cannot run: {why} (CI=true: they must run in CI; see darkrift/README.md)"
    );
    eprintln!("darkrift tests SKIPPED: {why} (see darkrift/README.md, \"Tests\")");
    None
}

/// The built plugin and host, once per test binary run; `None`: skip (see [`unavailable`]).
///
/// # Panics
/// If the build fails (that is a failure, not a skip).
pub fn darkrift() -> Option<&'static Built> {
    BUILT.get_or_init(build).as_ref()
}

fn build() -> Option<Built> {
    if !works("mono", &["--version"]) || !works("mcs", &["--version"]) {
        return unavailable("mono or mcs not found (apt-get install mono-devel)");
    }
    let darkrift_dir = std::env::var_os("DARKRIFT_DIR").map(PathBuf::from);
    let source = darkrift_source();
    if let Some(dir) = &darkrift_dir {
        assert!(
            dir.join("DarkRift.Server.dll").is_file(),
            "DARKRIFT_DIR={} has no DarkRift.Server.dll",
            dir.display()
        );
    } else if source.is_none() {
        return unavailable(
            "neither DARKRIFT_DIR (DarkRift's DLLs) nor the DarkRift source \
             (shared/third_party/darkrift above the repository) exists",
        );
    }
    let out = build_dir();
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("darkrift/build.sh")).arg(&out);
    if let Some(dir) = &darkrift_dir {
        cmd.arg(dir);
    }
    if let Some(src) = &source {
        cmd.env("DARKRIFT_SRC", src);
    }
    let output = cmd.output().expect("run darkrift/build.sh");
    assert!(
        output.status.success(),
        "darkrift/build.sh failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "darkrift: plugin and host built in {} in {:.1} s ({})",
        out.display(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Some(Built { dir: out })
}

/// `$CARGO_TARGET_TMPDIR/darkrift-<pid>`: statics are never dropped, so instead of a
/// `TempDir` the build goes to a directory named after this process, and the directories of
/// earlier runs whose process is gone are removed first.
fn build_dir() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("darkrift-") {
                if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let dir = base.join(format!("darkrift-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

// ---- logs and processes ----------------------------------------------------------------------

/// One line a process printed, with when the harness read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub index: usize,
    pub at: Instant,
    pub text: String,
}

/// The lines of one process (stdout and stderr in arrival order), awaitable.
#[derive(Debug)]
pub struct Log {
    pub name: String,
    lines: Mutex<Vec<Line>>,
    /// How many of its sources (pipes, streams) have ended, and how many it has.
    closed: Mutex<usize>,
    sources: usize,
    notify: Notify,
}

impl Log {
    pub fn new(name: &str, sources: usize) -> Arc<Log> {
        Arc::new(Log {
            name: name.to_owned(),
            lines: Mutex::new(Vec::new()),
            closed: Mutex::new(0),
            sources,
            notify: Notify::new(),
        })
    }

    /// Whether every source has ended (the process exited, the stream closed): no more lines.
    pub fn ended(&self) -> bool {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) >= self.sources
    }

    pub fn push(&self, text: String) {
        {
            let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            let index = lines.len();
            lines.push(Line {
                index,
                at: Instant::now(),
                text,
            });
        }
        self.notify.notify_waiters();
    }

    fn close_one(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.notify.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first line at or after `from` that contains `needle`.
    pub fn find(&self, from: usize, needle: &str) -> Option<Line> {
        self.find_by(from, |t| t.contains(needle))
    }

    pub fn find_by(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<Line> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().skip(from).find(|l| pred(&l.text)).cloned()
    }

    /// Every line containing `needle`.
    pub fn all(&self, needle: &str) -> Vec<Line> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines
            .iter()
            .filter(|l| l.text.contains(needle))
            .cloned()
            .collect()
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for l in lines.iter().skip(lines.len().saturating_sub(n)) {
            let _ = writeln!(out, "  [{}] {}", self.name, l.text);
        }
        out
    }

    /// Awaits the first line at or after `from` containing `needle`, for at most `bound`.
    ///
    /// # Panics
    /// After `bound`, with the log's tail.
    pub async fn wait(&self, from: usize, needle: &str, bound: Duration) -> Line {
        self.wait_by(from, needle, bound, |t| t.contains(needle))
            .await
    }

    /// Like [`Log::wait`] with a predicate; `what` names it in the failure message.
    pub async fn wait_by(
        &self,
        from: usize,
        what: &str,
        bound: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Line {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(line) = self.find_by(from, &pred) {
                return line;
            }
            assert!(
                !self.ended(),
                "{}: ended without a line with {what:?}; its last lines:\n{}",
                self.name,
                self.tail(80)
            );
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{}: no line with {what:?} within {bound:?}; its last lines:\n{}",
                self.name,
                self.tail(80)
            );
        }
    }
}

/// A child process, killed (`SIGKILL`) by its pid and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    pub log: Arc<Log>,
    child: Child,
    /// Where its lines are also written (the test's temporary directory).
    pub file: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with piped stdout and stderr (stdin `/dev/null` unless set), each read by
    /// a thread into the log and into `dir/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = Log::new(name, 2);
        let file = dir.join(format!("{name}.log"));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        let sink = Arc::new(Mutex::new(
            std::fs::File::create(&file).expect("create the process's log file"),
        ));
        reader(out, Arc::clone(&log), Arc::clone(&sink));
        reader(err, Arc::clone(&log), sink);
        Proc { log, child, file }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) with the `kill` program, by pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Whether the process still runs (not exited; a stopped process runs).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Awaits the process's exit (its output closed and it was reaped), for at most `bound`.
    pub async fn exited(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + bound;
        // Both pipes close when the process (and every child holding them) has exited.
        loop {
            let notified = self.log.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *self
                .log
                .closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                >= 2
            {
                break;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{} did not exit within {bound:?}; its last lines:\n{}",
                self.log.name,
                self.log.tail(40)
            );
        }
        // The pipes are closed: the exit status is there or nearly so (a zombie not reaped yet).
        self.child.wait().expect("wait for the process")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}, log {}) last lines:\n{}",
                self.log.name,
                self.child.id(),
                self.file.display(),
                self.log.tail(120)
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            // A stopped process dies of SIGKILL too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader(stream: impl Read + Send + 'static, log: Arc<Log>, sink: Arc<Mutex<std::fs::File>>) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match lines.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    {
                        use std::io::Write as _;
                        let mut f = sink.lock().unwrap_or_else(PoisonError::into_inner);
                        let _ = writeln!(f, "{text}");
                    }
                    log.push(text);
                }
            }
        }
        log.close_one();
    });
}

// ---- the bed: etcd, agents, servers ----------------------------------------------------------

/// One test's etcd, key prefix and temporary directory (logs, working directories).
#[derive(Debug)]
pub struct Bed {
    pub etcd: EtcdCluster,
    pub prefix: String,
    pub built: &'static Built,
    pub dir: tempfile::TempDir,
    /// etcd's revision when the bed was made: the history replay starts there.
    pub first_revision: i64,
}

impl Bed {
    pub async fn new(built: &'static Built, name: &str) -> Bed {
        let etcd = EtcdCluster::single().await.expect("etcd starts");
        let mut client = etcd.client().await.expect("etcd client");
        let first_revision = client
            .get("/", None)
            .await
            .expect("read the revision")
            .header()
            .map_or(1, etcd_client::ResponseHeader::revision);
        let dir = tempfile::Builder::new()
            .prefix(&format!("darkrift-{name}-"))
            .tempdir()
            .expect("temporary directory");
        Bed {
            etcd,
            prefix: format!("/dr-{name}"),
            built,
            dir,
            first_revision,
        }
    }

    /// Starts an agent listening on `listen` (`127.0.0.1:0` for a fresh port) with `extra`
    /// registry flags, and waits for its `listening` line.
    pub async fn agent(&self, name: &str, listen: &str, extra: &[&str]) -> Agent {
        let mut cmd = Command::new(CLI);
        cmd.args(["--endpoints", &self.etcd.endpoints().join(",")])
            .args(["--prefix", &self.prefix])
            .args(["--ttl", &format!("{}s", TTL.as_secs())])
            .args(extra)
            .args(["agent", "--listen", listen, "--heartbeat", "5s"])
            .env_remove("RUST_LOG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("DARKRIFT_ETCD_") {
                cmd.env_remove(key);
            }
        }
        let proc = Proc::spawn(name, cmd, self.dir.path());
        let line = proc.log.wait(0, "\"event\":\"listening\"", START).await;
        let json: Value = serde_json::from_str(line.text.trim()).unwrap_or_else(|e| {
            panic!(
                "{name}: the listening line is not JSON ({e}): {}",
                line.text
            )
        });
        let addr = json["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no addr in {}", line.text))
            .to_owned();
        Agent { proc, addr }
    }

    /// Starts a DarkRift server of `group` registered through `agent` (`Server.config`,
    /// readiness probe, health URL on its own port), and waits until its listeners are up.
    pub async fn server(&self, name: &str, group: &str, agent: &str) -> Server {
        let port = free_port().expect("free port");
        let health_port = free_port().expect("free port");
        let work = self.dir.path().join(name);
        std::fs::create_dir_all(&work).expect("working directory");
        let mut cmd = Command::new("mono");
        cmd.arg(self.built.dir.join("DarkRiftHost.exe"))
            .arg(self.built.dir.join("Server.config"))
            .arg(self.built.dir.join("Cluster.config"))
            .arg(format!("-group={group}"))
            .arg("-host=127.0.0.1")
            .arg(format!("-port={port}"))
            .arg(format!("-healthPort={health_port}"))
            .arg(format!("-agent={agent}"))
            .current_dir(&work)
            .stdin(Stdio::null());
        let proc = Proc::spawn(name, cmd, self.dir.path());
        let started = Instant::now();
        let line = proc
            .log
            .wait(0, "DarkRiftHost: listening, server id ", START)
            .await;
        let id = line
            .text
            .rsplit(' ')
            .next()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .unwrap_or_else(|| panic!("{name}: no id in {:?}", line.text));
        eprintln!(
            "darkrift: {name} ({group}) is server {id} on port {port} (health {health_port}), up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Server {
            proc,
            id,
            port,
            health_port,
            group: group.to_owned(),
        }
    }

    /// Replays etcd's history of the server range since the bed was made: never two live keys
    /// for one id. Returns the replay (holds, deletes) for further checks.
    pub async fn assert_ids_unique(&self) -> darkrift_etcd_testing::HistoryReplay {
        let mut client = self.etcd.client().await.expect("etcd client");
        let replay = darkrift_etcd_testing::replay_holders(
            &mut client,
            &self.prefix,
            self.first_revision,
            |_| false,
            Duration::from_secs(30),
        )
        .await
        .expect("etcd's history replays in full");
        assert_eq!(
            replay.double_hold, None,
            "two live holders of one id in etcd's history: {replay:?}"
        );
        eprintln!(
            "darkrift: history of {} replayed to revision {}: {} holds, {} deletes, never two holders of one id",
            self.prefix, replay.replayed_to, replay.holds, replay.deletes
        );
        replay
    }
}

/// A running `darkrift-etcd agent`.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
    /// What it printed in its `listening` line: `127.0.0.1:PORT`.
    pub addr: String,
}

/// A running DarkRift server (`DarkRiftHost.exe`).
#[derive(Debug)]
pub struct Server {
    pub proc: Proc,
    pub id: u16,
    pub port: u16,
    pub health_port: u16,
    pub group: String,
}

impl Server {
    pub fn log(&self) -> &Log {
        &self.proc.log
    }

    /// Awaits `Connected to server {id} on …` (an upstream link to `id`) after line `from`.
    pub async fn linked_to(&self, id: u16, from: usize) -> Line {
        self.log()
            .wait(from, &format!("Connected to server {id} on "), EVENT)
            .await
    }

    /// The registry's leave of `id` as DarkRift logs it.
    pub fn leave_line(id: u16) -> String {
        format!("Server registry informed us that server {id} has left the cluster.")
    }

    /// The registry's join of `id` as DarkRift logs it.
    pub fn join_line(id: u16, group: &str) -> String {
        format!("Server registry informed us of a server ({id}) in group '{group}'.")
    }
}

/// Milliseconds from `a` to `b`, for bench rows; negative when `b` came first (two
/// processes' lines, each stamped when the harness read it).
pub fn ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(a.duration_since(b).as_secs_f64() * 1000.0),
    }
}

// ---- plain HTTP/1.1 for the agent's API and DarkRift's health check ---------------------------

/// One request with `Connection: close`; returns the status and the (de-chunked) body.
pub async fn http(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(EVENT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {addr}{path}: no answer within {EVENT:?}"))
        .expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {addr}{path}: not HTTP: {text:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        body.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    body
}

/// A registration's event stream (`GET /v1/registrations/{handle}/events`) read into a
/// [`Log`], one JSON line per line; the reading task ends when this is dropped.
#[derive(Debug)]
pub struct EventStream {
    pub log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventStream {
    pub async fn attach(agent: &str, handle: &str, name: &str) -> EventStream {
        let mut stream = TcpStream::connect(agent)
            .await
            .unwrap_or_else(|e| panic!("connect to {agent}: {e}"));
        let request =
            format!("GET /v1/registrations/{handle}/events HTTP/1.1\r\nHost: {agent}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let log = Log::new(name, 1);
        let sink = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stream);
            // Head: status line and headers up to the empty line.
            let mut line = String::new();
            let mut chunked = false;
            loop {
                line.clear();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    sink.close_one();
                    return;
                }
                if line
                    .to_ascii_lowercase()
                    .starts_with("transfer-encoding: chunked")
                {
                    chunked = true;
                }
                if line.starts_with("HTTP/") {
                    sink.push(line.trim_end().to_owned());
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut pending = String::new();
            loop {
                let mut data = Vec::new();
                if chunked {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let Ok(n) = usize::from_str_radix(line.trim(), 16) else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    data.resize(n + 2, 0);
                    if reader.read_exact(&mut data).await.is_err() {
                        break;
                    }
                    data.truncate(n);
                } else {
                    let mut buf = [0u8; 4096];
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some((one, rest)) = pending.split_once('\n') {
                    sink.push(one.to_owned());
                    pending = rest.to_owned();
                }
            }
            sink.close_one();
        });
        EventStream { log, task }
    }
}
