//! `darkrift-etcd agent` against real etcd (docs/agent-api.md): bad input writes nothing, the
//! event stream's order and heartbeat, attachment decides fate (reattach window, attach
//! bound), reserve-then-announce (probe and manual), resume after kill -9, shutdown by signal
//! and by the end of stdin, one watch and one keep-alive stream for many registrations, one
//! reporter per agent, and unique ids by etcd's own history.
//!
//! The agent runs as the real binary; the tests speak plain HTTP/1.1 to it over TCP (the event
//! streams are read chunk by chunk as they arrive) and watch etcd through the library.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use darkrift_etcd::config::EvictionConfig;
use darkrift_etcd::{Connector, ConnectorConfig, Event, EventStream, PeerStatus};
use darkrift_etcd_testing::{free_port, metric_sum, replay_holders, scrape, EtcdCluster};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

const CLI: &str = env!("CARGO_BIN_EXE_darkrift-etcd");

/// The agent's heartbeat in these tests: short, so that "a heartbeat arrived" is an event that
/// proves some silence passed.
const HEARTBEAT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// The agent process

/// A running agent; killed (by its pid) when dropped. Its stderr goes to a file that is
/// printed when the test fails.
struct Agent {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the agent's stdout pipe stays connected for its whole life.
    _stdout: Lines<BufReader<ChildStdout>>,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `darkrift-etcd agent --listen LISTEN --heartbeat 300ms MORE…` on `prefix` and
    /// waits for its `listening` line.
    async fn start(
        etcd: &EtcdCluster,
        prefix: &str,
        listen: &str,
        more: &[&str],
        env: &[(&str, &str)],
        stdin: bool,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
        let mut child = Command::new(CLI)
            .env("DARKRIFT_ETCD_ENDPOINTS", etcd.endpoints().join(","))
            .env("DARKRIFT_ETCD_PREFIX", prefix)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .args(["agent", "--listen", listen, "--heartbeat", &heartbeat])
            .args(more)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the agent");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(PROMPT, stdout.next_line())
            .await
            .expect("the listening line in time")
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!(
                    "the agent printed nothing: {}",
                    std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
                )
            });
        let v: Value = serde_json::from_str(&first).expect("a JSON line");
        assert_eq!(
            (&v["v"], &v["event"]),
            (&json!(1), &json!("listening")),
            "{v}"
        );
        let addr = v["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("HOST:PORT");
        Agent {
            child,
            addr,
            _stdout: stdout,
            dir,
        }
    }

    /// Waits (bounded) for the agent to exit; its exit code.
    async fn exit_code(&mut self) -> i32 {
        tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .expect("the agent exits in time")
            .expect("status")
            .code()
            .expect("an exit code, not a signal")
    }

    /// kill -9, and waits for it to be gone.
    async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        tokio::time::timeout(PROMPT, self.child.wait())
            .await
            .expect("dies in time")
            .expect("status");
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        request(self.addr, "POST", path, body.to_string().as_bytes()).await
    }

    /// Registers `body` and expects 201; returns the answer.
    async fn register(&self, body: &Value) -> Registered {
        let r = self.post("/v1/registrations", body).await;
        assert_eq!(r.status, 201, "register {body}: {r:?}");
        assert_eq!(r.body["v"], 1, "{r:?}");
        let handle = r.body["handle"].as_str().expect("handle").to_owned();
        assert!(
            handle.len() == 64 && handle.bytes().all(|b| b.is_ascii_hexdigit()),
            "{r:?}"
        );
        let lease = r.body["lease"]
            .as_str()
            .unwrap_or_else(|| panic!("lease: {r:?}"));
        assert_eq!(lease.len(), 16, "{r:?}");
        Registered {
            id: u16::try_from(r.body["id"].as_u64().expect("id")).expect("u16"),
            handle,
            state: r.body["state"].as_str().expect("state").to_owned(),
            lease: i64::from_str_radix(lease, 16).expect("a hex lease id"),
        }
    }

    /// Opens the event stream of `handle`.
    async fn attach(&self, handle: &str) -> Lines200 {
        match Lines200::open(self.addr, handle).await {
            Ok(lines) => lines,
            Err(r) => panic!("attach: {r:?}"),
        }
    }

    /// Registers at once and attaches; returns the id, the handle and the stream read up to
    /// and including `synced`.
    async fn attached(&self, group: &str, port: u16, ttl_ms: u64) -> (Registered, Lines200) {
        let r = self
            .register(&json!({"group": group, "host": "127.0.0.1", "port": port, "ttl_ms": ttl_ms}))
            .await;
        assert_eq!(r.state, "registered");
        let mut lines = self.attach(&r.handle).await;
        let first = lines.next().await;
        assert_eq!(
            (&first["event"], &first["id"]),
            (&json!("registered"), &json!(r.id))
        );
        lines.until("synced").await;
        (r, lines)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- agent {} log (last lines) ---", self.addr);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        // kill_on_drop sends SIGKILL to the child's pid.
    }
}

