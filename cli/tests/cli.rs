//! The `darkrift-etcd` CLI against real etcd: the JSON-lines contract of docs/cli.md, exit
//! codes, configuration layers, operator commands, closed pipes, metrics and health.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use darkrift_etcd::admin::{Admin, Eviction};
use darkrift_etcd::Event;
use darkrift_etcd_testing::{free_port, EtcdCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const CLI: &str = env!("CARGO_BIN_EXE_darkrift-etcd");

fn cli(etcd: &EtcdCluster, prefix: &str) -> Command {
    let mut cmd = Command::new(CLI);
    cmd.env("DARKRIFT_ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("DARKRIFT_ETCD_PREFIX", prefix)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, args: &[&str]) -> Output {
    tokio::time::timeout(PROMPT, cmd.args(args).output())
        .await
        .expect("finishes in time")
        .expect("runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code, not a signal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn spawn(mut cmd: Command, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.args(args).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    (child, BufReader::new(stdout).lines())
}

/// `darkrift-etcd register` of server game/127.0.0.1:4296, with more arguments.
fn spawn_registrant(
    etcd: &EtcdCluster,
    prefix: &str,
    more: &[&str],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut args = vec![
        "register",
        "--group",
        "game",
        "--host",
        "127.0.0.1",
        "--port",
        "4296",
    ];
    args.extend_from_slice(more);
    spawn(cli(etcd, prefix), &args)
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let l = tokio::time::timeout(PROMPT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"))
}

async fn exit_code(child: &mut Child) -> i32 {
    tokio::time::timeout(PROMPT, child.wait())
        .await
        .expect("exits in time")
        .expect("status")
        .code()
        .expect("exit code")
}

/// docs/cli.md's JSON-lines table: event → field → type (`*` rows apply to every event).
fn schema() -> BTreeMap<String, BTreeMap<String, String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
        .expect("docs/cli.md");
    let section = doc
        .split("## JSON lines")
        .nth(1)
        .expect("a JSON lines section");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [_, event, field, ty, _, ..] = cells.as_slice() else {
            panic!("bad row {row}")
        };
        out.entry(event.trim_matches('`').to_owned())
            .or_default()
            .insert(field.trim_matches('`').to_owned(), (*ty).to_owned());
    }
    assert!(out.len() > 10, "{out:?}");
    out
}

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "integer" => v.is_i64() || v.is_u64(),
        "integer?" => v.is_null() || v.is_i64() || v.is_u64(),
        "string" => v.is_string(),
        "string?" => v.is_null() || v.is_string(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string)),
        other => panic!("undocumented type {other}"),
    }
}

/// Checks one line against the table: exactly the documented fields, each of its type.
fn check_line(schema: &BTreeMap<String, BTreeMap<String, String>>, v: &Value) {
    let event = v["event"]
        .as_str()
        .unwrap_or_else(|| panic!("no event: {v}"));
    assert_eq!(v["v"], 1, "{v}");
    let fields = schema
        .get(event)
        .unwrap_or_else(|| panic!("undocumented event {event}: {v}"));
    let mut want = schema["*"].clone();
    want.extend(fields.clone());
    check_fields(&want, v);
    if event == "list" {
        let mut item = schema["server"].clone();
        item.remove("revision");
        for s in v["servers"].as_array().expect("servers") {
            check_fields(&item, s);
        }
    }
}

fn check_fields(want: &BTreeMap<String, String>, v: &Value) {
    let got = v.as_object().expect("an object");
    for (field, ty) in want {
        let value = got.get(field).unwrap_or_else(|| panic!("{v}: no {field}"));
        assert!(type_ok(value, ty), "{v}: {field} is not {ty}");
    }
    for field in got.keys() {
        assert!(want.contains_key(field), "{v}: undocumented field {field}");
    }
}

