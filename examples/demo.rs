//! README's demo: a throwaway etcd and a small DarkRift-style cluster of mesh servers (the
//! `darkrift-mesh` binary of mesh/) as child processes, two groups: `lobby` connects to `game`.
//!
//! It shows the lobbies linking to every game server, a game server crashing (SIGKILL: its
//! lease expires and the lobbies drop it), a lobby leaving cleanly (SIGTERM: deregistered at
//! once), and a new game server joining. It stops every process it started and exits by
//! itself after about 30 seconds.
//!
//! ```text
//! cargo build -p darkrift-etcd-mesh
//! cargo run --example demo
//! ```
//! (If the mesh binary is missing next to the demo, the demo builds it with the same cargo.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use darkrift_etcd_testing::{free_port, EtcdCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Lease TTL of the demo servers: a crash is noticed within about this long.
const TTL_SECS: u64 = 3;
/// How long the demo runs in all.
const RUN_FOR: Duration = Duration::from_secs(30);
/// Bound on any one step.
const STEP: Duration = Duration::from_secs(20);

/// The cluster the compose topology runs (lobby dials game), one file for all three.
const CLUSTER: &str = include_str!("../compose/cluster.toml");

/// One child process, as the demo knows it from its JSON lines.
struct Server {
    name: String,
    child: Child,
    id: Option<u16>,
    links: BTreeSet<(u16, String)>,
    /// Peers announced by the registry and not yet gone.
    known: BTreeSet<u16>,
    stopped: bool,
}

/// A JSON line from one server.
type Line = (String, Value);

struct Demo {
    mesh_bin: PathBuf,
    cluster_file: PathBuf,
    endpoint: String,
    started: Instant,
    servers: BTreeMap<String, Server>,
    lines_tx: mpsc::UnboundedSender<Line>,
    lines: mpsc::UnboundedReceiver<Line>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mesh_bin = mesh_binary()?;
    println!("starting a throwaway etcd …");
    let etcd = EtcdCluster::single()
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(&cluster_file, CLUSTER).map_err(|e| e.to_string())?;
    let (lines_tx, lines) = mpsc::unbounded_channel();
    let mut demo = Demo {
        mesh_bin,
        cluster_file,
        endpoint: etcd.endpoint(0),
        started: Instant::now(),
        servers: BTreeMap::new(),
        lines_tx,
        lines,
    };
    println!(
        "etcd at {}; cluster: lobby --connectsTo--> game; lease TTL {TTL_SECS} s\n",
        demo.endpoint
    );
    let outcome = demo.script().await;
    demo.stop_all().await;
    drop(etcd);
    println!("\nall processes stopped; etcd removed.");
    outcome
}

impl Demo {
    async fn script(&mut self) -> Result<(), String> {
        self.say("two game servers and two lobby servers start");
        for name in ["game-1", "game-2", "lobby-1", "lobby-2"] {
            self.spawn(name)?;
        }
        self.wait_until("every lobby links to every game", |d| {
            d.lobbies_linked_to(&["game-1", "game-2"])
        })
        .await?;
        self.hold(Duration::from_secs(3)).await;

        let crashed = self.id_of("game-1");
        self.say(&format!(
            "game-1 (#{crashed}) crashes: SIGKILL, no deregistration"
        ));
        let killed_at = Instant::now();
        if let Some(s) = self.servers.get_mut("game-1") {
            s.child.start_kill().map_err(|e| e.to_string())?;
            s.stopped = true;
        }
        self.wait_left(crashed).await?;
        self.say(&format!(
            "every lobby saw game-1 leave {:.1} s after the crash (lease TTL {TTL_SECS} s)",
            killed_at.elapsed().as_secs_f64()
        ));
        self.hold(Duration::from_secs(2)).await;

        let leaving = self.id_of("lobby-2");
        self.say(&format!(
            "lobby-2 (#{leaving}) stops cleanly: SIGTERM, deregisters"
        ));
        let stopped_at = Instant::now();
        self.terminate("lobby-2")?;
        self.wait_left(leaving).await?;
        self.wait_until("lobby-2 exits", |d| d.servers["lobby-2"].stopped)
            .await?;
        self.say(&format!(
            "the games saw lobby-2 leave {:.1} s after SIGTERM (no TTL wait)",
            stopped_at.elapsed().as_secs_f64()
        ));
        self.hold(Duration::from_secs(2)).await;

        self.say("a new game server, game-3, starts");
        self.spawn("game-3")?;
        self.wait_until("lobby-1 links to game-3", |d| {
            d.lobbies_linked_to(&["game-2", "game-3"])
        })
        .await?;
        self.hold(Duration::from_secs(3)).await;

        self.say("a late lobby, lobby-3, starts: the registry's snapshot tells it every game");
        self.spawn("lobby-3")?;
        self.wait_until("lobby-3 links to every game", |d| {
            d.lobbies_linked_to(&["game-2", "game-3"])
        })
        .await?;
        let left = RUN_FOR.saturating_sub(self.started.elapsed());
        self.say(&format!(
            "steady state; the demo ends in {:.0} s",
            left.as_secs_f64()
        ));
        self.hold(left.max(Duration::from_secs(1))).await;
        Ok(())
    }

