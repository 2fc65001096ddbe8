//! The `darkrift-etcd` CLI against real etcd: JSON lines on stdout, logs on stderr, signals.
#![cfg(feature = "test-support")]

mod common;

use std::process::Stdio;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn cli(etcd: &darkrift_etcd::testing::EtcdCluster, prefix: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"));
    cmd.env("DARKRIFT_ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("DARKRIFT_ETCD_PREFIX", prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    (child, BufReader::new(stdout).lines())
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let l = tokio::time::timeout(PROMPT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn register_watch_ls_and_sigterm() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (mut watch, mut watch_lines) = spawn({
        let mut c = cli(&etcd, &prefix);
        c.args(["watch", "--group", "game"]);
        c
    });
    assert_eq!(
        line(&mut watch_lines).await,
        serde_json::json!({"event": "synced"})
    );

    let (mut reg, mut reg_lines) = spawn({
        let mut c = cli(&etcd, &prefix);
        c.args([
            "register",
            "--group",
            "game",
            "--host",
            "127.0.0.1",
            "--port",
            "4296",
        ])
        .args([
            "--property",
            "region=eu",
            "--property",
            "tier=1",
            "--ttl",
            "3",
        ]);
        c
    });
    let registered = line(&mut reg_lines).await;
    assert_eq!(registered["event"], "registered");
    assert_eq!(registered["group"], "game");
    assert_eq!(registered["port"], 4296);
    let id = registered["id"].as_u64().expect("id");
    assert_eq!(line(&mut reg_lines).await["event"], "synced");
    let own_join = line(&mut reg_lines).await;
    assert_eq!(own_join["event"], "join");
    assert_eq!(own_join["id"], id);
    assert_eq!(
        own_join["properties"],
        serde_json::json!({"region": "eu", "tier": "1"})
    );
    assert!(own_join["revision"].as_i64().expect("revision") > 0);

    let seen = line(&mut watch_lines).await;
    assert_eq!(seen["event"], "join");
    assert_eq!(seen["id"], id);
    assert_eq!(seen["host"], "127.0.0.1");

    // ls: a table, and a JSON array.
    let out = cli(&etcd, &prefix)
        .args(["ls", "--json"])
        .output()
        .await
        .expect("ls");
    assert!(out.status.success());
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json array");
    assert_eq!(
        listed,
        serde_json::json!([{"id": id, "group": "game", "host": "127.0.0.1", "port": 4296,
                            "properties": {"region": "eu", "tier": "1"}}])
    );
    let out = cli(&etcd, &prefix)
        .args(["ls", "--group", "lobby"])
        .output()
        .await
        .expect("ls");
    let table = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(
        table.lines().count(),
        1,
        "header only for an empty group: {table}"
    );
    let out = cli(&etcd, &prefix).arg("ls").output().await.expect("ls");
    let table = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        table.lines().nth(1).expect("a row").contains("region=eu"),
        "{table}"
    );

    // SIGTERM: deregisters, says so, exits 0; the watcher sees the leave.
    sigterm(&reg);
    assert_eq!(
        line(&mut reg_lines).await,
        serde_json::json!({"event": "deregistered", "id": id})
    );
    let status = tokio::time::timeout(PROMPT, reg.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    let left = line(&mut watch_lines).await;
    assert_eq!(left["event"], "leave");
    assert_eq!(left["id"], id);
    sigterm(&watch);
    let status = tokio::time::timeout(PROMPT, watch.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success());
}

#[tokio::test]
async fn failed_registration_exits_non_zero_with_a_clear_error() {
    let etcd = etcd().await;
    let prefix = prefix();
    let out = cli(&etcd, &prefix)
        .args(["register", "--group", "game", "--host", "h", "--port", "0"])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("port 0"), "{stderr}");

    let out = cli(&etcd, &prefix)
        .args([
            "register",
            "--group",
            "bad group",
            "--host",
            "h",
            "--port",
            "1",
        ])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid group name"));

    let port = darkrift_etcd::testing::free_port().expect("port");
    let out = cli(&etcd, &prefix)
        .env(
            "DARKRIFT_ETCD_ENDPOINTS",
            format!("http://127.0.0.1:{port}"),
        )
        .env("DARKRIFT_ETCD_CONNECT_TIMEOUT", "0.5")
        .args(["register", "--group", "g", "--host", "h", "--port", "1"])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unreachable") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    // Nothing reached etcd.
    let mut raw = etcd.client().await.expect("raw");
    let all = raw
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(all.count(), 0);
}

#[tokio::test]
async fn config_file_is_read_and_options_override_it() {
    let etcd = etcd().await;
    let prefix = prefix();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("darkrift.toml");
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(
        &file,
        format!(
            "endpoints = [{}]\nprefix = \"{prefix}\"\nlease_ttl = 3\n",
            endpoints.join(", ")
        ),
    )
    .expect("write config");
    let c = darkrift_etcd::Connector::connect(config(&etcd, &prefix))
        .await
        .expect("connect");
    let id = c
        .register_server("game", "127.0.0.1", 5, no_props())
        .await
        .expect("register");

    // Only the file says where etcd and the registry are.
    let out = Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"))
        .args(["ls", "--json", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["id"], id);
    // An option overrides the file.
    let out = Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"))
        .args(["ls", "--json", "--prefix", "/elsewhere", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("ls");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json"),
        serde_json::json!([])
    );
    // A broken file is a clear error.
    std::fs::write(&file, "lease_ttl = \"soon\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"))
        .args(["ls", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("ls");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("darkrift.toml"));
}