/// Every line of a real session: register, watch (join, leave, synced), ls, get, evict,
/// a stopped registration; each checked against docs/cli.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_line_of_a_session_follows_the_documented_contract() {
    let schema = schema();
    let etcd = etcd().await;
    let prefix = prefix();
    let mut seen: Vec<Value> = Vec::new();

    let (mut watch, mut watch_lines) = spawn(cli(&etcd, &prefix), &["watch"]);
    let synced = line(&mut watch_lines).await;
    assert_eq!(
        (&synced["event"], &synced["members"]),
        (&"synced".into(), &0.into())
    );
    seen.push(synced);

    let (mut reg, mut reg_lines) = spawn_registrant(
        &etcd,
        &prefix,
        &[
            "--property",
            "region=eu",
            "--property",
            "tier=1",
            "--ttl",
            "3s",
        ],
    );
    let registered = line(&mut reg_lines).await;
    assert_eq!(registered["event"], "registered");
    let id = registered["id"].as_u64().expect("id");
    assert!(registered["revision"].as_i64().expect("revision") > 0);
    let mut own = Vec::new();
    while own.len() < 2 {
        own.push(line(&mut reg_lines).await);
    }
    assert_eq!(own[0]["event"], "synced");
    assert_eq!(own[1]["event"], "join");
    assert_eq!(own[1]["revision"], registered["revision"]);
    assert_eq!(
        own[1]["properties"],
        serde_json::json!({"region": "eu", "tier": "1"})
    );
    seen.push(registered);
    seen.extend(own);
    let join = line(&mut watch_lines).await;
    assert_eq!((&join["event"], &join["id"]), (&"join".into(), &id.into()));
    seen.push(join);

    let out = run(cli(&etcd, &prefix), &["ls", "-o", "json"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(list["servers"][0]["id"], id);
    assert_eq!(list["servers"][0]["properties"]["region"], "eu");
    seen.push(list);
    let out = run(cli(&etcd, &prefix), &["get", &id.to_string(), "-o", "json"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let got: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        (&got["group"], &got["port"]),
        (&"game".into(), &4296.into())
    );
    assert!(got["ttl_left_s"].as_u64().expect("ttl") <= 3);
    seen.push(got);

    // SIGTERM: deregisters, says so, exits 0; the watcher's leave names host and port.
    sigterm(&reg);
    let deregistered = line(&mut reg_lines).await;
    assert_eq!(
        deregistered,
        serde_json::json!({"v": 1, "event": "deregistered", "id": id})
    );
    seen.push(deregistered);
    assert_eq!(exit_code(&mut reg).await, 0);
    let leave = line(&mut watch_lines).await;
    assert_eq!(
        (
            &leave["event"],
            &leave["id"],
            &leave["host"],
            &leave["port"],
            &leave["group"]
        ),
        (
            &"leave".into(),
            &id.into(),
            &"127.0.0.1".into(),
            &4296.into(),
            &"game".into()
        )
    );
    seen.push(leave);

    // A registrant that stops when its key is removed, evicted: registration_stopped, exit 5.
    let mut c = cli(&etcd, &prefix);
    c.env("DARKRIFT_ETCD_ON_KEY_REMOVED", "stop")
        .env("DARKRIFT_ETCD_GROUP", "lobby")
        .env("DARKRIFT_ETCD_HOST", "10.1.2.3")
        .env("DARKRIFT_ETCD_PORT", "7001");
    let (mut victim, mut victim_lines) = spawn(c, &["register"]);
    let registered = line(&mut victim_lines).await;
    let victim_id = registered["id"].as_u64().expect("id").to_string();
    assert_eq!(
        registered["host"], "10.1.2.3",
        "the host came from DARKRIFT_ETCD_HOST"
    );
    seen.push(registered);
    seen.push(line(&mut watch_lines).await);
    let out = run(
        cli(&etcd, &prefix),
        &["evict", &victim_id, "--yes", "-o", "json"],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    seen.push(serde_json::from_slice(&out.stdout).expect("evicted line"));
    loop {
        let l = line(&mut victim_lines).await;
        let stopped = l["event"] == "registration_stopped";
        seen.push(l);
        if stopped {
            break;
        }
    }
    assert_eq!(exit_code(&mut victim).await, 5);
    let leave = line(&mut watch_lines).await;
    assert_eq!(leave["event"], "leave");
    seen.push(leave);

    sigterm(&watch);
    assert_eq!(exit_code(&mut watch).await, 0);
    for v in &seen {
        check_line(&schema, v);
    }
    let events: std::collections::BTreeSet<&str> =
        seen.iter().filter_map(|v| v["event"].as_str()).collect();
    for e in [
        "registered",
        "synced",
        "join",
        "leave",
        "deregistered",
        "list",
        "server",
        "evicted",
        "registration_stopped",
    ] {
        assert!(events.contains(e), "the session printed no {e}");
    }
}

#[tokio::test]
async fn get_ls_and_evict_never_delete_a_newer_holder() {
    let etcd = etcd().await;
    let prefix = prefix();
    // One id only: a re-registration gets the same id with a new create revision.
    let cfg = config(&etcd, &prefix).with_id_space(1);
    let (a, id) = registered(cfg.clone(), "game", 5000).await;
    let admin = Admin::connect(&cfg).await.expect("admin");
    let (_, old) = admin.get(id).await.expect("get");
    let old = old.expect("registered");
    a.deregister_server().await.expect("deregister");
    let (_b, id_b) = registered(cfg.clone(), "game", 5001).await;
    assert_eq!(id_b, id);
    assert_eq!(admin.evict(&old).await.expect("evict"), Eviction::Changed);
    let (_, now) = admin.get(id).await.expect("get");
    let now = now.expect("the newer holder is still there");
    assert_eq!(now.server.port, 5001);
    assert_ne!(now.create_revision, old.create_revision);

    let id = id.to_string();
    let out = run(cli(&etcd, &prefix), &["get", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TTL LEFT") && text.contains("5001"), "{text}");
    let out = run(cli(&etcd, &prefix), &["ls", "-o", "wide"]).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "GROUP",
            "HOST",
            "PORT",
            "AGE",
            "TTL LEFT",
            "PROPERTIES"
        ]
    );
    assert_eq!(table.lines().count(), 2, "{table}");
    let out = run(cli(&etcd, &prefix), &["ls", "--group", "lobby"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    for args in [vec!["get", "2"], vec!["evict", "2", "--yes"]] {
        let out = run(cli(&etcd, &prefix), &args).await;
        assert_eq!(code(&out), 4, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("server 2 is not registered"),
            "{}",
            stderr(&out)
        );
    }
    // No terminal and no --yes: refused, nothing deleted.
    let out = run(cli(&etcd, &prefix), &["evict", &id]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(admin.get(id_b).await.expect("get").1.is_some());

    let out = run(cli(&etcd, &prefix), &["evict", &id, "--yes"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("evicted server"));
    let mut raw = etcd.client().await.expect("raw");
    let ttl = raw.lease_time_to_live(now.lease, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1, "the evicted registration's lease is revoked");
}

/// Arguments, variables, the exit code wanted, and what the error line must say.
type BadCase = (
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
    i32,
    &'static str,
);

#[tokio::test]
async fn bad_input_is_one_line_the_right_code_and_nothing_written() {
    let etcd = etcd().await;
    let prefix = prefix();
    let register = ["register", "--group", "game", "--host", "h", "--port", "1"];
    let cases: Vec<BadCase> = vec![
        (
            vec!["register", "--group", "game", "--host", "h", "--port", "0"],
            vec![],
            2,
            "port 0",
        ),
        (
            vec![
                "register",
                "--group",
                "bad group",
                "--host",
                "h",
                "--port",
                "1",
            ],
            vec![],
            2,
            "invalid group name",
        ),
        (
            vec!["register", "--group", "game", "--host", "h"],
            vec![],
            2,
            "register needs --port",
        ),
        (
            register.to_vec(),
            vec![("DARKRIFT_ETCD_ENDPOINTS", "notaurl")],
            2,
            "not an etcd endpoint",
        ),
        (
            register.to_vec(),
            vec![("DARKRIFT_ETCD_REQUEST_TIMEOUT", "soon")],
            2,
            "DARKRIFT_ETCD_REQUEST_TIMEOUT",
        ),
        (
            register.to_vec(),
            vec![("DARKRIFT_ETCD_TTL", "1500ms")],
            2,
            "whole number of seconds",
        ),
        (
            vec!["ls", "-o", "yaml"],
            vec![],
            2,
            "invalid value 'yaml' for '--output <OUTPUT>' [possible values: table, wide, json]",
        ),
        (
            vec!["config", "--ttl", "1500ms"],
            vec![],
            2,
            "whole number of seconds, at least 1 (from flag --ttl)",
        ),
        (
            vec!["config"],
            vec![("DARKRIFT_ETCD_ENDPOINTS", "notaurl")],
            2,
            "not an etcd endpoint (no port); write http://host:port (from env DARKRIFT_ETCD_ENDPOINTS)",
        ),
        (
            vec!["config"],
            vec![("DARKRIFT_ETCD_GROUP", "a/b")],
            2,
            "invalid group name",
        ),
        (
            vec!["watch", "--metrics-addr", "nowhere"],
            vec![],
            2,
            "is not HOST:PORT or :PORT",
        ),
        (
            vec!["watch", "--group", "a/b"],
            vec![],
            2,
            "invalid group name",
        ),
        (vec!["get", "x"], vec![], 2, "invalid value 'x'"),
    ];
    for (args, env, want, says) in cases {
        let mut c = cli(&etcd, &prefix);
        c.envs(env.iter().copied());
        let out = run(c, &args).await;
        let err = stderr(&out);
        assert_eq!(code(&out), want, "{args:?} {env:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("darkrift-etcd: error: ") && first.contains(says),
            "{args:?}: {err}"
        );
        assert!(
            err.lines().skip(1).all(|l| l.starts_with("  hint: ")),
            "{args:?}: {err}"
        );
    }
    let port = free_port().expect("port");
    let mut c = cli(&etcd, &prefix);
    c.env(
        "DARKRIFT_ETCD_ENDPOINTS",
        format!("http://127.0.0.1:{port}"),
    )
    .env("DARKRIFT_ETCD_CONNECT_TIMEOUT", "500ms");
    let out = run(c, &register).await;
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(
        err.contains("Connection refused") && !err.contains("tonic::"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: is etcd running at http://127.0.0.1:{port}?"
        )),
        "{err}"
    );
    let mut raw = etcd.client().await.expect("raw");
    let all = raw
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(all.count(), 0, "nothing reached etcd");
}

#[tokio::test]
async fn settings_come_from_file_env_and_flags_in_that_order() {
    let etcd = etcd().await;
    let prefix = prefix();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("darkrift.toml");
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    std::fs::write(
        &file,
        format!(
            "endpoints = [{}]\nprefix = \"{prefix}\"\nlease_ttl = \"3s\"\nrequest_timeout = 4\n",
            endpoints.join(", ")
        ),
    )
    .expect("write config");
    let (_c, id) = registered(config(&etcd, &prefix), "game", 5).await;
    let bare = || {
        let mut c = Command::new(CLI);
        c.env_remove("RUST_LOG").kill_on_drop(true);
        c
    };
    let file_arg = file.to_str().expect("utf8");
    // Only the file says where etcd and the registry are.
    let out = run(bare(), &["ls", "-o", "json", "--config", file_arg]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed["servers"][0]["id"], id);
    // A variable overrides the file, a flag the variable.
    let mut c = bare();
    c.env("DARKRIFT_ETCD_PREFIX", "/from-env");
    let out = run(c, &["ls", "-o", "json", "--config", file_arg]).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json")["servers"],
        serde_json::json!([])
    );
    let mut c = bare();
    c.env("DARKRIFT_ETCD_PREFIX", "/from-env")
        .env("DARKRIFT_ETCD_REQUEST_TIMEOUT", "1m")
        .env("DARKRIFT_ETCD_LEASE_TTLL", "9")
        .env("DARKRIFT_ETCD_PASSWORD", "hunter2")
        .env("DARKRIFT_ETCD_USER", "root");
    let out = run(
        c,
        &[
            "config", "--config", file_arg, "--prefix", &prefix, "--ttl", "7",
        ],
    )
    .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = |key: &str| -> Vec<String> {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key}: {shown}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        row("prefix")[1..],
        [prefix.clone(), "flag".into(), "--prefix".into()]
    );
    assert_eq!(row("lease_ttl")[1..], ["7s", "flag", "--ttl"]);
    assert_eq!(
        row("request_timeout")[1..],
        ["1m", "env", "DARKRIFT_ETCD_REQUEST_TIMEOUT"]
    );
    assert_eq!(row("endpoints")[2], "file");
    assert_eq!(row("connect_timeout")[1..], ["5s", "default"]);
    assert_eq!(row("auth.password")[1], "***");
    assert!(!shown.contains("hunter2"), "{shown}");
    let warnings: Vec<String> = stderr(&out).lines().map(str::to_owned).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("DARKRIFT_ETCD_LEASE_TTLL")
            && warnings[0].contains("did you mean DARKRIFT_ETCD_LEASE_TTL?"),
        "{warnings:?}"
    );
    // A broken file is a configuration error naming it.
    std::fs::write(&file, "lease_ttl = \"soon\"\n").expect("write");
    let out = run(bare(), &["ls", "--config", file_arg]).await;
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("darkrift.toml"));
}

#[tokio::test]
async fn a_closed_stdout_ends_quietly_and_a_registrant_still_deregisters() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (mut watch, mut lines) = spawn(cli(&etcd, &prefix), &["watch"]);
    assert_eq!(line(&mut lines).await["event"], "synced");
    drop(lines);
    assert_eq!(exit_code(&mut watch).await, 0, "watch | head -1 exits 0");

    // A long TTL: the key must go because the registrant deregisters, not because it expires.
    let (mut reg, mut lines) = spawn_registrant(&etcd, &prefix, &["--ttl", "60"]);
    let id = line(&mut lines).await["id"].as_u64().expect("id");
    drop(lines);
    let mut stderr_pipe = reg.stderr.take().expect("stderr");
    assert_eq!(exit_code(&mut reg).await, 0);
    let mut err = String::new();
    stderr_pipe.read_to_string(&mut err).await.expect("stderr");
    assert!(!err.contains("panicked"), "{err}");
    let admin = Admin::connect(&config(&etcd, &prefix))
        .await
        .expect("admin");
    let id = u16::try_from(id).expect("u16");
    assert!(
        admin.get(id).await.expect("get").1.is_none(),
        "deregistered at once"
    );
}

/// Scrapes until `want` holds, within `bound` (nothing to await: the endpoint is polled).
async fn scrape_until(
    addr: SocketAddr,
    path: &str,
    bound: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let got = http_get(addr, path).await;
        if let Some((status, body)) = &got {
            if want(*status, body) {
                return body.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: last answer {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_follow_members_and_etcd() {
    let mut etcd = etcd().await;
    let prefix = prefix();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port().expect("port"))
        .parse()
        .expect("addr");
    let addr_arg = addr.to_string();
    let (mut reg, mut lines) =
        spawn_registrant(&etcd, &prefix, &["--ttl", "4", "--metrics-addr", &addr_arg]);
    assert_eq!(line(&mut lines).await["event"], "registered");
    let body = scrape_until(addr, "/metrics", PROMPT, |s, b| {
        s == 200 && b.contains("darkrift_etcd_group_members{group=\"game\"} 1")
    })
    .await;
    for help in [
        "darkrift_etcd_members",
        "darkrift_etcd_group_members",
        "darkrift_etcd_alloc_txns_total",
    ] {
        assert!(body.contains(&format!("# HELP {help} ")), "{help}: {body}");
    }
    scrape_until(addr, "/healthz", PROMPT, |s, _| s == 200).await;
    let (_peer, _) = registered(config(&etcd, &prefix), "game", 2).await;
    scrape_until(addr, "/metrics", PROMPT, |_, b| {
        b.contains("darkrift_etcd_group_members{group=\"game\"} 2")
    })
    .await;

    scrape_until(addr, "/readyz", PROMPT, |s, _| s == 200).await;

    etcd.stop(0).expect("stop etcd");
    scrape_until(addr, "/healthz", Duration::from_secs(20), |s, _| s == 503).await;
    // The registry is down, the game server is not: still ready, past its lease TTL too (4 s).
    let down = tokio::time::Instant::now();
    while down.elapsed() < Duration::from_secs(6) {
        let (status, body) = http_get(addr, "/readyz").await.expect("an answer");
        assert_eq!(status, 200, "ready during the outage: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    etcd.restart(0).await.expect("restart etcd");
    scrape_until(addr, "/healthz", Duration::from_secs(30), |s, _| s == 200).await;
    sigterm(&reg);
    assert_eq!(exit_code(&mut reg).await, 0);
}

#[test]
fn every_command_has_help_with_an_example_and_completions() {
    for sub in [
        "register",
        "watch",
        "ls",
        "get",
        "evict",
        "config",
        "completions",
    ] {
        let out = std::process::Command::new(CLI)
            .args([sub, "--help"])
            .output()
            .expect("help");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{sub}: {text}");
    }
    let out = std::process::Command::new(CLI)
        .arg("--version")
        .output()
        .expect("version");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("darkrift-etcd "));
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(CLI)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

/// A `darkrift-etcd register` process killed with SIGKILL: peers see its leave within
/// TTL + 1.5 s.
#[tokio::test]
async fn killed_cli_process_leaves_within_ttl() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let ttl = 2;
    let (mut child, mut lines) = spawn_registrant(&etcd, &prefix, &["--ttl", "2"]);
    let registered = line(&mut lines).await;
    assert_eq!(registered["event"], "registered");
    let id = u16::try_from(registered["id"].as_u64().expect("id")).expect("u16");
    assert!(
        matches!(next(&mut peer_events, PROMPT).await, Event::Join { ref server, .. } if server.id == id)
    );

    child.start_kill().expect("SIGKILL");
    let killed_at = tokio::time::Instant::now();
    child.wait().await.expect("reaped");
    // The issue's bound: TTL + 1.5 s (etcd's expiry scan runs every 500 ms; the rest is the
    // delete's commit and its delivery).
    let bound = Duration::from_secs(ttl) + Duration::from_millis(1500);
    match next(&mut peer_events, bound).await {
        Event::Leave { id: left, .. } => assert_eq!(left, id),
        other => panic!("expected a leave, got {other:?}"),
    }
    println!("kill → leave: {:?}", killed_at.elapsed());
    assert!(
        killed_at.elapsed() <= bound,
        "leave after {:?}",
        killed_at.elapsed()
    );
}

/// `evict N --yes` of a live holder (default `on_key_removed = restore`): each evict costs its
/// peers exactly one leave and one join, three times over. (Deleting the keys and revoking the
/// lease after gave two of each: the holder restored its key on the still-live lease in
/// between.)
#[tokio::test]
async fn an_evict_of_a_live_holder_costs_its_peers_one_leave_and_one_join() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let holder = darkrift_etcd::Connector::connect(config(&etcd, &prefix))
        .await
        .expect("connects");
    let mut holder_events = holder.events().expect("events");
    let id = holder
        .register_server("game", "127.0.0.1", 4296, no_props())
        .await
        .expect("registers");
    assert!(matches!(
        next(&mut peer_events, PROMPT).await,
        Event::Join { ref server, .. } if server.id == id
    ));
    for round in 1..=3 {
        let out = run(cli(&etcd, &prefix), &["evict", &id.to_string(), "--yes"]).await;
        assert_eq!(code(&out), 0, "round {round}: {}", stderr(&out));
        // The holder is back; its new key's create revision is the revision of its join.
        let back = collect_until(&mut holder_events, PROMPT, |e| {
            matches!(e.last(), Some(Event::Reregistered { .. }))
        })
        .await;
        let Some(Event::Reregistered {
            id: back_id,
            create_revision,
            ..
        }) = back.last().cloned()
        else {
            unreachable!()
        };
        assert_eq!(back_id, id, "round {round}: same id");
        let seen = collect_until(&mut peer_events, PROMPT, |e| {
            matches!(e.last(), Some(Event::Join { revision, .. }) if *revision == create_revision)
        })
        .await;
        assert!(
            matches!(
                seen.as_slice(),
                [Event::Leave { id: left, .. }, Event::Join { server, .. }]
                    if *left == id && server.id == id
            ),
            "round {round}: one leave and one join, got {seen:#?}"
        );
    }
}

/// The id space full, one holder's slot deleted by hand (the holders' long TTL keeps it
/// deleted): a third `register` is told the space is exhausted (exit 5), not contention
/// (exit 1) after attempts it never made, and writes nothing.
#[tokio::test]
async fn a_full_id_space_with_a_slot_deleted_is_exhausted() {
    let etcd = etcd().await;
    let prefix = prefix();
    let cfg = config(&etcd, &prefix)
        .with_id_space(2)
        .with_lease_ttl(Duration::from_secs(60));
    let (_a, id_a) = registered(cfg.clone(), "game", 5000).await;
    let (_b, id_b) = registered(cfg.clone(), "game", 5001).await;
    let mut raw = etcd.client().await.expect("raw");
    let slot = darkrift_etcd::keys::KeyLayout::new(&prefix)
        .expect("layout")
        .slot_key(id_a);
    assert_eq!(raw.delete(slot, None).await.expect("del").deleted(), 1);

    let out = run(
        cli(&etcd, &prefix),
        &[
            "register",
            "--group",
            "game",
            "--host",
            "127.0.0.1",
            "--port",
            "5002",
            "--id-space",
            "2",
        ],
    )
    .await;
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no free server id"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "nothing registered");
    assert_eq!(
        truth(&etcd, &prefix).await,
        [id_a, id_b].into_iter().collect()
    );
}

/// SIGTERM to a registered `register` while etcd is unreachable (a stalled path): the whole
/// shutdown (deregistration transaction and lease revoke) is bounded by one request timeout,
/// not one each.
#[tokio::test]
async fn sigterm_with_etcd_stalled_exits_within_one_request_timeout() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = darkrift_etcd_testing::FaultProxy::start(&etcd.endpoint(0))
        .await
        .expect("proxy");
    let request_timeout = Duration::from_secs(2);
    let mut cmd = cli(&etcd, &prefix);
    cmd.env("DARKRIFT_ETCD_ENDPOINTS", proxy.endpoint());
    let (mut child, mut lines) = spawn(
        cmd,
        &[
            "register",
            "--group",
            "game",
            "--host",
            "127.0.0.1",
            "--port",
            "4296",
            "--ttl",
            "30",
            "--request-timeout",
            "2s",
        ],
    );
    assert_eq!(line(&mut lines).await["event"], "registered");
    proxy.stall();
    sigterm(&child);
    let sent = tokio::time::Instant::now();
    let status = tokio::time::timeout(PROMPT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    let took = sent.elapsed();
    println!("SIGTERM → exit with etcd stalled: {took:?}");
    // The functional bound: the deregistration and the revoke share one request timeout (plus
    // the revoke's 100 ms floor); before, each had its own, 2 × request timeout in all.
    assert!(took < 2 * request_timeout, "exit after {took:?}");
    // A deregistration that could not reach etcd is an error: exit 3 (a request timed out).
    assert_eq!(status.code(), Some(3), "{status:?}");
}

/// SIGTERM while `register` is still starting (etcd stalled: connecting never completes):
/// exit 0 at once, as docs/cli.md says, with nothing written, instead of death by the signal.
#[tokio::test]
async fn sigterm_before_registration_completes_exits_0_with_nothing_written() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = darkrift_etcd_testing::FaultProxy::start(&etcd.endpoint(0))
        .await
        .expect("proxy");
    proxy.stall();
    let mut cmd = cli(&etcd, &prefix);
    cmd.env("DARKRIFT_ETCD_ENDPOINTS", proxy.endpoint());
    let (mut child, mut lines) = spawn(
        cmd,
        &[
            "register",
            "--group",
            "game",
            "--host",
            "127.0.0.1",
            "--port",
            "4296",
            "--connect-timeout",
            "30s",
        ],
    );
    // Dialling etcd means the CLI is past installing its signal handlers.
    proxy.connection_opened().await;
    sigterm(&child);
    let status = tokio::time::timeout(PROMPT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        lines.next_line().await.expect("read").is_none(),
        "nothing printed"
    );
    proxy.restore();
    assert!(truth(&etcd, &prefix).await.is_empty(), "nothing written");
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Operators found the endpoint spinning a core when `accept` failed for lack of file
/// descriptors. Under `ulimit -n 48` with 80 connections held, the process now stays nearly
/// idle, and serves `/metrics` again once the connections are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_out_of_descriptors_waits_instead_of_spinning() {
    let etcd = etcd().await;
    let prefix = prefix();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port().expect("port"))
        .parse()
        .expect("addr");
    let addr_arg = addr.to_string();
    // `exec`: the pid is the CLI's own, under the lowered limit.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" \"$@\"")
        .arg(CLI)
        .args(["watch", "--metrics-addr", &addr_arg])
        .env("DARKRIFT_ETCD_ENDPOINTS", etcd.endpoints().join(","))
        .env("DARKRIFT_ETCD_PREFIX", &prefix)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id().expect("pid");
    scrape_until(addr, "/metrics", PROMPT, |s, _| s == 200).await;

    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .expect("the kernel completes the handshake"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    assert!(
        fds >= 44,
        "the process is at its descriptor limit: {fds} open"
    );
    let window = Duration::from_secs(2);
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    // Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`); a spinning accept loop used a
    // whole core (200 ticks here). The bound is functional, not a performance figure.
    let share = f64::from(u32::try_from(used).expect("ticks")) / (window.as_secs_f64() * 100.0);
    println!(
        "CPU at the descriptor limit: {:.0} % of a core",
        share * 100.0
    );
    assert!(share < 0.2, "{:.0} % of a core", share * 100.0);

    drop(held);
    scrape_until(addr, "/metrics", PROMPT, |s, b| {
        s == 200 && b.contains("darkrift_etcd_members")
    })
    .await;
    assert!(child.try_wait().expect("status").is_none(), "still running");
    child.start_kill().expect("kill");
    let _ = child.wait().await;
}

/// README's "Metrics series" table: the series names.
fn documented_series() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("### Metrics series")
        .nth(1)
        .expect("a Metrics series section");
    let names: Vec<String> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_owned))
        .collect();
    assert!(names.len() > 15, "{names:?}");
    names
}