    fn spawn(&mut self, name: &str) -> Result<(), String> {
        let group = name.split('-').next().unwrap_or(name);
        let port = free_port().map_err(|e| e.to_string())?;
        let mut child = Command::new(&self.mesh_bin)
            .arg("--cluster")
            .arg(&self.cluster_file)
            .args(["--group", group, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--prefix", "/demo", "--ttl", &TTL_SECS.to_string()])
            .env("DARKRIFT_ETCD_ENDPOINTS", &self.endpoint)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.mesh_bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let tx = self.lines_tx.clone();
        let owner = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((owner.clone(), value));
                }
            }
            let _ = tx.send((owner, serde_json::json!({"event": "exited"})));
        });
        self.servers.insert(
            name.to_owned(),
            Server {
                name: name.to_owned(),
                child,
                id: None,
                links: BTreeSet::new(),
                known: BTreeSet::new(),
                stopped: false,
            },
        );
        Ok(())
    }

    /// SIGTERM by pid: the server deregisters and exits.
    fn terminate(&mut self, name: &str) -> Result<(), String> {
        let pid = self
            .servers
            .get(name)
            .and_then(|s| s.child.id())
            .ok_or_else(|| format!("{name} is not running"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -TERM {pid}: {status}"))
        }
    }

    /// Processes lines until `done` holds, at most [`STEP`].
    async fn wait_until(&mut self, what: &str, done: impl Fn(&Demo) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + STEP;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((name, value))) => self.apply(&name, &value),
                Ok(None) => return Err("every output pipe closed".into()),
                Err(_) => return Err(format!("timed out after {STEP:?} waiting until {what}")),
            }
        }
        Ok(())
    }

    /// Waits until every running server that tracked `id` saw it leave the registry and
    /// closed its link.
    async fn wait_left(&mut self, id: u16) -> Result<(), String> {
        self.wait_until("the leave reaches every peer", move |d| {
            d.servers
                .values()
                .filter(|s| !s.stopped && s.id != Some(id))
                .all(|s| !s.known.contains(&id) && !s.links.iter().any(|(p, _)| *p == id))
        })
        .await
    }

    /// Keeps printing what happens for `d`.
    async fn hold(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Ok(Some((name, value))) = tokio::time::timeout_at(until, self.lines.recv()).await
        {
            self.apply(&name, &value);
        }
    }

    /// Updates the view from one JSON line and prints it for humans.
    fn apply(&mut self, name: &str, v: &Value) {
        let event = v["event"].as_str().unwrap_or("?").to_owned();
        let peer = v["peer"].as_u64().and_then(|p| u16::try_from(p).ok());
        let direction = v["direction"].as_str().unwrap_or("").to_owned();
        let peer_name = peer.map(|p| self.name_of(p)).unwrap_or_default();
        let Some(server) = self.servers.get_mut(name) else {
            return;
        };
        let text = match event.as_str() {
            "registered" => {
                server.id = v["id"].as_u64().and_then(|i| u16::try_from(i).ok());
                format!(
                    "registered as #{} ({}:{})",
                    v["id"],
                    v["host"].as_str().unwrap_or("?"),
                    v["port"]
                )
            }
            "joined" => {
                server.known.extend(peer);
                format!("sees {peer_name} join ({direction})")
            }
            "left" => {
                if let Some(p) = peer {
                    server.known.remove(&p);
                }
                format!("sees {peer_name} leave")
            }
            "connected" => {
                if let Some(p) = peer {
                    server.links.insert((p, direction.clone()));
                }
                let verb = if direction == "upstream" {
                    "dialled"
                } else {
                    "accepted"
                };
                format!("{verb} {peer_name}: identified link up")
            }
            "disconnected" => {
                if let Some(p) = peer {
                    server.links.retain(|(q, _)| *q != p);
                }
                format!(
                    "link to {peer_name} down: {}",
                    v["reason"].as_str().unwrap_or("?")
                )
            }
            "gave_up" => format!(
                "cannot reach {peer_name} after {} attempts; registry says: {}",
                v["attempts"],
                v["status"].as_str().unwrap_or("?")
            ),
            "rejected" => format!(
                "refused a connection: {}",
                v["reason"].as_str().unwrap_or("?")
            ),
            "stopped" => format!("stopped ({})", v["reason"].as_str().unwrap_or("?")),
            "exited" => {
                server.stopped = true;
                server.links.clear();
                "process exited".to_owned()
            }
            other => format!("{other}: {v}"),
        };
        let label = match server.id {
            Some(id) => format!("{} #{id}", server.name),
            None => server.name.clone(),
        };
        println!(
            "[{:>5.1}s] {label:<12} {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn say(&self, text: &str) {
        println!(
            "\n[{:>5.1}s] ==> {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn lobbies(&self) -> impl Iterator<Item = &Server> {
        self.servers
            .values()
            .filter(|s| s.name.starts_with("lobby") && !s.stopped)
    }

    fn lobbies_linked_to(&self, games: &[&str]) -> bool {
        let ids: Option<Vec<u16>> = games
            .iter()
            .map(|g| self.servers.get(*g).and_then(|s| s.id))
            .collect();
        let Some(ids) = ids else { return false };
        self.lobbies().all(|l| {
            ids.iter()
                .all(|id| l.links.contains(&(*id, "upstream".to_owned())))
        })
    }

    fn id_of(&self, name: &str) -> u16 {
        self.servers.get(name).and_then(|s| s.id).unwrap_or(0)
    }

    fn name_of(&self, id: u16) -> String {
        self.servers
            .values()
            .find(|s| s.id == Some(id))
            .map_or_else(|| format!("#{id}"), |s| format!("{} (#{id})", s.name))
    }

    /// SIGTERM to every running server, then SIGKILL to any still running after 10 s.
    async fn stop_all(&mut self) {
        let running: Vec<String> = self
            .servers
            .values()
            .filter(|s| !s.stopped)
            .map(|s| s.name.clone())
            .collect();
        if !running.is_empty() {
            self.say(&format!("stopping {}", running.join(", ")));
        }
        for name in &running {
            if let Err(e) = self.terminate(name) {
                eprintln!("demo: {e}");
            }
        }
        let _ = self
            .wait_until("every server exits", |d| {
                d.servers.values().all(|s| s.stopped)
            })
            .await;
        for server in self.servers.values_mut() {
            // Reaps the process; kills it first if it ignored SIGTERM.
            if tokio::time::timeout(Duration::from_secs(10), server.child.wait())
                .await
                .is_err()
            {
                let _ = server.child.kill().await;
            }
        }
    }
}

/// The mesh server (`darkrift-mesh`, of the mesh crate) beside this example's profile
/// directory; built with the cargo that runs us when missing.
fn mesh_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/demo → target/<profile>/darkrift-mesh
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the demo binary has no profile directory")?;
    let mesh = dir.join("darkrift-mesh");
    if mesh.is_file() {
        return Ok(mesh);
    }
    let cargo = std::env::var_os("CARGO").ok_or_else(|| {
        format!(
            "{} not found: run `cargo build -p darkrift-etcd-mesh` first",
            mesh.display()
        )
    })?;
    let release = dir.file_name() == Some("release".as_ref());
    println!("building the mesh server …");
    let mut build = std::process::Command::new(cargo);
    build.args([
        "build",
        "-p",
        "darkrift-etcd-mesh",
        "--bin",
        "darkrift-mesh",
    ]);
    if release {
        build.arg("--release");
    }
    let status = build.status().map_err(|e| format!("cargo build: {e}"))?;
    if status.success() && mesh.is_file() {
        Ok(mesh)
    } else {
        Err(format!(
            "could not build {}: run `cargo build -p darkrift-etcd-mesh`",
            mesh.display()
        ))
    }
}
