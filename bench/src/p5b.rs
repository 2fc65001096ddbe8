//! P5b: a mesh game server killed → its leave at every lobby, with eviction on against the
//! same mesh with eviction off.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::children::{release_binary, repo_root, spawn_quiet};
use crate::report::Report;
use crate::stats::{median, ms};
use crate::{Res, FAST_KILLS, FAST_LOBBIES, FAST_REPORTERS, FAST_TTL_SECS, PROMPT};

/// A mesh server (`darkrift-mesh`) child process and its JSON lines, each stamped when read.
pub(crate) struct MeshChild {
    pub(crate) child: tokio::process::Child,
    pub(crate) id: u16,
    pub(crate) lines: mpsc::UnboundedReceiver<(serde_json::Value, Instant)>,
}

/// Starts a mesh server of `group` and waits for its registration.
pub(crate) async fn spawn_mesh(
    bin: &std::path::Path,
    endpoints: &[String],
    prefix: &str,
    group: &str,
    eviction: bool,
) -> Res<MeshChild> {
    let port = darkrift_etcd_testing::free_port()?.to_string();
    let cluster = repo_root().join("compose/cluster.toml");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--endpoints", &endpoints.join(","), "--prefix", prefix])
        .args(["--ttl", &format!("{FAST_TTL_SECS}s"), "--cluster"])
        .arg(&cluster)
        .args(["--group", group, "--host", "127.0.0.1", "--port", &port])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    if eviction {
        cmd.args(["--eviction-min-reporters", &FAST_REPORTERS.to_string()])
            .args(["--eviction-window", &format!("{FAST_TTL_SECS}s")]);
    }
    let mut child = spawn_quiet(&mut cmd)?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, mut lines) = mpsc::unbounded_channel();
    // Drains the pipe (the child never blocks on it) and stamps each line as it arrives.
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let at = Instant::now();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send((v, at)).is_err() {
                    break;
                }
            }
        }
    });
    let (registered, _) = wait_value(&mut lines, "mesh registration", |v| {
        v["event"] == "registered"
    })
    .await?;
    let id = registered["id"]
        .as_u64()
        .and_then(|id| u16::try_from(id).ok())
        .ok_or("registration line without an id")?;
    Ok(MeshChild { child, id, lines })
}

/// Waits for a JSON line matching `pred`; returns when it was read.
pub(crate) async fn wait_line(
    rx: &mut mpsc::UnboundedReceiver<(serde_json::Value, Instant)>,
    what: &str,
    pred: impl FnMut(&serde_json::Value) -> bool,
) -> Res<Instant> {
    Ok(wait_value(rx, what, pred).await?.1)
}

/// Waits for a JSON line matching `pred`; returns it and when it was read.
pub(crate) async fn wait_value(
    rx: &mut mpsc::UnboundedReceiver<(serde_json::Value, Instant)>,
    what: &str,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> Res<(serde_json::Value, Instant)> {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((v, at))) if pred(&v) => return Ok((v, at)),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("mesh output ended waiting for {what}").into()),
            Err(_) => return Err(format!("no {what} within {PROMPT:?}").into()),
        }
    }
}

/// Waits until every lobby has an identified link to `game`.
pub(crate) async fn linked(lobbies: &mut [MeshChild], game: u16) -> Res<()> {
    for lobby in lobbies {
        wait_line(&mut lobby.lines, "link to the game", |v| {
            v["event"] == "connected" && v["peer"] == game && v["direction"] == "upstream"
        })
        .await?;
    }
    Ok(())
}

/// Milliseconds from `killed` until the last lobby printed the game's leave.
pub(crate) async fn left_everywhere(
    lobbies: &mut [MeshChild],
    game: u16,
    killed: Instant,
) -> Res<f64> {
    let mut last = killed;
    for lobby in lobbies {
        let at = wait_line(&mut lobby.lines, "leave of the killed game", |v| {
            v["event"] == "left" && v["peer"] == game
        })
        .await?;
        last = last.max(at);
    }
    Ok(ms(last - killed))
}