/// A register answer.
#[derive(Debug, Clone)]
struct Registered {
    id: u16,
    handle: String,
    state: String,
    /// The lease the answer named.
    lease: i64,
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

/// One HTTP answer: its status and its JSON body (`null` if empty).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// One request over a fresh connection (`Connection: close`), bounded.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the agent");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .expect("write the request");
        // A refused body (413) may be cut short by the agent: its answer is what counts.
        let _ = s.write_all(body).await;
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    };
    // A resume with another's handle may take a TTL and 2 s to be refused.
    let bytes = tokio::time::timeout(PROMPT * 2, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in time"));
    parse_reply(&bytes).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let mut body = bytes[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).ok()?
    };
    Some(Reply { status, body })
}

fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&bytes[..eol]).ok()?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(bytes.get(eol + 2..eol + 2 + n)?);
        bytes = bytes.get(eol + 4 + n..)?;
    }
}

/// An attached event stream (`200`, chunked NDJSON), read line by line as chunks arrive.
/// Dropping it closes the connection (as a dying game server's kernel would).
struct Lines200 {
    reader: BufReader<TcpStream>,
    ready: VecDeque<Value>,
    partial: Vec<u8>,
}

impl Lines200 {
    /// `GET …/events`; the error answer if it is not 200.
    async fn open(addr: SocketAddr, handle: &str) -> Result<Lines200, Reply> {
        let opening = async {
            let mut s = TcpStream::connect(addr)
                .await
                .expect("connect to the agent");
            s.write_all(
                format!("GET /v1/registrations/{handle}/events HTTP/1.1\r\nHost: agent\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
            let mut reader = BufReader::new(s);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line).await.expect("read the head");
                assert!(n > 0, "the connection closed in the head: {head:?}");
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            (reader, head)
        };
        let (mut reader, head) = tokio::time::timeout(PROMPT, opening)
            .await
            .expect("the stream's head in time");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let lower = head.to_ascii_lowercase();
        if status != 200 {
            let len: usize = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            tokio::time::timeout(PROMPT, reader.read_exact(&mut body))
                .await
                .expect("the body in time")
                .expect("read the body");
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(Reply { status, body });
        }
        assert!(
            lower.contains("content-type: application/x-ndjson"),
            "{head}"
        );
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        Ok(Lines200 {
            reader,
            ready: VecDeque::new(),
            partial: Vec::new(),
        })
    }

    /// Reads one chunk; false at the end of the stream (last chunk or connection closed).
    async fn chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
            return false;
        }
        let n = usize::from_str_radix(size.trim_end().split(';').next().unwrap_or(""), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
        if n == 0 {
            return false;
        }
        let mut data = vec![0; n + 2];
        if self.reader.read_exact(&mut data).await.is_err() {
            return false;
        }
        self.partial.extend_from_slice(&data[..n]);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let v: Value = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("not JSON: {:?}: {e}", String::from_utf8_lossy(&line)));
            assert_eq!(v["v"], 1, "{v}");
            self.ready.push_back(v);
        }
        true
    }

    /// The next line, bounded.
    async fn next(&mut self) -> Value {
        let deadline = Instant::now() + PROMPT;
        loop {
            if let Some(v) = self.ready.pop_front() {
                return v;
            }
            let more = tokio::time::timeout_at(deadline, self.chunk())
                .await
                .expect("an event line within the bound");
            assert!(more, "the event stream ended");
        }
    }

    /// Lines up to and including the first `event`.
    async fn until(&mut self, event: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let v = self.next().await;
            let done = v["event"] == event;
            got.push(v);
            if done {
                return got;
            }
        }
    }

    /// Waits (bounded) for the stream to end; the lines it still carried.
    async fn ended(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + PROMPT;
        while tokio::time::timeout_at(deadline, self.chunk())
            .await
            .expect("the stream ends in time")
        {}
        self.ready.drain(..).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// etcd and the watcher

/// A watcher (the library's connector), synced before it is returned.
async fn watcher(etcd: &EtcdCluster, prefix: &str) -> (Connector, EventStream) {
    synced(config(etcd, prefix)).await
}

fn is_join(e: &Event, id: u16) -> bool {
    matches!(e, Event::Join { server, .. } if server.id == id)
}

fn is_leave(e: &Event, id: u16) -> bool {
    matches!(e, Event::Leave { id: left, .. } if *left == id)
}

/// Events up to and including the join of `id`.
async fn joined(events: &mut EventStream, id: u16) -> Vec<Event> {
    collect_until(events, PROMPT, |e| e.iter().any(|e| is_join(e, id))).await
}

/// Events up to and including the leave of `id`.
async fn left(events: &mut EventStream, id: u16) -> Vec<Event> {
    collect_until(events, PROMPT, |e| e.iter().any(|e| is_leave(e, id))).await
}

/// Events up to the leaves of every one of `ids`.
async fn all_left(events: &mut EventStream, ids: &BTreeSet<u16>) -> Vec<Event> {
    collect_until(events, PROMPT, |e| {
        ids.iter().all(|id| e.iter().any(|e| is_leave(e, *id)))
    })
    .await
}

/// Every key under `prefix` (the server range and the allocator's, since `prefix` has no
/// trailing slash), with its lease and create revision.
async fn keys(etcd: &EtcdCluster, prefix: &str) -> Vec<(String, i64, i64)> {
    let mut raw = etcd.client().await.expect("raw client");
    let resp = raw
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8").to_owned(),
                kv.lease(),
                kv.create_revision(),
            )
        })
        .collect()
}

