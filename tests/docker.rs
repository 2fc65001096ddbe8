//! compose/ against the Docker tools themselves: a Docker engine answers, and every compose
//! tool installed here (Debian's docker-compose 1.29, Compose v2 as `docker compose`) accepts
//! the compose files with the test and ports overrides. The scenarios on the engine are
//! scripts/docker-test.sh, which CI runs (several minutes).
//!
//! Fails when no engine answers: a machine of this project has one. `DARKRIFT_SKIP_DOCKER=1`
//! skips on purpose (scripts/fresh-machine-check.sh sets it in its container).

use std::path::Path;
use std::process::Command;

fn skipped() -> bool {
    if std::env::var("DARKRIFT_SKIP_DOCKER").as_deref() == Ok("1") {
        eprintln!("skipped: DARKRIFT_SKIP_DOCKER=1");
        return true;
    }
    false
}

/// The compose tools that run here: `docker compose` (v2), `docker-compose` (1.29), and the
/// Compose v2 binary scripts/compose-v2.sh fetched, if it did.
fn compose_tools() -> Vec<Vec<String>> {
    let fetched = std::env::var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("darkrift-etcd/compose-v2/root/usr/bin/docker-compose"))
        .ok()
        .filter(|p| p.exists())
        .map(|p| vec![p.display().to_string()]);
    [
        Some(vec!["docker".to_owned(), "compose".to_owned()]),
        Some(vec!["docker-compose".to_owned()]),
        fetched,
    ]
    .into_iter()
    .flatten()
    .filter(|tool| {
        Command::new(&tool[0])
            .args(&tool[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect()
}

fn compose(tool: &[String], files: &[&str], args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("compose");
    let mut c = Command::new(&tool[0]);
    c.args(&tool[1..]).args(["-p", "darkrift-config-check"]);
    for f in files {
        c.arg("-f").arg(dir.join(f));
    }
    let out = c
        .args(args)
        .env("DARKRIFT_ETCD_IMAGE", "darkrift-etcd-test/etcd:check")
        .env("DARKRIFT_APP_IMAGE", "darkrift-etcd-test/app:check")
        .env("DARKRIFT_SERVER_IMAGE", "darkrift-etcd-test/darkrift:check")
        .output()
        .expect("compose runs");
    assert!(
        out.status.success(),
        "{tool:?} {files:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_engine_answers_and_every_compose_tool_accepts_the_files() {
    if skipped() {
        return;
    }
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    let answered = out.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        answered,
        "no Docker engine answers (`docker version`: {}); set DARKRIFT_SKIP_DOCKER=1 to skip on purpose",
        out.map_or_else(
            |e| e.to_string(),
            |o| String::from_utf8_lossy(&o.stderr).into_owned()
        )
    );
    let tools = compose_tools();
    assert!(!tools.is_empty(), "no compose tool installed");
    let all = [
        "docker-compose",
        "docker-compose.test",
        "docker-compose.ports",
    ]
    .map(|f| format!("{f}.yml"));
    for tool in &tools {
        for n in 1..=all.len() {
            let files: Vec<&str> = all[..n].iter().map(String::as_str).collect();
            compose(tool, &files, &["config", "-q"]);
        }
        let services = compose(
            tool,
            &["docker-compose.yml"],
            &["--profile", "ids", "config", "--services"],
        );
        for s in ["etcd1", "lobby1", "game2", "watch", "register", "check-ids"] {
            assert!(services.lines().any(|l| l == s), "{tool:?}: no {s}");
        }
        let services = compose(
            tool,
            &["docker-compose.yml", "docker-compose.test.yml"],
            &["--profile", "darkrift", "config", "--services"],
        );
        for s in [
            "darkrift-lobby1",
            "darkrift-lobby2",
            "darkrift-game1",
            "darkrift-game2",
        ] {
            assert!(services.lines().any(|l| l == s), "{tool:?}: no {s}");
        }
    }
}