/// P5b: `kill -9` of a mesh game server dialled by every lobby, eviction on (K reporters):
/// each lobby's link closes, its redial is refused, it reports, and the K-th report evicts.
/// Against the same mesh with eviction off, in the same run (lease expiry).
pub(crate) async fn p5b(endpoints: &[String], report: &mut Report) -> Res<()> {
    let bin = release_binary("darkrift-etcd-mesh", "darkrift-mesh")?;
    // Eviction on: one game at a time, so each kill is measured alone.
    let prefix = "/bench/p5b";
    let mut lobbies = Vec::new();
    for _ in 0..FAST_LOBBIES {
        lobbies.push(spawn_mesh(&bin, endpoints, prefix, "lobby", true).await?);
    }
    let mut fast = Vec::new();
    for _ in 0..FAST_KILLS {
        let mut game = spawn_mesh(&bin, endpoints, prefix, "game", true).await?;
        linked(&mut lobbies, game.id).await?;
        let killed = Instant::now();
        game.child.start_kill()?;
        game.child.wait().await?;
        fast.push(left_everywhere(&mut lobbies, game.id, killed).await?);
    }
    drop(lobbies);
    // Eviction off: the same topology, all games killed at once (each waits out its lease).
    let prefix = "/bench/p5b-off";
    let mut lobbies = Vec::new();
    for _ in 0..FAST_LOBBIES {
        lobbies.push(spawn_mesh(&bin, endpoints, prefix, "lobby", false).await?);
    }
    let mut games = Vec::new();
    for _ in 0..FAST_KILLS {
        let game = spawn_mesh(&bin, endpoints, prefix, "game", false).await?;
        linked(&mut lobbies, game.id).await?;
        games.push(game);
    }
    let mut killed = Vec::new();
    for game in &mut games {
        killed.push((game.id, Instant::now()));
        game.child.start_kill()?;
    }
    for game in &mut games {
        game.child.wait().await?;
    }
    // The lobbies print the leaves in expiry order: read each lobby's lines once, in order.
    let mut left: HashMap<u16, Instant> = HashMap::new();
    for lobby in &mut lobbies {
        let mut waiting: HashSet<u16> = killed.iter().map(|(id, _)| *id).collect();
        while !waiting.is_empty() {
            let mut peer = None;
            let at = wait_line(&mut lobby.lines, "leave of a killed game", |v| {
                let id = v["peer"].as_u64().and_then(|p| u16::try_from(p).ok());
                match id {
                    Some(id) if v["event"] == "left" && waiting.contains(&id) => {
                        peer = Some(id);
                        true
                    }
                    _ => false,
                }
            })
            .await?;
            if let Some(id) = peer {
                waiting.remove(&id);
                let last = left.entry(id).or_insert(at);
                *last = (*last).max(at);
            }
        }
    }
    let slow: Vec<f64> = killed
        .iter()
        .filter_map(|(id, at)| left.get(id).map(|l| ms(*l - *at)))
        .collect();
    drop(lobbies);
    let (mut fast_sorted, mut slow_sorted) = (fast.clone(), slow.clone());
    fast_sorted.sort_by(f64::total_cmp);
    slow_sorted.sort_by(f64::total_cmp);
    let (fast_median, fast_max) = (median(&fast), fast_sorted[fast_sorted.len() - 1]);
    let (slow_median, slow_max) = (median(&slow), slow_sorted[slow_sorted.len() - 1]);
    report.row(
        "P5b",
        format!(
            "kill -9 of a mesh game server → Leave at every one of its {FAST_LOBBIES} lobbies, \
             TTL {FAST_TTL_SECS} s, eviction K = {FAST_REPORTERS} ({} kills)",
            fast.len()
        ),
        format!(
            "min {:.0} / median {fast_median:.0} / max {fast_max:.0} ms",
            fast_sorted[0]
        ),
        format!(
            "eviction off (lease expiry), same mesh: median {slow_median:.0} / max {slow_max:.0} \
             ms ({} kills)",
            slow.len()
        ),
        "median ≤ 1000 ms, max ≤ 1500 ms",
        Some(fast_median <= 1000.0 && fast_max <= 1500.0),
    );
    report.bar(
        "P5b crash → leave at every lobby (median)",
        fast_median,
        vec![("eviction off", slow_median)],
        "ms",
        false,
    );
    report.notes.push(format!(
        "**P5b** — child processes of the mesh server (`darkrift-mesh`, mesh/, release): \
         {FAST_LOBBIES} lobbies dial each game server (`compose/cluster.toml`), all with \
         `--ttl {FAST_TTL_SECS}s --eviction-min-reporters {FAST_REPORTERS} --eviction-window \
         {FAST_TTL_SECS}s`. {FAST_KILLS} times, a game server starts, every lobby prints its \
         link, the game gets SIGKILL, and the time until the last lobby prints its `left` is \
         taken. Each lobby's link closes, its immediate redial is refused (the process is gone), \
         so it calls `handle_connection_failure` at once; the second report evicts the \
         registration (guarded by its create revision) and every lobby gets the leave from its \
         watch. Baseline: the same mesh without eviction, {FAST_KILLS} games killed at once, each \
         dropped when its lease expires. Fast detection needs live peers that dial the crashed \
         server and a host that refuses the connect; a host or network loss still waits for the \
         TTL."
    ));
    Ok(())
}