async fn revision(etcd: &EtcdCluster) -> i64 {
    current_revision(&mut etcd.client().await.expect("raw client")).await
}

fn server(port: u16) -> Value {
    json!({"group": "game", "host": "127.0.0.1", "port": port})
}

// ---------------------------------------------------------------------------------------------
// 1. Bad input

/// Malformed JSON, an unknown or missing field, values out of range, an oversized body, an
/// unknown handle or path, a wrong method: each is refused with its documented status and
/// code, and etcd is untouched by all of them (same revision, nothing under the prefix). A
/// non-loopback `--listen` is refused at start with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_writes_nothing() {
    let etcd = etcd().await;
    let prefix = prefix();
    let agent = Agent::start(&etcd, &prefix, "127.0.0.1:0", &[], &[], false).await;
    let before = revision(&etcd).await;
    let nobody = "ab".repeat(32);
    let too_big = json!({"group": "game", "host": "127.0.0.1", "port": 4296,
                         "properties": {"x": "y".repeat(70 * 1024)}})
    .to_string();
    let cases: Vec<(&str, String, String, u16, &str)> =
        vec![
        ("POST", "/v1/registrations".into(), r#"{"group":"#.into(), 400, "bad_request"),
        ("POST", "/v1/registrations".into(), String::new(), 400, "bad_request"),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"game","host":"127.0.0.1","port":4296,"prot":1}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"game","host":"127.0.0.1"}"#.into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"game","host":"127.0.0.1","port":0}"#.into(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"no/slashes","host":"127.0.0.1","port":4296}"#.into(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"","host":"127.0.0.1","port":4296}"#.into(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"game","host":"127.0.0.1","port":4296,"ttl_ms":0}"#.into(),
            400,
            "invalid",
        ),
        (
            "POST",
            "/v1/registrations".into(),
            r#"{"group":"game","host":"127.0.0.1","port":4296,"resume":{"id":3,"handle":"xyz"}}"#
                .into(),
            400,
            "invalid",
        ),
        ("POST", "/v1/registrations".into(), too_big, 413, "too_large"),
        ("DELETE", format!("/v1/registrations/{nobody}"), String::new(), 404, "not_found"),
        ("POST", format!("/v1/registrations/{nobody}/ready"), String::new(), 404, "not_found"),
        (
            "POST",
            format!("/v1/registrations/{nobody}/unreachable"),
            r#"{"id":3}"#.into(),
            404,
            "not_found",
        ),
        ("GET", format!("/v1/registrations/{nobody}/events"), String::new(), 404, "not_found"),
        ("DELETE", "/v1/registrations/not-a-handle".into(), String::new(), 404, "not_found"),
        ("GET", "/v2/registrations".into(), String::new(), 404, "not_found"),
    ];
    for (method, path, body, status, code) in &cases {
        let r = request(agent.addr, method, path, body.as_bytes()).await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(r.status, *status, "{method} {path} {shown}: {r:?}");
        assert_eq!(r.body["error"], *code, "{method} {path} {shown}: {r:?}");
        assert!(r.body["message"].is_string(), "{r:?}");
    }
    // Wrong methods: 405 with a JSON error.
    for (method, path) in [
        ("GET", "/v1/registrations".to_owned()),
        ("PUT", "/v1/registrations".to_owned()),
        ("DELETE", "/v1/health".to_owned()),
        ("GET", format!("/v1/registrations/{nobody}/ready")),
    ] {
        let r = request(agent.addr, method, &path, b"").await;
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert!(r.body["error"].is_string(), "{method} {path}: {r:?}");
    }
    let health = request(agent.addr, "GET", "/v1/health", b"").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body["registrations"], 0, "{health:?}");

    assert_eq!(
        revision(&etcd).await,
        before,
        "a refused request wrote to etcd"
    );
    assert_eq!(keys(&etcd, &prefix).await, vec![], "keys under the prefix");

    // A non-loopback address is refused before anything else: exit 2, no listening line.
    let out = tokio::time::timeout(
        PROMPT,
        Command::new(CLI)
            .env("DARKRIFT_ETCD_ENDPOINTS", etcd.endpoints().join(","))
            .env("DARKRIFT_ETCD_PREFIX", &prefix)
            .args(["agent", "--listen", "0.0.0.0:0"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{out:?}"
    );
    assert_eq!(revision(&etcd).await, before);
}

// ---------------------------------------------------------------------------------------------
// 2. Register at once; the stream; attachment decides fate

/// An immediate registration: `registered`, the view's joins (its own included), `synced`, a
/// heartbeat after the configured silence; a watcher sees the join. Closing the stream removes
/// it (the watcher sees the leave); closing and reopening at once keeps it; a second stream
/// replaces the first; DELETE removes it and ends its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_tells_the_view_and_its_attachment_decides_fate() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    let agent = Agent::start(&etcd, &prefix, "127.0.0.1:0", &[], &[], false).await;

    let body = json!({"group": "game", "host": "127.0.0.1", "port": 4296,
                      "properties": {"region": "eu"}});
    let a = agent.register(&body).await;
    assert_eq!(a.state, "registered");
    let joins = joined(&mut watch, a.id).await;
    match joins.last() {
        Some(Event::Join { server, .. }) => {
            assert_eq!((server.group.as_str(), server.port), ("game", 4296));
            assert_eq!(
                server.properties.get("region").map(String::as_str),
                Some("eu")
            );
        }
        other => panic!("{other:?}"),
    }

    let mut stream = agent.attach(&a.handle).await;
    let first = stream.next().await;
    assert_eq!(first["event"], "registered", "{first}");
    assert_eq!(
        (
            &first["id"],
            &first["group"],
            &first["host"],
            &first["port"]
        ),
        (
            &json!(a.id),
            &json!("game"),
            &json!("127.0.0.1"),
            &json!(4296)
        )
    );
    assert_eq!(first["properties"], json!({"region": "eu"}));
    let view = stream.until("synced").await;
    let synced_at = Instant::now();
    assert!(
        view.iter().any(|v| v["event"] == "join" && v["id"] == a.id),
        "its own join before synced: {view:?}"
    );
    assert!(
        view[..view.len() - 1].iter().all(|v| v["event"] == "join"),
        "only joins before synced: {view:?}"
    );
    let beat = stream.next().await;
    assert_eq!(beat["event"], "heartbeat", "{beat}");
    assert!(
        beat["revision"].is_null() || beat["revision"].is_i64(),
        "{beat}"
    );
    assert!(
        synced_at.elapsed() >= HEARTBEAT.saturating_sub(Duration::from_millis(50)),
        "a heartbeat after {:?} of silence",
        synced_at.elapsed()
    );

    // The game server dies: its connection closes, the registration goes after the window.
    drop(stream);
    let closed = Instant::now();
    left(&mut watch, a.id).await;
    eprintln!("stream closed → leave seen after {:?}", closed.elapsed());
    assert!(
        closed.elapsed() >= Duration::from_millis(140),
        "left before the reattach window passed: {:?}",
        closed.elapsed()
    );
    assert_eq!(keys(&etcd, &format!("{prefix}/")).await, vec![]);
    let gone = request(
        agent.addr,
        "DELETE",
        &format!("/v1/registrations/{}", a.handle),
        b"",
    )
    .await;
    assert_eq!(gone.status, 404, "{gone:?}");

    // A deliberate reconnect within the window keeps the registration.
    let b = agent.register(&server(4297)).await;
    joined(&mut watch, b.id).await;
    let mut stream = agent.attach(&b.handle).await;
    stream.until("synced").await;
    drop(stream);
    let mut stream = agent.attach(&b.handle).await;
    let again = stream.until("synced").await;
    assert_eq!(again[0]["event"], "registered", "{again:?}");
    // Two heartbeats: at least 2 × 300 ms past the close, four reattach windows.
    assert_eq!(stream.next().await["event"], "heartbeat");
    assert_eq!(stream.next().await["event"], "heartbeat");
    let quiet = drain_for(&mut watch, Duration::from_millis(300)).await;
    assert!(
        !quiet.iter().any(|e| is_leave(e, b.id)),
        "a reattached registration was removed: {quiet:?}"
    );
    assert_eq!(
        truth(&etcd, &prefix).await,
        BTreeSet::from([b.id]),
        "still registered"
    );

    // A second stream replaces the first: the first ends, the registration stays.
    let mut second = agent.attach(&b.handle).await;
    second.until("synced").await;
    stream.ended().await;
    assert_eq!(second.next().await["event"], "heartbeat");
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::from([b.id]));

    // DELETE: 204, the leave, the stream ends, a second DELETE is 404.
    let path = format!("/v1/registrations/{}", b.handle);
    let r = request(agent.addr, "DELETE", &path, b"").await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::new());
    left(&mut watch, b.id).await;
    second.ended().await;
    assert_eq!(request(agent.addr, "DELETE", &path, b"").await.status, 404);
    assert_eq!(
        keys(&etcd, &prefix)
            .await
            .iter()
            .filter(|k| !k.0.contains(".alloc/cursor"))
            .count(),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The attach bound

/// A registration whose stream never attaches is removed after `--attach-bound`; one attached
/// in time stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_never_attached_is_removed_after_the_attach_bound() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    let agent = Agent::start(
        &etcd,
        &prefix,
        "127.0.0.1:0",
        &["--attach-bound", "1s"],
        &[],
        false,
    )
    .await;
    let registered_at = Instant::now();
    let lonely = agent.register(&server(4296)).await;
    let (kept, _stream) = agent.attached("game", 4297, 10_000).await;
    joined(&mut watch, lonely.id).await;
    left(&mut watch, lonely.id).await;
    let after = registered_at.elapsed();
    eprintln!("never attached → leave after {after:?}");
    assert!(
        after >= Duration::from_millis(950),
        "removed too early: {after:?}"
    );
    assert!(
        after <= Duration::from_secs(6),
        "removed too late: {after:?}"
    );
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::from([kept.id]));
    // Its handle is unknown now.
    match Lines200::open(agent.addr, &lonely.handle).await {
        Err(r) => assert_eq!(
            (r.status, &r.body["error"]),
            (404, &json!("not_found")),
            "{r:?}"
        ),
        Ok(_) => panic!("a removed registration's stream attached"),
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Reserve, then announce

/// `readiness: probe`: reserved (slot held, no server key, no join) while nothing listens on
/// the port; a listener opens → the join, and the stream says `registered`. `readiness:
/// manual`: likewise on `POST …/ready`. Reserved ids are never given to another registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_ids_are_announced_when_the_server_listens_or_says_ready() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    let agent = Agent::start(&etcd, &prefix, "127.0.0.1:0", &[], &[], false).await;
    let port = free_port().expect("a free port");

    let probe = agent
        .register(
            &json!({"group": "game", "host": "127.0.0.1", "port": port, "readiness": "probe"}),
        )
        .await;
    assert_eq!(probe.state, "reserved");
    let mut probe_lines = agent.attach(&probe.handle).await;
    let first = probe_lines.next().await;
    assert_eq!(
        (&first["event"], &first["id"], &first["port"]),
        (&json!("reserved"), &json!(probe.id), &json!(port)),
        "{first}"
    );
    let view = probe_lines.until("synced").await;
    assert_eq!(view.len(), 1, "an empty view: {view:?}");

    let manual = agent
        .register(
            &json!({"group": "game", "host": "127.0.0.1", "port": 4297, "readiness": "manual"}),
        )
        .await;
    assert_eq!(manual.state, "reserved");
    let mut manual_lines = agent.attach(&manual.handle).await;
    assert_eq!(manual_lines.next().await["event"], "reserved");
    manual_lines.until("synced").await;

    // Ids stay unique: an immediate registration gets neither reserved id, and it is the
    // first join the watcher sees.
    let (now, _now_lines) = agent.attached("game", 4298, 10_000).await;
    let ids = BTreeSet::from([probe.id, manual.id, now.id]);
    assert_eq!(ids.len(), 3, "{probe:?} {manual:?} {now:?}");
    let seen = joined(&mut watch, now.id).await;
    assert!(
        !seen
            .iter()
            .any(|e| is_join(e, probe.id) || is_join(e, manual.id)),
        "a reserved id was announced: {seen:?}"
    );
    let held = keys(&etcd, &prefix).await;
    let names: BTreeSet<String> = held.iter().map(|k| k.0.clone()).collect();
    for r in [&probe, &manual, &now] {
        let slot = format!("{prefix}.alloc/slot/{:05}", r.id);
        assert!(
            held.iter().any(|k| k.0 == slot && k.1 == r.lease),
            "slot of {} on lease {:x}: {held:?}",
            r.id,
            r.lease
        );
    }
    assert_eq!(
        truth(&etcd, &prefix).await,
        BTreeSet::from([now.id]),
        "{names:?}"
    );

    // The server starts listening: the probe connects, the id is announced.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the advertised port");
    let opened = Instant::now();
    joined(&mut watch, probe.id).await;
    eprintln!("listener opened → join after {:?}", opened.elapsed());
    let lines = probe_lines.until("registered").await;
    assert_eq!(lines.last().expect("a line")["id"], probe.id);
    assert!(!lines.iter().any(|v| v["event"] == "reserved"), "{lines:?}");

    // Manual: announced on ready (204, and 204 again as a no-op).
    let ready = format!("/v1/registrations/{}/ready", manual.handle);
    assert_eq!(request(agent.addr, "POST", &ready, b"").await.status, 204);
    joined(&mut watch, manual.id).await;
    manual_lines.until("registered").await;
    assert_eq!(request(agent.addr, "POST", &ready, b"").await.status, 204);
    assert_eq!(truth(&etcd, &prefix).await, ids);
    drop(listener);
}

