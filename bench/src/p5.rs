//! P5: a `darkrift-etcd register` child process killed → its leave at a peer (lease expiry).

use std::collections::HashMap;
use std::time::Instant;

use darkrift_etcd::{Connector, Event};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::children::{release_binary, spawn_quiet};
use crate::events::{config, timestamped, wait_event};
use crate::report::Report;
use crate::stats::{median, ms};
use crate::{BoxError, Res, KILLED_CHILDREN, KILL_TTL_SECS, PROMPT};

pub(crate) async fn p5(endpoints: &[String], report: &mut Report) -> Res<()> {
    let prefix = "/bench/p5";
    let obs = Connector::connect(config(endpoints, prefix)).await?;
    let mut rx = timestamped(obs.events()?);
    wait_event(&mut rx, "synced", |e| matches!(e, Event::Synced { .. })).await?;
    let bin = release_binary("darkrift-etcd-cli", "darkrift-etcd")?;
    let mut children = Vec::new();
    for i in 0..KILLED_CHILDREN {
        let mut child = tokio::process::Command::new(&bin);
        child
            .args(["--endpoints", &endpoints.join(","), "--prefix", prefix])
            .args(["register", "--group", "p5", "--host", "127.0.0.1"])
            .args(["--port", &(7100 + i).to_string()])
            .args(["--ttl", &KILL_TTL_SECS.to_string()]);
        let mut child = spawn_quiet(&mut child)?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let id = tokio::time::timeout(PROMPT, async {
            while let Some(line) = lines.next_line().await? {
                let v: serde_json::Value = serde_json::from_str(&line)?;
                if v["event"] == "registered" {
                    return u16::try_from(v["id"].as_u64().ok_or("no id")?).map_err(BoxError::from);
                }
            }
            Err::<u16, BoxError>("child exited before registering".into())
        })
        .await??;
        wait_event(
            &mut rx,
            "child join",
            |e| matches!(e, Event::Join { server, .. } if server.id == id),
        )
        .await?;
        // Keep the pipe open (and drained) so the child never blocks writing its events.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        children.push((child, id));
    }
    let mut killed = Vec::new();
    for (child, id) in &mut children {
        let at = Instant::now();
        child.start_kill()?;
        killed.push((*id, at));
    }
    for (child, _) in &mut children {
        child.wait().await?;
    }
    let mut gone = Vec::new();
    let mut waiting: HashMap<u16, Instant> = killed.into_iter().collect();
    while !waiting.is_empty() {
        let mut left = None;
        let at = wait_event(&mut rx, "leave of a killed child", |e| match e {
            Event::Leave { id, .. } if waiting.contains_key(id) => {
                left = Some(*id);
                true
            }
            _ => false,
        })
        .await?;
        if let Some(id) = left {
            if let Some(t) = waiting.remove(&id) {
                gone.push(ms(at - t));
            }
        }
    }
    gone.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss, reason = "a TTL of a few seconds")]
    let ttl_ms = 1000.0 * KILL_TTL_SECS as f64;
    report.row(
        "P5",
        format!(
            "kill -9 → Leave at a peer, TTL T = {KILL_TTL_SECS} s ({KILLED_CHILDREN} processes)"
        ),
        format!(
            "min {:.0} / median {:.0} / max {:.0} ms",
            gone[0],
            median(&gone),
            gone[gone.len() - 1]
        ),
        format!("T = {ttl_ms:.0} ms (Consul connector: ≥ 60 s by its health check)"),
        "—",
        None,
    );
    report.bar(
        "P5 kill → leave (median)",
        median(&gone),
        vec![("lease TTL", ttl_ms)],
        "ms",
        false,
    );
    report.notes.push(format!(
        "**P5** — {KILLED_CHILDREN} `darkrift-etcd register --ttl {KILL_TTL_SECS}` child processes \
         (the release binary of this package) register; an observer connector sees their joins; \
         each is then sent SIGKILL and the time to the observer's Leave is taken. The lease is \
         renewed every T/3, so etcd expires it between about 2T/3 and T after the kill, plus \
         etcd's expiry check (every 500 ms)."
    ));
    Ok(())
}