/// A `register` scraped right after it starts: every documented series is there (counters at
/// 0), the keep-alive RTT is a histogram with buckets, the status gauges say registered and
/// fresh, and `build_info` carries the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_exported_from_the_start() {
    let etcd = etcd().await;
    let prefix = prefix();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port().expect("port"))
        .parse()
        .expect("addr");
    let addr_arg = addr.to_string();
    let (mut reg, mut lines) = spawn_registrant(&etcd, &prefix, &["--metrics-addr", &addr_arg]);
    assert_eq!(line(&mut lines).await["event"], "registered");
    let body = scrape_until(addr, "/metrics", PROMPT, |s, b| {
        s == 200 && b.contains("darkrift_etcd_view_fresh 1")
    })
    .await;
    // `name value` or `name{labels} value`, HELP and TYPE lines aside.
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    for name in documented_series() {
        let series = if name == "darkrift_etcd_keepalive_rtt_seconds" {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        assert!(value(&series).is_some(), "{series} missing:\n{body}");
    }
    assert!(
        body.contains("# TYPE darkrift_etcd_keepalive_rtt_seconds histogram")
            && body.contains("darkrift_etcd_keepalive_rtt_seconds_bucket{le=\"0.005\"}")
            && !body.contains("quantile="),
        "{body}"
    );
    for zero in [
        "darkrift_etcd_lease_lost_total",
        "darkrift_etcd_reregistrations_total",
        "darkrift_etcd_key_restores_total",
        "darkrift_etcd_alloc_conflicts_total",
    ] {
        assert_eq!(value(zero), Some(0.0), "{zero}:\n{body}");
    }
    assert_eq!(value("darkrift_etcd_registered"), Some(1.0), "{body}");
    assert!(
        body.contains(&format!(
            "darkrift_etcd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    assert!(value("process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(value("process_open_fds").unwrap_or(0.0) > 0.0);
    assert!(value("process_start_time_seconds").unwrap_or(0.0) > 1.0e9);
    sigterm(&reg);
    assert_eq!(exit_code(&mut reg).await, 0);
}

/// What bash's completion function for `darkrift-etcd` offers for `line` (the cursor at its
/// end), with the script of `darkrift-etcd completions bash` sourced in a bare bash.
fn bash_completions(line: &str) -> Vec<String> {
    let script = std::process::Command::new(CLI)
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(script.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("darkrift-etcd.bash");
    std::fs::write(&path, &script.stdout).expect("write");
    // COMP_WORDS as bash splits the line (a trailing space: an empty word being completed);
    // the function gets the command, the word being completed and the one before it.
    let driver = r#"
source "$1"
fn=$(complete -p darkrift-etcd | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_LINE="$2"
COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
"$fn" darkrift-etcd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", driver, "drive"])
        .arg(&path)
        .arg(line)
        .output()
        .expect("bash");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Bash completes the values of a subcommand's options (it stopped after the subcommand:
/// clap-rs/clap#6421, hyphenated binary names).
#[test]
fn bash_completes_after_the_subcommand() {
    let got = bash_completions("darkrift-etcd ls -o ");
    for want in ["table", "wide", "json"] {
        assert!(got.iter().any(|g| g == want), "{want}: {got:?}");
    }
    let got = bash_completions("darkrift-etcd get 7 --output ");
    assert!(got.iter().any(|g| g == "json"), "{got:?}");
    let got = bash_completions("darkrift-etcd ls --gr");
    assert_eq!(got, ["--group"]);
    let got = bash_completions("darkrift-etcd l");
    assert!(got.iter().any(|g| g == "ls"), "{got:?}");
}

/// One-shot commands against endpoints where nothing listens fail with exit 3 at once, not
/// after the whole connect timeout (5 s by default).
#[tokio::test]
async fn one_shot_commands_fail_fast_when_every_endpoint_refuses() {
    let dead = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        free_port().expect("port"),
        free_port().expect("port")
    );
    for args in [&["ls"][..], &["get", "7"], &["evict", "7", "--yes"]] {
        let mut cmd = Command::new(CLI);
        cmd.env("DARKRIFT_ETCD_ENDPOINTS", &dead)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = tokio::time::Instant::now();
        let out = run(cmd, args).await;
        let took = started.elapsed();
        assert_eq!(code(&out), 3, "{args:?}: {}", stderr(&out));
        assert!(took < Duration::from_secs(3), "{args:?} took {took:?}");
    }
}

/// `register --readiness probe`: a `reserved` line first, no join at peers while nothing
/// listens on the server's port, then `registered` and the join once a listener accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_registrant_is_reserved_until_its_port_listens() {
    let schema = schema();
    let etcd = etcd().await;
    let prefix = prefix();
    let (mut watch, mut watch_lines) = spawn(cli(&etcd, &prefix), &["watch"]);
    assert_eq!(line(&mut watch_lines).await["event"], "synced");

    // A free port, closed again: nothing listens on it until the test says so.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port().to_string();
    drop(probe);
    let (mut reg, mut reg_lines) = spawn(
        cli(&etcd, &prefix),
        &[
            "register",
            "--group",
            "game",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--readiness",
            "probe",
        ],
    );
    let reserved = line(&mut reg_lines).await;
    check_line(&schema, &reserved);
    assert_eq!(reserved["event"], "reserved");
    let id = reserved["id"].as_u64().expect("id");
    // Reserved: the slot is held, no server key exists, the watcher has heard nothing.
    let mut raw = etcd.client().await.expect("raw client");
    let key = format!("{prefix}/game/{id}");
    assert_eq!(raw.get(key.clone(), None).await.expect("get").count(), 0);
    let slot = raw
        .get(format!("{prefix}.alloc/slot/{id:05}"), None)
        .await
        .expect("get");
    assert_eq!(slot.count(), 1, "the id's slot is held");
    let nothing = tokio::time::timeout(Duration::from_millis(300), watch_lines.next_line()).await;
    assert!(nothing.is_err(), "no line at the watcher: {nothing:?}");

    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("listen");
    let registered = line(&mut reg_lines).await;
    check_line(&schema, &registered);
    assert_eq!(
        (&registered["event"], &registered["id"]),
        (&"registered".into(), &id.into())
    );
    let join = line(&mut watch_lines).await;
    check_line(&schema, &join);
    assert_eq!((&join["event"], &join["id"]), (&"join".into(), &id.into()));
    drop(listener);

    let pid = reg.id().expect("pid");
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill")
        .success());
    assert_eq!(exit_code(&mut reg).await, 0);
    let leave = line(&mut watch_lines).await;
    assert_eq!(
        (&leave["event"], &leave["departing"]),
        (&"leave".into(), &true.into())
    );
    let _ = watch.kill().await;
}

/// `config -o json`: one JSON line of the documented shape, every setting with its value and
/// source, the password masked.
#[tokio::test]
async fn config_prints_one_json_object_with_every_setting_and_its_source() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut c = cli(&etcd, &prefix);
    c.env("DARKRIFT_ETCD_USER", "root")
        .env("DARKRIFT_ETCD_PASSWORD", "hunter2");
    let out = run(c, &["config", "-o", "json", "--ttl", "7"]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    check_line(&schema(), &v);
    assert_eq!(v["file"], Value::Null);
    let settings = v["settings"].as_array().expect("settings");
    let by_key = |key: &str| -> &Value {
        settings
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no {key}: {text}"))
    };
    assert_eq!(by_key("lease_ttl")["value"], "7s");
    assert_eq!(by_key("lease_ttl")["source"], "flag");
    assert_eq!(by_key("lease_ttl")["from"], "--ttl");
    assert_eq!(by_key("prefix")["value"], prefix.as_str());
    assert_eq!(by_key("prefix")["from"], "DARKRIFT_ETCD_PREFIX");
    assert_eq!(by_key("connect_timeout")["source"], "default");
    assert_eq!(by_key("auth.password")["value"], "***");
    assert_eq!(by_key("auth.password")["secret"], true);
    assert_eq!(by_key("group")["value"], Value::Null);
    assert_eq!(
        settings.len(),
        darkrift_etcd::config::layers::SETTINGS.len(),
        "every setting"
    );
}

/// Under `--log-format json` the final error line is JSON too, for usage errors (before the
/// logger exists) and for failures of a command alike.
#[tokio::test]
async fn under_json_logs_the_error_line_is_json() {
    let etcd = etcd().await;
    let prefix = prefix();
    let port = free_port().expect("port");
    let refused = format!("http://127.0.0.1:{port}");
    for (args, env, want_code, says) in [
        (
            vec!["--log-format", "json", "ls", "-o", "yaml"],
            None,
            2,
            "[possible values: table, wide, json]",
        ),
        (
            vec!["ls", "-o", "yaml"],
            Some(("DARKRIFT_ETCD_LOG_FORMAT", "json")),
            2,
            "invalid value 'yaml'",
        ),
        (
            vec!["--log-format=json", "config", "--ttl", "0"],
            None,
            2,
            "lease_ttl",
        ),
        (
            vec![
                "--log-format",
                "json",
                "ls",
                "--endpoints",
                refused.as_str(),
            ],
            None,
            3,
            "Connection refused",
        ),
    ] {
        let mut c = cli(&etcd, &prefix);
        c.envs(env);
        let out = run(c, &args).await;
        assert_eq!(code(&out), want_code, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        let last = err.lines().last().expect("an error line");
        let v: Value =
            serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?}: not JSON {last}: {e}"));
        assert_eq!(v["level"], "ERROR", "{last}");
        assert_eq!(v["fields"]["exit_code"], want_code, "{last}");
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{args:?}: {last}"
        );
        assert!(v["fields"]["hint"].is_string(), "{last}");
        for l in err.lines() {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON {l}: {e}"));
        }
    }
}

/// `--metrics-addr :PORT` listens on every interface, `localhost:PORT` on localhost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_addr_takes_a_bare_port_and_a_host_name() {
    let etcd = etcd().await;
    let prefix = prefix();
    for form in [":{port}", "localhost:{port}"] {
        let port = free_port().expect("port");
        let arg = form.replace("{port}", &port.to_string());
        let (mut watch, mut lines) = spawn(cli(&etcd, &prefix), &["watch", "--metrics-addr", &arg]);
        assert_eq!(line(&mut lines).await["event"], "synced", "{arg}");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        scrape_until(addr, "/healthz", PROMPT, |s, _| s == 200).await;
        sigterm(&watch);
        assert_eq!(exit_code(&mut watch).await, 0, "{arg}");
    }
}

/// An endpoint without a scheme is `http://`, as etcdctl reads it.
#[tokio::test]
async fn an_endpoint_without_a_scheme_is_http() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_c, id) = registered(config(&etcd, &prefix), "game", 5).await;
    let bare: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_owned())
        .collect();
    assert!(bare.iter().all(|e| !e.contains("://")), "{bare:?}");
    let mut c = cli(&etcd, &prefix);
    c.env_remove("DARKRIFT_ETCD_ENDPOINTS");
    let out = run(c, &["ls", "-o", "json", "--endpoints", &bare.join(",")]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed["servers"][0]["id"], id);
}