// ---------------------------------------------------------------------------------------------
// 5. Resume after kill -9

/// An agent killed with SIGKILL and restarted on the same port within the TTL: the client
/// re-sends its registration with `resume`, gets the same id and handle, on the same lease and
/// key (no leave, no join at the watcher, even past the TTL). A resume with another handle is
/// refused with 409 `id_taken` and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_registrations_on_their_own_lease() {
    let etcd = etcd().await;
    let prefix = prefix();
    let ttl = Duration::from_secs(3);
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    let mut first = Agent::start(&etcd, &prefix, "127.0.0.1:0", &[], &[], false).await;
    let addr = first.addr;
    let (r, stream) = first.attached("game", 4296, 3000).await;
    joined(&mut watch, r.id).await;
    let key = format!("{prefix}/game/{}", r.id);
    let before: Vec<_> = keys(&etcd, &key).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, r.lease, "the answer names the key's lease");

    first.kill9().await;
    drop(stream);
    let killed = Instant::now();
    let second = Agent::start(&etcd, &prefix, &addr.to_string(), &[], &[], false).await;
    assert_eq!(second.addr, addr);
    let resume = json!({"group": "game", "host": "127.0.0.1", "port": 4296, "ttl_ms": 3000,
                        "resume": {"id": r.id, "handle": r.handle}});
    let back = second.register(&resume).await;
    eprintln!("kill -9 → resumed after {:?}", killed.elapsed());
    assert_eq!((back.id, &back.handle), (r.id, &r.handle));
    assert_eq!((back.state.as_str(), back.lease), ("registered", r.lease));
    let mut stream = second.attach(&r.handle).await;
    assert_eq!(stream.next().await["event"], "registered");
    stream.until("synced").await;
    // The same registration: same lease, same create revision.
    assert_eq!(keys(&etcd, &key).await, before);
    // Resuming a handle that is live in this agent is a conflict, not a second registration.
    let twice = second.post("/v1/registrations", &resume).await;
    assert_eq!(
        (twice.status, &twice.body["error"]),
        (409, &json!("conflict")),
        "{twice:?}"
    );

    // Past the TTL the old lease would have expired: the new agent keeps it alive.
    let quiet = drain_for(&mut watch, ttl + Duration::from_secs(1)).await;
    assert!(
        !quiet.iter().any(|e| is_leave(e, r.id) || is_join(e, r.id)),
        "the watcher saw the resumed server leave or join: {quiet:?}"
    );
    assert_eq!(keys(&etcd, &key).await, before);

    // Another's handle: 409 id_taken, nothing written.
    let at = revision(&etcd).await;
    let thief = json!({"group": "game", "host": "127.0.0.1", "port": 4296,
                       "resume": {"id": r.id, "handle": "cd".repeat(32)}});
    let asked = Instant::now();
    let refused = second.post("/v1/registrations", &thief).await;
    eprintln!(
        "resume with another's handle refused after {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (409, &json!("id_taken")),
        "{refused:?}"
    );
    assert_eq!(revision(&etcd).await, at, "a refused resume wrote to etcd");
    assert_eq!(keys(&etcd, &key).await, before);
    let health = request(second.addr, "GET", "/v1/health", b"").await;
    assert_eq!(health.body["registrations"], 1, "{health:?}");
    // Long enough for a leave the refused resume might have caused to arrive.
    assert!(!drain_for(&mut watch, Duration::from_millis(300))
        .await
        .iter()
        .any(|e| is_leave(e, r.id)),);
}

// ---------------------------------------------------------------------------------------------
// 6. Shutdown

/// SIGTERM deregisters every registration (the keys are gone when the agent has exited, long
/// before their TTL) and exits 0; so does the end of stdin with `--exit-with-stdin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_the_end_of_stdin_deregister_everything_and_exit_0() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_w, mut watch) = watcher(&etcd, &prefix).await;

    for by_stdin in [false, true] {
        let more: &[&str] = if by_stdin {
            &["--exit-with-stdin"]
        } else {
            &[]
        };
        let mut agent = Agent::start(&etcd, &prefix, "127.0.0.1:0", more, &[], by_stdin).await;
        let mut ids = BTreeSet::new();
        let mut streams = Vec::new();
        for port in 4296..4299 {
            let (r, s) = agent.attached("game", port, 10_000).await;
            joined(&mut watch, r.id).await;
            ids.insert(r.id);
            streams.push(s);
        }
        assert_eq!(truth(&etcd, &prefix).await, ids);
        let asked = Instant::now();
        if by_stdin {
            drop(agent.child.stdin.take().expect("stdin"));
        } else {
            sigterm(&agent.child);
        }
        assert_eq!(agent.exit_code().await, 0, "by stdin: {by_stdin}");
        eprintln!(
            "stop (stdin: {by_stdin}) → exit after {:?}",
            asked.elapsed()
        );
        assert_eq!(
            truth(&etcd, &prefix).await,
            BTreeSet::new(),
            "deregistered before exiting (stdin: {by_stdin})"
        );
        all_left(&mut watch, &ids).await;
        for mut s in streams {
            s.ended().await;
        }
    }
}

/// A count exposed as a Prometheus float.
#[allow(clippy::cast_possible_truncation)]
fn count(value: f64) -> i64 {
    value.round() as i64
}

/// Streams open at etcd now, from its own metrics (series that etcd 3.4 and 3.5 both expose):
/// the mvcc watch streams (a gauge), the `Watch` RPCs and the `LeaseKeepAlive` RPCs (each:
/// started minus handled). etcd counts a watch stream in its gauge a little after the RPC
/// started, so the scrape is repeated (bounded) until the two agree and at least `watches`
/// Watch RPCs are open.
async fn open_streams(metrics_url: &str, watches: i64) -> (i64, i64, i64) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let text = scrape(metrics_url).await.expect("etcd /metrics");
        let open = |method: &str, service: &str| {
            let labels = [("grpc_method", method), ("grpc_service", service)];
            metric_sum(&text, "grpc_server_started_total", &labels)
                - metric_sum(&text, "grpc_server_handled_total", &labels)
        };
        let now = (
            count(metric_sum(
                &text,
                "etcd_debugging_mvcc_watch_stream_total",
                &[],
            )),
            count(open("Watch", "etcdserverpb.Watch")),
            count(open("LeaseKeepAlive", "etcdserverpb.Lease")),
        );
        if now.0 == now.1 && now.1 >= watches {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "etcd's watch metrics disagree: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a gauge, bounded
    }
}

// ---------------------------------------------------------------------------------------------
// 7 and 9. One watch, one keep-alive stream; ids unique by etcd's history

/// 20 registrations on one agent open ONE watch stream and ONE lease keep-alive stream at etcd
/// (its own metrics), and all 20 leases live past 2 × TTL. Then churn (deregistrations,
/// reservations, new registrations, a stopped agent), and etcd's history shows no id held
/// twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_registrations_share_one_watch_and_one_keep_alive_stream() {
    let etcd = etcd().await;
    let prefix = prefix();
    let ttl = Duration::from_secs(2);
    let metrics_url = format!("{}/metrics", etcd.endpoint(0));
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    // The watcher's own watch stream may open just after its snapshot: wait for it.
    let baseline = open_streams(&metrics_url, 1).await;

    let mut agent = Agent::start(&etcd, &prefix, "127.0.0.1:0", &[], &[], false).await;
    let mut attached = Vec::new();
    for i in 0..20u16 {
        let (r, s) = agent.attached("game", 5000 + i, 2000).await;
        attached.push((r, s));
    }
    let ids: BTreeSet<u16> = attached.iter().map(|(r, _)| r.id).collect();
    assert_eq!(ids.len(), 20);
    collect_until(&mut watch, PROMPT, |e| {
        ids.iter().all(|id| e.iter().any(|e| is_join(e, *id)))
    })
    .await;
    let with_20 = open_streams(&metrics_url, 2).await;
    eprintln!("etcd streams (watch gauge, watch rpc, keep-alive rpc): before {baseline:?}, with 20 registrations {with_20:?}");
    assert_eq!(
        with_20.0 - baseline.0,
        1,
        "watch streams: {baseline:?} → {with_20:?}"
    );
    assert_eq!(
        with_20.1 - baseline.1,
        1,
        "Watch rpcs: {baseline:?} → {with_20:?}"
    );
    assert_eq!(
        with_20.2 - baseline.2,
        1,
        "keep-alive rpcs: {baseline:?} → {with_20:?}"
    );

    // 2 × TTL and a second: nobody leaves, every key is still on a live lease.
    let quiet = drain_for(&mut watch, ttl * 2 + Duration::from_secs(1)).await;
    assert!(
        !quiet.iter().any(|e| matches!(e, Event::Leave { .. })),
        "{quiet:?}"
    );
    assert_eq!(truth(&etcd, &prefix).await, ids);
    let mut raw = etcd.client().await.expect("raw client");
    let held = keys(&etcd, &format!("{prefix}/")).await;
    assert_eq!(held.len(), ids.len(), "every registration's key is there");
    for (_, lease, _) in held {
        let left = raw
            .lease_time_to_live(lease, None)
            .await
            .expect("ttl")
            .ttl();
        assert!(left > 0, "lease {lease:x} has {left} s left");
    }
    assert_eq!(
        open_streams(&metrics_url, 2).await,
        with_20,
        "no stream reopened"
    );

    // Churn: 10 deregistered, 10 by a closed stream, reservations, 10 new ones.
    let mut survivors = Vec::new();
    for (i, (r, s)) in attached.into_iter().enumerate() {
        match i % 3 {
            0 => {
                let path = format!("/v1/registrations/{}", r.handle);
                assert_eq!(request(agent.addr, "DELETE", &path, b"").await.status, 204);
            }
            1 => drop(s),
            _ => survivors.push((r, s)),
        }
    }
    let gone: BTreeSet<u16> = ids
        .iter()
        .copied()
        .filter(|id| !survivors.iter().any(|(r, _)| r.id == *id))
        .collect();
    all_left(&mut watch, &gone).await;
    let mut fresh = Vec::new();
    for i in 0..10u16 {
        let readiness = if i % 2 == 0 { "manual" } else { "immediate" };
        let r = agent
            .register(
                &json!({"group": "game", "host": "127.0.0.1", "port": 6000 + i,
                              "ttl_ms": 2000, "readiness": readiness}),
            )
            .await;
        let s = agent.attach(&r.handle).await;
        fresh.push((r, s));
    }
    // The five `manual` ones are reserved, the five `immediate` ones announced.
    assert_eq!(
        fresh.iter().filter(|(r, _)| r.state == "reserved").count(),
        5,
        "manual readiness reserves"
    );
    for (r, _) in fresh.iter().filter(|(r, _)| r.state == "reserved") {
        let ready = format!("/v1/registrations/{}/ready", r.handle);
        assert_eq!(request(agent.addr, "POST", &ready, b"").await.status, 204);
    }
    let fresh_ids: BTreeSet<u16> = fresh.iter().map(|(r, _)| r.id).collect();
    collect_until(&mut watch, PROMPT, |e| {
        fresh_ids.iter().all(|id| e.iter().any(|e| is_join(e, *id)))
    })
    .await;
    let live: BTreeSet<u16> = survivors
        .iter()
        .chain(fresh.iter())
        .map(|(r, _)| r.id)
        .collect();
    assert_eq!(live.len(), survivors.len() + fresh.len());
    assert_eq!(truth(&etcd, &prefix).await, live);
    sigterm(&agent.child);
    assert_eq!(agent.exit_code().await, 0);
    all_left(&mut watch, &live).await;

    // 9. Never two holders of one id, by etcd's own history.
    let replay = replay_holders(&mut raw, &prefix, 1, |_| false, Duration::from_secs(60))
        .await
        .expect("etcd's history replays in full");
    eprintln!(
        "history replayed to revision {}: {} holds, {} deletes",
        replay.replayed_to, replay.holds, replay.deletes
    );
    assert_eq!(
        replay.double_hold, None,
        "two holders of one id: {replay:?}"
    );
    assert_eq!(replay.holds, 30, "{replay:?}");
    assert_eq!(replay.deletes, 30, "{replay:?}");
}

// ---------------------------------------------------------------------------------------------
// 8. One reporter per agent

/// With eviction on (K = 2, from the agent's environment), two registrations of one agent
/// reporting the same peer are ONE reporter: the peer stays (one report key in etcd). A
/// second reporter elsewhere (another process's connector) makes two, and the peer is
/// evicted: the test could fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_of_one_agent_are_one_reporter() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_w, mut watch) = watcher(&etcd, &prefix).await;
    let (peer, peer_id) = registered(config(&etcd, &prefix), "game", 5000).await;
    joined(&mut watch, peer_id).await;
    let agent = Agent::start(
        &etcd,
        &prefix,
        "127.0.0.1:0",
        &[],
        &[("DARKRIFT_ETCD_EVICTION_MIN_REPORTERS", "2")],
        false,
    )
    .await;
    let (a, _a_lines) = agent.attached("game", 5001, 10_000).await;
    let (b, _b_lines) = agent.attached("game", 5002, 10_000).await;
    for r in [&a, &b] {
        let path = format!("/v1/registrations/{}/unreachable", r.handle);
        let answer = agent.post(&path, &json!({"id": peer_id})).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            (&answer.body["id"], &answer.body["status"]),
            (&json!(peer_id), &json!("registered")),
            "{answer:?}"
        );
    }
    let unknown = agent
        .post(
            &format!("/v1/registrations/{}/unreachable", a.handle),
            &json!({"id": 60000}),
        )
        .await;
    assert_eq!(unknown.body["status"], "unknown", "{unknown:?}");
    let reports: Vec<_> = keys(&etcd, &format!("{prefix}.alloc/reports/{peer_id:05}/")).await;
    assert_eq!(reports.len(), 1, "one reporter, one report: {reports:?}");
    assert!(truth(&etcd, &prefix).await.contains(&peer_id));

    // A reporter of its own (another registered connector): two reporters, evicted.
    let cfg = ConnectorConfig {
        eviction: Some(EvictionConfig::default()),
        ..config(&etcd, &prefix)
    };
    assert_eq!(cfg.eviction.as_ref().map(|e| e.min_reporters), Some(2));
    let (other, _) = registered(cfg, "game", 5003).await;
    other.wait_synced(PROMPT).await.expect("synced");
    let status = other
        .handle_connection_failure(peer_id)
        .await
        .expect("report");
    assert_eq!(status, PeerStatus::Evicted);
    left(&mut watch, peer_id).await;
    drop(peer);
}
